//! `just bench-rollouts`: what a shadow run costs, and how fast a canary's rollback reaches its
//! connections. The release engine (`wasmpush`, beside this binary) runs as a child process and
//! serves the `versioned` test plugin to N clients (default 2,000; `rollout_bench N`) in this
//! process, each recording the engine's batch time (`at`) of every frame.
//!
//! 1. Ten seconds with no rollout: the shard threads' CPU per call (from `/proc`), plugin time
//!    per call (the engine's own batch timings) and missed ticks (a gap between two frames of one
//!    client over 1.5 ticks).
//! 2. Ten seconds of a shadow run at 100 % sample (build v2, the same work with one field
//!    changed): the same, plus the shadow's calls and comparisons, as ratios to the mean of the
//!    runs without a rollout before and after it; shed calls; missed ticks.
//! 3. A canary of 50 % with build `trap` (traps on a quarter of the clients): from the judge's
//!    decision to each canary client's first frame of the serving build again, in ms and ticks.
//!
//! Absolute times are this machine's; the ratios are what carries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpush_tests::{Client, Frame, ReleaseEngine, artifacts, percent_encode};

/// The engine's tick.
const TICK_MS: u64 = 200;

/// One frame a client got: its build's version and the engine's batch time.
type Got = (String, u64);

#[tokio::main]
async fn main() {
    let connections: u64 = std::env::args().nth(1).map_or(2000, |n| n.parse().expect("N: a number of clients"));
    let versioned = [("versioned", artifacts::VERSIONED_V1)];
    let engine =
        ReleaseEngine::start(19603, &versioned, "[rollouts]\nmin_calls = 200\n", "/ws/versioned?params=%7B%7D").await;
    let frames: Vec<Arc<Mutex<Vec<Got>>>> = (0..connections).map(|_| Arc::default()).collect();
    for (n, record) in frames.iter().enumerate() {
        let url = engine.url(&format!("/ws/versioned?params={}", percent_encode(&format!(r#"{{"n":{n}}}"#))));
        let record = record.clone();
        let mut client = Client::connect_retrying(&url, Duration::from_secs(10)).await;
        tokio::spawn(async move {
            while let Some(Frame::Text(text)) = client.next_within(Duration::from_secs(60)).await {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                let version = value["version"].as_str().unwrap_or("error").to_owned();
                let at = value["at"].as_u64().unwrap_or_else(now_ms);
                record.lock().unwrap().push((version, at));
            }
        });
    }
    println!("# rollout bench: {connections} connections of `versioned`, tick {TICK_MS} ms, {} cores", num_cpus());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let plain = measure(&engine, &frames, None).await;
    let shadow_path = "/plugins/versioned/deploy?mode=shadow&percent=100&secs=14";
    post_wasm(&engine, shadow_path, artifacts::VERSIONED_V2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shadowed = measure(&engine, &frames, Some("shadow")).await;
    let ended = wait_for_end(&engine, 1).await;
    let after = measure(&engine, &frames, None).await;
    let plain_us = (plain.call_us() + after.call_us()) / 2.0;
    let shadow = &ended["shadow"];
    println!();
    let shard_us = (plain.shard_us() + after.shard_us()) / 2.0;
    println!(
        "| run | calls | shard CPU µs per call | ratio | plugin µs per call | + shadow µs per call | ratio | missed ticks | shed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str, window: &Window, shed: &serde_json::Value| {
        let plugin = window.call_us() + window.shadow_us / window.calls as f64;
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {shed} |",
            window.calls,
            window.shard_us(),
            window.shard_us() / shard_us,
            window.call_us(),
            window.shadow_us / window.calls as f64,
            plugin / plain_us,
            window.missed
        );
    };
    let none = serde_json::Value::Null;
    row("no rollout, before", &plain, &none);
    row("shadow, 100 % sample", &shadowed, &shadow["shed"]);
    row("no rollout, after", &after, &none);
    let (serving, candidate) = (&ended["serving_calls"], &ended["candidate_calls"]);
    println!(
        "(call time per call, p50/p99 µs: serving {}/{}, candidate {}/{}; ratios are to the mean of the two runs without a rollout)",
        serving["p50_us"], serving["p99_us"], candidate["p50_us"], candidate["p99_us"]
    );
    println!(
        "(whole shadow run: {} compared, {} different, {} shed, {} µs of shadow work)",
        shadow["compared"], shadow["different"], shadow["shed"], shadow["time_us"]
    );

    post_wasm(&engine, "/plugins/versioned/deploy?mode=canary&percent=50&secs=60", artifacts::VERSIONED_TRAP).await;
    let ended = wait_for_end(&engine, 2).await;
    let decided = ended["ended_at_ms"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut reach: Vec<u64> = Vec::new();
    let (mut late_frames, mut cohort, mut silent) = (0, 0, 0);
    for record in &frames {
        let record = record.lock().unwrap();
        late_frames += record.iter().filter(|(version, at)| version == "trap" && *at > decided).count();
        let in_canary = record.iter().any(|(version, _)| version == "trap" || version == "error");
        cohort += usize::from(in_canary);
        silent += usize::from(in_canary && !record.iter().any(|(_, at)| *at >= decided));
        if in_canary && let Some((_, at)) = record.iter().find(|(version, at)| version == "1" && *at >= decided) {
            reach.push(at - decided);
        }
    }
    reach.sort_unstable();
    let quantile = |q: f64| reach[((reach.len() as f64 * q) as usize).min(reach.len() - 1)];
    println!();
    println!("## canary rollback ({})", ended["reason"].as_str().unwrap_or("?"));
    println!("| canary connections back on the serving build | p50 ms | p99 ms | max ms | max in ticks |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.2} |",
        reach.len(),
        quantile(0.5),
        quantile(0.99),
        reach.last().unwrap(),
        *reach.last().unwrap() as f64 / TICK_MS as f64
    );
    println!(
        "(frames of the candidate made after the decision: {late_frames}; canary clients: {cohort}, of which without any frame after it (their connection ended: this process fell behind reading): {silent})"
    );
}

/// What ten seconds of load cost.
struct Window {
    /// Plugin calls of the serving build.
    calls: u64,
    /// Seconds the serving build's batches took.
    call_secs: f64,
    /// Microseconds of shadow work (calls and comparisons).
    shadow_us: f64,
    /// Ticks a client missed.
    missed: u64,
    /// CPU seconds of the shard threads.
    shard_cpu: f64,
}

impl Window {
    fn call_us(&self) -> f64 {
        self.call_secs * 1e6 / self.calls as f64
    }

    /// Shard CPU per call, in microseconds.
    fn shard_us(&self) -> f64 {
        self.shard_cpu * 1e6 / self.calls as f64
    }
}

/// Ten seconds of load: the engine's calls and batch time, the shadow run's work (`rollout`:
/// the plugin's rollout status key to read it from), and the ticks clients missed.
async fn measure(engine: &ReleaseEngine, frames: &[Arc<Mutex<Vec<Got>>>], rollout: Option<&str>) -> Window {
    let (calls, secs) = call_totals(engine).await;
    let shadow = shadow_time(engine, rollout).await;
    let cpu = engine.cpu_secs(Some("wasmpush-shard"));
    let from = now_ms();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let to = now_ms();
    let (calls_after, secs_after) = call_totals(engine).await;
    let shadow_after = shadow_time(engine, rollout).await;
    let shard_cpu = engine.cpu_secs(Some("wasmpush-shard")) - cpu;
    let mut missed = 0;
    for record in frames {
        let record = record.lock().unwrap();
        let at: Vec<u64> = record.iter().map(|(_, at)| *at).filter(|at| (from..to).contains(at)).collect();
        missed += at
            .windows(2)
            .map(|w| (w[1] - w[0] + TICK_MS / 2) / TICK_MS)
            .map(|ticks| ticks.saturating_sub(1))
            .sum::<u64>();
    }
    Window {
        calls: calls_after - calls,
        call_secs: secs_after - secs,
        shadow_us: shadow_after - shadow,
        missed,
        shard_cpu,
    }
}

/// Plugin calls so far and the seconds their batches took, from `/metrics`.
async fn call_totals(engine: &ReleaseEngine) -> (u64, f64) {
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    let value = |line: &str| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let calls = metrics.lines().filter(|line| line.starts_with("wasmpush_plugin_calls_total{")).map(value).sum::<f64>();
    let secs =
        metrics.lines().find(|line| line.starts_with("wasmpush_plugin_call_duration_seconds_sum")).map_or(0.0, value);
    (calls as u64, secs)
}

/// Microseconds of shadow work so far.
async fn shadow_time(engine: &ReleaseEngine, rollout: Option<&str>) -> f64 {
    let Some(key) = rollout else { return 0.0 };
    let status = engine.status().await;
    status["plugins"][0]["rollout"][key]["time_us"].as_f64().unwrap_or(0.0)
}

/// Waits until `versioned` has `count` ended rollouts; the newest.
async fn wait_for_end(engine: &ReleaseEngine, count: usize) -> serde_json::Value {
    for _ in 0..600 {
        let status = engine.status().await;
        let ended = status["plugins"][0]["last_rollouts"].as_array().cloned().unwrap_or_default();
        if ended.len() >= count {
            return ended[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rollout did not end within a minute");
}

/// `POST path` to the admin endpoint with the build at `wasm`; panics unless it is accepted.
async fn post_wasm(engine: &ReleaseEngine, path: &str, wasm: &str) {
    let body = std::fs::read(wasm).unwrap();
    let mut stream = tokio::net::TcpStream::connect(engine.admin_addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        engine.admin_addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
}

fn now_ms() -> u64 {
    wasmpush_tests::feed::unix_time().as_millis() as u64
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
