//! The pid file: how `stop`, `reload` and `status` find the running engine, and how `start`
//! refuses to run twice — without ever signalling a stranger.
//!
//! The engine holds an exclusive `flock` on its pid file for its whole life, and the file says
//! `PID START` (the process's start time in clock ticks since boot, field 22 of
//! `/proc/PID/stat`). A file nobody holds the lock on is stale, whatever pid it names: the engine
//! that wrote it is gone, and its pid may belong to another process now. A command signals only a
//! pid whose file is locked and whose process started when the file says. The file is opened
//! without following symlinks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
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
        /// The running engine's pid.
        pid: i32,
        /// The pid file it holds.
        path: PathBuf,
    },
    /// The file could not be opened, locked, read or written (a symlink is refused).
    #[error("pid file {path}: {source}")]
    Io {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is locked but does not say `PID START` of a live process that started then.
    #[error("pid file {path} is held but names no live engine ({reason}); not signalling anything")]
    Mismatch {
        /// The pid file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
}

/// This process's pid file, locked for as long as it lives; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    /// Where it is.
    path: PathBuf,
    /// The open file and its exclusive lock, released when dropped.
    lock: Flock<File>,
}

/// Opens `path` for reading and writing (creating it with `create`), never through a symlink.
fn open(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PidFileError + '_ {
    move |source| PidFileError::Io { path: path.to_owned(), source }
}

impl PidFile {
    /// Locks `path` and writes this process's pid and start time to it, unless another engine
    /// holds it. A stale file (nobody holds it) is reported and replaced.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(path))?;
        }
        // The file may be removed (an engine exiting) or replaced (a restart's new engine) between
        // opening and locking it: a lock on a file no longer at `path` guards nothing, so retry.
        let mut attempts = 0;
        let mut lock = loop {
            let file = open(path, true).map_err(io(path))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    let pid = contents(&mut file).and_then(|text| parse(&text)).map_or(0, |(pid, _)| pid.as_raw());
                    return Err(PidFileError::AlreadyRunning { pid, path: path.to_owned() });
                }
                Err((_, errno)) => return Err(io(path)(errno.into())),
            };
            attempts += 1;
            match is_at(&lock, path) {
                true => break lock,
                false if attempts < 10 => continue,
                false => return Err(io(path)(std::io::Error::other("the file keeps being replaced while locked"))),
            }
        };
        if let Some(stale) = contents(&mut lock).filter(|text| !text.trim().is_empty()) {
            tracing::warn!(path = %path.display(), stale = stale.trim(), "replacing a stale pid file");
        }
        write_me(&mut lock, path)?;
        Ok(PidFile { path: path.to_owned(), lock })
    }

    /// Takes `path` over from the engine holding it (a restart's new engine, while the old one
    /// drains): writes a new file beside it, locks it and renames it into place in one step, so
    /// commands find this engine from then on. The old engine keeps its lock on the file it
    /// replaced, and leaves this one in place when it exits.
    pub fn replace(path: &Path) -> Result<PidFile, PidFileError> {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.new", Pid::this()));
        let fresh = PathBuf::from(name);
        let _ = std::fs::remove_file(&fresh);
        let file = open(&fresh, true).map_err(io(&fresh))?;
        let mut lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| io(&fresh)(errno.into()))?;
        write_me(&mut lock, &fresh)?;
        std::fs::rename(&fresh, path).map_err(io(path))?;
        Ok(PidFile { path: path.to_owned(), lock })
    }
}

/// Writes this process's `PID START` to the locked pid file at `path`.
fn write_me(lock: &mut Flock<File>, path: &Path) -> Result<(), PidFileError> {
    let me = Pid::this();
    let started =
        start_time(me).ok_or_else(|| io(path)(std::io::Error::other("cannot read this process's start time")))?;
    lock.set_len(0).map_err(io(path))?;
    std::io::Seek::rewind(&mut **lock).map_err(io(path))?;
    writeln!(lock, "{me} {started}").and_then(|()| lock.sync_all()).map_err(io(path))
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, and only if it is still this engine's file: a restart's new
        // engine may have renamed its own into place.
        if is_at(&self.lock, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `file` is the file at `path` now (not one removed or replaced since it was opened).
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata().ok().map(|meta| (meta.dev(), meta.ino()));
    let there = std::fs::symlink_metadata(path).ok().map(|meta| (meta.dev(), meta.ino()));
    ours.is_some() && ours == there
}

/// Removes the pid file at `path` if it is stale (nobody holds it), holding its lock meanwhile:
/// never a file another engine has written and locked since.
pub fn remove_stale(path: &Path) {
    let Ok(file) = open(path, false) else { return };
    if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        && is_at(&lock, path)
    {
        let _ = std::fs::remove_file(path);
    }
}

/// The whole text of `file`, from its start.
fn contents(file: &mut File) -> Option<String> {
    let mut text = String::new();
    std::io::Seek::rewind(file).ok()?;
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

/// `PID START` of a pid file.
fn parse(text: &str) -> Option<(Pid, u64)> {
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok().filter(|pid| *pid > 0)?;
    let start = fields.next()?.parse().ok()?;
    Some((Pid::from_raw(pid), start))
}

/// An engine as its pid file names it: locked, and the process started when the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Its pid.
    pub pid: Pid,
    /// Its start time, in clock ticks since boot.
    start: u64,
}

impl Running {
    /// Whether the process is still the engine the pid file named (alive, same start time): what
    /// is checked again before every signal, as a pid is reused once its process is gone.
    pub fn is_alive(&self) -> bool {
        !matches!(kill(self.pid, None), Err(Errno::ESRCH))
            && stat(self.pid).is_some_and(|(state, start)| state != "Z" && start == self.start)
    }

    /// Sends `signal` to the engine, if it is still the one the pid file named.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        if !self.is_alive() {
            return Err(Errno::ESRCH);
        }
        kill(self.pid, signal)
    }
}

