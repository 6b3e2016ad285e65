//! The client side of the WebSocket wire, written by hand: the opening handshake, reading the
//! server's frames out of a byte buffer and writing client frames, including ones a well-behaved
//! client never sends (for the hostile-framing tests).
//!
//! The load generator reads through it rather than through tungstenite, so a frame costs a parse
//! of its header in the buffer it was read into (no per-message allocation, no copy, no second
//! read to learn the socket is drained): it shares the machine with the engine it measures.

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// The largest handshake response read before giving up.
const MAX_RESPONSE: usize = 8192;

/// Opens the WebSocket on `stream` for `path_and_query` at `host`. Returns the bytes the server
/// sent after its response: the start of its first frames.
pub async fn handshake(stream: &mut TcpStream, host: &str, path_and_query: &str) -> anyhow::Result<Vec<u8>> {
    let key = generate_key();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(512);
    let head_len = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        ensure!(response.len() < MAX_RESPONSE, "handshake response over {MAX_RESPONSE} bytes");
        let mut chunk = [0u8; 1024];
        let read = stream.read(&mut chunk).await?;
        ensure!(read > 0, "connection closed during the handshake");
        response.extend_from_slice(&chunk[..read]);
    };
    let head = std::str::from_utf8(&response[..head_len]).context("handshake response is not UTF-8")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("handshake refused: {status}");
    }
    let accept = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-accept").then(|| value.trim())
    });
    ensure!(accept == Some(derive_accept_key(key.as_bytes()).as_str()), "wrong Sec-WebSocket-Accept: {accept:?}");
    Ok(response.split_off(head_len))
}

/// Opcode of a continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping.
pub const PING: u8 = 0x9;
/// Opcode of a pong.
pub const PONG: u8 = 0xA;

/// A frame the server sent, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text frame's payload.
    Text(&'a [u8]),
    /// A ping's payload.
    Ping(&'a [u8]),
    /// A close frame.
    Close,
    /// Binary, pong or continuation: not something the engine sends the load generator.
    Other,
}

/// The first whole frame of `bytes` and the bytes it spans, or `None` if `bytes` holds only part
/// of one. A masked frame (servers must not mask) is an error.
pub fn next_frame(bytes: &[u8]) -> anyhow::Result<Option<(Frame<'_>, usize)>> {
    let [first, second, rest @ ..] = bytes else { return Ok(None) };
    ensure!(second & 0x80 == 0, "the server sent a masked frame");
    let (len, header) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(len) => (u64::from_be_bytes(len.try_into()?), 10),
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    let end = usize::try_from(len).ok().and_then(|len| len.checked_add(header)).context("frame too large")?;
    let Some(payload) = bytes.get(header..end) else { return Ok(None) };
    let frame = match first & 0x0F {
        TEXT => Frame::Text(payload),
        PING => Frame::Ping(payload),
        CLOSE => Frame::Close,
        _ => Frame::Other,
    };
    Ok(Some((frame, end)))
}

/// Appends a client frame header: the FIN bit, `opcode`, a payload length of `len` (whatever the
/// payload that follows really is) and the masking key.
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: u64, mask: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
}

/// A final client frame of `opcode` carrying `payload`, masked with `mask`, appended to `out`.
pub fn write_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    write_header(out, true, opcode, payload.len() as u64, mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
}

/// A text frame.
pub fn write_text(out: &mut Vec<u8>, text: &str, mask: [u8; 4]) {
    write_masked(out, TEXT, text.as_bytes(), mask);
}

/// The answer to a ping carrying `payload`.
pub fn write_pong(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    write_masked(out, PONG, payload, mask);
}

/// A close frame with status 1000 (normal closure).
pub fn write_close(out: &mut Vec<u8>, mask: [u8; 4]) {
    write_masked(out, CLOSE, &1000u16.to_be_bytes(), mask);
}

/// The integers that follow each `key` in a frame's JSON text (`b"\"nonce\":"`, say), in order,
/// read without parsing the JSON: what the load generators need of a frame, at a fraction of a
/// parse's cost on cores they share with the engine. An occurrence not followed by digits is
/// skipped.
pub fn integers_after<'a>(text: &'a [u8], key: &'a [u8]) -> impl Iterator<Item = u64> + 'a {
    let mut rest = text;
    std::iter::from_fn(move || {
        let at = rest.windows(key.len()).position(|w| w == key)?;
        rest = &rest[at + key.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        Some(std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse().ok()))
    })
    .flatten()
}

/// Masking keys for the frames a client sends (xorshift: varied, not secret).
#[derive(Debug)]
pub struct Mask(u32);

impl Mask {
    /// Keys seeded from `seed` (any value; zero is made non-zero).
    pub fn new(seed: u32) -> Self {
        Mask(seed | 1)
    }

    /// The next key.
    pub fn key(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0.to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_integers_after_a_key_are_found_in_order_and_garbage_is_skipped() {
        let frame = br#"{"positions":[{"price":3},{"price":x},{"price":12}],"nonce":7}"#;
        assert_eq!(integers_after(frame, br#""price":"#).collect::<Vec<_>>(), [3, 12]);
        assert_eq!(integers_after(frame, br#""nonce":"#).last(), Some(7));
        assert_eq!(integers_after(frame, br#""seq":"#).next(), None);
    }

    #[test]
    fn frames_are_read_whole_or_not_at_all() {
        let mut bytes = vec![0x81, 5];
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&[0x89, 1, b'p', 0x88, 0]);
        let (frame, len) = next_frame(&bytes).unwrap().unwrap();
        assert_eq!((frame, len), (Frame::Text(b"hello"), 7));
        assert_eq!(next_frame(&bytes[7..]).unwrap(), Some((Frame::Ping(b"p"), 3)));
        assert_eq!(next_frame(&bytes[10..]).unwrap(), Some((Frame::Close, 2)));
        for cut in 0..7 {
            assert_eq!(next_frame(&bytes[..cut]).unwrap(), None, "{cut} bytes");
        }
    }

    #[test]
    fn extended_lengths_are_read() {
        let mut medium = vec![0x81, 126, 0x01, 0x00];
        medium.resize(4 + 256, b'x');
        assert_eq!(next_frame(&medium).unwrap().map(|(_, len)| len), Some(260));
        assert_eq!(next_frame(&medium[..259]).unwrap(), None);
        let mut large = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        large.resize(10 + 65_536, 0);
        assert_eq!(next_frame(&large).unwrap(), Some((Frame::Other, 65_546)));
    }

    #[test]
    fn a_masked_or_absurd_server_frame_is_an_error() {
        assert!(next_frame(&[0x81, 0x85, 1, 2, 3, 4, 0]).is_err());
        assert!(next_frame(&[0x81, 127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn client_frames_are_masked() {
        let mask = [1, 2, 3, 4];
        let mut out = Vec::new();
        write_text(&mut out, "hi!", mask);
        assert_eq!(out, [0x81, 0x83, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2, b'!' ^ 3]);
        let mut long = Vec::new();
        write_masked(&mut long, TEXT, &[0; 300], mask);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 0x01, 0x2C]);
        assert_eq!(long.len(), 4 + 4 + 300);
        let mut close = Vec::new();
        write_close(&mut close, [0; 4]);
        assert_eq!(close, [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
    }
}
