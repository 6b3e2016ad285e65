//! Clients that never read: the engine's memory stays bounded, they are closed (1008) after the
//! write timeout, and readers are unaffected.

use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wasmpush_tests::{Client, TestEngine, artifacts};

use crate::util::{SOON, TICK, encode};

/// Non-reading clients in the test.
const NON_READERS: usize = 300;

/// The bound this test holds the whole process to while the non-readers are connected: each may
/// cost the engine one conflated payload plus one frame being written (2 × 32 KiB), far below this.
const RSS_GROWTH_BOUND_KIB: u64 = 100 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A client with an 8 KiB receive buffer that completes its handshake and then never reads.
async fn non_reader(engine: &TestEngine) -> impl Sized {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let stream = socket.connect(engine.addr).await.unwrap();
    let url = engine.url(&format!("/ws/hostile?params={}", encode(r#"{"do":"big"}"#)));
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_closed_and_cost_bounded_memory() {
    let engine = TestEngine::start(&[("hostile", artifacts::HOSTILE), ("quote", artifacts::QUOTE)], |config| {
        config.write_timeout_secs = 1;
    })
    .await;
    let mut reader = Client::connect(&engine.url(&format!("/ws/quote?params={}", encode("{}")))).await;
    reader.next_text(SOON).await;
    let baseline = rss_kib();

    let mut stalled = Vec::with_capacity(NON_READERS);
    for _ in 0..NON_READERS {
        stalled.push(non_reader(&engine).await);
    }
    // Read on the healthy connection until every non-reader is gone.
    let started = Instant::now();
    let mut frames = 0usize;
    let mut peak = baseline;
    loop {
        reader.next_text(SOON).await;
        frames += 1;
        peak = peak.max(rss_kib());
        if engine.status().await["connections"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "non-readers still open: {}", engine.status().await);
    }
    let elapsed = started.elapsed();
    let expected = (elapsed.as_millis() / TICK.as_millis()) as usize;
    assert!(frames + 2 >= expected * 8 / 10, "the reader got {frames} frames in {elapsed:?}");
    assert!(peak - baseline < RSS_GROWTH_BOUND_KIB, "memory grew by {} KiB", peak - baseline);
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    let closes = format!("wasmpush_closes_total{{reason=\"slow_consumer\"}} {NON_READERS}");
    assert!(metrics.contains(&closes), "{metrics}");
    drop(stalled);
}
