//! `demo_feed` (`just demo-feed`): a small publisher for the `portfolio` example. It seeds
//! accounts `a1` … `a50` (a few holdings each) and prices for 12 symbols through the publish API,
//! then moves the prices in a random walk, a few every half second, until stopped. Connect a client
//! to `/ws/portfolio?params={"account":"a42"}` and watch the frames follow the feed.
//!
//! Usage: `demo_feed [--publish 127.0.0.1:9505] [--token TOKEN]` (or `WASMPUSH_PUBLISH_TOKEN`)

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use wasmpush_tests::http::request;

/// The symbols the feed prices.
const SYMBOLS: [&str; 12] =
    ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "AMD", "INTC", "ORCL", "IBM", "SAP"];

/// A small deterministic generator (xorshift), so the feed needs no dependency.
struct Walk(u64);

impl Walk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn post(publish: SocketAddr, token: Option<&str>, bucket: &str, body: Value) -> anyhow::Result<()> {
    let (status, answer) = request(publish, "POST", &format!("/v1/buckets/{bucket}"), token, &body.to_string()).await;
    anyhow::ensure!(status == 200, "POST /v1/buckets/{bucket}: {status} {answer}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut publish, mut token) =
        (SocketAddr::from(([127, 0, 0, 1], 9505)), std::env::var("WASMPUSH_PUBLISH_TOKEN").ok());
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--publish" => publish = args.next().context("--publish needs an address")?.parse()?,
            "--token" => token = Some(args.next().context("--token needs a value")?),
            other => anyhow::bail!("unknown flag {other}; usage: demo_feed [--publish ADDR] [--token TOKEN]"),
        }
    }
    let token = token.as_deref();
    let mut walk = Walk(0x9e37_79b9_7f4a_7c15);
    let mut prices: Vec<f64> = SYMBOLS.iter().map(|_| 50.0 + (walk.next() % 40_000) as f64 / 100.0).collect();
    let accounts: serde_json::Map<String, Value> = (1..=50)
        .map(|a| {
            let holdings: serde_json::Map<String, Value> = (0..3)
                .map(|h| (SYMBOLS[(a * 5 + h * 3) % SYMBOLS.len()].to_owned(), json!((a * 7 + h) % 20 + 1)))
                .collect();
            (format!("a{a}"), json!({ "holdings": holdings, "public": true }))
        })
        .collect();
    post(publish, token, "accounts", json!({ "put": accounts })).await?;
    println!("seeded accounts a1 … a50 on {publish}; moving {} prices (Ctrl-C stops)", SYMBOLS.len());
    loop {
        let mut put = serde_json::Map::new();
        for _ in 0..3 {
            let s = (walk.next() % SYMBOLS.len() as u64) as usize;
            let step = (walk.next() % 201) as f64 / 100.0 - 1.0;
            prices[s] = ((prices[s] * (1.0 + step / 100.0)) * 100.0).round() / 100.0;
            put.insert(SYMBOLS[s].to_owned(), json!({ "price": prices[s] }));
        }
        post(publish, token, "prices", json!({ "put": put })).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
