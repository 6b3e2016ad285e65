//! Safe rollouts through the real CLI against a real engine: canaries that roll themselves back
//! or are promoted, shadow runs that compare and send nothing, the version history and rollback
//! (also after a restart), and every refusal.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmpush_tests::{Client, Frame, TestEngine, artifacts};

use crate::util::{Daemon, SOON, TICK, encode, until_version, version_of, wasmpush};

/// What a client of `versioned` received: data frames by build, and error frames.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    /// A data frame: its build's version, its `seq` and the engine's batch time `at`.
    Data { version: String, seq: u64, at: u64 },
    /// An error frame with its code.
    Error(u64),
}

fn parse(frame: &str) -> Got {
    let value: Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}: {frame}"));
    match value["version"].as_str() {
        Some(version) => Got::Data {
            version: version.to_owned(),
            seq: value["seq"].as_u64().unwrap(),
            at: value["at"].as_u64().unwrap(),
        },
        None => Got::Error(value["code"].as_u64().unwrap_or_else(|| panic!("neither data nor error: {frame}"))),
    }
}

/// One client's record: its number `n` (its params), what it got with arrival times, and what
/// ended it early, if anything did.
#[derive(Debug)]
struct Record {
    n: u64,
    got: Vec<(Instant, Got)>,
    ended: Option<Frame>,
}

impl Record {
    /// The versions of its data frames, in order.
    fn versions(&self) -> Vec<&str> {
        self.got
            .iter()
            .filter_map(|(_, got)| match got {
                Got::Data { version, .. } => Some(version.as_str()),
                Got::Error(_) => None,
            })
            .collect()
    }

    /// The data frames' `seq`s and `at`s.
    fn data(&self) -> Vec<(u64, u64)> {
        self.got
            .iter()
            .filter_map(|(_, got)| match got {
                Got::Data { seq, at, .. } => Some((*seq, *at)),
                Got::Error(_) => None,
            })
            .collect()
    }
}

