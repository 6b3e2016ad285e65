//! What a client sees besides plugin payloads: the error frames and their codes, and the
//! validation of the params a client sends. `docs/protocol.md` is the reference for clients;
//! this module is its single implementation.

/// An error frame: `{"code":CODE,"msg":"…","data":[]}`. Code 0 is a plugin's business error
/// (the seed's format); every other code is the engine's.
pub fn error_frame(code: u16, message: &str) -> String {
    let message = serde_json::to_string(message).expect("a string always serializes");
    format!("{{\"code\":{code},\"msg\":{message},\"data\":[]}}")
}

/// Code of an error a plugin returned.
pub const PLUGIN_ERROR: u16 = 0;

/// Why the engine rejected something a client sent, or could not serve it. Each reason has its
/// own code, listed in `docs/protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The params text is not JSON.
    #[error("params are not valid JSON: {0}")]
    InvalidJson(String),
    /// The params are JSON but not an object.
    #[error("params must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// The params are larger than allowed.
    #[error("params are {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size of what was sent.
        size: usize,
        /// `max_params_bytes`.
        limit: usize,
    },
    /// The params nest objects and arrays deeper than [`MAX_DEPTH`].
    #[error("params nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The client sends messages faster than `max_messages_per_sec`.
    #[error("sending too fast: at most {per_sec} messages per second; messages over it are dropped")]
    TooFast {
        /// `max_messages_per_sec`.
        per_sec: u32,
    },
    /// A binary frame: params are JSON text.
    #[error("binary frames are not supported: send params as a JSON text frame")]
    BinaryFrame,
    /// A token sent to refresh the connection's was refused; the connection keeps the one it
    /// has (and is closed when that expires).
    #[error("token refused: {0}")]
    TokenRefused(String),
    /// The plugin trapped while serving this connection.
    #[error("plugin `{0}` failed")]
    PluginFailed(String),
    /// The plugin ran out of time while serving this connection.
    #[error("plugin `{0}` timed out")]
    PluginTimedOut(String),
    /// The plugin pushed more than `max_payload_bytes`.
    #[error("plugin `{plugin}` produced {size} bytes, more than the limit of {limit}")]
    PayloadTooLarge {
        /// The plugin that pushed it.
        plugin: String,
        /// Size of the payload.
        size: usize,
        /// `max_payload_bytes`.
        limit: usize,
    },
    /// The connection's plugin is not loaded (it was removed).
    #[error("plugin `{0}` is not loaded")]
    PluginUnavailable(String),
}

impl ClientError {
    /// The code sent in the error frame.
    pub fn code(&self) -> u16 {
        match self {
            ClientError::InvalidJson(_) => 4001,
            ClientError::NotAnObject(_) => 4002,
            ClientError::TooLarge { .. } => 4003,
            ClientError::BinaryFrame => 4004,
            ClientError::TooDeep => 4005,
            ClientError::TooFast { .. } => 4006,
            ClientError::TokenRefused(_) => 4007,
            ClientError::PluginFailed(_) => 5001,
            ClientError::PluginTimedOut(_) => 5002,
            ClientError::PayloadTooLarge { .. } => 5003,
            ClientError::PluginUnavailable(_) => 5004,
        }
    }

    /// The error frame for this error.
    pub fn frame(&self) -> String {
        error_frame(self.code(), &self.to_string())
    }
}

/// The close code of a connection whose token expired before the client sent a fresh one
/// (in the private range of RFC 6455; like HTTP 401).
pub const TOKEN_EXPIRED_CLOSE: u16 = 4401;

/// The token of a refresh message, an object whose only key is `$token` (`{"$token":"JWT"}`), or
/// `None` for any other text, which is params.
pub fn token_refresh(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Refresh {
        #[serde(rename = "$token")]
        token: String,
    }
    // Most messages are params: only those naming the key are parsed twice.
    if !text.contains("\"$token\"") {
        return None;
    }
    serde_json::from_str::<Refresh>(text).ok().map(|refresh| refresh.token)
}

