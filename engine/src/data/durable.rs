//! [`DurableStore`]: the buckets on disk, in one redb file (`DATA_DIR/buckets.redb`). A batch of
//! changes is one write transaction committed with redb's default, immediate durability (fsync),
//! so a change the publish API acknowledged survives `kill -9`. Only the writer thread writes;
//! the file is read once, at start, into the first [`Snapshot`] (not again when a failed
//! restart has the engine open it anew: it already holds the same data in memory).
//!
//! Each value is stored with the revision that wrote it, and the store's revision (which deletes
//! move too) beside them: revisions never go backwards, across restarts and handovers, so a
//! revision (and the ETag made from it) names one value for good.
//!
//! A disk error fails the transaction it hit, and redb then refuses every later one until it is
//! reopened: [`DurableStore::reopen`] does that, and checks that the file holds the revision the
//! engine last acknowledged. A file redb cannot read (damaged) is named in the error; a value in
//! it that is not valid JSON, or under a name no longer valid, is left out of the snapshot and
//! counted, never served.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::snapshot::Snapshot;
use super::{DataError, DataLimits};

/// Every key of every bucket: `(bucket, key)` → (revision, compact JSON text).
const ENTRIES: TableDefinition<(&str, &str), (u64, &str)> = TableDefinition::new("entries_v2");

/// The entries of a store written before revisions were kept: `(bucket, key)` → JSON text.
/// Read once, then moved into [`ENTRIES`].
const UNREVISED_ENTRIES: TableDefinition<(&str, &str), &str> = TableDefinition::new("entries");

/// The store's own figures: `revision`, the last revision written, and `origin`, which history
/// it counts in.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The key of the store's revision in [`META`].
const REVISION: &str = "revision";

/// The key of the history the revision counts in (`Snapshot::origin`) in [`META`].
const ORIGIN: &str = "origin";

/// The file in the data directory.
pub const FILE_NAME: &str = "buckets.redb";

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

/// A snapshot read from disk, and what was left out of it.
#[derive(Debug)]
pub struct Loaded {
    /// Every valid entry, at the store's revision.
    pub snapshot: Snapshot,
    /// Entries left out: a value that is not JSON, or a name no longer valid.
    pub skipped: usize,
}

