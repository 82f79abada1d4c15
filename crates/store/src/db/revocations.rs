//! Revocations: what an operator revoked ([`Revocation`]), kept across restarts.

use std::str::FromStr;

use identity::{Revocation, Serial, SpiffeId, TrustDomain};

use super::{Conn, Error, Result, already_exists, check_text, i64_to_ms, ms_to_i64, with_conn};

/// The store's columns of a revocation: (kind, trust domain, value).
fn revocation_columns(revocation: &Revocation) -> Result<(&'static str, String, String)> {
    let value = match revocation {
        Revocation::Serial { serial, .. } => serial.to_hex(),
        Revocation::Identity(id) => id.to_string(),
        Revocation::TrustDomain(domain) => domain.to_string(),
        // A kind this store has no column for is refused, not stored half.
        _ => {
            return Err(Error::Invalid {
                what: "revocation",
                reason: "a kind this store cannot record",
            });
        }
    };
    Ok((
        revocation.kind(),
        revocation.trust_domain().to_string(),
        value,
    ))
}

/// A stored revocation: what is revoked, and the row's id, reason and time.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationRecord {
    /// Row id.
    pub id: i64,
    /// What is revoked.
    pub revocation: Revocation,
    /// Why, as the operator wrote it.
    pub reason: Option<String>,
    /// When (unix ms).
    pub created_ms: u64,
}

#[derive(sqlx::FromRow)]
struct RevocationRow {
    id: i64,
    kind: String,
    trust_domain: String,
    value: String,
    reason: Option<String>,
    created_ms: i64,
}

impl TryFrom<RevocationRow> for RevocationRecord {
    type Error = Error;
    fn try_from(row: RevocationRow) -> Result<Self> {
        let corrupt = |reason| Error::Corrupt {
            table: "revocations",
            id: row.id.to_string(),
            reason,
        };
        let domain =
            TrustDomain::new(&row.trust_domain).map_err(|_| corrupt("invalid trust domain"))?;
        let revocation = match row.kind.as_str() {
            "serial" => Revocation::Serial {
                domain,
                serial: Serial::from_str(&row.value).map_err(|_| corrupt("invalid serial"))?,
            },
            "spiffe_id" => {
                let id = SpiffeId::parse(&row.value).map_err(|_| corrupt("invalid SPIFFE ID"))?;
                if id.trust_domain_str() != domain.as_str() {
                    return Err(corrupt("SPIFFE ID outside its trust domain"));
                }
                Revocation::Identity(id)
            }
            "trust_domain" if row.value == row.trust_domain => Revocation::TrustDomain(domain),
            _ => return Err(corrupt("unknown kind")),
        };
        Ok(Self {
            id: row.id,
            revocation,
            reason: row.reason,
            created_ms: i64_to_ms(row.created_ms, "revocations", &row.id)?,
        })
    }
}

/// Records a revocation. [`Error::AlreadyExists`] if the same thing is revoked already.
pub async fn add_revocation<C: Conn + ?Sized>(
    conn: &mut C,
    revocation: &Revocation,
    reason: Option<&str>,
    now_ms: u64,
) -> Result<RevocationRecord> {
    if let Some(reason) = reason {
        check_text(reason, "reason")?;
    }
    let now = ms_to_i64(now_ms, "time")?;
    let (kind, domain, value) = revocation_columns(revocation)?;
    super::limits::check_room(&mut *conn, super::limits::Table::Revocations, now_ms).await?;
    let row: RevocationRow = with_conn!(
        conn,
        "INSERT INTO revocations (kind, trust_domain, value, reason, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         RETURNING id, kind, trust_domain, value, reason, created_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(kind)
            .bind(domain)
            .bind(value)
            .bind(reason)
            .bind(now)
            .fetch_one(c)
            .await
    )
    .map_err(already_exists("revocation", || revocation.to_string()))?;
    row.try_into()
}

/// Every revocation, oldest first (the order to replay them into the trust store).
pub async fn list_revocations<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<RevocationRecord>> {
    let rows: Vec<RevocationRow> = with_conn!(
        conn,
        "SELECT id, kind, trust_domain, value, reason, created_ms FROM revocations ORDER BY id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(RevocationRecord::try_from).collect()
}
