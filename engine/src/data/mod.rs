//! Live data for plugins: named buckets of key → JSON value, held in memory for plugins to read
//! without I/O, kept on disk, and changed only through one writer that announces every change so
//! the shards can re-run the connections that read it.
//!
//! It knows nothing of plugins, shards or HTTP: the publish API (and, in a cluster, a JetStream KV
//! watch) hands it batches of [`Change`]s; the shards read [`Snapshot`]s from a [`DataView`] and
//! hear of [`ChangeSet`]s through the callback given to [`DataStore::start`].
//!
//! ## Layout
//! - `names`: valid bucket names and keys (JetStream KV's rules).
//! - `snapshot`: [`Snapshot`], every bucket at one revision, immutable.
//! - `durable`: [`DurableStore`], the buckets in a redb file.
//! - `writer`: [`DataStore`], the writer thread with group commit; [`DataView`], what readers load.

mod durable;
mod names;
mod snapshot;
mod writer;

pub use durable::{Change, DurableStore, FILE_NAME, Loaded};
pub use names::{check_bucket, check_key};
pub use snapshot::Snapshot;
pub use writer::{ChangeSet, DataStore, DataView, StoreFault};

/// The limits of the store; each change that would break one is refused with its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Buckets the store may hold.
    pub max_buckets: usize,
    /// Bytes of one key.
    pub max_key_bytes: usize,
    /// Bytes of one value, as compact JSON.
    pub max_value_bytes: usize,
    /// Bytes of every key and value together.
    pub max_data_bytes: usize,
    /// Changes one batch may carry.
    pub max_batch_keys: usize,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A bucket name or key breaks the naming rules.
    #[error("{0}")]
    BadName(String),
    /// A value is not JSON.
    #[error("value of key `{key}` is not valid JSON: {reason}")]
    BadValue {
        /// The key it was for.
        key: String,
        /// The parser's message.
        reason: String,
    },
    /// A value is over `max_value_bytes`.
    #[error("value of key `{key}` is {size} bytes, more than max_value_bytes ({limit})")]
    ValueTooLarge {
        /// The key it was for.
        key: String,
        /// Its size as compact JSON.
        size: usize,
        /// `max_value_bytes`.
        limit: usize,
    },
    /// A batch has more changes than one batch may hold.
    #[error(
        "a batch of {count} changes is more than {limit}, the most one batch may hold (max_batch_keys; on a node of \
         a cluster at most 1000, JetStream's atomic batch limit)"
    )]
    BatchTooLarge {
        /// Changes in the batch.
        count: usize,
        /// `max_batch_keys`, or the cluster's atomic batch limit.
        limit: usize,
    },
    /// The store would hold more than `max_data_bytes`.
    #[error("the store would hold {needed} bytes, more than max_data_bytes ({limit})")]
    OverBudget {
        /// Bytes the store would hold after the batch.
        needed: usize,
        /// `max_data_bytes`.
        limit: usize,
    },
    /// The store would hold more than `max_buckets` buckets.
    #[error("the store would hold {count} buckets, more than max_buckets ({limit})")]
    TooManyBuckets {
        /// Buckets the store would hold after the batch.
        count: usize,
        /// `max_buckets`.
        limit: usize,
    },
    /// The disk write failed; nothing of the batch was published.
    #[error("storage failed: {0}")]
    Storage(String),
    /// A cluster's write was sent and not acknowledged in time: it may still land.
    #[error("outcome unknown: {0}")]
    Unacknowledged(String),
    /// The store failed earlier and cannot be reopened yet: nothing is written until it can.
    #[error("the data store is unavailable until it can be reopened: {0}")]
    Unavailable(String),
    /// The engine is shutting down.
    #[error("the data store is shut down")]
    Closed,
}

impl DataLimits {
    /// A change putting `value` (any JSON text) at `key` of `bucket`, after checking the names
    /// and the value; the value is kept as compact JSON.
    pub fn put(&self, bucket: &str, key: &str, value: &str) -> Result<Change, DataError> {
        let change = self.delete(bucket, key)?;
        let parsed: serde_json::Value = serde_json::from_str(value)
            .map_err(|err| DataError::BadValue { key: key.to_owned(), reason: err.to_string() })?;
        let compact = parsed.to_string();
        if compact.len() > self.max_value_bytes {
            return Err(DataError::ValueTooLarge {
                key: key.to_owned(),
                size: compact.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(Change { value: Some(compact), ..change })
    }

    /// `change` as it must be: names checked, the value checked and compact (a change that comes
    /// from elsewhere, such as another engine, is checked as one from the publish API is).
    pub fn check(&self, change: &Change) -> Result<Change, DataError> {
        match &change.value {
            Some(value) => self.put(&change.bucket, &change.key, value),
            None => self.delete(&change.bucket, &change.key),
        }
    }

    /// A change deleting `key` of `bucket`, after checking the names.
    pub fn delete(&self, bucket: &str, key: &str) -> Result<Change, DataError> {
        check_bucket(bucket).map_err(DataError::BadName)?;
        check_key(key, self.max_key_bytes).map_err(DataError::BadName)?;
        Ok(Change { bucket: bucket.to_owned(), key: key.to_owned(), value: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits =
        DataLimits { max_buckets: 4, max_key_bytes: 8, max_value_bytes: 16, max_data_bytes: 1024, max_batch_keys: 4 };

    #[test]
    fn values_are_checked_and_kept_compact() {
        let change = LIMITS.put("prices", "AAPL", "{ \"price\" : 189.5 }").unwrap();
        assert_eq!(change.value.as_deref(), Some(r#"{"price":189.5}"#));
        assert!(matches!(LIMITS.put("prices", "AAPL", "{oops"), Err(DataError::BadValue { .. })));
        assert!(matches!(
            LIMITS.put("prices", "AAPL", "\"0123456789abcdef\""),
            Err(DataError::ValueTooLarge { size: 18, .. })
        ));
        assert!(matches!(LIMITS.put("bad/name", "k", "1"), Err(DataError::BadName(_))));
        assert!(matches!(LIMITS.delete("b", "toolongkey"), Err(DataError::BadName(_))));
    }
}
