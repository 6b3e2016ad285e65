//! [`DataStore`]: the one way data changes. Every change — from the publish API now, from a
//! JetStream KV watch when nodes share their data — is a batch handed to [`DataStore::apply`],
//! which a single writer thread checks against the limits, writes to disk, publishes as the next
//! [`Snapshot`] and announces as a [`ChangeSet`].
//!
//! The thread commits group-wise: it takes every batch waiting when it is free and writes them in
//! one transaction (one fsync), so many small concurrent requests cost one commit, not one each.
//! A batch that breaks a limit is refused alone; the others in its group go on. A change reaches
//! memory only after it is on disk (except one the cluster numbered, see below), and a batch is
//! published whole or not at all.
//!
//! A batch the cluster numbered (`apply_at`) is durable in JetStream already: the store only spares
//! a node that starts again the catch-up from the stream. Such a batch is published first, so a
//! node's plugins see an update as soon as it arrives (as a single node's do once its own write is
//! on disk), not after a second disk behind JetStream's. The writer keeps it in memory and writes
//! it to the store later: without an fsync once [`WRITE_AT`] changes wait, and flushed with the
//! rest at most [`FLUSH_PERIOD`] after the oldest (or before the next write flushed anyway, or
//! when the writer stops). While updates are few, a node pays one store write a second for them,
//! away from the moment its plugins run. A crash loses at most that last period from the store,
//! whole batches only; the node starts from the revision before them and reads them from the
//! stream again. The writer keeps those batches until they are flushed, and writes them again
//! after a failure.
//!
//! A disk error fails the group it hit (nothing of it is published, unless the cluster numbered
//! it), and the writer reopens the store at once. While it cannot (the disk is still full, the
//! file is gone), every write is refused as unavailable, the [`StoreFault`] given to
//! [`DataStore::start`] says why (for `/healthz` and status), and the writer tries again at each
//! write and every [`RETRY_PERIOD`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::durable::{Change, DurableStore, Flush};
use super::snapshot::{KeyName, Snapshot};
use super::{DataError, DataLimits};

/// Batches waiting for the writer at most; [`DataStore::apply`] waits for room beyond that, so
/// publishers are slowed to the speed of the disk instead of queueing without bound.
const REQUEST_CAPACITY: usize = 1024;

/// Batches the writer commits in one transaction at most.
const MAX_GROUP: usize = 256;

/// How often a writer whose store failed tries to reopen it while no write comes.
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// How long a batch the cluster numbered may wait before it is flushed.
const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Changes the cluster numbered that may wait in memory before they are written to the store,
/// without an fsync (a flush writes those waiting too): few writes while updates are few, no
/// large write that delays the next batch while they are many.
const WRITE_AT: usize = 1000;

/// Why the data store cannot write now, if it cannot: shared by the writer, which sets and
/// clears it, and whoever reports the engine's health.
#[derive(Debug, Clone, Default)]
pub struct StoreFault(Arc<std::sync::Mutex<Option<String>>>);

impl StoreFault {
    /// Why the store cannot write, if it cannot.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    fn set(&self, fault: Option<String>) {
        *self.0.lock().unwrap_or_else(|poison| poison.into_inner()) = fault;
    }
}

/// The data plugins read: the latest [`Snapshot`], swapped whole. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DataView(Arc<ArcSwap<Snapshot>>);

impl DataView {
    /// Makes `snapshot` the latest: the data loaded at start, before any writer runs.
    pub fn set(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }

    /// The latest snapshot; it stays valid (and unchanged) for as long as it is held.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Follows a batch another engine has made durable and published (a restart's new engine
    /// forwards its batches to the engine draining its connections): applied in memory only, as
    /// the next snapshot. Returns the change set to announce, if a value changed.
    pub fn follow(&self, changes: &[Change]) -> Option<Arc<ChangeSet>> {
        let mut next = Snapshot::clone(&self.snapshot());
        let revision = next.revision() + 1;
        let keys = apply(&mut next, changes, revision);
        let snapshot = Arc::new(next);
        self.0.store(snapshot.clone());
        (!keys.is_empty()).then(|| Arc::new(ChangeSet { snapshot, keys }))
    }
}

