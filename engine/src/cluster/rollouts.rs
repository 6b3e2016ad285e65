//! Rollouts across a cluster. `wasmpush deploy NAME FILE --canary PCT --nats URL` (or
//! `--shadow`) stores the candidate build and puts the rollout into plugin NAME's pointer by
//! compare-and-swap, beside the serving build. Every node follows the pointer: it fetches the
//! candidate and runs the rollout on its own connections as a single engine would, counting each
//! build's calls, and announces its figures with its status. The live node with the smallest
//! name judges: it sums every node's figures, and when the candidate is worse, or the window is
//! over, it moves the pointer again (promoted: the candidate becomes the serving build; rolled
//! back or finished: the rollout is gone) and records how it ended. Every node then ends its part
//! as the pointer says. A node that joins mid-rollout finds the rollout in the pointer and
//! follows it for the rest of its window.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::nodes::ClusterNode;
use super::plugins::{ClusterRollout, DeployError, Deployed, EndedClusterRollout, Pointer, busy};
use super::{Cluster, ClusterError, jetstream_error};
use crate::call_stats::CallReport;
use crate::rollout::{Outcome, RolloutKind, ShadowReport, verdict};
use crate::rollout_control::{RolloutStatus, Rollouts};
use async_nats::jetstream::kv;

impl Cluster {
    /// Starts a canary or shadow run of `wasm` as plugin `name` across the cluster, for `window`.
    /// Refused while the plugin has no serving build, serves this one, or has a rollout already.
    pub async fn deploy_rollout(
        &self,
        name: &str,
        wasm: &[u8],
        kind: RolloutKind,
        window: Duration,
    ) -> Result<Deployed, DeployError> {
        // The start as the nodes show it, on the NATS server's clock (the deploying machine's may
        // be off); the judge times the window from the pointer's own stamp.
        let now = self.server_now(&self.pointers().await?.stream_name).await?;
        let started_at_ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        self.move_pointer(name, wasm, |current, build| {
            let Some(current) = current else {
                return Err(DeployError::Invalid(format!(
                    "plugin `{name}` is not deployed to the cluster: deploy it plainly first"
                )));
            };
            if let Some(rollout) = &current.rollout {
                return Err(DeployError::Invalid(busy(name, rollout)));
            }
            if current.build == build {
                return Err(DeployError::Invalid(format!("plugin `{name}` already serves build {build:.12}")));
            }
            let rollout = ClusterRollout {
                kind,
                candidate: build.to_owned(),
                bytes: wasm.len() as u64,
                started_at_ms,
                window_secs: window.as_secs(),
            };
            Ok(Pointer { rollout: Some(rollout), ended: None, ..current.clone() })
        })
        .await
    }

    /// Follows the cluster's `rollout` of plugin `name` on this node (its candidate fetched and
    /// loaded beside the serving build); `None` if the candidate could not be fetched.
    pub(super) async fn join_rollout(
        &self,
        name: &str,
        rollout: &ClusterRollout,
        rollouts: &Arc<Rollouts>,
    ) -> Option<()> {
        if rollouts.candidate(name).as_ref() == Some(&rollout.candidate) {
            return Some(());
        }
        let wasm = match self.fetch(&rollout.candidate).await {
            Ok(wasm) => wasm,
            Err(reason) => {
                tracing::error!(plugin = name, %reason, "cannot fetch the candidate of the cluster's rollout");
                return None;
            }
        };
        let (rollouts, plugin, kind) = (rollouts.clone(), name.to_owned(), rollout.kind);
        let started_at = UNIX_EPOCH + Duration::from_millis(rollout.started_at_ms);
        let window = Duration::from_secs(rollout.window_secs);
        let joined = tokio::task::spawn_blocking(move || {
            rollouts.follow_cluster_rollout(&plugin, &wasm, kind, window, started_at.min(SystemTime::now()))
        })
        .await;
        if let Ok(Err(err)) = joined {
            tracing::error!(plugin = name, cause = %err, "cannot follow the cluster's rollout here");
        }
        Some(())
    }

    /// Ends this node's part of a cluster rollout of plugin `name` that `pointer` no longer
    /// holds, as the pointer says it ended.
    pub(super) async fn leave_rollout(&self, name: &str, pointer: &Pointer, rollouts: &Arc<Rollouts>) {
        let Some(candidate) = rollouts.candidate(name) else { return };
        let ended = pointer
            .ended
            .as_ref()
            .filter(|ended| ended.candidate == candidate)
            .map(|ended| (ended.outcome, format!("{} (cluster)", ended.reason)));
        let (rollouts, plugin, serving) = (rollouts.clone(), name.to_owned(), pointer.build.clone());
        let _ = tokio::task::spawn_blocking(move || rollouts.end_cluster_rollout(&plugin, &serving, ended)).await;
    }

