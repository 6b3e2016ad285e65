//! When a shard's phases run. A tick interval is cut into [`PHASES`]; each connection belongs to
//! one, so a shard's work is spread over the interval in small batches instead of one burst.
//! [`PhaseClock`] keeps the phases on a fixed grid. `push_floor`, the bare-sends baseline of
//! `just bench`, runs its phases on the same clock.

use std::time::{Duration, Instant};

/// Phases a tick interval is divided into. Each connection belongs to one phase and is ticked
/// once per interval, in its phase's slot: a shard's work is spread over the interval in small
/// batches instead of one burst, so new params never wait behind a whole tick's worth of calls
/// and the socket writes leave evenly.
pub const PHASES: u32 = 20;

/// When a shard's phases run: on a fixed grid of `tick / PHASES`; after a stall at up to twice
/// that rate until back on the grid; a whole tick behind, from a grid restarted at that moment.
#[derive(Debug, Clone, Copy)]
pub struct PhaseClock {
    /// When the next phase is due on the grid.
    grid: Instant,
    /// When it runs: `grid`, or later while catching up.
    next_run: Instant,
}

impl PhaseClock {
    /// A grid whose first phase is one phase after `now`.
    pub fn starting(now: Instant, tick: Duration) -> Self {
        let grid = now + tick / PHASES;
        PhaseClock { grid, next_run: grid }
    }

    /// When the next phase runs.
    pub fn next_run(&self) -> Instant {
        self.next_run
    }

    /// How late a phase starting at `now` is against the grid.
    pub fn lateness(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.grid)
    }

    /// Moves on after a phase that started at `now`. Returns how far behind the grid the shard
    /// was if that was more than a whole tick (the grid then restarts from `now`).
    pub fn advance(&mut self, now: Instant, tick: Duration) -> Option<Duration> {
        let interval = tick / PHASES;
        self.grid += interval;
        let behind_by = now.saturating_duration_since(self.grid);
        let restarted = behind_by > tick;
        if restarted {
            self.grid = now;
        }
        self.next_run = self.grid.max(now + interval / 2);
        restarted.then_some(behind_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_keep_to_their_grid_and_catch_up_at_twice_the_rate() {
        let tick = Duration::from_millis(200);
        let phase = tick / PHASES;
        let start = Instant::now();
        let mut clock = PhaseClock::starting(start, tick);
        // On time: every phase one interval after the last.
        let mut now = clock.next_run();
        assert_eq!(clock.advance(now, tick), None);
        assert_eq!(clock.next_run(), start + phase * 2);
        // A 30 ms stall: the next phases run half an interval apart until back on the grid.
        now = clock.next_run() + Duration::from_millis(30);
        let mut lateness = Vec::new();
        while !clock.lateness(now).is_zero() {
            lateness.push(clock.lateness(now).as_millis());
            assert_eq!(clock.advance(now, tick), None);
            assert_eq!(clock.next_run() - now, phase / 2);
            now = clock.next_run();
        }
        assert_eq!(lateness, [30, 25, 20, 15, 10, 5]);
        assert_eq!(clock.advance(now, tick), None);
        assert_eq!(clock.next_run() - now, phase, "back on the grid, at the usual interval");
        // More than a whole tick behind: the debt is dropped and the grid restarts.
        let late = clock.next_run() + tick + phase * 2;
        assert!(clock.advance(late, tick).is_some());
        assert_eq!(clock.lateness(late), Duration::ZERO);
        assert_eq!(clock.next_run(), late + phase / 2);
    }
}
