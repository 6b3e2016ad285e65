//! [`MessageBudget`]: a per-connection token bucket on client messages, so a client cannot keep
//! its shard busy with params updates. Over the rate a message is refused (the client is told
//! once per episode); a client that keeps going is a flood and is closed.

use std::time::Instant;

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: handle it.
    Allowed,
    /// Over the budget: drop it, and tell the client (first refusal of this episode only).
    Refused {
        /// Whether this is the first refusal since the client was last within its budget.
        first: bool,
    },
    /// Refused `burst` times in a row: close the connection.
    Flood,
}

/// A token bucket: `rate` messages per second, up to `burst` at once.
#[derive(Debug, Clone)]
pub struct MessageBudget {
    /// Tokens refilled per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens now (as of `updated`).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
    /// Messages refused since the last allowed one.
    refused_in_a_row: u32,
}

impl MessageBudget {
    /// A full bucket of `per_sec` messages per second, with a burst of the same size.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let rate = f64::from(per_sec.max(1));
        MessageBudget { rate, burst: rate, tokens: rate, updated: now, refused_in_a_row: 0 }
    }

    /// The verdict on a message arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allowed;
        }
        self.refused_in_a_row += 1;
        if f64::from(self.refused_in_a_row) >= self.burst {
            Verdict::Flood
        } else {
            Verdict::Refused { first: self.refused_in_a_row == 1 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_a_flood_is_refused_then_closed_and_time_refills() {
        let start = Instant::now();
        let mut budget = MessageBudget::new(5, start);
        assert!((0..5).all(|_| budget.take(start) == Verdict::Allowed));
        assert_eq!(budget.take(start), Verdict::Refused { first: true });
        assert_eq!(budget.take(start), Verdict::Refused { first: false });
        assert_eq!(budget.take(start + Duration::from_millis(200)), Verdict::Allowed, "one token per 200 ms");
        let mut flooded = MessageBudget::new(5, start);
        let verdicts: Vec<Verdict> = (0..10).map(|_| flooded.take(start)).collect();
        assert_eq!(verdicts[9], Verdict::Flood);
    }
}
