//! `/v1/watch/pools`: the handlespace's changes as Server-Sent Events (issue 22).
//!
//! A stream starts with a `snapshot` (the pools as `GET /v1/namespaces/{namespace}/pools`
//! answers them, filtered to `pool` when given), then sends one event per PE `added`,
//! `updated` or `removed` (data: [`PoolChange`]), each with the registrar's change number
//! as its `id`. A client that reconnects with `Last-Event-ID` gets every change after it
//! while the registrar still holds it ([`crate::changes::HISTORY`]); otherwise, and when
//! it fell behind the live channel ([`crate::changes::CHANNEL`]), a `reset` event and a
//! fresh `snapshot`. Changes are full upserts and removals, so applying one already in
//! the snapshot changes nothing.
//!
//! Limits: a comment every [`KEEP_ALIVE`] keeps proxies from closing an idle stream; a
//! stream ends after [`MAX_STREAM`] so that its caller is authenticated again on
//! reconnecting (a revoked token or certificate stops watching within that time);
//! EventSource and `rsp watch` reconnect with `Last-Event-ID` and miss nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::auth::{Authorized, ReadOps};
use crate::changes::{Numbered, PoolChanges, Start};
use crate::extract::ApiQuery;
use crate::problem::{ApiError, ProblemKind};
use crate::routes::pools::{Pool, pools_of};
use crate::routes::{handle_text, parse_handle, require_namespace};
use crate::schema::{NamespaceName, PoolHandleText};
use crate::state::App;

/// How often an idle stream sends a comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The longest a stream lasts before the client must reconnect (and authenticate again).
pub(crate) const MAX_STREAM: Duration = Duration::from_secs(600);

/// Streams open at once; more are refused (503). The connection limits
/// (`ServeOptions`: 256 connections, 32 per address, 32 HTTP/2 streams each) allow 8192;
/// this keeps watchers to a share that leaves room for the other requests, at about
/// 1 KiB of the registrar's memory each (docs/BENCHMARKS.md).
pub(crate) const MAX_WATCHERS: usize = 4096;

/// Which pools to watch.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WatchPools {
    /// The namespace.
    #[param(value_type = NamespaceName)]
    namespace: String,
    /// Only this pool (text, or `hex:` and hex digits); left out: every pool of the
    /// namespace.
    #[param(value_type = Option<PoolHandleText>)]
    pool: Option<String>,
}

/// Watches the PEs of a namespace (or one pool) as Server-Sent Events: `snapshot` (data:
/// the pools, as `GET /v1/namespaces/{namespace}/pools`), then `added`, `updated` and
/// `removed` (data: a `PoolChange`), each with an `id`; `reset` (then a new `snapshot`)
/// when the changes since the client's `Last-Event-ID` are no longer held. Comments every
/// 15 s; the stream ends after 10 minutes (reconnect with `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/watch/pools", tag = "watch",
    params(
        WatchPools,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: resume after it"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed query or Last-Event-ID"),
        (status = 404, description = "No such namespace"),
        (status = 422, description = "Invalid pool handle"),
        (status = 503, description = "This registrar publishes no changes, or serves the most watch streams it takes"),
    ))]
