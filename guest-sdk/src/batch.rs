//! The batch runner behind [`plugin!`](crate::plugin): turns one `run` call of the WIT contract
//! into one call of the author's function per connection.
//!
//! It keeps each connection's parsed params (or the reason they did not parse) from the call
//! that carried them until the engine reports the connection closed, so params are parsed once
//! per change, not once per tick. It must never panic on engine input: a connection the engine
//! sent no params for gets an error outcome.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;
use std::hash::{BuildHasherDefault, Hasher};

use serde::de::DeserializeOwned;

use crate::bindings::{Call, Outcome};
use crate::{Context, Payload};

thread_local! {
    /// Parsed params by connection id. Each value is a `Result<P, String>` for the plugin's one
    /// params type `P`; it is boxed as `Any` because a static cannot be generic.
    static PARAMS: RefCell<HashMap<u64, Box<dyn Any>, BuildHasherDefault<ConnIdHasher>>> =
        RefCell::new(HashMap::default());
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
pub fn run_batch<P, R, E, F>(now_ms: u64, calls: Vec<Call>, closed: Vec<u64>, tick: F) -> Vec<Outcome>
where
    P: DeserializeOwned + 'static,
    R: Payload,
    E: Display,
    F: Fn(&Context, &P) -> Result<Option<R>, E>,
{
    PARAMS.with_borrow_mut(|cache| {
        for conn_id in closed {
            cache.remove(&conn_id);
        }
        calls
            .into_iter()
            .map(|call| {
                if let Some(text) = call.params {
                    cache.insert(call.conn_id, Box::new(parse_params::<P>(&text)));
                }
                let ctx = Context::new(call.conn_id, call.seq, call.trigger.into(), now_ms);
                let params = cache.get(&call.conn_id).and_then(|entry| entry.downcast_ref::<Result<P, String>>());
                match params {
                    None => Outcome::Error("no params were sent for this connection".to_owned()),
                    Some(Err(reason)) => Outcome::Error(reason.clone()),
                    Some(Ok(params)) => outcome(tick(&ctx, params)),
                }
            })
            .collect()
    })
}

/// The contract's outcome for what the author's function returned.
fn outcome<R: Payload, E: Display>(result: Result<Option<R>, E>) -> Outcome {
    match result {
        Ok(Some(payload)) => match payload.into_frame() {
            Ok(frame) => Outcome::Push(frame),
            Err(err) => Outcome::Error(format!("cannot encode payload: {err}")),
        },
        Ok(None) => Outcome::Skip,
        Err(err) => Outcome::Error(err.to_string()),
    }
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

    #[test]
    fn params_are_kept_until_the_connection_closes() {
        let first = run_batch(0, vec![call(1, Some(r#"{"limit":1}"#))], vec![], seq_tick);
        assert!(matches!(&first[..], [Outcome::Push(f)] if f == "1"));
        let cached = run_batch(0, vec![call(1, None)], vec![], seq_tick);
        assert!(matches!(&cached[..], [Outcome::Push(_)]));
        let forgotten = run_batch(0, vec![call(1, None)], vec![1], seq_tick);
        assert!(matches!(&forgotten[..], [Outcome::Error(_)]));
    }

    #[test]
    fn a_mismatched_field_is_named_in_the_error() {
        let out = run_batch(0, vec![call(2, Some(r#"{"limit":"x"}"#))], vec![], seq_tick);
        match &out[..] {
            [Outcome::Error(msg)] => assert!(msg.starts_with("invalid params: limit: invalid type"), "{msg}"),
            _ => panic!("expected an error"),
        }
    }
}
