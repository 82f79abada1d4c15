//! `/v1/watch/pools` and `/v1/watch/audit`: the handlespace's changes and the audit log's
//! new records as Server-Sent Events (issue 22).
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
//! `/v1/watch/audit` sends the records matching the filters of `GET /v1/audit` as they are
//! committed (event `audit`, data as a record of `GET /v1/audit`, `id` the record's id):
//! it reads the store every [`AUDIT_POLL`] for records after the last one sent (ids are
//! committed in order: one writer at a time on either backend, docs/STORE.md), so it
//! sees every registrar's records in a shared store, and `Last-Event-ID` resumes after
//! that record. Without one it starts with a `head` event (the id of the newest record).
//!
//! Limits: a comment every [`KEEP_ALIVE`] keeps proxies from closing an idle stream; every
//! [`auth::RECHECK`] a stream checks that its caller still may watch (a revoked or
//! expired token, or a certificate whose admin grant was withdrawn, gets an `error` event
//! and the stream ends, audited; a revoked certificate's connection is closed at once by
//! the TLS layer); a stream ends after [`MAX_STREAM`] anyway, so that its caller is
//! authenticated again on reconnecting. EventSource and `rsp watch` reconnect with
//! `Last-Event-ID` and miss nothing.

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

use std::sync::atomic::{AtomicUsize, Ordering};

use store::audit::{AuditFilter, Order};

use crate::auth::{self, Authorized, Caller, Permission, ReadAll, ReadOps};
use crate::changes::{Numbered, PoolChanges, Start};
use crate::extract::ApiQuery;
use crate::problem::{ApiError, ProblemKind};
use crate::routes::audit::{AuditEventView, AuditQuery};
use crate::routes::pools::{Pool, pools_of};
use crate::routes::{handle_text, parse_handle, require_namespace};
use crate::schema::{
    AuditActionName, AuditActor, AuditOutcome, AuditRegistrar, NamespaceName, PoolHandleText,
};
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

/// How often an audit stream reads the store for new records: a record reaches its
/// watchers within this long of its commit.
pub(crate) const AUDIT_POLL: Duration = auth::RECHECK;

/// Audit streams open at once; more are refused (503). Each reads the store every
/// [`AUDIT_POLL`]: 64 is 64 small indexed reads a second at most, for the few auditors
/// who tail the log.
pub(crate) const MAX_AUDIT_WATCHERS: usize = 64;

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
    Authorized(caller, _): Authorized<ReadOps>,
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
        access: Access::new(caller, "GET /v1/watch/pools"),
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
    access: Access<ReadOps>,
}

/// A stream's caller, checked again every [`auth::RECHECK`] ([`Caller::recheck`]).
struct Access<P> {
    caller: Caller,
    request: &'static str,
    recheck: tokio::time::Interval,
    /// Refused: the `error` event is queued and the stream ends after it.
    refused: bool,
    _permission: std::marker::PhantomData<P>,
}

impl<P: Permission> Access<P> {
    fn new(caller: Caller, request: &'static str) -> Self {
        let first = tokio::time::Instant::now() + auth::RECHECK;
        let mut recheck = tokio::time::interval_at(first, auth::RECHECK);
        // A stream its client stopped reading is not polled: when it is again, one check,
        // not one per second missed.
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            caller,
            request,
            recheck,
            refused: false,
            _permission: std::marker::PhantomData,
        }
    }

    /// Checks the caller again; on a refusal queues the `error` event that ends the
    /// stream (boxed where it is awaited: an idle stream holds the future).
    async fn check(&mut self, app: &App, queue: &mut VecDeque<Event>) {
        if let Err(err) = self.caller.recheck::<P>(app, self.request).await {
            self.refused = true;
            queue.push_back(
                Event::default()
                    .event("error")
                    .json_data(err.problem())
                    .unwrap_or_default(),
            );
        }
    }
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
            if self.access.refused {
                // Only the refusal is sent, nothing queued before it.
                return self.queue.pop_back().map(|e| {
                    self.queue.clear();
                    (Ok(e), self)
                });
            }
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            tokio::select! {
                _ = self.access.recheck.tick() => {
                    Box::pin(self.access.check(&self.app, &mut self.queue)).await;
                }
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

/// The filters of `GET /v1/audit`, without its paging.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WatchAudit {
    /// Records at or after this time, unix ms.
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    since_ms: Option<u64>,
    /// Records before this time, unix ms.
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    until_ms: Option<u64>,
    /// Records of this actor: a SPIFFE ID, or `token:<id>` for a token's calls.
    #[param(value_type = Option<AuditActor>)]
    identity: Option<String>,
    /// Records in this namespace.
    #[param(value_type = Option<NamespaceName>)]
    namespace: Option<String>,
    /// Records about this pool handle (text, or `hex:` and hex digits).
    #[param(value_type = Option<PoolHandleText>)]
    pool: Option<String>,
    /// Records of this action (`register`, `admin:grant.create`, ...).
    #[param(value_type = Option<AuditActionName>)]
    action: Option<String>,
    /// Records with this outcome (`ok`, `cause:0x000a`, `forbidden`, ...).
    #[param(value_type = Option<AuditOutcome>)]
    outcome: Option<String>,
    /// Records appended by this registrar (its chain): its SPIFFE ID, or `local`.
    #[param(value_type = Option<AuditRegistrar>)]
    registrar: Option<String>,
}

