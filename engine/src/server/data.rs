//! The server's side of the data: opening the store, its limits from the configuration, and
//! handing each change set to the shards — published here, or forwarded by a restart's new
//! engine to this one while it drains.

use std::path::Path;
use std::sync::Arc;

use super::ServerError;
use crate::config::Config;
use crate::data::{Change, ChangeSet, DataError, DataLimits, DataView, DurableStore, FILE_NAME, Loaded, Snapshot};
use crate::metrics::Metrics;
use crate::shard::{ShardCommand, Shards};

/// Opens the data store in `data_dir` and reads it into memory. A store that cannot be read is
/// an error naming its file; with `recover_data` it is moved aside instead (`FILE.damaged-SECS`,
/// kept for inspection) and the engine starts with an empty store.
pub(super) async fn open_data(config: &Config) -> Result<(DurableStore, Snapshot), ServerError> {
    let (limits, recover) = (data_limits(config), config.recover_data);
    in_data_dir(config, move |dir| {
        let loaded = DurableStore::open(dir).and_then(|mut store| Ok((store.load(&limits)?, store)));
        let (Loaded { snapshot, skipped }, store) = match loaded {
            Ok(loaded) => loaded,
            Err(err) if recover => {
                let damaged = move_aside(&dir.join(FILE_NAME))?;
                tracing::warn!(cause = %err, moved_to = %damaged.display(), "data store unreadable: moved aside, starting empty");
                let mut store = DurableStore::open(dir)?;
                (store.load(&limits)?, store)
            }
            Err(err) => return Err(err),
        };
        if skipped > 0 {
            tracing::warn!(skipped, "stored entries that are not valid were left out");
        }
        Ok((store, snapshot))
    })
    .await
}

/// Moves the store's file at `file` aside; returns where it went.
fn move_aside(file: &Path) -> Result<std::path::PathBuf, DataError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let aside = file.with_extension(format!("redb.damaged-{secs}"));
    std::fs::rename(file, &aside)
        .map_err(|err| DataError::Storage(format!("cannot move {} aside: {err}", file.display())))?;
    Ok(aside)
}

/// Opens the data store in `data_dir` again, without reading it: the engine holds its data in
/// memory already (a failed restart's new engine published nothing).
pub(super) async fn reopen_data(config: &Config) -> Result<DurableStore, ServerError> {
    in_data_dir(config, DurableStore::open).await
}

/// Runs `work` on `data_dir` on a blocking thread; its error names the directory.
async fn in_data_dir<T: Send + 'static>(
    config: &Config,
    work: impl FnOnce(&Path) -> Result<T, DataError> + Send + 'static,
) -> Result<T, ServerError> {
    let dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || work(&dir))
        .await
        .unwrap_or_else(|panic| Err(DataError::Storage(format!("opening the data store panicked: {panic}"))))
        .map_err(|source| ServerError::Data { path: config.data_dir.clone(), source })
}

/// The data store's limits, from the configuration.
pub(super) fn data_limits(config: &Config) -> DataLimits {
    DataLimits {
        max_buckets: config.max_buckets,
        max_key_bytes: config.max_key_bytes,
        max_value_bytes: config.max_value_bytes,
        max_data_bytes: config.max_data_mib << 20,
        max_batch_keys: config.max_batch_keys,
    }
}

/// Applies a batch the new engine forwarded to this draining one, in memory, and announces it to
/// the shards. A batch that breaks a name or value rule is dropped whole.
pub(super) fn follow_batch(
    view: &DataView,
    limits: &DataLimits,
    changes: &[Change],
    announce: &impl Fn(Arc<ChangeSet>),
) {
    match changes.iter().map(|change| limits.check(change)).collect::<Result<Vec<_>, _>>() {
        Ok(changes) => {
            if let Some(changed) = view.follow(&changes) {
                announce(changed);
            }
        }
        Err(err) => tracing::warn!(cause = %err, "a batch forwarded by the new engine was refused"),
    }
}

/// What the data writer does with each published change: count it, and tell every shard (which
/// waits while a shard's channel is full: a change is never dropped).
pub(super) fn announce_to(
    shards: &Shards,
    metrics: Arc<Metrics>,
    view: DataView,
) -> impl Fn(Arc<ChangeSet>) + Send + 'static {
    let senders = shards.senders();
    let measure = move |metrics: &Metrics| {
        let snapshot = view.snapshot();
        metrics.data_keys.set(snapshot.key_count() as i64);
        metrics.data_bytes.set(snapshot.bytes() as i64);
    };
    measure(&metrics);
    move |changes| {
        metrics.data_updates.inc_by(changes.keys.len() as u64);
        measure(&metrics);
        for shard in &senders {
            let _ = shard.send(ShardCommand::Data(changes.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn a_forwarded_batch_is_checked_as_a_published_one_and_refused_whole() {
        let (view, limits) = (DataView::default(), data_limits(&Config::default()));
        let announced = Mutex::new(Vec::new());
        let announce = |set: Arc<ChangeSet>| announced.lock().unwrap().push(set.changes());
        let good = Change::new("prices", "AAPL", Some("{ \"price\" : 1 }"));
        for bad in [Change::new("bad/name", "k", Some("1")), Change::new("prices", "MSFT", Some("{oops"))] {
            follow_batch(&view, &limits, &[good.clone(), bad], &announce);
        }
        assert_eq!(view.snapshot().key_count(), 0, "nothing of a refused batch is applied");
        assert!(announced.lock().unwrap().is_empty());
        follow_batch(&view, &limits, &[good], &announce);
        assert_eq!(view.snapshot().get("prices", "AAPL").map(|entry| &*entry.json), Some(r#"{"price":1}"#));
        assert_eq!(*announced.lock().unwrap(), [vec![Change::new("prices", "AAPL", Some(r#"{"price":1}"#))]]);
    }
}
