//! Shards: the worker threads that run plugins. Connections are spread over the shards by id;
//! a shard owns its connections' state (params, push counter, park state, outbound queue) and
//! is the only one to touch it, so the hot path takes no shared lock. Connection tasks talk to
//! their shard through a bounded channel of [`ShardCommand`]s.
//!
//! Each shard ticks every `tick_ms`: one batch call per plugin carrying every due connection.
//! An overrun skips ticks, it never piles them up. Plugin calls block the shard's own thread,
//! never the async runtime. The shard notices a newly published plugin version at its next batch
//! and builds a fresh instance for it; connection state is untouched by the swap.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flume::RecvTimeoutError;

use crate::live::LiveSettings;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundQueue};
use crate::phase_clock::{PHASES, PhaseClock, PhaseLoad};
use crate::plugin::{Calls, Outcome, Outcomes, PluginFault, PluginInstance, PluginVersion, Trigger};
use crate::protocol::{ClientError, PLUGIN_ERROR, error_frame};
use crate::registry::PluginRegistry;

/// Commands a shard's channel holds at most; a connection task sending to a full channel waits,
/// which stops it reading from its socket until the shard catches up.
const COMMAND_CAPACITY: usize = 4096;

/// Commands a shard handles before it runs the pushes they made due.
const COMMANDS_PER_ROUND: usize = 1024;

/// Calls a phase's work is run in at most, with a round of commands between two chunks: new
/// params wait behind a chunk of a phase, not behind a whole phase.
const CHUNK: usize = 128;

/// Closed connection ids a plugin slot keeps for its instance before it drops the instance
/// instead (a new instance has nothing to forget).
const MAX_PENDING_CLOSED: usize = 4096;

/// A message from a connection task to its shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// A connection was accepted.
    Open {
        /// Its id.
        conn_id: u64,
        /// The plugin serving it.
        plugin: Arc<str>,
        /// Where its frames go.
        outbound: Arc<OutboundQueue>,
        /// Its params, if the URL carried them (validated).
        params: Option<String>,
    },
    /// The client sent new, validated params.
    Params {
        /// The connection.
        conn_id: u64,
        /// The params JSON object.
        params: String,
    },
    /// The connection closed.
    Close {
        /// The connection.
        conn_id: u64,
    },
}

/// What a shard needs to know.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// The tick interval and the payload limit, as `wasmpush reload` last set them.
    pub live: Arc<LiveSettings>,
    /// Where pushes, outcomes, call durations and tick lateness are counted.
    pub metrics: Arc<Metrics>,
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

    /// The channel of the shard that owns connection `conn_id`.
    pub fn sender(&self, conn_id: u64) -> flume::Sender<ShardCommand> {
        self.senders[(conn_id % self.senders.len() as u64) as usize].clone()
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
    /// Source of instance generations: each new instance gets the next one.
    generations: u64,
    /// Connections per phase: which phase a new one joins, which phases to wake for.
    load: PhaseLoad,
}

/// One plugin's instance and connections within a shard.
struct PluginSlot {
    /// The plugin's name.
    name: Arc<str>,
    /// The live instance, built lazily from the served version; `None` after a fault or a swap.
    instance: Option<PluginInstance>,
    /// The generation of `instance`; a connection whose `params_seen` differs is sent its params.
    generation: u64,
    /// The connections served by this plugin.
    conns: HashMap<u64, Conn>,
    /// The ids of its connections by phase, so a phase's run reads only its own. A closed
    /// connection's id is dropped when its phase next runs (ids are never reused); a phase left
    /// without connections is not run, so its stale ids stay until it has some again, no more of
    /// them than it ever held.
    members: Vec<Vec<u64>>,
    /// Connections that closed since the instance's last batch.
    closed: Vec<u64>,
    /// Connections due for an immediate push (new params), in arrival order.
    due_now: DueCalls,
    /// Whether the plugin was missing at the last batch (its connections were parked).
    unavailable: bool,
}

