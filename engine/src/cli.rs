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
use crate::daemon;
use crate::pidfile::{self, PidFile, running_pid};
use crate::server::Reload;

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
    /// Runs the engine (in the foreground, or with --daemon in the background) until SIGINT or
    /// SIGTERM (`stop`); SIGHUP rescans plugins.
    Start(StartArgs),
    /// Stops the running engine, then starts it again in the background.
    Restart(StartArgs),
    /// Shows whether the engine runs and what it serves; exit code 0 when running, 3 when not.
    Status {
        /// Pid file of the running engine.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
        /// Config file the engine was started with (for its admin address).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Admin address of the engine [default: from --config, else 127.0.0.1:9504].
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Print the engine's /status JSON as it is.
        #[arg(long)]
        json: bool,
    },
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

/// Where a daemon logs.
const DEFAULT_LOG_FILE: &str = "runtime/wasmpush.log";

/// The LSB exit code of `status` for "not running".
const NOT_RUNNING: u8 = 3;

/// Settings for `start`; each flag overrides the config file.
#[derive(Debug, Clone, Args)]
struct StartArgs {
    /// Run in the background; returns once the engine listens (or fails with its reason).
    #[arg(long)]
    daemon: bool,
    /// Log file of a daemon.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_LOG_FILE)]
    log_file: PathBuf,
    /// Seconds `restart` waits for the old engine to exit before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    stop_timeout: u64,
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
    /// Set by `--daemon` for its child: start a new session, without a controlling terminal.
    #[arg(long, hide = true)]
    detached: bool,
}

