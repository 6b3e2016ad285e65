//! Shards: the worker threads that run plugins. Connections are spread over the shards by id;
//! a shard owns its connections' state (params, push counter, park state, outbound queue) and
//! is the only one to touch it, so the hot path takes no shared lock. Connection tasks talk to
//! their shard through a bounded channel of [`ShardCommand`]s.
//!
//! Each shard ticks every `tick_ms`, spread over [`PHASES`] phases of the interval: at each phase
//! it calls each plugin with that phase's due connections, in batches of at most [`CHUNK`]
//! calls, with a round of commands between two. An overrun skips ticks, it never piles them up.
//! Plugin calls block the shard's own thread, never the async runtime. The shard notices a newly
//! published plugin version at its next batch and builds a fresh instance for it; connection
//! state is untouched by the swap.
//!
//! ## Layout
//! - this file: the worker loop — commands, phases, chunks.
//! - `slot`: one plugin's instance and connections — batches, outcomes, fault replay.
//! - `conn`: one connection and the rules of its session (due, parked, un-parked).

mod conn;
mod reads;
mod slot;
mod throttle;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flume::RecvTimeoutError;

pub use self::slot::ShardSettings;
use self::slot::{DueCalls, PluginSlot, ShadowBudget};
use self::throttle::Throttle;
use crate::auth::Identity;
use crate::data::{ChangeSet, Snapshot};
use crate::outbound::OutboundQueue;
use crate::phase_clock::{PHASES, PhaseClock, PhaseLoad};
use crate::registry::PluginRegistry;
use crate::wall_clock::now_ms;

/// Commands a shard's channel holds at most; a connection task sending to a full channel waits,
/// which stops it reading from its socket until the shard catches up.
const COMMAND_CAPACITY: usize = 4096;

/// Commands a shard handles before it runs the pushes they made due.
const COMMANDS_PER_ROUND: usize = 1024;

/// Calls a phase's work is run in at most, with a round of commands between two chunks: new
/// params wait behind a chunk of a phase, not behind a whole phase.
const CHUNK: usize = 128;

/// A message from a connection task to its shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// A connection was accepted.
    Open {
        /// Identifies it from now on; its shard is `conn_id % shards`.
        conn_id: u64,
        /// The plugin serving it, for life: the slot it joins.
        plugin: Arc<str>,
        /// Where its frames go.
        outbound: Arc<OutboundQueue>,
        /// Its params, if the URL carried them (validated).
        params: Option<String>,
        /// Who its client is, if it presented a valid token.
        identity: Option<Arc<Identity>>,
    },
    /// The client refreshed its token (verified, for the same subject).
    Identity {
        /// Whose token it is.
        conn_id: u64,
        /// What the new token says.
        identity: Arc<Identity>,
    },
    /// The client sent new, validated params.
    Params {
        /// Whose params they are.
        conn_id: u64,
        /// A JSON object within `max_params_bytes`, as the client sent it.
        params: String,
    },
    /// The connection closed.
    Close {
        /// The connection to forget; its shard tells the plugin instance at the next batch.
        conn_id: u64,
    },
    /// Data was published: the connections whose last call read a changed key are due.
    Data(Arc<ChangeSet>),
}

/// The shards, and how to reach the one that owns a connection.
#[derive(Debug)]
pub struct Shards {
    /// One sender per shard, indexed by shard number.
    senders: Vec<flume::Sender<ShardCommand>>,
    /// The worker threads; they exit when every sender is dropped.
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Starts `count` worker threads.
    pub fn spawn(count: usize, settings: ShardSettings, registry: Arc<PluginRegistry>) -> std::io::Result<Shards> {
        let mut senders = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let (sender, receiver) = flume::bounded(COMMAND_CAPACITY);
            let shard = Shard::new(settings.clone(), registry.clone());
            let thread = std::thread::Builder::new()
                .name(format!("wasmpush-shard-{index}"))
                .spawn(move || shard.run(receiver))?;
            senders.push(sender);
            threads.push(thread);
        }
        Ok(Shards { senders, threads })
    }

    /// The channels of every shard, to tell them all of a data change.
    pub fn senders(&self) -> Vec<flume::Sender<ShardCommand>> {
        self.senders.clone()
    }

    /// The number of the shard that owns connection `conn_id`.
    pub fn shard_of(&self, conn_id: u64) -> usize {
        (conn_id % self.senders.len() as u64) as usize
    }

    /// The channel of the shard that owns connection `conn_id`.
    pub fn sender(&self, conn_id: u64) -> flume::Sender<ShardCommand> {
        self.senders[self.shard_of(conn_id)].clone()
    }

    /// The number of a worker thread that ended while the channels were open (it panicked), if
    /// one did: its connections get no more pushes.
    pub fn dead(&self) -> Option<usize> {
        self.threads.iter().position(JoinHandle::is_finished)
    }

    /// Closes the channels and waits for the worker threads to finish.
    pub fn join(self) {
        drop(self.senders);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
    }
}

