//! [`Outcomes`]: a batch's results as the guest packed them (a kind and an end offset per call,
//! every text in one buffer), checked against the contract before the engine reads them, and
//! [`Outcome`], one call's result borrowed from them.
//!
//! One buffer per batch instead of one string per call: the host copies one list out of the
//! guest rather than allocating, validating and freeing a string per push, and a push's text
//! goes from that buffer straight to the socket.

use super::bindings::wasmpush::plugin::types::{self, Outcome as Kind};
use super::fault::PluginFault;

/// Data keys one call may report as used. The engine holds a connection's last reads for its
/// life (to re-run it when one changes), so this bounds what each connection may hold; a call
/// over it is a contract fault, which lands on that call alone once the batch is replayed.
pub const MAX_READS_PER_CALL: usize = 4096;

/// What one call produced, borrowed from its batch's [`Outcomes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Send this text frame to the client.
    Push(&'a str),
    /// Nothing to send this time.
    Skip,
    /// A business error: sent to the client once, then the connection is parked.
    Error(&'a str),
}

/// The checked results of one batch: exactly one per call, each text and each call's data reads
/// within their buffers.
#[derive(Debug)]
pub struct Outcomes {
    kinds: Vec<Kind>,
    ends: Vec<u32>,
    text: Text,
    /// The ids of the data keys the calls used, back to back.
    reads: Vec<u32>,
    /// Where each call's ids end in `reads`.
    read_ends: Vec<u32>,
}

/// A batch's text buffer: checked to be UTF-8 once as a whole (what a well-behaved guest sends),
/// or kept as bytes to check call by call, so a bad text fails only its own call.
#[derive(Debug)]
enum Text {
    Utf8(String),
    Bytes(Vec<u8>),
}

impl Outcomes {
    /// Checks what the guest returned for a batch of `calls` calls: one kind and one end per
    /// call, ends that never decrease and stay within the text. A batch that breaks this is a
    /// contract fault as a whole; a text that is not UTF-8 fails only its own call (see
    /// [`Self::get`]).
    pub(super) fn check(raw: types::Outcomes, calls: usize) -> Result<Outcomes, PluginFault> {
        let types::Outcomes { kinds, ends, text, reads, read_ends } = raw;
        if kinds.len() != calls || ends.len() != calls || read_ends.len() != calls {
            return Err(PluginFault::Contract(format!(
                "returned {} outcomes, {} text ends and {} read ends for {calls} calls",
                kinds.len(),
                ends.len(),
                read_ends.len()
            )));
        }
        check_ends(&ends, text.len(), "text")?;
        check_ends(&read_ends, reads.len(), "reads")?;
        let mut start = 0;
        for end in &read_ends {
            let used = *end as usize - start;
            if used > MAX_READS_PER_CALL {
                return Err(PluginFault::Contract(format!(
                    "a call reported {used} data keys used, more than {MAX_READS_PER_CALL}"
                )));
            }
            start = *end as usize;
        }
        let text = String::from_utf8(text).map_or_else(|err| Text::Bytes(err.into_bytes()), Text::Utf8);
        Ok(Outcomes { kinds, ends, text, reads, read_ends })
    }

    /// How many outcomes there are: one per call.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether the batch had no calls.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Call `index`'s outcome; a contract fault if its text is not UTF-8.
    ///
    /// # Panics
    /// If `index` is not below [`Self::len`].
    pub fn get(&self, index: usize) -> Result<Outcome<'_>, PluginFault> {
        let start = index.checked_sub(1).map_or(0, |previous| self.ends[previous] as usize);
        let range = start..self.ends[index] as usize;
        let not_utf8 = |why: String| PluginFault::Contract(format!("the text of call {index} is not UTF-8: {why}"));
        let text = match &self.text {
            // The whole is UTF-8, so a text is too unless an end falls inside a character.
            Text::Utf8(all) => all.get(range).ok_or_else(|| not_utf8("it starts or ends inside a character".into()))?,
            Text::Bytes(all) => std::str::from_utf8(&all[range]).map_err(|err| not_utf8(err.to_string()))?,
        };
        Ok(match self.kinds[index] {
            Kind::Push => Outcome::Push(text),
            Kind::Skip => Outcome::Skip,
            Kind::Error => Outcome::Error(text),
        })
    }

    /// The ids of the data keys call `index` used.
    ///
    /// # Panics
    /// If `index` is not below [`Self::len`].
    pub fn reads(&self, index: usize) -> &[u32] {
        let start = index.checked_sub(1).map_or(0, |previous| self.read_ends[previous] as usize);
        &self.reads[start..self.read_ends[index] as usize]
    }

    /// Every call's outcome, in call order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Outcome<'_>, PluginFault>> {
        (0..self.len()).map(|index| self.get(index))
    }
}

