//! The reference session of `quote` (docs/quote.md), frame by frame: only `ts` differs.

use wasmpush_tests::{Client, Frame};

use crate::util::{SOON, TICK, encode, engine, normalise_ts, seq_of};

/// The reference frame for `symbol`, `seq`, `price` and `nonce` (as JSON), with the fixed ts.
fn quote(symbol: &str, seq: u64, price: &str, nonce: &str) -> String {
    format!(r#"{{"symbol":"{symbol}","seq":{seq},"ts":1700000000000,"price":{price},"nonce":{nonce}}}"#)
}

/// AAPL hashes to 2955 (mod 10000): its price in cents is 2955 + seq.
fn aapl_price(seq: u64) -> String {
    let cents = 2955 + seq;
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[tokio::test]
async fn reference_session_frame_by_frame() {
    let engine = engine().await;
    let params = encode(r#"{"symbol":"AAPL","nonce":7}"#);
    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={params}"))).await;

    // ?params= pushes at once, then every tick, seq counting up from 1.
    for seq in 1..=4 {
        let frame = normalise_ts(&client.next_text(SOON).await);
        assert_eq!(frame, quote("AAPL", seq, &aapl_price(seq), "7"));
    }

    // FAIL: the error frame exactly once, then the connection is parked.
    client.send_text(r#"{"symbol":"FAIL","nonce":1}"#).await;
    let mut frame = client.next_text(SOON).await;
    if frame.contains("\"symbol\":\"AAPL\"") {
        // A tick raced the update; it must be the next AAPL frame.
        assert_eq!(normalise_ts(&frame), quote("AAPL", 5, &aapl_price(5), "7"));
        frame = client.next_text(SOON).await;
    }
    assert_eq!(frame, r#"{"code":0,"msg":"symbol FAIL is not tradable","data":[]}"#);
    assert_eq!(client.texts_during(TICK * 4).await, Vec::<String>::new(), "a parked connection gets nothing");

    // New valid params resume at once; seq continues where it stopped.
    let resumed_at = seq_of(&send_and_read(&mut client, r#"{"symbol":"BTCUSDT","nonce":"n-1"}"#).await);
    let last_aapl = resumed_at - 1;
    assert!(last_aapl == 4 || last_aapl == 5, "seq must continue after parking, got {resumed_at}");
    let next = normalise_ts(&client.next_text(SOON).await);
    assert_eq!(next, quote("BTCUSDT", resumed_at + 1, &price(1564, resumed_at + 1), r#""n-1""#));

    // FAIL again: one more error frame, parked again; then `{}` (symbol NONE, nonce null).
    client.send_text(r#"{"symbol":"FAIL"}"#).await;
    let error = client.next_error_frame(SOON).await;
    assert_eq!(error, r#"{"code":0,"msg":"symbol FAIL is not tradable","data":[]}"#);
    assert_eq!(client.texts_during(TICK * 3).await, Vec::<String>::new());
    client.send_text("{}").await;
    let frame = normalise_ts(&client.next_text(SOON).await);
    let seq = seq_of(&frame);
    assert_eq!(frame, quote("NONE", seq, &price(6219, seq), "null"));
    client.close().await;
}

/// Sends `params` and returns the first frame that answers them (skipping stale ticks).
async fn send_and_read(client: &mut Client, params: &str) -> String {
    client.send_text(params).await;
    let frame = client.next_text(SOON).await;
    normalise_ts(&frame)
}

/// The price for a symbol hashing to `base` (mod 10000) at `seq`.
fn price(base: u64, seq: u64) -> String {
    let cents = base + seq;
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[tokio::test]
async fn a_connection_without_params_gets_nothing_until_it_sends_some() {
    let engine = engine().await;
    let mut client = Client::connect(&engine.url("/ws/quote")).await;
    assert_eq!(client.next_within(TICK * 4).await, None);
    client.send_text(r#"{"symbol":"SYM0"}"#).await;
    let frame = normalise_ts(&client.next_text(SOON).await);
    assert_eq!(frame, quote("SYM0", 1, "48.61", "null"));
}

#[tokio::test]
async fn a_non_string_symbol_reads_as_none() {
    let engine = engine().await;
    let params = encode(r#"{"symbol":5}"#);
    let mut client = Client::connect(&engine.url(&format!("/?params={params}"))).await;
    for seq in 1..=3 {
        let frame = normalise_ts(&client.next_text(SOON).await);
        assert_eq!(frame, quote("NONE", seq, &price(6219, seq), "null"));
    }
}

#[tokio::test]
async fn fail_in_the_url_params_sends_the_error_once() {
    let engine = engine().await;
    let params = encode(r#"{"symbol":"FAIL"}"#);
    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={params}"))).await;
    assert_eq!(client.next_text(SOON).await, r#"{"code":0,"msg":"symbol FAIL is not tradable","data":[]}"#);
    assert_eq!(client.next_within(TICK * 4).await, None::<Frame>);
    client.send_text(r#"{"symbol":"AAPL"}"#).await;
    let frame = normalise_ts(&client.next_text(SOON).await);
    assert_eq!(frame, quote("AAPL", 1, &aapl_price(1), "null"), "no data push happened before, so seq is 1");
}

#[tokio::test]
async fn with_error_reset_a_parked_connection_is_retried_and_its_error_repeats_once_per_period() {
    let plugins = [("quote", wasmpush_tests::artifacts::QUOTE)];
    let engine = wasmpush_tests::TestEngine::start(&plugins, |config| config.error_reset_secs = 1).await;
    let params = encode(r#"{"symbol":"FAIL"}"#);
    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={params}"))).await;
    let error = r#"{"code":0,"msg":"symbol FAIL is not tradable","data":[]}"#;
    assert_eq!(client.next_text(SOON).await, error);
    let first = std::time::Instant::now();
    // Parked for the reset period: nothing, then the retried call fails again: one more frame.
    assert_eq!(client.next_text(SOON).await, error);
    let period = first.elapsed();
    assert!(period >= std::time::Duration::from_millis(900), "repeated after {period:?}, before the reset");
    // New params still un-park at once, and the connection ticks again.
    client.send_text(r#"{"symbol":"AAPL"}"#).await;
    let frame = normalise_ts(&client.next_text(SOON).await);
    assert_eq!(frame, quote("AAPL", 1, &aapl_price(1), "null"));
    assert_eq!(seq_of(&client.next_text(SOON).await), 2);
}
