//! A fresh, migrated database per test, on each backend (docs/STORE.md "Tests").
//!
//! SQLite: an in-memory database, as before. PostgreSQL: when `RSP_TEST_POSTGRES` holds a
//! server URL (`.ci/postgres start` prints one), a uniquely named database is created on
//! that server for the test and dropped when the [`TestDb`] is dropped (also when the test
//! panics). Without the variable the PostgreSQL variant prints why and passes, unless
//! `RSP_REQUIRE_POSTGRES=1` (CI), where it fails, as the SCTP tests do with
//! `RSP_REQUIRE_SCTP`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::{Store, StoreConn, StoreOptions, with_conn};

/// A test's database; a PostgreSQL one is dropped with it (feature `testing` for other
/// crates' tests).
pub struct TestDb {
    /// The store on the test's database.
    pub store: Store,
    postgres: Option<(PgConnectOptions, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// The store and one pooled connection.
    pub async fn open(&self) -> (Store, StoreConn) {
        let conn = self.store.acquire().await.expect("connection");
        (self.store.clone(), conn)
    }
}

/// A migrated in-memory SQLite database.
pub async fn sqlite() -> TestDb {
    TestDb {
        store: Store::in_memory().await.expect("in-memory store"),
        postgres: None,
        _dir: None,
    }
}

/// A migrated SQLite database in a file of a temporary directory (a store with more than
/// one connection, as the audit writer needs).
pub async fn sqlite_file() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("SQLite store");
    TestDb {
        store,
        postgres: None,
        _dir: Some(dir),
    }
}

