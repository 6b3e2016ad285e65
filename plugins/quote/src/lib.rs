//! `quote`: the reference workload (`REFERENCE.md`), byte for byte.
//!
//! Each push is `{"symbol":S,"seq":N,"ts":T,"price":P,"nonce":X}` where the price is derived
//! from the FNV-1a hash of the symbol plus the push counter, computed in integers and written by
//! hand so every implementation agrees on its digits. Symbol `FAIL` is a business error.

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::value::RawValue;
use wasmpush_sdk::{Context, Error, Raw};

/// The connection's params. Everything is optional; unknown keys are ignored.
#[derive(Debug, Deserialize)]
pub struct Params {
    /// The symbol, when the params carry a JSON string under `symbol`; any other value (or none)
    /// reads as `NONE`.
    #[serde(default, deserialize_with = "string_or_none")]
    pub symbol: Option<String>,
    /// The `nonce` value as it was sent, echoed back in every push; `None` when absent or null.
    #[serde(default)]
    pub nonce: Option<Box<RawValue>>,
}

/// The symbol a connection without a string `symbol` quotes.
const NO_SYMBOL: &str = "NONE";

/// The one symbol that is a business error.
const FAILING_SYMBOL: &str = "FAIL";

/// Builds the frame for one push.
pub fn tick(ctx: &Context, params: &Params) -> Result<Option<Raw>, Error> {
    let symbol = params.symbol.as_deref().unwrap_or(NO_SYMBOL);
    if symbol == FAILING_SYMBOL {
        return Err(Error::msg("symbol FAIL is not tradable"));
    }
    let cents = u64::from(fnv1a32(symbol.as_bytes()) % 10_000) + ctx.seq;
    let mut frame = String::with_capacity(96 + symbol.len());
    frame.push_str("{\"symbol\":");
    frame.push_str(&serde_json::to_string(symbol)?);
    frame.push_str(&format!(
        ",\"seq\":{},\"ts\":{},\"price\":{}.{:02},\"nonce\":",
        ctx.seq,
        ctx.now_ms,
        cents / 100,
        cents % 100
    ));
    match &params.nonce {
        None => frame.push_str("null"),
        Some(nonce) => frame.push_str(&compact(nonce)?),
    }
    frame.push('}');
    Ok(Some(Raw(frame)))
}

wasmpush_sdk::plugin!(tick);

/// FNV-1a, 32 bit, over `bytes`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |hash: u32, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// The nonce as compact JSON: scalars exactly as sent, objects and arrays without whitespace.
fn compact(nonce: &RawValue) -> Result<String, Error> {
    let text = nonce.get();
    if text.starts_with(['{', '[']) {
        Ok(serde_json::to_string(&serde_json::from_str::<serde_json::Value>(text)?)?)
    } else {
        Ok(text.to_owned())
    }
}

/// Reads a JSON string as `Some`, and any other JSON value as `None`.
fn string_or_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrOther {
        String(String),
        Other(IgnoredAny),
    }
    Ok(match StringOrOther::deserialize(deserializer)? {
        StringOrOther::String(symbol) => Some(symbol),
        StringOrOther::Other(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmpush_sdk::Trigger;

    const TS: u64 = 1_700_000_000_000;

    fn frame(params: &str, seq: u64) -> Result<Option<String>, Error> {
        let params: Params = serde_json::from_str(params).unwrap();
        Ok(tick(&Context::new(1, seq, Trigger::Tick, TS), &params)?.map(|raw| raw.0))
    }

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        let vectors: [(&str, u32); 9] = [
            ("", 2166136261),
            ("a", 3826002220),
            ("foobar", 3214735720),
            ("NONE", 1932136219),
            ("AAPL", 1489842955),
            ("BTCUSDT", 3895251564),
            ("SYM0", 3294944860),
            ("SYM1", 3311722479),
            ("é€", 1682486103),
        ];
        for (input, hash) in vectors {
            assert_eq!(fnv1a32(input.as_bytes()), hash, "{input:?}");
        }
    }

    #[test]
    fn frames_match_the_reference_table() {
        let table = [
            (
                r#"{"symbol":"AAPL","nonce":7}"#,
                1,
                r#"{"symbol":"AAPL","seq":1,"ts":1700000000000,"price":29.56,"nonce":7}"#,
            ),
            (r#"{}"#, 1, r#"{"symbol":"NONE","seq":1,"ts":1700000000000,"price":62.20,"nonce":null}"#),
            (r#"{"symbol":5}"#, 3, r#"{"symbol":"NONE","seq":3,"ts":1700000000000,"price":62.22,"nonce":null}"#),
            (
                r#"{"symbol":"SYM0"}"#,
                100,
                r#"{"symbol":"SYM0","seq":100,"ts":1700000000000,"price":49.60,"nonce":null}"#,
            ),
            (
                r#"{"symbol":"BTCUSDT","nonce":"n-1"}"#,
                2,
                r#"{"symbol":"BTCUSDT","seq":2,"ts":1700000000000,"price":15.66,"nonce":"n-1"}"#,
            ),
        ];
        for (params, seq, expected) in table {
            assert_eq!(frame(params, seq).unwrap().as_deref(), Some(expected), "{params}");
        }
    }

    #[test]
    fn fail_is_a_business_error() {
        let err = frame(r#"{"symbol":"FAIL","nonce":1}"#, 4).unwrap_err();
        assert_eq!(err.to_string(), "symbol FAIL is not tradable");
    }

    #[test]
    fn strings_are_escaped_as_json_stringify_does() {
        let out = frame(r#"{"symbol":"a/\"\\\b\t\n\f\r\u0001é\u2028","nonce":null}"#, 1).unwrap().unwrap();
        assert!(out.starts_with(r#"{"symbol":"a/\"\\\b\t\n\f\r\u0001é"#), "{out}");
        assert!(out.ends_with(r#","nonce":null}"#), "{out}");
    }

    #[test]
    fn nonces_are_echoed_compactly() {
        let out = frame(r#"{"nonce": { "a" : [1, 2] }}"#, 1).unwrap().unwrap();
        assert!(out.ends_with(r#""nonce":{"a":[1,2]}}"#), "{out}");
        let out = frame(r#"{"nonce":9007199254740991}"#, 1).unwrap().unwrap();
        assert!(out.ends_with(r#""nonce":9007199254740991}"#), "{out}");
    }
}
