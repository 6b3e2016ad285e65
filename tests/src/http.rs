//! A minimal HTTP/1.1 GET for the admin endpoint: enough for tests, with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` from `addr`; returns the body of a 200 response, panics on anything else.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to admin");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read response");
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("admin answered in time");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}
