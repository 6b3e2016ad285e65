//! Requests on the WebSocket port that are not WebSocket upgrades: `GET /` serves the demo page
//! (connect to a plugin, watch frames, edit params); anything else gets a proper HTTP error
//! instead of a dropped connection. Decided by peeking at the request head, so an upgrade is left
//! untouched for the WebSocket handshake.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The demo page.
const DEMO_PAGE: &str = include_str!("assets/demo.html");

/// Largest request head looked at; a longer one is answered 431.
const MAX_HEAD: usize = 8192;

/// What the peeked request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A WebSocket upgrade: hand the stream to the handshake.
    Upgrade,
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

/// Peeks at the request head without consuming it; waits (polling, bounded by `timeout`) until the
/// head is complete. `None` if the client sent nothing complete in time or closed.
pub async fn peek(stream: &TcpStream, timeout: Duration) -> Option<Request> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0; MAX_HEAD];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if read == 0 {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..read]) {
            Ok(httparse::Status::Complete(_)) => return Some(classify(&request)),
            Ok(httparse::Status::Partial) if read == MAX_HEAD => return Some(Request::Malformed(431)),
            Ok(httparse::Status::Partial) => {
                // More of the head is on its way; peeking again at once would spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
            }
            Err(httparse::Error::TooManyHeaders) => return Some(Request::Malformed(431)),
            Err(_) => return Some(Request::Malformed(400)),
        }
    }
}

fn classify(request: &httparse::Request<'_, '_>) -> Request {
    let upgrade = request
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket"));
    if upgrade {
        return Request::Upgrade;
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
        Request::Upgrade => return,
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
