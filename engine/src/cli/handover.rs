//! The restart handover between two engine processes, over a Unix socket beside the pid file
//! (`PIDFILE.handover`, mode 0600). The running engine listens on it for its whole life; a
//! restart's new engine connects and
//! 1. sends `TAKE-OVER`: the running engine answers with its three listening sockets (WebSocket,
//!    admin, publish) as file descriptors (`SCM_RIGHTS`), and keeps serving on them; the new
//!    engine then sends `SECRETS`, and the running engine answers `SECRETS {json}` with the tokens
//!    and the JWT secret it was given by flag or environment, so a restart from a shell without
//!    them never starts an engine that is more open than the one it replaces;
//! 2. compiles its plugins, then sends `RELEASE`: the running engine stops accepting, closes its
//!    publish API, admin endpoint and data store, and answers `RELEASED`, keeping its
//!    connections;
//! 3. opens the data store and starts serving, then sends `SERVING`: the old engine closes its
//!    connections over `drain_secs`. If the socket closes before `SERVING` (the new engine
//!    failed: its data store did not open, it was killed), the old engine opens its data store
//!    again and serves on, and waits for the next restart;
//! 4. from then on writes every batch it publishes as one line (a JSON array of `[bucket, key,
//!    value or null]`), which the old engine applies in memory: its clients keep getting data
//!    pushes until they reconnect. The old engine stops reading when its last connection is gone.
//!
//! Both processes hold the same sockets, so a client connecting meanwhile waits in the shared
//! accept queue until one of them accepts it: no connection is refused.
//!
//! Restarts also upgrade and roll back the binary, so the two engines may be different builds.
//! Version 2 of this protocol added `SERVING`, version 3 `SECRETS`; an engine says its version
//! after `LISTENERS` and `RELEASE` (`LISTENERS 3`, `RELEASE 3`), and speaks the lower of the two
//! versions: version 1 (no `SERVING`: the old engine drains as soon as it has let go) with an
//! engine that says none, no `SECRETS` below version 3.
//!
//! Every read on the socket has a time limit, except the following of forwarded batches (a quiet
//! stream is normal there): a peer that connects and says nothing cannot hold the handover.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::TrySendError;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use tokio::sync::{mpsc, oneshot};

use super::secrets::Secrets;
use crate::data::{Change, ChangeSet};
use crate::server::{HandOver, Released, Successor};

const TAKE_OVER: &str = "TAKE-OVER";
const LISTENERS: &str = "LISTENERS";
const RELEASE: &str = "RELEASE";
const RELEASED: &str = "RELEASED";
const SERVING: &str = "SERVING";
const SECRETS: &str = "SECRETS";

/// The version of the protocol this build speaks.
const VERSION: u32 = 3;

/// How long either engine waits for an answer the other gives at once (the sockets, the
/// secrets, `TAKE-OVER` after connecting).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the running engine waits for a new engine's `RELEASE` (it compiles its plugins
/// first) and then for its `SERVING` (it loads its data first); past it, the new engine is taken
/// for failed and this one serves on.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the new engine waits for the old one to let go (its in-flight publishes finish and
/// its data store closes).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Published batches the new engine holds for the old one before it drops them (the old engine
/// then misses those changes until its clients reconnect).
const FORWARD_CAPACITY: usize = 4096;

/// Forwarded batches the old engine holds before it waits to read more.
const FOLLOW_CAPACITY: usize = 1024;

/// The longest forwarded line the old engine reads; a longer one ends the following.
const MAX_FORWARDED_LINE: u64 = 256 << 20;

/// The handover socket of the engine whose pid file is `pid_file`.
pub(super) fn socket_path(pid_file: &Path) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".handover");
    PathBuf::from(path)
}

