//! Live data end to end: the publish API feeds buckets, `portfolio` (built from source) reads them
//! through the data import, and a change re-runs exactly the connections that read it.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use wasmpush::Config;
use wasmpush::config::PluginSettings;
use wasmpush_tests::http::request;
use wasmpush_tests::{Client, KillOnDrop, TestEngine, artifacts};

use crate::util::{BINARY, SOON, TICK, encode, error_parts, plugins_dir_with, start_in_foreground, write_config};

/// Long enough that a frame that should not come would have come.
const QUIET: Duration = Duration::from_millis(600);

/// `portfolio` granted `accounts` and `prices`, with `settings` applied to its table.
pub(crate) fn portfolio(config: &mut Config, settings: impl FnOnce(&mut PluginSettings)) {
    let mut table = PluginSettings { read: vec!["accounts".into(), "prices".into()], ..PluginSettings::default() };
    settings(&mut table);
    config.plugins.insert("portfolio".into(), table);
}

async fn engine(settings: impl FnOnce(&mut PluginSettings)) -> TestEngine {
    TestEngine::start(&[("portfolio", artifacts::PORTFOLIO)], |config| portfolio(config, settings)).await
}

/// Publishes `body` to `path` with `method`; panics unless the API answers 200.
pub(crate) async fn publish(engine: &TestEngine, method: &str, path: &str, body: Value) {
    let (status, answer) = request(engine.publish_addr, method, path, None, &body.to_string()).await;
    assert_eq!(status, 200, "{method} {path}: {answer}");
}

/// Seeds account `a42` (10 AAPL, 5 MSFT) and `a7` (3 MSFT) with both prices.
pub(crate) async fn seed(engine: &TestEngine) {
    publish(
        engine,
        "POST",
        "/v1/buckets/accounts",
        json!({"put": {
            "a42": {"holdings": {"AAPL": 10, "MSFT": 5}, "public": true},
            "a7": {"holdings": {"MSFT": 3}, "public": true},
            "a1": {"holdings": {"GOOG": 1}, "public": true},
        }}),
    )
    .await;
    publish(engine, "POST", "/v1/buckets/prices", json!({"put": {"AAPL": {"price": 189.5}, "MSFT": {"price": 400}}}))
        .await;
}

/// A client of `portfolio` on `engine` for `account`.
pub(crate) async fn connect(engine: &TestEngine, account: &str) -> Client {
    let params = encode(&json!({ "account": account }).to_string());
    Client::connect(&engine.url(&format!("/ws/portfolio?params={params}"))).await
}

pub(crate) fn parse(frame: &str) -> Value {
    serde_json::from_str(frame).unwrap_or_else(|err| panic!("{err}: {frame}"))
}

