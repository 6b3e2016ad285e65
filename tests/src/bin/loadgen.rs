//! `loadgen`: opens N WebSocket connections to a wasmpush engine, measures what they receive and
//! prints a table (and, with `--json`, one JSON line).
//!
//! Each connection sends `{"symbol":"SYM<i>","nonce":0}` as its URL params; with
//! `--update-every S` it sends new params with the next nonce every S seconds (the connections'
//! updates evenly spread over the interval) and measures the time until the first frame carrying
//! that nonce. Gaps are measured between consecutive frames of one connection, once every
//! connection is established and the warm-up has passed. Connections come from `--sources`
//! addresses in turn, so more than one address's port range can be used.
//!
//! With `--idle` the connections send no params at all (so nothing is pushed to them) and just
//! stay open for `--seconds`: what `just bench` measures idle memory with.
//!
//! Usage: `loadgen --url ws://127.0.0.1:9503/ws/quote --connections 1000 --seconds 20`

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Command-line settings.
#[derive(Debug, Clone)]
struct Settings {
    url: String,
    connections: usize,
    seconds: u64,
    warmup_secs: u64,
    update_every_secs: u64,
    tick_ms: u64,
    sources: Vec<IpAddr>,
    json: bool,
    idle: bool,
}

/// What one connection saw after the warm-up.
#[derive(Debug, Default)]
struct ConnectionReport {
    frames: u64,
    gaps_us: Vec<u32>,
    update_latencies_us: Vec<u32>,
    dropped: bool,
}

fn parse_args() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        url: "ws://127.0.0.1:9503/ws/quote".to_owned(),
        connections: 1000,
        seconds: 20,
        warmup_secs: 3,
        update_every_secs: 0,
        tick_ms: 200,
        sources: vec![IpAddr::from([127, 0, 0, 1])],
        json: false,
        idle: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => settings.url = value()?,
            "--connections" => settings.connections = value()?.parse()?,
            "--seconds" => settings.seconds = value()?.parse()?,
            "--warmup" => settings.warmup_secs = value()?.parse()?,
            "--update-every" => settings.update_every_secs = value()?.parse()?,
            "--tick-ms" => settings.tick_ms = value()?.parse()?,
            "--sources" => settings.sources = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--json" => settings.json = true,
            "--idle" => settings.idle = true,
            other => bail!("unknown argument {other}; see the doc comment of tests/src/bin/loadgen.rs"),
        }
    }
    Ok(settings)
}

fn main() -> anyhow::Result<()> {
    let settings = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let target: SocketAddr = {
        let authority = settings.url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
        tokio::net::lookup_host(authority).await?.next().context("cannot resolve the url's host")?
    };
    let failed = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    // Connect every client first, then measure: the handshakes' load stays out of the window.
    let connects: Vec<_> = (0..settings.connections)
        .map(|i| {
            let settings = settings.clone();
            let failed = failed.clone();
            let connecting = connecting.clone();
            tokio::spawn(async move {
                let source = settings.sources[i % settings.sources.len()];
                let _permit = connecting.acquire_owned().await.ok();
                match connect(&settings, target, source, i).await {
                    Ok(ws) => Some((i, ws)),
                    Err(err) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("loadgen: connection {i} failed: {err:#}");
                        }
                        None
                    }
                }
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(connects.len());
    for connect in connects {
        sockets.extend(connect.await?);
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let measure_from = Instant::now() + Duration::from_secs(settings.warmup_secs);
    let end = measure_from + Duration::from_secs(settings.seconds);
    let measures: Vec<_> = sockets
        .into_iter()
        .map(|(i, ws)| {
            let settings = settings.clone();
            tokio::spawn(async move { measure(ws, &settings, i, measure_from, end).await })
        })
        .collect();
    let mut reports = Vec::with_capacity(measures.len());
    for measure in measures {
        reports.push(measure.await?);
    }
    print_summary(&settings, &reports, failed.load(Ordering::Relaxed), connect_secs);
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(settings: &Settings, target: SocketAddr, source: IpAddr, i: usize) -> anyhow::Result<Socket> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(target)).await??;
    let url = if settings.idle {
        settings.url.clone()
    } else {
        let params = format!(r#"{{"symbol":"SYM{i}","nonce":0}}"#);
        format!("{}?params={}", settings.url, wasmpush_tests::percent_encode(&params))
    };
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_config())),
    )
    .await??;
    Ok(ws)
}

