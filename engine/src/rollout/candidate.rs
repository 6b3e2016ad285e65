//! [`Rollout`]: a candidate build beside a plugin's serving one, and which connections it takes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::stats::ShadowStats;
use crate::call_stats::CallStats;
use crate::plugin::PluginVersion;

/// What a rollout does with its candidate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RolloutKind {
    /// The candidate serves `percent` of the plugin's connections; promoted at the end of the
    /// window unless `manual`.
    Canary {
        /// Share of the connections it serves, in percent.
        percent: f64,
        /// Whether promotion waits for `wasmpush promote`.
        manual: bool,
    },
    /// The candidate runs beside the serving build on `sample` percent of the connections; its
    /// outcomes are compared, never sent.
    Shadow {
        /// Share of the connections sampled, in percent.
        sample: f64,
    },
}

impl RolloutKind {
    /// Its share of the plugin's connections, in percent: a canary's cohort, a shadow's sample.
    pub fn share(self) -> f64 {
        match self {
            RolloutKind::Canary { percent, .. } => percent,
            RolloutKind::Shadow { sample } => sample,
        }
    }

    /// Checks its share is above 0 and at most 100 %, and `window` between 1 s and a day; why
    /// not, in a line.
    pub fn check(self, window: Duration) -> Result<(), String> {
        let share = self.share();
        if !(share > 0.0 && share <= 100.0) {
            return Err(format!("a share must be above 0 and at most 100 %, not {share}"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&window) {
            return Err("a window must be between 1 s and 86400 s".to_owned());
        }
        Ok(())
    }
}

/// A candidate build beside a plugin's serving one.
#[derive(Debug)]
pub struct Rollout {
    /// The plugin.
    pub plugin: Arc<str>,
    /// Canary or shadow, and its share.
    pub kind: RolloutKind,
    /// The candidate build, compiled.
    pub candidate: Arc<PluginVersion>,
    /// The build that served when it started (what the candidate is compared with).
    pub serving: Arc<PluginVersion>,
    /// The candidate's bytes, written to the plugins directory if it is promoted.
    pub wasm: Arc<[u8]>,
    /// When it started.
    pub started_at: SystemTime,
    /// The same, for timing its window.
    pub started: Instant,
    /// How long it runs.
    pub window: Duration,
    /// Whether the cluster runs it (every node follows its plugin's pointer, and the cluster's
    /// judge ends it) rather than this engine.
    pub cluster: bool,
    /// The serving build's calls (on a shadow run: every call; on a canary: its cohort's).
    pub serving_stats: CallStats,
    /// The candidate's calls.
    pub candidate_stats: CallStats,
    /// A shadow run's comparisons.
    pub shadow: ShadowStats,
}

impl Rollout {
    /// Whether connection `conn_id` is in the candidate's share: a canary's cohort, or a shadow
    /// run's sample. Stable for the rollout's life: a connection stays on one build.
    pub fn takes(&self, conn_id: u64) -> bool {
        in_share(self.kind.share(), conn_id)
    }

    /// Whether it is a shadow run.
    pub fn is_shadow(&self) -> bool {
        matches!(self.kind, RolloutKind::Shadow { .. })
    }
}

/// Whether connection `conn_id` falls in a share of `percent` %: a fixed mix of the id
/// (splitmix64's finalizer, so neighbours land far apart), nested (a wider share holds every
/// narrower one's connections).
fn in_share(percent: f64, conn_id: u64) -> bool {
    let mut x = conn_id ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x % 1_000_000) as f64) < percent * 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_takes_about_its_percent_of_connections_and_always_the_same_ones() {
        let share = |percent: f64| (1..=100_000u64).filter(|id| in_share(percent, *id)).count();
        assert_eq!(share(0.0), 0);
        assert_eq!(share(100.0), 100_000);
        let ten = share(10.0);
        assert!((9_500..=10_500).contains(&ten), "10 % of 100,000: {ten}");
        let narrow = (1..=100_000u64).filter(|id| in_share(10.0, *id));
        assert!(narrow.clone().all(|id| in_share(20.0, id)), "a wider share keeps the narrower one's");
    }
}
