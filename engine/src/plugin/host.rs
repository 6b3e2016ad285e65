//! [`PluginHost`]: the shared wasmtime engine and linker, and the compilation of plugin files
//! into validated [`PluginVersion`]s. Compiling is slow (milliseconds to seconds): callers run
//! it on a blocking thread, never on a worker or the async runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::deadline::{CallDeadline, thread_cpu_time};
use super::epoch_clock::{EpochClock, IDLE_AFTER};
use super::instance::PluginInstance;

/// Bindings generated from the WIT contract.
#[allow(missing_docs, clippy::all)]
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "push-plugin",
    });
}

use bindings::wasmpush::plugin::host::Level;

/// The WIT package (and version) of the contract plugins must implement.
pub const CONTRACT: &str = "wasmpush:plugin@0.2.0";

/// Limits applied to every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// CPU time one call may use (see `deadline.rs`).
    pub call_timeout: Duration,
    /// Extra CPU time per connection a batch carries.
    pub per_call_budget: Duration,
    /// Core instances, tables and memories one plugin instance may create (each, at most).
    pub max_instances: usize,
    /// Elements one table may grow to.
    pub max_table_elements: usize,
}

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component does not implement the `wasmpush:plugin/push-plugin` world.
    #[error("does not implement the {CONTRACT} contract: {0:#}")]
    Contract(wasmtime::Error),
    /// The component trapped or failed while being instantiated.
    #[error("failed to instantiate: {0}")]
    Instantiate(super::PluginFault),
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
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        deny_blocking(&mut linker)?;
        bindings::PushPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let epoch_clock = Arc::new(EpochClock::start(engine.clone(), limits.call_timeout, IDLE_AFTER)?);
        Ok(PluginHost { engine, linker, limits, epoch_clock })
    }

    /// Compiles `bytes` as plugin `name`, checks it implements the contract and instantiates it
    /// once, so a version that is returned is known to start.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Arc<PluginVersion>, LoadError> {
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        let pre = self.linker.instantiate_pre(&component).map_err(LoadError::Contract)?;
        let pre = bindings::PushPluginPre::new(pre).map_err(LoadError::Contract)?;
        let version = Arc::new(PluginVersion {
            name: Arc::from(name),
            hash: content_hash(bytes),
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            pre,
            engine: self.engine.clone(),
            limits: self.limits,
            epoch_clock: self.epoch_clock.clone(),
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
fn deny_blocking(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    fn refused() -> wasmtime::Error {
        wasmtime::Error::msg("plugins may not block or sleep (wasi:io/poll is refused)")
    }
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    poll.func_wrap("[method]pollable.block", |_, (_,): (Resource<DynPollable>,)| -> wasmtime::Result<()> {
        Err(refused())
    })?;
    poll.func_wrap("poll", |_, (_,): (Vec<Resource<DynPollable>>,)| -> wasmtime::Result<(Vec<u32>,)> {
        Err(refused())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The version id of a plugin file: the SHA-256 of its bytes, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One loaded build of a plugin: compiled, checked against the contract, immutable.
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
    pub(super) pre: bindings::PushPluginPre<HostState>,
    /// The engine it was compiled by.
    pub(super) engine: Engine,
    /// Limits for its instances.
    pub(super) limits: SandboxLimits,
    /// Advances the epoch while its calls run, so their deadlines fire; kept as long as it lives.
    pub(super) epoch_clock: Arc<EpochClock>,
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
        let log_budget = Arc::new(LogBudget::default());
        let pipe = LogPipe { plugin: self.name.clone(), budget: log_budget.clone() };
        let wasi = WasiCtx::builder().stdout(pipe.clone()).stderr(pipe).build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .instances(self.limits.max_instances)
            .tables(self.limits.max_instances)
            .memories(self.limits.max_instances)
            .table_elements(self.limits.max_table_elements)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            plugin: self.name.clone(),
            wasi,
            table: ResourceTable::new(),
            limits,
            log_budget,
            deadline: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|store| {
            Ok(match store.data().deadline {
                Some(deadline) => deadline.on_epoch_deadline(thread_cpu_time()),
                None => UpdateDeadline::Interrupt,
            })
        });
        store
    }
}

/// The data of one instance's store.
pub(crate) struct HostState {
    /// The plugin's name, for log lines.
    plugin: Arc<str>,
    /// A WASI context with no files, network, environment or arguments (clocks and random
    /// numbers are WASI's defaults); stdout and stderr go to the log.
    wasi: WasiCtx,
    /// WASI's resources.
    table: ResourceTable,
    /// Memory and table caps.
    limits: StoreLimits,
    /// Log lines the guest may still write in the current call.
    pub(super) log_budget: Arc<LogBudget>,
    /// The time limit of the call in progress, in the shard thread's CPU time.
    pub(super) deadline: Option<CallDeadline>,
}

/// Log lines a guest may write per call, beyond which they are dropped (and counted), so a
/// logging loop cannot flood the engine's log.
#[derive(Debug)]
pub(crate) struct LogBudget {
    /// Lines left in this call.
    left: AtomicU32,
    /// Lines dropped in this call.
    dropped: AtomicU32,
}

/// Log lines a guest may write in one call (a batch or an instantiation).
const LOG_LINES_PER_CALL: u32 = 100;

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget { left: AtomicU32::new(LOG_LINES_PER_CALL), dropped: AtomicU32::new(0) }
    }
}

impl LogBudget {
    /// Whether one more line may be written.
    fn take(&self) -> bool {
        let granted = self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if !granted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    /// Starts a new call's budget; returns how many lines the previous call had dropped.
    pub(super) fn refill(&self) -> u32 {
        self.left.store(LOG_LINES_PER_CALL, Ordering::Relaxed);
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Longest guest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

impl bindings::wasmpush::plugin::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget.take() {
            log_line(&self.plugin, level, &message);
        }
    }
}

impl bindings::wasmpush::plugin::types::Host for HostState {}

/// Writes one guest log line to the engine's log, under target `plugin`.
fn log_line(plugin: &str, level: Level, message: &str) {
    let message = truncate(message, MAX_LOG_LINE);
    match level {
        Level::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
        Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
        Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
        Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
        Level::Error => tracing::error!(target: "plugin", plugin, "{message}"),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A guest's standard output or error: each write is logged at level info, within the budget.
#[derive(Clone)]
struct LogPipe {
    /// The plugin's name.
    plugin: Arc<str>,
    /// Shared with the store's `log` import.
    budget: Arc<LogBudget>,
}

impl wasmtime_wasi::cli::IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for LogPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if self.budget.take() {
            let text = String::from_utf8_lossy(&bytes);
            log_line(&self.plugin, Level::Info, text.trim_end());
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(MAX_LOG_LINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_named_in_load_errors_is_the_wit_package() {
        let wit = include_str!("../../../guest-sdk/wit/plugin.wit");
        assert!(wit.contains(&format!("package {CONTRACT};")), "update CONTRACT to the package in plugin.wit");
    }

    #[test]
    fn the_log_budget_drops_lines_past_the_limit_and_refills_per_call() {
        let budget = LogBudget::default();
        assert!((0..LOG_LINES_PER_CALL).all(|_| budget.take()));
        assert!(!budget.take());
        assert!(!budget.take());
        assert_eq!(budget.refill(), 2);
        assert!(budget.take());
        assert_eq!(budget.refill(), 0);
    }

    #[test]
    fn long_log_lines_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
