//! Reading the engine's data: [`Context::get`] and [`Context::get_many`], typed, from buckets the
//! plugin's config grants it (`[plugins.NAME] read = [...]`).
//!
//! Every value is parsed once per change, not once per read: the SDK keeps each key's parsed value
//! and uses it again without asking the engine until the engine says the key is stale (it lists the
//! ids of changed keys with every batch). What a call used, cached or not, is reported in its
//! outcome: that is how the engine knows which connections to re-run when data changes (trigger
//! [`Trigger::Data`](crate::Trigger::Data)), so read through these functions, never around them.
//!
//! - `cache`: the parsed values, one entry per key, marked stale when the engine says so;
//! - `call`: what the current call reads, checked first against what the connection's previous
//!   call read (its memo), which a call reading the same keys in the same order finds without a
//!   lookup.
//!
//! In a plugin's native unit tests there is no engine: [`FakeData`] supplies the values.

mod cache;
mod call;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::bindings::wasmpush::plugin::data::Value;
use crate::{Context, Error};
use cache::Cache;
pub(crate) use call::{Memo, end as end_call, start as start_call};

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();

    /// The data native tests installed with [`FakeData::run`].
    static FAKE: RefCell<Option<FakeData>> = const { RefCell::new(None) };
}

/// Forgets the values of the keys whose ids the engine listed as stale.
pub(crate) fn forget_stale(stale: &[u32]) {
    if stale.is_empty() {
        return;
    }
    CACHE.with_borrow_mut(|cache| {
        for &id in stale {
            cache.forget(id);
        }
    });
}

impl Context {
    /// The value of `key` in `bucket`, parsed as `T`; `None` if the key has no value.
    ///
    /// An error (the bucket is not granted to this plugin, or the value does not parse as `T`)
    /// converts with `?` into the call's error outcome.
    ///
    /// ```
    /// use serde::Deserialize;
    /// use wasmpush_sdk::{Context, FakeData, Trigger};
    ///
    /// #[derive(Clone, Deserialize)]
    /// struct Price { price: f64 }
    ///
    /// let data = FakeData::new().put("prices", "AAPL", serde_json::json!({"price": 189.5}));
    /// let ctx = Context::new(1, 1, Trigger::Tick, 0);
    /// data.run(|| {
    ///     let price: Option<Price> = ctx.get("prices", "AAPL").unwrap();
    ///     assert_eq!(price.map(|p| p.price), Some(189.5));
    ///     assert!(ctx.get::<Price>("prices", "MSFT").unwrap().is_none());
    /// });
    /// ```
    pub fn get<T: DeserializeOwned + Clone + 'static>(&self, bucket: &str, key: &str) -> Result<Option<T>, Error> {
        Ok(self.get_shared(bucket, key)?.map(|value| T::clone(&value)))
    }

    /// The values of `keys` in `bucket`, in order, each parsed as `T`; the ones not cached are
    /// fetched in one crossing into the engine. `keys` is any list of strings: an array of
    /// `&str`, a `Vec<String>`, a map's keys.
    ///
    /// ```
    /// use wasmpush_sdk::{Context, FakeData, Trigger};
    ///
    /// let data = FakeData::new().put("stock", "a", 3).put("stock", "c", 5);
    /// let ctx = Context::new(1, 1, Trigger::Tick, 0);
    /// let counts: Vec<Option<u32>> = data.run(|| ctx.get_many("stock", &["a", "b", "c"])).unwrap();
    /// assert_eq!(counts, [Some(3), None, Some(5)]);
    /// ```
    pub fn get_many<T: DeserializeOwned + Clone + 'static>(
        &self,
        bucket: &str,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Option<T>>, Error> {
        let shared = self.get_many_shared::<T>(bucket, keys)?;
        Ok(shared.into_iter().map(|value| value.map(|value| T::clone(&value))).collect())
    }

    /// [`Context::get`] without the copy: the cached value itself, shared. Prefer it for values
    /// that are costly to clone (maps, strings, lists).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use wasmpush_sdk::{Context, FakeData, Trigger};
    ///
    /// let data = FakeData::new().put("accounts", "a1", serde_json::json!({"AAPL": 10}));
    /// let ctx = Context::new(1, 1, Trigger::Tick, 0);
    /// let holdings = data.run(|| ctx.get_shared::<HashMap<String, u32>>("accounts", "a1")).unwrap().unwrap();
    /// assert_eq!(holdings["AAPL"], 10);
    /// ```
    pub fn get_shared<T: DeserializeOwned + 'static>(&self, bucket: &str, key: &str) -> Result<Option<Rc<T>>, Error> {
        if let Some(hit) = CACHE.with_borrow(|cache| call::hit::<T>(cache, bucket, key)) {
            return Ok(hit);
        }
        Ok(self.get_many_shared(bucket, [key])?.pop().flatten())
    }

    /// [`Context::get_many`] without the copies: the cached values themselves, shared.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use wasmpush_sdk::{Context, FakeData, Trigger};
    ///
    /// let data = FakeData::new().put("prices", "AAPL", 189.5).put("prices", "MSFT", 400.0);
    /// let holdings = BTreeMap::from([("AAPL".to_owned(), 10.0), ("MSFT".to_owned(), 5.0)]);
    /// let ctx = Context::new(1, 1, Trigger::Tick, 0);
    /// let prices = data.run(|| ctx.get_many_shared::<f64>("prices", holdings.keys())).unwrap();
    /// assert_eq!(*prices[1].as_ref().unwrap().as_ref(), 400.0);
    /// ```
    pub fn get_many_shared<T: DeserializeOwned + 'static>(
        &self,
        bucket: &str,
        keys: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<Option<Rc<T>>>, Error> {
        let keys = keys.into_iter();
        let mut found: Vec<Option<Rc<T>>> = Vec::with_capacity(keys.size_hint().0);
        let mut misses = Vec::new();
        CACHE.with_borrow(|cache| {
            for (index, key) in keys.enumerate() {
                match call::hit::<T>(cache, bucket, key.as_ref()) {
                    Some(hit) => found.push(hit),
                    None => {
                        misses.push((index, key));
                        found.push(None);
                    }
                }
            }
        });
        if misses.is_empty() {
            return Ok(found);
        }
        let wanted: Vec<&str> = misses.iter().map(|(_, key)| key.as_ref()).collect();
        let answers = fetch(bucket, &wanted).map_err(Error::msg)?;
        if answers.len() != wanted.len() {
            return Err(Error::msg(format!("the engine answered {} of {} keys", answers.len(), wanted.len())));
        }
        CACHE.with_borrow_mut(|cache| {
            for ((index, key), answer) in misses.iter().zip(answers) {
                let key = key.as_ref();
                let value = match answer.json {
                    None => None,
                    Some(json) => Some(Rc::new(serde_json::from_str::<T>(&json).map_err(|err| {
                        Error::msg(format!("data {bucket}/{key} is not what the plugin expects: {err}"))
                    })?)),
                };
                found[*index] = value.clone();
                call::fetched(cache.insert(bucket, key, answer.key_id, value));
            }
            Ok(found)
        })
    }
}

