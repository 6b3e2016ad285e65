//! The real `wasmpush` binary: pid file, `reload`, `stop`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use wasmpush_tests::{Client, Frame, KillOnDrop, artifacts};

use crate::util::{BINARY, SOON, config_address, encode, plugins_dir_with_quote, start_in_foreground, write_config};

fn wasmpush(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().expect("run wasmpush")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_binary_refuses_a_second_start_reloads_on_request_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let (config, port, _) = write_config(dir.path(), &plugins, "watch_plugins = false\n");
    let pid_file = dir.path().join("wasmpush.pid");
    // A stale pid file from a crashed run (no process has this pid) must not stop `start`.
    std::fs::write(&pid_file, "2147483000\n").unwrap();
    let pid_arg = pid_file.to_str().unwrap();
    // Killed if the test fails before `stop` ends it.
    let mut engine = start_in_foreground(&config, Path::new(pid_arg));

    let url = |path: &str| format!("ws://127.0.0.1:{port}{path}");
    let mut client = Client::connect_retrying(&url(&format!("/ws/quote?params={}", encode("{}"))), SOON * 10).await;
    assert!(client.next_text(SOON).await.contains("NONE"));
    let named = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        named.split_whitespace().next(),
        Some(engine.id().to_string().as_str()),
        "the pid file says `PID START`"
    );

    let second = wasmpush(&["start", "--config", config.to_str().unwrap(), "--pid-file", pid_arg]);
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("already running"), "{}", text(&second.stderr));

    // Nothing watches the directory: the plugin appears only after `wasmpush reload`.
    std::fs::copy(artifacts::CLOCK, plugins.join("clock.wasm")).unwrap();
    let reload = wasmpush(&["reload", "--pid-file", pid_arg]);
    assert!(reload.status.success(), "{}", text(&reload.stderr));
    let mut clock = Client::connect_retrying(&url(&format!("/ws/clock?params={}", encode("{}"))), SOON * 10).await;
    assert!(clock.next_text(SOON).await.contains("local_ms"));
    assert!(client.next_text(SOON).await.contains("NONE"), "reload kept the other connection ticking");

    let stop = wasmpush(&["stop", "--pid-file", pid_arg]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    for client in [&mut client, &mut clock] {
        assert_eq!(client.closing_frame(SOON).await, Some(Frame::Close(Some((1001, "going away".to_owned())))));
    }
    assert!(engine.wait().unwrap().success(), "the engine exits cleanly on stop");
    assert!(!Path::new(&pid_file).exists(), "the pid file is removed");
}

#[tokio::test]
async fn stop_and_reload_see_through_a_stale_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("wasmpush.pid");
    // A pid far above any pid_max: no such process.
    std::fs::write(&pid_file, "2147483000\n").unwrap();
    let stop = wasmpush(&["stop", "--pid-file", pid_file.to_str().unwrap()]);
    assert!(stop.status.success());
    assert!(text(&stop.stdout).contains("not running"), "{}", text(&stop.stdout));
    let reload = wasmpush(&["reload", "--pid-file", pid_file.to_str().unwrap()]);
    assert!(!reload.status.success());
    assert!(text(&reload.stderr).contains("not running"), "{}", text(&reload.stderr));
}