/// The keys one published batch changed (a put of the value a key already had is no change), and
/// the snapshot it was published in.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    /// The snapshot with the change: a reader that applies change sets in order and reads this
    /// one knows exactly which of the values it read before have changed.
    pub snapshot: Arc<Snapshot>,
    /// `(bucket, key)` of every key whose value changed, shared with the snapshot.
    pub keys: Vec<KeyName>,
}

impl ChangeSet {
    /// The change set as changes to apply elsewhere: each key with its new value, or deleted.
    pub fn changes(&self) -> Vec<Change> {
        let value = |bucket: &str, key: &str| self.snapshot.get(bucket, key).map(|entry| entry.json.to_string());
        let change = |(bucket, key): &KeyName| Change {
            bucket: bucket.to_string(),
            key: key.to_string(),
            value: value(bucket, key),
        };
        self.keys.iter().map(change).collect()
    }
}

/// One batch waiting for the writer.
struct WriteRequest {
    /// The changes, names and values already checked.
    changes: Vec<Change>,
    /// The revision a cluster gave the batch (its stream sequence), or `None` for the next one.
    at: Option<u64>,
    /// For a resync: the history `at` counts in. The batch then holds every key the data has
    /// (puts only); the keys it lacks are deleted, and its revision is taken even if lower.
    replace: Option<u64>,
    /// Where the revision (or the refusal) goes.
    reply: Reply,
}

/// Where a batch's revision (or its refusal) goes.
type Reply = tokio::sync::oneshot::Sender<Result<u64, DataError>>;

/// The way into the writer thread; cheap to clone. The thread ends when every clone is dropped.
#[derive(Debug, Clone)]
pub struct DataStore {
    /// Batches for the writer.
    requests: flume::Sender<WriteRequest>,
    /// The published data.
    view: DataView,
    /// The limits batches are checked against (also what the API reports).
    limits: DataLimits,
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest").field("changes", &self.changes.len()).finish_non_exhaustive()
    }
}

impl DataStore {
    /// Starts the writer thread over `durable`, publishing to `view`, reporting a disk error it
    /// has not recovered from in `fault`, and announcing each published batch to `announce` (called on the writer thread, after the snapshot is
    /// published; it may block, which slows the writer rather than losing a change). The thread
    /// ends, closing the durable store, once every clone of the returned store is dropped.
    pub fn start(
        durable: DurableStore,
        view: DataView,
        limits: DataLimits,
        fault: StoreFault,
        announce: impl Fn(Arc<ChangeSet>) + Send + 'static,
    ) -> std::io::Result<(DataStore, std::thread::JoinHandle<()>)> {
        let (requests, received) = flume::bounded(REQUEST_CAPACITY);
        fault.set(None);
        let writer =
            Writer { durable, view: view.clone(), limits, announce: Box::new(announce), fault, unflushed: None };
        let thread =
            std::thread::Builder::new().name("wasmpush-data".to_owned()).spawn(move || writer.run(received))?;
        Ok((DataStore { requests, view, limits }, thread))
    }

    /// The published data.
    pub fn view(&self) -> &DataView {
        &self.view
    }

    /// The limits changes are held to.
    pub fn limits(&self) -> &DataLimits {
        &self.limits
    }

