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
//!
//! A second table prices the data path: `portfolio` reading its account and 3 prices through the
//! data import (values unchanged since the last batch, as between two changes: the SDK serves
//! them from its cache and reports their ids), against
//! `portfolio-inline`, the same valuation handed the same values in its cached params.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmpush::Config;
use wasmpush::plugin::{
    BatchData, Calls, DataRead, DataSource, Outcome, Outcomes, PluginHost, PluginInstance, PluginVersion, Trigger,
};
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
            calls.push(i as u64, 7, Trigger::Tick, with_params.then_some(params.as_str().into()));
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
    let expected = instance.run(NOW_MS, &fresh, &[], &[], &none).expect("first batch");

    let parsed: Vec<quote_plugin::Params> = params.iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    let (mut native_text, mut native_ends) = (Vec::new(), Vec::with_capacity(BATCH));
    native_batch(&parsed, &mut native_text, &mut native_ends);
    let native_frames = split(&native_text, &native_ends);
    // The three produce the same frames, so they do the same work.
    assert_eq!(pushed(expected), native_frames, "the host and the native function disagree");
    assert_eq!(pushed(naive.run(NOW_MS, &fresh, &[], &[], &none).unwrap()), native_frames);

    let mut variants: [Variant; 3] = [
        ("native (parsed params)", Vec::new(), Box::new(|| native_batch(&parsed, &mut native_text, &mut native_ends))),
        (
            "host, cached params",
            Vec::new(),
            Box::new(|| read_all(instance.run(NOW_MS, black_box(&cached), &[], &[], &none).unwrap())),
        ),
        (
            "host, params every call",
            Vec::new(),
            Box::new(|| read_all(naive.run(NOW_MS, black_box(&fresh), &[], &[], &none).unwrap())),
        ),
    ];
    compare(
        &format!("quote, batches of {BATCH} connections, {SAMPLES} samples each (alternating)"),
        "native",
        &mut variants,
    );
    drop(variants);
    data_path(&host);
}

/// Prices a call's data path: `portfolio` reading 4 keys through the data import against the same
/// valuation with the same values in its params.
fn data_path(host: &PluginHost) {
    const PRICES: usize = 1000;
    let symbol = |s: usize| format!("S{s:04}");
    let held = |i: usize| [i % PRICES, (i * 7 + 1) % PRICES, (i * 13 + 2) % PRICES];
    let mut data = BenchData::default();
    for s in 0..PRICES {
        data.put("prices", &symbol(s), &format!(r#"{{"price":{}.5}}"#, s));
    }
    let mut inline_params = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        let holdings: Vec<String> = held(i).iter().map(|&s| format!("\"{}\":{}", symbol(s), i % 7 + 1)).collect();
        let holdings = format!("{{\"holdings\":{{{}}},\"public\":true}}", holdings.join(","));
        data.put("accounts", &format!("a{i}"), &holdings);
        // The values in the order the plugin reads them: holdings are a map, so by symbol.
        let mut symbols = held(i).map(symbol);
        symbols.sort();
        let prices: Vec<String> = symbols.iter().map(|s| data.get("prices", s)).collect();
        inline_params.push(format!(r#"{{"account":"a{i}","holdings":{holdings},"prices":[{}]}}"#, prices.join(",")));
    }
    let reading_params: Vec<String> = (0..BATCH).map(|i| format!(r#"{{"account":"a{i}"}}"#)).collect();
    let batch = |params: &[String], with_params: bool| -> Calls {
        let mut calls = Calls::with_capacity(BATCH);
        for (i, params) in params.iter().enumerate() {
            calls.push(i as u64, 7, Trigger::Tick, with_params.then_some(params.as_str().into()));
        }
        calls
    };
    let grants: Arc<[Arc<str>]> = Arc::from([Arc::from("accounts"), Arc::from("prices")]);
    let data = BatchData { source: Arc::new(data), grants };
    let load = |name: &str, path: &str| -> Arc<PluginVersion> {
        host.load(name, &std::fs::read(path).expect("plugin file")).expect("load plugin")
    };
    let mut reading = PluginInstance::new(&load("portfolio", artifacts::PORTFOLIO)).unwrap();
    let mut inline = PluginInstance::new(&load("portfolio-inline", artifacts::PORTFOLIO_INLINE)).unwrap();
    let none = BatchData::none();
    let reading_first = reading.run(NOW_MS, &batch(&reading_params, true), &[], &[], &data).unwrap();
    let inline_first = inline.run(NOW_MS, &batch(&inline_params, true), &[], &[], &none).unwrap();
    assert_eq!(pushed(reading_first), pushed(inline_first), "the two variants compute different frames");
    let (reading_calls, inline_calls) = (batch(&reading_params, false), batch(&inline_params, false));
    let mut variants: [Variant; 2] = [
        (
            "portfolio, values in cached params",
            Vec::new(),
            Box::new(|| read_all(inline.run(NOW_MS, black_box(&inline_calls), &[], &[], &none).unwrap())),
        ),
        (
            "portfolio, 4 keys through the data import",
            Vec::new(),
            Box::new(|| read_all(reading.run(NOW_MS, black_box(&reading_calls), &[], &[], &data).unwrap())),
        ),
    ];
    let title = format!("portfolio, batches of {BATCH} connections, data unchanged since the last batch");
    compare(&title, "params", &mut variants);
}

/// The data the benchmark's `portfolio` reads: JSON text by bucket and key.
#[derive(Default)]
struct BenchData {
    buckets: HashMap<Arc<str>, HashMap<Arc<str>, Arc<str>>>,
}

impl BenchData {
    fn put(&mut self, bucket: &str, key: &str, json: &str) {
        self.buckets.entry(Arc::from(bucket)).or_default().insert(Arc::from(key), Arc::from(json));
    }

    fn get(&self, bucket: &str, key: &str) -> String {
        self.buckets[bucket][key].to_string()
    }
}

impl DataSource for BenchData {
    fn read(&self, bucket: &str, key: &str) -> DataRead<'_> {
        let Some((bucket, keys)) = self.buckets.get_key_value(bucket) else {
            return DataRead { bucket: None, key: None, json: None };
        };
        match keys.get_key_value(key) {
            Some((key, json)) => DataRead { bucket: Some(bucket), key: Some(key), json: Some(json) },
            None => DataRead { bucket: Some(bucket), key: None, json: None },
        }
    }
}

/// Samples `variants` alternately, then prints their medians and fastest samples as a table, with
/// each median's ratio to the first variant's (called `baseline` in the header).
fn compare(title: &str, baseline: &str, variants: &mut [Variant]) {
    for _ in 0..SAMPLES {
        for (_, samples, run) in variants.iter_mut() {
            samples.push(sample_ns_per_connection(run));
        }
    }
    let median = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let first = median(&mut variants[0].1);
    println!("\n{title}\n");
    println!("| variant | median ns/connection | fastest ns/connection | median vs {baseline} |");
    println!("|---|---|---|---|");
    for (name, samples, _) in variants.iter_mut() {
        let median = median(samples);
        println!("| {name} | {median:.0} | {:.0} | {:.2}x |", samples[0], median / first);
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
