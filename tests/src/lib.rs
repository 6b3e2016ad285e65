//! Test support for wasmpush: plugins built from source ([`artifacts`]), a real engine on port 0
//! ([`TestEngine`]), a WebSocket client that reads frames with timeouts ([`Client`]), headless
//! Chromium for the demo page ([`Browser`]), a real NATS server for clusters ([`NatsServer`]) and
//! the release engine as a child process for benches ([`ReleaseEngine`]).
//!
//! The end-to-end tests live in `tests/all/`; the load generator in `src/bin/`.

pub mod artifacts {
    //! Paths of the plugins built for `wasm32-wasip2` by this crate's build script.
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

mod browser;
mod child;
mod client;
mod engine;
pub mod feed;
pub mod http;
mod nats;
mod release_engine;
pub mod wire;

pub use browser::Browser;
pub use child::KillOnDrop;
pub use client::{Client, Frame};
pub use engine::TestEngine;
pub use nats::NatsServer;
pub use release_engine::ReleaseEngine;

/// `text` percent-encoded for a URL query (everything but RFC 3986 unreserved characters).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
