//! `/v1/trust-domains`: the local trust domain and federated ones, each a bundle of root
//! certificates (and CRLs). Changes apply to the trust store at once, so the next
//! handshake sees them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use identity::Revocation;
use identity::TrustDomain;
use identity::audit::AuditAction;
use serde::{Deserialize, Serialize};
use store::db::{self};
use trust::DomainBundle;
use utoipa::ToSchema;

use crate::auth::{AdminOnly, Authorized, ReadAll};
use crate::extract::{ApiPath, ApiQuery, PemBody};
use crate::problem::{ApiError, ProblemKind};
use crate::schema::TrustDomainName;
use crate::state::App;

/// A trust domain and its bundle.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TrustDomainView {
    /// The trust domain name.
    name: String,
    /// Whether it is the registrar's own (which cannot be removed).
    local: bool,
    /// How many root certificates its bundle has.
    roots: usize,
    /// How many CRLs it has.
    crls: usize,
    /// The root certificates, PEM.
    roots_pem: String,
    /// The CRLs, PEM, `null` if none.
    crls_pem: Option<String>,
    /// When it was added, unix ms.
    created_ms: u64,
}

impl From<db::TrustDomainRow> for TrustDomainView {
    fn from(row: db::TrustDomainRow) -> Self {
        let roots = trust::certs_from_pem(row.roots_pem.as_bytes()).map_or(0, |c| c.len());
        let crls = row
            .crls_pem
            .as_deref()
            .and_then(|p| trust::crls_from_pem(p.as_bytes()).ok())
            .map_or(0, |c| c.len());
        Self {
            name: row.name.to_string(),
            local: row.is_local,
            roots,
            crls,
            roots_pem: row.roots_pem,
            crls_pem: row.crls_pem,
            created_ms: row.created_ms,
        }
    }
}

/// The PEM blocks of `text` with the given labels, re-joined as PEM text.
pub(crate) fn pem_blocks(text: &str, labels: &[&str]) -> String {
    let mut out = String::new();
    let mut inside: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim_end();
        match inside {
            None => {
                if let Some(label) = labels
                    .iter()
                    .find(|l| line == format!("-----BEGIN {l}-----"))
                {
                    inside = Some(label);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Some(label) => {
                out.push_str(line);
                out.push('\n');
                if line == format!("-----END {label}-----") {
                    inside = None;
                }
            }
        }
    }
    out
}

/// Which trust domain a bundle is for.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct BundleQuery {
    /// The trust domain; required unless the bundle names it in a `trust-domain:` line
    /// (as `rsp-pki bundle export` writes it).
    #[param(value_type = Option<TrustDomainName>)]
    trust_domain: Option<String>,
}

/// Adds a federated trust domain from a PEM bundle: its root certificates and, if any,
/// CRLs (the output of `rsp-pki bundle export`). New handshakes trust it at once.
#[utoipa::path(post, path = "/v1/trust-domains", tag = "trust domains",
    params(BundleQuery),
    request_body(content((String = "application/x-pem-file")),
        description = "Root certificates (and CRLs) in PEM, optionally after a `trust-domain: NAME` line"),
    responses(
        (status = 201, description = "Added and trusted", body = TrustDomainView),
        (status = 409, description = "Already trusted, the local domain, or revoked; or the store holds the most trust domains it takes"),
        (status = 422, description = "The bundle or the name is not usable"),
    ))]
pub(crate) async fn add(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiQuery(query): ApiQuery<BundleQuery>,
    PemBody(text): PemBody,
) -> Result<(StatusCode, axum::Json<TrustDomainView>), ApiError> {
    let now = app.now();
    let mut record = caller.record(now, AuditAction::AdminTrustDomainAdd);
    let parsed = parse_bundle(&app, query.trust_domain.as_deref(), &text);
    if let Ok((bundle, ..)) = &parsed {
        record = record.detail(format!("trust domain {}", bundle.domain()));
    }
    let mut tx = app.begin().await?;
    let mut applied: Option<TrustDomain> = None;
    let result = async {
        let (bundle, roots_pem, crls_pem) = parsed?;
        let domain = bundle.domain().clone();
        let revoked = db::list_revocations(&mut tx)
            .await?
            .into_iter()
            .any(|r| r.revocation == Revocation::TrustDomain(domain.clone()));
        if revoked {
            return Err(ApiError::new(
                ProblemKind::Conflict,
                format!("trust domain {domain} is revoked"),
            ));
        }
        let row = db::add_trust_domain(
            &mut tx,
            &domain,
            false,
            &roots_pem,
            crls_pem.as_deref(),
            now,
        )
        .await?;
        app.registrar().add_domain(bundle)?;
        applied = Some(domain);
        Ok(row)
    }
    .await;
    let outcome = app.finish(tx, record, result).await;
    if outcome.is_err()
        && let Some(domain) = applied
    {
        // Not stored: not trusted either.
        let _ = app.registrar().remove_domain(&domain);
    }
    Ok((StatusCode::CREATED, axum::Json(outcome?.into())))
}

