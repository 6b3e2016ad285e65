//! The server: loads the plugins, starts the shards, accepts connections until `shutdown`
//! resolves, then closes every connection with 1001 "going away" and waits for them (up to
//! [`DRAIN_TIME`]). It is given its listener and its shutdown signal, so tests run it on port 0.
//!
//! A restart hands the engine over ([`Lifecycle`]): the new engine, holding the same listening
//! sockets, asks the old one to let go once its plugins are compiled; the old one stops
//! accepting (connections wait in the shared accept queue) and closes its data store for the new
//! one to open. Once the new one serves, the old one closes its connections with 1012 "service
//! restart", spread over `drain_secs`, so their clients reconnect — to the new engine — a few at
//! a time; if the new one fails first, the old one opens its data store again and serves on.

mod accepting;
mod data;
mod lifecycle;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{self, Shared};
use crate::admin::AdminState;
use crate::admission::Admission;
use crate::auth::{Authenticator, KeyError, SharedAuthenticator};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, ConfigError};
use crate::connection::ConnectionSettings;
use crate::console::{self, Console};
use crate::data::{ChangeSet, DataError, DataView, StoreFault};
use crate::health::Health;
use crate::http_server::HttpLimits;
use crate::live::LiveSettings;
use crate::metrics::Metrics;
use crate::plugin::{HostError, PluginHost, SandboxLimits};
use crate::publish::PublishSettings;
use crate::registry::PluginRegistry;
use crate::reload::Reloader;
use crate::rollout::VersionHistory;
use crate::rollout_control::Rollouts;
use crate::services::Services;
use crate::shard::{ShardSettings, Shards};
use crate::watcher::{CHANGE_CAPACITY, PluginWatcher};
use accepting::{Accepting, Stopped};
use data::{announce_to, data_limits, follow_batch, open_data, reopen_data};
pub use lifecycle::{Forward, HandOver, Lifecycle, Released, Successor, TakeOver};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugin host could not be built.
    #[error("cannot start the plugin host: {0}")]
    PluginHost(#[from] HostError),
    /// The plugins directory could not be read.
    #[error("cannot read plugins directory {path}: {source}")]
    PluginsDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The plugins directory cannot be watched.
    #[error("cannot watch plugins directory {path}: {source}")]
    Watch {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: notify::Error,
    },
    /// The listener's address cannot be read.
    #[error("cannot read the listening address: {0}")]
    Listener(std::io::Error),
    /// A worker thread could not be started.
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    /// A worker thread died (a bug): its connections would get no more pushes, so the engine
    /// stops for its supervisor to restart it.
    #[error("shard thread {0} died; stopping so that the engine can be restarted")]
    ShardDied(usize),
    /// A key of `[auth]` could not be loaded.
    #[error("cannot load the keys of [auth]: {0}")]
    Auth(#[from] KeyError),
    /// A restart's new engine could not take over from the old one.
    #[error("cannot take over from the running engine: {0}")]
    TakeOver(String),
    /// The cluster's NATS connection could not be set up.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The data store could not be opened.
    #[error(
        "cannot open the data store in {path}: {source} (a damaged file: `start --recover-data` moves it aside and \
         starts with an empty store; see docs/data.md)"
    )]
    Data {
        /// `data_dir`.
        path: std::path::PathBuf,
        /// The cause.
        source: DataError,
    },
}

/// How long connections get to close after shutdown begins.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The sockets the engine serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// WebSocket clients.
    pub websocket: TcpListener,
    /// The admin endpoint (`/status`, `/healthz`), if any.
    pub admin: Option<TcpListener>,
    /// The publish API (`/v1/buckets/…`), if any.
    pub publish: Option<TcpListener>,
}

/// A reload request (what SIGHUP does): rescan the plugins directory and, if a configuration is
/// given, take over its live settings (tick interval and size limits).
#[derive(Debug, Clone, Default)]
pub struct Reload {
    /// The configuration as it reads now, if the engine was started from a file.
    pub config: Option<Config>,
}

/// Runs the engine until `shutdown` resolves. Each message on `reloads` is a [`Reload`]; file
/// changes in the plugins directory are picked up by themselves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<Reload>,
) -> Result<(), ServerError> {
    run_with(config, listeners, shutdown, reloads, Lifecycle::default()).await
}

