//! Copying a registrar's SQLite store into an empty PostgreSQL database, row for row
//! (`enrpd store copy`, issue 19 item 6; docs/STORE.md "Moving a registrar to PostgreSQL").
//!
//! Everything is copied in one target transaction with its ids, the audit log byte for
//! byte (chain, `prev_hash`, `hash`, archive anchors); then the target's audit chains are
//! verified against the source's (same ids, same head hashes) before the commit. A target
//! that holds any row is refused: two registrars' stores are never merged.

use sqlx::Row as _;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;

use super::{Error, Result, Store, StoreTx};
use crate::audit::{self, VerifyReport};

/// How a column is stored: the same three kinds on both backends (docs/STORE.md's
/// dialect table: `INTEGER`/`BIGINT`, `TEXT`, `BLOB`/`BYTEA`; booleans are 0/1 integers
/// on both, with the same `CHECK`s).
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bytes,
}

use Kind::{Bytes, Int, Text};

/// Every table of the schema (version 6) but sqlx's own, parents before children (the
/// foreign keys of `pools` and `default_namespaces`), each with all its columns. The
/// test `every_table_and_column_of_the_schema_is_copied` fails when a migration adds a
/// table or column that is not listed here.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    ("namespaces", &[("name", Text), ("created_ms", Int)]),
    (
        "pools",
        &[
            ("namespace", Text),
            ("handle", Bytes),
            ("policy", Int),
            ("max_pes", Int),
            ("created_ms", Int),
        ],
    ),
    (
        "trust_domains",
        &[
            ("name", Text),
            ("is_local", Int),
            ("roots_pem", Text),
            ("crls_pem", Text),
            ("created_ms", Int),
        ],
    ),
    (
        "grants",
        &[
            ("id", Int),
            ("identity", Text),
            ("namespace", Text),
            ("pools", Bytes),
            ("actions", Text),
            ("labels", Text),
            ("created_ms", Int),
        ],
    ),
    (
        "revocations",
        &[
            ("id", Int),
            ("kind", Text),
            ("trust_domain", Text),
            ("value", Text),
            ("reason", Text),
            ("created_ms", Int),
        ],
    ),
    (
        "admin_tokens",
        &[
            ("id", Text),
            ("name", Text),
            ("role", Text),
            ("hash", Text),
            ("created_ms", Int),
            ("expires_ms", Int),
            ("revoked_ms", Int),
        ],
    ),
    (
        "default_namespaces",
        &[
            ("id", Int),
            ("identity", Text),
            ("namespace", Text),
            ("created_ms", Int),
        ],
    ),
    (
        "peers",
        &[
            ("address", Text),
            ("spiffe_id", Text),
            ("server_id", Int),
            ("created_ms", Int),
            ("last_seen_ms", Int),
        ],
    ),
    (
        "server_id_bindings",
        &[("server_id", Int), ("spiffe_id", Text), ("created_ms", Int)],
    ),
    (
        "audit_events",
        &[
            ("id", Int),
            ("chain", Text),
            ("time_ms", Int),
            ("actor", Text),
            ("serial", Text),
            ("remote", Text),
            ("namespace", Text),
            ("pool", Bytes),
            ("pe_id", Int),
            ("action", Text),
            ("outcome", Text),
            ("detail", Text),
            ("prev_hash", Bytes),
            ("hash", Bytes),
        ],
    ),
    (
        "audit_archives",
        &[
            ("last_id", Int),
            ("chain", Text),
            ("first_id", Int),
            ("first_prev_hash", Bytes),
            ("last_hash", Bytes),
            ("time_ms", Int),
            ("file", Text),
            ("sha256", Bytes),
        ],
    ),
];

/// Tables whose `id` is an identity column on PostgreSQL: after the copy each sequence is
/// set past the highest copied id, so the next insert does not collide.
const IDENTITY_TABLES: &[&str] = &["grants", "revocations", "default_namespaces"];

/// Rows read and inserted per statement: at most 14 columns × 500 rows = 7,000 bind
/// parameters, under PostgreSQL's limit of 65,535, and bounded memory whatever the size
/// of the audit log.
const PAGE: i64 = 500;

/// What [`copy_sqlite_to_postgres`] copied.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CopyReport {
    /// Rows per table, in copy order.
    pub rows: Vec<(&'static str, u64)>,
    /// The audit chains of the target, identical to the source's (same ids and heads).
    pub chains: Vec<VerifyReport>,
}

enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// Copies the SQLite store `from` into the PostgreSQL store `to` (migrated, and empty:
/// any row in a copied table refuses it), in one transaction of each: the source's
/// `BEGIN IMMEDIATE` holds SQLite's write lock for the whole copy, so nothing is written
/// to it meanwhile (a registrar still running on it waits, then fails closed). The
/// source's audit chains must be intact; the target's, verified inside its transaction,
/// must have the same ids and heads, else it rolls back. Nothing is written to `from`.
pub async fn copy_sqlite_to_postgres(from: &Store, to: &Store) -> Result<CopyReport> {
    let source = from.begin().await.map_err(|err| match err {
        Error::Sqlx(sqlx::Error::Database(db)) if db.message().contains("locked") => Error::Copy(
            "the SQLite store is locked by another writer (is the registrar running?): \
                 stop it first"
                .into(),
        ),
        err => err,
    })?;
    let (StoreTx::Sqlite(mut src), StoreTx::Postgres(mut dst)) = (source, to.begin().await?) else {
        return Err(Error::Copy(
            "the copy goes from a SQLite store to a PostgreSQL store".into(),
        ));
    };
    let source_chains = audit::verify(&mut *src).await?;
    if let Some((chain, link)) = source_chains
        .iter()
        .find_map(|r| Some((&r.chain, r.broken.as_ref()?)))
    {
        return Err(Error::Copy(format!(
            "the source's audit chain {chain} is broken at record {} ({}): nothing copied; \
             `enrpd audit verify` shows it",
            link.id, link.reason
        )));
    }
    for (table, _) in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
        let used: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *dst)
            .await?;
        if used {
            return Err(Error::Copy(format!(
                "the target database is not empty (table {table} has rows): rsp never \
                 merges two registrars' stores. Copy into a new database; to add this \
                 registrar to the fleet that uses it instead, run `enrpd init --join` \
                 and keep its old audit log as a file with `enrpd audit archive`"
            )));
        }
    }
    // The anchor trigger checks that an anchor names rows present in audit_events; the
    // archived rows were deleted at the source, so it is off for this transaction only
    // (ALTER TABLE is transactional). The anchors are checked below instead: `verify`
    // requires them to continue one another and the live rows to continue them.
    sqlx::query("ALTER TABLE audit_archives DISABLE TRIGGER audit_archives_continue")
        .execute(&mut *dst)
        .await?;
    let mut rows = Vec::with_capacity(TABLES.len());
    for (table, columns) in TABLES {
        rows.push((
            *table,
            copy_table(&mut src, &mut dst, table, columns).await?,
        ));
    }
    sqlx::query("ALTER TABLE audit_archives ENABLE TRIGGER audit_archives_continue")
        .execute(&mut *dst)
        .await?;
    for table in IDENTITY_TABLES {
        let sql =
            format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *dst)
            .await?;
    }
    let target_chains = audit::verify(&mut *dst).await?;
    let key = |r: &VerifyReport| (r.chain.clone(), r.last_id, r.head, r.checked, r.broken);
    if source_chains
        .iter()
        .map(key)
        .ne(target_chains.iter().map(key))
    {
        return Err(Error::Copy(format!(
            "the copied audit log does not verify as the source's (source: {}; copy: {}): \
             rolled back, nothing written",
            heads(&source_chains),
            heads(&target_chains)
        )));
    }
    dst.commit().await?;
    // Read-only at the source: its transaction ends without a write.
    src.rollback().await?;
    Ok(CopyReport {
        rows,
        chains: target_chains,
    })
}

fn heads(chains: &[VerifyReport]) -> String {
    let list: Vec<String> = chains
        .iter()
        .map(|r| {
            format!(
                "{} {} records to {} head {}",
                r.chain,
                r.checked,
                r.last_id,
                r.head_hex()
            )
        })
        .collect();
    if list.is_empty() {
        "no records".into()
    } else {
        list.join(", ")
    }
}

/// Copies one table in pages of [`PAGE`] rows, in rowid order (the id for the id-keyed
/// tables, so the audit log is inserted in chain order); returns the rows copied.
async fn copy_table(
    src: &mut SqliteConnection,
    dst: &mut PgConnection,
    table: &str,
    columns: &[(&str, Kind)],
) -> Result<u64> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let select = format!(
        "SELECT rowid, {} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        names.join(", ")
    );
    let (mut after, mut copied) = (0_i64, 0_u64);
    loop {
        let page = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(after)
            .bind(PAGE)
            .fetch_all(&mut *src)
            .await?;
        let Some(last) = page.last() else {
            return Ok(copied);
        };
        after = last.try_get(0)?;
        let mut values = Vec::with_capacity(page.len() * columns.len());
        for row in &page {
            for (i, (_, kind)) in columns.iter().enumerate() {
                values.push(match kind {
                    Int => Value::Int(row.try_get(i + 1)?),
                    Text => Value::Text(row.try_get(i + 1)?),
                    Bytes => Value::Bytes(row.try_get(i + 1)?),
                });
            }
        }
        let tuples: Vec<String> = (0..page.len())
            .map(|r| {
                let params: Vec<String> = (1..=columns.len())
                    .map(|c| format!("${}", r * columns.len() + c))
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            names.join(", "),
            tuples.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for value in values {
            query = match value {
                Value::Int(v) => query.bind(v),
                Value::Text(v) => query.bind(v),
                Value::Bytes(v) => query.bind(v),
            };
        }
        query.execute(&mut *dst).await?;
        copied += page.len() as u64;
    }
}

#[cfg(test)]
mod tests;
