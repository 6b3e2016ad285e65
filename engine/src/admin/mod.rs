//! The admin HTTP endpoint (default `127.0.0.1:9504`): `GET /status` (JSON), `GET /metrics`
//! (Prometheus text), `GET /healthz` (200 only while the engine serves, undegraded) and, on a
//! node of a cluster, `GET /cluster` (every node, JSON). [`Status`] is also what
//! `wasmpush status` reads back, so the printer cannot drift from the endpoint.
//!
//! `GET /console` is the operator console: a live page of the engine's figures, plugins, data,
//! events and cluster (`console`; its feed is the `console` module's).
//!
//! The rollout routes (`rollouts`) change what serves: `POST /plugins/NAME/deploy` (a build, at
//! once, as a canary or as a shadow run), `…/promote`, `…/abort`, `…/rollback`, and
//! `GET /plugins/NAME/versions`. Every route but `/healthz` takes the admin token when one is
//! set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bearer;
use crate::cluster::{Announcement, Cluster, ClusterNode, NAME_TAKEN};
use crate::console::Console;
use crate::data::{DataView, StoreFault};
use crate::health::{Health, HealthState};
use crate::http_server::{self, HttpLimits};
use crate::metrics::Metrics;
use crate::registry::PluginRegistry;
use crate::rollout_control::{EndedRollout, RolloutStatus, Rollouts};
use crate::wall_clock::unix_ms;

mod console;
mod rollouts;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// What `/status` lists as served, and the last failed load.
    pub registry: Arc<PluginRegistry>,
    /// The rollouts: started, ended and listed through the rollout routes.
    pub rollouts: Arc<Rollouts>,
    /// What `/metrics` encodes and `/status` sums up.
    pub metrics: Arc<Metrics>,
    /// Where the WebSocket server listens.
    pub listen: SocketAddr,
    /// When the engine started.
    pub started: Instant,
    /// Data frames pushed in the last whole second, updated every second by the console's sampler.
    pub pushes_per_sec: Arc<AtomicU64>,
    /// What `/healthz` answers.
    pub health: Arc<Health>,
    /// The bearer token `/status` and `/metrics` require, if one is configured (`/healthz` stays
    /// open to health checkers).
    pub token: Option<Arc<str>>,
    /// Why the data store cannot write, if it cannot: the engine is degraded until it recovers.
    pub data_fault: StoreFault,
    /// Time and connection limits of the endpoint's HTTP clients.
    pub limits: HttpLimits,
    /// The cluster this engine is a node of, if any.
    pub cluster: Option<Cluster>,
    /// The data the node serves, for the revision it applied.
    pub data: DataView,
    /// The operator console's live feed.
    pub console: Arc<Console>,
}

/// The `/status` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The engine's process id.
    pub pid: u32,
    /// Where the WebSocket server listens.
    pub listen: SocketAddr,
    /// Seconds since the engine started.
    pub uptime_secs: u64,
    /// Connections open now.
    pub connections: i64,
    /// Data frames pushed since start.
    pub pushes: u64,
    /// Data frames pushed in the last whole second.
    pub pushes_per_sec: u64,
    /// Business errors plugins returned since start.
    pub plugin_errors: u64,
    /// Plugin calls that trapped, timed out, hit the memory cap or broke the contract.
    pub plugin_faults: u64,
    /// The plugins served, by name.
    pub plugins: Vec<PluginStatus>,
    /// The most recent failed plugin load, if no later load of that plugin succeeded.
    pub last_reload_error: Option<ReloadErrorStatus>,
    /// Why the engine is degraded (it serves, but cannot take writes), if it is.
    #[serde(default)]
    pub degraded: Option<String>,
    /// The revision of the data this engine serves (on a node of a cluster, the cluster stream's
    /// sequence it applied up to).
    #[serde(default)]
    pub data_revision: u64,
    /// On a node of a cluster, whether it reaches NATS now.
    #[serde(default)]
    pub nats_connected: Option<bool>,
    /// On a node of a cluster, the data stream's messages it has not applied yet, as last seen.
    #[serde(default)]
    pub data_lag: Option<u64>,
    /// On a node of a cluster, values written straight to the cluster's data that failed the
    /// checks (not applied: their keys read as missing), by data bucket.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invalid_values: BTreeMap<String, u64>,
    /// On a node of a cluster, how often it followed the data stream anew (after a failure, a
    /// stalled watch or a recreated stream).
    #[serde(default)]
    pub follow_restarts: Option<u64>,
    /// On a node of a cluster, why its name is in doubt: another process announces itself
    /// under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_conflict: Option<String>,
}

/// One served plugin.
#[derive(Debug, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its name: the file `NAME.wasm` and the path `/ws/NAME`.
    pub name: String,
    /// Its version id: the SHA-256 of its file.
    pub version: String,
    /// Size of its file in bytes.
    pub bytes: usize,
    /// When this version was loaded, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
    /// Its canary or shadow run in progress, with the live comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Its last rollouts that ended, newest first, with their outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_rollouts: Vec<EndedRollout>,
}

/// A failed load.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadErrorStatus {
    /// The plugin whose file failed to load; its previous version, if any, still serves.
    pub plugin: String,
    /// The build that failed (its SHA-256), when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Why, in one line, as the loader said it.
    pub reason: String,
    /// Whether the build is tried again by itself (a cluster's build that could not be fetched).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl std::fmt::Display for ReloadErrorStatus {
    /// `PLUGIN: REASON`, and whether it is tried again.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.plugin, self.reason)?;
        if self.retried { write!(f, " (tried again)") } else { Ok(()) }
    }
}

