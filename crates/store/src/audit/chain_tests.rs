//! One hash chain per registrar in one store (issue 19 item 3; docs/STORE.md "The audit
//! log in a fleet"), on both backends.

use identity::audit::{AuditAction, Durability};
use sqlx::Connection;

use super::tests::{exec, id, sample};
use super::*;
use crate::db::test_db::{TestDb, on_both_backends};
use crate::db::{DbConn, Store, StoreOptions};

on_both_backends!(file:
    two_writers_on_two_chains_interleave_without_forking,
    a_tampered_record_is_reported_for_its_chain_only,
    a_record_moved_to_another_chain_is_detected,
    queries_filter_by_registrar_and_name_it,
    anchors_and_deletions_are_per_chain,
);

#[path = "archive_chain_tests.rs"]
mod archive_chain_tests;
#[path = "fork_guard_tests.rs"]
mod fork_guard_tests;

fn chain_a() -> Chain {
    Chain::Registrar(id("spiffe://acme.test/registrar/enrp-a"))
}

fn chain_b() -> Chain {
    Chain::Registrar(id("spiffe://acme.test/registrar/enrp-b"))
}

/// Appends `range` of samples to `chain`, one transaction.
async fn append(store: &Store, chain: &Chain, range: std::ops::Range<u64>) -> Vec<u64> {
    let records: Vec<Record> = range.map(sample).collect();
    let mut tx = store.begin().await.expect("begin");
    let ids = append_in(&mut tx, chain, &records).await.expect("append");
    tx.commit().await.expect("commit");
    ids
}

async fn verify_all(store: &Store) -> Vec<VerifyReport> {
    let mut conn = store.acquire().await.expect("conn");
    verify(&mut conn).await.expect("verify")
}

fn report<'a>(reports: &'a [VerifyReport], chain: &Chain) -> &'a VerifyReport {
    reports
        .iter()
        .find(|r| r.chain == *chain)
        .unwrap_or_else(|| panic!("no report of {chain}: {reports:?}"))
}

/// Runs `sql` (built by the test from ids, not from input) on either backend, as someone
/// editing the database behind the triggers' back would.
async fn tamper(store: &Store, sql: String) {
    let mut conn = store.acquire().await.expect("conn");
    for trigger in ["audit_events_no_update", "audit_events_no_delete"] {
        let drop_sql = match conn {
            crate::db::StoreConn::Sqlite(_) => format!("DROP TRIGGER IF EXISTS {trigger}"),
            crate::db::StoreConn::Postgres(_) => {
                format!("DROP TRIGGER IF EXISTS {trigger} ON audit_events")
            }
        };
        raw(&mut conn, drop_sql).await.expect("drop trigger");
    }
    raw(&mut conn, sql).await.expect("tamper");
}

