//! The registrar's store: SQLite through sqlx, in the data directory (ARCHITECTURE.md §6).
//!
//! [`Store::open`] creates or opens `<data>/rsp.db` in WAL mode and runs the migrations of
//! the repository's `migrations/` directory. The query functions take a
//! `&mut SqliteConnection`, so that a caller can put a change and its audit record
//! ([`crate::audit::append_in`]) in one transaction ([`Store::begin`]); a pooled connection
//! from [`Store::acquire`] works the same way for reads.
//!
//! Every function validates its input before it touches the database: bad input returns a
//! typed [`Error`] and changes nothing. Times are unix milliseconds given by the caller (the
//! store has no clock).
//!
//! Queries are runtime-checked (`sqlx::query_as` with static SQL); each has a test against a
//! migrated database in `db/tests.rs`.

mod tokens;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use identity::{
    Action, Actions, DefaultNamespace, Grant, IdentityPattern, NamespacePattern, PoolPattern,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::{Serial, SpiffeId, TrustDomain};

pub use tokens::{
    NewToken, Role, TokenHasher, TokenInfo, TokenRejection, create_token, list_tokens,
    revoke_token, verify_token,
};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "rsp.db";

/// Longest namespace name (spec §12.9, parameter 0x8100).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Longest pool handle (spec §3.5).
pub const MAX_POOL_HANDLE_LEN: usize = 32;

/// Longest free-text field (revocation reason, token name, audit detail), in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Errors of the store and the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite or the connection pool failed (I/O, lock timeout, constraint not covered
    /// by a more specific variant).
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed, or the database was written by a newer rsp.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An argument was refused before anything was written.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument (`namespace`, `pool handle`, `token name`...).
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The object to create exists already.
    #[error("{what} {key:?} already exists")]
    AlreadyExists {
        /// The kind of object.
        what: &'static str,
        /// Its key, as text.
        key: String,
    },
    /// The object to read, change or delete does not exist.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// The kind of object.
        what: &'static str,
        /// Its key, as text.
        key: String,
    },
    /// The object is still referred to and cannot be deleted.
    #[error("{what} {key:?} is in use: it is {by}")]
    InUse {
        /// The kind of object.
        what: &'static str,
        /// Its key, as text.
        key: String,
        /// What refers to it.
        by: String,
    },
    /// A well-formed request the current state cannot carry out (e.g. an audit archive
    /// cut past the head of the log, or with nothing left to archive): it may succeed
    /// later, so it is not invalid input (the admin API answers 409).
    #[error("{what}: {reason}")]
    Conflict {
        /// Which argument.
        what: &'static str,
        /// Why not now.
        reason: &'static str,
    },
    /// A stored row does not decode: the database was edited outside rsp or is damaged.
    #[error("corrupt row {id} in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key, as text.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A bearer token was refused (the admin API answers 401 whatever the reason).
    #[error("token refused: {0}")]
    Token(TokenRejection),
    /// Hashing failed or the operating system's random generator failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
    /// The audit writer has stopped (after [`crate::audit::AuditLog::shutdown`], or after a
    /// commit failed repeatedly: the log fails closed and refuses further records).
    #[error("audit log is closed")]
    AuditClosed,
    /// An audit archive could not be written or read, or does not verify
    /// ([`crate::audit::archive`]).
    #[error("audit archive {file}: {reason}")]
    Archive {
        /// The archive file.
        file: String,
        /// What went wrong (with the line, when reading).
        reason: String,
    },
    /// The audit writer could not commit a batch after retrying; the log is now closed.
    #[error("audit log write failed: {reason}")]
    AuditWrite {
        /// SQLite's message.
        reason: String,
    },
}

/// Result of the store and audit functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How hard SQLite works to make a commit durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=FULL`: every commit is fsynced before it returns, so an acknowledged
    /// audit record survives a power loss. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode commits are fsynced only at checkpoints; a power
    /// loss (not a process crash) may lose the last commits. For benchmarks and tests.
    ///
    /// Measured with `benches/audit.rs` (2 shared cores, November 2026): one commit at a
    /// time, FULL ≈ 460 commits/s vs NORMAL ≈ 4,000/s; with 64 concurrent `BeforeReply`
    /// callers (group commit, ~33 records a transaction) FULL ≈ 6,500 records/s vs
    /// NORMAL ≈ 11,900/s; batched records ≈ 44,000/s either way.
    Normal,
}

/// Options of [`Store::open`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Durability of commits. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// Connections in the pool (readers; SQLite allows one writer at a time). Default 4.
    pub max_connections: u32,
    /// How long a writer waits for SQLite's write lock. Default 5 s.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The store: a pool of SQLite connections to one migrated database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

