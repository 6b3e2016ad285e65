//! The batch runner behind [`plugin!`](crate::plugin): turns one `run` call of the WIT contract
//! into one call of the author's function per connection.
//!
//! It keeps each connection's parsed params (or the reason they did not parse) and its identity
//! from the call that carried them until the engine reports the connection closed, so params and
//! claims are parsed once per change, not once per tick. It must never panic on engine input: a connection the engine
//! sent no params for gets an error outcome.
//!
//! Every call's text (payload or error message) is written into one buffer for the whole batch,
//! so no call allocates its own string to hand over and the engine copies one buffer out; the ids
//! of the data keys each call used go into one list the same way. Stale data keys are forgotten
//! before the first call, and each connection keeps the keys its last call read (its
//! [`Memo`]), which its next call's reads are checked against first.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Display;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::bindings::wasmpush::plugin::types::Outcome;
use crate::bindings::{Calls, Outcomes};
use crate::data::{Memo, end_call, start_call};
use crate::{Context, Identity, Payload};

/// What a connection's calls are given: its parsed params (or why they did not parse) and who
/// its client is.
struct Cached<P> {
    params: Result<P, String>,
    identity: Option<Arc<Identity>>,
    /// The data keys the connection's previous call read.
    memo: Memo,
}

/// Each connection's [`Cached`] params and identity by connection id, for the plugin's params
/// type `P`.
type ParamsCache<P> = HashMap<u64, Cached<P>, BuildHasherDefault<ConnIdHasher>>;

thread_local! {
    /// The plugin's [`ParamsCache`]. A static cannot be generic, so the cache is stored as `Any`
    /// and downcast once per batch (a plugin has one params type, so the downcast always
    /// succeeds).
    static PARAMS: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };

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

/// The author's function, for every lifetime of the params it is lent: its payload may borrow
/// from the connection's cached params (a [`Payload`] holding a `&str` of them) instead of
/// copying them. Every `fn(&Context, &P) -> Result<Option<R>, E>` is one.
pub trait TickFn<'a, P: 'a> {
    /// What the function pushes.
    type Payload: Payload;
    /// Its business error.
    type Error: Display;

