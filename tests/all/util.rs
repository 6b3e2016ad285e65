//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmpush_tests::{Client, KillOnDrop, TestEngine, artifacts};

/// The tick interval of the default configuration.
pub const TICK: Duration = Duration::from_millis(200);

/// Generous time for a frame that should come "at once" or at the next tick.
pub const SOON: Duration = Duration::from_secs(3);

/// An engine serving `quote` and `clock` with the default configuration.
pub async fn engine() -> TestEngine {
    TestEngine::start(&[("quote", artifacts::QUOTE), ("clock", artifacts::CLOCK)], |_| {}).await
}

pub use wasmpush_tests::percent_encode as encode;

/// Replaces the `"ts":N` of a quote frame with the reference's fixed `1700000000000`, after
/// checking N is the current time (within a minute); returns the normalised frame.
pub fn normalise_ts(frame: &str) -> String {
    let start = frame.find("\"ts\":").unwrap_or_else(|| panic!("no ts in {frame}")) + 5;
    let end = start + frame[start..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let ts: u64 = frame[start..end].parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(ts.abs_diff(now) < 60_000, "ts {ts} is not the current time {now}");
    format!("{}1700000000000{}", &frame[..start], &frame[end..])
}

/// The code and message of an engine or plugin error frame, checking its `data` is `[]`.
pub fn error_parts(frame: &str) -> (u64, String) {
    let value: serde_json::Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}: {frame}"));
    assert_eq!(value["data"], serde_json::json!([]), "{frame}");
    (value["code"].as_u64().unwrap(), value["msg"].as_str().unwrap().to_owned())
}

/// The `seq` of a data frame.
pub fn seq_of(frame: &str) -> u64 {
    number_of(frame, "seq")
}

/// The `version` of a `versioned` frame; panics on any other frame (an error frame).
pub fn version_of(frame: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}: {frame}"));
    value["version"].as_str().unwrap_or_else(|| panic!("no version in {frame}")).to_owned()
}

/// Reads `client` until a frame of `wanted` arrives (a `versioned` build's version), past error
/// frames (a candidate that trapped on it), for at most 10 s; panics if the connection ends first.
pub async fn until_version(client: &mut Client, wanted: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = client.next_text(SOON).await;
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        if frame["version"] == wanted {
            return;
        }
        assert!(frame["version"].is_string() || frame["code"].is_u64(), "neither data nor error: {frame}");
        assert!(tokio::time::Instant::now() < deadline, "never pushed version {wanted}");
    }
}

/// The whole-number field `name` of a data frame.
pub fn number_of(frame: &str, name: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}: {frame}"));
    value[name].as_u64().unwrap_or_else(|| panic!("no {name} in {frame}"))
}

/// The real `wasmpush` binary, built by this crate.
pub const BINARY: &str = env!("CARGO_BIN_EXE_wasmpush-under-test");

