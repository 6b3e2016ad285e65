//! URLs: plugins by path, the default plugin, refusals with a clear reason.

use tokio_tungstenite::tungstenite::Error as WsError;
use wasmpush_tests::{Client, Frame};

use crate::util::{SOON, encode, engine};

/// Connects to `path` expecting a refusal; returns the HTTP status and body.
async fn refused(engine: &wasmpush_tests::TestEngine, path: &str) -> (u16, String) {
    match Client::try_connect(&engine.url(path)).await {
        Err(WsError::Http(response)) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("{path}: expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("{path}: expected a refusal, the handshake succeeded"),
    }
}

#[tokio::test]
async fn unknown_plugins_and_paths_are_refused_with_404() {
    let engine = engine().await;
    let (status, body) = refused(&engine, "/ws/nosuch").await;
    assert_eq!(status, 404);
    assert!(body.contains("unknown plugin `nosuch`"), "{body}");
    let (status, body) = refused(&engine, "/elsewhere").await;
    assert_eq!(status, 404);
    assert!(body.contains("no such path"), "{body}");
}

#[tokio::test]
async fn a_client_offering_wasmpush_refusals_is_refused_with_a_close_code_and_the_reason() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let engine = engine().await;
    let offered = |path: &str| {
        let mut request = engine.url(path).into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "wasmpush, wasmpush.refusals".parse().unwrap());
        request
    };
    for (path, code, reason) in
        [("/ws/nosuch", 4404, "unknown plugin `nosuch`"), ("/ws/quote?params=%5B1%5D", 4400, "must be a JSON object")]
    {
        let (mut client, response) = Client::try_connect_with(offered(path)).await.expect("an upgrade");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "wasmpush.refusals",
            "the answer says it is a refusal"
        );
        match client.closing_frame(SOON).await {
            Some(Frame::Close(Some((closed, why)))) => {
                assert_eq!(closed, code, "{path}");
                assert!(why.contains(reason), "{path}: {why}");
            }
            other => panic!("{path}: expected a close {code}, got {other:?}"),
        }
    }
    // Served as usual otherwise, answering `wasmpush`.
    let (mut client, response) = Client::try_connect_with(offered("/ws/quote?params=%7B%7D")).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "wasmpush");
    assert!(client.next_text(SOON).await.contains("\"seq\":1"));
}

#[tokio::test]
async fn bad_url_params_are_refused_with_400() {
    let engine = engine().await;
    let (status, body) = refused(&engine, &format!("/ws/quote?params={}", encode("[1]"))).await;
    assert_eq!(status, 400);
    assert!(body.contains("must be a JSON object"), "{body}");
    let (status, body) = refused(&engine, &format!("/ws/quote?params={}", encode("{oops"))).await;
    assert_eq!(status, 400);
    assert!(body.contains("not valid JSON"), "{body}");
}

