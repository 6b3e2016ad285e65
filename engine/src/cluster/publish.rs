//! Writing a batch of checked changes to the data stream, answered once JetStream has it: one
//! change as one message; several as one JetStream atomic batch (`Nats-Batch-Id`,
//! `Nats-Batch-Sequence`, `Nats-Batch-Commit` on the last), which the stream stores whole or not
//! at all. While NATS is unreachable nothing is sent and the write is refused at once; an
//! acknowledgement that does not come in time means the outcome is unknown (the write may still
//! land), which the caller must say.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{ACK_TIMEOUT, Cluster, subject};
use crate::data::{Change, DataError};

/// Messages one JetStream atomic batch may hold (the server's limit): a node of a cluster takes
/// batches up to this many keys, whatever `max_batch_keys` allows.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// Batches this process has published, for unique batch ids.
static BATCHES: AtomicU64 = AtomicU64::new(0);

/// JetStream's answer to a publish.
#[derive(serde::Deserialize)]
struct Ack {
    /// The stream sequence of the (last) message stored.
    seq: Option<u64>,
    /// Why the publish was refused.
    error: Option<AckError>,
}

#[derive(serde::Deserialize)]
struct AckError {
    description: String,
}

impl Cluster {
    /// Publishes `changes` (names and values already checked) as one batch; returns the stream
    /// sequence it was stored at: the revision every node applies it at.
    pub async fn publish(&self, changes: Vec<Change>) -> Result<u64, DataError> {
        if !self.is_connected() {
            return Err(DataError::Unavailable("NATS is unreachable: nothing was written".to_owned()));
        }
        if changes.len() > MAX_ATOMIC_BATCH {
            return Err(DataError::BatchTooLarge { count: changes.len(), limit: MAX_ATOMIC_BATCH });
        }
        if changes.len() > 1 && !self.takes_atomic_batches().await {
            return Err(DataError::Unavailable(
                "the NATS server takes no atomic batches (it needs 2.12 or later): send one key at a time".to_owned(),
            ));
        }
        let inbox = self.client.new_inbox();
        let mut acks = self.client.subscribe(inbox.clone()).await.map_err(unavailable)?;
        let batch = format!("{}-{}", std::process::id(), BATCHES.fetch_add(1, Ordering::Relaxed));
        let last = changes.len();
        for (index, change) in changes.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            if last > 1 {
                headers.insert("Nats-Batch-Id", batch.as_str());
                headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
                if index + 1 == last {
                    headers.insert("Nats-Batch-Commit", "1");
                }
            }
            let payload = match change.value {
                Some(value) => Bytes::from(value),
                None => {
                    headers.insert("KV-Operation", "DEL");
                    Bytes::new()
                }
            };
            let subject = subject(&change.bucket, &change.key);
            // Only the first message (which opens the batch) and the commit are answered.
            let sent = match index == 0 || index + 1 == last {
                true => self.client.publish_with_reply_and_headers(subject, inbox.clone(), headers, payload).await,
                false => self.client.publish_with_headers(subject, headers, payload).await,
            };
            sent.map_err(unavailable)?;
        }
        let ack = async {
            // Messages of a batch before its last are answered with nothing; the last with the ack.
            while let Some(reply) = acks.next().await {
                if reply.payload.is_empty() {
                    continue;
                }
                return Some(serde_json::from_slice::<Ack>(&reply.payload));
            }
            None
        };
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Some(Ok(Ack { seq: Some(seq), error: None }))) => Ok(seq),
            Ok(Some(Ok(Ack { error: Some(error), .. }))) => {
                Err(DataError::Storage(format!("JetStream refused the batch: {}", error.description)))
            }
            Ok(_) => Err(DataError::Storage("JetStream answered something that is no acknowledgement".to_owned())),
            Err(_) => Err(DataError::Unacknowledged(format!(
                "JetStream did not acknowledge within {ACK_TIMEOUT:?}: the write may still land"
            ))),
        }
    }
}

fn unavailable(err: impl std::fmt::Display) -> DataError {
    DataError::Unavailable(format!("NATS: {err}"))
}
