//! [`OutboundQueue`]: one connection's way out to its socket, shared by the connection's task and
//! its shard's worker.
//!
//! A frame is written straight to the socket by whoever produces it — usually the shard, right
//! after the plugin call — with one non-blocking `write`, as long as nothing is waiting before it.
//! No task is woken for a push: that wake-up was the engine's largest cost per push once reading
//! was fixed. What the kernel does not take waits here, and the connection's task writes it when
//! the socket becomes writable again.
//!
//! Waiting data payloads conflate: a payload queued behind another unsent payload replaces it, so
//! a slow client gets the latest data rather than a backlog. Error frames and the WebSocket
//! layer's own bytes (handshake response, pongs, pings, close) never conflate and keep their order.
//! At most [`CAPACITY`] plugin frames and [`PROTOCOL_CAPACITY`] bytes of the WebSocket layer's own
//! wait; more marks the queue overflowed and the connection is closed as a slow consumer. Pushing never blocks its producer: it takes a short,
//! per-connection lock (held for at most one non-blocking `write`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The most plugin frames one connection may have waiting. Conflation keeps at most one data
/// payload between two error frames, so only a client that stops reading while errors pile up
/// fills it.
pub const CAPACITY: usize = 16;

/// The most bytes of the WebSocket layer's own frames (pongs, mostly) that may wait. A client that
/// sends pings but reads nothing fills it and is closed as a slow consumer rather than growing the
/// queue.
pub const PROTOCOL_CAPACITY: usize = 64 * 1024;

/// A frame for the client; its text is copied only if it has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound<'a> {
    /// A plugin payload; a newer one replaces it while it waits.
    Data(&'a str),
    /// An error frame; always delivered, in order.
    Error(&'a str),
}

/// What the connection's task finds when it wakes.
#[derive(Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Bytes wait for the socket to become writable: flush them.
    Bytes,
    /// The client fell too far behind; close it.
    Overflowed,
    /// Its shard gave up on the connection (its plugin keeps faulting on it); everything queued
    /// before that is written first. Close it.
    Evicted,
}

/// Bytes of reason a close frame carries at most: its payload is 125 bytes, 2 of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// `reason` cut to what a close frame carries, at a character boundary.
pub fn close_reason(reason: &str) -> &str {
    &reason[..reason.floor_char_boundary(MAX_CLOSE_REASON)]
}

/// One connection's outbound side.
#[derive(Debug)]
pub struct OutboundQueue {
    socket: Arc<TcpStream>,
    state: Mutex<State>,
    /// Woken when bytes start waiting or the queue overflows.
    ready: Notify,
}

/// The queue's state behind its lock.
#[derive(Debug, Default)]
struct State {
    /// Frames not yet (fully) written, oldest first.
    waiting: VecDeque<WireFrame>,
    /// Bytes of the front frame already written; that frame can no longer be replaced.
    written: usize,
    /// Set when a plugin frame did not fit; the task then closes the connection.
    overflowed: bool,
    /// Set when the connection closes: plugin frames are dropped from then on.
    closing: bool,
    /// Set when the shard gives up on the connection; the task closes it once nothing waits.
    evicted: bool,
}

/// What a waiting frame is, for conflation and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Error,
    /// Bytes the WebSocket layer wrote (handshake, control frames): never dropped or replaced.
    Protocol,
}

/// A frame as it goes on the wire: the WebSocket header, then the body.
#[derive(Debug)]
struct WireFrame {
    kind: Kind,
    header: Header,
    body: Vec<u8>,
}

