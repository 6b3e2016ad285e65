//! The judge: how a rollout ends ([`verdict`]). It compares the candidate's cohort with the serving build's and says whether
//! the candidate is worse beyond a threshold (`[rollouts]` settings), in words an operator reads
//! in `status` ("traps 12.0 % vs 0.0 % over 4,212 calls").

use serde::{Deserialize, Serialize};

use super::candidate::RolloutKind;
use super::stats::ShadowReport;
use crate::call_stats::CallReport;
use crate::config::RolloutSettings;

/// How a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The candidate serves every connection.
    Promoted,
    /// The judge found the candidate worse: the serving build serves every connection.
    RolledBack,
    /// Ended by hand (`wasmpush abort`), or because the serving build was replaced.
    Aborted,
    /// A shadow run's window is over.
    Finished,
    /// The engine restarted mid-rollout.
    Ended,
}

impl Outcome {
    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled_back",
            Outcome::Aborted => "aborted",
            Outcome::Finished => "finished",
            Outcome::Ended => "ended",
        }
    }
}

/// How a rollout of `kind` must end now, and why, if it must: its window is `over` or not, its
/// builds' figures are `serving` and `candidate` (and `shadow`'s, for a shadow run). A canary worse
/// than the serving build is rolled back at once; at the end of its window one with too few calls
/// is rolled back, a healthy one promoted unless manual. A shadow run finishes at the end of its
/// window.
pub fn verdict(
    kind: RolloutKind,
    over: bool,
    serving: &CallReport,
    candidate: &CallReport,
    shadow: &ShadowReport,
    settings: &RolloutSettings,
) -> Option<(Outcome, String)> {
    match kind {
        RolloutKind::Shadow { .. } => over.then(|| {
            let (compared, different) = (shadow.compared, shadow.different);
            let share = if compared == 0 { 0.0 } else { different as f64 * 100.0 / compared as f64 };
            let summary =
                format!("finished: {} of {} calls different ({share:.1} %)", thousands(different), thousands(compared));
            (Outcome::Finished, summary)
        }),
        RolloutKind::Canary { manual, .. } => {
            if let Some(why) = worse(serving, candidate, settings) {
                return Some((Outcome::RolledBack, format!("rolled back: {why}")));
            }
            if !over || manual {
                return None;
            }
            if candidate.calls < settings.min_calls {
                let (calls, needed) = (candidate.calls, settings.min_calls);
                return Some((
                    Outcome::RolledBack,
                    format!("rolled back: {calls} calls over the window, fewer than the {needed} needed to judge"),
                ));
            }
            Some((Outcome::Promoted, format!("promoted: healthy over {} calls", thousands(candidate.calls))))
        }
    }
}

/// Why a candidate is worse than the serving build, if it is (`None`: nothing to hold against
/// it yet). A candidate with fewer than `min_calls` calls is not judged.
pub fn worse(serving: &CallReport, candidate: &CallReport, settings: &RolloutSettings) -> Option<String> {
    if candidate.calls < settings.min_calls {
        return None;
    }
    let over = |calls: u64| format!("over {} calls", thousands(calls));
    let (fault, serving_fault) = (candidate.pct(candidate.faults()), serving.pct(serving.faults()));
    if fault > serving_fault + f64::from(settings.max_fault_increase_pct) {
        let what = if candidate.traps >= candidate.timeouts { "traps" } else { "timeouts" };
        return Some(format!("{what} {fault:.1} % vs {serving_fault:.1} % {}", over(candidate.calls)));
    }
    let (errors, serving_errors) = (candidate.pct(candidate.errors), serving.pct(serving.errors));
    if errors > serving_errors + f64::from(settings.max_error_increase_pct) {
        return Some(format!("errors {errors:.1} % vs {serving_errors:.1} % {}", over(candidate.calls)));
    }
    // Time and frames compare with the serving build only once it has calls of its own.
    if serving.calls < settings.min_calls {
        return None;
    }
    let limit = serving.p99_us * (1.0 + f64::from(settings.max_p99_increase_pct) / 100.0);
    if candidate.p99_us > limit && candidate.p99_us > settings.p99_floor_us as f64 {
        let (p99, serving_p99) = (candidate.p99_us, serving.p99_us);
        return Some(format!("call time p99 {p99:.0} µs vs {serving_p99:.0} µs {}", over(candidate.calls)));
    }
    let (frames, serving_frames) = (candidate.frames_per_call(), serving.frames_per_call());
    if frames < serving_frames * f64::from(settings.min_frames_pct) / 100.0 {
        return Some(format!("frames per call {frames:.2} vs {serving_frames:.2} {}", over(candidate.calls)));
    }
    None
}

/// `n` with a comma between thousands: 4,212.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort(calls: u64, frames: u64, errors: u64, traps: u64, p99_us: f64) -> CallReport {
        CallReport { calls, frames, errors, traps, timeouts: 0, p50_us: p99_us / 2.0, p99_us }
    }

    #[test]
    fn each_threshold_names_what_crossed_it() {
        let settings = RolloutSettings::default();
        let serving = cohort(10_000, 10_000, 0, 0, 40.0);
        let traps = cohort(4212, 3707, 0, 505, 40.0);
        assert_eq!(worse(&serving, &traps, &settings).unwrap(), "traps 12.0 % vs 0.0 % over 4,212 calls");
        let errors = cohort(1000, 900, 100, 0, 40.0);
        assert_eq!(worse(&serving, &errors, &settings).unwrap(), "errors 10.0 % vs 0.0 % over 1,000 calls");
        let slow = cohort(1000, 1000, 0, 0, 40_000.0);
        assert_eq!(worse(&serving, &slow, &settings).unwrap(), "call time p99 40000 µs vs 40 µs over 1,000 calls");
        let silent = cohort(1000, 100, 0, 0, 40.0);
        assert_eq!(worse(&serving, &silent, &settings).unwrap(), "frames per call 0.10 vs 1.00 over 1,000 calls");
    }

    #[test]
    fn a_healthy_or_unproven_candidate_is_not_held_back() {
        let settings = RolloutSettings::default();
        let serving = cohort(10_000, 10_000, 100, 10, 40.0);
        assert_eq!(worse(&serving, &cohort(5000, 5000, 60, 5, 60.0), &settings), None, "within every threshold");
        assert_eq!(worse(&serving, &cohort(99, 0, 99, 99, 1e6), &settings), None, "too few calls to judge");
        let fast = cohort(1000, 1000, 0, 0, 900.0);
        assert_eq!(worse(&cohort(10_000, 10_000, 0, 0, 5.0), &fast, &settings), None, "slower, but under the floor");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(4212), "4,212");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
