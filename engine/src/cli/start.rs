//! `start` (in the foreground, or as a daemon) and `restart`: the flags of a start, the config
//! they make, and the engine run with its signals — SIGINT/SIGTERM stop it, SIGHUP reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::daemon::{self, DEFAULT_LOG_FILE};
use super::error_chain::describe;
use super::handover::{self, TakeOver};
use super::launch;
use super::pidfile::DEFAULT_PID_FILE;
use super::pidfile::{self, PidFile};
use super::secrets::{NatsSecrets, Secrets};
use crate::config::Config;
use crate::server::{self, Lifecycle, Listeners, Reload};

/// Settings for `start`; each flag overrides the config file.
#[derive(Debug, Clone, Args)]
pub(super) struct StartArgs {
    /// Run in the background; returns once the engine listens (or fails with its reason).
    #[arg(long)]
    pub(super) daemon: bool,
    /// Log file of a daemon.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_LOG_FILE)]
    pub(super) log_file: PathBuf,
    /// Seconds `restart` waits for the old engine to exit before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub(super) stop_timeout: u64,
    /// Seconds a daemon's start (and a restart's new engine) has to become ready. A restart's new
    /// engine that is not ready by then is killed, and the running engine serves on.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(super) start_timeout: u64,
    /// Pid file to write; `start` refuses to run if it names a live process.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
    pub(super) pid_file: PathBuf,
    /// TOML config file (see wasmpush.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
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
    /// Address of the publish API [default: 127.0.0.1:9505].
    #[arg(long, value_name = "ADDR")]
    publish: Option<SocketAddr>,
    /// Bearer token of the publish API (better: the environment variable, which `ps` does not show).
    #[arg(long, value_name = "TOKEN", env = "WASMPUSH_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,
    /// Bearer token of the admin endpoint's `/status` and `/metrics` (better: the environment
    /// variable).
    #[arg(long, value_name = "TOKEN", env = "WASMPUSH_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// HS256 secret of client tokens, `[auth] hs256_secret` (better: the environment variable).
    #[arg(long, value_name = "SECRET", env = "WASMPUSH_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Directory of the durable data store [default: runtime/data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// NATS servers of the cluster this engine is a node of, comma-separated
    /// (`nats://10.0.0.5:4222,nats://10.0.0.6:4222`): `[cluster] nats`.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    nats: Vec<String>,
    /// This node's name in the cluster: `[cluster] node` [default: HOST-PORT].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The NATS token or password of the cluster.
    #[command(flatten)]
    nats_secrets: NatsSecrets,
    /// If the data store cannot be read (a damaged file), move it aside (`buckets.redb.damaged-SECS`)
    /// and start with an empty store instead of refusing to start.
    #[arg(long)]
    recover_data: bool,
    /// Set by `--daemon` for its child: start a new session, without a controlling terminal.
    #[arg(long, hide = true)]
    pub(super) detached: bool,
    /// Set by `restart` for the new engine: take the listening sockets and the data store over
    /// from the engine running with this pid file (see `handover`).
    #[arg(long, hide = true)]
    pub(super) takeover: bool,
}

