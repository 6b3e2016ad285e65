//! The batch runner behind [`plugin!`](crate::plugin): turns one `run` call of the WIT contract
//! into one call of the author's function per connection.
//!
//! It keeps each connection's parsed params (or the reason they did not parse) from the call
//! that carried them until the engine reports the connection closed, so params are parsed once
//! per change, not once per tick. It must never panic on engine input: a connection the engine
//! sent no params for gets an error outcome.
//!
//! Every call's text (payload or error message) is written into one buffer for the whole batch,
//! so no call allocates its own string to hand over and the engine copies one buffer out.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Display;
use std::hash::{BuildHasherDefault, Hasher};

use serde::de::DeserializeOwned;

use crate::bindings::wasmpush::plugin::types::Outcome;
use crate::bindings::{Call, Outcomes};
use crate::{Context, Payload};

thread_local! {
    /// Parsed params by connection id. Each value is a `Result<P, String>` for the plugin's one
    /// params type `P`; it is boxed as `Any` because a static cannot be generic.
    static PARAMS: RefCell<HashMap<u64, Box<dyn Any>, BuildHasherDefault<ConnIdHasher>>> =
        RefCell::new(HashMap::default());

    /// The text length of the previous batch: the next buffer starts that large.
    static TEXT_HINT: Cell<usize> = const { Cell::new(0) };
}

/// Hashes a connection id with one multiplication. The ids come from the engine, not from
/// clients, so the flooding resistance of the default hasher buys nothing, and it cost more per
/// call than a cached lookup should.
#[derive(Default)]
struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Runs `tick` for every call of a batch and returns the outcomes in the order of `calls`.
pub fn run_batch<P, R, E, F>(now_ms: u64, calls: Vec<Call>, closed: Vec<u64>, tick: F) -> Outcomes
where
    P: DeserializeOwned + 'static,
    R: Payload,
    E: Display,
    F: Fn(&Context, &P) -> Result<Option<R>, E>,
{
    let mut out = Outcomes {
        kinds: Vec::with_capacity(calls.len()),
        ends: Vec::with_capacity(calls.len()),
        text: Vec::with_capacity(TEXT_HINT.get()),
    };
    PARAMS.with_borrow_mut(|cache| {
        for conn_id in closed {
            cache.remove(&conn_id);
        }
        for call in calls {
            if let Some(text) = call.params {
                cache.insert(call.conn_id, Box::new(parse_params::<P>(&text)));
            }
            let ctx = Context::new(call.conn_id, call.seq, call.trigger.into(), now_ms);
            let params = cache.get(&call.conn_id).and_then(|entry| entry.downcast_ref::<Result<P, String>>());
            let kind = match params {
                None => write_error(&mut out.text, "no params were sent for this connection"),
                Some(Err(reason)) => write_error(&mut out.text, reason),
                Some(Ok(params)) => write_outcome(&mut out.text, tick(&ctx, params)),
            };
            out.kinds.push(kind);
            out.ends.push(u32::try_from(out.text.len()).unwrap_or(u32::MAX));
        }
    });
    TEXT_HINT.set(out.text.len());
    out
}

/// Appends the text of what the author's function returned and says what it is.
fn write_outcome<R: Payload, E: Display>(text: &mut Vec<u8>, result: Result<Option<R>, E>) -> Outcome {
    match result {
        Ok(Some(payload)) => {
            let start = text.len();
            match payload.write_frame(text) {
                Ok(()) => Outcome::Push,
                Err(err) => {
                    text.truncate(start);
                    write_error(text, format_args!("cannot encode payload: {err}"))
                }
            }
        }
        Ok(None) => Outcome::Skip,
        Err(err) => write_error(text, err),
    }
}

/// Appends an error message.
fn write_error(text: &mut Vec<u8>, message: impl Display) -> Outcome {
    use std::io::Write;
    // Writing to a Vec cannot fail; a Display impl that errors leaves what it wrote.
    let _ = write!(text, "{message}");
    Outcome::Error
}

/// Parses params into the author's type; the error names the field that did not match.
pub(crate) fn parse_params<P: DeserializeOwned>(text: &str) -> Result<P, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            format!("invalid params: {}", err.inner())
        } else {
            format!("invalid params: {path}: {}", err.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::wasmpush::plugin::types::Trigger;

    #[derive(serde::Deserialize)]
    struct Params {
        #[allow(dead_code)]
        limit: u32,
    }

    fn call(conn_id: u64, params: Option<&str>) -> Call {
        Call { conn_id, seq: 1, trigger: Trigger::Tick, params: params.map(str::to_owned) }
    }

    fn seq_tick(ctx: &Context, _: &Params) -> Result<Option<u64>, crate::Error> {
        Ok(Some(ctx.seq))
    }

    /// The batch's outcomes as (kind, text) pairs.
    fn texts(out: &Outcomes) -> Vec<(Outcome, &str)> {
        let starts = std::iter::once(0).chain(out.ends.iter().copied());
        let spans = starts.zip(out.ends.iter().copied());
        let text = |(start, end): (u32, u32)| std::str::from_utf8(&out.text[start as usize..end as usize]).unwrap();
        out.kinds.iter().copied().zip(spans.map(text)).collect()
    }

    #[test]
    fn params_are_kept_until_the_connection_closes() {
        let first = run_batch(0, vec![call(1, Some(r#"{"limit":1}"#))], vec![], seq_tick);
        assert_eq!(texts(&first), [(Outcome::Push, "1")]);
        let cached = run_batch(0, vec![call(1, None)], vec![], seq_tick);
        assert_eq!(texts(&cached), [(Outcome::Push, "1")]);
        let forgotten = run_batch(0, vec![call(1, None)], vec![1], seq_tick);
        assert_eq!(texts(&forgotten), [(Outcome::Error, "no params were sent for this connection")]);
    }

    #[test]
    fn a_mismatched_field_is_named_in_the_error() {
        let out = run_batch(0, vec![call(2, Some(r#"{"limit":"x"}"#))], vec![], seq_tick);
        match &texts(&out)[..] {
            [(Outcome::Error, msg)] => assert!(msg.starts_with("invalid params: limit: invalid type"), "{msg}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn texts_of_a_batch_are_packed_in_call_order() {
        fn parity(ctx: &Context, _: &Params) -> Result<Option<String>, String> {
            match ctx.conn_id % 3 {
                0 => Ok(Some(format!("push {}", ctx.conn_id))),
                1 => Ok(None),
                _ => Err(format!("error {}", ctx.conn_id)),
            }
        }
        let calls = (0..6).map(|id| call(id, Some(r#"{"limit":1}"#))).collect();
        let out = run_batch(0, calls, vec![], parity);
        let expected = [
            (Outcome::Push, "\"push 0\""),
            (Outcome::Skip, ""),
            (Outcome::Error, "error 2"),
            (Outcome::Push, "\"push 3\""),
            (Outcome::Skip, ""),
            (Outcome::Error, "error 5"),
        ];
        assert_eq!(texts(&out), expected);
    }
}
