//! The accept loop: admits each connection (or refuses it at once over a limit) and hands it to
//! its task, until the engine stops, is handed over, or loses a shard thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ServerError;
use super::lifecycle::HandOver;
use crate::accept::{self, Shared};
use crate::health::Health;
use crate::plain_http;

/// How often the accept loop checks that every shard thread is alive.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// Why the accept loop stopped.
pub(super) enum Stopped {
    /// The engine is stopping.
    Shutdown,
    /// A restart's new engine asks this one to let go.
    HandOver(HandOver),
}

/// What the accept loop serves with.
pub(super) struct Accepting<'a> {
    pub(super) listener: &'a TcpListener,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) tasks: &'a TaskTracker,
    pub(super) cancel: &'a CancellationToken,
    pub(super) health: &'a Health,
}

impl Accepting<'_> {
    /// Accepts connections until the engine stops or is handed over; an error if a shard thread
    /// died.
    pub(super) async fn until_stopped(
        &self,
        hand_over: &mut Option<mpsc::Receiver<HandOver>>,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Stopped, ServerError> {
        let mut watchdog = tokio::time::interval(WATCHDOG_PERIOD);
        loop {
            tokio::select! {
                Some(request) = async { match hand_over { Some(requests) => requests.recv().await, None => None } } => {
                    return Ok(Stopped::HandOver(request));
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.shared.admission.admit(peer.ip()) {
                        Ok(admitted) => {
                            self.tasks.spawn(accept::accept(stream, peer.ip(), admitted, self.shared.clone(), self.cancel.clone()));
                        }
                        // Answered here: a socket over a limit never gets a task to wait in.
                        Err(refused) => {
                            self.shared.metrics.handshakes_over_limit.inc();
                            plain_http::refuse_at_once(stream, &refused.to_string());
                        }
                    },
                    Err(err) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::error!(cause = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut *shutdown => return Ok(Stopped::Shutdown),
                _ = watchdog.tick() => {
                    if let Some(shard) = self.shared.shards.dead() {
                        self.health.fail(format!("shard thread {shard} died"));
                        tracing::error!(shard, "a shard thread died; stopping so that the engine can be restarted");
                        return Err(ServerError::ShardDied(shard));
                    }
                }
            }
        }
    }
}
