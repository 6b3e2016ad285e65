//! What the controller reports: a rollout in progress ([`RolloutStatus`]), one that ended
//! ([`EndedRollout`]), a plugin's kept builds ([`VersionList`]), the records on disk, and the
//! metric families of the rollouts in progress.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::call_stats::CallReport;
use crate::rollout::{KeptVersion, Outcome, Rollout, RolloutKind, ShadowReport};
use crate::wall_clock::unix_ms;

/// A rollout in progress, as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The plugin.
    pub plugin: String,
    /// Canary or shadow, and its share.
    #[serde(flatten)]
    pub kind: RolloutKind,
    /// The candidate build's hash.
    pub candidate: String,
    /// The hash of the build it is compared with.
    pub serving: String,
    /// When it started, in ms since the Unix epoch.
    pub started_at_ms: u64,
    /// When its window ends, in ms since the Unix epoch.
    pub ends_at_ms: u64,
    /// The serving build's figures.
    pub serving_calls: CallReport,
    /// The candidate's figures.
    pub candidate_calls: CallReport,
    /// A shadow run's comparisons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
    /// A manual canary whose window is over: waiting for `wasmpush promote`.
    #[serde(default)]
    pub awaiting_promote: bool,
}

/// A rollout that ended, as `/status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndedRollout {
    /// What it was.
    #[serde(flatten)]
    pub status: RolloutStatus,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in words: "rolled back: traps 12.0 % vs 0.0 % over 4,212 calls".
    pub reason: String,
    /// When, in ms since the Unix epoch.
    pub ended_at_ms: u64,
}

/// `wasmpush versions NAME`: the kept builds of a plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionList {
    /// The plugin.
    pub plugin: String,
    /// The build serving now, if any.
    pub serving: Option<String>,
    /// The kept builds, newest first.
    pub versions: Vec<KeptVersion>,
}

/// A rollout in progress as written to disk: enough to say, after a restart, which one ended.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Started {
    /// It, as it started.
    pub(super) status: RolloutStatus,
}

/// Metric families of the rollouts in progress, labelled by plugin, build (`version`, only
/// the serving one and the candidate) and role, as OpenMetrics text.
pub fn metrics_text(rollouts: &BTreeMap<Arc<str>, Arc<Rollout>>) -> String {
    if rollouts.is_empty() {
        return String::new();
    }
    let mut calls = String::from(
        "# TYPE wasmpush_rollout_calls counter\n# HELP wasmpush_rollout_calls Calls of each build of a rollout in progress, by outcome\n",
    );
    let mut shadow = String::from(
        "# TYPE wasmpush_rollout_shadow_calls counter\n# HELP wasmpush_rollout_shadow_calls Calls of a shadow run, by comparison\n",
    );
    for (plugin, rollout) in rollouts.iter() {
        for (role, build, report) in [
            ("serving", &rollout.serving, rollout.serving_stats.report()),
            ("candidate", &rollout.candidate, rollout.candidate_stats.report()),
        ] {
            let labels = format!("plugin=\"{plugin}\",version=\"{}\",role=\"{role}\"", build.short_hash());
            for (outcome, count) in [
                ("all", report.calls),
                ("frame", report.frames),
                ("error", report.errors),
                ("trap", report.traps),
                ("timeout", report.timeouts),
            ] {
                calls += &format!("wasmpush_rollout_calls_total{{{labels},outcome=\"{outcome}\"}} {count}\n");
            }
        }
        if rollout.is_shadow() {
            let report = rollout.shadow.report();
            let labels = format!("plugin=\"{plugin}\",version=\"{}\"", rollout.candidate.short_hash());
            for (result, count) in
                [("identical", report.identical), ("different", report.different), ("shed", report.shed)]
            {
                shadow += &format!("wasmpush_rollout_shadow_calls_total{{{labels},result=\"{result}\"}} {count}\n");
            }
        }
    }
    calls + &shadow
}

/// "canary (10 %)", "shadow run (100 % sample)".
pub(super) fn describe(rollout: &Rollout) -> String {
    match rollout.kind {
        RolloutKind::Canary { percent, manual: false } => format!("canary ({percent} %)"),
        RolloutKind::Canary { percent, manual: true } => format!("manual canary ({percent} %)"),
        RolloutKind::Shadow { sample } => format!("shadow run ({sample} % sample)"),
    }
}

/// `rollout` with its figures so far.
pub(super) fn status_of(rollout: &Rollout) -> RolloutStatus {
    let over = rollout.started.elapsed() >= rollout.window;
    RolloutStatus {
        plugin: rollout.plugin.to_string(),
        kind: rollout.kind,
        candidate: rollout.candidate.hash.clone(),
        serving: rollout.serving.hash.clone(),
        started_at_ms: unix_ms(rollout.started_at),
        ends_at_ms: unix_ms(rollout.started_at + rollout.window),
        serving_calls: rollout.serving_stats.report(),
        candidate_calls: rollout.candidate_stats.report(),
        shadow: rollout.is_shadow().then(|| rollout.shadow.report()),
        awaiting_promote: over && matches!(rollout.kind, RolloutKind::Canary { manual: true, .. }),
    }
}

/// The kept builds as one line: `3f2a…(serving), 9bc1…`.
pub(super) fn kept_list(list: &VersionList) -> String {
    if list.versions.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<String> = list
        .versions
        .iter()
        .map(|kept| {
            let serving = if Some(&kept.hash) == list.serving.as_ref() { " (serving)" } else { "" };
            format!("{:.12}{serving}", kept.hash)
        })
        .collect();
    shown.join(", ")
}

/// The ended rollouts recorded in `path`; none if it is missing or unreadable.
pub(super) fn read_ended(path: &Path) -> BTreeMap<String, VecDeque<EndedRollout>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::warn!(path = %path.display(), cause = %err, "ignoring an unreadable record of ended rollouts");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}
