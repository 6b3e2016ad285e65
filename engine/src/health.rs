//! [`Health`]: whether the engine serves, as `/healthz` reports it — starting (the first plugin
//! scan has not ended, or the listener does not accept yet), ready, or failed (a shard thread
//! died, after which the engine exits non-zero so that its supervisor restarts it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The engine's health; shared by the server, which sets it, and the admin endpoint.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the first plugin scan ended and the accept loop runs.
    ready: AtomicBool,
    /// Why the engine can no longer serve, once it cannot.
    failure: Mutex<Option<String>>,
}

/// What `/healthz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// Not serving yet.
    Starting,
    /// Serving.
    Ready,
    /// No longer able to serve, and why.
    Failed(String),
}

impl Health {
    /// The engine serves from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The engine can no longer serve, because of `why`.
    pub fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(why);
    }

    /// The state now.
    pub fn state(&self) -> HealthState {
        if let Some(why) = self.failure.lock().unwrap_or_else(|poison| poison.into_inner()).clone() {
            return HealthState::Failed(why);
        }
        match self.ready.load(Ordering::Acquire) {
            true => HealthState::Ready,
            false => HealthState::Starting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_goes_from_starting_to_ready_and_a_failure_overrides_both() {
        let health = Health::default();
        assert_eq!(health.state(), HealthState::Starting);
        health.set_ready();
        assert_eq!(health.state(), HealthState::Ready);
        health.fail("shard 1 died".into());
        assert_eq!(health.state(), HealthState::Failed("shard 1 died".into()));
    }
}
