//! Test support for wasmpush: plugins built from source ([`artifacts`]), a real engine on port 0
//! ([`TestEngine`]) and a WebSocket client that reads frames with timeouts ([`Client`]).
//!
//! The end-to-end tests live in `tests/all/`; the load generator in `src/bin/`.

pub mod artifacts {
    //! Paths of the plugins built for `wasm32-wasip2` by this crate's build script.
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

mod client;
mod engine;
pub mod http;

pub use client::{Client, Frame};
pub use engine::TestEngine;
