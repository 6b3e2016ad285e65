//! The measuring phase: the established connections read on a few threads, each with its own
//! level-triggered epoll set, one `recv` per readiness (a short read means the socket is drained;
//! if not, epoll reports it again), frames parsed in place.
//!
//! A connection that sends updates sends its first one `i / N` of the update interval after the
//! warm-up (connection `i` of `N`), so updates arrive evenly spread, as from independent clients,
//! not as one burst per interval.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use wasmpush_tests::wire::{self, Frame, Mask};

/// What one connection saw after the warm-up.
#[derive(Debug, Default)]
pub struct ConnectionReport {
    pub frames: u64,
    pub gaps_us: Vec<u32>,
    pub update_latencies_us: Vec<u32>,
    pub dropped: bool,
}

/// The window and the updates of a measurement.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Frames before this are warm-up: not counted.
    pub measure_from: Instant,
    /// When the connections are closed.
    pub end: Instant,
    /// How often each connection sends new params; `None`: never.
    pub update_every: Option<Duration>,
    /// Connections in the whole run (spreads the updates).
    pub connections: usize,
}

/// An established connection: its index in the run, its socket (non-blocking) and the bytes the
/// handshake read past the response.
pub struct Client {
    pub index: usize,
    pub stream: TcpStream,
    pub read_ahead: Vec<u8>,
}

/// One connection under measurement.
struct Conn {
    client: Client,
    /// Bytes of a frame not yet whole.
    partial: Vec<u8>,
    /// Bytes the socket did not take yet.
    unsent: Vec<u8>,
    /// Epoll reports writability too: `unsent` is waiting for room.
    waiting_to_write: bool,
    last_frame: Option<Instant>,
    nonce: u64,
    /// The nonce sent last and when, until a frame carries it.
    pending_update: Option<(u64, Instant)>,
    /// Closed (by the server, or broken); no longer polled.
    done: bool,
    report: ConnectionReport,
}

/// Events taken from epoll per wait.
const EVENTS: usize = 512;
/// Bytes read per `recv`.
const READ_BUFFER: usize = 64 * 1024;

/// Measures `clients` on one thread until `plan.end`; returns their reports in the same order.
pub fn measure(clients: Vec<Client>, plan: Plan) -> anyhow::Result<Vec<ConnectionReport>> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let mut conns: Vec<Conn> = clients.into_iter().map(Conn::new).collect();
    let mut mask = Mask::new(0x9E37_79B9);
    let mut buffer = vec![0u8; READ_BUFFER];
    for (token, conn) in conns.iter_mut().enumerate() {
        epoll.add(conn.client.stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token as u64))?;
        // What the handshake read past its response is the start of the first frames.
        let read_ahead = std::mem::take(&mut conn.client.read_ahead);
        if !conn.received(&read_ahead, Instant::now(), &plan, &mut mask) {
            conn.drop_connection(&epoll);
        }
    }
    let mut updates = Updates::new(&conns, &plan);
    let mut events = vec![EpollEvent::empty(); EVENTS];
    loop {
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        updates.send_due(&mut conns, now, &plan, &mut mask, &epoll)?;
        let wake = updates.due(&conns, &plan).unwrap_or(plan.end).min(plan.end);
        let timeout_ms = wake.saturating_duration_since(now).as_millis().clamp(1, 100) as u16;
        let ready = match epoll.wait(&mut events, timeout_ms) {
            Ok(ready) => ready,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        };
        for event in &events[..ready] {
            let conn = &mut conns[event.data() as usize];
            if conn.done {
                continue;
            }
            if event.events().contains(EpollFlags::EPOLLOUT) {
                conn.flush(&epoll, event.data())?;
            }
            if event.events().intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                match conn.client.stream.read(&mut buffer) {
                    Ok(0) => conn.drop_connection(&epoll),
                    Ok(read) if conn.received(&buffer[..read], Instant::now(), &plan, &mut mask) => {
                        conn.flush(&epoll, event.data())?;
                    }
                    Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Ok(_) | Err(_) => conn.drop_connection(&epoll),
                }
            }
        }
    }
    for conn in conns.iter_mut().filter(|conn| !conn.done) {
        let mut close = Vec::with_capacity(8);
        wire::write_close(&mut close, mask.key());
        let _ = conn.client.stream.write(&close);
    }
    Ok(conns.into_iter().map(|conn| conn.report).collect())
}

impl Conn {
    fn new(client: Client) -> Self {
        Conn {
            client,
            partial: Vec::new(),
            unsent: Vec::new(),
            waiting_to_write: false,
            last_frame: None,
            nonce: 0,
            pending_update: None,
            done: false,
            report: ConnectionReport::default(),
        }
    }