impl StartArgs {
    /// The arguments of `start` in the foreground with the same flags (the daemon's child). Only
    /// the flags given are passed, so a reload re-reads the config file for the others.
    fn foreground_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["start".into(), "--detached".into(), "--pid-file".into(), self.pid_file.clone().into()];
        if self.takeover {
            args.push("--takeover".into());
        }
        if self.recover_data {
            args.push("--recover-data".into());
        }
        args.extend(self.setting_flags());
        args
    }

    /// The flags given that choose the engine's settings (not the token, which is a secret and
    /// travels by environment), as they would be passed again.
    pub(super) fn setting_flags(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
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
        flag("--publish", self.publish.map(|v| v.to_string().into()));
        flag("--data-dir", self.data_dir.clone().map(Into::into));
        flag("--nats", (!self.nats.is_empty()).then(|| self.nats.join(",").into()));
        flag("--node", self.node.clone().map(Into::into));
        args
    }

    /// The config file's settings (or the defaults) with the flags applied, validated.
    pub(super) fn config(&self) -> anyhow::Result<Config> {
        let config = self.unchecked_config()?;
        config.validate()?;
        Ok(config)
    }

    /// The secrets given by flag or environment.
    pub(super) fn secrets(&self) -> Secrets {
        Secrets {
            publish_token: self.publish_token.clone(),
            admin_token: self.admin_token.clone(),
            jwt_secret: self.jwt_secret.clone(),
            nats_token: self.nats_secrets.nats_token.clone(),
            nats_password: self.nats_secrets.nats_password.clone(),
        }
    }

    /// Takes each secret the running engine was given by flag or environment and this start was
    /// not: a restart from a shell without them must not start an engine without them. Returns
    /// the names of the secrets taken.
    pub(super) fn adopt(&mut self, running: Secrets) -> Vec<&'static str> {
        let mut secrets = self.secrets();
        let taken = secrets.adopt(running);
        Secrets {
            publish_token: self.publish_token,
            admin_token: self.admin_token,
            jwt_secret: self.jwt_secret,
            nats_token: self.nats_secrets.nats_token,
            nats_password: self.nats_secrets.nats_password,
        } = secrets;
        taken
    }

    /// The config file's settings (or the defaults) with the flags applied, not validated: a
    /// restart's new engine validates once it has the running engine's secrets.
    fn unchecked_config(&self) -> anyhow::Result<Config> {
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
        if !self.nats.is_empty() {
            config.cluster.nats = self.nats.clone();
        }
        if let Some(node) = &self.node {
            config.cluster.node = Some(node.clone());
        }
        self.nats_secrets.apply_to(&mut config.cluster);
        if let Some(publish) = self.publish {
            config.publish = publish;
        }
        if let Some(token) = &self.publish_token {
            config.publish_token = Some(token.clone());
        }
        if let Some(token) = &self.admin_token {
            config.admin_token = Some(token.clone());
        }
        if let Some(secret) = &self.jwt_secret {
            config.auth.hs256_secret = Some(secret.clone());
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        config.recover_data = self.recover_data;
        Ok(config)
    }
}

