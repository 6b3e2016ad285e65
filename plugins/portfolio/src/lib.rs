//! `portfolio`: the live-data example. A client names an account (`{"account":"a42"}`); the
//! plugin reads the account's holdings from bucket `accounts` and each holding's price from bucket
//! `prices`, and pushes the positions and their total. It reads through the SDK, so the engine
//! re-runs a connection the moment its account or one of its prices changes: deployed with
//! `tick_ms = 0`, it pushes on changes only.
//!
//! Config: `[plugins.portfolio] read = ["accounts", "prices"]`. Data (docs/data.md):
//! `accounts/a42` = `{"holdings":{"AAPL":10,"MSFT":5}}`, `prices/AAPL` = `{"price":189.5}`.
//!
//! It fails closed. With a token (`auth = "required"` in production; docs/security.md), a client
//! sees only its own accounts: the token's subject, or one listed in its `accounts` claim. Without
//! one (`auth = "none"`, or `"optional"` and no token sent) it sees only accounts published as
//! public (`"public": true`, as the demo's are). Params naming another account get an error
//! frame, whatever the client sends: the claims come from the verified token, never from params.

mod value;

use serde::Deserialize;
use wasmpush_sdk::{Context, Error};

pub use value::{Account, Portfolio, Position, Price, value};

/// What the client asks for.
#[derive(Debug, Deserialize)]
pub struct Params {
    /// The account to show.
    pub account: String,
}

/// Reads the account and its prices, and values the holdings.
pub fn tick(ctx: &Context, params: &Params) -> Result<Option<Portfolio>, Error> {
    let owner = ctx.identity().is_some();
    if owner && !may_see(ctx, &params.account) {
        return Err(Error::msg(format!("account {} is not yours", params.account)));
    }
    // Shared, not copied: the cached account and prices are used in place.
    let account = ctx.get_shared::<Account>("accounts", &params.account)?;
    let account = match account {
        Some(account) if owner || account.public => account,
        // Without a token, a private account and a missing one look the same.
        _ if !owner => return Err(Error::msg(format!("account {} needs a token", params.account))),
        _ => return Err(Error::msg(format!("unknown account {}", params.account))),
    };
    let prices = ctx.get_many_shared::<Price>("prices", account.holdings.keys())?;
    Ok(Some(value(&params.account, &account, prices.iter().map(|price| price.as_ref().map(|price| price.price)))))
}

/// Whether a client with a token may see `account`: only its subject's account and those its
/// `accounts` claim lists.
fn may_see(ctx: &Context, account: &str) -> bool {
    let Some(who) = ctx.identity() else { return false };
    who.subject() == Some(account)
        || who.claim::<Vec<String>>("accounts").is_some_and(|own| own.iter().any(|a| a == account))
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
            .put("accounts", "a42", json!({"holdings": {"AAPL": 10, "MSFT": 5}, "public": true}))
            .put("accounts", "a7", json!({"holdings": {"AAPL": 1}}))
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
    fn a_client_with_a_token_sees_only_its_own_accounts() {
        use wasmpush_sdk::Identity;
        let as_user = |sub: &str, claims| ctx().with_identity(Identity::new(Some(sub), claims));
        let own = data().run(|| tick(&as_user("a42", json!({"sub": "a42"})), &params("a42")));
        assert!(own.unwrap().is_some());
        let listed = data().run(|| tick(&as_user("u1", json!({"accounts": ["a7", "a42"]})), &params("a42")));
        assert!(listed.unwrap().is_some());
        let other = data().run(|| tick(&as_user("u1", json!({"accounts": ["a7"]})), &params("a42")));
        assert_eq!(other.unwrap_err().to_string(), "account a42 is not yours");
    }

    #[test]
    fn a_client_without_a_token_sees_public_accounts_only() {
        let private = data().run(|| tick(&ctx(), &params("a7"))).unwrap_err();
        assert_eq!(private.to_string(), "account a7 needs a token");
        let missing = data().run(|| tick(&ctx(), &params("nobody"))).unwrap_err();
        assert_eq!(missing.to_string(), "account nobody needs a token", "no way to probe which accounts exist");
        assert!(data().run(|| tick(&ctx(), &params("a42"))).unwrap().is_some(), "a public account");
    }

    #[test]
    fn a_missing_price_is_left_out_of_the_total_and_named() {
        let data = FakeData::new()
            .put("accounts", "a42", json!({"holdings": {"AAPL": 10, "MSFT": 5}, "public": true}))
            .put("prices", "AAPL", json!({"price": 189.5}));
        let portfolio = data.run(|| tick(&ctx(), &params("a42"))).unwrap().unwrap();
        assert_eq!((portfolio.total, portfolio.missing), (1895.0, vec!["MSFT".to_owned()]));
        assert_eq!(portfolio.positions[1].value, None);
    }

    #[test]
    fn an_unknown_account_is_an_error() {
        let as_owner = ctx().with_identity(wasmpush_sdk::Identity::new(Some("nobody"), json!({"sub": "nobody"})));
        let err = data().run(|| tick(&as_owner, &params("nobody"))).unwrap_err();
        assert_eq!(err.to_string(), "unknown account nobody");
    }

    #[test]
    fn a_bucket_the_config_does_not_grant_is_an_error() {
        let err = data().deny("prices").run(|| tick(&ctx(), &params("a42"))).unwrap_err();
        assert!(err.to_string().contains("not granted"), "{err}");
    }
}
