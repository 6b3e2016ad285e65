//! The command line: turns arguments into one validated [`Config`] and runs the command. The
//! only module that knows clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;

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
    /// Runs the engine in the foreground until SIGINT or SIGTERM.
    Start(StartArgs),
}

/// Settings for `start`; each flag overrides the config file.
#[derive(Debug, Args)]
struct StartArgs {
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
    fn into_config(self) -> anyhow::Result<Config> {
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
        if let Some(dir) = self.plugins_dir {
            config.plugins_dir = dir;
        }
        if let Some(name) = self.default_plugin {
            config.default_plugin = name;
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

impl Cli {
    /// Runs the command; the exit code on success.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Start(args) => start(args.into_config()?),
        }
    }
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
