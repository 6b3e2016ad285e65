//! [`PluginSlot`]: one plugin's instance and connections within a shard — running a batch,
//! delivering its outcomes, and on a fault replaying the calls one by one so that only the
//! connection that caused it gets the error.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{AfterFault, Conn, Park, ReadIds, Session, frame_hash};
use super::reads::{ReadIndex, StaleIds};
use super::throttle::Throttle;
use crate::auth::Identity;
use crate::data::{ChangeSet, DataView, Snapshot};
use crate::live::{LiveSettings, PluginPolicy};
use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundQueue};
use crate::phase_clock::PHASES;
use crate::plugin::{
    BatchData, Calls, Outcome, Outcomes, PluginFault, PluginInstance, PluginVersion, ReadKey, Trigger,
};
use crate::protocol::{ClientError, PLUGIN_ERROR, error_frame};
use crate::registry::PluginRegistry;

/// How often a slot logs a plugin fault at most (faults are counted in metrics either way).
const FAULT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Closed connection ids a plugin slot keeps for its instance before it drops the instance
/// instead (a new instance has nothing to forget).
const MAX_PENDING_CLOSED: usize = 4096;

/// What a shard needs to know.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// The tick interval and the payload limit, as `wasmpush reload` last set them.
    pub live: Arc<LiveSettings>,
    /// Where pushes, outcomes, call durations and tick lateness are counted.
    pub metrics: Arc<Metrics>,
    /// The data plugins read, as it was when the shard started; from then on the shard follows
    /// the snapshots of the change sets it is sent.
    pub data: DataView,
}

/// Calls for one batch: each connection and what triggered its call.
pub(super) type DueCalls = Vec<(u64, Trigger)>;

/// One plugin's instance and connections within a shard.
pub(super) struct PluginSlot {
    /// The plugin's name: what it looks up in the registry.
    name: Arc<str>,
    /// Limits, live settings and metrics, shared with the shard.
    settings: ShardSettings,
    /// Where the version to run is read at every batch.
    registry: Arc<PluginRegistry>,
    /// The live instance, built lazily from the served version; `None` after a fault or a swap.
    instance: Option<PluginInstance>,
    /// Instances built so far; the current one's generation. A connection whose params were seen
    /// by another generation is sent them again.
    generation: u64,
    /// The connections served by this plugin.
    conns: HashMap<u64, Conn>,
    /// The ids of its connections by phase, so a phase's run reads only its own. A closed
    /// connection leaves its phase's list at once: a plugin that does not tick never scans them.
    members: Vec<Vec<u64>>,
    /// Connections that closed since the instance's last batch: the next batch tells the
    /// instance to forget them.
    closed: Vec<u64>,
    /// Connections due for an immediate push (new params), in arrival order.
    due_now: DueCalls,
    /// Whether the plugin was missing at the last batch (its connections were parked).
    unavailable: bool,
    /// Which connections read which data key in their last call.
    reads: ReadIndex,
    /// The data its batches read: the snapshot of the last change set the shard applied, so the
    /// instance is told of every change between two of its batches (`stale`).
    snapshot: Arc<Snapshot>,
    /// Ids (in the instance) of the keys whose value changed since the instance's last batch.
    stale: StaleIds,
    /// Data-triggered calls waiting out the coalescing time: when each may run.
    deferred: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Visits of each phase so far, for a plugin that ticks every few of them.
    visits: Vec<u64>,
    /// Holds fault lines to one a second: a client can make its plugin fault on every message.
    fault_log: Throttle,
}

impl PluginSlot {
    /// A slot for plugin `name`, with no connections yet.
    pub(super) fn new(
        name: Arc<str>,
        settings: ShardSettings,
        registry: Arc<PluginRegistry>,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        PluginSlot {
            name,
            settings,
            registry,
            instance: None,
            generation: 0,
            conns: HashMap::new(),
            members: vec![Vec::new(); PHASES as usize],
            closed: Vec::new(),
            due_now: Vec::new(),
            unavailable: false,
            reads: ReadIndex::default(),
            snapshot,
            stale: StaleIds::default(),
            deferred: BinaryHeap::new(),
            visits: vec![0; PHASES as usize],
            fault_log: Throttle::new(FAULT_LOG_INTERVAL),
        }
    }

