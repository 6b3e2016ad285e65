//! The admin endpoint's rollout routes: what `wasmpush deploy` (without `--nats`), `versions`,
//! `rollback`, `promote` and `abort` call. They change what serves, so a web page may not call
//! them: a request with an `Origin` header is refused (browsers set it on every `POST`).
//!
//! - `POST /plugins/NAME/deploy?mode=now|canary|shadow&percent=P&secs=S&manual=true`, the build
//!   as the body (`application/wasm`);
//! - `POST /plugins/NAME/promote`, `POST /plugins/NAME/abort`;
//! - `POST /plugins/NAME/rollback?version=HASH` (without it: the newest kept build not serving);
//! - `GET /plugins/NAME/versions`.
//!
//! Answers are JSON; a refusal is `{"error": …}` with 400, 404, 409, 413, 415 or 422.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::registry::MAX_PLUGIN_BYTES;
use crate::rollout_control::{DeployMode, RolloutError, Rollouts};

/// The rollout routes.
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/plugins/{name}/deploy", post(deploy).layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES as usize)))
        .route("/plugins/{name}/promote", post(promote))
        .route("/plugins/{name}/abort", post(abort))
        .route("/plugins/{name}/rollback", post(rollback))
        .route("/plugins/{name}/versions", get(versions))
        .layer(axum::middleware::from_fn(refuse_web_pages))
}

/// Refuses a request a web page sent (it carries `Origin`).
async fn refuse_web_pages(request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return refusal(
            StatusCode::FORBIDDEN,
            "the admin endpoint takes no rollout requests from web pages (Origin is set)",
        );
    }
    next.run(request).await
}

/// How to deploy, from the query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    /// `now`, `canary` or `shadow`.
    mode: String,
    /// A canary's share or a shadow run's sample, in percent.
    percent: Option<f64>,
    /// The window, in seconds.
    secs: Option<u64>,
    /// A canary waits for `promote`.
    #[serde(default)]
    manual: bool,
}

impl DeployQuery {
    fn mode(&self) -> Result<DeployMode, RolloutError> {
        let window = Duration::from_secs(self.secs.unwrap_or(60));
        match self.mode.as_str() {
            "now" => Ok(DeployMode::Now),
            "canary" => Ok(DeployMode::Canary { percent: self.percent.unwrap_or(10.0), window, manual: self.manual }),
            "shadow" => Ok(DeployMode::Shadow { sample: self.percent.unwrap_or(100.0), window }),
            other => Err(RolloutError::BadRequest(format!("mode `{other}`: use now, canary or shadow"))),
        }
    }
}

async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Query(query)) = query else {
        return refusal(StatusCode::BAD_REQUEST, "query: mode=now|canary|shadow, percent=P, secs=S, manual=true");
    };
    let wasm_body = headers.get(header::CONTENT_TYPE).is_some_and(|value| value == "application/wasm");
    if !wasm_body {
        return refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a deploy needs `Content-Type: application/wasm`");
    }
    let mode = match query.mode() {
        Ok(mode) => mode,
        Err(err) => return rollout_refusal(&err),
    };
    answer(&state, move |rollouts| {
        let deployed = rollouts.deploy(&name, &body, mode);
        if let Err(err) = &deployed {
            tracing::warn!(plugin = %name, cause = %err, "deploy refused; the serving build is unchanged");
        }
        deployed.map(|message| serde_json::json!({ "message": message }))
    })
    .await
}

async fn promote(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    answer(&state, move |rollouts| rollouts.promote(&name)).await
}

async fn abort(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    answer(&state, move |rollouts| rollouts.abort(&name)).await
}

/// Which kept build to roll back to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackQuery {
    /// A hash or a prefix of one (at least 4 hex digits).
    version: Option<String>,
}

async fn rollback(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<RollbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else { return refusal(StatusCode::BAD_REQUEST, "query: version=HASH") };
    answer(&state, move |rollouts| rollouts.rollback(&name, query.version.as_deref())).await
}

async fn versions(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    answer(&state, move |rollouts| rollouts.versions(&name)).await
}

/// Runs `work` on the rollouts off the runtime's threads (it may compile a build or write
/// files) and answers what it returns as JSON, or its refusal.
async fn answer<T: Serialize + Send + 'static>(
    state: &AdminState,
    work: impl FnOnce(&Arc<Rollouts>) -> Result<T, RolloutError> + Send + 'static,
) -> Response {
    let rollouts = state.rollouts.clone();
    match tokio::task::spawn_blocking(move || work(&rollouts)).await.expect("a rollout request does not panic") {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => rollout_refusal(&err),
    }
}

/// A refused rollout request, with its status.
fn rollout_refusal(err: &RolloutError) -> Response {
    refusal(StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), err.to_string())
}

/// `{"error": why}` with `status`.
fn refusal(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": why.into() }))).into_response()
}
