//! Test plugin for the plugin-host benchmark: `portfolio`'s valuation handed its account and
//! prices in its params (parsed once, cached by the SDK) instead of reading them through the data
//! import, so the benchmark can set the data path's cost against the same computation without it.

use serde::Deserialize;
use wasmpush_sdk::{Context, Error};

#[path = "../../../../plugins/portfolio/src/value.rs"]
// `Account::public` is `portfolio`'s access rule; this benchmark plugin values holdings only.
#[allow(dead_code)]
mod value;

/// The account and its prices, as `portfolio` would read them.
#[derive(Deserialize)]
struct Params {
    account: String,
    holdings: value::Account,
    prices: Vec<Option<value::Price>>,
}

fn tick(_: &Context, params: &Params) -> Result<Option<value::Portfolio>, Error> {
    let prices = params.prices.iter().map(|price| price.as_ref().map(|price| price.price));
    Ok(Some(value::value(&params.account, &params.holdings, prices)))
}

wasmpush_sdk::plugin!(tick);