    /// Applies `changes` as one batch: on disk, then visible to plugins, all of them or none.
    /// Returns the revision it was published at.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<u64, DataError> {
        if changes.len() > self.limits.max_batch_keys {
            return Err(DataError::BatchTooLarge { count: changes.len(), limit: self.limits.max_batch_keys });
        }
        self.send(changes, None, None).await
    }

    /// Applies `changes`, a batch the cluster already made durable and numbered `revision`: on
    /// disk here, then visible to plugins, all of them or none, at that revision. A batch at or
    /// below the revision applied already changes nothing (it was applied). The cluster's data
    /// is the truth, so no budget refuses it; its names and values were checked by the caller.
    pub async fn apply_at(&self, changes: Vec<Change>, revision: u64) -> Result<u64, DataError> {
        self.send(changes, Some(revision), None).await
    }

    /// Replaces the whole data with what `entries` leave (the cluster's stream read from its
    /// start: the last change of each key counts, and a delete leaves it out) at `revision` of
    /// history `origin`, even if that is below the revision applied: a resync after the
    /// cluster's stream was recreated or went back. Keys `entries` lacks are deleted; every key
    /// that changed is announced, so plugins re-run as for any change.
    pub async fn replace(&self, entries: Vec<Change>, revision: u64, origin: u64) -> Result<u64, DataError> {
        self.send(entries, Some(revision), Some(origin)).await
    }

    /// Hands a batch to the writer and waits for the answer.
    async fn send(&self, changes: Vec<Change>, at: Option<u64>, replace: Option<u64>) -> Result<u64, DataError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = WriteRequest { changes, at, replace, reply };
        self.requests.send_async(request).await.map_err(|_| DataError::Closed)?;
        answer.await.map_err(|_| DataError::Closed)?
    }
}

/// The writer thread's state.
struct Writer {
    /// Where batches are made durable.
    durable: DurableStore,
    /// Where they are published.
    view: DataView,
    /// What a batch is checked against.
    limits: DataLimits,
    /// Told of every published batch.
    announce: Box<dyn Fn(Arc<ChangeSet>) + Send>,
    /// Set while the store cannot write.
    fault: StoreFault,
    /// Batches committed without an fsync, until they are flushed.
    unflushed: Option<Unflushed>,
}

/// What the store holds in memory only.
struct Unflushed {
    /// When the first of them was committed.
    since: Instant,
    /// The store's revision on disk before them.
    flushed: u64,
    /// The batches, each with its revision, in order.
    batches: Vec<(u64, Vec<Change>)>,
    /// How many of `batches` the store holds (not flushed); the others are in memory only.
    stored: usize,
}

