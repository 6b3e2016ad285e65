//! [`Rollouts`]: the controller of safe rollouts (the `rollout` module holds what it controls):
//! starts, judges and ends rollouts, and switches a plugin back to a kept build.
//!
//! Every change goes through one lock, so a deploy, a promotion, an abort, a rollback and the
//! judge never act on a plugin at once. A rollout in progress is written to
//! `DATA_DIR/rollouts/running/NAME.json`; an engine that starts and finds one there ends it (the serving
//! build, the one in the plugins directory, serves every connection) and records that. The last
//! rollouts of each plugin, with their outcome and figures, are kept in `rollouts/ended.json`.
//!
//! A promotion or a rollback also writes the build to the plugins directory (`NAME.wasm`,
//! through a temporary file), so a restart serves what the engine served; the watcher then
//! finds the file unchanged.
//!
//! ## Layout
//! - this file: [`Rollouts`] — starting, judging, ending, following the cluster's, rollback.
//! - `requests`: what it is asked ([`DeployMode`]) and how it refuses ([`RolloutError`]).
//! - `report`: what it reports — `/status` records, the records on disk, metric families.

mod report;
mod requests;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

pub use self::report::{EndedRollout, RolloutStatus, VersionList};
use self::report::{Started, describe, kept_list, read_ended, status_of};
pub use self::requests::{DeployMode, RolloutError};
use crate::call_stats::CallStats;
use crate::config::{RolloutSettings, is_valid_name};
use crate::metrics::Metrics;
use crate::plugin::content_hash;
use crate::registry::{Loaded, PluginRegistry};
use crate::rollout::{KeptVersion, Outcome, Rollout, RolloutKind, ShadowStats, verdict, write_atomically};
use crate::wall_clock::unix_ms;

/// How often the judge looks at a rollout's figures.
const JUDGE_PERIOD: Duration = Duration::from_millis(250);

/// Ended rollouts kept per plugin.
const ENDED_KEPT: usize = 5;

/// Hex digits a version given by hand must have at least.
const MIN_VERSION_PREFIX: usize = 4;

/// Starts, judges and ends rollouts.
#[derive(Debug)]
pub struct Rollouts {
    /// Where builds and rollouts are published.
    registry: Arc<PluginRegistry>,
    /// Where a promoted or rolled-back build is written.
    plugins_dir: PathBuf,
    /// Thresholds and the history's size.
    settings: RolloutSettings,
    /// `DATA_DIR/rollouts`: `ended.json`, and `running/NAME.json` for each rollout in progress.
    state_dir: PathBuf,
    /// The last rollouts of each plugin, newest last.
    ended: Mutex<BTreeMap<String, VecDeque<EndedRollout>>>,
    /// Held by every change: one at a time.
    changes: Mutex<()>,
    /// Where ended rollouts are counted.
    metrics: Arc<Metrics>,
    /// Ends the judges when the engine stops.
    stop: CancellationToken,
    /// Where the judges run.
    runtime: tokio::runtime::Handle,
}

impl Rollouts {
    /// The controller of `registry`'s rollouts, keeping its state under `data_dir`. Ends (and
    /// records) any rollout a previous engine left in progress. Call within a Tokio runtime.
    pub fn start(
        registry: Arc<PluginRegistry>,
        plugins_dir: PathBuf,
        data_dir: &Path,
        settings: RolloutSettings,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let state_dir = data_dir.join("rollouts");
        let ended = read_ended(&state_dir.join("ended.json"));
        let rollouts = Arc::new(Rollouts {
            registry,
            plugins_dir,
            settings,
            state_dir,
            ended: Mutex::new(ended),
            changes: Mutex::new(()),
            metrics,
            stop,
            runtime: tokio::runtime::Handle::current(),
        });
        rollouts.end_interrupted();
        rollouts
    }