/// The running engine's side: listens on `path` (replacing a stale socket file) and hands
/// `listeners` and `secrets` to each new engine that asks; its `RELEASE` goes to the server
/// through `release`. Runs on a thread of its own until a new engine serves.
pub(super) fn serve(
    path: &Path,
    listeners: [OwnedFd; 3],
    secrets: Secrets,
    release: mpsc::Sender<HandOver>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let socket = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new().name("wasmpush-handover".to_owned()).spawn(move || {
        for stream in socket.incoming() {
            let answered = stream
                .map_err(anyhow::Error::from)
                .and_then(|stream| answer(stream, &listeners, &secrets, &release, ANSWER_TIMEOUT));
            match answered {
                Ok(()) => return,
                // A new engine that failed half-way: this one serves on, and waits for the next.
                Err(err) => tracing::warn!(cause = %format!("{err:#}"), "a restart's handover failed; serving on"),
            }
        }
    })?;
    Ok(())
}

/// Answers one new engine: its listeners, then its release; then, once it serves, follows its
/// data. An error once this engine let go means the new engine failed, and this one serves on.
fn answer(
    stream: UnixStream,
    listeners: &[OwnedFd; 3],
    secrets: &Secrets,
    release: &mpsc::Sender<HandOver>,
    answer_timeout: Duration,
) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(answer_timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    expect_line(&mut reader, TAKE_OVER)?;
    let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    let message = format!("{LISTENERS} {VERSION}\n");
    sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    tracing::info!("a new engine took the listening sockets; it will ask this one to let go");
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut line = read_line(&mut reader)?;
    if line == SECRETS {
        let json = serde_json::to_string(secrets).expect("strings serialize");
        writeln!(&stream, "{SECRETS} {json}")?;
        line = read_line(&mut reader)?;
    }
    let version = spoken_version(&line, RELEASE).with_context(|| format!("expected `{RELEASE}`, got `{line}`"))?;
    let (released, stopped) = oneshot::channel();
    let (successor, outcome) = oneshot::channel();
    release.blocking_send(HandOver { released, successor: outcome }).context("the engine is stopping")?;
    stopped.blocking_recv().context("the engine stopped before it let go")?;
    writeln!(&stream, "{RELEASED}")?;
    // An engine of version 1 never says it serves: it does once this one let go.
    if version >= 2
        && let Err(err) = expect_line(&mut reader, SERVING)
    {
        let reason = format!("the new engine failed before it served ({err:#})");
        let _ = successor.send(Successor::Failed(reason.clone()));
        bail!(reason);
    }
    stream.set_read_timeout(None)?;
    let (follow, followed) = mpsc::channel(FOLLOW_CAPACITY);
    if successor.send(Successor::Serving(followed)).is_err() {
        return Ok(());
    }
    if let Err(err) = follow_forwarded(&mut reader, &follow) {
        tracing::warn!(cause = %format!("{err:#}"), "stopped following the new engine's data");
    }
    Ok(())
}

/// Hands each batch the new engine forwards to the draining engine, until the new engine stops
/// forwarding or the draining engine is done.
fn follow_forwarded(reader: &mut impl BufRead, follow: &mpsc::Sender<Vec<Change>>) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        let read = Read::take(&mut *reader, MAX_FORWARDED_LINE).read_line(&mut line)?;
        if read == 0 {
            return Ok(());
        }
        ensure!(line.ends_with('\n'), "a forwarded batch is cut short or over {MAX_FORWARDED_LINE} bytes");
        let batch: Vec<(String, String, Option<String>)> =
            serde_json::from_str(&line).context("a forwarded batch is not a JSON list of changes")?;
        let changes = batch.into_iter().map(|(bucket, key, value)| Change { bucket, key, value }).collect();
        if follow.blocking_send(changes).is_err() {
            return Ok(());
        }
    }
}