/// Asks the engine (in a plugin) or the installed [`FakeData`] (in native tests) for `keys`.
fn fetch(bucket: &str, keys: &[&str]) -> Result<Vec<Value>, String> {
    #[cfg(target_family = "wasm")]
    {
        use crate::bindings::wasmpush::plugin::data;
        if let [key] = keys {
            return data::get(bucket, key).map(|value| vec![value]);
        }
        let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        data::get_many(bucket, &keys)
    }
    #[cfg(not(target_family = "wasm"))]
    {
        FAKE.with_borrow_mut(|fake| match fake {
            Some(fake) => fake.read(bucket, keys),
            None => Err("no data here: wrap the call in FakeData::run in native tests".to_owned()),
        })
    }
}

/// Data for a plugin's native unit tests, read by [`Context::get`] inside [`FakeData::run`].
///
/// ```
/// use wasmpush_sdk::{Context, FakeData, Trigger};
///
/// let data = FakeData::new().put("accounts", "a42", serde_json::json!({"holdings": {"AAPL": 10}})).deny("secrets");
/// let ctx = Context::new(1, 1, Trigger::Tick, 0);
/// data.run(|| {
///     assert!(ctx.get::<serde_json::Value>("accounts", "a42").unwrap().is_some());
///     let refused = ctx.get::<serde_json::Value>("secrets", "k").unwrap_err();
///     assert!(refused.to_string().contains("not granted"));
/// });
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeData {
    /// Values as JSON text, by bucket and key.
    buckets: HashMap<String, HashMap<String, String>>,
    /// Buckets reads are refused for, as the engine refuses buckets the config does not grant.
    denied: Vec<String>,
    /// The ids given to keys read, as the engine gives them.
    ids: HashMap<(String, String), u32>,
}

impl FakeData {
    /// No data.
    pub fn new() -> Self {
        FakeData::default()
    }

    /// Sets `key` of `bucket` to `value` (anything `Serialize`).
    ///
    /// # Panics
    /// If `value` does not serialize to JSON.
    pub fn put(mut self, bucket: &str, key: &str, value: impl serde::Serialize) -> Self {
        let json = serde_json::to_string(&value).expect("a test value serializes to JSON");
        self.buckets.entry(bucket.to_owned()).or_default().insert(key.to_owned(), json);
        self
    }

    /// Refuses reads of `bucket`, as the engine does for a bucket the config does not grant.
    pub fn deny(mut self, bucket: &str) -> Self {
        self.denied.push(bucket.to_owned());
        self
    }

