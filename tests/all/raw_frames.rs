//! Hostile WebSocket framing, written byte by byte after a real handshake: invalid UTF-8, a frame
//! header announcing a gigabyte, a fragmented message that never ends, an oversized control
//! frame. Each ends only its own connection, with the close code RFC 6455 names and a reason,
//! without the engine buffering what was announced.

use std::time::{Duration, Instant};

use wasmpush_tests::wire::{self, CONTINUATION, TEXT};
use wasmpush_tests::{Client, Frame, TestEngine};

use crate::util::{SOON, encode, engine};

/// A masked client frame (mask 0, so the payload is sent as is).
fn frame(fin: bool, opcode: u8, payload: &[u8], announced_len: Option<u64>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(14 + payload.len());
    wire::write_header(&mut bytes, fin, opcode, announced_len.unwrap_or(payload.len() as u64), [0; 4]);
    bytes.extend_from_slice(payload);
    bytes
}

/// Waits until the engine counts `n` open connections.
async fn wait_for_connections(engine: &TestEngine, n: u64) {
    let deadline = Instant::now() + SOON;
    while engine.status().await["connections"] != n {
        assert!(Instant::now() < deadline, "connections never went to {n}: {}", engine.status().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn malformed_framing_ends_only_its_own_connection() {
    let engine = engine().await;
    let url = engine.url(&format!("/ws/quote?params={}", encode("{}")));
    let mut neighbour = Client::connect(&url).await;
    let fragment = vec![b'x'; 1000];
    let mut flood = frame(false, TEXT, &fragment, None);
    for _ in 0..100 {
        flood.extend(frame(false, CONTINUATION, &fragment, None));
    }
    let cases: [(&str, Vec<u8>, u16, &str); 4] = [
        (
            "invalid UTF-8 in a text frame",
            frame(true, TEXT, &[0xff, 0xfe, 0xfd], None),
            1007,
            "text is not valid UTF-8",
        ),
        ("a header announcing 1 GiB", frame(true, TEXT, b"{}", Some(1 << 30)), 1009, "message too big"),
        ("100 KB of fragments that never finish", flood, 1009, "message too big"),
        (
            "a ping of 200 bytes (control frames hold 125 at most)",
            frame(true, wire::PING, &[b'p'; 200], None),
            1002,
            "protocol error",
        ),
    ];
    for (what, bytes, code, reason) in cases {
        let mut client = Client::connect(&url).await;
        client.next_text(SOON).await;
        wait_for_connections(&engine, 2).await;
        client.send_raw(&bytes).await;
        let end = client.closing_frame(SOON).await;
        // The close RFC 6455 names, with the reason: the client can tell why.
        assert_eq!(end, Some(Frame::Close(Some((code, reason.to_owned())))), "{what}");
        wait_for_connections(&engine, 1).await;
        assert!(neighbour.next_text(SOON).await.contains("NONE"), "{what}: the neighbour is still served");
    }
}

#[tokio::test]
async fn a_ping_flood_counts_against_the_message_budget_and_is_closed() {
    let engine = engine().await;
    let mut client = Client::connect(&engine.url("/ws/quote")).await;
    let mut pings = Vec::new();
    for _ in 0..100 {
        pings.extend(frame(true, wire::PING, b"hi", None));
    }
    client.send_raw(&pings).await;
    assert_eq!(client.closing_frame(SOON).await, Some(Frame::Close(Some((1008, "message flood".to_owned())))));
}
