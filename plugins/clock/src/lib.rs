//! `clock`: the smallest useful plugin. Pushes the time every tick, in the time zone offset the
//! client asks for.

use serde::{Deserialize, Serialize};
use wasmpush_sdk::{Context, Error};

/// The client's params: `{"offset_minutes": 60}`; missing means UTC.
#[derive(Deserialize)]
pub struct Params {
    /// Minutes east of UTC, from -720 to 840.
    #[serde(default)]
    pub offset_minutes: i64,
}

/// One push.
#[derive(Debug, Serialize, PartialEq)]
pub struct Time {
    /// Milliseconds since the Unix epoch, shifted by the offset.
    pub local_ms: i64,
    /// Pushes so far on this connection, this one included.
    pub seq: u64,
}

/// Pushes the shifted time; rejects offsets no time zone has.
pub fn tick(ctx: &Context, params: &Params) -> Result<Option<Time>, Error> {
    if !(-720..=840).contains(&params.offset_minutes) {
        return Err(Error::msg(format!("offset_minutes {} is out of range", params.offset_minutes)));
    }
    let local_ms = ctx.now_ms as i64 + params.offset_minutes * 60_000;
    Ok(Some(Time { local_ms, seq: ctx.seq }))
}

wasmpush_sdk::plugin!(tick);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmpush_sdk::Trigger;

    #[test]
    fn shifts_by_the_offset() {
        let ctx = Context::new(1, 2, Trigger::Tick, 1_000_000);
        let time = tick(&ctx, &Params { offset_minutes: 60 }).unwrap();
        assert_eq!(time, Some(Time { local_ms: 4_600_000, seq: 2 }));
    }

    #[test]
    fn rejects_impossible_offsets() {
        let err = tick(&Context::new(1, 1, Trigger::Tick, 0), &Params { offset_minutes: 900 });
        assert_eq!(err.unwrap_err().to_string(), "offset_minutes 900 is out of range");
    }
}
