//! Token auth end to end: a real engine checks the JWT a client connects with (in the query, in
//! `Sec-WebSocket-Protocol` or in `Authorization`), refuses a bad one with 401 and its reason,
//! hands the verified claims to `portfolio` (built from source), which refuses params naming
//! another user's account, and closes a connection whose token expires unless the client sent a
//! fresh one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wasmpush::config::{AuthMode, AuthSettings};
use wasmpush_tests::{Client, Frame, TestEngine, artifacts};

use crate::data::{parse, portfolio, publish, seed};
use crate::util::{SOON, encode, error_parts};

const SECRET: &str = "an-hs256-secret-for-tests-32-bytes!";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token with `claims`.
fn token(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
}

/// A token for subject `sub`, for audience `push`, valid for `secs`.
fn token_for(sub: &str, secs: u64) -> String {
    token(json!({"sub": sub, "aud": "push", "exp": now() + secs}))
}

/// An engine serving `portfolio` with `auth = mode`, checking HS256 tokens for audience `push`
/// with no leeway, and the RS256 key of the fixtures.
async fn engine(mode: AuthMode) -> TestEngine {
    let engine = TestEngine::start(&[("portfolio", artifacts::PORTFOLIO)], |config| {
        portfolio(config, |table| table.auth = mode);
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/auth");
        config.auth = AuthSettings {
            hs256_secret: Some(SECRET.into()),
            public_keys: vec![fixtures.join("rsa-public.pem")],
            audiences: vec!["push".into()],
            leeway_secs: 0,
            ..AuthSettings::default()
        };
    })
    .await;
    seed(&engine).await;
    engine
}

/// The URL of `portfolio` for `account`, with `?token=` if given.
fn url(engine: &TestEngine, account: &str, token: Option<&str>) -> String {
    let params = encode(&json!({ "account": account }).to_string());
    let token = token.map(|token| format!("&token={token}")).unwrap_or_default();
    engine.url(&format!("/ws/portfolio?params={params}{token}"))
}

/// The status and body of a refused handshake.
async fn refusal(url: &str) -> (u16, String) {
    match Client::try_connect(url).await {
        Err(WsError::Http(response)) => {
            assert!(response.status() != 401 || response.headers().contains_key("www-authenticate"));
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body.trim().to_owned())
        }
        Err(err) => panic!("expected an HTTP refusal, got {err}"),
        Ok(_) => panic!("expected a refusal, the handshake succeeded"),
    }
}

#[tokio::test]
async fn a_good_token_connects_and_bad_ones_are_refused_with_401_and_the_reason() {
    let engine = engine(AuthMode::Required).await;
    let mut client = Client::connect(&url(&engine, "a42", Some(&token_for("a42", 600)))).await;
    assert_eq!(parse(&client.next_text(SOON).await)["account"], "a42", "a good token is served");

    let forged = {
        let key = EncodingKey::from_secret(b"another-secret-another-secret-32b").unwrap();
        jsonwebtoken::encode(&Header::default(), &json!({"sub": "a42", "aud": "push", "exp": now() + 600}), &key)
            .unwrap()
    };
    let cases = [
        (None, "a token is required"),
        (Some(forged), "signature is invalid"),
        (Some(token(json!({"sub": "a42", "aud": "push", "exp": now() - 60}))), "expired"),
        (Some(token(json!({"sub": "a42", "aud": "other", "exp": now() + 600}))), "another audience"),
        (Some("not-a-token".to_owned()), "malformed"),
    ];
    for (token, reason) in cases {
        let (status, body) = refusal(&url(&engine, "a42", token.as_deref())).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(reason), "expected `{reason}` in `{body}`");
    }
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"wasmpush_handshakes_total{result="unauthorized"} 5"#), "{metrics}");
}

