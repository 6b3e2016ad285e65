//! The engine's HTTP listeners (publish API, admin endpoint) at their edges: slow clients, caps,
//! bodies over their limits, and requests a web page could send (regressions of #23.1, #23.4 and
//! #23.10).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmpush_tests::TestEngine;
use wasmpush_tests::http::exchange;

/// Sends `raw` to `addr` and keeps the socket open.
async fn send(addr: SocketAddr, raw: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    stream
}

/// What the engine answers on `stream`, read until it closes (within 10 s).
async fn answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the engine closes the socket")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_slow_client_is_dropped_at_the_timeout_and_does_not_hold_a_stop() {
    let engine = TestEngine::start(&[], |config| config.http_timeout_secs = 1).await;
    for addr in [engine.publish_addr, engine.admin_addr] {
        // A head that never ends: once dropped, the socket reads its end.
        let mut head = send(addr, "PUT /v1/buckets/b/keys/k HTTP/1.1\r\nHost: x\r\n").await;
        let started = Instant::now();
        answer(&mut head).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{addr}: held {:?}", started.elapsed());
    }
    // A body that never ends: 408.
    let mut body = send(
        engine.publish_addr,
        &format!(
            "PUT /v1/buckets/b/keys/k HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 10\r\n\r\n12345",
            engine.publish_addr
        ),
    )
    .await;
    assert!(answer(&mut body).await.starts_with("HTTP/1.1 408"), "a body not sent in time");

    // A stop is not held by a request that does not end.
    let _slow = send(engine.publish_addr, "PUT /v1/buckets/b/keys/k HTTP/1.1\r\nHost: x\r\n").await;
    let _quiet = TcpStream::connect(engine.admin_addr).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(8), engine.stop()).await;
    assert!(stopped.is_ok(), "the engine stopped while slow clients were connected");
}

#[tokio::test]
async fn connections_are_capped_in_all_and_per_address() {
    let engine = TestEngine::start(&[], |config| {
        config.http_max_connections = 8;
        config.http_max_connections_per_ip = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(engine.admin_addr).await.unwrap());
    }
    let mut over = TcpStream::connect(engine.admin_addr).await.unwrap();
    assert!(answer(&mut over).await.starts_with("HTTP/1.1 503"), "a fourth socket from one address");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
    let mut from_another = socket.connect(engine.admin_addr).await.unwrap();
    from_another.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(answer(&mut from_another).await.starts_with("HTTP/1.1 200"), "another address is not limited");
    drop(held);
    // The places come back once their sockets close.
    let mut again = None;
    for _ in 0..50 {
        let (status, _) = wasmpush_tests::http::request(engine.admin_addr, "GET", "/healthz", None, "").await;
        if status == 200 {
            again = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, Some(200));
}

#[tokio::test]
async fn a_body_over_its_limit_is_refused_before_it_is_read() {
    let engine = TestEngine::start(&[], |config| {
        config.max_value_bytes = 1000;
        config.max_batch_bytes = 10_000;
    })
    .await;
    let host = engine.publish_addr;
    // Announced: 413 at once, though not a byte of the 60 MiB was sent.
    let put = format!(
        "PUT /v1/buckets/b/keys/k HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: 62914560\r\n\r\n"
    );
    let mut announced = send(host, &put).await;
    let started = Instant::now();
    assert!(answer(&mut announced).await.starts_with("HTTP/1.1 413"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Not announced (chunked): refused once past the limit.
    let chunk = format!("{:x}\r\n\"{}\"\r\n", 4002, "v".repeat(4000));
    let chunked = format!(
        "PUT /v1/buckets/b/keys/k HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}"
    );
    let mut chunked = send(host, &chunked).await;
    assert!(answer(&mut chunked).await.starts_with("HTTP/1.1 413"), "a PUT is one value: 2 x 1000 + 1024 bytes");
    // A batch has its own limit.
    let batch = format!(
        r#"{{"put":{{{}}}}}"#,
        (0..20).map(|i| format!(r#""k{i}":"{}""#, "v".repeat(900))).collect::<Vec<_>>().join(",")
    );
    let (status, body) = wasmpush_tests::http::request(host, "POST", "/v1/buckets/b", None, &batch).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over 10000 bytes"), "{body}");
}

#[tokio::test]
async fn the_publish_api_refuses_what_a_web_page_could_send() {
    let engine = TestEngine::start(&[], |_| {}).await;
    let addr = engine.publish_addr;
    let put = |host: &str, extra: &str| {
        format!(
            "PUT /v1/buckets/b/keys/k HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}Content-Length: 1\r\n\r\n1"
        )
    };
    let local = addr.to_string();
    let cases = [
        (put(&local, "Content-Type: text/plain\r\n"), 415, "a simple cross-site form or fetch"),
        (put(&local, ""), 415, "no content type"),
        (put(&local, "Content-Type: application/json\r\nOrigin: http://evil.example\r\n"), 403, "a page's Origin"),
        (put(&format!("evil.example:{}", addr.port()), "Content-Type: application/json\r\n"), 403, "a rebound name"),
        (put(&local, "Content-Type: application/json; charset=utf-8\r\n"), 200, "a well-formed write"),
        (put(&format!("localhost:{}", addr.port()), "Content-Type: application/json\r\n"), 200, "localhost"),
    ];
    for (request, status, what) in cases {
        let (got, body) = exchange(addr, &request).await;
        assert_eq!(got, status, "{what}: {body}");
    }
    let (status, body) =
        exchange(addr, &format!("GET /v1/buckets/b/keys/k HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n"))
            .await;
    assert_eq!((status, body.as_str()), (200, "1"), "only the well-formed writes were applied");
}
