//! The judge's round. Every announcing round, the live node with the smallest name removes the
//! builds no node serves any more (see `plugins`) and judges the cluster's rollouts (see
//! `rollouts`): one node does it, so nodes do not race.
//!
//! It needs every plugin's pointer and the builds the Object Store holds. Listing them is a
//! consumer and a read per pointer, and another consumer for the builds. The judge keeps what it
//! listed and lists again only when the stream behind a listing changed since (the stream's info,
//! which finding the bucket asks for anyway, says so). An idle cluster's judge asks JetStream
//! three things a round: the server's clock, the pointers' stream and the builds' stream. Its
//! decisions are made afresh each round on the kept listings, with that round's clock and the
//! builds the nodes announce serving.
//!
//! A build it removes may be deployed again at that moment (alternating two builds does that):
//! the deploy stores it, moves the pointer, and stores it again if it is gone, but a removal
//! decided on the pointers before the move can land after that second look. So the judge fetches
//! each build before it removes it, looks at the pointers again after, and puts back any build
//! they now name.

use std::future::Future;

use async_nats::jetstream::{kv, stream};
use time::OffsetDateTime;

use super::plugins::{StoredBuild, named_builds, read_build, removable};
use super::{Cluster, ClusterError, is_not_found, jetstream_error};

/// What the judge listed, kept from round to round.
#[derive(Default)]
pub(super) struct Tending {
    /// Every plugin's pointer entry.
    pointers: Option<Listed<Vec<kv::Entry>>>,
    /// The builds the Object Store holds.
    builds: Option<Listed<Vec<StoredBuild>>>,
}

/// A listing of a stream's content, and the stream's state just before it was taken.
struct Listed<T> {
    at: StreamMark,
    items: T,
}

/// What changes whenever a stream's content does: a message stored, deleted or purged, or the
/// stream made anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamMark {
    created: OffsetDateTime,
    first_sequence: u64,
    last_sequence: u64,
    messages: u64,
}

impl StreamMark {
    fn of(info: &stream::Info) -> StreamMark {
        StreamMark {
            created: info.created,
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
            messages: info.state.messages,
        }
    }
}

/// What `kept` holds if it was listed at `mark`; or else what `list` gives, kept at `mark` (a
/// change while it lists makes the next mark differ, so it is listed again then). A listing
/// that fails leaves nothing kept.
async fn listed_at<T, Listing>(
    kept: &mut Option<Listed<T>>,
    mark: StreamMark,
    list: impl FnOnce() -> Listing,
) -> Result<&T, ClusterError>
where
    Listing: Future<Output = Result<T, ClusterError>>,
{
    let listed = match kept.take() {
        Some(listed) if listed.at == mark => listed,
        _ => Listed { at: mark, items: list().await? },
    };
    Ok(&kept.insert(listed).items)
}

impl Cluster {
    /// On the live node with the smallest name in `bucket` (`node`, if it is), removes old
    /// builds and judges rollouts, on the server's clock read once for the round.
    pub(super) async fn tend(&self, node: &str, bucket: &kv::Store, tending: &mut Tending) -> Result<(), ClusterError> {
        let now = self.server_now(&bucket.stream_name).await?;
        let nodes = self.nodes_in(bucket, now).await?;
        let live = || nodes.iter().filter(|known| !known.gone);
        if live().map(|known| known.node.as_str()).min() != Some(node) {
            return Ok(());
        }
        let served = live().flat_map(|known| known.announcement.builds.iter().cloned()).collect();
        let pointers = self.pointers().await?;
        let pointers_at = StreamMark::of(pointers.stream.cached_info());
        let entries = listed_at(&mut tending.pointers, pointers_at, || self.pointer_entries(&pointers)).await?;
        let stored = match self.jetstream.get_stream(Cluster::builds_stream()).await {
            Ok(builds) => {
                let builds_at = StreamMark::of(builds.cached_info());
                listed_at(&mut tending.builds, builds_at, || self.stored_builds()).await?.as_slice()
            }
            // No build was ever deployed.
            Err(err) if is_not_found(&err) => &[],
            Err(err) => return Err(jetstream_error(err)),
        };
        self.remove_builds(removable(entries, &served, stored, now), pointers_at).await?;
        self.judge_rollouts(&pointers, entries, &nodes, now).await
    }

    /// Removes `builds`, chosen on the pointers as they stood at `listed`, and puts back any of
    /// them a deploy named meanwhile. A deploy of an old build stores it, moves the pointer, then
    /// stores it again if it is gone: when this removal comes after that second look, the
    /// pointers looked at after the removal hold the move, so each build is fetched before it
    /// goes and put back if they name it. Either way, a build a pointer names stays.
    async fn remove_builds(&self, builds: Vec<String>, listed: StreamMark) -> Result<(), ClusterError> {
        if builds.is_empty() {
            return Ok(());
        }
        let store = self.builds().await?;
        let (mut removed, mut failed) = (Vec::with_capacity(builds.len()), Ok(()));
        for build in builds {
            // One that cannot be read (or does not match its hash) could not be served anyway.
            let wasm = read_build(&store, &build).await.ok();
            if let Err(err) = store.delete(&build).await {
                failed = Err(jetstream_error(err));
                break;
            }
            tracing::info!(build, "removed a build no node serves any more");
            removed.extend(wasm.map(|wasm| (build, wasm)));
        }
        let pointers = self.pointers().await?;
        if StreamMark::of(pointers.stream.cached_info()) != listed {
            let named = named_builds(&self.pointer_entries(&pointers).await?);
            for (build, wasm) in removed.iter().filter(|(build, _)| named.contains(build)) {
                tracing::warn!(build, "a deploy named a build as it was removed: it is put back");
                self.store_build(&store, build, wasm).await?;
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(last_sequence: u64) -> StreamMark {
        StreamMark { created: OffsetDateTime::UNIX_EPOCH, first_sequence: 1, last_sequence, messages: last_sequence }
    }

    #[tokio::test]
    async fn a_listing_is_taken_again_only_when_its_stream_changed() {
        let mut kept = None;
        let mut listings = 0;
        for (round, last) in [(1, 7), (2, 7), (3, 8), (4, 8)] {
            let items = listed_at(&mut kept, mark(last), || {
                listings += 1;
                async move { Ok(round) }
            })
            .await
            .unwrap();
            let expected = if last == 7 { 1 } else { 3 };
            assert_eq!(*items, expected, "round {round} is served the listing of round {expected}");
        }
        assert_eq!(listings, 2);
        let failed = listed_at(&mut kept, mark(9), || async { Err::<i32, _>(ClusterError::JetStream("gone".into())) });
        assert!(failed.await.is_err());
        assert!(kept.is_none(), "a failed listing leaves nothing kept");
        assert_eq!(*listed_at(&mut kept, mark(9), || async { Ok(9) }).await.unwrap(), 9);
    }
}
