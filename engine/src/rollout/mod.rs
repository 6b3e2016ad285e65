//! Safe rollouts: a version history, shadow runs and canaries that roll themselves back
//! (docs/rollouts.md).
//!
//! A [`Rollout`] is a candidate build beside a plugin's serving one. The registry holds it
//! beside the served versions, so a shard sees it at its next phase: a **canary** serves the
//! candidate to a stable share of the plugin's connections (chosen by a hash of the connection
//! id); a **shadow** run calls it on a sample of connections with the same inputs as the serving
//! build and compares the outcomes, sending nothing. Shards count each build's calls in the
//! rollout's stats; the controller (`rollout_control`) judges them and ends the rollout: promoted,
//! rolled back, aborted or finished.
//!
//! ## Layout
//! - `candidate`: [`Rollout`], what shards read: a candidate beside the serving build.
//! - `stats`: what shards count: each build's calls, a shadow run's comparisons.
//! - `judge`: whether a canary's candidate is worse than the serving build.
//! - `history`: the builds kept on disk.
//!
//! The controller that starts, judges and ends rollouts is `rollout_control`, above the
//! registry (which holds the rollouts in progress and imports this module).

mod candidate;
mod history;
mod judge;
mod stats;

pub use self::candidate::{Rollout, RolloutKind};
pub use self::history::{KeptVersion, VersionHistory, write_atomically};
pub use self::judge::{Outcome, thousands, verdict};
pub use self::stats::{MAX_SAMPLES, ShadowReport, ShadowStats};
