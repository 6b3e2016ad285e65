//! [`Calls`]: the due connections of one batch, built call by call into the contract's columns
//! (connection ids, `seq`s and triggers as whole lists, params and identity only for the calls
//! that carry them), which cross into the guest as a few list copies instead of a record per call.

use super::bindings::wasmpush::plugin::types::{Calls, Identity, NewParams, Trigger};

/// What an instance must be sent with a call: the connection's params and who its client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallParams<'a> {
    /// The params JSON object.
    pub json: &'a str,
    /// The client's verified identity: its subject (if any) and its claims as a JSON object;
    /// `None` for a connection without a token.
    pub identity: Option<(Option<&'a str>, &'a str)>,
}

impl<'a> From<&'a str> for CallParams<'a> {
    /// Params of a connection without a token.
    fn from(json: &'a str) -> Self {
        CallParams { json, identity: None }
    }
}

impl Calls {
    /// An empty batch with room for `capacity` calls.
    pub fn with_capacity(capacity: usize) -> Calls {
        Calls {
            conn_ids: Vec::with_capacity(capacity),
            seqs: Vec::with_capacity(capacity),
            triggers: Vec::with_capacity(capacity),
            params: Vec::new(),
        }
    }

    /// Adds a call; `params` when the instance must be sent them.
    pub fn push(&mut self, conn_id: u64, seq: u64, trigger: Trigger, params: Option<CallParams<'_>>) {
        if let Some(CallParams { json, identity }) = params {
            let index = u32::try_from(self.len()).expect("a batch holds fewer than 2^32 calls");
            let identity = identity
                .map(|(subject, claims)| Identity { subject: subject.map(str::to_owned), claims: claims.to_owned() });
            self.params.push(NewParams { index, json: json.to_owned(), identity });
        }
        self.conn_ids.push(conn_id);
        self.seqs.push(seq);
        self.triggers.push(trigger);
    }

    /// How many calls the batch holds.
    pub fn len(&self) -> usize {
        self.conn_ids.len()
    }

    /// Whether the batch holds no call.
    pub fn is_empty(&self) -> bool {
        self.conn_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_listed_by_the_index_of_their_call() {
        let mut calls = Calls::with_capacity(3);
        calls.push(7, 1, Trigger::Open, Some("{}".into()));
        calls.push(8, 4, Trigger::Tick, None);
        let who = CallParams { json: r#"{"a":1}"#, identity: Some((Some("u7"), r#"{"sub":"u7"}"#)) };
        calls.push(9, 2, Trigger::Message, Some(who));
        assert_eq!(calls.len(), 3);
        assert_eq!(calls.conn_ids, [7, 8, 9]);
        assert_eq!(calls.seqs, [1, 4, 2]);
        let params: Vec<(u32, &str)> = calls.params.iter().map(|p| (p.index, p.json.as_str())).collect();
        assert_eq!(params, [(0, "{}"), (2, r#"{"a":1}"#)]);
        assert!(calls.params[0].identity.is_none());
        assert_eq!(calls.params[1].identity.as_ref().and_then(|who| who.subject.as_deref()), Some("u7"));
    }
}
