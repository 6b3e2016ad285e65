//! # wasmpush-sdk
//!
//! Write a [wasmpush](https://example.invalid/wasmpush) plugin as one function over your own
//! serde types, registered with one macro:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wasmpush_sdk::{Context, Error};
//!
//! #[derive(Deserialize)]
//! struct Params { name: String }
//!
//! #[derive(Serialize)]
//! struct Greeting { text: String, seq: u64 }
//!
//! fn tick(ctx: &Context, params: &Params) -> Result<Option<Greeting>, Error> {
//!     if params.name.is_empty() {
//!         return Err(Error::msg("name must not be empty"));
//!     }
//!     Ok(Some(Greeting { text: format!("hello {}", params.name), seq: ctx.seq }))
//! }
//!
//! wasmpush_sdk::plugin!(tick);
//! # fn main() {}
//! ```
//!
//! Every tick the engine calls `tick` for each connection that has params and is not parked:
//! `Ok(Some(payload))` pushes `payload` as JSON, `Ok(None)` pushes nothing this time, and
//! `Err(e)` pushes `{"code":0,"msg":"<e>","data":[]}` once and parks the connection until the
//! client sends new params. Params that do not match your type are such an error too, naming the
//! field. Return [`Raw`] to write the frame text yourself.
//!
//! A plugin reads the engine's live data with [`Context::get`] (buckets its config grants it);
//! when a key a connection's last call read changes, the engine calls it again at once with
//! [`Trigger::Data`], and a connection parked by an error is re-run too.
//!
//! Behind the macro the SDK speaks the batch contract in `wit/plugin.wit`: it parses each
//! connection's params once, when they change, and keeps them until the connection closes.
//!
//! ## Layout
//! - `context`: [`Context`] and [`Trigger`], what a call knows about its connection.
//! - `data`: [`Context::get`] and [`Context::get_many`], typed reads of the engine's data, and
//!   [`FakeData`] for native tests.
//! - `error`: [`Error`], the error type `?` converts anything into.
//! - `payload`: [`Payload`] and [`Raw`], how a result becomes a text frame.
//! - [`log`]: log lines into the engine's log, tagged with the plugin's name.
//! - `batch`: the batch runner behind [`plugin!`], with its params cache.
#![deny(missing_docs)]

mod batch;
mod context;
mod data;
mod error;
pub mod log;
mod payload;

pub use context::{Context, Identity, Trigger};
pub use data::FakeData;
pub use error::Error;
pub use payload::{Payload, Raw};

/// The plugin's allocator: talc in place of the wasm target's default (wasi-libc's dlmalloc);
/// re-parsing a batch's params took 15% less time with it (`just bench-host`). Feature
/// `allocator` (on by default); turn it off to bring your own `#[global_allocator]`.
#[cfg(all(feature = "allocator", target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// Bindings generated from the WIT contract; used by [`plugin!`], not by plugin authors.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "push-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_push_plugin",
        default_bindings_module: "wasmpush_sdk::bindings",
    });
}

/// What [`plugin!`] expands to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::batch::run_batch;
}

/// Registers the plugin function: `fn(&Context, &P) -> Result<Option<R>, E>`, where `P` is your
/// params type (any `serde::de::DeserializeOwned`), `R` any [`Payload`] (every
/// `serde::Serialize` type, [`Raw`], or your own) and `E` any error that implements `Display`.
/// `R` may borrow from the params (`fn tick<'a>(ctx: &Context, params: &'a P) ->
/// Result<Option<Quote<'a>>, E>`), so a payload can write the connection's strings into the frame
/// without copying them first.
///
/// Use it once per plugin crate, at the top level of `src/lib.rs`:
///
/// ```
/// fn tick(
///     ctx: &wasmpush_sdk::Context,
///     _params: &serde_json::Value,
/// ) -> Result<Option<u64>, wasmpush_sdk::Error> {
///     Ok(Some(ctx.seq))
/// }
///
/// wasmpush_sdk::plugin!(tick);
/// # fn main() {}
/// ```
///
/// The lean path, for authors who want strings rather than types: take the params as the text
/// the client sent ([`serde_json::value::RawValue`], never parsed into a tree) and return [`Raw`]
/// text.
///
/// ```
/// use serde_json::value::RawValue;
/// use wasmpush_sdk::{Context, Error, Raw};
///
/// fn tick(ctx: &Context, params: &Box<RawValue>) -> Result<Option<Raw>, Error> {
///     Ok(Some(Raw(format!(r#"{{"seq":{},"params":{}}}"#, ctx.seq, params.get()))))
/// }
///
/// wasmpush_sdk::plugin!(tick);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! plugin {
    ($tick:path) => {
        #[doc(hidden)]
        pub struct __WasmpushPlugin;

        impl $crate::bindings::Guest for __WasmpushPlugin {
            fn run(
                now_ms: u64,
                calls: $crate::bindings::Calls,
                closed: ::std::vec::Vec<u64>,
                stale: ::std::vec::Vec<u32>,
            ) -> $crate::bindings::Outcomes {
                $crate::__private::run_batch(now_ms, calls, closed, stale, $tick)
            }
        }

        $crate::bindings::__export_push_plugin!(__WasmpushPlugin);
    };
}
