//! Heartbeats: the server pings; a client silent past the idle timeout is closed and forgotten,
//! one that answers pings stays.

use std::time::Duration;

use wasmpush_tests::{Client, Frame, TestEngine, artifacts};

use crate::util::{SOON, encode};

async fn engine() -> TestEngine {
    TestEngine::start(&[("quote", artifacts::QUOTE)], |config| {
        config.ping_secs = 1;
        config.idle_timeout_secs = 2;
    })
    .await
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout_and_a_live_one_stays() {
    let engine = engine().await;
    let url = engine.url(&format!("/ws/quote?params={}", encode("{}")));
    let mut silent = Client::connect(&url).await;
    let mut live = Client::connect(&url).await;

    // The live client reads (and so answers pings) for twice the idle timeout.
    let frames = live.texts_during(Duration::from_secs(4)).await;
    assert!(frames.len() >= 15, "the live client kept receiving: {} frames", frames.len());

    // The silent client never read, so it never sent a pong: it has been closed.
    assert_eq!(silent.closing_frame(SOON).await, Some(Frame::Close(Some((1001, "idle timeout".to_owned())))));
    assert_eq!(engine.status().await["connections"], 1, "the closed connection was cleaned up");
    assert!(live.next_text(SOON).await.contains("NONE"), "the live client is still served");
}
