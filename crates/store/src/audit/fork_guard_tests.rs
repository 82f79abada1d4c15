//! The fork guard (issue 20; docs/STORE.md "The fork guard"): the database itself refuses
//! a second audit row after one predecessor, whoever writes it (raw SQL here, bypassing
//! the writer). On SQLite (migration 0008's trigger) it moreover accepts a row only at the
//! head of its chain; PostgreSQL keeps `UNIQUE (prev_hash)`.

use super::*;

on_both_backends!(file:
    the_database_refuses_a_fork_and_sqlite_any_row_off_the_head,
    two_inserters_racing_cannot_fork,
);

/// What SQLite's guard says when a row does not chain from its chain's head.
const NOT_AT_HEAD: &str = "does not chain from the head of its chain";

/// What each backend's guard says when a row would fork its chain.
fn fork_refusal(conn: &crate::db::StoreConn) -> &'static str {
    match conn {
        crate::db::StoreConn::Sqlite(_) => NOT_AT_HEAD,
        crate::db::StoreConn::Postgres(_) => "audit_events_prev_hash_key",
    }
}

/// Inserts `record` as row `id` of `chain` chaining from `prev` (its hash computed as the
/// writer computes it), in one statement on `conn`: what someone with SQL access could do.
async fn insert_row(
    conn: &mut crate::db::StoreConn,
    chain: &Chain,
    id: i64,
    prev: &Hash,
    record: &Record,
) -> std::result::Result<(), String> {
    let c = record.to_columns();
    let hash = chain_hash(prev, chain.key(), id, &c);
    let key = chain.key();
    with_conn!(
        conn,
        "INSERT INTO audit_events (id, chain, time_ms, actor, serial, remote, namespace,
             pool, pe_id, action, outcome, detail, prev_hash, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        |c_, sql| bind_row!(sqlx::query(sql), id, key, c, prev, hash)
            .execute(c_)
            .await
            .map(drop)
    )
    .map_err(|err| err.to_string())
}

/// The largest id of the table.
async fn max_id(conn: &mut crate::db::StoreConn) -> i64 {
    let max: Option<i64> = with_conn!(conn, "SELECT max(id) FROM audit_events", |c, sql| {
        sqlx::query_scalar(sql).fetch_one(c).await
    })
    .expect("max id");
    max.unwrap_or(0)
}

fn refused(result: std::result::Result<(), String>, why: &str, what: &str) {
    let err = result.expect_err(what);
    assert!(err.contains(why), "{what}: {err}");
}

