//! [`PluginWatcher`]: watches the plugins directory and reports the names of plugins whose file
//! was created, replaced, written or removed. It knows nothing about wasmtime or loading: it
//! only turns file-system events into plugin names. Temporary and editor files (`*.wasm.tmp`,
//! `.NAME.wasm.swp`…) are not `NAME.wasm` and are ignored.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::plugin_files::plugin_name;

/// Plugin names the watcher may queue before it reports an overflow instead.
pub const CHANGE_CAPACITY: usize = 1024;

/// A running watch; dropping it stops watching.
pub struct PluginWatcher {
    /// Keeps the OS watch alive.
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for PluginWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginWatcher")
    }
}

impl PluginWatcher {
    /// Watches `dir`, sending each changed plugin's name to `changes`. When `changes` is full (or
    /// the OS watch reports an error) events may be lost, so `overflowed` is set instead: the
    /// receiver then rescans the whole directory.
    pub fn start(
        dir: &Path,
        changes: mpsc::Sender<String>,
        overflowed: Arc<AtomicBool>,
    ) -> notify::Result<PluginWatcher> {
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    tracing::warn!(cause = %err, "plugin watch error; will rescan");
                    overflowed.store(true, Ordering::Release);
                    return;
                }
            };
            if !is_content_change(&event.kind) {
                return;
            }
            for name in event.paths.iter().filter_map(|path| plugin_name(path)) {
                if changes.try_send(name).is_err() {
                    overflowed.store(true, Ordering::Release);
                }
            }
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(PluginWatcher { _watcher: watcher })
    }
}

/// Whether an event may change what a file holds (reads and metadata-only events do not;
/// a writer closing the file does).
fn is_content_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}
