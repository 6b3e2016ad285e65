//! Test plugin: does what its params' `do` asks, so one build can stand for every kind of bad
//! business code (`big` is a legal 32 KiB payload, for slow-consumer tests; `work` computes
//! `rounds` hash rounds, a fixed amount of CPU, for deadline tests; `invalid-utf8` returns a frame
//! that is not UTF-8). `{"do":"ok"}` (or no `do`) behaves and pushes `{"seq":N}`.
//!
//! Host-memory tricks, on bucket `blobs` (whose key `big` holds a large value): `get-many-repeat`
//! lists `big` ten thousand times in one `get-many` (the host copies a value per listed key);
//! `get-many-huge` lists a hundred thousand keys; `long-keys` reads a hundred thousand distinct missing
//! keys of a kilobyte each (the host keeps each name for the instance's life); `wide-reads` reads
//! five thousand distinct keys in one call (the host keeps what each call read for the
//! connection's life).

use wasmpush_sdk::{Context, Error, Payload, Raw};

#[derive(serde::Deserialize)]
struct Params {
    #[serde(default, rename = "do")]
    action: String,
    /// For `work`: how many hash rounds to compute.
    #[serde(default)]
    rounds: u64,
}

/// What `hostile` returns: a text, or (for `invalid-utf8`) bytes that are not UTF-8, which only a
/// hand-written [`Payload`] can produce.
enum Reply {
    Text(Raw),
    NotUtf8,
}

impl Payload for Reply {
    fn write_frame(self, frame: &mut Vec<u8>) -> Result<(), Error> {
        match self {
            Reply::Text(raw) => raw.write_frame(frame),
            Reply::NotUtf8 => {
                frame.extend_from_slice(b"{\"bytes\":\"\xff\xfe\"}");
                Ok(())
            }
        }
    }
}

fn tick(ctx: &Context, params: &Params) -> Result<Option<Reply>, Error> {
    if params.action == "invalid-utf8" {
        return Ok(Some(Reply::NotUtf8));
    }
    text(ctx, params).map(|text| text.map(Reply::Text))
}

fn text(ctx: &Context, params: &Params) -> Result<Option<Raw>, Error> {
    match params.action.as_str() {
        "loop" => loop {
            std::hint::black_box(ctx.seq);
        },
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("hostile plugin panics"),
        "sleep" => {
            // Blocks in a WASI host call, where no epoch check can interrupt it.
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok(Some(Raw(format!("{{\"seq\":{},\"slept\":true}}", ctx.seq))))
        }
        "work" => {
            // A fixed amount of CPU work, whatever the wall-clock time it takes.
            let hash = (0..params.rounds).fold(0xcbf2_9ce4_8422_2325_u64, |hash, round| {
                std::hint::black_box((hash ^ round).wrapping_mul(0x0000_0100_0000_01b3))
            });
            Ok(Some(Raw(format!("{{\"seq\":{},\"hash\":{hash}}}", ctx.seq))))
        }
        "huge" => Ok(Some(Raw("x".repeat(1 << 20)))),
        "get-many-repeat" => raw_get_many(vec!["big".to_owned(); 10_000]),
        "get-many-huge" => raw_get_many((0..100_000).map(|i| format!("k{i}")).collect()),
        "long-keys" => {
            for i in 0..100_000 {
                ctx.get::<serde_json::Value>("blobs", &format!("{i:0>1000}"))?;
            }
            Ok(Some(Raw(format!("{{\"seq\":{}}}", ctx.seq))))
        }
        "wide-reads" => {
            for i in 0..5_000 {
                ctx.get::<serde_json::Value>("blobs", &format!("k{i}"))?;
            }
            Ok(Some(Raw(format!("{{\"seq\":{}}}", ctx.seq))))
        }
        "big" => Ok(Some(Raw(format!("{{\"seq\":{},\"pad\":\"{}\"}}", ctx.seq, "x".repeat(32 * 1024))))),
        "log" => {
            for line in 0..10_000 {
                wasmpush_sdk::log::warn(format!("log flood line {line} {}", "y".repeat(10_000)));
            }
            Ok(Some(Raw(format!("{{\"seq\":{}}}", ctx.seq))))
        }
        _ => Ok(Some(Raw(format!("{{\"seq\":{}}}", ctx.seq)))),
    }
}

/// Calls the `get-many` import directly with `keys` (the SDK would not send such a list).
fn raw_get_many(keys: Vec<String>) -> Result<Option<Raw>, Error> {
    let values = wasmpush_sdk::bindings::wasmpush::plugin::data::get_many("blobs", &keys).map_err(Error::msg)?;
    Ok(Some(Raw(format!("{{\"values\":{}}}", values.len()))))
}

wasmpush_sdk::plugin!(tick);
