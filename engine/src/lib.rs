//! # wasmpush
//!
//! A WebSocket push engine whose business logic is a hot-swappable WebAssembly plugin. Every
//! connection carries a params JSON object; every tick the engine calls the connection's plugin
//! with `(context, params)` and pushes what it returns. See `ARCHITECTURE.md` for the design.
//!
//! ## Layout
//! - `cli`: the command line ([`Cli`]); the only module that knows clap.
//! - [`config`]: every setting, with defaults and validation.
//! - `server`: the accept loop and graceful shutdown; [`run`] is the entry point.
//! - `admission`: `max_connections` and `max_connections_per_ip`, decided before the handshake.
//! - `handshake`: which plugin and params a request URL asks for, or why it is refused.
//! - `connection`: one client socket: reads params, writes queued frames.
//! - `live`: the settings `wasmpush reload` changes without a restart.
//! - `plain_http`: non-WebSocket requests on the WebSocket port: the demo page, HTTP errors.
//! - `rate_limit`: the per-connection budget on client messages.
//! - `outbound`: a socket's way out: shards write pushes straight to it; what waits conflates.
//! - `shard`: the worker threads that own connection state and run the plugins every tick.
//! - `registry`: the plugin versions served, loaded from files and swapped atomically.
//! - `watcher`: reports changed plugin files; knows nothing about wasmtime.
//! - `reload`: the actor that turns file changes and rescan requests into registry updates.
//! - `daemon`: `start --daemon`: a detached child, and the wait until it listens.
//! - `pidfile`: how `stop` and `reload` find the engine, and how `start` refuses to run twice.
//! - `metrics`: counters and histograms; `admin`: the `/status`, `/metrics` and `/healthz` endpoint.
//! - [`plugin`]: the wasmtime host — the only module that knows wasmtime; public so it can be
//!   benchmarked and embedded on its own.
//! - [`protocol`]: error frames, error codes and params validation.

mod admin;
mod admission;
mod cli;
pub mod config;
mod connection;
mod daemon;
mod handshake;
mod live;
mod metrics;
mod outbound;
pub mod phase_clock;
mod pidfile;
mod plain_http;
pub mod plugin;
pub mod protocol;
mod rate_limit;
mod registry;
mod reload;
mod server;
mod shard;
mod watcher;

pub use cli::{Cli, main};
pub use config::Config;
pub use server::{Listeners, Reload, ServerError, run};
