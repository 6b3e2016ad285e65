//! Every node announces itself every [`ANNOUNCE_PERIOD`]: its status (what `/status` answers)
//! and the builds it serves, as its entry in the KV bucket [`NODES`]. A node that stops cleanly
//! removes its entry at once; one that stops announcing (killed, cut off) is marked gone once its
//! entry is older than [`GONE_AFTER`], and forgotten after [`FORGET_AFTER`]. An entry's age is
//! read on the NATS server's clock, which stamped it: a node or an operator whose clock is off
//! sees the same live nodes as the others.
//!
//! The live node with the smallest name also removes the builds no node serves any more (see
//! `plugins`) and judges the cluster's rollouts (see `rollouts`): one node does it, so nodes do
//! not race.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
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

/// What a node announces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// The builds it serves (their SHA-256), whichever plugin.
    pub builds: BTreeSet<String>,
    /// Its status, as its admin endpoint's `/status` answers.
    pub status: serde_json::Value,
}

/// A node as the cluster knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its name (`[cluster] node`).
    pub node: String,
    /// Milliseconds since it last announced itself.
    pub age_ms: u64,
    /// Whether it is gone: it has not announced itself for [`GONE_AFTER`].
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
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => break,
            }
            if let Err(err) = self.announce_once(&node, &announcement()).await {
                tracing::debug!(cause = %err, "cannot announce this node to the cluster");
            }
        }
        let leave = async { self.nodes_bucket().await?.purge(&node).await.map_err(jetstream_error) };
        if let Ok(Err(err)) | Err(err) = tokio::time::timeout(LEAVE_TIME, leave).await.map_err(jetstream_error) {
            tracing::warn!(cause = %err, "cannot remove this node from the cluster's list; it will be marked gone");
        }
    }

    /// Puts this node's entry; on the live node with the smallest name, removes old builds.
    async fn announce_once(&self, node: &str, announcement: &Announcement) -> Result<(), ClusterError> {
        let value = serde_json::to_vec(announcement).expect("an announcement serializes");
        let bucket = self.nodes_bucket().await?;
        bucket.put(node, value.into()).await.map_err(jetstream_error)?;
        let nodes = self.listed(&bucket).await?;
        let live = || nodes.iter().filter(|known| !known.gone);
        if live().map(|known| known.node.as_str()).min() == Some(node) {
            let served = live().flat_map(|known| known.announcement.builds.iter().cloned()).collect();
            let pointers = self.pointer_entries().await?;
            self.remove_old_builds(&pointers, &served).await?;
            self.judge_rollouts(&pointers, &nodes).await?;
        }
        Ok(())
    }

    /// Every node the cluster knows, by name: live ones and ones gone within [`FORGET_AFTER`].
    pub async fn nodes(&self) -> Result<Vec<ClusterNode>, ClusterError> {
        self.listed(&self.nodes_bucket().await?).await
    }

    /// Every node `bucket` holds, by name, its age read on the server's clock.
    async fn listed(&self, bucket: &kv::Store) -> Result<Vec<ClusterNode>, ClusterError> {
        let now = self.server_now(&bucket.stream_name).await?;
        let names: Vec<String> =
            bucket.keys().await.map_err(jetstream_error)?.try_collect().await.map_err(jetstream_error)?;
        let mut nodes = Vec::with_capacity(names.len());
        for name in names {
            let Some(entry) = bucket.entry(name.as_str()).await.map_err(jetstream_error)? else { continue };
            // Written by other programs too: an entry that is no announcement is left out.
            let Ok(announcement) = serde_json::from_slice::<Announcement>(&entry.value) else { continue };
            let age = u64::try_from((now - entry.created).whole_milliseconds()).unwrap_or(0);
            let gone = Duration::from_millis(age) > GONE_AFTER;
            nodes.push(ClusterNode { node: name, age_ms: age, gone, announcement });
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// The node entries' KV bucket, created if missing.
    async fn nodes_bucket(&self) -> Result<kv::Store, ClusterError> {
        self.kv_bucket(kv::Config { bucket: NODES.to_owned(), history: 1, max_age: FORGET_AFTER, ..Default::default() })
            .await
    }
}
