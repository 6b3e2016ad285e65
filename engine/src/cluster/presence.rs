//! Every node announces itself every [`ANNOUNCE_PERIOD`]: its status (what `/status` answers)
//! and the builds it serves, as its entry in the KV bucket [`NODES`]. A node that stops cleanly
//! removes its entry at once; one that stops announcing (killed, cut off) is marked gone once it
//! has been silent for [`GONE_AFTER`] while NATS took the others' announcements, and forgotten
//! after [`FORGET_AFTER`]. An entry's age is read on the NATS server's clock, which stamped it: a
//! node or an operator whose clock is off sees the same live nodes as the others. Silence while
//! NATS took no announcement at all (every server down, or a NATS cluster electing its leaders)
//! does not count: each node says how long its announcements have been taken, since its first or
//! since one last failed, and once NATS is back a node has [`GONE_AFTER`] from the first ones
//! taken to speak up again. Without that, every node looked gone after an outage until it
//! announced again, and `deploy --wait` took the first node back for the whole cluster.
//!
//! A node learns the others' entries through a watch of the bucket (see `heard`), listing it only
//! while that watch is not known to be current.
//!
//! Each process announces with an instance number of its own: a node that hears another
//! instance's announcement under its name, put after its own first one, shares its name with
//! another process (a copied `[cluster] node`) and says so in its status until that has not
//! happened for [`NAME_TAKEN_FOR`].
//!
//! After its put, the live node with the smallest name tends the cluster's builds and rollouts
//! (see `tend`), in a task beside the announcing loop, one round at a time. The announcing
//! loop's own requests give up after a second. Both keep the announcements on their period while
//! JetStream answers slowly or not at all. Before, after a full restart of a NATS cluster, a
//! round could wait out two or more 5-s requests (the bucket looked up again, the put, the
//! judge's clock), longer than a node may be silent beside others announcing again: CI once saw
//! `deploy --wait` count one live node of three there.
//!
//! [`GONE_AFTER`]: super::nodes::GONE_AFTER

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::heard::Heard;
use super::nodes::{Announcement, ClusterNode, FORGET_AFTER, nodes_at};
use super::tend::Tending;
use super::{Cluster, ClusterError, jetstream_error};

/// The KV bucket of node entries: node name → [`Announcement`].
const NODES: &str = "wasmpush-nodes";

/// How often a node announces itself.
pub const ANNOUNCE_PERIOD: Duration = Duration::from_secs(2);

/// How long a node that stops waits for its entry's removal.
const LEAVE_TIME: Duration = Duration::from_secs(1);

/// How long a node says that another process announces under its name after it last saw it:
/// three announcements (two processes announcing in turn do not always interleave).
const NAME_TAKEN_FOR: Duration = Duration::from_secs(6);

/// What a node whose name another process announces under says, in its status and its log.
pub const NAME_TAKEN: &str =
    "another process announces itself under this node's name: give each node its own `[cluster] node`";

/// This process's presence: its instance number, whether its name is taken, what it heard.
#[derive(Debug)]
pub(super) struct Presence {
    /// Random, this process's own: tells its announcements from another process's.
    instance: u64,
    /// When another process's announcement was last found under this node's name.
    name_taken_at: Mutex<Option<Instant>>,
    /// The node entries heard through the announcing loop's watch.
    heard: Mutex<Heard>,
}

impl Presence {
    /// A presence with an instance number of its own.
    pub(super) fn new() -> Presence {
        let instance = std::hash::RandomState::new().hash_one(std::process::id());
        Presence { instance, name_taken_at: Mutex::new(None), heard: Mutex::default() }
    }

