//! [`PluginRegistry`]: the plugin versions currently served, by name, and how files become
//! versions. Readers (workers, the handshake) take a lock-free snapshot; a new version is
//! published with one atomic pointer swap, only after it compiled and instantiated, so a bad file
//! never replaces a good version.
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

/// The plugins currently served.
#[derive(Debug)]
pub struct PluginRegistry {
    /// Compiles and validates plugin files.
    host: PluginHost,
    /// The served versions by name; replaced whole on every change.
    versions: ArcSwap<BTreeMap<Arc<str>, Arc<PluginVersion>>>,
    /// The most recent failed load, kept for `status` until a later load of the same plugin
    /// succeeds.
    last_error: Mutex<Option<FailedLoad>>,
}

/// A load that failed; the previous version (if any) kept serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedLoad {
    /// The plugin whose file failed to load.
    pub plugin: String,
    /// Why, in one line.
    pub reason: String,
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
        PluginRegistry { host, versions: ArcSwap::default(), last_error: Mutex::new(None) }
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
        let result = self.compile(&plugin, path);
        let mut last_error = self.last_error.lock().unwrap_or_else(|poison| poison.into_inner());
        match &result {
            Ok(_) if last_error.as_ref().is_some_and(|failed| failed.plugin == plugin) => *last_error = None,
            Ok(_) => {}
            Err(err) => {
                *last_error =
                    Some(FailedLoad { plugin: plugin.clone(), reason: err.to_string(), at: SystemTime::now() })
            }
        }
        result
    }

    fn compile(&self, plugin: &str, path: &Path) -> Result<Loaded, PluginFileError> {
        let bytes = std::fs::read(path).map_err(|source| PluginFileError::Read {
            plugin: plugin.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        if let Some(current) = self.get(plugin)
            && current.size == bytes.len()
            && current.hash == content_hash(&bytes)
        {
            return Ok(Loaded::Unchanged(current));
        }
        let version = self
            .host
            .load(plugin, &bytes)
            .map_err(|source| PluginFileError::Invalid { plugin: plugin.to_owned(), source })?;
        self.versions.rcu(|versions| {
            let mut versions = BTreeMap::clone(versions);
            versions.insert(version.name.clone(), version.clone());
            versions
        });
        Ok(Loaded::Published(version))
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
