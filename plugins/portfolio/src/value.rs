//! The valuation itself, apart from how its inputs are read: `portfolio` reads them through the
//! data import, and the plugin-host benchmark's `portfolio-inline` test plugin (which includes
//! this file) is handed them in its params, so the two differ only in the data path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An account as the `accounts` bucket holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// Quantity held, by symbol.
    pub holdings: BTreeMap<String, f64>,
    /// Whether a client without a token may see it (a demo account); private by default.
    #[serde(default)]
    pub public: bool,
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

/// Values `account`'s holdings at `prices` (one per holding, in the holdings' order).
pub fn value(name: &str, account: &Account, prices: impl IntoIterator<Item = Option<f64>>) -> Portfolio {
    let (mut total, mut missing) = (0.0, Vec::new());
    let positions = account
        .holdings
        .iter()
        .zip(prices)
        .map(|((symbol, qty), price)| {
            let value = price.map(|price| price * qty);
            match value {
                Some(value) => total += value,
                None => missing.push(symbol.clone()),
            }
            Position { symbol: symbol.clone(), qty: *qty, price, value }
        })
        .collect();
    Portfolio { account: name.to_owned(), positions, total, missing }
}
