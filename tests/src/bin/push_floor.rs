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
//! Usage: `push_floor --listen 127.0.0.1:19505 [--tick-ms 200]`; it runs until killed and prints
//! `pushes N`, the frames sent so far, once a second.

use std::io::{ErrorKind, IoSlice};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use socket2::SockRef;
use tokio::net::TcpListener;
use wasmpush::phase_clock::{PHASES, PhaseClock, PhaseLoad};

/// Frames sent whole so far; printed to standard output once a second (`pushes N`).
static PUSHES: AtomicU64 = AtomicU64::new(0);

/// One connection, owned by its pushing thread once the handshake is done.
struct Conn {
    socket: TcpStream,
    index: u64,
    seq: u64,
}

impl Conn {
    /// Sends the next frame with one non-blocking `sendmsg`; dropped if the socket is full.
    /// False once the connection is gone.
    fn push(&mut self) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
        let body = format!(
            r#"{{"symbol":"SYM{}","seq":{seq},"ts":{ts},"price":{}.{:02},"nonce":0}}"#,
            self.index,
            (seq + 4960) / 100,
            (seq + 4960) % 100
        );
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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut tick_ms) = ("127.0.0.1:19505".to_owned(), 200u64);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--tick-ms" => tick_ms = value.parse()?,
            other => anyhow::bail!("unknown argument {other}; usage: push_floor --listen ADDR [--tick-ms MS]"),
        }
    }
    let pushers: Arc<Vec<Pusher>> =
        Arc::new((0..std::thread::available_parallelism().map_or(1, usize::from)).map(|_| Pusher::new()).collect());
    for pusher in 0..pushers.len() {
        let pushers = pushers.clone();
        let tick = Duration::from_millis(tick_ms);
        std::thread::Builder::new().name("push-floor".into()).spawn(move || pushers[pusher].push_forever(tick))?;
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
            let Ok(ws) = tokio_tungstenite::accept_async(socket).await else { return };
            let Ok(socket) = ws.into_inner().into_std() else { return };
            pushers[index as usize % pushers.len()].add(Conn { socket, index, seq: 0 });
        });
    }
    Ok(())
}
