//! The CLI's HTTP client: one request to the engine's admin endpoint or publish API, with
//! timeouts, over a plain TCP socket (both are HTTP/1.1 on loopback or a private network).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

/// How long the engine has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long the engine has to answer a deploy: it compiles the build first.
pub(super) const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `method path` to `addr` with `body` (JSON) and, if given, a bearer `token`; returns the
/// status code and the body.
pub(super) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let json = Body { content_type: "application/json", bytes: body.as_bytes() };
    request_with(addr, method, path, token, json, TIMEOUT)
}

/// A request's body and what it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Body<'a> {
    /// Its `Content-Type`.
    pub(super) content_type: &'a str,
    /// The bytes.
    pub(super) bytes: &'a [u8],
}

/// [`request`] with any `body`, answered within `timeout`.
pub(super) fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Body<'_>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: {}\r\n\
         Content-Length: {}\r\n\r\n",
        body.content_type,
        body.bytes.len()
    )?;
    stream.write_all(body.bytes)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").context("not an HTTP response")?;
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).context("no HTTP status")?;
    Ok((status, body.to_owned()))
}
