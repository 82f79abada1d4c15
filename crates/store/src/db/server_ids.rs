//! Server ID bindings (issue 16): the identity each ENRP Server ID was first proved by.

use identity::SpiffeId;

use super::{Conn, Error, Result, ms_to_i64, with_conn};

/// Binds `server_id` to `identity` unless it is bound already; returns the identity it
/// is bound to (the earlier one when there is one: a binding never changes).
pub async fn bind_server_id<C: Conn + ?Sized>(
    conn: &mut C,
    server_id: u32,
    identity: &SpiffeId,
    now_ms: u64,
) -> Result<SpiffeId> {
    if server_id == 0 {
        return Err(Error::Invalid {
            what: "server id",
            reason: "0 is not a valid Server ID",
        });
    }
    let now = ms_to_i64(now_ms, "time")?;
    with_conn!(
        conn,
        "INSERT INTO server_id_bindings (server_id, spiffe_id, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (server_id) DO NOTHING",
        |c, sql| sqlx::query(sql)
            .bind(i64::from(server_id))
            .bind(identity.as_str())
            .bind(now)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    let (bound,): (String,) = with_conn!(
        conn,
        "SELECT spiffe_id FROM server_id_bindings WHERE server_id = ?1",
        |c, sql| sqlx::query_as(sql)
            .bind(i64::from(server_id))
            .fetch_one(c)
            .await
    )?;
    SpiffeId::parse(&bound).map_err(|_| Error::Corrupt {
        table: "server_id_bindings",
        id: server_id.to_string(),
        reason: "invalid SPIFFE ID",
    })
}

/// Every Server ID binding, by Server ID.
pub async fn list_server_id_bindings<C: Conn + ?Sized>(
    conn: &mut C,
) -> Result<Vec<(u32, SpiffeId)>> {
    let rows: Vec<(i64, String)> = with_conn!(
        conn,
        "SELECT server_id, spiffe_id FROM server_id_bindings ORDER BY server_id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter()
        .map(|(sid, id)| {
            let corrupt = |reason| Error::Corrupt {
                table: "server_id_bindings",
                id: sid.to_string(),
                reason,
            };
            let sid = u32::try_from(sid).map_err(|_| corrupt("server id out of range"))?;
            let id = SpiffeId::parse(&id).map_err(|_| corrupt("invalid SPIFFE ID"))?;
            Ok((sid, id))
        })
        .collect()
}
