//! `/v1/revocations`: revoke a certificate serial, a SPIFFE ID or a whole federated trust
//! domain, or upload a domain's CRLs. Each is applied to the trust store before the
//! answer (new handshakes fail at once, live connections are told to close), then the
//! registrar removes what the revoked identities registered.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use identity::Revocation;
use identity::audit::AuditAction;
use identity::{Serial, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use store::db::{self};
use utoipa::ToSchema;

use crate::auth::{Authorized, Operate, ReadOps};
use crate::extract::{ApiJson, ApiPath, PemBody};
use crate::problem::{ApiError, ProblemKind};
use crate::routes::trust_domains::pem_blocks;
use crate::schema::{Reason, SerialText, SpiffeIdText, TrustDomainName};
use crate::state::App;

/// What to revoke.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum NewRevocation {
    /// One certificate, by serial number and issuing trust domain.
    Serial {
        /// The issuing trust domain.
        #[schema(value_type = TrustDomainName)]
        trust_domain: String,
        /// The serial number in hex (`:` separators and a `0x` prefix are accepted).
        #[schema(value_type = SerialText)]
        serial: String,
        /// Why, for the record (at most 4096 bytes).
        #[serde(default)]
        #[schema(value_type = Option<Reason>)]
        reason: Option<String>,
    },
    /// Every certificate of an identity.
    SpiffeId {
        /// The SPIFFE ID.
        #[schema(value_type = SpiffeIdText)]
        spiffe_id: String,
        /// Why, for the record (at most 4096 bytes).
        #[serde(default)]
        #[schema(value_type = Option<Reason>)]
        reason: Option<String>,
    },
    /// A whole federated trust domain: it is no longer trusted and cannot be added again.
    TrustDomain {
        /// The trust domain (not the local one).
        #[schema(value_type = TrustDomainName)]
        trust_domain: String,
        /// Why, for the record (at most 4096 bytes).
        #[serde(default)]
        #[schema(value_type = Option<Reason>)]
        reason: Option<String>,
    },
}

impl NewRevocation {
    fn parse(self, local: &TrustDomain) -> Result<(Revocation, Option<String>), ApiError> {
        Ok(match self {
            Self::Serial {
                trust_domain,
                serial,
                reason,
            } => (
                Revocation::Serial {
                    domain: TrustDomain::new(&trust_domain)?,
                    serial: serial.parse::<Serial>()?,
                },
                reason,
            ),
            Self::SpiffeId { spiffe_id, reason } => {
                let id = SpiffeId::parse(&spiffe_id)?;
                if id.path().is_empty() {
                    return Err(ApiError::new(
                        ProblemKind::Invalid,
                        "a SPIFFE ID without a path names a trust domain: revoke the trust domain",
                    ));
                }
                (Revocation::Identity(id), reason)
            }
            Self::TrustDomain {
                trust_domain,
                reason,
            } => {
                let domain = TrustDomain::new(&trust_domain)?;
                if &domain == local {
                    return Err(ApiError::new(
                        ProblemKind::Invalid,
                        "the local trust domain cannot be revoked",
                    ));
                }
                (Revocation::TrustDomain(domain), reason)
            }
        })
    }
}

/// A stored revocation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RevocationView {
    /// Its id.
    id: i64,
    /// `serial`, `spiffe_id` or `trust_domain`.
    kind: String,
    /// The trust domain of the serial or identity, or the revoked domain.
    trust_domain: String,
    /// The serial in lowercase hex (kind `serial`).
    serial: Option<String>,
    /// The SPIFFE ID (kind `spiffe_id`).
    spiffe_id: Option<String>,
    /// Why, as the operator wrote it.
    reason: Option<String>,
    /// When, unix ms.
    created_ms: u64,
}

impl From<db::RevocationRecord> for RevocationView {
    fn from(r: db::RevocationRecord) -> Self {
        let (kind, trust_domain, serial, spiffe_id) = match &r.revocation {
            Revocation::Serial { domain, serial } => {
                ("serial", domain.to_string(), Some(serial.to_hex()), None)
            }
            Revocation::Identity(id) => (
                "spiffe_id",
                id.trust_domain_str().to_owned(),
                None,
                Some(id.to_string()),
            ),
            Revocation::TrustDomain(domain) => ("trust_domain", domain.to_string(), None, None),
            // Kinds added later are listed by their description.
            other => ("other", other.to_string(), None, None),
        };
        Self {
            id: r.id,
            kind: kind.to_owned(),
            trust_domain,
            serial,
            spiffe_id,
            reason: r.reason,
            created_ms: r.created_ms,
        }
    }
}

/// Every revocation, oldest first.
#[utoipa::path(get, path = "/v1/revocations", tag = "revocations",
    responses((status = 200, description = "The revocations", body = [RevocationView])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadOps>,
) -> Result<axum::Json<Vec<RevocationView>>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let rows = db::list_revocations(&mut conn).await?;
    Ok(axum::Json(rows.into_iter().map(Into::into).collect()))
}

