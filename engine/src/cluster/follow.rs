//! A node following the data stream: every change, in stream order, applied to its store at the
//! stream's sequence, from the revision its store holds (a warm start catches up from there).
//!
//! A batch published atomically keeps its headers in the stream (`Nats-Batch-Id`, and
//! `Nats-Batch-Commit` on its last message), so its changes are gathered and applied at once, at
//! the sequence of its last message: plugins see all of it or none. A value another writer put
//! straight into the bucket is checked as a published one is; one that fails (not JSON, too
//! large, a bad key) is not applied — its key reads as missing — and is counted by bucket.
//!
//! A node whose revisions count in another history than the stream's (the stream was recreated:
//! its creation time differs from the one the node's store keeps, or the node is new) or that
//! holds a later revision than the stream's last (it went back) **resyncs**: it reads the whole
//! stream (history 1: one message per key) and replaces its data with it in one write, deleting
//! what the stream no longer holds. It never resumes across a gap.
//!
//! A node catching up (joining, resyncing, or back after a while away) may have NATS send it the
//! backlog at a limited rate (`[cluster] catch_up_mbps`), so that NATS keeps taking publishes
//! meanwhile; once caught up, the node follows again from its revision without the limit.
//!
//! A follower checks the stream every [`CHECK_PERIOD`]: one recreated or gone back meanwhile
//! ends the following (the next one resyncs), and one the node lags behind without applying
//! anything for [`STALL_TIME`] while connected is a stalled watch, recreated from the applied
//! revision.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;

use super::{Cluster, DATA_BUCKET};
use crate::data::{Change, DataLimits, DataStore};

/// How far apart a follower's followings start at least: one whose stream failed at once waits
/// this long before it follows again, one that waited as long already does not wait.
pub(super) const RETRY: Duration = Duration::from_secs(1);

/// How often a follower checks the stream: recreated, gone back, or the watch stalled.
const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// How long a node may lag behind the stream without applying anything before its watch counts
/// as stalled and is recreated.
const STALL_TIME: Duration = Duration::from_secs(2);

/// The history a stream's sequences count in: its creation time, in nanoseconds.
fn origin_of(created_nanos: i128) -> u64 {
    u64::try_from(created_nanos).unwrap_or(1).max(1)
}

/// What one stream message holds for the node.
#[derive(Debug, PartialEq)]
enum Followed {
    /// A checked change to apply.
    Change(Change),
    /// A value that fails the checks, in data bucket `bucket` (as the subject names it): not
    /// applied; `delete` removes what the key held, when the key is one wasmpush allows.
    Invalid { bucket: String, delete: Option<Change> },
    /// A subject of no data key.
    Foreign,
}

/// The changes of one stream message, or of a batch until its commit message.
#[derive(Default)]
struct Gathered {
    /// The changes so far, in order.
    changes: Vec<Change>,
    /// Whether a batch is open (its commit message not seen yet).
    open: bool,
}

impl Gathered {
    /// Adds a message's change; whether the message closes what is gathered (a single message,
    /// or a batch's commit).
    fn add(&mut self, change: Option<Change>, headers: Option<&HeaderMap>) -> bool {
        self.changes.extend(change);
        self.open = header(headers, "Nats-Batch-Id").is_some() && header(headers, "Nats-Batch-Commit").is_none();
        !self.open
    }
}

/// How one following ended without failing.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The stream's messages ended (the consumer went away): follow again (see [`RETRY`]).
    Stream,
    /// The node caught up through a rate-limited consumer: follow again at once, unlimited.
    CaughtUp,
}

impl Cluster {
    /// Follows the data stream into `store` for as long as the engine runs, following again
    /// from the store's revision whenever the stream or the connection fails.
    pub async fn follow(self, store: DataStore, limits: DataLimits) {
        // The rate limit of a catch-up; none right after one (live changes came meanwhile).
        let mut catch_up_bits = self.catch_up_bits;
        loop {
            let started = Instant::now();
            let ended = self.follow_once(&store, &limits, catch_up_bits).await;
            catch_up_bits = self.catch_up_bits;
            match ended {
                Ok(Ended::CaughtUp) => {
                    catch_up_bits = 0;
                    continue;
                }
                Ok(Ended::Stream) => {}
                Err(err) if self.is_connected() => {
                    self.link.follow_restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(cause = %err, "following the cluster's data failed; following again");
                }
                Err(err) => {
                    tracing::debug!(cause = %err, "following the cluster's data failed while NATS is unreachable")
                }
            }
            // A request JetStream left unanswered (a NATS cluster electing its leaders) waited a
            // second already: asking again at once finds JetStream back up to a second sooner.
            tokio::time::sleep(RETRY.saturating_sub(started.elapsed())).await;
        }
    }