    /// Ships `wasm` as plugin `plugin`: at once, or as a canary or shadow run. Compiles: call
    /// from a blocking thread. Returns what happened, in a line.
    pub fn deploy(self: &Arc<Self>, plugin: &str, wasm: &[u8], mode: DeployMode) -> Result<String, RolloutError> {
        if !is_valid_name(plugin) {
            return Err(RolloutError::BadName(plugin.to_owned()));
        }
        let rollout = mode.rollout();
        if let Some((kind, window)) = rollout {
            kind.check(window).map_err(RolloutError::BadRequest)?;
        }
        let _changes = self.lock();
        self.refuse_if_busy(plugin)?;
        let Some((kind, window)) = rollout else {
            return match self.registry.load_build(plugin, wasm, "deploy") {
                Ok(Loaded::Unchanged(version)) => Ok(format!("{plugin} already serves build {}", version.short_hash())),
                Ok(Loaded::Published(version)) => {
                    self.write_plugin_file(plugin, wasm);
                    tracing::info!(%plugin, version = version.short_hash(), "plugin deployed");
                    Ok(format!("{plugin} serves build {} on every connection", version.short_hash()))
                }
                Err(err) => Err(RolloutError::Refused(err.to_string())),
            };
        };
        let rollout = self.begin(plugin, wasm, kind, window, SystemTime::now(), false)?;
        let status = status_of(&rollout);
        let record = serde_json::to_vec(&Started { status })?;
        let written = std::fs::create_dir_all(self.state_dir.join("running"))
            .and_then(|()| write_atomically(&self.state_file(plugin), &record));
        if let Err(err) = written {
            tracing::warn!(%plugin, cause = %err, "cannot record the rollout on disk; a restart will not know of it");
        }
        let this = self.clone();
        let what = describe(&rollout);
        self.runtime.spawn(async move { this.judge(rollout).await });
        Ok(format!("{what} of {plugin} started for {} s", window.as_secs()))
    }

    /// Follows the cluster's rollout of `plugin` (its pointer names candidate `wasm`, of `kind`,
    /// started at `started_at` for `window`): this node runs and counts it, the cluster's judge
    /// ends it (see [`Self::end_cluster_rollout`]). A rollout of another candidate here is
    /// aborted first. Compiles: call from a blocking thread.
    pub fn follow_cluster_rollout(
        self: &Arc<Self>,
        plugin: &str,
        wasm: &[u8],
        kind: RolloutKind,
        window: Duration,
        started_at: SystemTime,
    ) -> Result<(), RolloutError> {
        // Written by other programs too: a share or window out of range is refused here.
        kind.check(window).map_err(RolloutError::BadRequest)?;
        let hash = content_hash(wasm);
        if let Some(local) = self.registry.rollout(plugin) {
            if local.candidate.hash == hash {
                return Ok(());
            }
            self.end(&local, Outcome::Aborted, "aborted: the cluster started another rollout".to_owned())?;
        }
        let _changes = self.lock();
        self.begin(plugin, wasm, kind, window, started_at, true).map(drop)
    }

    /// Ends the cluster's rollout of `plugin` here, as the cluster's judge ended it: `ended`
    /// (its outcome and reason, as the pointer says) if the pointer says, else promoted if the
    /// cluster now serves the candidate (`serving`), aborted otherwise.
    pub fn end_cluster_rollout(&self, plugin: &str, serving: &str, ended: Option<(Outcome, String)>) {
        let Some(local) = self.registry.rollout(plugin).filter(|local| local.cluster) else { return };
        let (outcome, reason) = ended.unwrap_or_else(|| match serving == local.candidate.hash {
            true => (Outcome::Promoted, "promoted by the cluster".to_owned()),
            false => (Outcome::Aborted, "ended by the cluster".to_owned()),
        });
        if let Err(err) = self.end(&local, outcome, reason) {
            tracing::debug!(%plugin, cause = %err, "the cluster's rollout had ended here already");
        }
    }

