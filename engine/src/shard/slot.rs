//! [`PluginSlot`]: one plugin's instances and connections within a shard — running a batch,
//! delivering its outcomes, and on a fault replaying the calls one by one so that only the
//! connection that caused it gets the error.
//!
//! A slot runs the serving build, and during a rollout the candidate beside it (each in its
//! [`Lane`]): a canary's cohort is served by the candidate; a shadow run calls the candidate on
//! its sample after the serving build answered, compares, and sends nothing. Shadow calls spend
//! the shard's [`ShadowBudget`] and are the first work shed when the shard is late.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::conn::{AfterFault, Conn, Park, ReadIds, Session, frame_hash};
use super::reads::{ReadIndex, StaleIds};
use super::throttle::Throttle;
use crate::auth::Identity;
use crate::call_stats::{BatchCounts, CallStats, PluginStats};
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
use crate::rollout::Rollout;

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
    /// Share of each tick a shard may spend on shadow calls, in percent.
    pub shadow_budget_pct: u32,
    /// The data plugins read, as it was when the shard started; from then on the shard follows
    /// the snapshots of the change sets it is sent.
    pub data: DataView,
}

/// Calls for one batch: each connection and what triggered its call.
pub(super) type DueCalls = Vec<(u64, Trigger)>;

/// One build's live instance in a slot, and what the instance must be told at its next batch.
#[derive(Default)]
struct Lane {
    /// The live instance, built lazily; `None` after a fault or a swap.
    instance: Option<PluginInstance>,
    /// The instance's generation: a connection whose params another generation saw is sent them.
    generation: u64,
    /// Connections that closed since the instance's last batch: it is told to forget them.
    closed: Vec<u64>,
    /// Ids (in the instance) of the keys whose value changed since its last batch.
    stale: StaleIds,
}

impl Lane {
    fn drop_instance(&mut self) {
        self.instance = None;
        self.closed.clear();
        self.stale.clear();
    }

    /// Whether its instance is one of `version`.
    fn runs(&self, version: &Arc<PluginVersion>) -> bool {
        self.instance.as_ref().is_some_and(|instance| Arc::ptr_eq(instance.version(), version))
    }
}

/// What a batch's calls are for.
#[derive(Debug, Clone, Copy)]
enum Role<'a> {
    /// They serve their connections: what they read is recorded, their `seq`s are the next ones.
    Serving,
    /// A shadow run's: they serve no one, and repeat the serving build's calls with its `seq`s.
    Shadow {
        /// The `seq` of each call, as the serving build was given it.
        seqs: &'a [u64],
    },
}

/// Which of a slot's builds a batch runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// The build the registry serves.
    Serving,
    /// A rollout's candidate.
    Candidate,
}

/// How much shadow work a shard may do: a share of each tick interval, and none while the shard
/// is late (a client's tick never waits for a shadow call). Sampled calls past it are shed, not
/// deferred: a shadow run compares what fits.
#[derive(Debug)]
pub(super) struct ShadowBudget {
    /// The share of a tick, in percent.
    share_pct: u32,
    /// Whether the shard's current phase started late (by a whole phase or more).
    pub(super) late: bool,
    /// When the current tick's budget began.
    window: Instant,
    /// Shadow time spent in it.
    spent: Duration,
    /// What one shadow call took, as last measured.
    per_call: Duration,
}

impl ShadowBudget {
    /// A budget of `share_pct` percent of each tick.
    pub(super) fn new(share_pct: u32) -> Self {
        ShadowBudget { share_pct, late: false, window: Instant::now(), spent: Duration::ZERO, per_call: Duration::ZERO }
    }

    /// How many of `wanted` shadow calls may run now, with ticks `tick` apart: as many as the
    /// rest of this tick's share holds at the last measured cost (one at least, while any of it
    /// is left), none while the shard is late.
    fn allowance(&mut self, wanted: usize, now: Instant, tick: Duration) -> usize {
        if self.late {
            return 0;
        }
        if now.duration_since(self.window) >= tick {
            (self.window, self.spent) = (now, Duration::ZERO);
        }
        let left = (tick * self.share_pct / 100).saturating_sub(self.spent);
        match (left.is_zero(), self.per_call.is_zero()) {
            (true, _) => 0,
            (false, true) => wanted,
            (false, false) => wanted.min((left.as_nanos() / self.per_call.as_nanos()).max(1) as usize),
        }
    }

