//! Log lines from a plugin into the engine's log, under target `plugin` with the field
//! `plugin=NAME` (filter them with `RUST_LOG=plugin=debug`). At most 100 lines per call are kept;
//! the engine counts the rest in one warning. Natively (in a plugin's unit tests) they go to
//! standard error instead.
//!
//! ```
//! wasmpush_sdk::log::info("loaded price table");
//! wasmpush_sdk::log::warn(format!("{} symbols unknown", 3));
//! ```

use crate::bindings::wasmpush::plugin::host::Level;

/// Logs at level trace.
///
/// ```
/// wasmpush_sdk::log::trace(format!("{} connections quoted", 3));
/// ```
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Logs at level debug.
///
/// ```
/// wasmpush_sdk::log::debug(format!("{} connections quoted", 3));
/// ```
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Logs at level info.
///
/// ```
/// wasmpush_sdk::log::info(format!("{} connections quoted", 3));
/// ```
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Logs at level warn.
///
/// ```
/// wasmpush_sdk::log::warn(format!("{} connections quoted", 3));
/// ```
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Logs at level error.
///
/// ```
/// wasmpush_sdk::log::error(format!("{} connections quoted", 3));
/// ```
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}

#[cfg(target_arch = "wasm32")]
fn write(level: Level, message: &str) {
    crate::bindings::wasmpush::plugin::host::log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn write(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}