/// Checks that `ends` never decrease and never pass `len`, the length of the buffer they cut.
fn check_ends(ends: &[u32], len: usize, buffer: &str) -> Result<(), PluginFault> {
    let mut start = 0;
    for &end in ends {
        if end < start || end as usize > len {
            return Err(PluginFault::Contract(format!("{buffer} end {end} is outside {start}..={len} of its buffer")));
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kinds: &[Kind], ends: &[u32], text: &[u8]) -> types::Outcomes {
        let read_ends = vec![0; kinds.len()];
        types::Outcomes {
            kinds: kinds.to_vec(),
            ends: ends.to_vec(),
            text: text.to_vec(),
            reads: Vec::new(),
            read_ends,
        }
    }

    #[test]
    fn texts_are_cut_at_their_ends() {
        let outcomes =
            Outcomes::check(raw(&[Kind::Push, Kind::Skip, Kind::Error], &[5, 5, 9], b"helloboom"), 3).unwrap();
        let read: Vec<_> = outcomes.iter().map(Result::unwrap).collect();
        assert_eq!(read, [Outcome::Push("hello"), Outcome::Skip, Outcome::Error("boom")]);
    }

    #[test]
    fn a_count_other_than_the_calls_is_a_contract_fault() {
        let err = Outcomes::check(raw(&[Kind::Skip], &[0], b""), 2).unwrap_err();
        assert_eq!(err, PluginFault::Contract("returned 1 outcomes, 1 text ends and 1 read ends for 2 calls".into()));
        assert!(Outcomes::check(raw(&[Kind::Skip, Kind::Skip], &[0], b""), 2).is_err());
    }

    #[test]
    fn ends_outside_the_text_or_going_back_are_contract_faults() {
        let past_the_end = Outcomes::check(raw(&[Kind::Push], &[4], b"abc"), 1).unwrap_err();
        assert_eq!(past_the_end, PluginFault::Contract("text end 4 is outside 0..=3 of its buffer".into()));
        let backwards = Outcomes::check(raw(&[Kind::Push, Kind::Push], &[2, 1], b"abc"), 2).unwrap_err();
        assert_eq!(backwards, PluginFault::Contract("text end 1 is outside 2..=3 of its buffer".into()));
    }

    #[test]
    fn each_call_has_its_own_reads_and_bad_read_ends_are_contract_faults() {
        let mut with_reads = raw(&[Kind::Skip, Kind::Skip, Kind::Skip], &[0, 0, 0], b"");
        (with_reads.reads, with_reads.read_ends) = (vec![4, 9, 9], vec![2, 2, 3]);
        let outcomes = Outcomes::check(with_reads, 3).unwrap();
        assert_eq!((outcomes.reads(0), outcomes.reads(1), outcomes.reads(2)), (&[4, 9][..], &[][..], &[9][..]));
        let mut past = raw(&[Kind::Skip], &[0], b"");
        (past.reads, past.read_ends) = (vec![1], vec![2]);
        let mut too_many = raw(&[Kind::Skip], &[0], b"");
        (too_many.reads, too_many.read_ends) = (vec![0; MAX_READS_PER_CALL + 1], vec![MAX_READS_PER_CALL as u32 + 1]);
        assert!(
            matches!(Outcomes::check(too_many, 1), Err(PluginFault::Contract(msg)) if msg.contains("more than 4096"))
        );
        assert!(matches!(Outcomes::check(past, 1), Err(PluginFault::Contract(msg)) if msg.starts_with("reads end 2")));
    }

    #[test]
    fn an_end_inside_a_character_fails_the_calls_on_either_side() {
        // "é" is two bytes; the first text ends after one of them.
        let outcomes =
            Outcomes::check(raw(&[Kind::Push, Kind::Push, Kind::Push], &[2, 3, 5], "aéok".as_bytes()), 3).unwrap();
        assert!(matches!(outcomes.get(0), Err(PluginFault::Contract(msg)) if msg.contains("inside a character")));
        assert!(outcomes.get(1).is_err());
        assert_eq!(outcomes.get(2), Ok(Outcome::Push("ok")));
    }

    #[test]
    fn a_text_that_is_not_utf8_fails_only_its_call() {
        let outcomes = Outcomes::check(raw(&[Kind::Push, Kind::Push], &[2, 4], b"ok\xff\xfe"), 2).unwrap();
        assert_eq!(outcomes.get(0), Ok(Outcome::Push("ok")));
        assert!(matches!(outcomes.get(1), Err(PluginFault::Contract(msg)) if msg.contains("not UTF-8")));
    }
}
