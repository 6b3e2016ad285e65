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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use arc_swap::ArcSwap;
use std::pin::Pin;
use tokio::net::TcpListener;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{self, Shared};
use crate::admin::AdminState;
use crate::admission::Admission;
use crate::auth::{Authenticator, KeyError, SharedAuthenticator};
use crate::config::{Config, ConfigError};
use crate::connection::ConnectionSettings;
use crate::data::{Change, ChangeSet, DataError, DataLimits, DataView, DurableStore, Snapshot};
use crate::health::Health;
use crate::live::LiveSettings;
use crate::metrics::Metrics;
use crate::plain_http;
use crate::plugin::{HostError, PluginHost, SandboxLimits};
use crate::registry::PluginRegistry;
use crate::reload::Reloader;
use crate::services::Services;
use crate::shard::{ShardCommand, ShardSettings, Shards};
use crate::watcher::{CHANGE_CAPACITY, PluginWatcher};

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
    /// The data store could not be opened.
    #[error("cannot open the data store in {path}: {source}")]
    Data {
        /// `data_dir`.
        path: std::path::PathBuf,
        /// The cause.
        source: DataError,
    },
}

/// How often the server checks that every shard thread is alive.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

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

/// What a restart's new engine awaits before it opens the data store: the old engine letting go,
/// or why it did not.
pub type TakeOver = Pin<Box<dyn Future<Output = Result<Released, String>> + Send>>;

/// What a restart's new engine gets once the old engine has let go.
pub struct Released {
    /// Where to send each batch published from then on.
    pub forward: Forward,
    /// Tells the old engine that this one serves. Until then the old engine keeps its
    /// connections, and serves on if this one fails; from then on it drains them.
    pub serving: Box<dyn FnOnce() + Send>,
}

/// Where a restart's new engine sends each batch it publishes, for the old engine still draining
/// its connections: their clients keep getting data pushes until they reconnect. It must not
/// block, nor do the work of forwarding (it runs on the data writer's thread).
pub type Forward = Box<dyn Fn(&Arc<ChangeSet>) + Send>;

/// A restart's new engine asking this one to let go.
pub struct HandOver {
    /// Answered once this engine has stopped accepting and closed its admin endpoint, publish
    /// API and data store.
    pub released: oneshot::Sender<()>,
    /// What became of the new engine then; dropped unanswered if it failed.
    pub successor: oneshot::Receiver<Successor>,
}

/// A restart's new engine, after the old one let go.
pub enum Successor {
    /// It serves: the old engine closes its connections with 1012 over `drain_secs`, applying
    /// the batches the new engine forwards (through this channel) meanwhile.
    Serving(mpsc::Receiver<Vec<Change>>),
    /// It failed before it served (for this reason): the old engine opens its data store again
    /// and serves on.
    Failed(String),
}

/// What a restart needs of the engine, besides running it.
pub struct Lifecycle {
    /// Called once the engine serves: the data is loaded, the first plugin scan has ended and the
    /// accept loop runs (what systemd's `READY=1` must mean).
    pub on_ready: Box<dyn FnOnce() + Send>,
    /// A restart's new engine: awaited after the first plugin scan and before the data store
    /// opens; it asks the old engine to let go of the data store and stop accepting.
    pub take_over: Option<TakeOver>,
    /// Requests to hand this engine over to a restart's new one (see [`HandOver`]).
    pub hand_over: Option<mpsc::Receiver<HandOver>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { on_ready: Box::new(|| {}), take_over: None, hand_over: None }
    }
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
    // The admin endpoint answers from here on: `/healthz` says 503 until the engine serves.
    let health = Arc::new(Health::default());
    let admin_state = AdminState {
        registry: registry.clone(),
        metrics: metrics.clone(),
        listen: listener.local_addr().map_err(ServerError::Listener)?,
        started,
        pushes_per_sec: Default::default(),
        health: health.clone(),
        token: config.admin_token.as_deref().map(Arc::from),
    };
    let admin = admin.map(|admin| admin.into_std().map(|admin| (admin, admin_state)));
    let publish = publish.map(|publish| publish.into_std().map(|publish| (publish, config.publish_token.clone())));
    let mut services = Services::new(
        admin.transpose().map_err(ServerError::Listener)?,
        publish.transpose().map_err(ServerError::Listener)?,
    );
    services.start_admin().map_err(ServerError::Listener)?;
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
    let view = DataView::new(snapshot);
    let (rescans, rescan_requests) = mpsc::channel(1);
    tokio::spawn(apply_reloads(reloads, config.clone(), live.clone(), auth.clone(), rescans));
    tokio::spawn(reloader.run(changed, overflowed, rescan_requests, reloading.clone()));
    let settings = ShardSettings { live: live.clone(), metrics: metrics.clone(), data: view.clone() };
    let shards = Shards::spawn(config.worker_count(), settings, registry.clone()).map_err(ServerError::Workers)?;
    let announce = announce_to(&shards, metrics.clone(), view.clone());
    let announce = move |changes: Arc<ChangeSet>| {
        if let Some(forward) = &forward {
            forward(&changes);
        }
        announce(changes);
    };
    services.start_data(durable, &view, data_limits(&config), announce).map_err(ServerError::Workers)?;
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
        let durable = match open_data(&shared.config).await {
            Ok((durable, _)) => durable,
            Err(err) => {
                tracing::error!(cause = %err, "cannot serve on without the data store: stopping");
                failure = Some(err);
                break None;
            }
        };
        let announce = announce_to(&shared.shards, shared.metrics.clone(), view.clone());
        services.start_data(durable, &view, data_limits(&shared.config), announce).map_err(ServerError::Workers)?;
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

