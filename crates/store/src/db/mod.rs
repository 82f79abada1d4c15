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
//!
//! One file per table or concern, re-exported here: `namespaces`, `pools`,
//! `trust_domains`, `grants`, `default_namespaces`, `revocations`, `peers`, `server_ids`,
//! `tokens`; `limits` bounds the control-plane tables. This file keeps the connection pool, the migrations, [`Error`] and the
//! checks and conversions they share.

mod control;
mod copy;
mod default_namespaces;
mod grants;
pub mod limits;
mod namespaces;
mod peers;
mod pools;
mod revocations;
mod server_ids;
mod tokens;
mod trust_domains;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod backend;
pub use backend::{Backend, Conn, DbConn, StoreConn, StoreTx};
pub(crate) use backend::{postgres_sql, with_conn};

// One module per table or concern; their items are this module's public API.
pub use control::{CONTROL_CHANNEL, Change, ChangeFeed, Snapshot};
pub use copy::{CopyReport, copy_sqlite_to_postgres};
pub use default_namespaces::{
    DefaultNamespaceRow, add_default_namespace, delete_default_namespace, list_default_namespaces,
};
pub use grants::{GrantRow, add_grant, delete_grant, list_grants};
pub use namespaces::{
    Namespace, create_namespace, delete_namespace, get_namespace, list_namespaces,
};
pub use peers::{PeerRow, list_peers, upsert_peer};
pub use pools::{PoolDecl, delete_pool, get_pool, list_all_pools, list_pools, put_pool};
pub use revocations::{RevocationRecord, add_revocation, list_revocations};
pub use server_ids::{bind_server_id, list_server_id_bindings};
pub use tokens::{
    NewToken, Role, TokenHasher, TokenInfo, TokenRejection, create_token, list_tokens,
    revoke_token, token_info, verify_token,
};
pub use trust_domains::{
    TrustDomainRow, add_trust_domain, list_trust_domains, remove_trust_domain,
    set_trust_domain_crls,
};

/// How long a request waits for a PostgreSQL connection before it fails (the pool's
/// acquire timeout): short, so that while the server is unreachable requests fail fast.
pub const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "rsp.db";

/// Longest namespace name (spec §12.9, parameter 0x8100): `identity::Namespace`'s rule.
pub const MAX_NAMESPACE_LEN: usize = identity::MAX_NAMESPACE_LEN;