/// The migrations of the repository's `migrations/` directory, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

impl Store {
    /// Opens (creating if needed) `data_dir/rsp.db`, creating `data_dir` (mode 0700 on Unix)
    /// if it does not exist, and runs pending migrations.
    pub async fn open(data_dir: &Path, options: &StoreOptions) -> Result<Self> {
        create_private_dir(data_dir)?;
        Self::open_file(&data_dir.join(DB_FILE), options).await
    }

    /// Opens (creating if needed) the database file `path` and runs pending migrations.
    pub async fn open_file(path: &Path, options: &StoreOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout)
            // Performance only, never durability. The audit writer inserts many rows per
            // statement, so each statement keeps a statement journal (to undo itself
            // alone); on disk (the default past 64 KiB) that was ~5 % of the registrar's
            // CPU in page copies and ext4 writes of a file nobody reads back.
            .pragma("temp_store", "memory")
            // A group commit of ~1,000 records outgrew SQLite's default 2 MiB page cache,
            // which then spills dirty pages mid-transaction (pagerStress). At most
            // 8 MiB per connection, filled only as pages are used.
            .pragma("cache_size", "-8192");
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// A migrated in-memory database (one connection, lost when the store is dropped). For
    /// tests of code that uses the store.
    pub async fn in_memory() -> Result<Self> {
        let connect = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // One connection that never expires: every connection to `:memory:` is its own
        // database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A connection from the pool, for reads or single statements.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>> {
        Ok(self.pool.acquire().await?)
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`: takes the write lock at once, so a
    /// read-then-write inside it cannot fail with a stale snapshot).
    pub async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes every connection (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| Error::DataDir {
        path: dir.to_owned(),
        source,
    })
}

/// Whether `err` is a UNIQUE or PRIMARY KEY violation.
fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(crate) fn ms_to_i64(ms: u64, what: &'static str) -> Result<i64> {
    i64::try_from(ms).map_err(|_| Error::Invalid {
        what,
        reason: "time is past the year 292 million",
    })
}

fn i64_to_ms(ms: i64, table: &'static str, id: &dyn fmt::Display) -> Result<u64> {
    u64::try_from(ms).map_err(|_| Error::Corrupt {
        table,
        id: id.to_string(),
        reason: "negative time",
    })
}

fn check_text(text: &str, what: &'static str) -> Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::Invalid {
            what,
            reason: "longer than 4096 bytes",
        });
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::Invalid {
            what,
            reason: "contains control characters",
        });
    }
    Ok(())
}

/// Checks a namespace name: 1–63 bytes of `a-z 0-9 - .` (spec §12.9).
pub fn check_namespace(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAMESPACE_LEN {
        return Err(Error::Invalid {
            what: "namespace",
            reason: "must be 1 to 63 bytes",
        });
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(Error::Invalid {
            what: "namespace",
            reason: "only a-z, 0-9, '-' and '.' are allowed",
        });
    }
    Ok(())
}

fn check_pool_handle(handle: &[u8]) -> Result<()> {
    if handle.is_empty() || handle.len() > MAX_POOL_HANDLE_LEN {
        return Err(Error::Invalid {
            what: "pool handle",
            reason: "must be 1 to 32 bytes",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Namespaces

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
pub async fn create_namespace(
    conn: &mut SqliteConnection,
    name: &str,
    now_ms: u64,
) -> Result<Namespace> {
    check_namespace(name)?;
    let now = ms_to_i64(now_ms, "time")?;
    let row: NamespaceRow = sqlx::query_as(
        "INSERT INTO namespaces (name, created_ms) VALUES (?1, ?2) RETURNING name, created_ms",
    )
    .bind(name)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|err| {
        if is_unique_violation(&err) {
            Error::AlreadyExists {
                what: "namespace",
                key: name.to_owned(),
            }
        } else {
            err.into()
        }
    })?;
    row.try_into()
}

/// Every namespace, by name.
pub async fn list_namespaces(conn: &mut SqliteConnection) -> Result<Vec<Namespace>> {
    let rows: Vec<NamespaceRow> =
        sqlx::query_as("SELECT name, created_ms FROM namespaces ORDER BY name")
            .fetch_all(conn)
            .await?;
    rows.into_iter().map(Namespace::try_from).collect()
}

/// One namespace, or `None`.
pub async fn get_namespace(conn: &mut SqliteConnection, name: &str) -> Result<Option<Namespace>> {
    check_namespace(name)?;
    let row: Option<NamespaceRow> =
        sqlx::query_as("SELECT name, created_ms FROM namespaces WHERE name = ?1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    row.map(Namespace::try_from).transpose()
}

/// Deletes a namespace and its declared pools. [`Error::NotFound`] if it does not exist.
/// Grants naming it stay (a namespace created again under the same name gets them back);
/// the caller removes its live pool elements from the handlespace.
pub async fn delete_namespace(conn: &mut SqliteConnection, name: &str) -> Result<()> {
    check_namespace(name)?;
    // Refused while a default-namespace rule sends requests there (the rule goes first).
    let users: Vec<(String,)> =
        sqlx::query_as("SELECT identity FROM default_namespaces WHERE namespace = ?1 ORDER BY id")
            .bind(name)
            .fetch_all(&mut *conn)
            .await?;
    if let Some((identity,)) = users.into_iter().next() {
        return Err(Error::InUse {
            what: "namespace",
            key: name.to_owned(),
            by: format!("the default namespace of {identity}"),
        });
    }
    let done = sqlx::query("DELETE FROM namespaces WHERE name = ?1")
        .bind(name)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound {
            what: "namespace",
            key: name.to_owned(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Pools

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
        let key = format!("{}/{}", row.namespace, hex(&row.handle));
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
pub async fn put_pool(
    conn: &mut SqliteConnection,
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
    let row: Option<PoolRow> = sqlx::query_as(
        "INSERT INTO pools (namespace, handle, policy, max_pes, created_ms)
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM namespaces WHERE name = ?1)
         ON CONFLICT (namespace, handle) DO UPDATE
             SET policy = excluded.policy, max_pes = excluded.max_pes
         RETURNING namespace, handle, policy, max_pes, created_ms",
    )
    .bind(&decl.namespace)
    .bind(&decl.handle)
    .bind(decl.policy.map(i64::from))
    .bind(decl.max_pes.map(i64::from))
    .bind(now)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "namespace",
            key: decl.namespace.clone(),
        }),
    }
}

/// The declared pools of a namespace, by handle.
pub async fn list_pools(conn: &mut SqliteConnection, namespace: &str) -> Result<Vec<PoolDecl>> {
    check_namespace(namespace)?;
    let rows: Vec<PoolRow> = sqlx::query_as(
        "SELECT namespace, handle, policy, max_pes, created_ms FROM pools
         WHERE namespace = ?1 ORDER BY handle",
    )
    .bind(namespace)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(PoolDecl::try_from).collect()
}

/// One declared pool, or `None`.
pub async fn get_pool(
    conn: &mut SqliteConnection,
    namespace: &str,
    handle: &[u8],
) -> Result<Option<PoolDecl>> {
    check_namespace(namespace)?;
    check_pool_handle(handle)?;
    let row: Option<PoolRow> = sqlx::query_as(
        "SELECT namespace, handle, policy, max_pes, created_ms FROM pools
         WHERE namespace = ?1 AND handle = ?2",
    )
    .bind(namespace)
    .bind(handle)
    .fetch_optional(conn)
    .await?;
    row.map(PoolDecl::try_from).transpose()
}

/// Deletes a pool declaration. [`Error::NotFound`] if there is none.
pub async fn delete_pool(
    conn: &mut SqliteConnection,
    namespace: &str,
    handle: &[u8],
) -> Result<()> {
    check_namespace(namespace)?;
    check_pool_handle(handle)?;
    let done = sqlx::query("DELETE FROM pools WHERE namespace = ?1 AND handle = ?2")
        .bind(namespace)
        .bind(handle)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound {
            what: "pool",
            key: format!("{namespace}/{}", hex(handle)),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Trust domains

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
/// [`crate::DomainBundle::from_pem`]) before. [`Error::AlreadyExists`] if the domain is
/// stored, or if `is_local` and a local domain exists.
pub async fn add_trust_domain(
    conn: &mut SqliteConnection,
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
    let row: DomainRow = sqlx::query_as(
        "INSERT INTO trust_domains (name, is_local, roots_pem, crls_pem, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         RETURNING name, is_local, roots_pem, crls_pem, created_ms",
    )
    .bind(name.as_str())
    .bind(i64::from(is_local))
    .bind(roots_pem)
    .bind(crls_pem)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|err| {
        if is_unique_violation(&err) {
            Error::AlreadyExists {
                what: "trust domain",
                key: name.to_string(),
            }
        } else {
            err.into()
        }
    })?;
    row.try_into()
}

/// Every stored trust domain, the local one first.
pub async fn list_trust_domains(conn: &mut SqliteConnection) -> Result<Vec<TrustDomainRow>> {
    let rows: Vec<DomainRow> = sqlx::query_as(
        "SELECT name, is_local, roots_pem, crls_pem, created_ms FROM trust_domains
         ORDER BY is_local DESC, name",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(TrustDomainRow::try_from).collect()
}

/// Replaces the CRLs of a stored trust domain. [`Error::NotFound`] if it is not stored.
pub async fn set_trust_domain_crls(
    conn: &mut SqliteConnection,
    name: &TrustDomain,
    crls_pem: Option<&str>,
) -> Result<()> {
    if crls_pem.is_some_and(|c| c.len() > 16 << 20) {
        return Err(Error::Invalid {
            what: "crls",
            reason: "larger than 16 MiB",
        });
    }
    let done = sqlx::query("UPDATE trust_domains SET crls_pem = ?2 WHERE name = ?1")
        .bind(name.as_str())
        .bind(crls_pem)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound {
            what: "trust domain",
            key: name.to_string(),
        });
    }
    Ok(())
}

/// Removes a federated trust domain. [`Error::NotFound`] if it is not stored;
/// [`Error::Invalid`] for the local domain, which cannot be removed.
pub async fn remove_trust_domain(conn: &mut SqliteConnection, name: &TrustDomain) -> Result<()> {
    let local: Option<(i64,)> =
        sqlx::query_as("SELECT is_local FROM trust_domains WHERE name = ?1")
            .bind(name.as_str())
            .fetch_optional(&mut *conn)
            .await?;
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
            sqlx::query("DELETE FROM trust_domains WHERE name = ?1 AND is_local = 0")
                .bind(name.as_str())
                .execute(conn)
                .await?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Grants

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
    created_ms: i64,
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
        Ok(Self {
            id: row.id,
            grant: Grant {
                identity,
                namespace,
                pools,
                actions,
            },
            created_ms: i64_to_ms(row.created_ms, "grants", &row.id)?,
        })
    }
}

/// Stores a grant. [`Error::AlreadyExists`] if a grant with the same identity, namespace
/// and pool patterns exists (delete it and add the new actions instead);
/// [`Error::Invalid`] if it has no action.
pub async fn add_grant(
    conn: &mut SqliteConnection,
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
    let row: GrantDbRow = sqlx::query_as(
        "INSERT INTO grants (identity, namespace, pools, actions, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         RETURNING id, identity, namespace, pools, actions, created_ms",
    )
    .bind(grant.identity.as_str())
    .bind(grant.namespace.to_string())
    .bind(grant.pools.as_bytes())
    .bind(actions_to_text(grant.actions))
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|err| {
        if is_unique_violation(&err) {
            Error::AlreadyExists {
                what: "grant",
                key: format!("{} {} {}", grant.identity, grant.namespace, grant.pools),
            }
        } else {
            err.into()
        }
    })?;
    row.try_into()
}

/// Every grant, by id.
pub async fn list_grants(conn: &mut SqliteConnection) -> Result<Vec<GrantRow>> {
    let rows: Vec<GrantDbRow> = sqlx::query_as(
        "SELECT id, identity, namespace, pools, actions, created_ms FROM grants ORDER BY id",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(GrantRow::try_from).collect()
}

/// Deletes a grant and returns it (the caller removes the registrations it allowed).
/// [`Error::NotFound`] if there is none with this id.
pub async fn delete_grant(conn: &mut SqliteConnection, id: i64) -> Result<GrantRow> {
    let row: Option<GrantDbRow> = sqlx::query_as(
        "DELETE FROM grants WHERE id = ?1
         RETURNING id, identity, namespace, pools, actions, created_ms",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "grant",
            key: id.to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Default namespaces

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
pub async fn add_default_namespace(
    conn: &mut SqliteConnection,
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
    let row: DefaultNamespaceDbRow = sqlx::query_as(
        "INSERT INTO default_namespaces (identity, namespace, created_ms) VALUES (?1, ?2, ?3)
         RETURNING id, identity, namespace, created_ms",
    )
    .bind(rule.identity.as_str())
    .bind(&rule.namespace)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|err| {
        if is_unique_violation(&err) {
            Error::AlreadyExists {
                what: "default namespace of",
                key: rule.identity.to_string(),
            }
        } else {
            err.into()
        }
    })?;
    row.try_into()
}

/// Every default-namespace rule, oldest first (the order ties are broken in).
pub async fn list_default_namespaces(
    conn: &mut SqliteConnection,
) -> Result<Vec<DefaultNamespaceRow>> {
    let rows: Vec<DefaultNamespaceDbRow> = sqlx::query_as(
        "SELECT id, identity, namespace, created_ms FROM default_namespaces ORDER BY id",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

/// Deletes a default-namespace rule and returns it. [`Error::NotFound`] if there is none
/// with this id.
pub async fn delete_default_namespace(
    conn: &mut SqliteConnection,
    id: i64,
) -> Result<DefaultNamespaceRow> {
    let row: Option<DefaultNamespaceDbRow> = sqlx::query_as(
        "DELETE FROM default_namespaces WHERE id = ?1
         RETURNING id, identity, namespace, created_ms",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => row.try_into(),
        None => Err(Error::NotFound {
            what: "default namespace rule",
            key: id.to_string(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Revocations

/// What a revocation covers: one type for the core, the store and the admin API.
pub use identity::Revocation;

/// The former name of [`Revocation`], kept so that callers need not change at once.
pub type Revoked = Revocation;

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
pub async fn add_revocation(
    conn: &mut SqliteConnection,
    revocation: &Revocation,
    reason: Option<&str>,
    now_ms: u64,
) -> Result<RevocationRecord> {
    if let Some(reason) = reason {
        check_text(reason, "reason")?;
    }
    let now = ms_to_i64(now_ms, "time")?;
    let (kind, domain, value) = revocation_columns(revocation)?;
    let row: RevocationRow = sqlx::query_as(
        "INSERT INTO revocations (kind, trust_domain, value, reason, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         RETURNING id, kind, trust_domain, value, reason, created_ms",
    )
    .bind(kind)
    .bind(domain)
    .bind(value)
    .bind(reason)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(|err| {
        if is_unique_violation(&err) {
            Error::AlreadyExists {
                what: "revocation",
                key: revocation.to_string(),
            }
        } else {
            err.into()
        }
    })?;
    row.try_into()
}

/// Every revocation, oldest first (the order to replay them into the trust store).
pub async fn list_revocations(conn: &mut SqliteConnection) -> Result<Vec<RevocationRecord>> {
    let rows: Vec<RevocationRow> = sqlx::query_as(
        "SELECT id, kind, trust_domain, value, reason, created_ms FROM revocations ORDER BY id",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(RevocationRecord::try_from).collect()
}

// ---------------------------------------------------------------------------------------
// Peers

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
pub async fn upsert_peer(
    conn: &mut SqliteConnection,
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
    let row: PeerDbRow = sqlx::query_as(
        "INSERT INTO peers (address, spiffe_id, server_id, created_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (address) DO UPDATE SET
             spiffe_id = coalesce(excluded.spiffe_id, spiffe_id),
             server_id = coalesce(excluded.server_id, server_id),
             last_seen_ms = excluded.last_seen_ms
         RETURNING address, spiffe_id, server_id, created_ms, last_seen_ms",
    )
    .bind(address)
    .bind(spiffe_id.map(SpiffeId::as_str))
    .bind(server_id.map(i64::from))
    .bind(now)
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// Every peer, by address.
pub async fn list_peers(conn: &mut SqliteConnection) -> Result<Vec<PeerRow>> {
    let rows: Vec<PeerDbRow> = sqlx::query_as(
        "SELECT address, spiffe_id, server_id, created_ms, last_seen_ms FROM peers
         ORDER BY address",
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(PeerRow::try_from).collect()
}

// ---------------------------------------------------------------------------------------
// Server ID bindings (issue 16)

/// Binds `server_id` to `identity` unless it is bound already; returns the identity it
/// is bound to (the earlier one when there is one: a binding never changes).
pub async fn bind_server_id(
    conn: &mut SqliteConnection,
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
    sqlx::query(
        "INSERT INTO server_id_bindings (server_id, spiffe_id, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (server_id) DO NOTHING",
    )
    .bind(i64::from(server_id))
    .bind(identity.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let (bound,): (String,) =
        sqlx::query_as("SELECT spiffe_id FROM server_id_bindings WHERE server_id = ?1")
            .bind(i64::from(server_id))
            .fetch_one(&mut *conn)
            .await?;
    SpiffeId::parse(&bound).map_err(|_| Error::Corrupt {
        table: "server_id_bindings",
        id: server_id.to_string(),
        reason: "invalid SPIFFE ID",
    })
}

/// Every Server ID binding, by Server ID.
pub async fn list_server_id_bindings(conn: &mut SqliteConnection) -> Result<Vec<(u32, SpiffeId)>> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT server_id, spiffe_id FROM server_id_bindings ORDER BY server_id")
            .fetch_all(conn)
            .await?;
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

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests;
