//! What the console shows each second ([`Update`]), and the [`Sampler`] that makes it from the
//! engine's counters: rates are the difference between two readings a second apart, call-time
//! quantiles come from the difference of two histogram snapshots (so they are the last second's,
//! not the average since start).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::call_stats::{CallReport, CallSnapshot};
use crate::cluster::ClusterNode;
use crate::data::DataView;
use crate::events::Event;
use crate::metrics::Metrics;
use crate::registry::PluginRegistry;
use crate::rollout_control::{RolloutStatus, Rollouts};
use crate::wall_clock::unix_ms;

/// The engine-wide figures of one second: what the console charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Point {
    /// When, in milliseconds since the Unix epoch.
    pub t: u64,
    /// Connections open.
    pub connections: i64,
    /// Data frames pushed in the second.
    pub pushes: u64,
    /// Plugin calls in the second, and of them business errors, traps and timeouts.
    pub calls: u64,
    /// Business errors returned.
    pub errors: u64,
    /// Calls that trapped or broke the contract.
    pub traps: u64,
    /// Calls that ran out of time or memory.
    pub timeouts: u64,
    /// Call time per call over every plugin, median and 99th percentile, in microseconds.
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// Shard phases that started a whole phase or more late, in percent of those run.
    pub missed_tick_pct: f64,
    /// The process's resident memory, in bytes.
    pub memory_bytes: u64,
}

/// One plugin's row.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRow {
    /// Its name.
    pub name: String,
    /// The serving build's SHA-256.
    pub version: String,
    /// When that build was loaded, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
    /// Its connections open.
    pub connections: i64,
    /// Its calls in the last second.
    pub calls: CallReport,
    /// Its canary or shadow run in progress, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// One data bucket's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketRow {
    /// Its name.
    pub name: String,
    /// Keys it holds.
    pub keys: usize,
    /// Bytes of its keys and values.
    pub bytes: usize,
    /// Changes applied to it in the last second.
    pub updates: u64,
}

/// The publish API's writes in the last second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PublishRates {
    /// Applied.
    pub ok: u64,
    /// Refused for what they asked (4xx).
    pub refused: u64,
    /// Failed in the engine or its cluster (5xx).
    pub failed: u64,
}

/// One node of the cluster, as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// Its name.
    pub node: String,
    /// Whether it stopped announcing itself.
    pub gone: bool,
    /// Milliseconds since it last did.
    pub age_ms: u64,
    /// Its connections, pushes per second, NATS link, lag, data revision, and why it is degraded
    /// or its name is taken, if so, as it announced them.
    pub status: serde_json::Value,
}

impl NodeRow {
    /// A node's row: its announcement's figures without its plugin list (the console shows this
    /// node's plugins).
    pub fn of(node: ClusterNode) -> NodeRow {
        let mut status = node.announcement.status;
        if let Some(fields) = status.as_object_mut() {
            fields.retain(|name, _| {
                [
                    "connections",
                    "pushes_per_sec",
                    "nats_connected",
                    "data_lag",
                    "data_revision",
                    "degraded",
                    "name_conflict",
                ]
                .contains(&name.as_str())
            });
        }
        NodeRow { node: node.node, gone: node.gone, age_ms: node.age_ms, status }
    }
}

/// What the console is sent every second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Update {
    /// The engine-wide figures.
    pub point: Point,
    /// Every plugin served.
    pub plugins: Vec<PluginRow>,
    /// Every data bucket that holds keys.
    pub buckets: Vec<BucketRow>,
    /// The publish API's writes.
    pub publish: PublishRates,
    /// Lines logged since the last update.
    pub events: Vec<Event>,
    /// On a node of a cluster, every node (refreshed every other second while a console is open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeRow>>,
    /// Why the engine is degraded, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// What the sampler reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Counters and per-plugin call stats.
    pub metrics: Arc<Metrics>,
    /// The plugins served.
    pub registry: Arc<PluginRegistry>,
    /// Rollouts in progress.
    pub rollouts: Arc<Rollouts>,
    /// The data buckets.
    pub data: DataView,
}

/// The readings of the last second, to take the next one's differences from.
#[derive(Debug, Default)]
pub struct Sampler {
    frames: u64,
    phases: (u64, u64),
    publishes: [u64; 3],
    plugins: HashMap<Arc<str>, CallSnapshot>,
    bucket_updates: HashMap<Arc<str>, u64>,
    last_event: u64,
}

