//! One client connection after its handshake: reads the client's frames, validates params and
//! hands them to the connection's shard; writes the frames the shard queued; pings the client and
//! closes it when it has been silent (no frame, no pong) for the idle timeout; closes it when its
//! token expires unless the client refreshed it (`{"$token":"JWT"}`). It owns the socket and
//! nothing else: all push state lives in the shard.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, SharedAuthenticator, TokenError};
use crate::config::AuthMode;
use crate::handshake::Route;
use crate::live::LiveSettings;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundQueue, SharedSocket, Waiting};
use crate::protocol::{ClientError, TOKEN_EXPIRED_CLOSE, token_refresh, validate_params};
use crate::rate_limit::{MessageBudget, Verdict};
use crate::shard::ShardCommand;

/// What a connection needs to know.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// The params limit, as `wasmpush reload` last set it.
    pub live: Arc<LiveSettings>,
    /// Time a write may take before the client counts as a slow consumer.
    pub write_timeout: Duration,
    /// Where closes are counted.
    pub metrics: Arc<Metrics>,
    /// Messages a client may send per second (and at once).
    pub max_messages_per_sec: u32,
    /// Interval between two server pings.
    pub ping_interval: Duration,
    /// Time without any frame from the client (a pong included) after which it is closed.
    pub idle_timeout: Duration,
    /// Checks the tokens clients send to refresh theirs.
    pub auth: SharedAuthenticator,
    /// When each connection closes once the engine stops: at once, or spread out after a
    /// handover.
    pub drain: Arc<DrainPlan>,
}

/// How an engine that stops closes its connections: at once with 1001 (shutdown), or — handed
/// over to a new engine — each with 1012 at its own moment within the spread, so their clients
/// reconnect a few at a time.
#[derive(Debug, Default)]
pub struct DrainPlan(std::sync::OnceLock<Duration>);

impl DrainPlan {
    /// The engine was handed over: connections close over `spread` from now.
    pub fn start(&self, spread: Duration) {
        let _ = self.0.set(spread);
    }

