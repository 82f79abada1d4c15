//! `/v1/grants`: who may do what, in which namespace, on which pools (ARCHITECTURE.md §3).
//! After every change the registrar gets the whole list, and removes the registrations a
//! removed grant allowed.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use identity::audit::AuditAction;
use identity::{Action, Grant, IdentityPattern, LabelRules, NamespacePattern, PoolPattern};
use serde::{Deserialize, Serialize};
use store::db::{self, GrantRow};
use utoipa::ToSchema;

use crate::auth::{AdminOnly, Authorized, ReadAll};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ProblemKind};
use crate::routes::handle_text;
use crate::schema::{IdentityPatternText, LabelRuleText, NamespacePatternText, PoolPatternText};
use crate::state::App;

/// An action a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) enum GrantAction {
    /// Register, re-register and deregister PEs (ASAP).
    #[serde(rename = "register")]
    Register,
    /// Resolve pool handles (ASAP).
    #[serde(rename = "resolve")]
    Resolve,
    /// Report PEs unreachable (ASAP).
    #[serde(rename = "report")]
    Report,
    /// Peer as a registrar (ENRP).
    #[serde(rename = "peer")]
    Peer,
    /// Read through the admin API (with a client certificate).
    #[serde(rename = "admin:read")]
    AdminRead,
    /// Change state through the admin API (with a client certificate).
    #[serde(rename = "admin:write")]
    AdminWrite,
}

impl GrantAction {
    fn to_action(self) -> Action {
        match self {
            Self::Register => Action::Register,
            Self::Resolve => Action::Resolve,
            Self::Report => Action::Report,
            Self::Peer => Action::Peer,
            Self::AdminRead => Action::AdminRead,
            Self::AdminWrite => Action::AdminWrite,
        }
    }

    fn from_action(action: Action) -> Option<Self> {
        Action::ALL
            .iter()
            .position(|a| *a == action)
            .map(|i| Self::ALL[i])
    }

    /// In [`Action::ALL`] order.
    const ALL: [Self; 6] = [
        Self::Register,
        Self::Resolve,
        Self::Report,
        Self::Peer,
        Self::AdminRead,
        Self::AdminWrite,
    ];
}

/// A grant to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGrant {
    /// A SPIFFE ID or pattern: `*` matches within one path segment, a last segment `**`
    /// matches one or more segments; the trust domain is literal.
    #[schema(value_type = IdentityPatternText)]
    identity: String,
    /// A namespace name, or `*` for every namespace.
    #[schema(value_type = NamespacePatternText)]
    namespace: String,
    /// A pool handle pattern (`*` matches any run of bytes), 1 to 256 bytes.
    #[schema(value_type = PoolPatternText)]
    pools: String,
    /// What it allows (at least one).
    #[schema(min_items = 1)]
    actions: Vec<GrantAction>,
    /// Which PE labels a registration under this grant may carry: `key=pattern` rules,
    /// the key literal and `*` in the pattern matching any run of characters (e.g.
    /// `region=eu-west`, `zone=eu-west-*`). A label is allowed when a rule has its key and
    /// matches its value. Absent or null: any labels; `[]`: none. At most 32 rules; keys
    /// 1 to 32 characters of `A-Z a-z 0-9 . _ - /`, patterns at most 64 printable ASCII
    /// characters. Grants add up: one register grant that allows every label of a
    /// registration is enough. Rules restrict registrations only: on a grant without
    /// `register` they change nothing.
    #[serde(default)]
    // `uniqueItems` is added by `openapi::finish` (utoipa has no attribute for it).
    #[schema(value_type = Option<Vec<LabelRuleText>>, max_items = 32)]
    labels: Option<Vec<String>>,
}

/// A stored grant.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantView {
    /// Its id.
    id: i64,
    /// The identity pattern.
    identity: String,
    /// The namespace, or `*`.
    namespace: String,
    /// The pool handle pattern (text, or `hex:` and hex digits).
    pools: String,
    /// What it allows.
    actions: Vec<GrantAction>,
    /// The label rules of a register grant (`key=pattern`); null: any labels.
    labels: Option<Vec<String>>,
    /// When it was created, unix ms.
    created_ms: u64,
}

impl From<GrantRow> for GrantView {
    fn from(row: GrantRow) -> Self {
        Self {
            id: row.id,
            identity: row.grant.identity.to_string(),
            namespace: row.grant.namespace.to_string(),
            pools: handle_text(row.grant.pools.as_bytes()),
            actions: row
                .grant
                .actions
                .iter()
                .filter_map(GrantAction::from_action)
                .collect(),
            labels: row
                .grant
                .labels
                .map(|rules| rules.iter().map(ToString::to_string).collect()),
            created_ms: row.created_ms,
        }
    }
}

