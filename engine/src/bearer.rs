//! The bearer token of the engine's HTTP listeners (the admin endpoint, the publish API): a
//! request without `Authorization: Bearer TOKEN` gets 401, one with another token 403. With no
//! token configured every request passes (the listener is then on loopback: the config refuses
//! anything else).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Lets `request` through to `next` only with `token`, if one is required.
pub async fn require(token: Option<Arc<str>>, request: Request, next: Next) -> Response {
    let Some(token) = token else { return next.run(request).await };
    let sent = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    match sent.and_then(|value| value.strip_prefix("Bearer ")) {
        None => {
            let mut response = refusal(StatusCode::UNAUTHORIZED, "this endpoint needs `Authorization: Bearer TOKEN`");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header value"));
            response
        }
        Some(sent) if !same_secret(sent.as_bytes(), token.as_bytes()) => {
            refusal(StatusCode::FORBIDDEN, "the bearer token is not this endpoint's token")
        }
        Some(_) => next.run(request).await,
    }
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
}
