//! `push_floor`: the least a server can do to push `just bench`'s frames, to measure what the
//! kernel's sends cost on this machine before any engine work.
//!
//! It accepts WebSocket connections and sends every connection a quote-sized frame every tick,
//! in phases picked and run as the engine's (`wasmpush::phase_clock`), with one
//! non-blocking `sendmsg` per frame from one thread per CPU (the engine's default shard count),
//! each with its share of the connections. Nothing is read after the handshake. There is no
//! plugin, no params, no queue, no metric: with the same load generator run without params
//! updates, the engine's CPU per push divided by this one's is what wasmpush adds over the bare
//! sends. A frame the socket does not take is dropped.
//!
//! With `--events` it is the floor of the live-data run instead: no ticks, but every `--batch-ms`
//! it moves `--rate × batch-ms / 1000` of `--prices` prices (the feed of `data_bench`) and sends
//! each connection that holds one of them (its account comes from the `a{i}` in its URL) one
//! `portfolio`-shaped frame, stamped with when the batch began (`sent_us`). `data_bench --floor`
//! reads them: the latency the kernel's sends alone give that fan-out.
//!
//! Usage: `push_floor --listen 127.0.0.1:19505 [--tick-ms 200 | --events --prices 1000 --rate 200
//! --batch-ms 100]`; it runs until killed and prints `pushes N`, the frames sent so far, once a
//! second.

use std::io::{ErrorKind, IoSlice};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use socket2::SockRef;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use wasmpush::phase_clock::{PHASES, PhaseClock, PhaseLoad};
use wasmpush_tests::feed::{Feed, holdings, symbol, unix_time};

/// Frames sent whole so far; printed to standard output once a second (`pushes N`).
static PUSHES: AtomicU64 = AtomicU64::new(0);

/// One connection, owned by its pushing thread once the handshake is done.
struct Conn {
    socket: TcpStream,
    index: u64,
    seq: u64,
    /// The account its URL names (`a{i}`), for `--events`.
    account: Option<usize>,
}

