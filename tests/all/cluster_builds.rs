//! A cluster's plugin builds and its list of nodes, on a real `nats-server -js`: `wasmpush deploy`
//! reaches every node without dropping a client, two racing deploys have one winner (a deploy
//! waiting for its nodes says so when another replaces its build), a build no node can load
//! leaves the old one serving and is reported, a node that joins serves the current builds, old
//! builds are removed once no node serves them; every node lists every node, a stopped one leaves
//! at once, a killed one is marked gone (silence while NATS was down does not count), two
//! processes under one name both say so (and a console, in Chromium, shows it). A node's or the
//! deploying machine's clock a minute off (libfaketime) changes none of it, nor a cluster canary's
//! window.

use std::process::{Command, Output};
use std::time::Duration;

use futures_util::TryStreamExt;
use serde_json::Value;
use wasmpush_tests::http::request;
use wasmpush_tests::{Browser, Client, NatsServer, artifacts};

use crate::cluster::{nodes_on, plugin_of};
use crate::data::parse;
use crate::util::{BINARY, SOON, until_version, version_of, write_config};

/// The path of `versioned` with empty params.
const VERSIONED: &str = "/ws/versioned?params=%7B%7D";

/// Runs `wasmpush ARGS` off the test's runtime (the nodes run on it).
async fn wasmpush(args: Vec<String>) -> Output {
    run(None, args).await
}

/// Runs `wasmpush ARGS` with its clock `offset` (libfaketime's `FAKETIME`, e.g. `+1m`) off this
/// machine's: an operator's or a node's clock that is wrong.
async fn wasmpush_at(offset: &str, args: Vec<String>) -> Output {
    run(Some(offset), args).await
}

/// Runs `wasmpush ARGS`, on a clock `offset` off if given, off the test's runtime.
async fn run(offset: Option<&str>, args: Vec<String>) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args);
    if let Some(offset) = offset {
        command.env("LD_PRELOAD", faketime_library()).env("FAKETIME", offset);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

/// libfaketime's preload library (`just test` installs Debian's `libfaketime`).
fn faketime_library() -> std::path::PathBuf {
    let arches = std::fs::read_dir("/usr/lib").unwrap().flatten();
    let found = arches.map(|arch| arch.path().join("faketime/libfaketime.so.1")).find(|path| path.exists());
    found.expect("libfaketime is installed (just setup-test-peers)")
}

/// `wasmpush deploy versioned FILE --nats URL --wait 30`.
async fn deploy(nats: &NatsServer, file: &str) -> Output {
    wasmpush(deploy_args(nats, file)).await
}

/// `wasmpush deploy versioned FILE --nats URL --wait 30`, on a clock `offset` off.
async fn deploy_at(offset: &str, nats: &NatsServer, file: &str) -> Output {
    wasmpush_at(offset, deploy_args(nats, file)).await
}

/// The arguments of `wasmpush deploy versioned FILE --nats URL --wait 30`.
fn deploy_args(nats: &NatsServer, file: &str) -> Vec<String> {
    ["deploy", "versioned", file, "--nats", &nats.url(), "--wait", "30"].map(str::to_owned).to_vec()
}

/// The SHA-256 of `file` in hex: its build's name.
fn build_of(file: &str) -> String {
    wasmpush::plugin::content_hash(&std::fs::read(file).unwrap())
}

/// The builds in the cluster's Object Store.
async fn stored_builds(nats: &NatsServer) -> Vec<String> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let store = js.get_object_store("wasmpush-builds").await.unwrap();
    let listed: Vec<_> = store.list().await.unwrap().try_collect().await.unwrap();
    listed.into_iter().map(|info| info.name).collect()
}

