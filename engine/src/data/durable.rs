//! [`DurableStore`]: the buckets on disk, in one redb file (`DATA_DIR/buckets.redb`). A batch of
//! changes is one write transaction committed with redb's default, immediate durability (fsync),
//! so a change the publish API acknowledged survives `kill -9`. Only the writer thread writes;
//! the file is read once, at start, into the first [`Snapshot`] (not again when a failed
//! restart has the engine open it anew: it already holds the same data in memory).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::DataError;
use super::snapshot::Snapshot;

/// Every key of every bucket: `(bucket, key)` → compact JSON text.
const ENTRIES: TableDefinition<(&str, &str), &str> = TableDefinition::new("entries");

/// The file in the data directory.
const FILE_NAME: &str = "buckets.redb";

/// One change to write: `value` `None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The bucket, a valid name.
    pub bucket: String,
    /// The key, valid for the limits.
    pub key: String,
    /// The new value as compact JSON, or `None` to delete the key.
    pub value: Option<String>,
}

/// The open database.
pub struct DurableStore {
    /// redb's handle; the file stays locked while it is open.
    db: Database,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DurableStore")
    }
}

fn storage(err: impl std::fmt::Display) -> DataError {
    DataError::Storage(err.to_string())
}

impl DurableStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<DurableStore, DataError> {
        std::fs::create_dir_all(dir).map_err(|err| storage(format!("cannot create {}: {err}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|err| storage(format!("cannot open {}: {err}", path.display())))?;
        Ok(DurableStore { db })
    }

    /// Reads every key into a snapshot; revisions are numbered from 1 in the order keys are read.
    pub fn load(&self) -> Result<Snapshot, DataError> {
        let mut snapshot = Snapshot::default();
        let read = self.db.begin_read().map_err(storage)?;
        match read.open_table(ENTRIES) {
            Ok(table) => {
                for row in table.iter().map_err(storage)? {
                    let (key, value) = row.map_err(storage)?;
                    let (bucket, key) = key.value();
                    let revision = snapshot.revision() + 1;
                    snapshot.apply(bucket, key, Some(Arc::from(value.value())), revision);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(err) => return Err(storage(err)),
        }
        Ok(snapshot)
    }

    /// Writes `changes` in one transaction and returns once it is on disk.
    pub fn write(&self, changes: &[Change]) -> Result<(), DataError> {
        let transaction = self.db.begin_write().map_err(storage)?;
        {
            let mut table = transaction.open_table(ENTRIES).map_err(storage)?;
            for change in changes {
                let key = (change.bucket.as_str(), change.key.as_str());
                match &change.value {
                    Some(value) => drop(table.insert(key, value.as_str()).map_err(storage)?),
                    None => drop(table.remove(key).map_err(storage)?),
                }
            }
        }
        transaction.commit().map_err(storage)
    }
}

#[cfg(test)]
impl Change {
    /// A change, unchecked: for tests.
    pub(crate) fn new(bucket: &str, key: &str, value: Option<&str>) -> Change {
        Change { bucket: bucket.into(), key: key.into(), value: value.map(Into::into) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_written_is_read_back_after_reopening() {
        let dir = std::env::temp_dir().join(format!("wasmpush-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = DurableStore::open(&dir).unwrap();
            assert_eq!(store.load().unwrap().key_count(), 0);
            store.write(&[Change::new("prices", "AAPL", Some("1")), Change::new("prices", "MSFT", Some("2"))]).unwrap();
            store.write(&[Change::new("prices", "MSFT", None), Change::new("accounts", "a1", Some("{}"))]).unwrap();
        }
        let snapshot = DurableStore::open(&dir).unwrap().load().unwrap();
        assert_eq!(snapshot.get("prices", "AAPL").map(|e| &*e.json), Some("1"));
        assert_eq!(snapshot.get("prices", "MSFT"), None);
        assert_eq!(snapshot.get("accounts", "a1").map(|e| &*e.json), Some("{}"));
        assert_eq!(snapshot.revision(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
