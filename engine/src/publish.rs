//! The publish API (default `127.0.0.1:9505`): how the business feeds the data plugins read.
//! Every write goes through [`DataStore::apply`], so it is on disk before it is acknowledged and
//! visible to plugins whole.
//!
//! - `PUT /v1/buckets/{bucket}/keys/{key}` with a JSON body sets one key;
//! - `GET` and `DELETE` on the same path read and delete it;
//! - `POST /v1/buckets/{bucket}` with `{"put": {KEY: VALUE, …}, "delete": [KEY, …]}` applies many
//!   changes atomically;
//! - `GET /v1/buckets/{bucket}?after=KEY&limit=N` lists keys by page.
//!
//! Writes answer `{"revision": N}`; errors answer `{"error": "…"}` with 400 (bad JSON or name),
//! 401/403 (token missing or wrong), 404, 413 (too large), 507 (over the store's budget). With a
//! token configured every request needs `Authorization: Bearer TOKEN`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bearer;
use crate::data::{Change, DataError, DataStore, check_bucket};

/// Keys one listing page holds at most, and by default.
const MAX_PAGE: usize = 1000;

/// The largest request body: a batch of many keys, not a bulk import.
const MAX_BODY_BYTES: usize = 64 << 20;

/// What every request handler shares.
#[derive(Clone)]
struct Publish {
    /// Where changes go and data is read.
    store: DataStore,
}

/// Serves the publish API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: DataStore,
    token: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let body_limit = MAX_BODY_BYTES.min(store.limits().max_data_bytes.saturating_mul(2).max(1 << 20));
    let token: Option<std::sync::Arc<str>> = token.map(std::sync::Arc::from);
    let state = Publish { store };
    let router = Router::new()
        .route("/v1/buckets/{bucket}/keys/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/buckets/{bucket}", post(post_batch).get(list_keys))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "no such endpoint: see docs/data.md") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |request, next| bearer::require(token.clone(), request, next)))
        .with_state(state);
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// An error response: `status` and `{"error": reason}`.
fn failure(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// The response for a refused change.
fn refused(err: &DataError) -> Response {
    let status = match err {
        DataError::BadName(_) | DataError::BadValue { .. } => StatusCode::BAD_REQUEST,
        DataError::ValueTooLarge { .. } | DataError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DataError::OverBudget { .. } | DataError::TooManyBuckets { .. } => StatusCode::INSUFFICIENT_STORAGE,
        DataError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        DataError::Closed => StatusCode::SERVICE_UNAVAILABLE,
    };
    failure(status, err.to_string())
}

/// Applies `changes` and answers with the revision.
async fn apply(state: &Publish, changes: Vec<Change>) -> Response {
    match state.store.apply(changes).await {
        Ok(revision) => Json(serde_json::json!({ "revision": revision })).into_response(),
        Err(err) => refused(&err),
    }
}

async fn put_key(State(state): State<Publish>, Path((bucket, key)): Path<(String, String)>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return failure(StatusCode::BAD_REQUEST, "the body is not UTF-8 JSON");
    };
    match state.store.limits().put(&bucket, &key, text) {
        Ok(change) => apply(&state, vec![change]).await,
        Err(err) => refused(&err),
    }
}

async fn get_key(State(state): State<Publish>, Path((bucket, key)): Path<(String, String)>) -> Response {
    match state.store.view().snapshot().get(&bucket, &key) {
        Some(entry) => {
            let revision = entry.revision.to_string();
            let headers =
                [(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, format!("\"{revision}\""))];
            (headers, entry.json.to_string()).into_response()
        }
        None => failure(StatusCode::NOT_FOUND, format!("bucket `{bucket}` has no key `{key}`")),
    }
}

async fn delete_key(State(state): State<Publish>, Path((bucket, key)): Path<(String, String)>) -> Response {
    let change = match state.store.limits().delete(&bucket, &key) {
        Ok(change) => change,
        Err(err) => return refused(&err),
    };
    if state.store.view().snapshot().get(&bucket, &key).is_none() {
        return failure(StatusCode::NOT_FOUND, format!("bucket `{bucket}` has no key `{key}`"));
    }
    apply(&state, vec![change]).await
}

/// The body of `POST /v1/buckets/{bucket}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Keys to set, with their values.
    #[serde(default)]
    put: BTreeMap<String, Box<RawValue>>,
    /// Keys to delete.
    #[serde(default)]
    delete: Vec<String>,
}

async fn post_batch(State(state): State<Publish>, Path(bucket): Path<String>, body: Bytes) -> Response {
    let batch: BatchBody = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"put\": {{…}}, \"delete\": […]}}: {err}"),
            );
        }
    };
    if let Some(key) = batch.delete.iter().find(|key| batch.put.contains_key(*key)) {
        return failure(StatusCode::BAD_REQUEST, format!("key `{key}` is both put and deleted"));
    }
    let limits = state.store.limits();
    let puts = batch.put.iter().map(|(key, value)| limits.put(&bucket, key, value.get()));
    let deletes = batch.delete.iter().map(|key| limits.delete(&bucket, key));
    match puts.chain(deletes).collect::<Result<Vec<_>, _>>() {
        Ok(changes) if changes.is_empty() => failure(StatusCode::BAD_REQUEST, "the batch changes nothing"),
        Ok(changes) => apply(&state, changes).await,
        Err(err) => refused(&err),
    }
}

/// The query of a key listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// List the keys after this one.
    after: Option<String>,
    /// Keys per page, at most [`MAX_PAGE`].
    limit: Option<usize>,
}

async fn list_keys(
    State(state): State<Publish>,
    Path(bucket): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return failure(StatusCode::BAD_REQUEST, "the query may hold `after=KEY` and `limit=N` only");
    };
    if let Err(reason) = check_bucket(&bucket) {
        return failure(StatusCode::BAD_REQUEST, reason);
    }
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return failure(StatusCode::BAD_REQUEST, format!("limit must be between 1 and {MAX_PAGE}"));
    }
    let snapshot = state.store.view().snapshot();
    if snapshot.bucket(&bucket).is_none() {
        return failure(StatusCode::NOT_FOUND, format!("bucket `{bucket}` holds no keys"));
    }
    let keys: Vec<String> =
        snapshot.keys_after(&bucket, query.after.as_deref(), limit).iter().map(|key| key.to_string()).collect();
    let next = (keys.len() == limit).then(|| keys.last().cloned()).flatten();
    Json(serde_json::json!({ "keys": keys, "next": next })).into_response()
}
