//! The load generator `just bench` measures with, run against a real engine: it must count what
//! arrives, answer the engine's pings and report refused connections, or the benchmark's figures
//! mean nothing.

use std::process::Command;

use wasmpush_tests::{TestEngine, artifacts};

/// Runs `loadgen` against `url` with `args`; returns its JSON report and its standard error.
async fn loadgen(url: String, args: &[&str]) -> (serde_json::Value, String) {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen")).arg("--url").arg(url).args(args).arg("--json").output()
    })
    .await
    .unwrap()
    .expect("run loadgen");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "loadgen failed: {stderr}");
    let json = stdout.lines().last().unwrap_or_else(|| panic!("no report: {stderr}"));
    (serde_json::from_str(json).unwrap_or_else(|err| panic!("{err}: {json}")), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_counts_pushes_gaps_and_update_latencies_of_every_connection() {
    let engine = TestEngine::start(&[("quote", artifacts::QUOTE)], |_| {}).await;
    let args = ["--connections", "40", "--seconds", "3", "--warmup", "1", "--update-every", "1"];
    let (report, stderr) = loadgen(engine.url("/ws/quote"), &args).await;
    assert_eq!((report["established"].as_u64(), report["failed"].as_u64()), (Some(40), Some(0)), "{stderr}");
    assert_eq!(report["dropped"], 0);
    // 40 connections for 3 s at 5 ticks a second, plus an immediate push per update: about 720.
    let pushes = report["pushes"].as_u64().unwrap();
    assert!((400..=900).contains(&pushes), "{report}");
    // Each connection sends an update a second in the window; each is answered with its nonce.
    let updates = report["updates"].as_u64().unwrap();
    assert!((80..=120).contains(&updates), "{report}");
    let gap = report["gap_p50_ms"].as_f64().unwrap();
    assert!((100.0..=300.0).contains(&gap), "the gap between ticks is 200 ms: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_answer_pings_and_outlive_the_idle_timeout() {
    let engine = TestEngine::start(&[("quote", artifacts::QUOTE)], |config| {
        config.ping_secs = 1;
        config.idle_timeout_secs = 2;
    })
    .await;
    // Without params the engine sends nothing but pings; a client that did not answer them would
    // be closed after 2 s.
    let args = ["--connections", "20", "--seconds", "4", "--warmup", "0", "--idle"];
    let (report, _) = loadgen(engine.url("/ws/quote"), &args).await;
    assert_eq!((report["established"].as_u64(), report["dropped"].as_u64()), (Some(20), Some(0)), "{report}");
    assert_eq!(report["pushes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_reported_as_failed_connections() {
    let engine = TestEngine::start(&[("quote", artifacts::QUOTE)], |_| {}).await;
    let args = ["--connections", "5", "--seconds", "1", "--warmup", "0"];
    let (report, stderr) = loadgen(engine.url("/ws/no-such-plugin"), &args).await;
    assert_eq!((report["established"].as_u64(), report["failed"].as_u64()), (Some(0), Some(5)), "{report}");
    assert!(stderr.contains("handshake refused: HTTP/1.1 404"), "{stderr}");
}