/// Starts the engine in the background and waits until it listens (with `takeover`, until it
/// has taken over from the engine running now).
pub(super) fn start_daemon(args: &StartArgs) -> anyhow::Result<ExitCode> {
    // A restart's new engine validates its settings once it has the running engine's secrets.
    let config = if args.takeover { args.unchecked_config()? } else { args.config()? };
    if !args.takeover {
        pidfile::refuse_if_running(&args.pid_file)?;
    }
    let secrets = args.secrets().into_env();
    let wait = daemon::Wait { timeout: Duration::from_secs(args.start_timeout), kill_if_late: args.takeover };
    let pid = daemon::spawn(&args.foreground_args(), &secrets, &args.log_file, &args.pid_file, config.admin, wait)?;
    println!("wasmpush started (pid {pid}), listening on {}, logging to {}", config.listen, args.log_file.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs the engine in the foreground; `args` are re-read on SIGHUP. With `--takeover` it takes
/// the listening sockets, the secrets and the data store over from the engine running with the
/// same pid file (a restart); either way it offers them to the next restart's engine (see
/// `handover`).
pub(super) fn start(mut args: StartArgs) -> anyhow::Result<ExitCode> {
    // A file-size limit (RLIMIT_FSIZE) must fail the write that meets it, which the data store
    // recovers from, not kill the engine.
    // SAFETY: ignoring a signal installs no handler code.
    #[allow(unsafe_code)]
    let _ =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        // Signals are handled from here on: a SIGTERM while plugins compile stops the engine.
        let shutdown = shutdown_signal()?;
        let handover_path = handover::socket_path(&args.pid_file);
        let taken = match args.takeover {
            true => Some(TakeOver::connect(&handover_path)?),
            false => None,
        };
        if let Some((_, _, Some(running))) = &taken {
            let adopted = args.adopt(running.clone());
            if !adopted.is_empty() {
                tracing::info!(secrets = ?adopted, "kept the running engine's secrets, which this start was not given");
            }
        }
        let config = args.config()?;
        let reloads = reload_signal(args.clone())?;
        let (listeners, take_over) = match taken {
            Some((take_over, [websocket, admin, publish], _)) => {
                let listeners = Listeners {
                    websocket: adopt_or_bind(websocket, config.listen, "").await?,
                    admin: Some(adopt_or_bind(admin, config.admin, " (admin)").await?),
                    publish: Some(adopt_or_bind(publish, config.publish, " (publish)").await?),
                };
                (listeners, Some(take_over))
            }
            None => (bind(&config).await?, None),
        };
        let offered = offered_sockets(&listeners)?;
        let (hand_over, hand_over_requests) = mpsc::channel(1);
        // Held for the engine's life: the pid file, and the handover socket for the next restart.
        let pid_file = std::sync::Arc::new(std::sync::Mutex::new(None));
        let publish_ours = {
            let (path, args, pid_file) = (args.pid_file.clone(), args.clone(), pid_file.clone());
            move |pid: Result<PidFile, pidfile::PidFileError>| -> anyhow::Result<()> {
                *pid_file.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(pid?);
                if let Err(err) = launch::save(&path, &args.setting_flags()) {
                    tracing::warn!(cause = %err, "cannot keep the start flags beside the pid file; restart and status need them repeated");
                }
                handover::serve(&handover_path, offered, args.secrets(), hand_over)
                    .context("cannot open the handover socket for restarts")?;
                Ok(())
            }
        };
        let lifecycle = match take_over {
            // Written once the ports are bound: a daemon's parent takes the pid file as a sign of life.
            None => {
                publish_ours(PidFile::create(&args.pid_file))?;
                Lifecycle { on_ready: Box::new(tell_systemd_ready), take_over: None, hand_over: Some(hand_over_requests) }
            }
            // The pid file names this engine only once it serves: until then `stop` and `status`
            // act on the old one.
            Some(take_over) => {
                let path = args.pid_file.clone();
                let on_ready = move || {
                    if let Err(err) = publish_ours(PidFile::replace(&path)) {
                        tracing::error!(cause = %format!("{err:#}"), "cannot take over the pid file");
                    }
                    tell_systemd_ready();
                };
                let release = async move {
                    tokio::task::spawn_blocking(move || take_over.release())
                        .await
                        .map_err(|err| err.to_string())?
                };
                Lifecycle { on_ready: Box::new(on_ready), take_over: Some(Box::pin(release)), hand_over: Some(hand_over_requests) }
            }
        };
        server::run_with(config, listeners, shutdown, reloads, lifecycle).await?;
        Ok(ExitCode::SUCCESS)
    });
    // A compile still running on a blocking thread (a stop during start-up) is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Binds the engine's three listeners.
async fn bind(config: &Config) -> anyhow::Result<Listeners> {
    Ok(Listeners {
        websocket: bind_one(config.listen, "").await?,
        admin: Some(bind_one(config.admin, " (admin)").await?),
        publish: Some(bind_one(config.publish, " (publish)").await?),
    })
}

/// Connections the kernel queues for a listener before the engine accepts them. Between a
/// restart's let-go and its new engine serving, nobody accepts (the new engine loads its data):
/// a client past the queue would wait for SYN retries (1, 3, 7 s). The kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` with [`LISTEN_BACKLOG`]; the error names it and `what` it is for.
async fn bind_one(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().with_context(|| format!("cannot listen on {addr}{what}"))
}

/// A listener taken over from the running engine, if it listens where this engine should; a
/// fresh one on `addr` otherwise (a restart given a new address).
async fn adopt_or_bind(
    inherited: std::net::TcpListener,
    addr: SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    if inherited.local_addr()? == addr {
        inherited.set_nonblocking(true)?;
        return Ok(tokio::net::TcpListener::from_std(inherited)?);
    }
    drop(inherited);
    bind_one(addr, what).await
}

/// Copies of the listening sockets, for the next restart's engine.
fn offered_sockets(listeners: &Listeners) -> anyhow::Result<[std::os::fd::OwnedFd; 3]> {
    use std::os::fd::AsFd;
    let copy = |listener: &tokio::net::TcpListener| listener.as_fd().try_clone_to_owned();
    let (Some(admin), Some(publish)) = (&listeners.admin, &listeners.publish) else {
        anyhow::bail!("the engine runs without its admin or publish listener")
    };
    Ok([copy(&listeners.websocket)?, copy(admin)?, copy(publish)?])
}

/// Tells systemd (`Type=notify`) the engine serves: `READY=1` on `$NOTIFY_SOCKET`, if set.
fn tell_systemd_ready() {
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(cause = %err, "cannot tell systemd the engine is ready");
    }
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

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on either signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
