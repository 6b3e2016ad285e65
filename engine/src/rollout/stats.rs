//! What a rollout counts while it runs: [`CohortStats`] for each build's calls (the serving one
//! and the candidate), [`ShadowStats`] for a shadow run's comparisons. Shards add to them with
//! relaxed atomics, a batch at a time; the controller and `/status` read [`CohortReport`]s.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plugin::PluginFault;

/// Sub-buckets per power of two of the call-time histogram: a quantile is right within 19 %.
const SUB_BUCKETS: u32 = 4;

/// Buckets of the call-time histogram: every `u64` of nanoseconds has one.
const BUCKETS: usize = 64 * SUB_BUCKETS as usize;

/// The calls of one build in a rollout.
#[derive(Debug)]
pub struct CohortStats {
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

impl Default for CohortStats {
    fn default() -> Self {
        CohortStats {
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

impl CohortStats {
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
    pub fn report(&self) -> CohortReport {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counts: Vec<u64> = self.call_time.iter().map(load).collect();
        CohortReport {
            calls: load(&self.calls),
            frames: load(&self.frames),
            errors: load(&self.errors),
            traps: load(&self.traps),
            timeouts: load(&self.timeouts),
            p50_us: quantile_us(&counts, 0.50),
            p99_us: quantile_us(&counts, 0.99),
        }
    }
}

/// One build's figures in a rollout, as `/status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortReport {
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

impl CohortReport {
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

/// Differences a shadow run keeps to show.
pub const MAX_SAMPLES: usize = 5;

/// Bytes of a frame kept in a sampled difference.
const MAX_SAMPLE_FRAME: usize = 1024;

/// A shadow run's comparisons: each sampled call ran on both builds, with the same inputs.
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Calls whose two outcomes were compared.
    compared: AtomicU64,
    /// Of them, those whose outcomes were identical.
    identical: AtomicU64,
    /// Sampled calls not run on the candidate: its time budget was spent or the shard was late.
    shed: AtomicU64,
    /// Nanoseconds spent on the candidate's calls and the comparisons.
    time_ns: AtomicU64,
    /// The first few differences.
    samples: Mutex<Vec<Difference>>,
}

/// One call whose two builds disagreed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The connection's params, reduced to their keys (values are the clients' business).
    pub params_keys: Vec<String>,
    /// What the serving build returned (a frame, `(nothing)`, `error: …` or `fault: …`).
    pub serving: String,
    /// What the candidate returned.
    pub candidate: String,
}

/// A shadow run's figures, as `/status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// Calls compared.
    pub compared: u64,
    /// Identical outcomes.
    pub identical: u64,
    /// Different outcomes.
    pub different: u64,
    /// Sampled calls not run on the candidate (its budget was spent or its shard was late).
    pub shed: u64,
    /// Time spent on the candidate's calls and the comparisons, in microseconds.
    #[serde(default)]
    pub time_us: u64,
    /// A few differences.
    pub samples: Vec<Difference>,
}

impl ShadowStats {
    /// Counts a batch: `compared` calls, of which `identical` agreed, run and compared in
    /// `elapsed`.
    pub fn record(&self, compared: u64, identical: u64, elapsed: Duration) {
        self.compared.fetch_add(compared, Ordering::Relaxed);
        self.identical.fetch_add(identical, Ordering::Relaxed);
        self.time_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Counts sampled calls the candidate did not run.
    pub fn record_shed(&self, calls: u64) {
        self.shed.fetch_add(calls, Ordering::Relaxed);
    }

    /// Whether another difference would be kept.
    pub fn wants_sample(&self) -> bool {
        self.samples.lock().unwrap_or_else(|poison| poison.into_inner()).len() < MAX_SAMPLES
    }

    /// Keeps a difference: the call's `params`, and the two outcomes as text.
    pub fn sample(&self, params: &str, serving: &str, candidate: &str) {
        let mut samples = self.samples.lock().unwrap_or_else(|poison| poison.into_inner());
        if samples.len() < MAX_SAMPLES {
            samples.push(Difference {
                params_keys: params_keys(params),
                serving: shown(serving),
                candidate: shown(candidate),
            });
        }
    }

    /// The figures so far.
    pub fn report(&self) -> ShadowReport {
        let compared = self.compared.load(Ordering::Relaxed);
        let identical = self.identical.load(Ordering::Relaxed);
        ShadowReport {
            compared,
            identical,
            different: compared.saturating_sub(identical),
            shed: self.shed.load(Ordering::Relaxed),
            time_us: self.time_ns.load(Ordering::Relaxed) / 1000,
            samples: self.samples.lock().unwrap_or_else(|poison| poison.into_inner()).clone(),
        }
    }
}

/// The top-level keys of a params object, sorted; none for anything else.
fn params_keys(params: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(params) {
        Ok(object) => object.keys().cloned().collect(),
        Err(_) => Vec::new(),
    }
}

/// An outcome as text, cut to [`MAX_SAMPLE_FRAME`] bytes.
fn shown(outcome: &str) -> String {
    if outcome.len() <= MAX_SAMPLE_FRAME {
        return outcome.to_owned();
    }
    let cut = (0..=MAX_SAMPLE_FRAME).rev().find(|at| outcome.is_char_boundary(*at)).unwrap_or(0);
    format!("{}… ({} bytes)", &outcome[..cut], outcome.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_within_a_bucket_of_the_truth() {
        let stats = CohortStats::default();
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
    fn a_batch_counts_each_call_at_its_share_of_the_time() {
        let stats = CohortStats::default();
        stats.record_batch(100, Duration::from_millis(10));
        stats.record_fault(&PluginFault::Timeout);
        stats.record_fault(&PluginFault::Trap("unreachable".into()));
        let report = stats.report();
        assert_eq!((report.calls, report.traps, report.timeouts), (100, 1, 1));
        assert!((100.0..=125.0).contains(&report.p99_us), "100 µs each: {report:?}");
        assert!((report.pct(report.faults()) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_difference_shows_the_params_keys_only_and_cut_frames() {
        let shadow = ShadowStats::default();
        shadow.record(10, 7, Duration::from_micros(1500));
        let long = "é".repeat(2500);
        shadow.sample(r#"{"account":"secret-42","n":3}"#, r#"{"v":1}"#, &long);
        let report = shadow.report();
        assert_eq!((report.compared, report.identical, report.different, report.time_us), (10, 7, 3, 1500));
        let sample = &report.samples[0];
        assert_eq!(sample.params_keys, ["account", "n"]);
        assert!(!format!("{sample:?}").contains("secret-42"), "values are redacted");
        assert!(sample.candidate.ends_with("… (5000 bytes)") && sample.candidate.len() < 1100);
    }
}
