//! `data_bench`: the live-data benchmark of `just bench`. It seeds `--prices` prices and one
//! `portfolio` account per connection (3 holdings each), opens `--connections` WebSocket clients
//! to `/ws/portfolio`, then publishes `--rate` price updates a second through the publish API, in
//! batches every `--batch-ms`, for `--seconds`. It prints one JSON line:
//!
//! - `latency_p50_ms`, `latency_p99_ms`, `latency_max_ms`: publish acknowledged → the first frame
//!   at a client that shows that publish (a frame arriving before the acknowledgement counts 0);
//! - `frames`, `dropped` (connections that ended), `established`;
//! - `stale`: clients whose last frame, once the feed stopped, does not show the last published
//!   price of every holding (a lost change);
//! - `missed_ticks` (with `--tick-ms`, for engines that tick): ticks missing between frames.
//!
//! A price published in batch N is N (integer), so a frame tells which batch it reflects.
//!
//! With `--publish-only` it opens no connection and measures the publish API alone: 4 publishers
//! posting batches of 500 price updates back to back for `--seconds`; it prints `updates_per_sec`
//! (each acknowledged, so on disk).
//!
//! Usage: `data_bench --url ws://127.0.0.1:19503/ws/portfolio --publish 127.0.0.1:19505
//! --connections 19000 --seconds 20 [--prices 1000 --rate 200 --batch-ms 100 --tick-ms 0
//! --sources IP,IP]`

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use wasmpush_tests::http::request;

/// Command-line settings.
struct Settings {
    url: String,
    publish: SocketAddr,
    connections: usize,
    seconds: u64,
    prices: usize,
    rate: usize,
    batch_ms: u64,
    tick_ms: u64,
    sources: Vec<IpAddr>,
    publish_only: bool,
}

fn parse_args() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        url: "ws://127.0.0.1:9503/ws/portfolio".to_owned(),
        publish: SocketAddr::from(([127, 0, 0, 1], 9505)),
        connections: 1000,
        seconds: 20,
        prices: 1000,
        rate: 200,
        batch_ms: 100,
        tick_ms: 0,
        sources: vec![IpAddr::from([127, 0, 0, 1])],
        publish_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => settings.url = value()?,
            "--publish" => settings.publish = value()?.parse()?,
            "--connections" => settings.connections = value()?.parse()?,
            "--seconds" => settings.seconds = value()?.parse()?,
            "--prices" => settings.prices = value()?.parse()?,
            "--rate" => settings.rate = value()?.parse()?,
            "--batch-ms" => settings.batch_ms = value()?.parse()?,
            "--tick-ms" => settings.tick_ms = value()?.parse()?,
            "--sources" => settings.sources = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--publish-only" => settings.publish_only = true,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(settings)
}

/// The symbols account `i` holds.
fn holdings(i: usize, prices: usize) -> [usize; 3] {
    [i % prices, (i * 7 + 1) % prices, (i * 13 + 2) % prices]
}

fn symbol(index: usize) -> String {
    format!("S{index:04}")
}

/// What the feeder and the clients share.
struct Shared {
    /// When the run started.
    origin: Instant,
    /// When batch N was acknowledged, in µs since `origin` (0 until then).
    acked_us: Vec<AtomicU64>,
    /// Latencies in µs, one per (client, batch) first seen.
    latencies: Mutex<Vec<u64>>,
    /// Frames received.
    frames: AtomicU64,
    /// Ticks missing between two frames of a client.
    missed_ticks: AtomicU64,
    /// Connections that ended during the run.
    dropped: AtomicU64,
}

/// POSTs `body` to `/v1/buckets/{bucket}`; fails unless the API answers 200.
async fn post(publish: SocketAddr, bucket: &str, body: Value) -> anyhow::Result<()> {
    let (status, answer) = request(publish, "POST", &format!("/v1/buckets/{bucket}"), None, &body.to_string()).await;
    anyhow::ensure!(status == 200, "POST {bucket}: {status} {answer}");
    Ok(())
}