/// The server of `RSP_TEST_POSTGRES`, or `None` (printed) when it is not set and
/// `RSP_REQUIRE_POSTGRES=1` does not require it.
fn postgres_server(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("RSP_TEST_POSTGRES") else {
        assert!(
            std::env::var("RSP_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "{test}: RSP_REQUIRE_POSTGRES=1 but RSP_TEST_POSTGRES is not set \
             (bash .ci/postgres start prints a server URL)"
        );
        eprintln!(
            "skipped {test} on PostgreSQL: RSP_TEST_POSTGRES is not set \
             (bash .ci/postgres start prints a server URL)"
        );
        return None;
    };
    Some(url)
}

/// Creates a uniquely named, empty database on the server `url` names; returns the
/// server's options and the name.
async fn create_database(test: &str, url: &str) -> (PgConnectOptions, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Unique across the test binaries nextest runs at once on one server.
    let name = format!(
        "rsp_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = PgConnectOptions::from_str(url).expect("RSP_TEST_POSTGRES is a postgres:// URL");
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .unwrap_or_else(|err| panic!("{test}: connect to RSP_TEST_POSTGRES: {err}"));
    // A name made here of [a-z0-9_]: safe to put in the statement.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    (admin, name)
}

/// A migrated, empty PostgreSQL database of its own, or `None` (printed) when no server is
/// configured and none is required.
pub async fn postgres(test: &str) -> Option<TestDb> {
    let url = postgres_server(test)?;
    let (admin, name) = create_database(test, &url).await;
    let store = Store::connect_postgres(admin.clone().database(&name), &StoreOptions::default())
        .await
        .expect("migrated PostgreSQL store");
    Some(TestDb {
        store,
        postgres: Some((admin, name)),
        _dir: None,
    })
}

/// An empty PostgreSQL database (not migrated) for a test that runs `enrpd` on it: its
/// URL, for `--store`; dropped with it.
pub struct EmptyPostgres {
    /// `postgres://…` naming the database, with the server URL's parameters.
    pub url: String,
    admin: PgConnectOptions,
    name: String,
}

/// A fresh [`EmptyPostgres`] on the server of `RSP_TEST_POSTGRES`, or `None` (printed) as
/// [`postgres`].
pub async fn empty_postgres(test: &str) -> Option<EmptyPostgres> {
    let server = postgres_server(test)?;
    let (admin, name) = create_database(test, &server).await;
    Some(EmptyPostgres {
        url: with_database(&server, &name),
        admin,
        name,
    })
}

/// `url` (`postgres://USER@HOST/DB?PARAMS`) with the database `name` instead.
fn with_database(url: &str, name: &str) -> String {
    let (base, params) = url
        .split_once('?')
        .map_or((url, None), |(b, p)| (b, Some(p)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(p) = params {
        out.push('?');
        out.push_str(p);
    }
    out
}

impl Drop for EmptyPostgres {
    fn drop(&mut self) {
        drop_database(self.admin.clone(), std::mem::take(&mut self.name));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.postgres.take() {
            drop_database(admin, name);
        }
    }
}

/// Drops a test's database (`WITH (FORCE)`: it ends the connections still open to it).
fn drop_database(admin: PgConnectOptions, name: String) {
    // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its
    // own with its own runtime drops the database.
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut conn = PgConnection::connect_with(&admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        eprintln!("could not drop the test database: {dropped:?}");
    }
}

#[cfg(test)]
#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database(
            "postgres://rsp@localhost/postgres?host=/tmp/x",
            "rsp_test_1_2"
        ),
        "postgres://rsp@localhost/rsp_test_1_2?host=/tmp/x"
    );
    assert_eq!(
        with_database("postgresql://u@h:5433", "d"),
        "postgresql://u@h:5433/d"
    );
}

/// Runs each named `async fn NAME(db: &TestDb)` of the enclosing module on SQLite and on
/// PostgreSQL, as the tests `NAME::sqlite` and `NAME::postgres`. With `file:`, SQLite is a
/// file (not in memory) and the runtime has two worker threads (tests of the audit writer).
#[cfg(test)]
macro_rules! on_both_backends {
    (file: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(&$crate::db::test_db::sqlite_file().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(db) = $crate::db::test_db::postgres(test).await {
                    super::$name(&db).await;
                }
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(&$crate::db::test_db::sqlite().await).await;
            }
            #[tokio::test]
            async fn postgres() {
                let test = concat!(module_path!(), "::", stringify!($name));
                if let Some(db) = $crate::db::test_db::postgres(test).await {
                    super::$name(&db).await;
                }
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use on_both_backends;

/// The SQLite connection of a test that is about SQLite itself (pragmas, a second
/// connection's lock).
pub fn sqlite_conn(conn: &mut StoreConn) -> &mut sqlx::SqliteConnection {
    conn.sqlite()
        .expect("a SQLite-only test got a PostgreSQL connection")
}

/// Ends the connection of every change-feed listener of `conn`'s database
/// (`pg_terminate_backend`, as a restart or a network cut would): how many there were.
pub async fn terminate_listeners(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(conn)
    .await
    .expect("terminate the listeners")
}

/// Fills `table` with synthetic rows up to one place below its limit, in one statement,
/// so that a limit test runs at the real figure (`db::limits`), not a lowered one. The
/// rows are only counted, never read back as the types they would decode to.
pub async fn fill_to_one_below_limit(conn: &mut StoreConn, table: super::limits::Table) {
    use super::Conn as _;
    use super::limits::Table;
    let have = super::limits::count(conn, table, 0).await.expect("count");
    let rows = i64::try_from(table.limit() - 1 - have).expect("rows");
    if rows == 0 {
        return;
    }
    macro_rules! series {
        ($insert:literal) => {
            concat!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) ",
                $insert
            )
        };
    }
    // The namespace that pool declarations and default-namespace rules point at.
    let parent = match table {
        Table::PoolDeclarations => Some("fill-pools"),
        Table::DefaultNamespaces => Some("fill-rules"),
        _ => None,
    };
    if let Some(name) = parent {
        with_conn!(
            conn,
            "INSERT INTO namespaces (name, created_ms) VALUES (?1, 0) ON CONFLICT DO NOTHING",
            |c, sql| sqlx::query(sql).bind(name).execute(c).await.map(drop)
        )
        .expect("parent namespace");
    }
    let done = match table {
        Table::Namespaces => with_conn!(
            conn,
            series!("INSERT INTO namespaces (name, created_ms) SELECT 'fill-' || i, 0 FROM n"),
            |c, sql| sqlx::query(sql).bind(rows).execute(c).await.map(drop)
        ),
        // The handle's bytes need a backend's own conversion.
        Table::PoolDeclarations => match conn.db() {
            super::DbConn::Sqlite(c) => sqlx::query(series!(
                "INSERT INTO pools (namespace, handle, created_ms) SELECT 'fill-pools', CAST('h' || i AS BLOB), 0 FROM n"
            ))
            .bind(rows)
            .execute(c)
            .await
            .map(drop),
            super::DbConn::Postgres(c) => sqlx::query(super::postgres_sql(series!(
                "INSERT INTO pools (namespace, handle, created_ms) SELECT 'fill-pools', convert_to('h' || i, 'UTF8'), 0 FROM n"
            )))
            .bind(rows)
            .execute(c)
            .await
            .map(drop),
        },
        Table::TrustDomains => with_conn!(
            conn,
            series!(
                "INSERT INTO trust_domains (name, is_local, roots_pem, created_ms) SELECT 'fill-' || i || '.test', 0, 'not a bundle', 0 FROM n"
            ),
            |c, sql| sqlx::query(sql).bind(rows).execute(c).await.map(drop)
        ),
        Table::Grants => with_conn!(
            conn,
            series!(
                "INSERT INTO grants (identity, namespace, pools, actions, created_ms) SELECT 'spiffe://fill.test/' || i, 'fill', ?2, 'resolve', 0 FROM n"
            ),
            |c, sql| sqlx::query(sql).bind(rows).bind(b"*".to_vec()).execute(c).await.map(drop)
        ),
        Table::DefaultNamespaces => with_conn!(
            conn,
            series!(
                "INSERT INTO default_namespaces (identity, namespace, created_ms) SELECT 'spiffe://fill.test/' || i, 'fill-rules', 0 FROM n"
            ),
            |c, sql| sqlx::query(sql).bind(rows).execute(c).await.map(drop)
        ),
        Table::Revocations => with_conn!(
            conn,
            series!(
                "INSERT INTO revocations (kind, trust_domain, value, created_ms) SELECT 'serial', 'fill.test', 'f' || i, 0 FROM n"
            ),
            |c, sql| sqlx::query(sql).bind(rows).execute(c).await.map(drop)
        ),
        Table::ActiveTokens => with_conn!(
            conn,
            series!(
                "INSERT INTO admin_tokens (id, name, role, hash, created_ms) SELECT 'fill' || i, 'fill', 'auditor', '$argon2id$fill', 0 FROM n"
            ),
            |c, sql| sqlx::query(sql).bind(rows).execute(c).await.map(drop)
        ),
    };
    done.expect("fill");
    let now = super::limits::count(conn, table, 0).await.expect("count");
    assert_eq!(now, table.limit() - 1, "{}", table.what());
}
