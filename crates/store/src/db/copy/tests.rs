//! `copy_sqlite_to_postgres`: a SQLite store with a row in every table (and archived audit
//! records) into a fresh PostgreSQL database; refusals change nothing. PostgreSQL only by
//! nature (its target); skipped without `RSP_TEST_POSTGRES` unless `RSP_REQUIRE_POSTGRES=1`.

use std::collections::BTreeSet;

use crate::db::{Conn, DbConn, StoreOptions};
use identity::audit::AuditAction;

use super::*;
use crate::audit::archive::{self, Cut, Target};
use crate::audit::{Chain, Outcome, Record};
use crate::db::test_db::{self, TestDb};

const NOW: u64 = 1_800_000_000_000;

/// A SQLite store with rows in every copied table (NULL and non-NULL optional columns),
/// 20 audit records of which the first 5 are archived (so `audit_archives` has an anchor
/// whose rows are gone at the source).
async fn populated_source(dir: &std::path::Path) -> TestDb {
    let db = test_db::sqlite_file().await;
    let mut c = db.store.acquire().await.expect("conn");
    let c = c.sqlite().expect("SQLite");
    for sql in [
        "INSERT INTO namespaces VALUES ('default', 1), ('lab', 2)",
        "INSERT INTO pools VALUES ('default', x'6563686f', 1, 8, 3), ('lab', x'00ff', NULL, NULL, 4)",
        "INSERT INTO trust_domains VALUES ('acme.test', 1, 'ROOTS', 'CRL', 5),
                                          ('partner.test', 0, 'ROOTS2', NULL, 6)",
        "INSERT INTO grants (id, identity, namespace, pools, actions, created_ms)
             VALUES (3, 'spiffe://acme.test/pe/*', 'default', x'2a', 'register', 7),
                    (9, 'spiffe://acme.test/pu/*', 'lab', x'2a', 'resolve', 8)",
        "INSERT INTO revocations (id, kind, trust_domain, value, reason, created_ms)
             VALUES (4, 'spiffe_id', 'acme.test', 'spiffe://acme.test/pe/bad', 'stolen', 9),
                    (7, 'serial', 'acme.test', '0a0b', NULL, 10)",
        "INSERT INTO admin_tokens VALUES ('t1', 'ops', 'admin', '$argon2id$v=19$x', 11, NULL, NULL),
                                         ('t2', 'old', 'auditor', '$argon2id$v=19$y', 12, 13, 14)",
        "INSERT INTO default_namespaces (id, identity, namespace, created_ms)
             VALUES (5, 'spiffe://acme.test/pu/a', 'lab', 15)",
        "INSERT INTO peers VALUES ('10.0.0.1:9901', 'spiffe://acme.test/registrar/b', 77, 16, 17),
                                  ('10.0.0.2:9901', NULL, NULL, 18, NULL)",
        "INSERT INTO server_id_bindings VALUES (77, 'spiffe://acme.test/registrar/b', 19)",
    ] {
        sqlx::query(sql).execute(&mut *c).await.expect(sql);
    }
    let records: Vec<Record> = (0..20)
        .map(|i| {
            Record::new(NOW - 1000 + i, AuditAction::Register, Outcome::Ok)
                .detail(format!("record {i}"))
        })
        .collect();
    audit::append_in(&mut *c, &Chain::Local, &records)
        .await
        .expect("append");
    archive::archive(
        &db.store,
        &Chain::Local,
        &Target::File(dir.join("archive.jsonl.gz")),
        Cut::BeforeId(6),
        None,
        Record::new(NOW, AuditAction::AuditArchive, Outcome::Ok),
        NOW,
    )
    .await
    .expect("archive");
    db
}

/// Every row of every copied table, as text, in key order (for comparing both sides).
async fn dump<C: Conn + ?Sized>(conn: &mut C) -> Vec<(String, Vec<String>)> {
    let postgres = matches!(conn.db(), DbConn::Postgres(_));
    let mut out = Vec::new();
    for (table, columns) in TABLES {
        // Text on both backends; bytes as upper-case hex.
        let cols: Vec<String> = columns
            .iter()
            .map(|(n, kind)| match kind {
                Bytes if postgres => format!("coalesce(upper(encode({n}, 'hex')), 'NULL')"),
                // SQLite's hex(NULL) is '', not NULL.
                Bytes => format!("CASE WHEN {n} IS NULL THEN 'NULL' ELSE hex({n}) END"),
                _ => format!("coalesce(CAST({n} AS TEXT), 'NULL')"),
            })
            .collect();
        let sql = format!("SELECT {} FROM {table}", cols.join(" || '|' || "));
        let mut rows: Vec<String> = match conn.db() {
            DbConn::Sqlite(c) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(c)
                .await
                .expect("dump"),
            DbConn::Postgres(c) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(c)
                .await
                .expect("dump"),
        };
        rows.sort();
        out.push(((*table).to_owned(), rows));
    }
    out
}

async fn target(test: &str) -> Option<TestDb> {
    test_db::postgres(test).await
}

