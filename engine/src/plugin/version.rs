//! [`PluginVersion`]: one loaded build of a plugin — compiled, linked and type-checked against the
//! contract, immutable — from which workers build instances.

use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Store};

use super::bindings::PushPluginPre;
use super::epoch_clock::EpochClock;
use super::limits::SandboxLimits;
use super::store::{HostState, LogBudget, new_store};

/// One loaded build of a plugin.
pub struct PluginVersion {
    /// The plugin's name: its file name without `.wasm`.
    pub name: Arc<str>,
    /// SHA-256 of the file, in hex: the version id.
    pub hash: String,
    /// Size of the file in bytes.
    pub size: usize,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// The component, linked and type-checked, ready to instantiate.
    pub(super) pre: PushPluginPre<HostState>,
    /// The engine it was compiled by; its instances' stores must belong to it.
    pub(super) engine: Engine,
    /// Limits for its instances.
    pub(super) limits: SandboxLimits,
    /// Advances the epoch while its calls run, so their deadlines fire; kept as long as it lives.
    pub(super) epoch_clock: Arc<EpochClock>,
    /// Log lines its instances may write per second, together.
    pub(super) log_budget: Arc<LogBudget>,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PluginVersion {
    /// The first 12 hex digits of the hash, for logs.
    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }

    /// A store for a new instance of this version.
    pub(super) fn new_store(&self) -> Store<HostState> {
        new_store(&self.engine, &self.name, self.limits, self.log_budget.clone())
    }
}

/// The version id of a plugin file: the SHA-256 of its bytes, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}
