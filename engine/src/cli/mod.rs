//! The command line: turns arguments into one validated [`Config`] and runs the command. The
//! only module that knows clap, and with its sub-modules the only user of `anyhow` in the
//! library.
//!
//! ## Layout
//! - this file: the commands, logging set-up and error printing.
//! - `start`: `start` and `restart` — flags, config, the engine run with its signals.
//! - `control`: `stop`, `reload` and `status`, acting on a running engine.
//! - `data`: `data put|get|del|ls` through the publish API; `http`: the client both use.
//! - `deploy`: `deploy NAME FILE`: to every node of a cluster (`--nats`), or to one engine.
//! - `rollouts`: one engine's builds through its admin endpoint: deploy at once, as a canary or
//!   a shadow run; `versions`, `rollback`, `promote`, `abort`.
//! - `daemon`: `start --daemon`: a detached child, and the wait until it listens.
//! - `pidfile`: how the commands find the engine, and how `start` refuses to run twice.
//! - `error_chain`: an error and its causes on one line.
//! - `launch`: how the engine was started, kept beside its pid file for `restart` and `status`.
//! - `handover`: how a restart's new engine takes the sockets, the secrets and the data store over.
//! - `secrets`: the tokens, the JWT secret and the NATS secrets a start is given by flag or environment.

mod control;
mod daemon;
mod data;
mod deploy;
mod error_chain;
mod handover;
mod http;
mod launch;
mod pidfile;
mod rollouts;
mod secrets;
mod start;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use self::error_chain::describe;
use self::launch::Launch;
use self::pidfile::DEFAULT_PID_FILE;
use self::rollouts::AdminArgs;
use self::start::StartArgs;
use crate::config::Config;
use crate::events;

/// wasmpush: a WebSocket push engine whose business logic is a hot-swappable WebAssembly plugin.
#[derive(Debug, Parser)]
// A flag given twice counts once, the last time: how `restart` lays its own flags over the ones
// the engine was started with.
#[command(version, about, args_override_self = true)]
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
    /// Starts a new engine in the background as the running one was started, which takes its
    /// sockets and secrets over (no client is refused), then lets the old one drain.
    Restart(StartArgs),
    /// Shows whether the engine runs and what it serves; exit code 0 when running, 3 when not.
    Status {
        /// Which engine.
        #[command(flatten)]
        engine: AdminArgs,
        /// Print the engine's /status (or /cluster) JSON as it is.
        #[arg(long)]
        json: bool,
        /// Every node of the engine's cluster: name, state (live or gone), address, connections,
        /// pushes per second, applied revision and lag, plugin builds, reload errors, NATS link.
        #[arg(long)]
        cluster: bool,
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
    /// Reads and writes the engine's data through its publish API (put, get, del, ls).
    Data(data::DataArgs),
    /// Ships a plugin build: to the running engine (at once, `--canary PCT` or `--shadow`), or
    /// with `--nats` to every node of a cluster (docs/rollouts.md, docs/cluster.md).
    Deploy(deploy::DeployArgs),
    /// Lists the builds the engine keeps of plugin NAME, newest first, marking the one serving.
    Versions {
        /// The plugin.
        name: String,
        /// Which engine.
        #[command(flatten)]
        engine: AdminArgs,
    },
    /// Switches plugin NAME to a kept build at once: VERSION (a hash or its first digits), or
    /// the newest kept one that is not serving.
    Rollback {
        /// The plugin.
        name: String,
        /// The build, as `versions` lists it.
        version: Option<String>,
        /// Which engine.
        #[command(flatten)]
        engine: AdminArgs,
    },
    /// Promotes plugin NAME's canary to every connection now.
    Promote {
        /// The plugin.
        name: String,
        /// Which engine.
        #[command(flatten)]
        engine: AdminArgs,
    },
    /// Ends plugin NAME's canary or shadow run now: every connection on the serving build.
    Abort {
        /// The plugin.
        name: String,
        /// Which engine.
        #[command(flatten)]
        engine: AdminArgs,
    },
    /// Makes the running engine rescan its plugins directory (sends SIGHUP).
    Reload {
        /// Pid file of the running engine.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
    },
}

/// Log lines waiting for standard error at most; past them new lines are dropped (and counted)
/// rather than making whoever logs wait for a slow or stuck reader.
const LOG_LINES_WAITING: usize = 8192;

/// The whole `wasmpush` command: sets up logging (`RUST_LOG`, default `info`, the NATS client's
/// own lines from `warn`; the console's recent events beside it, see `events`), parses the
/// arguments, runs the command and prints the error chain if it fails.
///
/// Log lines go to standard error through a writer thread: a shard that logs never blocks on a
/// slow or full stderr (a pipe nobody reads, a stalled terminal); when lines pile up past
/// `LOG_LINES_WAITING` they are dropped, and how many is said at exit.
pub fn main() -> ExitCode {
    let (writer, flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_WAITING)
        .thread_name("wasmpush-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let standard_error = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    tracing_subscriber::registry().with(standard_error).with(events::layer()).init();
    let code = match Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            drop(flush_on_exit);
            eprintln!("wasmpush: {}", describe(&err));
            return ExitCode::FAILURE;
        }
    };
    drop(flush_on_exit);
    if dropped.dropped_lines() > 0 {
        eprintln!("wasmpush: {} log lines were dropped: standard error did not keep up", dropped.dropped_lines());
    }
    code
}

