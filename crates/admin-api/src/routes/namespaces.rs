//! `/v1/namespaces`: independent handlespaces (spec §12.9).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use identity::audit::AuditAction;
use serde::{Deserialize, Serialize};
use store::db;
use utoipa::ToSchema;

use crate::auth::{AdminOnly, Authorized, ReadOps};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ProblemKind};
use crate::registrar::Scope;
use crate::schema::NamespaceName;
use crate::state::App;

/// A namespace.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Namespace {
    /// Its name: 1 to 63 bytes of `a-z 0-9 - .`.
    name: String,
    /// When it was created, unix ms.
    created_ms: u64,
}

impl From<db::Namespace> for Namespace {
    fn from(ns: db::Namespace) -> Self {
        Self {
            name: ns.name,
            created_ms: ns.created_ms,
        }
    }
}

/// A namespace to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewNamespace {
    /// 1 to 63 bytes of `a-z 0-9 - .`.
    #[schema(value_type = NamespaceName)]
    name: String,
}

/// Every namespace, by name.
#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces",
    responses((status = 200, description = "The namespaces", body = [Namespace])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
) -> Result<axum::Json<Vec<Namespace>>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let list = db::list_namespaces(&mut conn).await?;
    Ok(axum::Json(list.into_iter().map(Namespace::from).collect()))
}

/// Creates a namespace.
#[utoipa::path(post, path = "/v1/namespaces", tag = "namespaces",
    request_body = NewNamespace,
    responses(
        (status = 201, description = "Created", body = Namespace),
        (status = 409, description = "The namespace exists, or the store holds the most namespaces it takes"),
        (status = 422, description = "Invalid name"),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiJson(body): ApiJson<NewNamespace>,
) -> Result<(StatusCode, axum::Json<Namespace>), ApiError> {
    let now = app.now();
    let mut record = caller.record(now, AuditAction::AdminNamespaceCreate);
    // A name that is no namespace is refused below, and audited without it.
    record.namespace = identity::Namespace::new(&body.name);
    let mut tx = app.begin().await?;
    let result = db::create_namespace(&mut tx, &body.name, now)
        .await
        .map_err(ApiError::from);
    let ns = app.finish(tx, record, result).await?;
    Ok((StatusCode::CREATED, axum::Json(ns.into())))
}

/// One namespace.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}", tag = "namespaces",
    params(("namespace" = NamespaceName, Path, description = "The namespace")),
    responses(
        (status = 200, description = "The namespace", body = Namespace),
        (status = 404, description = "No such namespace"),
    ))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<Namespace>, ApiError> {
    crate::routes::path_namespace(&name)?;
    let mut conn = app.store().acquire().await?;
    match db::get_namespace(&mut conn, &name).await? {
        Some(ns) => Ok(axum::Json(ns.into())),
        None => Err(ApiError::new(
            ProblemKind::NotFound,
            format!("no namespace {name:?}"),
        )),
    }
}

/// Deletes a namespace and its pool declarations, and deregisters its PEs. Grants that
/// name it stay.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}", tag = "namespaces",
    params(("namespace" = NamespaceName, Path, description = "The namespace")),
    responses(
        (status = 204, description = "Deleted; its PEs are deregistered"),
        (status = 404, description = "No such namespace"),
        (status = 409, description = "A default-namespace rule names it"),
    ))]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let subject = crate::routes::path_namespace(&name)?;
    let record = caller
        .record(app.now(), AuditAction::AdminNamespaceDelete)
        .namespace(subject);
    let mut tx = app.begin().await?;
    let result = db::delete_namespace(&mut tx, &name)
        .await
        .map_err(ApiError::from);
    app.finish(tx, record, result).await?;
    app.registrar()
        .remove(Scope::Namespace(name), caller.actor.clone())
        .await;
    Ok(StatusCode::NO_CONTENT)
}
