//! The SDK's cache of parsed data values: one [`Entry`] per key read, kept until the engine says
//! the key changed. Entries are shared (`Rc`) with the [`Memo`](super::call::Memo)s of the
//! connections that read them, so a stale entry is marked, not only forgotten: a memo holding it
//! then looks the key up again.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::rc::Rc;

use rustc_hash::FxHashMap;

/// Values the cache holds at most; past that it starts over (the engine bounds the data, but a
/// plugin's memory is smaller).
pub(super) const MAX_CACHED: usize = 1 << 16;

/// One key as the cache knows it.
pub(super) struct Entry {
    /// Its bucket's name, shared by the bucket's entries.
    bucket: Rc<str>,
    /// The key, shared with the bucket's map.
    key: Rc<str>,
    /// The id the engine knows the key by in this instance.
    pub(super) id: u32,
    /// Its value parsed, with the type it was parsed as; `None` when the key has no value.
    value: Option<(TypeId, Rc<dyn Any>)>,
    /// Set once the engine says the key changed, or the cache starts over.
    stale: Cell<bool>,
}

impl Entry {
    /// Whether this is `key` of `bucket`, and still current.
    #[inline]
    pub(super) fn is(&self, bucket: &str, key: &str) -> bool {
        !self.stale.get() && same(&self.key, key) && same(&self.bucket, bucket)
    }

    /// The value as a `T`: `None` when it was parsed as another type, `Some(None)` when the key
    /// has no value.
    pub(super) fn value<T: 'static>(&self) -> Option<Option<Rc<T>>> {
        match &self.value {
            None => Some(None),
            Some((type_id, value)) if *type_id == TypeId::of::<T>() => Some(Some(value.clone().downcast::<T>().ok()?)),
            Some(_) => None,
        }
    }
}

/// A bucket's entries by key.
type Keys = FxHashMap<Rc<str>, Rc<Entry>>;

/// The entries by bucket and key, and by id, to forget stale ones. A plugin reads a few buckets
/// (those its config grants), so they are found by comparing names in a short list, which costs
/// less than hashing the name on every read.
#[derive(Default)]
pub(super) struct Cache {
    buckets: Vec<(Rc<str>, Keys)>,
    by_id: FxHashMap<u32, Rc<Entry>>,
}

impl Cache {
    /// The entry of `key` in `bucket`, if it is cached.
    pub(super) fn find(&self, bucket: &str, key: &str) -> Option<&Rc<Entry>> {
        let (_, keys) = self.buckets.iter().find(|(name, _)| same(name, bucket))?;
        keys.get(key)
    }

    /// Caches `value` (parsed as `T`) for `key` of `bucket`, which the engine knows by `id`, in
    /// place of what was cached for it; starts over first if the cache is full.
    pub(super) fn insert<T: 'static>(&mut self, bucket: &str, key: &str, id: u32, value: Option<Rc<T>>) -> Rc<Entry> {
        if self.by_id.len() >= MAX_CACHED {
            self.clear();
        }
        let at = match self.buckets.iter().position(|(name, _)| same(name, bucket)) {
            Some(at) => at,
            None => {
                self.buckets.push((Rc::from(bucket), Keys::default()));
                self.buckets.len() - 1
            }
        };
        let (name, keys) = &mut self.buckets[at];
        let key: Rc<str> = Rc::from(key);
        let entry = Rc::new(Entry {
            bucket: name.clone(),
            key: key.clone(),
            id,
            value: value.map(|value| (TypeId::of::<T>(), value as Rc<dyn Any>)),
            stale: Cell::new(false),
        });
        // What it replaces (the value parsed as another type) may sit in memos: it must not
        // outlive the cache's knowledge of its id.
        if let Some(replaced) = keys.insert(key, entry.clone()) {
            replaced.stale.set(true);
        }
        if let Some(replaced) = self.by_id.insert(id, entry.clone()) {
            replaced.stale.set(true);
        }
        entry
    }

    /// Forgets the key the engine knows by `id`.
    pub(super) fn forget(&mut self, id: u32) {
        let Some(entry) = self.by_id.remove(&id) else { return };
        entry.stale.set(true);
        if let Some((_, keys)) = self.buckets.iter_mut().find(|(name, _)| Rc::ptr_eq(name, &entry.bucket)) {
            keys.remove(&*entry.key);
        }
    }

    /// Forgets every key.
    pub(super) fn clear(&mut self) {
        for entry in self.by_id.values() {
            entry.stale.set(true);
        }
        *self = Cache::default();
    }
}

/// Whether two strings are equal, compared in place: data keys and bucket names are short, and
/// in wasm a call to `memcmp` costs more than the comparison itself.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut a8, mut b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("chunks of 8 bytes"));
    a8.by_ref().zip(b8.by_ref()).all(|(x, y)| word(x) == word(y))
        && a8.remainder().iter().zip(b8.remainder()).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_same_only_byte_for_byte() {
        for (a, b) in [
            ("", ""),
            ("AAPL", "AAPL"),
            ("accounts", "accounts"),
            ("a longer key, 24 bytes!", "a longer key, 24 bytes!"),
        ] {
            assert!(same(a, b), "{a:?} = {b:?}");
        }
        for (a, b) in
            [("AAPL", "AAPM"), ("AAPL", "AAP"), ("accounts", "accountz"), ("prices..9", "prices..8"), ("", "x")]
        {
            assert!(!same(a, b), "{a:?} ≠ {b:?}");
        }
    }

    #[test]
    fn an_entry_replaced_forgotten_or_cleared_is_stale() {
        let mut cache = Cache::default();
        let first = cache.insert("n", "k", 1, Some(Rc::new(7u64)));
        assert!(first.is("n", "k") && !first.is("n", "j") && !first.is("m", "k"));
        let as_float = cache.insert("n", "k", 1, Some(Rc::new(7.0f64)));
        assert!(!first.is("n", "k"), "replaced by the value parsed as another type");
        assert_eq!(as_float.value::<f64>(), Some(Some(Rc::new(7.0))));
        assert_eq!(as_float.value::<u64>(), None, "parsed as another type");
        cache.forget(1);
        assert!(!as_float.is("n", "k") && cache.find("n", "k").is_none());
        let other = cache.insert::<u64>("n", "j", 2, None);
        assert_eq!(other.value::<u64>(), Some(None));
        cache.clear();
        assert!(!other.is("n", "j") && cache.find("n", "j").is_none());
    }
}
