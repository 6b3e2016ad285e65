//! A node following the data stream: every change, in stream order, applied to its store at the
//! stream's sequence, from the revision its store holds (a warm start catches up from there).
//!
//! A batch published atomically keeps its headers in the stream (`Nats-Batch-Id`, and
//! `Nats-Batch-Commit` on its last message), so its changes are gathered and applied at once, at
//! the sequence of its last message: plugins see all of it or none. A value another writer put
//! straight into the bucket is checked as a published one is; one that fails (not JSON, too
//! large, a bad key) is not applied — its key reads as missing — and is logged.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use futures_util::StreamExt;

use super::{Cluster, DATA_BUCKET, DATA_STREAM};
use crate::data::{Change, DataLimits, DataStore};

/// How long a follower whose stream failed waits before it follows again.
const RETRY: Duration = Duration::from_secs(1);

/// How often a follower checks that the stream still holds what the node applied.
const CHECK_PERIOD: Duration = Duration::from_secs(2);

impl Cluster {
    /// Follows the data stream into `store` for as long as the engine runs, following again
    /// from the store's revision whenever the stream or the connection fails.
    pub async fn follow(self, store: DataStore, limits: DataLimits) {
        loop {
            if let Err(err) = self.follow_once(&store, &limits).await {
                tracing::warn!(cause = %err, "following the cluster's data failed; following again");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Follows from the revision after the store's until the stream ends or fails.
    async fn follow_once(&self, store: &DataStore, limits: &DataLimits) -> Result<(), String> {
        let stream = self.data_stream().await.map_err(|err| err.to_string())?;
        let from = store.view().snapshot().revision() + 1;
        let last = stream.cached_info().state.last_sequence;
        if from > last + 1 {
            // Stored as last + 1, so a stream emptied to 0 still reads as diverged.
            self.diverged.store(last + 1, Ordering::Relaxed);
            return Err(format!(
                "this node holds revision {} but the cluster's data stream ends at {last}: it was recreated or \
                 went back; not following it (a full resync is not built yet: start the node with an empty data_dir)",
                from - 1
            ));
        }
        self.diverged.store(0, Ordering::Relaxed);
        self.catch_up_to.store(last, Ordering::Relaxed);
        if from > last {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        let config = push::OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            filter_subject: format!("$KV.{DATA_BUCKET}.>"),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|err| err.to_string())?;
        let mut messages = consumer.messages().await.map_err(|err| err.to_string())?;
        let mut batch: Vec<Change> = Vec::new();
        let mut check = tokio::time::interval(CHECK_PERIOD);
        check.tick().await;
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = check.tick() => {
                    self.check_stream(store).await?;
                    continue;
                }
            };
            let Some(message) = message else { return Ok(()) };
            let message = message.map_err(|err| err.to_string())?;
            let sequence = message.info().map_err(|err| err.to_string())?.stream_sequence;
            let headers = message.message.headers.as_ref();
            let change = change_of(message.message.subject.as_str(), headers, &message.message.payload, limits);
            let in_batch = header(headers, "Nats-Batch-Id").is_some();
            batch.extend(change);
            if in_batch && header(headers, "Nats-Batch-Commit").is_none() {
                continue;
            }
            store.apply_at(std::mem::take(&mut batch), sequence).await.map_err(|err| err.to_string())?;
            if sequence >= last {
                self.caught_up.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Checks the stream still holds what this node applied: one recreated meanwhile (its last
    /// sequence below the node's revision) ends the following, which then finds it diverged.
    async fn check_stream(&self, store: &DataStore) -> Result<(), String> {
        let mut stream = self.jetstream.get_stream(DATA_STREAM).await.map_err(|err| err.to_string())?;
        let last = stream.info().await.map_err(|err| err.to_string())?.state.last_sequence;
        let applied = store.view().snapshot().revision();
        if last < applied {
            return Err(format!("the data stream ends at {last}, below this node's revision {applied}"));
        }
        Ok(())
    }
}

/// The value of header `name`, if the message has it.
fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// The change a stream message makes: its key from the subject, a delete for a KV delete or
/// purge (or a value that fails the checks), the value otherwise. `None` for a subject that is
/// no data key.
fn change_of(subject: &str, headers: Option<&HeaderMap>, payload: &[u8], limits: &DataLimits) -> Option<Change> {
    let name = subject.strip_prefix(&format!("$KV.{DATA_BUCKET}."))?;
    let (bucket, key) = name.split_once('.')?;
    let delete = || limits.delete(bucket, key).ok();
    if matches!(header(headers, "KV-Operation"), Some("DEL" | "PURGE")) {
        return delete();
    }
    let checked = std::str::from_utf8(payload)
        .map_err(|err| err.to_string())
        .and_then(|text| limits.put(bucket, key, text).map_err(|err| err.to_string()));
    match checked {
        Ok(change) => Some(change),
        Err(cause) => {
            tracing::warn!(bucket, key, %cause, "a value in the cluster's data is not valid; its key reads as missing");
            delete()
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
            Some(Change::new("prices", "AAPL", Some(r#"{"p":1}"#)))
        );
        let mut deleted = HeaderMap::new();
        deleted.insert("KV-Operation", "DEL");
        assert_eq!(change_of(subject, Some(&deleted), b"", &LIMITS), Some(Change::new("prices", "AAPL", None)));
        for bad in [&b"{oops"[..], b"\"a value far over sixteen bytes\"", b"\xff"] {
            assert_eq!(change_of(subject, None, bad, &LIMITS), Some(Change::new("prices", "AAPL", None)));
        }
        assert_eq!(change_of("$KV.wasmpush-data.bad/name.k", None, b"1", &LIMITS), None, "no such key can exist");
        assert_eq!(change_of("$KV.other.prices.AAPL", None, b"1", &LIMITS), None);
    }
}
