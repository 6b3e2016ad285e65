//! Hot reload: plugins swapped under live connections with nothing dropped, missed or doubled.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use wasmpush_tests::{Client, Frame, TestEngine, artifacts};

use crate::util::{SOON, TICK, encode, number_of, seq_of, version_of};

/// An engine serving `versioned` v1 (and `quote`).
async fn versioned_engine() -> TestEngine {
    TestEngine::start(&[("versioned", artifacts::VERSIONED_V1), ("quote", artifacts::QUOTE)], |_| {}).await
}

/// Frames of one connection with their arrival times, until it has seen `after` frames of
/// `version` (or `limit` passed).
async fn record_until(client: &mut Client, version: &str, after: usize, limit: Duration) -> Vec<(Instant, String)> {
    let deadline = Instant::now() + limit;
    let mut frames = Vec::new();
    let mut seen = 0;
    while seen < after && Instant::now() < deadline {
        match client.next_within(SOON).await {
            Some(Frame::Text(text)) => {
                if version_of(&text) == version {
                    seen += 1;
                }
                frames.push((Instant::now(), text));
            }
            other => panic!("connection ended or stalled during the swap: {other:?}"),
        }
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_under_load_drops_misses_and_doubles_nothing() {
    const CONNECTIONS: usize = 300;
    let engine = versioned_engine().await;
    let url = engine.url(&format!("/ws/versioned?params={}", encode("{}")));
    let (started, mut ready) = tokio::sync::mpsc::channel(CONNECTIONS);
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let url = url.clone();
            let started = started.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(&url).await;
                assert_eq!(version_of(&client.next_text(SOON).await), "1");
                started.send(()).await.unwrap();
                record_until(&mut client, "2", 5, Duration::from_secs(20)).await
            })
        })
        .collect();
    // Only the clients hold senders now: one that fails ends the wait instead of hanging it.
    drop(started);
    for _ in 0..CONNECTIONS {
        ready.recv().await.expect("every client connected and got its first frame");
    }
    // Let every connection tick on v1 for a while, then swap.
    tokio::time::sleep(TICK * 5).await;
    engine.deploy("versioned", artifacts::VERSIONED_V2);

    for (i, recorded) in join_all(clients).await.into_iter().enumerate() {
        let frames = recorded.expect("client task");
        let versions: Vec<String> = frames.iter().map(|(_, f)| version_of(f)).collect();
        let switch = versions.iter().position(|v| v == "2").unwrap_or_else(|| panic!("connection {i} never saw v2"));
        assert!(switch > 0, "connection {i} saw no v1 frame after it was ready");
        assert!(versions[switch..].iter().all(|v| v == "2"), "connection {i} went back to v1: {versions:?}");
        let seqs: Vec<u64> = frames.iter().map(|(_, f)| seq_of(f)).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "connection {i}: seq skipped or repeated: {seqs:?}");
        // No tick missed by the engine (its batch times), and every frame delivered: the test's
        // clients share two cores with the engine and three other tests, so a client may read
        // a frame late, but not by more than another tick.
        let at: Vec<u64> = frames.iter().map(|(_, f)| number_of(f, "at")).collect();
        let worst_tick = at.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap();
        assert!(
            Duration::from_millis(worst_tick) <= TICK * 3 / 2,
            "connection {i}: the engine ran it {worst_tick} ms after its previous frame"
        );
        let worst_gap = frames.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
        assert!(worst_gap <= TICK * 3, "connection {i}: a gap of {worst_gap:?} between frames read");
    }
}

