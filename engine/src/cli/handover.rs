//! The restart handover between two engine processes, over a Unix socket beside the pid file
//! (`PIDFILE.handover`, mode 0600). The running engine listens on it for its whole life; a
//! restart's new engine connects and
//! 1. sends `TAKE-OVER`: the running engine answers with its three listening sockets (WebSocket,
//!    admin, publish) as file descriptors (`SCM_RIGHTS`), and keeps serving on them;
//! 2. compiles its plugins, then sends `RELEASE`: the running engine stops accepting, closes its
//!    publish API, admin endpoint and data store, answers `RELEASED`, and drains its connections.
//!
//! Both processes hold the same sockets, so a client connecting meanwhile waits in the shared
//! accept queue until the new engine accepts it: no connection is refused.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use tokio::sync::{mpsc, oneshot};

const TAKE_OVER: &str = "TAKE-OVER";
const LISTENERS: &str = "LISTENERS";
const RELEASE: &str = "RELEASE";
const RELEASED: &str = "RELEASED";

/// How long the new engine waits for the running engine's sockets.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the new engine waits for the old one to let go (its in-flight publishes finish and
/// its data store closes).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The handover socket of the engine whose pid file is `pid_file`.
pub(super) fn socket_path(pid_file: &Path) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".handover");
    PathBuf::from(path)
}

/// The running engine's side: listens on `path` (replacing a stale socket file) and hands
/// `listeners` to the first new engine that asks; its `RELEASE` goes to the server through
/// `release`, and is answered once the server has let go. Runs on a thread of its own.
pub(super) fn serve(
    path: &Path,
    listeners: [OwnedFd; 3],
    release: mpsc::Sender<oneshot::Sender<()>>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let socket = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("wasmpush-handover".to_owned()).spawn(move || {
        for stream in socket.incoming() {
            match stream.map_err(anyhow::Error::from).and_then(|stream| answer(stream, &listeners, &release)) {
                Ok(()) => return,
                // A new engine that died half-way: this one serves on, and waits for the next.
                Err(err) => tracing::warn!(cause = %format!("{err:#}"), "a restart's handover failed; serving on"),
            }
        }
    })?;
    Ok(())
}

/// Answers one new engine: its listeners, then its release.
fn answer(
    stream: UnixStream,
    listeners: &[OwnedFd; 3],
    release: &mpsc::Sender<oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    expect_line(&mut reader, TAKE_OVER)?;
    let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    let message = format!("{LISTENERS}\n");
    sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    tracing::info!("a new engine took the listening sockets; it will ask this one to let go");
    expect_line(&mut reader, RELEASE)?;
    let (done, released) = oneshot::channel();
    release.blocking_send(done).context("the engine is stopping")?;
    released.blocking_recv().context("the engine stopped before it let go")?;
    writeln!(&stream, "{RELEASED}")?;
    Ok(())
}

/// Reads one line and checks it is `expected`.
fn expect_line(reader: &mut impl BufRead, expected: &str) -> anyhow::Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line.trim_end() == expected, "expected `{expected}`, got `{}`", line.trim_end());
    Ok(())
}

/// The new engine's side of a handover in progress.
pub(super) struct TakeOver {
    stream: UnixStream,
}

impl TakeOver {
    /// Connects to the running engine's handover socket at `path` and takes its listening
    /// sockets: WebSocket, admin, publish.
    pub(super) fn connect(path: &Path) -> anyhow::Result<(TakeOver, [std::net::TcpListener; 3])> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("cannot reach the running engine's handover socket {}", path.display()))?;
        // A running engine answers at once; one that does not is not waited for forever.
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        writeln!(&stream, "{TAKE_OVER}")?;
        let mut text = [0; 64];
        let mut iov = [IoSliceMut::new(&mut text)];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let message = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = control {
                fds.extend(received.into_iter().map(owned));
            }
        }
        let [websocket, admin, publish]: [OwnedFd; 3] = match fds.try_into() {
            Ok(fds) => fds,
            Err(fds) => bail!("the running engine sent {} sockets, not 3", fds.len()),
        };
        let listeners = [websocket, admin, publish].map(std::net::TcpListener::from);
        Ok((TakeOver { stream }, listeners))
    }

    /// Asks the running engine to let go: stop accepting and close its data store. Returns once
    /// it has.
    pub(super) fn release(self) -> Result<(), String> {
        let ask = || -> anyhow::Result<()> {
            self.stream.set_read_timeout(Some(RELEASE_TIMEOUT))?;
            writeln!(&self.stream, "{RELEASE}")?;
            expect_line(&mut BufReader::new(&self.stream), RELEASED)
        };
        ask().map_err(|err| format!("{err:#}"))
    }
}

/// Takes ownership of a descriptor received with `SCM_RIGHTS`.
#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process for this message; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