type ParsedBundle = (DomainBundle, String, Option<String>);

fn parse_bundle(app: &App, query_name: Option<&str>, text: &str) -> Result<ParsedBundle, ApiError> {
    let header = text
        .lines()
        .find_map(|l| l.strip_prefix("trust-domain:"))
        .map(str::trim);
    let name = match (query_name, header) {
        (Some(q), Some(h)) if q != h => {
            return Err(ApiError::new(
                ProblemKind::Invalid,
                format!("the query names trust domain {q:?}, the bundle {h:?}"),
            ));
        }
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) => {
            return Err(ApiError::new(
                ProblemKind::Invalid,
                "name the trust domain: `?trust_domain=NAME` or a `trust-domain: NAME` line",
            ));
        }
    };
    let domain = TrustDomain::new(name)?;
    if domain == app.local_domain {
        return Err(ApiError::new(
            ProblemKind::Conflict,
            format!("{domain} is the local trust domain"),
        ));
    }
    let roots_pem = pem_blocks(text, &["CERTIFICATE"]);
    let crls_pem = pem_blocks(text, &["X509 CRL"]);
    let roots = trust::certs_from_pem(roots_pem.as_bytes())?;
    let crls = trust::crls_from_pem(crls_pem.as_bytes())?;
    let bundle = DomainBundle::new(domain, roots).with_crls(crls);
    bundle.validate()?;
    Ok((
        bundle,
        roots_pem,
        (!crls_pem.is_empty()).then_some(crls_pem),
    ))
}

/// Every trust domain, the local one first.
#[utoipa::path(get, path = "/v1/trust-domains", tag = "trust domains",
    responses((status = 200, description = "The trust domains", body = [TrustDomainView])))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
) -> Result<axum::Json<Vec<TrustDomainView>>, ApiError> {
    let mut conn = app.store().acquire().await?;
    let rows = db::list_trust_domains(&mut conn).await?;
    Ok(axum::Json(rows.into_iter().map(Into::into).collect()))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(ProblemKind::NotFound, format!("no trust domain {name:?}"))
}

/// One trust domain.
#[utoipa::path(get, path = "/v1/trust-domains/{name}", tag = "trust domains",
    params(("name" = TrustDomainName, Path, description = "The trust domain")),
    responses(
        (status = 200, description = "The trust domain", body = TrustDomainView),
        (status = 404, description = "No such trust domain"),
    ))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _: Authorized<ReadAll>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<TrustDomainView>, ApiError> {
    let mut conn = app.store().acquire().await?;
    db::list_trust_domains(&mut conn)
        .await?
        .into_iter()
        .find(|row| row.name.as_str() == name)
        .map(|row| axum::Json(row.into()))
        .ok_or_else(|| not_found(&name))
}

/// Removes a federated trust domain: new handshakes refuse it at once, its live
/// connections close and its PEs are deregistered. It can be added again later (to
/// refuse it for good, revoke it).
#[utoipa::path(delete, path = "/v1/trust-domains/{name}", tag = "trust domains",
    params(("name" = TrustDomainName, Path, description = "The trust domain")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such trust domain"),
        (status = 409, description = "The local trust domain cannot be removed"),
    ))]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Authorized(caller, ..): Authorized<AdminOnly>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let domain = TrustDomain::new(&name).map_err(|_| not_found(&name))?;
    let record = caller
        .record(app.now(), AuditAction::AdminTrustDomainRemove)
        .detail(format!("trust domain {domain}"));
    let mut tx = app.begin().await?;
    let result = async {
        if domain == app.local_domain {
            return Err(ApiError::new(
                ProblemKind::Conflict,
                "the local trust domain cannot be removed",
            ));
        }
        db::remove_trust_domain(&mut tx, &domain).await?;
        // Removed from the trust store before the commit: if the commit fails, the domain
        // is untrusted until a restart reloads it, which errs on the safe side.
        Ok(app.registrar().remove_domain(&domain)?)
    }
    .await;
    app.finish(tx, record, result).await?;
    app.registrar().domain_removed(&domain).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_picks_labels() {
        let text = "trust-domain: x\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
                    junk\n-----BEGIN X509 CRL-----\nBBBB\n-----END X509 CRL-----\n";
        assert_eq!(
            pem_blocks(text, &["CERTIFICATE"]),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            pem_blocks(text, &["X509 CRL"]),
            "-----BEGIN X509 CRL-----\nBBBB\n-----END X509 CRL-----\n"
        );
    }
}
