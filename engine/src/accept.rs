//! One accepted socket: its request head read, the handshake's decisions (route, origin, token,
//! its seat in the plugin's instance) applied, and the connection served. The server's accept
//! loop spawns one task per socket admitted within the limits; everything a task needs is in
//! [`Shared`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Admission, Admitted, Seat};
use crate::auth;
use crate::config::Config;
use crate::connection::{self, ConnectionSettings};
use crate::handshake::{self, Refusal, Route};
use crate::metrics::Metrics;
use crate::outbound::{SharedSocket, close_reason};
use crate::plain_http;
use crate::registry::PluginRegistry;
use crate::shard::Shards;

/// Bytes a socket reads at once.
const READ_BUFFER_BYTES: usize = 4096;

/// What every connection task shares; the server builds it once.
pub(crate) struct Shared {
    /// The validated configuration the engine started with (handshake timeout, default plugin).
    pub(crate) config: Config,
    /// Which plugins a handshake may ask for.
    pub(crate) registry: Arc<PluginRegistry>,
    /// Where an accepted connection is handed, by connection id.
    pub(crate) shards: Shards,
    /// Copied into every connection task.
    pub(crate) connection: ConnectionSettings,
    /// Message and frame size limits and the read buffer of every socket.
    pub(crate) websocket: WebSocketConfig,
    /// Where handshakes and open connections are counted.
    pub(crate) metrics: Arc<Metrics>,
    /// Source of connection ids; never reused while the engine runs.
    pub(crate) next_conn_id: AtomicU64,
    /// The limits every socket and connection is admitted within.
    pub(crate) admission: Admission,
}

/// The WebSocket layer's limits: messages and frames of at most `max_message_bytes`.
pub(crate) fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    // tungstenite zero-fills `read_buffer_size` bytes before every read (128 KiB by default: 40%
    // of the engine's CPU at 10,000 connections, and 128 KiB of memory per socket). Params are at
    // most a few KiB; larger messages still grow the buffer as needed.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Completes the handshake of one TCP connection from `peer` and serves it.
pub(crate) async fn accept(
    mut stream: TcpStream,
    peer: std::net::IpAddr,
    mut admitted: Admitted,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(shared.config.handshake_timeout_secs);
    // Over its address's cap, a socket holds no place of its address, for a moment only.
    let head_time = match admitted.in_grace {
        true => admission::GRACE,
        false => deadline - tokio::time::Instant::now(),
    };
    let (forwarded_for, head) = match plain_http::read_head(&mut stream, head_time).await {
        Some((plain_http::Request::Upgrade { forwarded_for }, head)) => (forwarded_for, head),
        Some((request, _)) => return plain_http::respond(stream, &request).await,
        None if admitted.in_grace => {
            shared.metrics.handshakes_over_limit.inc();
            return plain_http::refuse_at_once(stream, &admission::Refused::BusyFromAddress.to_string());
        }
        None => {
            shared.metrics.handshakes_rejected.inc();
            tracing::debug!("no complete request before the handshake timeout");
            return;
        }
    };
    if admitted.proxied {
        let client = shared.admission.client(peer, forwarded_for.as_deref());
        if let Err(refused) = shared.admission.connect(&mut admitted, client) {
            shared.metrics.handshakes_over_limit.inc();
            return plain_http::refuse_at_once(stream, &refused.to_string());
        }
    }
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let mut admitted_route = None;
    let mut refused_in_band = None;
    // The callback's signature is tungstenite's; its error is the HTTP response itself.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let protocols = request.headers().get("sec-websocket-protocol").and_then(|value| value.to_str().ok());
        let mut answered = auth::answered_protocol(protocols);
        match admit(&shared, conn_id, request) {
            Ok(admitted) => admitted_route = Some(admitted),
            // Over a limit: answered at once, cheaply, and worth retrying; the client backs off.
            Err(refusal) if refusal.status != 503 && auth::wants_refusals_in_band(protocols) => {
                // The answer itself says the close that follows is a refusal.
                answered = Some(auth::REFUSALS_IN_BAND);
                refused_in_band = Some(refusal);
            }
            Err(refusal) => return Err(refuse(&refusal)),
        }
        // RFC 6455: the server may pick one of the subprotocols the client offered, and a browser
        // that offered some fails a handshake whose answer picks none.
        if let Some(protocol) = answered.and_then(|p| http::HeaderValue::from_str(p).ok()) {
            response.headers_mut().insert(http::header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        Ok(response)
    };
    let (socket, outbound) = SharedSocket::new(stream, head);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(shared.websocket));
    let handshake = tokio::time::timeout_at(deadline, handshake).await;
    admitted.handshake_done();
    let mut ws = match handshake {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            shared.metrics.handshakes_rejected.inc();
            tracing::debug!(cause = %err, "handshake refused or failed");
            // Deliver the refusal (404, 400, 503 with its reason) before the socket closes.
            let _ = tokio::time::timeout_at(deadline, outbound.flush()).await;
            return;
        }
        Err(_) => {
            shared.metrics.handshakes_rejected.inc();
            tracing::debug!("handshake timed out");
            return;
        }
    };
    if let Some(refusal) = refused_in_band {
        shared.metrics.handshakes_rejected.inc();
        let frame =
            CloseFrame { code: CloseCode::from(4000 + refusal.status), reason: close_reason(&refusal.reason).into() };
        let _ = tokio::time::timeout_at(deadline, ws.close(Some(frame))).await;
        let _ = tokio::time::timeout_at(deadline, outbound.flush()).await;
        return;
    }
    let Some((route, _seat)) = admitted_route else { return };
    let shard = shared.shards.sender(conn_id);
    shared.metrics.handshakes_accepted.inc();
    shared.metrics.connections.inc();
    connection::serve(ws, outbound, conn_id, route, shard, shared.connection.clone(), cancel).await;
    shared.metrics.connections.dec();
}