#[tokio::test]
async fn two_plugins_are_served_side_by_side() {
    let engine = engine().await;
    let mut quote = Client::connect(&engine.url(&format!("/?params={}", encode(r#"{"symbol":"AAPL"}"#)))).await;
    let mut clock =
        Client::connect(&engine.url(&format!("/ws/clock?params={}", encode(r#"{"offset_minutes":60}"#)))).await;
    for _ in 0..3 {
        let q: serde_json::Value = serde_json::from_str(&quote.next_text(SOON).await).unwrap();
        assert_eq!(q["symbol"], "AAPL");
        let c: serde_json::Value = serde_json::from_str(&clock.next_text(SOON).await).unwrap();
        assert!(c["local_ms"].as_i64().is_some(), "{c}");
    }
    // A business error of one plugin does not touch the other.
    clock.send_text(r#"{"offset_minutes":5000}"#).await;
    let error = clock.next_error_frame(SOON).await;
    assert_eq!(error, r#"{"code":0,"msg":"offset_minutes 5000 is out of range","data":[]}"#);
    assert!(quote.next_text(SOON).await.contains("AAPL"));
}

#[tokio::test]
async fn over_the_connection_limits_the_handshake_is_refused_with_503() {
    let engine = wasmpush_tests::TestEngine::start(&[("quote", wasmpush_tests::artifacts::QUOTE)], |config| {
        config.max_connections = 2;
    })
    .await;
    let url = engine.url(&format!("/ws/quote?params={}", encode("{}")));
    let mut first = Client::connect_retrying(&url, SOON).await;
    let _second = Client::connect_retrying(&url, SOON).await;
    let (status, body) = refused(&engine, "/ws/quote").await;
    assert_eq!((status, body.trim()), (503, "server is at its connection limit"));
    assert!(first.next_text(SOON).await.contains("NONE"), "admitted connections are served");
    first.close().await;
    let mut third = Client::connect_retrying(&url, SOON).await;
    assert!(third.next_text(SOON).await.contains("NONE"), "a freed place is given to the next client");

    let engine = wasmpush_tests::TestEngine::start(&[("quote", wasmpush_tests::artifacts::QUOTE)], |config| {
        config.max_connections_per_ip = 1;
    })
    .await;
    let _only = Client::connect_retrying(&engine.url("/ws/quote"), SOON).await;
    let (status, body) = refused(&engine, "/ws/quote").await;
    assert_eq!((status, body.trim()), (503, "too many connections from your address"));
}

#[tokio::test]
async fn a_plugin_instance_takes_no_more_connections_than_its_memory_holds_params_for() {
    let plugins = [("quote", wasmpush_tests::artifacts::QUOTE), ("clock", wasmpush_tests::artifacts::CLOCK)];
    let engine = wasmpush_tests::TestEngine::start(&plugins, |config| {
        // Half of 2 MiB over 128 KiB params: 8 connections per plugin instance, one worker.
        config.workers = 1;
        config.plugin_memory_mib = 2;
        config.max_params_bytes = 128 << 10;
        config.max_message_bytes = 128 << 10;
    })
    .await;
    let mut seated = Vec::new();
    for _ in 0..8 {
        seated.push(Client::connect_retrying(&engine.url("/ws/quote"), SOON).await);
    }
    let (status, body) = refused(&engine, "/ws/quote").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("plugin `quote` is at its connection limit on this worker (8"), "{body}");
    Client::connect(&engine.url("/ws/clock")).await;
    seated.pop().unwrap().close().await;
    Client::connect_retrying(&engine.url("/ws/quote"), SOON).await;
}

#[tokio::test]
async fn plain_http_gets_the_demo_page_or_a_clear_error_and_websockets_still_work() {
    let engine = engine().await;
    let page = wasmpush_tests::http::get(engine.addr, "/").await;
    assert!(page.contains("<title>wasmpush demo</title>") && page.contains("from '/wasmpush.js'"), "{page}");
    let client = wasmpush_tests::http::get(engine.addr, "/wasmpush.js").await;
    assert!(client.contains("export function connect(") && client.contains("new this._WebSocket("), "{client}");

    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, body) = wasmpush_tests::http::exchange(engine.addr, &request("/ws/quote")).await;
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("is a WebSocket endpoint"), "{body}");
    let (status, body) = wasmpush_tests::http::exchange(engine.addr, &request("/favicon.ico")).await;
    assert_eq!((status, body.contains("no such path")), (404, true), "{body}");
    let (status, _) = wasmpush_tests::http::exchange(engine.addr, "NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(status, 400);

    let mut client = Client::connect(&engine.url(&format!("/?params={}", encode("{}")))).await;
    assert!(client.next_text(SOON).await.contains("NONE"), "an upgrade on / is still a WebSocket");
}

#[tokio::test]
async fn a_client_that_never_completes_its_handshake_is_dropped() {
    let engine = wasmpush_tests::TestEngine::start(&[("quote", wasmpush_tests::artifacts::QUOTE)], |config| {
        config.handshake_timeout_secs = 1;
    })
    .await;
    let mut stalled = tokio::net::TcpStream::connect(engine.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET /ws/quote HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(SOON, tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest)).await;
    // Closed within the timeout: an orderly close, or a reset (the unread request is discarded).
    let closed = match &read {
        Ok(Ok(0)) => true,
        Ok(Err(err)) => err.kind() == std::io::ErrorKind::ConnectionReset,
        _ => false,
    };
    assert!(closed, "the engine closes a stalled handshake: {read:?}");
}

#[tokio::test]
async fn a_browser_page_from_another_origin_is_refused_with_403() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let engine = wasmpush_tests::TestEngine::start(&[("quote", wasmpush_tests::artifacts::QUOTE)], |config| {
        config.allowed_origins = vec!["https://*.example.com".to_owned()];
    })
    .await;
    let handshake = |origin: Option<String>| {
        let mut request = engine.url("/ws/quote").into_client_request().unwrap();
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let refused = handshake(Some("https://evil.test".to_owned())).await.unwrap_err();
    let WsError::Http(response) = refused else { panic!("{refused:?}") };
    assert_eq!(response.status(), 403);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("origin `https://evil.test` may not connect"), "{body}");
    assert!(handshake(Some("https://app.example.com".to_owned())).await.is_ok(), "a listed origin");
    assert!(handshake(Some(format!("http://{}", engine.addr))).await.is_ok(), "the engine's own pages");
    assert!(handshake(None).await.is_ok(), "not a browser");
}
