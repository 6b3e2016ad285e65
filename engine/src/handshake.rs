//! The WebSocket handshake's decisions: which plugin a request URL asks for and which params it
//! carries, whether its `Origin` may connect, who its client is (its token), or why it is
//! refused. Pure functions of the request and of which plugins are served (a lookup the caller
//! passes in); the server applies the decision.
//!
//! `/` and `/ws` serve the default plugin, `/ws/NAME` serves plugin NAME; `?params=<JSON>`
//! (percent-encoded) sets the params at once.

use std::sync::Arc;

use crate::auth::{Authenticator, Identity, TokenError};
use crate::config::AuthMode;
use crate::protocol::validate_params;

/// Where an accepted connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The plugin serving it.
    pub plugin: Arc<str>,
    /// Its params, if the URL carried them (validated).
    pub params: Option<String>,
    /// Who its client is, if it presented a valid token (see [`authenticate`]).
    pub identity: Option<Arc<Identity>>,
}

/// Why a handshake is refused: an HTTP status and a reason sent as the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Refusal {
    /// The HTTP status code.
    pub status: u16,
    /// Why, in one line.
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal { status, reason: reason.into() }
    }
}

/// Routes a request for `path` and `query`; `served` gives the name of a plugin that is served
/// (shared, so a route does not copy it), `None` for one that is not.
pub fn route(
    path: &str,
    query: Option<&str>,
    default_plugin: &str,
    served: impl Fn(&str) -> Option<Arc<str>>,
    max_params_bytes: usize,
) -> Result<Route, Refusal> {
    let name = match path.trim_end_matches('/') {
        "" | "/ws" => default_plugin,
        other => other
            .strip_prefix("/ws/")
            .filter(|name| !name.contains('/'))
            .ok_or_else(|| Refusal::new(404, format!("no such path `{path}`: connect to /ws/PLUGIN or /")))?,
    };
    let Some(plugin) = served(name) else {
        return Err(Refusal::new(404, format!("unknown plugin `{name}`")));
    };
    let params = match query {
        None => None,
        Some(query) => params_from_query(query, max_params_bytes)?,
    };
    Ok(Route { plugin, params, identity: None })
}

/// Who a handshake's client is, for a plugin whose `auth` is `mode`: no one when tokens are not
/// used or an optional one is absent; 401 when a required token is absent or any token presented
/// is invalid (an invalid token is never taken for no token).
pub fn authenticate(mode: AuthMode, token: Option<&str>, auth: &Authenticator) -> Result<Option<Identity>, Refusal> {
    let unauthorized = |err: TokenError| Refusal::new(401, err.to_string());
    match (mode, token) {
        (AuthMode::None, _) | (AuthMode::Optional, None) => Ok(None),
        (AuthMode::Required, None) => Err(unauthorized(TokenError::Missing)),
        (_, Some(token)) => auth.verify(token).map(Some).map_err(unauthorized),
    }
}

/// Checks the `Origin` of a handshake: which web pages may open connections. A request without
/// `Origin` is not from a browser and passes (a non-browser client could claim any origin
/// anyway). A browser's passes if its page came from the engine itself (`Origin` names the `Host`
/// it asked), or matches `allowed`: `*` for any, an exact origin (`https://app.example.com`), or
/// a pattern for subdomains (`https://*.example.com`).
pub fn check_origin(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> Result<(), Refusal> {
    let Some(origin) = origin else { return Ok(()) };
    let authority = origin.split_once("://").map(|(_, authority)| authority);
    let same_origin = authority.zip(host).is_some_and(|(authority, host)| authority.eq_ignore_ascii_case(host));
    if same_origin || allowed.iter().any(|pattern| origin_matches(pattern, origin)) {
        return Ok(());
    }
    Err(Refusal::new(403, format!("origin `{origin}` may not connect: the engine's allowed_origins do not list it")))
}

/// Whether `origin` matches one `allowed_origins` entry.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
        return true;
    }
    let (Some((scheme, host_pattern)), Some((origin_scheme, origin_host))) =
        (pattern.split_once("://"), origin.split_once("://"))
    else {
        return false;
    };
    let Some(domain) = host_pattern.strip_prefix("*.") else { return false };
    let origin_host = origin_host.to_ascii_lowercase();
    scheme.eq_ignore_ascii_case(origin_scheme)
        && origin_host.strip_suffix(&domain.to_ascii_lowercase()).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
}