/// Two registrars' writers (group commit, each on its own connection, each its own
/// chain) append thousands of records concurrently to one database: ids stay unique and
/// increasing over the table, no record is lost, and both chains verify. Without the
/// write lock around the head and next-id read, or with ids taken per chain, the inserts
/// collide (primary key, or the fork guard of migration 0008) and records are lost.
async fn two_writers_on_two_chains_interleave_without_forking(db: &TestDb) {
    const PER_TASK: u64 = 500;
    const TASKS: u64 = 4;
    let store = db.store.clone();
    let mut logs = Vec::new();
    for chain in [chain_a(), chain_b()] {
        // Small batches: many interleaved commits.
        let config = AuditConfig {
            chain,
            max_batch: 64,
            ..AuditConfig::default()
        };
        logs.push(AuditLog::start(&store, config).await.expect("start"));
    }
    let mut tasks = Vec::new();
    for log in &logs {
        for t in 0..TASKS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    // Every 50th waits for its commit, as a registration does.
                    let durability = if i % 50 == 0 {
                        Durability::BeforeReply
                    } else {
                        Durability::Batched
                    };
                    log.append(sample(t * PER_TASK + i), durability)
                        .await
                        .expect("append");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    // Then strictly alternating commits, whatever the scheduling above did.
    for i in 0..10 {
        for log in &logs {
            log.append(sample(i), Durability::BeforeReply)
                .await
                .expect("append");
        }
    }
    for log in &logs {
        log.shutdown().await.expect("shutdown");
        assert_eq!(log.stats().lost, 0);
    }
    let reports = verify_all(&store).await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    for chain in [chain_a(), chain_b()] {
        let r = report(&reports, &chain);
        assert!(r.is_intact(), "{r:?}");
        assert_eq!(r.checked, PER_TASK * TASKS + 10, "{chain}");
    }
    let mut conn = store.acquire().await.expect("conn");
    assert_eq!(
        count(&mut conn).await.expect("count"),
        2 * (PER_TASK * TASKS + 10)
    );
    // The chains interleave in the table: B's rows lie between A's first and last.
    let mut filter = AuditFilter {
        chain: Some(chain_a()),
        order: Order::OldestFirst,
        limit: 1,
        ..AuditFilter::default()
    };
    let first_a = query(&mut conn, &filter).await.expect("query").events[0].id;
    filter.order = Order::NewestFirst;
    let last_a = query(&mut conn, &filter).await.expect("query").events[0].id;
    assert!(
        last_a - first_a + 1 > PER_TASK * TASKS + 10,
        "the chains did not interleave: A spans {first_a}-{last_a}"
    );
}

/// An edited record of registrar B's chain breaks B's chain at that record; A's chain
/// and the local chain still verify.
async fn a_tampered_record_is_reported_for_its_chain_only(db: &TestDb) {
    let store = db.store.clone();
    append(&store, &Chain::Local, 0..2).await;
    let mut b_ids = Vec::new();
    for i in 0..3 {
        append(&store, &chain_a(), i..i + 1).await;
        b_ids.extend(append(&store, &chain_b(), i..i + 1).await);
    }
    let before = verify_all(&store).await;
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(VerifyReport::is_intact), "{before:?}");
    assert_eq!(before[0].chain, Chain::Local, "the local chain first");

    let edited = b_ids[1];
    tamper(
        &store,
        format!("UPDATE audit_events SET detail = 'forged' WHERE id = {edited}"),
    )
    .await;
    let after = verify_all(&store).await;
    let b = report(&after, &chain_b());
    assert_eq!(
        b.broken,
        Some(BrokenLink {
            id: i64::try_from(edited).expect("id"),
            reason: BreakReason::Hash
        })
    );
    assert_eq!((b.checked, b.last_id), (2, b_ids[0]));
    for intact in [chain_a(), Chain::Local] {
        let r = report(&after, &intact);
        assert_eq!(r, report(&before, &intact), "{intact} changed");
    }
}

/// A record moved from one registrar's chain to another's (or to the local chain) is
/// found: the chain it left no longer links, and the chain it joined neither links nor
/// hashes (a registrar's records hash their chain).
async fn a_record_moved_to_another_chain_is_detected(db: &TestDb) {
    let store = db.store.clone();
    let d = Chain::Registrar(id("spiffe://acme.test/registrar/enrp-d"));
    for (from, to) in [(chain_a(), chain_b()), (d, Chain::Local)] {
        let left = append(&store, &from, 0..3).await;
        append(&store, &to, 3..5).await;
        let moved = left[1];
        tamper(
            &store,
            format!(
                "UPDATE audit_events SET chain = '{}' WHERE id = {moved}",
                to.key()
            ),
        )
        .await;
        let reports = verify_all(&store).await;
        assert_eq!(
            report(&reports, &from).broken.map(|l| (l.id, l.reason)),
            Some((i64::try_from(left[2]).expect("id"), BreakReason::PrevHash)),
            "{reports:?}"
        );
        assert!(!report(&reports, &to).is_intact(), "{to}: {reports:?}");
    }

    // Even as the first record of a new chain, a record moved there does not verify.
    let store = db.store.clone();
    let c = Chain::Registrar(id("spiffe://acme.test/registrar/enrp-c"));
    let first_a = {
        let mut conn = store.acquire().await.expect("conn");
        let filter = AuditFilter {
            chain: Some(chain_a()),
            order: Order::OldestFirst,
            limit: 1,
            ..AuditFilter::default()
        };
        query(&mut conn, &filter).await.expect("query").events[0].id
    };
    tamper(
        &store,
        format!(
            "UPDATE audit_events SET chain = '{}' WHERE id = {first_a}",
            c.key()
        ),
    )
    .await;
    assert!(!report(&verify_all(&store).await, &c).is_intact());
}