/// A small read buffer: tungstenite zero-fills the whole buffer before each read, so the default
/// 128 KiB would make the load generator, not the engine, the bottleneck.
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

/// Reads frames until `end`, sending params updates if asked.
///
/// Connection `i` of N sends its first update `i / N` of the update interval after the warm-up,
/// so updates arrive evenly spread, as from independent clients, not as one burst per interval.
async fn measure(
    mut ws: Socket,
    settings: &Settings,
    i: usize,
    measure_from: Instant,
    end: Instant,
) -> ConnectionReport {
    let mut report = ConnectionReport::default();
    let mut last_frame: Option<Instant> = None;
    let update_every = Duration::from_secs(settings.update_every_secs.max(1));
    let spread = update_every.mul_f64(i as f64 / settings.connections as f64);
    let first_update = (settings.update_every_secs > 0 && !settings.idle).then(|| measure_from + spread);
    let mut nonce = 0u64;
    let mut pending_update: Option<(u64, Instant)> = None;
    // One timer for the connection's life, reset only when the next wake-up changes: a fresh
    // timer per frame would cost the load generator more than reading the frame.
    let wake = tokio::time::sleep_until(first_update.map_or(end, |at| at.min(end)).into());
    tokio::pin!(wake);
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let now = Instant::now();
                    if now >= measure_from {
                        report.frames += 1;
                        if let Some(previous) = last_frame.filter(|p| *p >= measure_from) {
                            report.gaps_us.push((now - previous).as_micros() as u32);
                        }
                    }
                    last_frame = Some(now);
                    if let Some((expected, sent)) = pending_update
                        && nonce_of(text.as_str()) == Some(expected)
                    {
                        report.update_latencies_us.push((now - sent).as_micros() as u32);
                        pending_update = None;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    report.dropped = true;
                    return report;
                }
            },
            () = &mut wake => {
                let now = Instant::now();
                if now >= end {
                    let _ = ws.close(None).await;
                    return report;
                }
                nonce += 1;
                let params = format!(r#"{{"symbol":"SYM{}","nonce":{nonce}}}"#, nonce % 100);
                if ws.send(Message::text(params)).await.is_err() {
                    report.dropped = true;
                    return report;
                }
                pending_update = Some((nonce, now));
                wake.as_mut().reset((now + update_every).min(end).into());
            }
        }
    }
}

/// The integer `nonce` of a quote frame.
fn nonce_of(frame: &str) -> Option<u64> {
    let at = frame.rfind("\"nonce\":")? + 8;
    frame[at..].trim_end_matches('}').parse().ok()
}

/// The `q` quantile of sorted values, in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

fn print_summary(settings: &Settings, reports: &[ConnectionReport], failed: u64, connect_secs: f64) {
    let frames: u64 = reports.iter().map(|r| r.frames).sum();
    let dropped = reports.iter().filter(|r| r.dropped).count();
    let mut gaps: Vec<u32> = reports.iter().flat_map(|r| r.gaps_us.iter().copied()).collect();
    gaps.sort_unstable();
    let mut latencies: Vec<u32> = reports.iter().flat_map(|r| r.update_latencies_us.iter().copied()).collect();
    latencies.sort_unstable();
    let missed_threshold = (settings.tick_ms * 1500) as u32;
    let missed = gaps.iter().filter(|&&g| g > missed_threshold).count();
    let seconds = settings.seconds as f64;
    let expected = reports.len() as f64 * seconds * 1000.0 / settings.tick_ms as f64;
    let row = serde_json::json!({
        "connections": settings.connections,
        "established": reports.len(),
        "failed": failed,
        "connect_secs": (connect_secs * 10.0).round() / 10.0,
        "dropped": dropped,
        "seconds": settings.seconds,
        "pushes": frames,
        "pushes_per_sec": (frames as f64 / seconds).round(),
        "expected_ratio": if expected > 0.0 { frames as f64 / expected } else { 0.0 },
        "gap_p50_ms": quantile_ms(&gaps, 0.5),
        "gap_p99_ms": quantile_ms(&gaps, 0.99),
        "gap_max_ms": quantile_ms(&gaps, 1.0),
        "missed_ticks": missed,
        "updates": latencies.len(),
        "update_p50_ms": quantile_ms(&latencies, 0.5),
        "update_p99_ms": quantile_ms(&latencies, 0.99),
    });
    println!("| metric | value |\n|---|---|");
    for (key, value) in row.as_object().unwrap() {
        println!("| {key} | {value} |");
    }
    if settings.json {
        println!("{row}");
    }
}