#[tokio::test]
async fn twenty_deploys_in_two_seconds_end_on_the_last() {
    let engine = versioned_engine().await;
    let mut client = Client::connect(&engine.url(&format!("/ws/versioned?params={}", encode("{}")))).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "1");
    for i in 0..20 {
        let build = if i % 2 == 0 { artifacts::VERSIONED_V2 } else { artifacts::VERSIONED_V1 };
        engine.deploy("versioned", build);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last deploy (i = 19) was v1; then one more, v2, must win as well.
    engine.deploy("versioned", artifacts::VERSIONED_V2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let mut settled = 0;
    while settled < 10 && Instant::now() < deadline {
        let frame = client.next_text(SOON).await;
        let version = version_of(&frame);
        settled = if version == "2" { settled + 1 } else { 0 };
        last = version;
    }
    assert_eq!(last, "2");
    assert_eq!(settled, 10, "the last deploy must stay in place");
}

#[tokio::test]
async fn removing_a_plugin_parks_its_connections_and_redeploying_resumes_them() {
    let engine = versioned_engine().await;
    let mut client = Client::connect(&engine.url(&format!("/ws/versioned?params={}", encode("{}")))).await;
    let mut quote = Client::connect(&engine.url(&format!("/ws/quote?params={}", encode("{}")))).await;
    let before = seq_of(&client.next_text(SOON).await);
    std::fs::remove_file(engine.plugin_path("versioned")).unwrap();
    let error = client.next_error_frame(SOON).await;
    assert_eq!(error, r#"{"code":5004,"msg":"plugin `versioned` is not loaded","data":[]}"#);
    assert_eq!(client.next_within(TICK * 4).await, None, "a parked connection gets nothing, and stays open");
    assert!(quote.next_text(SOON).await.contains("NONE"), "other plugins keep serving");

    engine.deploy("versioned", artifacts::VERSIONED_V2);
    let resumed = client.next_text(SOON).await;
    assert_eq!(version_of(&resumed), "2");
    assert!(seq_of(&resumed) > before, "seq continues across the removal");
}

#[tokio::test]
async fn without_a_watcher_a_reload_request_picks_up_changes() {
    let engine = TestEngine::start(&[("quote", artifacts::QUOTE)], |c| c.watch_plugins = false).await;
    let url = engine.url(&format!("/ws/clock?params={}", encode("{}")));
    engine.deploy("clock", artifacts::CLOCK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(Client::try_connect(&url).await.is_err(), "nothing watches the directory, so clock is not served yet");

    engine.reload().await;
    let mut client = Client::connect_retrying(&url, Duration::from_secs(10)).await;
    assert!(client.next_text(SOON).await.contains("local_ms"));
}

/// Polls `/status` until its `last_reload_error` is newer than `after_ms`; returns it.
async fn next_reload_error(engine: &TestEngine, after_ms: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = engine.status().await;
        let error = &status["last_reload_error"];
        if error["at_ms"].as_u64().is_some_and(|at| at > after_ms) {
            return error.clone();
        }
        assert!(Instant::now() < deadline, "no reload error reported; status: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The version id `/status` reports for `plugin`.
async fn served_version(engine: &TestEngine, plugin: &str) -> String {
    let status = engine.status().await;
    let plugins = status["plugins"].as_array().unwrap();
    let entry = plugins.iter().find(|p| p["name"] == plugin).unwrap_or_else(|| panic!("{plugin} not served: {status}"));
    entry["version"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_builds_are_rejected_while_the_old_version_keeps_serving() {
    let engine = versioned_engine().await;
    let mut client = Client::connect(&engine.url(&format!("/ws/versioned?params={}", encode("{}")))).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "1");
    let v1 = served_version(&engine, "versioned").await;
    assert_eq!(v1.len(), 64, "the version id is a SHA-256: {v1}");

    let good = std::fs::read(artifacts::VERSIONED_V2).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a truncated file", good[..good.len() / 2].to_vec(), "not a valid WebAssembly component"),
        ("a text file", b"not wasm at all".to_vec(), "not a valid WebAssembly component"),
        ("a core module", b"\0asm\x01\0\0\0".to_vec(), "not a valid WebAssembly component"),
        (
            "the wrong contract",
            std::fs::read(artifacts::WRONG_CONTRACT).unwrap(),
            "does not implement the wasmpush:plugin@0.4.0 contract (rebuild it with the current wasmpush-sdk)",
        ),
        ("a start-function trap", std::fs::read(artifacts::START_TRAP).unwrap(), "failed to instantiate"),
    ];
    let scratch = tempfile::tempdir().unwrap();
    let mut last_error_at = 0;
    for (what, bytes, reason) in cases {
        let path = scratch.path().join("bad.wasm");
        std::fs::write(&path, &bytes).unwrap();
        engine.deploy("versioned", path.to_str().unwrap());
        let error = next_reload_error(&engine, last_error_at).await;
        last_error_at = error["at_ms"].as_u64().unwrap();
        assert_eq!(error["plugin"], "versioned", "{what}");
        assert_eq!(error["build"], wasmpush::plugin::content_hash(&bytes), "{what}: the failed build is named");
        let message = error["reason"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
        assert_eq!(served_version(&engine, "versioned").await, v1, "{what} replaced the served version");
        let frame = client.next_text(SOON).await;
        assert_eq!(version_of(&frame), "1", "{what}: the old version keeps serving");
    }

    // A good build after the bad ones is loaded, and clears the error.
    engine.deploy("versioned", artifacts::VERSIONED_V2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while version_of(&client.next_text(SOON).await) != "2" {
        assert!(Instant::now() < deadline, "v2 never arrived");
    }
    assert_eq!(engine.status().await["last_reload_error"], serde_json::Value::Null);
}
