//! The host side of the contract's `data` interface: what a batch may read, and the record of
//! what each call read. The plugin host knows nothing of where data comes from: the engine hands
//! each batch a [`DataSource`] (a snapshot that does not change during the batch, so a batch sees
//! a published change whole or not at all) and the buckets the plugin is granted.

use std::sync::Arc;

use super::bindings::wasmpush::plugin::data::{Entry, Value};

/// Keys one call may read; past them a read is an error for that call.
pub const MAX_READS_PER_CALL: usize = 256;

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
    /// The value as JSON text and its revision, if the key has one.
    pub value: Option<(&'a Arc<str>, u64)>,
}

/// One key a call read.
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
        DataRead { bucket: None, key: None, value: None }
    }
}

impl BatchData {
    /// No data and no grants.
    pub fn none() -> Self {
        BatchData { source: Arc::new(NoData), grants: Arc::from([]) }
    }
}

/// The reads of the batch in progress, kept in the store.
#[derive(Debug)]
pub(super) struct BatchReads {
    /// What the batch may read.
    data: BatchData,
    /// Reads so far, by call.
    reads: Vec<Vec<ReadKey>>,
}

impl BatchReads {
    /// The reads of a batch of `calls` calls over `data`.
    pub(super) fn new(data: BatchData, calls: usize) -> Self {
        BatchReads { data, reads: vec![Vec::new(); calls] }
    }

    /// What each call read, in call order.
    pub(super) fn into_reads(self) -> Vec<Vec<ReadKey>> {
        self.reads
    }

    /// Reads `key` of `bucket` for `call`, recording it.
    pub(super) fn read(&mut self, call: u32, bucket: &str, key: &str, cached: u64) -> Result<Value, String> {
        let Some(reads) = self.reads.get_mut(call as usize) else {
            return Err(format!("call {call} is not in the running batch"));
        };
        if !self.data.grants.iter().any(|granted| **granted == *bucket) {
            return Err(format!("bucket `{bucket}` is not granted to this plugin (config: [plugins.NAME] read)"));
        }
        if reads.len() >= MAX_READS_PER_CALL {
            return Err(format!("more than {MAX_READS_PER_CALL} keys read in one call"));
        }
        let found = self.data.source.read(bucket, key);
        let bucket = found.bucket.cloned().unwrap_or_else(|| Arc::from(bucket));
        let key = found.key.cloned().unwrap_or_else(|| Arc::from(key));
        if !reads.iter().any(|read| read.bucket == bucket && read.key == key) {
            reads.push(ReadKey { bucket, key });
        }
        Ok(match found.value {
            None => Value::Missing,
            Some((_, revision)) if revision == cached => Value::Unchanged,
            Some((json, revision)) => Value::Changed(Entry { revision, json: json.to_string() }),
        })
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
            DataRead { bucket: bucket_found, key: key_found, value: key_found.map(|_| (&self.2, 7)) }
        }
    }

    fn reads() -> BatchReads {
        let source = OneKey(Arc::from("prices"), Arc::from("AAPL"), Arc::from(r#"{"price":1}"#));
        let grants: Arc<[Arc<str>]> = Arc::from([Arc::from("prices")]);
        BatchReads::new(BatchData { source: Arc::new(source), grants }, 2)
    }

    #[test]
    fn reads_answer_by_revision_and_are_recorded_per_call_once() {
        let mut reads = reads();
        let first = reads.read(0, "prices", "AAPL", 0);
        assert!(
            matches!(&first, Ok(Value::Changed(Entry { revision: 7, json })) if json == r#"{"price":1}"#),
            "{first:?}"
        );
        assert!(matches!(reads.read(0, "prices", "AAPL", 7), Ok(Value::Unchanged)));
        assert!(matches!(reads.read(1, "prices", "MSFT", 0), Ok(Value::Missing)));
        let recorded = reads.into_reads();
        let names = |call: usize| recorded[call].iter().map(|r| format!("{}/{}", r.bucket, r.key)).collect::<Vec<_>>();
        assert_eq!((names(0), names(1)), (vec!["prices/AAPL".to_owned()], vec!["prices/MSFT".to_owned()]));
    }

    #[test]
    fn a_bucket_not_granted_or_a_call_not_in_the_batch_is_an_error_and_records_nothing() {
        let mut reads = reads();
        assert!(reads.read(0, "accounts", "a1", 0).unwrap_err().contains("not granted"));
        assert!(reads.read(5, "prices", "AAPL", 0).unwrap_err().contains("not in the running batch"));
        assert!(reads.into_reads().iter().all(Vec::is_empty));
    }

    #[test]
    fn reads_per_call_are_capped() {
        let mut reads = reads();
        for n in 0..MAX_READS_PER_CALL {
            reads.read(0, "prices", &format!("k{n}"), 0).unwrap();
        }
        assert!(reads.read(0, "prices", "one-more", 0).unwrap_err().contains("more than"));
        assert!(reads.read(1, "prices", "AAPL", 0).is_ok(), "another call has its own budget");
    }
}
