//! `data_bench`: the live-data benchmark of `just bench`. It seeds `--prices` prices and one
//! `portfolio` account per connection (3 holdings each), opens `--connections` WebSocket clients
//! to `/ws/portfolio`, then publishes `--rate` price updates a second through the publish API, in
//! batches every `--batch-ms`, for `--seconds`. It prints one JSON line:
//!
//! - `latency_p50_ms`, `latency_p99_ms`, `latency_max_ms`: publish acknowledged → the first frame
//!   at a client that shows that publish (a frame arriving before the acknowledgement counts 0);
//! - `from_post_p50_ms`, `from_post_p99_ms`, `from_post_max_ms`: the same from when the publish
//!   was posted (HTTP, the durable commit and the acknowledgement's way back included);
//! - `ack_p50_ms`, `ack_p99_ms` and `first_frame_p50_ms`, `first_frame_p99_ms`, per batch: posted
//!   → acknowledged, and posted → the first frame at any client that shows it (the fan-out's
//!   start). Which comes first tells what "acknowledged" stands for: one engine answers after it
//!   published the batch to its plugins, so its answer travels while it sends the frames; a
//!   cluster node answers once JetStream has the batch, before any node applies it;
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
//! With `--floor` it runs against `push_floor --events` instead, which sends the same frames
//! itself, batch by batch, with nothing to publish: a frame's latency is then from when the floor
//! began its batch (the `sent_us` it carries) to its arrival, the least the kernel's sends and this
//! client's reads cost at this fan-out. `stale` is null.
//!
//! With several `--url`s (comma-separated: the nodes of a cluster) the connections are spread
//! over them in turn and `nodes` gives each node's `latency_p50_ms`, `latency_p99_ms`,
//! `from_post_p99_ms`,
//! `established` and `stale`.
//!
//! Usage: `data_bench --url ws://127.0.0.1:19503/ws/portfolio --publish 127.0.0.1:19505
//! --connections 19000 --seconds 20 [--prices 1000 --rate 200 --batch-ms 100 --tick-ms 0
//! --sources IP,IP --floor]`

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wasmpush_tests::feed::{Feed, holdings, symbol, unix_time};
use wasmpush_tests::http::request;
use wasmpush_tests::wire::{self, Frame, Mask, integers_after};

/// Command-line settings.
struct Settings {
    urls: Vec<String>,
    publish: SocketAddr,
    connections: usize,
    seconds: u64,
    prices: usize,
    rate: usize,
    batch_ms: u64,
    tick_ms: u64,
    sources: Vec<IpAddr>,
    publish_only: bool,
    floor: bool,
}

fn parse_args() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        urls: vec!["ws://127.0.0.1:9503/ws/portfolio".to_owned()],
        publish: SocketAddr::from(([127, 0, 0, 1], 9505)),
        connections: 1000,
        seconds: 20,
        prices: 1000,
        rate: 200,
        batch_ms: 100,
        tick_ms: 0,
        sources: vec![IpAddr::from([127, 0, 0, 1])],
        publish_only: false,
        floor: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => settings.urls = value()?.split(',').map(str::to_owned).collect(),
            "--publish" => settings.publish = value()?.parse()?,
            "--connections" => settings.connections = value()?.parse()?,
            "--seconds" => settings.seconds = value()?.parse()?,
            "--prices" => settings.prices = value()?.parse()?,
            "--rate" => settings.rate = value()?.parse()?,
            "--batch-ms" => settings.batch_ms = value()?.parse()?,
            "--tick-ms" => settings.tick_ms = value()?.parse()?,
            "--sources" => settings.sources = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--publish-only" => settings.publish_only = true,
            "--floor" => settings.floor = true,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(settings)
}

