//! What a shadow run counts while it runs: [`ShadowStats`], its comparisons. Each build's calls
//! (the serving one and the candidate) are counted in a `CallStats` each. Shards add to them with
//! relaxed atomics, a batch at a time; the controller and `/status` read the reports.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    format!("{}… ({} bytes)", &outcome[..outcome.floor_char_boundary(MAX_SAMPLE_FRAME)], outcome.len())
}

#[cfg(test)]
mod tests {
    use super::*;

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
