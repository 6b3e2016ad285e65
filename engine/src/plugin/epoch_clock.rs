//! [`EpochClock`]: the thread that advances the wasmtime engine's epoch, which is what makes call
//! deadlines fire, and wakes no more often than those deadlines need.
//!
//! Advancing the epoch every [`EPOCH_PERIOD`] wakes a thread 200 times a second, and on the
//! virtual machine the benchmarks run on a wake-up of an idle thread costs 23–28 µs of CPU (a probe
//! of a thread sleeping 500 µs and waking, 20,000 times): an engine serving nobody spent 0.4 % of a
//! core on it, one serving 1,000 connections about 5 % of its CPU. So:
//!
//! - while a call runs, the thread wakes every [`EPOCH_PERIOD`], the granularity of deadlines;
//! - while none runs, it wakes every *quiet period* (half the shortest budget a call can have,
//!   at most [`MAX_QUIET_PERIOD`]): a call starting meanwhile is seen running at the next wake,
//!   before its deadline, and from then on ticked finely. Each wake advances the epoch by the
//!   time that passed, so deadlines keep to wall time;
//! - after the clock's idle time without any call it parks, and the next call wakes it.
//!
//! A call pays two atomic increments, a decrement and a load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How often the epoch advances while calls run; the granularity of call deadlines.
pub(crate) const EPOCH_PERIOD: Duration = Duration::from_millis(5);

/// The longest the thread sleeps while no call runs.
pub(crate) const MAX_QUIET_PERIOD: Duration = Duration::from_millis(50);

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
    /// Epoch advances so far; only tests read it.
    #[cfg(test)]
    ticks: AtomicU64,
    /// Times the thread woke so far; only tests read it.
    #[cfg(test)]
    wakes: AtomicU64,
}

impl EpochClock {
    /// Starts the thread advancing `engine`'s epoch for calls whose budget is at least
    /// `shortest_budget`; it parks after `idle_after` without calls.
    pub(crate) fn start(
        engine: Engine,
        shortest_budget: Duration,
        idle_after: Duration,
    ) -> std::io::Result<EpochClock> {
        let state = Arc::new(State::default());
        let shared = state.clone();
        let quiet = (shortest_budget / 2).clamp(EPOCH_PERIOD, MAX_QUIET_PERIOD);
        let thread = std::thread::Builder::new()
            .name("wasmpush-epoch".to_owned())
            .spawn(move || shared.advance(&engine, quiet, idle_after))?
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

    /// How many times the epoch has advanced, and the thread woken.
    #[cfg(test)]
    fn counts(&self) -> (u64, u64) {
        (self.state.ticks.load(Ordering::SeqCst), self.state.wakes.load(Ordering::SeqCst))
    }
}

impl Drop for EpochClock {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

impl State {
    /// The thread's loop: sleep [`EPOCH_PERIOD`] while a call runs, `quiet` while none does, and
    /// advance the epoch by the time that passed; after `idle_after` in which no call started or
    /// ran, park until one starts.
    fn advance(&self, engine: &Engine, quiet: Duration, idle_after: Duration) {
        let mut origin = Instant::now();
        let mut advanced = 0;
        let (mut seen, mut quiet_since) = (self.started.load(Ordering::SeqCst), Instant::now());
        while !self.stop.load(Ordering::SeqCst) {
            let running = self.running.load(Ordering::SeqCst) > 0;
            std::thread::sleep(if running { EPOCH_PERIOD } else { quiet });
            // The periods that passed since `origin`; at least one more than before.
            let due = ((origin.elapsed().as_micros() / EPOCH_PERIOD.as_micros()) as u64).max(advanced + 1);
            for _ in advanced..due {
                engine.increment_epoch();
            }
            #[cfg(test)]
            {
                self.wakes.fetch_add(1, Ordering::SeqCst);
                self.ticks.fetch_add(due - advanced, Ordering::SeqCst);
            }
            advanced = due;
            let started = self.started.load(Ordering::SeqCst);
            if started != seen || self.running.load(Ordering::SeqCst) > 0 {
                (seen, quiet_since) = (started, Instant::now());
                continue;
            }
            if quiet_since.elapsed() >= idle_after {
                self.parked.store(true, Ordering::SeqCst);
                // A call that started before `parked` was set shows here; one after it sees
                // `parked` and unparks (an unpark before the park makes the park return).
                if self.started.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                // Nothing ran while parked: restart the count instead of catching up on it.
                (origin, advanced) = (Instant::now(), 0);
                (seen, quiet_since) = (self.started.load(Ordering::SeqCst), Instant::now());
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

    /// Calls get at least 40 ms (a quiet period of 20 ms); parks after 200 ms without calls.
    fn clock() -> EpochClock {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        EpochClock::start(engine, Duration::from_millis(40), Duration::from_millis(200)).unwrap()
    }

    /// How far the epoch advanced and how often the thread woke in the next 100 ms.
    fn next_100ms(clock: &EpochClock) -> (u64, u64) {
        let (ticks, wakes) = clock.counts();
        std::thread::sleep(Duration::from_millis(100));
        let (ticks_after, wakes_after) = clock.counts();
        (ticks_after - ticks, wakes_after - wakes)
    }

    #[test]
    fn between_calls_it_wakes_seldom_but_keeps_to_wall_time_then_parks_until_a_call() {
        let clock = clock();
        let (ticks, wakes) = next_100ms(&clock);
        assert!((2..=6).contains(&wakes), "{wakes} wakes in 100 ms with no call running (quiet period 20 ms)");
        assert!(ticks >= 15, "the epoch advanced {ticks} periods of 5 ms in 100 ms");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(next_100ms(&clock), (0, 0), "parked after its idle time without calls");

        let call = clock.calling();
        let (_, wakes) = next_100ms(&clock);
        assert!(wakes >= 10, "{wakes} wakes in 100 ms while a call runs (period 5 ms)");
        // A call longer than the idle time keeps it ticking: that call's deadline must fire.
        std::thread::sleep(Duration::from_millis(300));
        assert!(next_100ms(&clock).1 >= 10, "still ticking finely while the call runs");
        drop(call);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(next_100ms(&clock), (0, 0), "parked again once the call ended");
    }

    #[test]
    fn calls_in_quick_succession_keep_it_from_parking() {
        let clock = clock();
        for _ in 0..30 {
            drop(clock.calling());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(next_100ms(&clock).1 > 0, "300 ms of calls, the last 0 ms ago: not parked");
    }
}