pub(crate) async fn pools(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
    ApiQuery(query): ApiQuery<WatchPools>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = last_event_id(&headers)?;
    let pool = match &query.pool {
        None => None,
        Some(text) => Some(parse_handle(text).map(|h| handle_text(&h)).ok_or_else(|| {
            ApiError::new(
                ProblemKind::Invalid,
                format!(
                    "pool {text:?}: a pool handle is 1 to 32 bytes: text, or `hex:` and hex digits"
                ),
            )
        })?),
    };
    {
        let mut conn = app.store().acquire().await?;
        require_namespace(&mut conn, &query.namespace).await?;
    }
    let feed = app.registrar().changes().ok_or_else(|| {
        ApiError::new(
            ProblemKind::Unavailable,
            "this registrar publishes no handlespace changes",
        )
    })?;
    if feed.watchers() >= MAX_WATCHERS {
        return Err(ApiError::new(
            ProblemKind::Unavailable,
            format!("{MAX_WATCHERS} watch streams are open: the most this registrar serves"),
        ));
    }
    let (rx, start, last) = feed.subscribe(after);
    let mut watch = Watch {
        app,
        feed,
        namespace: query.namespace,
        pool,
        rx,
        queue: VecDeque::new(),
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE),
        ends: tokio::time::Instant::now() + MAX_STREAM,
    };
    match start {
        Start::Fresh => watch.snapshot(last).await,
        Start::Reset => {
            watch.queue.push_back(reset(&format!(
                "the changes after {} are no longer held here",
                after.unwrap_or_default()
            )));
            watch.snapshot(last).await;
        }
        Start::Replay(events) => {
            for event in events {
                watch.push(&event);
            }
        }
    }
    Ok(Sse::new(futures_util::stream::unfold(watch, Watch::next)))
}

/// The `Last-Event-ID` header: an id this API gave out is a number.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ProblemKind::BadRequest,
                "Last-Event-ID: not an event id of this API (a number)",
            )
        })
}

fn reset(why: &str) -> Event {
    Event::default()
        .event("reset")
        .json_data(serde_json::json!({ "reason": why }))
        .unwrap_or_default()
}

/// One stream's state.
struct Watch {
    app: Arc<App>,
    feed: PoolChanges,
    namespace: String,
    /// The pool handle, as the API writes it.
    pool: Option<String>,
    rx: broadcast::Receiver<Arc<Numbered>>,
    /// Events ready to send (a snapshot, a replay).
    queue: VecDeque<Event>,
    keep_alive: tokio::time::Interval,
    ends: tokio::time::Instant,
}

impl Watch {
    /// Queues the pools as they are now, with `id` (the last change they reflect at
    /// most; changes after it come on the receiver).
    async fn snapshot(&mut self, id: u64) {
        let event = match pools_of(&self.app, &self.namespace).await {
            Ok(mut pools) => {
                if let Some(handle) = &self.pool {
                    pools.retain(|p: &Pool| &p.handle == handle);
                }
                Event::default()
                    .event("snapshot")
                    .id(id.to_string())
                    .json_data(&pools)
                    .unwrap_or_default()
            }
            // The namespace was deleted, or the store does not answer: say so; the
            // client reconnects (and hears 404 or 503).
            Err(e) => Event::default()
                .event("error")
                .json_data(e.problem())
                .unwrap_or_default(),
        };
        self.queue.push_back(event);
    }

    fn push(&mut self, event: &Numbered) {
        let change = &event.change;
        if change.namespace != self.namespace
            || self.pool.as_ref().is_some_and(|p| *p != change.pool)
        {
            return;
        }
        let name = match change.change {
            crate::ChangeKind::Added => "added",
            crate::ChangeKind::Updated => "updated",
            crate::ChangeKind::Removed => "removed",
        };
        self.queue.push_back(
            Event::default()
                .event(name)
                .id(event.id.to_string())
                .json_data(change)
                .unwrap_or_default(),
        );
    }

    /// The next event to send; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(event) => self.push(&event),
                    Err(RecvError::Lagged(missed)) => {
                        // Too far behind to be buffered for: start again.
                        let (rx, _, last) = self.feed.subscribe(None);
                        self.rx = rx;
                        self.queue.push_back(reset(&format!(
                            "{missed} changes were not read in time"
                        )));
                        // Boxed: an idle stream holds this future, which would otherwise
                        // be as large as the snapshot's store queries (a watcher's memory,
                        // docs/BENCHMARKS.md).
                        Box::pin(self.snapshot(last)).await;
                    }
                    // The registrar stopped.
                    Err(RecvError::Closed) => return None,
                },
                _ = self.keep_alive.tick() => {
                    if tokio::time::Instant::now() >= self.ends {
                        return None;
                    }
                    return Some((Ok(Event::default().comment("")), self));
                }
            }
        }
    }
}
