//! Test plugin for hot reload: every push names the build it came from, so a test can see
//! exactly when each connection switched versions, and the engine's time of the batch (`at`, ms),
//! so it can see the engine's cadence apart from its own delays in reading. With params `{"watch": KEY}` it also pushes
//! the value of KEY in data bucket `shared`, so a test can see a new version read the same data.
//!
//! Two builds misbehave on purpose, for the rollout tests: version `trap` traps on every
//! connection whose params hold `"n"` divisible by 4 (a fixed share of the clients), and version
//! `slow` spends about 2 ms of CPU on every call.

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
    /// The client's number: build `trap` traps on multiples of 4.
    n: Option<u64>,
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
    match VERSION {
        "trap" if params.n.is_some_and(|n| n % 4 == 0) => panic!("build `trap` traps on n = {:?}", params.n),
        "slow" => burn_cpu(ctx.now_ms),
        _ => {}
    }
    let value = match &params.watch {
        Some(key) => Some(ctx.get::<serde_json::Value>("shared", key)?.unwrap_or(serde_json::Value::Null)),
        None => None,
    };
    Ok(Some(Frame { version: VERSION, seq: ctx.seq, at: ctx.now_ms, value }))
}

/// About 2 ms of arithmetic the optimizer cannot drop or shorten (each step goes through
/// `black_box`).
fn burn_cpu(seed: u64) {
    let mut x = seed;
    for _ in 0..1_000_000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
}

wasmpush_sdk::plugin!(tick);
