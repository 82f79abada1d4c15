//! One store API over SQLite and PostgreSQL (docs/STORE.md).
//!
//! A store function takes `&mut C` for any [`Conn`]: a connection, a pooled connection or a
//! transaction of either backend, or the backend-neutral [`StoreConn`] and [`StoreTx`] of
//! [`super::Store::acquire`] and [`super::Store::begin`]. Callers that hold SQLite
//! types (`&mut tx` of `Store::begin`) compile unchanged.
//!
//! Inside a function, [`with_conn!`] runs the same query code on the backend's own
//! connection type: the SQL is written once with SQLite's `?N` placeholders and handed to
//! PostgreSQL with `$N` ([`postgres_sql`]); where the dialects differ, the function matches
//! on [`DbConn`] itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Postgres, Sqlite, Transaction};

/// Which database a store is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// An embedded SQLite file (the default: one registrar).
    Sqlite,
    /// A PostgreSQL server (a fleet of registrars sharing one store).
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

/// A borrowed connection of either backend: what a store function runs its queries on.
#[derive(Debug)]
pub enum DbConn<'c> {
    /// SQLite.
    Sqlite(&'c mut SqliteConnection),
    /// PostgreSQL.
    Postgres(&'c mut PgConnection),
}

/// Anything a store function can run on: a connection, pooled connection or transaction
/// of either backend.
pub trait Conn: Send {
    /// The underlying connection.
    fn db(&mut self) -> DbConn<'_>;
}

impl Conn for SqliteConnection {
    fn db(&mut self) -> DbConn<'_> {
        DbConn::Sqlite(self)
    }
}

impl Conn for PgConnection {
    fn db(&mut self) -> DbConn<'_> {
        DbConn::Postgres(self)
    }
}

impl Conn for PoolConnection<Sqlite> {
    fn db(&mut self) -> DbConn<'_> {
        DbConn::Sqlite(self)
    }
}

impl Conn for PoolConnection<Postgres> {
    fn db(&mut self) -> DbConn<'_> {
        DbConn::Postgres(self)
    }
}

impl Conn for Transaction<'_, Sqlite> {
    fn db(&mut self) -> DbConn<'_> {
        DbConn::Sqlite(self)
    }
}

impl Conn for Transaction<'_, Postgres> {
    fn db(&mut self) -> DbConn<'_> {
        DbConn::Postgres(self)
    }
}

/// A pooled connection of either backend ([`super::Store::acquire`]).
#[derive(Debug)]
pub enum StoreConn {
    /// SQLite.
    Sqlite(PoolConnection<Sqlite>),
    /// PostgreSQL.
    Postgres(PoolConnection<Postgres>),
}

impl StoreConn {
    /// The SQLite connection, or `None` on PostgreSQL: for what only SQLite has (pragmas,
    /// holding its write lock in a test).
    pub fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        match self {
            Self::Sqlite(c) => Some(c),
            Self::Postgres(_) => None,
        }
    }
}

impl Conn for StoreConn {
    fn db(&mut self) -> DbConn<'_> {
        match self {
            Self::Sqlite(c) => DbConn::Sqlite(c),
            Self::Postgres(c) => DbConn::Postgres(c),
        }
    }
}

/// A write transaction of either backend ([`super::Store::begin`]). Dropped without
/// [`StoreTx::commit`], it rolls back.
#[derive(Debug)]
pub enum StoreTx {
    /// SQLite (`BEGIN IMMEDIATE`).
    Sqlite(Transaction<'static, Sqlite>),
    /// PostgreSQL (holding [`super::WRITE_LOCK`]).
    Postgres(Transaction<'static, Postgres>),
}

impl StoreTx {
    /// Commits.
    pub async fn commit(self) -> super::Result<()> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(self) -> super::Result<()> {
        match self {
            Self::Sqlite(tx) => tx.rollback().await?,
            Self::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

impl Conn for StoreTx {
    fn db(&mut self) -> DbConn<'_> {
        match self {
            Self::Sqlite(tx) => DbConn::Sqlite(tx),
            Self::Postgres(tx) => DbConn::Postgres(tx),
        }
    }
}

/// Runs `$body` with `$c` bound to the backend's connection and `$sql` to the statement in
/// its dialect (`$sql_text` as written for SQLite, placeholders renumbered for PostgreSQL).
macro_rules! with_conn {
    ($conn:expr, $sql_text:expr, |$c:ident, $sql:ident| $body:expr) => {
        match $crate::db::Conn::db($conn) {
            $crate::db::DbConn::Sqlite($c) => {
                let $sql: &'static str = $sql_text;
                $body
            }
            $crate::db::DbConn::Postgres($c) => {
                let $sql: &'static str = $crate::db::postgres_sql($sql_text);
                $body
            }
        }
    };
}
pub(crate) use with_conn;

/// `sql` (SQLite's placeholders: `?N` or bare `?`) with PostgreSQL's `$N`. Statements are
/// `&'static str` (sqlx 0.9 takes only those), so each distinct statement is translated
/// once and kept for the life of the process: a fixed, small set (the store's own SQL).
/// The store's SQL has no `?` inside string literals; a `?` there would be renumbered too.
pub(crate) fn postgres_sql(sql: &'static str) -> &'static str {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    if !sql.contains('?') {
        return sql;
    }
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    cache
        .entry(sql)
        .or_insert_with(|| Box::leak(renumber(sql).into_boxed_str()))
}

fn renumber(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1u32;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '?' {
            out.push(ch);
            continue;
        }
        out.push('$');
        if chars.peek().is_some_and(char::is_ascii_digit) {
            // `?N`: the same number.
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
        } else {
            // Bare `?`: the next number, as SQLite counts them.
            out.push_str(&next.to_string());
            next += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_for_postgres() {
        assert_eq!(
            renumber("SELECT a FROM t WHERE b = ?1 AND c = ?12 OR d = ?1"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 OR d = $1"
        );
        assert_eq!(
            renumber("VALUES (?, ?), (?, ?)"),
            "VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(renumber("SELECT 1"), "SELECT 1");
        let sql = "DELETE FROM t WHERE x = ?1";
        assert!(
            std::ptr::eq(postgres_sql(sql), postgres_sql(sql)),
            "translated once"
        );
    }
}