/// The handshake's decisions on `request`: its origin, its plugin and params, its token, and a
/// seat in the plugin's instance on connection `conn_id`'s shard — or why it is refused.
fn admit(shared: &Shared, conn_id: u64, request: &Request) -> Result<(Route, Seat), Refusal> {
    let config = &shared.config;
    let header = |name| request.headers().get(name).and_then(|value| value.to_str().ok());
    handshake::check_origin(header("origin"), header("host"), &config.allowed_origins)?;
    let uri = request.uri();
    let served = |name: &str| shared.registry.get(name).map(|version| version.name.clone());
    let live = &shared.connection.live;
    let mut route = handshake::route(uri.path(), uri.query(), &config.default_plugin, served, live.max_params_bytes())?;
    let token = auth::handshake_token(uri.query(), header("sec-websocket-protocol"), header("authorization"));
    match handshake::authenticate(live.plugin(&route.plugin).auth, token.as_deref(), &shared.connection.auth.load()) {
        Ok(identity) => route.identity = identity.map(Arc::new),
        Err(refusal) => {
            shared.metrics.handshakes_unauthorized.inc();
            return Err(refusal);
        }
    }
    // The plugin's instance on this connection's shard is sent the params of so many
    // connections at most: beyond that its memory cap could not hold them.
    let memory = config.plugin_memory_mib << 20;
    let per_instance = admission::seats_per_instance(memory, live.max_params_bytes());
    let shard = shared.shards.shard_of(conn_id);
    let Some(seat) = shared.admission.seat(route.plugin.clone(), shard, per_instance) else {
        shared.metrics.handshakes_over_limit.inc();
        let reason = format!(
            "plugin `{}` is at its connection limit on this worker ({per_instance}: its plugin_memory_mib \
             holds the params of so many connections of up to max_params_bytes)",
            route.plugin
        );
        return Err(Refusal { status: 503, reason });
    };
    Ok((route, seat))
}

/// The HTTP response refusing a handshake; a 401 names the scheme it wants (RFC 6750).
fn refuse(refusal: &Refusal) -> ErrorResponse {
    let mut response = http::Response::new(Some(format!("{}\n", refusal.reason)));
    *response.status_mut() = http::StatusCode::from_u16(refusal.status).unwrap_or(http::StatusCode::BAD_REQUEST);
    if refusal.status == 401 {
        let challenge = http::HeaderValue::from_static("Bearer realm=\"wasmpush\"");
        response.headers_mut().insert(http::header::WWW_AUTHENTICATE, challenge);
    }
    response
}
