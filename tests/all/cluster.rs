//! Several engine nodes on one real `nats-server -js`: data published through any node reaches
//! the clients of every node, a batch whole, and a node that cannot reach NATS refuses writes at
//! once rather than applying them later. On three NATS servers with replicated streams (the
//! production topology), the nodes outlive the loss of a server, and of all three at once, and
//! deploys waiting for their nodes meanwhile, or made as NATS comes back, return once every node
//! serves their builds.

use std::time::Duration;

use futures_util::TryStreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use wasmpush_tests::http::request;
use wasmpush_tests::{Client, NatsServer, TestEngine, artifacts};

use crate::data::{connect, parse, portfolio};
use crate::util::{BINARY, SOON, config_address, encode, write_config};
use std::process::Command;

/// `nodes` engines serving `portfolio` without ticks, members of the cluster on `nats`, each
/// serving once it caught up with the cluster's data.
async fn nodes(nats: &NatsServer, nodes: usize) -> Vec<TestEngine> {
    let started = nodes_on(nats, nodes).await;
    until_caught_up(&started, Duration::from_secs(10)).await;
    started
}

/// Waits until every node of `nodes` says it caught up with the cluster's data (`/healthz` 200).
async fn until_caught_up(nodes: &[TestEngine], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    for node in nodes {
        while node.healthz().await.0 != 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never caught up: {:?}",
                node.addr,
                node.healthz().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `nodes` engines serving `portfolio` without ticks, members of the cluster on `nats`.
pub(crate) async fn nodes_on(nats: &NatsServer, nodes: usize) -> Vec<TestEngine> {
    nodes_with(vec![vec![nats.url()]; nodes], 1).await
}

/// One engine serving `portfolio` without ticks per entry of `servers`: the NATS servers it is
/// given; the buckets it creates have `replicas` copies.
async fn nodes_with(servers: Vec<Vec<String>>, replicas: usize) -> Vec<TestEngine> {
    let start = |urls: Vec<String>| {
        TestEngine::start(&[("portfolio", artifacts::PORTFOLIO)], move |config| {
            portfolio(config, |table| table.tick_ms = Some(0));
            config.cluster.nats = urls;
            config.cluster.replicas = replicas;
            // Canaries are not judged on call time here: on a loaded CI machine a descheduled
            // shard makes any build's p99 look slow (the time rule has its unit test).
            config.rollouts.p99_floor_us = 60_000_000;
        })
    };
    join_all(servers.into_iter().map(start)).await
}

/// Writes through `node`'s publish API; the revision JetStream stored it at.
async fn write(node: &TestEngine, method: &str, path: &str, body: Value) -> u64 {
    let (status, answer) = request(node.publish_addr, method, path, None, &body.to_string()).await;
    assert_eq!(status, 200, "{method} {path}: {answer}");
    parse(&answer)["revision"].as_u64().unwrap()
}

/// Writes public account `a42` holding `holdings` through `node`.
async fn write_a42(node: &TestEngine, holdings: Value) {
    write(node, "PUT", "/v1/buckets/accounts/keys/a42", json!({ "holdings": holdings, "public": true })).await;
}

/// Waits until `node` serves `key` of `bucket` as `value`.
async fn until_node_has(node: &TestEngine, bucket: &str, key: &str, value: &Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) =
            request(node.publish_addr, "GET", &format!("/v1/buckets/{bucket}/keys/{key}"), None, "").await;
        if status == 200 && parse(&body) == *value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never had {bucket}/{key} = {value}: {status} {body}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_published_through_one_node_reaches_every_node_a_batch_whole() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 3).await;
    let account = json!({"holdings": {"AAPL": 10, "MSFT": 5}, "public": true});
    write(&nodes[0], "PUT", "/v1/buckets/accounts/keys/a42", account.clone()).await;
    let prices = json!({"put": {"AAPL": {"price": 1}, "MSFT": {"price": 2}}});
    let revision = write(&nodes[1], "POST", "/v1/buckets/prices", prices).await;
    for node in &nodes {
        until_node_has(node, "prices", "MSFT", &json!({"price": 2})).await;
        let (status, body) = request(node.publish_addr, "GET", "/v1/buckets/accounts/keys/a42", None, "").await;
        assert_eq!((status, parse(&body)), (200, account.clone()), "{}", node.addr);
    }
    let mut clients = join_all(nodes.iter().map(|node| connect(node, "a42"))).await;
    for client in &mut clients {
        assert_eq!(parse(&client.next_text(SOON).await)["total"], 20.0);
    }

    // One JetStream atomic batch holds at most 1,000 messages: a larger batch is refused whole.
    let put: serde_json::Map<String, Value> = (0..1001).map(|i| (format!("S{i}"), json!({"price": 1}))).collect();
    let body = json!({ "put": put }).to_string();
    let (status, answer) = request(nodes[0].publish_addr, "POST", "/v1/buckets/prices", None, &body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("at most 1000"), "{answer}");

    // A batch through the third node: every client's next frame shows both prices moved.
    let moved = json!({"put": {"AAPL": {"price": 3}, "MSFT": {"price": 4}}});
    let next = write(&nodes[2], "POST", "/v1/buckets/prices", moved).await;
    assert!(next > revision, "revisions are the stream's and go up: {revision} then {next}");
    for client in &mut clients {
        let frame = parse(&client.next_text(SOON).await);
        assert_eq!(frame["total"], 50.0, "a frame shows the batch whole: {frame}");
    }

    // Any node's console lists every node, live, and the data every node holds.
    let every_node = |event: &str, data: &str| {
        let update: Value = serde_json::from_str(data).unwrap_or_default();
        let live = |nodes: &Vec<Value>| nodes.iter().filter(|node| node["gone"] == false).count();
        event == "update" && update["nodes"].as_array().is_some_and(|nodes| live(nodes) == 3)
    };
    let update = wasmpush_tests::http::until_event(nodes[2].admin_addr, "/console/stream", SOON * 4, every_node).await;
    let update: Value = serde_json::from_str(&update.expect("an update listing three live nodes")).unwrap();
    assert!(
        update["nodes"].as_array().unwrap().iter().all(|node| node["status"]["nats_connected"] == true),
        "{update}"
    );
    let keys: Vec<(&str, u64)> = update["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["keys"].as_u64().unwrap()))
        .collect();
    assert_eq!(keys, [("accounts", 1), ("prices", 2)], "{update}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_three_nats_servers_with_three_replicas_the_nodes_outlive_the_stream_leaders_server_and_all_three() {
    let mut servers = NatsServer::cluster(3).await;
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    // Node i is given every server, its own first.
    let given = (0..3).map(|i| urls.iter().cycle().skip(i).take(3).cloned().collect()).collect();
    let nodes = nodes_with(given, 3).await;
    // Each replicated bucket is a Raft group of its own to set up: on a loaded machine that takes
    // longer than a bucket on one server.
    until_caught_up(&nodes, Duration::from_secs(30)).await;
    write_a42(&nodes[0], json!({"AAPL": 10, "MSFT": 5})).await;
    write(&nodes[0], "POST", "/v1/buckets/prices", json!({"put": {"AAPL": {"price": 1}, "MSFT": {"price": 2}}})).await;
    for node in &nodes {
        until_node_has(node, "prices", "MSFT", &json!({"price": 2})).await;
    }
    let mut clients = join_all(nodes.iter().map(|node| connect(node, "a42"))).await;
    for client in &mut clients {
        assert_eq!(parse(&client.next_text(SOON).await)["total"], 20.0);
    }

    // The data stream has a copy on each server; the server leading it is killed.
    let js = async_nats::jetstream::new(async_nats::connect(urls[0].as_str()).await.unwrap());
    let info = js.get_stream("KV_wasmpush-data").await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    let cluster = info.cluster.expect("a replicated stream reports its cluster");
    assert_eq!(cluster.replicas.len(), 2, "a leader and two more copies: {cluster:?}");
    let leader = cluster.leader.expect("the stream has a leader");
    let index = leader.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()).expect("servers are named n0..n2");
    servers[index].kill();

    // A batch through the node whose own server died: once its client moved to a live server and
    // the stream has a new leader, it is acknowledged, and every node's client sees it whole.
    let moved = json!({"put": {"AAPL": {"price": 3}, "MSFT": {"price": 4}}});
    let revision = write_once_nats_takes_it(&nodes[index], &moved, Duration::from_secs(30)).await;
    for client in &mut clients {
        assert_eq!(parse(&client.next_text(SOON * 4).await)["total"], 50.0, "a frame shows the batch whole");
    }
    until_every_node_at(&nodes, revision).await;

    // Every server killed at once, while a deploy waits for its nodes, and started again on its
    // store 2 s later: once NATS has elected its leaders again, a write is acknowledged and every
    // node converges to it, nothing skipped or applied twice (the clients' account, written first,
    // is still there).
    let waiting = WaitingDeploy::start(&urls, "versioned", artifacts::VERSIONED_V1).await;
    for server in &mut servers {
        server.kill();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for server in &mut servers {
        server.restart();
    }
    // A deploy right away: JetStream answers nothing until NATS has elected its leaders, and the
    // deploy asks again meanwhile.
    let right_away = WaitingDeploy::start(&urls, "fresh", artifacts::VERSIONED_V2).await;
    let after = json!({"put": {"AAPL": {"price": 5}, "MSFT": {"price": 6}}});
    let revision = write_once_nats_takes_it(&nodes[1], &after, Duration::from_secs(60)).await;
    for client in &mut clients {
        assert_eq!(parse(&client.next_text(SOON * 4).await)["total"], 80.0, "a frame shows the batch whole");
    }
    until_every_node_at(&nodes, revision).await;
    // The deploys asked again while JetStream did not answer, and took the nodes silent during
    // the outage for live ones still to come, not gone: when they return, every node serves their
    // builds.
    for deploy in [waiting, right_away] {
        deploy.finished(&nodes).await;
    }
}

/// `wasmpush deploy PLUGIN FILE --wait 90` to a cluster, running.
struct WaitingDeploy {
    plugin: &'static str,
    build: String,
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl WaitingDeploy {
    /// Deploys `file` as `plugin` through NATS `urls`; returns once the build is deployed and the
    /// command waits for the nodes.
    async fn start(urls: &[String], plugin: &'static str, file: &'static str) -> WaitingDeploy {
        let urls = urls.join(",");
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead as _;
            let mut child = Command::new(BINARY)
                .args(["deploy", plugin, file, "--nats", &urls, "--wait", "90"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut deployed = String::new();
            stdout.read_line(&mut deployed).unwrap();
            if !deployed.starts_with(&format!("deployed {plugin}")) {
                let output = child.wait_with_output().unwrap();
                panic!("the deploy of {plugin} failed: {}", String::from_utf8_lossy(&output.stderr));
            }
            let build = wasmpush::plugin::content_hash(&std::fs::read(file).unwrap());
            WaitingDeploy { plugin, build, child, stdout }
        })
        .await
        .unwrap()
    }

    /// Waits for the command to end: it must say that all of `nodes` serve the build, and they
    /// must.
    async fn finished(self, nodes: &[TestEngine]) {
        let WaitingDeploy { plugin, build, child, mut stdout } = self;
        let printed = tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let mut printed = String::new();
            stdout.read_to_string(&mut printed).unwrap();
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "the waiting deploy of {plugin} failed: {stderr}");
            printed
        })
        .await
        .unwrap();
        assert!(printed.contains(&format!("served by all {} live nodes", nodes.len())), "{printed}");
        for node in nodes {
            let status = node.status().await;
            assert!(
                plugin_of(&status, plugin)["version"] == build.as_str(),
                "{} does not serve the build the deploy of {plugin} waited for: {status}",
                node.addr
            );
        }
    }
}