/// Longest pool handle (spec §3.5): `identity::PoolHandle`'s rule.
pub const MAX_POOL_HANDLE_LEN: usize = identity::PoolHandle::MAX_LEN;

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
    /// The table holds as many rows as the store takes ([`limits`]): nothing was
    /// written; delete some first (the admin API answers 409).
    #[error("the store holds {limit} {what}, the most it takes: delete some first")]
    Full {
        /// The rows, e.g. `grants`.
        what: &'static str,
        /// The limit.
        limit: u64,
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
    /// The store URL is neither `sqlite://…` nor `postgres://…` (or `postgresql://…`).
    #[error("store URL {url:?}: {reason}")]
    Url {
        /// The URL, without its password.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A store copy was refused or failed (`enrpd store copy`): the target is not
    /// empty, the source's audit log is broken, or the copy does not verify; the target
    /// is unchanged.
    #[error("store copy: {0}")]
    Copy(String),
    /// The operation is not available on this store's backend yet (docs/STORE.md lists
    /// what remains on PostgreSQL).
    #[error("{what} is not supported on {backend} yet")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The backend.
        backend: Backend,
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

/// The store: a pool of connections to one migrated database, SQLite or PostgreSQL
/// (docs/STORE.md).
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The migrations of the repository's `migrations/` directory, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The same schema in PostgreSQL's dialect (`migrations/postgres/`, same versions).
pub static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

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
        Ok(Self {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Connects to the database a store URL names and runs pending migrations:
    /// `sqlite://PATH` (the file is created if missing) or `postgres://…` /
    /// `postgresql://…` (the database must exist; sqlx's URL parameters apply, e.g.
    /// `?host=/run/postgresql` for a Unix socket). No TLS to PostgreSQL yet: use a Unix
    /// socket or loopback (docs/STORE.md).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(Error::Url {
                    url: url.to_owned(),
                    reason: "no file after sqlite://",
                });
            }
            return Self::open_file(Path::new(path), options).await;
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::connect_postgres(PgConnectOptions::from_str(url)?, options).await;
        }
        Err(Error::Url {
            url: redact_url(url),
            reason: "expected sqlite://PATH or postgres://…",
        })
    }

    /// Connects to an existing PostgreSQL database and runs pending migrations.
    pub async fn connect_postgres(
        connect: PgConnectOptions,
        options: &StoreOptions,
    ) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            // Short: while PostgreSQL is unreachable a request fails in 2 s (registrations
            // 0x6, admin writes 503) instead of hanging; the pool reconnects by itself.
            .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await?;
        MIGRATOR_POSTGRES.run(&pool).await?;
        Ok(Self {
            pool: Pool::Postgres(pool),
        })
    }

    /// Whether the database answers: a connection and `SELECT 1` (the registrar's store
    /// watch, every second).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.acquire().await?;
        with_conn!(&mut conn, "SELECT 1", |c, sql| sqlx::query(sql)
            .execute(c)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// A connection from the pool, for reads or single statements.
    pub async fn acquire(&self) -> Result<StoreConn> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => StoreConn::Sqlite(pool.acquire().await?),
            Pool::Postgres(pool) => StoreConn::Postgres(pool.acquire().await?),
        })
    }

    /// Begins a write transaction. Write transactions are serialised on both backends:
    /// SQLite's `BEGIN IMMEDIATE` takes the database's write lock at once (so a
    /// read-then-write inside it cannot fail with a stale snapshot); on PostgreSQL the
    /// transaction takes [`WRITE_LOCK`] (a transaction-scoped advisory lock) first, so a
    /// read-then-write inside it sees no concurrent writer of the store, as on SQLite.
    pub async fn begin(&self) -> Result<StoreTx> {
        Ok(match &self.pool {
            Pool::Sqlite(pool) => StoreTx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                StoreTx::Postgres(tx)
            }
        })
    }

    fn sqlite(&self, what: &'static str) -> Result<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(pool) => Ok(pool),
            Pool::Postgres(_) => Err(Error::Unsupported {
                what,
                backend: Backend::Postgres,
            }),
        }
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
        Ok(Self {
            pool: Pool::Sqlite(pool),
        })
    }

    /// The SQLite connection pool, or `None` on PostgreSQL.
    pub fn pool(&self) -> Option<&SqlitePool> {
        self.sqlite("").ok()
    }

    /// Closes every connection (waits for connections in use to be returned).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// The PostgreSQL advisory lock every store write transaction takes ([`Store::begin`]):
/// the store's equivalent of SQLite's single writer. Its value is arbitrary ("rsp" in
/// ASCII); only rsp's store uses advisory locks in its database.
pub const WRITE_LOCK: i64 = 0x0072_7370;

/// A PostgreSQL store URL whose connection could be read or redirected on the network
/// ([`check_postgres_transport`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsecureTransport {
    /// sqlx cannot parse the URL.
    #[error("not a PostgreSQL URL sqlx accepts: {0}")]
    Unparsable(String),
    /// A server off this machine with a `sslmode` that does not verify its certificate.
    #[error(
        "the PostgreSQL server {host} is not on this machine and sslmode is {mode}, which \
         does not verify the server's certificate: the control plane, token hashes and audit \
         log would cross the network open to reading or redirection; add \
         sslmode=verify-full&sslrootcert=/path/to/ca.pem to the URL"
    )]
    Unverified {
        /// The host the URL names.
        host: String,
        /// The effective `sslmode` (the URL's, else `PGSSLMODE`, else `prefer`).
        mode: &'static str,
    },
}