/// `query` with a chain returns only that registrar's records, and every record names
/// its chain; without one it returns the whole store's.
async fn queries_filter_by_registrar_and_name_it(db: &TestDb) {
    let store = db.store.clone();
    append(&store, &chain_a(), 0..2).await;
    append(&store, &chain_b(), 2..5).await;
    append(&store, &chain_a(), 5..6).await;
    let mut conn = store.acquire().await.expect("conn");
    let all = query(&mut conn, &AuditFilter::default())
        .await
        .expect("query");
    assert_eq!(all.events.len(), 6);
    let chains: Vec<Chain> = all.events.iter().map(|e| e.chain.clone()).collect();
    assert_eq!(
        chains,
        [
            chain_a(),
            chain_b(),
            chain_b(),
            chain_b(),
            chain_a(),
            chain_a()
        ],
        "newest first"
    );
    for (chain, n) in [(chain_a(), 3), (chain_b(), 3), (Chain::Local, 0)] {
        let filter = AuditFilter {
            chain: Some(chain.clone()),
            limit: 2,
            ..AuditFilter::default()
        };
        let page = query(&mut conn, &filter).await.expect("query");
        assert!(page.events.iter().all(|e| e.chain == chain));
        let next = AuditFilter {
            cursor: page.next,
            ..filter
        };
        let rest = match page.next {
            Some(_) => query(&mut conn, &next).await.expect("query").events.len(),
            None => 0,
        };
        assert_eq!(page.events.len() + rest, n, "{chain}");
    }
    // The filter's text form: `local` or a SPIFFE ID.
    assert_eq!("local".parse::<Chain>().expect("local"), Chain::Local);
    assert_eq!(
        chain_a().to_string().parse::<Chain>().expect("id"),
        chain_a()
    );
    assert!("acme.test".parse::<Chain>().is_err());
}

/// An anchor covers rows of its own chain only: the rows it covers may be deleted, rows of
/// another chain with lower ids may not (the delete trigger is per chain), and `verify`
/// starts each chain from its own anchor.
async fn anchors_and_deletions_are_per_chain(db: &TestDb) {
    let store = db.store.clone();
    let b = append(&store, &chain_b(), 0..3).await;
    let a = append(&store, &chain_a(), 3..6).await;
    let mut conn = store.acquire().await.expect("conn");
    let a_hash = {
        let filter = AuditFilter {
            chain: Some(chain_a()),
            order: Order::OldestFirst,
            limit: 2,
            ..AuditFilter::default()
        };
        query(&mut conn, &filter).await.expect("query").events[1].hash
    };
    let (first, last) = (a[0], a[1]);
    let anchor_sql = format!(
        "INSERT INTO audit_archives (chain, first_id, last_id, first_prev_hash, last_hash,
             time_ms, file, sha256) VALUES ('{}', {first}, {last}, {}, {}, 1, 'a.jsonl.gz', {})",
        chain_a().key(),
        hex_literal(&conn, &chain_a().genesis()),
        hex_literal(&conn, &a_hash),
        hex_literal(&conn, &[7; 32]),
    );
    raw(&mut conn, anchor_sql).await.expect("a valid anchor");
    // B's rows have lower ids than A's anchor, and no anchor of their own.
    raw(
        &mut conn,
        format!("DELETE FROM audit_events WHERE id = {}", b[0]),
    )
    .await
    .expect_err("B's row is not archived");
    raw(
        &mut conn,
        format!("DELETE FROM audit_events WHERE id IN ({first}, {last})"),
    )
    .await
    .expect("A's archived rows go");
    raw(
        &mut conn,
        format!("DELETE FROM audit_events WHERE id = {}", a[2]),
    )
    .await
    .expect_err("A's live row stays");
    // An anchor of B that claims A's rows is refused.
    let forged = format!(
        "INSERT INTO audit_archives (chain, first_id, last_id, first_prev_hash, last_hash,
             time_ms, file, sha256) VALUES ('{}', {}, {}, {}, {}, 1, 'b.jsonl.gz', {})",
        chain_b().key(),
        a[2],
        a[2],
        hex_literal(&conn, &a_hash),
        hex_literal(&conn, &a_hash),
        hex_literal(&conn, &[7; 32]),
    );
    raw(&mut conn, forged)
        .await
        .expect_err("an anchor names rows of its own chain");
    drop(conn);
    let reports = verify_all(&store).await;
    let ra = report(&reports, &chain_a());
    assert!(ra.is_intact(), "{reports:?}");
    assert_eq!((ra.checked, ra.last_id), (1, a[2]));
    assert_eq!(ra.anchor.as_ref().map(|x| x.last_id), Some(last));
    let rb = report(&reports, &chain_b());
    assert!(rb.is_intact() && rb.anchor.is_none() && rb.checked == 3);
    let mut conn = store.acquire().await.expect("conn");
    assert_eq!(
        head(&mut conn, &chain_b()).await.expect("head").0,
        i64::try_from(b[2]).expect("id")
    );
}

