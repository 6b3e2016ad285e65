//! [`PluginHost`]: the shared wasmtime engine and linker, and the compilation of plugin files
//! into validated [`PluginVersion`]s. Compiling is slow (milliseconds to seconds): callers run
//! it on a blocking thread, never on a worker or the async runtime.

use std::sync::Arc;
use std::time::SystemTime;

use wasmtime::component::{Component, HasSelf, Linker, Resource};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::DynPollable;

use super::bindings::{CONTRACT, PushPlugin, PushPluginPre};
use super::epoch_clock::{EpochClock, IDLE_AFTER};
use super::fault::{BlockingRefused, PluginFault};
use super::instance::PluginInstance;
use super::limits::SandboxLimits;
use super::store::HostState;
use super::version::{PluginVersion, content_hash};

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component does not implement the `wasmpush:plugin/push-plugin` world.
    #[error("does not implement the {CONTRACT} contract (rebuild it with the current wasmpush-sdk): {0:#}")]
    Contract(wasmtime::Error),
    /// The component trapped or failed while being instantiated.
    #[error("failed to instantiate: {0}")]
    Instantiate(PluginFault),
}

/// Why the plugin host could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the engine configuration or the linker definitions.
    #[error("cannot set up wasmtime: {0:#}")]
    Wasmtime(wasmtime::Error),
    /// The thread that advances the epoch could not be started.
    #[error("cannot start the epoch thread: {0}")]
    EpochThread(std::io::Error),
}

/// The shared compilation engine, linker and epoch clock.
pub struct PluginHost {
    /// Compiles components; its epoch drives call deadlines.
    engine: Engine,
    /// Links WASI (granting nothing) and the `host` interface.
    linker: Linker<HostState>,
    /// Limits for every instance.
    limits: SandboxLimits,
    /// Advances the epoch; shared with every version loaded.
    epoch_clock: Arc<EpochClock>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl PluginHost {
    /// A host with these limits; starts the thread that advances the epoch.
    pub fn new(limits: SandboxLimits) -> Result<Self, HostError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.concurrency_support(false);
        // One thread compiles (the reloader's blocking thread): a large plugin being compiled
        // must not take every core from the shards serving connections.
        config.parallel_compilation(false);
        let engine = Engine::new(&config).map_err(HostError::Wasmtime)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(HostError::Wasmtime)?;
        deny_blocking(&mut linker).map_err(HostError::Wasmtime)?;
        PushPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(HostError::Wasmtime)?;
        let epoch_clock =
            EpochClock::start(engine.clone(), limits.call_timeout, IDLE_AFTER).map_err(HostError::EpochThread)?;
        Ok(PluginHost { engine, linker, limits, epoch_clock: Arc::new(epoch_clock) })
    }

    /// Compiles `bytes` as plugin `name`, checks it implements the contract and instantiates it
    /// once, so a version that is returned is known to start.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<PluginVersion>, LoadError> {
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        let pre = self.linker.instantiate_pre(&component).map_err(LoadError::Contract)?;
        let pre = PushPluginPre::new(pre).map_err(LoadError::Contract)?;
        let version = Arc::new(PluginVersion {
            name: Arc::from(name),
            hash: content_hash(bytes),
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            pre,
            engine: self.engine.clone(),
            limits: self.limits,
            epoch_clock: self.epoch_clock.clone(),
            log_budget: Arc::default(),
        });
        PluginInstance::new(&version).map_err(LoadError::Instantiate)?;
        Ok(version)
    }
}

/// The WASI interface whose functions wait: `wasi:io/poll`, as `add_to_linker_sync` defines it.
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

/// Replaces WASI's waiting functions (`pollable.block`, `poll`; `std::thread::sleep` is one) with
/// ones that trap. A plugin call runs on a shard thread serving thousands of connections, and an
/// epoch deadline interrupts only WebAssembly code, never a host call: a plugin that slept would
/// stall every connection of its shard for as long as it liked.
fn deny_blocking(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    poll.func_wrap("[method]pollable.block", |_, (_,): (Resource<DynPollable>,)| -> wasmtime::Result<()> {
        Err(BlockingRefused.into())
    })?;
    poll.func_wrap("poll", |_, (_,): (Vec<Resource<DynPollable>>,)| -> wasmtime::Result<(Vec<u32>,)> {
        Err(BlockingRefused.into())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A component that implements the contract's `run` (it traps if called) and whose core module
    /// declares two memories of `pages` 64 KiB pages each.
    fn two_memory_component(pages: u32) -> Vec<u8> {
        let text = format!(
            r#"(component
              (core module $m
                (memory (export "memory") {pages})
                (memory (export "second") {pages})
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 8)
                (func (export "run")
                  (param i64 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
                  unreachable))
              (core instance $i (instantiate $m))
              (type $trigger' (enum "open" "message" "tick" "data"))
              (export $trigger "trigger" (type $trigger'))
              (type $identity' (record (field "subject" (option string)) (field "claims" string)))
              (export $identity "identity" (type $identity'))
              (type $new-params' (record (field "index" u32) (field "json" string) (field "identity" (option $identity))))
              (export $new-params "new-params" (type $new-params'))
              (type $calls' (record (field "conn-ids" (list u64)) (field "seqs" (list u64))
                (field "triggers" (list $trigger)) (field "params" (list $new-params))))
              (export $calls "calls" (type $calls'))
              (type $outcome' (enum "push" "skip" "error"))
              (export $outcome "outcome" (type $outcome'))
              (type $outcomes' (record (field "kinds" (list $outcome)) (field "ends" (list u32))
                (field "text" (list u8)) (field "reads" (list u32)) (field "read-ends" (list u32))))
              (export $outcomes "outcomes" (type $outcomes'))
              (func $run (param "now-ms" u64) (param "calls" $calls) (param "closed" (list u64))
                (param "stale" (list u32)) (result $outcomes)
                (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
              (export "run" (func $run)))"#
        );
        wat::parse_str(text).expect("valid component text")
    }

    fn host(memory_bytes: usize) -> PluginHost {
        PluginHost::new(SandboxLimits {
            memory_bytes,
            call_timeout: Duration::from_secs(1),
            per_call_budget: Duration::ZERO,
            max_instances: 16,
            max_table_elements: 10_000,
        })
        .unwrap()
    }

    #[test]
    fn a_component_with_two_memories_is_held_to_one_cap() {
        let host = host(64 << 20);
        // 2 × 20 MiB fit in 64 MiB together.
        host.load("small", &two_memory_component(320)).expect("two memories within the cap load");
        // 2 × 40 MiB: each fits a per-memory cap of 64 MiB, together they do not.
        match host.load("large", &two_memory_component(640)) {
            Err(LoadError::Instantiate(PluginFault::MemoryLimit)) => {}
            other => panic!("expected the memory limit, got {:?}", other.map(|_| ())),
        }
    }
}