/// `/cluster` of the node whose admin endpoint is `admin`.
async fn cluster_of(admin: std::net::SocketAddr) -> Value {
    let (status, body) = request(admin, "GET", "/cluster", None, "").await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// `(name, gone)` of every node `/cluster` of `admin` lists.
async fn listed(admin: std::net::SocketAddr) -> Vec<(String, bool)> {
    listing(admin).await.expect("/cluster answers")
}

/// `(name, gone)` of every node `/cluster` of `admin` lists; `None` while it cannot list them.
async fn listing(admin: std::net::SocketAddr) -> Option<Vec<(String, bool)>> {
    let (status, body) = request(admin, "GET", "/cluster", None, "").await;
    let cluster = (status == 200).then(|| parse(&body))?;
    let nodes = cluster["nodes"].as_array().unwrap();
    Some(
        nodes.iter().map(|node| (node["node"].as_str().unwrap().to_owned(), node["gone"].as_bool().unwrap())).collect(),
    )
}

/// Waits up to `within` until `check` holds of the list `admin` gives.
async fn until_listed(admin: std::net::SocketAddr, within: Duration, check: impl Fn(&[(String, bool)]) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let nodes = listed(admin).await;
        if check(&nodes) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "after {within:?} the cluster lists {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A build whose chunks never come (removed while a node read it, or stored so by another
/// program) fails on the node after a short wait, with the node saying so, and keeps no other
/// plugin's deploy from reaching it. Before, the node waited for the chunks for ever and followed
/// no deploy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_chunks_never_come_fails_blocks_no_other_deploy_and_is_mended_by_a_deploy() {
    let nats = NatsServer::start();
    let node = nodes_on(&nats, 1).await.remove(0);
    let first = deploy(&nats, artifacts::VERSIONED_V1).await;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let mut client = Client::connect(&node.url(VERSIONED)).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "1");

    // Build 2 stored, its chunks purged, and plugin `versioned` pointed at it.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let (second, wasm) = (build_of(artifacts::VERSIONED_V2), std::fs::read(artifacts::VERSIONED_V2).unwrap());
    let store = js.get_object_store("wasmpush-builds").await.unwrap();
    store.put(second.as_str(), &mut wasm.as_slice()).await.unwrap();
    let nuid = store.info(second.as_str()).await.unwrap().nuid;
    let builds = js.get_stream("OBJ_wasmpush-builds").await.unwrap();
    builds.purge().filter(format!("$O.wasmpush-builds.C.{nuid}")).await.unwrap();
    let pointer =
        serde_json::json!({ "build": second, "bytes": wasm.len(), "previous": build_of(artifacts::VERSIONED_V1) });
    let pointers = js.get_key_value("wasmpush-plugins").await.unwrap();
    pointers.put("versioned", pointer.to_string().into()).await.unwrap();

    // The node says why it serves the old build, which serves on.
    until_every_status(&[&node], "said the build failed", |status| {
        status["last_reload_error"]["build"] == second.as_str()
    })
    .await;
    let failed = &node.status().await["last_reload_error"];
    assert!(failed["reason"].as_str().unwrap().contains("stopped coming"), "{failed}");
    assert_eq!(failed["retried"], true, "{failed}");
    assert_eq!(version_of(&client.next_text(SOON).await), "1", "the old build serves on");

    // Another plugin's deploy reaches the node meanwhile.
    let args = ["deploy", "again", artifacts::VERSIONED_V1, "--nats", &nats.url(), "--wait", "30"];
    let again = wasmpush(args.map(str::to_owned).to_vec()).await;
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let mut other = Client::connect(&node.url("/ws/again?params=%7B%7D")).await;
    assert_eq!(version_of(&other.next_text(SOON).await), "1");

    // Deploying build 2's file again stores its chunks again, and the node takes it.
    let mended = deploy(&nats, artifacts::VERSIONED_V2).await;
    assert!(mended.status.success(), "{}", String::from_utf8_lossy(&mended.stderr));
    until_version(&mut client, "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reaches_every_node_without_dropping_a_client_and_a_racing_one_loses() {
    let nats = NatsServer::start();
    // No node runs yet: `--wait` says so, and the build stays deployed for the nodes to come.
    let args = ["deploy", "versioned", artifacts::VERSIONED_V1, "--nats", &nats.url(), "--wait", "1"];
    let unserved = wasmpush(args.map(str::to_owned).to_vec()).await;
    assert!(!unserved.status.success(), "{unserved:?}");
    assert!(String::from_utf8_lossy(&unserved.stderr).contains("no node of the cluster runs"), "{unserved:?}");
    let nodes = nodes_on(&nats, 3).await;
    let mut client = Client::connect(&nodes[0].url(VERSIONED)).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "1", "a node that starts serves the deployed build");
    drop(client);

    // Not a component: refused before it reaches any node.
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), "#!/bin/sh\necho hello\n").unwrap();
    let args = ["deploy", "versioned", script.path().to_str().unwrap(), "--nats", &nats.url()];
    let refused = wasmpush(args.map(str::to_owned).to_vec()).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a WebAssembly component"), "{refused:?}");

    // The operator's clock a minute ahead: the nodes' ages are read on the NATS server's clock.
    let first = deploy_at("+1m", &nats, artifacts::VERSIONED_V1).await;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("served by all 3 live nodes"), "{first:?}");
    let mut clients = Vec::new();
    for node in &nodes {
        let mut client = Client::connect(&node.url(VERSIONED)).await;
        assert_eq!(version_of(&client.next_text(SOON).await), "1", "{} serves the deployed build", node.addr);
        clients.push(client);
    }

    let second = deploy(&nats, artifacts::VERSIONED_V2).await;
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    for client in &mut clients {
        until_version(client, "2").await;
    }
    // The first build is removed once no node serves it; the second stays.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stored_builds(&nats).await.contains(&build_of(artifacts::VERSIONED_V1)) {
        assert!(tokio::time::Instant::now() < deadline, "the replaced build was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_builds(&nats).await, [build_of(artifacts::VERSIONED_V2)]);

    // The same build under another name: `--wait` returns once every node serves it as that name.
    let args = ["deploy", "again", artifacts::VERSIONED_V2, "--nats", &nats.url(), "--wait", "30"];
    let again = wasmpush(args.map(str::to_owned).to_vec()).await;
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    for node in &nodes {
        let mut client = Client::connect(&node.url("/ws/again?params=%7B%7D")).await;
        assert_eq!(version_of(&client.next_text(SOON).await), "2", "{} serves `again` once deploy returned", node.addr);
    }

    // A node that joins serves the cluster's build from its first connection.
    let late = nodes_on(&nats, 1).await.remove(0);
    let mut client = Client::connect(&late.url(VERSIONED)).await;
    assert_eq!(version_of(&client.next_text(SOON).await), "2");

    // A component no node can load: each node keeps the build it serves and says why.
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0xff, 0xff]).unwrap();
    let failed = deploy(&nats, broken.path().to_str().unwrap()).await;
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("nodes could not load the build"), "{stderr}");
    for client in clients.iter_mut().chain([&mut client]) {
        assert_eq!(version_of(&client.next_text(SOON).await), "2", "the old build serves on");
    }
    for node in nodes.iter().chain([&late]) {
        let kept = wasmpush::plugin::content_hash(&std::fs::read(node.plugin_path("versioned")).unwrap());
        assert_eq!(kept, build_of(artifacts::VERSIONED_V2), "a restart would serve the build that loaded");
    }

    // Two deploys at once: at most one moves the pointer from what it read; if both read it in
    // turn, the later one replaces the earlier one's build, whose `--wait` says so. Their clock
    // a minute behind: the broken build's failure, newer by that clock, is not theirs.
    let racing = [artifacts::VERSIONED_V1, artifacts::VERSIONED_V2].map(|file| deploy_at("-1m", &nats, file));
    let outcomes = futures_util::future::join_all(racing).await;
    let won: Vec<bool> = outcomes.iter().map(|outcome| outcome.status.success()).collect();
    assert!(won.contains(&true), "{outcomes:?}");
    for outcome in outcomes.iter().filter(|outcome| !outcome.status.success()) {
        let stderr = String::from_utf8_lossy(&outcome.stderr);
        assert!(
            stderr.contains("won the race") || stderr.contains("another deploy pointed `versioned` at build"),
            "{outcome:?}"
        );
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let pointed = current_build(&js).await.expect("the pointer names a build");
    let winner = if pointed == build_of(artifacts::VERSIONED_V1) { "1" } else { "2" };
    assert!(won[usize::from(winner == "2")], "the pointer names a deploy that said it won: {outcomes:?}");
    for client in clients.iter_mut().chain([&mut client]) {
        until_version(client, winner).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waiting_for_its_nodes_says_so_when_another_deploy_replaces_its_build() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // A live node that serves nothing: the first deploy waits for it.
    let config = async_nats::jetstream::kv::Config { bucket: "wasmpush-nodes".to_owned(), ..Default::default() };
    let nodes = js.create_key_value(config).await.unwrap();
    nodes.put("ghost", r#"{"builds":[],"status":{"plugins":[]}}"#.into()).await.unwrap();
    let args = ["deploy", "versioned", artifacts::VERSIONED_V1, "--nats", &nats.url(), "--wait", "30"];
    let waiting = tokio::spawn(wasmpush(args.map(str::to_owned).to_vec()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while current_build(&js).await.as_deref() != Some(&build_of(artifacts::VERSIONED_V1)) {
        assert!(tokio::time::Instant::now() < deadline, "the first deploy never moved the pointer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let args = ["deploy", "versioned", artifacts::VERSIONED_V2, "--nats", &nats.url(), "--wait", "0"];
    let replacing = wasmpush(args.map(str::to_owned).to_vec()).await;
    assert!(replacing.status.success(), "{replacing:?}");
    let waited = waiting.await.unwrap();
    assert!(!waited.status.success());
    let expected = format!("another deploy pointed `versioned` at build {:.12}", build_of(artifacts::VERSIONED_V2));
    assert!(String::from_utf8_lossy(&waited.stderr).contains(&expected), "{waited:?}");
}

/// The build plugin `versioned`'s pointer names, if it has one.
async fn current_build(js: &async_nats::jetstream::Context) -> Option<String> {
    let pointers = js.get_key_value("wasmpush-plugins").await.ok()?;
    let pointer = pointers.get("versioned").await.ok()??;
    Some(parse(std::str::from_utf8(&pointer).ok()?)["build"].as_str()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_every_node_a_stopped_one_leaves_and_a_killed_one_is_marked_gone() {
    let mut nats = NatsServer::start();
    // A node run by the command line (so it can be killed), and two in this process.
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let extra = format!("[cluster]\nnats = [\"{}\"]\nnode = \"daemon-node\"\n", nats.url());
    let (config, _, _) = write_config(dir.path(), &plugins, &extra);
    let pid_file = dir.path().join("wasmpush.pid");
    let path = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    // Its clock a minute ahead: it still sees the others live (ages on the server's clock).
    let started = wasmpush_at(
        "+1m",
        [
            "start",
            "--daemon",
            "--config",
            &path(&config),
            "--pid-file",
            &path(&pid_file),
            "--log-file",
            &path(&dir.path().join("log")),
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let named = std::fs::read_to_string(&pid_file).unwrap();
    let pid: i32 = named.split_whitespace().next().unwrap().parse().unwrap();
    let _daemon = KillOnExit(pid);
    let mut nodes = nodes_on(&nats, 2).await;
    let names: Vec<String> = nodes
        .iter()
        .map(|node| format!("{}-{}", hostname(), node.addr.port()))
        .chain(["daemon-node".to_owned()])
        .collect();
    let all_live = |listed: &[(String, bool)]| names.iter().all(|name| listed.contains(&(name.clone(), false)));
    until_listed(nodes[0].admin_addr, Duration::from_secs(10), all_live).await;

    // `status --cluster` of the daemon prints every node, live, with its build and revision.
    let printed = wasmpush(
        ["status", "--cluster", "--pid-file", &path(&pid_file), "--config", &path(&config)].map(str::to_owned).to_vec(),
    )
    .await;
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{text} {}", String::from_utf8_lossy(&printed.stderr));
    assert!(text.contains("3 nodes, 3 live"), "{text}");
    for name in &names {
        assert!(text.lines().any(|line| line.contains(name.as_str()) && line.contains(" live ")), "{name}: {text}");
    }

    // A node that stops cleanly leaves the list at once (within one announcement).
    let stopped = nodes.remove(1);
    let stopped_name = names[1].clone();
    stopped.stop().await.unwrap();
    until_listed(nodes[0].admin_addr, Duration::from_secs(3), |listed| {
        !listed.iter().any(|(name, _)| *name == stopped_name)
    })
    .await;

    // NATS down for 7 s, the daemon frozen meanwhile: once NATS is back, the node that speaks
    // first does not take the daemon for gone (silence while NATS took no announcement does not
    // count), until its own announcements have been taken for 6 s; the daemon, woken, is live.
    // So does a node started as NATS comes back, although none of its puts ever failed: it
    // knows nothing of the time before it started.
    let signal = |signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    nats.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    nats.restart();
    let newcomer = nodes_on(&nats, 1).await.remove(0);
    let newcomer_name = format!("{}-{}", hostname(), newcomer.addr.port());
    let (survivor_heard, newcomer_heard) =
        tokio::join!(heard_again(nodes[0].admin_addr, &names[0]), heard_again(newcomer.admin_addr, &newcomer_name));
    for heard in [survivor_heard, newcomer_heard] {
        assert!(heard.contains(&("daemon-node".to_owned(), false)), "{heard:?}");
    }
    until_listed(nodes[0].admin_addr, Duration::from_secs(10), |listed| {
        listed.contains(&("daemon-node".to_owned(), true))
    })
    .await;
    signal(nix::sys::signal::Signal::SIGCONT);
    until_listed(nodes[0].admin_addr, Duration::from_secs(10), |listed| {
        listed.contains(&("daemon-node".to_owned(), false))
    })
    .await;

    // A killed node is marked gone within 10 s.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    until_listed(nodes[0].admin_addr, Duration::from_secs(10), |listed| {
        listed.contains(&("daemon-node".to_owned(), true))
    })
    .await;
    let cluster = cluster_of(nodes[0].admin_addr).await;
    let me =
        cluster["nodes"].as_array().unwrap().iter().find(|node| node["node"] == names[0].as_str()).unwrap().clone();
    assert_eq!(me["status"]["nats_connected"], true, "{me}");
    assert_eq!(me["gone"], false);
}

/// The first list `admin` gives in which node `name` (the one asked) is heard again: listed, not
/// gone; within 30 s.
async fn heard_again(admin: std::net::SocketAddr, name: &str) -> Vec<(String, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(listed) = listing(admin).await
            && listed.contains(&(name.to_owned(), false))
        {
            return listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} was never heard again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills process `pid` when the test ends, however it ends.
struct KillOnExit(i32);

impl Drop for KillOnExit {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

/// This machine's host name, as a node's default name holds it.
fn hostname() -> String {
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).take(56).collect()
}

/// Plugin `versioned`'s entry of `node`'s `/status`.
async fn versioned_status(node: &wasmpush_tests::TestEngine) -> Value {
    versioned_of(&node.status().await)
}

/// Plugin `versioned`'s entry of a `/status`.
fn versioned_of(status: &Value) -> Value {
    plugin_of(status, "versioned")
}

/// Waits up to 30 s until `check` holds of every node's `versioned` status.
async fn until_every_node(nodes: &[&wasmpush_tests::TestEngine], what: &str, check: impl Fn(&Value) -> bool) {
    until_every_status(nodes, what, |status| check(&versioned_of(status))).await;
}

/// Waits up to 30 s until `check` holds of every node's `/status`.
async fn until_every_status(nodes: &[&wasmpush_tests::TestEngine], what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for node in nodes {
        loop {
            let status = node.status().await;
            if check(&status) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} never {what}: {status}", node.addr);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_given_one_node_name_both_say_so_until_one_stops() {
    let nats = NatsServer::start();
    let twin = || {
        let url = nats.url();
        wasmpush_tests::TestEngine::start(&[("versioned", artifacts::VERSIONED_V1)], move |config| {
            config.cluster.nats = vec![url];
            config.cluster.node = Some("twin".to_owned());
        })
    };
    let (first, second) = tokio::join!(twin(), twin());
    let other = nodes_on(&nats, 1).await.remove(0);
    until_every_status(&[&first, &second], "said its name is taken", |status| {
        status["name_conflict"].as_str().is_some_and(|why| why.contains("give each node its own `[cluster] node`"))
    })
    .await;
    let me = other.status().await;
    assert!(me.get("name_conflict").is_none(), "a node with a name of its own: {me}");
    // The third node's console (headless Chromium) marks the name's row, and not its own.
    let mut page = Browser::open(&format!("http://{}/console", other.admin_addr)).await;
    let rows = "[...document.querySelectorAll('#nodes tbody tr')]";
    let state = |name: &str| format!("{rows}.find(r => r.cells[0].textContent === '{name}')?.cells[1].textContent");
    let shown = format!("{rows}.map(r => r.className + ':' + r.textContent)");
    let twin_marked = format!(
        "{} === 'name taken by another process' && {rows}.find(r => r.cells[0].textContent === 'twin').className === 'bad'",
        state("twin")
    );
    page.wait_for(&twin_marked, Duration::from_secs(20), &shown).await;
    let own = format!("{}-{}", hostname(), other.addr.port());
    assert_eq!(page.eval(&state(&own)).await, "live", "{}", page.eval(&shown).await);
    second.stop().await.unwrap();
    until_every_status(&[&first], "stopped saying its name is taken", |status| status.get("name_conflict").is_none())
        .await;
    page.wait_for(&format!("{} === 'live'", state("twin")), Duration::from_secs(20), &shown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_canary_is_judged_on_every_nodes_figures_and_its_end_reaches_every_node() {
    let nats = NatsServer::start();
    let first = nodes_on(&nats, 2).await;
    let deployed = deploy(&nats, artifacts::VERSIONED_V1).await;
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let mut clients = Vec::new();
    for (i, node) in first.iter().enumerate() {
        for n in 0..10 {
            let params = wasmpush_tests::percent_encode(&format!(r#"{{"n":{}}}"#, i * 10 + n));
            let mut client = Client::connect(&node.url(&format!("/ws/versioned?params={params}"))).await;
            assert_eq!(version_of(&client.next_text(SOON).await), "1");
            clients.push(client);
        }
    }

    let canary = |file: &str, secs: &str| {
        ["deploy", "versioned", file, "--canary", "50", "--for", secs, "--nats", &nats.url()]
            .map(str::to_owned)
            .to_vec()
    };
    // A healthy one: a node that joins mid-rollout follows it, and it is promoted everywhere at
    // the end of its window — of 10 s on the NATS server's clock, though the deploying machine's
    // is a minute behind.
    let (began, deployed_at) = (std::time::Instant::now(), std::time::SystemTime::now());
    let started = wasmpush_at("-1m", canary(artifacts::VERSIONED_V2, "10")).await;
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    assert!(String::from_utf8_lossy(&started.stdout).contains("started a cluster canary of versioned"), "{started:?}");
    let v2 = build_of(artifacts::VERSIONED_V2);
    // A second rollout meanwhile is refused, naming the one running.
    let refused = wasmpush(canary(artifacts::VERSIONED_TRAP, "60")).await;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is in progress in the cluster"), "{refused:?}");
    let late = nodes_on(&nats, 1).await;
    let every: Vec<&wasmpush_tests::TestEngine> = first.iter().chain(&late).collect();
    until_every_node(&every, "followed the canary", |plugin| plugin["rollout"]["candidate"] == v2.as_str()).await;
    for node in &every {
        // Its start as the nodes show it is the server's, not the deploying machine's.
        let started_at_ms = versioned_status(node).await["rollout"]["started_at_ms"].as_u64().unwrap();
        let deployed_ms = deployed_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(started_at_ms + 1000 >= deployed_ms, "started at {started_at_ms}, deployed at {deployed_ms}");
    }
    until_every_node(&every, "promoted the canary", |plugin| plugin["last_rollouts"][0]["outcome"] == "promoted").await;
    assert!(began.elapsed() >= Duration::from_secs(10), "promoted {:?} after the deploy", began.elapsed());
    until_every_node(&every, "served the promoted build", |plugin| plugin["version"] == v2.as_str()).await;
    for client in &mut clients {
        until_version(client, "2").await;
    }

    // A trapping one is judged on the sum: rolled back on every node, with the cluster's reason.
    let started = wasmpush(canary(artifacts::VERSIONED_TRAP, "60")).await;
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    until_every_node(&every, "rolled the canary back", |plugin| plugin["last_rollouts"][0]["outcome"] == "rolled_back")
        .await;
    for node in &every {
        let plugin = versioned_status(node).await;
        let reason = plugin["last_rollouts"][0]["reason"].as_str().unwrap();
        assert!(reason.starts_with("rolled back: traps ") && reason.ends_with("(cluster)"), "{reason}");
        assert!(plugin.get("rollout").is_none(), "{plugin}");
        assert_eq!(plugin["version"], v2.as_str(), "the serving build serves on");
    }
    for client in &mut clients {
        until_version(client, "2").await;
    }
}
