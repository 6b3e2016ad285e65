//! [`Conn`]: one connection as its shard keeps it, and the rules of its session — when it is due
//! for a call, when it is parked and what un-parks it. The rules live in [`Session`], plain data
//! with no I/O, so they are unit-tested on their own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::outbound::{Outbound, OutboundQueue};
use crate::plugin::{CallParams, ReadKey, Trigger};

/// One connection's state, owned by its shard.
pub(super) struct Conn {
    /// The slot of the tick interval in which it is ticked (`0..PHASES`), for life.
    pub(super) phase: u32,
    /// Where its frames go.
    pub(super) outbound: Arc<OutboundQueue>,
    /// Its params, push count and park state.
    pub(super) session: Session,
    /// The data keys its last call read (empty before its first call).
    pub(super) reads: Vec<ReadKey>,
    /// The same keys as the ids of the instance generation that read them, to see at a glance
    /// that a call read what the one before read. Held inline for the usual few keys: a separate
    /// allocation was a cache miss on every data push (5% of the engine's samples at 19,000
    /// connections).
    pub(super) read_ids: (u64, ReadIds),
}

/// The ids one call read, inline up to a handful.
pub(super) type ReadIds = smallvec::SmallVec<[u32; 6]>;

impl Conn {
    /// Parks the connection and sends it `frame`, the error that parked it.
    pub(super) fn park(&mut self, why: Park, frame: &str) {
        self.session.park(why, frame_hash(frame));
        self.outbound.push(Outbound::Error(frame));
    }
}

/// A frame's fingerprint, to tell a frame from the last one sent without keeping it: 128 bits of
/// xxh3, so two different frames share one with a probability of about 2^-128.
pub(super) fn frame_hash(frame: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(frame.as_bytes())
}

/// Faults (traps, timeouts, memory) one connection may cause in [`FAULT_WINDOW`]; at that many
/// its connection is closed (1008): its client keeps sending params its plugin cannot handle.
pub(super) const MAX_FAULTS: usize = 5;

/// The window [`MAX_FAULTS`] is counted over.
pub(super) const FAULT_WINDOW: Duration = Duration::from_secs(60);

/// The back-off after a connection's first fault; it doubles with each fault in the window.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What a fault leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterFault {
    /// No call until then, whatever the client sends (its params are kept for that call).
    BackOff(Instant),
    /// Close the connection: [`MAX_FAULTS`] in [`FAULT_WINDOW`].
    Close,
}

/// Why a connection is parked. New params un-park it; a redeploy un-parks `Unavailable`;
/// `error_reset_secs`, when set, retries an `Error` after that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Park {
    /// The plugin returned an error (or a fault hit this connection), at `since`.
    Error {
        /// When the error frame was sent.
        since: Instant,
    },
    /// The plugin was removed.
    Unavailable,
}

impl Park {
    /// Parked for an error, from now.
    pub(super) fn error() -> Park {
        Park::Error { since: Instant::now() }
    }
}

/// What a connection's calls depend on: its params and identity, how many pushes it had, whether
/// it is parked, and which plugin instance has seen its params.
#[derive(Debug, Clone, Default)]
pub(super) struct Session {
    /// The params JSON object; `None` until the client sends one (no calls until then).
    params: Option<Arc<str>>,
    /// Who the client is, from its verified token; `None` without one.
    identity: Option<Arc<Identity>>,
    /// Data pushes made so far; the next push has `seq = pushes + 1`.
    pushes: u64,
    /// Why the connection gets no calls, if it does not.
    parked: Option<Park>,
    /// The two instance generations that saw the current params and identity last (a shadow or
    /// canary instance runs beside the serving one); 0 for none.
    params_seen: [u64; 2],
    /// Whether a data change is waiting to re-run the connection.
    data_pending: bool,
    /// When its last data-triggered call ran.
    last_data_call: Option<Instant>,
    /// The fingerprint of the last data frame sent, kept where unchanged frames are skipped.
    last_frame: Option<u128>,
    /// The fingerprint of the error frame that parked it.
    last_error: Option<u128>,
    /// When its recent faults happened (within [`FAULT_WINDOW`]), oldest first.
    faults: VecDeque<Instant>,
    /// No call before then: the back-off after a fault.
    backoff_until: Option<Instant>,
}

