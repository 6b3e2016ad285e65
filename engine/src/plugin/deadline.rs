//! [`CallDeadline`]: a plugin call's time limit, counted in the CPU time of the thread running it.
//!
//! Wall-clock time would blame the plugin for time the shard thread spent descheduled: on a busy
//! machine a healthy call that waited for a CPU ran "past its deadline" and its connection was
//! parked with 5002. The epoch ticks still come from wall time (every [`EPOCH_PERIOD`]); when the
//! wall-clock deadline passes, the store's epoch callback checks the thread's CPU time and extends
//! the deadline by what the call has not used yet. A call that really computes that long — a loop
//! — is interrupted as before.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use wasmtime::UpdateDeadline;

use super::epoch_clock::EPOCH_PERIOD;

/// The limit of the call in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallDeadline {
    /// The thread's CPU time when the call started.
    started: Duration,
    /// CPU time the call may use.
    budget: Duration,
}

impl CallDeadline {
    /// A call starting now on this thread, allowed `budget` of CPU time.
    pub(super) fn starting_now(budget: Duration) -> Self {
        CallDeadline { started: thread_cpu_time(), budget }
    }

    /// What to do when the wall-clock deadline passed and the thread has used `cpu_now` in all:
    /// extend by the CPU time left, or interrupt when none is.
    pub(super) fn on_epoch_deadline(&self, cpu_now: Duration) -> UpdateDeadline {
        match self.budget.checked_sub(cpu_now.saturating_sub(self.started)) {
            Some(left) if left >= EPOCH_PERIOD => UpdateDeadline::Continue(ticks(left)),
            _ => UpdateDeadline::Interrupt,
        }
    }
}

/// Epoch ticks covering `duration`, at least one.
pub(super) fn ticks(duration: Duration) -> u64 {
    (duration.as_micros() / EPOCH_PERIOD.as_micros()).max(1) as u64 + 1
}

/// CPU time the calling thread has used.
pub(super) fn thread_cpu_time() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, |time| Duration::new(time.tv_sec() as u64, time.tv_nsec() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_millis(100);

    fn deadline() -> CallDeadline {
        CallDeadline { started: Duration::from_secs(10), budget: BUDGET }
    }

    #[test]
    fn a_call_that_waited_for_the_cpu_gets_the_time_it_did_not_use() {
        // The wall-clock deadline passed, but the thread computed only 20 ms of it.
        let extended = deadline().on_epoch_deadline(Duration::from_secs(10) + Duration::from_millis(20));
        assert!(
            matches!(extended, UpdateDeadline::Continue(ticks) if ticks == super::ticks(Duration::from_millis(80)))
        );
    }

    #[test]
    fn a_call_that_used_its_budget_is_interrupted() {
        let spent = deadline().on_epoch_deadline(Duration::from_secs(10) + BUDGET);
        assert!(matches!(spent, UpdateDeadline::Interrupt));
        let almost = deadline().on_epoch_deadline(Duration::from_secs(10) + BUDGET - EPOCH_PERIOD / 2);
        assert!(matches!(almost, UpdateDeadline::Interrupt), "less than one epoch left");
    }

    #[test]
    fn the_thread_cpu_clock_moves_with_work_not_with_sleep() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - before;
        assert!(slept < Duration::from_millis(25), "sleeping used {slept:?} of CPU");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0);
        }
        assert!(thread_cpu_time() - before > slept, "spinning used no CPU time");
    }
}