/// The `params` value of a query string, validated.
fn params_from_query(query: &str, max_params_bytes: usize) -> Result<Option<String>, Refusal> {
    let Some((_, value)) = form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "params") else {
        return Ok(None);
    };
    validate_params(&value, max_params_bytes).map_err(|err| Refusal::new(400, format!("invalid ?params=: {err}")))?;
    Ok(Some(value.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(name: &str) -> Option<Arc<str>> {
        ["quote", "clock"].contains(&name).then(|| Arc::from(name))
    }

    #[test]
    fn paths_name_the_plugin_or_are_refused() {
        let plugin = |path| route(path, None, "quote", served, 4096).map(|route| route.plugin.to_string());
        assert_eq!(plugin("/").as_deref(), Ok("quote"));
        assert_eq!(plugin("/ws/").as_deref(), Ok("quote"));
        assert_eq!(plugin("/ws/clock").as_deref(), Ok("clock"));
        assert_eq!(plugin("/ws/nope").unwrap_err(), Refusal::new(404, "unknown plugin `nope`"));
        assert_eq!(plugin("/ws/a/b").unwrap_err().status, 404);
        assert_eq!(plugin("/other").unwrap_err().status, 404);
    }

    #[test]
    fn origins_pass_when_absent_same_or_listed_and_are_refused_otherwise() {
        let allowed = vec!["https://app.example.com".to_owned(), "https://*.example.org".to_owned()];
        let check = |origin, host| check_origin(origin, host, &allowed);
        assert!(check(None, Some("push.example.com")).is_ok(), "not a browser");
        assert!(
            check(Some("http://127.0.0.1:9503"), Some("127.0.0.1:9503")).is_ok(),
            "the demo page on its own origin"
        );
        assert!(check(Some("https://APP.example.com"), Some("push.example.com")).is_ok());
        assert!(check(Some("https://a.b.example.org"), Some("push")).is_ok());
        assert!(check(Some("https://example.org"), Some("push")).is_err(), "the pattern is for subdomains");
        assert!(check(Some("https://evilexample.org"), Some("push")).is_err());
        assert!(check(Some("http://a.example.org"), Some("push")).is_err(), "another scheme");
        let refusal = check(Some("https://evil.test"), Some("push.example.com")).unwrap_err();
        assert_eq!(refusal.status, 403);
        assert!(refusal.reason.contains("https://evil.test"), "{}", refusal.reason);
        assert!(check_origin(Some("https://anyone.test"), None, &["*".to_owned()]).is_ok());
    }

    #[test]
    fn tokens_are_required_optional_or_ignored_by_plugin() {
        let secret = "a-test-secret-of-at-least-32-bytes!!";
        let settings = crate::config::AuthSettings { hs256_secret: Some(secret.into()), ..Default::default() };
        let auth = Authenticator::load(&settings).unwrap();
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let claims = serde_json::json!({"sub": "u1", "exp": exp});
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
        let good = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let bad = format!("{good}x");
        let subject = |mode, token| authenticate(mode, token, &auth).map(|who| who.and_then(|who| who.subject));
        assert_eq!(subject(AuthMode::None, Some(bad.as_str())), Ok(None), "not looked at");
        assert_eq!(subject(AuthMode::Optional, None), Ok(None));
        assert_eq!(subject(AuthMode::Optional, Some(good.as_str())), Ok(Some("u1".into())));
        assert_eq!(subject(AuthMode::Optional, Some(bad.as_str())).unwrap_err().status, 401);
        let missing = subject(AuthMode::Required, None).unwrap_err();
        assert_eq!((missing.status, missing.reason.contains("required")), (401, true), "{missing}");
        assert_eq!(subject(AuthMode::Required, Some(good.as_str())), Ok(Some("u1".into())));
    }

    #[test]
    fn query_params_are_decoded_and_validated() {
        let params = params_from_query("a=1&params=%7B%22symbol%22%3A%22AAPL%22%7D", 4096).unwrap();
        assert_eq!(params.as_deref(), Some(r#"{"symbol":"AAPL"}"#));
        assert_eq!(params_from_query("a=1", 4096), Ok(None));
        let refusal = params_from_query("params=%5B1%5D", 4096).unwrap_err();
        assert_eq!(refusal.status, 400);
        assert!(refusal.reason.contains("JSON object"), "{}", refusal.reason);
    }
}
