//! Token auth: [`Authenticator`] verifies the JWT a client presents (on connect, or later to
//! refresh it) against the configured keys and turns it into the [`Identity`] its plugin is
//! given. Verification is `jsonwebtoken`'s; this module chooses the keys a token may be checked
//! with, the claims that must hold, and says in one line why a token is refused.
//!
//! Keys come from `[auth]` in the configuration: an HMAC secret (HS256/384/512), public keys in
//! PEM files (RSA: RS*/PS*; EC: ES256/ES384) and a JWKS file. A token's `alg` must belong to its
//! key's family (an RSA public key is never used as an HMAC secret), and a token that names a key
//! (`kid`) is checked with that key only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::config::AuthSettings;

/// Who a client is, as its verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's subject (`sub`), if it has one.
    pub subject: Option<String>,
    /// Every claim of the token, as a compact JSON object.
    pub claims: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused: the reason a client is told (in the 401 body or an error frame).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token came with a connection whose plugin requires one.
    #[error("a token is required: send it in ?token=, Sec-WebSocket-Protocol or Authorization: Bearer")]
    Missing,
    /// Not a JWT, or one with an algorithm the engine does not know.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// No configured key can check it.
    #[error("no key can verify this token ({0})")]
    NoKey(String),
    /// Its signature does not match.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Its `nbf` has not come yet.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// Its `aud` names none of the configured audiences.
    #[error("the token is for another audience")]
    WrongAudience,
    /// Its `iss` is not a configured issuer.
    #[error("the token comes from an issuer the engine does not trust")]
    WrongIssuer,
    /// It lacks a claim the engine requires.
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    /// A refreshed token names another subject than the connection's.
    #[error("the new token is for another subject than the connection's")]
    OtherSubject,
}

/// Why the configured keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HMAC secret cannot be used.
    #[error("{0}")]
    Secret(String),
    /// A key file holds no key the engine can use.
    #[error("{path} holds no usable key: {reason}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One key a token may be checked with.
struct Key {
    /// The key's id (from a JWKS); a token that names a `kid` is checked with that key only.
    kid: Option<String>,
    /// The algorithms this key checks.
    algorithms: Vec<Algorithm>,
    /// The key.
    key: DecodingKey,
}

/// Verifies tokens against the configured keys and claims.
pub struct Authenticator {
    keys: Vec<Key>,
    /// The claims checks every token gets (`exp`, `nbf`, `iss`, `aud`, leeway); its algorithms are
    /// set per key.
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];
const EC: [Algorithm; 2] = [Algorithm::ES256, Algorithm::ES384];

impl Authenticator {
    /// Loads the keys `settings` name (reading their files).
    pub fn load(settings: &AuthSettings) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|err| KeyError::Secret(format!("hs256_secret cannot be used: {err}")))?;
            keys.push(Key { kid: None, algorithms: HMAC.to_vec(), key });
        }
        for path in &settings.public_keys {
            keys.push(pem_key(path, &read(path)?)?);
        }
        if let Some(path) = &settings.jwks_file {
            keys.extend(jwks_keys(path, &read(path)?)?);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        validation.validate_aud = !settings.audiences.is_empty();
        if validation.validate_aud {
            validation.set_audience(&settings.audiences);
            required.push("aud");
        }
        if !settings.issuers.is_empty() {
            validation.set_issuer(&settings.issuers);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Authenticator { keys, validation })
    }

    /// When a connection whose token says `identity` must have refreshed it: its `exp` plus the
    /// leeway its checks allow.
    pub fn deadline(&self, identity: &Identity) -> SystemTime {
        let secs = identity.expires_at.saturating_add(self.validation.leeway);
        // An `exp` past what the clock can represent never comes.
        UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)).unwrap_or(UNIX_EPOCH + FAR_FUTURE)
    }

    /// Verifies `token` and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|err| TokenError::Malformed(err.to_string()))?;
        let candidates = self.keys.iter().filter(|key| {
            key.algorithms.contains(&header.alg)
                && match (&header.kid, &key.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    (Some(_), None) => !self.keys.iter().any(|key| key.kid.is_some()),
                    (None, _) => true,
                }
        });
        let mut refusal = TokenError::NoKey(match &header.kid {
            Some(kid) => format!("alg {:?}, kid `{kid}`", header.alg),
            None => format!("alg {:?}", header.alg),
        });
        for key in candidates {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![header.alg];
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok(identity(data.claims)),
                // Another key of the same family may have signed it.
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => refusal = TokenError::BadSignature,
                Err(err) => return Err(token_error(err.kind())),
            }
        }
        Err(refusal)
    }
}