impl NewGrant {
    fn parse(&self) -> Result<Grant, ApiError> {
        if self.actions.is_empty() {
            return Err(ApiError::new(
                ProblemKind::Invalid,
                "a grant needs an action",
            ));
        }
        // A pattern is text an operator reads back: control and invisible characters
        // would hide what it matches (as in pool handles, routes/mod.rs). `*` matches
        // pool handles that hold such bytes.
        if self
            .pools
            .chars()
            .any(|c| c.is_control() || identity::text::is_invisible(c))
        {
            return Err(ApiError::new(
                ProblemKind::Invalid,
                "pools: control or invisible characters are refused (`*` matches pool handles that hold them)",
            ));
        }
        Ok(Grant {
            identity: IdentityPattern::parse(&self.identity)?,
            namespace: NamespacePattern::from_str(&self.namespace)?,
            pools: PoolPattern::new(self.pools.as_bytes())?,
            actions: self.actions.iter().map(|a| a.to_action()).collect(),
            labels: self.labels.as_ref().map(LabelRules::parse).transpose()?,
        })
    }
}

/// Every grant, by id.
#[utoipa::path(get, path = "/v1/grants", tag = "grants",
    responses((status = 200, description = "The grants", body = [GrantView])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<Vec<GrantView>>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let rows = db::list_grants(&mut conn).await?;
    Ok(axum::Json(rows.into_iter().map(Into::into).collect()))
}

/// Creates a grant.
#[utoipa::path(post, path = "/v1/grants", tag = "grants",
    request_body = NewGrant,
    responses(
        (status = 201, description = "Created", body = GrantView),
        (status = 409, description = "A grant with the same identity, namespace and pools exists, or the store holds the most grants it takes"),
        (status = 422, description = "Invalid pattern or action"),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiJson(body): ApiJson<NewGrant>,
) -> Result<(StatusCode, axum::Json<GrantView>), ApiError> {
    let now = app.now();
    let record = caller
        .record(now, AuditAction::AdminGrantCreate)
        .detail(match &body.labels {
            None => format!(
                "{} {} {} {:?}",
                body.identity, body.namespace, body.pools, body.actions
            ),
            Some(labels) => format!(
                "{} {} {} {:?} labels {labels:?}",
                body.identity, body.namespace, body.pools, body.actions
            ),
        });
    let mut tx = app.begin().await?;
    let result = async {
        let grant = body.parse()?;
        let row = db::add_grant(&mut tx, &grant, now).await?;
        let all = db::list_grants(&mut tx).await?;
        Ok((row, all))
    }
    .await;
    let (row, all) = app.finish(tx, record, result).await?;
    push(&app, all).await;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

async fn push(app: &App, rows: Vec<GrantRow>) {
    app.registrar()
        .set_grants(rows.into_iter().map(|r| r.grant).collect())
        .await;
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ProblemKind::NotFound, format!("no grant {id}"))
}

/// One grant.
#[utoipa::path(get, path = "/v1/grants/{id}", tag = "grants",
    params(("id" = i64, Path, description = "The grant id")),
    responses(
        (status = 200, description = "The grant", body = GrantView),
        (status = 404, description = "No such grant"),
    ))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<GrantView>, ApiError> {
    let wanted: i64 = id.parse().map_err(|_| not_found(&id))?;
    let mut conn = app.store().acquire().await?;
    db::list_grants(&mut conn)
        .await?
        .into_iter()
        .find(|row| row.id == wanted)
        .map(|row| axum::Json(row.into()))
        .ok_or_else(|| not_found(&id))
}

/// Deletes a grant; the registrations it allowed (and no other grant allows) are removed.
#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "grants",
    params(("id" = i64, Path, description = "The grant id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such grant"),
    ))]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let wanted: i64 = id.parse().map_err(|_| not_found(&id))?;
    let record = caller
        .record(app.now(), AuditAction::AdminGrantDelete)
        .detail(format!("grant {wanted}"));
    let mut tx = app.begin().await?;
    let result = async {
        let gone = db::delete_grant(&mut tx, wanted).await?;
        let all = db::list_grants(&mut tx).await?;
        Ok((gone, all))
    }
    .await;
    let (gone, all) = app.finish(tx, record, result).await?;
    tracing::info!(grant = wanted, identity = %gone.grant.identity, "grant deleted");
    push(&app, all).await;
    Ok(StatusCode::NO_CONTENT)
}
