//! The host side of the contract's `data` interface: what a batch may read, and the ids an
//! instance knows data keys by. The plugin host knows nothing of where data comes from: the
//! engine hands each batch a [`DataSource`] (a snapshot that does not change during the batch, so
//! a batch sees a published change whole or not at all) and the buckets the plugin is granted.
//!
//! Each key an instance reads is given an id for the instance's life ([`KeyTable`]). The guest may
//! keep a value and use it again without a host call until the engine lists the key's id as stale,
//! and it reports the ids each call used in the call's outcome: a value that did not change costs
//! no crossing, and the engine still learns what every call read.
//!
//! What the host allocates on a plugin's behalf is bounded and counted against that instance, so
//! no guest can make the engine allocate what its own memory cap would not hold: the value bytes
//! one batch's reads copy out ([`DataAccess::batch_budget`], the instance's memory cap), the keys
//! one `get-many` lists ([`MAX_KEYS_PER_READ`]), the length of a bucket name and a key, and the
//! bytes of the names an instance's key table holds ([`KeyTable`], a quarter of its memory cap).
//! A read over a bound traps its call ([`HostMemoryRefused`]): the instance and its key table go,
//! the batch is replayed call by call, and only the culprit is faulted — never the host's
//! memory, a stalled shard, or a neighbour left with a full key table.

use std::collections::HashMap;
use std::sync::Arc;

use super::bindings::wasmpush::plugin::data::Value;
use super::fault::HostMemoryRefused;

/// Keys one instance may know; past them a read of a new key is an error for its call (a new
/// instance starts with none).
pub const MAX_KEYS_PER_INSTANCE: usize = 1 << 20;

/// Keys one `get-many` may list.
pub const MAX_KEYS_PER_READ: usize = 10_000;

/// Bytes of a bucket name or a key a plugin may ask for: no stored name is longer (the data
/// store's own limits are at most this).
const MAX_NAME_BYTES: usize = 1024;

/// What the key table counts for one key besides its names: its map entry and its slot.
const KEY_OVERHEAD_BYTES: usize = 64;

/// Where a batch's reads are served from.
pub trait DataSource: Send + Sync {
    /// Looks `key` of `bucket` up.
    fn read(&self, bucket: &str, key: &str) -> DataRead<'_>;
}

/// What a [`DataSource`] holds for one key. The names are the source's own when it has them, so
/// recording a read copies no string.
#[derive(Debug, Clone, Copy)]
pub struct DataRead<'a> {
    /// The bucket's name, if the source holds the bucket.
    pub bucket: Option<&'a Arc<str>>,
    /// The key, if the source holds it.
    pub key: Option<&'a Arc<str>>,
    /// The value as JSON text, if the key has one.
    pub json: Option<&'a Arc<str>>,
}

/// One data key: a bucket and a key in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadKey {
    /// The bucket.
    pub bucket: Arc<str>,
    /// The key.
    pub key: Arc<str>,
}

/// What one batch may read.
#[derive(Clone)]
pub struct BatchData {
    /// The data, unchanged for the whole batch.
    pub source: Arc<dyn DataSource>,
    /// The buckets the plugin may read.
    pub grants: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for BatchData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchData").field("grants", &self.grants).finish_non_exhaustive()
    }
}

/// A source with nothing in it: what an instance's start function reads.
struct NoData;

impl DataSource for NoData {
    fn read(&self, _: &str, _: &str) -> DataRead<'_> {
        DataRead { bucket: None, key: None, json: None }
    }
}

/// The one "no data" every instance starts from and returns to after a batch, made once: it is
/// set after every batch, which must not allocate for it.
static NONE: std::sync::LazyLock<BatchData> =
    std::sync::LazyLock::new(|| BatchData { source: Arc::new(NoData), grants: Arc::from([]) });

impl BatchData {
    /// No data and no grants.
    pub fn none() -> Self {
        NONE.clone()
    }
}

