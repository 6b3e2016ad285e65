//! [`Snapshot`]: every bucket's keys and values at one revision, immutable. Shards read plugin
//! data from a snapshot in memory, without a lock or I/O; the writer makes the next one from the
//! last (persistent maps share everything that did not change) and publishes it in one pointer
//! swap, so a reader sees a whole batch of changes or none of it.

use std::sync::Arc;

use imbl::{HashMap, OrdMap};

/// One key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value as compact JSON text.
    pub json: Arc<str>,
    /// The store revision that wrote it; greater than every revision before it, so a plugin that
    /// cached a value knows from the revision alone whether it is still current.
    pub revision: u64,
}

/// A key with its bucket: `(bucket, key)`, the names shared with the snapshot that holds them.
pub type KeyName = (Arc<str>, Arc<str>);

/// One bucket: its keys in order (for listing by page).
pub type Bucket = OrdMap<Arc<str>, Entry>;

/// Every bucket at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The buckets by name; a bucket with no keys is not kept.
    buckets: HashMap<Arc<str>, Bucket>,
    /// The revision of the last change applied; 0 for an empty store.
    revision: u64,
    /// Bytes of every key and value held, the measure of `max_data_bytes`.
    bytes: usize,
    /// Which history `revision` counts in: 0 for the node's own; on a node of a cluster, the
    /// creation time of the data stream it follows (a stream recreated under the same name
    /// counts its revisions anew, so a node must not resume one from the other's revision).
    origin: u64,
    /// Each bucket's bytes and changes applied, for the console.
    tallies: HashMap<Arc<str>, Tally>,
}

/// One bucket's size and changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketTally {
    /// Keys it holds.
    pub keys: usize,
    /// Bytes of its keys and values.
    pub bytes: usize,
    /// Changes applied to it since the engine loaded it (a bucket emptied starts anew).
    pub updates: u64,
}

/// What a snapshot keeps of a bucket beside its keys.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    bytes: usize,
    updates: u64,
}

/// A read of one key: the bucket and key names as the snapshot holds them (shared, so recording
/// what a call read copies no string), and the entry if there is one.
#[derive(Debug)]
pub struct Lookup<'a> {
    /// The bucket's name, shared with the snapshot when the bucket exists.
    pub bucket: Option<&'a Arc<str>>,
    /// The key, shared with the snapshot when it exists.
    pub key: Option<&'a Arc<str>>,
    /// Its value, if it has one.
    pub entry: Option<&'a Entry>,
}

