//! `/v1/audit`: the hash-chained audit log, filtered and paged by cursor, and the check of
//! its chain.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::State;
use identity::{Namespace, PoolHandle, SpiffeId};
use serde::{Deserialize, Serialize};
use store::audit::{self, AuditFilter, ChainedRecord, Order, Outcome};
use utoipa::ToSchema;

use crate::auth::{Authorized, ReadAll, TOKEN_ACTOR_SEGMENT};
use crate::extract::ApiQuery;
use crate::problem::{ApiError, ProblemKind};
use crate::routes::{handle_text, parse_handle};
use crate::schema::{AuditActor, AuditOutcome, NamespaceName, PoolHandleText};
use crate::state::App;

/// Page direction.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OrderName {
    /// Newest first (the default).
    #[default]
    Newest,
    /// Oldest first.
    Oldest,
}

/// Filters and paging of the audit log; every filter left out matches everything.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
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
    action: Option<String>,
    /// Records with this outcome (`ok`, `cause:0x000a`, `forbidden`, ...).
    #[param(value_type = Option<AuditOutcome>)]
    outcome: Option<String>,
    /// Page direction: `newest` (default) or `oldest` first.
    #[param(inline)]
    order: Option<OrderName>,
    /// The `next_cursor` of the previous page (with the same filters and order).
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    cursor: Option<u64>,
    /// Records per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEventView {
    /// Its position in the chain, from 1.
    id: u64,
    /// When, unix ms.
    time_ms: u64,
    /// Who: a SPIFFE ID (`spiffe://<local domain>/token/<id>` for a token), or `null`.
    actor: Option<String>,
    /// The serial of the certificate that authenticated the actor.
    serial: Option<String>,
    /// The remote address.
    remote: Option<String>,
    /// The namespace.
    namespace: Option<String>,
    /// The pool handle (text, or `hex:` and hex digits).
    pool: Option<String>,
    /// The PE ID (`0x1a2b3c4d`).
    pe_id: Option<String>,
    /// What was attempted.
    action: String,
    /// How it ended: `ok`, `cause:0x....`, or a refusal reason.
    outcome: String,
    /// Free text.
    detail: Option<String>,
    /// The previous record's hash, hex.
    prev_hash: String,
    /// This record's hash, hex.
    hash: String,
}

impl From<ChainedRecord> for AuditEventView {
    fn from(e: ChainedRecord) -> Self {
        let r = e.record;
        // A stored subject this version's types refuse is shown as stored.
        let unparsed = e.unparsed;
        let pool = r.pool.map(|p| p.as_bytes().to_vec()).or(unparsed.pool);
        Self {
            id: e.id,
            time_ms: r.time_ms,
            actor: r.actor.map(|a| a.to_string()),
            serial: r.serial.map(|s| s.to_hex()),
            remote: r.remote.map(|a| a.to_string()),
            namespace: r.namespace.map(|n| n.to_string()).or(unparsed.namespace),
            pool: pool.as_deref().map(handle_text),
            pe_id: r
                .pe_id
                .map(|id| i64::from(id.get()))
                .or(unparsed.pe_id)
                .map(|id| format!("{id:#010x}")),
            action: r.action.into_owned(),
            outcome: r.outcome.to_string(),
            detail: r.detail,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

/// A page of audit records.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPageView {
    /// The records, in the requested order.
    events: Vec<AuditEventView>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<u64>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::Invalid, detail)
}

impl AuditQuery {
    fn filter(self, app: &App) -> Result<AuditFilter, ApiError> {
        let actor = match self.identity.as_deref() {
            None => None,
            Some(text) => Some(match text.strip_prefix("token:") {
                Some(id) => SpiffeId::from_segments(&app.local_domain, [TOKEN_ACTOR_SEGMENT, id])
                    .map_err(|_| invalid("`token:` is followed by a token id"))?,
                None => SpiffeId::parse(text)?,
            }),
        };
        // A filter value that cannot be stored is an error, not an empty page.
        let namespace = self
            .namespace
            .as_deref()
            .map(Namespace::parse)
            .transpose()?;
        let pool = self
            .pool
            .as_deref()
            .map(|p| {
                parse_handle(p).and_then(PoolHandle::new).ok_or_else(|| {
                    invalid("a pool handle is 1 to 32 bytes: text, or `hex:` and hex digits")
                })
            })
            .transpose()?;
        let outcome = self.outcome.as_deref().map(Outcome::from_str).transpose()?;
        let limit = match self.limit {
            None => 0,
            Some(n @ 1..=audit::MAX_PAGE) => n,
            Some(_) => return Err(invalid("limit is 1 to 1000")),
        };
        let mut filter = AuditFilter::default();
        filter.since_ms = self.since_ms;
        filter.until_ms = self.until_ms;
        filter.actor = actor;
        filter.namespace = namespace;
        filter.pool = pool;
        filter.action = self.action;
        filter.outcome = outcome;
        filter.order = match self.order.unwrap_or_default() {
            OrderName::Newest => Order::NewestFirst,
            OrderName::Oldest => Order::OldestFirst,
        };
        filter.cursor = self.cursor;
        filter.limit = limit;
        Ok(filter)
    }
}

/// Reads the audit log, one page at a time.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "One page of records", body = AuditPageView),
        (status = 422, description = "A filter value is invalid"),
    ))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<axum::Json<AuditPageView>, ApiError> {
    let filter = query.filter(&app)?;
    let mut conn = app.store().acquire().await?;
    let page = audit::query(&mut conn, &filter).await?;
    Ok(axum::Json(AuditPageView {
        events: page.events.into_iter().map(Into::into).collect(),
        next_cursor: page.next,
    }))
}

/// The first broken link of the chain.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BrokenLinkView {
    /// The first record that fails.
    id: i64,
    /// Why.
    reason: String,
}

/// What the check of the chain found.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerifyView {
    /// Whether the whole chain is intact.
    intact: bool,
    /// Records checked.
    checked: u64,
    /// The id of the last intact record (0 if none).
    last_id: u64,
    /// The hash of the last intact record, hex: keep it elsewhere to detect truncation.
    head: String,
    /// The first broken link, `null` when intact.
    broken: Option<BrokenLinkView>,
    /// The last record moved into an archive (`/v1/audit/archives`; 0: none): the chain
    /// is checked from the record after it, which must chain from its hash.
    archived_through: u64,
}

/// Checks the audit log's hash chain from the first record to the last.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "The result (also when the chain is broken)", body = VerifyView)))]
pub(crate) async fn verify(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<VerifyView>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let report = audit::verify(&mut conn).await?;
    Ok(axum::Json(VerifyView {
        intact: report.is_intact(),
        checked: report.checked,
        last_id: report.last_id,
        head: report.head_hex(),
        broken: report.broken.map(|b| BrokenLinkView {
            id: b.id,
            reason: b.reason.to_string(),
        }),
        archived_through: report.anchor.map_or(0, |a| a.last_id),
    }))
}