#[tokio::test]
async fn a_token_in_the_subprotocol_or_the_authorization_header_is_accepted() {
    let engine = engine(AuthMode::Required).await;
    let good = token_for("a42", 600);
    // A browser: the token rides in Sec-WebSocket-Protocol, and the engine answers `wasmpush`.
    let mut request = url(&engine, "a42", None).into_client_request().unwrap();
    let offered = format!("wasmpush, wasmpush.bearer.{good}");
    request.headers_mut().insert("sec-websocket-protocol", offered.parse().unwrap());
    let (mut browser, response) = Client::try_connect_with(request).await.expect("subprotocol token accepted");
    assert_eq!(response.headers()["sec-websocket-protocol"], "wasmpush");
    assert_eq!(parse(&browser.next_text(SOON).await)["account"], "a42");
    // Any other client: Authorization: Bearer, here with an RS256 token.
    let rsa = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/auth/rsa-private.pem"));
    let key = EncodingKey::from_rsa_pem(&rsa.unwrap()).unwrap();
    let claims = json!({"sub": "a42", "aud": "push", "exp": now() + 600});
    let rs256 = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
    let mut request = url(&engine, "a42", None).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {rs256}").parse().unwrap());
    let (mut client, _) = Client::try_connect_with(request).await.expect("bearer token accepted");
    assert_eq!(parse(&client.next_text(SOON).await)["account"], "a42");
}

#[tokio::test]
async fn claims_reach_the_plugin_which_refuses_params_naming_another_users_account() {
    let engine = engine(AuthMode::Optional).await;
    // The claims say which accounts are the client's; params cannot change that.
    let claims = json!({"sub": "u1", "aud": "push", "exp": now() + 600, "accounts": ["a7"]});
    let mut client = Client::connect(&url(&engine, "a7", Some(&token(claims)))).await;
    assert_eq!(parse(&client.next_text(SOON).await)["account"], "a7", "an account the claims list");
    client.send_text(r#"{"account":"a42"}"#).await;
    let (code, message) = error_parts(&client.next_error_frame(SOON).await);
    assert_eq!((code, message.as_str()), (0, "account a42 is not yours"));
    // Optional: a client without a token connects, and the plugin serves it as anonymous: public
    // accounts only. Regression (#23.9): the example used to fail open and show any account.
    let mut anonymous = Client::connect(&url(&engine, "a42", None)).await;
    assert_eq!(parse(&anonymous.next_text(SOON).await)["account"], "a42");
    publish(&engine, "PUT", "/v1/buckets/accounts/keys/p1", json!({"holdings": {"AAPL": 1}})).await;
    anonymous.send_text(r#"{"account":"p1"}"#).await;
    let (code, message) = error_parts(&anonymous.next_error_frame(SOON).await);
    assert_eq!((code, message.as_str()), (0, "account p1 needs a token"), "a private account");
    // A bad token is refused even where a token is optional: it is never taken for none.
    let (status, _) = refusal(&url(&engine, "a42", Some("bad.token.here"))).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_with_4401_unless_refreshed_first() {
    let engine = engine(AuthMode::Required).await;
    let mut lapsing = Client::connect(&url(&engine, "a42", Some(&token_for("a42", 2)))).await;
    let mut refreshed = Client::connect(&url(&engine, "a42", Some(&token_for("a42", 2)))).await;
    lapsing.next_text(SOON).await;
    refreshed.next_text(SOON).await;
    // A token for someone else is refused with an error frame; the connection keeps its own.
    refreshed.send_text(&json!({"$token": token_for("a7", 600)}).to_string()).await;
    let (code, message) = error_parts(&refreshed.next_error_frame(SOON).await);
    assert_eq!(code, 4007, "{message}");
    assert!(message.contains("another subject"), "{message}");
    refreshed.send_text(&json!({"$token": token_for("a42", 600)}).to_string()).await;

    match lapsing.closing_frame(Duration::from_secs(5)).await {
        Some(Frame::Close(Some((code, reason)))) => assert_eq!((code, reason.as_str()), (4401, "token expired")),
        other => panic!("expected close 4401, got {other:?}"),
    }
    // The refreshed connection outlives the old token's expiry and is still pushed.
    let frames = refreshed.texts_during(Duration::from_secs(2)).await;
    assert!(!frames.is_empty(), "still pushed after the first token expired");
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"wasmpush_closes_total{reason="token_expired"} 1"#), "{metrics}");
    assert!(metrics.contains("wasmpush_token_refreshes_total 1"), "{metrics}");
}