impl Session {
    /// A session opened with `params` (or none yet), for a client with `identity` (or none).
    pub(super) fn new(params: Option<String>, identity: Option<Arc<Identity>>) -> Self {
        Session { params: params.map(Arc::from), identity, ..Session::default() }
    }

    /// New params from the client: no instance has seen them, and they lift any park.
    pub(super) fn set_params(&mut self, params: String) {
        self.params = Some(Arc::from(params));
        self.params_seen = [0; 2];
        self.parked = None;
    }

    /// The client refreshed its token: no instance has seen the new identity, and it lifts an
    /// error park as new params do (what the client may see can have changed).
    pub(super) fn set_identity(&mut self, identity: Arc<Identity>) {
        self.identity = Some(identity);
        self.params_seen = [0; 2];
        if matches!(self.parked, Some(Park::Error { .. })) {
            self.parked = None;
        }
    }

    /// Whether a call for `trigger` is due. A data change re-runs a connection parked for an
    /// error too (the error may have come from the data), but not one whose plugin is gone.
    pub(super) fn is_due_for(&self, trigger: Trigger, error_reset: Option<Duration>, now: Instant) -> bool {
        match trigger {
            Trigger::Data => {
                self.params.is_some()
                    && self.parked != Some(Park::Unavailable)
                    && self.backoff_until.is_none_or(|until| now >= until)
            }
            _ => self.is_due(error_reset, now),
        }
    }

    /// A key its last call read changed: when to re-run it, at the earliest `coalesce` after its
    /// last data-triggered call; `None` when a re-run is already waiting or it cannot run.
    pub(super) fn data_changed(&mut self, now: Instant, coalesce: Duration) -> Option<Instant> {
        if self.data_pending || self.params.is_none() || self.parked == Some(Park::Unavailable) {
            return None;
        }
        self.data_pending = true;
        Some(self.last_data_call.map_or(now, |last| (last + coalesce).max(now)))
    }

    /// A data-triggered call runs now.
    pub(super) fn data_called(&mut self, now: Instant) {
        self.data_pending = false;
        self.last_data_call = Some(now);
    }

    /// Whether a frame with fingerprint `hash` differs from the last one sent; it becomes the last.
    pub(super) fn frame_changed(&mut self, hash: u128) -> bool {
        self.last_frame.replace(hash) != Some(hash)
    }

    /// Whether the connection is parked by the error whose frame has fingerprint `hash` already.
    pub(super) fn parked_by(&self, hash: u128) -> bool {
        matches!(self.parked, Some(Park::Error { .. })) && self.last_error == Some(hash)
    }

    /// Whether the connection gets a call: it has params and is not parked, or was parked for an
    /// error at least `error_reset` ago (then the call retries it).
    pub(super) fn is_due(&self, error_reset: Option<Duration>, now: Instant) -> bool {
        self.params.is_some()
            && self.backoff_until.is_none_or(|until| now >= until)
            && match self.parked {
                None => true,
                Some(Park::Error { since }) => error_reset.is_some_and(|reset| now.duration_since(since) >= reset),
                Some(Park::Unavailable) => false,
            }
    }

    /// The `seq` its next push has.
    pub(super) fn next_seq(&self) -> u64 {
        self.pushes + 1
    }