/// What the feeder and the clients share.
struct Shared {
    /// When the run started.
    origin: Instant,
    /// When batch N was posted, in µs since `origin` (0 until then).
    posted_us: Vec<AtomicU64>,
    /// When batch N was acknowledged, in µs since `origin` (0 until then).
    acked_us: Vec<AtomicU64>,
    /// When the first frame showing batch N arrived, in µs since `origin` (`u64::MAX` until then).
    first_us: Vec<AtomicU64>,
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
    for chunk in (0..settings.prices).collect::<Vec<_>>().chunks(1000).filter(|_| !settings.floor) {
        let put: serde_json::Map<String, Value> = chunk.iter().map(|&s| (symbol(s), json!({"price": 0}))).collect();
        post(settings.publish, "prices", json!({ "put": put })).await?;
    }
    for chunk in (0..settings.connections).collect::<Vec<_>>().chunks(1000).filter(|_| !settings.floor) {
        let put: serde_json::Map<String, Value> = chunk
            .iter()
            .map(|&i| {
                let held: serde_json::Map<String, Value> =
                    holdings(i, settings.prices).iter().map(|&s| (symbol(s), json!(1))).collect();
                (format!("a{i}"), json!({ "holdings": held, "public": true }))
            })
            .collect();
        post(settings.publish, "accounts", json!({ "put": put })).await?;
    }
    let batches = (settings.seconds * 1000 / settings.batch_ms) as usize + 1;
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        posted_us: (0..=batches).map(|_| AtomicU64::new(0)).collect(),
        acked_us: (0..=batches).map(|_| AtomicU64::new(0)).collect(),
        first_us: (0..=batches).map(|_| AtomicU64::new(u64::MAX)).collect(),
        frames: AtomicU64::new(0),
        missed_ticks: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });

    // Connect, then read each connection on its own task; its last frame is kept for the check.
    let nodes: Vec<(SocketAddr, &str)> = settings
        .urls
        .iter()
        .map(|url| {
            let host = url.split('/').nth(2).context("url has no host")?.parse()?;
            anyhow::Ok((host, url.splitn(4, '/').nth(3).context("url has no path")?))
        })
        .collect::<Result<_, _>>()?;
    let mut readers = Vec::with_capacity(settings.connections);
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..settings.connections {
        let (host, path) = nodes[i % nodes.len()];
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(settings.sources[i % settings.sources.len()], 0))?;
        let mut stream = socket.connect(host).await.with_context(|| format!("connection {i}"))?;
        let url = format!("/{path}?params=%7B%22account%22%3A%22a{i}%22%7D");
        let read_ahead =
            wire::handshake(&mut stream, &host.to_string(), &url).await.with_context(|| format!("handshake {i}"))?;
        let report = Arc::new(Mutex::new(ClientReport::default()));
        let reader = Reader {
            shared: shared.clone(),
            measuring: measuring.clone(),
            tick: Duration::from_millis(settings.tick_ms),
            floor: settings.floor,
            mask: Mask::new(i as u32),
            report: report.clone(),
            newest: 0,
            last_at: None,
        };
        readers.push((tokio::spawn(reader.run(stream, read_ahead)), report));
    }
    let established = readers.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    measuring.store(true, Ordering::Relaxed);

    // Feed: batch N sets `per_batch` prices to N.
    let per_batch = (settings.rate as u64 * settings.batch_ms / 1000).max(1) as usize;
    let mut feed = Feed::new(settings.prices, per_batch);
    let mut last_price: HashMap<usize, u64> = HashMap::new();
    let mut pace = tokio::time::interval(Duration::from_millis(settings.batch_ms));
    let started = Instant::now();
    let mut batch = 0u64;
    while started.elapsed() < Duration::from_secs(settings.seconds) && (batch as usize) < batches {
        pace.tick().await;
        if settings.floor {
            continue;
        }
        batch += 1;
        let mut put = serde_json::Map::new();
        for moved in feed.next_batch() {
            put.insert(symbol(moved), json!({ "price": batch }));
            last_price.insert(moved, batch);
        }
        let posted = shared.origin.elapsed().as_micros() as u64;
        shared.posted_us[batch as usize].store(posted.max(1), Ordering::Release);
        post(settings.publish, "prices", json!({ "put": put })).await?;
        let acked = shared.origin.elapsed().as_micros() as u64;
        shared.acked_us[batch as usize].store(acked.max(1), Ordering::Release);
    }
    measuring.store(false, Ordering::Relaxed);
    let fed = started.elapsed().as_secs_f64();
    // Let the last changes arrive, then check every client's last frame.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut stale, mut latencies, mut from_post) = (0, Vec::new(), Vec::new());
    // Per node: established, stale, latencies from the acknowledgement and from the post.
    let mut per_node: Vec<(usize, usize, Vec<u64>, Vec<u64>)> = vec![(0, 0, Vec::new(), Vec::new()); nodes.len()];
    for (i, (reader, report)) in readers.into_iter().enumerate() {
        reader.abort();
        let report = std::mem::take(&mut *report.lock().unwrap());
        let node = &mut per_node[i % nodes.len()];
        node.0 += 1;
        node.2.extend(&report.latencies);
        node.3.extend(&report.from_post);
        latencies.extend(report.latencies);
        from_post.extend(report.from_post);
        let frame: Value = serde_json::from_slice(&report.last).unwrap_or_default();
        let fresh = holdings(i, settings.prices).iter().all(|&s| {
            let expected = last_price.get(&s).copied().unwrap_or(0) as f64;
            let positions = frame["positions"].as_array().into_iter().flatten();
            positions.filter(|p| p["symbol"] == symbol(s)).any(|p| p["price"].as_f64() == Some(expected))
        });
        stale += usize::from(!fresh);
        node.1 += usize::from(!fresh);
    }
    latencies.sort_unstable();
    from_post.sort_unstable();
    // Per batch seen by some client: posted → acknowledged, and posted → its first frame.
    let (mut acked_after_post, mut first_after_post): (Vec<u64>, Vec<u64>) = (1..=batch as usize)
        .filter_map(|n| {
            let posted = shared.posted_us[n].load(Ordering::Relaxed);
            let first = shared.first_us[n].load(Ordering::Relaxed);
            let acked = shared.acked_us[n].load(Ordering::Relaxed);
            (first != u64::MAX).then(|| (acked.saturating_sub(posted), first.saturating_sub(posted)))
        })
        .unzip();
    acked_after_post.sort_unstable();
    first_after_post.sort_unstable();
    let quantile = |sorted: &[u64], q: f64| {
        sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied()
    };
    let ms = |us: Option<u64>| us.map_or(Value::Null, |us| json!((us as f64 / 1000.0 * 100.0).round() / 100.0));
    let nodes: Vec<Value> = per_node
        .into_iter()
        .zip(&settings.urls)
        .map(|((established, stale, mut latencies, mut from_post), url)| {
            latencies.sort_unstable();
            from_post.sort_unstable();
            json!({
                "url": url,
                "established": established,
                "stale": stale,
                "latency_p50_ms": ms(quantile(&latencies, 0.5)),
                "latency_p99_ms": ms(quantile(&latencies, 0.99)),
                "from_post_p99_ms": ms(quantile(&from_post, 0.99)),
            })
        })
        .collect();
    let report = json!({
        "nodes": nodes,
        "established": established,
        "dropped": shared.dropped.load(Ordering::Relaxed),
        "batches": batch,
        "updates_per_sec": (batch as usize * per_batch) as f64 / fed,
        "frames": shared.frames.load(Ordering::Relaxed),
        "frames_per_sec": shared.frames.load(Ordering::Relaxed) as f64 / fed,
        "latency_samples": latencies.len(),
        "latency_p50_ms": ms(quantile(&latencies, 0.5)),
        "latency_p99_ms": ms(quantile(&latencies, 0.99)),
        "latency_max_ms": ms(latencies.last().copied()),
        "from_post_p50_ms": ms(quantile(&from_post, 0.5)),
        "from_post_p99_ms": ms(quantile(&from_post, 0.99)),
        "from_post_max_ms": ms(from_post.last().copied()),
        "ack_p50_ms": ms(quantile(&acked_after_post, 0.5)),
        "ack_p99_ms": ms(quantile(&acked_after_post, 0.99)),
        "first_frame_p50_ms": ms(quantile(&first_after_post, 0.5)),
        "first_frame_p99_ms": ms(quantile(&first_after_post, 0.99)),
        "stale": if settings.floor { Value::Null } else { json!(stale) },
        "missed_ticks": shared.missed_ticks.load(Ordering::Relaxed),
    });
    println!("{report}");
    Ok(())
}

