//! The real `wasmpush` binary: pid file, `reload`, `stop`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use wasmpush_tests::{Client, Frame, artifacts};

use crate::util::{SOON, encode};

const BINARY: &str = env!("CARGO_BIN_EXE_wasmpush-under-test");

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wasmpush(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().expect("run wasmpush")
}

/// Connects to `url`, retrying until `limit`.
async fn connect_eventually(url: &str, limit: Duration) -> Client {
    let deadline = Instant::now() + limit;
    loop {
        match Client::try_connect(url).await {
            Ok(client) => return client,
            Err(err) if Instant::now() > deadline => panic!("{url} never served: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_binary_refuses_a_second_start_reloads_on_request_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(artifacts::QUOTE, plugins.join("quote.wasm")).unwrap();
    let port = free_port();
    let config = dir.path().join("wasmpush.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{}\"\nplugins_dir = {:?}\nwatch_plugins = false\n",
            free_port(),
            plugins.display().to_string()
        ),
    )
    .unwrap();
    let pid_file = dir.path().join("wasmpush.pid");
    // A stale pid file from a crashed run (no process has this pid) must not stop `start`.
    std::fs::write(&pid_file, "2147483000\n").unwrap();
    let pid_arg = pid_file.to_str().unwrap();
    let mut engine = Command::new(BINARY)
        .args(["start", "--config", config.to_str().unwrap(), "--pid-file", pid_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let url = |path: &str| format!("ws://127.0.0.1:{port}{path}");
    let mut client = connect_eventually(&url(&format!("/ws/quote?params={}", encode("{}"))), SOON * 10).await;
    assert!(client.next_text(SOON).await.contains("NONE"));
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), engine.id().to_string());

    let second = wasmpush(&["start", "--config", config.to_str().unwrap(), "--pid-file", pid_arg]);
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("already running"), "{}", text(&second.stderr));

    // Nothing watches the directory: the plugin appears only after `wasmpush reload`.
    std::fs::copy(artifacts::CLOCK, plugins.join("clock.wasm")).unwrap();
    let reload = wasmpush(&["reload", "--pid-file", pid_arg]);
    assert!(reload.status.success(), "{}", text(&reload.stderr));
    let mut clock = connect_eventually(&url(&format!("/ws/clock?params={}", encode("{}"))), SOON * 10).await;
    assert!(clock.next_text(SOON).await.contains("local_ms"));
    assert!(client.next_text(SOON).await.contains("NONE"), "reload kept the other connection ticking");

    let stop = wasmpush(&["stop", "--pid-file", pid_arg]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    for client in [&mut client, &mut clock] {
        let close = loop {
            match client.next_within(SOON).await {
                Some(Frame::Text(_)) => continue,
                other => break other,
            }
        };
        assert_eq!(close, Some(Frame::Close(Some((1001, "going away".to_owned())))));
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