/// Watches the audit log as Server-Sent Events: `head` (data: `{"id": N}`, the newest
/// record's id; not sent when resuming), then `audit` for each record matching the
/// filters as it is committed (data: a record as `GET /v1/audit` shows it; `id`: its id).
/// `Last-Event-ID`: the records after that id. Comments every 15 s; the stream ends after
/// 10 minutes (reconnect with `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/watch/audit", tag = "watch",
    params(
        WatchAudit,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last record received: resume after it"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A malformed query or Last-Event-ID"),
        (status = 422, description = "A filter value is invalid"),
        (status = 503, description = "The most audit streams this registrar serves are open"),
    ))]
pub(crate) async fn audit(
    State(app): State<Arc<App>>,
    Authorized(caller, _): Authorized<ReadAll>,
    ApiQuery(query): ApiQuery<WatchAudit>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = last_event_id(&headers)?;
    let mut filter = AuditQuery {
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        identity: query.identity,
        namespace: query.namespace,
        pool: query.pool,
        action: query.action,
        outcome: query.outcome,
        registrar: query.registrar,
        ..AuditQuery::default()
    }
    .filter(&app)?;
    filter.order = Order::OldestFirst;
    filter.limit = store::audit::MAX_PAGE;
    let slot = AuditSlot::take(&app.audit_watchers).ok_or_else(|| {
        ApiError::new(
            ProblemKind::Unavailable,
            format!("{MAX_AUDIT_WATCHERS} audit streams are open: the most this registrar serves"),
        )
    })?;
    let mut queue = VecDeque::new();
    let last = match after {
        Some(id) => id,
        None => {
            let mut newest = AuditFilter::default();
            newest.limit = 1;
            let mut conn = app.store().acquire().await?;
            let head = store::audit::query(&mut conn, &newest)
                .await?
                .events
                .first()
                .map_or(0, |e| e.id);
            queue.push_back(
                Event::default()
                    .event("head")
                    .id(head.to_string())
                    .json_data(serde_json::json!({ "id": head }))
                    .unwrap_or_default(),
            );
            head
        }
    };
    let now = tokio::time::Instant::now();
    let tail = AuditTail {
        app,
        filter,
        last,
        queue,
        poll: tokio::time::interval_at(now, AUDIT_POLL),
        quiet_since: now,
        ends: now + MAX_STREAM,
        access: Access::new(caller, "GET /v1/watch/audit"),
        _slot: slot,
    };
    Ok(Sse::new(futures_util::stream::unfold(
        tail,
        AuditTail::next,
    )))
}

/// A place among the [`MAX_AUDIT_WATCHERS`], given back when the stream ends.
struct AuditSlot(Arc<AtomicUsize>);

impl AuditSlot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_AUDIT_WATCHERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(count)))
    }
}

impl Drop for AuditSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One audit stream's state.
struct AuditTail {
    app: Arc<App>,
    filter: AuditFilter,
    /// The id of the last record sent (or the head it started at).
    last: u64,
    queue: VecDeque<Event>,
    poll: tokio::time::Interval,
    /// When the stream last sent something (for the keep-alive comments).
    quiet_since: tokio::time::Instant,
    ends: tokio::time::Instant,
    /// Checked at each poll ([`AUDIT_POLL`] is [`auth::RECHECK`]).
    access: Access<ReadAll>,
    _slot: AuditSlot,
}

impl AuditTail {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.access.refused {
                // Only the refusal is sent, nothing queued before it.
                return self.queue.pop_back().map(|e| {
                    self.queue.clear();
                    (Ok(e), self)
                });
            }
            if let Some(event) = self.queue.pop_front() {
                self.quiet_since = tokio::time::Instant::now();
                return Some((Ok(event), self));
            }
            self.poll.tick().await;
            let now = tokio::time::Instant::now();
            if now >= self.ends {
                return None;
            }
            Box::pin(self.access.check(&self.app, &mut self.queue)).await;
            if self.access.refused {
                continue;
            }
            // Boxed: an idle stream holds this future, which would otherwise be as large
            // as the store query's.
            Box::pin(self.read()).await;
            if self.queue.is_empty() && now.duration_since(self.quiet_since) >= KEEP_ALIVE {
                self.quiet_since = now;
                return Some((Ok(Event::default().comment("")), self));
            }
        }
    }

    /// Queues the records committed after the last one sent (a page at most; the next
    /// poll takes the rest), and moves past the records that do not match, so that the
    /// next poll does not read them again.
    async fn read(&mut self) {
        self.filter.cursor = Some(self.last);
        let read = async {
            let mut conn = self.app.store().acquire().await?;
            // The newest record first: every record up to it is committed (one writer at a
            // time), so when the page below is not full nothing up to it is left to send.
            let mut newest = AuditFilter::default();
            newest.limit = 1;
            let head = store::audit::query(&mut conn, &newest)
                .await?
                .events
                .first()
                .map_or(0, |e| e.id);
            let page = store::audit::query(&mut conn, &self.filter).await?;
            Ok::<_, store::db::Error>((head, page))
        };
        match read.await {
            Ok((head, page)) => {
                let complete = page.next.is_none();
                for record in page.events {
                    self.last = record.id;
                    let view = AuditEventView::from(record);
                    self.queue.push_back(
                        Event::default()
                            .event("audit")
                            .id(self.last.to_string())
                            .json_data(&view)
                            .unwrap_or_default(),
                    );
                }
                if complete {
                    self.last = self.last.max(head);
                }
            }
            // The store does not answer: try again at the next poll.
            Err(e) => tracing::debug!(error = %e, "audit watch: the store did not answer"),
        }
    }
}