    /// `calls` shadow calls took `elapsed`.
    fn spend(&mut self, calls: usize, elapsed: Duration) {
        self.spent += elapsed;
        self.per_call = elapsed / calls.max(1) as u32;
    }
}

/// One plugin's instance and connections within a shard.
pub(super) struct PluginSlot {
    /// The plugin's name: what it looks up in the registry.
    name: Arc<str>,
    /// Limits, live settings and metrics, shared with the shard.
    settings: ShardSettings,
    /// Where the version to run is read at every batch.
    registry: Arc<PluginRegistry>,
    /// The serving build's instance.
    serving: Lane,
    /// The rollout's candidate's instance, during a rollout.
    candidate: Lane,
    /// The rollout the slot follows, as it last saw it.
    rollout: Option<Arc<Rollout>>,
    /// Instances built so far: the next one's generation is one more.
    generations: u64,
    /// The connections served by this plugin.
    conns: HashMap<u64, Conn>,
    /// The ids of its connections by phase, so a phase's run reads only its own. A closed
    /// connection leaves its phase's list at once: a plugin that does not tick never scans them.
    members: Vec<Vec<u64>>,
    /// Connections due for an immediate push (new params), in arrival order.
    due_now: DueCalls,
    /// Whether the plugin was missing at the last batch (its connections were parked).
    unavailable: bool,
    /// Which connections read which data key in their last call.
    reads: ReadIndex,
    /// The data its batches read: the snapshot of the last change set the shard applied, so the
    /// instance is told of every change between two of its batches (`stale`).
    snapshot: Arc<Snapshot>,
    /// Data-triggered calls waiting out the coalescing time: when each may run.
    deferred: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Visits of each phase so far, for a plugin that ticks every few of them.
    visits: Vec<u64>,
    /// Holds fault lines to one a second: a client can make its plugin fault on every message.
    fault_log: Throttle,
    /// The plugin's calls and connections on every shard, whichever build serves them.
    stats: Arc<PluginStats>,
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
            stats: settings.metrics.plugins.of(&name),
            name,
            settings,
            registry,
            serving: Lane::default(),
            candidate: Lane::default(),
            rollout: None,
            generations: 0,
            conns: HashMap::new(),
            members: vec![Vec::new(); PHASES as usize],
            due_now: Vec::new(),
            unavailable: false,
            reads: ReadIndex::default(),
            snapshot,
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
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
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
        // Every phase, not only at a batch: a rolled-back candidate's parked connections are
        // due on the serving build at once.
        self.follow_rollout();
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
            for lane in [&mut self.serving, &mut self.candidate] {
                if let Some(id) = lane.instance.as_ref().and_then(|instance| instance.key_id(&changed))
                    && !lane.stale.push(id)
                {
                    // Too many changes before its next batch: a new instance knows no stale value.
                    lane.drop_instance();
                }
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
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
        let members = &mut self.members[conn.phase as usize];
        if let Some(at) = members.iter().position(|member| *member == conn_id) {
            members.swap_remove(at);
        }
        self.reads.forget(conn_id, &conn.reads);
        for lane in [&mut self.serving, &mut self.candidate] {
            if lane.instance.is_some() {
                lane.closed.push(conn_id);
                if lane.closed.len() > MAX_PENDING_CLOSED {
                    lane.drop_instance();
                }
            }
        }
        Some(conn.phase)
    }

    fn lane(&mut self, which: Which) -> &mut Lane {
        match which {
            Which::Serving => &mut self.serving,
            Which::Candidate => &mut self.candidate,
        }
    }

    /// The version to run now, after following the registry: a new version drops the old
    /// instance; a removed plugin parks its connections; a returning one un-parks them.
    fn sync_version(&mut self) -> Option<Arc<PluginVersion>> {
        let served = self.registry.get(&self.name);
        match &served {
            None => self.serving.drop_instance(),
            Some(version) => {
                if self.serving.instance.is_some() && !self.serving.runs(version) {
                    tracing::info!(plugin = %self.name, version = version.short_hash(), "switching to new version");
                    self.serving.drop_instance();
                }
                // A promoted candidate keeps its instance.
                if self.serving.instance.is_none() && self.candidate.runs(version) {
                    self.serving = std::mem::take(&mut self.candidate);
                }
                if self.unavailable {
                    self.unavailable = false;
                    self.conns.values_mut().for_each(|conn| conn.session.redeployed());
                }
            }
        }
        served
    }

