//! Reading the engine's data: [`Context::get`] and [`Context::get_many`], typed, from buckets the
//! plugin's config grants it (`[plugins.NAME] read = [...]`).
//!
//! Every value is parsed once per change, not once per read: the SDK keeps each key's parsed value
//! with its revision and asks the engine only whether that revision is still current, so a key
//! that did not change crosses into the plugin as a few bytes and is not parsed again. What a call
//! reads is how the engine knows which connections to re-run when data changes (trigger
//! [`Trigger::Data`](crate::Trigger::Data)): read through these functions, never around them.
//!
//! In a plugin's native unit tests there is no engine: [`FakeData`] supplies the values.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::bindings::wasmpush::plugin::data::{Entry, Value};
use crate::{Context, Error};

/// Parsed values the cache holds at most; past that it starts over (the engine bounds the data,
/// but a plugin's memory is smaller).
const MAX_CACHED: usize = 1 << 16;

/// One cached value: its revision, and the value parsed as the type it was last read as.
struct Cached {
    revision: u64,
    type_id: TypeId,
    value: Rc<dyn Any>,
}

thread_local! {
    /// Parsed values by bucket and key.
    static CACHE: RefCell<HashMap<String, HashMap<String, Cached>>> = RefCell::new(HashMap::new());

    /// The data native tests installed with [`FakeData::run`].
    static FAKE: RefCell<Option<FakeData>> = const { RefCell::new(None) };
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
        Ok(self.get_many(bucket, &[key])?.pop().flatten())
    }

    /// The values of `keys` in `bucket`, in order, each parsed as `T`: one crossing into the
    /// engine for all of them.
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
        keys: &[&str],
    ) -> Result<Vec<Option<T>>, Error> {
        let type_id = TypeId::of::<T>();
        let cached: Vec<u64> = CACHE.with_borrow(|cache| {
            let values = cache.get(bucket);
            keys.iter()
                .map(|key| {
                    values
                        .and_then(|values| values.get(*key))
                        .filter(|c| c.type_id == type_id)
                        .map_or(0, |c| c.revision)
                })
                .collect()
        });
        let answers = fetch(self.call, bucket, keys, &cached).map_err(Error::msg)?;
        if answers.len() != keys.len() {
            return Err(Error::msg(format!("the engine answered {} of {} keys", answers.len(), keys.len())));
        }
        CACHE.with_borrow_mut(|cache| {
            if cache.values().map(HashMap::len).sum::<usize>() + keys.len() > MAX_CACHED {
                cache.clear();
            }
            let values = cache.entry(bucket.to_owned()).or_default();
            keys.iter()
                .zip(answers)
                .map(|(key, answer)| match answer {
                    Value::Missing => {
                        values.remove(*key);
                        Ok(None)
                    }
                    Value::Unchanged => match values.get(*key).and_then(|c| c.value.downcast_ref::<T>()) {
                        Some(value) => Ok(Some(value.clone())),
                        None => Err(Error::msg(format!(
                            "the engine said {bucket}/{key} is unchanged, but it is not cached"
                        ))),
                    },
                    Value::Changed(Entry { revision, json }) => {
                        let value: T = serde_json::from_str(&json).map_err(|err| {
                            Error::msg(format!("data {bucket}/{key} is not what the plugin expects: {err}"))
                        })?;
                        let cached = Cached { revision, type_id, value: Rc::new(value.clone()) };
                        values.insert((*key).to_owned(), cached);
                        Ok(Some(value))
                    }
                })
                .collect()
        })
    }
}

/// Asks the engine (in a plugin) or the installed [`FakeData`] (in native tests) for `keys`.
fn fetch(call: u32, bucket: &str, keys: &[&str], cached: &[u64]) -> Result<Vec<Value>, String> {
    #[cfg(target_family = "wasm")]
    {
        use crate::bindings::wasmpush::plugin::data;
        if let ([key], [revision]) = (keys, cached) {
            return data::get(call, bucket, key, *revision).map(|value| vec![value]);
        }
        let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        data::get_many(call, bucket, &keys, cached)
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = call;
        FAKE.with_borrow(|fake| match fake {
            Some(fake) => fake.read(bucket, keys, cached),
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
    /// Values as JSON text with their revision, by bucket and key.
    buckets: HashMap<String, HashMap<String, (String, u64)>>,
    /// Buckets reads are refused for, as the engine refuses buckets the config does not grant.
    denied: Vec<String>,
    /// The revision of the last `put`.
    revision: u64,
}

impl FakeData {
    /// No data.
    pub fn new() -> Self {
        FakeData::default()
    }

    /// Sets `key` of `bucket` to `value` (anything `Serialize`), with a new revision.
    ///
    /// # Panics
    /// If `value` does not serialize to JSON.
    pub fn put(mut self, bucket: &str, key: &str, value: impl serde::Serialize) -> Self {
        self.revision += 1;
        let json = serde_json::to_string(&value).expect("a test value serializes to JSON");
        self.buckets.entry(bucket.to_owned()).or_default().insert(key.to_owned(), (json, self.revision));
        self
    }

    /// Refuses reads of `bucket`, as the engine does for a bucket the config does not grant.
    pub fn deny(mut self, bucket: &str) -> Self {
        self.denied.push(bucket.to_owned());
        self
    }

    /// Runs `body` with this data as what [`Context::get`] reads (and an empty cache).
    pub fn run<R>(&self, body: impl FnOnce() -> R) -> R {
        CACHE.with_borrow_mut(HashMap::clear);
        let previous = FAKE.replace(Some(self.clone()));
        let result = body();
        FAKE.set(previous);
        result
    }

    /// What the engine would answer.
    #[cfg_attr(target_family = "wasm", allow(dead_code))]
    fn read(&self, bucket: &str, keys: &[&str], cached: &[u64]) -> Result<Vec<Value>, String> {
        if self.denied.iter().any(|denied| denied == bucket) {
            return Err(format!("bucket `{bucket}` is not granted to this plugin (config: [plugins.NAME] read)"));
        }
        let values = self.buckets.get(bucket);
        let answer = |(key, cached): (&&str, &u64)| match values.and_then(|values| values.get(*key)) {
            None => Value::Missing,
            Some((_, revision)) if revision == cached => Value::Unchanged,
            Some((json, revision)) => Value::Changed(Entry { revision: *revision, json: json.clone() }),
        };
        Ok(keys.iter().zip(cached).map(answer).collect())
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
    fn a_value_is_parsed_once_per_revision() {
        let data = FakeData::new().put("prices", "AAPL", serde_json::json!({"price": 1.5}));
        let ctx = Context::new(1, 1, Trigger::Tick, 0);
        data.run(|| {
            assert_eq!(ctx.get::<Price>("prices", "AAPL").unwrap(), Some(Price { price: 1.5 }));
            // The second read is answered `unchanged` and served from the cache.
            let cached = CACHE.with_borrow(|cache| cache["prices"]["AAPL"].revision);
            assert_eq!(cached, 1);
            assert_eq!(ctx.get::<Price>("prices", "AAPL").unwrap(), Some(Price { price: 1.5 }));
        });
        let changed = data.put("prices", "AAPL", serde_json::json!({"price": 2.0}));
        changed.run(|| assert_eq!(ctx.get::<Price>("prices", "AAPL").unwrap(), Some(Price { price: 2.0 })));
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