    /// Calls the function.
    fn call(&self, ctx: &Context, params: &'a P) -> Result<Option<Self::Payload>, Self::Error>;
}

impl<'a, P: 'a, F, R, E> TickFn<'a, P> for F
where
    F: Fn(&Context, &'a P) -> Result<Option<R>, E>,
    R: Payload,
    E: Display,
{
    type Payload = R;
    type Error = E;

    fn call(&self, ctx: &Context, params: &'a P) -> Result<Option<R>, E> {
        self(ctx, params)
    }
}

/// Runs `tick` for every call of a batch and returns the outcomes in the order of `calls`.
pub fn run_batch<P, F>(now_ms: u64, calls: Calls, closed: Vec<u64>, stale: Vec<u32>, tick: F) -> Outcomes
where
    P: DeserializeOwned + 'static,
    F: for<'a> TickFn<'a, P>,
{
    let mut cache = PARAMS
        .take()
        .and_then(|cache| cache.downcast::<ParamsCache<P>>().ok())
        .unwrap_or_else(|| Box::new(ParamsCache::<P>::default()));
    for conn_id in closed {
        cache.remove(&conn_id);
    }
    crate::data::forget_stale(&stale);
    let count = calls.conn_ids.len();
    let mut out = Outcomes {
        kinds: Vec::with_capacity(count),
        ends: Vec::with_capacity(count),
        text: Vec::with_capacity(TEXT_HINT.get()),
        reads: Vec::new(),
        read_ends: Vec::with_capacity(count),
    };
    let mut new_params = calls.params.into_iter().peekable();
    let columns = calls.conn_ids.into_iter().zip(calls.seqs).zip(calls.triggers);
    for (index, ((conn_id, seq), trigger)) in columns.enumerate() {
        while let Some(params) = new_params.next_if(|params| params.index as usize <= index) {
            if params.index as usize == index {
                let identity = params.identity.map(|who| Arc::new(Identity::from_engine(who.subject, &who.claims)));
                let memo = Memo::default();
                cache.insert(conn_id, Cached { params: parse_params::<P>(&params.json), identity, memo });
            }
        }
        let kind = match cache.get_mut(&conn_id) {
            None => write_error(&mut out.text, "no params were sent for this connection"),
            Some(Cached { params: Err(reason), .. }) => write_error(&mut out.text, reason),
            Some(Cached { params: Ok(params), identity, memo }) => {
                let ctx = Context::new(conn_id, seq, trigger.into(), now_ms).with_shared_identity(identity.clone());
                start_call(std::mem::take(memo));
                let kind = write_outcome(&mut out.text, tick.call(&ctx, params));
                *memo = end_call(&mut out.reads);
                kind
            }
        };
        out.kinds.push(kind);
        out.ends.push(u32::try_from(out.text.len()).unwrap_or(u32::MAX));
        out.read_ends.push(u32::try_from(out.reads.len()).unwrap_or(u32::MAX));
    }
    PARAMS.set(Some(cache));
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
    use crate::bindings::wasmpush::plugin::types::{NewParams, Trigger};

    #[derive(serde::Deserialize)]
    struct Params {
        limit: u32,
    }

    /// A batch of calls with `seq` 1, each with its params if it has any.
    fn calls(calls: &[(u64, Option<&str>)]) -> Calls {
        let params = calls.iter().enumerate().filter_map(|(index, (_, params))| {
            params.map(|json| NewParams { index: index as u32, json: json.to_owned(), identity: None })
        });
        Calls {
            conn_ids: calls.iter().map(|(conn_id, _)| *conn_id).collect(),
            seqs: vec![1; calls.len()],
            triggers: vec![Trigger::Tick; calls.len()],
            params: params.collect(),
        }
    }

    fn call(conn_id: u64, params: Option<&str>) -> Calls {
        calls(&[(conn_id, params)])
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
        let first = run_batch(0, call(1, Some(r#"{"limit":1}"#)), vec![], vec![], seq_tick);
        assert_eq!(texts(&first), [(Outcome::Push, "1")]);
        let cached = run_batch(0, call(1, None), vec![], vec![], seq_tick);
        assert_eq!(texts(&cached), [(Outcome::Push, "1")]);
        let forgotten = run_batch(0, call(1, None), vec![1], vec![], seq_tick);
        assert_eq!(texts(&forgotten), [(Outcome::Error, "no params were sent for this connection")]);
    }

    #[test]
    fn params_apply_to_their_call_only_and_stray_indexes_are_ignored() {
        fn limit(_: &Context, params: &Params) -> Result<Option<u32>, crate::Error> {
            Ok(Some(params.limit))
        }
        run_batch(0, calls(&[(21, Some(r#"{"limit":1}"#)), (22, Some(r#"{"limit":2}"#))]), vec![], vec![], limit);
        let mut batch = calls(&[(21, None), (22, Some(r#"{"limit":5}"#)), (23, None)]);
        batch.params.push(NewParams { index: 7, json: r#"{"limit":9}"#.to_owned(), identity: None });
        let out = run_batch(0, batch, vec![], vec![], limit);
        let expected =
            [(Outcome::Push, "1"), (Outcome::Push, "5"), (Outcome::Error, "no params were sent for this connection")];
        assert_eq!(texts(&out), expected);
    }

    #[test]
    fn the_identity_sent_with_params_reaches_every_call_until_it_changes() {
        use crate::bindings::wasmpush::plugin::types::Identity as WitIdentity;
        fn who(ctx: &Context, _: &Params) -> Result<Option<String>, crate::Error> {
            let role: Option<String> = ctx.identity().and_then(|who| who.claim("role"));
            Ok(Some(format!("{:?} {:?}", ctx.subject(), role)))
        }
        let mut first = call(41, Some(r#"{"limit":1}"#));
        first.params[0].identity =
            Some(WitIdentity { subject: Some("u7".into()), claims: r#"{"sub":"u7","role":"admin"}"#.into() });
        let out = run_batch(0, first, vec![], vec![], who);
        assert_eq!(texts(&out), [(Outcome::Push, r#""Some(\"u7\") Some(\"admin\")""#)]);
        let cached = run_batch(0, call(41, None), vec![], vec![], who);
        assert_eq!(texts(&cached), texts(&out), "kept with the params");
        let anonymous = run_batch(0, call(41, Some(r#"{"limit":1}"#)), vec![], vec![], who);
        assert_eq!(texts(&anonymous), [(Outcome::Push, r#""None None""#)], "params sent without one clear it");
    }

    #[test]
    fn a_mismatched_field_is_named_in_the_error() {
        let out = run_batch(0, call(2, Some(r#"{"limit":"x"}"#)), vec![], vec![], seq_tick);
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
        let batch: Vec<_> = (10..16).map(|id| (id, Some(r#"{"limit":1}"#))).collect();
        let out = run_batch(0, calls(&batch), vec![], vec![], parity);
        let expected = [
            (Outcome::Skip, ""),
            (Outcome::Error, "error 11"),
            (Outcome::Push, "\"push 12\""),
            (Outcome::Skip, ""),
            (Outcome::Error, "error 14"),
            (Outcome::Push, "\"push 15\""),
        ];
        assert_eq!(texts(&out), expected);
    }

    #[test]
    fn a_payload_may_borrow_from_the_cached_params() {
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        /// Writes the params' name without copying it into a `String` of its own.
        struct Greeting<'a>(&'a str);
        impl Payload for Greeting<'_> {
            fn write_frame(self, frame: &mut Vec<u8>) -> Result<(), crate::Error> {
                frame.extend_from_slice(b"hello ");
                frame.extend_from_slice(self.0.as_bytes());
                Ok(())
            }
        }
        fn greet<'a>(_: &Context, params: &'a Named) -> Result<Option<Greeting<'a>>, crate::Error> {
            Ok(Some(Greeting(&params.name)))
        }
        run_batch(0, call(31, Some(r#"{"name":"Ada"}"#)), vec![], vec![], greet);
        let out = run_batch(0, call(31, None), vec![], vec![], greet);
        assert_eq!(texts(&out), [(Outcome::Push, "hello Ada")]);
    }
}
