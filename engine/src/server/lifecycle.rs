//! What a restart needs of the engine besides running it ([`Lifecycle`]), and what the two
//! engines of a restart hand each other: the new one awaits a [`TakeOver`] and gets [`Released`];
//! the old one is asked with a [`HandOver`] and learns what became of its [`Successor`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::data::{Change, ChangeSet};

/// What a restart's new engine awaits before it opens the data store: the old engine letting go,
/// or why it did not.
pub type TakeOver = Pin<Box<dyn Future<Output = Result<Released, String>> + Send>>;

/// What a restart's new engine gets once the old engine has let go.
pub struct Released {
    /// Where to send each batch published from then on.
    pub forward: Forward,
    /// Tells the old engine that this one serves. Until then the old engine keeps its
    /// connections, and serves on if this one fails; from then on it drains them.
    pub serving: Box<dyn FnOnce() + Send>,
}

/// Where a restart's new engine sends each batch it publishes, for the old engine still draining
/// its connections: their clients keep getting data pushes until they reconnect. It must not
/// block, nor do the work of forwarding (it runs on the data writer's thread).
pub type Forward = Box<dyn Fn(&Arc<ChangeSet>) + Send>;

/// A restart's new engine asking this one to let go.
pub struct HandOver {
    /// Answered once this engine has stopped accepting and closed its admin endpoint, publish
    /// API and data store.
    pub released: oneshot::Sender<()>,
    /// What became of the new engine then; dropped unanswered if it failed.
    pub successor: oneshot::Receiver<Successor>,
}

/// A restart's new engine, after the old one let go.
pub enum Successor {
    /// It serves: the old engine closes its connections with 1012 over `drain_secs`, applying
    /// the batches the new engine forwards (through this channel) meanwhile.
    Serving(mpsc::Receiver<Vec<Change>>),
    /// It failed before it served (for this reason): the old engine opens its data store again
    /// and serves on.
    Failed(String),
}

/// What a restart needs of the engine, besides running it.
pub struct Lifecycle {
    /// Called once the engine serves: the data is loaded, the first plugin scan has ended and the
    /// accept loop runs (what systemd's `READY=1` must mean).
    pub on_ready: Box<dyn FnOnce() + Send>,
    /// A restart's new engine: awaited after the first plugin scan and before the data store
    /// opens; it asks the old engine to let go of the data store and stop accepting.
    pub take_over: Option<TakeOver>,
    /// Requests to hand this engine over to a restart's new one (see [`HandOver`]).
    pub hand_over: Option<mpsc::Receiver<HandOver>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { on_ready: Box::new(|| {}), take_over: None, hand_over: None }
    }
}
