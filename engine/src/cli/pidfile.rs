//! The pid file: how `stop` and `reload` find a running engine, and how `start` refuses to run
//! twice. A pid file whose process is gone is stale and replaced. Only the process named in the
//! pid file is ever signalled; nothing is found by process name.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where `start` writes its pid and `stop`/`reload`/`status` read it.
pub(super) const DEFAULT_PID_FILE: &str = "runtime/wasmpush.pid";

/// Why the pid file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another engine runs with this pid file.
    #[error("wasmpush is already running (pid {pid}, pid file {path})")]
    AlreadyRunning {
        /// Its pid.
        pid: i32,
        /// The pid file.
        path: PathBuf,
    },
    /// The file could not be read or written.
    #[error("pid file {path}: {source}")]
    Io {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold a pid.
    #[error("pid file {path} does not hold a process id")]
    Garbled {
        /// The pid file.
        path: PathBuf,
    },
}

/// This process's pid file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    /// Where it is.
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path`, unless a live process is named there already.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        refuse_if_running(path)?;
        let io = |source| PidFileError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(io)?;
        Ok(PidFile { path: path.to_owned() })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fails if `path` names a live process: an engine runs with this pid file already.
pub fn refuse_if_running(path: &Path) -> Result<(), PidFileError> {
    match running_pid(path)? {
        Some(pid) => Err(PidFileError::AlreadyRunning { pid: pid.as_raw(), path: path.to_owned() }),
        None => Ok(()),
    }
}

/// The pid in `path` if that process is alive; `None` if there is no pid file or it is stale.
pub fn running_pid(path: &Path) -> Result<Option<Pid>, PidFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PidFileError::Io { path: path.to_owned(), source }),
    };
    let pid: i32 = text.trim().parse().map_err(|_| PidFileError::Garbled { path: path.to_owned() })?;
    if pid <= 0 {
        return Err(PidFileError::Garbled { path: path.to_owned() });
    }
    let pid = Pid::from_raw(pid);
    Ok(is_alive(pid).then_some(pid))
}

/// Whether process `pid` exists and has not exited (a zombie, which its parent has not reaped
/// yet, counts as exited).
pub fn is_alive(pid: Pid) -> bool {
    if matches!(kill(pid, None), Err(Errno::ESRCH)) {
        return false;
    }
    // /proc/PID/stat is "PID (COMM) STATE …"; COMM may contain spaces and parentheses.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    state != Some('Z')
}

/// Sends `signal` to `pid`.
pub fn signal(pid: Pid, signal: Signal) -> nix::Result<()> {
    kill(pid, signal)
}
