//! [`HostState`]: what one instance's store holds besides the instance — its WASI context (which
//! grants nothing), its limiter, its call deadline, its guest-log budget and its data access —
//! and the host side of the contract's imports (guest logging, data reads).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

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
    /// The plugin's log lines per second, shared by all its instances.
    log_budget: Arc<LogBudget>,
    /// The time limit of the call in progress, in the shard thread's CPU time.
    pub(super) deadline: Option<CallDeadline>,
    /// What the batch in progress may read, and the data keys the instance knows by id.
    pub(super) data: DataAccess,
}

/// A store for a new instance of plugin `plugin`: limited by `limits`, its deadline checked in
/// the calling thread's CPU time whenever the epoch deadline passes, its log lines drawn from the
/// plugin's `log_budget`.
pub(super) fn new_store(
    engine: &Engine,
    plugin: &Arc<str>,
    limits: SandboxLimits,
    log_budget: Arc<LogBudget>,
) -> Store<HostState> {
    let pipe = LogPipe { plugin: plugin.clone(), budget: log_budget.clone() };
    // Everything WASI could grant is refused here by name, not left to upstream defaults: no
    // sockets, no name lookup, no preopened directory, no environment or arguments, and random
    // bytes at most MAX_RANDOM_BYTES a call (the host allocates what a guest asks for).
    let wasi = WasiCtx::builder()
        .stdout(pipe.clone())
        .stderr(pipe)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_RANDOM_BYTES)
        .build();
    let state = HostState {
        plugin: plugin.clone(),
        wasi,
        table: ResourceTable::new(),
        limiter: InstanceLimiter::new(limits),
        log_budget,
        deadline: None,
        data: DataAccess::new(limits.memory_bytes),
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

/// Random bytes one `get-random-bytes` call may ask for.
const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Log lines a plugin may write per second, across all its instances (every shard's); past them
/// its lines are dropped and counted, and the count is logged once the second is over. A logging
/// loop in a plugin can neither flood the engine's log nor slow the shards writing it.
#[derive(Debug)]
pub(super) struct LogBudget {
    /// When the budget's clock started.
    origin: Instant,
    /// The second (since `origin`) the counts are for.
    second: AtomicU64,
    /// Lines taken in that second.
    taken: AtomicU32,
    /// Lines dropped in that second.
    dropped: AtomicU32,
}

/// Log lines a plugin may write per second.
pub(super) const LOG_LINES_PER_SEC: u32 = 200;

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            origin: Instant::now(),
            second: AtomicU64::new(0),
            taken: AtomicU32::new(0),
            dropped: AtomicU32::new(0),
        }
    }
}

impl LogBudget {
    /// Whether plugin `plugin` may write one more line now.
    fn take(&self, plugin: &str) -> bool {
        let (granted, reported) = self.take_at(self.origin.elapsed().as_secs());
        if let Some(dropped) = reported {
            tracing::warn!(target: "plugin", plugin, dropped, "log lines over the plugin's budget of {LOG_LINES_PER_SEC} a second were dropped");
        }
        granted
    }

    /// Takes one line in second `now`; returns whether it may be written, and the lines the
    /// previous second dropped when `now` starts a new one.
    fn take_at(&self, now: u64) -> (bool, Option<u32>) {
        let second = self.second.load(Ordering::Relaxed);
        let mut reported = None;
        if now != second && self.second.compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.taken.store(0, Ordering::Relaxed);
            reported = Some(self.dropped.swap(0, Ordering::Relaxed)).filter(|dropped| *dropped > 0);
        }
        let granted = self.taken.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_SEC;
        if !granted {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        (granted, reported)
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
        if self.log_budget.take(&self.plugin) {
            log_line(&self.plugin, level, &message);
        }
    }
}

impl types::Host for HostState {}

impl data::Host for HostState {
    fn get(&mut self, bucket: String, key: String) -> wasmtime::Result<Result<Value, String>> {
        Ok(self.data.read(&bucket, &key)?)
    }

    fn get_many(&mut self, bucket: String, keys: Vec<String>) -> wasmtime::Result<Result<Vec<Value>, String>> {
        Ok(self.data.read_many(&bucket, &keys)?)
    }
}

/// Writes one guest log line to the engine's log, under target `plugin`: cut to size, and its
/// control characters escaped, so a plugin can neither forge lines (a line break) nor drive the
/// operator's terminal (ANSI codes).
fn log_line(plugin: &str, level: Level, message: &str) {
    let message = printable(truncate(message, MAX_LOG_LINE));
    match level {
        Level::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
        Level::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
        Level::Info => tracing::info!(target: "plugin", plugin, "{message}"),
        Level::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
        Level::Error => tracing::error!(target: "plugin", plugin, "{message}"),
    }
}

/// `text` with every control character written as its escape (`\n`, `\u{1b}`).
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let escape = |c: char| if c.is_control() { c.escape_default().to_string() } else { c.to_string() };
    std::borrow::Cow::Owned(text.chars().map(escape).collect())
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
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
        if self.budget.take(&self.plugin) {
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
    fn the_log_budget_holds_a_plugin_to_its_lines_a_second_and_reports_the_rest() {
        let budget = LogBudget::default();
        assert!((0..LOG_LINES_PER_SEC).all(|_| budget.take_at(0) == (true, None)));
        assert_eq!(budget.take_at(0), (false, None));
        assert_eq!(budget.take_at(0), (false, None));
        assert_eq!(budget.take_at(1), (true, Some(2)), "a new second: the drops of the last are reported once");
        assert_eq!(budget.take_at(1), (true, None));
        assert_eq!(budget.take_at(5), (true, None), "nothing was dropped in second 1");
    }

    #[test]
    fn a_plugin_cannot_forge_log_lines_or_send_terminal_codes() {
        assert_eq!(printable("fine: \"quoted\" é"), "fine: \"quoted\" é");
        let forged = "done\n2026-01-01T00:00:00Z  INFO wasmpush: admin login ok\x1b[2J\r";
        assert_eq!(printable(forged), "done\\n2026-01-01T00:00:00Z  INFO wasmpush: admin login ok\\u{1b}[2J\\r");
    }

    #[test]
    fn long_log_lines_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