/// For the local chain and a registrar's chain, interleaved with another chain: a row
/// chaining from the head's predecessor (a fork) is refused by the database on both
/// backends; on SQLite so is one chaining from a made-up hash, or from the head but with
/// an id below the table's largest; a row at the head is accepted; every chain still
/// verifies. What the guard lets through (PostgreSQL's made-up predecessors; a
/// registrar's first row, whose genesis neither checks in SQL) `verify` finds.
async fn the_database_refuses_a_fork_and_sqlite_any_row_off_the_head(db: &TestDb) {
    let store = db.store.clone();
    for chain in [Chain::Local, chain_a()] {
        append(&store, &chain, 0..3).await;
        append(&store, &chain_b(), 0..2).await;
        let mut conn = store.acquire().await.expect("conn");
        let rows = query(
            &mut conn,
            &AuditFilter {
                chain: Some(chain.clone()),
                order: Order::NewestFirst,
                limit: 2,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("query")
        .events;
        let (head_hash, before_head) = (rows[0].hash, rows[1].hash);
        let next = max_id(&mut conn).await + 1;
        let r = sample(7);
        let sqlite = matches!(conn, crate::db::StoreConn::Sqlite(_));
        refused(
            insert_row(&mut conn, &chain, next, &before_head, &r).await,
            fork_refusal(&conn),
            "a fork from the head's predecessor",
        );
        if sqlite {
            refused(
                insert_row(&mut conn, &chain, next, &[9; 32], &r).await,
                NOT_AT_HEAD,
                "a made-up predecessor",
            );
        }
        // At the head: accepted. A registrar's chain may leave a gap in the ids (the local
        // chain's ids are contiguous: `verify` would report the gap).
        let gap = i64::from(sqlite && chain != Chain::Local);
        insert_row(&mut conn, &chain, next + gap, &head_hash, &r)
            .await
            .expect("an append at the head");
        let (head_id, head_hash) = head(&mut conn, &chain).await.expect("head");
        assert_eq!(head_id, next + gap);
        if gap == 1 {
            refused(
                insert_row(&mut conn, &chain, next, &head_hash, &r).await,
                "must take an id past every record",
                "an id below the largest",
            );
        }
        insert_row(&mut conn, &chain, head_id + 1, &head_hash, &r)
            .await
            .expect("the next append at the head");
    }
    let reports = verify_all(&store).await;
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert!(reports.iter().all(VerifyReport::is_intact), "{reports:?}");
    let mut conn = store.acquire().await.expect("conn");
    let fresh = Chain::Registrar(id("spiffe://acme.test/registrar/enrp-g"));
    let next = max_id(&mut conn).await + 1;
    insert_row(&mut conn, &fresh, next, &[5; 32], &sample(1))
        .await
        .expect("neither backend checks a registrar's genesis in SQL");
    raw(
        &mut conn,
        format!("DELETE FROM audit_events WHERE id = {next}"),
    )
    .await
    .expect_err("still append-only");
    drop(conn);
    // `verify` finds it.
    let reports = verify_all(&store).await;
    assert!(!report(&reports, &fresh).is_intact(), "{reports:?}");
}

/// Two transactions that do not take the store's write lock insert the same chain's next
/// row, both from the same head: the second waits for the first (SQLite's single writer;
/// on PostgreSQL the unique index's wait for the first's key), then is refused. Without
/// the guard it inserts a fork.
async fn two_inserters_racing_cannot_fork(db: &TestDb) {
    let store = db.store.clone();
    append(&store, &chain_a(), 0..3).await;
    let mut first = store.acquire().await.expect("conn");
    let mut second = store.acquire().await.expect("conn");
    let (head_id, head_hash) = head(&mut first, &chain_a()).await.expect("head");
    let why = fork_refusal(&first);
    raw(&mut first, "BEGIN".into()).await.expect("begin");
    insert_row(&mut first, &chain_a(), head_id + 1, &head_hash, &sample(4))
        .await
        .expect("the first append");
    let racer = tokio::spawn(async move {
        raw(&mut second, "BEGIN".into()).await.expect("begin");
        let result = insert_row(&mut second, &chain_a(), head_id + 2, &head_hash, &sample(5)).await;
        raw(&mut second, "ROLLBACK".into()).await.expect("rollback");
        result
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!racer.is_finished(), "the second inserter did not wait");
    raw(&mut first, "COMMIT".into()).await.expect("commit");
    let result = tokio::time::timeout(std::time::Duration::from_secs(30), racer)
        .await
        .expect("the second inserter finishes")
        .expect("task");
    refused(result, why, "a fork by a racing inserter");
    drop(first);
    let reports = verify_all(&store).await;
    let a = report(&reports, &chain_a());
    assert!(a.is_intact(), "{reports:?}");
    assert_eq!(
        (a.checked, a.last_id),
        (4, u64::try_from(head_id + 1).expect("id"))
    );
}

/// Every row's id, chain, prev_hash and hash, in id order.
async fn rows<C: Conn + ?Sized>(conn: &mut C) -> Vec<(i64, String, Vec<u8>, Vec<u8>)> {
    with_conn!(
        conn,
        "SELECT id, chain, prev_hash, hash FROM audit_events ORDER BY id",
        |c, sql| sqlx::query_as(sql).fetch_all(c).await
    )
    .expect("rows")
}

/// The rows and the chains' reports of a store filled at version 7.
type Version7 = (Vec<(i64, String, Vec<u8>, Vec<u8>)>, Vec<VerifyReport>);

/// Fills a store at schema version 7: the local chain (rows 1–4) and registrar A's chain
/// (5–7), with the local chain's rows 1–2 archived (their anchor, then their deletion, as
/// `enrpd audit archive` leaves them); returns its rows and reports.
async fn fill_version_7<C: Conn + ?Sized>(conn: &mut C) -> Version7 {
    let local: Vec<Record> = (0..4).map(sample).collect();
    append_in(conn, &Chain::Local, &local).await.expect("local");
    let a: Vec<Record> = (4..7).map(sample).collect();
    append_in(conn, &chain_a(), &a).await.expect("A");
    let second: Vec<u8> = with_conn!(
        conn,
        "SELECT hash FROM audit_events WHERE id = 2",
        |c, sql| sqlx::query_scalar(sql).fetch_one(c).await
    )
    .expect("row 2");
    with_conn!(
        conn,
        "INSERT INTO audit_archives (chain, first_id, last_id, first_prev_hash, last_hash,
             time_ms, file, sha256) VALUES ('', 1, 2, ?1, ?2, 1, 'local.jsonl.gz', ?3)",
        |c, sql| sqlx::query(sql)
            .bind(GENESIS.to_vec())
            .bind(second.clone())
            .bind(vec![7_u8; 32])
            .execute(c)
            .await
            .map(drop)
    )
    .expect("anchor");
    with_conn!(conn, "DELETE FROM audit_events WHERE id <= 2", |c, sql| {
        sqlx::query(sql).execute(c).await.map(drop)
    })
    .expect("archived rows deleted");
    (rows(conn).await, verify(conn).await.expect("verify"))
}

/// A store of version 7 with records of two chains and an archived prefix, migrated to
/// version 8: every row (id, chain, prev_hash, hash) unchanged, both chains verify from
/// the same heads and anchor, `UNIQUE (prev_hash)` is gone on SQLite and kept on
/// PostgreSQL, the append-only and delete triggers hold, the guard refuses a fork, and
/// the chains continue and archive.
async fn check_migrated_from_version_7(
    store: &Store,
    before: &[(i64, String, Vec<u8>, Vec<u8>)],
    heads: &[VerifyReport],
) {
    let mut conn = store.acquire().await.expect("conn");
    assert_eq!(
        rows(&mut conn).await,
        before,
        "rows changed by the migration"
    );
    let after = verify_all(store).await;
    assert_eq!(after, heads, "the chains changed");
    assert_eq!(
        report(&after, &Chain::Local)
            .anchor
            .as_ref()
            .map(|a| a.last_id),
        Some(2)
    );
    let (unique, expected) = match conn {
        crate::db::StoreConn::Sqlite(_) => {
            ("SELECT count(*) FROM pragma_index_list('audit_events')", 0)
        }
        crate::db::StoreConn::Postgres(_) => (
            "SELECT count(*) FROM pg_constraint WHERE conname = 'audit_events_prev_hash_key'",
            1,
        ),
    };
    let n: i64 = with_conn!(&mut conn, unique, |c, sql| sqlx::query_scalar(sql)
        .fetch_one(c)
        .await)
    .expect("indexes");
    assert_eq!(
        n, expected,
        "UNIQUE (prev_hash): gone on SQLite, kept on PostgreSQL"
    );
    for sql in [
        "UPDATE audit_events SET detail = 'x' WHERE id = 3",
        "DELETE FROM audit_events WHERE id = 3",
        "DELETE FROM audit_events WHERE id = 5",
    ] {
        raw(&mut conn, sql.into()).await.expect_err("append-only");
    }
    let (_, head_hash) = head(&mut conn, &Chain::Local).await.expect("head");
    let fork_from = &before[0].2;
    let fork_from = Hash::try_from(&fork_from[..]).expect("hash");
    refused(
        insert_row(&mut conn, &Chain::Local, 8, &fork_from, &sample(9)).await,
        fork_refusal(&conn),
        "a fork after the migration",
    );
    insert_row(&mut conn, &Chain::Local, 8, &head_hash, &sample(9))
        .await
        .expect("the local chain continues");
    drop(conn);
    append(store, &chain_a(), 9..10).await;
    let dir = tempfile::tempdir().expect("tempdir");
    archive::archive(
        store,
        &Chain::Local,
        &archive::Target::File(dir.path().join("local-2.jsonl.gz")),
        archive::Cut::BeforeId(8),
        None,
        Record::new(1_800_000_000_000, AuditAction::AuditArchive, Outcome::Ok),
        1_800_000_000_000,
    )
    .await
    .expect("the next archive");
    let reports = verify_all(store).await;
    assert!(reports.iter().all(VerifyReport::is_intact), "{reports:?}");
    let local = report(&reports, &Chain::Local);
    assert_eq!(local.anchor.as_ref().map(|a| a.last_id), Some(4));
}

#[tokio::test]
async fn a_store_of_version_7_migrates_with_its_chains_unchanged_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(crate::db::DB_FILE);
    let (before, heads) = {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        crate::db::MIGRATOR
            .run_to(7, &mut conn)
            .await
            .expect("version 7");
        let state = fill_version_7(&mut conn).await;
        conn.close().await.expect("close");
        state
    };
    assert_eq!(before.len(), 5);
    let store = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("migrates");
    check_migrated_from_version_7(&store, &before, &heads).await;
}

#[tokio::test]
async fn a_store_of_version_7_migrates_with_its_chains_unchanged_postgres() {
    let test = concat!(module_path!(), "::a_store_of_version_7_migrates");
    let Some(db) = crate::db::test_db::empty_postgres(test).await else {
        return;
    };
    let (before, heads) = {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        crate::db::MIGRATOR_POSTGRES
            .run_to(7, &mut conn)
            .await
            .expect("version 7");
        let state = fill_version_7(&mut conn).await;
        conn.close().await.expect("close");
        state
    };
    let store = Store::connect(&db.url, &StoreOptions::default())
        .await
        .expect("migrates");
    check_migrated_from_version_7(&store, &before, &heads).await;
    store.close().await;
}

/// The audit writer on SQLite commits a batch in one round trip after where its previous
/// commit left the chain (`commit_at`), without reading the head back. Once anyone else
/// has appended (the admin API's `append_in`), that point is stale: the fork guard must
/// refuse the whole batch, nothing of it may stay, and the connection must be out of the
/// transaction (the next commit works). A point that names the head works again. Without
/// the guard the stale batch would reuse ids 7 – 9 (a primary-key error after row 7 and 8
/// were taken, or, once they are archived, a fork).
#[tokio::test]
async fn a_writers_stale_append_point_is_refused_and_changes_nothing() {
    let db = crate::db::test_db::sqlite_file().await;
    let store = db.store.clone();
    let chain = Chain::Local;
    let records: Vec<Record> = (0..3).map(sample).collect();
    let three: Vec<&Record> = records.iter().collect();
    let wide_records: Vec<Record> = (0..COMMIT_AT_MAX as u64).map(sample).collect();
    let wide: Vec<&Record> = wide_records.iter().collect();
    let mut conn = store.acquire().await.expect("conn");
    let sqlite = crate::db::test_db::sqlite_conn(&mut conn);
    let fresh = AppendPoint {
        next: 1,
        prev: GENESIS,
    };
    let end = commit_at(sqlite, &chain, &three, fresh)
        .await
        .expect("first");
    assert_eq!(end.next, 4);
    let end = commit_at(sqlite, &chain, &three, end)
        .await
        .expect("at the head");
    assert_eq!(end.next, 7);
    // Rows 7 and 8 from elsewhere.
    assert_eq!(append(&store, &chain, 10..12).await, vec![7, 8]);
    let err = commit_at(sqlite, &chain, &three, end)
        .await
        .expect_err("stale point");
    assert!(
        err.to_string().contains("past every record"),
        "refused by the fork guard: {err}"
    );
    // The head's hash with an id already taken, and the next id with a made-up hash.
    let (_, head) = head(&mut *sqlite, &chain).await.expect("head");
    for stale in [
        AppendPoint {
            next: 8,
            prev: head,
        },
        AppendPoint {
            next: 9,
            prev: [7; 32],
        },
    ] {
        commit_at(sqlite, &chain, &three, stale)
            .await
            .expect_err("stale point");
    }
    assert_eq!(
        max_id(&mut conn).await,
        8,
        "nothing of the refused batches stayed"
    );
    let sqlite = crate::db::test_db::sqlite_conn(&mut conn);
    let end = commit_at(
        sqlite,
        &chain,
        &wide,
        AppendPoint {
            next: 9,
            prev: head,
        },
    )
    .await
    .expect("at the head again, out of the refused transactions");
    assert_eq!(end.next, 9 + COMMIT_AT_MAX as i64);
    let reports = verify_all(&store).await;
    let r = report(&reports, &chain);
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.checked, 8 + COMMIT_AT_MAX as u64);
    assert_eq!(r.head, end.prev, "the point returned is the chain's head");
}