    /// The params and identity to send to instance `generation`: `None` if it has seen them
    /// already.
    pub(super) fn params_for(&self, generation: u64) -> Option<CallParams<'_>> {
        (!self.params_seen.contains(&generation)).then(|| CallParams {
            json: self.params.as_deref().unwrap_or("{}"),
            identity: self.identity.as_deref().map(|who| (who.subject.as_deref(), who.claims.as_str())),
        })
    }

    /// Instance `generation` was sent the params and ran the call.
    pub(super) fn seen_by(&mut self, generation: u64) {
        if !self.params_seen.contains(&generation) {
            self.params_seen = [self.params_seen[1], generation];
        }
    }

    /// The params JSON object (`{}` before the client sent one).
    pub(super) fn params(&self) -> &str {
        self.params.as_deref().unwrap_or("{}")
    }

    /// The build that served this connection was rolled back: an error park and a back-off it
    /// caused are over. Returns whether the connection was parked (it is due at once then).
    pub(super) fn rolled_back(&mut self) -> bool {
        self.faults.clear();
        self.backoff_until = None;
        let parked = matches!(self.parked, Some(Park::Error { .. }));
        if parked {
            self.parked = None;
        }
        parked
    }

    /// A call faulted on this connection at `now`: back off for longer with each fault in the
    /// window, or give up on the connection at [`MAX_FAULTS`].
    pub(super) fn faulted(&mut self, now: Instant) -> AfterFault {
        while self.faults.front().is_some_and(|at| now.duration_since(*at) >= FAULT_WINDOW) {
            self.faults.pop_front();
        }
        self.faults.push_back(now);
        if self.faults.len() >= MAX_FAULTS {
            return AfterFault::Close;
        }
        let until = now + FIRST_BACKOFF * (1 << (self.faults.len() - 1));
        self.backoff_until = Some(until);
        AfterFault::BackOff(until)
    }

    /// A call pushed a frame: it counts, and any park is over.
    pub(super) fn pushed(&mut self) {
        self.pushes += 1;
        self.parked = None;
    }

    /// A call had nothing to push: any park is over, the count stays.
    pub(super) fn skipped(&mut self) {
        self.parked = None;
    }

    /// No calls until what `why` waits for; `error` is the fingerprint of the frame that said so.
    pub(super) fn park(&mut self, why: Park, error: u128) {
        self.parked = Some(why);
        self.last_error = Some(error);
    }

    /// Whether a removed plugin's error frame should go to this connection: it has params and
    /// is not parked already (it heard of an error and is waiting for new params).
    pub(super) fn awaits_calls(&self) -> bool {
        self.params.is_some() && self.parked.is_none()
    }

    /// The plugin is served again: a connection parked only because it was gone resumes.
    pub(super) fn redeployed(&mut self) {
        if self.parked == Some(Park::Unavailable) {
            self.parked = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: Option<Duration> = Some(Duration::from_secs(5));

    fn with_params() -> Session {
        Session::new(Some(r#"{"a":1}"#.to_owned()), None)
    }

    #[test]
    fn a_connection_without_params_is_never_due() {
        let session = Session::new(None, None);
        assert!(!session.is_due(None, Instant::now()));
        assert!(!session.is_due(RESET, Instant::now() + Duration::from_secs(60)));
        assert!(with_params().is_due(None, Instant::now()));
    }

    #[test]
    fn an_error_park_holds_until_new_params_or_the_reset() {
        let mut session = with_params();
        let since = Instant::now();
        session.park(Park::Error { since }, 1);
        assert!(!session.is_due(None, since + Duration::from_secs(3600)), "no reset: parked until new params");
        assert!(!session.is_due(RESET, since + Duration::from_secs(4)));
        assert!(session.is_due(RESET, since + Duration::from_secs(5)), "retried once the reset passed");
        session.set_params(r#"{"a":2}"#.to_owned());
        assert!(session.is_due(None, since), "new params un-park at once");
    }

    #[test]
    fn an_unavailable_park_ignores_the_reset_and_ends_with_a_redeploy() {
        let mut session = with_params();
        session.park(Park::Unavailable, 2);
        assert!(!session.is_due(RESET, Instant::now() + Duration::from_secs(3600)));
        assert!(!session.awaits_calls());
        session.redeployed();
        assert!(session.is_due(None, Instant::now()));
        session.park(Park::error(), 1);
        session.redeployed();
        assert!(!session.is_due(None, Instant::now()), "a redeploy does not lift an error park");
    }

    #[test]
    fn seq_counts_pushes_only_and_survives_params_changes() {
        let mut session = with_params();
        assert_eq!(session.next_seq(), 1);
        session.pushed();
        session.skipped();
        session.park(Park::error(), 1);
        session.set_params("{}".to_owned());
        session.pushed();
        assert_eq!(session.next_seq(), 3);
    }

    #[test]
    fn data_changes_are_coalesced_and_reach_error_parked_connections() {
        let coalesce = Duration::from_millis(10);
        let mut session = with_params();
        let now = Instant::now();
        assert_eq!(session.data_changed(now, coalesce), Some(now), "the first change runs at once");
        assert_eq!(session.data_changed(now, coalesce), None, "a second one waits with the first");
        session.data_called(now);
        let soon = now + Duration::from_millis(3);
        assert_eq!(session.data_changed(soon, coalesce), Some(now + coalesce), "not before the coalescing time");
        session.data_called(now + coalesce);
        session.park(Park::error(), 7);
        assert!(!session.is_due_for(Trigger::Tick, None, now) && session.is_due_for(Trigger::Data, None, now));
        assert!(session.parked_by(7) && !session.parked_by(8));
        session.park(Park::Unavailable, 9);
        assert_eq!(session.data_changed(now + Duration::from_secs(1), coalesce), None);
        assert!(!session.is_due_for(Trigger::Data, None, now));
        assert_eq!(Session::new(None, None).data_changed(now, coalesce), None, "no params, no call");
    }

    #[test]
    fn faults_back_off_longer_each_time_and_close_at_the_limit() {
        let mut session = with_params();
        let start = Instant::now();
        assert_eq!(session.faulted(start), AfterFault::BackOff(start + FIRST_BACKOFF));
        session.set_params(r#"{"a":2}"#.to_owned());
        assert!(!session.is_due(None, start + FIRST_BACKOFF / 2), "new params wait out the back-off");
        assert!(!session.is_due_for(Trigger::Data, None, start), "so do data changes");
        assert!(session.is_due(None, start + FIRST_BACKOFF));
        let later = start + Duration::from_secs(1);
        assert_eq!(session.faulted(later), AfterFault::BackOff(later + FIRST_BACKOFF * 2), "it doubles");
        for _ in 2..MAX_FAULTS - 1 {
            assert!(matches!(session.faulted(later), AfterFault::BackOff(_)));
        }
        assert_eq!(session.faulted(later), AfterFault::Close, "the fifth fault within a minute");
        let mut spread = with_params();
        for minute in 0..10 {
            assert!(
                matches!(spread.faulted(start + FAULT_WINDOW * minute), AfterFault::BackOff(_)),
                "one a minute is fine"
            );
        }
    }

    #[test]
    fn only_a_frame_unlike_the_last_counts_as_changed() {
        let mut session = with_params();
        assert!(session.frame_changed(frame_hash("a")));
        assert!(!session.frame_changed(frame_hash("a")));
        assert!(session.frame_changed(frame_hash("b")));
        assert!(session.frame_changed(frame_hash("a")));
    }

    #[test]
    fn params_go_to_each_instance_once_and_again_after_a_change() {
        let mut session = with_params();
        assert_eq!(session.params_for(1), Some(r#"{"a":1}"#.into()));
        session.seen_by(1);
        assert_eq!(session.params_for(1), None);
        assert_eq!(session.params_for(2), Some(r#"{"a":1}"#.into()), "a new instance is sent them");
        session.seen_by(2);
        assert_eq!((session.params_for(1), session.params_for(2)), (None, None), "two instances side by side");
        session.seen_by(3);
        assert_eq!(session.params_for(1), Some(r#"{"a":1}"#.into()), "the oldest of three is sent them again");
        session.set_params(r#"{"a":2}"#.to_owned());
        assert_eq!(session.params_for(3), Some(r#"{"a":2}"#.into()));
    }

    #[test]
    fn a_rollback_lifts_the_error_park_and_the_back_off_a_candidate_caused() {
        let mut session = with_params();
        assert!(!session.rolled_back(), "nothing to lift");
        session.faulted(Instant::now());
        session.park(Park::error(), 7);
        assert!(!session.is_due(None, Instant::now()));
        assert!(session.rolled_back());
        assert!(session.is_due(None, Instant::now()), "due at once on the serving build");
        session.park(Park::Unavailable, 8);
        assert!(!session.rolled_back(), "a removed plugin's park is not the candidate's");
    }

    #[test]
    fn a_refreshed_identity_is_sent_again_and_lifts_an_error_park() {
        let mut session = with_params();
        session.seen_by(1);
        session.park(Park::error(), 7);
        let who = Identity { subject: Some("u7".into()), claims: r#"{"sub":"u7"}"#.into(), expires_at: 9 };
        session.set_identity(Arc::new(who));
        assert!(session.is_due(None, Instant::now()), "un-parked");
        let sent = session.params_for(1).expect("sent again");
        assert_eq!(sent.identity, Some((Some("u7"), r#"{"sub":"u7"}"#)));
    }
}
