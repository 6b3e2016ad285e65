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
//! It must cost far less than the engine it measures, on the same cores: connections are opened
//! with tokio, then read by a thread per CPU with plain epoll and frames parsed where they were
//! read (`measure.rs`, `wasmpush_tests::wire`). With tokio-tungstenite the load generator needed about as much
//! CPU as the engine at 19,000 connections, and a late reader shows up as the engine's lateness.
//!
//! With `--idle` the connections send no params at all (so nothing is pushed to them) and just
//! stay open for `--seconds`: what `just bench` measures idle memory with.
//!
//! Usage: `loadgen --url ws://127.0.0.1:9503/ws/quote --connections 1000 --seconds 20`
//! (`--warmup S`, `--update-every S`, `--tick-ms MS`, `--sources IP,IP`, `--threads N` measuring
//! threads, one per CPU by default, `--idle`, `--json`)

mod measure;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use measure::{Client, ConnectionReport, Plan};

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
    threads: usize,
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
        threads: std::thread::available_parallelism().map_or(1, usize::from),
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
            "--threads" => settings.threads = value()?.parse::<usize>()?.max(1),
            other => bail!("unknown argument {other}; see the doc comment of tests/src/bin/loadgen.rs"),
        }
    }
    Ok(settings)
}

fn main() -> anyhow::Result<()> {
    let settings = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (clients, failed, connect_secs) = runtime.block_on(connect_all(&settings))?;
    drop(runtime);
    let measure_from = Instant::now() + Duration::from_secs(settings.warmup_secs);
    let plan = Plan {
        measure_from,
        end: measure_from + Duration::from_secs(settings.seconds),
        update_every: (settings.update_every_secs > 0 && !settings.idle)
            .then(|| Duration::from_secs(settings.update_every_secs)),
        connections: settings.connections,
    };
    let reports = measure_all(clients, plan, settings.threads)?;
    print_summary(&settings, &reports, failed, connect_secs);
    Ok(())
}

/// Connects every client first (then measuring starts: the handshakes' load stays out of the
/// window). Returns the established ones, how many failed and how long it took.
async fn connect_all(settings: &Settings) -> anyhow::Result<(Vec<Client>, u64, f64)> {
    let target: SocketAddr = {
        let authority = settings.url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
        tokio::net::lookup_host(authority).await?.next().context("cannot resolve the url's host")?
    };
    let failed = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(256));
    let start = Instant::now();
    let connects: Vec<_> = (0..settings.connections)
        .map(|i| {
            let settings = settings.clone();
            let failed = failed.clone();
            let connecting = connecting.clone();
            tokio::spawn(async move {
                let source = settings.sources[i % settings.sources.len()];
                let _permit = connecting.acquire_owned().await.ok();
                match connect(&settings, target, source, i).await {
                    Ok(client) => Some(client),
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
    let mut clients = Vec::with_capacity(connects.len());
    for connect in connects {
        clients.extend(connect.await?);
    }
    Ok((clients, failed.load(Ordering::Relaxed), start.elapsed().as_secs_f64()))
}

/// Opens connection `i` from `source` and hands its socket over, non-blocking, for measuring.
async fn connect(settings: &Settings, target: SocketAddr, source: IpAddr, i: usize) -> anyhow::Result<Client> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(target)).await??;
    let rest = settings.url.trim_start_matches("ws://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if settings.idle {
        path.to_owned()
    } else {
        let params = format!(r#"{{"symbol":"SYM{i}","nonce":0}}"#);
        format!("{path}?params={}", wasmpush_tests::percent_encode(&params))
    };
    let read_ahead =
        tokio::time::timeout(Duration::from_secs(30), wasmpush_tests::wire::handshake(&mut stream, host, &path))
            .await??;
    Ok(Client { index: i, stream: stream.into_std()?, read_ahead })
}

/// Measures the clients on `threads` threads, each with its share; the reports of all.
fn measure_all(clients: Vec<Client>, plan: Plan, threads: usize) -> anyhow::Result<Vec<ConnectionReport>> {
    let mut shares: Vec<Vec<Client>> = (0..threads).map(|_| Vec::new()).collect();
    for (n, client) in clients.into_iter().enumerate() {
        shares[n % threads].push(client);
    }
    let handles: Vec<_> =
        shares.into_iter().map(|share| std::thread::spawn(move || measure::measure(share, plan))).collect();
    let mut reports = Vec::new();
    for handle in handles {
        reports.extend(handle.join().map_err(|_| anyhow::anyhow!("a measuring thread panicked"))??);
    }
    Ok(reports)
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
