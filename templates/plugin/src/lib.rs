//! `__NAME__`: a wasmpush plugin.
//!
//! Clients connect to `ws://HOST:9503/ws/__NAME__?params={"name":"Ada"}` and get a greeting
//! every tick; with `"repeat":false` only when they send new params. Replace the types and `tick`
//! with your own logic; the guide is `docs/plugin-guide.md`.

use serde::{Deserialize, Serialize};
use wasmpush_sdk::{Context, Error, Trigger, log};

/// What a client sends as params. A field that does not fit this type is an error frame naming it.
#[derive(Debug, Deserialize)]
pub struct Params {
    /// Who to greet.
    pub name: String,
    /// Push on every tick (the default), or only at once after new params.
    #[serde(default = "every_tick")]
    pub repeat: bool,
}

fn every_tick() -> bool {
    true
}

/// What a client receives, as a JSON text frame.
#[derive(Debug, PartialEq, Serialize)]
pub struct Greeting {
    /// The greeting.
    pub text: String,
    /// This connection's push number (1 for the first).
    pub seq: u64,
}

/// Called for each connection with params, every tick and at once when its params change.
/// `Ok(Some(_))` pushes, `Ok(None)` pushes nothing this time, `Err(_)` pushes one error frame and
/// parks the connection until the client sends new params.
pub fn tick(ctx: &Context, params: &Params) -> Result<Option<Greeting>, Error> {
    if params.name.is_empty() {
        return Err(Error::msg("name must not be empty"));
    }
    if ctx.trigger == Trigger::Tick && !params.repeat {
        return Ok(None);
    }
    if ctx.seq == 1 {
        log::info(format!("connection {} greets {}", ctx.conn_id, params.name));
    }
    Ok(Some(Greeting { text: format!("Hello, {}!", params.name), seq: ctx.seq }))
}

wasmpush_sdk::plugin!(tick);

#[cfg(test)]
mod tests {
    use super::*;

    fn call(trigger: Trigger, name: &str, repeat: bool) -> Result<Option<Greeting>, Error> {
        tick(&Context::new(7, 1, trigger, 1_000), &Params { name: name.into(), repeat })
    }

    #[test]
    fn greets_by_name() {
        assert_eq!(call(Trigger::Tick, "Ada", true).unwrap(), Some(Greeting { text: "Hello, Ada!".into(), seq: 1 }));
    }

    #[test]
    fn without_repeat_pushes_only_for_new_params() {
        assert!(call(Trigger::Message, "Ada", false).unwrap().is_some());
        assert_eq!(call(Trigger::Tick, "Ada", false).unwrap(), None);
    }

    #[test]
    fn an_empty_name_is_an_error() {
        assert_eq!(call(Trigger::Tick, "", true).unwrap_err().to_string(), "name must not be empty");
    }
}
