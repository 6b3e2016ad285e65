//! [`CallStats`]: what a build's calls did — how many, their frames, errors and faults, and a
//! histogram of their time — counted by shards with relaxed atomics, a batch at a time. Every
//! plugin has one ([`PluginStats`], for the console), and a rollout one per build it compares.
//! A [`CallSnapshot`] taken now and one taken a second ago give that second's figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plugin::PluginFault;

/// Sub-buckets per power of two of the call-time histogram: a quantile is right within 19 %.
const SUB_BUCKETS: u32 = 4;

/// Buckets of the call-time histogram: every `u64` of nanoseconds has one.
const BUCKETS: usize = 64 * SUB_BUCKETS as usize;

/// The calls of one build in a rollout.
#[derive(Debug)]
pub struct CallStats {
    /// Calls made (each connection in a batch is one).
    calls: AtomicU64,
    /// Frames the calls produced (pushed or left unsent as unchanged).
    frames: AtomicU64,
    /// Business errors returned.
    errors: AtomicU64,
    /// Calls that trapped or broke the contract.
    traps: AtomicU64,
    /// Calls that ran out of time or memory.
    timeouts: AtomicU64,
    /// Call time per call (a batch's time shared by its calls), as a log-linear histogram.
    call_time: Box<[AtomicU64]>,
}

impl Default for CallStats {
    fn default() -> Self {
        CallStats {
            calls: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            call_time: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// What a batch's calls did, added to a cohort at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchCounts {
    /// Frames produced.
    pub frames: u64,
    /// Business errors.
    pub errors: u64,
}

impl CallStats {
    /// Counts a batch of `calls` that took `elapsed` in all.
    pub fn record_batch(&self, calls: usize, elapsed: Duration) {
        if calls == 0 {
            return;
        }
        self.calls.fetch_add(calls as u64, Ordering::Relaxed);
        let per_call = elapsed.as_nanos() as u64 / calls as u64;
        self.call_time[bucket_of(per_call)].fetch_add(calls as u64, Ordering::Relaxed);
    }

    /// Adds what a batch's outcomes were.
    pub fn record_counts(&self, counts: BatchCounts) {
        self.frames.fetch_add(counts.frames, Ordering::Relaxed);
        self.errors.fetch_add(counts.errors, Ordering::Relaxed);
    }

    /// Counts one call that failed with `fault`.
    pub fn record_fault(&self, fault: &PluginFault) {
        match fault {
            PluginFault::Timeout | PluginFault::MemoryLimit | PluginFault::HostMemory(_) => &self.timeouts,
            PluginFault::Trap(_) | PluginFault::Contract(_) => &self.traps,
            // The engine's own failure is not held against a build.
            PluginFault::Host(_) => return,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The figures so far.
    pub fn report(&self) -> CallReport {
        self.snapshot().since(&CallSnapshot::default())
    }

    /// The counts as they are now, to compare with a later snapshot.
    pub fn snapshot(&self) -> CallSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CallSnapshot {
            counts: [&self.calls, &self.frames, &self.errors, &self.traps, &self.timeouts].map(load),
            call_time: self.call_time.iter().map(load).collect(),
        }
    }
}

/// A [`CallStats`]' counts at one moment: calls, frames, errors, traps, timeouts, and the
/// call-time histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSnapshot {
    /// Calls, frames, errors, traps and timeouts, in that order.
    counts: [u64; 5],
    /// Calls per call-time bucket; empty when nothing was counted.
    call_time: Vec<u64>,
}

impl CallSnapshot {
    /// What was counted between `earlier` and this snapshot (all of it, from an empty one).
    pub fn since(&self, earlier: &CallSnapshot) -> CallReport {
        let [calls, frames, errors, traps, timeouts] =
            std::array::from_fn(|at| self.counts[at].saturating_sub(earlier.counts[at]));
        let counts: Vec<u64> = self
            .call_time
            .iter()
            .enumerate()
            .map(|(at, count)| count.saturating_sub(earlier.call_time.get(at).copied().unwrap_or(0)))
            .collect();
        CallReport {
            calls,
            frames,
            errors,
            traps,
            timeouts,
            p50_us: quantile_us(&counts, 0.50),
            p99_us: quantile_us(&counts, 0.99),
        }
    }

    /// Adds `other`'s counts to these: the snapshot of both builds or plugins together.
    pub fn add(&mut self, other: &CallSnapshot) {
        for (sum, count) in self.counts.iter_mut().zip(other.counts) {
            *sum += count;
        }
        if self.call_time.len() < other.call_time.len() {
            self.call_time.resize(other.call_time.len(), 0);
        }
        for (sum, count) in self.call_time.iter_mut().zip(&other.call_time) {
            *sum += count;
        }
    }
}

/// One plugin's calls and connections, on every shard, whichever build served them.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Its calls (a shadow run's candidate calls are not among them: they serve no one).
    pub calls: CallStats,
    /// Its connections open now.
    pub connections: AtomicI64,
}

/// Every plugin's [`PluginStats`], by name: a plugin's entry is made when its first connection
/// opens and kept while the engine runs (names come from deployed files, never from clients).
#[derive(Debug, Default)]
pub struct PluginStatsTable(Mutex<HashMap<Arc<str>, Arc<PluginStats>>>);

impl PluginStatsTable {
    /// The stats of plugin `name`, made empty if it has none yet.
    pub fn of(&self, name: &Arc<str>) -> Arc<PluginStats> {
        let mut table = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        table.entry(name.clone()).or_default().clone()
    }