/// `bytes` as a blob literal of the connection's backend.
fn hex_literal(conn: &crate::db::StoreConn, bytes: &[u8]) -> String {
    match conn {
        crate::db::StoreConn::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
        crate::db::StoreConn::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
    }
}

async fn raw(conn: &mut crate::db::StoreConn, sql: String) -> sqlx::Result<()> {
    match conn.db() {
        DbConn::Sqlite(c) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(c)
            .await
            .map(drop),
        DbConn::Postgres(c) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(c)
            .await
            .map(drop),
    }
}

/// A database of version 4 (before chains) with records, migrated to version 6: the
/// records join the local chain with their hashes unchanged (the head of the three
/// samples as earlier versions wrote it), the triggers still refuse UPDATE and DELETE,
/// and the local chain continues.
#[tokio::test]
async fn a_database_of_version_4_migrates_with_its_chain_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(crate::db::DB_FILE);
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        crate::db::MIGRATOR
            .run_to(4, &mut conn)
            .await
            .expect("version 4");
        let mut prev = GENESIS;
        for i in 1..4_i64 {
            let c = sample(u64::try_from(i).expect("i")).to_columns();
            let hash = chain_hash(&prev, "", i, &c);
            let insert = sqlx::query(
                "INSERT INTO audit_events (id, time_ms, actor, serial, remote, namespace, pool,
                     pe_id, action, outcome, detail, prev_hash, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            );
            bind_columns!(insert.bind(i), c)
                .bind(prev.to_vec())
                .bind(hash.to_vec())
                .execute(&mut conn)
                .await
                .expect("a version 4 row");
            prev = hash;
        }
        conn.close().await.expect("close");
    }
    let store = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("migrates");
    let reports = verify_all(&store).await;
    let [local] = &reports[..] else {
        panic!("{reports:?}")
    };
    assert_eq!(local.chain, Chain::Local);
    assert!(local.is_intact());
    assert_eq!(
        local.head_hex(),
        "fced2a42eaedb1af6c145b7047771aee459bfce166ed59c542f5ff6195337fb1"
    );
    let mut conn = store.acquire().await.expect("conn");
    for sql in [
        "UPDATE audit_events SET detail = 'x' WHERE id = 1",
        "DELETE FROM audit_events WHERE id = 1",
    ] {
        exec(&mut conn, sql).await.expect_err("append-only");
    }
    drop(conn);
    assert_eq!(append(&store, &Chain::Local, 4..5).await, [4]);
    append(&store, &chain_a(), 5..6).await;
    assert!(verify_all(&store).await.iter().all(VerifyReport::is_intact));
}