    /// Judges every rollout in the `entries` of `pointers` on the sum of the `nodes`' figures
    /// (the live node with the smallest name calls it): ends each one whose verdict is in by
    /// moving its pointer. `now` is the NATS server's clock.
    pub(super) async fn judge_rollouts(
        &self,
        pointers: &kv::Store,
        entries: &[kv::Entry],
        nodes: &[ClusterNode],
        now: time::OffsetDateTime,
    ) -> Result<(), ClusterError> {
        for entry in entries {
            let name = &entry.key;
            let Ok(pointer) = serde_json::from_slice::<Pointer>(&entry.value) else { continue };
            let Some(rollout) = &pointer.rollout else { continue };
            let (serving, candidate, shadow) = summed(nodes, name, &rollout.candidate);
            // On the server's clock, from when the pointer took the rollout (the pointer is not
            // moved while a rollout runs): not from `started_at_ms`, the deploying machine's.
            let over = now - entry.created >= Duration::from_secs(rollout.window_secs);
            let Some((outcome, reason)) = verdict(rollout.kind, over, &serving, &candidate, &shadow, &self.rollouts)
            else {
                continue;
            };
            let ended = EndedClusterRollout { candidate: rollout.candidate.clone(), outcome, reason };
            let next = match outcome {
                Outcome::Promoted => Pointer {
                    build: rollout.candidate.clone(),
                    bytes: rollout.bytes,
                    previous: Some(pointer.build.clone()),
                    rollout: None,
                    ended: Some(ended),
                },
                _ => Pointer { rollout: None, ended: Some(ended), ..pointer.clone() },
            };
            let value = serde_json::to_vec(&next).expect("a pointer serializes").into();
            match pointers.update(name.as_str(), value, entry.revision).await {
                Ok(_) => tracing::info!(plugin = name, ?outcome, "the cluster's rollout ended"),
                // Another deploy or judge moved it meanwhile: judged again next time.
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(err) => return Err(jetstream_error(err)),
            }
        }
        Ok(())
    }
}

/// Every live node's figures of plugin `plugin`'s rollout of `candidate`, summed: counts add
/// up; call time quantiles are the worst node's; shadow samples the first few.
fn summed(nodes: &[ClusterNode], plugin: &str, candidate: &str) -> (CallReport, CallReport, ShadowReport) {
    let (mut serving, mut tried, mut shadow) = (CallReport::default(), CallReport::default(), ShadowReport::default());
    for status in reports(nodes, plugin).filter(|status| status.candidate == candidate) {
        add(&mut serving, &status.serving_calls);
        add(&mut tried, &status.candidate_calls);
        if let Some(report) = &status.shadow {
            shadow.compared += report.compared;
            shadow.identical += report.identical;
            shadow.different += report.different;
            shadow.shed += report.shed;
            shadow.time_us += report.time_us;
            let room = crate::rollout::MAX_SAMPLES.saturating_sub(shadow.samples.len());
            shadow.samples.extend(report.samples.iter().take(room).cloned());
        }
    }
    (serving, tried, shadow)
}

/// The rollout statuses live `nodes` announce for `plugin`.
fn reports<'a>(nodes: &'a [ClusterNode], plugin: &'a str) -> impl Iterator<Item = RolloutStatus> + 'a {
    nodes.iter().filter(|node| !node.gone).filter_map(move |node| {
        let plugins = node.announcement.status.get("plugins")?.as_array()?;
        let served = plugins.iter().find(|served| served["name"] == plugin)?;
        serde_json::from_value(served.get("rollout")?.clone()).ok()
    })
}

/// Adds `more` to `sum`: counts add, quantiles take the larger.
fn add(sum: &mut CallReport, more: &CallReport) {
    sum.calls += more.calls;
    sum.frames += more.frames;
    sum.errors += more.errors;
    sum.traps += more.traps;
    sum.timeouts += more.timeouts;
    sum.p50_us = sum.p50_us.max(more.p50_us);
    sum.p99_us = sum.p99_us.max(more.p99_us);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Announcement;

    /// A live node announcing a rollout of `quote` with `candidate`: `calls` and `traps` of the
    /// candidate, p99 `p99_us`.
    fn node(name: &str, candidate: &str, calls: u64, traps: u64, p99_us: f64) -> ClusterNode {
        let rollout = serde_json::json!({
            "plugin": "quote", "kind": "canary", "percent": 50.0, "manual": false,
            "candidate": candidate, "serving": "s", "started_at_ms": 1, "ends_at_ms": 2,
            "serving_calls": { "calls": calls, "frames": calls, "errors": 0, "traps": 0, "timeouts": 0, "p50_us": 1.0, "p99_us": 2.0 },
            "candidate_calls": { "calls": calls, "frames": calls - traps, "errors": 0, "traps": traps, "timeouts": 0, "p50_us": 1.0, "p99_us": p99_us },
        });
        let status = serde_json::json!({ "plugins": [{ "name": "quote", "rollout": rollout }] });
        let announcement = Announcement { instance: 0, announcing_for_ms: 0, builds: Default::default(), status };
        ClusterNode { node: name.to_owned(), age_ms: 0, gone: false, announcement }
    }

    #[test]
    fn every_live_nodes_figures_of_the_same_candidate_add_up() {
        let mut gone = node("c", "abc", 1000, 1000, 9.0);
        gone.gone = true;
        let nodes =
            [node("a", "abc", 60, 3, 40.0), node("b", "abc", 40, 2, 80.0), gone, node("d", "other", 500, 0, 1.0)];
        let (serving, candidate, _) = summed(&nodes, "quote", "abc");
        assert_eq!((serving.calls, candidate.calls, candidate.traps), (100, 100, 5), "a and b only");
        assert_eq!(candidate.p99_us, 80.0, "the worst node's quantile");
        let settings = crate::config::RolloutSettings::default();
        let (outcome, reason) = verdict(
            RolloutKind::Canary { percent: 50.0, manual: false },
            false,
            &serving,
            &candidate,
            &ShadowReport::default(),
            &settings,
        )
        .unwrap();
        assert_eq!(
            (outcome, reason.as_str()),
            (Outcome::RolledBack, "rolled back: traps 5.0 % vs 0.0 % over 100 calls")
        );
        let (_, alone, _) = summed(&nodes[..1], "quote", "abc");
        assert!(
            verdict(
                RolloutKind::Canary { percent: 50.0, manual: false },
                false,
                &serving,
                &alone,
                &ShadowReport::default(),
                &settings
            )
            .is_none(),
            "60 calls on one node are too few to judge"
        );
    }
}
