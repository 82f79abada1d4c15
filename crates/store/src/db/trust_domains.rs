//! Trust domains: the local one and the federated ones, with their roots and CRLs.

use identity::TrustDomain;

use super::{Conn, Error, Result, already_exists, i64_to_ms, ms_to_i64, with_conn};

/// A stored trust domain: its root bundle and CRLs, as PEM text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrustDomainRow {
    /// The trust domain.
    pub name: TrustDomain,
    /// Whether it is the registrar's own (exactly one is).
    pub is_local: bool,
    /// Root certificates, PEM.
    pub roots_pem: String,
    /// CRLs, PEM, if any.
    pub crls_pem: Option<String>,
    /// When it was added (unix ms).
    pub created_ms: u64,
}

#[derive(sqlx::FromRow)]
struct DomainRow {
    name: String,
    is_local: i64,
    roots_pem: String,
    crls_pem: Option<String>,
    created_ms: i64,
}

impl TryFrom<DomainRow> for TrustDomainRow {
    type Error = Error;
    fn try_from(row: DomainRow) -> Result<Self> {
        let name = TrustDomain::new(&row.name).map_err(|_| Error::Corrupt {
            table: "trust_domains",
            id: row.name.clone(),
            reason: "invalid trust domain name",
        })?;
        Ok(Self {
            created_ms: i64_to_ms(row.created_ms, "trust_domains", &row.name)?,
            name,
            is_local: row.is_local != 0,
            roots_pem: row.roots_pem,
            crls_pem: row.crls_pem,
        })
    }
}

/// Adds a trust domain. The PEM is stored as given: the caller has parsed it (through
/// `trust::DomainBundle::from_pem`) before. [`Error::AlreadyExists`] if the domain is
/// stored, or if `is_local` and a local domain exists.
pub async fn add_trust_domain<C: Conn + ?Sized>(
    conn: &mut C,
    name: &TrustDomain,
    is_local: bool,
    roots_pem: &str,
    crls_pem: Option<&str>,
    now_ms: u64,
) -> Result<TrustDomainRow> {
    if roots_pem.is_empty() || roots_pem.len() > 1 << 20 {
        return Err(Error::Invalid {
            what: "roots",
            reason: "must be 1 byte to 1 MiB of PEM",
        });
    }
    if crls_pem.is_some_and(|c| c.len() > 16 << 20) {
        return Err(Error::Invalid {
            what: "crls",
            reason: "larger than 16 MiB",
        });
    }
    let now = ms_to_i64(now_ms, "time")?;
    super::limits::check_room(&mut *conn, super::limits::Table::TrustDomains, now_ms).await?;
    let row: DomainRow = with_conn!(
        conn,
        "INSERT INTO trust_domains (name, is_local, roots_pem, crls_pem, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         RETURNING name, is_local, roots_pem, crls_pem, created_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(name.as_str())
            .bind(i64::from(is_local))
            .bind(roots_pem)
            .bind(crls_pem)
            .bind(now)
            .fetch_one(c)
            .await
    )
    .map_err(already_exists("trust domain", || name.to_string()))?;
    row.try_into()
}

/// Every stored trust domain, the local one first.
pub async fn list_trust_domains<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<TrustDomainRow>> {
    let rows: Vec<DomainRow> = with_conn!(
        conn,
        "SELECT name, is_local, roots_pem, crls_pem, created_ms FROM trust_domains
         ORDER BY is_local DESC, name",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(TrustDomainRow::try_from).collect()
}

/// Replaces the CRLs of a stored trust domain. [`Error::NotFound`] if it is not stored.
pub async fn set_trust_domain_crls<C: Conn + ?Sized>(
    conn: &mut C,
    name: &TrustDomain,
    crls_pem: Option<&str>,
) -> Result<()> {
    if crls_pem.is_some_and(|c| c.len() > 16 << 20) {
        return Err(Error::Invalid {
            what: "crls",
            reason: "larger than 16 MiB",
        });
    }
    let done = with_conn!(
        conn,
        "UPDATE trust_domains SET crls_pem = ?2 WHERE name = ?1",
        |c, sql| sqlx::query(sql)
            .bind(name.as_str())
            .bind(crls_pem)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    if done == 0 {
        return Err(Error::NotFound {
            what: "trust domain",
            key: name.to_string(),
        });
    }
    Ok(())
}

/// Removes a federated trust domain. [`Error::NotFound`] if it is not stored;
/// [`Error::Invalid`] for the local domain, which cannot be removed.
pub async fn remove_trust_domain<C: Conn + ?Sized>(conn: &mut C, name: &TrustDomain) -> Result<()> {
    let local: Option<(i64,)> = with_conn!(
        conn,
        "SELECT is_local FROM trust_domains WHERE name = ?1",
        |c, sql| sqlx::query_as(sql)
            .bind(name.as_str())
            .fetch_optional(c)
            .await
    )?;
    match local {
        None => Err(Error::NotFound {
            what: "trust domain",
            key: name.to_string(),
        }),
        Some((1,)) => Err(Error::Invalid {
            what: "trust domain",
            reason: "the local trust domain cannot be removed",
        }),
        Some(_) => {
            with_conn!(
                conn,
                "DELETE FROM trust_domains WHERE name = ?1 AND is_local = 0",
                |c, sql| sqlx::query(sql)
                    .bind(name.as_str())
                    .execute(c)
                    .await
                    .map(|done| done.rows_affected())
            )?;
            Ok(())
        }
    }
}