/// Plugin `plugin`'s entry of a `/status` (null if it is not served).
pub(crate) fn plugin_of(status: &Value, plugin: &str) -> Value {
    let plugins = status["plugins"].as_array().unwrap();
    plugins.iter().find(|served| served["name"] == plugin).cloned().unwrap_or_default()
}

/// POSTs `batch` to bucket `prices` through `node` until NATS acknowledges it (answered 503 or
/// 504 meanwhile, never anything else), for at most `within`; the revision it was stored at.
async fn write_once_nats_takes_it(node: &TestEngine, batch: &Value, within: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = request(node.publish_addr, "POST", "/v1/buckets/prices", None, &batch.to_string()).await;
        if status == 200 {
            return parse(&body)["revision"].as_u64().unwrap();
        }
        assert!([503, 504].contains(&status), "refused or unknown while NATS fails over, never more: {status} {body}");
        assert!(tokio::time::Instant::now() < deadline, "writes never resumed within {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node of `nodes` applied up to `revision`, and none past it.
async fn until_every_node_at(nodes: &[TestEngine], revision: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let revisions: Vec<u64> =
            join_all(nodes.iter().map(|node| async move { node.status().await["data_revision"].as_u64().unwrap() }))
                .await;
        assert!(revisions.iter().all(|applied| *applied <= revision), "a node past {revision}: {revisions:?}");
        if revisions.iter().all(|applied| *applied == revision) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not every node reached {revision}: {revisions:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_nats_refuses_writes_and_serves_its_clients_from_its_data() {
    let mut nats = NatsServer::start();
    let nodes = nodes(&nats, 2).await;
    write_a42(&nodes[0], json!({"AAPL": 1})).await;
    write(&nodes[0], "PUT", "/v1/buckets/prices/keys/AAPL", json!({"price": 7})).await;
    until_node_has(&nodes[1], "prices", "AAPL", &json!({"price": 7})).await;
    nats.kill();
    // Until the node notices the server is gone, a write waits for an acknowledgement that never
    // comes (504, outcome unknown); from then on it is refused at once (503).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut unknown = false;
    let refused = loop {
        let (status, body) =
            request(nodes[1].publish_addr, "PUT", "/v1/buckets/prices/keys/AAPL", None, r#"{"price":8}"#).await;
        if status == 503 {
            break body;
        }
        unknown |= status == 504;
        assert_ne!(status, 200, "no write is acknowledged while NATS is down");
        assert!(tokio::time::Instant::now() < deadline, "still {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.contains("NATS"), "{refused}");
    let health = nodes[1].healthz().await;
    assert_eq!(health.0, 503, "degraded, not down: {}", health.1);
    assert!(health.1.contains("degraded: cluster: NATS is unreachable"), "{}", health.1);
    let mut client = connect(&nodes[1], "a42").await;
    assert_eq!(parse(&client.next_text(SOON).await)["total"], 7.0, "served from the node's own data");
    // A node started while NATS is down starts, and says it is degraded until it caught up.
    let late = nodes_on(&nats, 1).await.remove(0);
    assert_eq!(late.healthz().await.0, 503);

    // Once NATS is back, writes go through and reach the other node; the refused one never lands.
    nats.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) =
            request(nodes[0].publish_addr, "PUT", "/v1/buckets/prices/keys/MSFT", None, r#"{"price":9}"#).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "writes never resumed: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_node_has(&nodes[1], "prices", "MSFT", &json!({"price": 9})).await;
    until_node_has(&late, "prices", "MSFT", &json!({"price": 9})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while late.healthz().await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late node never said it caught up: {:?}",
            late.healthz().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = request(nodes[1].publish_addr, "GET", "/v1/buckets/prices/keys/AAPL", None, "").await;
    // A write answered 503 was never sent; one answered 504 may have landed (its outcome was
    // unknown, as the answer said).
    if !unknown {
        assert_eq!(parse(&body), json!({"price": 7}), "the write refused during the outage was never applied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_another_program_writes_into_the_bucket_are_checked_like_published_ones() {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, 2).await;
    // The bucket exists once a node has followed it; a node's write makes sure.
    write(&nodes[0], "PUT", "/v1/buckets/prices/keys/AAPL", json!({"price": 1})).await;
    let kv = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap())
        .get_key_value("wasmpush-data")
        .await
        .unwrap();
    // The stream itself refuses a value over max_value_bytes.
    let big = format!("\"{}\"", "x".repeat(70_000));
    assert!(kv.put("prices.HUGE", bytes::Bytes::from(big)).await.is_err());
    // Not JSON, and a key valid in KV but not in wasmpush (`/`): not applied, read as missing.
    for (key, value) in [("prices.BAD", "{oops"), ("prices.a/b", "1"), ("prices.GOOD", r#"{"price":2}"#)] {
        kv.put(key, bytes::Bytes::from(value)).await.unwrap();
    }
    for node in &nodes {
        until_node_has(node, "prices", "GOOD", &json!({"price": 2})).await;
        let (status, _) = request(node.publish_addr, "GET", "/v1/buckets/prices/keys/BAD", None, "").await;
        assert_eq!(status, 404, "a value that is not JSON reads as missing on {}", node.addr);
        let (_, listing) = request(node.publish_addr, "GET", "/v1/buckets/prices", None, "").await;
        assert_eq!(parse(&listing)["keys"], json!(["AAPL", "GOOD"]), "{}", node.addr);
        let status = node.status().await;
        assert_eq!(status["invalid_values"], json!({"prices": 2}), "counted by bucket: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_node_resumes_from_the_old_ones_revision() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(artifacts::PORTFOLIO, plugins.join("portfolio.wasm")).unwrap();
    let tables = format!(
        "drain_secs = 1\n[plugins.portfolio]\nread = [\"accounts\", \"prices\"]\ntick_ms = 0\n[cluster]\nnats = [\"{}\"]\n",
        nats.url()
    );
    let (config, port, admin) = write_config(dir.path(), &plugins, &tables);
    let publish = config_address(&config, "publish");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |command: &str| {
        let args = [
            command,
            "--daemon",
            "--config",
            &path("wasmpush.toml"),
            "--pid-file",
            &path("wasmpush.pid"),
            "--log-file",
            &path("log"),
        ];
        let output = Command::new(BINARY).args(args).output().unwrap();
        assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
    };
    run("start");
    let put = async |key: &str, value: Value| {
        let (status, answer) = request(publish, "PUT", key, None, &value.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        parse(&answer)["revision"].as_u64().unwrap()
    };
    put("/v1/buckets/accounts/keys/a42", json!({"holdings": {"AAPL": 1}, "public": true})).await;
    let before = put("/v1/buckets/prices/keys/AAPL", json!({"price": 5})).await;
    // Acknowledged by JetStream; applied by the node a moment later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while request(publish, "GET", "/v1/buckets/prices/keys/AAPL", None, "").await.1 != r#"{"price":5}"# {
        assert!(tokio::time::Instant::now() < deadline, "the node never applied its own write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("ws://127.0.0.1:{port}/ws/portfolio?params={}", encode(r#"{"account":"a42"}"#));
    let mut client = Client::connect(&url).await;
    assert_eq!(parse(&client.next_text(SOON).await)["total"], 5.0);

    run("restart");
    let after = put("/v1/buckets/prices/keys/AAPL", json!({"price": 6})).await;
    assert_eq!(after, before + 1, "the stream's next revision, through the new engine");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while request(publish, "GET", "/v1/buckets/prices/keys/AAPL", None, "").await.1 != r#"{"price":6}"# {
        assert!(tokio::time::Instant::now() < deadline, "the new engine never applied the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fresh = Client::connect(&url).await;
    assert_eq!(parse(&fresh.next_text(SOON).await)["total"], 6.0, "the new engine follows on from the old one's data");
    let status = wasmpush_tests::http::get(([127, 0, 0, 1], admin).into(), "/status").await;
    assert_eq!(parse(&status)["data_revision"], after, "{status}");
    let stop = Command::new(BINARY).args(["stop", "--pid-file", &path("wasmpush.pid")]).output().unwrap();
    assert!(stop.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resyncs_with_a_recreated_stream_and_drops_what_it_no_longer_holds() {
    let mut nats = NatsServer::start();
    let nodes = nodes(&nats, 1).await;
    write_a42(&nodes[0], json!({"AAPL": 1, "MSFT": 2})).await;
    for price in 1..=3 {
        write(&nodes[0], "PUT", "/v1/buckets/prices/keys/AAPL", json!({ "price": price })).await;
    }
    until_node_has(&nodes[0], "prices", "AAPL", &json!({"price": 3})).await;
    let mut client = connect(&nodes[0], "a42").await;
    assert_eq!(parse(&client.next_text(SOON).await)["total"], 3.0);

    // NATS rebuilt empty; another program writes a new history, longer than the node's.
    nats.wipe();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let kv = loop {
        if let Ok(kv) = js.get_key_value("wasmpush-data").await {
            break kv;
        }
        assert!(tokio::time::Instant::now() < deadline, "the node never recreated the data stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    kv.put("accounts.a42", r#"{"holdings":{"MSFT":2},"public":true}"#.into()).await.unwrap();
    for price in 1..=5 {
        kv.put("prices.MSFT", format!(r#"{{"price":{price}}}"#).into()).await.unwrap();
    }
    until_node_has(&nodes[0], "prices", "MSFT", &json!({"price": 5})).await;
    let (status, _) = request(nodes[0].publish_addr, "GET", "/v1/buckets/prices/keys/AAPL", None, "").await;
    assert_eq!(status, 404, "a key the new stream does not hold is gone");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while parse(&client.next_text(SOON).await)["total"] != 10.0 {
        assert!(tokio::time::Instant::now() < deadline, "the client was never pushed the resynced data");
    }
    assert_eq!(nodes[0].status().await["data_revision"], 6, "the new stream's revision");
    assert_eq!(nodes[0].healthz().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watch_recovers_and_a_node_joining_while_writes_go_on_gets_them_all() {
    let nats = NatsServer::start();
    let mut nodes = nodes(&nats, 2).await;
    write(&nodes[0], "PUT", "/v1/buckets/load/keys/first", json!(0)).await;
    until_node_has(&nodes[1], "load", "first", &json!(0)).await;
    // Every node's watch deleted on the server: each must notice and follow again.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("KV_wasmpush-data").await.unwrap();
    let consumers: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert!(consumers.len() >= 2, "{consumers:?}");
    for consumer in &consumers {
        stream.delete_consumer(consumer).await.unwrap();
    }
    write(&nodes[0], "PUT", "/v1/buckets/load/keys/after-stall", json!(1)).await;
    for node in &nodes {
        until_node_has(node, "load", "after-stall", &json!(1)).await;
        let status = node.status().await;
        assert!(status["follow_restarts"].as_u64() >= Some(1), "the stalled watch was recreated: {status}");
    }

    // A node joins while 300 writes go on; it ends with every one of them.
    let writer = nodes.remove(0);
    let writes = tokio::spawn(async move {
        for index in 0..300 {
            write(&writer, "PUT", &format!("/v1/buckets/load/keys/k{index:03}"), json!(index)).await;
        }
        writer
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = nodes_on(&nats, 1).await.remove(0);
    let writer = writes.await.unwrap();
    for node in [&writer, &nodes[0], &late] {
        until_node_has(node, "load", "k299", &json!(299)).await;
        let (_, listing) = request(node.publish_addr, "GET", "/v1/buckets/load?limit=1000", None, "").await;
        assert_eq!(parse(&listing)["keys"].as_array().unwrap().len(), 302, "{}", node.addr);
    }
    let revision = writer.status().await["data_revision"].clone();
    for node in [&nodes[0], &late] {
        assert_eq!(node.status().await["data_revision"], revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_catching_up_at_a_limited_rate_follows_without_the_limit_once_caught_up() {
    let nats = NatsServer::start();
    let first = nodes(&nats, 1).await.remove(0);
    // 2,000 keys: about 400 kB as NATS sends them, some 3 s at 1 Mbit/s.
    for batch in 0..4 {
        let put: serde_json::Map<String, Value> =
            (0..500).map(|i| (format!("k{}", batch * 500 + i), json!(i))).collect();
        write(&first, "POST", "/v1/buckets/bulk", json!({ "put": put })).await;
    }
    let url = nats.url();
    let late = TestEngine::start(&[("portfolio", artifacts::PORTFOLIO)], move |config| {
        portfolio(config, |table| table.tick_ms = Some(0));
        config.cluster.nats = vec![url];
        config.cluster.catch_up_mbps = Some(1);
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("KV_wasmpush-data").await.unwrap();
    let rate_limits = || async {
        let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap();
        consumers.into_iter().map(|consumer| consumer.config.rate_limit).collect::<Vec<u64>>()
    };
    // While the new node catches up, NATS sends it the backlog at the limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !rate_limits().await.contains(&1_000_000) {
        assert!(tokio::time::Instant::now() < deadline, "no consumer at 1 Mbit/s: {:?}", rate_limits().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(late.healthz().await.0, 503, "catching up");
    // Once caught up it follows without the limit, and has every key.
    until_caught_up(std::slice::from_ref(&late), Duration::from_secs(20)).await;
    // (The node deletes its catch-up's consumer; one the client had to recreate meanwhile would
    // expire after 30 s.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while rate_limits().await.iter().any(|&limit| limit != 0) {
        assert!(tokio::time::Instant::now() < deadline, "the limit outlived the catch-up: {:?}", rate_limits().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&first, "PUT", "/v1/buckets/bulk/keys/after", json!(1)).await;
    // (The writing node applies its write once it follows it back from the stream, like the
    // others: both are awaited.)
    for node in [&late, &first] {
        until_node_has(node, "bulk", "after", &json!(1)).await;
    }
    for (key, value) in [("k0", 0), ("k1999", 499)] {
        until_node_has(&late, "bulk", key, &json!(value)).await;
    }
    assert_eq!(late.status().await["data_revision"], json!(2001), "2,000 keys and one more");
    assert_eq!(first.status().await["data_revision"], json!(2001));
}
