//! [`EngineStats`]: the engine's running counters, shared by the server, the shards and the
//! admin endpoint. Plain relaxed atomics: they are counts for operators, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the engine started.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Connections open now (handshake completed, not yet closed).
    connections: AtomicU64,
    /// Data frames pushed.
    pushes: AtomicU64,
    /// Business errors plugins returned.
    plugin_errors: AtomicU64,
    /// Plugin calls that trapped, timed out or broke the contract.
    plugin_faults: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub connections: u64,
    /// Data frames pushed since start.
    pub pushes: u64,
    /// Business errors plugins returned since start.
    pub plugin_errors: u64,
    /// Plugin calls that trapped, timed out or broke the contract since start.
    pub plugin_faults: u64,
}

impl EngineStats {
    /// A connection opened.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// `count` data frames were pushed.
    pub fn pushed(&self, count: u64) {
        self.pushes.fetch_add(count, Ordering::Relaxed);
    }

    /// A plugin returned a business error.
    pub fn plugin_error(&self) {
        self.plugin_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A plugin call faulted.
    pub fn plugin_fault(&self) {
        self.plugin_faults.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            plugin_errors: self.plugin_errors.load(Ordering::Relaxed),
            plugin_faults: self.plugin_faults.load(Ordering::Relaxed),
        }
    }
}
