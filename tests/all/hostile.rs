//! Hostile plugin calls — an infinite loop, a memory bomb, a panic, a huge payload, a frame that
//! is not UTF-8, a log flood — each hurt only their own connection: it gets its error frame, everyone else keeps ticking.

use futures_util::future::join_all;
use wasmpush_tests::{Client, TestEngine, artifacts};

use crate::util::{SOON, TICK, encode, error_parts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_hits_only_its_own_connection() {
    let engine = TestEngine::start(&[("hostile", artifacts::HOSTILE), ("quote", artifacts::QUOTE)], |config| {
        config.workers = 1; // everyone shares the shard the hostile calls run on
        config.plugin_timeout_ms = 200;
        config.max_payload_bytes = 64 * 1024;
        config.plugin_memory_mib = 32;
    })
    .await;
    let connect = |plugin: &str, params: &str| {
        let url = engine.url(&format!("/ws/{plugin}?params={}", encode(params)));
        async move { Client::connect(&url).await }
    };
    // Healthy neighbours: on another plugin, and on the hostile plugin itself.
    let mut neighbours =
        vec![connect("quote", r#"{"symbol":"AAPL"}"#).await, connect("hostile", r#"{"do":"ok"}"#).await];
    for neighbour in &mut neighbours {
        neighbour.next_text(SOON).await;
    }

    let cases = [
        ("loop", 5002, "plugin `hostile` timed out"),
        ("sleep", 5001, "plugin `hostile` failed"),
        ("alloc", 5001, "plugin `hostile` failed"),
        ("panic", 5001, "plugin `hostile` failed"),
        ("huge", 5003, "produced 1048576 bytes, more than the limit of 65536"),
        ("invalid-utf8", 5001, "plugin `hostile` failed"),
    ];
    let hostile =
        join_all(cases.iter().map(|(action, ..)| connect("hostile", &format!(r#"{{"do":"{action}"}}"#)))).await;
    // Meanwhile the neighbours keep ticking: two seconds is ten ticks.
    let counts = join_all(neighbours.iter_mut().map(|n| n.texts_during(TICK * 10))).await;
    for (i, frames) in counts.iter().enumerate() {
        assert!(frames.len() >= 7, "neighbour {i} got only {} frames while faults happened", frames.len());
    }
    for (mut client, (action, code, message)) in hostile.into_iter().zip(cases) {
        let (got_code, got_message) = error_parts(&client.next_error_frame(SOON * 3).await);
        assert_eq!(got_code, code, "{action}: {got_message}");
        assert!(got_message.contains(message), "{action}: {got_message}");
        assert_eq!(client.next_within(TICK * 3).await, None, "{action}: parked after its error frame");
    }
    let status = engine.status().await;
    assert!(status["plugin_faults"].as_u64().unwrap() >= 3, "{status}");

    // A log flood is cut to size and costs its connection nothing.
    let mut flood = connect("hostile", r#"{"do":"log"}"#).await;
    assert_eq!(flood.next_text(SOON * 5).await, r#"{"seq":1}"#);
    for neighbour in &mut neighbours {
        assert!(neighbour.next_within(SOON).await.is_some(), "the neighbours are still served");
    }
}

#[tokio::test]
async fn instance_limits_are_enforced_when_a_plugin_is_loaded() {
    // A wasip2 component creates several core instances: a limit of one refuses it at load time.
    let engine = TestEngine::start(&[("quote", artifacts::QUOTE)], |config| config.plugin_max_instances = 1).await;
    let status = engine.status().await;
    assert_eq!(status["plugins"], serde_json::json!([]), "{status}");
    let reason = status["last_reload_error"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("failed to instantiate") && reason.contains("instance"), "{status}");
}

#[tokio::test]
async fn with_error_reset_a_faulting_connection_is_retried_once_per_period() {
    let engine = TestEngine::start(&[("hostile", artifacts::HOSTILE)], |config| config.error_reset_secs = 1).await;
    let url = engine.url(&format!("/ws/hostile?params={}", encode(r#"{"do":"panic"}"#)));
    let mut client = Client::connect(&url).await;
    assert_eq!(error_parts(&client.next_text(SOON).await).0, 5001);
    let first = std::time::Instant::now();
    assert_eq!(error_parts(&client.next_text(SOON).await).0, 5001, "retried after the reset, and failed again");
    assert!(first.elapsed() >= std::time::Duration::from_millis(900), "retried after {:?}", first.elapsed());
    // A fixed call resumes the connection.
    client.send_text(r#"{"do":"ok"}"#).await;
    let frame = client.next_text(SOON).await;
    assert!(!frame.starts_with(r#"{"code":"#), "{frame}");
}

/// The epoch that makes call deadlines fire stops advancing once no plugin has been called for a
/// second (an idle engine wakes no thread); the next call starts it again, so a runaway call after
/// such a pause is interrupted as any other.
#[tokio::test]
async fn a_runaway_call_after_an_idle_pause_is_still_interrupted() {
    let engine = TestEngine::start(&[("hostile", artifacts::HOSTILE)], |config| config.plugin_timeout_ms = 200).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut client = Client::connect(&engine.url(&format!("/ws/hostile?params={}", encode(r#"{"do":"loop"}"#)))).await;
    let (code, message) = error_parts(&client.next_error_frame(SOON * 3).await);
    assert_eq!((code, message.contains("timed out")), (5002, true), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resending_a_looping_input_is_backed_off_then_closed_and_its_neighbour_keeps_ticking() {
    let engine = TestEngine::start(&[("hostile", artifacts::HOSTILE), ("quote", artifacts::QUOTE)], |config| {
        config.workers = 1; // the neighbour shares the shard the looping calls run on
        config.plugin_timeout_ms = 100;
    })
    .await;
    let url = |plugin: &str, params: &str| engine.url(&format!("/ws/{plugin}?params={}", encode(params)));
    let mut neighbour = Client::connect(&url("quote", r#"{"symbol":"AAPL"}"#)).await;
    neighbour.next_text(SOON).await;
    let mut looping = Client::connect(&url("hostile", r#"{"do":"loop"}"#)).await;
    let resending = async {
        // 20 messages a second (the client's whole allowance), each one a 100 ms endless loop.
        for n in 0..80 {
            looping.send_text(&format!(r#"{{"do":"loop","n":{n}}}"#)).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        looping.closing_frame(SOON).await
    };
    let (frames, closed) = tokio::join!(neighbour.texts_during(TICK * 20), resending);
    assert_eq!(
        closed,
        Some(wasmpush_tests::Frame::Close(Some((1008, "plugin keeps failing on these params".to_owned())))),
        "closed after 5 faults within a minute"
    );
    assert!(frames.len() >= 18, "the neighbour got {} of its 20 ticks", frames.len());
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"wasmpush_closes_total{reason="plugin_faults"} 1"#), "{metrics}");
}