/// The identity of verified claims (which hold a numeric `exp`: it is required and checked).
fn identity(claims: Map<String, Value>) -> Identity {
    Identity {
        subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        expires_at: claims.get("exp").and_then(Value::as_f64).map_or(0, |exp| exp.max(0.0) as u64),
        claims: Value::Object(claims).to_string(),
    }
}

/// The one-line reason for a failed check.
fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })
}

/// A public key in a PEM file: RSA or EC.
fn pem_key(path: &Path, pem: &[u8]) -> Result<Key, KeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key { kid: None, algorithms: RSA.to_vec(), key });
    }
    match DecodingKey::from_ec_pem(pem) {
        Ok(key) => Ok(Key { kid: None, algorithms: EC.to_vec(), key }),
        Err(err) => Err(KeyError::Unusable {
            path: path.to_owned(),
            reason: format!("not an RSA nor an EC public key in PEM ({err})"),
        }),
    }
}

/// The keys of a JWKS file (`{"keys":[…]}`); each keeps its `kid` and, if it names one, its `alg`.
fn jwks_keys(path: &Path, json: &[u8]) -> Result<Vec<Key>, KeyError> {
    let unusable = |reason: String| KeyError::Unusable { path: path.to_owned(), reason };
    let set: JwkSet = serde_json::from_slice(json).map_err(|err| unusable(format!("not a JWKS: {err}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|err| unusable(format!("a key cannot be used: {err}")))?;
        let family: &[Algorithm] = match key.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => &RSA,
            jsonwebtoken::AlgorithmFamily::Ec => &EC,
            // HMAC secrets belong in `hs256_secret`, not in a key set others may read.
            _ => return Err(unusable("only RSA and EC keys are accepted".to_owned())),
        };
        let named = jwk.common.key_algorithm.and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
        let algorithms = match named {
            Some(alg) if family.contains(&alg) => vec![alg],
            Some(alg) => return Err(unusable(format!("key algorithm {alg:?} does not fit its key type"))),
            None => family.to_vec(),
        };
        keys.push(Key { kid: jwk.common.key_id.clone(), algorithms, key });
    }
    if keys.is_empty() {
        return Err(unusable("the key set is empty".to_owned()));
    }
    Ok(keys)
}

/// A time no token outlives: about 10,000 years after the epoch.
const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(10_000 * 365 * 86_400);

/// The authenticator in use, swapped whole when `wasmpush reload` brings new keys.
pub type SharedAuthenticator = Arc<ArcSwap<Authenticator>>;

/// The token a handshake carries: `?token=` in the query, a `Sec-WebSocket-Protocol` entry
/// `wasmpush.bearer.TOKEN` (browsers cannot set headers on a WebSocket), or
/// `Authorization: Bearer TOKEN`.
pub fn handshake_token<'a>(
    query: Option<&str>,
    protocols: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    let from_query = query.and_then(|query| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "token").map(|(_, value)| value.into_owned())
    });
    if let Some(token) = from_query {
        return Some(token.into());
    }
    let from_protocol = offered_protocols(protocols).find_map(|protocol| protocol.strip_prefix(BEARER_PROTOCOL_PREFIX));
    from_protocol
        .or_else(|| authorization.and_then(|value| value.strip_prefix("Bearer ").map(str::trim)))
        .map(Into::into)
}

/// The `Sec-WebSocket-Protocol` entry that carries a token: `wasmpush.bearer.TOKEN`.
pub const BEARER_PROTOCOL_PREFIX: &str = "wasmpush.bearer.";

/// The subprotocol the engine answers when a client offers it (as a browser that sends its token
/// in `Sec-WebSocket-Protocol` should, so the token is not echoed back).
pub const PROTOCOL: &str = "wasmpush";

/// The `Sec-WebSocket-Protocol` entry with which a client asks to learn why a handshake is
/// refused from a close code rather than an HTTP status (which a browser's WebSocket never
/// shows): the upgrade completes, answering this subprotocol (so the client knows the connection
/// is no connection), and is closed at once with `4000 + status` (4400, 4401, 4403, 4404) and the
/// reason. Over-limit refusals (503) stay HTTP.
pub const REFUSALS_IN_BAND: &str = "wasmpush.refusals";

/// Whether a client's `offered` subprotocols ask for refusals as close codes.
pub fn wants_refusals_in_band(offered: Option<&str>) -> bool {
    offered_protocols(offered).any(|protocol| protocol == REFUSALS_IN_BAND)
}