/// [`populated_source`] (its archive in the returned directory) and an empty target.
async fn source_and_target(test: &str) -> Option<(TestDb, TestDb, tempfile::TempDir)> {
    let dst = target(test).await?;
    let dir = tempfile::tempdir().expect("tempdir");
    Some((populated_source(dir.path()).await, dst, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_is_copied_row_for_row_with_the_same_chain_heads() {
    let Some((src, dst, _dir)) =
        source_and_target("every_table_is_copied_row_for_row_with_the_same_chain_heads").await
    else {
        return;
    };
    let before = dump(&mut src.store.acquire().await.expect("conn")).await;
    let source_heads = audit::verify(&mut src.store.acquire().await.expect("conn"))
        .await
        .expect("verify");
    assert!(
        source_heads[0].anchor.is_some(),
        "the source has archived records"
    );

    let report = copy_sqlite_to_postgres(&src.store, &dst.store)
        .await
        .expect("copy");

    let mut conn = dst.store.acquire().await.expect("conn");
    let after = dump(&mut conn).await;
    assert_eq!(before, after, "every row of every table, byte for byte");
    for (table, rows) in &before {
        assert!(!rows.is_empty(), "the source has rows in {table}");
    }
    assert_eq!(report.chains, source_heads, "same chains, ids and heads");
    assert_eq!(
        audit::verify(&mut conn).await.expect("verify"),
        source_heads
    );
    // Sequences are past the copied ids: new rows get fresh ones.
    let next: i64 = match conn.db() {
        DbConn::Postgres(c) => sqlx::query_scalar(
            "INSERT INTO grants (identity, namespace, pools, actions, created_ms)
             VALUES ('spiffe://acme.test/new', 'default', decode('2a', 'hex'), 'register', 20)
             RETURNING id",
        )
        .fetch_one(c)
        .await
        .expect("insert after copy"),
        DbConn::Sqlite(_) => unreachable!(),
    };
    assert_eq!(next, 10, "one past the highest copied grant id");
    // The anchor trigger is on again.
    let err = match conn.db() {
        DbConn::Postgres(c) => sqlx::query(
            "INSERT INTO audit_archives (last_id, chain, first_id, first_prev_hash, last_hash,
                 time_ms, file, sha256)
             VALUES (30, '', 22, sha256('a'), sha256('b'), 1, 'f', sha256('c'))",
        )
        .execute(c)
        .await
        .expect_err("a made-up anchor"),
        DbConn::Sqlite(_) => unreachable!(),
    };
    assert!(err.to_string().contains("audit archive"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_and_column_of_the_schema_is_copied() {
    let Some(dst) = target("every_table_and_column_of_the_schema_is_copied").await else {
        return;
    };
    let mut conn = dst.store.acquire().await.expect("conn");
    let DbConn::Postgres(c) = conn.db() else {
        unreachable!()
    };
    let schema: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name != '_sqlx_migrations'",
    )
    .fetch_all(c)
    .await
    .expect("schema");
    let schema: BTreeSet<(String, String)> = schema.into_iter().collect();
    let copied: BTreeSet<(String, String)> = TABLES
        .iter()
        .flat_map(|(t, cols)| cols.iter().map(|(n, _)| ((*t).to_owned(), (*n).to_owned())))
        .collect();
    assert_eq!(schema, copied, "a table or column the copy would miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_rows_is_refused_and_unchanged() {
    let Some((src, dst, _dir)) =
        source_and_target("a_target_with_rows_is_refused_and_unchanged").await
    else {
        return;
    };
    {
        let mut conn = dst.store.acquire().await.expect("conn");
        crate::db::create_namespace(&mut conn, "other", 1)
            .await
            .expect("a row of another registrar");
    }
    let before = dump(&mut dst.store.acquire().await.expect("conn")).await;
    let err = copy_sqlite_to_postgres(&src.store, &dst.store)
        .await
        .expect_err("not empty");
    let text = err.to_string();
    assert!(
        text.contains("not empty (table namespaces has rows)"),
        "{text}"
    );
    assert!(text.contains("enrpd init --join"), "{text}");
    let after = dump(&mut dst.store.acquire().await.expect("conn")).await;
    assert_eq!(before, after, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_a_broken_chain_is_refused() {
    let Some((src, dst, _dir)) = source_and_target("a_source_with_a_broken_chain_is_refused").await
    else {
        return;
    };
    {
        let mut conn = src.store.acquire().await.expect("conn");
        let c = conn.sqlite().expect("SQLite");
        // Edit a record behind the triggers' back, as someone with the file could.
        sqlx::query("DROP TRIGGER audit_events_no_update")
            .execute(&mut *c)
            .await
            .expect("drop trigger");
        sqlx::query("UPDATE audit_events SET detail = 'forged' WHERE id = 10")
            .execute(&mut *c)
            .await
            .expect("forge");
    }
    let err = copy_sqlite_to_postgres(&src.store, &dst.store)
        .await
        .expect_err("broken source");
    let text = err.to_string();
    assert!(text.contains("broken at record 10"), "{text}");
    let after = dump(&mut dst.store.acquire().await.expect("conn")).await;
    assert!(
        after.iter().all(|(_, rows)| rows.is_empty()),
        "nothing copied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_another_process_is_writing_is_refused() {
    let Some(dst) = target("a_source_another_process_is_writing_is_refused").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rsp.db");
    let options = StoreOptions {
        busy_timeout: std::time::Duration::from_millis(200),
        ..StoreOptions::default()
    };
    let src = Store::open_file(&file, &options).await.expect("source");
    // Another writer (a registrar still running) holds SQLite's write lock.
    let writer = Store::open_file(&file, &options).await.expect("writer");
    let held = writer.begin().await.expect("write lock");
    let err = copy_sqlite_to_postgres(&src, &dst.store)
        .await
        .expect_err("locked");
    assert!(
        err.to_string().contains("is the registrar running?"),
        "{err}"
    );
    held.rollback().await.expect("release");
    let after = dump(&mut dst.store.acquire().await.expect("conn")).await;
    assert!(
        after.iter().all(|(_, rows)| rows.is_empty()),
        "nothing copied"
    );
}
