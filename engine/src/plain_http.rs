//! The request head on the WebSocket port, and the requests that are not WebSocket upgrades:
//! `GET /` serves the demo page (connect to a plugin, watch frames, edit params) and
//! `GET /wasmpush.js` the JavaScript client it imports (`clients/js`); anything else
//! gets a proper HTTP error instead of a dropped connection; a socket over a limit gets 503 at
//! once. The head is read (waiting for each new piece, never polling) and handed on with an
//! upgrade, so the WebSocket handshake reads it first.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The demo page.
const DEMO_PAGE: &str = include_str!("assets/demo.html");

/// The JavaScript client (`clients/js`), which the demo page imports and any page may.
const JS_CLIENT: &str = include_str!("../../clients/js/wasmpush.js");

/// Largest request head looked at; a longer one is answered 431.
const MAX_HEAD: usize = 8192;

/// What the peeked request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade: hand the stream to the handshake.
    Upgrade {
        /// Its `X-Forwarded-For`, if it has one (believed only from a trusted proxy).
        forwarded_for: Option<String>,
    },
    /// A plain HTTP request, answered here.
    Plain {
        /// Its method.
        method: String,
        /// Its path, without the query.
        path: String,
    },
    /// Not HTTP, or a head too large: answered with 400 / 431.
    Malformed(u16),
}

/// Reads the request head, waiting (up to `timeout`) for each new piece the client sends; returns
/// what it asks for and every byte read (the head, and anything after it), which the WebSocket
/// handshake must read first. `None` if the client sent nothing complete in time or closed.
pub async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Option<(Request, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let room = (MAX_HEAD - buf.len()) as u64;
        let read = tokio::time::timeout_at(deadline, (&mut *stream).take(room).read_buf(&mut buf)).await.ok()?.ok()?;
        if read == 0 {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => classify(&request),
            Ok(httparse::Status::Partial) if buf.len() == MAX_HEAD => Request::Malformed(431),
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => Request::Malformed(431),
            Err(_) => Request::Malformed(400),
        };
        return Some((head, buf));
    }
}

/// Answers a socket over a limit with 503 and `reason`, at once and without waiting on the client:
/// what it sent so far is discarded, the answer written if the socket takes it, the socket closed.
pub fn refuse_at_once(stream: TcpStream, reason: &str) {
    // Unread bytes would turn the close into a reset that can destroy the answer in flight. At
    // most a request head's worth: a client that keeps sending cannot hold the accept loop here.
    let mut discard = [0; 1024];
    for _ in 0..MAX_HEAD / discard.len() {
        if !matches!(stream.try_read(&mut discard), Ok(read) if read > 0) {
            break;
        }
    }
    let body = format!("{reason}\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

fn classify(request: &httparse::Request<'_, '_>) -> Request {
    let upgrade = request
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        let forwarded_for = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>();
        // Several such headers make one list, in order.
        let forwarded_for = (!forwarded_for.is_empty()).then(|| forwarded_for.join(","));
        return Request::Upgrade { forwarded_for };
    }
    let path = request.path.unwrap_or("/");
    Request::Plain {
        method: request.method.unwrap_or_default().to_owned(),
        path: path.split('?').next().unwrap_or("/").to_owned(),
    }
}

/// Answers a request that is not an upgrade, then closes.
pub async fn respond(mut stream: TcpStream, request: &Request) {
    let (status, content_type, body) = match request {
        Request::Plain { method, path } if path == "/" && (method == "GET" || method == "HEAD") => {
            (200, "text/html; charset=utf-8", DEMO_PAGE.to_owned())
        }
        Request::Plain { method, path } if path == "/wasmpush.js" && (method == "GET" || method == "HEAD") => {
            (200, "text/javascript; charset=utf-8", JS_CLIENT.to_owned())
        }
        Request::Plain { path, .. } if path == "/" || path == "/ws" || path.starts_with("/ws/") => (
            426,
            "text/plain; charset=utf-8",
            format!("{path} is a WebSocket endpoint: connect with a WebSocket client (ws://HOST{path}?params=…)\n"),
        ),
        Request::Plain { path, .. } => (
            404,
            "text/plain; charset=utf-8",
            format!("no such path `{path}`: WebSocket clients connect to /ws/PLUGIN\n"),
        ),
        Request::Malformed(status) => (*status, "text/plain; charset=utf-8", "malformed HTTP request\n".to_owned()),
        Request::Upgrade { .. } => return,
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        _ => "Request Header Fields Too Large",
    };
    let upgrade =
        if status == 426 { "Upgrade: websocket\r\nConnection: Upgrade, close\r\n" } else { "Connection: close\r\n" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{upgrade}\r\n",
        body.len()
    );
    let is_head = matches!(request, Request::Plain { method, .. } if method == "HEAD");
    let _ = stream.write_all(head.as_bytes()).await;
    if !is_head {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}