/// One connection's state, owned by its shard.
struct Conn {
    /// The slot of the tick interval in which it is ticked (`0..PHASES`).
    phase: u32,
    /// Where its frames go.
    outbound: Arc<OutboundQueue>,
    /// The params JSON object; `None` until the client sends one (no pushes until then).
    params: Option<Arc<str>>,
    /// Data pushes made so far; the next push has `seq = pushes + 1`.
    pushes: u64,
    /// Why the connection gets no ticks, if it does not.
    parked: Option<Park>,
    /// The instance generation that has seen the current params; 0 when none has.
    params_seen: u64,
}

/// Why a connection is parked. New params un-park it; a redeploy un-parks `Unavailable`;
/// `error_reset_secs`, when set, retries an `Error` after that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    /// The plugin returned an error (or a fault hit this connection), at `since`.
    Error {
        /// When the error frame was sent.
        since: Instant,
    },
    /// The plugin was removed.
    Unavailable,
}

impl Park {
    /// Parked for an error, from now.
    fn error() -> Park {
        Park::Error { since: Instant::now() }
    }
}

impl Shard {
    fn new(settings: ShardSettings, registry: Arc<PluginRegistry>) -> Self {
        Shard {
            settings,
            registry,
            slots: HashMap::new(),
            plugin_of: HashMap::new(),
            generations: 0,
            load: PhaseLoad::default(),
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
                self.settings.metrics.tick_lateness.observe(clock.lateness(now).as_secs_f64());
                self.push_due_now();
                work = self.due_in_phase(phase);
                let steps = self.load.steps_to_next(phase);
                phase = (phase + steps) % PHASES;
                // Read every time: `wasmpush reload` may have changed it.
                if let Some(behind_by) = clock.advance(now, self.settings.live.tick(), steps) {
                    behind.record(behind_by);
                }
            }
            if let Some((plugin, due)) = work.next_chunk()
                && let Some(slot) = self.slots.get_mut(&plugin)
            {
                slot.run(&due, unix_ms(), &self.settings, &self.registry, &mut self.generations);
            }
            // A round of commands between two chunks: only what is queued while a phase is
            // under way, else waiting until the next phase is due.
            let received = if self.slots.is_empty() {
                // No connection to tick: sleep until a command comes instead of waking every
                // phase, and count the phases from then (an idle wait is not lateness).
                work = PhaseWork::default();
                let received = commands.recv().map_err(|_| RecvTimeoutError::Disconnected);
                clock = PhaseClock::starting(Instant::now(), self.settings.live.tick());
                received
            } else if work.is_empty() {
                commands.recv_deadline(clock.next_run())
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
            ShardCommand::Open { conn_id, plugin, outbound, params } => {
                let slot = self.slots.entry(plugin.clone()).or_insert_with(|| PluginSlot::new(plugin.clone()));
                let has_params = params.is_some();
                let phase = self.load.join();
                slot.members[phase as usize].push(conn_id);
                slot.conns.insert(
                    conn_id,
                    Conn { phase, outbound, params: params.map(Arc::from), pushes: 0, parked: None, params_seen: 0 },
                );
                if has_params {
                    slot.due_now.push((conn_id, Trigger::Open));
                }
                self.plugin_of.insert(conn_id, plugin);
            }
            ShardCommand::Params { conn_id, params } => {
                let Some(slot) = self.plugin_of.get(&conn_id).and_then(|p| self.slots.get_mut(p)) else { return };
                if let Some(conn) = slot.conns.get_mut(&conn_id) {
                    conn.params = Some(Arc::from(params));
                    conn.params_seen = 0;
                    conn.parked = None;
                    slot.due_now.push((conn_id, Trigger::Message));
                }
            }
            ShardCommand::Close { conn_id } => {
                let Some(plugin) = self.plugin_of.remove(&conn_id) else { return };
                if let Some(slot) = self.slots.get_mut(&plugin) {
                    if let Some(phase) = slot.close(conn_id) {
                        self.load.leave(phase);
                    }
                    if slot.conns.is_empty() {
                        self.slots.remove(&plugin);
                    }
                }
            }
        }
    }

    /// Pushes to the connections whose params just arrived.
    fn push_due_now(&mut self) {
        let now_ms = unix_ms();
        for slot in self.slots.values_mut() {
            if slot.due_now.is_empty() {
                continue;
            }
            let mut due = std::mem::take(&mut slot.due_now);
            // A connection that sent params twice in one round is pushed once, for its latest.
            let mut seen = std::collections::HashSet::with_capacity(due.len());
            due.retain(|(conn_id, _)| seen.insert(*conn_id));
            slot.run(&due, now_ms, &self.settings, &self.registry, &mut self.generations);
        }
    }

