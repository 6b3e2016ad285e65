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
//! - this file: connecting, the data stream.
//! - `follow`: a node applying the stream to its store.
//! - `publish`: writing a batch to the stream.

mod follow;
mod publish;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;

use crate::config::ClusterSettings;

/// The KV bucket holding every data bucket's keys.
const DATA_BUCKET: &str = "wasmpush-data";

/// The stream behind [`DATA_BUCKET`].
const DATA_STREAM: &str = "KV_wasmpush-data";

/// How long a write waits for JetStream's acknowledgement before it answers "outcome unknown".
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Bytes of one value: the bucket's value limit.
    max_value_bytes: usize,
    /// Whether the data stream takes atomic batches (NATS 2.12 and later), once known.
    atomic_batches: Arc<AtomicBool>,
    /// The stream's last sequence when this node last began to follow it: the node has caught
    /// up once it applied that far.
    catch_up_to: Arc<AtomicU64>,
    /// Whether the node has applied the stream up to [`Self::catch_up_to`] since it started.
    caught_up: Arc<AtomicBool>,
    /// Set when the node holds a later revision than the stream's last: the stream was recreated
    /// or went back, and following it would skip its first entries. The node stops following.
    diverged: Arc<AtomicU64>,
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
        let mut options =
            async_nats::ConnectOptions::new().retry_on_initial_connect().max_reconnects(None).name("wasmpush");
        if let Some(path) = &settings.creds_file {
            options = options.credentials_file(path).await.map_err(|err| ClusterError::Setup(err.to_string()))?;
        }
        if let Some(token) = &settings.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &settings.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        let urls: Vec<async_nats::ServerAddr> = settings
            .nats
            .iter()
            .map(|url| url.parse().map_err(|err| ClusterError::Setup(format!("`{url}`: {err}"))))
            .collect::<Result<_, _>>()?;
        let client = options.connect(urls).await.map_err(|err| ClusterError::Setup(err.to_string()))?;
        let jetstream = jetstream::new(client.clone());
        Ok(Cluster {
            client,
            jetstream,
            max_value_bytes,
            atomic_batches: Arc::default(),
            catch_up_to: Arc::default(),
            caught_up: Arc::default(),
            diverged: Arc::default(),
        })
    }

    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The stream's last sequence, when this node holds a later revision than it (the stream was
    /// recreated or went back): the node no longer follows it rather than serve a gap.
    pub fn diverged_from(&self) -> Option<u64> {
        match self.diverged.load(Ordering::Relaxed) {
            0 => None,
            last => Some(last - 1),
        }
    }

    /// `None` once the node has applied the data stream as far as it reached when the node
    /// began to follow it; until then the sequence it must reach. A node that started while
    /// NATS was unreachable has not caught up: it serves its own store's data meanwhile.
    pub fn catching_up_to(&self) -> Option<u64> {
        (!self.caught_up.load(Ordering::Relaxed)).then(|| self.catch_up_to.load(Ordering::Relaxed))
    }

    /// The data stream, created (as KV bucket [`DATA_BUCKET`], history 1, atomic batches
    /// allowed) if it does not exist.
    async fn data_stream(&self) -> Result<jetstream::stream::Stream, ClusterError> {
        let js = |err: &dyn std::fmt::Display| ClusterError::JetStream(err.to_string());
        let stream = match self.jetstream.get_stream(DATA_STREAM).await {
            Ok(stream) => stream,
            Err(_) => {
                let config = jetstream::kv::Config {
                    bucket: DATA_BUCKET.to_owned(),
                    history: 1,
                    max_value_size: i32::try_from(self.max_value_bytes).unwrap_or(i32::MAX),
                    ..Default::default()
                };
                self.jetstream.create_key_value(config).await.map_err(|err| js(&err))?;
                self.jetstream.get_stream(DATA_STREAM).await.map_err(|err| js(&err))?
            }
        };
        if !stream.cached_info().config.allow_atomic_publish {
            let mut config = stream.cached_info().config.clone();
            config.allow_atomic_publish = true;
            if let Err(err) = self.jetstream.update_stream(config).await {
                tracing::warn!(cause = %err, "the NATS server does not allow atomic batches: multi-key batches are refused");
            }
        }
        let stream = self.jetstream.get_stream(DATA_STREAM).await.map_err(|err| js(&err))?;
        self.atomic_batches.store(stream.cached_info().config.allow_atomic_publish, Ordering::Relaxed);
        Ok(stream)
    }

    /// Whether a batch of several changes can be published whole: the data stream takes atomic
    /// batches (asked once, the first time).
    async fn takes_atomic_batches(&self) -> bool {
        if !self.atomic_batches.load(Ordering::Relaxed)
            && let Err(err) = self.data_stream().await
        {
            tracing::warn!(cause = %err, "cannot read the data stream's settings");
        }
        self.atomic_batches.load(Ordering::Relaxed)
    }
}

/// The stream subject of `key` of data bucket `bucket`.
fn subject(bucket: &str, key: &str) -> String {
    format!("$KV.{DATA_BUCKET}.{bucket}.{key}")
}
