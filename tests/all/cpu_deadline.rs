//! Plugin deadlines count the shard thread's CPU time, not the wall clock: a call that waits for a
//! CPU on a busy machine is not timed out for it, while a call that really runs too long still is.
//!
//! The calling thread is pinned to one CPU together with three spinning threads, so it gets about
//! a quarter of that CPU: a call needing half its timeout in CPU takes about twice the timeout on
//! the wall clock. This runs the real plugin host on the `hostile` plugin built from source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use wasmpush::plugin::PluginFault;

use crate::cpu_work::{call, cpu_time_of, hostile_with_timeout, rounds_taking_cpu, work};

/// Threads that spin beside the calling thread on its CPU.
const HOGS: usize = 3;

#[test]
fn a_call_slowed_by_other_threads_is_not_timed_out_but_a_runaway_call_is() {
    let calibration = hostile_with_timeout(Duration::from_secs(10));
    let rounds = rounds_taking_cpu(&calibration, Duration::from_millis(25));
    let needed = cpu_time_of(|| call(&calibration, &work(rounds)).expect("calibration call"));
    let timeout = needed * 2;
    let hostile = hostile_with_timeout(timeout);

    let cpu = first_allowed_cpu();
    pin_to(cpu);
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<JoinHandle<()>> = (0..HOGS).map(|_| spawn_hog(cpu, stop.clone())).collect();
    let started = Instant::now();
    let slowed = call(&hostile, &work(rounds));
    let slowed_wall = started.elapsed();
    let started = Instant::now();
    let runaway = call(&hostile, r#"{"do":"loop"}"#);
    let runaway_wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    hogs.into_iter().for_each(|hog| hog.join().unwrap());

    assert!(
        slowed_wall > timeout,
        "the spinning threads did not slow the call past its timeout ({slowed_wall:?} <= {timeout:?}), \
         so this machine cannot show the difference between CPU and wall-clock time"
    );
    let frame = slowed.unwrap_or_else(|fault| {
        panic!("a call needing {needed:?} of CPU, {slowed_wall:?} on the wall clock, failed against a {timeout:?} timeout: {fault}")
    });
    assert!(frame.contains("\"hash\":"), "{frame}");
    assert_eq!(runaway, Err(PluginFault::Timeout), "an endless loop must still be interrupted");
    assert!(runaway_wall >= timeout, "interrupted after {runaway_wall:?}, before its {timeout:?} of CPU");
}

/// The lowest-numbered CPU this thread may run on.
fn first_allowed_cpu() -> usize {
    let allowed = sched_getaffinity(Pid::from_raw(0)).expect("the thread's CPU affinity");
    (0..CpuSet::count()).find(|&cpu| allowed.is_set(cpu).unwrap_or(false)).expect("an allowed CPU")
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut cpus = CpuSet::new();
    cpus.set(cpu).expect("a CPU number in range");
    sched_setaffinity(Pid::from_raw(0), &cpus).expect("pin the thread to one CPU");
}

/// A thread pinned to `cpu` that spins until `stop`.
fn spawn_hog(cpu: usize, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        pin_to(cpu);
        while !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    })
}