impl Cli {
    /// Runs the command; the exit code on success.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Start(args) if args.daemon => start::start_daemon(&args),
            Command::Start(args) => {
                if args.detached {
                    daemon::detach();
                }
                if !args.takeover {
                    pidfile::refuse_if_running(&args.pid_file)?;
                }
                start::start(args)
            }
            Command::Restart(given) => {
                // As it was started: its flags, in its directory, with the flags given here on top.
                let mut args = match launch::load(&given.pid_file) {
                    Some(launch) => {
                        std::env::set_current_dir(&launch.dir)?;
                        relaunch(&launch, Some(&given))?
                    }
                    None => given,
                };
                // The new engine takes the running one's sockets over, so no client is refused;
                // an engine without a handover socket (an older build) is stopped first.
                if pidfile::running(&args.pid_file)?.is_some() && handover::socket_path(&args.pid_file).exists() {
                    args.takeover = true;
                    return start::start_daemon(&args);
                }
                control::stop(&args.pid_file, Duration::from_secs(args.stop_timeout))?;
                start::start_daemon(&args)
            }
            Command::Status { engine, json, cluster } => {
                let admin = admin_of(&engine)?;
                let view = control::StatusView { json, cluster };
                control::status(&engine.pid_file, admin.addr, admin.token.as_deref(), view)
            }
            Command::Versions { name, engine } => rollouts::versions(&admin_of(&engine)?, &name),
            Command::Rollback { name, version, engine } => {
                rollouts::rollback(&admin_of(&engine)?, &name, version.as_deref())
            }
            Command::Promote { name, engine } => rollouts::end(&admin_of(&engine)?, &name, "promote"),
            Command::Abort { name, engine } => rollouts::end(&admin_of(&engine)?, &name, "abort"),
            Command::Stop { pid_file, timeout } => control::stop(&pid_file, Duration::from_secs(timeout)),
            Command::Reload { pid_file } => control::reload(&pid_file),
            Command::Data(args) => data::run(args),
            Command::Deploy(args) => deploy::run(args, admin_of),
        }
    }
}

/// The admin endpoint of the engine `engine` names (see [`rollouts::admin_of`]); the settings
/// of a running engine are the ones it was started with.
fn admin_of(engine: &AdminArgs) -> anyhow::Result<rollouts::Admin> {
    rollouts::admin_of(engine, || match launch::load(&engine.pid_file) {
        Some(launch) => {
            std::env::set_current_dir(&launch.dir)?;
            Ok(relaunch(&launch, None)?.config()?)
        }
        None => Ok(Config::default()),
    })
}

/// The `start` flags `launch` was started with, with the setting flags of `given` on top (and its
/// pid file, log file and stop timeout): what `restart` starts again, what `status` asks.
fn relaunch(launch: &Launch, given: Option<&StartArgs>) -> anyhow::Result<StartArgs> {
    let mut argv: Vec<OsString> = vec!["wasmpush".into(), "start".into()];
    argv.extend(launch.args.iter().map(Into::into));
    if let Some(given) = given {
        argv.extend(given.setting_flags());
        argv.extend([
            "--pid-file".into(),
            given.pid_file.clone().into(),
            "--log-file".into(),
            given.log_file.clone().into(),
        ]);
        argv.extend(["--stop-timeout".into(), given.stop_timeout.to_string().into()]);
        argv.extend(["--start-timeout".into(), given.start_timeout.to_string().into()]);
    }
    match Cli::try_parse_from(argv)?.command {
        Command::Start(args) => Ok(args),
        _ => unreachable!("the arguments start with `start`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_systemd_unit_runs_start_in_the_foreground_with_valid_flags() {
        let unit = include_str!("../../../deploy/wasmpush.service");
        let exec_start = unit.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("ExecStart");
        let cli = Cli::try_parse_from(exec_start.split_whitespace()).unwrap_or_else(|err| panic!("{err}"));
        let Command::Start(args) = cli.command else { panic!("ExecStart must run `start`: {exec_start}") };
        assert!(!args.daemon, "under systemd the engine runs in the foreground");
        assert!(args.config.is_some(), "the unit names its config file");
        assert!(unit.contains("\nType=notify\n"), "systemd waits for the engine's READY=1");
    }

    #[test]
    fn the_nats_secrets_given_to_a_start_reach_its_cluster_settings_and_its_daemon() {
        let flags = ["wasmpush", "start", "--nats", "nats://10.0.0.5:4222", "--nats-token", "t-0123456789abcdef"];
        let Command::Start(args) = Cli::try_parse_from(flags).unwrap().command else { panic!("a start") };
        let config = args.config().unwrap();
        assert_eq!(config.cluster.token.as_deref(), Some("t-0123456789abcdef"));
        let env = args.secrets().into_env();
        assert_eq!(env, [("WASMPUSH_NATS_TOKEN", "t-0123456789abcdef".to_owned())], "a daemon's child gets it");
        assert!(!args.setting_flags().iter().any(|flag| flag.to_string_lossy().contains("t-0123")), "never a flag");
    }
}
