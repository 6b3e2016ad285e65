//! [`LiveSettings`]: the settings a running engine takes over on `wasmpush reload` (SIGHUP)
//! without a restart — the tick interval, the size limits, the error reset, data coalescing and
//! each plugin's [`PluginPolicy`]. Relaxed atomics and one pointer swap: each reader sees the old
//! or the new value, and either is valid.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{AuthMode, Config, PluginSettings};

/// What one plugin may do, from its `[plugins.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginPolicy {
    /// The data buckets its calls may read.
    pub grants: Arc<[Arc<str>]>,
    /// Milliseconds between two ticks of its connections: `None` for the engine's `tick_ms`, 0
    /// for no ticks, otherwise a multiple of `tick_ms` (checked by the config).
    pub tick_ms: Option<u64>,
    /// Whether a frame identical to the last one sent on a connection is left unsent.
    pub skip_unchanged: bool,
    /// Whether its clients must present a token.
    pub auth: AuthMode,
}

impl PluginPolicy {
    fn new(settings: &PluginSettings) -> Self {
        PluginPolicy {
            grants: settings.read.iter().map(|bucket| Arc::from(bucket.as_str())).collect(),
            tick_ms: settings.tick_ms,
            skip_unchanged: settings.skip_unchanged,
            auth: settings.auth,
        }
    }

    /// Its connections tick at every how many visits of their phase (each `tick`): 0 for never.
    pub fn ticks_every(&self, tick: Duration) -> u64 {
        match self.tick_ms {
            None => 1,
            Some(ms) => ms / (tick.as_millis() as u64).max(1),
        }
    }
}

/// The policies of the plugins that have a table; the others have the default.
type Policies = HashMap<String, Arc<PluginPolicy>>;

fn policies(config: &Config) -> Policies {
    config.plugins.iter().map(|(name, settings)| (name.clone(), Arc::new(PluginPolicy::new(settings)))).collect()
}

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
    /// Milliseconds a connection waits at least between two data-triggered calls.
    data_coalesce_ms: AtomicU64,
    /// Each plugin's policy, swapped whole on reload.
    plugins: ArcSwap<Policies>,
    /// The policy of a plugin without a table.
    default_policy: Arc<PluginPolicy>,
}

impl LiveSettings {
    /// The live settings of `config`.
    pub fn new(config: &Config) -> Self {
        LiveSettings {
            tick_ms: AtomicU64::new(config.tick_ms),
            max_params_bytes: AtomicUsize::new(config.max_params_bytes),
            max_payload_bytes: AtomicUsize::new(config.max_payload_bytes),
            error_reset_secs: AtomicU64::new(config.error_reset_secs),
            data_coalesce_ms: AtomicU64::new(config.data_coalesce_ms),
            plugins: ArcSwap::from_pointee(policies(config)),
            default_policy: Arc::default(),
        }
    }

    /// Takes over the live settings of `config` (already validated).
    pub fn apply(&self, config: &Config) {
        self.tick_ms.store(config.tick_ms, Ordering::Relaxed);
        self.max_params_bytes.store(config.max_params_bytes, Ordering::Relaxed);
        self.max_payload_bytes.store(config.max_payload_bytes, Ordering::Relaxed);
        self.error_reset_secs.store(config.error_reset_secs, Ordering::Relaxed);
        self.data_coalesce_ms.store(config.data_coalesce_ms, Ordering::Relaxed);
        self.plugins.store(Arc::new(policies(config)));
    }

    /// The policy of plugin `name`.
    pub fn plugin(&self, name: &str) -> Arc<PluginPolicy> {
        self.plugins.load().get(name).cloned().unwrap_or_else(|| self.default_policy.clone())
    }

    /// The least time between two data-triggered calls of one connection.
    pub fn data_coalesce(&self) -> Duration {
        Duration::from_millis(self.data_coalesce_ms.load(Ordering::Relaxed))
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
        assert_eq!(live.plugin("portfolio").ticks_every(live.tick()), 1, "no table: the engine's ticks");
        let with_table = Config {
            plugins: [(
                "portfolio".to_owned(),
                PluginSettings {
                    read: vec!["prices".into()],
                    tick_ms: Some(0),
                    skip_unchanged: true,
                    ..PluginSettings::default()
                },
            )]
            .into(),
            ..new
        };
        live.apply(&with_table);
        let policy = live.plugin("portfolio");
        assert_eq!((policy.ticks_every(live.tick()), policy.skip_unchanged, &*policy.grants[0]), (0, true, "prices"));
        let slow = PluginPolicy { tick_ms: Some(1000), ..PluginPolicy::default() };
        assert_eq!(slow.ticks_every(Duration::from_millis(200)), 5);
    }
}
