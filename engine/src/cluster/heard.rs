//! What a node has heard of the cluster's nodes through a watch of their entries' bucket, kept
//! by its announcing loop (`presence`). A node learns from it whether it is the one that judges,
//! and answers `/cluster` and its console from it, instead of listing the bucket: a listing is a
//! consumer and one read per node, and every node listed every round, N² requests across the
//! cluster every 2 s (three idle nodes on three NATS servers: 206 JetStream API requests in 20 s
//! with the listing, 144 with the watch; docs/cluster.md, "Sizing").
//!
//! The view counts only while it is known to be current: it must hold the node's own put of the
//! round before, which it had a round to deliver, with no round missed since (an outage may lose
//! the watch's consumer without the watch saying so). Otherwise the bucket is listed, as a process
//! that does not announce (`deploy --wait`) always does, and the watch is made again.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use time::OffsetDateTime;

use super::nodes::{Announcement, ClusterNode, nodes_at};

/// The node entries heard, by node name.
#[derive(Debug, Default)]
pub(super) struct Heard {
    entries: BTreeMap<String, HeardEntry>,
    /// The highest revision the watch delivered.
    through: u64,
    /// Whether the view held this node's put of the round before, at the last round.
    current: bool,
}

/// A node's entry as heard.
#[derive(Debug)]
struct HeardEntry {
    announcement: Announcement,
    /// When the NATS server stamped it.
    created: OffsetDateTime,
}

/// An announcement heard: who made it, under which name, at which revision.
#[derive(Debug, PartialEq)]
pub(super) struct Announced<'a> {
    pub node: &'a str,
    pub instance: u64,
    pub revision: u64,
}

impl Heard {
    /// Forgets everything, for a new watch.
    pub(super) fn restart(&mut self) {
        *self = Heard::default();
    }

    /// Takes in `entry`, delivered by the watch; says which announcement it is, if it is one.
    /// An entry that is no announcement (written by another program) or a removal forgets the
    /// node.
    pub(super) fn hear<'e>(&mut self, entry: &'e kv::Entry) -> Option<Announced<'e>> {
        self.through = self.through.max(entry.revision);
        let announcement = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<Announcement>(&entry.value).ok(),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let Some(announcement) = announcement else {
            self.entries.remove(&entry.key);
            return None;
        };
        let instance = announcement.instance;
        self.entries.insert(entry.key.clone(), HeardEntry { announcement, created: entry.created });
        Some(Announced { node: &entry.key, instance, revision: entry.revision })
    }

    /// Checks, at a round, that the view is current: it holds `previous_put`, this node's put of
    /// the round before (`None`: that round was missed); says whether it is.
    pub(super) fn confirm(&mut self, previous_put: Option<u64>) -> bool {
        self.current = previous_put.is_some_and(|put| self.through >= put);
        self.current
    }

    /// Every node heard, as old as its entry is at `now` (the server's clock); `None` unless the
    /// view was current at the last round.
    pub(super) fn nodes(&self, now: OffsetDateTime) -> Option<Vec<ClusterNode>> {
        if !self.current {
            return None;
        }
        let entries =
            self.entries.iter().map(|(node, heard)| (node.clone(), heard.announcement.clone(), heard.created));
        Some(nodes_at(entries, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of `node` at `revision`, stamped a second before [`now`], holding `value`.
    fn entry(node: &str, revision: u64, operation: kv::Operation, value: &[u8]) -> kv::Entry {
        kv::Entry {
            bucket: "wasmpush-nodes".to_owned(),
            key: node.to_owned(),
            value: value.to_vec().into(),
            revision,
            delta: 0,
            created: now() - time::Duration::seconds(1),
            operation,
            seen_current: true,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn announcement(instance: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "instance": instance, "builds": [], "status": {} })).unwrap()
    }

    fn names(heard: &Heard) -> Option<Vec<String>> {
        heard.nodes(now()).map(|nodes| nodes.into_iter().map(|node| node.node).collect())
    }

    #[test]
    fn the_view_counts_only_once_it_holds_the_nodes_put_of_the_round_before() {
        let mut heard = Heard::default();
        let put = entry("a", 4, kv::Operation::Put, &announcement(7));
        assert_eq!(heard.hear(&put), Some(Announced { node: "a", instance: 7, revision: 4 }));
        assert_eq!(names(&heard), None, "not confirmed yet");
        assert!(!heard.confirm(Some(5)), "its put at 5 is not heard yet");
        assert_eq!(names(&heard), None);
        assert!(!heard.confirm(None), "a round was missed");
        heard.hear(&entry("b", 5, kv::Operation::Put, &announcement(8)));
        assert!(heard.confirm(Some(5)));
        assert_eq!(names(&heard), Some(vec!["a".to_owned(), "b".to_owned()]));
        let ages: Vec<u64> = heard.nodes(now()).unwrap().iter().map(|node| node.age_ms).collect();
        assert_eq!(ages, [1_000, 1_000]);
        heard.restart();
        assert_eq!(names(&heard), None, "a new watch proves itself again");
    }

    #[test]
    fn a_removal_or_an_entry_that_is_no_announcement_forgets_the_node() {
        let mut heard = Heard::default();
        heard.hear(&entry("a", 1, kv::Operation::Put, &announcement(7)));
        heard.hear(&entry("b", 2, kv::Operation::Put, &announcement(8)));
        heard.hear(&entry("c", 3, kv::Operation::Put, &announcement(9)));
        assert_eq!(heard.hear(&entry("a", 4, kv::Operation::Purge, b"")), None);
        assert_eq!(heard.hear(&entry("b", 5, kv::Operation::Put, b"not json")), None);
        assert!(heard.confirm(Some(5)));
        assert_eq!(names(&heard), Some(vec!["c".to_owned()]));
    }
}
