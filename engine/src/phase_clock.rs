//! When a shard's phases run. A tick interval is cut into [`PHASES`]; each connection belongs to
//! one, so a shard's work is spread over the interval in batches instead of one burst.
//! [`PhaseLoad`] picks a new connection's phase and says which phases hold any; [`PhaseClock`]
//! keeps the phases on a fixed grid. `push_floor`, the bare-sends baseline of `just bench`, runs
//! its phases the same way.

use std::time::{Duration, Instant};

/// Phases a tick interval is divided into. Each connection belongs to one phase and is ticked
/// once per interval, in its phase's slot: a shard's work is spread over the interval in small
/// batches instead of one burst, so new params never wait behind a whole tick's worth of calls
/// and the socket writes leave evenly.
pub const PHASES: u32 = 20;

/// Connections a phase takes before a shard starts filling another. A wake-up of a shard thread
/// costs about the same whatever it then does (on the 2-core VM `just bench` runs on, tens of
/// microseconds of scheduler and inter-processor interrupt work); a few hundred calls and sends
/// spread that cost thin, while 128-call chunks keep a big phase from delaying params updates.
/// Below `PHASES * PHASE_FILL` connections a shard wakes for fewer phases than [`PHASES`].
pub const PHASE_FILL: u32 = 256;

/// How many connections each phase of a shard holds: which phase a new connection joins and
/// which phases the shard must wake for.
///
/// A new connection joins the fullest phase still below [`PHASE_FILL`], or when every phase is
/// that full, the emptiest: a few connections share one or two phases (a shard wakes a few times
/// a tick, not [`PHASES`] times), many are spread evenly. A connection keeps its phase for life,
/// so its pushes stay exactly a tick apart however the load changes.
#[derive(Debug, Clone, Default)]
pub struct PhaseLoad {
    sizes: [u32; PHASES as usize],
}

impl PhaseLoad {
    /// Counts a new connection in and returns its phase.
    pub fn join(&mut self) -> u32 {
        let filling = (0..PHASES).filter(|&phase| self.size(phase) < PHASE_FILL).max_by_key(|&phase| {
            // The fullest; of equals, the first.
            (self.size(phase), std::cmp::Reverse(phase))
        });
        let phase = filling.unwrap_or_else(|| (0..PHASES).min_by_key(|&phase| self.size(phase)).unwrap_or(0));
        self.sizes[phase as usize] += 1;
        phase
    }

    /// Counts a connection of `phase` out.
    pub fn leave(&mut self, phase: u32) {
        let size = &mut self.sizes[phase as usize];
        *size = size.saturating_sub(1);
    }

    /// Phases from `phase` to the next one that holds a connection, in `1..=PHASES` (all of
    /// them when no other does).
    pub fn steps_to_next(&self, phase: u32) -> u32 {
        (1..PHASES).find(|step| self.size((phase + step) % PHASES) > 0).unwrap_or(PHASES)
    }