impl Sampler {
    /// A sampler whose first update counts from now.
    pub fn starting(sources: &Sources) -> Sampler {
        let mut sampler = Sampler::default();
        sampler.next(sources, 0);
        sampler
    }

    /// The figures since the last reading, at `t` (milliseconds since the Unix epoch).
    pub fn next(&mut self, sources: &Sources, t: u64) -> Update {
        let metrics = &sources.metrics;
        let frames = metrics.frames_pushed.get();
        let phases = (metrics.phases_on_time.get(), metrics.phases_late.get());
        let (on_time, late) = (phases.0 - self.phases.0, phases.1 - self.phases.1);
        let publishes = [&metrics.publishes_ok, &metrics.publishes_refused, &metrics.publishes_failed].map(|c| c.get());
        let [ok, refused, failed] = std::array::from_fn(|at| publishes[at] - self.publishes[at]);

        let (plugins, all_calls) = self.plugins(sources);
        let point = Point {
            t,
            connections: metrics.connections.get(),
            pushes: frames - self.frames,
            calls: all_calls.calls,
            errors: all_calls.errors,
            traps: all_calls.traps,
            timeouts: all_calls.timeouts,
            p50_us: all_calls.p50_us,
            p99_us: all_calls.p99_us,
            missed_tick_pct: if on_time + late == 0 { 0.0 } else { late as f64 * 100.0 / (on_time + late) as f64 },
            memory_bytes: resident_bytes(),
        };
        (self.frames, self.phases, self.publishes) = (frames, phases, publishes);
        let events = crate::events::recent().since(self.last_event);
        self.last_event = events.last().map_or(self.last_event, |event| event.id);
        Update {
            point,
            plugins,
            buckets: self.buckets(&sources.data),
            publish: PublishRates { ok, refused, failed },
            events,
            nodes: None,
            degraded: None,
        }
    }

    /// Every served plugin's row, and every plugin's calls together.
    fn plugins(&mut self, sources: &Sources) -> (Vec<PluginRow>, CallReport) {
        let mut now = HashMap::new();
        let (mut all_now, mut all_before) = (CallSnapshot::default(), CallSnapshot::default());
        let mut connections = HashMap::new();
        for (name, stats) in sources.metrics.plugins.all() {
            let snapshot = stats.calls.snapshot();
            all_now.add(&snapshot);
            if let Some(before) = self.plugins.get(&name) {
                all_before.add(before);
            }
            connections.insert(name.clone(), stats.connections.load(Ordering::Relaxed));
            now.insert(name, snapshot);
        }
        let rows = sources
            .registry
            .snapshot()
            .values()
            .map(|version| {
                let calls = match (now.get(&version.name), self.plugins.get(&version.name)) {
                    (Some(now), Some(before)) => now.since(before),
                    (Some(now), None) => now.since(&CallSnapshot::default()),
                    (None, _) => CallReport::default(),
                };
                PluginRow {
                    name: version.name.to_string(),
                    version: version.hash.clone(),
                    loaded_at_ms: unix_ms(version.loaded_at),
                    connections: connections.get(&version.name).copied().unwrap_or(0),
                    calls,
                    rollout: sources.rollouts.status(&version.name),
                }
            })
            .collect();
        self.plugins = now;
        (rows, all_now.since(&all_before))
    }

    /// Every bucket's row.
    fn buckets(&mut self, data: &DataView) -> Vec<BucketRow> {
        let snapshot = data.snapshot();
        let mut rows: Vec<BucketRow> = Vec::new();
        let mut updates = HashMap::new();
        for (name, tally) in snapshot.tallies() {
            // A bucket emptied and refilled counts anew.
            let before = self.bucket_updates.get(name).copied().filter(|before| *before <= tally.updates);
            rows.push(BucketRow {
                name: name.to_string(),
                keys: tally.keys,
                bytes: tally.bytes,
                updates: tally.updates - before.unwrap_or(tally.updates),
            });
            updates.insert(name.clone(), tally.updates);
        }
        self.bucket_updates = updates;
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }
}

/// The process's resident memory in bytes (`VmRSS`); 0 where `/proc` does not say.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc() {
        let bytes = resident_bytes();
        assert!(bytes > 1 << 20, "a test process holds more than a MiB: {bytes}");
    }
}