    /// Takes in bytes read at `now`: records every whole frame, answers pings, keeps the rest.
    /// False if the server closed the connection or sent something that is not WebSocket.
    fn received(&mut self, bytes: &[u8], now: Instant, plan: &Plan, mask: &mut Mask) -> bool {
        let mut data = std::mem::take(&mut self.partial);
        let bytes = if data.is_empty() {
            bytes
        } else {
            data.extend_from_slice(bytes);
            &data[..]
        };
        let mut at = 0;
        loop {
            match wire::next_frame(&bytes[at..]) {
                Ok(Some((frame, len))) => {
                    at += len;
                    match frame {
                        Frame::Text(text) => self.frame(text, now, plan),
                        Frame::Ping(payload) => wire::write_pong(&mut self.unsent, payload, mask.key()),
                        Frame::Close => return false,
                        Frame::Other => {}
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        self.partial = bytes[at..].to_vec();
        true
    }

    /// Counts a text frame received at `now`.
    fn frame(&mut self, text: &[u8], now: Instant, plan: &Plan) {
        if now >= plan.measure_from {
            self.report.frames += 1;
            if let Some(previous) = self.last_frame.filter(|p| *p >= plan.measure_from) {
                self.report.gaps_us.push((now - previous).as_micros() as u32);
            }
        }
        self.last_frame = Some(now);
        if let Some((expected, sent)) = self.pending_update
            && nonce_of(text) == Some(expected)
        {
            self.report.update_latencies_us.push((now - sent).as_micros() as u32);
            self.pending_update = None;
        }
    }

    /// Sends the next params update.
    fn send_update(&mut self, now: Instant, mask: &mut Mask) {
        self.nonce += 1;
        let params = format!(r#"{{"symbol":"SYM{}","nonce":{}}}"#, self.nonce % 100, self.nonce);
        wire::write_text(&mut self.unsent, &params, mask.key());
        self.pending_update = Some((self.nonce, now));
    }

    /// Writes what is unsent; asks epoll for writability while some stays.
    fn flush(&mut self, epoll: &Epoll, token: u64) -> anyhow::Result<()> {
        if self.unsent.is_empty() && !self.waiting_to_write {
            return Ok(());
        }
        match self.client.stream.write(&self.unsent) {
            Ok(written) => drop(self.unsent.drain(..written)),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => {
                self.drop_connection(epoll);
                return Ok(());
            }
        }
        let waiting = !self.unsent.is_empty();
        if waiting != self.waiting_to_write {
            let interest = if waiting { EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT } else { EpollFlags::EPOLLIN };
            epoll.modify(self.client.stream.as_fd(), &mut EpollEvent::new(interest, token))?;
            self.waiting_to_write = waiting;
        }
        Ok(())
    }

    /// The server closed or broke the connection.
    fn drop_connection(&mut self, epoll: &Epoll) {
        self.report.dropped = true;
        self.done = true;
        let _ = epoll.delete(self.client.stream.as_fd());
    }
}

/// The thread's connections' update schedule: they are in index order, so their offsets in the
/// interval increase, and a cursor walks them round after round.
struct Updates {
    cursor: usize,
    round: u32,
    enabled: bool,
}

impl Updates {
    fn new(conns: &[Conn], plan: &Plan) -> Self {
        Updates { cursor: 0, round: 0, enabled: plan.update_every.is_some() && !conns.is_empty() }
    }

    /// When the update under the cursor is due.
    fn due(&self, conns: &[Conn], plan: &Plan) -> Option<Instant> {
        let every = plan.update_every.filter(|_| self.enabled)?;
        let index = conns[self.cursor].client.index;
        let spread = every.mul_f64(index as f64 / plan.connections as f64);
        Some(plan.measure_from + spread + every * self.round)
    }

    /// Sends every update due by `now`.
    fn send_due(
        &mut self,
        conns: &mut [Conn],
        now: Instant,
        plan: &Plan,
        mask: &mut Mask,
        epoll: &Epoll,
    ) -> anyhow::Result<()> {
        while let Some(due) = self.due(conns, plan)
            && due <= now
        {
            let conn = &mut conns[self.cursor];
            if !conn.done {
                conn.send_update(now, mask);
                conn.flush(epoll, self.cursor as u64)?;
            }
            self.cursor += 1;
            if self.cursor == conns.len() {
                self.cursor = 0;
                self.round += 1;
            }
        }
        Ok(())
    }
}

/// The integer `nonce` of a quote frame.
fn nonce_of(frame: &[u8]) -> Option<u64> {
    wire::integers_after(frame, b"\"nonce\":").last()
}
