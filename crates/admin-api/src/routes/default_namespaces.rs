//! `/v1/default-namespaces`: where an identity's ASAP requests go when they name no
//! namespace (no parameter 0x8100; spec §12.9, ARCHITECTURE.md §3). A rule allows nothing
//! by itself: the request is then authorized against the grants as usual. After every
//! change the registrar gets the whole list; PEs already registered stay where they are.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use identity::audit::AuditAction;
use identity::{DefaultNamespace, IdentityPattern};
use serde::{Deserialize, Serialize};
use store::db::{self, DefaultNamespaceRow};
use utoipa::ToSchema;

use crate::auth::{AdminOnly, Authorized, ReadAll};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ProblemKind};
use crate::schema::{IdentityPatternText, NamespaceName};
use crate::state::App;

/// A default-namespace rule to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDefaultNamespace {
    /// A SPIFFE ID or pattern, as in grants. When several rules match an identity, an
    /// exact ID wins, then the pattern with the most literal characters, then the older.
    #[schema(value_type = IdentityPatternText)]
    identity: String,
    /// The namespace its requests go to; it must exist, and cannot be deleted while a
    /// rule names it.
    #[schema(value_type = NamespaceName)]
    namespace: String,
}

/// A stored default-namespace rule.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DefaultNamespaceView {
    /// Its id.
    id: i64,
    /// The identity pattern.
    identity: String,
    /// The namespace.
    namespace: String,
    /// When it was created, unix ms.
    created_ms: u64,
}

impl From<DefaultNamespaceRow> for DefaultNamespaceView {
    fn from(row: DefaultNamespaceRow) -> Self {
        Self {
            id: row.id,
            identity: row.rule.identity.to_string(),
            namespace: row.rule.namespace,
            created_ms: row.created_ms,
        }
    }
}

/// Every default-namespace rule, oldest first.
#[utoipa::path(get, path = "/v1/default-namespaces", tag = "default-namespaces",
    responses((status = 200, description = "The rules", body = [DefaultNamespaceView])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<Vec<DefaultNamespaceView>>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let rows = db::list_default_namespaces(&mut conn).await?;
    Ok(axum::Json(rows.into_iter().map(Into::into).collect()))
}

/// Creates a default-namespace rule.
#[utoipa::path(post, path = "/v1/default-namespaces", tag = "default-namespaces",
    request_body = NewDefaultNamespace,
    responses(
        (status = 201, description = "Created", body = DefaultNamespaceView),
        (status = 404, description = "No such namespace"),
        (status = 409, description = "The identity pattern has a rule already, or the store holds the most rules it takes"),
        (status = 422, description = "Invalid pattern or namespace name"),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiJson(body): ApiJson<NewDefaultNamespace>,
) -> Result<(StatusCode, axum::Json<DefaultNamespaceView>), ApiError> {
    let now = app.now();
    let mut record = caller
        .record(now, AuditAction::AdminDefaultNamespaceCreate)
        .detail(body.identity.clone());
    // A name that is no namespace is refused below, and audited without it.
    record.namespace = identity::Namespace::new(&body.namespace);
    let mut tx = app.begin().await?;
    let result = async {
        let rule = DefaultNamespace {
            identity: IdentityPattern::parse(&body.identity)?,
            namespace: body.namespace.clone(),
        };
        let row = db::add_default_namespace(&mut tx, &rule, now).await?;
        let all = db::list_default_namespaces(&mut tx).await?;
        Ok((row, all))
    }
    .await;
    let (row, all) = app.finish(tx, record, result).await?;
    push(&app, all).await;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

async fn push(app: &App, rows: Vec<DefaultNamespaceRow>) {
    app.registrar()
        .set_default_namespaces(rows.into_iter().map(|r| r.rule).collect())
        .await;
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ProblemKind::NotFound,
        format!("no default-namespace rule {id}"),
    )
}

/// One default-namespace rule.
#[utoipa::path(get, path = "/v1/default-namespaces/{id}", tag = "default-namespaces",
    params(("id" = i64, Path, description = "The rule id")),
    responses(
        (status = 200, description = "The rule", body = DefaultNamespaceView),
        (status = 404, description = "No such rule"),
    ))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<DefaultNamespaceView>, ApiError> {
    let wanted: i64 = id.parse().map_err(|_| not_found(&id))?;
    let mut conn = app.store().acquire().await?;
    db::list_default_namespaces(&mut conn)
        .await?
        .into_iter()
        .find(|row| row.id == wanted)
        .map(|row| axum::Json(row.into()))
        .ok_or_else(|| not_found(&id))
}

/// Deletes a default-namespace rule: the identity's requests without a namespace go to
/// the next matching rule's namespace, or to `default`.
#[utoipa::path(delete, path = "/v1/default-namespaces/{id}", tag = "default-namespaces",
    params(("id" = i64, Path, description = "The rule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such rule"),
    ))]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let wanted: i64 = id.parse().map_err(|_| not_found(&id))?;
    let record = caller
        .record(app.now(), AuditAction::AdminDefaultNamespaceDelete)
        .detail(format!("rule {wanted}"));
    let mut tx = app.begin().await?;
    let result = async {
        let gone = db::delete_default_namespace(&mut tx, wanted).await?;
        let all = db::list_default_namespaces(&mut tx).await?;
        Ok((gone, all))
    }
    .await;
    let (_, all) = app.finish(tx, record, result).await?;
    push(&app, all).await;
    Ok(StatusCode::NO_CONTENT)
}
