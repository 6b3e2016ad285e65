//! Log lines from a plugin into the engine's log, tagged with the plugin's name (target
//! `plugin::NAME`). Natively (in a plugin's unit tests) they go to standard error instead.
//!
//! ```
//! wasmpush_sdk::log::info("loaded price table");
//! wasmpush_sdk::log::warn(format!("{} symbols unknown", 3));
//! ```

use crate::bindings::wasmpush::plugin::host::Level;

/// Logs at level trace.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Logs at level debug.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Logs at level info.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Logs at level warn.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Logs at level error.
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