    /// What this process heard.
    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Since when a node's announcements are taken: the first taken after the process started or
/// after one that was not; `None` while none is.
#[derive(Debug, Clone, Copy, Default)]
struct TakenSince(Option<Instant>);

impl TakenSince {
    /// What an announcement says of it: how long they have been taken, in ms.
    fn for_ms(self) -> u64 {
        self.0.map_or(0, |since| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

impl Cluster {
    /// Announces this node as `node` every [`ANNOUNCE_PERIOD`] with what `announcement` says
    /// then, until `stop`; then removes its entry. Watches the bucket meanwhile (see `heard`).
    pub async fn announce(
        self,
        node: String,
        announcement: impl Fn() -> Announcement + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut every = tokio::time::interval(ANNOUNCE_PERIOD);
        let mut round = Round::default();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                heard = next_heard(&mut round.watch) => {
                    match heard {
                        Some(Ok(entry)) => self.hear(&node, &entry, round.first_put),
                        ended => {
                            if let Some(Err(err)) = ended {
                                tracing::debug!(cause = %err, "the watch of the cluster's nodes failed; watching again");
                            }
                            round.watch = None;
                            self.presence.heard().restart();
                        }
                    }
                    continue;
                }
                () = stop.cancelled() => break,
            }
            // A put while NATS is unreachable would wait for it and be taken once it is back, as
            // if nothing had happened: the round is missed instead.
            if !self.is_connected() {
                round.missed(&self.presence);
                continue;
            }
            let mut announcing = announcement();
            announcing.announcing_for_ms = round.taken.for_ms();
            match self.announce_once(&node, &announcing, &mut round.bucket).await {
                Ok((bucket, revision)) => {
                    round.taken.0.get_or_insert_with(Instant::now);
                    // Without a watch the view was forgotten (it ended, or none could be made), so
                    // it holds no put and is not current either.
                    if !self.presence.heard().confirm(round.previous_put) {
                        round.watch = self.watch_nodes(&bucket).await;
                    }
                    round.previous_put = Some(revision);
                    round.first_put.get_or_insert(revision);
                    self.tend_beside(&node, bucket, &round.tending);
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "cannot announce this node to the cluster");
                    round.missed(&self.presence);
                }
            }
        }
        // A round of tending ends before the node leaves: it may be removing a build.
        let _ = round.tending.lock().await;
        let leave = async { self.nodes_bucket().await?.purge(&node).await.map_err(jetstream_error) };
        if let Ok(Err(err)) | Err(err) = tokio::time::timeout(LEAVE_TIME, leave).await.map_err(jetstream_error) {
            tracing::warn!(cause = %err, "cannot remove this node from the cluster's list; it will be marked gone");
        }
    }

    /// Puts this node's entry into `bucket` (found first if `None`, and forgotten if the put
    /// fails); the bucket and the entry's revision.
    async fn announce_once(
        &self,
        node: &str,
        announcement: &Announcement,
        bucket: &mut Option<kv::Store>,
    ) -> Result<(kv::Store, u64), ClusterError> {
        let value = serde_json::to_vec(announcement).expect("an announcement serializes");
        let store = match bucket.take() {
            Some(store) => store,
            None => self.nodes_bucket().await?,
        };
        let revision = store.put(node, value.into()).await.map_err(jetstream_error)?;
        *bucket = Some(store.clone());
        Ok((store, revision))
    }

    /// A new watch of `bucket`, every node's latest entry first, with the view forgotten.
    async fn watch_nodes(&self, bucket: &kv::Store) -> Option<kv::Watch> {
        self.presence.heard().restart();
        bucket
            .watch_with_history(">")
            .await
            .inspect_err(|err| tracing::debug!(cause = %err, "cannot watch the cluster's nodes; listing them"))
            .ok()
    }

    /// Takes in `entry`, heard by this node (`node`), whose first taken put was `first_put`:
    /// another process's announcement under its name after that is a second process under it.
    fn hear(&self, node: &str, entry: &kv::Entry, first_put: Option<u64>) {
        let mut heard = self.presence.heard();
        let Some(announced) = heard.hear(entry) else { return };
        let ours = announced.instance == self.presence.instance;
        if announced.node == node && !ours && first_put.is_some_and(|first| announced.revision > first) {
            drop(heard);
            self.name_taken(node);
        }
    }

    /// This process's instance number: what its announcements carry.
    pub fn instance(&self) -> u64 {
        self.presence.instance
    }

