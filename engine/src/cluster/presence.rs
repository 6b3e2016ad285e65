//! Every node announces itself every [`ANNOUNCE_PERIOD`]: its status (what `/status` answers)
//! and the builds it serves, as its entry in the KV bucket [`NODES`]. A node that stops cleanly
//! removes its entry at once; one that stops announcing (killed, cut off) is marked gone once it
//! has been silent for [`GONE_AFTER`] while NATS took the others' announcements, and forgotten
//! after [`FORGET_AFTER`]. An entry's age is read on the NATS server's clock, which stamped it: a
//! node or an operator whose clock is off sees the same live nodes as the others. Silence while
//! NATS took no announcement at all (every server down, or a NATS cluster electing its leaders)
//! does not count: each node says how long its announcements have been taken since they last
//! failed, and once NATS is back a node has [`GONE_AFTER`] from the first ones taken to speak up
//! again. Without that, every node looked gone after an outage until it announced again, and
//! `deploy --wait` took the first node back for the whole cluster.
//!
//! Each process announces with an instance number of its own: a node that finds, before its
//! put, that the entry holds another instance's announcement although its own last put was
//! taken, shares its name with another process (a copied `[cluster] node`) and says so in its
//! status until that has not happened for [`NAME_TAKEN_FOR`].
//!
//! The live node with the smallest name also removes the builds no node serves any more (see
//! `plugins`) and judges the cluster's rollouts (see `rollouts`): one node does it, so nodes do
//! not race.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

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

/// This process's presence: its instance number and whether its name is taken.
#[derive(Debug)]
pub(super) struct Presence {
    /// Random, this process's own: tells its announcements from another process's.
    instance: u64,
    /// When another process's announcement was last found under this node's name.
    name_taken_at: Mutex<Option<Instant>>,
}

impl Presence {
    /// A presence with an instance number of its own.
    pub(super) fn new() -> Presence {
        let instance = std::hash::RandomState::new().hash_one(std::process::id());
        Presence { instance, name_taken_at: Mutex::new(None) }
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
    /// then, until `stop`; then removes its entry.
    pub async fn announce(
        self,
        node: String,
        announcement: impl Fn() -> Announcement + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut every = tokio::time::interval(ANNOUNCE_PERIOD);
        // Whether a put of this process's announcement was taken: from then on, the entry holds
        // it unless another process announces under this name.
        let mut announced = false;
        let mut taken = TakenSince::default();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => break,
            }
            // A put while NATS is unreachable would wait for it and be taken once it is back, as
            // if nothing had happened: the round is missed instead.
            if !self.is_connected() {
                taken = TakenSince::default();
                continue;
            }
            let mut announcing = announcement();
            announcing.announcing_for_ms = taken.for_ms();
            match self.announce_once(&node, &announcing, announced).await {
                Ok(bucket) => {
                    announced = true;
                    taken.0.get_or_insert_with(Instant::now);
                    // Its own failure says nothing of whether announcements are taken.
                    if let Err(err) = self.tend(&node, &bucket).await {
                        tracing::debug!(cause = %err, "cannot tend the cluster's builds and rollouts this round");
                    }
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "cannot announce this node to the cluster");
                    taken = TakenSince::default();
                }
            }
        }
        let leave = async { self.nodes_bucket().await?.purge(&node).await.map_err(jetstream_error) };
        if let Ok(Err(err)) | Err(err) = tokio::time::timeout(LEAVE_TIME, leave).await.map_err(jetstream_error) {
            tracing::warn!(cause = %err, "cannot remove this node from the cluster's list; it will be marked gone");
        }
    }

    /// Puts this node's entry, first checking, once this process's own put was taken, that the
    /// entry still holds it; the bucket it put it in.
    async fn announce_once(
        &self,
        node: &str,
        announcement: &Announcement,
        announced: bool,
    ) -> Result<kv::Store, ClusterError> {
        let value = serde_json::to_vec(announcement).expect("an announcement serializes");
        let bucket = self.nodes_bucket().await?;
        if announced {
            let held = bucket.entry(node).await.map_err(jetstream_error)?;
            let held = held.and_then(|entry| serde_json::from_slice::<Announcement>(&entry.value).ok());
            if held.is_some_and(|held| held.instance != self.presence.instance) {
                self.name_taken(node);
            }
        }
        bucket.put(node, value.into()).await.map_err(jetstream_error)?;
        Ok(bucket)
    }

    /// On the live node with the smallest name in `bucket` (`node`, if it is), removes old
    /// builds and judges rollouts, on the server's clock read once for the round.
    async fn tend(&self, node: &str, bucket: &kv::Store) -> Result<(), ClusterError> {
        let now = self.server_now(&bucket.stream_name).await?;
        let nodes = listed(bucket, now).await?;
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
        listed(&bucket, self.server_now(&bucket.stream_name).await?).await
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
    let mut nodes = Vec::with_capacity(names.len());
    for name in names {
        let Some(entry) = bucket.entry(name.as_str()).await.map_err(jetstream_error)? else { continue };
        // Written by other programs too: an entry that is no announcement is left out.
        let Ok(announcement) = serde_json::from_slice::<Announcement>(&entry.value) else { continue };
        let age = u64::try_from((now - entry.created).whole_milliseconds()).unwrap_or(0);
        nodes.push(ClusterNode { node: name, age_ms: age, gone: false, announcement });
    }
    mark_gone(&mut nodes);
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
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