    /// The regular tick of one phase, by plugin: every connection of the phase that is due (has
    /// params, and is not parked or its error park has expired).
    fn due_in_phase(&mut self, phase: u32) -> PhaseWork {
        let error_reset = self.settings.live.error_reset();
        let now = Instant::now();
        let by_plugin = self.slots.iter_mut().map(|(plugin, slot)| {
            let mut due = Vec::new();
            // Closed connections leave their phase's list here, not on close.
            slot.members[phase as usize].retain(|conn_id| {
                let Some(conn) = slot.conns.get(conn_id) else { return false };
                if conn.is_due(error_reset, now) {
                    due.push((*conn_id, Trigger::Tick));
                }
                true
            });
            (plugin.clone(), due)
        });
        PhaseWork(by_plugin.collect())
    }
}

/// Calls for one batch: each connection and what triggered its call.
type DueCalls = Vec<(u64, Trigger)>;

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

impl PluginSlot {
    fn new(name: Arc<str>) -> Self {
        PluginSlot {
            name,
            instance: None,
            generation: 0,
            conns: HashMap::new(),
            members: vec![Vec::new(); PHASES as usize],
            closed: Vec::new(),
            due_now: Vec::new(),
            unavailable: false,
        }
    }

    /// Forgets a connection; returns the phase it had, if it was here.
    fn close(&mut self, conn_id: u64) -> Option<u32> {
        let conn = self.conns.remove(&conn_id)?;
        if self.instance.is_some() {
            self.closed.push(conn_id);
            if self.closed.len() > MAX_PENDING_CLOSED {
                self.drop_instance();
            }
        }
        Some(conn.phase)
    }

    fn drop_instance(&mut self) {
        self.instance = None;
        self.closed.clear();
    }

    /// The version to run now, after following the registry: a new version drops the old
    /// instance; a removed plugin parks its connections; a returning one un-parks them.
    fn sync_version(&mut self, registry: &PluginRegistry) -> Option<Arc<PluginVersion>> {
        let served = registry.get(&self.name);
        match &served {
            None => self.drop_instance(),
            Some(version) => {
                if self.instance.as_ref().is_some_and(|instance| !Arc::ptr_eq(instance.version(), version)) {
                    tracing::info!(plugin = %self.name, version = version.short_hash(), "switching to new version");
                    self.drop_instance();
                }
                if self.unavailable {
                    self.unavailable = false;
                    for conn in self.conns.values_mut() {
                        if conn.parked == Some(Park::Unavailable) {
                            conn.parked = None;
                        }
                    }
                }
            }
        }
        served
    }