    /// The rollout to run now, after following the registry. When the one the slot followed
    /// ended without its candidate being promoted, the connections the candidate parked are
    /// un-parked and due at once on the serving build: none stays silent for a rolled-back build.
    fn follow_rollout(&mut self) -> Option<Arc<Rollout>> {
        let current = self.registry.rollout(&self.name);
        let unchanged = match (&self.rollout, &current) {
            (Some(followed), Some(current)) => Arc::ptr_eq(followed, current),
            (followed, current) => followed.is_none() && current.is_none(),
        };
        if unchanged {
            return current;
        }
        if let Some(ended) = self.rollout.take() {
            let serving = self.registry.get(&self.name);
            let promoted = serving.as_ref().is_some_and(|version| Arc::ptr_eq(version, &ended.candidate));
            if promoted && !self.serving.runs(&ended.candidate) && self.candidate.runs(&ended.candidate) {
                self.serving = std::mem::take(&mut self.candidate);
            }
            if !promoted && !ended.is_shadow() {
                for (conn_id, conn) in &mut self.conns {
                    if ended.takes(*conn_id) && conn.session.rolled_back() {
                        self.due_now.push((*conn_id, Trigger::Tick));
                    }
                }
            }
        }
        self.candidate.drop_instance();
        self.rollout = current.clone();
        current
    }

    /// Runs one batch for the connections of `due` that are still due, then delivers each outcome
    /// to its connection. A fault replays the calls one by one on fresh instances, so only the
    /// connection that caused it gets the error. During a canary its cohort runs on the
    /// candidate; during a shadow run the sample runs on the candidate too, within `shadow`.
    pub(super) fn run(&mut self, due: &[(u64, Trigger)], now_ms: u64, shadow: &mut ShadowBudget) {
        let Some(version) = self.sync_version() else {
            self.park_unavailable(due);
            return;
        };
        let rollout = self.follow_rollout();
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
        let batch = Batch { now_ms, data: &data, policy: &policy };
        match rollout {
            None => {
                self.run_on(Which::Serving, &version, &ready, &batch, None);
            }
            Some(rollout) if rollout.is_shadow() => {
                // Before the serving build's pushes move them on.
                let seqs: Vec<u64> = ready.iter().map(|(conn_id, _)| self.conns[conn_id].session.next_seq()).collect();
                if let Some(outcomes) =
                    self.run_on(Which::Serving, &version, &ready, &batch, Some(&rollout.serving_stats))
                {
                    self.shadow_run(&rollout, (&ready, &seqs), &outcomes, &batch, shadow);
                }
            }
            Some(rollout) => {
                let (cohort, rest): (DueCalls, DueCalls) =
                    ready.iter().partition(|(conn_id, _)| rollout.takes(*conn_id));
                self.run_on(Which::Serving, &version, &rest, &batch, Some(&rollout.serving_stats));
                self.run_on(Which::Candidate, &rollout.candidate, &cohort, &batch, Some(&rollout.candidate_stats));
            }
        }
    }

    /// Runs `ready` on one build and delivers the outcomes; counts them in `stats` during a
    /// rollout. Returns the outcomes if the batch ran whole.
    fn run_on(
        &mut self,
        which: Which,
        version: &Arc<PluginVersion>,
        ready: &[(u64, Trigger)],
        batch: &Batch<'_>,
        stats: Option<&CallStats>,
    ) -> Option<Outcomes> {
        if ready.is_empty() {
            return None;
        }
        let started = Instant::now();
        let result = self.call(which, version, ready, batch, Role::Serving);
        let elapsed = started.elapsed();
        self.settings.metrics.call_duration.observe(elapsed.as_secs_f64());
        self.stats.calls.record_batch(ready.len(), elapsed);
        stats.inspect(|stats| stats.record_batch(ready.len(), elapsed));
        match result {
            Ok(outcomes) => {
                let mut tally = Tally::default();
                for (&(conn_id, trigger), outcome) in ready.iter().zip(outcomes.iter()) {
                    self.settle(conn_id, trigger, outcome, batch.policy, &mut tally, stats);
                }
                self.count(&tally, stats);
                Some(outcomes)
            }
            // A batch of one call has its culprit: running it again would only cost another fault.
            Err(fault) if ready.len() == 1 => {
                self.fault(ready[0].0, &fault, stats);
                None
            }
            Err(fault) => {
                tracing::warn!(plugin = %self.name, calls = ready.len(), %fault, "batch failed; replaying calls one by one");
                self.replay(which, version, ready, batch, stats);
                None
            }
        }
    }