    /// Starts a rollout of `wasm` as `plugin`'s candidate (the caller holds the lock); judged
    /// here, or by the cluster (`cluster`).
    fn begin(
        &self,
        plugin: &str,
        wasm: &[u8],
        kind: RolloutKind,
        window: Duration,
        started_at: SystemTime,
        cluster: bool,
    ) -> Result<Arc<Rollout>, RolloutError> {
        let serving = self.registry.get(plugin).ok_or_else(|| RolloutError::NotServed(plugin.to_owned()))?;
        let hash = content_hash(wasm);
        if serving.hash == hash {
            return Err(RolloutError::SameBuild { plugin: plugin.to_owned(), hash });
        }
        let source = if matches!(kind, RolloutKind::Canary { .. }) { "canary" } else { "shadow" };
        let candidate = self.registry.build(plugin, wasm, source).map_err(|err| {
            self.registry.fail(plugin, Some(&hash), err.to_string());
            RolloutError::Refused(err.to_string())
        })?;
        let age = SystemTime::now().duration_since(started_at).unwrap_or_default();
        let rollout = Arc::new(Rollout {
            plugin: serving.name.clone(),
            kind,
            candidate,
            serving,
            wasm: Arc::from(wasm),
            started_at,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            window,
            cluster,
            serving_stats: CallStats::default(),
            candidate_stats: CallStats::default(),
            shadow: ShadowStats::default(),
        });
        self.registry.set_rollout(&rollout.plugin, Some(rollout.clone()));
        let what = describe(&rollout);
        let candidate = rollout.candidate.short_hash();
        tracing::info!(%plugin, candidate, window_secs = window.as_secs(), cluster, "{what} started");
        Ok(rollout)
    }

    /// Promotes the canary of `plugin` now (a manual one, or before its window is over).
    pub fn promote(&self, plugin: &str) -> Result<EndedRollout, RolloutError> {
        let rollout = self.local(plugin)?;
        if rollout.is_shadow() {
            return Err(RolloutError::ShadowNotPromotable(plugin.to_owned()));
        }
        self.end(&rollout, Outcome::Promoted, "promoted by `wasmpush promote`".to_owned())
    }

    /// Ends the rollout of `plugin` now: every connection on the serving build.
    pub fn abort(&self, plugin: &str) -> Result<EndedRollout, RolloutError> {
        let rollout = self.local(plugin)?;
        self.end(&rollout, Outcome::Aborted, "aborted by `wasmpush abort`".to_owned())
    }

    /// Switches `plugin` to kept build `version` (a hash or a prefix of one; `None`: the newest
    /// kept build that is not serving). No compile if the build served lately. Call from a
    /// blocking thread.
    pub fn rollback(&self, plugin: &str, version: Option<&str>) -> Result<KeptVersion, RolloutError> {
        if !is_valid_name(plugin) {
            return Err(RolloutError::BadName(plugin.to_owned()));
        }
        let _changes = self.lock();
        self.refuse_if_busy(plugin)?;
        let list = self.versions(plugin)?;
        let unknown = |asked: &str| RolloutError::UnknownVersion {
            plugin: plugin.to_owned(),
            asked: asked.to_owned(),
            kept: kept_list(&list),
        };
        let target = match version {
            None => list.versions.iter().find(|kept| Some(&kept.hash) != list.serving.as_ref()),
            Some(asked) => {
                let asked = asked.to_ascii_lowercase();
                let mut matches = list.versions.iter().filter(|kept| kept.hash.starts_with(&asked));
                match (matches.next(), matches.next()) {
                    (Some(kept), None) if asked.len() >= MIN_VERSION_PREFIX => Some(kept),
                    _ => None,
                }
            }
        };
        let target = target.ok_or_else(|| unknown(version.unwrap_or("older than the serving one")))?.clone();
        if list.serving.as_ref() == Some(&target.hash) {
            return Err(RolloutError::SameBuild { plugin: plugin.to_owned(), hash: target.hash });
        }
        let history = self.registry.history().ok_or_else(|| RolloutError::History("none is kept".to_owned()))?;
        let wasm = history.read(plugin, &target.hash).map_err(|err| RolloutError::History(err.to_string()))?;
        if content_hash(&wasm) != target.hash {
            return Err(RolloutError::History(format!("kept build {:.12} of {plugin} is damaged", target.hash)));
        }
        let version =
            self.registry.build(plugin, &wasm, "rollback").map_err(|err| RolloutError::Refused(err.to_string()))?;
        self.registry.publish(version.clone());
        self.write_plugin_file(plugin, &wasm);
        tracing::warn!(%plugin, version = version.short_hash(), "rolled back to a kept build");
        Ok(target)
    }