    /// Every plugin's stats now.
    pub fn all(&self) -> Vec<(Arc<str>, Arc<PluginStats>)> {
        let table = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        table.iter().map(|(name, stats)| (name.clone(), stats.clone())).collect()
    }
}

/// What a build's or a plugin's calls did, in all or over a while, as `/status` and the console show
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CallReport {
    /// Calls made.
    pub calls: u64,
    /// Frames produced.
    pub frames: u64,
    /// Business errors returned.
    pub errors: u64,
    /// Calls that trapped or broke the contract.
    pub traps: u64,
    /// Calls that ran out of time or memory.
    pub timeouts: u64,
    /// Call time per call, median, in microseconds.
    pub p50_us: f64,
    /// Call time per call, 99th percentile, in microseconds.
    pub p99_us: f64,
}

impl CallReport {
    /// `count` as a share of the calls, in percent (0 without calls).
    pub fn pct(&self, count: u64) -> f64 {
        if self.calls == 0 { 0.0 } else { count as f64 * 100.0 / self.calls as f64 }
    }

    /// Calls that faulted: trapped, timed out or ran out of memory.
    pub fn faults(&self) -> u64 {
        self.traps + self.timeouts
    }

    /// Frames per call.
    pub fn frames_per_call(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.frames as f64 / self.calls as f64 }
    }
}

/// The histogram bucket of `nanos`: 4 per power of two.
fn bucket_of(nanos: u64) -> usize {
    if nanos < u64::from(SUB_BUCKETS) {
        return nanos as usize;
    }
    let power = 63 - nanos.leading_zeros();
    // The two bits after the leading one.
    let sub = (nanos >> (power - SUB_BUCKETS.ilog2())) & u64::from(SUB_BUCKETS - 1);
    (power * SUB_BUCKETS) as usize + sub as usize
}

/// The upper bound of bucket `index`, in nanoseconds.
fn bucket_top(index: usize) -> f64 {
    let (power, sub) = (index as u32 / SUB_BUCKETS, index as u32 % SUB_BUCKETS);
    if power == 0 {
        return f64::from(sub + 1);
    }
    let base = 2f64.powi(power as i32);
    base + base * f64::from(sub + 1) / f64::from(SUB_BUCKETS)
}

/// Quantile `q` of a histogram's `counts`, in microseconds (the bucket's upper bound).
fn quantile_us(counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_top(index) / 1000.0;
        }
    }
    bucket_top(counts.len() - 1) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_within_a_bucket_of_the_truth() {
        let stats = CallStats::default();
        for micros in 1..=1000u64 {
            stats.record_batch(1, Duration::from_micros(micros));
        }
        let report = stats.report();
        assert_eq!(report.calls, 1000);
        assert!((500.0..=600.0).contains(&report.p50_us), "{report:?}");
        assert!((990.0..=1200.0).contains(&report.p99_us), "{report:?}");
        for nanos in [0, 1, 3, 4, 5, 1000, u64::MAX] {
            let top = bucket_top(bucket_of(nanos));
            assert!(top >= nanos as f64, "{nanos} ≤ top of its bucket {top}");
        }
    }

    #[test]
    fn snapshots_a_while_apart_give_what_was_counted_between_them() {
        let stats = CallStats::default();
        stats.record_batch(10, Duration::from_millis(10));
        let earlier = stats.snapshot();
        stats.record_batch(4, Duration::from_micros(40));
        stats.record_counts(BatchCounts { frames: 3, errors: 1 });
        let report = stats.snapshot().since(&earlier);
        assert_eq!((report.calls, report.frames, report.errors), (4, 3, 1));
        assert!((10.0..=13.0).contains(&report.p99_us), "only the later calls, 10 µs each: {report:?}");
        let mut both = earlier.clone();
        both.add(&stats.snapshot());
        assert_eq!(both.since(&CallSnapshot::default()).calls, 24);
    }

    #[test]
    fn a_batch_counts_each_call_at_its_share_of_the_time() {
        let stats = CallStats::default();
        stats.record_batch(100, Duration::from_millis(10));
        stats.record_fault(&PluginFault::Timeout);
        stats.record_fault(&PluginFault::Trap("unreachable".into()));
        let report = stats.report();
        assert_eq!((report.calls, report.traps, report.timeouts), (100, 1, 1));
        assert!((100.0..=125.0).contains(&report.p99_us), "100 µs each: {report:?}");
        assert!((report.pct(report.faults()) - 2.0).abs() < 1e-9);
    }
}
