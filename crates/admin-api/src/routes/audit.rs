//! `/v1/audit`: the hash-chained audit log, filtered and paged by cursor, and the check of
//! its chain.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::State;
use identity::{Namespace, PoolHandle, SpiffeId};
use serde::{Deserialize, Serialize};
use store::audit::{self, AuditFilter, Chain, ChainedRecord, Order, Outcome, VerifyReport};
use utoipa::ToSchema;

use crate::auth::{Authorized, ReadAll, TOKEN_ACTOR_SEGMENT};
use crate::extract::ApiQuery;
use crate::problem::{ApiError, ProblemKind};
use crate::routes::{handle_text, parse_handle};
use crate::schema::{
    AuditActionName, AuditActor, AuditOutcome, AuditRegistrar, NamespaceName, PoolHandleText,
};
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
    pub(crate) since_ms: Option<u64>,
    /// Records before this time, unix ms.
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub(crate) until_ms: Option<u64>,
    /// Records of this actor: a SPIFFE ID, or `token:<id>` for a token's calls.
    #[param(value_type = Option<AuditActor>)]
    pub(crate) identity: Option<String>,
    /// Records in this namespace.
    #[param(value_type = Option<NamespaceName>)]
    pub(crate) namespace: Option<String>,
    /// Records about this pool handle (text, or `hex:` and hex digits).
    #[param(value_type = Option<PoolHandleText>)]
    pub(crate) pool: Option<String>,
    /// Records of this action (`register`, `admin:grant.create`, ...).
    #[param(value_type = Option<AuditActionName>)]
    pub(crate) action: Option<String>,
    /// Records with this outcome (`ok`, `cause:0x000a`, `forbidden`, ...).
    #[param(value_type = Option<AuditOutcome>)]
    pub(crate) outcome: Option<String>,
    /// Records appended by this registrar (its chain): its SPIFFE ID, or `local` for the
    /// local chain of a store of one registrar. Left out: the whole store (the fleet).
    #[param(value_type = Option<AuditRegistrar>)]
    pub(crate) registrar: Option<String>,
    /// Page direction: `newest` (default) or `oldest` first.
    #[param(inline)]
    pub(crate) order: Option<OrderName>,
    /// The `next_cursor` of the previous page (with the same filters and order).
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    pub(crate) cursor: Option<u64>,
    /// Records per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEventView {
    /// Its id: ids grow over the whole store (every registrar's chain), from 1.
    pub(crate) id: u64,
    /// The registrar that appended it (its chain), or `null` for the local chain of a
    /// store of one registrar.
    registrar: Option<String>,
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
            registrar: e.chain.registrar().map(ToString::to_string),
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
    pub(crate) fn filter(self, app: &App) -> Result<AuditFilter, ApiError> {
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
        if let Some(action) = &self.action
            && !audit::is_action_name(action)
        {
            return Err(invalid("an action is 1 to 64 bytes of a-z 0-9 . _ : -"));
        }
        let outcome = self.outcome.as_deref().map(Outcome::from_str).transpose()?;
        let chain = self.registrar.as_deref().map(Chain::from_str).transpose()?;
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
        filter.chain = chain;
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

/// What the check of one chain found.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChainView {
    /// The registrar whose chain this is, or `null` for the local chain of a store of
    /// one registrar.
    registrar: Option<String>,
    /// Whether the chain is intact.
    intact: bool,
    /// Records checked.
    checked: u64,
    /// The id of the last intact record (0 if none).
    last_id: u64,
    /// The hash of the last intact record, hex.
    head: String,
    /// The first broken link, `null` when intact.
    broken: Option<BrokenLinkView>,
    /// The last record of this chain moved into an archive (0: none).
    archived_through: u64,
}

impl From<&VerifyReport> for ChainView {
    fn from(r: &VerifyReport) -> Self {
        Self {
            registrar: r.chain.registrar().map(ToString::to_string),
            intact: r.is_intact(),
            checked: r.checked,
            last_id: r.last_id,
            head: r.head_hex(),
            broken: r.broken.map(|b| BrokenLinkView {
                id: b.id,
                reason: b.reason.to_string(),
            }),
            archived_through: r.anchor.as_ref().map_or(0, |a| a.last_id),
        }
    }
}

/// What the check of the audit log found: every chain of the store (one per registrar
/// that appended to it). `last_id`, `head` and `archived_through` are those of this
/// registrar's own chain (what a checkpoint records); `intact`, `checked` and `broken`
/// cover every chain.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VerifyView {
    /// Whether every chain is intact.
    intact: bool,
    /// Records checked, in every chain.
    checked: u64,
    /// The id of the last intact record of this registrar's chain (0 if none).
    last_id: u64,
    /// The hash of the last intact record of this registrar's chain, hex: keep it
    /// elsewhere to detect truncation.
    head: String,
    /// The first broken link: this registrar's chain's, else the first broken chain's;
    /// `null` when every chain is intact.
    broken: Option<BrokenLinkView>,
    /// The last record of this registrar's chain moved into an archive
    /// (`/v1/audit/archives`; 0: none): the chain is checked from the record after it,
    /// which must chain from its hash.
    archived_through: u64,
    /// Every chain, the local one first, then by registrar.
    chains: Vec<ChainView>,
}

/// Checks every hash chain of the audit log from its first record (or its latest
/// archive's anchor) to its last.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "The result (also when a chain is broken)", body = VerifyView)))]
pub(crate) async fn verify(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<VerifyView>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let reports = audit::verify(&mut conn).await?;
    let own = reports
        .iter()
        .find(|r| r.chain == *app.audit_chain())
        .cloned()
        .unwrap_or_else(|| VerifyReport::empty(app.audit_chain().clone()));
    let own = ChainView::from(&own);
    let chains: Vec<ChainView> = reports.iter().map(ChainView::from).collect();
    let broken = own
        .broken
        .as_ref()
        .or_else(|| chains.iter().find_map(|c| c.broken.as_ref()));
    Ok(axum::Json(VerifyView {
        intact: chains.iter().all(|c| c.intact),
        checked: chains.iter().map(|c| c.checked).sum(),
        broken: broken.map(|b| BrokenLinkView {
            id: b.id,
            reason: b.reason.clone(),
        }),
        last_id: own.last_id,
        head: own.head,
        archived_through: own.archived_through,
        chains,
    }))
}