/// The entries of a `Sec-WebSocket-Protocol` header, if there is one.
fn offered_protocols(offered: Option<&str>) -> impl Iterator<Item = &str> {
    offered.into_iter().flat_map(|offered| offered.split(',')).map(str::trim)
}

/// The `Sec-WebSocket-Protocol` answer to a client's `offered` list (RFC 6455 lets the server
/// pick only one the client offered): `wasmpush` if offered, else the token entry, else none.
pub fn answered_protocol(offered: Option<&str>) -> Option<&str> {
    let mut token_entry = None;
    for protocol in offered_protocols(offered) {
        if protocol == PROTOCOL {
            return Some(protocol);
        }
        if protocol.starts_with(BEARER_PROTOCOL_PREFIX) {
            token_entry = token_entry.or(Some(protocol));
        }
    }
    token_entry
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn settings() -> AuthSettings {
        AuthSettings { hs256_secret: Some(SECRET.into()), ..AuthSettings::default() }
    }

    /// Seconds since the Unix epoch.
    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn hs256(claims: Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
            .unwrap()
    }

    #[test]
    fn a_good_token_yields_its_subject_claims_and_expiry() {
        let auth = Authenticator::load(&settings()).unwrap();
        let exp = now() + 600;
        let who = auth.verify(&hs256(json!({"sub": "u7", "exp": exp, "role": "admin"}))).unwrap();
        assert_eq!(who.subject.as_deref(), Some("u7"));
        assert_eq!(who.expires_at, exp);
        let claims: Value = serde_json::from_str(&who.claims).unwrap();
        assert_eq!(claims["role"], "admin");
    }

    #[test]
    fn each_failed_check_says_why() {
        let auth = Authenticator::load(&AuthSettings {
            audiences: vec!["push".into()],
            issuers: vec!["https://auth.test".into()],
            leeway_secs: 0,
            ..settings()
        })
        .unwrap();
        let good = json!({"sub": "u", "exp": now() + 600, "aud": "push", "iss": "https://auth.test"});
        let with = |patch: Value| {
            let mut claims = good.clone();
            for (key, value) in patch.as_object().unwrap() {
                match value {
                    Value::Null => claims.as_object_mut().unwrap().remove(key),
                    value => claims.as_object_mut().unwrap().insert(key.clone(), value.clone()),
                };
            }
            auth.verify(&hs256(claims))
        };
        assert!(with(json!({})).is_ok());
        assert_eq!(with(json!({"exp": now() - 5})), Err(TokenError::Expired));
        assert_eq!(with(json!({"nbf": now() + 300})), Err(TokenError::NotYetValid));
        assert_eq!(with(json!({"aud": "other"})), Err(TokenError::WrongAudience));
        assert_eq!(with(json!({"iss": "https://evil.test"})), Err(TokenError::WrongIssuer));
        assert_eq!(with(json!({"exp": null})), Err(TokenError::MissingClaim("exp".into())));
        assert_eq!(with(json!({"aud": null})), Err(TokenError::MissingClaim("aud".into())));
        let forged =
            jsonwebtoken::encode(&Header::default(), &good, &EncodingKey::from_secret(b"another-secret").unwrap())
                .unwrap();
        assert_eq!(auth.verify(&forged), Err(TokenError::BadSignature));
        assert!(matches!(auth.verify("not.a.jwt"), Err(TokenError::Malformed(_))));
        // `alg: none` is not an algorithm here: such a token is malformed, never accepted.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", "eyJzdWIiOiJ1In0");
        assert!(matches!(auth.verify(&none), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn an_exp_beyond_the_clock_is_a_deadline_far_off_not_a_panic() {
        let auth = Authenticator::load(&settings()).unwrap();
        let who = auth.verify(&hs256(json!({"exp": 1e19}))).unwrap();
        assert!(auth.deadline(&who) > SystemTime::now() + std::time::Duration::from_secs(86_400 * 365 * 1000));
    }

    #[test]
    fn leeway_accepts_a_token_just_expired() {
        let auth = Authenticator::load(&AuthSettings { leeway_secs: 60, ..settings() }).unwrap();
        assert!(auth.verify(&hs256(json!({"exp": now() - 30}))).is_ok());
        assert_eq!(auth.verify(&hs256(json!({"exp": now() - 90}))), Err(TokenError::Expired));
    }

    #[test]
    fn an_hmac_token_is_never_checked_with_a_public_key() {
        let auth = Authenticator { keys: Vec::new(), validation: Validation::default() };
        assert!(matches!(auth.verify(&hs256(json!({"exp": now() + 60}))), Err(TokenError::NoKey(_))));
    }

    /// A fixture of `tests/fixtures/auth`.
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/auth").join(name)
    }

    fn signed(alg: Algorithm, kid: Option<&str>, key: EncodingKey) -> String {
        let header = Header { kid: kid.map(str::to_owned), ..Header::new(alg) };
        jsonwebtoken::encode(&header, &json!({"sub": "u9", "exp": now() + 60}), &key).unwrap()
    }

    #[test]
    fn rsa_and_ec_pem_keys_and_a_jwks_verify_their_tokens_only() {
        let auth = Authenticator::load(&AuthSettings {
            public_keys: vec![fixture("rsa-public.pem"), fixture("ec-public.pem")],
            jwks_file: Some(fixture("jwks.json")),
            ..AuthSettings::default()
        })
        .unwrap();
        let private = |name| std::fs::read(fixture(name)).unwrap();
        let rsa = signed(Algorithm::RS256, None, EncodingKey::from_rsa_pem(&private("rsa-private.pem")).unwrap());
        assert_eq!(auth.verify(&rsa).unwrap().subject.as_deref(), Some("u9"));
        let ec = signed(Algorithm::ES256, None, EncodingKey::from_ec_pem(&private("ec-private.pem")).unwrap());
        assert!(auth.verify(&ec).is_ok());
        let jwks_key = || EncodingKey::from_rsa_pem(&private("jwks-private.pem")).unwrap();
        assert!(auth.verify(&signed(Algorithm::RS256, Some("jwks-1"), jwks_key())).is_ok());
        assert!(matches!(
            auth.verify(&signed(Algorithm::RS256, Some("jwks-2"), jwks_key())),
            Err(TokenError::NoKey(_))
        ));
        // The JWKS key says RS256: the same key signing PS256 is refused.
        assert!(auth.verify(&signed(Algorithm::PS256, Some("jwks-1"), jwks_key())).is_err());
        // An HMAC token "signed" with the RSA public key's text must not pass as HS256.
        let confused = signed(
            Algorithm::HS256,
            None,
            EncodingKey::from_secret(&std::fs::read(fixture("rsa-public.pem")).unwrap()).unwrap(),
        );
        assert!(matches!(auth.verify(&confused), Err(TokenError::NoKey(_))));
    }

    #[test]
    fn unusable_key_files_are_named() {
        let load = |settings| Authenticator::load(&settings).unwrap_err().to_string();
        let missing = load(AuthSettings { public_keys: vec![fixture("nope.pem")], ..AuthSettings::default() });
        assert!(missing.contains("nope.pem"), "{missing}");
        let private_jwks = load(AuthSettings { public_keys: vec![fixture("README.md")], ..AuthSettings::default() });
        assert!(private_jwks.contains("not an RSA nor an EC public key"), "{private_jwks}");
        let not_jwks = load(AuthSettings { jwks_file: Some(fixture("rsa-public.pem")), ..AuthSettings::default() });
        assert!(not_jwks.contains("not a JWKS"), "{not_jwks}");
    }

    #[test]
    fn tokens_are_found_in_query_protocol_or_authorization() {
        let token =
            |query, protocols, authorization| handshake_token(query, protocols, authorization).map(|t| t.into_owned());
        assert_eq!(token(Some("params=%7B%7D&token=abc"), None, None).as_deref(), Some("abc"));
        assert_eq!(token(None, Some("wasmpush, wasmpush.bearer.xyz"), None).as_deref(), Some("xyz"));
        assert_eq!(token(None, None, Some("Bearer  t.u.v")).as_deref(), Some("t.u.v"));
        assert_eq!(token(Some("params=%7B%7D"), Some("chat"), Some("Basic x")), None);
        assert_eq!(answered_protocol(Some("wasmpush.bearer.xyz, wasmpush")), Some("wasmpush"));
        assert_eq!(answered_protocol(Some("wasmpush.bearer.xyz")), Some("wasmpush.bearer.xyz"));
        assert!(wants_refusals_in_band(Some("wasmpush, wasmpush.refusals, wasmpush.bearer.xyz")));
        assert!(!wants_refusals_in_band(Some("wasmpush.refusals2")) && !wants_refusals_in_band(None));
        assert_eq!(answered_protocol(Some("chat")), None);
    }
}
