//! The operator console's live feed (the page and its stream are served by the admin endpoint,
//! `admin::console`): a [`Console`] samples the engine once a second into an [`Update`] —
//! connections, pushes, calls, errors, traps, timeouts, call time, missed ticks, memory, every
//! plugin, every bucket, the publish API, new log lines and, on a node of a cluster, the nodes —
//! and keeps the engine-wide figures of the last [`HISTORY`] seconds for the charts.
//!
//! Sampling reads counters the engine keeps anyway (a few hundred relaxed loads and one read of
//! `/proc/self/status` a second). Everything a console costs beyond that — the cluster's node
//! list, the JSON, the stream — happens only while one is open.
//!
//! ## Layout
//! - `sample`: what an update holds, and the sampler that takes differences between readings.

mod sample;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use self::sample::{NodeRow, Sampler};
pub use self::sample::{Point, Sources, Update};
use crate::cluster::Cluster;
use crate::events::Event;
use crate::wall_clock::unix_ms;

/// Seconds of engine-wide figures kept for the charts: ten minutes.
pub const HISTORY: usize = 600;

/// Log lines a console is sent when it opens.
const EVENTS_AT_OPEN: usize = 200;

/// Updates a console may fall behind by before it skips to the newest.
const BACKLOG: usize = 8;

/// How long a read of the cluster's node list may hold a second's update.
const NODES_WAIT: Duration = Duration::from_millis(800);

/// The live feed.
#[derive(Debug)]
pub struct Console {
    sources: Sources,
    /// The engine-wide figures of the last [`HISTORY`] seconds, oldest first.
    history: Mutex<VecDeque<Point>>,
    /// The last update, for a console that opens now.
    latest: Mutex<Update>,
    /// Each update as JSON, to every open console.
    feed: broadcast::Sender<Arc<str>>,
    /// Cancelled when the current run of the sampler stops (the engine stops, or lets go for a
    /// restart): the streams opened during it end.
    stopped: Mutex<CancellationToken>,
}

/// What a console is sent when it opens.
#[derive(Debug, Serialize)]
pub struct Opening<'a> {
    /// The engine-wide figures of the last ten minutes, oldest first.
    pub history: Vec<Point>,
    /// The last update.
    pub latest: &'a Update,
    /// The latest log lines, oldest first.
    pub events: Vec<Event>,
}

impl Console {
    /// A console feed reading `sources`.
    pub fn new(sources: Sources) -> Arc<Console> {
        let (feed, _) = broadcast::channel(BACKLOG);
        Arc::new(Console {
            sources,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            latest: Mutex::default(),
            feed,
            stopped: Mutex::default(),
        })
    }

    /// Samples once a second until `shutdown`: keeps the history, sets `pushes_per_sec`, and
    /// sends each update to the open consoles, with `degraded` (why the engine is, if it is) and,
    /// on a node of `cluster`, every other second the nodes.
    pub async fn run(
        self: Arc<Self>,
        pushes_per_sec: Arc<AtomicU64>,
        cluster: Option<Cluster>,
        degraded: impl Fn() -> Option<String> + Send,
        shutdown: CancellationToken,
    ) {
        let mut sampler = Sampler::starting(&self.sources);
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every_second.tick().await;
        let mut nodes: Option<Vec<NodeRow>> = None;
        let stopped = CancellationToken::new();
        *self.stopped.lock().unwrap_or_else(|poison| poison.into_inner()) = stopped.clone();
        let _stopped = stopped.drop_guard();
        for second in 0u64.. {
            tokio::select! {
                _ = every_second.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let started = Instant::now();
            let mut update = sampler.next(&self.sources, unix_ms(SystemTime::now()));
            pushes_per_sec.store(update.point.pushes, Ordering::Relaxed);
            self.keep(update.point);
            let mut spent = started.elapsed();
            if self.feed.receiver_count() > 0 {
                if let Some(cluster) = &cluster
                    && second.is_multiple_of(2)
                {
                    // A node list NATS cannot give now is shown as last read.
                    if let Ok(Ok(listed)) = tokio::time::timeout(NODES_WAIT, cluster.nodes()).await {
                        nodes = Some(listed.into_iter().map(NodeRow::of).collect());
                    }
                }
                let started = Instant::now();
                update.nodes = nodes.clone();
                update.degraded = degraded();
                let json = serde_json::to_string(&update).expect("an update serializes");
                let _ = self.feed.send(Arc::from(json));
                spent += started.elapsed();
            }
            *self.latest.lock().unwrap_or_else(|poison| poison.into_inner()) = update;
            // The time spent working, not waiting for NATS.
            self.sources.metrics.console_sampling_us.inc_by(spent.as_micros() as u64);
        }
    }

    /// Keeps `point` in the history.
    fn keep(&self, point: Point) {
        let mut history = self.history.lock().unwrap_or_else(|poison| poison.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(point);
    }

    /// Opens a console: what it is shown first (JSON), the updates from now on, and a token
    /// cancelled when they stop (the sampler's run ends).
    pub fn open(&self) -> (String, broadcast::Receiver<Arc<str>>, CancellationToken) {
        let updates = self.feed.subscribe();
        let history = self.history.lock().unwrap_or_else(|poison| poison.into_inner()).iter().copied().collect();
        let mut events = crate::events::recent().since(0);
        events.drain(..events.len().saturating_sub(EVENTS_AT_OPEN));
        let latest = self.latest.lock().unwrap_or_else(|poison| poison.into_inner());
        let opening = Opening { history, latest: &latest, events };
        let stopped = self.stopped.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        (serde_json::to_string(&opening).expect("an opening serializes"), updates, stopped)
    }
}