impl StartArgs {
    /// The arguments of `start` in the foreground with the same flags (the daemon's child). Only
    /// the flags given are passed, so a reload re-reads the config file for the others.
    fn foreground_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["start".into(), "--detached".into(), "--pid-file".into(), self.pid_file.clone().into()];
        let mut flag = |name: &str, value: Option<std::ffi::OsString>| {
            if let Some(value) = value {
                args.extend([name.into(), value]);
            }
        };
        flag("--config", self.config.clone().map(Into::into));
        flag("--listen", self.listen.map(|v| v.to_string().into()));
        flag("--admin", self.admin.map(|v| v.to_string().into()));
        flag("--plugins-dir", self.plugins_dir.clone().map(Into::into));
        flag("--default-plugin", self.default_plugin.clone().map(Into::into));
        flag("--tick-ms", self.tick_ms.map(|v| v.to_string().into()));
        flag("--workers", self.workers.map(|v| v.to_string().into()));
        args
    }

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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("wasmpush: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, leaving out a cause its parent's message already quotes.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

impl Cli {
    /// Runs the command; the exit code on success.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Start(args) if args.daemon => start_daemon(&args),
            Command::Start(args) => {
                if args.detached {
                    daemon::detach();
                }
                let config = args.config()?;
                refuse_if_running(&args.pid_file)?;
                start(config, args)
            }
            Command::Restart(args) => {
                stop(&args.pid_file, Duration::from_secs(args.stop_timeout))?;
                start_daemon(&args)
            }
            Command::Status { pid_file, config, admin, json } => {
                let admin = match (admin, config) {
                    (Some(admin), _) => admin,
                    (None, Some(path)) => Config::from_file(&path)?.admin,
                    (None, None) => Config::default().admin,
                };
                status(&pid_file, admin, json)
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

/// Fails if the pid file names a live process.
fn refuse_if_running(pid_file: &Path) -> anyhow::Result<()> {
    match running_pid(pid_file)? {
        Some(pid) => anyhow::bail!("wasmpush is already running (pid {pid}, pid file {})", pid_file.display()),
        None => Ok(()),
    }
}

/// Starts the engine in the background and waits until it listens.
fn start_daemon(args: &StartArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    refuse_if_running(&args.pid_file)?;
    let pid = daemon::spawn(&args.foreground_args(), &args.log_file, &args.pid_file, config.listen)?;
    println!("wasmpush started (pid {pid}), listening on {}, logging to {}", config.listen, args.log_file.display());
    Ok(ExitCode::SUCCESS)
}

/// Prints the engine's status; exit code 0 when it runs, 3 when not.
fn status(pid_file: &Path, admin: SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    let Some(pid) = running_pid(pid_file)? else {
        println!("wasmpush is not running");
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    let body = admin_get(admin, "/status")
        .with_context(|| format!("wasmpush runs (pid {pid}) but its admin endpoint {admin} does not answer"))?;
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let status: serde_json::Value = serde_json::from_str(&body).context("the admin endpoint sent invalid JSON")?;
    println!("wasmpush is running (pid {pid})");
    println!("  listen:         {}", status["listen"].as_str().unwrap_or("?"));
    println!("  uptime:         {} s", status["uptime_secs"]);
    println!("  connections:    {}", status["connections"]);
    println!("  pushes/s:       {} ({} in all)", status["pushes_per_sec"], status["pushes"]);
    println!("  plugin errors:  {}, faults: {}", status["plugin_errors"], status["plugin_faults"]);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    for plugin in status["plugins"].as_array().into_iter().flatten() {
        let version = plugin["version"].as_str().unwrap_or_default();
        let loaded_ago = now_ms.saturating_sub(plugin["loaded_at_ms"].as_u64().unwrap_or(now_ms)) / 1000;
        let name = plugin["name"].as_str().unwrap_or("?");
        println!("  plugin {name}: version {:.12}, {} bytes, loaded {loaded_ago} s ago", version, plugin["bytes"]);
    }
    if let Some(error) = status["last_reload_error"].as_object() {
        let (plugin, reason) = (error["plugin"].as_str().unwrap_or("?"), error["reason"].as_str().unwrap_or("?"));
        println!("  last reload error: {plugin}: {reason}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `GET path` from the admin endpoint; the body of a 200 response.
fn admin_get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("not an HTTP response")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{}", head.lines().next().unwrap_or_default());
    Ok(body.to_owned())
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

/// Runs the engine in the foreground; `args` are re-read on SIGHUP.
fn start(config: Config, args: StartArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let websocket = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.admin))?;
        let listeners = crate::Listeners { websocket, admin: Some(admin) };
        // Written once the ports are bound: a daemon's parent takes the pid file as a sign of life.
        let _pid_file = PidFile::create(&args.pid_file)?;
        crate::run(config, listeners, shutdown_signal(), reload_signal(args)?).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A reload request for every SIGHUP, carrying the configuration re-read from `args` when the
/// engine was started from a file.
fn reload_signal(args: StartArgs) -> anyhow::Result<mpsc::Receiver<Reload>> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
    let (requests, received) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let config = match &args.config {
                None => None,
                Some(_) => args
                    .config()
                    .inspect_err(|err| tracing::error!(cause = %describe(err), "cannot re-read the configuration"))
                    .ok(),
            };
            if requests.send(Reload { config }).await.is_err() {
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_its_parent_already_quotes_is_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoted = anyhow::Error::new(io()).context(format!("cannot read x.toml: {}", io()));
        assert_eq!(describe(&quoted), "cannot read x.toml: no such file");
        let unquoted = anyhow::Error::new(io()).context("cannot start");
        assert_eq!(describe(&unquoted), "cannot start: no such file");
    }

    #[test]
    fn the_shipped_systemd_unit_runs_start_in_the_foreground_with_valid_flags() {
        let unit = include_str!("../../deploy/wasmpush.service");
        let exec_start = unit.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("ExecStart");
        let cli = Cli::try_parse_from(exec_start.split_whitespace()).unwrap_or_else(|err| panic!("{err}"));
        let Command::Start(args) = cli.command else { panic!("ExecStart must run `start`: {exec_start}") };
        assert!(!args.daemon, "under systemd the engine runs in the foreground");
        assert!(args.config.is_some(), "the unit names its config file");
    }
}