/// What one client saw: its latencies in µs (one per batch it first showed: from the publish's
/// acknowledgement, and from its post) and its last frame.
#[derive(Default)]
struct ClientReport {
    latencies: Vec<u64>,
    from_post: Vec<u64>,
    last: Vec<u8>,
}

/// One client's reading: frames parsed in place in its read buffer (as the load generator does),
/// so the client's cost per frame stays small beside the engine's on the same cores.
struct Reader {
    shared: Arc<Shared>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
    tick: Duration,
    /// The server is `push_floor --events`: a frame's latency is from the `sent_us` it carries.
    floor: bool,
    mask: Mask,
    /// What it saw, read by the run's end after it aborted the reader.
    report: Arc<Mutex<ClientReport>>,
    /// The newest batch a frame showed so far.
    newest: u64,
    /// When the last frame came.
    last_at: Option<Instant>,
}

/// Bytes a client reads at once.
const READ_BYTES: usize = 4096;

impl Reader {
    /// Reads until the server closes the connection (the run's end aborts it).
    async fn run(mut self, mut stream: TcpStream, mut pending: Vec<u8>) {
        let mut buffer = vec![0u8; READ_BYTES];
        while let Some(pongs) = self.take_frames(&mut pending) {
            if !pongs.is_empty() && stream.write_all(&pongs).await.is_err() {
                break;
            }
            match stream.read(&mut buffer).await {
                Ok(read) if read > 0 => pending.extend_from_slice(&buffer[..read]),
                _ => break,
            }
        }
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes in the whole frames at the start of `pending`; returns the pongs to send, or `None`
    /// when the server closed the connection or broke the protocol.
    fn take_frames(&mut self, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        let (mut at, mut pongs) = (0, Vec::new());
        while let Some((frame, len)) = wire::next_frame(&pending[at..]).ok()? {
            at += len;
            match frame {
                Frame::Text(text) => self.frame(text, Instant::now()),
                Frame::Ping(payload) => wire::write_pong(&mut pongs, payload, self.mask.key()),
                Frame::Close => return None,
                Frame::Other => {}
            }
        }
        pending.drain(..at);
        Some(pongs)
    }

    /// Counts a text frame received at `now`, and the latency of the batch it shows first.
    fn frame(&mut self, text: &[u8], now: Instant) {
        let shared = &self.shared;
        if self.measuring.load(Ordering::Relaxed) {
            shared.frames.fetch_add(1, Ordering::Relaxed);
            if let Some(previous) = self.last_at.filter(|_| !self.tick.is_zero()) {
                let missed = (now - previous).as_millis() as u64 / self.tick.as_millis() as u64;
                shared.missed_ticks.fetch_add(missed.saturating_sub(1), Ordering::Relaxed);
            }
        }
        self.last_at = Some(now);
        let mut report = self.report.lock().unwrap();
        report.last.clear();
        report.last.extend_from_slice(text);
        let batch = newest_price(text);
        if batch > self.newest {
            self.newest = batch;
            let latencies = if self.floor {
                // The floor sends from the start; only the measured window counts. Its batch
                // begins where a publish would be both posted and acknowledged.
                let measured = self.measuring.load(Ordering::Relaxed);
                sent_us(text)
                    .filter(|_| measured)
                    .map(|sent| [(unix_time().as_micros() as u64).saturating_sub(sent); 2])
            } else {
                let arrived = now.duration_since(shared.origin).as_micros() as u64;
                if let Some(first) = shared.first_us.get(batch as usize) {
                    first.fetch_min(arrived, Ordering::Relaxed);
                }
                // Before the acknowledgement came back (or with it unknown yet): 0.
                let since = |at: &[AtomicU64]| match at.get(batch as usize).map_or(0, |a| a.load(Ordering::Acquire)) {
                    0 => 0,
                    at => arrived.saturating_sub(at),
                };
                Some([since(&shared.acked_us), since(&shared.posted_us)])
            };
            if let Some([from_ack, from_post]) = latencies {
                report.latencies.push(from_ack);
                report.from_post.push(from_post);
            }
        }
    }
}

/// The highest integer `"price"` of a `portfolio` frame: the newest batch it shows.
fn newest_price(frame: &[u8]) -> u64 {
    integers_after(frame, b"\"price\":").max().unwrap_or(0)
}

/// When `push_floor --events` sent a frame, in µs since the Unix epoch.
fn sent_us(frame: &[u8]) -> Option<u64> {
    integers_after(frame, b"\"sent_us\":").next()
}
