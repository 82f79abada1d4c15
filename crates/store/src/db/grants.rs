//! Grants: which identity may do what on which namespaces and pools (default deny).

use std::str::FromStr;

use identity::{
    Action, Actions, Grant, IdentityPattern, LabelRules, NamespacePattern, PoolPattern,
};

use super::{
    Conn, Error, Result, already_exists, check_namespace, i64_to_ms, ms_to_i64, with_conn,
};

/// A stored grant with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantRow {
    /// Row id (stable; the admin API's `/v1/grants/{id}`).
    pub id: i64,
    /// The grant.
    pub grant: Grant,
    /// When it was created (unix ms).
    pub created_ms: u64,
}

#[derive(sqlx::FromRow)]
struct GrantDbRow {
    id: i64,
    identity: String,
    namespace: String,
    pools: Vec<u8>,
    actions: String,
    labels: Option<String>,
    created_ms: i64,
}

/// Label rules as stored (migrations/0009): one `key=pattern` per line; `None` is NULL.
fn labels_to_text(labels: Option<&LabelRules>) -> Option<String> {
    labels.map(|rules| {
        rules
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn labels_from_text(
    text: Option<&str>,
) -> std::result::Result<Option<LabelRules>, identity::Error> {
    text.map(|t| LabelRules::parse(t.split('\n').filter(|line| !line.is_empty())))
        .transpose()
}

fn actions_to_text(actions: Actions) -> String {
    actions
        .iter()
        .map(Action::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl TryFrom<GrantDbRow> for GrantRow {
    type Error = Error;
    fn try_from(row: GrantDbRow) -> Result<Self> {
        let corrupt = |reason| Error::Corrupt {
            table: "grants",
            id: row.id.to_string(),
            reason,
        };
        let identity =
            IdentityPattern::parse(&row.identity).map_err(|_| corrupt("invalid identity"))?;
        let namespace = NamespacePattern::from_str(&row.namespace)
            .map_err(|_| corrupt("invalid namespace pattern"))?;
        let pools = PoolPattern::new(row.pools.clone()).map_err(|_| corrupt("invalid pools"))?;
        let actions = row
            .actions
            .split(',')
            .map(Action::from_str)
            .collect::<Result<Actions, _>>()
            .map_err(|_| corrupt("invalid actions"))?;
        let labels =
            labels_from_text(row.labels.as_deref()).map_err(|_| corrupt("invalid label rules"))?;
        Ok(Self {
            id: row.id,
            grant: Grant {
                identity,
                namespace,
                pools,
                actions,
                labels,
            },
            created_ms: i64_to_ms(row.created_ms, "grants", &row.id)?,
        })
    }
}

/// Stores a grant. [`Error::AlreadyExists`] if a grant with the same identity, namespace
/// and pool patterns exists (delete it and add the new actions instead);
/// [`Error::Invalid`] if it has no action.
pub async fn add_grant<C: Conn + ?Sized>(
    conn: &mut C,
    grant: &Grant,
    now_ms: u64,
) -> Result<GrantRow> {
    if grant.actions.is_empty() {
        return Err(Error::Invalid {
            what: "grant",
            reason: "grants no action",
        });
    }
    if let NamespacePattern::Exact(name) = &grant.namespace {
        check_namespace(name)?;
    }
    let now = ms_to_i64(now_ms, "time")?;
    super::limits::check_room(&mut *conn, super::limits::Table::Grants, now_ms).await?;
    let row: GrantDbRow = with_conn!(
        conn,
        "INSERT INTO grants (identity, namespace, pools, actions, labels, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         RETURNING id, identity, namespace, pools, actions, labels, created_ms",
        |c, sql| sqlx::query_as(sql)
            .bind(grant.identity.as_str())
            .bind(grant.namespace.to_string())
            .bind(grant.pools.as_bytes())
            .bind(actions_to_text(grant.actions))
            .bind(labels_to_text(grant.labels.as_ref()))
            .bind(now)
            .fetch_one(c)
            .await
    )
    .map_err(already_exists("grant", || {
        format!("{} {} {}", grant.identity, grant.namespace, grant.pools)
    }))?;
    row.try_into()
}

/// Every grant, by id.
pub async fn list_grants<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<GrantRow>> {
    let rows: Vec<GrantDbRow> = with_conn!(
        conn,
        "SELECT id, identity, namespace, pools, actions, labels, created_ms FROM grants ORDER BY id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )?;
    rows.into_iter().map(GrantRow::try_from).collect()
}

/// Deletes a grant and returns it (the caller removes the registrations it allowed).
/// [`Error::NotFound`] if there is none with this id.
pub async fn delete_grant<C: Conn + ?Sized>(conn: &mut C, id: i64) -> Result<GrantRow> {
    let row: Option<GrantDbRow> = with_conn!(
        conn,
        "DELETE FROM grants WHERE id = ?1
         RETURNING id, identity, namespace, pools, actions, labels, created_ms",
        |c, sql| sqlx::query_as(sql).bind(id).fetch_optional(c).await
    )?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "grant",
            key: id.to_string(),
        }),
    }
}
