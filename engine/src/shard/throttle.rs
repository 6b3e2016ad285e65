//! [`Throttle`]: lets a log line through at most once per interval and counts the ones held back
//! meanwhile, so a condition that repeats many times a second (a plugin faulting on every message,
//! a shard behind its schedule) is reported without flooding the log.

use std::time::{Duration, Instant};

/// Lets a line through at most once per interval and counts the ones held back meanwhile.
#[derive(Debug)]
pub(super) struct Throttle {
    /// The least time between two lines.
    interval: Duration,
    /// When the last line went through.
    last: Option<Instant>,
    /// Lines held back since then.
    held: u64,
}

impl Throttle {
    /// A throttle letting one line through per `interval`, the first at once.
    pub(super) fn new(interval: Duration) -> Self {
        Throttle { interval, last: None, held: 0 }
    }

    /// Whether a line may go through at `now`; if so, how many were held back before it.
    pub(super) fn ready(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let mut throttle = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(throttle.ready(start), Some(0));
        assert_eq!(throttle.ready(start + Duration::from_millis(10)), None);
        assert_eq!(throttle.ready(start + Duration::from_millis(999)), None);
        assert_eq!(throttle.ready(start + Duration::from_secs(1)), Some(2));
        assert_eq!(throttle.ready(start + Duration::from_millis(1500)), None);
    }
}
