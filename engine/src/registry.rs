//! [`PluginRegistry`]: the plugin versions currently served, by name, and how files become
//! versions. Readers (workers, the handshake) take a lock-free snapshot; a new version is
//! published with one atomic pointer swap, only after it compiled and instantiated, so a bad file
//! never replaces a good version.
//!
//! Beside each served version it holds the plugin's [`Rollout`] in progress, if any (a canary or
//! shadow candidate, read by the shards at every phase), keeps every build it loads in the
//! [`VersionHistory`], and keeps the last builds it replaced compiled, so a rollback to one of
//! them compiles nothing.
//!
//! Loading compiles, which is slow: call [`PluginRegistry::load_file`] and
//! [`PluginRegistry::rescan`] from a blocking thread, never from a worker or an async task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::plugin::{LoadError, PluginHost, PluginVersion, content_hash};
use crate::plugin_files::plugin_name;
use crate::rollout::{Rollout, VersionHistory};

/// Builds a plugin's registry keeps compiled after they stopped serving, newest last.
const RETIRED_COMPILED: usize = 2;

/// Versions by plugin name.
type ByName<T> = BTreeMap<Arc<str>, T>;

/// The largest plugin file read (a real plugin is well under a few MiB).
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// The plugins currently served.
#[derive(Debug)]
pub struct PluginRegistry {
    /// Compiles and validates plugin files.
    host: PluginHost,
    /// The served versions by name; replaced whole on every change.
    versions: ArcSwap<ByName<Arc<PluginVersion>>>,
    /// The rollouts in progress by plugin name; replaced whole on every change.
    rollouts: ArcSwap<ByName<Arc<Rollout>>>,
    /// The builds that stopped serving last, still compiled, by plugin name (oldest first).
    retired: Mutex<ByName<Vec<Arc<PluginVersion>>>>,
    /// Where every loaded build is kept, if anywhere.
    history: Option<VersionHistory>,
    /// The most recent failed load, kept for `status` until a later load of the same plugin
    /// succeeds.
    last_error: Mutex<Option<FailedLoad>>,
}

/// A load that failed; the previous version (if any) kept serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedLoad {
    /// The plugin whose file failed to load.
    pub plugin: String,
    /// The build that failed (its SHA-256), when it was read: `deploy --wait` knows its own
    /// build's failure by it, whatever the clocks of its machine and the node say.
    pub build: Option<String>,
    /// Why, in one line.
    pub reason: String,
    /// Whether the build is tried again by itself (a cluster's build that could not be fetched):
    /// the failure may pass.
    pub retried: bool,
    /// When it failed, for `status`.
    pub at: SystemTime,
}

/// Why a plugin file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginFileError {
    /// The file name is not `NAME.wasm` with a valid name.
    #[error("`{0}` is not a plugin file name: expected NAME.wasm, NAME made of letters, digits, `-` and `_`")]
    BadName(PathBuf),
    /// The file could not be read.
    #[error("plugin `{plugin}`: cannot read {path}: {source}")]
    Read {
        /// The plugin's name.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is a symbolic link: plugin files are read only as themselves.
    #[error("plugin `{plugin}`: {path} is a symbolic link; deploy the file itself")]
    Symlink {
        /// The plugin's name.
        plugin: String,
        /// The link.
        path: PathBuf,
    },
    /// The file is larger than any plugin may be.
    #[error("plugin `{plugin}`: {size} bytes, more than the limit of {MAX_PLUGIN_BYTES}")]
    TooLarge {
        /// The plugin's name.
        plugin: String,
        /// The file's size.
        size: u64,
    },
    /// The file is not a working plugin.
    #[error("plugin `{plugin}`: {source}")]
    Invalid {
        /// The plugin's name.
        plugin: String,
        /// The cause.
        source: LoadError,
    },
}

