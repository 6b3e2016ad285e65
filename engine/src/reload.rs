//! The reloader: an actor that turns plugin changes (from the [`PluginWatcher`]) and rescan
//! requests (SIGHUP, `wasmpush reload`) into registry updates. It debounces bursts of events,
//! loads on a blocking thread (compiling never runs on the async runtime or a worker) and logs
//! every outcome. A failed load leaves the previous version serving.
//!
//! [`PluginWatcher`]: crate::watcher::PluginWatcher

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::{Loaded, PluginFileError, PluginRegistry};

/// Quiet time that ends a burst of events.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Longest a burst may delay a reload.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Applies plugin changes to the registry.
#[derive(Debug, Clone)]
pub struct Reloader {
    /// Where versions are published.
    registry: Arc<PluginRegistry>,
    /// The plugins directory.
    dir: PathBuf,
    /// Where loads are counted.
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// A reloader for `dir`.
    pub fn new(registry: Arc<PluginRegistry>, dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Reloader { registry, dir, metrics }
    }

    /// Runs until `shutdown`: each burst of `changes` is applied once it settles; each message on
    /// `rescans`, or an `overflowed` watcher, rescans the whole directory.
    pub async fn run(
        self,
        mut changes: mpsc::Receiver<String>,
        overflowed: Arc<AtomicBool>,
        mut rescans: mpsc::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                Some(first) = changes.recv() => {
                    let names = settle(first, &mut changes).await;
                    if overflowed.swap(false, Ordering::AcqRel) {
                        self.rescan().await;
                    } else {
                        self.apply(names).await;
                    }
                }
                Some(()) = rescans.recv() => self.rescan().await,
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Loads or removes each named plugin according to what its file holds now.
    async fn apply(&self, names: BTreeSet<String>) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for name in names {
                let path = this.dir.join(format!("{name}.wasm"));
                if path.is_file() {
                    this.record(this.registry.load_file(&path));
                } else if this.registry.remove(&name) {
                    tracing::warn!(plugin = %name, "plugin removed; its connections are parked until it is deployed again");
                }
            }
        })
        .await;
    }

    /// Brings the registry in line with the directory.
    pub async fn rescan(&self) {
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            tracing::info!(dir = %this.dir.display(), "rescanning plugins");
            match this.registry.rescan(&this.dir) {
                Ok(loads) => loads.into_iter().for_each(|load| this.record(load)),
                Err(err) => tracing::error!(dir = %this.dir.display(), cause = %err, "cannot read plugins directory"),
            }
        })
        .await;
    }
}

/// Collects the names of a burst: until no event came for [`DEBOUNCE`], or [`MAX_DEBOUNCE`].
async fn settle(first: String, changes: &mut mpsc::Receiver<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::from([first]);
    let give_up = tokio::time::Instant::now() + MAX_DEBOUNCE;
    while let Ok(Some(name)) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {
        names.insert(name);
        if tokio::time::Instant::now() >= give_up {
            break;
        }
    }
    names
}

impl Reloader {
    /// Logs and counts what a load did.
    fn record(&self, result: Result<Loaded, PluginFileError>) {
        match result {
            Ok(Loaded::Published(version)) => {
                self.metrics.reloads_ok.inc();
                let (plugin, bytes) = (&version.name, version.size);
                tracing::info!(%plugin, version = version.short_hash(), bytes, "plugin loaded");
            }
            Ok(Loaded::Unchanged(version)) => {
                tracing::debug!(plugin = %version.name, version = version.short_hash(), "plugin file unchanged")
            }
            Err(err) => {
                self.metrics.reloads_failed.inc();
                tracing::error!(cause = %err, "plugin load failed; the previous version (if any) keeps serving");
            }
        }
    }
}
