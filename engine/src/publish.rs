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
//! 401/403 (token missing or wrong), 404, 408 (a body not sent in time), 413 (too large), 415 (a
//! write whose `Content-Type` is not `application/json`), 503 (the data store cannot write until
//! it is reopened), 507 (over the store's budget). With a token configured every request needs
//! `Authorization: Bearer TOKEN`.
//!
//! Web pages must not reach it: a request with an `Origin` (only browsers send one) is refused,
//! and on loopback so is one whose `Host` is not a loopback name with this listener's port (a
//! page on a rebound DNS name). A body's size is checked before it is read (its
//! `Content-Length`, then the bytes as they come), against what one value or one batch may hold.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bearer;
use crate::cluster::Cluster;
use crate::data::{Change, DataError, DataStore, check_bucket};
use crate::http_server::{self, HttpLimits};
use crate::metrics::Metrics;

/// Keys one listing page holds at most, and by default.
const MAX_PAGE: usize = 1000;

/// Batch bodies read and parsed at once at most; more wait their turn (a parsed batch takes a
/// few times its size in memory).
const BATCHES_AT_ONCE: usize = 4;

/// How much a request may send, and how fast.
#[derive(Debug, Clone)]
struct BodyLimits {
    /// Bytes of a `PUT` body: one value, with room for white space.
    put: usize,
    /// Bytes of a `POST` body: one batch (`max_batch_bytes`).
    batch: usize,
    /// Time to send the body.
    timeout: std::time::Duration,
    /// Batch bodies in progress.
    batches: Arc<Semaphore>,
    /// The listener's address: on loopback, the `Host` a request must name.
    local: SocketAddr,
}

/// What every request handler shares.
#[derive(Clone)]
struct Publish {
    /// Where data is read, and where changes go on a single node.
    store: DataStore,
    /// Where changes go on a node of a cluster: every node, this one included, applies them to
    /// its store from there.
    cluster: Option<Cluster>,
}

/// What the publish API is started with.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// The bearer token it requires, if any.
    pub token: Option<String>,
    /// Its clients' time and connection limits.
    pub limits: HttpLimits,
    /// Bytes of one batch's body.
    pub max_batch_bytes: usize,
    /// The cluster its writes go to, on a node of one.
    pub cluster: Option<Cluster>,
    /// Where its writes are counted by result.
    pub metrics: Arc<Metrics>,
}

/// Serves the publish API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: DataStore,
    settings: PublishSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let PublishSettings { token, limits, max_batch_bytes, cluster, metrics } = settings;
    let body = BodyLimits {
        put: store.limits().max_value_bytes.saturating_mul(2) + 1024,
        batch: max_batch_bytes,
        timeout: limits.timeout,
        batches: Arc::new(Semaphore::new(BATCHES_AT_ONCE)),
        local: listener.local_addr()?,
    };
    let token: Option<Arc<str>> = token.map(Arc::from);
    let state = Publish { store, cluster };
    let router = Router::new()
        .route("/v1/buckets/{bucket}/keys/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/buckets/{bucket}", post(post_batch).get(list_keys))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "no such endpoint: see docs/data.md") })
        // The body is read whole by `read_body`, within its own limit.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(body.clone(), read_body))
        .layer(middleware::from_fn(move |request, next| bearer::require(token.clone(), request, next)))
        .layer(middleware::from_fn_with_state(body, refuse_web_pages))
        .layer(middleware::from_fn_with_state(metrics, count_writes))
        .with_state(state);
    http_server::serve(listener, router, limits, shutdown).await;
    Ok(())
}

/// Counts each write (a request other than `GET`) by its answer: applied, refused (4xx) or failed
/// (5xx).
async fn count_writes(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let write = request.method() != Method::GET;
    let response = next.run(request).await;
    if write {
        let status = response.status();
        match () {
            () if status.is_server_error() => metrics.publishes_failed.inc(),
            () if status.is_client_error() => metrics.publishes_refused.inc(),
            () => metrics.publishes_ok.inc(),
        };
    }
    response
}

/// Refuses what a web page could send: a request with an `Origin`, and on loopback one whose
/// `Host` is not a loopback name with this listener's port (DNS rebinding).
async fn refuse_web_pages(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return failure(StatusCode::FORBIDDEN, "the publish API takes no requests from web pages (Origin is set)");
    }
    if limits.local.ip().is_loopback() {
        let host = request.headers().get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or("");
        if !names_loopback(host, limits.local.port()) {
            return failure(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{host}` is not this listener's: use localhost:{0} or 127.0.0.1:{0}",
                    limits.local.port()
                ),
            );
        }
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header) names a loopback address, with `port` if it has one.
fn names_loopback(host: &str, port: u16) -> bool {
    let (name, given_port) = match host.rsplit_once(':') {
        Some((name, given)) if !name.ends_with(':') && !given.ends_with(']') => (name, Some(given)),
        _ => (host, None),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback && given_port.is_none_or(|given| given.parse() == Ok(port))
}

/// Reads a request's body whole before it is parsed: a write must say `application/json`, and
/// its size is checked against what one value (`PUT`) or one batch (`POST`) may hold, first by
/// its `Content-Length`, then as it comes; a body not sent within the timeout is answered 408.
async fn read_body(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let limit = match *request.method() {
        Method::PUT => limits.put,
        Method::POST => limits.batch,
        _ => 0,
    };
    if limit > 0 {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
        let json = content_type.is_some_and(|value| {
            value.split(';').next().is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return failure(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a write needs `Content-Type: application/json`");
        }
    }
    // The rest of a refused body is not read: the connection ends with the answer.
    let closing = |mut response: Response| {
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        response
    };
    let too_large = || closing(failure(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {limit} bytes")));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok());
    if declared.is_some_and(|length: usize| length > limit) {
        return too_large();
    }
    let _turn = match limit > limits.put {
        true => Some(limits.batches.acquire().await.expect("the semaphore is never closed")),
        false => None,
    };
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(err)) if is_length_limit(&err) => too_large(),
        Ok(Err(err)) => closing(failure(StatusCode::BAD_REQUEST, format!("the body could not be read: {err}"))),
        Err(_) => closing(failure(StatusCode::REQUEST_TIMEOUT, "the body was not sent in time")),
    }
}

/// Whether reading a body failed on its size limit.
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
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
        DataError::Closed | DataError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DataError::Unacknowledged(_) => StatusCode::GATEWAY_TIMEOUT,
    };
    failure(status, err.to_string())
}

/// Applies `changes` (through the cluster, on a node of one) and answers with the revision.
async fn apply(state: &Publish, changes: Vec<Change>) -> Response {
    if changes.len() > state.store.limits().max_batch_keys {
        let err = DataError::BatchTooLarge { count: changes.len(), limit: state.store.limits().max_batch_keys };
        return refused(&err);
    }
    let applied = match &state.cluster {
        Some(cluster) => cluster.publish(changes).await,
        None => state.store.apply(changes).await,
    };
    match applied {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_with_the_listeners_port_are_this_listeners_host() {
        for host in ["localhost:9505", "127.0.0.1:9505", "127.0.0.1", "[::1]:9505", "LOCALHOST", "[::1]"] {
            assert!(names_loopback(host, 9505), "{host}");
        }
        for host in ["evil.example:9505", "127.0.0.1:80", "", "10.0.0.1:9505", "localhost.evil.example", "[::2]:9505"] {
            assert!(!names_loopback(host, 9505), "{host}");
        }
    }
}