    /// How long connection `conn_id` stays once the engine stops: `None` at a shutdown, its share
    /// of the spread after a handover (connection ids spread evenly over it).
    fn delay(&self, conn_id: u64) -> Option<Duration> {
        // Fibonacci hashing: consecutive ids land far apart in [0, 1).
        let fraction = (conn_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
        self.0.get().map(|spread| spread.mul_f64(fraction))
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed it or the socket failed.
    Client,
    /// The engine is shutting down.
    Shutdown,
    /// The engine was handed over to a new one (a restart).
    Restart,
    /// The client does not read its frames.
    SlowConsumer,
    /// The client sent nothing, not even a pong, for `idle_timeout`.
    Idle,
    /// The client kept sending over its message rate.
    Flood,
    /// The client's params kept making its plugin fault.
    Faulting,
    /// The client's token expired and it sent no fresh one.
    TokenExpired,
    /// The client broke the WebSocket protocol: the close code RFC 6455 names, and why.
    Refused(CloseCode, &'static str),
}

/// The close a protocol error calls for (RFC 6455, 7.4.1), if it is the client's: 1009 for a
/// message or frame over `max_message_bytes` (refused from its header, nothing buffered), 1007
/// for text that is not UTF-8, 1002 for anything else against the protocol.
fn refusal(err: &WsError) -> Option<End> {
    match err {
        WsError::Capacity(_) => Some(End::Refused(CloseCode::Size, "message too big")),
        WsError::Utf8(_) => Some(End::Refused(CloseCode::Invalid, "text is not valid UTF-8")),
        WsError::Protocol(_) => Some(End::Refused(CloseCode::Protocol, "protocol error")),
        _ => None,
    }
}

/// Serves one connection until the client leaves, the engine shuts down, or the client stops
/// reading. Always tells the shard the connection closed.
///
/// The shard writes pushes to the socket itself (see [`OutboundQueue`]); this task only writes
/// what the socket did not take at once, so it wakes for client frames, heartbeats and a full
/// socket, not for every push.
pub async fn serve(
    mut ws: WebSocketStream<SharedSocket>,
    outbound: Arc<OutboundQueue>,
    conn_id: u64,
    route: Route,
    shard: flume::Sender<ShardCommand>,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
) {
    let mut identity = route.identity.clone();
    let auth_mode = settings.live.plugin(&route.plugin).auth;
    let open = ShardCommand::Open {
        conn_id,
        plugin: route.plugin,
        outbound: outbound.clone(),
        params: route.params,
        identity: route.identity,
    };
    if shard.send_async(open).await.is_err() {
        return;
    }
    // Armed only while the connection has a token.
    let expiry = tokio::time::sleep_until(token_deadline(&settings, identity.as_deref()));
    tokio::pin!(expiry);
    let mut heartbeat = tokio::time::interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut budget = MessageBudget::new(settings.max_messages_per_sec, std::time::Instant::now());
    // Created once: a fresh `cancelled()` per loop turn would lock the token's shared node each time.
    // After a handover the connection is served on until its moment in the drain.
    let ended = async {
        shutdown.cancelled().await;
        match settings.drain.delay(conn_id) {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                End::Restart
            }
            None => End::Shutdown,
        }
    };
    tokio::pin!(ended);
    let end = loop {
        tokio::select! {
            frame = ws.next() => match frame.inspect(|_| last_heard = Instant::now()) {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => match budget.take(std::time::Instant::now()) {
                    Verdict::Flood => break End::Flood,
                    Verdict::Refused { first } => {
                        if first {
                            let per_sec = settings.max_messages_per_sec;
                            outbound.push(Outbound::Error(&ClientError::TooFast { per_sec }.frame()));
                        }
                    }
                    Verdict::Allowed => {
                        let Message::Text(text) = message else {
                            outbound.push(Outbound::Error(&ClientError::BinaryFrame.frame()));
                            continue;
                        };
                        if let Some(token) = token_refresh(text.as_str()) {
                            match refresh(&settings, auth_mode, identity.as_deref(), &token) {
                                Ok(fresh) => {
                                    let fresh = Arc::new(fresh);
                                    expiry.as_mut().reset(token_deadline(&settings, Some(&fresh)));
                                    identity = Some(fresh.clone());
                                    settings.metrics.token_refreshes.inc();
                                    if shard.send_async(ShardCommand::Identity { conn_id, identity: fresh }).await.is_err() {
                                        break End::Shutdown;
                                    }
                                }
                                Err(err) => outbound.push(Outbound::Error(&ClientError::TokenRefused(err).frame())),
                            }
                            continue;
                        }
                        match validate_params(text.as_str(), settings.live.max_params_bytes()) {
                            Ok(()) => {
                                let command = ShardCommand::Params { conn_id, params: text.as_str().to_owned() };
                                if shard.send_async(command).await.is_err() {
                                    break End::Shutdown;
                                }
                            }
                            Err(err) => outbound.push(Outbound::Error(&err.frame())),
                        }
                    }
                },
                Some(Err(err)) => break refusal(&err).unwrap_or(End::Client),
                Some(Ok(Message::Close(_))) | None => break End::Client,
                // Pings and pongs count against the same budget (tungstenite answers pings itself):
                // a client cannot make the engine write pongs faster than it may send messages.
                Some(Ok(_)) => if budget.take(std::time::Instant::now()) == Verdict::Flood {
                    break End::Flood;
                },
            },
            waiting = outbound.wait() => match waiting {
                Waiting::Bytes => match tokio::time::timeout(settings.write_timeout, outbound.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::Client,
                    Err(_) => break End::SlowConsumer,
                },
                Waiting::Overflowed => break End::SlowConsumer,
                Waiting::Evicted => break End::Faulting,
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break End::Idle;
                }
                match tokio::time::timeout(settings.write_timeout, ws.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break End::Client,
                    Err(_) => break End::SlowConsumer,
                }
            }
            () = &mut expiry, if identity.is_some() => break End::TokenExpired,
            end = &mut ended => break end,
        }
    };
    outbound.close();
    let _ = shard.send_async(ShardCommand::Close { conn_id }).await;
    let metrics = &settings.metrics;
    let close = match end {
        End::Client => None,
        End::Shutdown => Some((CloseCode::Away, "going away", None)),
        End::Restart => Some((CloseCode::Restart, "service restart", None)),
        End::SlowConsumer => Some((CloseCode::Policy, "slow consumer", Some(&metrics.slow_consumer_closes))),
        End::Idle => Some((CloseCode::Away, "idle timeout", Some(&metrics.idle_closes))),
        End::Flood => Some((CloseCode::Policy, "message flood", Some(&metrics.flood_closes))),
        End::Faulting => {
            Some((CloseCode::Policy, "plugin keeps failing on these params", Some(&metrics.faulting_closes)))
        }
        End::TokenExpired => {
            Some((CloseCode::from(TOKEN_EXPIRED_CLOSE), "token expired", Some(&metrics.token_expired_closes)))
        }
        End::Refused(code, reason) => {
            // The WebSocket layer stops after a protocol error: the engine writes the close itself.
            tracing::debug!(conn_id, reason, "closing a connection that broke the protocol");
            outbound.push_close(code.into(), reason);
            let _ = tokio::time::timeout(settings.write_timeout, outbound.flush()).await;
            return;
        }
    };
    if let Some((code, reason, counter)) = close {
        counter.map(|counter| counter.inc());
        tracing::debug!(conn_id, ?end, "closing connection");
        let frame = CloseFrame { code, reason: reason.into() };
        let _ = tokio::time::timeout(settings.write_timeout, ws.close(Some(frame))).await;
    } else if end == End::Client {
        // The WebSocket layer may have queued its answer to the client's close frame.
        let _ = tokio::time::timeout(settings.write_timeout, outbound.flush()).await;
    }
}

/// When a connection whose client is `identity` must have refreshed its token; far off without one.
fn token_deadline(settings: &ConnectionSettings, identity: Option<&Identity>) -> Instant {
    const NEVER: Duration = Duration::from_secs(86_400 * 365);
    let Some(identity) = identity else { return Instant::now() + NEVER };
    let left = settings.auth.load().deadline(identity).duration_since(std::time::SystemTime::now());
    Instant::now() + left.unwrap_or_default().min(NEVER)
}

/// Checks a token a client sent to refresh its own: valid, for a plugin that takes tokens, and for
/// the same subject as the connection's (a connection cannot become another user's).
fn refresh(
    settings: &ConnectionSettings,
    mode: AuthMode,
    current: Option<&Identity>,
    token: &str,
) -> Result<Identity, String> {
    if mode == AuthMode::None {
        return Err("this plugin does not take tokens".to_owned());
    }
    let fresh = settings.auth.load().verify(token).map_err(|err| err.to_string())?;
    match current {
        Some(current) if current.subject != fresh.subject => Err(TokenError::OtherSubject.to_string()),
        _ => Ok(fresh),
    }
}
