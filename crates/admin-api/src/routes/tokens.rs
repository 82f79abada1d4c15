//! `/v1/tokens`: bearer tokens for the admin API. A token is shown once, when created;
//! only the argon2id hash of its secret is stored.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use identity::audit::AuditAction;
use serde::{Deserialize, Serialize};
use store::db::{self, Role, TokenInfo};
use utoipa::ToSchema;

use crate::auth::{AdminOnly, Authorized, ReadAll};
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, ProblemKind};
use crate::schema::{TokenId, TokenName};
use crate::state::App;

/// Longest token lifetime: ten years, in seconds.
pub(crate) const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

/// A token's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoleName {
    /// Everything.
    Admin,
    /// Pools, PEs, revocations.
    Operator,
    /// Read-only, including the audit log.
    Auditor,
}

impl RoleName {
    fn role(self) -> Role {
        match self {
            Self::Admin => Role::Admin,
            Self::Operator => Role::Operator,
            Self::Auditor => Role::Auditor,
        }
    }

    fn of(role: Role) -> Self {
        match role {
            Role::Admin => Self::Admin,
            Role::Operator => Self::Operator,
            // Roles added later are shown as the least privileged.
            _ => Self::Auditor,
        }
    }
}

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// A label (1 to 128 bytes, no control characters).
    #[schema(value_type = TokenName)]
    name: String,
    /// Its role.
    role: RoleName,
    /// Lifetime in seconds (1 to ten years); absent or `null`: it never expires.
    #[serde(default, deserialize_with = "crate::extract::whole_number")]
    #[schema(minimum = 1, maximum = 316_224_000)]
    ttl_seconds: Option<u64>,
}

/// A token's metadata (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    /// Its public id (the part after `rsp_`, before the secret).
    id: String,
    /// Its label.
    name: String,
    /// Its role.
    role: RoleName,
    /// When it was created, unix ms.
    created_ms: u64,
    /// When it expires, unix ms, or `null`.
    expires_ms: Option<u64>,
    /// When it was revoked, unix ms, or `null`.
    revoked_ms: Option<u64>,
}

impl From<TokenInfo> for TokenView {
    fn from(info: TokenInfo) -> Self {
        Self {
            id: info.id,
            name: info.name,
            role: RoleName::of(info.role),
            created_ms: info.created_ms,
            expires_ms: info.expires_ms,
            revoked_ms: info.revoked_ms,
        }
    }
}

/// A new token: `token` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    /// The bearer token, `rsp_<id>_<secret>`: store it now.
    token: String,
    /// Its metadata.
    #[serde(flatten)]
    info: TokenView,
}

/// Every token's metadata, by creation time (revoked ones too).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, description = "The tokens, without secrets", body = [TokenView])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let tokens = db::list_tokens(&mut conn).await?;
    Ok(axum::Json(tokens.into_iter().map(Into::into).collect()))
}

/// Creates a token; the answer is the only place its secret ever appears.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "Created; not cached (`Cache-Control: no-store`)", body = CreatedToken),
        (status = 409, description = "The store holds the most active tokens it takes"),
        (status = 422, description = "Invalid name or lifetime"),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    let now = app.now();
    let record = caller.record(now, AuditAction::AdminTokenCreate);
    let mut tx = app.begin().await?;
    let result = async {
        let expires_ms = match body.ttl_seconds {
            None => None,
            Some(ttl) if (1..=MAX_TTL_SECONDS).contains(&ttl) => Some(now + ttl * 1000),
            Some(_) => {
                return Err(ApiError::new(
                    ProblemKind::Invalid,
                    "ttl_seconds must be 1 to 316224000 (ten years)",
                ));
            }
        };
        let new = db::create_token(
            &mut tx,
            &app.state.hasher,
            &body.name,
            body.role.role(),
            expires_ms,
            now,
        )
        .await?;
        Ok(new)
    }
    .await;
    let record = match &result {
        Ok(new) => record.detail(format!(
            "token {} ({}), role {}",
            new.info.id, new.info.name, new.info.role
        )),
        Err(_) => record,
    };
    let new = app.finish(tx, record, result).await?;
    let body = CreatedToken {
        token: new.token,
        info: new.info.into(),
    };
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Revokes a token at once (it stays listed, marked revoked). Revoking twice keeps the
/// first time.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = TokenId, Path, description = "The token id (16 hex digits)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token"),
    ))]
pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let record = caller
        .record(app.now(), AuditAction::AdminTokenRevoke)
        .detail(format!("token {id}"));
    let now = app.now();
    let mut tx = app.begin().await?;
    let result = db::revoke_token(&mut tx, &id, now)
        .await
        .map_err(ApiError::from);
    app.finish(tx, record, result).await?;
    // Revoked at once here, not only once its cache entry expires.
    app.tokens().forget();
    Ok(StatusCode::NO_CONTENT)
}
