//! [`ReleaseEngine`]: the release engine beside a bench binary (`wasmpush` in the same
//! directory, which the bench's `just` recipe builds), run in the foreground as a child process
//! with its own directory, for benches that measure it from outside: its CPU time from `/proc`,
//! its admin endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Client, KillOnDrop};

/// A release engine serving some plugins; killed on drop.
pub struct ReleaseEngine {
    process: KillOnDrop,
    /// Where its WebSocket server listens.
    pub ws: SocketAddr,
    /// Where its admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// Clock ticks per second of `/proc`'s CPU times.
    ticks_per_sec: f64,
    _dir: tempfile::TempDir,
}

impl ReleaseEngine {
    /// Starts the engine on loopback ports `port`, `port + 1` (admin) and `port + 4` (publish)
    /// with `plugins` (name, wasm path) and `extra` config lines, and waits until a client of
    /// `ready` (a WebSocket path) connects.
    pub async fn start(port: u16, plugins: &[(&str, &str)], extra: &str, ready: &str) -> ReleaseEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for (name, wasm) in plugins {
            std::fs::copy(wasm, dir.path().join(format!("plugins/{name}.wasm"))).unwrap();
        }
        let (ws, admin_addr): (SocketAddr, SocketAddr) =
            (format!("127.0.0.1:{port}").parse().unwrap(), format!("127.0.0.1:{}", port + 1).parse().unwrap());
        let config = dir.path().join("wasmpush.toml");
        let settings = format!(
            "listen = \"{ws}\"\nadmin = \"{admin_addr}\"\npublish = \"127.0.0.1:{}\"\nplugins_dir = \"{1}/plugins\"\n\
             data_dir = \"{1}/data\"\nmax_handshakes_per_ip = 4096\n{extra}",
            port + 4,
            dir.path().display()
        );
        std::fs::write(&config, settings).unwrap();
        let binary = std::env::current_exe().unwrap().with_file_name("wasmpush");
        let process = std::process::Command::new(&binary)
            .args(["start", "--config", config.to_str().unwrap(), "--pid-file"])
            .arg(dir.path().join("wasmpush.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {}: {err} (the bench's `just` recipe builds it)", binary.display())
            });
        let clk_tck = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout;
        let ticks_per_sec = String::from_utf8_lossy(&clk_tck).trim().parse().unwrap();
        let engine = ReleaseEngine { process: KillOnDrop(process), ws, admin_addr, ticks_per_sec, _dir: dir };
        drop(Client::connect_retrying(&engine.url(ready), Duration::from_secs(120)).await);
        engine
    }

    /// `ws://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.ws)
    }

    /// `GET /status`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&crate::http::get(self.admin_addr, "/status").await).unwrap()
    }

    /// CPU seconds the engine used so far: its threads whose name contains `threads`, or all.
    pub fn cpu_secs(&self, threads: Option<&str>) -> f64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.process.0.id())).unwrap();
        let mut ticks = 0u64;
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let Some((name, rest)) = stat.split_once(") ") else { continue };
            if threads.is_none_or(|threads| name.contains(threads)) {
                let fields: Vec<&str> = rest.split(' ').collect();
                ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            }
        }
        ticks as f64 / self.ticks_per_sec
    }
}