impl Writer {
    /// Commits the waiting batches group by group until every [`DataStore`] is dropped.
    fn run(mut self, requests: flume::Receiver<WriteRequest>) {
        loop {
            let first = match (self.fault.get(), &self.unflushed) {
                (Some(_), _) => requests.recv_timeout(RETRY_PERIOD),
                (None, Some(unflushed)) => requests.recv_deadline(unflushed.since + FLUSH_PERIOD),
                (None, None) => requests.recv().map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(first) => {
                    let group: Vec<WriteRequest> =
                        std::iter::once(first).chain(requests.try_iter().take(MAX_GROUP - 1)).collect();
                    self.commit(group);
                }
                Err(flume::RecvTimeoutError::Timeout) if self.fault.get().is_some() => {
                    self.recover();
                }
                Err(flume::RecvTimeoutError::Timeout) => self.flush(),
                Err(flume::RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }

    /// Puts the batches the cluster numbered that are not flushed yet on disk, writing first
    /// those that wait in memory.
    fn flush(&mut self) {
        let stored = self.unflushed.as_ref().map_or(0, |unflushed| unflushed.stored);
        if let Err(err) = self.write_kept(stored, Flush::Now) {
            tracing::error!(cause = %err, "data flush failed; the batches are written again once the store reopens");
            self.recover();
        }
    }

    /// Reopens the store after a disk error, checking it holds what was last acknowledged;
    /// whether it can write now.
    fn recover(&mut self) -> bool {
        let acknowledged = self.view.snapshot().revision();
        let flushed = self.unflushed.as_ref().map_or(acknowledged, |unflushed| unflushed.flushed);
        let reopened = self.durable.reopen(flushed..=acknowledged).and_then(|_| self.write_kept(0, Flush::Now));
        match reopened {
            Ok(()) => {
                if self.fault.get().is_some() {
                    tracing::info!(file = %self.durable.path().display(), "data store reopened: writes are accepted again");
                }
                self.fault.set(None);
                true
            }
            Err(err) => {
                if self.fault.get().is_none() {
                    tracing::error!(cause = %err, "data store cannot be reopened: writes are refused until it can");
                }
                self.fault.set(Some(err.to_string()));
                false
            }
        }
    }

    /// Writes the kept batches from the `from`th on to the store: from the first after the store
    /// reopened (it may have lost those it held), else from the first it does not hold. Flushed
    /// ([`Flush::Now`]) none is kept any more; not flushed, they stay kept, every one in the store.
    fn write_kept(&mut self, from: usize, flush: Flush) -> Result<(), DataError> {
        let Some(unflushed) = &mut self.unflushed else { return Ok(()) };
        let snapshot = self.view.snapshot();
        self.durable.write(&unflushed.batches[from..], snapshot.revision(), snapshot.origin(), flush)?;
        match flush {
            Flush::Now => self.unflushed = None,
            Flush::Later => unflushed.stored = unflushed.batches.len(),
        }
        Ok(())
    }

    /// Checks each batch of `group` against the limits on top of the ones before it, writes the
    /// accepted ones in one transaction, then publishes and answers.
    fn commit(&mut self, group: Vec<WriteRequest>) {
        if self.fault.get().is_some() && !self.recover() {
            let reason = self.fault.get().unwrap_or_default();
            for request in group {
                let _ = request.reply.send(Err(DataError::Unavailable(reason.clone())));
            }
            return;
        }
        let mut next = Snapshot::clone(&self.view.snapshot());
        let on_disk = next.revision();
        let (mut written, mut accepted, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        // Whether every batch written is one the cluster numbered (see the module's docs).
        let mut numbered = true;
        for mut request in group {
            let revision = match request.at {
                Some(at) if at <= next.revision() && request.replace.is_none() => {
                    let _ = request.reply.send(Ok(at));
                    continue;
                }
                Some(at) => at,
                None => next.revision() + 1,
            };
            let mut trial = next.clone();
            let checked = match (request.at, request.replace) {
                (_, Some(origin)) => Ok(replace(&mut trial, &mut request.changes, revision, origin)),
                (Some(_), None) => Ok(apply(&mut trial, &request.changes, revision)),
                (None, None) => apply_checked(&mut trial, &request.changes, revision, &self.limits),
            };
            match checked {
                Ok(keys) => {
                    next = trial;
                    numbered &= request.at.is_some() && request.replace.is_none();
                    changed.extend(keys);
                    written.push((revision, request.changes));
                    accepted.push((request.reply, revision));
                }
                Err(err) => drop(request.reply.send(Err(err))),
            }
        }
        if accepted.is_empty() {
            return;
        }
        if numbered {
            self.publish(next, changed, accepted);
            self.write_numbered(written, on_disk);
            return;
        }
        // Numbered batches waiting in memory go first: the write below names a later revision.
        self.flush();
        if let Err(err) = self.durable.write(&written, next.revision(), next.origin(), Flush::Now) {
            tracing::error!(cause = %err, batches = accepted.len(), "data write failed; nothing of it was published");
            for (reply, _) in accepted {
                let _ = reply.send(Err(err.clone()));
            }
            // redb refuses every later write until it is reopened.
            self.recover();
            return;
        }
        self.publish(next, changed, accepted);
    }

    /// Makes `next` the served snapshot, announces the keys that `changed` and answers each
    /// accepted request with its revision.
    fn publish(&self, next: Snapshot, changed: Vec<KeyName>, accepted: Vec<(Reply, u64)>) {
        let snapshot = Arc::new(next);
        self.view.0.store(snapshot.clone());
        if !changed.is_empty() {
            (self.announce)(Arc::new(ChangeSet { snapshot, keys: changed }));
        }
        for (reply, revision) in accepted {
            let _ = reply.send(Ok(revision));
        }
    }

    /// Keeps batches the cluster numbered, published already, until they are flushed: written to
    /// the store (without an fsync) once [`WRITE_AT`] changes wait, flushed with every other one
    /// once the oldest waited [`FLUSH_PERIOD`]. `on_disk` is the store's revision before them.
    fn write_numbered(&mut self, written: Vec<(u64, Vec<Change>)>, on_disk: u64) {
        let unflushed = self.unflushed.get_or_insert_with(|| Unflushed {
            since: Instant::now(),
            flushed: on_disk,
            batches: Vec::new(),
            stored: 0,
        });
        unflushed.batches.extend(written);
        if unflushed.since.elapsed() >= FLUSH_PERIOD {
            return self.flush();
        }
        let stored = unflushed.stored;
        let waiting: usize = unflushed.batches[stored..].iter().map(|(_, changes)| changes.len()).sum();
        if waiting < WRITE_AT {
            return;
        }
        if let Err(err) = self.write_kept(stored, Flush::Later) {
            tracing::error!(cause = %err, "data write failed; the batches are written again once the store reopens");
            self.recover();
        }
    }
}

/// Applies `changes` to `snapshot` at `revision` if the result keeps to `limits`; returns the keys
/// whose value changed.
fn apply_checked(
    snapshot: &mut Snapshot,
    changes: &[Change],
    revision: u64,
    limits: &DataLimits,
) -> Result<Vec<KeyName>, DataError> {
    let changed = apply(snapshot, changes, revision);
    if snapshot.bytes() > limits.max_data_bytes {
        return Err(DataError::OverBudget { needed: snapshot.bytes(), limit: limits.max_data_bytes });
    }
    if snapshot.bucket_count() > limits.max_buckets {
        return Err(DataError::TooManyBuckets { count: snapshot.bucket_count(), limit: limits.max_buckets });
    }
    Ok(changed)
}

/// Makes `snapshot` hold exactly what `entries` leave, every key at `revision`, counted in
/// history `origin`: the last change of each key counts (a delete leaves it out), as when a
/// stream is read from its start. A key it held that they lack is deleted. `entries` becomes what
/// the store must write: the puts by name, then the deletions. Returns the keys whose value changed.
fn replace(snapshot: &mut Snapshot, entries: &mut Vec<Change>, revision: u64, origin: u64) -> Vec<KeyName> {
    keep_latest_puts(entries);
    let puts =
        entries.iter().map(|change| (&*change.bucket, &*change.key, change.value.as_deref().unwrap_or_default()));
    let (fresh, names) = Snapshot::of_sorted(puts, revision, origin);
    let held = |bucket: &str, key: &str| snapshot.get(bucket, key).map(|entry| &*entry.json);
    let mut changed: Vec<KeyName> = entries
        .iter()
        .zip(names)
        .filter(|(change, _)| held(&change.bucket, &change.key) != change.value.as_deref())
        .map(|(_, name)| name)
        .collect();
    let gone: Vec<KeyName> = snapshot
        .keys()
        .filter(|(bucket, key)| fresh.get(bucket, key).is_none())
        .map(|(bucket, key)| (bucket.clone(), key.clone()))
        .collect();
    entries.extend(gone.iter().map(|(bucket, key)| Change {
        bucket: bucket.to_string(),
        key: key.to_string(),
        value: None,
    }));
    changed.extend(gone);
    *snapshot = fresh;
    changed
}

/// Keeps of `changes` the last of each key, if it is a put, sorted by bucket and key.
fn keep_latest_puts(changes: &mut Vec<Change>) {
    // A stable sort keeps each key's changes in their order; of a run of one key, the last
    // is swapped into the place `dedup_by` keeps.
    changes.sort_by(|a, b| (&a.bucket, &a.key).cmp(&(&b.bucket, &b.key)));
    changes.dedup_by(|later, kept| {
        let same = later.bucket == kept.bucket && later.key == kept.key;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    changes.retain(|change| change.value.is_some());
}

/// Applies `changes` to `snapshot` at `revision`; returns the keys whose value changed (a put of
/// the value a key already has is no change).
fn apply(snapshot: &mut Snapshot, changes: &[Change], revision: u64) -> Vec<KeyName> {
    let mut changed = Vec::with_capacity(changes.len());
    for change in changes {
        if snapshot.get(&change.bucket, &change.key).map(|entry| &*entry.json) == change.value.as_deref() {
            continue;
        }
        let value = change.value.as_deref().map(Arc::from);
        changed.push(snapshot.apply(&change.bucket, &change.key, value, revision));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(bucket: &str, key: &str, value: &str) -> Change {
        Change::new(bucket, key, Some(value))
    }

    fn limits() -> DataLimits {
        DataLimits { max_buckets: 2, max_key_bytes: 16, max_value_bytes: 64, max_data_bytes: 40, max_batch_keys: 10 }
    }

    #[test]
    fn a_batch_over_a_limit_changes_nothing() {
        let mut snapshot = Snapshot::default();
        apply_checked(&mut snapshot, &[put("a", "k", "1")], 1, &limits()).unwrap();
        let mut trial = snapshot.clone();
        let three_buckets = [put("b", "k", "1"), put("c", "k", "1")];
        assert_eq!(
            apply_checked(&mut trial, &three_buckets, 2, &limits()),
            Err(DataError::TooManyBuckets { count: 3, limit: 2 })
        );
        let big = put("a", "big", &"9".repeat(40));
        assert!(matches!(
            apply_checked(&mut snapshot.clone(), &[big], 2, &limits()),
            Err(DataError::OverBudget { .. })
        ));
        assert_eq!(snapshot.key_count(), 1);
    }

    #[test]
    fn a_store_that_cannot_be_reopened_degrades_writes_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let mut durable = DurableStore::open(dir.path()).unwrap();
        durable.write(&[(1, vec![put("a", "k", "1")])], 1, 0, Flush::Now).unwrap();
        let limits = DataLimits { max_data_bytes: 1 << 20, ..limits() };
        let view = DataView::default();
        view.set(durable.load(&limits).unwrap().snapshot);
        let fault = StoreFault::default();
        let announce = Box::new(|_| {});
        let mut writer = Writer { durable, view, limits, announce, fault: fault.clone(), unflushed: None };
        // The file is replaced by something redb cannot open, then by an empty store: neither
        // holds what was acknowledged (revision 1).
        let file = dir.path().join(super::super::FILE_NAME);
        let kept = dir.path().join("kept.redb");
        std::fs::rename(&file, &kept).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(!writer.recover(), "a directory is no store");
        assert!(fault.get().is_some_and(|why| why.contains("cannot open")), "{:?}", fault.get());
        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.commit(vec![WriteRequest { changes: vec![put("a", "k", "2")], at: None, replace: None, reply }]);
        let refused = answer.blocking_recv().unwrap();
        assert!(matches!(refused, Err(DataError::Unavailable(_))), "degraded: writes are refused, {refused:?}");
        std::fs::remove_dir(&file).unwrap();
        assert!(!writer.recover());
        let why = fault.get().unwrap_or_default();
        assert!(why.contains("holds revision 0 after reopening, not 1"), "a fresh file is not the data: {why}");
        std::fs::rename(&kept, &file).unwrap();
        assert!(writer.recover(), "the acknowledged store is back");
        assert_eq!(fault.get(), None);
        let (reply, answer) = tokio::sync::oneshot::channel();
        writer.commit(vec![WriteRequest { changes: vec![put("a", "k", "2")], at: None, replace: None, reply }]);
        assert_eq!(answer.blocking_recv().unwrap(), Ok(2), "writes go on at the next revision");
    }

    #[test]
    fn batches_the_cluster_numbered_are_flushed_later_and_written_again_if_the_store_lost_them() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DataLimits { max_data_bytes: 1 << 20, ..limits() };
        let durable = DurableStore::open(dir.path()).unwrap();
        durable.write(&[(1, vec![put("a", "k", "1")])], 1, 0, Flush::Now).unwrap();
        let file = dir.path().join(super::super::FILE_NAME);
        let copy = tempfile::tempdir().unwrap();
        let as_flushed = copy.path().join(super::super::FILE_NAME);
        std::fs::copy(&file, &as_flushed).unwrap();
        let view = DataView::default();
        view.set(DurableStore::open(copy.path()).unwrap().load(&limits).unwrap().snapshot);
        let announce = Box::new(|_| {});
        let fault = StoreFault::default();
        let mut writer =
            Writer { durable, view: view.clone(), limits, announce, fault: fault.clone(), unflushed: None };
        // Each batch puts its own key.
        let numbered = |writer: &mut Writer, revision: u64, key: &str| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let changes = vec![put("a", key, &revision.to_string())];
            writer.commit(vec![WriteRequest { changes, at: Some(revision), replace: None, reply }]);
            assert_eq!(answer.blocking_recv().unwrap(), Ok(revision));
        };
        numbered(&mut writer, 2, "k2");
        numbered(&mut writer, 3, "k3");
        assert_eq!(view.snapshot().get("a", "k3").unwrap().json.as_ref(), "3", "published at once");
        let unflushed = writer.unflushed.as_ref().expect("not flushed yet");
        assert_eq!((unflushed.flushed, unflushed.batches.len()), (1, 2));

        // The store comes back as it was on disk (revision 1): the batches are written again.
        std::fs::rename(&as_flushed, &file).unwrap();
        assert!(writer.recover(), "{:?}", fault.get());
        assert!(writer.unflushed.is_none());
        // Flushed at the latest a period after the first batch left unflushed.
        numbered(&mut writer, 4, "k4");
        writer.unflushed.as_mut().unwrap().since -= FLUSH_PERIOD;
        numbered(&mut writer, 5, "k5");
        assert!(writer.unflushed.is_none(), "a batch after the period is flushed with the rest");
        let kept = std::thread::spawn(move || {
            drop(writer);
            DurableStore::open(dir.path()).unwrap().load(&limits).unwrap().snapshot
        });
        let kept = kept.join().unwrap();
        assert_eq!((kept.revision(), kept.key_count()), (5, 5), "k and k2…k5, none lost");
    }

    #[test]
    fn numbered_batches_wait_in_memory_until_enough_changes_wait_or_another_write_comes() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DataLimits { max_data_bytes: 1 << 20, max_batch_keys: WRITE_AT, ..limits() };
        let mut durable = DurableStore::open(dir.path()).unwrap();
        durable.write(&[(1, vec![put("a", "k", "1")])], 1, 0, Flush::Now).unwrap();
        let view = DataView::default();
        view.set(durable.load(&limits).unwrap().snapshot);
        let announce = Box::new(|_| {});
        let mut writer =
            Writer { durable, view: view.clone(), limits, announce, fault: StoreFault::default(), unflushed: None };
        let write = |writer: &mut Writer, at: Option<u64>, changes: Vec<Change>| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            writer.commit(vec![WriteRequest { changes, at, replace: None, reply }]);
            answer.blocking_recv().unwrap().unwrap()
        };
        let stored = |writer: &mut Writer| writer.durable.load(&limits).unwrap().snapshot.revision();

        write(&mut writer, Some(2), vec![put("a", "k2", "2")]);
        assert_eq!((view.snapshot().revision(), stored(&mut writer)), (2, 1), "published, not written yet");
        let many = (0..WRITE_AT).map(|i| put("b", &format!("m{i}"), "3")).collect();
        write(&mut writer, Some(3), many);
        assert_eq!(stored(&mut writer), 3, "written once {WRITE_AT} changes wait");
        write(&mut writer, Some(4), vec![put("a", "k4", "4")]);
        assert_eq!(stored(&mut writer), 3);
        // A write of the node's own goes on disk with everything before it.
        assert_eq!(write(&mut writer, None, vec![put("a", "k5", "5")]), 5);
        assert!(writer.unflushed.is_none());
        let kept = std::thread::spawn(move || {
            drop(writer);
            DurableStore::open(dir.path()).unwrap().load(&limits).unwrap().snapshot
        });
        let kept = kept.join().unwrap();
        assert_eq!((kept.revision(), kept.key_count()), (5, 4 + WRITE_AT), "k, k2, the batch, k4, k5");
    }

    #[test]
    fn a_resync_replaces_the_data_at_a_lower_revision_and_the_store_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DataLimits { max_data_bytes: 1 << 20, ..limits() };
        let announced = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut durable = DurableStore::open(dir.path()).unwrap();
        durable
            .write(&[(9, vec![put("a", "same", "1"), put("a", "moved", "1"), put("a", "gone", "1")])], 9, 5, Flush::Now)
            .unwrap();
        let view = DataView::default();
        view.set(durable.load(&limits).unwrap().snapshot);
        let heard = announced.clone();
        let announce = Box::new(move |set: Arc<ChangeSet>| heard.lock().unwrap().extend(set.changes()));
        let mut writer =
            Writer { durable, view: view.clone(), limits, announce, fault: StoreFault::default(), unflushed: None };
        let (reply, answer) = tokio::sync::oneshot::channel();
        // A stream read from its start: the last change of a key counts, a delete leaves it out.
        let entries = vec![
            put("b", "new", "3"),
            put("a", "moved", "9"),
            put("b", "dropped", "1"),
            put("a", "same", "1"),
            put("a", "moved", "2"),
            Change::new("b", "dropped", None),
        ];
        writer.commit(vec![WriteRequest { changes: entries, at: Some(4), replace: Some(77), reply }]);
        assert_eq!(answer.blocking_recv().unwrap(), Ok(4), "taken at its revision, below the 9 held");
        let mut heard = announced.lock().unwrap().clone();
        heard.sort_by(|x, y| x.key.cmp(&y.key));
        let expected = [Change::new("a", "gone", None), put("a", "moved", "2"), put("b", "new", "3")];
        assert_eq!(heard, expected, "changed keys are announced, the unchanged one is not");
        let check = |snapshot: &Snapshot| {
            assert_eq!((snapshot.revision(), snapshot.origin(), snapshot.key_count()), (4, 77, 3));
            assert!(snapshot.get("a", "gone").is_none() && snapshot.get("b", "dropped").is_none());
            assert_eq!(snapshot.get("a", "moved").unwrap().json.as_ref(), "2");
            assert_eq!(snapshot.bytes(), ["same1", "moved2", "new3"].concat().len());
            assert_eq!(snapshot.get("a", "same").unwrap().revision, 4, "every entry counts in the new history");
        };
        check(&view.snapshot());
        drop(writer);
        check(&DurableStore::open(dir.path()).unwrap().load(&limits).unwrap().snapshot);
    }

    #[test]
    fn a_followed_batch_is_published_and_announced_as_the_writer_would() {
        let view = DataView::default();
        let first = view.follow(&[put("prices", "AAPL", "1"), put("prices", "MSFT", "2")]).unwrap();
        let delete = Change::new("prices", "MSFT", None);
        let second = view.follow(&[put("prices", "AAPL", "1"), delete.clone()]).unwrap();
        assert_eq!(second.changes(), [delete]);
        assert!(view.follow(&[put("prices", "AAPL", "1")]).is_none(), "no change, nothing to announce");
        assert_eq!(first.changes().len(), 2);
        assert_eq!(view.snapshot().get("prices", "AAPL").map(|e| &*e.json), Some("1"));
        assert!(view.snapshot().get("prices", "MSFT").is_none());
        assert!(view.snapshot().revision() > first.snapshot.revision());
    }

    #[test]
    fn only_keys_whose_value_changes_are_announced() {
        let mut snapshot = Snapshot::default();
        apply_checked(&mut snapshot, &[put("a", "x", "1"), put("a", "y", "2")], 1, &limits()).unwrap();
        let changed = apply_checked(&mut snapshot, &[put("a", "x", "1"), put("a", "y", "3")], 2, &limits()).unwrap();
        let names: Vec<_> = changed.iter().map(|(b, k)| format!("{b}/{k}")).collect();
        assert_eq!(names, ["a/y"]);
        assert_eq!(snapshot.get("a", "x").unwrap().revision, 1, "an unchanged key keeps its revision");
    }
}