/// The open database.
pub struct DurableStore {
    /// redb's handle; the file stays locked while it is open. `None` after a failed reopen.
    db: Option<Database>,
    /// The file.
    path: PathBuf,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn storage(err: impl std::fmt::Display) -> DataError {
    DataError::Storage(err.to_string())
}

impl DurableStore {
    /// Opens (or creates) the store in `dir`. A file redb cannot read is an error naming it (redb
    /// may panic on some damage: that is caught and reported the same way).
    pub fn open(dir: &Path) -> Result<DurableStore, DataError> {
        std::fs::create_dir_all(dir).map_err(|err| storage(format!("cannot create {}: {err}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = open_file(&path)?;
        Ok(DurableStore { db: Some(db), path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<&Database, DataError> {
        self.db.as_ref().ok_or_else(|| storage(format!("{} is not open (its last reopen failed)", self.path.display())))
    }

    /// Reads every key into a snapshot at the store's revision; each entry is checked as a
    /// published one is (names, valid JSON) and left out if it fails. A store written before
    /// revisions were kept has its keys numbered from 1 once, and kept so.
    pub fn load(&mut self, limits: &DataLimits) -> Result<Loaded, DataError> {
        let path = self.path.clone();
        caught(&path, || self.migrate())?;
        let db = self.db()?;
        caught(&path, || read_entries(db, limits))
    }

    /// Moves the entries of a store from before revisions into [`ENTRIES`], numbering them 1..N.
    fn migrate(&self) -> Result<(), DataError> {
        // Asked in a read: opening a table in a write transaction creates it.
        match self.db()?.begin_read().map_err(storage)?.open_table(UNREVISED_ENTRIES) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(err) => return Err(storage(err)),
            Ok(_) => {}
        }
        let write = self.db()?.begin_write().map_err(storage)?;
        let old: Vec<(String, String, String)> = match write.open_table(UNREVISED_ENTRIES) {
            Ok(table) => table
                .iter()
                .map_err(storage)?
                .map(|row| {
                    let (key, value) = row.map_err(storage)?;
                    let (bucket, key) = key.value();
                    Ok((bucket.to_owned(), key.to_owned(), value.value().to_owned()))
                })
                .collect::<Result<_, DataError>>()?,
            Err(err) => return Err(storage(err)),
        };
        {
            let mut entries = write.open_table(ENTRIES).map_err(storage)?;
            for (revision, (bucket, key, value)) in (1..).zip(&old) {
                entries.insert((bucket.as_str(), key.as_str()), (revision, value.as_str())).map_err(storage)?;
            }
            write.open_table(META).map_err(storage)?.insert(REVISION, old.len() as u64).map_err(storage)?;
        }
        write.delete_table(UNREVISED_ENTRIES).map_err(storage)?;
        write.commit().map_err(storage)?;
        tracing::info!(keys = old.len(), file = %self.path.display(), "data store moved to revisioned entries");
        Ok(())
    }

    /// Writes `batches` (each change with the revision of its batch) in one transaction, and
    /// `revision` as the store's, counted in history `origin`; returns once it is on disk, or,
    /// with [`Flush::Later`], once it is committed in memory.
    pub fn write(
        &self,
        batches: &[(u64, Vec<Change>)],
        revision: u64,
        origin: u64,
        flush: Flush,
    ) -> Result<(), DataError> {
        let mut transaction = self.db()?.begin_write().map_err(storage)?;
        if flush == Flush::Later {
            transaction.set_durability(redb::Durability::None).map_err(storage)?;
        }
        {
            let mut table = transaction.open_table(ENTRIES).map_err(storage)?;
            for (batch_revision, changes) in batches {
                for change in changes {
                    let key = (change.bucket.as_str(), change.key.as_str());
                    match &change.value {
                        Some(value) => drop(table.insert(key, (*batch_revision, value.as_str())).map_err(storage)?),
                        None => drop(table.remove(key).map_err(storage)?),
                    }
                }
            }
            let mut meta = transaction.open_table(META).map_err(storage)?;
            meta.insert(REVISION, revision).map_err(storage)?;
            meta.insert(ORIGIN, origin).map_err(storage)?;
        }
        transaction.commit().map_err(storage)
    }

    /// Closes the file and opens it again (redb refuses every write after an I/O error until
    /// then), then checks it holds a revision in `acknowledged`: the revision of the last write
    /// the engine acknowledged, or down to the last one flushed when later ones were not (a
    /// failure may lose them). An error if it cannot be opened or holds another revision;
    /// otherwise the revision it holds.
    pub fn reopen(&mut self, acknowledged: RangeInclusive<u64>) -> Result<u64, DataError> {
        drop(self.db.take());
        let db = open_file(&self.path)?;
        let stored = caught(&self.path, || stored_revision(&db))?;
        self.db = Some(db);
        if !acknowledged.contains(&stored) {
            return Err(storage(format!(
                "{} holds revision {stored} after reopening, not {}, the last acknowledged",
                self.path.display(),
                acknowledged.end()
            )));
        }
        Ok(stored)
    }
}

/// When a write must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Before [`DurableStore::write`] returns (an fsync).
    Now,
    /// With the next write flushed now, or a clean close. A crash before then loses it whole,
    /// never part of it: the store then holds an earlier revision.
    Later,
}

/// Opens redb's file at `path`; an error (or a panic in redb over a damaged file) names the file.
fn open_file(path: &Path) -> Result<Database, DataError> {
    caught(path, || Database::create(path).map_err(storage))
        .map_err(|err| storage(format!("cannot open {}: {}", path.display(), cause(&err))))
}

/// The cause of a storage error, without the prefix `Display` gives it.
fn cause(err: &DataError) -> String {
    match err {
        DataError::Storage(cause) => cause.clone(),
        other => other.to_string(),
    }
}

/// Runs `read` on redb, turning a panic in it (some damage makes redb panic rather than fail)
/// into an error naming `path`.
fn caught<T>(path: &Path, read: impl FnOnce() -> Result<T, DataError>) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(storage(format!("{} is damaged: redb failed reading it ({what})", path.display())))
    })
}

/// The store's revision as written in [`META`] (0 for a new store).
fn stored_revision(db: &Database) -> Result<u64, DataError> {
    stored_meta(db, REVISION)
}

/// The figure `name` of [`META`] (0 when it was never written).
fn stored_meta(db: &Database, name: &str) -> Result<u64, DataError> {
    let read = db.begin_read().map_err(storage)?;
    match read.open_table(META) {
        Ok(meta) => Ok(meta.get(name).map_err(storage)?.map_or(0, |value| value.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(err) => Err(storage(err)),
    }
}

/// Every valid entry of `db`, as a snapshot at the store's revision.
fn read_entries(db: &Database, limits: &DataLimits) -> Result<Loaded, DataError> {
    let mut snapshot = Snapshot::default();
    let mut skipped = 0;
    let mut revision = stored_revision(db)?;
    let read = db.begin_read().map_err(storage)?;
    match read.open_table(ENTRIES) {
        Ok(table) => {
            for row in table.iter().map_err(storage)? {
                let (key, value) = row.map_err(storage)?;
                let ((bucket, key), (written, json)) = (key.value(), value.value());
                match limits.put(bucket, key, json) {
                    Ok(change) => {
                        snapshot.apply(bucket, key, change.value.map(Arc::from), written);
                        revision = revision.max(written);
                    }
                    Err(err) => {
                        skipped += 1;
                        tracing::warn!(bucket, key, cause = %err, "a stored entry is not valid; left out");
                    }
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(err) => return Err(storage(err)),
    }
    snapshot.set_revision(revision);
    snapshot.set_origin(stored_meta(db, ORIGIN)?);
    Ok(Loaded { snapshot, skipped })
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

    const LIMITS: DataLimits = DataLimits {
        max_buckets: 16,
        max_key_bytes: 64,
        max_value_bytes: 1024,
        max_data_bytes: 1 << 20,
        max_batch_keys: 100,
    };

    #[test]
    fn what_was_written_is_read_back_after_reopening_with_its_revisions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = DurableStore::open(dir.path()).unwrap();
            assert_eq!(store.load(&LIMITS).unwrap().snapshot.key_count(), 0);
            let first = vec![Change::new("prices", "AAPL", Some("1")), Change::new("prices", "MSFT", Some("2"))];
            store.write(&[(1, first)], 1, 0, Flush::Now).unwrap();
            let second = vec![Change::new("prices", "MSFT", None), Change::new("accounts", "a1", Some("{}"))];
            store.write(&[(2, second), (3, vec![Change::new("prices", "GOOG", None)])], 3, 0, Flush::Now).unwrap();
        }
        let Loaded { snapshot, skipped } = DurableStore::open(dir.path()).unwrap().load(&LIMITS).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(snapshot.get("prices", "AAPL").map(|e| (&*e.json, e.revision)), Some(("1", 1)));
        assert_eq!(snapshot.get("prices", "MSFT"), None);
        assert_eq!(snapshot.get("accounts", "a1").map(|e| (&*e.json, e.revision)), Some(("{}", 2)));
        assert_eq!(snapshot.revision(), 3, "a delete moves the store's revision too, and it is kept");
    }

    #[test]
    fn a_store_from_before_revisions_is_numbered_once_and_kept_so() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut old = write.open_table(UNREVISED_ENTRIES).unwrap();
                old.insert(("prices", "AAPL"), "1").unwrap();
                old.insert(("prices", "MSFT"), "{oops").unwrap();
            }
            write.commit().unwrap();
        }
        for _ in 0..2 {
            let Loaded { snapshot, skipped } = DurableStore::open(dir.path()).unwrap().load(&LIMITS).unwrap();
            assert_eq!(snapshot.get("prices", "AAPL").map(|e| e.revision), Some(1));
            assert_eq!((snapshot.revision(), skipped), (2, 1), "the value that is not JSON is left out");
        }
    }

    #[test]
    fn a_reopened_store_must_hold_the_acknowledged_revision() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DurableStore::open(dir.path()).unwrap();
        store.write(&[(7, vec![Change::new("b", "k", Some("1"))])], 7, 0, Flush::Now).unwrap();
        store.reopen(7..=7).unwrap();
        let err = store.reopen(8..=8).unwrap_err();
        assert!(err.to_string().contains("holds revision 7 after reopening, not 8"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DurableStore::open(dir.path()).unwrap();
            let values: Vec<Change> =
                (0..200).map(|i| Change::new("b", &format!("k{i}"), Some(&format!("\"{}\"", "v".repeat(i))))).collect();
            store.write(&[(1, values)], 1, 0, Flush::Now).unwrap();
        }
        let path = dir.path().join(FILE_NAME);
        let pristine = std::fs::read(&path).unwrap();
        // 64 bytes flipped, as an audit did, at offsets all over the file: each start either reads
        // what is intact or fails naming the file; a panic in redb never escapes.
        let mut refused = 0;
        for offset in (0..pristine.len() - 64).step_by(pristine.len() / 24) {
            let mut bytes = pristine.clone();
            bytes[offset..offset + 64].iter_mut().for_each(|byte| *byte = !*byte);
            std::fs::write(&path, bytes).unwrap();
            if let Err(err) = DurableStore::open(dir.path()).and_then(|mut store| store.load(&LIMITS)) {
                assert!(err.to_string().contains(&path.display().to_string()), "at {offset}: {err}");
                refused += 1;
            }
        }
        assert!(refused > 0, "some damage must be noticed");
    }
}