#[tokio::test]
async fn a_daemon_starts_reports_status_reloads_restarts_refusing_no_one_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let (config, port, _) = write_config(dir.path(), &plugins, "drain_secs = 2\n");
    let config = config.to_str().unwrap();
    let pid_file = dir.path().join("run/wasmpush.pid");
    let log_file = dir.path().join("run/wasmpush.log");
    let (pid, log) = (pid_file.to_str().unwrap(), log_file.to_str().unwrap());

    let start = wasmpush(&["start", "--daemon", "--config", config, "--pid-file", pid, "--log-file", log]);
    assert!(start.status.success(), "{}", text(&start.stderr));
    assert!(text(&start.stdout).contains("started"), "{}", text(&start.stdout));
    // `start` returned only once the engine listens: a client connects at the first try.
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"))).await;
    assert!(client.next_text(SOON).await.contains("NONE"));

    let status = wasmpush(&["status", "--config", config, "--pid-file", pid]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let report = text(&status.stdout);
    assert!(report.contains("is running") && report.contains("plugin quote: version"), "{report}");
    let json = wasmpush(&["status", "--config", config, "--pid-file", pid, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["connections"], 1, "{json}");
    // The daemon leads its own session: no controlling terminal, out of the caller's job control.
    let daemon_pid = json["pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{daemon_pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(fields[3], daemon_pid.to_string(), "session id of the daemon: {stat}");
    assert_eq!(fields[4], "0", "the daemon has no controlling terminal: {stat}");

    let second = wasmpush(&["start", "--daemon", "--config", config, "--pid-file", pid, "--log-file", log]);
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("already running"), "{}", text(&second.stderr));

    // `reload` re-reads the config file and takes over the live settings, such as the tick.
    let slow = client.texts_during(Duration::from_secs(2)).await.len();
    assert!((8..=12).contains(&slow), "{slow} frames in 2 s at 200 ms");
    let faster = std::fs::read_to_string(config).unwrap() + "tick_ms = 50\n";
    std::fs::write(config, faster).unwrap();
    let reload = wasmpush(&["reload", "--pid-file", pid]);
    assert!(reload.status.success());
    client.texts_during(Duration::from_millis(500)).await;
    let fast = client.texts_during(Duration::from_secs(2)).await.len();
    assert!((30..=50).contains(&fast), "{fast} frames in 2 s after reloading tick_ms = 50");

    // `restart`: a new process takes the listening socket over while a client connects every
    // 10 ms; not one connection is refused. The old engine's clients get 1012 within
    // `drain_secs` (2) and reconnect to the new one.
    let old_pid = std::fs::read_to_string(&pid_file).unwrap();
    let put = wasmpush(&["data", "--config", config, "put", "prices", "AAPL", r#"{"price":1}"#]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"));
    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = tokio::spawn({
        let (url, probing) = (url.clone(), probing.clone());
        async move {
            let (mut served, mut refused) = (0, Vec::new());
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                match Client::try_connect(&url).await {
                    Ok(client) => {
                        served += 1;
                        drop(client);
                    }
                    Err(err) => refused.push(err.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (served, refused)
        }
    });
    let restart = {
        let args = ["restart", "--config", config, "--pid-file", pid, "--log-file", log].map(str::to_owned);
        tokio::task::spawn_blocking(move || Command::new(BINARY).args(&args).output().unwrap()).await.unwrap()
    };
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    assert_ne!(std::fs::read_to_string(&pid_file).unwrap(), old_pid, "the pid file names the new engine");
    let closed = client.closing_frame(Duration::from_secs(4)).await;
    assert_eq!(closed, Some(Frame::Close(Some((1012, "service restart".to_owned())))));
    let mut client = Client::connect(&url).await;
    assert!(client.next_text(SOON).await.contains("NONE"), "the client reconnects to the new engine");
    tokio::time::sleep(Duration::from_millis(300)).await;
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (served, refused) = prober.await.unwrap();
    assert!(
        refused.is_empty(),
        "{} of {} connections refused during the restart: {refused:?}",
        refused.len(),
        served + refused.len()
    );
    assert!(served > 20, "only {served} connections during the restart");
    eprintln!("restart: {served} connections made during the restart, none refused");
    let get = wasmpush(&["data", "--config", config, "get", "prices", "AAPL"]);
    assert_eq!(text(&get.stdout).trim(), r#"{"price":1}"#, "the new engine serves the data: {}", text(&get.stderr));
    let old_pid: i32 = old_pid.split_whitespace().next().unwrap().parse().unwrap();
    let old_gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !std::path::Path::new(&format!("/proc/{old_pid}")).exists()
    });
    assert!(old_gone, "the old engine exits once it has drained");

    let stop = wasmpush(&["stop", "--pid-file", pid]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert_eq!(client.closing_frame(SOON).await, Some(Frame::Close(Some((1001, "going away".to_owned())))));
    let status = wasmpush(&["status", "--config", config, "--pid-file", pid]);
    assert_eq!(status.status.code(), Some(3), "status of a stopped engine is 3 (LSB)");
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(std::fs::read_to_string(&log_file).unwrap().contains("serving"), "the daemon logs to its file");
}

/// A daemon serving `portfolio` without ticks (a frame after the first is a data push), with
/// account `a1` holding 2 AAPL at 10, and `clients` connected to it.
struct PortfolioDaemon {
    dir: tempfile::TempDir,
    url: String,
}

impl PortfolioDaemon {
    async fn start(clients: usize) -> (PortfolioDaemon, Vec<Client>) {
        let dir = tempfile::tempdir().unwrap();
        let plugins = plugins_dir_with_quote(dir.path());
        std::fs::copy(artifacts::PORTFOLIO, plugins.join("portfolio.wasm")).unwrap();
        let tables = "drain_secs = 3\n[plugins.portfolio]\nread = [\"accounts\", \"prices\"]\ntick_ms = 0\n";
        let (_, port, _) = write_config(dir.path(), &plugins, tables);
        let url = format!("ws://127.0.0.1:{port}/ws/portfolio?params={}", encode(r#"{"account":"a1"}"#));
        let daemon = PortfolioDaemon { dir, url };
        let start = daemon.wasmpush(&["start", "--daemon"]);
        assert!(start.status.success(), "{}", text(&start.stderr));
        daemon.put("accounts", "a1", r#"{"holdings":{"AAPL":2},"public":true}"#);
        daemon.put("prices", "AAPL", r#"{"price":10}"#);
        let mut connected = Vec::new();
        for _ in 0..clients {
            let mut client = Client::connect(&daemon.url).await;
            assert!(client.next_text(SOON).await.contains(r#""total":20"#));
            connected.push(client);
        }
        (daemon, connected)
    }

    /// Runs `command` (start, restart, status) on this daemon's config, pid file and log file.
    fn wasmpush(&self, command: &[&str]) -> Output {
        let path = |name: &str| self.dir.path().join(name).to_str().unwrap().to_owned();
        let (config, pid, log) = (path("wasmpush.toml"), path("wasmpush.pid"), path("wasmpush.log"));
        let mut args: Vec<&str> = command.to_vec();
        args.extend(["--config", &config, "--pid-file", &pid]);
        if command[0] != "status" {
            args.extend(["--log-file", &log]);
        }
        wasmpush(&args)
    }

    /// Publishes `value` as `key` of `bucket` through the CLI.
    fn put(&self, bucket: &str, key: &str, value: &str) {
        let config = self.dir.path().join("wasmpush.toml");
        let put = wasmpush(&["data", "--config", config.to_str().unwrap(), "put", bucket, key, value]);
        assert!(put.status.success(), "{}", text(&put.stderr));
    }

    /// Checks that the engine which started serves on after a failed restart: its publish API
    /// commits (AAPL moves to 11), its clients, never closed, are pushed the change, and a new
    /// client is served.
    async fn serves_on(&self, old_clients: &mut [Client]) {
        self.put("prices", "AAPL", r#"{"price":11}"#);
        for client in old_clients {
            match client.next_within(Duration::from_secs(5)).await {
                Some(Frame::Text(frame)) => assert!(frame.contains(r#""total":22"#), "{frame}"),
                other => panic!("an old engine's client got {other:?}, not the new price"),
            }
        }
        let mut client = Client::connect(&self.url).await;
        assert!(client.next_text(SOON).await.contains(r#""total":22"#), "a new client is served by the old engine");
    }

    fn stop(&self) {
        let stop = wasmpush(&["stop", "--pid-file", self.dir.path().join("wasmpush.pid").to_str().unwrap()]);
        assert!(stop.status.success(), "{}", text(&stop.stderr));
    }
}

#[tokio::test]
async fn the_clients_of_a_draining_engine_are_pushed_the_data_published_to_its_successor() {
    const CLIENTS: usize = 8;
    let (daemon, old_clients) = PortfolioDaemon::start(CLIENTS).await;
    let restart = daemon.wasmpush(&["restart"]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    // Published to the new engine (the old one no longer accepts), forwarded to the old one.
    daemon.put("prices", "AAPL", r#"{"price":11}"#);
    let mut pushed = 0;
    for mut client in old_clients {
        // Each old client is closed with 1012 at its own moment within drain_secs; most are
        // still open when the price moves, and those must see it first.
        let mut saw_new_price = false;
        loop {
            match client.next_within(Duration::from_secs(5)).await {
                Some(Frame::Text(frame)) => {
                    assert!(frame.contains(r#""total":22"#), "a data push shows the new price: {frame}");
                    saw_new_price = true;
                }
                Some(Frame::Close(close)) => {
                    assert_eq!(close, Some((1012, "service restart".to_owned())), "an old engine's client");
                    break;
                }
                other => panic!("an old client got {other:?} before its 1012"),
            }
        }
        pushed += usize::from(saw_new_price);
    }
    assert!(pushed >= CLIENTS / 2, "only {pushed} of {CLIENTS} draining clients were pushed the new price");
    eprintln!("restart: {pushed} of {CLIENTS} draining clients were pushed a price published to the new engine");
    let mut client = Client::connect(&daemon.url).await;
    assert!(client.next_text(SOON).await.contains(r#""total":22"#), "the new engine serves it too");
    daemon.stop();
}

#[tokio::test]
async fn a_restart_whose_new_engine_fails_after_the_old_one_let_go_leaves_the_old_one_serving() {
    const CLIENTS: usize = 4;
    let (daemon, mut old_clients) = PortfolioDaemon::start(CLIENTS).await;
    let pid_before = std::fs::read_to_string(daemon.dir.path().join("wasmpush.pid")).unwrap();
    // The new engine takes the sockets, compiles its plugins and has the old one let go; then
    // its data store cannot be created (its directory's parent is a file), and it exits.
    let file = daemon.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad_data_dir = file.join("data");
    let restart = daemon.wasmpush(&["restart", "--data-dir", bad_data_dir.to_str().unwrap()]);
    assert!(!restart.status.success(), "the restart is reported as failed");
    assert!(text(&restart.stderr).contains("cannot open the data store"), "{}", text(&restart.stderr));

    daemon.serves_on(&mut old_clients).await;
    assert_eq!(std::fs::read_to_string(daemon.dir.path().join("wasmpush.pid")).unwrap(), pid_before);
    let status = daemon.wasmpush(&["status"]);
    assert!(status.status.success(), "{}", text(&status.stderr));

    // It still answers the next restart, which goes through.
    let restart = daemon.wasmpush(&["restart"]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    assert_ne!(std::fs::read_to_string(daemon.dir.path().join("wasmpush.pid")).unwrap(), pid_before);
    match old_clients[0].next_within(Duration::from_secs(5)).await {
        Some(Frame::Close(close)) => assert_eq!(close, Some((1012, "service restart".to_owned()))),
        other => panic!("an old engine's client got {other:?}, not its 1012"),
    }
    let mut client = Client::connect(&daemon.url).await;
    assert!(client.next_text(SOON).await.contains(r#""total":22"#), "the new engine serves the same data");
    daemon.stop();
}

/// The pid of the process whose command line has all of `words`, once one runs (within 10 s).
fn wait_for_process(words: &[&str]) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let args: Vec<String> = cmdline.split(|b| *b == 0).map(text).collect();
            if words.iter().all(|word| args.iter().any(|arg| arg == word)) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no process with {words:?} within 10 s");
}

#[tokio::test]
async fn a_restart_whose_new_engine_hangs_kills_it_at_the_start_timeout_and_the_old_one_serves_on() {
    let (daemon, mut old_clients) = PortfolioDaemon::start(2).await;
    // The new engine is stopped (SIGSTOP) as soon as it runs: it hangs wherever it got to.
    let pid_file = daemon.dir.path().join("wasmpush.pid").to_str().unwrap().to_owned();
    let freezer = std::thread::spawn(move || {
        let pid = wait_for_process(&["--takeover", &pid_file]);
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        pid
    });
    let restart = daemon.wasmpush(&["restart", "--start-timeout", "2"]);
    let hung = freezer.join().unwrap();
    assert!(!restart.status.success(), "the restart is reported as failed");
    let stderr = text(&restart.stderr);
    assert!(stderr.contains("it was killed, and the running engine serves on"), "{stderr}");
    assert!(!Path::new(&format!("/proc/{hung}")).exists(), "the hung engine {hung} is gone");

    daemon.serves_on(&mut old_clients).await;
    daemon.stop();
}

#[tokio::test]
async fn start_failures_are_reported_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let (config, port, _) = write_config(dir.path(), &plugins, "");
    let pid = dir.path().join("wasmpush.pid");
    let log = dir.path().join("wasmpush.log");
    let start = |config: &Path| {
        wasmpush(&[
            "start",
            "--daemon",
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            pid.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ])
    };

    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let busy = start(&config);
    assert!(!busy.status.success());
    assert!(text(&busy.stderr).contains(&format!("cannot listen on 127.0.0.1:{port}")), "{}", text(&busy.stderr));

    let bad_key = dir.path().join("bad.toml");
    std::fs::write(&bad_key, "tick_ms = 200\nticks_ms = 100\n").unwrap();
    let refused = start(&bad_key);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("ticks_ms"), "{}", text(&refused.stderr));

    let bad_value = dir.path().join("bad-value.toml");
    std::fs::write(&bad_value, "tick_ms = 1\n").unwrap();
    let refused = start(&bad_value);
    assert!(text(&refused.stderr).contains("invalid setting `tick_ms`"), "{}", text(&refused.stderr));

    let missing_dir = dir.path().join("missing.toml");
    std::fs::write(&missing_dir, "plugins_dir = \"/nonexistent/plugins\"\n").unwrap();
    let refused = start(&missing_dir);
    assert!(
        text(&refused.stderr).contains("cannot read plugins directory /nonexistent/plugins"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!pid.exists(), "a failed start leaves no pid file");
}

#[tokio::test]
async fn a_pid_file_naming_an_unrelated_live_process_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let mut stranger = KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = stranger.id();
    // Forged as exactly as it can be: the stranger's pid and its real start time (field 22).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start = stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(19).unwrap().to_owned();
    let pid_file = dir.path().join("wasmpush.pid");
    std::fs::write(&pid_file, format!("{pid} {start}\n")).unwrap();
    let pid_arg = pid_file.to_str().unwrap();

    let stop = wasmpush(&["stop", "--pid-file", pid_arg, "--timeout", "1"]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(text(&stop.stdout).contains("stale pid file"), "{}", text(&stop.stdout));
    let reload = wasmpush(&["reload", "--pid-file", pid_arg]);
    assert!(!reload.status.success());
    assert!(text(&reload.stderr).contains("nothing was signalled"), "{}", text(&reload.stderr));
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger is alive");

    // `start` takes the stale file over, and `stop` then stops the engine, not the stranger.
    let plugins = plugins_dir_with_quote(dir.path());
    let (config, port, _) = write_config(dir.path(), &plugins, "");
    let mut engine = start_in_foreground(&config, Path::new(pid_arg));
    Client::connect_retrying(&format!("ws://127.0.0.1:{port}/"), SOON * 10).await;
    assert!(std::fs::read_to_string(&pid_file).unwrap().starts_with(&format!("{} ", engine.id())));
    assert!(wasmpush(&["stop", "--pid-file", pid_arg]).status.success());
    assert!(engine.wait().unwrap().success());
    assert!(stranger.try_wait().unwrap().is_none(), "the stranger is still alive");
}

#[tokio::test]
async fn sigterm_while_plugins_compile_stops_the_engine_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // Enough plugins that compiling them takes a while.
    for n in 0..24 {
        std::fs::copy(artifacts::PORTFOLIO, plugins.join(format!("p{n}.wasm"))).unwrap();
    }
    let (config, _, _) = write_config(dir.path(), &plugins, "");
    let pid_file = dir.path().join("wasmpush.pid");
    let mut engine = KillOnDrop(
        Command::new(BINARY)
            .args(["start", "--config", config.to_str().unwrap(), "--pid-file", pid_file.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The pid file is written once the ports are bound, before the plugins are compiled.
    let deadline = std::time::Instant::now() + SOON * 10;
    while !std::fs::read_to_string(&pid_file).is_ok_and(|text| text.contains(' ')) {
        assert!(std::time::Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(engine.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = engine.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut engine.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("stopped during start-up"), "the stop came while plugins compiled: {log}");
    assert!(!pid_file.exists(), "the pid file is removed");
}

#[tokio::test]
async fn a_log_flood_into_a_stderr_nobody_reads_does_not_delay_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    std::fs::copy(artifacts::HOSTILE, plugins.join("hostile.wasm")).unwrap();
    // One shard: the flooding plugin and the neighbour share its thread.
    let (config, port, _) = write_config(dir.path(), &plugins, "workers = 1\n");
    let mut engine = KillOnDrop(
        Command::new(BINARY)
            .args(["start", "--config", config.to_str().unwrap(), "--pid-file"])
            .arg(dir.path().join("wasmpush.pid"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Held open and never read: once its pipe is full, a write to stderr would block.
    let _unread_stderr = engine.stderr.take().unwrap();
    let url = |path: &str, params: &str| format!("ws://127.0.0.1:{port}{path}?params={}", encode(params));
    let mut neighbour = Client::connect_retrying(&url("/ws/quote", r#"{"symbol":"AAPL"}"#), SOON * 10).await;
    let mut flood = Client::connect(&url("/ws/hostile", r#"{"do":"log"}"#)).await;
    let flooding = async {
        // Each new params message is a call that logs 10,000 lines of 10 KB.
        for nonce in 0..40 {
            flood.send_text(&format!(r#"{{"do":"log","n":{nonce}}}"#)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (frames, ()) = tokio::join!(neighbour.texts_during(Duration::from_secs(4)), flooding);
    // 20 ticks in 4 s; at least 90 % of them must come.
    assert!(frames.len() >= 18, "the neighbour got {} frames in 4 s", frames.len());
}

#[tokio::test]
async fn readiness_is_reported_only_after_the_first_plugin_scan() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    for n in 0..24 {
        std::fs::copy(artifacts::PORTFOLIO, plugins.join(format!("p{n}.wasm"))).unwrap();
    }
    let (config, _, admin) = write_config(dir.path(), &plugins, "");
    // systemd's side of Type=notify: a datagram socket named in NOTIFY_SOCKET.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let _engine = KillOnDrop(
        Command::new(BINARY)
            .args(["start", "--config", config.to_str().unwrap(), "--pid-file"])
            .arg(dir.path().join("wasmpush.pid"))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let healthz = || wasmpush_tests::http::request(admin, "GET", "/healthz", None, "");
    let (mut starting, deadline) = (0, std::time::Instant::now() + SOON * 20);
    let mut buffer = [0u8; 256];
    // The order to prove: once READY=1 has come, /healthz answers 200. (A 503 read before the
    // datagram came proves nothing: the engine may turn ready between its answer and our read.)
    let ready_datagram = loop {
        assert!(std::time::Instant::now() < deadline, "never ready");
        let ready_datagram = notify.recv(&mut buffer).ok();
        let ready_came = ready_datagram.is_some();
        let answer = tokio::time::timeout(SOON, async {
            match tokio::net::TcpStream::connect(admin).await {
                Ok(_) => Some(healthz().await),
                Err(_) => None,
            }
        })
        .await
        .unwrap();
        match answer {
            Some((200, _)) => break ready_datagram,
            Some((503, body)) => {
                assert!(!ready_came, "READY=1 came, then /healthz said {body}");
                assert!(body.starts_with("starting"), "{body}");
                starting += 1;
            }
            Some(other) => panic!("/healthz answered {other:?}"),
            None => assert!(!ready_came, "READY=1 came before the admin port accepted"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(starting > 0, "the plugins compiled before /healthz was first asked; no proof of order");
    let status: serde_json::Value = serde_json::from_str(&wasmpush_tests::http::get(admin, "/status").await).unwrap();
    assert_eq!(status["plugins"].as_array().unwrap().len(), 25, "every plugin loaded once ready");
    let length = ready_datagram.unwrap_or_else(|| {
        notify.set_nonblocking(false).unwrap();
        notify.set_read_timeout(Some(SOON)).unwrap();
        notify.recv(&mut buffer).expect("READY=1 on NOTIFY_SOCKET")
    });
    assert_eq!(std::str::from_utf8(&buffer[..length]).unwrap().trim(), "READY=1");
}

#[tokio::test]
async fn a_bare_restart_and_status_act_on_the_engine_as_it_was_started() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let free = || crate::util::free_port().to_string();
    let (port, admin, publish) = (free(), free(), free());
    let pid_file = dir.path().join("wasmpush.pid");
    let (pid, log) = (pid_file.to_str().unwrap().to_owned(), dir.path().join("wasmpush.log"));
    let data = dir.path().join("data");
    let started_with = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        &format!("127.0.0.1:{admin}"),
        "--publish",
        &format!("127.0.0.1:{publish}"),
        "--plugins-dir",
        plugins.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--tick-ms",
        "100",
    ]
    .map(str::to_owned);
    let mut start = vec!["start".to_owned(), "--daemon".into(), "--pid-file".into(), pid.clone(), "--log-file".into()];
    start.push(log.to_str().unwrap().into());
    start.extend(started_with);
    let start: Vec<&str> = start.iter().map(String::as_str).collect();
    assert!(wasmpush(&start).status.success());

    // No flag but the pid file: status finds the engine's admin address by itself.
    let status = wasmpush(&["status", "--pid-file", &pid]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains(&format!("listen:         127.0.0.1:{port}")), "{}", text(&status.stdout));

    // A bare restart starts the same engine again: same ports, same tick.
    let restart = wasmpush(&["restart", "--pid-file", &pid, "--log-file", log.to_str().unwrap()]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    assert!(text(&restart.stdout).contains(&format!("listening on 127.0.0.1:{port}")), "{}", text(&restart.stdout));
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"))).await;
    client.next_text(SOON).await;
    let frames = client.texts_during(Duration::from_secs(1)).await.len();
    assert!((8..=12).contains(&frames), "{frames} frames in 1 s: the tick of 100 ms was kept");
    assert_eq!(wasmpush(&["status", "--pid-file", &pid]).status.code(), Some(0));

    // A flag given to restart overrides the engine's own.
    let restart = wasmpush(&["restart", "--pid-file", &pid, "--log-file", log.to_str().unwrap(), "--tick-ms", "200"]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"))).await;
    client.next_text(SOON).await;
    let frames = client.texts_during(Duration::from_secs(1)).await.len();
    assert!((4..=6).contains(&frames), "{frames} frames in 1 s after restarting with --tick-ms 200");

    // A new address given to restart is bound afresh, not the running engine's socket reused.
    let moved = free();
    let listen = format!("127.0.0.1:{moved}");
    let restart = wasmpush(&["restart", "--pid-file", &pid, "--log-file", log.to_str().unwrap(), "--listen", &listen]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    let mut client = Client::connect(&format!("ws://{listen}/ws/quote?params={}", encode("{}"))).await;
    client.next_text(SOON).await;
    let status = wasmpush(&["status", "--pid-file", &pid]);
    assert!(text(&status.stdout).contains(&format!("listen:         {listen}")), "{}", text(&status.stdout));
    assert!(wasmpush(&["stop", "--pid-file", &pid]).status.success());
}

/// Regression (#23.6): a restart from a shell without the secrets the engine was started with
/// used to start an engine without them (the publish API open, the admin endpoint open, or the
/// restart failing on a plugin that requires tokens).
#[tokio::test]
async fn a_restart_from_a_shell_without_the_secrets_keeps_the_running_engines_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let (config, port, admin) = write_config(dir.path(), &plugins, "[plugins.quote]\nauth = \"required\"\n");
    let publish = config_address(&config, "publish");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (config, pid, log) = (config.to_str().unwrap().to_owned(), path("wasmpush.pid"), path("wasmpush.log"));
    let run = |command: &str, secrets: &[(&str, &str)]| {
        let mut run = Command::new(BINARY);
        run.args([command, "--daemon", "--config", &config, "--pid-file", &pid, "--log-file", &log]);
        for name in ["WASMPUSH_PUBLISH_TOKEN", "WASMPUSH_ADMIN_TOKEN", "WASMPUSH_JWT_SECRET"] {
            run.env_remove(name);
        }
        run.envs(secrets.iter().copied()).output().unwrap()
    };
    let secrets = [
        ("WASMPUSH_PUBLISH_TOKEN", "publish-token-0123456789"),
        ("WASMPUSH_ADMIN_TOKEN", "admin-token-0123456789"),
        ("WASMPUSH_JWT_SECRET", "a-jwt-secret-of-at-least-32-bytes!!"),
    ];
    let start = run("start", &secrets);
    assert!(start.status.success(), "{}", text(&start.stderr));
    let closed = async || {
        let put = wasmpush_tests::http::request(publish, "PUT", "/v1/buckets/b/keys/k", None, "1").await;
        let status = wasmpush_tests::http::exchange(
            ([127, 0, 0, 1], admin).into(),
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let anonymous = Client::try_connect(&format!("ws://127.0.0.1:{port}/ws/quote")).await;
        (put.0, status.0, anonymous.is_err())
    };
    assert_eq!(closed().await, (401, 401, true), "started with its secrets");

    let restart = run("restart", &[]);
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    assert_eq!(closed().await, (401, 401, true), "after a restart from a shell without them");
    let (status, _) =
        wasmpush_tests::http::request(publish, "PUT", "/v1/buckets/b/keys/k", Some("publish-token-0123456789"), "1")
            .await;
    assert_eq!(status, 200, "the running engine's token still opens the publish API");
    let stop = wasmpush(&["stop", "--pid-file", &pid]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
}

/// Regression (#23.12): `data` wrote unchecked bucket and key names into its request line.
#[test]
fn the_data_command_refuses_a_name_that_would_break_its_request_line() {
    // Nothing listens on port 1: a name that passed the check would fail to connect instead.
    let injected = wasmpush(&["data", "--publish", "127.0.0.1:1", "put", "b", "k HTTP/1.1\r\nX-Evil: 1", "1"]);
    assert!(!injected.status.success());
    let stderr = text(&injected.stderr);
    assert!(stderr.contains("has ' '") && !stderr.contains("does not answer"), "{stderr}");
    let bucket = wasmpush(&["data", "--publish", "127.0.0.1:1", "ls", "a/b"]);
    assert!(text(&bucket.stderr).contains("bucket name `a/b` has '/'"), "{}", text(&bucket.stderr));
}