/// The price of `symbol` in a portfolio frame.
fn price_of(frame: &Value, symbol: &str) -> Value {
    let positions = frame["positions"].as_array().unwrap_or_else(|| panic!("no positions in {frame}"));
    positions.iter().find(|p| p["symbol"] == symbol).map(|p| p["price"].clone()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_plugin_reads_published_data_and_values_the_portfolio() {
    let engine = engine(|_| {}).await;
    seed(&engine).await;
    let mut client = connect(&engine, "a42").await;
    let frame = parse(&client.next_text(SOON).await);
    assert_eq!(frame["account"], "a42");
    assert_eq!(frame["total"], 1895.0 + 2000.0);
    assert_eq!(frame["positions"][0], json!({"symbol": "AAPL", "qty": 10.0, "price": 189.5, "value": 1895.0}));
    assert_eq!(frame["missing"], json!([]));

    let mut unknown = connect(&engine, "nobody").await;
    let (code, message) = error_parts(&unknown.next_text(SOON).await);
    assert_eq!((code, message.as_str()), (0, "account nobody needs a token"), "anonymous: unknown or private");

    let mut no_price = connect(&engine, "a1").await;
    let frame = parse(&no_price.next_text(SOON).await);
    assert_eq!((frame["total"].clone(), frame["missing"].clone()), (json!(0.0), json!(["GOOG"])));
}

#[tokio::test]
async fn a_bucket_not_granted_is_an_error_for_that_call_only() {
    let engine = TestEngine::start(&[("portfolio", artifacts::PORTFOLIO), ("quote", artifacts::QUOTE)], |config| {
        portfolio(config, |table| table.read = vec!["accounts".into()]);
    })
    .await;
    seed(&engine).await;
    let mut neighbour =
        Client::connect(&engine.url(&format!("/ws/quote?params={}", encode(r#"{"symbol":"AAPL"}"#)))).await;
    neighbour.next_text(SOON).await;
    let mut client = connect(&engine, "a42").await;
    let (code, message) = error_parts(&client.next_text(SOON).await);
    assert_eq!(code, 0, "a business error for that call, not a fault: {message}");
    assert!(message.contains("bucket `prices` is not granted"), "{message}");
    assert!(neighbour.texts_during(TICK * 3).await.len() >= 2, "the neighbour keeps ticking");
}

#[tokio::test]
async fn a_change_pushes_exactly_the_connections_that_read_it_with_ticks_off() {
    let engine = engine(|table| table.tick_ms = Some(0)).await;
    seed(&engine).await;
    let (mut aapl_holder, mut msft_only) = (connect(&engine, "a42").await, connect(&engine, "a7").await);
    aapl_holder.next_text(SOON).await;
    msft_only.next_text(SOON).await;
    assert!(aapl_holder.texts_during(QUIET).await.is_empty(), "tick_ms = 0: nothing without a change");

    publish(&engine, "PUT", "/v1/buckets/prices/keys/AAPL", json!({"price": 190})).await;
    let frame = parse(&aapl_holder.next_text(SOON).await);
    assert_eq!(price_of(&frame, "AAPL"), json!(190.0));
    assert!(msft_only.texts_during(QUIET).await.is_empty(), "a7 never read AAPL");
    assert!(aapl_holder.texts_during(QUIET).await.is_empty(), "one change, one push");

    publish(&engine, "PUT", "/v1/buckets/prices/keys/MSFT", json!({"price": 401})).await;
    assert_eq!(price_of(&parse(&msft_only.next_text(SOON).await), "MSFT"), json!(401.0));
    assert_eq!(price_of(&parse(&aapl_holder.next_text(SOON).await), "MSFT"), json!(401.0));

    // The same value again is no change.
    publish(&engine, "PUT", "/v1/buckets/prices/keys/MSFT", json!({"price": 401})).await;
    assert!(msft_only.texts_during(QUIET).await.is_empty());
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    assert!(metrics.contains("wasmpush_data_pushes_total 3"), "{metrics}");
}

#[tokio::test]
async fn an_account_published_after_the_error_resumes_the_parked_connection() {
    let engine = engine(|table| table.tick_ms = Some(0)).await;
    seed(&engine).await;
    let mut client = connect(&engine, "a99").await;
    assert_eq!(error_parts(&client.next_text(SOON).await).1, "account a99 needs a token");
    // A change to a key the erroring call did not read changes nothing.
    publish(&engine, "PUT", "/v1/buckets/accounts/keys/a7", json!({"holdings": {"MSFT": 4}, "public": true})).await;
    assert!(client.texts_during(QUIET).await.is_empty());
    publish(&engine, "PUT", "/v1/buckets/accounts/keys/a99", json!({"holdings": {"AAPL": 1}, "public": true})).await;
    assert_eq!(parse(&client.next_text(SOON).await)["total"], 189.5);
}

#[tokio::test]
async fn skip_unchanged_sends_a_frame_only_when_it_differs() {
    let engine = engine(|table| table.skip_unchanged = true).await;
    seed(&engine).await;
    let mut client = connect(&engine, "a42").await;
    client.next_text(SOON).await;
    assert!(client.texts_during(TICK * 4).await.is_empty(), "ticks run, but the frame is the same");
    publish(&engine, "PUT", "/v1/buckets/prices/keys/AAPL", json!({"price": 200})).await;
    assert_eq!(price_of(&parse(&client.next_text(SOON).await), "AAPL"), json!(200.0));
    assert!(client.texts_during(TICK * 3).await.is_empty());
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    let unchanged = metrics.lines().find_map(|line| line.strip_prefix("wasmpush_frames_unchanged_total ")).unwrap();
    assert!(unchanged.parse::<u64>().unwrap() >= 3, "{metrics}");
}

#[tokio::test]
async fn a_batch_is_seen_whole_by_every_call() {
    let engine = TestEngine::start(&[("portfolio", artifacts::PORTFOLIO)], |config| {
        config.data_coalesce_ms = 0;
        portfolio(config, |table| table.tick_ms = Some(0));
    })
    .await;
    seed(&engine).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = connect(&engine, "a42").await;
        client.next_text(SOON).await;
        clients.push(client);
    }
    for round in 1..=20 {
        publish(
            &engine,
            "POST",
            "/v1/buckets/prices",
            json!({"put": {"AAPL": {"price": round}, "MSFT": {"price": round}}}),
        )
        .await;
    }
    for client in &mut clients {
        let frames = client.texts_during(QUIET).await;
        assert!(!frames.is_empty());
        for frame in frames.iter().map(|frame| parse(frame)) {
            assert_eq!(price_of(&frame, "AAPL"), price_of(&frame, "MSFT"), "a frame saw half a batch: {frame}");
        }
        assert_eq!(price_of(&parse(frames.last().unwrap()), "AAPL"), json!(20.0), "the last frame has the last batch");
    }
}

#[tokio::test]
async fn the_publish_api_reads_lists_and_deletes() {
    let engine = engine(|_| {}).await;
    seed(&engine).await;
    let addr = engine.publish_addr;
    let get = |path: &'static str| async move { request(addr, "GET", &format!("/v1/buckets/{path}"), None, "").await };
    assert_eq!(get("prices/keys/AAPL").await, (200, r#"{"price":189.5}"#.to_owned()));
    let (status, page) = get("accounts?limit=2").await;
    assert_eq!((status, parse(&page)), (200, json!({"keys": ["a1", "a42"], "next": "a42"})));
    let (_, page) = get("accounts?limit=2&after=a42").await;
    assert_eq!(parse(&page), json!({"keys": ["a7"], "next": null}));
    let (status, _) = request(engine.publish_addr, "DELETE", "/v1/buckets/prices/keys/AAPL", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(get("prices/keys/AAPL").await.0, 404);
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_reason() {
    let engine = TestEngine::start(&[], |config| {
        config.max_value_bytes = 60_000;
        config.max_batch_keys = 3;
        config.max_buckets = 2;
        config.max_data_mib = 1;
    })
    .await;
    let send = |method: &'static str, path: String, body: String| {
        let addr = engine.publish_addr;
        async move {
            let (status, answer) = request(addr, method, &path, None, &body).await;
            let reason = parse(&answer)["error"].as_str().map_or_else(|| answer.clone(), str::to_owned);
            (status, reason)
        }
    };
    let big = |bytes: usize| format!("\"{}\"", "v".repeat(bytes));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("PUT", "/v1/buckets/b/keys/k", "{oops".into(), 400, "not valid JSON"),
        ("PUT", "/v1/buckets/b.c/keys/k", "1".into(), 400, "bucket name `b.c`"),
        ("PUT", "/v1/buckets/b/keys/.k", "1".into(), 400, "must not start or end with `.`"),
        ("PUT", "/v1/buckets/b/keys/k", big(80_000), 413, "more than max_value_bytes"),
        (
            "POST",
            "/v1/buckets/b",
            r#"{"put":{"a":1,"b":2,"c":3,"d":4}}"#.into(),
            413,
            "the most one batch may hold (max_batch_keys",
        ),
        ("POST", "/v1/buckets/b", r#"{"put":{"a":1},"delete":["a"]}"#.into(), 400, "both put and deleted"),
        ("POST", "/v1/buckets/b", r#"{"set":{}}"#.into(), 400, "unknown field `set`"),
        ("POST", "/v1/buckets/b", "{}".into(), 400, "changes nothing"),
        ("GET", "/v1/buckets/b/keys/nope", String::new(), 404, "has no key `nope`"),
        ("DELETE", "/v1/buckets/b/keys/nope", String::new(), 404, "has no key `nope`"),
        ("GET", "/v1/buckets/empty", String::new(), 404, "holds no keys"),
        ("GET", "/v1/buckets/b?limit=0", String::new(), 400, "limit must be between"),
        ("GET", "/v2/anything", String::new(), 404, "no such endpoint"),
    ];
    for (method, path, body, status, reason) in cases {
        let (got, said) = send(method, path.to_owned(), body).await;
        assert_eq!(got, status, "{method} {path}: {said}");
        assert!(said.contains(reason), "{method} {path}: `{said}` does not say `{reason}`");
    }
    // Two buckets are the limit; a third is refused whole.
    for bucket in ["one", "two"] {
        let (status, reason) = send("PUT", format!("/v1/buckets/{bucket}/keys/k"), "1".into()).await;
        assert_eq!(status, 200, "{reason}");
    }
    let (status, reason) = send("PUT", "/v1/buckets/three/keys/k".into(), "1".into()).await;
    assert_eq!((status, reason.contains("more than max_buckets")), (507, true), "{reason}");
    // 1 MiB in all: values of 50 KB stop fitting after about 20.
    let mut refused = None;
    for n in 0..30 {
        let (status, reason) = send("PUT", format!("/v1/buckets/one/keys/v{n}"), big(50_000)).await;
        if status != 200 {
            refused = Some((n, status, reason));
            break;
        }
    }
    let (n, status, reason) = refused.expect("the budget was never reached");
    assert!((19..=21).contains(&n), "refused at value {n}");
    assert_eq!(status, 507, "{reason}");
    assert!(reason.contains("more than max_data_bytes"), "{reason}");
    // What was refused was not kept.
    assert_eq!(request(engine.publish_addr, "GET", &format!("/v1/buckets/one/keys/v{n}"), None, "").await.0, 404);
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let token = "a-publish-token-of-some-length";
    let engine = TestEngine::start(&[], |config| config.publish_token = Some(token.into())).await;
    let put = |token: Option<&'static str>| request(engine.publish_addr, "PUT", "/v1/buckets/b/keys/k", token, "1");
    let (status, answer) = put(None).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("Authorization: Bearer"), "{answer}");
    assert_eq!(put(Some("a-wrong-token-of-the-same-size")).await.0, 403);
    assert_eq!(put(Some(token)).await.0, 200);
}

#[tokio::test]
async fn data_survives_a_restart_and_a_hot_swap_sees_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let start = || {
        let data_dir = data_dir.clone();
        TestEngine::start(&[("versioned", artifacts::VERSIONED_V1)], move |config| {
            config.data_dir = data_dir;
            config.plugins.insert(
                "versioned".into(),
                PluginSettings { read: vec!["shared".into()], tick_ms: Some(0), ..Default::default() },
            );
        })
    };
    let engine = start().await;
    publish(&engine, "PUT", "/v1/buckets/shared/keys/k", json!({"n": 1})).await;
    engine.stop().await.unwrap();

    let engine = start().await;
    let mut client =
        Client::connect(&engine.url(&format!("/ws/versioned?params={}", encode(r#"{"watch":"k"}"#)))).await;
    let first = parse(&client.next_text(SOON).await);
    assert_eq!(
        (first["version"].clone(), first["value"].clone()),
        (json!("1"), json!({"n": 1})),
        "kept across the restart"
    );

    // The new version serves the next change, reading the same data ...
    engine.deploy("versioned", artifacts::VERSIONED_V2);
    let mut swapped = None;
    for n in 2..100 {
        publish(&engine, "PUT", "/v1/buckets/shared/keys/k", json!({ "n": n })).await;
        let frame = parse(&client.next_text(SOON).await);
        assert_eq!(frame["value"], json!({ "n": n }), "every version sees the data published");
        if frame["version"] == "2" {
            swapped = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped.is_some(), "version 2 never served");
    // ... and what its calls read is what the next change re-runs.
    publish(&engine, "PUT", "/v1/buckets/shared/keys/k", json!({"n": 1000})).await;
    let next = parse(&client.next_text(SOON).await);
    assert_eq!((next["version"].clone(), next["value"].clone()), (json!("2"), json!({"n": 1000})));
}

#[tokio::test]
async fn an_acknowledged_update_survives_kill_9_and_is_served_before_the_first_connection() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with(dir.path(), &[("portfolio", artifacts::PORTFOLIO)]);
    let table = "[plugins.portfolio]\nread = [\"accounts\", \"prices\"]\ntick_ms = 0\n";
    let (config, port, _) = write_config(dir.path(), &plugins, table);
    let publish: std::net::SocketAddr = {
        let parsed: Config = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        parsed.publish
    };
    let start = || start_in_foreground(&config, &dir.path().join("wasmpush.pid"));
    let url = format!("ws://127.0.0.1:{port}/ws/portfolio?params={}", encode(r#"{"account":"a42"}"#));

    let mut engine = start();
    let _ready = Client::connect_retrying(&url, SOON * 10).await;
    let body = json!({"put": {"a42": {"holdings": {"AAPL": 2}, "public": true}}}).to_string();
    assert_eq!(request(publish, "POST", "/v1/buckets/accounts", None, &body).await.0, 200);
    assert_eq!(request(publish, "PUT", "/v1/buckets/prices/keys/AAPL", None, r#"{"price":10}"#).await.0, 200);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(engine.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    engine.wait().unwrap();

    let _engine = start();
    // The first connection the new process accepts is served from the data on disk.
    let mut client = Client::connect_retrying(&url, SOON * 10).await;
    assert_eq!(parse(&client.next_text(SOON).await)["total"], 20.0);
}

// The CLI blocks this test's thread while the engine in it serves: give the engine threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_puts_gets_lists_and_deletes() {
    let engine = engine(|_| {}).await;
    let publish = engine.publish_addr.to_string();
    let data = |args: &[&str]| {
        let output = Command::new(BINARY).arg("data").args(args).args(["--publish", &publish]).output().unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    };
    assert!(data(&["put", "prices", "AAPL", r#"{ "price": 1 }"#]).1.contains("revision"));
    data(&["put", "prices", "MSFT", "2"]);
    assert_eq!(data(&["get", "prices", "AAPL"]), (true, r#"{"price":1}"#.to_owned(), String::new()));
    assert_eq!(data(&["ls", "prices"]).1, "AAPL\nMSFT");
    assert_eq!(data(&["ls", "prices", "--after", "AAPL"]).1, "MSFT");
    assert!(data(&["del", "prices", "AAPL"]).0);
    let (ok, _, error) = data(&["get", "prices", "AAPL"]);
    assert!(!ok && error.contains("404: bucket `prices` has no key `AAPL`"), "{error}");
    let (ok, _, error) = data(&["put", "prices", "AAPL", "{oops"]);
    assert!(!ok && error.contains("400: value of key `AAPL` is not valid JSON"), "{error}");
}

#[tokio::test]
async fn the_demo_feed_moves_the_portfolio_of_a_demo_account() {
    let engine = engine(|table| table.tick_ms = Some(0)).await;
    let _feed = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_demo_feed"))
            .args(["--publish", &engine.publish_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Until the feed has seeded the account, the client is told it is unknown; the seed re-runs it.
    let mut client = connect(&engine, "a42").await;
    let mut totals = Vec::new();
    while totals.len() < 3 {
        let frame = parse(&client.next_text(SOON).await);
        if frame["total"].is_number() {
            totals.push(frame["total"].clone());
        }
    }
    assert_ne!(totals[0], totals[2], "prices move");
}