/// The new engine's side of steps 3 and 4: a thread that says `SERVING` when told to, then turns
/// each published batch into a line for the old engine, fed without blocking the data writer
/// (which only queues the change set). It ends when the old engine closes the socket, or when
/// this engine fails before it serves (the socket then closes without `SERVING`).
fn forwarder(stream: UnixStream, version: u32) -> std::io::Result<Released> {
    let (batches, queued) = std::sync::mpsc::sync_channel::<Arc<ChangeSet>>(FORWARD_CAPACITY);
    let (serving, go) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new().name("wasmpush-forward".to_owned()).spawn(move || {
        if go.recv().is_err() || (version >= 2 && writeln!(&stream, "{SERVING}").is_err()) {
            return;
        }
        for changes in queued {
            let batch: Vec<_> =
                changes.changes().into_iter().map(|change| (change.bucket, change.key, change.value)).collect();
            let line = serde_json::to_string(&batch).expect("strings serialize") + "\n";
            if (&stream).write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    })?;
    // Once the old engine is gone, nothing more is queued; it is told once that it fell behind.
    let (gone, behind) = (AtomicBool::new(false), AtomicBool::new(false));
    let forward = move |changes: &Arc<ChangeSet>| {
        if gone.load(Ordering::Relaxed) {
            return;
        }
        match batches.try_send(changes.clone()) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(_)) => gone.store(true, Ordering::Relaxed),
            Err(TrySendError::Full(_)) => {
                if !behind.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the engine draining before this one falls behind; its clients miss changes");
                }
            }
        }
    };
    let serving = move || {
        let _ = serving.send(());
    };
    Ok(Released { forward: Box::new(forward), serving: Box::new(serving) })
}

/// The longest protocol line read (secrets included).
const MAX_LINE: u64 = 64 << 10;

/// Reads one protocol line, without its end.
fn read_line(reader: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    Read::take(&mut *reader, MAX_LINE).read_line(&mut line)?;
    ensure!(line.ends_with('\n'), "the other engine closed the handover or sent a line over {MAX_LINE} bytes");
    line.pop();
    Ok(line)
}

/// Reads one line and checks it is `expected`.
fn expect_line(reader: &mut impl BufRead, expected: &str) -> anyhow::Result<()> {
    let line = read_line(reader)?;
    ensure!(line == expected, "expected `{expected}`, got `{line}`");
    Ok(())
}

/// The version both engines speak, from a line that should be `word` or `word VERSION`.
fn spoken_version(line: &str, word: &str) -> Option<u32> {
    match line.strip_prefix(word)? {
        "" => Some(1),
        version => Some(version.strip_prefix(' ')?.parse::<u32>().ok()?.min(VERSION)),
    }
}

/// The new engine's side of a handover in progress.
pub(super) struct TakeOver {
    stream: UnixStream,
    /// The protocol version both engines speak.
    version: u32,
}

/// What a new engine takes over: the handover in progress, the listening sockets (WebSocket,
/// admin, publish), and the running engine's secrets (`None` from an engine of a version before
/// 3, which cannot send them).
pub(super) type Taken = (TakeOver, [std::net::TcpListener; 3], Option<Secrets>);

impl TakeOver {
    /// Connects to the running engine's handover socket at `path` and takes its listening
    /// sockets and its secrets.
    pub(super) fn connect(path: &Path) -> anyhow::Result<Taken> {
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
        let read = message.bytes;
        let [websocket, admin, publish]: [OwnedFd; 3] = match fds.try_into() {
            Ok(fds) => fds,
            Err(fds) => bail!("the running engine sent {} sockets, not 3", fds.len()),
        };
        let said = String::from_utf8_lossy(&text[..read]);
        let version = spoken_version(said.trim_end(), LISTENERS)
            .with_context(|| format!("expected `{LISTENERS}`, got `{}`", said.trim_end()))?;
        let listeners = [websocket, admin, publish].map(std::net::TcpListener::from);
        let secrets = match version {
            3.. => {
                writeln!(&stream, "{SECRETS}")?;
                let line = read_line(&mut BufReader::new(&stream))?;
                let json = line.strip_prefix(SECRETS).and_then(|rest| rest.strip_prefix(' '));
                let json = json.with_context(|| format!("expected `{SECRETS} {{…}}`, got another line"))?;
                Some(serde_json::from_str(json).context("the running engine's secrets are not readable")?)
            }
            _ => None,
        };
        Ok((TakeOver { stream, version }, listeners, secrets))
    }

