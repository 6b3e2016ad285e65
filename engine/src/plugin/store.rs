//! [`HostState`]: what one instance's store holds besides the instance — its WASI context (which
//! grants nothing), its limiter, its call deadline, its guest-log budget and its data access —
//! and the host side of the contract's imports (guest logging, data reads).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::wasmpush::plugin::data::Value;
use super::bindings::wasmpush::plugin::host::Level;
use super::bindings::wasmpush::plugin::{data, host, types};
use super::data::DataAccess;
use super::deadline::{CallDeadline, thread_cpu_time};
use super::limits::{InstanceLimiter, SandboxLimits};

/// The data of one instance's store.
pub(super) struct HostState {
    /// The plugin's name, for log lines.
    plugin: Arc<str>,
    /// A WASI context with no files, network, environment or arguments (clocks and random
    /// numbers are WASI's defaults); stdout and stderr go to the log.
    wasi: WasiCtx,
    /// WASI's resources.
    table: ResourceTable,
    /// Holds the instance to its memory, table and instance caps.
    pub(super) limiter: InstanceLimiter,
    /// Log lines the guest may still write in the current call.
    pub(super) log_budget: Arc<LogBudget>,
    /// The time limit of the call in progress, in the shard thread's CPU time.
    pub(super) deadline: Option<CallDeadline>,
    /// What the batch in progress may read, and the data keys the instance knows by id.
    pub(super) data: DataAccess,
}

/// A store for a new instance of plugin `plugin`: limited by `limits`, its deadline checked in
/// the calling thread's CPU time whenever the epoch deadline passes.
pub(super) fn new_store(engine: &Engine, plugin: &Arc<str>, limits: SandboxLimits) -> Store<HostState> {
    let log_budget = Arc::new(LogBudget::default());
    let pipe = LogPipe { plugin: plugin.clone(), budget: log_budget.clone() };
    let wasi = WasiCtx::builder().stdout(pipe.clone()).stderr(pipe).build();
    let state = HostState {
        plugin: plugin.clone(),
        wasi,
        table: ResourceTable::new(),
        limiter: InstanceLimiter::new(limits),
        log_budget,
        deadline: None,
        data: DataAccess::new(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.epoch_deadline_callback(|store| {
        Ok(match store.data().deadline {
            Some(deadline) => deadline.on_epoch_deadline(thread_cpu_time()),
            None => UpdateDeadline::Interrupt,
        })
    });
    store
}

/// Log lines a guest may write per call, beyond which they are dropped (and counted), so a
/// logging loop cannot flood the engine's log.
#[derive(Debug)]
pub(super) struct LogBudget {
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

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget.take() {
            log_line(&self.plugin, level, &message);
        }
    }
}

impl types::Host for HostState {}

impl data::Host for HostState {
    fn get(&mut self, bucket: String, key: String) -> Result<Value, String> {
        self.data.read(&bucket, &key)
    }

    fn get_many(&mut self, bucket: String, keys: Vec<String>) -> Result<Vec<Value>, String> {
        keys.iter().map(|key| self.data.read(&bucket, key)).collect()
    }
}

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
    /// Whose output it is, for the log line.
    plugin: Arc<str>,
    /// Shared with the store's `log` import: output and log lines draw on one budget.
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