impl Conn {
    /// Sends the next quote frame. False once the connection is gone.
    fn push(&mut self) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let ts = unix_time().as_millis();
        let body = format!(
            r#"{{"symbol":"SYM{}","seq":{seq},"ts":{ts},"price":{}.{:02},"nonce":0}}"#,
            self.index,
            (seq + 4960) / 100,
            (seq + 4960) % 100
        );
        self.send(&body)
    }

    /// Sends `body` as a text frame with one non-blocking `sendmsg`; dropped if the socket is
    /// full. False once the connection is gone.
    fn send(&mut self, body: &str) -> bool {
        // A final text frame, unmasked; quote-sized bodies are far below 64 KiB.
        let [high, low] = (body.len() as u16).to_be_bytes();
        let header: &[u8] = if body.len() < 126 { &[0x81, low] } else { &[0x81, 126, high, low] };
        let frame = [IoSlice::new(header), IoSlice::new(body.as_bytes())];
        match SockRef::from(&self.socket).send_vectored(&frame) {
            Ok(sent) => {
                if sent == header.len() + body.len() {
                    PUSHES.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Err(err) => matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }
}

/// The feed `--events` sends, batch by batch.
#[derive(Debug, Clone, Copy)]
struct Events {
    prices: usize,
    per_batch: usize,
    every: Duration,
}

fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: push_floor --listen ADDR [--tick-ms MS | --events --prices N --rate N --batch-ms MS]";
    let mut args = std::env::args().skip(1);
    let (mut listen, mut tick_ms, mut events) = ("127.0.0.1:19505".to_owned(), 200u64, false);
    let (mut prices, mut rate, mut batch_ms) = (1000usize, 200usize, 100u64);
    while let Some(flag) = args.next() {
        if flag == "--events" {
            events = true;
            continue;
        }
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--tick-ms" => tick_ms = value.parse()?,
            "--prices" => prices = value.parse()?,
            "--rate" => rate = value.parse()?,
            "--batch-ms" => batch_ms = value.parse()?,
            other => anyhow::bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let events = events.then(|| Events {
        prices,
        per_batch: (rate as u64 * batch_ms / 1000).max(1) as usize,
        every: Duration::from_millis(batch_ms),
    });
    let pushers: Arc<Vec<Pusher>> =
        Arc::new((0..std::thread::available_parallelism().map_or(1, usize::from)).map(|_| Pusher::new()).collect());
    for pusher in 0..pushers.len() {
        let pushers = pushers.clone();
        let tick = Duration::from_millis(tick_ms);
        std::thread::Builder::new().name("push-floor".into()).spawn(move || match events {
            Some(events) => pushers[pusher].push_events_forever(events),
            None => pushers[pusher].push_forever(tick),
        })?;
    }
    std::thread::Builder::new().name("push-count".into()).spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            println!("pushes {}", PUSHES.load(Ordering::Relaxed));
        }
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(accept_forever(&listen, pushers))
}

/// One pushing thread's connections, by phase, and how many each phase holds.
struct Pusher {
    load: Mutex<PhaseLoad>,
    phases: Vec<Mutex<Vec<Conn>>>,
}

impl Pusher {
    fn new() -> Self {
        Pusher { load: Mutex::default(), phases: (0..PHASES).map(|_| Mutex::default()).collect() }
    }

    /// Takes a connection into the phase the engine's rule picks.
    fn add(&self, conn: Conn) {
        let phase = lock(&self.load).join();
        lock(&self.phases[phase as usize]).push(conn);
    }

    /// Sends every connection a frame per tick, phase by phase, waking only for phases that hold
    /// connections, on the engine's phase clock; forgets closed connections.
    fn push_forever(&self, tick: Duration) {
        let mut clock = PhaseClock::starting(Instant::now(), tick);
        let mut phase = 0;
        loop {
            std::thread::sleep(clock.next_run().saturating_duration_since(Instant::now()));
            let mut conns = lock(&self.phases[phase as usize]);
            let before = conns.len();
            conns.retain_mut(Conn::push);
            let mut load = lock(&self.load);
            for _ in conns.len()..before {
                load.leave(phase);
            }
            let steps = load.steps_to_next(phase);
            phase = (phase + steps) % PHASES;
            clock.advance(Instant::now(), tick, steps);
        }
    }
}

impl Pusher {
    /// Every `events.every`, moves the feed's next prices and sends each connection that holds
    /// one of them a `portfolio`-shaped frame stamped with when the batch began; forgets closed
    /// connections.
    fn push_events_forever(&self, events: Events) {
        let mut feed = Feed::new(events.prices, events.per_batch);
        let mut prices = vec![0u64; events.prices];
        let mut next = Instant::now();
        for batch in 1.. {
            next += events.every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            let sent_us = unix_time().as_micros();
            let moved = feed.next_batch();
            for &symbol in &moved {
                prices[symbol] = batch;
            }
            for phase in &self.phases {
                lock(phase).retain_mut(|conn| {
                    let Some(account) = conn.account else { return true };
                    let held = holdings(account, events.prices);
                    !held.iter().any(|symbol| moved.contains(symbol))
                        || conn.send(&portfolio_frame(account, &held, &prices, sent_us))
                });
            }
        }
    }
}

/// What `portfolio` pushes for `account` holding one of each of `held` at `prices`, plus when
/// the batch began.
fn portfolio_frame(account: usize, held: &[usize], prices: &[u64], sent_us: u128) -> String {
    let positions: Vec<String> = held
        .iter()
        .map(|&s| format!(r#"{{"symbol":"{}","qty":1,"price":{},"value":{}}}"#, symbol(s), prices[s], prices[s]))
        .collect();
    let total: u64 = held.iter().map(|&s| prices[s]).sum();
    format!(r#"{{"account":"a{account}","positions":[{}],"total":{total},"sent_us":{sent_us}}}"#, positions.join(","))
}

/// The account `a{i}` named in a `portfolio` URL's params, if any.
fn account_of(path_and_query: &str) -> Option<usize> {
    const KEY: &str = "%22account%22%3A%22a";
    let rest = &path_and_query[path_and_query.find(KEY)? + KEY.len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// Locks `mutex`, poisoned or not: a pusher that panicked leaves consistent data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Accepts connections, opens each WebSocket and hands it to a pusher (in turn). Nothing is read
/// after the handshake: with the load generator's pushes-only runs, clients send nothing, and a
/// closed connection shows as a failed send.
async fn accept_forever(listen: &str, pushers: Arc<Vec<Pusher>>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("push_floor listening on {}", listener.local_addr()?);
    for index in 0.. {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let pushers = pushers.clone();
        tokio::spawn(async move {
            let mut account = None;
            #[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
            let read_url = |request: &Request, response| {
                account = account_of(&request.uri().to_string());
                Ok(response)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(socket, read_url).await else { return };
            let Ok(socket) = ws.into_inner().into_std() else { return };
            pushers[index as usize % pushers.len()].add(Conn { socket, index, seq: 0, account });
        });
    }
    Ok(())
}
