//! # wasmpush
//!
//! A WebSocket push engine whose business logic is a hot-swappable WebAssembly plugin. Every
//! connection carries a params JSON object; every tick the engine calls the connection's plugin
//! with `(context, params)` and pushes what it returns. See `ARCHITECTURE.md` for the design.
//!
//! ## Layout
//! - `cli`: the command line ([`Cli`]) and its process management (daemon, pid file); the only
//!   module that knows clap, and the only one using `anyhow`.
//! - [`config`]: every setting, with defaults and validation; depends on nothing of the engine.
//! - `server`: the accept loop, graceful shutdown and restart handover; [`run`] is the entry point.
//! - `accept`: one accepted socket: its request head, its handshake, its connection served.
//! - `admission`: `max_connections` and `max_connections_per_ip`, decided before the handshake.
//! - `auth`: client tokens (JWT): the keys, the checks, the identity a plugin is given.
//! - `plain_http`: non-WebSocket requests on the WebSocket port: the demo page, HTTP errors.
//! - `handshake`: which plugin and params a request URL asks for, or why it is refused.
//! - `connection`: one client socket: reads params, writes queued frames.
//! - `rate_limit`: the per-connection budget on client messages.
//! - `outbound`: a socket's way out: shards write pushes straight to it; what waits conflates.
//! - `live`: the settings `wasmpush reload` changes without a restart.
//! - `shard`: the worker threads that own connection state and run the plugins every tick.
//! - [`phase_clock`]: the schedule of a shard's phases; public because the benchmark's
//!   `push_floor` runs on the same schedule.
//! - `call_stats`: what a plugin's or a build's calls did, counted by shards, read as reports.
//! - `cluster`: many nodes sharing one data set through NATS JetStream.
//! - `data`: the buckets plugins read — in memory, on disk, changed by one writer that
//!   announces each change; `publish`: the HTTP API that feeds it.
//! - `registry`: the plugin versions served, loaded from files and swapped atomically.
//! - `plugin_files`: what a plugin file is called (`NAME.wasm`).
//! - `wall_clock`: times as milliseconds since the Unix epoch.
//! - `watcher`: reports changed plugin files; knows nothing about wasmtime or the registry.
//! - `reload`: the actor that turns file changes and rescan requests into registry updates.
//! - `rollout`: what a canary or shadow run is and counts, how it is judged, the version history;
//!   `rollout_control`: starting, judging and ending rollouts, and rollback to a kept build.
//! - `bearer`: the bearer token of the admin endpoint and the publish API.
//! - `metrics`: counters and histograms; `admin`: the `/status`, `/metrics` and `/healthz` endpoint;
//!   `health`: whether the engine serves (starting, ready, failed).
//! - [`plugin`]: the wasmtime host — the only module that knows wasmtime; public so it can be
//!   benchmarked and embedded on its own.
//! - [`protocol`]: error frames, error codes and params validation.
//!
//! The rules of which module may import which are written in ARCHITECTURE.md and checked by the
//! `module_rules` test.

mod accept;
mod admin;
mod admission;
mod auth;
mod bearer;
mod call_stats;
mod cli;
mod cluster;
pub mod config;
mod connection;
mod console;
mod data;
mod events;
mod handshake;
mod health;
mod http_server;
mod live;
mod metrics;
#[cfg(test)]
mod module_rules;
mod outbound;
pub mod phase_clock;
mod plain_http;
pub mod plugin;
mod plugin_files;
pub mod protocol;
mod publish;
mod rate_limit;
mod registry;
mod reload;
mod rollout;
mod rollout_control;
mod server;
mod services;
mod shard;
mod wall_clock;
mod watcher;

pub use cli::{Cli, main};
pub use config::Config;
pub use server::{
    Forward, HandOver, Lifecycle, Listeners, Released, Reload, ServerError, Successor, TakeOver, run, run_with,
    sandbox_limits,
};
