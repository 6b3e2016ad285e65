//! The Rust side of the WIT contract (`guest-sdk/wit/plugin.wit`), generated once for the whole
//! host. Everything else in `plugin/` takes the contract's types from here.

#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "push-plugin",
    // A data read over the host's bounds traps the call (see `data`).
    imports: {
        "wasmpush:plugin/data.get": trappable,
        "wasmpush:plugin/data.get-many": trappable,
    },
});

/// The WIT package (and version) of the contract plugins must implement.
pub const CONTRACT: &str = "wasmpush:plugin@0.4.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_named_in_load_errors_is_the_wit_package() {
        let wit = include_str!("../../../guest-sdk/wit/plugin.wit");
        assert!(wit.contains(&format!("package {CONTRACT};")), "update CONTRACT to the package in plugin.wit");
    }
}