    /// The kept builds of `plugin`, newest first, and the one serving.
    pub fn versions(&self, plugin: &str) -> Result<VersionList, RolloutError> {
        let history = self.registry.history().ok_or_else(|| RolloutError::History("none is kept".to_owned()))?;
        let versions = history.list(plugin).map_err(|err| RolloutError::History(err.to_string()))?;
        let serving = self.registry.get(plugin).map(|version| version.hash.clone());
        Ok(VersionList { plugin: plugin.to_owned(), serving, versions })
    }

    /// The candidate of `plugin`'s rollout in progress, if any.
    pub fn candidate(&self, plugin: &str) -> Option<String> {
        self.registry.rollout(plugin).map(|rollout| rollout.candidate.hash.clone())
    }

    /// The rollout of `plugin` in progress, with its figures so far.
    pub fn status(&self, plugin: &str) -> Option<RolloutStatus> {
        self.registry.rollout(plugin).map(|rollout| status_of(&rollout))
    }

    /// The last rollouts of `plugin` that ended, newest first.
    pub fn ended(&self, plugin: &str) -> Vec<EndedRollout> {
        let ended = self.ended.lock().unwrap_or_else(|poison| poison.into_inner());
        ended.get(plugin).map(|list| list.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Metric families of the rollouts in progress (see [`report::metrics_text`]).
    pub fn metrics_text(&self) -> String {
        report::metrics_text(&self.registry.rollouts())
    }

    /// Judges `rollout` every [`JUDGE_PERIOD`] until it ends: a canary worse than the serving
    /// build is rolled back, a healthy one promoted at the end of its window (unless manual); a
    /// shadow run finishes at the end of its window. A rollout whose serving build was replaced
    /// (a file dropped meanwhile) is aborted.
    async fn judge(self: Arc<Self>, rollout: Arc<Rollout>) {
        let mut every = tokio::time::interval(JUDGE_PERIOD);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let Some(verdict) = self.verdict(&rollout) else { continue };
            let this = self.clone();
            let rollout = rollout.clone();
            // Ending writes files: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || this.end(&rollout, verdict.0, verdict.1)).await;
            return;
        }
    }

    /// How `rollout` must end now, and why, if it must.
    fn verdict(&self, rollout: &Rollout) -> Option<(Outcome, String)> {
        let serving = self.registry.get(&rollout.plugin);
        if !serving.is_some_and(|serving| Arc::ptr_eq(&serving, &rollout.serving)) {
            return Some((Outcome::Aborted, "aborted: the serving build was replaced meanwhile".to_owned()));
        }
        let over = rollout.started.elapsed() >= rollout.window;
        let (serving, candidate) = (rollout.serving_stats.report(), rollout.candidate_stats.report());
        verdict(rollout.kind, over, &serving, &candidate, &rollout.shadow.report(), &self.settings)
    }

    /// Ends `rollout` (if it is still the plugin's) with `outcome`: a promoted candidate serves
    /// every connection and is written to the plugins directory; otherwise every connection is
    /// on the serving build at its next tick. Logs, counts and records it.
    fn end(&self, rollout: &Arc<Rollout>, outcome: Outcome, reason: String) -> Result<EndedRollout, RolloutError> {
        let _changes = self.lock();
        let plugin = &rollout.plugin;
        if !self.registry.rollout(plugin).is_some_and(|current| Arc::ptr_eq(&current, rollout)) {
            return Err(RolloutError::NoRollout(plugin.to_string()));
        }
        // Serving first, then the rollout gone: a canary connection never steps back to the
        // old build on its way to the new one.
        if outcome == Outcome::Promoted {
            self.registry.publish(rollout.candidate.clone());
            self.write_plugin_file(plugin, &rollout.wasm);
        }
        self.registry.set_rollout(plugin, None);
        let ended =
            EndedRollout { status: status_of(rollout), outcome, reason, ended_at_ms: unix_ms(SystemTime::now()) };
        self.metrics.rollouts.get_or_create(&vec![("outcome", outcome.label())]).inc();
        let candidate = rollout.candidate.short_hash();
        match outcome {
            Outcome::RolledBack | Outcome::Aborted => {
                tracing::warn!(%plugin, candidate, reason = %ended.reason, "rollout ended")
            }
            _ => tracing::info!(%plugin, candidate, reason = %ended.reason, "rollout ended"),
        }
        self.record(ended.clone());
        if let Err(err) = std::fs::remove_file(self.state_file(plugin)) {
            tracing::debug!(%plugin, cause = %err, "no rollout record to remove");
        }
        Ok(ended)
    }

    /// Records each rollout a previous engine left in progress as ended by the restart.
    fn end_interrupted(&self) {
        let Ok(entries) = std::fs::read_dir(self.state_dir.join("running")) else { return };
        for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
            let plugin = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or_default().to_owned();
            if path.extension().is_none_or(|ext| ext != "json") || !is_valid_name(&plugin) {
                continue;
            }
            let started = std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<Started>(&bytes).ok());
            let _ = std::fs::remove_file(&path);
            let Some(Started { status }) = started else {
                tracing::warn!(path = %path.display(), "removing an unreadable rollout record");
                continue;
            };
            let reason = "ended: the engine restarted mid-rollout; the serving build serves every connection";
            tracing::warn!(%plugin, candidate = %format_args!("{:.12}", status.candidate), "{reason}");
            self.metrics.rollouts.get_or_create(&vec![("outcome", Outcome::Ended.label())]).inc();
            self.record(EndedRollout {
                status,
                outcome: Outcome::Ended,
                reason: reason.to_owned(),
                ended_at_ms: unix_ms(SystemTime::now()),
            });
        }
    }

    /// Keeps `ended` among its plugin's last rollouts, on disk too.
    fn record(&self, ended: EndedRollout) {
        let mut all = self.ended.lock().unwrap_or_else(|poison| poison.into_inner());
        let plugin = ended.status.plugin.clone();
        let list = all.entry(plugin).or_default();
        list.push_back(ended);
        while list.len() > ENDED_KEPT {
            list.pop_front();
        }
        let written = serde_json::to_vec(&*all).map_err(std::io::Error::other).and_then(|json| {
            std::fs::create_dir_all(&self.state_dir)
                .and_then(|()| write_atomically(&self.state_dir.join("ended.json"), &json))
        });
        if let Err(err) = written {
            tracing::warn!(cause = %err, "cannot record the ended rollout on disk");
        }
    }

    /// The rollout of `plugin` in progress, if this engine judges it (not the cluster).
    fn local(&self, plugin: &str) -> Result<Arc<Rollout>, RolloutError> {
        match self.registry.rollout(plugin) {
            None => Err(RolloutError::NoRollout(plugin.to_owned())),
            Some(rollout) if rollout.cluster => Err(RolloutError::ClusterRollout(plugin.to_owned())),
            Some(rollout) => Ok(rollout),
        }
    }

    /// Refuses a change to `plugin` while a rollout of it is in progress.
    fn refuse_if_busy(&self, plugin: &str) -> Result<(), RolloutError> {
        match self.registry.rollout(plugin) {
            None => Ok(()),
            Some(rollout) => Err(RolloutError::Busy {
                plugin: plugin.to_owned(),
                kind: if rollout.is_shadow() { "shadow run" } else { "canary" },
                candidate: rollout.candidate.hash.clone(),
                age_secs: rollout.started.elapsed().as_secs(),
            }),
        }
    }

    /// Writes a build that now serves to the plugins directory, so a restart serves it too.
    fn write_plugin_file(&self, plugin: &str, wasm: &[u8]) {
        let path = self.plugins_dir.join(format!("{plugin}.wasm"));
        if let Err(err) = write_atomically(&path, wasm) {
            tracing::error!(%plugin, path = %path.display(), cause = %err, "cannot write the build that now serves; a restart would serve the file's");
        }
    }

    fn state_file(&self, plugin: &str) -> PathBuf {
        self.state_dir.join("running").join(format!("{plugin}.json"))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}
