//! What one call knows about its connection. Plain data: building a [`Context`] needs no engine,
//! so plugin functions can be unit-tested natively (with [`FakeData`](crate::FakeData) for the
//! data they read).

use crate::bindings::wasmpush::plugin::types::Trigger as WitTrigger;

/// Why a connection is due for a call.
///
/// ```
/// use wasmpush_sdk::{Context, Error, Trigger};
///
/// // Push only when the client sends params (or connects with them), never on ticks.
/// fn on_change(ctx: &Context, params: &serde_json::Value) -> Result<Option<String>, Error> {
///     Ok((ctx.trigger != Trigger::Tick).then(|| params.to_string()))
/// }
///
/// let params = serde_json::json!({"a": 1});
/// assert_eq!(on_change(&Context::new(1, 1, Trigger::Open, 0), &params).unwrap().as_deref(), Some(r#"{"a":1}"#));
/// assert_eq!(on_change(&Context::new(1, 2, Trigger::Tick, 0), &params).unwrap(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The connection opened with params in its URL.
    Open,
    /// The client just sent new params.
    Message,
    /// The regular tick.
    Tick,
    /// A data key this connection's previous call read has changed (see [`Context::get`]).
    Data,
}

impl From<WitTrigger> for Trigger {
    fn from(trigger: WitTrigger) -> Self {
        match trigger {
            WitTrigger::Open => Trigger::Open,
            WitTrigger::Message => Trigger::Message,
            WitTrigger::Tick => Trigger::Tick,
            WitTrigger::Data => Trigger::Data,
        }
    }
}

/// The context of one call.
///
/// ```
/// use wasmpush_sdk::{Context, Trigger};
///
/// let ctx = Context::new(7, 1, Trigger::Tick, 1_700_000_000_000);
/// assert_eq!(ctx.seq, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Context {
    /// Identifies the connection for as long as it lives; never reused by one engine.
    pub conn_id: u64,
    /// The data pushes this connection has had, plus one: the sequence number of the push this
    /// call makes if it returns a payload. Starts at 1 and never resets while the connection
    /// lives; errors and skips do not advance it.
    pub seq: u64,
    /// Why the connection is due.
    pub trigger: Trigger,
    /// The engine's wall-clock time for this batch, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

impl Context {
    /// A context with the given fields; what the engine builds for each call, and what native
    /// unit tests build to call a plugin function directly.
    ///
    /// ```
    /// let ctx = wasmpush_sdk::Context::new(1, 3, wasmpush_sdk::Trigger::Message, 0);
    /// assert_eq!(ctx.conn_id, 1);
    /// ```
    pub fn new(conn_id: u64, seq: u64, trigger: Trigger, now_ms: u64) -> Self {
        Context { conn_id, seq, trigger, now_ms }
    }
}
