//! Default namespaces: the namespace an identity's requests without one go to.

use identity::{DefaultNamespace, IdentityPattern};

use super::{
    Conn, Error, Result, already_exists, check_namespace, i64_to_ms, ms_to_i64,
    namespaces::get_namespace, with_conn,
};

/// A stored default-namespace rule with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefaultNamespaceRow {
    /// Row id (stable; the admin API's `/v1/default-namespaces/{id}`).
    pub id: i64,
    /// The rule.
    pub rule: DefaultNamespace,
    /// When it was created (unix ms).
    pub created_ms: u64,
}

#[derive(sqlx::FromRow)]
struct DefaultNamespaceDbRow {
    id: i64,
    identity: String,
    namespace: String,
    created_ms: i64,
}

impl TryFrom<DefaultNamespaceDbRow> for DefaultNamespaceRow {
    type Error = Error;
    fn try_from(row: DefaultNamespaceDbRow) -> Result<Self> {
        let identity = IdentityPattern::parse(&row.identity).map_err(|_| Error::Corrupt {
            table: "default_namespaces",
            id: row.id.to_string(),
            reason: "invalid identity",
        })?;
        Ok(Self {
            id: row.id,
            rule: DefaultNamespace {
                identity,
                namespace: row.namespace,
            },
            created_ms: i64_to_ms(row.created_ms, "default_namespaces", &row.id)?,
        })
    }
}

/// Stores a default-namespace rule. [`Error::AlreadyExists`] if the identity pattern has
/// one (delete it first); [`Error::NotFound`] if the namespace does not exist.
pub async fn add_default_namespace<C: Conn + ?Sized>(
    conn: &mut C,
    rule: &DefaultNamespace,
    now_ms: u64,
) -> Result<DefaultNamespaceRow> {
    check_namespace(&rule.namespace)?;
    if get_namespace(&mut *conn, &rule.namespace).await?.is_none() {
        return Err(Error::NotFound {
            what: "namespace",
            key: rule.namespace.clone(),
        });
    }
    let now = ms_to_i64(now_ms, "time")?;
    super::limits::check_room(&mut *conn, super::limits::Table::DefaultNamespaces, now_ms).await?;
    let row: DefaultNamespaceDbRow = with_conn!(
        conn,
        "INSERT INTO default_namespaces (identity, namespace, created_ms) VALUES (?1, ?2, ?3)
         RETURNING id, identity, namespace, created_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(rule.identity.as_str())
            .bind(&rule.namespace)
            .bind(now)
            .fetch_one(c)
            .await
    )
    .map_err(already_exists("default namespace of", || {
        rule.identity.to_string()
    }))?;
    row.try_into()
}

/// Every default-namespace rule, oldest first (the order ties are broken in).
pub async fn list_default_namespaces<C: Conn + ?Sized>(
    conn: &mut C,
) -> Result<Vec<DefaultNamespaceRow>> {
    let rows: Vec<DefaultNamespaceDbRow> = with_conn!(
        conn,
        "SELECT id, identity, namespace, created_ms FROM default_namespaces ORDER BY id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(TryInto::try_into).collect()
}

/// Deletes a default-namespace rule and returns it. [`Error::NotFound`] if there is none
/// with this id.
pub async fn delete_default_namespace<C: Conn + ?Sized>(
    conn: &mut C,
    id: i64,
) -> Result<DefaultNamespaceRow> {
    let row: Option<DefaultNamespaceDbRow> = with_conn!(
        conn,
        "DELETE FROM default_namespaces WHERE id = ?1
         RETURNING id, identity, namespace, created_ms",
        |c, sql| sqlx::query_as(sql).bind(id).fetch_optional(c).await
    )?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "default namespace rule",
            key: id.to_string(),
        }),
    }
}