    /// Tends the cluster's builds and rollouts as `node` (see `tend`) in a task of its own, so
    /// that the announcements keep their period however long the judge's requests take; unless
    /// the last round of tending is still going.
    fn tend_beside(&self, node: &str, bucket: kv::Store, tending: &Arc<tokio::sync::Mutex<Tending>>) {
        let Ok(mut tending) = tending.clone().try_lock_owned() else { return };
        let (cluster, node) = (self.clone(), node.to_owned());
        tokio::spawn(async move {
            // Its own failure says nothing of whether announcements are taken.
            if let Err(err) = cluster.tend(&node, &bucket, &mut tending).await {
                tracing::debug!(cause = %err, "cannot tend the cluster's builds and rollouts this round");
            }
        });
    }

    /// Whether another process announced itself under this node's name within
    /// [`NAME_TAKEN_FOR`].
    pub fn is_name_taken(&self) -> bool {
        let taken_at = *self.presence.name_taken_at.lock().unwrap_or_else(|poison| poison.into_inner());
        taken_at.is_some_and(|at| at.elapsed() < NAME_TAKEN_FOR)
    }

    /// Notes that another process announced itself as `node`; logs it when it begins.
    fn name_taken(&self, node: &str) {
        if !self.is_name_taken() {
            tracing::error!(node, "{NAME_TAKEN}");
        }
        *self.presence.name_taken_at.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(Instant::now());
    }

    /// Every node the cluster knows, by name: live ones and ones gone within [`FORGET_AFTER`].
    pub async fn nodes(&self) -> Result<Vec<ClusterNode>, ClusterError> {
        let bucket = self.nodes_bucket().await?;
        self.nodes_in(&bucket, self.server_now(&bucket.stream_name).await?).await
    }

    /// Every node `bucket` holds at `now` (the server's clock): as heard, if the view is current,
    /// or else listed.
    pub(super) async fn nodes_in(
        &self,
        bucket: &kv::Store,
        now: OffsetDateTime,
    ) -> Result<Vec<ClusterNode>, ClusterError> {
        let heard = self.presence.heard().nodes(now);
        match heard {
            Some(nodes) => Ok(nodes),
            None => listed(bucket, now).await,
        }
    }

    /// The node entries' KV bucket, created if missing; its requests wait at most
    /// [`QUICK_REQUEST_TIMEOUT`](super::QUICK_REQUEST_TIMEOUT), so an unanswered one costs the
    /// announcing loop a round, not the [`GONE_AFTER`] that would mark the node gone.
    async fn nodes_bucket(&self) -> Result<kv::Store, ClusterError> {
        let config = kv::Config { bucket: NODES.to_owned(), history: 1, max_age: FORGET_AFTER, ..Default::default() };
        self.kv_bucket_on(&self.quick_jetstream, config).await
    }
}

/// Every node `bucket` holds, by name, as old as its entry is at `now` (the server's clock).
async fn listed(bucket: &kv::Store, now: OffsetDateTime) -> Result<Vec<ClusterNode>, ClusterError> {
    let names: Vec<String> =
        bucket.keys().await.map_err(jetstream_error)?.try_collect().await.map_err(jetstream_error)?;
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let Some(entry) = bucket.entry(name.as_str()).await.map_err(jetstream_error)? else { continue };
        // Written by other programs too: an entry that is no announcement is left out.
        let Ok(announcement) = serde_json::from_slice::<Announcement>(&entry.value) else { continue };
        entries.push((name, announcement, entry.created));
    }
    Ok(nodes_at(entries, now))
}

/// What the announcing loop carries from round to round.
#[derive(Default)]
struct Round {
    /// The node entries' bucket, once found.
    bucket: Option<kv::Store>,
    /// The watch of that bucket (see `heard`).
    watch: Option<kv::Watch>,
    /// Since when this process's announcements are taken.
    taken: TakenSince,
    /// The revision of this process's first taken put.
    first_put: Option<u64>,
    /// The revision of this process's put of the round before; `None` if that round was missed.
    previous_put: Option<u64>,
    /// What this node listed when it judged (see `tend`), held by the round of tending going on.
    tending: Arc<tokio::sync::Mutex<Tending>>,
}

impl Round {
    /// Notes a round missed (its put not made, or not taken), and that what `presence` heard
    /// is no longer known to be current.
    fn missed(&mut self, presence: &Presence) {
        self.taken = TakenSince::default();
        self.previous_put = None;
        presence.heard().confirm(None);
    }
}

/// The next entry `watch` delivers; never, without one.
async fn next_heard(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}
