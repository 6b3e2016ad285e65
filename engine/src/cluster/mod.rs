//! Many engine nodes sharing one data set through NATS JetStream. A node of a cluster
//! (`[cluster] nats = [...]`) writes what its publish API is given to JetStream and answers once
//! JetStream has it; every node — the writer too — follows the stream and applies each change to
//! its own store through the same `DataStore` path the publish API uses alone, at the stream's
//! sequence as its revision. No protocol of our own runs between nodes.
//!
//! The data is one KV bucket, `wasmpush-data`, whose keys are `BUCKET.KEY` (a data bucket name
//! has no dot): one stream, so one revision orders every change of every bucket, a node knows
//! exactly what it applied (its store's revision), and a POST batch is one JetStream atomic
//! batch. JetStream keeps the batch headers on the stored messages, so a follower applies a
//! batch whole (see `follow`).
//!
//! It must not know plugins, shards or HTTP: the publish API calls [`Cluster::publish`], the
//! server starts [`Cluster::follow`].
//!
//! ## Layout
//! - this file: the node's link, the data stream.
//! - `connection`: the NATS client's options, credentials checked; why the link is down.
//! - `follow`: a node applying the stream to its store.
//! - `publish`: writing a batch to the stream.
//! - `plugins`: plugin builds in an Object Store, a pointer per plugin, nodes following them.
//! - `presence`: every node announcing itself, and the list of nodes.
//! - `nodes`: the nodes as a node knows them: what each announces, its age, whether it is gone.
//! - `heard`: the list of nodes as a node's watch of their entries delivers it.
//! - `rollouts`: the cluster's rollouts, judged on every node's figures.
//! - `tend`: the judge's round: old builds removed, rollouts judged, by one node.

mod connection;
mod follow;
mod heard;
mod nodes;
mod plugins;
mod presence;
mod publish;
mod rollouts;
mod tend;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::response::Response;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::config::{ClusterSettings, RolloutSettings};
use connection::LinkTrouble;
pub use nodes::{Announcement, ClusterNode};
pub use plugins::{DeployError, Deployed, START_SYNC_TIME};
pub use presence::{ANNOUNCE_PERIOD, NAME_TAKEN};

/// The KV bucket holding every data bucket's keys.
const DATA_BUCKET: &str = "wasmpush-data";

/// The stream behind [`DATA_BUCKET`].
const DATA_STREAM: &str = "KV_wasmpush-data";

/// How long a write waits for JetStream's acknowledgement before it answers "outcome unknown".
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a node's own rounds wait for an answer to a JetStream request: the follower's (the
/// stream's state, a consumer) and the announcements'. JetStream answers in milliseconds while
/// a stream has a leader and never while it has none (a NATS cluster electing one after a
/// restart): such a round asks again sooner rather than wait out 5 s, after which a node that
/// announces every 2 s would look gone.
const QUICK_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS client could not be set up (a credentials or CA file).
    #[error("cannot set up the NATS connection: {0}")]
    Setup(String),
    /// JetStream refused or failed a request.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// A node's link to the cluster: the NATS connection and its JetStream context. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    /// The connection, reconnecting by itself.
    client: async_nats::Client,
    /// JetStream on it.
    jetstream: jetstream::Context,
    /// JetStream on it, for the node's own rounds ([`QUICK_REQUEST_TIMEOUT`]).
    quick_jetstream: jetstream::Context,
    /// Bytes of one value: the bucket's value limit.
    max_value_bytes: usize,
    /// Copies JetStream keeps of each bucket this node creates.
    replicas: usize,
    /// Bits a second NATS sends this node while it catches up (0: no limit).
    catch_up_bits: u64,
    /// What the node knows of its following of the data.
    link: Arc<Link>,
    /// Why the NATS client last failed, since it last connected.
    trouble: Arc<LinkTrouble>,
    /// This process's presence in the cluster's list of nodes.
    presence: Arc<presence::Presence>,
    /// How the cluster's rollouts are judged (on the node that judges them).
    rollouts: RolloutSettings,
}

/// What a node knows of its following of the cluster's data: set by the follower, read by status.
#[derive(Debug, Default)]
struct Link {
    /// Whether the data stream takes atomic batches (NATS 2.12 and later), once known.
    atomic_batches: AtomicBool,
    /// The stream's last sequence when this node last began to follow it from scratch: the
    /// node has caught up once it applied that far.
    catch_up_to: AtomicU64,
    /// Whether the node has applied the stream up to `catch_up_to`.
    caught_up: AtomicBool,
    /// Stream messages after the last one the node applied, as last seen.
    lag: AtomicU64,
    /// How often the following ended (a failure, a stall, a recreated stream) and began again.
    follow_restarts: AtomicU64,
    /// Values written straight to the stream that failed the checks, by data bucket.
    invalid: Mutex<BTreeMap<String, u64>>,
}

