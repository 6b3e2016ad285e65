//! `just bench-console`: what the operator console costs the engine. The release engine (beside
//! this binary) serves 100 plugins (copies of `quote`) to 2,000 clients in this process, spread
//! over them. Alternating ten-second windows with no console open and with one open (a reader of
//! `/console/stream`, as a browser's): the engine's CPU seconds per second (all threads, from
//! `/proc`), and the time its console sampler reports spending (`/metrics`), which it spends
//! whether a console is open or not (the ten minutes of history).
//!
//! Usage: `console_bench [CONNECTIONS] [ROUNDS]`. Absolute times are this machine's; the ratio of
//! the windows is what carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpush_tests::{Client, ReleaseEngine, artifacts, percent_encode};

/// Plugins served.
const PLUGINS: usize = 100;

/// One window's length.
const WINDOW: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(2000, |n| n.parse().expect("CONNECTIONS: a number"));
    let rounds: usize = args.next().map_or(3, |n| n.parse().expect("ROUNDS: a number"));
    let names: Vec<String> = (0..PLUGINS).map(|n| format!("p{n:02}")).collect();
    let plugins: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), artifacts::QUOTE)).collect();
    let started = Instant::now();
    let engine = ReleaseEngine::start(19703, &plugins, "", "/ws/p00").await;
    eprintln!("{PLUGINS} plugins served after {:.1} s", started.elapsed().as_secs_f64());
    for n in 0..connections {
        let params = percent_encode(&format!(r#"{{"symbol":"S{n}"}}"#));
        let mut client = Client::connect(&engine.url(&format!("/ws/{}?params={params}", names[n % PLUGINS]))).await;
        tokio::spawn(async move { while client.next_within(Duration::from_secs(5)).await.is_some() {} });
    }
    eprintln!("{connections} clients connected after {:.1} s", started.elapsed().as_secs_f64());
    // Start-up's threads (compiling the plugins) are gone, every client has its cadence.
    tokio::time::sleep(WINDOW).await;

    println!("window   console  engine CPU s/s  sampler µs/s  stream bytes/s");
    let (mut closed, mut open) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 + 1 {
        let console = round % 2 == 1;
        let streamed = Arc::new(AtomicU64::new(0));
        let reader = console.then(|| tokio::spawn(read_stream(engine.admin_addr, streamed.clone())));
        let (cpu, sampled) = (engine.cpu_secs(None), sampler_us(&engine).await);
        tokio::time::sleep(WINDOW).await;
        let cpu = (engine.cpu_secs(None) - cpu) / WINDOW.as_secs_f64();
        let sampled = (sampler_us(&engine).await - sampled) as f64 / WINDOW.as_secs_f64();
        reader.inspect(tokio::task::JoinHandle::abort);
        let bytes = streamed.load(Ordering::Relaxed) as f64 / WINDOW.as_secs_f64();
        let shown = if console { "open" } else { "closed" };
        println!("{round:>6}   {shown:>7}  {cpu:>14.3}  {sampled:>12.0}  {bytes:>14.0}");
        if console { open.push(cpu) } else { closed.push(cpu) }
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    println!(
        "engine CPU with a console open ÷ with none: {:.3} ({} connections, {PLUGINS} plugins)",
        mean(&open) / mean(&closed),
        connections
    );
    // The clients' tasks end with the process, which does not wait for them.
    drop(engine);
    std::process::exit(0);
}

/// Microseconds the engine's console sampler spent so far.
async fn sampler_us(engine: &ReleaseEngine) -> u64 {
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    let line = metrics.lines().find(|line| line.starts_with("wasmpush_console_sampling_microseconds_total ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Reads `/console/stream` as a browser would, until aborted, counting the bytes in `streamed`.
async fn read_stream(admin: std::net::SocketAddr, streamed: Arc<AtomicU64>) {
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!("GET /console/stream HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        streamed.fetch_add(read as u64, Ordering::Relaxed);
    }
}
