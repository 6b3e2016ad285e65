//! What the current call reads: the entries it used, for its outcome (the engine re-runs the
//! connection when one of them changes), and the [`Memo`] of the connection's previous call.
//!
//! A connection's calls usually read the same keys in the same order (an account, then its
//! prices), so the memo is checked first: a read that matches the next key the previous call
//! used, and is still current, costs two short string comparisons instead of a hash lookup.

use std::cell::RefCell;
use std::rc::Rc;

use super::cache::{Cache, Entry};

/// The keys one call of a connection used, in the order it read them.
#[derive(Default)]
pub(crate) struct Memo(Vec<Rc<Entry>>);

/// The current call's reads.
#[derive(Default)]
struct Reads {
    /// The memo of the connection's previous call.
    expected: Vec<Rc<Entry>>,
    /// The position in `expected` the next read is checked against.
    next: usize,
    /// What this call used so far, in order.
    used: Vec<Rc<Entry>>,
}

thread_local! {
    static READS: RefCell<Reads> = RefCell::default();
}

/// Starts a call of a connection whose previous call used `memo`.
pub(crate) fn start(memo: Memo) {
    READS.with_borrow_mut(|reads| {
        reads.expected = memo.0;
        reads.next = 0;
    });
}

/// Ends the current call: appends the ids of the keys it used (sorted, each once) to `ids`, and
/// returns its memo for the connection's next call. The previous memo's storage is kept for
/// the next call's reads, so a call in the steady state allocates nothing here.
pub(crate) fn end(ids: &mut Vec<u32>) -> Memo {
    READS.with_borrow_mut(|reads| {
        let start = ids.len();
        ids.extend(reads.used.iter().map(|entry| entry.id));
        let call = &mut ids[start..];
        call.sort_unstable();
        let mut kept = start;
        for at in start..ids.len() {
            if kept == start || ids[at] != ids[kept - 1] {
                ids[kept] = ids[at];
                kept += 1;
            }
        }
        ids.truncate(kept);
        let mut spare = std::mem::take(&mut reads.expected);
        spare.clear();
        Memo(std::mem::replace(&mut reads.used, spare))
    })
}

/// Forgets the current call's reads and memo (native tests start afresh with each fake).
pub(super) fn reset() {
    READS.with_borrow_mut(|reads| *reads = Reads::default());
}

/// The cached value of `key` in `bucket` as a `T`, noted as used by the current call: `None`
/// when it is not cached (or was cached as another type), `Some(None)` when the key has no
/// value.
pub(super) fn hit<T: 'static>(cache: &Cache, bucket: &str, key: &str) -> Option<Option<Rc<T>>> {
    READS.with_borrow_mut(|reads| {
        let entry = match reads.expected.get(reads.next) {
            Some(expected) if expected.is(bucket, key) => {
                reads.next += 1;
                expected.clone()
            }
            _ => cache.find(bucket, key)?.clone(),
        };
        let value = entry.value::<T>()?;
        reads.used.push(entry);
        Some(value)
    })
}

/// Notes `entry`, just fetched from the engine, as used by the current call.
pub(super) fn fetched(entry: Rc<Entry>) {
    READS.with_borrow_mut(|reads| reads.used.push(entry));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_matching_the_memo_are_served_from_it_in_order_and_others_from_the_cache() {
        let mut cache = Cache::default();
        let a = cache.insert("p", "a", 1, Some(Rc::new(1u8)));
        let b = cache.insert("p", "b", 2, Some(Rc::new(2u8)));
        start(Memo(vec![a, b]));
        assert_eq!(hit::<u8>(&Cache::default(), "p", "a"), Some(Some(Rc::new(1))), "from the memo");
        assert_eq!(hit::<u8>(&Cache::default(), "q", "b"), None, "another bucket is not the memo's next key");
        assert_eq!(hit::<u8>(&Cache::default(), "p", "b"), Some(Some(Rc::new(2))), "from the memo");
        assert_eq!(hit::<u8>(&Cache::default(), "p", "a"), None, "past the memo's end");
        assert_eq!(hit::<u8>(&cache, "p", "a"), Some(Some(Rc::new(1))), "from the cache");
        let mut ids = vec![9];
        let memo = end(&mut ids);
        assert_eq!(ids, [9, 1, 2], "appended sorted, each once");
        assert_eq!(memo.0.iter().map(|entry| entry.id).collect::<Vec<_>>(), [1, 2, 1], "in the order read");
        cache.forget(1);
        start(memo);
        assert_eq!(hit::<u8>(&cache, "p", "a"), None, "a stale key in the memo is not served");
        reset();
    }
}