/// The store's transport policy (docs/STORE.md "Connecting", docs/SECURITY.md): a
/// PostgreSQL server reached over a Unix socket or a loopback address (`localhost`,
/// 127.0.0.0/8, `::1`) never leaves the machine; any other host must be reached with
/// `sslmode=verify-full` (or `verify-ca`), i.e. TLS that authenticates the server with the
/// operator's CA. `disable`, `allow` and `prefer` may send everything in clear, and
/// `require` encrypts but accepts any certificate (an active attacker reads it all). The
/// URL is read as sqlx reads it (its `host=`/`hostaddr=` parameters and the `PGHOST`,
/// `PGSSLMODE` variables included), so what is checked is what sqlx will do.
pub fn check_postgres_transport(url: &str) -> Result<(), InsecureTransport> {
    use sqlx::postgres::PgSslMode;
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| InsecureTransport::Unparsable(e.to_string()))?;
    let host = options.get_host();
    if options.get_socket().is_some() || host.starts_with('/') {
        return Ok(());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mode = match options.get_ssl_mode() {
        PgSslMode::VerifyFull | PgSslMode::VerifyCa => return Ok(()),
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
    };
    if loopback {
        return Ok(());
    }
    Err(InsecureTransport::Unverified {
        host: host.to_owned(),
        mode,
    })
}

/// `url` with any password replaced (in its user info or a `password=` parameter), for
/// error messages.
pub fn redact_url(url: &str) -> String {
    let (base, params) = url
        .split_once('?')
        .map_or((url, None), |(b, p)| (b, Some(p)));
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:<redacted>{}", &base[..scheme + 3], &base[at..])
                }
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    if let Some(params) = params {
        let params: Vec<String> = params
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("password", _)) => "password=<redacted>".to_owned(),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Creates `dir` and its parents, `dir` with mode 0700 on Unix (a data directory).
pub fn create_private_dir(dir: &Path) -> Result<()> {
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

/// For an INSERT's `map_err`: a UNIQUE or PRIMARY KEY violation is
/// [`Error::AlreadyExists`] of `what` with the key `key()` names, any other error itself.
fn already_exists(
    what: &'static str,
    key: impl FnOnce() -> String,
) -> impl FnOnce(sqlx::Error) -> Error {
    move |err| {
        if is_unique_violation(&err) {
            Error::AlreadyExists { what, key: key() }
        } else {
            err.into()
        }
    }
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

/// Why stored free text was refused for its characters ([`identity::text::is_refused`]).
pub(crate) const REFUSED_CHARACTERS: &str =
    "contains control characters or invisible formatting (e.g. a bidirectional override)";

/// Free text as the store accepts it: at most [`MAX_TEXT_LEN`] bytes, no refused characters.
pub(crate) fn check_text(text: &str, what: &'static str) -> Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Error::Invalid {
            what,
            reason: "longer than 4096 bytes",
        });
    }
    if text.chars().any(identity::text::is_refused) {
        return Err(Error::Invalid {
            what,
            reason: REFUSED_CHARACTERS,
        });
    }
    Ok(())
}

/// Checks a namespace name: 1–63 bytes of `a-z 0-9 - .` (spec §12.9). The rule is
/// [`identity::Namespace`]'s, the one the wire codec, the core and the audit log use.
pub fn check_namespace(name: &str) -> Result<()> {
    match identity::Namespace::parse(name) {
        Ok(_) => Ok(()),
        Err(identity::Error::InvalidNamespace { reason, .. }) => Err(Error::Invalid {
            what: "namespace",
            reason,
        }),
        Err(_) => Err(Error::Invalid {
            what: "namespace",
            reason: "not a namespace name",
        }),
    }
}

fn check_pool_handle(handle: &[u8]) -> Result<()> {
    identity::PoolHandle::parse(handle)
        .map(drop)
        .map_err(|_| Error::Invalid {
            what: "pool handle",
            reason: "must be 1 to 32 bytes",
        })
}

#[cfg(any(test, feature = "testing"))]
pub mod test_db;
#[cfg(test)]
mod tests;