    /// Runs one batch for `due`, then delivers each outcome to its connection. A fault replays
    /// the calls one by one on fresh instances, so only the connection that caused it gets the
    /// error.
    fn run(
        &mut self,
        due: &[(u64, Trigger)],
        now_ms: u64,
        settings: &ShardSettings,
        registry: &PluginRegistry,
        generations: &mut u64,
    ) {
        let Some(version) = self.sync_version(registry) else {
            self.park_unavailable(due);
            return;
        };
        let (error_reset, now) = (settings.live.error_reset(), Instant::now());
        let due: DueCalls = due
            .iter()
            .filter(|(conn_id, _)| self.conns.get(conn_id).is_some_and(|c| c.is_due(error_reset, now)))
            .copied()
            .collect();
        if due.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = self.call(&version, &due, now_ms, generations);
        settings.metrics.call_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                let mut tally = Tally::default();
                for ((conn_id, _), outcome) in due.iter().zip(outcomes.iter()) {
                    self.settle(*conn_id, outcome, settings, &mut tally);
                }
                tally.add_to(&settings.metrics);
            }
            Err(fault) => {
                tracing::warn!(plugin = %self.name, calls = due.len(), %fault, "batch failed; replaying calls one by one");
                self.replay(&version, &due, now_ms, settings, generations);
            }
        }
    }

    /// Calls the plugin once with `due`, building an instance first if there is none.
    fn call(
        &mut self,
        version: &Arc<PluginVersion>,
        due: &[(u64, Trigger)],
        now_ms: u64,
        generations: &mut u64,
    ) -> Result<Outcomes, PluginFault> {
        if self.instance.is_none() {
            self.instance = Some(PluginInstance::new(version)?);
            *generations += 1;
            self.generation = *generations;
            self.closed.clear();
        }
        let generation = self.generation;
        let mut calls = Calls::with_capacity(due.len());
        for &(conn_id, trigger) in due {
            let conn = &self.conns[&conn_id];
            let params = (conn.params_seen != generation).then(|| conn.params.as_deref().unwrap_or("{}"));
            calls.push(conn_id, conn.pushes + 1, trigger, params);
            conn.outbound.warm();
        }
        let instance = self.instance.as_mut().expect("built above");
        match instance.run(now_ms, &calls, &self.closed) {
            Ok(outcomes) => {
                self.closed.clear();
                for (conn_id, _) in due {
                    if let Some(conn) = self.conns.get_mut(conn_id) {
                        conn.params_seen = generation;
                    }
                }
                Ok(outcomes)
            }
            Err(fault) => {
                self.drop_instance();
                Err(fault)
            }
        }
    }

    /// After a failed batch: runs each call alone, so the fault lands on its culprit only. The
    /// replay may take at most one tick interval (a plugin that faults on everything must not
    /// stall its shard); connections not reached by then are not blamed, they skip this push and
    /// are called at the next tick, by which time the culprits found so far are parked.
    fn replay(
        &mut self,
        version: &Arc<PluginVersion>,
        due: &[(u64, Trigger)],
        now_ms: u64,
        settings: &ShardSettings,
        generations: &mut u64,
    ) {
        let deadline = Instant::now() + settings.live.tick();
        let mut tally = Tally::default();
        for (done, item) in due.iter().enumerate() {
            if Instant::now() >= deadline {
                let deferred = due.len() - done;
                tracing::warn!(plugin = %self.name, deferred, "replay ran out of time; the rest retry next tick");
                break;
            }
            match self.call(version, std::slice::from_ref(item), now_ms, generations) {
                Ok(outcomes) => self.settle(item.0, outcomes.get(0), settings, &mut tally),
                Err(fault) => self.fault(item.0, &fault, settings),
            }
        }
        tally.add_to(&settings.metrics);
    }

    /// Delivers one call's outcome, or its fault when the outcome broke the contract.
    fn settle(
        &mut self,
        conn_id: u64,
        outcome: Result<Outcome<'_>, PluginFault>,
        settings: &ShardSettings,
        tally: &mut Tally,
    ) {
        match outcome {
            Ok(outcome) => self.deliver(conn_id, outcome, settings, tally),
            Err(fault) => self.fault(conn_id, &fault, settings),
        }
    }

    /// Sends a plugin's outcome to its connection.
    fn deliver(&mut self, conn_id: u64, outcome: Outcome<'_>, settings: &ShardSettings, tally: &mut Tally) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        match outcome {
            Outcome::Push(payload) if payload.len() > settings.live.max_payload_bytes() => {
                tally.payload_too_large += 1;
                let error = ClientError::PayloadTooLarge {
                    plugin: self.name.to_string(),
                    size: payload.len(),
                    limit: settings.live.max_payload_bytes(),
                };
                tracing::warn!(plugin = %self.name, conn_id, size = payload.len(), "payload over the limit");
                conn.park(Park::error(), &error.frame());
            }
            Outcome::Push(payload) => {
                tally.ok += 1;
                tally.bytes += payload.len() as u64;
                conn.pushes += 1;
                conn.parked = None;
                conn.outbound.push(Outbound::Data(payload));
            }
            Outcome::Skip => {
                tally.none += 1;
                conn.parked = None;
            }
            Outcome::Error(message) => {
                tally.error += 1;
                conn.park(Park::error(), &error_frame(PLUGIN_ERROR, message));
            }
        }
    }

    /// Parks a connection a fault hit, with its error frame.
    fn fault(&mut self, conn_id: u64, fault: &PluginFault, settings: &ShardSettings) {
        tracing::warn!(plugin = %self.name, conn_id, %fault, "plugin call failed");
        let calls = &settings.metrics.calls;
        match fault {
            PluginFault::Timeout => calls.timeout.inc(),
            PluginFault::MemoryLimit => calls.memory_limit.inc(),
            PluginFault::Trap(_) => calls.trap.inc(),
            PluginFault::Contract(_) => calls.contract.inc(),
        };
        let error = match fault {
            PluginFault::Timeout => ClientError::PluginTimedOut(self.name.to_string()),
            _ => ClientError::PluginFailed(self.name.to_string()),
        };
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.park(Park::error(), &error.frame());
        }
    }

    /// The plugin is gone: each due connection gets one error frame and is parked until the
    /// plugin is deployed again.
    fn park_unavailable(&mut self, due: &[(u64, Trigger)]) {
        self.unavailable = true;
        let frame = ClientError::PluginUnavailable(self.name.to_string()).frame();
        for (conn_id, _) in due {
            if let Some(conn) = self.conns.get_mut(conn_id).filter(|c| c.params.is_some() && c.parked.is_none()) {
                conn.park(Park::Unavailable, &frame);
            }
        }
    }
}