/// Clients `0..count` of `versioned` (params `{"n": i}`), recording until `stop` says so.
async fn clients(engine: &TestEngine, count: u64) -> (Vec<JoinHandle<Record>>, watch::Sender<bool>) {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let (ready, mut all_ready) = tokio::sync::mpsc::channel(count as usize);
    for n in 0..count {
        let url = engine.url(&format!("/ws/versioned?params={}", encode(&format!(r#"{{"n":{n}}}"#))));
        let (mut stopped, ready) = (stopped.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let mut record = Record { n, got: Vec::new(), ended: None };
            let first = client.next_text(SOON).await;
            record.got.push((Instant::now(), parse(&first)));
            ready.send(()).await.unwrap();
            loop {
                tokio::select! {
                    frame = client.next_within(SOON) => match frame {
                        Some(Frame::Text(text)) => record.got.push((Instant::now(), parse(&text))),
                        // An error-parked client may be silent for a while: not an end.
                        None => {}
                        other => { record.ended = other; break; }
                    },
                    _ = stopped.changed() => break,
                }
            }
            record
        }));
    }
    drop(ready);
    for _ in 0..count {
        all_ready.recv().await.expect("every client connected and got its first frame");
    }
    (tasks, stop)
}

/// Stops the recording and returns every client's record.
async fn records(tasks: Vec<JoinHandle<Record>>, stop: watch::Sender<bool>) -> Vec<Record> {
    stop.send(true).unwrap();
    let mut records = Vec::new();
    for task in tasks {
        records.push(task.await.expect("client task"));
    }
    records
}

/// Runs the real `wasmpush` CLI against `engine`'s admin endpoint; its success and output.
async fn cli(engine: &TestEngine, args: &[&str]) -> (bool, String) {
    let (admin, pid_file) = (engine.admin_addr.to_string(), engine.plugins_dir().join("no-such.pid"));
    let engine_args = ["--admin", &admin, "--pid-file", pid_file.to_str().unwrap()];
    wasmpush(&[args, &engine_args].concat()).await
}

/// `cli`, which must succeed.
async fn cli_ok(engine: &TestEngine, args: &[&str]) -> String {
    let (ok, text) = cli(engine, args).await;
    assert!(ok, "wasmpush {args:?} failed: {text}");
    text
}

/// Plugin `name`'s entry of `/status`.
async fn plugin_status(engine: &TestEngine, name: &str) -> Value {
    let status = engine.status().await;
    let plugins = status["plugins"].as_array().unwrap();
    plugins.iter().find(|plugin| plugin["name"] == name).unwrap_or_else(|| panic!("{name} not in {status}")).clone()
}

/// Waits until plugin `name` has `count` ended rollouts; returns the newest.
async fn ended_rollout(engine: &TestEngine, name: &str, count: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let plugin = plugin_status(engine, name).await;
        let ended = plugin["last_rollouts"].as_array().cloned().unwrap_or_default();
        if ended.len() >= count {
            return ended[0].clone();
        }
        assert!(Instant::now() < deadline, "no rollout of {name} ended within {within:?}: {plugin}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An engine serving `versioned` v1, judging canaries after 50 calls and not on call time: on a
/// CI machine running tests side by side, a descheduled shard makes any build's p99 look slow
/// (the time rule has its unit test).
async fn engine_with(configure: impl FnOnce(&mut wasmpush::Config)) -> TestEngine {
    TestEngine::start(&[("versioned", artifacts::VERSIONED_V1)], |config| {
        config.rollouts.min_calls = 50;
        config.rollouts.p99_floor_us = 60_000_000;
        configure(config);
    })
    .await
}

/// Checks what every rollout must keep: no client dropped, no `seq` skipped or repeated, and the
/// engine ran each client at every tick (its batch times `at`, between error parks).
fn assert_nothing_dropped_missed_or_doubled(records: &[Record]) {
    for record in records {
        assert_eq!(record.ended, None, "client {} was dropped", record.n);
        let data = record.data();
        assert!(
            data.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "client {}: seq skipped or repeated: {data:?}",
            record.n
        );
        let parked = record.got.iter().any(|(_, got)| matches!(got, Got::Error(_)));
        if !parked {
            let worst = data.windows(2).map(|w| w[1].1.saturating_sub(w[0].1)).max().unwrap_or(0);
            assert!(
                Duration::from_millis(worst) <= TICK * 3 / 2,
                "client {}: the engine ran it {worst} ms after its previous frame",
                record.n
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_traps_on_a_share_of_clients_rolls_itself_back() {
    let engine = engine_with(|_| {}).await;
    let (tasks, stop) = clients(&engine, 40).await;
    tokio::time::sleep(TICK * 3).await;
    let said =
        cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_TRAP, "--canary", "50", "--for", "60"]).await;
    assert!(said.contains("canary (50 %) of versioned started"), "{said}");
    let ended = ended_rollout(&engine, "versioned", 1, Duration::from_secs(20)).await;
    let rolled_back_at = Instant::now();
    assert_eq!(ended["outcome"], "rolled_back", "{ended}");
    let reason = ended["reason"].as_str().unwrap();
    assert!(reason.starts_with("rolled back: traps ") && reason.contains("% vs 0.0 % over"), "{reason}");
    assert!(ended["candidate_calls"]["traps"].as_u64().unwrap() > 0, "{ended}");
    tokio::time::sleep(TICK * 5).await;
    let records = records(tasks, stop).await;

    assert_nothing_dropped_missed_or_doubled(&records);
    let mut canary = 0;
    for record in &records {
        let versions = record.versions();
        // Stable: v1, then (in the cohort) only the candidate, then v1 for good.
        let first_trap = versions.iter().position(|v| *v == "trap");
        if let Some(first) = first_trap {
            canary += 1;
            let back = versions[first..].iter().position(|v| *v == "1").map(|at| at + first).unwrap_or(versions.len());
            assert!(versions[first..back].iter().all(|v| *v == "trap"), "client {}: {versions:?}", record.n);
            assert!(versions[back..].iter().all(|v| *v == "1"), "client {} left v1 again: {versions:?}", record.n);
        }
        let last = record.got.iter().rev().find_map(|(at, got)| matches!(got, Got::Data { .. }).then_some(*at));
        assert_eq!(versions.last(), Some(&"1"), "client {} ends on the serving build: {versions:?}", record.n);
        // Every client, the ones the candidate parked too, had a frame of v1 after the rollback.
        assert!(last.is_some_and(|at| at > rolled_back_at), "client {} silent after the rollback", record.n);
        if record.n % 4 != 0 {
            assert!(
                !record.got.iter().any(|(_, got)| matches!(got, Got::Error(_))),
                "client {} got an error",
                record.n
            );
        }
    }
    assert!((5..=35).contains(&canary), "about half the clients were in the canary: {canary}");
    let status = engine.status().await;
    let plugin = plugin_status(&engine, "versioned").await;
    assert!(plugin.get("rollout").is_none(), "{status}");
    assert_eq!(plugin["version"], wasmpush::plugin::content_hash(&std::fs::read(artifacts::VERSIONED_V1).unwrap()));
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    assert!(metrics.contains("wasmpush_rollouts_total{outcome=\"rolled_back\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_at_the_end_of_its_window_and_a_manual_one_by_promote() {
    let engine = engine_with(|_| {}).await;
    let (tasks, stop) = clients(&engine, 20).await;
    // Four seconds: 200 candidate calls when the machine keeps up, and at least the 50 needed to
    // judge when the CI machine runs tests side by side.
    cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_V2, "--canary", "50", "--for", "4"]).await;
    // While it runs, /status and /metrics show the live comparison.
    let live = plugin_status(&engine, "versioned").await;
    assert_eq!(live["rollout"]["kind"], "canary", "{live}");
    let ended = ended_rollout(&engine, "versioned", 1, Duration::from_secs(20)).await;
    assert_eq!(ended["outcome"], "promoted", "{ended}");
    assert!(ended["reason"].as_str().unwrap().starts_with("promoted: healthy over "), "{ended}");
    let v2 = std::fs::read(artifacts::VERSIONED_V2).unwrap();
    assert_eq!(std::fs::read(engine.plugin_path("versioned")).unwrap(), v2, "a restart serves the promoted build");
    tokio::time::sleep(TICK * 3).await;

    // A manual canary waits at the end of its window; a second rollout meanwhile is refused.
    cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_V1, "--canary", "50", "--for", "1", "--manual"])
        .await;
    let (refused, why) = cli(&engine, &["deploy", "versioned", artifacts::VERSIONED_TRAP, "--shadow", "5"]).await;
    assert!(!refused && why.contains("a canary of `versioned`") && why.contains("in progress"), "{why}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = plugin_status(&engine, "versioned").await;
    assert_eq!(waiting["rollout"]["awaiting_promote"], true, "{waiting}");
    let said = cli_ok(&engine, &["promote", "versioned"]).await;
    assert!(said.contains("promoted by `wasmpush promote`"), "{said}");
    tokio::time::sleep(TICK * 4).await;
    let records = records(tasks, stop).await;

    assert_nothing_dropped_missed_or_doubled(&records);
    for record in &records {
        // v1, then v2 (the first canary's cohort sooner, the rest at its promotion), then v1
        // (the second canary's cohort, the same connections, sooner): each step once, never back.
        let mut steps = record.versions();
        steps.dedup();
        assert_eq!(steps, ["1", "2", "1"], "client {}: {:?}", record.n, record.versions());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_connection_keeps_its_build_across_ticks_and_new_params() {
    let engine = engine_with(|_| {}).await;
    cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_V2, "--canary", "50", "--manual"]).await;
    let clients = (0..16u64).map(|n| {
        let url = engine.url(&format!("/ws/versioned?params={}", encode(&format!(r#"{{"n":{n}}}"#))));
        async move {
            let mut client = Client::connect(&url).await;
            let mut seen: Vec<String> = client.texts_during(TICK * 3).await.iter().map(|f| version_of(f)).collect();
            client.send_text(&format!(r#"{{"n":{},"again":true}}"#, n + 100)).await;
            seen.extend(client.texts_during(TICK * 3).await.iter().map(|f| version_of(f)));
            assert!(seen.len() >= 4 && seen.iter().all(|v| *v == seen[0]), "client {n} switched builds: {seen:?}");
            seen[0].clone()
        }
    });
    let builds: BTreeSet<String> = futures_util::future::join_all(clients).await.into_iter().collect();
    assert_eq!(builds, BTreeSet::from(["1".to_owned(), "2".to_owned()]), "both builds serve at once");
    let said = cli_ok(&engine, &["abort", "versioned"]).await;
    assert!(said.contains("aborted by `wasmpush abort`"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_run_counts_differences_and_sends_nothing() {
    let engine = engine_with(|_| {}).await;
    let (tasks, stop) = clients(&engine, 10).await;
    let said = cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_V2, "--shadow", "2"]).await;
    assert!(said.contains("shadow run (100 % sample)"), "{said}");
    let ended = ended_rollout(&engine, "versioned", 1, Duration::from_secs(20)).await;
    let records = records(tasks, stop).await;
    assert_nothing_dropped_missed_or_doubled(&records);
    for record in &records {
        assert!(record.versions().iter().all(|v| *v == "1"), "client {} got a shadow frame", record.n);
    }
    assert_eq!(ended["outcome"], "finished", "{ended}");
    let shadow = &ended["shadow"];
    let compared = shadow["compared"].as_u64().unwrap();
    assert!(compared >= 50, "{ended}");
    // v2 differs from v1 in one field, `version`, on every call.
    assert_eq!((shadow["different"].as_u64(), shadow["identical"].as_u64()), (Some(compared), Some(0)), "{ended}");
    let sample = &shadow["samples"][0];
    assert_eq!(sample["params_keys"], serde_json::json!(["n"]), "params shown by their keys only: {sample}");
    assert!(sample["serving"].as_str().unwrap().contains(r#""version":"1""#), "{sample}");
    // The same context (seq, time) and params: the frames differ in `version` only.
    let candidate = sample["candidate"].as_str().unwrap().replace(r#""version":"2""#, r#""version":"1""#);
    assert_eq!(candidate, sample["serving"].as_str().unwrap(), "{sample}");
    let calls = &ended["candidate_calls"];
    assert_eq!(calls["calls"].as_u64(), Some(compared), "{ended}");
    assert!(calls["p99_us"].as_f64().unwrap() > 0.0, "{ended}");
    // The serving build still serves: a shadow run changes nothing.
    let v1 = wasmpush::plugin::content_hash(&std::fs::read(artifacts::VERSIONED_V1).unwrap());
    assert_eq!(plugin_status(&engine, "versioned").await["version"], v1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_build_is_shed_before_any_client_waits() {
    // 5 % of a 200 ms tick for shadow work, and a candidate that takes about 2 ms a call: 30
    // clients would need 60 ms a tick. A call budget that lets the slow build finish.
    let engine = engine_with(|config| {
        config.rollouts.shadow_budget_pct = 5;
        config.plugin_call_budget_us = 20_000;
        config.workers = 1;
    })
    .await;
    let (tasks, stop) = clients(&engine, 30).await;
    cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_SLOW, "--shadow", "3"]).await;
    let ended = ended_rollout(&engine, "versioned", 1, Duration::from_secs(20)).await;
    let records = records(tasks, stop).await;
    assert_nothing_dropped_missed_or_doubled(&records);
    let shadow = &ended["shadow"];
    let (compared, shed) = (shadow["compared"].as_u64().unwrap(), shadow["shed"].as_u64().unwrap());
    assert!(compared > 0 && shed > compared, "most shadow calls shed, some run: {ended}");
    let (serving, candidate) = (&ended["serving_calls"]["p50_us"], &ended["candidate_calls"]["p50_us"]);
    assert!(candidate.as_f64().unwrap() > 10.0 * serving.as_f64().unwrap(), "the slow build is slow: {ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_kept_build_at_once_and_after_a_restart() {
    let (plugins, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::copy(artifacts::VERSIONED_V1, plugins.path().join("versioned.wasm")).unwrap();
    let dirs = |config: &mut wasmpush::Config| {
        config.plugins_dir = plugins.path().to_owned();
        config.data_dir = data.path().to_owned();
        // The manual canary below must still run at the restart (see `engine_with`).
        config.rollouts.p99_floor_us = 60_000_000;
    };
    let hash = |path: &str| wasmpush::plugin::content_hash(&std::fs::read(path).unwrap());
    let (v1, v2) = (hash(artifacts::VERSIONED_V1), hash(artifacts::VERSIONED_V2));
    let url = |engine: &TestEngine| engine.url(&format!("/ws/versioned?params={}", encode("{}")));

    let engine = TestEngine::start(&[], dirs).await;
    let mut client = Client::connect(&url(&engine)).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "1");
    cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_V2]).await;
    let listed = cli_ok(&engine, &["versions", "versioned"]).await;
    let lines: Vec<&str> = listed.lines().skip(1).collect();
    assert!(
        lines[0].contains(&v2[..12]) && lines[0].contains("deploy") && lines[0].ends_with("<- serving"),
        "{listed}"
    );
    assert!(lines[1].contains(&v1[..12]) && lines[1].contains("file") && !lines[1].contains("serving"), "{listed}");
    // The client is on build 2 first, so a frame of build 1 after it is the rollback's (frames
    // of build 1 from before the deploy may still be queued).
    until_version(&mut client, "2").await;
    let said = cli_ok(&engine, &["rollback", "versioned"]).await;
    assert!(said.contains(&format!("serves build {} again", &v1[..12])), "{said}");
    until_version(&mut client, "1").await;
    let deployed = plugins.path().join("versioned.wasm");
    assert_eq!(std::fs::read(&deployed).unwrap(), std::fs::read(artifacts::VERSIONED_V1).unwrap());
    let (refused, why) = cli(&engine, &["rollback", "versioned", "abcdef"]).await;
    assert!(!refused && why.contains("keeps no build abcdef; kept: ") && why.contains(&v2[..12]), "{why}");
    // Restarted mid-canary: the new engine serves the plugins directory's build and says the
    // canary ended.
    cli_ok(&engine, &["deploy", "versioned", artifacts::VERSIONED_V2, "--canary", "50", "--manual"]).await;
    engine.stop().await.unwrap();

    let engine = TestEngine::start(&[], dirs).await;
    let ended = ended_rollout(&engine, "versioned", 1, SOON).await;
    assert_eq!(ended["outcome"], "ended", "{ended}");
    assert!(ended["reason"].as_str().unwrap().contains("restarted mid-rollout"), "{ended}");
    assert_eq!(plugin_status(&engine, "versioned").await["version"], v1);
    let mut client = Client::connect(&url(&engine)).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "1");
    cli_ok(&engine, &["rollback", "versioned", &v2[..8]]).await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("2") {
        assert!(seen.len() < 10, "the client never got the kept build: {seen:?}");
        seen.push(version_of(&client.next_text(SOON).await));
    }
}

#[tokio::test]
async fn bad_rollout_requests_are_refused_and_change_nothing() {
    let engine = engine_with(|_| {}).await;
    let not_wasm = engine.plugins_dir().join("notes.txt");
    std::fs::write(&not_wasm, "not a component").unwrap();
    let not_wasm = not_wasm.to_str().unwrap();
    for (args, expected) in [
        (vec!["deploy", "versioned", not_wasm, "--canary", "10"], "HTTP 422"),
        (vec!["deploy", "nothing", artifacts::VERSIONED_V2, "--canary", "10"], "`nothing` is not served"),
        (vec!["deploy", "versioned", artifacts::VERSIONED_V1, "--canary", "10"], "already serves build"),
        (vec!["deploy", "versioned", artifacts::VERSIONED_V2, "--canary", "0"], "above 0 and at most 100"),
        (vec!["deploy", "versioned", artifacts::VERSIONED_V2, "--canary", "150"], "above 0 and at most 100"),
        (vec!["deploy", "versioned", artifacts::VERSIONED_V2, "--shadow", "0"], "between 1 s and 86400 s"),
        (vec!["deploy", "versioned", artifacts::VERSIONED_V2, "--manual"], "--canary"),
        (vec!["deploy", "../etc", artifacts::VERSIONED_V2], "not a plugin name"),
        (vec!["promote", "versioned"], "no rollout of `versioned` is in progress"),
        (vec!["abort", "versioned"], "no rollout of `versioned` is in progress"),
        (vec!["rollback", "versioned"], "keeps no build older than the serving one"),
    ] {
        let (ok, said) = cli(&engine, &args).await;
        assert!(!ok && said.contains(expected), "wasmpush {args:?}: expected `{expected}` in: {said}");
    }
    let plugin = plugin_status(&engine, "versioned").await;
    assert!(plugin.get("rollout").is_none() && plugin.get("last_rollouts").is_none(), "{plugin}");
    let status = engine.status().await;
    assert!(status["last_reload_error"]["reason"].as_str().unwrap().contains("versioned"), "{status}");
    // A web page may not ship builds, even on loopback.
    let raw = format!(
        "POST /plugins/versioned/abort HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        engine.admin_addr
    );
    let (code, body) = wasmpush_tests::http::exchange(engine.admin_addr, &raw).await;
    assert_eq!(code, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_canary_ends_it_and_status_says_so() {
    // The canary must still run at the restart: not judged on call time (see `engine_with`).
    let extra = "drain_secs = 1\n[rollouts]\np99_floor_us = 60000000\n";
    let daemon = Daemon::start(&[("versioned", artifacts::VERSIONED_V1)], extra).await;
    let url = format!("ws://127.0.0.1:{}/ws/versioned?params={}", daemon.port, encode("{}"));

    // Found through the running engine's pid file, as an operator would.
    let v2 = artifacts::VERSIONED_V2;
    let (deployed, said) = daemon.cli(&["deploy", "versioned", v2, "--canary", "50", "--manual"]).await;
    assert!(deployed, "{said}");
    let (_, status) = daemon.cli(&["status"]).await;
    assert!(status.contains("rollout: manual canary 50 % of build"), "{status}");
    assert!(status.contains("candidate") && status.contains("calls, errors"), "{status}");

    daemon.restart().await;
    let (_, status) = daemon.cli(&["status"]).await;
    assert!(status.contains("ended: the engine restarted mid-rollout"), "{status}");
    assert!(!status.contains("rollout: manual canary"), "{status}");
    let mut client = Client::connect_retrying(&url, SOON).await;
    let versions: Vec<String> = client.texts_during(TICK * 4).await.iter().map(|f| version_of(f)).collect();
    assert!(
        !versions.is_empty() && versions.iter().all(|v| v == "1"),
        "every connection on the serving build: {versions:?}"
    );
    let (stopped, said) = daemon.cli(&["stop"]).await;
    assert!(stopped, "{said}");
}