/// A server-to-client WebSocket frame header: FIN, opcode text, unmasked, and the length.
#[derive(Debug, Clone, Copy, Default)]
struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a final text frame of `len` bytes.
    fn text(len: usize) -> Header {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x81;
        let header_len = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Header { bytes, len: header_len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl WireFrame {
    fn total_len(&self) -> usize {
        usize::from(self.header.len) + self.body.len()
    }

    /// The bytes still to write, after the first `written`.
    fn remaining(&self, written: usize) -> [IoSlice<'_>; 2] {
        let header = self.header.as_slice();
        match written.checked_sub(header.len()) {
            None => [IoSlice::new(&header[written..]), IoSlice::new(&self.body)],
            Some(into_body) => [IoSlice::new(&[]), IoSlice::new(&self.body[into_body..])],
        }
    }
}

impl OutboundQueue {
    /// The outbound side of `socket`.
    pub fn new(socket: Arc<TcpStream>) -> Self {
        OutboundQueue { socket, state: Mutex::default(), ready: Notify::new() }
    }

    /// One non-blocking `sendmsg` of `bytes` for the connection's task; tokio's readiness is
    /// cleared when it would block, so [`Self::poll_flush`] then waits for the socket.
    ///
    /// `sendmsg` rather than `writev`: the profile showed the VFS layer (`vfs_writev`,
    /// `fdget_pos`) at ~9% of the engine's time, which a socket call skips.
    fn send(&self, bytes: &[IoSlice<'_>]) -> io::Result<usize> {
        self.socket.try_io(Interest::WRITABLE, || self.send_now(bytes))
    }

    /// One non-blocking `sendmsg` of `bytes`, bypassing tokio's readiness: the direct write of a
    /// push. Reading the readiness state of a socket no task is polling was ~5% of the engine's
    /// time at 19,000 connections (a cache miss per push). When the socket is full the frame
    /// waits and [`Self::send`] in the task's flush meets the same condition through tokio.
    fn send_now(&self, bytes: &[IoSlice<'_>]) -> io::Result<usize> {
        SockRef::from(&*self.socket).send_vectored(bytes)
    }

    /// Reads the queue's lock and socket so they are in the cache when a push comes soon after:
    /// a shard touches each connection once a tick, so these are cold, and touching a batch's
    /// queues one after another lets the processor fetch them in parallel, where the pushes,
    /// each waiting for its own, fetch them one at a time.
    pub fn warm(&self) {
        use std::os::fd::AsRawFd;
        std::hint::black_box((self.state.is_poisoned(), self.socket.as_raw_fd()));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sends a plugin or engine frame: written at once if nothing waits and the socket takes it,
    /// queued otherwise (a data frame replacing an unsent data frame at the back). Dropped once
    /// the connection is closing.
    pub fn push(&self, frame: Outbound<'_>) {
        let (kind, text) = match frame {
            Outbound::Data(text) => (Kind::Data, text),
            Outbound::Error(text) => (Kind::Error, text),
        };
        let mut state = self.lock();
        if state.closing {
            return;
        }
        if state.waiting.is_empty() {
            return self.write_now(&mut state, kind, Header::text(text.len()), text.as_bytes());
        }
        let frame = WireFrame { kind, header: Header::text(text.len()), body: text.as_bytes().to_vec() };
        let plugin_frames = state.waiting.iter().filter(|waiting| waiting.kind != Kind::Protocol).count();
        let back_replaceable = state.waiting.len() > 1 || state.written == 0;
        match state.waiting.back_mut() {
            Some(last) if last.kind == Kind::Data && frame.kind == Kind::Data && back_replaceable => *last = frame,
            _ if plugin_frames >= CAPACITY => state.overflowed = true,
            _ => state.waiting.push_back(frame),
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Sends bytes the WebSocket layer wrote; they are never replaced, and dropped only when more
    /// than [`PROTOCOL_CAPACITY`] wait (the queue then overflows: the client reads nothing).
    fn push_protocol(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            return self.write_now(&mut state, Kind::Protocol, Header::default(), bytes);
        }
        let frame = WireFrame { kind: Kind::Protocol, header: Header::default(), body: bytes.to_vec() };
        let protocol_bytes: usize =
            state.waiting.iter().filter(|waiting| waiting.kind == Kind::Protocol).map(|w| w.body.len()).sum();
        if protocol_bytes + bytes.len() > PROTOCOL_CAPACITY {
            state.overflowed = true;
        } else {
            state.waiting.push_back(frame);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Writes a frame with one non-blocking write; queues what the socket did not take (copying
    /// the body) and wakes the task to finish it. Called with nothing waiting.
    fn write_now(&self, state: &mut State, kind: Kind, header: Header, body: &[u8]) {
        let total = usize::from(header.len) + body.len();
        let written = match self.send_now(&[IoSlice::new(header.as_slice()), IoSlice::new(body)]) {
            Ok(written) if written == total => return,
            Ok(written) => written,
            // Would block, or failed: the task's flush meets the same condition and handles it.
            Err(_) => 0,
        };
        state.written = written;
        state.waiting.push_back(WireFrame { kind, header, body: body.to_vec() });
        self.ready.notify_one();
    }

    /// Queues a close frame with `code` and `reason` (as [`close_reason`] cuts it), written by the
    /// engine itself: after the client broke the protocol the WebSocket layer sends nothing more.
    pub fn push_close(&self, code: u16, reason: &str) {
        let reason = close_reason(reason);
        let payload_len = 2 + reason.len();
        let mut frame = Vec::with_capacity(2 + payload_len);
        frame.extend_from_slice(&[0x88, payload_len as u8]);
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(reason.as_bytes());
        self.push_protocol(&frame);
    }

    /// Stops plugin frames: the connection is closing. The close frame itself still goes out.
    pub fn close(&self) {
        self.lock().closing = true;
    }

    /// Asks the connection's task to close the connection, once what is queued has been written.
    pub fn evict(&self) {
        self.lock().evicted = true;
        self.ready.notify_one();
    }

    /// Waits until bytes wait for the socket, the queue overflowed or the shard evicted the
    /// connection.
    pub async fn wait(&self) -> Waiting {
        loop {
            {
                let state = self.lock();
                if state.overflowed {
                    return Waiting::Overflowed;
                }
                if !state.waiting.is_empty() {
                    return Waiting::Bytes;
                }
                if state.evicted {
                    return Waiting::Evicted;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Writes every waiting byte, waiting for the socket to become writable as often as needed.
    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Writes waiting bytes until none wait (ready) or the socket is full (pending, woken when
    /// it is writable again).
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut state = self.lock();
            let Some(front) = state.waiting.front() else { return Poll::Ready(Ok(())) };
            let total = front.total_len();
            match self.send(&front.remaining(state.written)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    state.written += written;
                    if state.written == total {
                        state.waiting.pop_front();
                        state.written = 0;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    drop(state);
                    ready!(self.socket.poll_write_ready(cx))?;
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

/// The socket as the WebSocket layer sees it: reads come from the socket, writes go through the
/// connection's [`OutboundQueue`] so they never interleave with frames the shard writes.
#[derive(Debug)]
pub struct SharedSocket {
    socket: Arc<TcpStream>,
    outbound: Arc<OutboundQueue>,
    /// Bytes read from the socket before it was wrapped (the request head), read first.
    prelude: bytes::Bytes,
}

impl SharedSocket {
    /// Wraps an accepted connection whose first bytes, `prelude`, were read already; returns it
    /// and its outbound side.
    pub fn new(socket: TcpStream, prelude: Vec<u8>) -> (SharedSocket, Arc<OutboundQueue>) {
        let socket = Arc::new(socket);
        let outbound = Arc::new(OutboundQueue::new(socket.clone()));
        (SharedSocket { socket, outbound: outbound.clone(), prelude: prelude.into() }, outbound)
    }
}

impl AsyncRead for SharedSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prelude.is_empty() {
            let take = self.prelude.len().min(buf.remaining());
            buf.put_slice(&self.prelude.split_to(take));
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.socket.poll_read_ready(cx))?;
            match self.socket.try_read(buf.initialize_unfilled()) {
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

impl AsyncWrite for SharedSocket {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.outbound.push_protocol(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbound.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when its last owner (this, or the shard's queue) drops it.
        self.outbound.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    /// A connected pair: the server side wrapped, the client side plain.
    async fn pair() -> (SharedSocket, Arc<OutboundQueue>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (socket, outbound) = SharedSocket::new(server, Vec::new());
        (socket, outbound, client)
    }

    /// Reads exactly `len` bytes.
    async fn read(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut bytes)).await.unwrap().unwrap();
        bytes
    }

    /// An error frame large enough that a few fill a loopback socket.
    fn big() -> String {
        "b".repeat(256 * 1024)
    }

    /// Pushes big error frames until one stays (partly) queued; returns how many were pushed.
    fn fill_socket(outbound: &OutboundQueue) -> usize {
        let mut pushed = 0;
        while outbound.lock().waiting.is_empty() {
            outbound.push(Outbound::Error(&big()));
            pushed += 1;
        }
        pushed
    }

    /// The frame tungstenite itself would write.
    fn tungstenite_frame(text: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        Frame::message(text.as_bytes().to_vec(), OpCode::Data(Data::Text), true).format(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn headers_match_tungstenite_for_every_length_class() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            let frame = WireFrame { kind: Kind::Data, header: Header::text(len), body: text.clone().into_bytes() };
            let ours: Vec<u8> = frame.remaining(0).iter().flat_map(|slice| slice.to_vec()).collect();
            assert_eq!(ours, tungstenite_frame(&text), "length {len}");
        }
    }

    #[tokio::test]
    async fn a_push_reaches_the_client_without_the_task() {
        let (_socket, outbound, mut client) = pair().await;
        outbound.socket.writable().await.unwrap();
        outbound.push(Outbound::Data("hello"));
        assert!(outbound.lock().waiting.is_empty(), "written at once");
        assert_eq!(read(&mut client, 7).await, tungstenite_frame("hello"));
    }

    #[tokio::test]
    async fn a_full_socket_queues_conflates_data_keeps_errors_then_flushes_in_order() {
        let (_socket, outbound, mut client) = pair().await;
        let sent = fill_socket(&outbound);
        outbound.push(Outbound::Data("1"));
        outbound.push(Outbound::Data("2"));
        outbound.push(Outbound::Error("e"));
        outbound.push(Outbound::Data("3"));
        outbound.push(Outbound::Data("4"));
        assert_eq!(outbound.wait().await, Waiting::Bytes);
        let reader = tokio::spawn(async move {
            let big_frame = tungstenite_frame(&big());
            for _ in 0..sent {
                assert_eq!(read(&mut client, big_frame.len()).await, big_frame);
            }
            let mut rest = Vec::new();
            for text in ["2", "e", "4"] {
                rest.extend(read(&mut client, 3).await);
                assert_eq!(&rest[rest.len() - 3..], tungstenite_frame(text), "{text}");
            }
        });
        tokio::time::timeout(Duration::from_secs(5), outbound.flush()).await.unwrap().unwrap();
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_overflows_the_queue() {
        let (_socket, outbound, _client) = pair().await;
        for _ in 0..=CAPACITY + 64 {
            outbound.push(Outbound::Error(&big()));
        }
        assert_eq!(outbound.wait().await, Waiting::Overflowed);
    }

    #[tokio::test]
    async fn pongs_to_a_client_that_reads_nothing_overflow_the_queue() {
        let (_socket, outbound, _client) = pair().await;
        fill_socket(&outbound);
        let pong = [0x8a, 125].into_iter().chain([0; 125]).collect::<Vec<u8>>();
        for _ in 0..PROTOCOL_CAPACITY / pong.len() + 1 {
            outbound.push_protocol(&pong);
        }
        assert_eq!(outbound.wait().await, Waiting::Overflowed);
    }

    #[tokio::test]
    async fn nothing_is_pushed_after_close_but_protocol_bytes() {
        let (_socket, outbound, mut client) = pair().await;
        outbound.socket.writable().await.unwrap();
        outbound.close();
        outbound.push(Outbound::Data("late"));
        outbound.push_protocol(b"\x88\x00");
        assert_eq!(read(&mut client, 2).await, b"\x88\x00");
    }
}
