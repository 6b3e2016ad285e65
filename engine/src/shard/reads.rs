//! [`ReadIndex`]: which connections of a plugin slot read which data key in their last call, so a
//! published change re-runs exactly those connections; [`StaleIds`], the changed keys an instance
//! is told of at its next batch, bounded however long that batch waits; and the glue that lets
//! plugins read a data [`Snapshot`] through the plugin host's [`DataSource`].

use std::collections::{HashMap, HashSet};

use crate::data::Snapshot;
use crate::plugin::{DataRead, DataSource, ReadKey};

impl DataSource for Snapshot {
    fn read(&self, bucket: &str, key: &str) -> DataRead<'_> {
        let found = self.lookup(bucket, key);
        DataRead { bucket: found.bucket, key: found.key, json: found.entry.map(|entry| &entry.json) }
    }
}

/// Ids (in one instance) of the keys whose value changed since its last batch. However many
/// changes come before that batch (a quiet shard with no ticks may wait long), the list stays
/// bounded: repeated ids are folded once it reaches [`StaleIds::CAPACITY`], and if that does not
/// halve it the list overflows — the instance must then be dropped, which tells its successor
/// that everything changed.
#[derive(Debug, Default)]
pub(super) struct StaleIds(Vec<u32>);

impl StaleIds {
    /// Ids held at most.
    pub(super) const CAPACITY: usize = 1 << 16;

    /// Notes that the key of `id` changed; `false` when the list overflowed.
    pub(super) fn push(&mut self, id: u32) -> bool {
        self.0.push(id);
        if self.0.len() < Self::CAPACITY {
            return true;
        }
        self.0.sort_unstable();
        self.0.dedup();
        self.0.len() <= Self::CAPACITY / 2
    }

    /// The ids, each once, in order.
    pub(super) fn ids(&mut self) -> &[u32] {
        self.0.sort_unstable();
        self.0.dedup();
        &self.0
    }

    /// Forgets them all (the instance was told, or is gone).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// Data key → the connections whose last call read it.
#[derive(Debug, Default)]
pub(super) struct ReadIndex {
    /// Readers by key; a key no connection reads is not kept.
    readers: HashMap<ReadKey, HashSet<u64>>,
}

impl ReadIndex {
    /// Connection `conn_id` read `new` in its last call, `old` in the one before.
    pub(super) fn replace(&mut self, conn_id: u64, old: &[ReadKey], new: &[ReadKey]) {
        if old == new {
            return;
        }
        self.forget(conn_id, old);
        for key in new {
            self.readers.entry(key.clone()).or_default().insert(conn_id);
        }
    }

    /// Connection `conn_id`, which read `reads`, is gone.
    pub(super) fn forget(&mut self, conn_id: u64, reads: &[ReadKey]) {
        for key in reads {
            if let Some(readers) = self.readers.get_mut(key) {
                readers.remove(&conn_id);
                if readers.is_empty() {
                    self.readers.remove(key);
                }
            }
        }
    }

    /// The connections whose last call read `key`.
    pub(super) fn readers(&self, key: &ReadKey) -> impl Iterator<Item = u64> + '_ {
        self.readers.get(key).into_iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(bucket: &str, key: &str) -> ReadKey {
        ReadKey { bucket: Arc::from(bucket), key: Arc::from(key) }
    }

    fn readers(index: &ReadIndex, bucket: &str, name: &str) -> Vec<u64> {
        let mut found: Vec<u64> = index.readers(&key(bucket, name)).collect();
        found.sort_unstable();
        found
    }

    #[test]
    fn a_connection_is_indexed_under_what_its_last_call_read_only() {
        let mut index = ReadIndex::default();
        let (aapl, msft) = (key("prices", "AAPL"), key("prices", "MSFT"));
        index.replace(1, &[], &[aapl.clone(), msft.clone()]);
        index.replace(2, &[], std::slice::from_ref(&aapl));
        assert_eq!(readers(&index, "prices", "AAPL"), [1, 2]);
        index.replace(1, &[aapl.clone(), msft.clone()], std::slice::from_ref(&msft));
        assert_eq!(readers(&index, "prices", "AAPL"), [2]);
        assert_eq!(readers(&index, "prices", "MSFT"), [1]);
        index.forget(2, &[aapl]);
        assert!(readers(&index, "prices", "AAPL").is_empty());
        assert_eq!(index.readers.len(), 1, "a key nobody reads is dropped");
    }

    #[test]
    fn stale_ids_stay_bounded_however_many_changes_wait_for_a_batch() {
        let mut stale = StaleIds::default();
        // One price changing millions of times before the next batch: folded, never grown.
        assert!((0..3_200_000).all(|_| stale.push(7) && stale.push(9)));
        assert!(stale.0.capacity() <= StaleIds::CAPACITY * 2);
        assert_eq!(stale.ids(), [7, 9]);
        // As many distinct keys as it holds: it overflows, and the instance must go.
        let mut distinct = StaleIds::default();
        assert_eq!((0..StaleIds::CAPACITY as u32).position(|id| !distinct.push(id)), Some(StaleIds::CAPACITY - 1));
    }

    #[test]
    fn snapshots_serve_plugin_reads_with_their_own_names() {
        let mut snapshot = Snapshot::default();
        snapshot.apply("prices", "AAPL", Some(Arc::from("1")), 1);
        let read = DataSource::read(&snapshot, "prices", "AAPL");
        assert_eq!(read.json.map(|json| &**json), Some("1"));
        assert!(DataSource::read(&snapshot, "prices", "MSFT").json.is_none());
    }
}
