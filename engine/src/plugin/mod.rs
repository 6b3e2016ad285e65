//! The plugin host: the only part of the engine that knows wasmtime.
//!
//! It narrows wasmtime to what wasmpush uses: [`PluginHost`] compiles a component and checks it
//! implements the contract in `guest-sdk/wit`, producing an immutable [`PluginVersion`]; a
//! worker builds a [`PluginInstance`] from a version and runs batches on it. An instance lives
//! in its own `Store` (a store never frees instances), so throwing one away after a fault frees
//! everything it held. Faults are classified ([`PluginFault`]) and never panic the engine.
//!
//! Sandbox: WASI is linked because the `wasm32-wasip2` target imports it, but grants no
//! preopened directory, no socket address, no environment and no arguments (WASI's clocks and
//! random numbers stay available); standard output and error go to the log; waiting on WASI
//! (`poll`, `pollable.block`, so also sleeping) traps. Each call has an epoch deadline; each instance a memory cap.

mod calls;
mod deadline;
mod epoch_clock;
mod host;
mod instance;
mod outcomes;

pub use host::{LoadError, PluginHost, PluginVersion, SandboxLimits, content_hash};
pub use instance::{PluginFault, PluginInstance};
pub use outcomes::{Outcome, Outcomes};

/// Types of the batch call, generated from the WIT contract.
pub use host::bindings::wasmpush::plugin::types::{Calls, Trigger};
