//! The command line: turns arguments into one validated [`Config`] and runs the command. The
//! only module that knows clap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::pidfile::{self, PidFile, running_pid};

/// wasmpush: a WebSocket push engine whose business logic is a hot-swappable WebAssembly plugin.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the engine in the foreground until SIGINT or SIGTERM (`stop`); SIGHUP rescans plugins.
    Start(StartArgs),
    /// Stops the running engine: SIGTERM, wait for it to exit, SIGKILL after the timeout.
    Stop {
        /// Pid file of the running engine.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
        /// Seconds to wait for a graceful exit before SIGKILL.
        #[arg(long, value_name = "SECS", default_value_t = 15)]
        timeout: u64,
    },
    /// Makes the running engine rescan its plugins directory (sends SIGHUP).
    Reload {
        /// Pid file of the running engine.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
    },
}

/// Where `start` writes its pid and `stop`/`reload` read it.
const DEFAULT_PID_FILE: &str = "runtime/wasmpush.pid";

/// Settings for `start`; each flag overrides the config file.
#[derive(Debug, Args)]
struct StartArgs {
    /// Pid file to write; `start` refuses to run if it names a live process.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
    pid_file: PathBuf,
    /// TOML config file (see wasmpush.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:9503].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the admin endpoint [default: 127.0.0.1:9504].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Directory of NAME.wasm plugins [default: runtime/plugins].
    #[arg(long, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// Plugin served at `/` [default: quote].
    #[arg(long, value_name = "NAME")]
    default_plugin: Option<String>,
    /// Milliseconds between two pushes to a connection [default: 200].
    #[arg(long, value_name = "MS")]
    tick_ms: Option<u64>,
    /// Worker threads running plugins; 0 = one per CPU [default: 0].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

impl StartArgs {
    /// The config file's settings (or the defaults) with the flags applied, validated.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin {
            config.admin = admin;
        }
        if let Some(dir) = &self.plugins_dir {
            config.plugins_dir = dir.clone();
        }
        if let Some(name) = &self.default_plugin {
            config.default_plugin = name.clone();
        }
        if let Some(tick_ms) = self.tick_ms {
            config.tick_ms = tick_ms;
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        config.validate()?;
        Ok(config)
    }
}

/// The whole `wasmpush` command: sets up logging (`RUST_LOG`, default `info`), parses the
/// arguments, runs the command and prints the error chain if it fails.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("wasmpush: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    /// Runs the command; the exit code on success.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Start(args) => {
                let config = args.config()?;
                let _pid_file = PidFile::create(&args.pid_file)?;
                start(config)
            }
            Command::Stop { pid_file, timeout } => stop(&pid_file, Duration::from_secs(timeout)),
            Command::Reload { pid_file } => {
                let pid = running_pid(&pid_file)?.context("wasmpush is not running")?;
                pidfile::signal(pid, Signal::SIGHUP).context("cannot signal the engine")?;
                println!("reload requested (pid {pid})");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Stops the engine named in `pid_file`; SIGKILL only for that pid, only after `timeout`.
fn stop(pid_file: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let Some(pid) = running_pid(pid_file)? else {
        println!("wasmpush is not running");
        return Ok(ExitCode::SUCCESS);
    };
    pidfile::signal(pid, Signal::SIGTERM).context("cannot signal the engine")?;
    let deadline = Instant::now() + timeout;
    while pidfile::is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pidfile::is_alive(pid) {
        eprintln!("wasmpush: pid {pid} did not exit within {timeout:?}; sending SIGKILL");
        pidfile::signal(pid, Signal::SIGKILL).context("cannot kill the engine")?;
        let _ = std::fs::remove_file(pid_file);
    }
    println!("stopped (pid {pid})");
    Ok(ExitCode::SUCCESS)
}

/// Runs the engine in the foreground.
fn start(config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let websocket = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.admin))?;
        let listeners = crate::Listeners { websocket, admin: Some(admin) };
        crate::run(config, listeners, shutdown_signal(), reload_signal()?).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A rescan request for every SIGHUP.
fn reload_signal() -> anyhow::Result<mpsc::Receiver<()>> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
    let (requests, received) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // A rescan already queued covers this signal too.
            let _ = requests.try_send(());
        }
    });
    Ok(received)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler cannot fail");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
