//! RFC 9457 problem details: every error the API answers is an `application/problem+json`
//! [`Problem`] whose `type` names its [`ProblemKind`], stable so that clients can branch on it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of [`Problem`] bodies (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem (see [`ProblemKind::type_uri`]).
    #[serde(rename = "type")]
    #[schema(rename = "type", value_type = String, example = "urn:rsp:problem:not-found")]
    pub type_uri: &'static str,
    /// A short summary of the kind, the same for every occurrence.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The kinds of problem the admin API reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Missing or wrong credentials (401).
    Unauthenticated,
    /// Authenticated, but the role does not allow this (403).
    Forbidden,
    /// No such resource or route (404).
    NotFound,
    /// The resource exists already, or conflicts with the stored state (409).
    Conflict,
    /// The request body, path or query is malformed (400).
    BadRequest,
    /// The request is well formed but its values are not acceptable (422).
    Invalid,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The request body is larger than the route accepts (413).
    PayloadTooLarge,
    /// The request body has a media type the route does not accept (415).
    UnsupportedMediaType,
    /// The registrar is not serving yet, or is stopping (503).
    Unavailable,
    /// The registrar's data directory is below its free-space watermark: writes are
    /// refused until it has room again (507).
    InsufficientStorage,
    /// A fault on this side: the store failed (500). The detail is generic; the log has
    /// the cause.
    Internal,
}

impl ProblemKind {
    /// Every kind.
    pub const ALL: [Self; 12] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::BadRequest,
        Self::Invalid,
        Self::MethodNotAllowed,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::Unavailable,
        Self::InsufficientStorage,
        Self::Internal,
    ];

    /// The stable `type` URI of this kind.
    pub const fn type_uri(self) -> &'static str {
        match self {
            Self::Unauthenticated => "urn:rsp:problem:unauthenticated",
            Self::Forbidden => "urn:rsp:problem:forbidden",
            Self::NotFound => "urn:rsp:problem:not-found",
            Self::Conflict => "urn:rsp:problem:conflict",
            Self::BadRequest => "urn:rsp:problem:bad-request",
            Self::Invalid => "urn:rsp:problem:invalid",
            Self::MethodNotAllowed => "urn:rsp:problem:method-not-allowed",
            Self::PayloadTooLarge => "urn:rsp:problem:payload-too-large",
            Self::UnsupportedMediaType => "urn:rsp:problem:unsupported-media-type",
            Self::Unavailable => "urn:rsp:problem:unavailable",
            Self::InsufficientStorage => "urn:rsp:problem:insufficient-storage",
            Self::Internal => "urn:rsp:problem:internal",
        }
    }

    /// The HTTP status of this kind.
    pub const fn status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::BadRequest => 400,
            Self::Invalid => 422,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unavailable => 503,
            Self::InsufficientStorage => 507,
            Self::Internal => 500,
        }
    }

    const fn title(self) -> &'static str {
        match self {
            Self::Unauthenticated => "authentication required",
            Self::Forbidden => "not allowed",
            Self::NotFound => "not found",
            Self::Conflict => "conflicts with the current state",
            Self::BadRequest => "bad request",
            Self::Invalid => "invalid value",
            Self::MethodNotAllowed => "method not allowed",
            Self::PayloadTooLarge => "request body too large",
            Self::UnsupportedMediaType => "unsupported media type",
            Self::Unavailable => "not ready",
            Self::InsufficientStorage => "low disk space",
            Self::Internal => "internal error",
        }
    }

    /// The audit outcome of a request refused with this kind (`a-z 0-9 -`).
    pub(crate) const fn outcome(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::BadRequest => "bad-request",
            Self::Invalid => "invalid",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::PayloadTooLarge => "too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unavailable => "unavailable",
            Self::InsufficientStorage => "low-disk",
            Self::Internal => "error",
        }
    }

    /// A problem of this kind with a detail for this occurrence.
    pub fn with_detail(self, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: self.type_uri(),
            title: self.title(),
            status: self.status(),
            detail: Some(detail.into()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let unauthenticated = status == StatusCode::UNAUTHORIZED;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if unauthenticated {
            // RFC 9110 §11.6.1: a 401 names the scheme that would work.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rsp\""),
            );
        }
        response
    }
}

