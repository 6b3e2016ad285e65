//! The host side of the contract's `data` interface: what a batch may read, and the ids an
//! instance knows data keys by. The plugin host knows nothing of where data comes from: the
//! engine hands each batch a [`DataSource`] (a snapshot that does not change during the batch, so
//! a batch sees a published change whole or not at all) and the buckets the plugin is granted.
//!
//! Each key an instance reads is given an id for the instance's life ([`KeyTable`]). The guest may
//! keep a value and use it again without a host call until the engine lists the key's id as stale,
//! and it reports the ids each call used in the call's outcome: a value that did not change costs
//! no crossing, and the engine still learns what every call read.

use std::collections::HashMap;
use std::sync::Arc;

use super::bindings::wasmpush::plugin::data::Value;

/// Keys one instance may know; past them a read of a new key is an error for its call (a new
/// instance starts with none).
pub const MAX_KEYS_PER_INSTANCE: usize = 1 << 20;

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

/// The keys an instance has read, by id.
#[derive(Debug, Default)]
pub(super) struct KeyTable {
    /// Id by key.
    ids: HashMap<ReadKey, u32>,
    /// Key by id (ids are indexes).
    names: Vec<ReadKey>,
}

impl KeyTable {
    /// The id of `key`, given one now if it has none.
    fn intern(&mut self, key: ReadKey) -> Result<u32, String> {
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        if self.names.len() >= MAX_KEYS_PER_INSTANCE {
            return Err(format!("this plugin instance has read more than {MAX_KEYS_PER_INSTANCE} distinct keys"));
        }
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
    pub(super) batch: BatchData,
    /// The keys the instance has read.
    pub(super) keys: KeyTable,
}

impl DataAccess {
    /// Access with no data and no keys yet.
    pub(super) fn new() -> Self {
        DataAccess { batch: BatchData::none(), keys: KeyTable::default() }
    }

    /// Reads `key` of `bucket`, if the bucket is granted.
    pub(super) fn read(&mut self, bucket: &str, key: &str) -> Result<Value, String> {
        if !self.batch.grants.iter().any(|granted| **granted == *bucket) {
            return Err(format!("bucket `{bucket}` is not granted to this plugin (config: [plugins.NAME] read)"));
        }
        let found = self.batch.source.read(bucket, key);
        let name = ReadKey {
            bucket: found.bucket.cloned().unwrap_or_else(|| Arc::from(bucket)),
            key: found.key.cloned().unwrap_or_else(|| Arc::from(key)),
        };
        let key_id = self.keys.intern(name)?;
        Ok(Value { key_id, json: found.json.map(|json| json.to_string()) })
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

    fn access() -> DataAccess {
        let source = OneKey(Arc::from("prices"), Arc::from("AAPL"), Arc::from(r#"{"price":1}"#));
        let grants: Arc<[Arc<str>]> = Arc::from([Arc::from("prices")]);
        DataAccess { batch: BatchData { source: Arc::new(source), grants }, keys: KeyTable::default() }
    }

    #[test]
    fn each_key_gets_one_id_for_the_instance_and_missing_keys_get_one_too() {
        let mut access = access();
        let first = access.read("prices", "AAPL").unwrap();
        assert_eq!((first.key_id, first.json.as_deref()), (0, Some(r#"{"price":1}"#)));
        assert_eq!(access.read("prices", "AAPL").unwrap().key_id, 0);
        let missing = access.read("prices", "MSFT").unwrap();
        assert_eq!((missing.key_id, missing.json), (1, None));
        let aapl = ReadKey { bucket: Arc::from("prices"), key: Arc::from("AAPL") };
        assert_eq!(access.keys.id(&aapl), Some(0));
        assert_eq!(access.keys.name(1).map(|k| &*k.key), Some("MSFT"));
        assert!(access.keys.name(2).is_none());
    }

    #[test]
    fn a_bucket_not_granted_is_an_error_and_gets_no_id() {
        let mut access = access();
        assert!(access.read("accounts", "a1").unwrap_err().contains("not granted"));
        assert!(access.keys.name(0).is_none());
    }
}
