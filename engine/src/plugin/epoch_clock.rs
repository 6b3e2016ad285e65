//! [`EpochClock`]: the thread that advances the wasmtime engine's epoch, which is what makes call
//! deadlines fire — but only while plugins are being called.
//!
//! Advancing the epoch every [`EPOCH_PERIOD`] wakes a thread 200 times a second, and on the
//! virtual machine the benchmarks run on a wake-up of an idle thread costs 23–28 µs of CPU (a probe
//! of a thread sleeping 500 µs and waking, 20,000 times): an engine serving nobody spent 0.4 % of a
//! core on it. So the thread parks once no call has run for the clock's idle time, and the next
//! call wakes it before it starts. Under load it never parks; a call then pays two atomic
//! increments, a decrement and a load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances while calls run; the granularity of call deadlines.
pub(crate) const EPOCH_PERIOD: Duration = Duration::from_millis(5);

/// How long the epoch keeps advancing after the last call before the thread parks.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Advances an engine's epoch while calls run. The host and every version it loaded share it, so
/// it runs as long as any of them lives: a version kept after its host is dropped still has its
/// calls interrupted. Dropping the last holder ends the thread.
#[derive(Debug)]
pub(crate) struct EpochClock {
    state: Arc<State>,
    /// The advancing thread, to wake it.
    thread: Thread,
}

/// What the caller side and the thread share.
#[derive(Debug, Default)]
struct State {
    /// Set when the clock is dropped; the thread then ends.
    stop: AtomicBool,
    /// Calls started so far: the thread sees from it that calls happened.
    started: AtomicU64,
    /// Calls in progress: the thread never parks while one runs.
    running: AtomicU64,
    /// Whether the thread is parked (or about to park).
    parked: AtomicBool,
    /// Epoch advances so far.
    ticks: AtomicU64,
}

impl EpochClock {
    /// Starts the thread advancing `engine`'s epoch; it parks after `idle_after` without calls.
    pub(crate) fn start(engine: Engine, idle_after: Duration) -> std::io::Result<EpochClock> {
        let state = Arc::new(State::default());
        let shared = state.clone();
        let idle_ticks = (idle_after.as_micros() / EPOCH_PERIOD.as_micros()).max(1) as u64;
        let thread = std::thread::Builder::new()
            .name("wasmpush-epoch".to_owned())
            .spawn(move || shared.advance(&engine, idle_ticks))?
            .thread()
            .clone();
        Ok(EpochClock { state, thread })
    }

    /// Marks a call as running until the guard is dropped, waking the thread first if it parked.
    pub(crate) fn calling(&self) -> CallGuard<'_> {
        self.state.running.fetch_add(1, Ordering::SeqCst);
        self.state.started.fetch_add(1, Ordering::SeqCst);
        if self.state.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        CallGuard { state: &self.state }
    }

    /// How many times the epoch has advanced.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.state.ticks.load(Ordering::SeqCst)
    }
}

impl Drop for EpochClock {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

impl State {
    /// The thread's loop: advance every [`EPOCH_PERIOD`]; after `idle_ticks` periods in which no
    /// call started or ran, park until a call starts.
    fn advance(&self, engine: &Engine, idle_ticks: u64) {
        let mut seen = self.started.load(Ordering::SeqCst);
        let mut quiet = 0;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(EPOCH_PERIOD);
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::SeqCst);
            let started = self.started.load(Ordering::SeqCst);
            if started != seen || self.running.load(Ordering::SeqCst) > 0 {
                (seen, quiet) = (started, 0);
                continue;
            }
            quiet += 1;
            if quiet >= idle_ticks {
                self.parked.store(true, Ordering::SeqCst);
                // A call that started before `parked` was set shows here; one after it sees
                // `parked` and unparks (an unpark before the park makes the park return).
                if self.started.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                (seen, quiet) = (self.started.load(Ordering::SeqCst), 0);
            }
        }
    }
}

/// A call in progress; see [`EpochClock::calling`].
#[derive(Debug)]
pub(crate) struct CallGuard<'a> {
    state: &'a State,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.state.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> EpochClock {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        EpochClock::start(Engine::new(&config).unwrap(), Duration::from_millis(50)).unwrap()
    }

    /// Whether the epoch advanced within a few periods.
    fn advancing(clock: &EpochClock) -> bool {
        let before = clock.ticks();
        std::thread::sleep(EPOCH_PERIOD * 6);
        clock.ticks() > before
    }

    #[test]
    fn the_epoch_stops_without_calls_and_a_call_starts_it_again() {
        let clock = clock();
        assert!(advancing(&clock), "it advances from the start");
        std::thread::sleep(Duration::from_millis(300));
        assert!(!advancing(&clock), "parked after its idle time without calls");
        let call = clock.calling();
        assert!(advancing(&clock), "a call wakes it");
        // A call that runs longer than the idle time keeps it going: that call's deadline must fire.
        std::thread::sleep(Duration::from_millis(300));
        assert!(advancing(&clock), "still advancing while the call runs");
        drop(call);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!advancing(&clock), "parked again once the call ended");
    }

    #[test]
    fn calls_in_quick_succession_keep_it_advancing() {
        let clock = clock();
        for _ in 0..20 {
            drop(clock.calling());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(advancing(&clock));
    }
}