/// The errors of the admin API's handlers; each renders as a [`Problem`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A refusal with a kind and a detail for the caller.
    #[error("{detail}")]
    Problem {
        /// The kind.
        kind: ProblemKind,
        /// What went wrong, for the caller.
        detail: String,
    },
    /// The store or the audit log failed (or refused an argument: see [`ApiError::kind`]).
    #[error("store: {0}")]
    Store(#[from] store::db::Error),
    /// The trust store refused a change or an input did not parse.
    #[error("trust: {0}")]
    Trust(#[from] trust::Error),
}

/// A name, pattern or serial in a request that does not parse: the same answer (and
/// message) as before the identity types left `trust` (issue 24).
impl From<identity::Error> for ApiError {
    fn from(e: identity::Error) -> Self {
        Self::Trust(trust::Error::Identity(e))
    }
}

impl ApiError {
    /// A refusal of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self::Problem {
            kind,
            detail: detail.into(),
        }
    }

    /// The problem kind this error answers with.
    pub fn kind(&self) -> ProblemKind {
        use store::db::Error as Db;
        match self {
            Self::Problem { kind, .. } => *kind,
            Self::Store(Db::Invalid { .. }) => ProblemKind::Invalid,
            Self::Store(
                Db::AlreadyExists { .. } | Db::InUse { .. } | Db::Conflict { .. } | Db::Full { .. },
            ) => ProblemKind::Conflict,
            Self::Store(Db::NotFound { .. }) => ProblemKind::NotFound,
            Self::Store(Db::Token(_)) => ProblemKind::Unauthenticated,
            // The store did not answer in time or the connection broke (PostgreSQL down):
            // the registrar is fine, try again.
            Self::Store(Db::Sqlx(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))) => {
                ProblemKind::Unavailable
            }
            Self::Store(_) => ProblemKind::Internal,
            Self::Trust(err) => match err {
                trust::Error::DuplicateTrustDomain(_) => ProblemKind::Conflict,
                trust::Error::UnknownTrustDomain(_) => ProblemKind::NotFound,
                trust::Error::Tls(_) => ProblemKind::Internal,
                // Every other trust error is about the input: a name, pattern, PEM, CRL
                // or certificate that does not parse or cannot be used.
                _ => ProblemKind::Invalid,
            },
        }
    }

    /// The problem body: faults on this side say nothing about their cause (the log does).
    pub fn problem(&self) -> Problem {
        let kind = self.kind();
        if kind == ProblemKind::Internal {
            return kind.with_detail("the registrar could not complete the request");
        }
        kind.with_detail(self.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.kind() == ProblemKind::Internal {
            tracing::error!(error = %self, "admin API request failed");
        }
        self.problem().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_serializes_as_rfc9457() {
        let p = ProblemKind::NotFound.with_detail("namespace \"x\" does not exist");
        let v: serde_json::Value = serde_json::to_value(&p).expect("serializable");
        assert_eq!(v["type"], "urn:rsp:problem:not-found");
        assert_eq!(v["status"], 404);
        assert_eq!(v["title"], "not found");
        assert_eq!(v["detail"], "namespace \"x\" does not exist");
    }

    #[test]
    fn every_kind_has_a_distinct_type_and_an_error_status() {
        let kinds = ProblemKind::ALL;
        let mut uris: Vec<_> = kinds.iter().map(|k| k.type_uri()).collect();
        uris.sort_unstable();
        uris.dedup();
        assert_eq!(uris.len(), kinds.len());
        assert!(kinds.iter().all(|k| (400..600).contains(&k.status())));
        let mut statuses: Vec<_> = kinds.iter().map(|k| k.status()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(statuses.len(), kinds.len(), "one kind per status");
    }

    #[test]
    fn store_errors_map_to_kinds_and_internal_faults_hide_their_cause() {
        let e = ApiError::from(store::db::Error::AlreadyExists {
            what: "namespace",
            key: "x".into(),
        });
        assert_eq!(e.kind(), ProblemKind::Conflict);
        let e = ApiError::from(store::db::Error::AuditClosed);
        assert_eq!(e.kind(), ProblemKind::Internal);
        assert!(!e.problem().detail.unwrap_or_default().contains("audit"));
    }
}
