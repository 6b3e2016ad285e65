//! The plugin host's cost per connection per tick for `quote`, against the same function run
//! natively: `just bench-host` (`cargo bench -p wasmpush-tests --bench plugin_host`).
//!
//! - **native**: `quote_plugin::tick` on already-parsed params, each frame written into one
//!   reused buffer, as the guest writes a batch's frames.
//! - **host, cached params**: one `run` batch of 1,000 due connections through wasmtime, as a
//!   shard makes it every tick: params cached in the instance, the batch's frames copied out to
//!   the host and each one checked and read as the shard reads it before writing it.
//! - **host, params every call**: the same batch re-sending (and the guest re-parsing) every
//!   connection's params, the naive contract, for scale.
//!
//! Samples of the three alternate, so load on the machine affects all alike; the table gives the
//! median and the fastest sample per connection and the ratios of the medians to native.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wasmpush::Config;
use wasmpush::plugin::{BatchData, Calls, Outcome, Outcomes, PluginHost, PluginInstance, Trigger};
use wasmpush_sdk::{Context, Payload};
use wasmpush_tests::artifacts;

/// Connections in one batch.
const BATCH: usize = 1000;
/// Samples per variant.
const SAMPLES: usize = 41;
/// Time one sample runs for, at least.
const SAMPLE_TIME: Duration = Duration::from_millis(40);
/// The batch's time, fixed so every variant formats the same frames.
const NOW_MS: u64 = 1_700_000_000_000;

fn main() {
    let params: Vec<String> = (0..BATCH).map(|i| format!(r#"{{"symbol":"SYM{i}","nonce":{i}}}"#)).collect();
    let calls = |with_params: bool| -> Calls {
        let mut calls = Calls::with_capacity(BATCH);
        for (i, params) in params.iter().enumerate() {
            calls.push(i as u64, 7, Trigger::Tick, with_params.then_some(params.as_str()));
        }
        calls
    };
    let (fresh, cached) = (calls(true), calls(false));
    let none = BatchData::none();

    let host = PluginHost::new(wasmpush::sandbox_limits(&Config::default())).expect("plugin host");
    let version = host.load("quote", &std::fs::read(artifacts::QUOTE).expect("quote.wasm")).expect("load quote");
    let mut instance = PluginInstance::new(&version).expect("instantiate quote");
    let mut naive = PluginInstance::new(&version).expect("instantiate quote");
    // The first batch carries the params; from then on the instance has them, as in the engine.
    let expected = instance.run(NOW_MS, &fresh, &[], &none).expect("first batch").0;

    let parsed: Vec<quote_plugin::Params> = params.iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    let (mut native_text, mut native_ends) = (Vec::new(), Vec::with_capacity(BATCH));
    native_batch(&parsed, &mut native_text, &mut native_ends);
    let native_frames = split(&native_text, &native_ends);
    // The three produce the same frames, so they do the same work.
    assert_eq!(pushed(expected), native_frames, "the host and the native function disagree");
    assert_eq!(pushed(naive.run(NOW_MS, &fresh, &[], &none).unwrap().0), native_frames);

    let mut variants: [Variant; 3] = [
        ("native (parsed params)", Vec::new(), Box::new(|| native_batch(&parsed, &mut native_text, &mut native_ends))),
        (
            "host, cached params",
            Vec::new(),
            Box::new(|| read_all(instance.run(NOW_MS, black_box(&cached), &[], &none).unwrap().0)),
        ),
        (
            "host, params every call",
            Vec::new(),
            Box::new(|| read_all(naive.run(NOW_MS, black_box(&fresh), &[], &none).unwrap().0)),
        ),
    ];
    for _ in 0..SAMPLES {
        for (_, samples, run) in &mut variants {
            samples.push(sample_ns_per_connection(run));
        }
    }

    let median = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let baseline = median(&mut variants[0].1);
    println!("quote, batches of {BATCH} connections, {SAMPLES} samples each (alternating)\n");
    println!("| variant | median ns/connection | fastest ns/connection | median vs native |");
    println!("|---|---|---|---|");
    for (name, samples, _) in &mut variants {
        let median = median(samples);
        println!("| {name} | {median:.0} | {:.0} | {:.2}x |", samples[0], median / baseline);
    }
}

/// A variant under measurement: its name, its samples (ns per connection) and one batch of it.
type Variant<'a> = (&'static str, Vec<f64>, Box<dyn FnMut() + 'a>);

/// Writes every frame of the batch natively into `text`, one reused buffer, as the guest writes a
/// batch's texts: the same work without the boundary. `ends` gets where each frame ends.
fn native_batch(parsed: &[quote_plugin::Params], text: &mut Vec<u8>, ends: &mut Vec<usize>) {
    text.clear();
    ends.clear();
    for (i, params) in parsed.iter().enumerate() {
        let ctx = Context::new(i as u64, 7, wasmpush_sdk::Trigger::Tick, NOW_MS);
        quote_plugin::tick(&ctx, params).unwrap().unwrap().write_frame(text).unwrap();
        ends.push(text.len());
    }
    black_box(text);
}

/// The frames of a buffer written by [`native_batch`].
fn split(text: &[u8], ends: &[usize]) -> Vec<String> {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    starts.zip(ends).map(|(start, &end)| String::from_utf8(text[start..end].to_vec()).unwrap()).collect()
}

/// The frame texts of a batch that pushed on every connection.
fn pushed(outcomes: Outcomes) -> Vec<String> {
    let text = |outcome| match outcome {
        Ok(Outcome::Push(text)) => text.to_owned(),
        other => panic!("expected a push, got {other:?}"),
    };
    outcomes.iter().map(text).collect()
}

/// Reads every outcome of a batch as the shard does (each text checked to be UTF-8).
fn read_all(outcomes: Outcomes) {
    for outcome in outcomes.iter() {
        black_box(outcome.unwrap());
    }
}

/// Runs `batch` for at least [`SAMPLE_TIME`] and returns its time per connection.
fn sample_ns_per_connection(batch: &mut dyn FnMut()) -> f64 {
    let started = Instant::now();
    let mut batches = 0u32;
    while started.elapsed() < SAMPLE_TIME {
        batch();
        batches += 1;
    }
    started.elapsed().as_nanos() as f64 / f64::from(batches) / BATCH as f64
}
