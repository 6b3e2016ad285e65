//! The plugin host: the only part of the engine that knows wasmtime.
//!
//! It narrows wasmtime to what wasmpush uses: [`PluginHost`] compiles a component and checks it
//! implements the contract in `guest-sdk/wit`, producing an immutable [`PluginVersion`]; a
//! worker builds a [`PluginInstance`] from a version and runs batches on it. An instance lives
//! in its own `Store` (a store never frees instances), so throwing one away after a fault frees
//! everything it held. Faults are classified ([`PluginFault`]) and never panic the engine.
//!
//! Sandbox: WASI is linked because the `wasm32-wasip2` target imports it, but grants no
//! preopened directory, no socket, no name lookup, no environment and no arguments (WASI's clocks
//! and random numbers stay available, at most 64 KiB of random bytes a call); compiling uses one
//! thread; standard output and error go to the log; waiting on WASI
//! (`poll`, `pollable.block`, so also sleeping) traps. Each call has a deadline in CPU time; each
//! instance one memory budget for all its memories and tables. A plugin reads only the data
//! buckets its batch is granted.
//!
//! ## Layout (imports run down this list, never up)
//! - `bindings`: the contract's types, generated from the WIT.
//! - `epoch_clock`, `deadline`: what interrupts a call that runs too long.
//! - `limits`: [`SandboxLimits`] and the store's resource limiter.
//! - `fault`: [`PluginFault`], a failed call's cause.
//! - `calls`, `outcomes`: a batch's arguments and its checked results.
//! - `data`: what a batch may read ([`DataSource`], [`BatchData`]) and the ids an instance knows
//!   data keys by.
//! - `store`: one instance's store data, guest logging.
//! - `version`: [`PluginVersion`], a loaded build.
//! - `instance`: [`PluginInstance`], a live instance and the batch call.
//! - `host`: [`PluginHost`], compiling and validating plugin files.

mod bindings;
mod calls;
mod data;
mod deadline;
mod epoch_clock;
mod fault;
mod host;
mod instance;
mod limits;
mod outcomes;
mod store;
mod version;

pub use bindings::wasmpush::plugin::types::{Calls, Trigger};
pub use calls::CallParams;
pub use data::{BatchData, DataRead, DataSource, MAX_KEYS_PER_INSTANCE, ReadKey};
pub use fault::PluginFault;
pub use host::{HostError, LoadError, PluginHost};
pub use instance::PluginInstance;
pub use limits::SandboxLimits;
pub use outcomes::{Outcome, Outcomes};
pub use version::{PluginVersion, content_hash};
