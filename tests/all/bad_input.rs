//! Every kind of bad client input gets an engine error frame with its own non-zero code; the
//! params stay as they were and the socket stays open.

use wasmpush_tests::{Client, Frame};

use crate::util::{SOON, encode, engine, error_parts, normalise_ts};

#[tokio::test]
async fn bad_params_are_refused_with_a_clear_error_and_change_nothing() {
    let engine = engine().await;
    let params = encode(r#"{"symbol":"AAPL","nonce":1}"#);
    let mut client = Client::connect(&engine.url(&format!("/ws/quote?params={params}"))).await;
    client.next_text(SOON).await;

    let too_big = format!(r#"{{"symbol":"{}"}}"#, "x".repeat(4100));
    let too_deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(40), "]".repeat(40));
    let cases: [(&str, u64, &str); 7] = [
        ("{\"symbol\":", 4001, "not valid JSON"),
        ("not json", 4001, "not valid JSON"),
        ("[1,2,3]", 4002, "must be a JSON object, not an array"),
        ("\"AAPL\"", 4002, "must be a JSON object, not a string"),
        ("null", 4002, "must be a JSON object, not null"),
        (&too_big, 4003, "more than the limit of 4096"),
        (&too_deep, 4005, "nest deeper than 32 levels"),
    ];
    for (input, code, message) in cases {
        client.send_text(input).await;
        let (got_code, got_message) = error_parts(&client.next_error_frame(SOON).await);
        assert_eq!(got_code, code, "{input:.40}");
        assert!(got_message.contains(message), "{input:.40}: {got_message}");
    }
    client.send_binary(br#"{"symbol":"MSFT"}"#).await;
    let (code, message) = error_parts(&client.next_error_frame(SOON).await);
    assert_eq!(code, 4004);
    assert!(message.contains("binary frames are not supported"), "{message}");

    // Params unchanged and the socket open: the next ticks still quote AAPL with nonce 1.
    for _ in 0..2 {
        let frame = normalise_ts(&client.next_text(SOON).await);
        assert!(frame.starts_with(r#"{"symbol":"AAPL","#) && frame.ends_with(r#""nonce":1}"#), "{frame}");
    }
}

#[tokio::test]
async fn exactly_the_limit_is_accepted() {
    let engine = engine().await;
    let mut client = Client::connect(&engine.url("/ws/quote")).await;
    let padding = 4096 - r#"{"symbol":"B","pad":""}"#.len();
    let params = format!(r#"{{"symbol":"B","pad":"{}"}}"#, "x".repeat(padding));
    assert_eq!(params.len(), 4096);
    client.send_text(&params).await;
    let frame = client.next_text(SOON).await;
    assert!(frame.starts_with(r#"{"symbol":"B","seq":1,"#), "{frame}");
}

#[tokio::test]
async fn a_message_flood_is_refused_once_then_closed_while_others_are_served() {
    let engine = engine().await;
    let url = engine.url(&format!("/ws/quote?params={}", encode("{}")));
    let mut neighbour = Client::connect(&url).await;
    let mut flooder = Client::connect(&url).await;
    flooder.next_text(SOON).await;
    // The default budget is 20 messages per second with a burst of 20: 20 pass, the next 20 are
    // refused, and the 20th refusal in a row closes the connection.
    for i in 0..40 {
        flooder.send_text(&format!(r#"{{"symbol":"S{i}"}}"#)).await;
    }
    let mut errors = Vec::new();
    let end = loop {
        match flooder.next_within(SOON).await {
            Some(Frame::Text(text)) if text.starts_with(r#"{"code""#) => errors.push(text),
            Some(Frame::Text(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(
        errors,
        vec![
            r#"{"code":4006,"msg":"sending too fast: at most 20 messages per second; messages over it are dropped","data":[]}"#
        ]
    );
    assert_eq!(end, Some(Frame::Close(Some((1008, "message flood".to_owned())))));
    assert!(neighbour.next_text(SOON).await.contains("NONE"), "the neighbour is still served");
}