/// [`run`], with the hooks of a restart: see [`Lifecycle`].
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<Reload>,
    lifecycle: Lifecycle,
) -> Result<(), ServerError> {
    let Lifecycle { on_ready, take_over, mut hand_over } = lifecycle;
    config.validate()?;
    // Watched from the first instant: a stop during start-up (plugins compiling) ends it there.
    tokio::pin!(shutdown);
    let live = Arc::new(LiveSettings::new(&config));
    let auth: SharedAuthenticator = Arc::new(ArcSwap::from_pointee(Authenticator::load(&config.auth)?));
    let started = std::time::Instant::now();
    let Listeners { websocket: listener, admin, publish } = listeners;
    let metrics = Arc::new(Metrics::default());
    // Connections end on `cancel`; the reloader on `reloading`, when the engine stops.
    let cancel = CancellationToken::new();
    let reloading = CancellationToken::new();
    let dir = config.plugins_dir.clone();
    std::fs::read_dir(&dir).map_err(|source| ServerError::PluginsDir { path: dir.clone(), source })?;
    // Watch before the first scan, so a file deployed meanwhile is not missed.
    let (changes, changed) = mpsc::channel(CHANGE_CAPACITY);
    let overflowed = Arc::new(AtomicBool::new(false));
    let _watcher = match config.watch_plugins {
        true => Some(
            PluginWatcher::start(&dir, changes, overflowed.clone())
                .map_err(|source| ServerError::Watch { path: dir.clone(), source })?,
        ),
        false => None,
    };
    let registry = Arc::new(plugin_registry(&config).await?);
    let reloader = Reloader::new(registry.clone(), dir, metrics.clone());
    let rollouts = Rollouts::start(
        registry.clone(),
        config.plugins_dir.clone(),
        &config.data_dir,
        config.rollouts.clone(),
        metrics.clone(),
        reloading.clone(),
    );
    // The admin endpoint answers from here on: `/healthz` says 503 until the engine serves.
    let health = Arc::new(Health::default());
    let store_fault = StoreFault::default();
    let cluster = match config.cluster.nats.is_empty() {
        true => None,
        false => {
            Some(Cluster::connect(&config.cluster, config.max_value_bytes).await?.judging_by(config.rollouts.clone()))
        }
    };
    // Empty until the data is loaded (before the engine serves).
    let view = DataView::default();
    let admin_state = AdminState {
        registry: registry.clone(),
        rollouts: rollouts.clone(),
        metrics: metrics.clone(),
        listen: listener.local_addr().map_err(ServerError::Listener)?,
        started,
        pushes_per_sec: Default::default(),
        health: health.clone(),
        token: config.admin_token.as_deref().map(Arc::from),
        data_fault: store_fault.clone(),
        limits: http_limits(&config),
        cluster: cluster.clone(),
        data: view.clone(),
        console: Console::new(console::Sources {
            metrics: metrics.clone(),
            registry: registry.clone(),
            rollouts: rollouts.clone(),
            data: view.clone(),
        }),
    };
    let publish_settings = PublishSettings {
        token: config.publish_token.clone(),
        limits: http_limits(&config),
        max_batch_bytes: config.max_batch_bytes,
        cluster: cluster.clone(),
        metrics: metrics.clone(),
    };
    let node =
        cluster.as_ref().map(|cluster| (cluster.clone(), node_name(&config, admin_state.listen), admin_state.clone()));
    let admin = admin.map(|admin| admin.into_std().map(|admin| (admin, admin_state)));
    let publish = publish.map(|publish| publish.into_std().map(|publish| (publish, publish_settings)));
    let mut services = Services::new(
        admin.transpose().map_err(ServerError::Listener)?,
        publish.transpose().map_err(ServerError::Listener)?,
        store_fault,
        node,
    );
    services.start_admin().map_err(ServerError::Listener)?;
    // A node of a cluster serves the cluster's builds from its first connection.
    if let Some(cluster) = &cluster {
        fetch_cluster_builds(cluster, &config.plugins_dir, (&registry, &rollouts), &mut shutdown).await;
    }
    tokio::select! {
        biased;
        () = &mut shutdown => {
            tracing::info!("stopped during start-up, before serving");
            return Ok(());
        }
        () = reloader.rescan() => {}
    }
    for version in registry.snapshot().values() {
        tracing::info!(plugin = %version.name, version = version.short_hash(), bytes = version.size, "serving plugin");
    }
    let (forward, serving) = match take_over {
        Some(take_over) => {
            let Released { forward, serving } = take_over.await.map_err(ServerError::TakeOver)?;
            tracing::info!("the engine this one replaces has stopped accepting and released its data store");
            (Some(forward), Some(serving))
        }
        None => (None, None),
    };
    // The data is in memory before the first connection is accepted.
    let (durable, snapshot) = open_data(&config).await?;
    tracing::info!(keys = snapshot.key_count(), bytes = snapshot.bytes(), dir = %config.data_dir.display(), "data loaded");
    view.set(snapshot);
    let (rescans, rescan_requests) = mpsc::channel(1);
    tokio::spawn(apply_reloads(reloads, config.clone(), live.clone(), auth.clone(), rescans));
    tokio::spawn(reloader.run(changed, overflowed, rescan_requests, reloading.clone()));
    if let Some(cluster) = &cluster {
        let follow = cluster.clone().follow_builds(config.plugins_dir.clone(), registry.clone(), rollouts.clone());
        tokio::spawn(reloading.clone().run_until_cancelled_owned(follow));
    }
    let settings = ShardSettings {
        live: live.clone(),
        metrics: metrics.clone(),
        shadow_budget_pct: config.rollouts.shadow_budget_pct,
        data: view.clone(),
    };
    let shards = Shards::spawn(config.worker_count(), settings, registry.clone()).map_err(ServerError::Workers)?;
    let announce = announce_to(&shards, metrics.clone(), view.clone());
    let announce = move |changes: Arc<ChangeSet>| {
        if let Some(forward) = &forward {
            forward(&changes);
        }
        announce(changes);
    };
    services.start_data(durable, &view, data_limits(&config), announce).map_err(ServerError::Workers)?;
    services.start_cluster(data_limits(&config));
    let shared = Arc::new(Shared {
        connection: ConnectionSettings {
            metrics: metrics.clone(),
            live: live.clone(),
            max_messages_per_sec: config.max_messages_per_sec,
            write_timeout: Duration::from_secs(config.write_timeout_secs),
            ping_interval: Duration::from_secs(config.ping_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            auth: auth.clone(),
            drain: Arc::default(),
        },
        websocket: accept::websocket_config(config.max_message_bytes),
        registry,
        shards,
        next_conn_id: AtomicU64::new(1),
        admission: Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.max_handshakes,
            config.max_handshakes_per_ip,
            config.trusted_proxies.iter().filter_map(|proxy| crate::config::parse_proxy(proxy)).collect(),
        ),
        metrics,
        config,
    });
    let tasks = TaskTracker::new();
    tracing::info!(listen = ?listener.local_addr().ok(), workers = shared.config.worker_count(), "serving");
    health.set_ready();
    on_ready();
    // The engine this one replaces drains from here on; nothing is published before it is told.
    if let Some(serving) = serving {
        serving();
    }
    services.start_publish().map_err(ServerError::Listener)?;
    let accepting = Accepting { listener: &listener, shared: &shared, tasks: &tasks, cancel: &cancel, health: &health };

    // Why the engine stops with an error after its connections are closed.
    let mut failure = None;
    let successor = loop {
        let request = match accepting.until_stopped(&mut hand_over, &mut shutdown).await? {
            Stopped::Shutdown => {
                services.stop().await;
                break None;
            }
            Stopped::HandOver(request) => request,
        };
        services.stop().await;
        let _ = request.released.send(());
        tracing::info!(connections = tasks.len(), "let go for a restart's new engine; waiting for it to serve");
        let outcome = tokio::select! {
            outcome = request.successor => outcome,
            () = &mut shutdown => break None,
        };
        match outcome {
            Ok(Successor::Serving(followed)) => break Some(followed),
            Ok(Successor::Failed(reason)) => tracing::warn!(%reason, "the restart failed; serving on"),
            Err(_) => tracing::warn!("the restart's new engine failed before it served; serving on"),
        }
        // The new engine never served, so it published nothing: the store holds what `view` does.
        let durable = match reopen_data(&shared.config).await {
            Ok(durable) => durable,
            Err(err) => {
                tracing::error!(cause = %err, "cannot serve on without the data store: stopping");
                failure = Some(err);
                break None;
            }
        };
        let announce = announce_to(&shared.shards, shared.metrics.clone(), view.clone());
        services.start_data(durable, &view, data_limits(&shared.config), announce).map_err(ServerError::Workers)?;
        services.start_cluster(data_limits(&shared.config));
        services.start_admin().map_err(ServerError::Listener)?;
        services.start_publish().map_err(ServerError::Listener)?;
        tracing::info!("serving again");
    };

    drop(listener);
    reloading.cancel();
    let mut drain_time = DRAIN_TIME;
    let mut followed = match successor {
        Some(followed) => {
            let spread = Duration::from_secs(shared.config.drain_secs);
            tracing::info!(
                connections = tasks.len(),
                ?spread,
                "handed over: closing connections with 1012, spread out"
            );
            shared.connection.drain.start(spread);
            drain_time += spread;
            followed
        }
        None => {
            tracing::info!(connections = tasks.len(), "shutting down: closing connections");
            mpsc::channel(1).1
        }
    };
    cancel.cancel();
    tasks.close();
    // While they drain, the connections follow the new engine's data.
    let announce = announce_to(&shared.shards, shared.metrics.clone(), view.clone());
    let limits = data_limits(&shared.config);
    let drained = async {
        let drained = tasks.wait();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                () = &mut drained => return,
                Some(changes) = followed.recv() => follow_batch(&view, &limits, &changes, &announce),
            }
        }
    };
    if tokio::time::timeout(drain_time, drained).await.is_err() {
        tracing::warn!(left = tasks.len(), "drain time over; dropping remaining connections");
    }
    drop(announce);
    if let Ok(shared) = Arc::try_unwrap(shared) {
        let _ = tokio::task::spawn_blocking(move || shared.shards.join()).await;
    }
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// Applies each reload request: takes over the live settings and the `[auth]` keys of a new
/// configuration (naming the changed settings that need a restart), then asks the reloader to
/// rescan the plugins.
async fn apply_reloads(
    mut reloads: mpsc::Receiver<Reload>,
    running: Config,
    live: Arc<LiveSettings>,
    auth: SharedAuthenticator,
    rescans: mpsc::Sender<()>,
) {
    while let Some(Reload { config }) = reloads.recv().await {
        if let Some(config) = config {
            let checked = config.validate().map_err(|err| err.to_string()).and_then(|()| {
                let settings = config.auth.clone();
                Authenticator::load(&settings).map_err(|err| format!("cannot load the keys of [auth]: {err}"))
            });
            match checked {
                Ok(authenticator) => {
                    auth.store(Arc::new(authenticator));
                    live.apply(&config);
                    let (tick_ms, max_params_bytes, max_payload_bytes) =
                        (config.tick_ms, config.max_params_bytes, config.max_payload_bytes);
                    tracing::info!(tick_ms, max_params_bytes, max_payload_bytes, "live settings applied");
                    let pending = running.restart_only_changes(&config);
                    if !pending.is_empty() {
                        tracing::warn!(settings = ?pending, "changed settings take effect only after a restart");
                    }
                }
                Err(cause) => tracing::error!(%cause, "new configuration rejected; keeping the running one"),
            }
        }
        // A rescan already queued covers this request too.
        let _ = rescans.try_send(());
    }
}