/// The keys an instance has read, by id, and the host memory they hold.
#[derive(Debug)]
pub(super) struct KeyTable {
    /// Id by key.
    ids: HashMap<ReadKey, u32>,
    /// Key by id (ids are indexes).
    names: Vec<ReadKey>,
    /// Host bytes the table holds: each key's overhead, and the names it had to copy (a key the
    /// store does not hold has no shared name).
    bytes: usize,
    /// Bytes it may hold.
    budget: usize,
}

impl KeyTable {
    /// An empty table that may hold `budget` bytes.
    fn new(budget: usize) -> Self {
        KeyTable { ids: HashMap::new(), names: Vec::new(), bytes: 0, budget }
    }

    /// The id of `key`, given one now if it has none; `copied` is the bytes of its names that
    /// were copied for it (not shared with the store).
    fn intern(&mut self, key: ReadKey, copied: usize) -> Result<u32, HostMemoryRefused> {
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        if self.names.len() >= MAX_KEYS_PER_INSTANCE {
            return Err(HostMemoryRefused(format!(
                "the instance read more than {MAX_KEYS_PER_INSTANCE} distinct keys"
            )));
        }
        let cost = KEY_OVERHEAD_BYTES + copied;
        if self.bytes + cost > self.budget {
            return Err(HostMemoryRefused(format!(
                "the instance read more distinct keys than {} bytes of key names hold",
                self.budget
            )));
        }
        self.bytes += cost;
        let id = self.names.len() as u32;
        self.names.push(key.clone());
        self.ids.insert(key, id);
        Ok(id)
    }

    /// The id of `key`, if the instance has read it.
    pub(super) fn id(&self, key: &ReadKey) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The key of `id`, if it is one.
    pub(super) fn name(&self, id: u32) -> Option<&ReadKey> {
        self.names.get(id as usize)
    }
}

/// An instance's access to data: the batch in progress and the keys it knows.
pub(super) struct DataAccess {
    /// What the batch in progress may read.
    batch: BatchData,
    /// The keys the instance has read.
    pub(super) keys: KeyTable,
    /// Value bytes the reads of one batch may copy out.
    batch_budget: usize,
    /// Value bytes the batch in progress has copied out.
    copied: usize,
}

impl DataAccess {
    /// Access with no data and no keys yet, for an instance capped at `memory_bytes`: a batch
    /// may copy out that many value bytes, its key table hold a quarter of it.
    pub(super) fn new(memory_bytes: usize) -> Self {
        DataAccess {
            batch: BatchData::none(),
            keys: KeyTable::new(memory_bytes / 4),
            batch_budget: memory_bytes,
            copied: 0,
        }
    }

    /// Starts a batch reading `batch` (or, with [`BatchData::none`], ends one).
    pub(super) fn set_batch(&mut self, batch: BatchData) {
        self.batch = batch;
        self.copied = 0;
    }

    /// Reads `key` of `bucket`: its value, or the guest's error (the bucket is not granted); or
    /// a refusal that traps the call, when the names or the batch's budget do not allow it.
    pub(super) fn read(&mut self, bucket: &str, key: &str) -> Result<Result<Value, String>, HostMemoryRefused> {
        if !self.batch.grants.iter().any(|granted| **granted == *bucket) {
            return Ok(Err(format!("bucket `{bucket}` is not granted to this plugin (config: [plugins.NAME] read)")));
        }
        if key.len() > MAX_NAME_BYTES {
            return Err(HostMemoryRefused(format!(
                "a key of {} bytes is longer than any can be ({MAX_NAME_BYTES})",
                key.len()
            )));
        }
        let found = self.batch.source.read(bucket, key);
        let size = found.json.map_or(0, |json| json.len());
        if self.copied + size > self.batch_budget {
            return Err(HostMemoryRefused(format!(
                "a batch read more than {} bytes of data, the plugin's memory cap",
                self.batch_budget
            )));
        }
        let copied = match (found.bucket, found.key) {
            (Some(_), Some(_)) => 0,
            (Some(_), None) => key.len(),
            _ => bucket.len() + key.len(),
        };
        let name = ReadKey {
            bucket: found.bucket.cloned().unwrap_or_else(|| Arc::from(bucket)),
            key: found.key.cloned().unwrap_or_else(|| Arc::from(key)),
        };
        let key_id = self.keys.intern(name, copied)?;
        self.copied += size;
        Ok(Ok(Value { key_id, json: found.json.map(|json| json.to_string()) }))
    }