    /// Runs the sampled calls of `ready` (with their `seq`s) on a shadow run's candidate, with
    /// the inputs the serving build had, and compares each outcome with the serving build's
    /// (`serving`); sends nothing. Shed whole when the shard's shadow budget is spent or the
    /// shard is late.
    fn shadow_run(
        &mut self,
        rollout: &Rollout,
        (ready, seqs): (&[(u64, Trigger)], &[u64]),
        serving: &Outcomes,
        batch: &Batch<'_>,
        budget: &mut ShadowBudget,
    ) {
        let mut sampled: Vec<usize> = (0..ready.len()).filter(|index| rollout.takes(ready[*index].0)).collect();
        let allowed = budget.allowance(sampled.len(), Instant::now(), self.settings.live.tick());
        rollout.shadow.record_shed((sampled.len() - allowed) as u64);
        sampled.truncate(allowed);
        if sampled.is_empty() {
            return;
        }
        let calls: DueCalls = sampled.iter().map(|index| ready[*index]).collect();
        let seqs: Vec<u64> = sampled.iter().map(|index| seqs[*index]).collect();
        let started = Instant::now();
        let result = self.call(Which::Candidate, &rollout.candidate, &calls, batch, Role::Shadow { seqs: &seqs });
        let stats = &rollout.candidate_stats;
        stats.record_batch(calls.len(), started.elapsed());
        let mut identical = 0;
        let mut counts = BatchCounts::default();
        for (at, &index) in sampled.iter().enumerate() {
            let ours = shown_outcome(serving.get(index));
            let theirs = match &result {
                Ok(outcomes) => outcomes.get(at),
                Err(fault) => Err(fault.clone()),
            };
            match &theirs {
                Ok(Outcome::Push(_)) => counts.frames += 1,
                Ok(Outcome::Error(_)) => counts.errors += 1,
                Ok(Outcome::Skip) => {}
                Err(fault) => stats.record_fault(fault),
            }
            let theirs = shown_outcome(theirs);
            if ours == theirs {
                identical += 1;
            } else if rollout.shadow.wants_sample()
                && let Some(conn) = self.conns.get(&ready[index].0)
            {
                rollout.shadow.sample(conn.session.params(), &ours, &theirs);
            }
        }
        stats.record_counts(counts);
        let elapsed = started.elapsed();
        budget.spend(calls.len(), elapsed);
        rollout.shadow.record(sampled.len() as u64, identical, elapsed);
    }

    /// Calls build `which` once with `due`, building an instance first if there is none;
    /// records what each call read when the calls serve their connections (`role`).
    fn call(
        &mut self,
        which: Which,
        version: &Arc<PluginVersion>,
        due: &[(u64, Trigger)],
        batch: &Batch<'_>,
        role: Role<'_>,
    ) -> Result<Outcomes, PluginFault> {
        let mut lane = std::mem::take(self.lane(which));
        let result = self.call_on(&mut lane, version, due, batch, role);
        *self.lane(which) = lane;
        result
    }