/// What a load did.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A new version is now served.
    Published(Arc<PluginVersion>),
    /// The file is the version already served; nothing changed.
    Unchanged(Arc<PluginVersion>),
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new(host: PluginHost) -> Self {
        PluginRegistry {
            host,
            versions: ArcSwap::default(),
            rollouts: ArcSwap::default(),
            retired: Mutex::default(),
            history: None,
            last_error: Mutex::new(None),
        }
    }

    /// The same registry, keeping every build it loads in `history`.
    pub fn with_history(self, history: VersionHistory) -> Self {
        PluginRegistry { history: Some(history), ..self }
    }

    /// The version history, if builds are kept.
    pub fn history(&self) -> Option<&VersionHistory> {
        self.history.as_ref()
    }

    /// The rollout of plugin `name` in progress, if any.
    pub fn rollout(&self, name: &str) -> Option<Arc<Rollout>> {
        self.rollouts.load().get(name).cloned()
    }

    /// Every rollout in progress, by plugin name.
    pub fn rollouts(&self) -> Arc<ByName<Arc<Rollout>>> {
        self.rollouts.load_full()
    }

    /// Sets (or with `None` ends) the rollout of plugin `name`.
    pub fn set_rollout(&self, name: &Arc<str>, rollout: Option<Arc<Rollout>>) {
        self.rollouts.rcu(|rollouts| {
            let mut rollouts = BTreeMap::clone(rollouts);
            match &rollout {
                Some(rollout) => rollouts.insert(name.clone(), rollout.clone()),
                None => rollouts.remove(name),
            };
            rollouts
        });
    }

    /// The version of `name` now served, if any.
    pub fn get(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.versions.load().get(name).cloned()
    }

    /// Every version now served, by name.
    pub fn snapshot(&self) -> Arc<BTreeMap<Arc<str>, Arc<PluginVersion>>> {
        self.versions.load_full()
    }

    /// The most recent failed load, if no later load of that plugin succeeded.
    pub fn last_error(&self) -> Option<FailedLoad> {
        self.last_error.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// Loads `path` (`NAME.wasm`) and publishes it as plugin NAME, unless it fails — then the
    /// version served before keeps serving and the failure is kept for `status`.
    pub fn load_file(&self, path: &Path) -> Result<Loaded, PluginFileError> {
        let plugin = plugin_name(path).ok_or_else(|| PluginFileError::BadName(path.to_owned()))?;
        let bytes = match read_plugin_file(&plugin, path) {
            Ok(bytes) => bytes,
            Err(err) => {
                self.fail(&plugin, None, err.to_string());
                return Err(err);
            }
        };
        self.load_build(&plugin, &bytes, "file")
    }

    /// Loads `bytes` (a build a cluster's node fetched) as plugin `plugin`, as
    /// [`Self::load_file`] loads a file.
    pub fn load_build(&self, plugin: &str, bytes: &[u8], source: &str) -> Result<Loaded, PluginFileError> {
        let result = self.compile(plugin, bytes, source);
        match &result {
            // A load that succeeded forgets the plugin's last failure.
            Ok(_) => {
                let mut last_error = self.last_error.lock().unwrap_or_else(|poison| poison.into_inner());
                if last_error.as_ref().is_some_and(|failed| failed.plugin == plugin) {
                    *last_error = None;
                }
            }
            Err(err) => self.fail(plugin, Some(&content_hash(bytes)), err.to_string()),
        }
        result
    }

    /// Keeps for `status` that a new build of `plugin` (`build`, if known) failed, for
    /// `reason`, before or while loading; the version served before serves on.
    pub fn fail(&self, plugin: &str, build: Option<&str>, reason: String) {
        self.keep_failure(plugin, build, reason, false);
    }

    /// Keeps for `status`, as [`Self::fail`] does, that a new build of `plugin` could not be
    /// had for now, for `reason`: it is tried again.
    pub fn fail_for_now(&self, plugin: &str, build: &str, reason: String) {
        self.keep_failure(plugin, Some(build), reason, true);
    }

    fn keep_failure(&self, plugin: &str, build: Option<&str>, reason: String, retried: bool) {
        let (plugin, build, at) = (plugin.to_owned(), build.map(str::to_owned), SystemTime::now());
        *self.last_error.lock().unwrap_or_else(|poison| poison.into_inner()) =
            Some(FailedLoad { plugin, build, reason, retried, at });
    }

    fn compile(&self, plugin: &str, bytes: &[u8], source: &str) -> Result<Loaded, PluginFileError> {
        if let Some(current) = self.get(plugin)
            && current.size == bytes.len()
            && current.hash == content_hash(bytes)
        {
            return Ok(Loaded::Unchanged(current));
        }
        let version = self.build(plugin, bytes, source)?;
        self.publish(version.clone());
        Ok(Loaded::Published(version))
    }

    /// Compiles `bytes` as a build of `plugin` loaded from `source` without serving it (a
    /// build this registry retired is taken as it is), and keeps it in the history.
    pub fn build(&self, plugin: &str, bytes: &[u8], source: &str) -> Result<Arc<PluginVersion>, PluginFileError> {
        let hash = content_hash(bytes);
        let version = match self.retired(plugin, &hash) {
            Some(version) => version,
            None => self
                .host
                .load(plugin, bytes)
                .map_err(|source| PluginFileError::Invalid { plugin: plugin.to_owned(), source })?,
        };
        if let Some(history) = &self.history {
            let protect = self.protected(plugin);
            let protect: Vec<&str> = protect.iter().map(String::as_str).collect();
            if let Err(err) = history.keep(plugin, &hash, bytes, source, &protect) {
                tracing::warn!(%plugin, cause = %err, "cannot keep the build in the version history");
            }
        }
        Ok(version)
    }

    /// Serves `version` from now on; the version it replaces is kept compiled for a while.
    pub fn publish(&self, version: Arc<PluginVersion>) {
        let mut replaced = None;
        self.versions.rcu(|versions| {
            let mut versions = BTreeMap::clone(versions);
            replaced = versions.insert(version.name.clone(), version.clone());
            versions
        });
        if let Some(old) = replaced.filter(|old| old.hash != version.hash) {
            let mut retired = self.retired.lock().unwrap_or_else(|poison| poison.into_inner());
            let kept = retired.entry(old.name.clone()).or_default();
            kept.retain(|kept| kept.hash != old.hash && kept.hash != version.hash);
            kept.push(old);
            if kept.len() > RETIRED_COMPILED {
                kept.remove(0);
            }
        }
    }

    /// Build `hash` of `plugin`, compiled, if this registry served it lately.
    pub fn retired(&self, plugin: &str, hash: &str) -> Option<Arc<PluginVersion>> {
        let retired = self.retired.lock().unwrap_or_else(|poison| poison.into_inner());
        retired.get(plugin)?.iter().find(|version| version.hash == hash).cloned()
    }

    /// The builds of `plugin` the history must not drop: the one serving, and a rollout's.
    fn protected(&self, plugin: &str) -> Vec<String> {
        let serving = self.get(plugin).map(|version| version.hash.clone());
        let candidate = self.rollout(plugin).map(|rollout| rollout.candidate.hash.clone());
        serving.into_iter().chain(candidate).collect()
    }

    /// Stops serving plugin `name`; returns whether it was served.
    pub fn remove(&self, name: &str) -> bool {
        let mut removed = false;
        self.versions.rcu(|versions| {
            let mut versions = BTreeMap::clone(versions);
            removed = versions.remove(name).is_some();
            versions
        });
        removed
    }

    /// Brings the registry in line with `dir`: loads every `NAME.wasm` that is new or changed and
    /// removes plugins whose file is gone. Returns what each load did; failures were also kept for
    /// `status`.
    pub fn rescan(&self, dir: &Path) -> std::io::Result<Vec<Result<Loaded, PluginFileError>>> {
        let mut present = Vec::new();
        let mut loads = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
                match plugin_name(&path) {
                    Some(name) => present.push(name),
                    None => {
                        loads.push(Err(PluginFileError::BadName(path)));
                        continue;
                    }
                }
                loads.push(self.load_file(&path));
            }
        }
        let gone: Vec<Arc<str>> =
            self.snapshot().keys().filter(|name| !present.iter().any(|p| p == &***name)).cloned().collect();
        for name in gone {
            self.remove(&name);
        }
        Ok(loads)
    }
}

