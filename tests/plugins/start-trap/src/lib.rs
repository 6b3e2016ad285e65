//! Test plugin: implements the contract, but its initialisation function (`_initialize`, which
//! the component runs when it is instantiated) traps, so the engine must refuse to load it.

/// Run by the component at instantiation, before any call.
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    std::process::abort();
}

fn tick(_: &wasmpush_sdk::Context, _: &serde_json::Value) -> Result<Option<u64>, wasmpush_sdk::Error> {
    Ok(Some(1))
}

wasmpush_sdk::plugin!(tick);
