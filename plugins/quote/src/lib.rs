//! `quote`: the reference workload specified in `docs/quote.md`, byte for byte.
//!
//! Each push is `{"symbol":S,"seq":N,"ts":T,"price":P,"nonce":X}` where the price is derived
//! from the FNV-1a hash of the symbol plus the push counter, computed in integers and written by
//! hand so every implementation agrees on its digits. Symbol `FAIL` is a business error.

use serde::Deserialize;
use serde::de::{Deserializer, Error as _, IgnoredAny};
use serde_json::value::RawValue;
use wasmpush_sdk::{Context, Error, Payload};

/// The connection's params. Everything is optional; unknown keys are ignored.
#[derive(Debug, Deserialize)]
pub struct Params {
    /// The symbol, when the params carry a JSON string under `symbol`; any other value (or none)
    /// reads as `NONE`.
    #[serde(default, deserialize_with = "string_or_none")]
    pub symbol: Option<String>,
    /// The `nonce` value as it was sent (objects and arrays made compact once, here), echoed back
    /// in every push; `None` when absent or null.
    #[serde(default, deserialize_with = "compact_nonce")]
    pub nonce: Option<Box<RawValue>>,
}

/// The symbol a connection without a string `symbol` quotes.
const NO_SYMBOL: &str = "NONE";

/// The one symbol that is a business error.
const FAILING_SYMBOL: &str = "FAIL";

/// Builds the frame for one push.
pub fn tick<'a>(ctx: &Context, params: &'a Params) -> Result<Option<Quote<'a>>, Error> {
    let symbol = params.symbol.as_deref().unwrap_or(NO_SYMBOL);
    if symbol == FAILING_SYMBOL {
        return Err(Error::msg("symbol FAIL is not tradable"));
    }
    let cents = u64::from(fnv1a32(symbol.as_bytes()) % 10_000) + ctx.seq;
    Ok(Some(Quote { symbol, seq: ctx.seq, ts: ctx.now_ms, cents, nonce: params.nonce.as_deref() }))
}

/// One push. It borrows the symbol and nonce from the cached params and writes itself straight
/// into the batch's frame buffer: a push allocates nothing.
#[derive(Debug)]
pub struct Quote<'a> {
    symbol: &'a str,
    seq: u64,
    ts: u64,
    cents: u64,
    nonce: Option<&'a RawValue>,
}

impl Payload for Quote<'_> {
    fn write_frame(self, frame: &mut Vec<u8>) -> Result<(), Error> {
        let mut digits = itoa::Buffer::new();
        frame.extend_from_slice(b"{\"symbol\":");
        serde_json::to_writer(&mut *frame, self.symbol)?;
        frame.extend_from_slice(b",\"seq\":");
        frame.extend_from_slice(digits.format(self.seq).as_bytes());
        frame.extend_from_slice(b",\"ts\":");
        frame.extend_from_slice(digits.format(self.ts).as_bytes());
        frame.extend_from_slice(b",\"price\":");
        frame.extend_from_slice(digits.format(self.cents / 100).as_bytes());
        let cents = (self.cents % 100) as u8;
        frame.extend_from_slice(&[b'.', b'0' + cents / 10, b'0' + cents % 10]);
        frame.extend_from_slice(b",\"nonce\":");
        frame.extend_from_slice(self.nonce.map_or("null", RawValue::get).as_bytes());
        frame.push(b'}');
        Ok(())
    }
}

wasmpush_sdk::plugin!(tick);

/// FNV-1a, 32 bit, over `bytes`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |hash: u32, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// Reads the nonce: scalars exactly as sent, objects and arrays without whitespace.
fn compact_nonce<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let Some(nonce) = Option::<Box<RawValue>>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if !nonce.get().starts_with(['{', '[']) {
        return Ok(Some(nonce));
    }
    let value: serde_json::Value = serde_json::from_str(nonce.get()).map_err(D::Error::custom)?;
    serde_json::value::to_raw_value(&value).map(Some).map_err(D::Error::custom)
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
        tick(&Context::new(1, seq, Trigger::Tick, TS), &params)?.map(Payload::into_frame).transpose()
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
