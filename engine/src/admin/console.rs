//! The operator console on the admin endpoint: `GET /console` (one page, no file from outside
//! the binary), its chart library (uPlot 1.6.32, MIT licence, vendored in
//! `assets/vendor/uplot`), and `GET /console/stream`, a server-sent event stream: an `opening`
//! event (ten minutes of history, the latest figures, the latest log lines), then an `update`
//! every second. Behind the admin token like every admin route but `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::AdminState;

/// The page.
const PAGE: &str = include_str!("../assets/console.html");

/// uPlot's script and style sheet.
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

/// The console's routes.
pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", PAGE, "no-cache") }))
        .route("/console/uplot.js", get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS, VENDORED) }))
        .route("/console/uplot.css", get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS, VENDORED) }))
        .route("/console/stream", get(|State(state): State<AdminState>| async move { stream(&state) }))
}

/// How long a browser may keep a vendored file: it changes only with the engine.
const VENDORED: &str = "max-age=3600";

fn asset(content_type: &'static str, body: &'static str, cache: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, cache)], body)
}

/// The event stream of one open console, until the engine stops or the console closes.
fn stream(state: &AdminState) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let (opening, updates, stop) = state.console.open();
    let first = Event::default().event("opening").data(opening);
    let rest = futures_util::stream::unfold(updates, move |mut updates| {
        let stop = stop.clone();
        async move {
            loop {
                let received = tokio::select! {
                    received = updates.recv() => received,
                    () = stop.cancelled() => return None,
                };
                match received {
                    Ok(json) => return Some((Ok(update(&json)), updates)),
                    // Behind: the next update is whole, the skipped ones only missed.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let events = futures_util::StreamExt::chain(futures_util::stream::once(async move { Ok(first) }), rest);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn update(json: &Arc<str>) -> Event {
    Event::default().event("update").data(&**json)
}
