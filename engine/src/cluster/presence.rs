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
//! The live node with the smallest name also removes the builds no node serves any more (see
//! `plugins`) and judges the cluster's rollouts (see `rollouts`): one node does it, so nodes do
//! not race.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::heard::Heard;
use super::{Cluster, ClusterError, jetstream_error};

/// The KV bucket of node entries: node name → [`Announcement`].
const NODES: &str = "wasmpush-nodes";

/// How often a node announces itself.
pub const ANNOUNCE_PERIOD: Duration = Duration::from_secs(2);

/// How old a node's entry may be before the node counts as gone: three announcements missed.
const GONE_AFTER: Duration = Duration::from_secs(6);

/// How long the entry of a node that is gone is kept.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

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

/// What a node announces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// The announcing process's instance number (see [`Cluster::instance`]).
    #[serde(default)]
    pub instance: u64,
    /// How long this process's announcements had been taken when it was made, in ms: since its
    /// first, or since one last failed. A process knows nothing of NATS before it started, so a
    /// node restarted during an outage does not vouch for the time before (0 when missing).
    #[serde(default)]
    pub announcing_for_ms: u64,
    /// The builds it serves (their SHA-256), whichever plugin.
    pub builds: BTreeSet<String>,
    /// Its status, as its admin endpoint's `/status` answers.
    pub status: serde_json::Value,
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