/// Revokes a certificate serial, an identity or a federated trust domain. When this
/// answers, new handshakes of what is revoked already fail and its live connections are
/// closing; its PEs are deregistered.
#[utoipa::path(post, path = "/v1/revocations", tag = "revocations",
    request_body = NewRevocation,
    responses(
        (status = 201, description = "Revoked", body = RevocationView),
        (status = 409, description = "Already revoked, or the store holds the most revocations it takes (use the CA's CRL)"),
        (status = 422, description = "Invalid serial, identity or trust domain"),
    ))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiJson(body): ApiJson<NewRevocation>,
) -> Result<(StatusCode, axum::Json<RevocationView>), ApiError> {
    let now = app.now();
    let mut record = caller.record(now, AuditAction::AdminRevoke);
    let parsed = body.parse(&app.local_domain);
    if let Ok((revoked, _)) = &parsed {
        record = record.detail(revoked.to_string());
    }
    let mut tx = app.begin().await?;
    let result = async {
        let (revoked, reason) = parsed?;
        let row = db::add_revocation(&mut tx, &revoked, reason.as_deref(), now).await?;
        if let Revocation::TrustDomain(domain) = &revoked {
            match db::remove_trust_domain(&mut tx, domain).await {
                Ok(()) | Err(db::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Applied before the commit, by the registrar's control plane: should the commit
        // fail, the trust store refuses a little more than the store says until a
        // restart, which errs on the safe side.
        app.registrar().deny(&revoked)?;
        Ok(row)
    }
    .await;
    let row = app.finish(tx, record, result).await?;
    app.registrar().revoke(row.revocation.clone()).await;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

/// What a CRL upload changed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CrlsApplied {
    /// The trust domain.
    trust_domain: String,
    /// How many CRLs it now has.
    crls: usize,
    /// How many serials they revoke.
    serials: usize,
}

/// Replaces a trust domain's CRLs (PEM, as `rsp-pki` writes `crl.pem`). Each CRL must be
/// signed by a root of the domain or by a known intermediate CA of it (the registrar's
/// own, or one whose certificate, chaining to a root, is in the body); otherwise 422 and
/// nothing changes. New handshakes of the listed serials fail at once; their live
/// connections close and their PEs are deregistered.
#[utoipa::path(put, path = "/v1/revocations/crls/{trust_domain}", tag = "revocations",
    params(("trust_domain" = TrustDomainName, Path, description = "The trust domain whose CA signed the CRLs")),
    request_body(content((String = "application/x-pem-file")),
        description = "One or more CRLs in PEM (`-----BEGIN X509 CRL-----`)"),
    responses(
        (status = 200, description = "Applied", body = CrlsApplied),
        (status = 404, description = "No such trust domain"),
        (status = 422, description = "No CRL, or a CRL the trust domain cannot use (not signed by one of its CAs)"),
    ))]
pub(crate) async fn put_crls(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<Operate>,
    ApiPath(name): ApiPath<String>,
    PemBody(text): PemBody,
) -> Result<axum::Json<CrlsApplied>, ApiError> {
    let domain = TrustDomain::new(&name)
        .map_err(|_| ApiError::new(ProblemKind::NotFound, format!("no trust domain {name:?}")))?;
    let record = caller
        .record(app.now(), AuditAction::AdminCrlSet)
        .detail(format!("trust domain {domain}"));
    let mut tx = app.begin().await?;
    let result = async {
        let pem = pem_blocks(&text, &["X509 CRL"]);
        let crls = trust::crls_from_pem(pem.as_bytes())?;
        if crls.is_empty() {
            return Err(ApiError::new(
                ProblemKind::Invalid,
                "no `-----BEGIN X509 CRL-----` block in the body",
            ));
        }
        // Only CRLs of this domain's CAs: signed by one of its roots, or by an
        // intermediate that chains to one (this registrar's own, or one sent along
        // in the body as a CERTIFICATE block).
        let certs = pem_blocks(&text, &["CERTIFICATE"]);
        let intermediates = if certs.is_empty() {
            Vec::new()
        } else {
            trust::certs_from_pem(certs.as_bytes())?
        };
        app.trust()
            .check_crl_signers(&domain, &crls, &intermediates)?;
        let mut serials = Vec::new();
        for crl in &crls {
            serials.extend(trust::crl_serials(crl)?);
        }
        db::set_trust_domain_crls(&mut tx, &domain, Some(&pem)).await?;
        let count = crls.len();
        app.registrar().set_crls(&domain, crls)?;
        Ok((count, serials))
    }
    .await;
    let (crls, serials) = app.finish(tx, record, result).await?;
    let applied = CrlsApplied {
        trust_domain: domain.to_string(),
        crls,
        serials: serials.len(),
    };
    for serial in serials {
        app.registrar()
            .revoke(Revocation::Serial {
                domain: domain.clone(),
                serial,
            })
            .await;
    }
    Ok(axum::Json(applied))
}