impl Snapshot {
    /// A snapshot holding exactly `puts`, each `(bucket, key, JSON)`, sorted by bucket and then
    /// key with no key twice, every one at `revision` of history `origin`; with the names of its
    /// keys as it holds them, in the order of `puts`. Builds each bucket in one pass, where
    /// [`Snapshot::apply`] would look every key up again (a resync of 100,000 keys).
    pub(crate) fn of_sorted<'a>(
        puts: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
        revision: u64,
        origin: u64,
    ) -> (Snapshot, Vec<KeyName>) {
        let mut snapshot = Snapshot { revision, origin, ..Snapshot::default() };
        let mut names: Vec<KeyName> = Vec::new();
        let mut filling: Option<(Arc<str>, Bucket, Tally)> = None;
        for (bucket, key, json) in puts {
            let (name, keys, tally) = match &mut filling {
                Some(filled) if *filled.0 == *bucket => filled,
                other => {
                    snapshot.add_bucket(other.take());
                    other.insert((Arc::from(bucket), Bucket::default(), Tally::default()))
                }
            };
            let key: Arc<str> = Arc::from(key);
            tally.bytes += key.len() + json.len();
            tally.updates += 1;
            let twice = keys.insert(key.clone(), Entry { json: Arc::from(json), revision });
            debug_assert!(twice.is_none(), "{bucket}/{key} given twice");
            names.push((name.clone(), key));
        }
        snapshot.add_bucket(filling);
        (snapshot, names)
    }

    /// Adds a bucket built whole, if there is one.
    fn add_bucket(&mut self, bucket: Option<(Arc<str>, Bucket, Tally)>) {
        let Some((name, keys, tally)) = bucket else { return };
        debug_assert!(!self.buckets.contains_key(&name), "bucket {name} given in two runs: not sorted");
        self.bytes += tally.bytes;
        self.tallies.insert(name.clone(), tally);
        self.buckets.insert(name, keys);
    }

    /// The revision of the last change applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Sets the revision of the last change applied (a store's, which deletes move too).
    pub(crate) fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    /// Which history the revision counts in (0: the node's own; else a cluster stream's).
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// Sets which history the revision counts in.
    pub(crate) fn set_origin(&mut self, origin: u64) {
        self.origin = origin;
    }

    /// Every key held, with its bucket, bucket by bucket.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> {
        self.buckets.iter().flat_map(|(bucket, keys)| keys.keys().map(move |key| (bucket, key)))
    }

    /// Bytes of every key and value held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many buckets hold keys.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// How many keys all buckets hold.
    pub fn key_count(&self) -> usize {
        self.buckets.values().map(OrdMap::len).sum()
    }

    /// Each bucket that holds keys, with its size and the changes applied to it.
    pub fn tallies(&self) -> impl Iterator<Item = (&Arc<str>, BucketTally)> {
        self.buckets.iter().map(|(name, keys)| {
            let Tally { bytes, updates } = self.tallies.get(name).copied().unwrap_or_default();
            (name, BucketTally { keys: keys.len(), bytes, updates })
        })
    }

    /// The bucket named `name`, if it holds keys.
    pub fn bucket(&self, name: &str) -> Option<(&Arc<str>, &Bucket)> {
        self.buckets.get_key_value(name)
    }

    /// Looks `key` of `bucket` up.
    pub fn lookup(&self, bucket: &str, key: &str) -> Lookup<'_> {
        match self.buckets.get_key_value(bucket) {
            None => Lookup { bucket: None, key: None, entry: None },
            Some((name, keys)) => match keys.get_key_value(key) {
                None => Lookup { bucket: Some(name), key: None, entry: None },
                Some((key, entry)) => Lookup { bucket: Some(name), key: Some(key), entry: Some(entry) },
            },
        }
    }

    /// The value of `key` in `bucket`.
    pub fn get(&self, bucket: &str, key: &str) -> Option<&Entry> {
        self.lookup(bucket, key).entry
    }

    /// Up to `limit` keys of `bucket` after `after` (from the first when `None`), in order.
    pub fn keys_after(&self, bucket: &str, after: Option<&str>, limit: usize) -> Vec<Arc<str>> {
        let Some(keys) = self.buckets.get(bucket) else { return Vec::new() };
        let range = match after {
            Some(after) => keys.range::<_, str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => keys.range::<_, str>(..),
        };
        range.take(limit).map(|(key, _)| key.clone()).collect()
    }

    /// This snapshot with `key` of `bucket` set to `json` (or removed, for `None`) at revision
    /// `revision`; returns the names as the new snapshot holds them, for the change set.
    pub(crate) fn apply(
        &mut self,
        bucket: &str,
        key: &str,
        json: Option<Arc<str>>,
        revision: u64,
    ) -> (Arc<str>, Arc<str>) {
        let bucket_name =
            self.buckets.get_key_value(bucket).map_or_else(|| Arc::from(bucket), |(name, _)| name.clone());
        let mut keys = self.buckets.remove(bucket).unwrap_or_default();
        let key_name = keys.get_key_value(key).map_or_else(|| Arc::from(key), |(name, _)| name.clone());
        let mut tally = self.tallies.remove(bucket).unwrap_or_default();
        if let Some(old) = keys.remove(key) {
            self.bytes -= key.len() + old.json.len();
            tally.bytes -= key.len() + old.json.len();
        }
        if let Some(json) = json {
            self.bytes += key.len() + json.len();
            tally.bytes += key.len() + json.len();
            keys.insert(key_name.clone(), Entry { json, revision });
        }
        if !keys.is_empty() {
            tally.updates += 1;
            self.tallies.insert(bucket_name.clone(), tally);
            self.buckets.insert(bucket_name.clone(), keys);
        }
        self.revision = revision;
        (bucket_name, key_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_make_a_new_snapshot_and_leave_the_old_one_whole() {
        let mut first = Snapshot::default();
        first.apply("prices", "AAPL", Some(Arc::from("1")), 1);
        let mut second = first.clone();
        second.apply("prices", "AAPL", Some(Arc::from("22")), 2);
        second.apply("prices", "MSFT", Some(Arc::from("3")), 3);
        assert_eq!(first.get("prices", "AAPL").map(|e| &*e.json), Some("1"));
        assert_eq!(first.get("prices", "MSFT"), None);
        assert_eq!(second.get("prices", "AAPL"), Some(&Entry { json: Arc::from("22"), revision: 2 }));
        assert_eq!((second.revision(), second.bytes(), second.key_count()), (3, 4 + 2 + 4 + 1, 2));
        let tallies: Vec<_> = second.tallies().map(|(name, tally)| (name.to_string(), tally)).collect();
        assert_eq!(tallies, [("prices".to_owned(), BucketTally { keys: 2, bytes: 11, updates: 3 })]);
    }

    #[test]
    fn a_snapshot_built_whole_equals_one_built_key_by_key() {
        let puts = [("a", "x", "1"), ("a", "y", "22"), ("b", "x", "333")];
        let (whole, names) = Snapshot::of_sorted(puts, 7, 9);
        let mut by_key = Snapshot::default();
        for (bucket, key, json) in puts {
            by_key.apply(bucket, key, Some(Arc::from(json)), 7);
        }
        let named: Vec<_> = names.iter().map(|(bucket, key)| format!("{bucket}/{key}")).collect();
        assert_eq!(named, ["a/x", "a/y", "b/x"]);
        assert_eq!((whole.revision(), whole.origin(), whole.bytes(), whole.key_count()), (7, 9, by_key.bytes(), 3));
        let tallies = |snapshot: &Snapshot| {
            let mut tallies: Vec<_> = snapshot.tallies().map(|(name, tally)| (name.to_string(), tally)).collect();
            tallies.sort_by(|x, y| x.0.cmp(&y.0));
            tallies
        };
        assert_eq!(tallies(&whole), tallies(&by_key));
        for (bucket, key, _) in puts {
            assert_eq!(whole.get(bucket, key), by_key.get(bucket, key));
        }
        let mut emptied = whole.clone();
        emptied.apply("b", "x", None, 8);
        assert_eq!((emptied.bytes(), emptied.bucket_count()), (1 + 1 + 1 + 2, 1), "its sizes hold for later changes");
    }

    #[test]
    fn a_bucket_left_without_keys_goes_away() {
        let mut snapshot = Snapshot::default();
        snapshot.apply("a", "k", Some(Arc::from("true")), 1);
        assert_eq!(snapshot.bucket_count(), 1);
        snapshot.apply("a", "k", None, 2);
        assert_eq!((snapshot.bucket_count(), snapshot.bytes()), (0, 0));
        assert!(snapshot.lookup("a", "k").bucket.is_none());
    }

    #[test]
    fn keys_are_listed_in_pages() {
        let mut snapshot = Snapshot::default();
        for (revision, key) in ["c", "a", "b", "d"].into_iter().enumerate() {
            snapshot.apply("b", key, Some(Arc::from("0")), revision as u64 + 1);
        }
        let page =
            |after, limit| snapshot.keys_after("b", after, limit).iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(page(None, 2), ["a", "b"]);
        assert_eq!(page(Some("b"), 2), ["c", "d"]);
        assert!(page(Some("d"), 2).is_empty());
        assert!(snapshot.keys_after("nope", None, 5).is_empty());
    }

    #[test]
    fn lookups_share_the_snapshot_names() {
        let mut snapshot = Snapshot::default();
        let (bucket, key) = snapshot.apply("prices", "AAPL", Some(Arc::from("1")), 1);
        let found = snapshot.lookup("prices", "AAPL");
        assert!(Arc::ptr_eq(found.bucket.unwrap(), &bucket) && Arc::ptr_eq(found.key.unwrap(), &key));
        let missing = snapshot.lookup("prices", "MSFT");
        assert!(missing.bucket.is_some() && missing.key.is_none() && missing.entry.is_none());
    }
}