/// Publishers posting batches back to back in `--publish-only`.
const PUBLISHERS: usize = 4;

/// Updates in one batch in `--publish-only`.
const PUBLISH_BATCH: usize = 500;

/// The publish API alone: updates acknowledged per second, from [`PUBLISHERS`] concurrent
/// publishers.
async fn publish_only(settings: &Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(settings.seconds);
    let publishers = (0..PUBLISHERS).map(|p| {
        let (publish, prices) = (settings.publish, settings.prices);
        tokio::spawn(async move {
            let mut updates = 0u64;
            let mut round = 0u64;
            while Instant::now() < deadline {
                round += 1;
                let put: serde_json::Map<String, Value> = (0..PUBLISH_BATCH)
                    .map(|i| (symbol((p * PUBLISH_BATCH + i) % prices), json!({ "price": round })))
                    .collect();
                post(publish, "prices", json!({ "put": put })).await?;
                updates += PUBLISH_BATCH as u64;
            }
            anyhow::Ok(updates)
        })
    });
    let mut updates = 0;
    for publisher in publishers.collect::<Vec<_>>() {
        updates += publisher.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", json!({ "updates": updates, "seconds": seconds, "updates_per_sec": updates as f64 / seconds }));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = parse_args()?;
    if settings.publish_only {
        return publish_only(&settings).await;
    }
    // Seed: every price at batch 0, one account per connection.
    for chunk in (0..settings.prices).collect::<Vec<_>>().chunks(5000) {
        let put: serde_json::Map<String, Value> = chunk.iter().map(|&s| (symbol(s), json!({"price": 0}))).collect();
        post(settings.publish, "prices", json!({ "put": put })).await?;
    }
    for chunk in (0..settings.connections).collect::<Vec<_>>().chunks(5000) {
        let put: serde_json::Map<String, Value> = chunk
            .iter()
            .map(|&i| {
                let held: serde_json::Map<String, Value> =
                    holdings(i, settings.prices).iter().map(|&s| (symbol(s), json!(1))).collect();
                (format!("a{i}"), json!({ "holdings": held }))
            })
            .collect();
        post(settings.publish, "accounts", json!({ "put": put })).await?;
    }
    let batches = (settings.seconds * 1000 / settings.batch_ms) as usize + 1;
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        acked_us: (0..=batches).map(|_| AtomicU64::new(0)).collect(),
        latencies: Mutex::new(Vec::new()),
        frames: AtomicU64::new(0),
        missed_ticks: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });

    // Connect, then read each connection on its own task; its last frame is kept for the check.
    let host: SocketAddr = settings.url.split('/').nth(2).context("url has no host")?.parse()?;
    let mut readers = Vec::with_capacity(settings.connections);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..settings.connections {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(settings.sources[i % settings.sources.len()], 0))?;
        let stream = socket.connect(host).await.with_context(|| format!("connection {i}"))?;
        let url = format!("{}?params=%7B%22account%22%3A%22a{i}%22%7D", settings.url);
        let (mut ws, _) =
            tokio_tungstenite::client_async(url, stream).await.with_context(|| format!("handshake {i}"))?;
        let (shared, mut stopped, measuring) = (shared.clone(), stopped.clone(), measuring.clone());
        let tick = Duration::from_millis(settings.tick_ms);
        readers.push(tokio::spawn(async move {
            let (mut last, mut newest, mut last_at): (Option<String>, u64, Option<Instant>) = (None, 0, None);
            loop {
                let message = tokio::select! {
                    message = ws.next() => message,
                    _ = stopped.changed() => break,
                };
                let Some(Ok(Message::Text(text))) = message else {
                    if !matches!(message, Some(Ok(Message::Ping(_) | Message::Pong(_)))) {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    continue;
                };
                let now = Instant::now();
                if measuring.load(Ordering::Relaxed) {
                    shared.frames.fetch_add(1, Ordering::Relaxed);
                    if let Some(previous) = last_at.filter(|_| !tick.is_zero()) {
                        let missed = (now - previous).as_millis() as u64 / tick.as_millis() as u64;
                        shared.missed_ticks.fetch_add(missed.saturating_sub(1), Ordering::Relaxed);
                    }
                }
                last_at = Some(now);
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                let shows = frame["positions"].as_array().into_iter().flatten().filter_map(|p| p["price"].as_f64());
                let batch = shows.fold(0.0, f64::max) as u64;
                if batch > newest {
                    newest = batch;
                    let acked = shared.acked_us.get(batch as usize).map_or(0, |a| a.load(Ordering::Acquire));
                    let arrived = now.duration_since(shared.origin).as_micros() as u64;
                    // Before the acknowledgement came back (or with it unknown yet): 0.
                    let latency = if acked == 0 { 0 } else { arrived.saturating_sub(acked) };
                    shared.latencies.lock().unwrap().push(latency);
                }
                last = Some(text.to_string());
            }
            last
        }));
    }
    let established = readers.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(true, Ordering::Relaxed);

    // Feed: batch N sets `per_batch` prices to N.
    let per_batch = (settings.rate as u64 * settings.batch_ms / 1000).max(1) as usize;
    let mut last_price: HashMap<usize, u64> = HashMap::new();
    let mut pace = tokio::time::interval(Duration::from_millis(settings.batch_ms));
    let mut next_symbol = 0usize;
    let started = Instant::now();
    let mut batch = 0u64;
    while started.elapsed() < Duration::from_secs(settings.seconds) && (batch as usize) < batches {
        pace.tick().await;
        batch += 1;
        let mut put = serde_json::Map::new();
        for _ in 0..per_batch {
            // Spread over the symbols: a stride coprime with any count of this kind.
            next_symbol = (next_symbol + 389) % settings.prices;
            put.insert(symbol(next_symbol), json!({ "price": batch }));
            last_price.insert(next_symbol, batch);
        }
        post(settings.publish, "prices", json!({ "put": put })).await?;
        let acked = shared.origin.elapsed().as_micros() as u64;
        shared.acked_us[batch as usize].store(acked.max(1), Ordering::Release);
    }
    measuring.store(false, Ordering::Relaxed);
    let fed = started.elapsed().as_secs_f64();
    // Let the last changes arrive, then check every client's last frame.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true)?;
    let mut stale = 0;
    for (i, reader) in readers.into_iter().enumerate() {
        let last = reader.await?.unwrap_or_default();
        let frame: Value = serde_json::from_str(&last).unwrap_or_default();
        let fresh = holdings(i, settings.prices).iter().all(|&s| {
            let expected = last_price.get(&s).copied().unwrap_or(0) as f64;
            let positions = frame["positions"].as_array().into_iter().flatten();
            positions.filter(|p| p["symbol"] == symbol(s)).any(|p| p["price"].as_f64() == Some(expected))
        });
        stale += usize::from(!fresh);
    }
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().unwrap());
    latencies.sort_unstable();
    let quantile =
        |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |us: Option<&u64>| us.map_or(Value::Null, |us| json!((*us as f64 / 1000.0 * 100.0).round() / 100.0));
    let report = json!({
        "established": established,
        "dropped": shared.dropped.load(Ordering::Relaxed),
        "batches": batch,
        "updates_per_sec": (batch as usize * per_batch) as f64 / fed,
        "frames": shared.frames.load(Ordering::Relaxed),
        "frames_per_sec": shared.frames.load(Ordering::Relaxed) as f64 / fed,
        "latency_samples": latencies.len(),
        "latency_p50_ms": ms(quantile(0.5)),
        "latency_p99_ms": ms(quantile(0.99)),
        "latency_max_ms": ms(latencies.last()),
        "stale": stale,
        "missed_ticks": shared.missed_ticks.load(Ordering::Relaxed),
    });
    println!("{report}");
    Ok(())
}
