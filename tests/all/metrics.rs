//! `/metrics`: the Prometheus counters move as frames are pushed and things go wrong.

use std::time::{Duration, Instant};

use wasmpush_tests::{Client, TestEngine, http};

use crate::util::{TICK, encode, engine};

/// The value of the sample `series` (name and labels, exactly as exported), or 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(engine: &TestEngine) -> String {
    http::get(engine.admin_addr, "/metrics").await
}

/// Scrapes until `series` reaches at least `value` (counters move a moment after the frame).
async fn wait_for(engine: &TestEngine, series: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(engine).await;
        if sample(&text, series) >= value {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never reached {value}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counters_move_as_frames_are_pushed_and_errors_happen() {
    let engine = engine().await;
    let before = scrape(&engine).await;
    assert_eq!(sample(&before, "wasmpush_frames_pushed_total"), 0.0, "{before}");
    assert!(before.contains("# TYPE wasmpush_tick_lateness_seconds histogram"), "{before}");

    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={}", encode("{}")))).await;
    let frames = client.texts_during(TICK * 5).await;
    let text = wait_for(&engine, "wasmpush_frames_pushed_total", frames.len() as f64).await;
    assert!(sample(&text, "wasmpush_bytes_pushed_total") >= frames.iter().map(String::len).sum::<usize>() as f64);
    assert!(sample(&text, r#"wasmpush_plugin_calls_total{outcome="ok"}"#) >= frames.len() as f64);
    assert_eq!(sample(&text, "wasmpush_connections"), 1.0);
    assert_eq!(sample(&text, r#"wasmpush_handshakes_total{result="accepted"}"#), 1.0);
    assert!(sample(&text, "wasmpush_tick_lateness_seconds_count") > 0.0);
    assert!(sample(&text, "wasmpush_plugin_call_duration_seconds_count") > 0.0);
    assert_eq!(sample(&text, r#"wasmpush_reloads_total{result="ok"}"#), 2.0, "quote and clock were loaded");

    client.send_text(r#"{"symbol":"FAIL"}"#).await;
    wait_for(&engine, r#"wasmpush_plugin_calls_total{outcome="error"}"#, 1.0).await;
    assert!(Client::try_connect(&engine.url("/ws/nosuch")).await.is_err());
    // TestEngine's readiness probe was refused (404) too.
    wait_for(&engine, r#"wasmpush_handshakes_total{result="rejected"}"#, 2.0).await;

    std::fs::write(engine.plugin_path("clock"), b"garbage").unwrap();
    wait_for(&engine, r#"wasmpush_reloads_total{result="failed"}"#, 1.0).await;
}

/// A shard wakes only for the phases that hold connections, and a few connections share one:
/// `tick_lateness_seconds` is observed once per phase run, so with one shard and a handful of
/// connections it counts about one run per tick. (Waking for all 20 phases would count 20.)
#[tokio::test]
async fn a_small_shard_runs_one_phase_a_tick() {
    let engine = TestEngine::start(&[("quote", wasmpush_tests::artifacts::QUOTE)], |config| config.workers = 1).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let params = encode(&format!(r#"{{"symbol":"SYM{i}"}}"#));
        clients.push(Client::connect(&engine.url(&format!("/ws/quote?params={params}"))).await);
    }
    let runs = || async { sample(&scrape(&engine).await, "wasmpush_tick_lateness_seconds_count") };
    let before = runs().await;
    let frames = clients[0].texts_during(TICK * 10).await;
    let phase_runs = runs().await - before;
    assert!((8..=12).contains(&frames.len()), "{} frames in ten ticks", frames.len());
    assert!((8.0..=13.0).contains(&phase_runs), "{phase_runs} phase runs in ten ticks");
}

#[tokio::test]
async fn with_an_admin_token_status_and_metrics_need_it_and_healthz_stays_open() {
    let token = "an-admin-token-of-some-length";
    let engine = wasmpush_tests::TestEngine::start(&[], |config| config.admin_token = Some(token.into())).await;
    let get = |path: &'static str, token: Option<&'static str>| {
        wasmpush_tests::http::request(engine.admin_addr, "GET", path, token, "")
    };
    for path in ["/status", "/metrics"] {
        let (status, body) = get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(get(path, Some("a-wrong-token-of-same-size-x")).await.0, 403, "{path}");
        assert_eq!(get(path, Some(token)).await.0, 200, "{path}");
    }
    assert_eq!(get("/healthz", None).await, (200, "ok\n".to_owned()), "health checkers need no token");
}
