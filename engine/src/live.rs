//! [`LiveSettings`]: the settings a running engine takes over on `wasmpush reload` (SIGHUP)
//! without a restart — the tick interval, the size limits and the error reset. Relaxed atomics: each reader sees
//! the old or the new value, and either is valid.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Config;

/// The live-reloadable settings.
#[derive(Debug)]
pub struct LiveSettings {
    /// Milliseconds between two ticks of a connection; shards read it at every phase.
    tick_ms: AtomicU64,
    /// Largest params a client may send; connections check it on every message.
    max_params_bytes: AtomicUsize,
    /// Largest payload a plugin may push; shards check it on every push.
    max_payload_bytes: AtomicUsize,
    /// Seconds before a connection parked for an error is retried; 0 for never.
    error_reset_secs: AtomicU64,
}

impl LiveSettings {
    /// The live settings of `config`.
    pub fn new(config: &Config) -> Self {
        LiveSettings {
            tick_ms: AtomicU64::new(config.tick_ms),
            max_params_bytes: AtomicUsize::new(config.max_params_bytes),
            max_payload_bytes: AtomicUsize::new(config.max_payload_bytes),
            error_reset_secs: AtomicU64::new(config.error_reset_secs),
        }
    }

    /// Takes over the live settings of `config` (already validated).
    pub fn apply(&self, config: &Config) {
        self.tick_ms.store(config.tick_ms, Ordering::Relaxed);
        self.max_params_bytes.store(config.max_params_bytes, Ordering::Relaxed);
        self.max_payload_bytes.store(config.max_payload_bytes, Ordering::Relaxed);
        self.error_reset_secs.store(config.error_reset_secs, Ordering::Relaxed);
    }

    /// The interval between two pushes to a connection.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms.load(Ordering::Relaxed))
    }

    /// The largest params object accepted.
    pub fn max_params_bytes(&self) -> usize {
        self.max_params_bytes.load(Ordering::Relaxed)
    }

    /// The largest payload a plugin may push.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes.load(Ordering::Relaxed)
    }

    /// How long a connection parked for an error stays parked before it is retried; `None` for
    /// until new params.
    pub fn error_reset(&self) -> Option<Duration> {
        match self.error_reset_secs.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_values_are_taken_over() {
        let old = Config::default();
        let new = Config { tick_ms: 100, max_params_bytes: 8192, ..Config::default() };
        let live = LiveSettings::new(&old);
        live.apply(&new);
        assert_eq!(live.tick(), Duration::from_millis(100));
        assert_eq!(live.max_params_bytes(), 8192);
        assert_eq!(live.error_reset(), None);
    }
}
