//! [`PluginInstance`]: one live instance of a [`PluginVersion`] in its own store, and the batch
//! call with its deadline. A fault leaves the instance unusable; the caller drops it and builds
//! a new one (the engine holds all per-connection state, so nothing is lost).

use std::sync::Arc;

use wasmtime::Store;

use super::bindings::{PushPlugin, wasmpush::plugin::types::Calls};
use super::data::{BatchData, ReadKey};
use super::deadline::{self, CallDeadline};
use super::fault::{PluginFault, classify};
use super::outcomes::Outcomes;
use super::store::HostState;
use super::version::PluginVersion;

/// A live instance. Not shared: each worker owns its own.
pub struct PluginInstance {
    /// The version it was built from.
    version: Arc<PluginVersion>,
    /// Its store; dropped with it, which frees its memory.
    store: Store<HostState>,
    /// Its exports.
    bindings: PushPlugin,
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
        match version.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(PluginInstance { version: version.clone(), store, bindings }),
            Err(err) => Err(classify(&err, store.data_mut().limiter.take_denied())),
        }
    }

    /// The version this instance runs.
    pub fn version(&self) -> &Arc<PluginVersion> {
        &self.version
    }

    /// Runs one batch reading `data`: one outcome per call, in order, each with the ids of the
    /// data keys it used (see [`Self::key`]). `stale` lists the ids whose value changed since the
    /// previous batch. On a fault the instance must be dropped.
    pub fn run(
        &mut self,
        now_ms: u64,
        calls: &Calls,
        closed: &[u64],
        stale: &[u32],
        data: &BatchData,
    ) -> Result<Outcomes, PluginFault> {
        let limits = self.version.limits;
        let budget = limits.call_timeout + limits.per_call_budget * calls.len() as u32;
        self.store.data_mut().data.set_batch(data.clone());
        self.store.data_mut().deadline = Some(CallDeadline::starting_now(budget));
        self.store.set_epoch_deadline(deadline::ticks(budget));
        let calling = self.version.epoch_clock.calling();
        let result = self.bindings.call_run(&mut self.store, now_ms, calls, closed, stale);
        drop(calling);
        let state = self.store.data_mut();
        state.data.set_batch(BatchData::none());
        // A refusal the guest recovered from (an allocation it retried smaller) is no fault.
        let memory_denied = state.limiter.take_denied();
        let raw = result.map_err(|err| classify(&err, memory_denied))?;
        Outcomes::check(raw, calls.len())
    }

    /// The data key this instance knows by `id`, if it is one.
    pub fn key(&self, id: u32) -> Option<&ReadKey> {
        self.store.data().data.keys.name(id)
    }

    /// The id this instance knows `key` by, if it has read it.
    pub fn key_id(&self, key: &ReadKey) -> Option<u32> {
        self.store.data().data.keys.id(key)
    }
}
