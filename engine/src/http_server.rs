//! The HTTP server of the admin endpoint and the publish API: axum routers served by hyper with
//! the limits that keep a slow or hostile client from holding the engine. Each connection must
//! send a request head within `timeout` (an idle keep-alive connection is closed after it too);
//! connections are capped in all and per client address, one more being answered 503 and closed
//! at once; and a stop waits at most [`STOP_GRACE`] for requests under way, then drops them.
//! Bodies are the routers' business (see `publish`): they read them with a size limit and the
//! same timeout.
//!
//! It must not know the routes: the admin endpoint and the publish API hand it theirs.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{ClientKey, Limit};
use crate::plain_http;

/// How long a stop waits for requests under way before it drops their connections.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The limits of one HTTP listener's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request head (and, for the routers, a body).
    pub timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one client address (an IPv6 /64).
    pub max_connections_per_ip: usize,
}

/// Serves `router` on `listener` within `limits` until `shutdown`; then lets the requests under
/// way finish for at most [`STOP_GRACE`], and drops what is left.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: HttpLimits, shutdown: CancellationToken) {
    let connections: Arc<Limit<ClientKey>> = Limit::new(limits.max_connections);
    let tasks = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(cause = %err, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let place = match connections.take(ClientKey::of(peer.ip()), limits.max_connections_per_ip) {
            Ok(place) => place,
            Err(all) => {
                let reason = if all { "too many connections" } else { "too many connections from your address" };
                plain_http::refuse_at_once(stream, reason);
                continue;
            }
        };
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _place = place;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            // A request under way may finish; a client that holds it longer is dropped.
            if tokio::time::timeout(STOP_GRACE, connection).await.is_err() {
                tracing::debug!("an HTTP request still under way at the stop was dropped");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}