    /// Whether the slot serves no connection (the shard then drops it).
    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Takes a new connection into `phase`, for a client with `identity` (or none); with params
    /// it is due at once.
    pub(super) fn open(
        &mut self,
        conn_id: u64,
        phase: u32,
        outbound: Arc<OutboundQueue>,
        params: Option<String>,
        identity: Option<Arc<Identity>>,
    ) {
        if params.is_some() {
            self.due_now.push((conn_id, Trigger::Open));
        }
        self.members[phase as usize].push(conn_id);
        let session = Session::new(params, identity);
        let conn = Conn { phase, outbound, session, reads: Vec::new(), read_ids: (0, ReadIds::new()) };
        self.conns.insert(conn_id, conn);
    }

    /// A connection's client refreshed its token: with params, it is due at once.
    pub(super) fn set_identity(&mut self, conn_id: u64, identity: Arc<Identity>) {
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.session.set_identity(identity);
            if conn.session.is_due(None, Instant::now()) {
                self.due_now.push((conn_id, Trigger::Message));
            }
        }
    }

    /// New params from a connection's client: it is due at once.
    pub(super) fn set_params(&mut self, conn_id: u64, params: String) {
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.session.set_params(params);
            self.due_now.push((conn_id, Trigger::Message));
        }
    }

    /// The connections due at once, each once: a connection that sent params twice in one round
    /// is pushed once, for its latest.
    pub(super) fn take_due_now(&mut self) -> DueCalls {
        let mut due = std::mem::take(&mut self.due_now);
        if due.len() > 1 {
            let mut seen = std::collections::HashSet::with_capacity(due.len());
            due.retain(|(conn_id, _)| seen.insert(*conn_id));
        }
        due
    }

    /// The regular tick of `phase`: every connection of it that is due (has params, and is not
    /// parked or its error park has expired), if the plugin ticks at this visit of the phase
    /// (see [`PluginPolicy::ticks_every`]). A visit without a tick reads no connection.
    pub(super) fn due_in_phase(&mut self, phase: u32, error_reset: Option<Duration>, now: Instant) -> DueCalls {
        let every = self.settings.live.plugin(&self.name).ticks_every(self.settings.live.tick());
        let visit = &mut self.visits[phase as usize];
        *visit += 1;
        if every == 0 || !visit.is_multiple_of(every) {
            return Vec::new();
        }
        let members = self.members[phase as usize].iter();
        members
            .filter(|conn_id| self.conns.get(conn_id).is_some_and(|conn| conn.session.is_due(error_reset, now)))
            .map(|conn_id| (*conn_id, Trigger::Tick))
            .collect()
    }

    /// Data was published: each connection whose last call read a changed key is due with
    /// trigger `data`, at once or, within the coalescing time of its last data call, then.
    pub(super) fn data_changed(&mut self, changes: &ChangeSet, now: Instant) {
        let coalesce = self.settings.live.data_coalesce();
        self.snapshot = changes.snapshot.clone();
        for (bucket, key) in &changes.keys {
            let changed = ReadKey { bucket: bucket.clone(), key: key.clone() };
            if let Some(id) = self.instance.as_ref().and_then(|instance| instance.key_id(&changed))
                && !self.stale.push(id)
            {
                // Too many changes before its next batch: a new instance knows no stale value.
                self.drop_instance();
            }
            for conn_id in self.reads.readers(&changed) {
                let Some(conn) = self.conns.get_mut(&conn_id) else { continue };
                match conn.session.data_changed(now, coalesce) {
                    Some(at) if at <= now => self.due_now.push((conn_id, Trigger::Data)),
                    Some(at) => self.deferred.push(Reverse((at, conn_id))),
                    None => {}
                }
            }
        }
    }

    /// Moves the data calls whose coalescing time is over to the calls due at once.
    pub(super) fn release_deferred(&mut self, now: Instant) {
        while let Some(Reverse((at, conn_id))) = self.deferred.peek().copied()
            && at <= now
        {
            self.deferred.pop();
            self.due_now.push((conn_id, Trigger::Data));
        }
    }

    /// When the next deferred data call is due, if one waits.
    pub(super) fn next_deferred(&self) -> Option<Instant> {
        self.deferred.peek().map(|Reverse((at, _))| *at)
    }

    /// Forgets a connection; returns the phase it had, if it was here.
    pub(super) fn close(&mut self, conn_id: u64) -> Option<u32> {
        let conn = self.conns.remove(&conn_id)?;
        let members = &mut self.members[conn.phase as usize];
        if let Some(at) = members.iter().position(|member| *member == conn_id) {
            members.swap_remove(at);
        }
        self.reads.forget(conn_id, &conn.reads);
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
        self.stale.clear();
    }

    /// The version to run now, after following the registry: a new version drops the old
    /// instance; a removed plugin parks its connections; a returning one un-parks them.
    fn sync_version(&mut self) -> Option<Arc<PluginVersion>> {
        let served = self.registry.get(&self.name);
        match &served {
            None => self.drop_instance(),
            Some(version) => {
                if self.instance.as_ref().is_some_and(|instance| !Arc::ptr_eq(instance.version(), version)) {
                    tracing::info!(plugin = %self.name, version = version.short_hash(), "switching to new version");
                    self.drop_instance();
                }
                if self.unavailable {
                    self.unavailable = false;
                    self.conns.values_mut().for_each(|conn| conn.session.redeployed());
                }
            }
        }
        served
    }

    /// Runs one batch for the connections of `due` that are still due, then delivers each outcome
    /// to its connection. A fault replays the calls one by one on fresh instances, so only the
    /// connection that caused it gets the error.
    pub(super) fn run(&mut self, due: &[(u64, Trigger)], now_ms: u64) {
        let Some(version) = self.sync_version() else {
            self.park_unavailable(due);
            return;
        };
        let (error_reset, now) = (self.settings.live.error_reset(), Instant::now());
        let mut ready = Vec::with_capacity(due.len());
        for &(conn_id, trigger) in due {
            let Some(conn) = self.conns.get_mut(&conn_id) else { continue };
            if trigger == Trigger::Data {
                conn.session.data_called(now);
            }
            if conn.session.is_due_for(trigger, error_reset, now) {
                ready.push((conn_id, trigger));
            }
        }
        if ready.is_empty() {
            return;
        }
        let policy = self.settings.live.plugin(&self.name);
        let data = BatchData { source: self.snapshot.clone(), grants: policy.grants.clone() };
        let started = Instant::now();
        let result = self.call(&version, &ready, now_ms, &data);
        self.settings.metrics.call_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                let mut tally = Tally::default();
                for (&(conn_id, trigger), outcome) in ready.iter().zip(outcomes.iter()) {
                    self.settle(conn_id, trigger, outcome, &policy, &mut tally);
                }
                tally.add_to(&self.settings.metrics);
            }
            // A batch of one call has its culprit: running it again would only cost another fault.
            Err(fault) if ready.len() == 1 => self.fault(ready[0].0, &fault),
            Err(fault) => {
                tracing::warn!(plugin = %self.name, calls = ready.len(), %fault, "batch failed; replaying calls one by one");
                self.replay(&version, &ready, now_ms, &data, &policy);
            }
        }
    }

    /// Calls the plugin once with `due`, building an instance first if there is none; records
    /// what each call read.
    fn call(
        &mut self,
        version: &Arc<PluginVersion>,
        due: &[(u64, Trigger)],
        now_ms: u64,
        data: &BatchData,
    ) -> Result<Outcomes, PluginFault> {
        if self.instance.is_none() {
            self.instance = Some(PluginInstance::new(version)?);
            self.generation += 1;
            self.closed.clear();
            self.stale.clear();
        }
        let generation = self.generation;
        let mut calls = Calls::with_capacity(due.len());
        for &(conn_id, trigger) in due {
            let conn = &self.conns[&conn_id];
            calls.push(conn_id, conn.session.next_seq(), trigger, conn.session.params_for(generation));
            conn.outbound.warm();
        }
        let instance = self.instance.as_mut().expect("built above");
        match instance.run(now_ms, &calls, &self.closed, self.stale.ids(), data) {
            Ok(outcomes) => {
                self.closed.clear();
                self.stale.clear();
                for (index, (conn_id, _)) in due.iter().enumerate() {
                    let Some(conn) = self.conns.get_mut(conn_id) else { continue };
                    conn.session.seen_by(generation);
                    let reported = outcomes.reads(index);
                    if conn.read_ids.0 == generation && conn.read_ids.1.as_slice() == reported {
                        continue;
                    }
                    // A key used many times is held once, for the connection's life (the SDK
                    // reports each once, in order: nothing to do then).
                    let mut ids = ReadIds::from_slice(reported);
                    if !reported.is_sorted_by(|a, b| a < b) {
                        ids.sort_unstable();
                        ids.dedup();
                    }
                    // Ids the instance never gave are the guest's mistake: they name nothing.
                    let read: Vec<ReadKey> = ids.iter().filter_map(|id| instance.key(*id).cloned()).collect();
                    self.reads.replace(*conn_id, &conn.reads, &read);
                    conn.reads = read;
                    conn.read_ids = (generation, ids);
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
        due: &DueCalls,
        now_ms: u64,
        data: &BatchData,
        policy: &PluginPolicy,
    ) {
        let deadline = Instant::now() + self.settings.live.tick();
        let mut tally = Tally::default();
        for (done, item) in due.iter().enumerate() {
            if Instant::now() >= deadline {
                let deferred = due.len() - done;
                tracing::warn!(plugin = %self.name, deferred, "replay ran out of time; the rest retry next tick");
                break;
            }
            match self.call(version, std::slice::from_ref(item), now_ms, data) {
                Ok(outcomes) => self.settle(item.0, item.1, outcomes.get(0), policy, &mut tally),
                Err(fault) => self.fault(item.0, &fault),
            }
        }
        tally.add_to(&self.settings.metrics);
    }

    /// Delivers one call's outcome, or its fault when the outcome broke the contract.
    fn settle(
        &mut self,
        conn_id: u64,
        trigger: Trigger,
        outcome: Result<Outcome<'_>, PluginFault>,
        policy: &PluginPolicy,
        tally: &mut Tally,
    ) {
        match outcome {
            Ok(outcome) => self.deliver(conn_id, trigger, outcome, policy, tally),
            Err(fault) => self.fault(conn_id, &fault),
        }
    }

    /// Sends a plugin's outcome to its connection: a frame identical to the last one sent is
    /// left unsent where the policy says so, and an error a data change merely repeated is not
    /// sent again.
    fn deliver(
        &mut self,
        conn_id: u64,
        trigger: Trigger,
        outcome: Outcome<'_>,
        policy: &PluginPolicy,
        tally: &mut Tally,
    ) {
        let Some(conn) = self.conns.get_mut(&conn_id) else { return };
        let limit = self.settings.live.max_payload_bytes();
        match outcome {
            Outcome::Push(payload) if payload.len() > limit => {
                tally.payload_too_large += 1;
                let error = ClientError::PayloadTooLarge { plugin: self.name.to_string(), size: payload.len(), limit };
                tracing::warn!(plugin = %self.name, conn_id, size = payload.len(), "payload over the limit");
                conn.park(Park::error(), &error.frame());
            }
            Outcome::Push(payload) if policy.skip_unchanged && !conn.session.frame_changed(frame_hash(payload)) => {
                tally.unchanged += 1;
                conn.session.skipped();
            }
            Outcome::Push(payload) => {
                tally.pushed += 1;
                tally.data_pushes += u64::from(trigger == Trigger::Data);
                tally.bytes += payload.len() as u64;
                conn.session.pushed();
                conn.outbound.push(Outbound::Data(payload));
            }
            Outcome::Skip => {
                tally.skipped += 1;
                conn.session.skipped();
            }
            Outcome::Error(message) => {
                tally.error += 1;
                let frame = error_frame(PLUGIN_ERROR, message);
                if !(trigger == Trigger::Data && conn.session.parked_by(frame_hash(&frame))) {
                    conn.park(Park::error(), &frame);
                }
            }
        }
    }

    /// Parks a connection a fault hit, with its error frame.
    fn fault(&mut self, conn_id: u64, fault: &PluginFault) {
        let calls = &self.settings.metrics.calls;
        match fault {
            PluginFault::Timeout => calls.timeout.inc(),
            PluginFault::MemoryLimit | PluginFault::HostMemory(_) => calls.memory_limit.inc(),
            PluginFault::Trap(_) => calls.trap.inc(),
            PluginFault::Contract(_) => calls.contract.inc(),
            PluginFault::Host(_) => calls.host_error.inc(),
        };
        if let Some(suppressed) = self.fault_log.ready(Instant::now()) {
            if let PluginFault::Host(_) = fault {
                tracing::error!(plugin = %self.name, conn_id, %fault, suppressed, "plugin call failed in the host");
            } else {
                tracing::warn!(plugin = %self.name, conn_id, %fault, suppressed, "plugin call failed");
            }
        }
        let error = match fault {
            PluginFault::Timeout => ClientError::PluginTimedOut(self.name.to_string()),
            _ => ClientError::PluginFailed(self.name.to_string()),
        };
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.park(Park::error(), &error.frame());
            // A fault the engine may have caused itself is not held against the client.
            if !matches!(fault, PluginFault::Host(_)) && conn.session.faulted(Instant::now()) == AfterFault::Close {
                tracing::info!(plugin = %self.name, conn_id, "closing a connection whose plugin keeps faulting on it");
                conn.outbound.evict();
            }
        }
    }

    /// The plugin is gone: each due connection gets one error frame and is parked until the
    /// plugin is deployed again.
    fn park_unavailable(&mut self, due: &[(u64, Trigger)]) {
        self.unavailable = true;
        let frame = ClientError::PluginUnavailable(self.name.to_string()).frame();
        for (conn_id, _) in due {
            if let Some(conn) = self.conns.get_mut(conn_id).filter(|c| c.session.awaits_calls()) {
                conn.park(Park::Unavailable, &frame);
            }
        }
    }
}

/// Outcome counts of one batch, added to the metrics at once (one atomic add per counter per
/// batch rather than per connection).
#[derive(Debug, Default)]
struct Tally {
    /// Payloads pushed.
    pushed: u64,
    /// Of them, those of calls a data change triggered.
    data_pushes: u64,
    /// Payloads left unsent as identical to the last one.
    unchanged: u64,
    /// Calls with nothing to push.
    skipped: u64,
    /// Business errors.
    error: u64,
    /// Payloads refused for their size.
    payload_too_large: u64,
    /// Bytes of the payloads pushed.
    bytes: u64,
}

impl Tally {
    fn add_to(self, metrics: &Metrics) {
        let calls = &metrics.calls;
        calls.ok.inc_by(self.pushed + self.unchanged);
        calls.none.inc_by(self.skipped);
        calls.error.inc_by(self.error);
        calls.payload_too_large.inc_by(self.payload_too_large);
        metrics.frames_pushed.inc_by(self.pushed);
        metrics.data_pushes.inc_by(self.data_pushes);
        metrics.frames_unchanged.inc_by(self.unchanged);
        metrics.bytes_pushed.inc_by(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PluginSettings};
    use crate::plugin::PluginHost;

    /// A slot for `quote` with engine defaults and the given plugin table; the plugin itself is
    /// never needed, only the slot's bookkeeping.
    fn slot(plugin: PluginSettings) -> PluginSlot {
        let config = Config { plugins: [("quote".to_owned(), plugin)].into(), ..Config::default() };
        let settings = ShardSettings {
            live: Arc::new(LiveSettings::new(&config)),
            metrics: Arc::default(),
            data: DataView::default(),
        };
        let host = PluginHost::new(crate::server::sandbox_limits(&config)).unwrap();
        PluginSlot::new("quote".into(), settings, Arc::new(PluginRegistry::new(host)), Arc::default())
    }

    async fn outbound() -> Arc<OutboundQueue> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        Arc::new(OutboundQueue::new(Arc::new(socket)))
    }

    fn due_ids(slot: &mut PluginSlot, phase: u32) -> Vec<u64> {
        let mut ids: Vec<u64> = slot.due_in_phase(phase, None, Instant::now()).iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn a_closed_connection_leaves_its_phase_at_once() {
        let mut slot = slot(PluginSettings::default());
        for conn_id in 1..=3 {
            slot.open(conn_id, 0, outbound().await, Some("{}".into()), None);
        }
        assert_eq!(slot.close(2), Some(0));
        assert_eq!(slot.members[0], [1, 3], "no stale id waits for the phase to run");
        assert_eq!(due_ids(&mut slot, 0), [1, 3]);
    }

    #[tokio::test]
    async fn a_plugin_without_ticks_has_nothing_due_in_any_phase() {
        let mut slot = slot(PluginSettings { tick_ms: Some(0), ..PluginSettings::default() });
        slot.open(1, 0, outbound().await, Some("{}".into()), None);
        assert!((0..3).all(|_| due_ids(&mut slot, 0).is_empty()));
        let mut ticking = self::slot(PluginSettings::default());
        ticking.open(1, 0, outbound().await, Some("{}".into()), None);
        assert_eq!(due_ids(&mut ticking, 0), [1], "the same connection ticks where the plugin does");
    }
}