    /// Follows from the revision after the store's (or resyncs, then follows) until the stream
    /// ends or fails; a backlog comes at `catch_up_bits` a second (0: no limit), and such a
    /// following ends once the node has caught up.
    async fn follow_once(&self, store: &DataStore, limits: &DataLimits, catch_up_bits: u64) -> Result<Ended, String> {
        let mut stream = self.data_stream().await.map_err(|err| err.to_string())?;
        let info = stream.cached_info();
        let (last, origin) = (info.state.last_sequence, origin_of(info.created.unix_timestamp_nanos()));
        let empty = info.state.messages == 0;
        let held = store.view().snapshot();
        let mut resync = (held.origin() != origin || held.revision() > last).then(Vec::new);
        let from = match resync {
            Some(_) => {
                tracing::warn!(
                    held = held.revision(),
                    last,
                    "this node's data counts in another history than the cluster's stream (new, recreated or \
                     gone back): reading the whole stream again"
                );
                self.link.caught_up.store(false, Ordering::Relaxed);
                1
            }
            None => held.revision() + 1,
        };
        self.link.catch_up_to.store(last, Ordering::Relaxed);
        if empty || (resync.is_none() && from > last) {
            if resync.take().is_some() {
                store.replace(Vec::new(), last, origin).await.map_err(|err| err.to_string())?;
            }
            self.link.caught_up.store(true, Ordering::Relaxed);
        }
        // A backlog to catch up on comes at the limited rate, if there is one.
        let rate_limit = if from <= last { catch_up_bits } else { 0 };
        let config = push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: format!("$KV.{DATA_BUCKET}.>"),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
            rate_limit,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|err| err.to_string())?;
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer.messages().await.map_err(|err| err.to_string())?;
        let mut gathered = Gathered::default();
        let mut check = tokio::time::interval(CHECK_PERIOD);
        // The last stream sequence received, and when: a watch that receives nothing while the
        // stream is ahead has stalled (a resync receives without applying until it is whole).
        let mut progress = (from.saturating_sub(1), Instant::now());
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = check.tick() => {
                    self.check_stream(&mut stream, store, origin, &progress).await?;
                    continue;
                }
            };
            let Some(message) = message else { return Ok(Ended::Stream) };
            let message = message.map_err(|err| err.to_string())?;
            let (sequence, pending) =
                message.info().map(|info| (info.stream_sequence, info.pending)).map_err(|err| err.to_string())?;
            progress = (sequence, Instant::now());
            let headers = message.message.headers.as_ref();
            let change = match change_of(message.message.subject.as_str(), headers, &message.message.payload, limits) {
                Followed::Change(change) => Some(change),
                Followed::Invalid { bucket, delete } => {
                    self.link.count_invalid(bucket);
                    delete
                }
                Followed::Foreign => None,
            };
            if !gathered.add(change, headers) {
                continue;
            }
            let reached = sequence >= last || pending == 0;
            let changes = std::mem::take(&mut gathered.changes);
            match &mut resync {
                Some(entries) => {
                    entries.extend(changes);
                    if !reached {
                        continue;
                    }
                    let entries = resync.take().unwrap_or_default();
                    store.replace(entries, sequence, origin).await.map_err(|err| err.to_string())?;
                    tracing::info!(
                        revision = sequence,
                        keys = store.view().snapshot().key_count(),
                        "resynced with the cluster's data stream"
                    );
                }
                None => drop(store.apply_at(changes, sequence).await.map_err(|err| err.to_string())?),
            }
            self.link.lag.store(pending, Ordering::Relaxed);
            if reached {
                self.link.caught_up.store(true, Ordering::Relaxed);
                if rate_limit > 0 {
                    // Gone at once rather than sending live changes to no one until it expires.
                    if let Err(err) = stream.delete_consumer(&name).await {
                        tracing::debug!(cause = %err, "cannot delete the catch-up's consumer; it expires by itself");
                    }
                    return Ok(Ended::CaughtUp);
                }
            }
        }
    }

    /// Checks the stream against what this node applied: one recreated (another creation time)
    /// or gone back (its last sequence below the node's revision) ends the following, which then
    /// resyncs; a watch that received nothing for [`STALL_TIME`] while the stream is ahead of it
    /// and NATS is reachable ends it too, and the node follows again from its revision.
    /// `progress` is the last sequence received and when.
    async fn check_stream(
        &self,
        stream: &mut Stream,
        store: &DataStore,
        origin: u64,
        progress: &(u64, Instant),
    ) -> Result<(), String> {
        let info = stream.info().await.map_err(|err| err.to_string())?;
        let (last, applied) = (info.state.last_sequence, store.view().snapshot().revision());
        if origin_of(info.created.unix_timestamp_nanos()) != origin {
            return Err("the data stream was recreated".to_owned());
        }
        if last < applied {
            return Err(format!("the data stream ends at {last}, below this node's revision {applied}"));
        }
        self.link.lag.store(last - applied, Ordering::Relaxed);
        let (received, since) = *progress;
        if last > received && since.elapsed() >= STALL_TIME && self.is_connected() {
            return Err(format!(
                "the watch stalled: nothing received for {:?} while the stream is {} ahead",
                since.elapsed(),
                last - received
            ));
        }
        Ok(())
    }
}

