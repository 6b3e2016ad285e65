//! [`Calls`]: the due connections of one batch, built call by call into the contract's columns
//! (connection ids, `seq`s and triggers as whole lists, params only for the calls that carry
//! them), which cross into the guest as a few list copies instead of a record per call.

use super::bindings::wasmpush::plugin::types::{Calls, NewParams, Trigger};

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
    pub fn push(&mut self, conn_id: u64, seq: u64, trigger: Trigger, params: Option<&str>) {
        if let Some(json) = params {
            let index = u32::try_from(self.len()).expect("a batch holds fewer than 2^32 calls");
            self.params.push(NewParams { index, json: json.to_owned() });
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
        calls.push(7, 1, Trigger::Open, Some("{}"));
        calls.push(8, 4, Trigger::Tick, None);
        calls.push(9, 2, Trigger::Message, Some(r#"{"a":1}"#));
        assert_eq!(calls.len(), 3);
        assert_eq!(calls.conn_ids, [7, 8, 9]);
        assert_eq!(calls.seqs, [1, 4, 2]);
        let params: Vec<(u32, &str)> = calls.params.iter().map(|p| (p.index, p.json.as_str())).collect();
        assert_eq!(params, [(0, "{}"), (2, r#"{"a":1}"#)]);
    }
}
