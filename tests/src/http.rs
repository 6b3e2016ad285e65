//! A minimal HTTP/1.1 client for the admin endpoint, the publish API and the plain-HTTP answers of
//! the WebSocket port: enough for tests, with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` (a whole request) to `addr`; returns the status code and the body.
pub async fn exchange(addr: SocketAddr, raw: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw.as_bytes()).await.expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read response");
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("answered in time");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {response}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, body.to_owned())
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