/// Why the accept loop stopped.
enum Stopped {
    /// The engine is stopping.
    Shutdown,
    /// A restart's new engine asks this one to let go.
    HandOver(HandOver),
}

/// What the accept loop serves with.
struct Accepting<'a> {
    listener: &'a TcpListener,
    shared: &'a Arc<Shared>,
    tasks: &'a TaskTracker,
    cancel: &'a CancellationToken,
    health: &'a Health,
}

impl Accepting<'_> {
    /// Accepts connections until the engine stops or is handed over; an error if a shard thread
    /// died.
    async fn until_stopped(
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
                            self.tasks.spawn(accept::accept(stream, admitted, self.shared.clone(), self.cancel.clone()));
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

/// Opens the data store in `data_dir` and reads it into memory.
async fn open_data(config: &Config) -> Result<(DurableStore, Snapshot), ServerError> {
    let dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || DurableStore::open(&dir))
        .await
        .expect("opening the data store does not panic")
        .map_err(|source| ServerError::Data { path: config.data_dir.clone(), source })
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

/// Builds the plugin host and an empty registry.
async fn plugin_registry(config: &Config) -> Result<PluginRegistry, ServerError> {
    let limits = sandbox_limits(config);
    let host = tokio::task::spawn_blocking(move || PluginHost::new(limits))
        .await
        .expect("building the plugin host does not panic")
        .map_err(ServerError::PluginHost)?;
    Ok(PluginRegistry::new(host))
}

/// The data store's limits, from the configuration.
fn data_limits(config: &Config) -> DataLimits {
    DataLimits {
        max_buckets: config.max_buckets,
        max_key_bytes: config.max_key_bytes,
        max_value_bytes: config.max_value_bytes,
        max_data_bytes: config.max_data_mib << 20,
        max_batch_keys: config.max_batch_keys,
    }
}

/// Applies a batch the new engine forwarded to this draining one, in memory, and announces it to
/// the shards. A batch that breaks a name or value rule is dropped whole.
fn follow_batch(view: &DataView, limits: &DataLimits, changes: &[Change], announce: &impl Fn(Arc<ChangeSet>)) {
    match changes.iter().map(|change| limits.check(change)).collect::<Result<Vec<_>, _>>() {
        Ok(changes) => {
            if let Some(changed) = view.follow(&changes) {
                announce(changed);
            }
        }
        Err(err) => tracing::warn!(cause = %err, "a batch forwarded by the new engine was refused"),
    }
}

/// What the data writer does with each published change: count it, and tell every shard (which
/// waits while a shard's channel is full: a change is never dropped).
fn announce_to(shards: &Shards, metrics: Arc<Metrics>, view: DataView) -> impl Fn(Arc<ChangeSet>) + Send + 'static {
    let senders = shards.senders();
    let measure = move |metrics: &Metrics| {
        let snapshot = view.snapshot();
        metrics.data_keys.set(snapshot.key_count() as i64);
        metrics.data_bytes.set(snapshot.bytes() as i64);
    };
    measure(&metrics);
    move |changes| {
        metrics.data_updates.inc_by(changes.keys.len() as u64);
        measure(&metrics);
        for shard in &senders {
            let _ = shard.send(ShardCommand::Data(changes.clone()));
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn a_forwarded_batch_is_checked_as_a_published_one_and_refused_whole() {
        let (view, limits) = (DataView::default(), data_limits(&Config::default()));
        let announced = Mutex::new(Vec::new());
        let announce = |set: Arc<ChangeSet>| announced.lock().unwrap().push(set.changes());
        let good = Change::new("prices", "AAPL", Some("{ \"price\" : 1 }"));
        for bad in [Change::new("bad/name", "k", Some("1")), Change::new("prices", "MSFT", Some("{oops"))] {
            follow_batch(&view, &limits, &[good.clone(), bad], &announce);
        }
        assert_eq!(view.snapshot().key_count(), 0, "nothing of a refused batch is applied");
        assert!(announced.lock().unwrap().is_empty());
        follow_batch(&view, &limits, &[good], &announce);
        assert_eq!(view.snapshot().get("prices", "AAPL").map(|entry| &*entry.json), Some(r#"{"price":1}"#));
        assert_eq!(*announced.lock().unwrap(), [vec![Change::new("prices", "AAPL", Some(r#"{"price":1}"#))]]);
    }
}