impl Link {
    /// Counts an invalid value of `bucket`.
    fn count_invalid(&self, bucket: String) {
        *self.invalid.lock().unwrap_or_else(|poison| poison.into_inner()).entry(bucket).or_default() += 1;
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("state", &self.client.connection_state()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the cluster's NATS servers; returns at once even while none is reachable
    /// (the client keeps trying: the node serves from its own store meanwhile).
    pub async fn connect(settings: &ClusterSettings, max_value_bytes: usize) -> Result<Cluster, ClusterError> {
        let trouble = Arc::default();
        let options = connection::options(settings, &trouble).await?.retry_on_initial_connect();
        Self::connect_with(options, trouble, settings, max_value_bytes).await
    }

    /// Connects for one command (`wasmpush deploy`): an error at once when no server answers.
    pub async fn connect_once(settings: &ClusterSettings, max_value_bytes: usize) -> Result<Cluster, ClusterError> {
        let trouble = Arc::default();
        let options = connection::options(settings, &trouble).await?.connection_timeout(ACK_TIMEOUT);
        Self::connect_with(options, trouble, settings, max_value_bytes).await
    }

    async fn connect_with(
        options: async_nats::ConnectOptions,
        trouble: Arc<LinkTrouble>,
        settings: &ClusterSettings,
        max_value_bytes: usize,
    ) -> Result<Cluster, ClusterError> {
        let urls = connection::server_addrs(settings)?;
        let client = options.connect(urls).await.map_err(|err| ClusterError::Setup(err.to_string()))?;
        let jetstream = jetstream::new(client.clone());
        let mut quick_jetstream = jetstream.clone();
        quick_jetstream.set_timeout(QUICK_REQUEST_TIMEOUT);
        let (replicas, rollouts) = (settings.replicas, RolloutSettings::default());
        let catch_up_bits = settings.catch_up_limit_mbps(max_value_bytes) * 1_000_000;
        let (link, presence) = (Arc::default(), Arc::new(presence::Presence::new()));
        Ok(Cluster {
            client,
            jetstream,
            quick_jetstream,
            max_value_bytes,
            replicas,
            catch_up_bits,
            link,
            trouble,
            presence,
            rollouts,
        })
    }

    /// The same cluster, judging its rollouts by `settings` (`[rollouts]`).
    pub fn judging_by(self, settings: RolloutSettings) -> Self {
        Cluster { rollouts: settings, ..self }
    }

    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// While the NATS connection is down, why, as the client last failed (a refused credential,
    /// a TLS failure, no server answering), if it said.
    pub fn link_trouble(&self) -> Option<String> {
        if self.is_connected() { None } else { self.trouble.reason() }
    }

    /// `None` once the node has applied the data stream as far as it reached when the node
    /// began to follow it (or to resync); until then the sequence it must reach. A node that
    /// started while NATS was unreachable has not caught up: it serves its own store's data
    /// meanwhile.
    pub fn catching_up_to(&self) -> Option<u64> {
        (!self.link.caught_up.load(Ordering::Relaxed)).then(|| self.link.catch_up_to.load(Ordering::Relaxed))
    }

    /// Stream messages the node has not applied yet, as last seen.
    pub fn lag(&self) -> u64 {
        self.link.lag.load(Ordering::Relaxed)
    }

    /// How often the following ended while NATS was reachable (a failure, a stalled watch, a
    /// stream recreated) and began again from the applied revision.
    pub fn follow_restarts(&self) -> u64 {
        self.link.follow_restarts.load(Ordering::Relaxed)
    }

    /// Values written straight to the data stream that failed the checks (not JSON, too large,
    /// a bad key), by data bucket: they were not applied.
    pub fn invalid_values(&self) -> BTreeMap<String, u64> {
        self.link.invalid.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// The data stream, created (as KV bucket [`DATA_BUCKET`], history 1, atomic batches
    /// allowed) if JetStream says it does not exist; its requests wait
    /// [`QUICK_REQUEST_TIMEOUT`] for their answers.
    async fn data_stream(&self) -> Result<jetstream::stream::Stream, ClusterError> {
        let jetstream = &self.quick_jetstream;
        let mut stream = found_or_created(jetstream.get_stream(DATA_STREAM).await, || async {
            let config = jetstream::kv::Config {
                bucket: DATA_BUCKET.to_owned(),
                history: 1,
                max_value_size: i32::try_from(self.max_value_bytes).unwrap_or(i32::MAX),
                num_replicas: self.replicas,
                ..Default::default()
            };
            Ok(jetstream.create_key_value(config).await.map_err(jetstream_error)?.stream)
        })
        .await?;
        if !stream.cached_info().config.allow_atomic_publish {
            let mut config = stream.cached_info().config.clone();
            config.allow_atomic_publish = true;
            match jetstream.update_stream(config).await {
                Ok(_) => stream = jetstream.get_stream(DATA_STREAM).await.map_err(jetstream_error)?,
                Err(err) => {
                    tracing::warn!(cause = %err, "the NATS server does not allow atomic batches: multi-key batches are refused")
                }
            }
        }
        self.link.atomic_batches.store(stream.cached_info().config.allow_atomic_publish, Ordering::Relaxed);
        Ok(stream)
    }

    /// Whether a batch of several changes can be published whole: the data stream takes atomic
    /// batches (asked once, the first time).
    async fn takes_atomic_batches(&self) -> bool {
        if !self.link.atomic_batches.load(Ordering::Relaxed)
            && let Err(err) = self.data_stream().await
        {
            tracing::warn!(cause = %err, "cannot read the data stream's settings");
        }
        self.link.atomic_batches.load(Ordering::Relaxed)
    }
}

impl Cluster {
    /// The KV bucket `config` names, created with `config` (and the node's replicas) if JetStream
    /// says it is missing.
    async fn kv_bucket(&self, config: jetstream::kv::Config) -> Result<jetstream::kv::Store, ClusterError> {
        self.kv_bucket_on(&self.jetstream, config).await
    }

    /// [`Cluster::kv_bucket`] through `jetstream`, whose timeout its requests then keep.
    async fn kv_bucket_on(
        &self,
        jetstream: &jetstream::Context,
        config: jetstream::kv::Config,
    ) -> Result<jetstream::kv::Store, ClusterError> {
        found_or_created(jetstream.get_key_value(&config.bucket).await, || async {
            let config = jetstream::kv::Config { num_replicas: self.replicas, ..config };
            jetstream.create_key_value(config).await.map_err(jetstream_error)
        })
        .await
    }

    /// The NATS server's clock now: the time JetStream stamps on the info of stream `stream`
    /// (`ts`), answered by the stream's leader, a server that stamps messages. Ages and windows
    /// are read on it (one reading serves a node's whole announcement round: the servers of a
    /// NATS cluster keep their clocks in step, its nodes need not), so no node's or operator's
    /// clock that is off decides them. Without one (a server before 2.10), this machine's clock.
    pub(super) async fn server_now(&self, stream: &str) -> Result<OffsetDateTime, ClusterError> {
        /// The part of a stream's info read here.
        #[derive(Deserialize)]
        struct Stamped {
            #[serde(default, with = "time::serde::rfc3339::option")]
            ts: Option<OffsetDateTime>,
        }
        let subject = format!("STREAM.INFO.{stream}");
        match self.jetstream.request(subject, &()).await.map_err(jetstream_error)? {
            Response::Ok(Stamped { ts }) => Ok(ts.unwrap_or_else(OffsetDateTime::now_utc)),
            Response::Err { error } => Err(jetstream_error(error)),
        }
    }
}

/// What `got` holds, or, only when JetStream answered that the stream behind it does not exist,
/// what `create` makes: a request unanswered (a NATS cluster without a leader) is no sign that a
/// stream is missing, and creating one then would only wait out another timeout.
async fn found_or_created<T, E, Created>(got: Result<T, E>, create: impl FnOnce() -> Created) -> Result<T, ClusterError>
where
    E: std::error::Error + 'static,
    Created: Future<Output = Result<T, ClusterError>>,
{
    match got {
        Ok(found) => Ok(found),
        Err(err) if is_not_found(&err) => create().await,
        Err(err) => Err(jetstream_error(err)),
    }
}

/// Whether JetStream answered that the stream behind a request (a bucket's, an object store's)
/// does not exist, anywhere in the error's sources; an unanswered request is not such an answer.
fn is_not_found(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| {
        err.downcast_ref::<jetstream::context::GetStreamError>().is_some_and(|err| {
            matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
        })
    })
}

/// A JetStream failure as a [`ClusterError`].
fn jetstream_error(err: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(err.to_string())
}

/// The stream subject of `key` of data bucket `bucket`.
fn subject(bucket: &str, key: &str) -> String {
    format!("$KV.{DATA_BUCKET}.{bucket}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueError, KeyValueErrorKind};

    /// JetStream's answer with error code `err_code`.
    fn answered(err_code: u16) -> GetStreamError {
        let answer = serde_json::json!({ "code": 404, "err_code": err_code, "description": "refused" });
        GetStreamError::new(GetStreamErrorKind::JetStream(serde_json::from_value(answer).unwrap()))
    }

    #[test]
    fn only_jetstreams_answer_that_the_stream_is_missing_counts_as_missing() {
        assert!(is_not_found(&answered(10059)));
        // JetStream unavailable (a NATS cluster without a leader), and a request unanswered.
        assert!(!is_not_found(&answered(10008)));
        assert!(!is_not_found(&GetStreamError::new(GetStreamErrorKind::Request)));
        // A bucket's: the stream's answer is its source.
        let bucket = |source| KeyValueError::with_source(KeyValueErrorKind::GetBucket, source);
        assert!(is_not_found(&bucket(answered(10059))));
        assert!(!is_not_found(&bucket(GetStreamError::new(GetStreamErrorKind::Request))));
    }
}
