//! What the controller is asked and how it refuses: [`DeployMode`], [`RolloutError`], and the
//! checks of a share and a window.

use std::time::Duration;

use crate::rollout::RolloutKind;

/// How a build is shipped through the admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeployMode {
    /// Served by every connection at its next tick, as a file drop.
    Now,
    /// A canary of `percent` % of the connections for `window`; promoted at its end unless
    /// `manual`.
    Canary {
        /// Share of the connections, in percent.
        percent: f64,
        /// How long it is judged.
        window: Duration,
        /// Whether promotion waits for `wasmpush promote`.
        manual: bool,
    },
    /// A shadow run on `sample` % of the connections for `window`.
    Shadow {
        /// Share of the connections, in percent.
        sample: f64,
        /// How long it runs.
        window: Duration,
    },
}

/// Why a rollout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The name cannot name a plugin.
    #[error("`{0}` is not a plugin name: letters, digits, `-` and `_`, at most 64")]
    BadName(String),
    /// A share or window out of range.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing serves the plugin, so there is nothing to compare a candidate with.
    #[error("plugin `{0}` is not served: deploy it plainly first (a canary or shadow needs a build to compare with)")]
    NotServed(String),
    /// The candidate is the build already serving.
    #[error("plugin `{plugin}` already serves build {hash:.12}")]
    SameBuild {
        /// The plugin.
        plugin: String,
        /// The build.
        hash: String,
    },
    /// Another rollout of the plugin is in progress.
    #[error(
        "a {kind} of `{plugin}` (build {candidate:.12}) is in progress since {age_secs} s: promote or abort it first"
    )]
    Busy {
        /// The plugin.
        plugin: String,
        /// `canary` or `shadow run`.
        kind: &'static str,
        /// Its candidate.
        candidate: String,
        /// Seconds since it started.
        age_secs: u64,
    },
    /// No rollout of the plugin is in progress.
    #[error("no rollout of `{0}` is in progress")]
    NoRollout(String),
    /// A promotion asked of a shadow run, which serves nothing.
    #[error("`{0}` runs a shadow, which serves nothing: deploy the build plainly or as a canary to ship it")]
    ShadowNotPromotable(String),
    /// The build failed to load; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The rollout is the cluster's: its judge ends it.
    #[error("the rollout of `{0}` is the cluster's: the cluster's judge ends it (docs/rollouts.md)")]
    ClusterRollout(String),
    /// The version asked for is not kept.
    #[error("plugin `{plugin}` keeps no build {asked}; kept: {kept}")]
    UnknownVersion {
        /// The plugin.
        plugin: String,
        /// What was asked.
        asked: String,
        /// The kept builds, newest first.
        kept: String,
    },
    /// The version history could not be read or written.
    #[error("version history: {0}")]
    History(String),
}

impl RolloutError {
    /// The HTTP status the admin endpoint answers it with.
    pub fn status(&self) -> u16 {
        match self {
            RolloutError::BadName(_) | RolloutError::BadRequest(_) => 400,
            RolloutError::NotServed(_) | RolloutError::NoRollout(_) | RolloutError::UnknownVersion { .. } => 404,
            RolloutError::SameBuild { .. }
            | RolloutError::Busy { .. }
            | RolloutError::ShadowNotPromotable(_)
            | RolloutError::ClusterRollout(_) => 409,
            RolloutError::Refused(_) => 422,
            RolloutError::History(_) => 500,
        }
    }
}

impl From<serde_json::Error> for RolloutError {
    fn from(err: serde_json::Error) -> Self {
        RolloutError::History(err.to_string())
    }
}

impl DeployMode {
    /// The rollout it asks for, and its window; `None` for a deploy at once.
    pub fn rollout(self) -> Option<(RolloutKind, Duration)> {
        match self {
            DeployMode::Now => None,
            DeployMode::Canary { percent, window, manual } => Some((RolloutKind::Canary { percent, manual }, window)),
            DeployMode::Shadow { sample, window } => Some((RolloutKind::Shadow { sample }, window)),
        }
    }
}