    /// Reads each of `keys` of `bucket`: one answer per key, in order, or the first error. A list
    /// over [`MAX_KEYS_PER_READ`] is refused before anything is read.
    pub(super) fn read_many(
        &mut self,
        bucket: &str,
        keys: &[String],
    ) -> Result<Result<Vec<Value>, String>, HostMemoryRefused> {
        if keys.len() > MAX_KEYS_PER_READ {
            return Err(HostMemoryRefused(format!("a get-many of {} keys, more than {MAX_KEYS_PER_READ}", keys.len())));
        }
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match self.read(bucket, key)? {
                Ok(value) => values.push(value),
                Err(err) => return Ok(Err(err)),
            }
        }
        Ok(Ok(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneKey(Arc<str>, Arc<str>, Arc<str>);

    impl DataSource for OneKey {
        fn read(&self, bucket: &str, key: &str) -> DataRead<'_> {
            let bucket_found = (bucket == &*self.0).then_some(&self.0);
            let key_found = (bucket_found.is_some() && key == &*self.1).then_some(&self.1);
            DataRead { bucket: bucket_found, key: key_found, json: key_found.map(|_| &self.2) }
        }
    }

    fn access_capped(memory_bytes: usize) -> DataAccess {
        let source = OneKey(Arc::from("prices"), Arc::from("AAPL"), Arc::from(r#"{"price":1}"#));
        let grants: Arc<[Arc<str>]> = Arc::from([Arc::from("prices")]);
        let mut access = DataAccess::new(memory_bytes);
        access.set_batch(BatchData { source: Arc::new(source), grants });
        access
    }

    fn access() -> DataAccess {
        access_capped(1 << 20)
    }

    #[test]
    fn what_a_plugin_makes_the_host_copy_or_keep_is_bounded_by_its_memory_cap() {
        let mut access = access_capped(1024);
        let repeated = vec!["AAPL".to_owned(); 200];
        let err = access.read_many("prices", &repeated).unwrap_err().0;
        assert!(err.contains("more than 1024 bytes of data"), "one key listed many times is copied many times: {err}");
        access.set_batch(access.batch.clone());
        assert!(access.read("prices", "AAPL").unwrap().is_ok(), "the budget is per batch");
        let err = access.read_many("prices", &vec![String::new(); MAX_KEYS_PER_READ + 1]).unwrap_err().0;
        assert!(err.contains("more than 10000"), "{err}");
        assert!(access.read("prices", &"k".repeat(MAX_NAME_BYTES + 1)).unwrap_err().0.contains("longer than any"));
        let names_held =
            (0..100).map(|i| access.read("prices", &format!("missing-{i:0>100}"))).position(|r| r.is_err());
        assert_eq!(names_held, Some(1), "a quarter of 1 KiB holds one copied name of this length and no second");
        assert!(access.keys.bytes <= 256);
    }

    #[test]
    fn each_key_gets_one_id_for_the_instance_and_missing_keys_get_one_too() {
        let mut access = access();
        let first = access.read("prices", "AAPL").unwrap().unwrap();
        assert_eq!((first.key_id, first.json.as_deref()), (0, Some(r#"{"price":1}"#)));
        assert_eq!(access.read("prices", "AAPL").unwrap().unwrap().key_id, 0);
        let missing = access.read("prices", "MSFT").unwrap().unwrap();
        assert_eq!((missing.key_id, missing.json), (1, None));
        let aapl = ReadKey { bucket: Arc::from("prices"), key: Arc::from("AAPL") };
        assert_eq!(access.keys.id(&aapl), Some(0));
        assert_eq!(access.keys.name(1).map(|k| &*k.key), Some("MSFT"));
        assert!(access.keys.name(2).is_none());
    }

    #[test]
    fn a_bucket_not_granted_is_an_error_and_gets_no_id() {
        let mut access = access();
        assert!(access.read("accounts", "a1").unwrap().unwrap_err().contains("not granted"), "the guest's error");
        assert!(access.keys.name(0).is_none());
    }
}
