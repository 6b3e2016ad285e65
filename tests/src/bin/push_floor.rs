//! `push_floor`: the least a server can do to push `just bench`'s frames, to measure what the
//! kernel's sends cost on this machine before any engine work.
//!
//! It accepts WebSocket connections and sends every connection a quote-sized frame every tick,
//! spread over 20 phases like the engine, with one non-blocking `sendmsg` per frame from one
//! thread per CPU (the engine's default shard count), each with its share of the connections. What clients send is read and ignored. There is no plugin, no params, no queue, no
//! metric: with the same load generator run without params updates, the engine's CPU per push
//! divided by this one's is what wasmpush adds over the bare sends. A frame the socket does not
//! take is dropped.
//!
//! Usage: `push_floor --listen 127.0.0.1:19505 [--tick-ms 200]`; it runs until killed and prints
//! `pushes N`, the frames sent so far, once a second.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::StreamExt;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Phases a tick is spread over, as in the engine.
const PHASES: usize = 20;

/// Frames sent whole so far; printed to standard output once a second (`pushes N`).
static PUSHES: AtomicU64 = AtomicU64::new(0);

/// One connection, shared by its reading task and the pushing thread.
struct Conn {
    socket: Arc<TcpStream>,
    index: u64,
    seq: AtomicU64,
    closed: AtomicBool,
}

impl Conn {
    /// Sends the next frame with one non-blocking `sendmsg`; dropped if the socket is full.
    fn push(&self) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
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
        if SockRef::from(&*self.socket).send_vectored(&frame).is_ok_and(|sent| sent == header.len() + body.len()) {
            PUSHES.fetch_add(1, Ordering::Relaxed);
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
    let pushers = std::thread::available_parallelism().map_or(1, usize::from);
    // Pusher `p` owns slots `p * PHASES ..`, one per phase.
    let slots: Arc<Vec<Mutex<Vec<Arc<Conn>>>>> = Arc::new((0..pushers * PHASES).map(|_| Mutex::default()).collect());
    for pusher in 0..pushers {
        let slots = slots.clone();
        let tick = Duration::from_millis(tick_ms);
        std::thread::Builder::new()
            .name("push-floor".into())
            .spawn(move || push_forever(&slots[pusher * PHASES..][..PHASES], tick))?;
    }
    std::thread::Builder::new().name("push-count".into()).spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            println!("pushes {}", PUSHES.load(Ordering::Relaxed));
        }
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(accept_forever(&listen, slots, pushers))
}

/// Sends every connection a frame per tick, phase by phase; forgets closed connections.
fn push_forever(phases: &[Mutex<Vec<Arc<Conn>>>], tick: Duration) {
    let phase_length = tick / PHASES as u32;
    let mut next = Instant::now();
    for phase in (0..PHASES).cycle() {
        // As in the engine, a late phase carries no debt: the next one does not run early.
        next = (next + phase_length).max(Instant::now());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let mut conns = phases[phase].lock().unwrap_or_else(|poison| poison.into_inner());
        conns.retain(|conn| !conn.closed.load(Ordering::Relaxed));
        for conn in conns.iter() {
            conn.push();
        }
    }
}

/// Accepts connections and hands each to a pusher (in turn) and a phase (in turn).
async fn accept_forever(listen: &str, slots: Arc<Vec<Mutex<Vec<Arc<Conn>>>>>, pushers: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("push_floor listening on {}", listener.local_addr()?);
    for index in 0.. {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let slots = slots.clone();
        tokio::spawn(async move {
            let socket = Arc::new(socket);
            let Ok(mut ws) = tokio_tungstenite::accept_async(Shared(socket.clone())).await else { return };
            let conn = Arc::new(Conn { socket, index, seq: AtomicU64::new(0), closed: AtomicBool::new(false) });
            let (pusher, turn) = (index as usize % pushers, index as usize / pushers);
            let slot = &slots[pusher * PHASES + turn % PHASES];
            slot.lock().unwrap_or_else(|poison| poison.into_inner()).push(conn.clone());
            while let Some(Ok(_)) = ws.next().await {}
            conn.closed.store(true, Ordering::Relaxed);
        });
    }
    Ok(())
}

/// The socket as the WebSocket layer sees it (handshake, reads), while the pushing thread
/// writes frames to it.
struct Shared(Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(bytes) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
