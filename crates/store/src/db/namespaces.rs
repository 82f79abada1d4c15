//! Namespaces: created before pools are declared in them or PEs registered (ARCHITECTURE.md §6).

use super::{
    Conn, Error, Result, already_exists, check_namespace, i64_to_ms, ms_to_i64, with_conn,
};

/// A namespace row.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// When it was created (unix ms).
    pub created_ms: u64,
}

#[derive(sqlx::FromRow)]
struct NamespaceRow {
    name: String,
    created_ms: i64,
}

impl TryFrom<NamespaceRow> for Namespace {
    type Error = Error;
    fn try_from(row: NamespaceRow) -> Result<Self> {
        let created_ms = i64_to_ms(row.created_ms, "namespaces", &row.name)?;
        Ok(Self {
            name: row.name,
            created_ms,
        })
    }
}

/// Creates a namespace. [`Error::AlreadyExists`] if it exists.
pub async fn create_namespace<C: Conn + ?Sized>(
    conn: &mut C,
    name: &str,
    now_ms: u64,
) -> Result<Namespace> {
    check_namespace(name)?;
    let now = ms_to_i64(now_ms, "time")?;
    super::limits::check_room(&mut *conn, super::limits::Table::Namespaces, now_ms).await?;
    let row: NamespaceRow = with_conn!(
        conn,
        "INSERT INTO namespaces (name, created_ms) VALUES (?1, ?2) RETURNING name, created_ms",
        |c, sql| sqlx::query_as(sql).bind(name).bind(now).fetch_one(c).await
    )
    .map_err(already_exists("namespace", || name.to_owned()))?;
    row.try_into()
}

/// Every namespace, by name.
pub async fn list_namespaces<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<Namespace>> {
    let rows: Vec<NamespaceRow> = with_conn!(
        conn,
        "SELECT name, created_ms FROM namespaces ORDER BY name",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(Namespace::try_from).collect()
}

/// One namespace, or `None`.
pub async fn get_namespace<C: Conn + ?Sized>(
    conn: &mut C,
    name: &str,
) -> Result<Option<Namespace>> {
    check_namespace(name)?;
    let row: Option<NamespaceRow> = with_conn!(
        conn,
        "SELECT name, created_ms FROM namespaces WHERE name = ?1",
        |c, sql| sqlx::query_as(sql).bind(name).fetch_optional(c).await
    )?;
    row.map(Namespace::try_from).transpose()
}

/// Deletes a namespace and its declared pools. [`Error::NotFound`] if it does not exist.
/// Grants naming it stay (a namespace created again under the same name gets them back);
/// the caller removes its live pool elements from the handlespace.
pub async fn delete_namespace<C: Conn + ?Sized>(conn: &mut C, name: &str) -> Result<()> {
    check_namespace(name)?;
    // Refused while a default-namespace rule sends requests there (the rule goes first).
    let users: Vec<(String,)> = with_conn!(
        conn,
        "SELECT identity FROM default_namespaces WHERE namespace = ?1 ORDER BY id",
        |c, sql| sqlx::query_as(sql).bind(name).fetch_all(c).await
    )?;
    if let Some((identity,)) = users.into_iter().next() {
        return Err(Error::InUse {
            what: "namespace",
            key: name.to_owned(),
            by: format!("the default namespace of {identity}"),
        });
    }
    let affected = with_conn!(conn, "DELETE FROM namespaces WHERE name = ?1", |c, sql| {
        sqlx::query(sql)
            .bind(name)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    })?;
    if affected == 0 {
        return Err(Error::NotFound {
            what: "namespace",
            key: name.to_owned(),
        });
    }
    Ok(())
}
