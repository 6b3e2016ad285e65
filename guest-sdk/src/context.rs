//! What one call knows about its connection: who it is, why it is due and who the client is
//! ([`Identity`], from the token the engine verified). Plain data: building a [`Context`] needs
//! no engine, so plugin functions can be unit-tested natively (with
//! [`FakeData`](crate::FakeData) for the data they read).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

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
    /// Who the client is; `None` for a connection without a token. See [`Context::identity`].
    identity: Option<Arc<Identity>>,
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
        Context { identity: None, conn_id, seq, trigger, now_ms }
    }

    /// This context for a client with `identity`; what a native unit test builds to call a
    /// plugin function as an authenticated client.
    ///
    /// ```
    /// use wasmpush_sdk::{Context, Identity, Trigger};
    ///
    /// let who = Identity::new(Some("u7"), serde_json::json!({"sub": "u7", "role": "admin"}));
    /// let ctx = Context::new(1, 1, Trigger::Open, 0).with_identity(who);
    /// assert_eq!(ctx.subject(), Some("u7"));
    /// ```
    pub fn with_identity(self, identity: Identity) -> Self {
        self.with_shared_identity(Some(Arc::new(identity)))
    }

    pub(crate) fn with_shared_identity(mut self, identity: Option<Arc<Identity>>) -> Self {
        self.identity = identity;
        self
    }

    /// Who the client is: the verified claims of the token it connected with (or last
    /// refreshed). `None` when it sent no token (its plugin's `auth` is `"none"` or
    /// `"optional"`). A client's params can never set it, so a plugin may trust it to decide
    /// what the client may see.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// The token's subject (`sub`), if the client sent a token that has one.
    pub fn subject(&self) -> Option<&str> {
        self.identity().and_then(Identity::subject)
    }
}

/// Who a client is, from the token the engine verified: its subject and every claim.
///
/// ```
/// use wasmpush_sdk::Identity;
///
/// let who = Identity::new(Some("u7"), serde_json::json!({"sub": "u7", "accounts": ["a42"]}));
/// let accounts: Vec<String> = who.claim("accounts").unwrap();
/// assert_eq!(accounts, ["a42"]);
/// assert_eq!(who.claim::<u64>("exp"), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    subject: Option<String>,
    claims: Map<String, Value>,
}

impl Identity {
    /// An identity with `subject` and `claims` (a JSON object; anything else counts as no
    /// claims).
    pub fn new(subject: Option<&str>, claims: Value) -> Self {
        let claims = match claims {
            Value::Object(claims) => claims,
            _ => Map::new(),
        };
        Identity { subject: subject.map(str::to_owned), claims }
    }

    /// The identity the engine sent: `claims` is a JSON object's text.
    pub(crate) fn from_engine(subject: Option<String>, claims: &str) -> Self {
        Identity { subject, claims: serde_json::from_str(claims).unwrap_or_default() }
    }

    /// The token's subject (`sub`).
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Every claim of the token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Claim `name` as a `T`; `None` when the token lacks it or it is not a `T`.
    pub fn claim<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.claims.get(name).and_then(|value| T::deserialize(value).ok())
    }
}
