//! The bearer token of the engine's HTTP listeners (the admin endpoint, the publish API): a
//! request without `Authorization: Bearer TOKEN` gets 401, one with another token 403. With no
//! token configured every request passes (the listener is then on loopback: the config refuses
//! anything else).
//!
//! A browser cannot set a header on a page it opens or on its event stream, but it answers a
//! `Basic` challenge: so the token is also taken as the password of `Authorization: Basic` (any
//! user name), and a 401 offers both schemes. The operator console relies on it.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Lets `request` through to `next` only with `token`, if one is required.
pub async fn require(token: Option<Arc<str>>, request: Request, next: Next) -> Response {
    let Some(token) = token else { return next.run(request).await };
    let sent = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    match sent.and_then(sent_token) {
        None => {
            let mut response = refusal(StatusCode::UNAUTHORIZED, "this endpoint needs `Authorization: Bearer TOKEN`");
            // One challenge per header: browsers do not split one header into several.
            for challenge in ["Bearer realm=\"wasmpush\"", "Basic realm=\"wasmpush\", charset=\"UTF-8\""] {
                let challenge = challenge.parse().expect("a valid header value");
                response.headers_mut().append(header::WWW_AUTHENTICATE, challenge);
            }
            response
        }
        Some(sent) if !same_secret(sent.as_bytes(), token.as_bytes()) => {
            refusal(StatusCode::FORBIDDEN, "the bearer token is not this endpoint's token")
        }
        Some(_) => next.run(request).await,
    }
}

/// The token an `Authorization` value carries: `Bearer TOKEN`, or `Basic` with the token as the
/// password.
fn sent_token(authorization: &str) -> Option<String> {
    use base64::Engine as _;
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return Some(token.to_owned());
    }
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let (_user, password) = credentials.split_once(':')?;
    Some(password.to_owned())
}

/// A refusal: `status` and `{"error": reason}`.
fn refusal(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": reason }))).into_response()
}

/// Compares two secrets in time that depends on their lengths only, not on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_byte_for_byte() {
        assert!(same_secret(b"a-token", b"a-token"));
        assert!(!same_secret(b"a-token", b"a-tokeN"));
        assert!(!same_secret(b"a-token", b"a-token-longer"));
    }

    #[test]
    fn the_token_comes_as_a_bearer_or_as_a_basic_password() {
        assert_eq!(sent_token("Bearer abc").as_deref(), Some("abc"));
        // `operator:s3cret:x` in base64: the password is everything after the first colon.
        assert_eq!(sent_token("Basic b3BlcmF0b3I6czNjcmV0Ong=").as_deref(), Some("s3cret:x"));
        assert_eq!(sent_token("Basic not base64!"), None);
        assert_eq!(sent_token("Digest abc"), None);
    }
}
