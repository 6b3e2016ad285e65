//! Test plugin for hot reload: every push names the build it came from, so a test can see
//! exactly when each connection switched versions.

use wasmpush_sdk::{Context, Error};

/// The build's version, set by the test build script.
const VERSION: &str = match option_env!("WASMPUSH_TEST_PLUGIN_VERSION") {
    Some(version) => version,
    None => "0",
};

#[derive(serde::Serialize)]
struct Frame {
    version: &'static str,
    seq: u64,
}

fn tick(ctx: &Context, _params: &serde_json::Value) -> Result<Option<Frame>, Error> {
    Ok(Some(Frame { version: VERSION, seq: ctx.seq }))
}

wasmpush_sdk::plugin!(tick);
