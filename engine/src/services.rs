//! The parts of a running engine that a restart's handover stops, and starts again if the new
//! engine fails before it serves: the admin endpoint and the publish API, each on a copy of its
//! listening socket (both engines hold the sockets, so each start serves a fresh copy), the
//! data writer, which holds the data store (one process at a time may open it), and, on a node
//! of a cluster, the follower that feeds the writer from the cluster's data stream and the
//! node's announcements (a stopped engine leaves the cluster's list at once; its successor
//! joins it under the same name).

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cluster::Cluster;
use crate::data::{ChangeSet, DataLimits, DataStore, DataView, DurableStore, StoreFault};
use crate::publish::{self, PublishSettings};

/// The admin endpoint, the publish API and the data writer, started and stopped together.
pub(crate) struct Services {
    /// The admin endpoint's socket and what it reads, if it has one.
    admin: Option<(std::net::TcpListener, AdminState)>,
    /// The publish API's socket and settings, if it has one.
    publish: Option<(std::net::TcpListener, PublishSettings)>,
    /// Ends the admin endpoint and the publish API.
    stop: CancellationToken,
    /// The admin endpoint and the publish API, while they run.
    running: Vec<JoinHandle<()>>,
    /// The data writer's handle and thread, while it runs.
    data: Option<(DataStore, std::thread::JoinHandle<()>)>,
    /// Why the data store cannot write, if it cannot: one for every start of the writer, read by
    /// the admin endpoint.
    fault: StoreFault,
    /// On a node of a cluster: the cluster, the node's name in it, and what it announces.
    cluster: Option<(Cluster, String, AdminState)>,
}

impl Services {
    /// Services on these sockets, none started yet.
    pub(crate) fn new(
        admin: Option<(std::net::TcpListener, AdminState)>,
        publish: Option<(std::net::TcpListener, PublishSettings)>,
        fault: StoreFault,
        cluster: Option<(Cluster, String, AdminState)>,
    ) -> Self {
        Services { admin, publish, stop: CancellationToken::new(), running: Vec::new(), data: None, fault, cluster }
    }

    /// Starts the admin endpoint.
    pub(crate) fn start_admin(&mut self) -> std::io::Result<()> {
        let Some((socket, state)) = &self.admin else { return Ok(()) };
        let (listener, state, stop) = (copy(socket)?, state.clone(), self.stop.clone());
        self.running.push(tokio::spawn(admin::serve(listener, state, stop)));
        Ok(())
    }

    /// Starts the data writer on `durable`, applying each change to `view` and handing it to
    /// `announce`.
    pub(crate) fn start_data(
        &mut self,
        durable: DurableStore,
        view: &DataView,
        limits: DataLimits,
        announce: impl Fn(Arc<ChangeSet>) + Send + 'static,
    ) -> std::io::Result<()> {
        self.data = Some(DataStore::start(durable, view.clone(), limits, self.fault.clone(), announce)?);
        Ok(())
    }

    /// The data writer's handle, while it runs.
    pub(crate) fn data_store(&self) -> Option<DataStore> {
        self.data.as_ref().map(|(store, _)| store.clone())
    }

    /// Starts the publish API in front of the data writer.
    pub(crate) fn start_publish(&mut self) -> std::io::Result<()> {
        let (Some((socket, settings)), Some((store, _))) = (&self.publish, &self.data) else { return Ok(()) };
        let (listener, store, settings, stop) = (copy(socket)?, store.clone(), settings.clone(), self.stop.clone());
        tracing::info!(publish = ?listener.local_addr().ok(), "publish API listening");
        self.running.push(tokio::spawn(async move {
            if let Err(err) = publish::serve(listener, store, settings, stop).await {
                tracing::error!(cause = %err, "publish API failed");
            }
        }));
        Ok(())
    }

    /// On a node of a cluster: follows the cluster's data stream into the data writer, and
    /// announces the node, until the services stop.
    pub(crate) fn start_cluster(&mut self, limits: DataLimits) {
        let (Some(store), Some((cluster, node, state))) = (self.data_store(), &self.cluster) else { return };
        let (follower, stop) = (cluster.clone(), self.stop.clone());
        self.running.push(tokio::spawn(async move {
            tokio::select! {
                () = follower.follow(store, limits) => {}
                () = stop.cancelled() => {}
            }
        }));
        let state = state.clone();
        let announce = cluster.clone().announce(node.clone(), move || state.announcement(), self.stop.clone());
        self.running.push(tokio::spawn(announce));
    }

    /// Stops them all: the admin endpoint and the publish API finish their requests (within
    /// `http_server::STOP_GRACE`: a client that holds one longer is dropped), then the
    /// data writer ends and closes the data store, so every acknowledged update is on disk and
    /// another process can open the store.
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        for task in self.running.drain(..) {
            let _ = task.await;
        }
        self.stop = CancellationToken::new();
        if let Some((store, writer)) = self.data.take() {
            drop(store);
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

/// A listener on a copy of `socket`, for one start of a service.
fn copy(socket: &std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    let copy = socket.try_clone()?;
    copy.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(copy)
}
