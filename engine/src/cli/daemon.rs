//! `start --daemon`: runs the engine as a detached child (its own session, no terminal,
//! output to the log file) and returns only once it is ready — its admin endpoint's `/healthz`
//! answers 200, after the first plugin scan — or fails with the reason the child logged. The
//! child is this same program running `start` in the foreground.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::http::request;
use super::pidfile::running;

/// Where a daemon logs.
pub(super) const DEFAULT_LOG_FILE: &str = "runtime/wasmpush.log";

/// In the daemon's child: leaves the caller's session and process group, so the child has no
/// controlling terminal and no job-control signal of the shell that ran `start --daemon` reaches
/// it. A failure is logged and the engine runs on (it is already detached from the terminal's
/// I/O).
pub fn detach() {
    if let Err(err) = nix::unistd::setsid() {
        tracing::warn!(cause = %err, "cannot start a new session; running in the caller's");
    }
}

/// How [`spawn`] waits for the engine it started.
pub struct Wait {
    /// How long the engine has to become ready.
    pub timeout: Duration,
    /// Whether an engine not ready in time is killed (a restart's new engine: while it lives, the
    /// running engine it replaces may be waiting for it).
    pub kill_if_late: bool,
}

/// Starts `args` (this program's `start` arguments without `--daemon`, with `--detached`) in the
/// background with `env` added to its environment (secrets, which a command line would show to
/// `ps`), and waits until the engine is ready (`/healthz` on `admin`). Returns the child's pid.
pub fn spawn(
    args: &[std::ffi::OsString],
    env: &[(&str, String)],
    log_file: &Path,
    pid_file: &Path,
    admin: SocketAddr,
    wait: Wait,
) -> anyhow::Result<u32> {
    if let Some(dir) = log_file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("cannot open log file {}", log_file.display()))?;
    let log_len = log.metadata().map_or(0, |m| m.len());
    let program = std::env::current_exe().context("cannot find this program")?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the engine process")?;
    let pid = child.id();
    let deadline = Instant::now() + wait.timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the engine exited during start ({status}):\n{}", log_since(log_file, log_len));
        }
        let pid_written = running(pid_file).ok().flatten().is_some_and(|engine| engine.pid.as_raw() as u32 == pid);
        // Ready, not merely listening: the first plugin scan has ended and connections are served.
        if pid_written && request(reachable(admin), "GET", "/healthz", None, "").is_ok_and(|(status, _)| status == 200)
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            let late = format!("the engine (pid {pid}) was not ready (GET {admin}/healthz) within {:?}", wait.timeout);
            if wait.kill_if_late {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{late}; it was killed, and the running engine serves on; see {}", log_file.display());
            }
            bail!("{late}; see {}", log_file.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address to probe for a listener bound to `addr` (an unspecified address means loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// The lines the log file gained after `offset` bytes (the child's own account of its failure).
fn log_since(log_file: &Path, offset: u64) -> String {
    let Ok(file) = std::fs::File::open(log_file) else { return String::new() };
    let mut reader = BufReader::new(file);
    let _ = std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(offset));
    reader.lines().map_while(Result::ok).collect::<Vec<_>>().join("\n")
}
