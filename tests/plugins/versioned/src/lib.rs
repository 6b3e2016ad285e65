//! Test plugin for hot reload: every push names the build it came from, so a test can see
//! exactly when each connection switched versions, and the engine's time of the batch (`at`, ms),
//! so it can see the engine's cadence apart from its own delays in reading. With params `{"watch": KEY}` it also pushes
//! the value of KEY in data bucket `shared`, so a test can see a new version read the same data.

use wasmpush_sdk::{Context, Error};

/// The build's version, set by the test build script.
const VERSION: &str = match option_env!("WASMPUSH_TEST_PLUGIN_VERSION") {
    Some(version) => version,
    None => "0",
};

#[derive(serde::Deserialize)]
struct Params {
    /// A key of bucket `shared` to read and push.
    watch: Option<String>,
}

#[derive(serde::Serialize)]
struct Frame {
    version: &'static str,
    seq: u64,
    at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
}

fn tick(ctx: &Context, params: &Params) -> Result<Option<Frame>, Error> {
    let value = match &params.watch {
        Some(key) => Some(ctx.get::<serde_json::Value>("shared", key)?.unwrap_or(serde_json::Value::Null)),
        None => None,
    };
    Ok(Some(Frame { version: VERSION, seq: ctx.seq, at: ctx.now_ms, value }))
}

wasmpush_sdk::plugin!(tick);