/// `commit_at` is one `INSERT` that commits by itself. Inside a transaction it would not
/// be durable when it returned, so it refuses to run there, writing nothing; the writer
/// then takes its slow path.
#[tokio::test]
async fn a_commit_inside_a_transaction_is_refused_and_writes_nothing() {
    let db = crate::db::test_db::sqlite_file().await;
    let store = db.store.clone();
    let records: Vec<Record> = (0..2).map(sample).collect();
    let two: Vec<&Record> = records.iter().collect();
    let fresh = AppendPoint {
        next: 1,
        prev: GENESIS,
    };
    let mut conn = store.acquire().await.expect("conn");
    {
        let sqlite = crate::db::test_db::sqlite_conn(&mut conn);
        let mut tx = sqlite.begin().await.expect("begin");
        let err = commit_at(&mut tx, &Chain::Local, &two, fresh)
            .await
            .expect_err("inside a transaction");
        assert!(err.to_string().contains("inside a transaction"), "{err}");
        tx.commit().await.expect("commit nothing");
    }
    assert_eq!(max_id(&mut conn).await, 0, "nothing written");
    let sqlite = crate::db::test_db::sqlite_conn(&mut conn);
    let end = commit_at(sqlite, &Chain::Local, &two, fresh)
        .await
        .expect("outside one");
    assert_eq!(end.next, 3);
    assert_eq!(max_id(&mut conn).await, 2);
}
