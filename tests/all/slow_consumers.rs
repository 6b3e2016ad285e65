//! Clients that never read: the engine's memory stays bounded, they are closed (1008) after the
//! write timeout, and readers are unaffected. The engine is the real binary in its own process,
//! so its resident memory is measured alone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wasmpush_tests::{Client, artifacts, http};

use crate::util::{SOON, TICK, encode, plugins_dir_with, start_in_foreground, write_config};

/// Non-reading clients in the test.
const NON_READERS: usize = 300;

/// The bound this test holds the engine to while the non-readers are connected: each may cost it
/// one conflated payload plus one frame being written (2 × 32 KiB), and the plugin's instances
/// hold one batch of 32 KiB outcomes — far below this.
const RSS_GROWTH_BOUND_KIB: u64 = 100 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A client with an 8 KiB receive buffer that completes its handshake and then never reads.
async fn non_reader(addr: SocketAddr) -> impl Sized {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws/hostile?params={}", encode(r#"{"do":"big"}"#));
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await.unwrap();
    ws
}

async fn connections(admin: SocketAddr) -> u64 {
    let status: serde_json::Value = serde_json::from_str(&http::get(admin, "/status").await).unwrap();
    status["connections"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_closed_and_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with(dir.path(), &[("hostile", artifacts::HOSTILE), ("quote", artifacts::QUOTE)]);
    let (config, port, admin) = write_config(dir.path(), &plugins, "write_timeout_secs = 1\n");
    let engine = start_in_foreground(&config, &dir.path().join("wasmpush.pid"));
    let (addr, admin) = (SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], admin)));

    let url = format!("ws://{addr}/ws/quote?params={}", encode("{}"));
    let mut reader = Client::connect_retrying(&url, SOON * 10).await;
    reader.next_text(SOON).await;
    let baseline = rss_kib(engine.id());

    let mut stalled = Vec::with_capacity(NON_READERS);
    for _ in 0..NON_READERS {
        stalled.push(non_reader(addr).await);
    }
    // Read on the healthy connection until every non-reader is gone.
    let started = Instant::now();
    let mut frames = 0usize;
    let mut peak = baseline;
    loop {
        reader.next_text(SOON).await;
        frames += 1;
        peak = peak.max(rss_kib(engine.id()));
        if connections(admin).await == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "non-readers still open: {}", connections(admin).await);
    }
    let elapsed = started.elapsed();
    let expected = (elapsed.as_millis() / TICK.as_millis()) as usize;
    assert!(frames + 2 >= expected * 8 / 10, "the reader got {frames} frames in {elapsed:?}");
    assert!(peak - baseline < RSS_GROWTH_BOUND_KIB, "memory grew by {} KiB", peak - baseline);
    let metrics = http::get(admin, "/metrics").await;
    let closes = format!("wasmpush_closes_total{{reason=\"slow_consumer\"}} {NON_READERS}");
    assert!(metrics.contains(&closes), "{metrics}");
    drop(stalled);
}