/// The engine `path` names, if one holds it; `None` without a pid file, or with a stale one.
pub fn running(path: &Path) -> Result<Option<Running>, PidFileError> {
    let file = match open(path, false) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PidFileError::Io { path: path.to_owned(), source }),
    };
    let mut file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Nobody holds it: stale, whatever it names.
        Ok(_) => return Ok(None),
        Err((file, Errno::EWOULDBLOCK)) => file,
        Err((_, errno)) => return Err(io(path)(errno.into())),
    };
    let mismatch = |reason: String| PidFileError::Mismatch { path: path.to_owned(), reason };
    let text = contents(&mut file).unwrap_or_default();
    // An engine writes its pid just after it takes the lock: an empty file is one starting.
    let (pid, start) = parse(&text).ok_or_else(|| mismatch(format!("it says `{}`, not `PID START`", text.trim())))?;
    let running = Running { pid, start };
    if !running.is_alive() {
        return Err(mismatch(format!("pid {pid} is not the process that started at {start}")));
    }
    Ok(Some(running))
}

/// Fails if an engine holds `path` already.
pub fn refuse_if_running(path: &Path) -> Result<(), PidFileError> {
    match running(path)? {
        Some(running) => Err(PidFileError::AlreadyRunning { pid: running.pid.as_raw(), path: path.to_owned() }),
        None => Ok(()),
    }
}

/// The start time of process `pid`, in clock ticks since boot.
fn start_time(pid: Pid) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// The state and the start time of process `pid`, from one read of `/proc/PID/stat`: the fields
/// after `(COMM)` (which may hold spaces and parentheses), the state first and the start time (the
/// file's field 22) at index 19.
fn stat(pid: Pid) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some(((*fields.first()?).to_owned(), fields.get(19)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_is_locked_for_life_and_names_this_process() {
        let dir = std::env::temp_dir().join(format!("wasmpush-pidfile-{}", std::process::id()));
        let path = dir.join("wasmpush.pid");
        let held = PidFile::create(&path).unwrap();
        let running = running(&path).unwrap().expect("held by this process");
        assert_eq!(running.pid, Pid::this());
        assert!(running.is_alive());
        assert!(matches!(PidFile::create(&path), Err(PidFileError::AlreadyRunning { .. })));
        drop(held);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_replacing_engine_takes_the_path_and_the_old_one_leaves_it_in_place() {
        let dir = std::env::temp_dir().join(format!("wasmpush-pidfile-replace-{}", std::process::id()));
        let path = dir.join("wasmpush.pid");
        let old = PidFile::create(&path).unwrap();
        let new = PidFile::replace(&path).unwrap();
        assert!(running(&path).unwrap().is_some(), "the new file is held");
        drop(old);
        assert!(path.exists(), "the old engine does not remove the new engine's file");
        assert!(running(&path).unwrap().is_some());
        drop(new);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unlocked_file_is_stale_even_when_it_names_a_live_process_exactly() {
        let dir = std::env::temp_dir().join(format!("wasmpush-pidfile-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wasmpush.pid");
        let me = Pid::this();
        std::fs::write(&path, format!("{me} {}\n", start_time(me).unwrap())).unwrap();
        assert_eq!(running(&path).unwrap(), None);
        let replaced = PidFile::create(&path).unwrap();
        assert_eq!(running(&path).unwrap().map(|r| r.pid), Some(me));
        drop(replaced);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_stale_file_still_at_its_path_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wasmpush.pid");
        let held = PidFile::create(&path).unwrap();
        remove_stale(&path);
        assert!(path.exists(), "a file an engine holds is not stale");
        let file = open(&path, false).unwrap();
        drop(held);
        assert!(!is_at(&file, &path), "a lock on a removed file is not a lock on the path");
        std::fs::write(&path, "1 1\n").unwrap();
        remove_stale(&path);
        assert!(!path.exists(), "an unlocked file is removed");
    }

    #[test]
    fn a_symlinked_pid_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("wasmpush-pidfile-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("elsewhere");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.join("wasmpush.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(PidFile::create(&link), Err(PidFileError::Io { .. })));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious", "the link's target is untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_files_are_read_as_pid_and_start_time() {
        assert_eq!(parse("42 1234\n"), Some((Pid::from_raw(42), 1234)));
        assert_eq!(parse("42\n"), None, "a pid without its start time names no process for sure");
        assert_eq!(parse("-1 5"), None);
        assert!(start_time(Pid::this()).is_some());
    }
}