/// Fetches the cluster's current plugin builds into `dir` before the first scan, waiting for
/// NATS at most `START_SYNC_TIME` (then the node serves the builds it has, and follows the
/// cluster's once it is reachable), or until `shutdown`.
async fn fetch_cluster_builds(
    cluster: &Cluster,
    dir: &std::path::Path,
    (registry, rollouts): (&Arc<PluginRegistry>, &Arc<Rollouts>),
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let fetch = cluster.fetch_builds(dir, registry, rollouts);
    tokio::select! {
        fetched = tokio::time::timeout(crate::cluster::START_SYNC_TIME, fetch) => match fetched {
            Ok(Ok(written)) => tracing::info!(plugins = ?written, "the cluster's current builds are here"),
            Ok(Err(err)) => tracing::warn!(cause = %err, "cannot fetch the cluster's builds; serving the ones here"),
            Err(_) => tracing::warn!("NATS did not answer in time; serving the builds here until it does"),
        },
        () = shutdown.as_mut() => {}
    }
}

/// This node's name in its cluster: `[cluster] node`, else the host name and the WebSocket
/// port (`HOST-PORT`, each character a node name may not hold made `-`).
fn node_name(config: &Config, listen: std::net::SocketAddr) -> String {
    if let Some(node) = &config.cluster.node {
        return node.clone();
    }
    let host = nix::unistd::gethostname().ok().and_then(|host| host.into_string().ok()).unwrap_or_default();
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).take(56).collect();
    format!("{host}-{}", listen.port())
}