    /// Runs `body` with this data as what [`Context::get`] reads (and an empty cache).
    pub fn run<R>(&self, body: impl FnOnce() -> R) -> R {
        CACHE.with_borrow_mut(Cache::clear);
        call::reset();
        let previous = FAKE.replace(Some(self.clone()));
        let result = body();
        FAKE.set(previous);
        result
    }

    /// What the engine would answer.
    #[cfg_attr(target_family = "wasm", allow(dead_code))]
    fn read(&mut self, bucket: &str, keys: &[&str]) -> Result<Vec<Value>, String> {
        if self.denied.iter().any(|denied| denied == bucket) {
            return Err(format!("bucket `{bucket}` is not granted to this plugin (config: [plugins.NAME] read)"));
        }
        let answer = |key: &&str| {
            let next = self.ids.len() as u32;
            let key_id = *self.ids.entry((bucket.to_owned(), (*key).to_owned())).or_insert(next);
            let json = self.buckets.get(bucket).and_then(|values| values.get(*key)).cloned();
            Value { key_id, json }
        };
        Ok(keys.iter().map(answer).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Trigger;

    #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
    struct Price {
        price: f64,
    }

    #[test]
    fn a_value_is_served_from_the_cache_until_its_id_is_stale() {
        let data = FakeData::new().put("prices", "AAPL", serde_json::json!({"price": 1.5}));
        let ctx = Context::new(1, 1, Trigger::Tick, 0);
        data.run(|| {
            assert_eq!(ctx.get::<Price>("prices", "AAPL").unwrap(), Some(Price { price: 1.5 }));
            assert_eq!(ctx.get::<Price>("prices", "MSFT").unwrap(), None);
            // Both are cached now: the fake's answers are not asked for again.
            FAKE.with_borrow_mut(|fake| fake.as_mut().unwrap().buckets.clear());
            assert_eq!(ctx.get::<Price>("prices", "AAPL").unwrap(), Some(Price { price: 1.5 }));
            let mut reads = Vec::new();
            end_call(&mut reads);
            assert_eq!(reads, [0, 1], "every key used is reported, once");
            forget_stale(&[0]);
            assert_eq!(ctx.get::<Price>("prices", "AAPL").unwrap(), None, "read again once stale");
            assert_eq!(ctx.get::<Price>("prices", "MSFT").unwrap(), None);
        });
    }

    #[test]
    fn a_connections_next_call_is_served_from_its_memo_until_a_key_is_stale() {
        let data = FakeData::new().put("prices", "AAPL", serde_json::json!({"price": 1.5})).put(
            "prices",
            "MSFT",
            serde_json::json!({"price": 2.5}),
        );
        let ctx = Context::new(1, 1, Trigger::Tick, 0);
        let read = || [ctx.get::<Price>("prices", "AAPL").unwrap(), ctx.get::<Price>("prices", "MSFT").unwrap()];
        let price = |price| Some(Price { price });
        data.run(|| {
            let mut ids = Vec::new();
            start_call(Memo::default());
            assert_eq!(read(), [price(1.5), price(2.5)]);
            let memo = end_call(&mut ids);
            // The engine's value changes; until it says so, the cached value stands.
            let set = |json: &str| {
                let mut fake = FAKE.take().unwrap();
                fake.buckets.get_mut("prices").unwrap().insert("AAPL".into(), json.into());
                FAKE.set(Some(fake));
            };
            set(r#"{"price":9.0}"#);
            start_call(memo);
            assert_eq!(read(), [price(1.5), price(2.5)]);
            let memo = end_call(&mut ids);
            forget_stale(&[0]);
            start_call(memo);
            assert_eq!(read(), [price(9.0), price(2.5)], "the stale key in the memo is read again");
            end_call(&mut ids);
            assert_eq!(ids, [0, 1, 0, 1, 0, 1], "each call's keys, once each");
        });
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_an_error_naming_the_key() {
        let data = FakeData::new().put("prices", "AAPL", "not an object");
        let ctx = Context::new(1, 1, Trigger::Tick, 0);
        let err = data.run(|| ctx.get::<Price>("prices", "AAPL")).unwrap_err();
        assert!(err.to_string().starts_with("data prices/AAPL is not what the plugin expects"), "{err}");
    }

    #[test]
    fn one_key_read_as_two_types_is_parsed_for_each() {
        let data = FakeData::new().put("n", "k", 7);
        let ctx = Context::new(1, 1, Trigger::Tick, 0);
        data.run(|| {
            assert_eq!(ctx.get::<u64>("n", "k").unwrap(), Some(7));
            assert_eq!(ctx.get::<f64>("n", "k").unwrap(), Some(7.0));
            assert_eq!(ctx.get::<u64>("n", "k").unwrap(), Some(7));
        });
    }

    #[test]
    fn without_fake_data_a_read_says_what_to_do() {
        let ctx = Context::new(1, 1, Trigger::Tick, 0);
        assert!(ctx.get::<u64>("n", "k").unwrap_err().to_string().contains("FakeData::run"));
    }
}
