//! Regression (#23.2, #23.8): a plugin used to be able to make the host allocate what no limit
//! counted — a `get-many` listing one large value ten thousand times (600 MB of copies from a
//! plugin capped at 32 MiB; here 16 MiB), a million keys, key names kept for the instance's life, and the ids
//! each call reported as read, kept for the connection's life. The real engine runs them all on
//! the shard its neighbours tick on; each trick is its own call's error, the neighbours keep
//! their ticks, and the engine's peak resident memory stays under a bound.

use std::time::Duration;

use futures_util::future::join_all;
use wasmpush_tests::{Client, artifacts};

use crate::util::{
    SOON, TICK, config_address, encode, error_parts, peak_rss, plugins_dir_with_quote, start_in_foreground,
    write_config,
};

/// What the engine's peak resident memory must stay under: the copies alone used to pass 600 MB.
const PEAK_RSS_BOUND: u64 = 400 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_make_the_host_allocate_past_its_memory_cap() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    std::fs::copy(artifacts::HOSTILE, plugins.join("hostile.wasm")).unwrap();
    let settings = "workers = 1\nplugin_memory_mib = 16\nplugin_timeout_ms = 1000\n\
                    [plugins.hostile]\nread = [\"blobs\"]\n";
    let (config, port, admin) = write_config(dir.path(), &plugins, settings);
    let engine = start_in_foreground(&config, &dir.path().join("wasmpush.pid"));
    let url = |plugin: &str, params: &str| format!("ws://127.0.0.1:{port}/ws/{plugin}?params={}", encode(params));
    let mut neighbours = vec![
        Client::connect_retrying(&url("quote", r#"{"symbol":"AAPL"}"#), SOON * 10).await,
        Client::connect(&url("hostile", r#"{"do":"ok"}"#)).await,
    ];
    let big = format!("\"{}\"", "x".repeat(60_000));
    let publish = config_address(&config, "publish");
    let (status, body) = wasmpush_tests::http::request(publish, "PUT", "/v1/buckets/blobs/keys/big", None, &big).await;
    assert_eq!(status, 200, "{body}");
    for neighbour in &mut neighbours {
        neighbour.next_text(SOON).await;
    }

    // Each trick traps its own call (code 5001); the engine's log says which bound it met.
    let tricks = ["get-many-repeat", "get-many-huge", "long-keys", "wide-reads"];
    let memory_faults_before = memory_faults(admin).await;
    let urls: Vec<String> = tricks.iter().map(|trick| url("hostile", &format!(r#"{{"do":"{trick}"}}"#))).collect();
    let hostile = join_all(urls.iter().map(|url| Client::connect(url))).await;
    let counts = join_all(neighbours.iter_mut().map(|n| n.texts_during(TICK * 10))).await;
    for (i, frames) in counts.iter().enumerate() {
        assert!(frames.len() >= 7, "neighbour {i} got only {} frames in ten ticks", frames.len());
    }
    for (mut client, trick) in hostile.into_iter().zip(tricks) {
        let (code, message) = error_parts(&client.next_error_frame(Duration::from_secs(10)).await);
        assert_eq!((code, message.as_str()), (5001, "plugin `hostile` failed"), "{trick}");
    }
    // The engine's own account: three calls refused for what they asked the host to hold (the
    // fourth, wide-reads, broke the contract's bound on reads per call).
    assert_eq!(memory_faults(admin).await - memory_faults_before, 3);
    let peak = peak_rss(engine.id());
    eprintln!("host memory: the engine's peak resident memory was {} MiB", peak >> 20);
    assert!(peak < PEAK_RSS_BOUND, "peak resident memory {} MiB", peak >> 20);
}

/// Calls faulted for memory (their own, or what they asked the host to hold), from `/metrics`.
async fn memory_faults(admin: u16) -> u64 {
    let metrics = wasmpush_tests::http::get(([127, 0, 0, 1], admin).into(), "/metrics").await;
    let line =
        metrics.lines().find(|line| line.contains("outcome=\"memory_limit\"")).unwrap_or_else(|| panic!("{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