/// The value of header `name`, if the message has it.
fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// What a stream message does: its key from the subject, a delete for a KV delete or purge, the
/// value otherwise, checked as a published one; a value or key that fails is invalid.
fn change_of(subject: &str, headers: Option<&HeaderMap>, payload: &[u8], limits: &DataLimits) -> Followed {
    let Some((bucket, key)) = subject
        .strip_prefix("$KV.")
        .and_then(|name| name.strip_prefix(DATA_BUCKET)?.strip_prefix('.')?.split_once('.'))
    else {
        return Followed::Foreign;
    };
    let delete = || limits.delete(bucket, key).ok();
    if matches!(header(headers, "KV-Operation"), Some("DEL" | "PURGE")) {
        return delete().map_or(Followed::Foreign, Followed::Change);
    }
    let checked = std::str::from_utf8(payload)
        .map_err(|err| err.to_string())
        .and_then(|text| limits.put(bucket, key, text).map_err(|err| err.to_string()));
    match checked {
        Ok(change) => Followed::Change(change),
        Err(cause) => {
            tracing::warn!(bucket, key, %cause, "a value in the cluster's data is not valid; its key reads as missing");
            Followed::Invalid { bucket: bucket.to_owned(), delete: delete() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits =
        DataLimits { max_buckets: 4, max_key_bytes: 16, max_value_bytes: 16, max_data_bytes: 1024, max_batch_keys: 4 };

    #[test]
    fn stream_messages_become_checked_changes_and_bad_values_read_as_missing() {
        let subject = "$KV.wasmpush-data.prices.AAPL";
        assert_eq!(
            change_of(subject, None, b"{ \"p\": 1 }", &LIMITS),
            Followed::Change(Change::new("prices", "AAPL", Some(r#"{"p":1}"#)))
        );
        let mut deleted = HeaderMap::new();
        deleted.insert("KV-Operation", "DEL");
        assert_eq!(
            change_of(subject, Some(&deleted), b"", &LIMITS),
            Followed::Change(Change::new("prices", "AAPL", None))
        );
        for bad in [&b"{oops"[..], b"\"a value far over sixteen bytes\"", b"\xff"] {
            let delete = Some(Change::new("prices", "AAPL", None));
            assert_eq!(
                change_of(subject, None, bad, &LIMITS),
                Followed::Invalid { bucket: "prices".to_owned(), delete }
            );
        }
        assert_eq!(
            change_of("$KV.wasmpush-data.prices.a/b", None, b"1", &LIMITS),
            Followed::Invalid { bucket: "prices".to_owned(), delete: None },
            "no such key can exist: nothing to delete, but it is counted"
        );
        assert_eq!(change_of("$KV.other.prices.AAPL", None, b"1", &LIMITS), Followed::Foreign);
    }

    #[test]
    fn a_batch_is_gathered_until_its_commit() {
        let mut open = HeaderMap::new();
        open.insert("Nats-Batch-Id", "b1");
        let mut commit = open.clone();
        commit.insert("Nats-Batch-Commit", "1");
        let mut gathered = Gathered::default();
        assert!(!gathered.add(Some(Change::new("p", "a", Some("1"))), Some(&open)));
        assert!(!gathered.add(None, Some(&open)), "an invalid value inside a batch keeps it open");
        assert!(gathered.add(Some(Change::new("p", "b", Some("2"))), Some(&commit)));
        assert_eq!(gathered.changes.len(), 2);
        assert!(Gathered::default().add(None, None), "a single message closes at once");
    }
}