/// A node as the cluster knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its name (`[cluster] node`).
    pub node: String,
    /// Milliseconds since it last announced itself.
    pub age_ms: u64,
    /// Whether it is gone: it has been silent for [`GONE_AFTER`] while NATS took announcements.
    pub gone: bool,
    /// What it last announced.
    #[serde(flatten)]
    pub announcement: Announcement,
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
                    let current = self.presence.heard().confirm(round.previous_put);
                    if !current || round.watch.is_none() {
                        round.watch = self.watch_nodes(&bucket).await;
                    }
                    round.previous_put = Some(revision);
                    round.first_put.get_or_insert(revision);
                    // Its own failure says nothing of whether announcements are taken.
                    if let Err(err) = self.tend(&node, &bucket).await {
                        tracing::debug!(cause = %err, "cannot tend the cluster's builds and rollouts this round");
                    }
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "cannot announce this node to the cluster");
                    round.missed(&self.presence);
                }
            }
        }
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

    /// On the live node with the smallest name in `bucket` (`node`, if it is), removes old
    /// builds and judges rollouts, on the server's clock read once for the round.
    async fn tend(&self, node: &str, bucket: &kv::Store) -> Result<(), ClusterError> {
        let now = self.server_now(&bucket.stream_name).await?;
        let nodes = self.nodes_in(bucket, now).await?;
        let live = || nodes.iter().filter(|known| !known.gone);
        if live().map(|known| known.node.as_str()).min() == Some(node) {
            let served = live().flat_map(|known| known.announcement.builds.iter().cloned()).collect();
            let pointers = self.pointer_entries().await?;
            self.remove_old_builds(&pointers, &served, now).await?;
            self.judge_rollouts(&pointers, &nodes, now).await?;
        }
        Ok(())
    }

    /// This process's instance number: what its announcements carry.
    pub fn instance(&self) -> u64 {
        self.presence.instance
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
    async fn nodes_in(&self, bucket: &kv::Store, now: OffsetDateTime) -> Result<Vec<ClusterNode>, ClusterError> {
        let heard = self.presence.heard().nodes(now);
        match heard {
            Some(nodes) => Ok(nodes),
            None => listed(bucket, now).await,
        }
    }

    /// The node entries' KV bucket, created if missing.
    async fn nodes_bucket(&self) -> Result<kv::Store, ClusterError> {
        self.kv_bucket(kv::Config { bucket: NODES.to_owned(), history: 1, max_age: FORGET_AFTER, ..Default::default() })
            .await
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

/// The nodes whose `entries` (name, announcement, when the server stamped it) are known, as old
/// as they are at `now` (the server's clock), sorted by name, the gone ones marked and the ones
/// older than [`FORGET_AFTER`] left out.
pub(super) fn nodes_at(
    entries: impl IntoIterator<Item = (String, Announcement, OffsetDateTime)>,
    now: OffsetDateTime,
) -> Vec<ClusterNode> {
    let forget_after = u64::try_from(FORGET_AFTER.as_millis()).unwrap_or(u64::MAX);
    let mut nodes: Vec<ClusterNode> = entries
        .into_iter()
        .map(|(node, announcement, created)| {
            let age_ms = u64::try_from((now - created).whole_milliseconds()).unwrap_or(0);
            ClusterNode { node, age_ms, gone: false, announcement }
        })
        .filter(|node| node.age_ms <= forget_after)
        .collect();
    mark_gone(&mut nodes);
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    nodes
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

/// Marks the nodes silent for [`GONE_AFTER`] while NATS took announcements: silence counts for
/// as long as the node announcing without a failure for the longest (among those that announced
/// within [`GONE_AFTER`]) has been announcing; with no such node, all of it counts.
fn mark_gone(nodes: &mut [ClusterNode]) {
    let gone_after = u64::try_from(GONE_AFTER.as_millis()).unwrap_or(u64::MAX);
    let heard = nodes.iter().filter(|node| node.age_ms <= gone_after);
    let taking_for =
        heard.map(|node| node.announcement.announcing_for_ms.saturating_add(node.age_ms)).max().unwrap_or(u64::MAX);
    for node in nodes {
        node.gone = node.age_ms.min(taking_for) > gone_after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node `name`, heard from `age_ms` ago, its announcements taken then for `for_ms`.
    fn node(name: &str, age_ms: u64, for_ms: u64) -> ClusterNode {
        let announcement = Announcement {
            instance: 0,
            announcing_for_ms: for_ms,
            builds: Default::default(),
            status: Default::default(),
        };
        ClusterNode { node: name.to_owned(), age_ms, gone: false, announcement }
    }

    fn gone(mut nodes: Vec<ClusterNode>) -> Vec<String> {
        mark_gone(&mut nodes);
        nodes.into_iter().filter(|node| node.gone).map(|node| node.node).collect()
    }

    /// An hour: a node that has been announcing all along.
    const LONG: u64 = 3_600_000;

    #[test]
    fn a_node_is_gone_once_silent_for_six_seconds_while_nats_took_announcements() {
        // NATS took the others' announcements all along: silence counts whole.
        assert_eq!(gone(vec![node("a", 500, LONG), node("b", 6_500, LONG)]), ["b"]);
        assert!(gone(vec![node("a", 500, LONG), node("b", 5_500, LONG)]).is_empty());
        // After an outage, the announcements taken again for 1.5 s (1 s, then 500 ms since): a
        // node silent for 9 s had 1.5 s to speak up, not 6.
        assert!(gone(vec![node("a", 500, 1_000), node("b", 9_000, LONG)]).is_empty());
        // ... and once they have been taken for over 6 s, it is gone.
        assert_eq!(gone(vec![node("a", 500, 6_000), node("b", 9_000, LONG)]), ["b"]);
        // The node taken for longest counts: one that was cut off alone does not shorten it.
        assert_eq!(gone(vec![node("a", 500, 100), node("c", 0, LONG), node("b", 9_000, LONG)]), ["b"]);
        // A node that started 1 s ago vouches for 1 s only, even if none of its puts failed: it
        // may have started during an outage.
        assert!(gone(vec![node("a", 0, 1_000), node("b", 9_000, LONG)]).is_empty());
        // Nobody heard from: every silence counts whole.
        assert_eq!(gone(vec![node("a", 7_000, 100), node("b", 9_000, LONG)]), ["a", "b"]);
    }
}
