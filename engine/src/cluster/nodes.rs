//! The cluster's nodes as a node knows them: what each announces (see `presence`), how old its
//! entry is on the NATS server's clock, and whether it is gone — silent for [`GONE_AFTER`] while
//! NATS took announcements — however the entries were learnt (heard through a watch, or listed).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How old a node's entry may be before the node counts as gone: three announcements missed.
pub(super) const GONE_AFTER: Duration = Duration::from_secs(6);

/// How long the entry of a node that is gone is kept.
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// What a node announces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// The announcing process's instance number (see [`Cluster::instance`](super::Cluster::instance)).
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