/// Checks that `text` is a JSON object of at most `limit` bytes, nesting at most [`MAX_DEPTH`]
/// levels. It changes nothing: valid params go to the plugin exactly as the client sent them.
pub fn validate_params(text: &str, limit: usize) -> Result<(), ClientError> {
    if text.len() > limit {
        return Err(ClientError::TooLarge { size: text.len(), limit });
    }
    // Plugins parse params with recursive parsers: refuse deep nesting before anyone parses it.
    if nesting_depth(text) > MAX_DEPTH {
        return Err(ClientError::TooDeep);
    }
    // `IgnoredAny` keeps nothing: validation costs no allocation per value.
    let kind = serde_json::from_str::<JsonKind>(text).map_err(|err| ClientError::InvalidJson(err.to_string()))?;
    match kind {
        JsonKind::Object => Ok(()),
        JsonKind::Other(name) => Err(ClientError::NotAnObject(name)),
    }
}

/// Deepest nesting of objects and arrays params may have.
pub const MAX_DEPTH: usize = 32;

/// The deepest nesting of `[` and `{` in `text`, outside strings; one pass, no allocation.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in text.bytes() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
}

/// The kind of a JSON value, read without keeping the value.
enum JsonKind {
    Object,
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for JsonKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonKindVisitor)
    }
}

/// Visits one JSON value and reports its kind.
struct JsonKindVisitor;

impl<'de> serde::de::Visitor<'de> for JsonKindVisitor {
    type Value = JsonKind;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonKind, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(JsonKind::Object)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonKind, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(JsonKind::Other("an array"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<JsonKind, E> {
        Ok(JsonKind::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<JsonKind, E> {
        Ok(JsonKind::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<JsonKind, E> {
        Ok(JsonKind::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<JsonKind, E> {
        Ok(JsonKind::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<JsonKind, E> {
        Ok(JsonKind::Other("a string"))
    }

    fn visit_unit<E>(self) -> Result<JsonKind, E> {
        Ok(JsonKind::Other("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_is_an_object_of_one_token_only() {
        assert_eq!(token_refresh(r#"{"$token":"a.b.c"}"#).as_deref(), Some("a.b.c"));
        assert_eq!(token_refresh(r#" { "$token" : "a.b.c" } "#).as_deref(), Some("a.b.c"));
        assert_eq!(token_refresh(r#"{"$token":"a.b.c","symbol":"X"}"#), None, "params");
        assert_eq!(token_refresh(r#"{"$token":5}"#), None);
        assert_eq!(token_refresh(r#"{"symbol":"$token"}"#), None);
    }

    #[test]
    fn objects_pass_unchanged() {
        assert_eq!(validate_params(r#"{"symbol":"AAPL","n":[1,{"a":null}]}"#, 4096), Ok(()));
    }

    #[test]
    fn each_bad_input_has_its_own_code() {
        let cases = [("{", 4001), ("[1,2]", 4002), ("\"x\"", 4002), ("null", 4002), ("{} x", 4001)];
        for (text, code) in cases {
            assert_eq!(validate_params(text, 4096).unwrap_err().code(), code, "{text}");
        }
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(5000));
        assert_eq!(validate_params(&big, 4096).unwrap_err().code(), 4003);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(validate_params(&deep, usize::MAX), Err(ClientError::TooDeep));
        let at_limit = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(validate_params(&at_limit, usize::MAX), Ok(()));
        let brackets_in_strings = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert_eq!(validate_params(&brackets_in_strings, usize::MAX), Ok(()));
    }

    #[test]
    fn error_frames_escape_their_message() {
        assert_eq!(error_frame(0, "say \"hi\""), r#"{"code":0,"msg":"say \"hi\"","data":[]}"#);
    }
}

/// Property tests over the params path: whatever a client sends, validation answers (no panic, no
/// hang) with an engine code, and accepts exactly the objects within the limits.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// Arbitrary JSON values, nested up to about `depth` levels.
    fn json(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// How deep `value` nests arrays and objects.
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn any_text_gets_an_answer_with_an_engine_code(text in ".{0,600}") {
            if let Err(err) = validate_params(&text, 512) {
                prop_assert!((4001..=4005).contains(&err.code()), "{err:?}");
            }
        }

        #[test]
        fn json_like_noise_gets_an_answer(text in r#"[\[\]{}":,0-9a-z\\ ]{0,300}"#) {
            if let Err(err) = validate_params(&text, 4096) {
                prop_assert!((4001..=4005).contains(&err.code()), "{err:?}");
            }
        }

        #[test]
        fn exactly_the_objects_within_the_limits_are_accepted(value in json(40), limit in 2usize..4096) {
            let text = value.to_string();
            let fits = value.is_object() && text.len() <= limit && depth(&value) <= MAX_DEPTH;
            prop_assert_eq!(validate_params(&text, limit).is_ok(), fits, "{}", text);
        }
    }
}