/// Outcome counts of one batch, added to the metrics at once (one atomic add per counter per
/// batch rather than per connection).
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    none: u64,
    error: u64,
    payload_too_large: u64,
    bytes: u64,
}

impl Tally {
    fn add_to(self, metrics: &Metrics) {
        let calls = &metrics.calls;
        calls.ok.inc_by(self.ok);
        calls.none.inc_by(self.none);
        calls.error.inc_by(self.error);
        calls.payload_too_large.inc_by(self.payload_too_large);
        metrics.frames_pushed.inc_by(self.ok);
        metrics.bytes_pushed.inc_by(self.bytes);
    }
}

impl Conn {
    /// Whether the connection gets a call: it has params and is not parked, or was parked for an
    /// error at least `error_reset` ago (then the call retries it).
    fn is_due(&self, error_reset: Option<Duration>, now: Instant) -> bool {
        self.params.is_some()
            && match self.parked {
                None => true,
                Some(Park::Error { since }) => error_reset.is_some_and(|reset| now.duration_since(since) >= reset),
                Some(Park::Unavailable) => false,
            }
    }

    fn park(&mut self, why: Park, frame: &str) {
        self.parked = Some(why);
        self.outbound.push(Outbound::Error(frame));
    }
}

/// How often an overloaded shard says so in the log.
const OVERRUN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs that a shard fell a whole tick behind (and dropped that debt) at most once per
/// [`OVERRUN_LOG_INTERVAL`], with how often and by how much at worst since the last line: under
/// sustained overload it happens every few phases, and a line each time would flood the log.
#[derive(Debug, Default)]
struct OverrunLog {
    /// When the last line was written.
    logged_at: Option<Instant>,
    /// Times the shard fell a whole tick behind since then.
    times: u64,
    /// The furthest behind it was since then.
    worst: Duration,
}

impl OverrunLog {
    /// Counts one time the shard was `behind_by` behind its schedule (over a whole tick); returns
    /// whether a line was written.
    fn record(&mut self, behind_by: Duration) -> bool {
        self.times += 1;
        self.worst = self.worst.max(behind_by);
        let now = Instant::now();
        if self.logged_at.is_some_and(|at| now.duration_since(at) < OVERRUN_LOG_INTERVAL) {
            return false;
        }
        tracing::warn!(
            times = self.times,
            worst_ms = self.worst.as_millis() as u64,
            "shard fell a whole tick behind; its phases restart from now"
        );
        *self = OverrunLog { logged_at: Some(now), times: 0, worst: Duration::ZERO };
        true
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overrun_is_logged_once_per_interval_with_what_happened_since() {
        let mut log = OverrunLog::default();
        assert!(log.record(Duration::from_millis(250)), "the first overrun is logged at once");
        assert!(!log.record(Duration::from_millis(400)));
        assert!(!log.record(Duration::from_millis(300)));
        assert_eq!((log.times, log.worst), (2, Duration::from_millis(400)), "counted until the next line");
        log.logged_at = Some(Instant::now() - OVERRUN_LOG_INTERVAL);
        assert!(log.record(Duration::from_millis(210)));
        assert_eq!((log.times, log.worst), (0, Duration::ZERO));
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
