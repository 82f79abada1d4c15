//! The shared control plane's snapshot (both backends) and change feed (PostgreSQL).

use std::time::{Duration, Instant};

use identity::{Action, Grant, Revocation, SpiffeId, TrustDomain};

use super::super::test_db::{self, TestDb, on_both_backends};
use super::super::*;

on_both_backends!(
    a_snapshot_holds_the_whole_control_plane,
    the_change_feed_is_postgres_only,
);

fn grant(identity: &str, namespace: &str) -> Grant {
    Grant {
        identity: identity.parse().expect("identity pattern"),
        namespace: namespace.parse().expect("namespace pattern"),
        pools: "*".parse().expect("pool pattern"),
        actions: [Action::Register].into_iter().collect(),
        labels: None,
    }
}

async fn a_snapshot_holds_the_whole_control_plane(db: &TestDb) {
    assert_eq!(
        db.store.snapshot().await.expect("empty"),
        Snapshot::default()
    );
    // (In-memory SQLite has one connection: it is given back before the snapshot.)
    let (store, mut conn) = db.open().await;
    create_namespace(&mut conn, "default", 1).await.expect("ns");
    let mut decl = PoolDecl::new("default", b"echo".to_vec());
    decl.max_pes = Some(3);
    put_pool(&mut conn, &decl, 2).await.expect("pool");
    let local = TrustDomain::new("acme.test").expect("domain");
    add_trust_domain(&mut conn, &local, true, "ROOTS", Some("CRLS"), 3)
        .await
        .expect("domain");
    add_grant(&mut conn, &grant("spiffe://acme.test/pe/*", "default"), 4)
        .await
        .expect("grant");
    let id = SpiffeId::parse("spiffe://acme.test/pe/gone").expect("id");
    add_revocation(&mut conn, &Revocation::Identity(id.clone()), None, 5)
        .await
        .expect("revocation");
    let hasher = TokenHasher::insecure_fast_for_tests();
    let kept = create_token(&mut conn, &hasher, "kept", Role::Admin, None, 6)
        .await
        .expect("token");
    let gone = create_token(&mut conn, &hasher, "gone", Role::Admin, None, 7)
        .await
        .expect("token");
    revoke_token(&mut conn, &gone.info.id, 8)
        .await
        .expect("revoke");
    drop(conn);

    let s = store.snapshot().await.expect("snapshot");
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(s.pools.len(), 1);
    assert_eq!(s.pools[0].max_pes, Some(3));
    assert_eq!(s.trust_domains.len(), 1);
    assert_eq!(s.trust_domains[0].crls_pem.as_deref(), Some("CRLS"));
    assert_eq!(s.grants.len(), 1);
    assert_eq!(s.revocations[0].revocation, Revocation::Identity(id));
    assert_eq!(s.revoked_tokens, vec![gone.info.id.clone()]);
    assert!(!s.revoked_tokens.contains(&kept.info.id));
    assert_eq!(s, store.snapshot().await.expect("again"), "stable order");
}

async fn the_change_feed_is_postgres_only(db: &TestDb) {
    let feed = db.store.change_feed().await.expect("feed");
    assert_eq!(feed.is_some(), db.store.backend() == Backend::Postgres);
}

/// How long a notice may take to reach a listener of the same server (the fleet's
/// budget is 1 s from the API call to the effect).
const WITHIN: Duration = Duration::from_secs(1);

/// The feed's next report, or `None` if there is none within `wait`.
async fn next_within(feed: &mut ChangeFeed, wait: Duration) -> Option<Change> {
    tokio::time::timeout(wait, feed.next()).await.ok()
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // Instant::now: the notice's latency, printed
async fn a_committed_write_wakes_a_listener_and_a_rolled_back_one_does_not() {
    let test = "a_committed_write_wakes_a_listener_and_a_rolled_back_one_does_not";
    let Some(db) = test_db::postgres(test).await else {
        return;
    };
    let mut feed = db
        .store
        .change_feed()
        .await
        .expect("feed")
        .expect("postgres");

    let mut tx = db.store.begin().await.expect("begin");
    add_grant(&mut tx, &grant("spiffe://acme.test/pe/*", "*"), 1)
        .await
        .expect("grant");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        next_within(&mut feed, Duration::from_millis(500)).await,
        None
    );

    // One notice per table and transaction (identical notices of a transaction are
    // folded by PostgreSQL): at most two changes for four statements on two tables.
    let start = Instant::now();
    let mut tx = db.store.begin().await.expect("begin");
    for name in ["a", "b", "c"] {
        create_namespace(&mut tx, name, 1).await.expect("ns");
    }
    add_grant(&mut tx, &grant("spiffe://acme.test/pe/*", "*"), 1)
        .await
        .expect("grant");
    tx.commit().await.expect("commit");
    assert_eq!(next_within(&mut feed, WITHIN).await, Some(Change::Changed));
    eprintln!("notice after {:?}", start.elapsed());
    let more = next_within(&mut feed, Duration::from_millis(300)).await;
    assert!(matches!(more, None | Some(Change::Changed)), "{more:?}");
    assert_eq!(
        next_within(&mut feed, Duration::from_millis(300)).await,
        None
    );

    // A write that is not through rsp (psql) is heard too; tables outside the control
    // plane are not.
    let mut conn = db.store.acquire().await.expect("conn");
    let outside = |sql: &'static str| sqlx::AssertSqlSafe(sql);
    if let StoreConn::Postgres(c) = &mut conn {
        sqlx::raw_sql(outside(
            "INSERT INTO peers (address, created_ms) VALUES ('127.0.0.1:9901', 1)",
        ))
        .execute(&mut **c)
        .await
        .expect("peer");
        assert_eq!(
            next_within(&mut feed, Duration::from_millis(300)).await,
            None
        );
        sqlx::raw_sql(outside("DELETE FROM admin_tokens"))
            .execute(&mut **c)
            .await
            .expect("delete");
        assert_eq!(next_within(&mut feed, WITHIN).await, Some(Change::Changed));
    }
}

#[tokio::test]
async fn a_listener_whose_connection_is_killed_comes_back_and_asks_for_a_resync() {
    let test = "a_listener_whose_connection_is_killed_comes_back_and_asks_for_a_resync";
    let Some(db) = test_db::postgres(test).await else {
        return;
    };
    let mut feed = db
        .store
        .change_feed()
        .await
        .expect("feed")
        .expect("postgres");
    let mut conn = db.store.acquire().await.expect("conn");
    let StoreConn::Postgres(c) = &mut conn else {
        unreachable!("a PostgreSQL store");
    };
    assert_eq!(test_db::terminate_listeners(c).await, 1, "one listener");
    match next_within(&mut feed, Duration::from_secs(5)).await {
        Some(Change::Lost(why)) => eprintln!("lost: {why}"),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert_eq!(
        next_within(&mut feed, Duration::from_secs(5)).await,
        Some(Change::Resync)
    );
    // And it hears changes again.
    create_namespace(&mut **c, "after", 1).await.expect("ns");
    assert_eq!(next_within(&mut feed, WITHIN).await, Some(Change::Changed));
}
