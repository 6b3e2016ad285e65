//! `portfolio`: the live-data example. A client names an account (`{"account":"a42"}`); the
//! plugin reads the account's holdings from bucket `accounts` and each holding's price from bucket
//! `prices`, and pushes the positions and their total. It reads through the SDK, so the engine
//! re-runs a connection the moment its account or one of its prices changes: deployed with
//! `tick_ms = 0`, it pushes on changes only.
//!
//! Config: `[plugins.portfolio] read = ["accounts", "prices"]`. Data (docs/data.md):
//! `accounts/a42` = `{"holdings":{"AAPL":10,"MSFT":5}}`, `prices/AAPL` = `{"price":189.5}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmpush_sdk::{Context, Error};

/// What the client asks for.
#[derive(Debug, Deserialize)]
pub struct Params {
    /// The account to show.
    pub account: String,
}

/// An account as the `accounts` bucket holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// Quantity held, by symbol.
    pub holdings: BTreeMap<String, f64>,
}

/// A price as the `prices` bucket holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    /// The last price.
    pub price: f64,
}

/// What the client is pushed.
#[derive(Debug, PartialEq, Serialize)]
pub struct Portfolio {
    /// The account shown.
    pub account: String,
    /// One position per holding, by symbol.
    pub positions: Vec<Position>,
    /// The value of the positions that have a price.
    pub total: f64,
    /// Symbols without a price: left out of the total.
    pub missing: Vec<String>,
}

/// One holding, valued at its price.
#[derive(Debug, PartialEq, Serialize)]
pub struct Position {
    /// The symbol.
    pub symbol: String,
    /// Quantity held.
    pub qty: f64,
    /// Its price, `null` when there is none.
    pub price: Option<f64>,
    /// `qty × price`, `null` when there is no price.
    pub value: Option<f64>,
}

/// Values the account's holdings at their prices.
pub fn tick(ctx: &Context, params: &Params) -> Result<Option<Portfolio>, Error> {
    let Some(account) = ctx.get::<Account>("accounts", &params.account)? else {
        return Err(Error::msg(format!("unknown account {}", params.account)));
    };
    let symbols: Vec<&str> = account.holdings.keys().map(String::as_str).collect();
    let prices = ctx.get_many::<Price>("prices", &symbols)?;
    let (mut total, mut missing) = (0.0, Vec::new());
    let positions = account
        .holdings
        .iter()
        .zip(prices)
        .map(|((symbol, qty), price)| {
            let price = price.map(|p| p.price);
            let value = price.map(|price| price * qty);
            match value {
                Some(value) => total += value,
                None => missing.push(symbol.clone()),
            }
            Position { symbol: symbol.clone(), qty: *qty, price, value }
        })
        .collect();
    Ok(Some(Portfolio { account: params.account.clone(), positions, total, missing }))
}

wasmpush_sdk::plugin!(tick);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wasmpush_sdk::{FakeData, Trigger};

    use super::*;

    fn params(account: &str) -> Params {
        Params { account: account.to_owned() }
    }

    fn data() -> FakeData {
        FakeData::new()
            .put("accounts", "a42", json!({"holdings": {"AAPL": 10, "MSFT": 5}}))
            .put("prices", "AAPL", json!({"price": 189.5}))
            .put("prices", "MSFT", json!({"price": 400.0}))
    }

    fn ctx() -> Context {
        Context::new(1, 1, Trigger::Message, 0)
    }

    #[test]
    fn positions_are_valued_at_their_prices() {
        let portfolio = data().run(|| tick(&ctx(), &params("a42"))).unwrap().unwrap();
        assert_eq!(portfolio.total, 1895.0 + 2000.0);
        assert_eq!(
            portfolio.positions[0],
            Position { symbol: "AAPL".into(), qty: 10.0, price: Some(189.5), value: Some(1895.0) }
        );
        assert!(portfolio.missing.is_empty());
    }

    #[test]
    fn a_missing_price_is_left_out_of_the_total_and_named() {
        let data = FakeData::new().put("accounts", "a42", json!({"holdings": {"AAPL": 10, "MSFT": 5}})).put(
            "prices",
            "AAPL",
            json!({"price": 189.5}),
        );
        let portfolio = data.run(|| tick(&ctx(), &params("a42"))).unwrap().unwrap();
        assert_eq!((portfolio.total, portfolio.missing), (1895.0, vec!["MSFT".to_owned()]));
        assert_eq!(portfolio.positions[1].value, None);
    }

    #[test]
    fn an_unknown_account_is_an_error() {
        let err = data().run(|| tick(&ctx(), &params("nobody"))).unwrap_err();
        assert_eq!(err.to_string(), "unknown account nobody");
    }

    #[test]
    fn a_bucket_the_config_does_not_grant_is_an_error() {
        let err = data().deny("prices").run(|| tick(&ctx(), &params("a42"))).unwrap_err();
        assert!(err.to_string().contains("not granted"), "{err}");
    }
}