/// One worker's state.
struct Shard {
    /// Tick interval and limits.
    settings: ShardSettings,
    /// Where plugin versions are published.
    registry: Arc<PluginRegistry>,
    /// Per plugin: its instance and its connections.
    slots: HashMap<Arc<str>, PluginSlot>,
    /// The plugin of each connection, to find its slot.
    plugin_of: HashMap<u64, Arc<str>>,
    /// Connections per phase: which phase a new one joins, which phases to wake for.
    load: PhaseLoad,
    /// The data as of the last change set applied; a new plugin slot starts from it.
    snapshot: Arc<Snapshot>,
    /// What shadow calls may spend.
    shadow: ShadowBudget,
}

impl Shard {
    fn new(settings: ShardSettings, registry: Arc<PluginRegistry>) -> Self {
        let snapshot = settings.data.snapshot();
        let shadow = ShadowBudget::new(settings.shadow_budget_pct);
        Shard {
            settings,
            registry,
            slots: HashMap::new(),
            plugin_of: HashMap::new(),
            load: PhaseLoad::default(),
            snapshot,
            shadow,
        }
    }

    /// The worker loop: commands as they come, and at each phase that holds connections (every
    /// `tick / PHASES` when all do; see [`PhaseLoad`]) a batch per plugin with the connections of
    /// that phase. A shard without connections only waits.
    ///
    /// Phases keep to a fixed grid: after a stall the following phases run at up to twice the
    /// usual rate until they are back on it, so a stall of a few phases costs no pushes and no
    /// connection's cadence drifts, and catching up is no burst that delays everything else. A
    /// phase runs in chunks with a round of commands between two, so params updates wait behind
    /// a chunk, not a phase. Behind by more than a whole tick, the grid restarts from now: under
    /// sustained overload the debt is dropped and every connection slows down alike rather than
    /// some missing ticks.
    fn run(mut self, commands: flume::Receiver<ShardCommand>) {
        let mut clock = PhaseClock::starting(Instant::now(), self.settings.live.tick());
        let mut phase = 0;
        let mut behind = OverrunLog::default();
        let mut work = PhaseWork::default();
        loop {
            let now = Instant::now();
            if work.is_empty() && !self.slots.is_empty() && now >= clock.next_run() {
                let lateness = clock.lateness(now);
                self.settings.metrics.tick_lateness.observe(lateness.as_secs_f64());
                // Late by a whole phase: shadow work waits until the shard is back on time.
                self.shadow.late = lateness >= self.settings.live.tick() / PHASES;
                let metrics = &self.settings.metrics;
                if self.shadow.late {
                    metrics.phases_late.inc()
                } else {
                    metrics.phases_on_time.inc()
                };
                self.push_due_now();
                work = self.due_in_phase(phase);
                let steps = self.load.steps_to_next(phase);
                phase = (phase + steps) % PHASES;
                // Read every time: `wasmpush reload` may have changed it.
                if let Some(behind_by) = clock.advance(now, self.settings.live.tick(), steps) {
                    behind.record(behind_by, now);
                }
            }
            if let Some((plugin, due)) = work.next_chunk()
                && let Some(slot) = self.slots.get_mut(&plugin)
            {
                slot.run(&due, now_ms(), &mut self.shadow);
            }
            self.release_deferred();
            // A round of commands between two chunks: only what is queued while a phase is
            // under way, else waiting until the next phase or deferred data call is due.
            let received = if self.slots.is_empty() {
                // No connection to tick: sleep until a command comes instead of waking every
                // phase, and count the phases from then (an idle wait is not lateness).
                work = PhaseWork::default();
                let received = commands.recv().map_err(|_| RecvTimeoutError::Disconnected);
                clock = PhaseClock::starting(Instant::now(), self.settings.live.tick());
                received
            } else if work.is_empty() {
                let deferred = self.slots.values().filter_map(PluginSlot::next_deferred).min();
                commands.recv_deadline(deferred.map_or(clock.next_run(), |at| at.min(clock.next_run())))
            } else {
                commands.recv_deadline(Instant::now())
            };
            match received {
                Ok(command) => {
                    self.handle(command);
                    for command in commands.try_iter().take(COMMANDS_PER_ROUND) {
                        self.handle(command);
                    }
                    self.push_due_now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, command: ShardCommand) {
        match command {
            ShardCommand::Open { conn_id, plugin, outbound, params, identity } => {
                let slot = self.slots.entry(plugin.clone()).or_insert_with(|| {
                    PluginSlot::new(plugin.clone(), self.settings.clone(), self.registry.clone(), self.snapshot.clone())
                });
                slot.open(conn_id, self.load.join(), outbound, params, identity);
                self.plugin_of.insert(conn_id, plugin);
            }
            ShardCommand::Identity { conn_id, identity } => {
                let Some(slot) = self.plugin_of.get(&conn_id).and_then(|p| self.slots.get_mut(p)) else { return };
                slot.set_identity(conn_id, identity);
            }
            ShardCommand::Params { conn_id, params } => {
                let Some(slot) = self.plugin_of.get(&conn_id).and_then(|p| self.slots.get_mut(p)) else { return };
                slot.set_params(conn_id, params);
            }
            ShardCommand::Data(changes) => {
                let now = Instant::now();
                self.snapshot = changes.snapshot.clone();
                self.slots.values_mut().for_each(|slot| slot.data_changed(&changes, now));
            }
            ShardCommand::Close { conn_id } => {
                let Some(plugin) = self.plugin_of.remove(&conn_id) else { return };
                if let Some(slot) = self.slots.get_mut(&plugin) {
                    if let Some(phase) = slot.close(conn_id) {
                        self.load.leave(phase);
                    }
                    if slot.is_empty() {
                        self.slots.remove(&plugin);
                    }
                }
            }
        }
    }

    /// Makes the data calls whose coalescing time is over due at once, and runs them.
    fn release_deferred(&mut self) {
        let now = Instant::now();
        let mut released = false;
        for slot in self.slots.values_mut() {
            if slot.next_deferred().is_some_and(|at| at <= now) {
                slot.release_deferred(now);
                released = true;
            }
        }
        if released {
            self.push_due_now();
        }
    }

    /// Pushes to the connections whose params just arrived or whose data changed, in batches of
    /// at most [`CHUNK`].
    fn push_due_now(&mut self) {
        let now_ms = now_ms();
        for slot in self.slots.values_mut() {
            for chunk in slot.take_due_now().chunks(CHUNK) {
                slot.run(chunk, now_ms, &mut self.shadow);
            }
        }
    }

    /// The regular tick of one phase, by plugin: every connection of the phase that is due (has
    /// params, and is not parked or its error park has expired).
    fn due_in_phase(&mut self, phase: u32) -> PhaseWork {
        let (error_reset, now) = (self.settings.live.error_reset(), Instant::now());
        let by_plugin =
            self.slots.iter_mut().map(|(plugin, slot)| (plugin.clone(), slot.due_in_phase(phase, error_reset, now)));
        PhaseWork(by_plugin.collect())
    }
}

/// What is left of a phase's tick: the due connections of each plugin, run [`CHUNK`] at a time.
#[derive(Debug, Default)]
struct PhaseWork(Vec<(Arc<str>, DueCalls)>);

impl PhaseWork {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next batch to run: up to [`CHUNK`] due connections of one plugin. A plugin with none
    /// due still gets its (empty) batch: running it follows the registry, which is how a plugin
    /// deployed again un-parks the connections its removal parked.
    fn next_chunk(&mut self) -> Option<(Arc<str>, DueCalls)> {
        let (plugin, due) = self.0.last_mut()?;
        if due.len() > CHUNK {
            return Some((plugin.clone(), due.split_off(due.len() - CHUNK)));
        }
        self.0.pop()
    }
}

/// How often an overloaded shard says so in the log.
const OVERRUN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs that a shard fell a whole tick behind (and dropped that debt) at most once per
/// [`OVERRUN_LOG_INTERVAL`], with how often and by how much at worst since the last line: under
/// sustained overload it happens every few phases, and a line each time would flood the log.
#[derive(Debug)]
struct OverrunLog {
    /// Holds lines to one per interval and counts the overruns in between.
    throttle: Throttle,
    /// The furthest behind the shard was since the last line.
    worst: Duration,
}

impl Default for OverrunLog {
    fn default() -> Self {
        OverrunLog { throttle: Throttle::new(OVERRUN_LOG_INTERVAL), worst: Duration::ZERO }
    }
}

impl OverrunLog {
    /// Counts one time the shard was `behind_by` behind its schedule (over a whole tick) at
    /// `now`; returns whether a line was written.
    fn record(&mut self, behind_by: Duration, now: Instant) -> bool {
        self.worst = self.worst.max(behind_by);
        let Some(held) = self.throttle.ready(now) else { return false };
        // Taken outside the macro: a disabled level evaluates none of its fields.
        let worst = std::mem::take(&mut self.worst);
        tracing::warn!(
            times = held + 1,
            worst_ms = worst.as_millis() as u64,
            "shard fell a whole tick behind; its phases restart from now"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Trigger;

    #[test]
    fn a_worker_that_died_is_found() {
        let (sender, _receiver) = flume::bounded(1);
        let alive = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(5)));
        let dying = std::thread::spawn(|| panic!("a shard bug"));
        while !dying.is_finished() {
            std::thread::yield_now();
        }
        let shards = Shards { senders: vec![sender.clone(), sender], threads: vec![alive, dying] };
        assert_eq!(shards.dead(), Some(1));
    }

    #[test]
    fn an_overrun_is_logged_once_per_interval_with_the_worst_since() {
        let mut log = OverrunLog::default();
        let start = Instant::now();
        assert!(log.record(Duration::from_millis(250), start), "the first overrun is logged at once");
        assert!(!log.record(Duration::from_millis(400), start + Duration::from_secs(1)));
        assert!(!log.record(Duration::from_millis(300), start + Duration::from_secs(2)));
        assert_eq!(log.worst, Duration::from_millis(400), "the worst is kept until the next line");
        assert!(log.record(Duration::from_millis(210), start + OVERRUN_LOG_INTERVAL));
        assert_eq!(log.worst, Duration::ZERO);
    }

    #[test]
    fn a_phase_runs_in_chunks_that_cover_every_due_connection_once() {
        let due = |range: std::ops::Range<u64>| range.map(|id| (id, Trigger::Tick)).collect::<Vec<_>>();
        let mut work = PhaseWork(vec![
            (Arc::from("a"), due(0..300)),
            (Arc::from("b"), Vec::new()),
            (Arc::from("c"), due(300..310)),
        ]);
        let (mut seen, mut plugins) = (Vec::new(), Vec::new());
        while let Some((plugin, chunk)) = work.next_chunk() {
            assert!(chunk.len() <= CHUNK, "{} calls", chunk.len());
            let expected = match chunk.first() {
                Some((id, _)) if *id < 300 => "a",
                Some(_) => "c",
                None => "b",
            };
            assert_eq!(&*plugin, expected);
            plugins.push(plugin);
            seen.extend(chunk.into_iter().map(|(id, _)| id));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..310).collect::<Vec<_>>());
        assert!(plugins.iter().any(|p| &**p == "b"), "a plugin with nothing due still gets its batch");
        assert!(work.is_empty());
    }
}
