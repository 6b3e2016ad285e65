//! A minimal HTTP/1.1 client for the admin endpoint, the publish API and the plain-HTTP answers of
//! the WebSocket port: enough for tests, with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` (a whole request) to `addr`; returns the status code and the body.
pub async fn exchange(addr: SocketAddr, raw: &str) -> (u16, String) {
    let response = response(addr, raw).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {response}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, body.to_owned())
}

/// Sends `raw` and returns the whole response, head and body, as the server wrote it.
pub async fn response(addr: SocketAddr, raw: &str) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw.as_bytes()).await.expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read response");
        response
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("answered in time")
}

/// Sends `method path` with `body` (JSON) and, if given, `Authorization: Bearer token`; returns
/// the status code and the body.
pub async fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    exchange(addr, &(head + body)).await
}

/// `GET path` from `addr`; returns the body of a 200 response, panics on anything else.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    let (status, body) =
        exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Reads the server-sent events of `GET path` from `addr` (as HTTP/1.0, so the body is not
/// chunked) until `wanted` holds for one, given its event name and data, for up to `within`;
/// returns that event's data.
pub async fn until_event(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    wanted: impl Fn(&str, &str) -> bool,
) -> Option<String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.expect("send");
        let mut text = String::new();
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
            text.push_str(&String::from_utf8_lossy(&buffer[..read]));
            // Events end with a blank line; keep an unfinished one for the next read.
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                let name = event.lines().find_map(|line| line.strip_prefix("event: ")).unwrap_or("message");
                let data: Vec<&str> = event.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
                if wanted(name, &data.join("\n")) {
                    return Some(data.join("\n"));
                }
            }
        }
        None
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}
