//! ENRP peers this registrar has known.

use identity::SpiffeId;

use super::{Conn, Error, Result, i64_to_ms, ms_to_i64, with_conn};

/// A configured or learnt ENRP peer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerRow {
    /// `host:port` as configured.
    pub address: String,
    /// The identity it proved, once connected.
    pub spiffe_id: Option<SpiffeId>,
    /// Its Server ID, once known.
    pub server_id: Option<u32>,
    /// When it was first recorded (unix ms).
    pub created_ms: u64,
    /// When it was last heard from (unix ms).
    pub last_seen_ms: Option<u64>,
}

#[derive(sqlx::FromRow)]
struct PeerDbRow {
    address: String,
    spiffe_id: Option<String>,
    server_id: Option<i64>,
    created_ms: i64,
    last_seen_ms: Option<i64>,
}

impl TryFrom<PeerDbRow> for PeerRow {
    type Error = Error;
    fn try_from(row: PeerDbRow) -> Result<Self> {
        let corrupt = |reason| Error::Corrupt {
            table: "peers",
            id: row.address.clone(),
            reason,
        };
        let spiffe_id = row
            .spiffe_id
            .as_deref()
            .map(|s| SpiffeId::parse(s).map_err(|_| corrupt("invalid SPIFFE ID")))
            .transpose()?;
        let server_id = row
            .server_id
            .map(|s| u32::try_from(s).map_err(|_| corrupt("server id out of range")))
            .transpose()?;
        let last_seen_ms = row
            .last_seen_ms
            .map(|t| i64_to_ms(t, "peers", &row.address))
            .transpose()?;
        Ok(Self {
            created_ms: i64_to_ms(row.created_ms, "peers", &row.address)?,
            address: row.address,
            spiffe_id,
            server_id,
            last_seen_ms,
        })
    }
}

/// Records a peer, or updates what is known of it (identity, Server ID, last seen).
pub async fn upsert_peer<C: Conn + ?Sized>(
    conn: &mut C,
    address: &str,
    spiffe_id: Option<&SpiffeId>,
    server_id: Option<u32>,
    seen_ms: u64,
) -> Result<PeerRow> {
    if address.is_empty() || address.len() > 255 || address.chars().any(char::is_whitespace) {
        return Err(Error::Invalid {
            what: "peer address",
            reason: "must be 1 to 255 bytes without spaces",
        });
    }
    if server_id == Some(0) {
        return Err(Error::Invalid {
            what: "server id",
            reason: "0 is not a valid Server ID",
        });
    }
    let now = ms_to_i64(seen_ms, "time")?;
    let row: PeerDbRow = with_conn!(
        conn,
        "INSERT INTO peers (address, spiffe_id, server_id, created_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (address) DO UPDATE SET
             spiffe_id = coalesce(excluded.spiffe_id, peers.spiffe_id),
             server_id = coalesce(excluded.server_id, peers.server_id),
             last_seen_ms = excluded.last_seen_ms
         RETURNING address, spiffe_id, server_id, created_ms, last_seen_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(address)
            .bind(spiffe_id.map(SpiffeId::as_str))
            .bind(server_id.map(i64::from))
            .bind(now)
            .fetch_one(c)
            .await
    )?;
    row.try_into()
}

/// Every peer, by address.
pub async fn list_peers<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<PeerRow>> {
    let rows: Vec<PeerDbRow> = with_conn!(
        conn,
        "SELECT address, spiffe_id, server_id, created_ms, last_seen_ms FROM peers
         ORDER BY address",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(PeerRow::try_from).collect()
}