/// The bytes of plugin file `path`, read as itself: not through a symbolic link, and only if it is
/// at most [`MAX_PLUGIN_BYTES`].
fn read_plugin_file(plugin: &str, path: &Path) -> Result<Vec<u8>, PluginFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| PluginFileError::Read { plugin: plugin.to_owned(), path: path.to_owned(), source };
    if std::fs::symlink_metadata(path).map_err(read_error)?.file_type().is_symlink() {
        return Err(PluginFileError::Symlink { plugin: plugin.to_owned(), path: path.to_owned() });
    }
    // O_NOFOLLOW too: the file may have been swapped for a link since it was looked at.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc_o_nofollow()).open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    if size > MAX_PLUGIN_BYTES {
        return Err(PluginFileError::TooLarge { plugin: plugin.to_owned(), size });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // Read at most one byte past the limit: a file that grew meanwhile is refused, not read whole.
    file.take(MAX_PLUGIN_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(PluginFileError::TooLarge { plugin: plugin.to_owned(), size: bytes.len() as u64 });
    }
    Ok(bytes)
}

/// `O_NOFOLLOW` for `OpenOptionsExt::custom_flags`.
fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_files_are_read_only_as_themselves_and_within_the_limit() {
        let dir = std::env::temp_dir().join(format!("wasmpush-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real.wasm");
        std::fs::write(&real, b"\0asm").unwrap();
        assert_eq!(read_plugin_file("real", &real).unwrap(), b"\0asm");
        let link = dir.join("linked.wasm");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(read_plugin_file("linked", &link), Err(PluginFileError::Symlink { .. })));
        let huge = dir.join("huge.wasm");
        std::fs::File::create(&huge).unwrap().set_len(MAX_PLUGIN_BYTES + 1).unwrap();
        let err = read_plugin_file("huge", &huge).unwrap_err();
        assert!(matches!(err, PluginFileError::TooLarge { size, .. } if size == MAX_PLUGIN_BYTES + 1), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