    /// [`Self::call`] on `lane`, taken out of the slot meanwhile.
    fn call_on(
        &mut self,
        lane: &mut Lane,
        version: &Arc<PluginVersion>,
        due: &[(u64, Trigger)],
        batch: &Batch<'_>,
        role: Role<'_>,
    ) -> Result<Outcomes, PluginFault> {
        if lane.instance.is_none() {
            lane.instance = Some(PluginInstance::new(version)?);
            self.generations += 1;
            lane.generation = self.generations;
            lane.closed.clear();
            lane.stale.clear();
        }
        let generation = lane.generation;
        let mut calls = Calls::with_capacity(due.len());
        for (index, &(conn_id, trigger)) in due.iter().enumerate() {
            let conn = &self.conns[&conn_id];
            let seq = match role {
                Role::Serving => {
                    conn.outbound.warm();
                    conn.session.next_seq()
                }
                Role::Shadow { seqs } => seqs[index],
            };
            calls.push(conn_id, seq, trigger, conn.session.params_for(generation));
        }
        let instance = lane.instance.as_mut().expect("built above");
        match instance.run(batch.now_ms, &calls, &lane.closed, lane.stale.ids(), batch.data) {
            Ok(outcomes) => {
                lane.closed.clear();
                lane.stale.clear();
                for (index, (conn_id, _)) in due.iter().enumerate() {
                    let Some(conn) = self.conns.get_mut(conn_id) else { continue };
                    conn.session.seen_by(generation);
                    if let Role::Shadow { .. } = role {
                        continue;
                    }
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
                lane.drop_instance();
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
        which: Which,
        version: &Arc<PluginVersion>,
        due: &[(u64, Trigger)],
        batch: &Batch<'_>,
        stats: Option<&CallStats>,
    ) {
        let deadline = Instant::now() + self.settings.live.tick();
        let mut tally = Tally::default();
        for (done, item) in due.iter().enumerate() {
            if Instant::now() >= deadline {
                let deferred = due.len() - done;
                tracing::warn!(plugin = %self.name, deferred, "replay ran out of time; the rest retry next tick");
                break;
            }
            match self.call(which, version, std::slice::from_ref(item), batch, Role::Serving) {
                Ok(outcomes) => self.settle(item.0, item.1, outcomes.get(0), batch.policy, &mut tally, stats),
                Err(fault) => self.fault(item.0, &fault, stats),
            }
        }
        self.count(&tally, stats);
    }

    /// Adds what a batch's calls delivered to the engine's metrics, the plugin's figures and,
    /// during a rollout, its build's (`stats`).
    fn count(&self, tally: &Tally, stats: Option<&CallStats>) {
        let counts = tally.counts();
        self.stats.calls.record_counts(counts);
        stats.inspect(|stats| stats.record_counts(counts));
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
        stats: Option<&CallStats>,
    ) {
        match outcome {
            Ok(outcome) => self.deliver(conn_id, trigger, outcome, policy, tally),
            Err(fault) => self.fault(conn_id, &fault, stats),
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

    /// Parks a connection a fault hit, with its error frame; counts it in `stats` during a
    /// rollout.
    fn fault(&mut self, conn_id: u64, fault: &PluginFault, stats: Option<&CallStats>) {
        self.stats.calls.record_fault(fault);
        stats.inspect(|stats| stats.record_fault(fault));
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

/// What every call of one batch shares: the engine's time, the data and the plugin's policy.
struct Batch<'a> {
    /// The engine's time of the batch, in ms since the Unix epoch.
    now_ms: u64,
    /// What the calls may read.
    data: &'a BatchData,
    /// The plugin's policy.
    policy: &'a PluginPolicy,
}

/// An outcome as text, for comparing two builds' outcomes and showing them side by side.
fn shown_outcome(outcome: Result<Outcome<'_>, PluginFault>) -> std::borrow::Cow<'_, str> {
    match outcome {
        Ok(Outcome::Push(frame)) => frame.into(),
        Ok(Outcome::Skip) => "(nothing)".into(),
        Ok(Outcome::Error(message)) => format!("error: {message}").into(),
        Err(fault) => format!("fault: {fault}").into(),
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
    /// What a plugin's or a build's call stats count of it.
    fn counts(&self) -> BatchCounts {
        BatchCounts { frames: self.pushed + self.unchanged, errors: self.error }
    }

    fn add_to(&self, metrics: &Metrics) {
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
            shadow_budget_pct: 25,
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

    #[test]
    fn the_shadow_budget_holds_a_share_of_each_tick_and_nothing_while_late() {
        let tick = Duration::from_millis(200);
        let mut budget = ShadowBudget::new(5);
        let start = Instant::now();
        assert_eq!(budget.allowance(30, start, tick), 30, "no cost measured yet: all");
        budget.spend(5, Duration::from_millis(10));
        assert_eq!(budget.allowance(30, start, tick), 0, "10 ms of this tick's 10 ms spent");
        let next_tick = start + tick;
        assert_eq!(budget.allowance(30, next_tick, tick), 5, "10 ms at 2 ms a call");
        budget.spend(1, Duration::from_millis(9));
        assert_eq!(budget.allowance(30, next_tick, tick), 1, "what is left still runs one");
        budget.late = true;
        assert_eq!(budget.allowance(30, next_tick + tick, tick), 0, "a late shard sheds it all");
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
