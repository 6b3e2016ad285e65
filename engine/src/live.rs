//! [`LiveSettings`]: the settings a running engine takes over on `wasmpush reload` (SIGHUP)
//! without a restart — the tick interval, the size limits and the error reset. Relaxed atomics: each reader sees
//! the old or the new value, and either is valid.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Config;

/// The live-reloadable settings.
#[derive(Debug)]
pub struct LiveSettings {
    /// `tick_ms`.
    tick_ms: AtomicU64,
    /// `max_params_bytes`.
    max_params_bytes: AtomicUsize,
    /// `max_payload_bytes`.
    max_payload_bytes: AtomicUsize,
    /// `error_reset_secs`; 0 for never.
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

impl Config {
    /// The settings that differ between `self` and `other` and take effect only on a restart.
    pub fn restart_only_changes(&self, other: &Config) -> Vec<&'static str> {
        // Destructured without `..`: a new setting must be sorted into live or restart-only here.
        let Config {
            listen,
            admin,
            plugins_dir,
            watch_plugins,
            default_plugin,
            tick_ms: _,
            workers,
            max_params_bytes: _,
            max_message_bytes,
            max_connections,
            max_connections_per_ip,
            max_messages_per_sec,
            handshake_timeout_secs,
            write_timeout_secs,
            ping_secs,
            idle_timeout_secs,
            plugin_timeout_ms,
            plugin_call_budget_us,
            plugin_memory_mib,
            plugin_max_instances,
            plugin_max_table_elements,
            max_payload_bytes: _,
            error_reset_secs: _,
        } = self;
        [
            ("listen", *listen != other.listen),
            ("admin", *admin != other.admin),
            ("plugins_dir", *plugins_dir != other.plugins_dir),
            ("watch_plugins", *watch_plugins != other.watch_plugins),
            ("default_plugin", *default_plugin != other.default_plugin),
            ("workers", *workers != other.workers),
            ("max_message_bytes", *max_message_bytes != other.max_message_bytes),
            ("max_connections", *max_connections != other.max_connections),
            ("max_connections_per_ip", *max_connections_per_ip != other.max_connections_per_ip),
            ("max_messages_per_sec", *max_messages_per_sec != other.max_messages_per_sec),
            ("handshake_timeout_secs", *handshake_timeout_secs != other.handshake_timeout_secs),
            ("write_timeout_secs", *write_timeout_secs != other.write_timeout_secs),
            ("ping_secs", *ping_secs != other.ping_secs),
            ("idle_timeout_secs", *idle_timeout_secs != other.idle_timeout_secs),
            ("plugin_timeout_ms", *plugin_timeout_ms != other.plugin_timeout_ms),
            ("plugin_call_budget_us", *plugin_call_budget_us != other.plugin_call_budget_us),
            ("plugin_memory_mib", *plugin_memory_mib != other.plugin_memory_mib),
            ("plugin_max_instances", *plugin_max_instances != other.plugin_max_instances),
            ("plugin_max_table_elements", *plugin_max_table_elements != other.plugin_max_table_elements),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_values_are_taken_over_and_others_are_named() {
        let old = Config::default();
        let new = Config { tick_ms: 100, max_params_bytes: 8192, workers: 7, ..Config::default() };
        let live = LiveSettings::new(&old);
        live.apply(&new);
        assert_eq!(live.tick(), Duration::from_millis(100));
        assert_eq!(live.max_params_bytes(), 8192);
        assert_eq!(old.restart_only_changes(&new), vec!["workers"]);
        assert!(old.restart_only_changes(&Config { tick_ms: 50, ..Config::default() }).is_empty());
    }
}
