//! End-to-end tests: a real engine on port 0, real WebSocket clients, real plugins compiled from
//! source by the build script.

mod auth;
mod bad_input;
mod cadence;
mod cli;
mod cluster;
mod cluster_auth;
mod cluster_builds;
mod console;
mod cpu_deadline;
mod cpu_work;
mod data;
mod data_store;
mod demo_page;
mod handshake_flood;
mod heartbeat;
mod host_memory;
mod hostile;
mod http_edges;
mod js_client;
mod loadgen;
mod metrics;
mod nginx;
mod raw_frames;
mod reload;
mod rollouts;
mod routing;
mod session;
mod slow_consumers;
mod template;
mod util;
