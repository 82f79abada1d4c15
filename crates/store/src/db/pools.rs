//! Pool declarations: a pool's policy and limits, stated before its PEs register.

use super::{
    Conn, Error, Result, check_namespace, check_pool_handle, i64_to_ms, ms_to_i64, with_conn,
};

/// A declared pool: limits and policy an operator set for a pool handle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolDecl {
    /// The namespace.
    pub namespace: String,
    /// The pool handle (1–32 bytes).
    pub handle: Vec<u8>,
    /// The required policy type (RFC 5356 number), or `None` for whatever the first
    /// registration declares.
    pub policy: Option<u32>,
    /// At most this many pool elements, or `None` for the registrar-wide limit.
    pub max_pes: Option<u32>,
    /// When it was declared (unix ms).
    pub created_ms: u64,
}

impl PoolDecl {
    /// A declaration without limits.
    pub fn new(namespace: impl Into<String>, handle: impl Into<Vec<u8>>) -> Self {
        Self {
            namespace: namespace.into(),
            handle: handle.into(),
            policy: None,
            max_pes: None,
            created_ms: 0,
        }
    }
}

#[derive(sqlx::FromRow)]
struct PoolRow {
    namespace: String,
    handle: Vec<u8>,
    policy: Option<i64>,
    max_pes: Option<i64>,
    created_ms: i64,
}

impl TryFrom<PoolRow> for PoolDecl {
    type Error = Error;
    fn try_from(row: PoolRow) -> Result<Self> {
        let key = format!("{}/{}", row.namespace, hex::encode(&row.handle));
        let corrupt = |reason| Error::Corrupt {
            table: "pools",
            id: key.clone(),
            reason,
        };
        let policy = row
            .policy
            .map(|p| u32::try_from(p).map_err(|_| corrupt("policy out of range")))
            .transpose()?;
        let max_pes = row
            .max_pes
            .map(|p| u32::try_from(p).map_err(|_| corrupt("max_pes out of range")))
            .transpose()?;
        Ok(Self {
            created_ms: i64_to_ms(row.created_ms, "pools", &key)?,
            namespace: row.namespace,
            handle: row.handle,
            policy,
            max_pes,
        })
    }
}

/// Declares a pool, or replaces the declaration of `(namespace, handle)`; `created_ms` of
/// `decl` is ignored and `now_ms` used. [`Error::NotFound`] if the namespace does not exist.
pub async fn put_pool<C: Conn + ?Sized>(
    conn: &mut C,
    decl: &PoolDecl,
    now_ms: u64,
) -> Result<PoolDecl> {
    check_namespace(&decl.namespace)?;
    check_pool_handle(&decl.handle)?;
    if decl.max_pes == Some(0) {
        return Err(Error::Invalid {
            what: "max_pes",
            reason: "must be at least 1",
        });
    }
    let now = ms_to_i64(now_ms, "time")?;
    // A new declaration takes a place; replacing one does not (limits.rs).
    if get_pool(&mut *conn, &decl.namespace, &decl.handle)
        .await?
        .is_none()
    {
        super::limits::check_room(&mut *conn, super::limits::Table::PoolDeclarations, now_ms)
            .await?;
    }
    let row: Option<PoolRow> = with_conn!(
        conn,
        "INSERT INTO pools (namespace, handle, policy, max_pes, created_ms)
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM namespaces WHERE name = ?1)
         ON CONFLICT (namespace, handle) DO UPDATE
             SET policy = excluded.policy, max_pes = excluded.max_pes
         RETURNING namespace, handle, policy, max_pes, created_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(&decl.namespace)
            .bind(&decl.handle)
            .bind(decl.policy.map(i64::from))
            .bind(decl.max_pes.map(i64::from))
            .bind(now)
            .fetch_optional(c)
            .await
    )?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "namespace",
            key: decl.namespace.clone(),
        }),
    }
}

/// The declared pools of a namespace, by handle.
pub async fn list_pools<C: Conn + ?Sized>(conn: &mut C, namespace: &str) -> Result<Vec<PoolDecl>> {
    check_namespace(namespace)?;
    let rows: Vec<PoolRow> = with_conn!(
        conn,
        "SELECT namespace, handle, policy, max_pes, created_ms FROM pools
         WHERE namespace = ?1 ORDER BY handle",
        |c, sql| sqlx::query_as(sql).bind(namespace).fetch_all(c).await
    )?;
    rows.into_iter().map(PoolDecl::try_from).collect()
}

/// Every declared pool of every namespace, by namespace and handle (the shared control
/// plane's snapshot, [`super::Snapshot`]).
pub async fn list_all_pools<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<PoolDecl>> {
    let rows: Vec<PoolRow> = with_conn!(
        conn,
        "SELECT namespace, handle, policy, max_pes, created_ms FROM pools
         ORDER BY namespace, handle",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(PoolDecl::try_from).collect()
}

/// One declared pool, or `None`.
pub async fn get_pool<C: Conn + ?Sized>(
    conn: &mut C,
    namespace: &str,
    handle: &[u8],
) -> Result<Option<PoolDecl>> {
    check_namespace(namespace)?;
    check_pool_handle(handle)?;
    let row: Option<PoolRow> = with_conn!(
        conn,
        "SELECT namespace, handle, policy, max_pes, created_ms FROM pools
         WHERE namespace = ?1 AND handle = ?2",
        |c, sql| sqlx::query_as(sql)
            .bind(namespace)
            .bind(handle)
            .fetch_optional(c)
            .await
    )?;
    row.map(PoolDecl::try_from).transpose()
}

/// Deletes a pool declaration. [`Error::NotFound`] if there is none.
pub async fn delete_pool<C: Conn + ?Sized>(
    conn: &mut C,
    namespace: &str,
    handle: &[u8],
) -> Result<()> {
    check_namespace(namespace)?;
    check_pool_handle(handle)?;
    let done = with_conn!(
        conn,
        "DELETE FROM pools WHERE namespace = ?1 AND handle = ?2",
        |c, sql| sqlx::query(sql)
            .bind(namespace)
            .bind(handle)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    if done == 0 {
        return Err(Error::NotFound {
            what: "pool",
            key: format!("{namespace}/{}", hex::encode(handle)),
        });
    }
    Ok(())
}