/// The limits of the admin endpoint's and the publish API's clients.
fn http_limits(config: &Config) -> HttpLimits {
    HttpLimits {
        timeout: Duration::from_secs(config.http_timeout_secs),
        max_connections: config.http_max_connections,
        max_connections_per_ip: config.http_max_connections_per_ip,
    }
}

/// Builds the plugin host and an empty registry.
async fn plugin_registry(config: &Config) -> Result<PluginRegistry, ServerError> {
    let limits = sandbox_limits(config);
    let host = tokio::task::spawn_blocking(move || PluginHost::new(limits))
        .await
        .expect("building the plugin host does not panic")
        .map_err(ServerError::PluginHost)?;
    Ok(PluginRegistry::new(host).with_history(VersionHistory::new(&config.data_dir, config.rollouts.keep_versions)))
}

/// The limits every plugin instance runs under, from the configuration.
pub fn sandbox_limits(config: &Config) -> SandboxLimits {
    SandboxLimits {
        memory_bytes: config.plugin_memory_mib << 20,
        call_timeout: Duration::from_millis(config.plugin_timeout_ms),
        per_call_budget: Duration::from_micros(config.plugin_call_budget_us),
        max_instances: config.plugin_max_instances,
        max_table_elements: config.plugin_max_table_elements,
    }
}
