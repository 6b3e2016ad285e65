//! `reload_latency`: measures the time from the rename that deploys a new plugin build to the
//! first frame of that build at a client, over many swaps, on an in-process engine.
//!
//! The engine switches versions at its next tick, so the figure includes the wait for the tick
//! (up to `tick_ms`) on top of the watcher's debounce and the compilation.
//!
//! Usage: `reload_latency [SWAPS] [TICK_MS]` (defaults 30 and 200).

use std::time::{Duration, Instant};

use anyhow::Context;
use wasmpush_tests::{Client, TestEngine, artifacts};

fn version_of(frame: &str) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_str(frame)?;
    Ok(value["version"].as_str().context("no version")?.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let swaps: usize = args.next().map_or(Ok(30), |a| a.parse())?;
    let tick_ms: u64 = args.next().map_or(Ok(200), |a| a.parse())?;
    let engine = TestEngine::start(&[("versioned", artifacts::VERSIONED_V1)], |c| c.tick_ms = tick_ms).await;
    let mut client = Client::connect(&engine.url("/ws/versioned?params=%7B%7D")).await;
    let wait = Duration::from_secs(30);
    client.next_text(wait).await;
    let mut latencies = Vec::with_capacity(swaps);
    for swap in 0..swaps {
        let (build, version) =
            if swap % 2 == 0 { (artifacts::VERSIONED_V2, "2") } else { (artifacts::VERSIONED_V1, "1") };
        let deployed = Instant::now();
        engine.deploy("versioned", build);
        while version_of(&client.next_text(wait).await)? != version {}
        latencies.push(deployed.elapsed());
        // Let the watcher go quiet before the next swap, so each swap is its own burst.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    latencies.sort();
    let size = std::fs::metadata(artifacts::VERSIONED_V2)?.len();
    println!(
        "swaps={swaps} plugin_bytes={size} tick_ms={tick_ms} median_ms={:.1} p90_ms={:.1} max_ms={:.1} min_ms={:.1}",
        latencies[swaps / 2].as_secs_f64() * 1e3,
        latencies[swaps * 9 / 10].as_secs_f64() * 1e3,
        latencies[swaps - 1].as_secs_f64() * 1e3,
        latencies[0].as_secs_f64() * 1e3,
    );
    Ok(())
}
