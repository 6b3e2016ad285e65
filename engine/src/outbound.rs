//! [`OutboundQueue`]: the frames waiting to be written to one client, shared between the
//! connection's task (which writes them) and its shard's worker (which produces them).
//!
//! Data payloads conflate: a payload queued behind another unsent payload replaces it, so a slow
//! client gets the latest data rather than a backlog. Error frames never conflate. The queue is
//! bounded by [`CAPACITY`]; when it is full the queue reports it overflowed and the connection
//! is closed as a slow consumer. It must never block its producer: pushing takes a short,
//! per-connection lock and wakes the writer.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The most frames one connection may have waiting. Conflation keeps at most one data payload
/// between two error frames, so only a client that stops reading while errors pile up fills it.
pub const CAPACITY: usize = 16;

/// A frame waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A plugin payload; a newer one replaces it while unsent.
    Data(String),
    /// An error frame; always delivered in order.
    Error(String),
}

/// The frames waiting for one connection.
#[derive(Debug, Default)]
pub struct OutboundQueue {
    /// Frames in the order they were produced; at most [`CAPACITY`].
    frames: Mutex<Pending>,
    /// Woken whenever a frame is queued or the queue overflows.
    ready: Notify,
}

/// The queue's state behind its lock.
#[derive(Debug, Default)]
struct Pending {
    /// Frames not yet taken by the writer.
    frames: VecDeque<Outbound>,
    /// Set when a frame did not fit; the writer then closes the connection.
    overflowed: bool,
}

/// What the writer takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Frames to write, oldest first.
    Frames(Vec<Outbound>),
    /// The client fell too far behind; close it.
    Overflowed,
}

impl OutboundQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame and wakes the writer. A data frame replaces an unsent data frame at the
    /// back of the queue.
    pub fn push(&self, frame: Outbound) {
        {
            let mut pending = self.frames.lock().unwrap_or_else(|poison| poison.into_inner());
            let full = pending.frames.len() >= CAPACITY;
            match (pending.frames.back_mut(), &frame) {
                (Some(last @ Outbound::Data(_)), Outbound::Data(_)) => *last = frame,
                _ if full => pending.overflowed = true,
                _ => pending.frames.push_back(frame),
            }
        }
        self.ready.notify_one();
    }

    /// Waits until frames are queued, then takes them all.
    pub async fn next(&self) -> Drained {
        loop {
            {
                let mut pending = self.frames.lock().unwrap_or_else(|poison| poison.into_inner());
                if pending.overflowed {
                    return Drained::Overflowed;
                }
                if !pending.frames.is_empty() {
                    return Drained::Frames(pending.frames.drain(..).collect());
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Outbound {
        Outbound::Data(text.to_owned())
    }

    fn error(text: &str) -> Outbound {
        Outbound::Error(text.to_owned())
    }

    #[tokio::test]
    async fn data_conflates_but_errors_keep_their_place() {
        let queue = OutboundQueue::new();
        queue.push(data("1"));
        queue.push(data("2"));
        queue.push(error("e"));
        queue.push(data("3"));
        queue.push(data("4"));
        assert_eq!(queue.next().await, Drained::Frames(vec![data("2"), error("e"), data("4")]));
    }

    #[tokio::test]
    async fn a_full_queue_reports_overflow() {
        let queue = OutboundQueue::new();
        for _ in 0..=CAPACITY {
            queue.push(error("e"));
        }
        assert_eq!(queue.next().await, Drained::Overflowed);
    }

    #[tokio::test]
    async fn the_writer_wakes_for_a_frame_pushed_while_it_waits() {
        let queue = std::sync::Arc::new(OutboundQueue::new());
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.push(data("x"));
        assert_eq!(waiter.await.unwrap(), Drained::Frames(vec![data("x")]));
    }
}