impl AdminState {
    /// The status now.
    pub fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            listen: self.listen,
            uptime_secs: self.started.elapsed().as_secs(),
            connections: self.metrics.connections.get(),
            pushes: self.metrics.frames_pushed.get(),
            pushes_per_sec: self.pushes_per_sec.load(Ordering::Relaxed),
            plugin_errors: self.metrics.calls.error.get(),
            plugin_faults: self.metrics.calls.faults(),
            plugins: self
                .registry
                .snapshot()
                .values()
                .map(|version| PluginStatus {
                    name: version.name.to_string(),
                    version: version.hash.clone(),
                    bytes: version.size,
                    loaded_at_ms: unix_ms(version.loaded_at),
                    rollout: self.rollouts.status(&version.name),
                    last_rollouts: self.rollouts.ended(&version.name),
                })
                .collect(),
            last_reload_error: self.registry.last_error().map(|failed| ReloadErrorStatus {
                plugin: failed.plugin,
                build: failed.build,
                reason: failed.reason,
                retried: failed.retried,
                at_ms: unix_ms(failed.at),
            }),
            degraded: self.degraded(),
            data_revision: self.data.snapshot().revision(),
            nats_connected: self.cluster.as_ref().map(Cluster::is_connected),
            data_lag: self.cluster.as_ref().map(Cluster::lag),
            invalid_values: self.cluster.as_ref().map(Cluster::invalid_values).unwrap_or_default(),
            follow_restarts: self.cluster.as_ref().map(Cluster::follow_restarts),
            name_conflict: self
                .cluster
                .as_ref()
                .filter(|cluster| cluster.is_name_taken())
                .map(|_| NAME_TAKEN.to_owned()),
        }
    }

    /// What this node announces to its cluster: its status and the builds it serves.
    pub fn announcement(&self) -> Announcement {
        Announcement {
            instance: self.cluster.as_ref().map_or(0, Cluster::instance),
            // Told by the announcing loop, which knows since when its announcements are taken.
            announcing_for_ms: 0,
            builds: self.registry.snapshot().values().map(|version| version.hash.clone()).collect(),
            status: serde_json::to_value(self.status()).expect("a status serializes"),
        }
    }

    /// Why the engine is degraded, if it is: its store refuses writes, or, on a node of a
    /// cluster, NATS is unreachable (it serves its last view of the data and refuses writes), with
    /// why when the NATS client said.
    fn degraded(&self) -> Option<String> {
        if let Some(fault) = self.data_fault.get() {
            return Some(format!("data store: {fault}"));
        }
        let cluster = self.cluster.as_ref()?;
        if !cluster.is_connected() {
            let why = cluster.link_trouble().map_or_else(String::new, |why| format!(" ({why})"));
            return Some(format!("cluster: NATS is unreachable{why}; serving the last data seen, refusing writes"));
        }
        cluster.catching_up_to().map(|target| {
            let applied = self.data.snapshot().revision();
            format!("cluster: catching up with the data stream (applied {applied} of {target})")
        })
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let sampled = state.clone();
    let degraded = move || sampled.degraded();
    let console =
        state.console.clone().run(state.pushes_per_sec.clone(), state.cluster.clone(), degraded, shutdown.clone());
    tokio::spawn(console);
    let token = state.token.clone();
    let guarded = Router::new()
        .route("/status", get(|State(state): State<AdminState>| async move { Json(state.status()) }))
        .route("/metrics", get(|State(state): State<AdminState>| async move { metrics(&state) }))
        .route("/cluster", get(|State(state): State<AdminState>| async move { cluster(&state).await }))
        .merge(rollouts::routes())
        .merge(console::routes())
        .layer(axum::middleware::from_fn(move |request, next| bearer::require(token.clone(), request, next)));
    let limits = state.limits;
    let router = guarded.route("/healthz", get(|State(state): State<AdminState>| async move { healthz(&state) }));
    http_server::serve(listener, router.with_state(state), limits, shutdown).await;
}

/// `/healthz`: 200 once the engine serves; 503 while it starts, while it is degraded (its data
/// store refuses writes) and once it failed, with why.
fn healthz(state: &AdminState) -> impl IntoResponse + use<> {
    use axum::http::StatusCode;
    match state.health.state() {
        HealthState::Ready => match state.degraded() {
            None => (StatusCode::OK, "ok\n".to_owned()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("degraded: {why}\n")),
        },
        HealthState::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting: plugins are loading\n".to_owned()),
        HealthState::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n")),
    }
}

/// `/cluster`: every node of the cluster as the cluster knows it; 404 on a single node, 503
/// while NATS cannot answer.
async fn cluster(state: &AdminState) -> axum::response::Response {
    use axum::http::StatusCode;
    let Some(cluster) = &state.cluster else {
        return (StatusCode::NOT_FOUND, "this engine is no node of a cluster ([cluster] nats)\n").into_response();
    };
    match cluster.nodes().await {
        Ok(nodes) => Json(ClusterStatus { nats_connected: cluster.is_connected(), nodes }).into_response(),
        Err(err) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the cluster's nodes: {err}\n")).into_response()
        }
    }
}

/// The `/cluster` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Whether the node that answers reaches NATS now.
    pub nats_connected: bool,
    /// Every node the cluster knows, by name, live or gone.
    pub nodes: Vec<ClusterNode>,
}

/// The `/metrics` response.
fn metrics(state: &AdminState) -> impl IntoResponse + use<> {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.metrics.encode(&state.rollouts.metrics_text()))
}
