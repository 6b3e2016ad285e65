//! A fixed amount of CPU work in the `hostile` plugin (`{"do":"work","rounds":N}`), calibrated
//! against the thread's CPU clock, for tests that need a call to take a known CPU time.

use std::sync::Arc;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};
use wasmpush::Config;
use wasmpush::plugin::{BatchData, Calls, Outcome, PluginFault, PluginHost, PluginInstance, PluginVersion, Trigger};
use wasmpush_tests::artifacts;

/// `hostile`, loaded in a plugin host whose calls may use `timeout` of CPU time (and nothing more
/// per connection).
pub fn hostile_with_timeout(timeout: Duration) -> Arc<PluginVersion> {
    let mut limits = wasmpush::sandbox_limits(&Config::default());
    limits.call_timeout = timeout;
    limits.per_call_budget = Duration::ZERO;
    let host = PluginHost::new(limits).expect("plugin host");
    host.load("hostile", &std::fs::read(artifacts::HOSTILE).unwrap()).expect("load hostile")
}

/// Params asking `hostile` for `rounds` hash rounds.
pub fn work(rounds: u64) -> String {
    format!(r#"{{"do":"work","rounds":{rounds}}}"#)
}

/// Calls `hostile` once on a fresh instance with `params`; the pushed frame, or the fault.
pub fn call(hostile: &Arc<PluginVersion>, params: &str) -> Result<String, PluginFault> {
    let mut instance = PluginInstance::new(hostile)?;
    let mut calls = Calls::with_capacity(1);
    calls.push(1, 1, Trigger::Open, Some(params.into()));
    let outcomes = instance.run(0, &calls, &[], &[], &BatchData::none())?;
    match outcomes.get(0)? {
        Outcome::Push(frame) => Ok(frame.to_owned()),
        other => panic!("expected a push, got {other:?}"),
    }
}

/// The calling thread's CPU time spent in `f`.
pub fn cpu_time_of<T>(f: impl FnOnce() -> T) -> Duration {
    let now = || Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock"));
    let before = now();
    f();
    now() - before
}

/// Hash rounds that take at least `cpu` of CPU time in `hostile`, found by doubling.
pub fn rounds_taking_cpu(hostile: &Arc<PluginVersion>, cpu: Duration) -> u64 {
    let mut rounds = 1 << 20;
    for _ in 0..16 {
        if cpu_time_of(|| call(hostile, &work(rounds)).expect("calibration call")) >= cpu {
            return rounds;
        }
        rounds *= 2;
    }
    panic!("{rounds} hash rounds still took less than {cpu:?} of CPU");
}