    /// Asks the running engine to let go: stop accepting and close its data store. Returns once
    /// it has, with how to tell it this engine serves and where to forward the batches published
    /// from then on.
    pub(super) fn release(self) -> Result<Released, String> {
        let ask = || -> anyhow::Result<Released> {
            self.stream.set_read_timeout(Some(RELEASE_TIMEOUT))?;
            match self.version {
                1 => writeln!(&self.stream, "{RELEASE}")?,
                version => writeln!(&self.stream, "{RELEASE} {version}")?,
            }
            expect_line(&mut BufReader::new(&self.stream), RELEASED)?;
            Ok(forwarder(self.stream, self.version)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataView;

    #[test]
    fn forwarded_batches_are_followed_in_order_until_the_stream_ends() {
        let (follow, mut followed) = mpsc::channel(4);
        let lines = "[[\"prices\",\"AAPL\",\"{\\\"price\\\":1}\"]]\n[[\"prices\",\"AAPL\",null],[\"a\",\"b\",\"2\"]]\n";
        follow_forwarded(&mut lines.as_bytes(), &follow).unwrap();
        assert_eq!(followed.try_recv().unwrap(), [Change::new("prices", "AAPL", Some(r#"{"price":1}"#))]);
        assert_eq!(
            followed.try_recv().unwrap(),
            [Change::new("prices", "AAPL", None), Change::new("a", "b", Some("2"))]
        );
        assert!(followed.try_recv().is_err());
    }

    #[test]
    fn a_broken_forwarded_line_ends_the_following_with_its_reason() {
        let (follow, _followed) = mpsc::channel(4);
        let err = follow_forwarded(&mut "{\"not\":\"a list\"}\n".as_bytes(), &follow).unwrap_err();
        assert!(format!("{err:#}").contains("not a JSON list of changes"), "{err:#}");
        let cut = "[[\"prices\",\"AAPL\",null]]";
        let err = follow_forwarded(&mut cut.as_bytes(), &follow).unwrap_err();
        assert!(format!("{err:#}").contains("cut short"), "a line without its end is refused: {err:#}");
    }

    /// Has the engine serving on `path` let go for a new engine, and returns what each side got.
    async fn let_go(path: &Path, requests: &mut mpsc::Receiver<HandOver>) -> (Released, oneshot::Receiver<Successor>) {
        let (take_over, _listeners, _) = TakeOver::connect(path).unwrap();
        let releasing = tokio::task::spawn_blocking(move || take_over.release());
        let HandOver { released, successor } = requests.recv().await.unwrap();
        released.send(()).unwrap();
        (releasing.await.unwrap().unwrap(), successor)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_engine_failing_before_it_serves_leaves_the_old_one_to_answer_the_next() {
        let (_dir, path, sockets) = offered();
        let (release, mut requests) = mpsc::channel(1);
        serve(&path, sockets, Secrets::default(), release).unwrap();

        let (failed, successor) = let_go(&path, &mut requests).await;
        drop(failed);
        match successor.await {
            Ok(Successor::Failed(reason)) => assert!(reason.contains("failed before it served"), "{reason}"),
            _ => panic!("a new engine gone before SERVING is a failed successor"),
        }

        let (Released { forward, serving }, successor) = let_go(&path, &mut requests).await;
        serving();
        let Ok(Successor::Serving(mut followed)) = successor.await else { panic!("the second one serves") };
        let published = DataView::default().follow(&[Change::new("prices", "AAPL", Some("1"))]).unwrap();
        forward(&published);
        assert_eq!(followed.recv().await.unwrap(), [Change::new("prices", "AAPL", Some("1"))]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_engine_gets_the_running_engines_secrets_and_the_handover_goes_on() {
        let (_dir, path, sockets) = offered();
        let (release, mut requests) = mpsc::channel(1);
        let secrets: Secrets =
            serde_json::from_str(r#"{"publish_token":"p-0123456789abcdef","admin_token":null,"jwt_secret":"j"}"#)
                .unwrap();
        serve(&path, sockets, secrets.clone(), release).unwrap();
        let (take_over, _listeners, taken) = TakeOver::connect(&path).unwrap();
        assert_eq!(taken, Some(secrets));
        let releasing = tokio::task::spawn_blocking(move || take_over.release());
        let HandOver { released, successor: _ } = requests.recv().await.unwrap();
        released.send(()).unwrap();
        releasing.await.unwrap().expect("RELEASE follows SECRETS");
    }

    #[test]
    fn a_peer_that_connects_and_says_nothing_does_not_hold_the_handover() {
        let (_dir, _path, sockets) = offered();
        let (release, _requests) = mpsc::channel(1);
        let (stream, _silent) = UnixStream::pair().unwrap();
        let timeout = Duration::from_millis(50);
        let err = answer(stream, &sockets, &Secrets::default(), &release, timeout).unwrap_err();
        let cause = err.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        assert!(matches!(cause, Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)), "{err:#}");
    }

    #[test]
    fn the_version_spoken_is_the_lower_of_the_two() {
        assert_eq!(spoken_version("RELEASE", RELEASE), Some(1), "a version 1 engine says none");
        assert_eq!(spoken_version("RELEASE 2", RELEASE), Some(2));
        assert_eq!(spoken_version("RELEASE 3", RELEASE), Some(3));
        assert_eq!(spoken_version("RELEASE 7", RELEASE), Some(VERSION), "a newer engine is spoken to in this one's");
        for wrong in ["RELEASED", "RELEASE x", "RELEASE  2", "RELEASE -1", "TAKE-OVER"] {
            assert_eq!(spoken_version(wrong, RELEASE), None, "{wrong}");
        }
    }

    /// A handover socket at a fresh path, with three listening sockets to offer.
    fn offered() -> (tempfile::TempDir, PathBuf, [OwnedFd; 3]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wasmpush.pid.handover");
        let sockets = [(); 3].map(|()| OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap()));
        (dir, path, sockets)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_engine_of_version_1_is_followed_as_soon_as_the_old_one_let_go() {
        let (_dir, path, sockets) = offered();
        let (release, mut requests) = mpsc::channel(1);
        serve(&path, sockets, Secrets::default(), release).unwrap();
        let new_engine = tokio::task::spawn_blocking(move || {
            let stream = UnixStream::connect(&path).unwrap();
            writeln!(&stream, "{TAKE_OVER}").unwrap();
            let mut space = nix::cmsg_space!([RawFd; 3]);
            let mut text = [0; 64];
            recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut [IoSliceMut::new(&mut text)],
                Some(&mut space),
                MsgFlags::empty(),
            )
            .unwrap();
            writeln!(&stream, "{RELEASE}").unwrap();
            expect_line(&mut BufReader::new(&stream), RELEASED).unwrap();
            writeln!(&stream, "[[\"prices\",\"AAPL\",\"1\"]]").unwrap();
            stream
        });
        let HandOver { released, successor } = requests.recv().await.unwrap();
        released.send(()).unwrap();
        let Ok(Successor::Serving(mut followed)) = successor.await else { panic!("version 1 serves once let go") };
        assert_eq!(followed.recv().await.unwrap(), [Change::new("prices", "AAPL", Some("1"))]);
        drop(new_engine.await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_old_engine_of_version_1_is_released_and_forwarded_to_without_serving() {
        let (_dir, path, sockets) = offered();
        let socket = UnixListener::bind(&path).unwrap();
        let old_engine = std::thread::spawn(move || {
            let (stream, _) = socket.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            expect_line(&mut reader, TAKE_OVER).unwrap();
            let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
            let listeners = [IoSlice::new(b"LISTENERS\n")];
            sendmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &listeners,
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            expect_line(&mut reader, RELEASE).unwrap();
            writeln!(&stream, "{RELEASED}").unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line
        });
        let (take_over, _listeners, secrets) = TakeOver::connect(&path).unwrap();
        assert!(secrets.is_none(), "an engine of version 1 sends no secrets");
        let Released { forward, serving } =
            tokio::task::spawn_blocking(move || take_over.release()).await.unwrap().unwrap();
        serving();
        forward(&DataView::default().follow(&[Change::new("prices", "AAPL", Some("1"))]).unwrap());
        assert_eq!(old_engine.join().unwrap(), "[[\"prices\",\"AAPL\",\"1\"]]\n", "a batch, not SERVING");
    }

    #[test]
    fn a_draining_engine_that_is_done_ends_the_following_quietly() {
        let (follow, followed) = mpsc::channel(4);
        drop(followed);
        assert!(follow_forwarded(&mut "[[\"a\",\"b\",null]]\n".as_bytes(), &follow).is_ok());
    }
}
