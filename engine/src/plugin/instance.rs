//! [`PluginInstance`]: one live instance of a [`PluginVersion`] in its own store, and the batch
//! call with its deadline. A fault leaves the instance unusable; the caller drops it and builds
//! a new one (the engine holds all per-connection state, so nothing is lost).

use std::sync::Arc;

use wasmtime::Store;

use super::Calls;
use super::deadline::{self, CallDeadline};
use super::host::{HostState, PluginVersion, bindings};
use super::outcomes::Outcomes;

/// Why a plugin call produced no usable result. Each kind has its own metric and log line; none
/// is a business error (those are [`Outcome::Error`](super::Outcome::Error)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    /// The call ran past its deadline and was interrupted.
    #[error("timed out")]
    Timeout,
    /// The instance tried to grow its memory past its cap.
    #[error("exceeded its memory limit")]
    MemoryLimit,
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access…).
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest broke the contract (e.g. returned the wrong number of outcomes, or a text that
    /// is not UTF-8).
    #[error("broke the contract: {0}")]
    Contract(String),
}

/// A live instance. Not shared: each worker owns its own.
pub struct PluginInstance {
    /// The version it was built from.
    version: Arc<PluginVersion>,
    /// Its store; dropped with it, which frees its memory.
    store: Store<HostState>,
    /// Its exports.
    bindings: bindings::PushPlugin,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance").field("version", &self.version).finish_non_exhaustive()
    }
}

impl PluginInstance {
    /// Instantiates `version` in a fresh store, running its start function under the deadline.
    pub fn new(version: &Arc<PluginVersion>) -> Result<Self, PluginFault> {
        let _calling = version.epoch_clock.calling();
        let mut store = version.new_store();
        let timeout = version.limits.call_timeout;
        store.data_mut().deadline = Some(CallDeadline::starting_now(timeout));
        store.set_epoch_deadline(deadline::ticks(timeout));
        let bindings = version.pre.instantiate(&mut store).map_err(classify)?;
        Ok(PluginInstance { version: version.clone(), store, bindings })
    }

    /// The version this instance runs.
    pub fn version(&self) -> &Arc<PluginVersion> {
        &self.version
    }

    /// Runs one batch: one outcome per call, in order. On a fault the instance must be dropped.
    pub fn run(&mut self, now_ms: u64, calls: &Calls, closed: &[u64]) -> Result<Outcomes, PluginFault> {
        let limits = self.version.limits;
        let budget = limits.call_timeout + limits.per_call_budget * calls.len() as u32;
        self.store.data_mut().deadline = Some(CallDeadline::starting_now(budget));
        self.store.set_epoch_deadline(deadline::ticks(budget));
        let calling = self.version.epoch_clock.calling();
        let result = self.bindings.call_run(&mut self.store, now_ms, calls, closed).map_err(classify);
        drop(calling);
        let dropped = self.store.data().log_budget.refill();
        if dropped > 0 {
            let plugin = &self.version.name;
            tracing::warn!(target: "plugin", %plugin, dropped, "log lines over the per-call budget were dropped");
        }
        Outcomes::check(result?, calls.len())
    }
}

/// Sorts a wasmtime error into a fault kind.
fn classify(err: wasmtime::Error) -> PluginFault {
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => PluginFault::Timeout,
        _ if format!("{err:#}").contains("forcing trap when growing memory") => PluginFault::MemoryLimit,
        _ => PluginFault::Trap(format!("{err:#}")),
    }
}