    fn size(&self, phase: u32) -> u32 {
        self.sizes[phase as usize]
    }
}

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

    /// Moves on after a phase that started at `now`, to the phase `steps` later (the next that
    /// holds connections). Returns how far behind the grid the shard was if that was more than a
    /// whole tick (the grid then restarts from `now`).
    pub fn advance(&mut self, now: Instant, tick: Duration, steps: u32) -> Option<Duration> {
        let interval = tick / PHASES * steps;
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

    /// The tick the clock tests use, 200 ms, and so a phase of 10 ms.
    const TICK: Duration = Duration::from_millis(200);

    /// A clock started now, and when.
    fn started() -> (PhaseClock, Instant) {
        let start = Instant::now();
        (PhaseClock::starting(start, TICK), start)
    }

    #[test]
    fn phases_keep_to_their_grid_and_catch_up_at_twice_the_rate() {
        let (tick, phase) = (TICK, TICK / PHASES);
        let (mut clock, start) = started();
        // On time: every phase one interval after the last.
        let mut now = clock.next_run();
        assert_eq!(clock.advance(now, tick, 1), None);
        assert_eq!(clock.next_run(), start + phase * 2);
        // A 30 ms stall: the next phases run half an interval apart until back on the grid.
        now = clock.next_run() + Duration::from_millis(30);
        let mut lateness = Vec::new();
        while !clock.lateness(now).is_zero() {
            lateness.push(clock.lateness(now).as_millis());
            assert_eq!(clock.advance(now, tick, 1), None);
            assert_eq!(clock.next_run() - now, phase / 2);
            now = clock.next_run();
        }
        assert_eq!(lateness, [30, 25, 20, 15, 10, 5]);
        assert_eq!(clock.advance(now, tick, 1), None);
        assert_eq!(clock.next_run() - now, phase, "back on the grid, at the usual interval");
        // More than a whole tick behind: the debt is dropped and the grid restarts.
        let late = clock.next_run() + tick + phase * 2;
        assert!(clock.advance(late, tick, 1).is_some());
        assert_eq!(clock.lateness(late), Duration::ZERO);
        assert_eq!(clock.next_run(), late + phase / 2);
    }

    #[test]
    fn a_skipped_phase_keeps_the_grid_and_catch_up_halves_the_longer_interval() {
        let (tick, phase) = (TICK, TICK / PHASES);
        let (mut clock, start) = started();
        let now = clock.next_run();
        assert_eq!(clock.advance(now, tick, 5), None);
        assert_eq!(clock.next_run(), start + phase * 6, "five phases later, on the grid");
        let late = clock.next_run() + phase * 8;
        assert_eq!(clock.advance(late, tick, 5), None);
        assert_eq!(clock.lateness(late), phase * 3);
        assert_eq!(clock.next_run(), late + phase * 5 / 2);
    }

    fn joined(load: &mut PhaseLoad, count: u32) -> Vec<u32> {
        (0..count).map(|_| load.join()).collect()
    }

    #[test]
    fn few_connections_share_the_first_phases_and_the_shard_wakes_only_for_those() {
        let mut load = PhaseLoad::default();
        let phases = joined(&mut load, PHASE_FILL + 3);
        assert!(phases[..PHASE_FILL as usize].iter().all(|&phase| phase == 0));
        assert_eq!(phases[PHASE_FILL as usize..], [1, 1, 1]);
        assert_eq!(load.steps_to_next(0), 1);
        assert_eq!(load.steps_to_next(1), PHASES - 1, "from phase 1 straight back to phase 0");
        load.leave(1);
        load.leave(1);
        load.leave(1);
        assert_eq!(load.steps_to_next(0), PHASES, "only phase 0 left: one wake a tick");
        assert_eq!(PhaseLoad::default().steps_to_next(7), PHASES);
    }

    #[test]
    fn many_connections_spread_evenly_and_newcomers_fill_the_emptiest_phase() {
        let mut load = PhaseLoad::default();
        joined(&mut load, PHASES * PHASE_FILL * 2);
        assert!(load.sizes.iter().all(|&size| size == PHASE_FILL * 2), "{:?}", load.sizes);
        load.leave(7);
        load.leave(7);
        load.leave(3);
        assert_eq!(joined(&mut load, 3), [7, 3, 7]);
        assert!((1..PHASES).all(|phase| load.steps_to_next(phase - 1) == 1));
    }

    #[test]
    fn a_phase_below_the_fill_takes_newcomers_before_an_empty_one() {
        let mut load = PhaseLoad::default();
        joined(&mut load, PHASE_FILL * 2);
        load.leave(0);
        assert_eq!(load.join(), 0, "phase 0 has room again");
        load.leave(1);
        load.leave(0);
        load.leave(0);
        assert_eq!(load.join(), 1, "the fuller of the two with room");
    }
}