/// Runs the real `wasmpush` with `args` on a blocking thread (no admin token from the
/// environment); its success and output.
pub async fn wasmpush(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let mut command = std::process::Command::new(BINARY);
    command.args(&args).env_remove("WASMPUSH_ADMIN_TOKEN");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run wasmpush")).await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The real engine started in the foreground with `config` and `pid_file`, output discarded;
/// killed if the test ends before it stops.
pub fn start_in_foreground(config: &Path, pid_file: &Path) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(BINARY)
            .args(["start", "--config", config.to_str().unwrap(), "--pid-file"])
            .arg(pid_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `DIR/plugins` holding `plugins` (name, wasm path) as `NAME.wasm`.
pub fn plugins_dir_with(dir: &Path, plugins: &[(&str, &str)]) -> PathBuf {
    let plugins_dir = dir.join("plugins");
    std::fs::create_dir(&plugins_dir).unwrap();
    for (name, wasm) in plugins {
        std::fs::copy(wasm, plugins_dir.join(format!("{name}.wasm"))).unwrap();
    }
    plugins_dir
}

/// `DIR/plugins` holding `quote`.
pub fn plugins_dir_with_quote(dir: &Path) -> PathBuf {
    plugins_dir_with(dir, &[("quote", artifacts::QUOTE)])
}

/// A free loopback port (bound, then released).
///
/// The port is left in TIME_WAIT by a connection its side closed first, which keeps the kernel
/// from handing it to another `bind` to port 0 or to an outgoing connection of a test running
/// alongside, while the engine, which binds with `SO_REUSEADDR` (as std's listener here does, so
/// the TIME_WAIT socket carries it too), can take it at once. A port merely bound and released is
/// free for either until the engine binds it: on this machine one such port went to one of the
/// next 17,000 sockets opened, a reserved one to none.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(address).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    drop(accepted);
    drop(client);
    address.port()
}

/// A config file for `plugins` on three free ports (WebSocket, admin, publish) with its data in
/// `dir/data`, plus `extra` lines (which may set an address themselves); returns (config path,
/// WebSocket port, admin port).
pub fn write_config(dir: &Path, plugins: &Path, extra: &str) -> (PathBuf, u16, u16) {
    let (port, admin, publish) = (free_port(), free_port(), free_port());
    let config = dir.join("wasmpush.toml");
    let addresses: String = [("listen", port), ("admin", admin), ("publish", publish)]
        .iter()
        .filter(|(key, _)| !extra.lines().any(|line| line.starts_with(&format!("{key} = "))))
        .map(|(key, port)| format!("{key} = \"127.0.0.1:{port}\"\n"))
        .collect();
    let text = format!(
        "{addresses}plugins_dir = {:?}\ndata_dir = {:?}\n{extra}",
        plugins.display().to_string(),
        dir.join("data").display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    (config, port, admin)
}

/// The address the config file `config` gives `key` (`listen`, `admin`, `publish`).
pub fn config_address(config: &Path, key: &str) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find_map(|line| line.strip_prefix(&format!("{key} = \""))).unwrap();
    line.trim_end_matches('"').parse().unwrap()
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).unwrap();
    line.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap() * 1024
}

/// The real engine as an operator runs it: `wasmpush start --daemon` with a config file, a pid
/// file and a log file in its own directory; stopped with `wasmpush stop` when dropped.
pub struct Daemon {
    /// Its directory: config, pid file, log, plugins and data.
    pub dir: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
    /// Its WebSocket port.
    pub port: u16,
    /// Its admin port.
    pub admin: u16,
}

impl Daemon {
    /// Starts the engine serving `plugins` (name, wasm path), with `extra` config lines.
    pub async fn start(plugins: &[(&str, &str)], extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let plugins_dir = plugins_dir_with(dir.path(), plugins);
        let (config, port, admin) = write_config(dir.path(), &plugins_dir, extra);
        let daemon = Daemon { dir, config, port, admin };
        let (started, said) = daemon.cli(&["start", "--daemon", "--config", daemon.config.to_str().unwrap()]).await;
        assert!(started, "{said}");
        daemon
    }

    /// Runs `wasmpush ARGS --pid-file PID --log-file LOG` against it.
    pub async fn cli(&self, args: &[&str]) -> (bool, String) {
        let pid_file = self.dir.path().join("wasmpush.pid");
        let log_file = self.dir.path().join("wasmpush.log");
        let logs = ["start", "restart"].contains(&args[0]);
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--pid-file", pid_file.to_str().unwrap()]);
        if logs {
            args.extend(["--log-file", log_file.to_str().unwrap()]);
        }
        wasmpush(&args).await
    }

    /// `wasmpush restart`, which must succeed.
    pub async fn restart(&self) {
        let (restarted, said) = self.cli(&["restart", "--config", self.config.to_str().unwrap()]).await;
        assert!(restarted, "{said}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid_file = self.dir.path().join("wasmpush.pid");
        let _ = std::process::Command::new(BINARY).args(["stop", "--pid-file"]).arg(pid_file).output();
    }
}
