//! The rsp admin REST API (ARCHITECTURE.md §7): operators manage namespaces, pools, trust
//! domains, grants, revocations, tokens and the audit log over HTTPS with curl.
//!
//! The axum routes arrive with the admin API issue; what is here now is the error format
//! every route answers with: RFC 9457 problem details ([`Problem`]), each error kind with
//! a stable `type` URI so that clients can branch on it.
#![warn(missing_docs)]

use serde::Serialize;

/// The media type of [`Problem`] bodies (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A stable URI naming the kind of problem (see [`ProblemKind::type_uri`]).
    #[serde(rename = "type")]
    pub type_uri: &'static str,
    /// A short summary of the kind, the same for every occurrence.
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
    /// No such resource (404).
    NotFound,
    /// The resource exists already (409).
    Conflict,
    /// The request body or query is malformed (400).
    BadRequest,
    /// The request is well formed but its values are not acceptable (422).
    Invalid,
}

impl ProblemKind {
    /// The stable `type` URI of this kind.
    pub const fn type_uri(self) -> &'static str {
        match self {
            Self::Unauthenticated => "urn:rsp:problem:unauthenticated",
            Self::Forbidden => "urn:rsp:problem:forbidden",
            Self::NotFound => "urn:rsp:problem:not-found",
            Self::Conflict => "urn:rsp:problem:conflict",
            Self::BadRequest => "urn:rsp:problem:bad-request",
            Self::Invalid => "urn:rsp:problem:invalid",
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
        }
    }

    const fn title(self) -> &'static str {
        match self {
            Self::Unauthenticated => "authentication required",
            Self::Forbidden => "not allowed",
            Self::NotFound => "not found",
            Self::Conflict => "already exists",
            Self::BadRequest => "bad request",
            Self::Invalid => "invalid value",
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
        let kinds = [
            ProblemKind::Unauthenticated,
            ProblemKind::Forbidden,
            ProblemKind::NotFound,
            ProblemKind::Conflict,
            ProblemKind::BadRequest,
            ProblemKind::Invalid,
        ];
        let mut uris: Vec<_> = kinds.iter().map(|k| k.type_uri()).collect();
        uris.sort_unstable();
        uris.dedup();
        assert_eq!(uris.len(), kinds.len());
        assert!(kinds.iter().all(|k| (400..500).contains(&k.status())));
    }
}
