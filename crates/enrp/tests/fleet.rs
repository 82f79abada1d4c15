//! The shared control plane applied to a running registrar (issue 19 item 2,
//! `enrp::fleet`): a change committed to the fleet's PostgreSQL store by someone else (as
//! another registrar's admin API commits it) closes connections and removes PEs here
//! within 1 s, audited here. Real TLS, a real registrar started as `enrpd run` starts it
//! (its own data directory), the fleet sync on a real PostgreSQL database
//! (`RSP_TEST_POSTGRES`, `bash .ci/postgres start`; skipped without it unless
//! `RSP_REQUIRE_POSTGRES=1`).

// Measures wall time from the commit to the effect: a driver, not a core.
#![allow(clippy::disallowed_methods)]

#[allow(
    dead_code,
    reason = "the benches' helpers: this test takes the PKI and the start-up"
)]
#[path = "../benches/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::wire::AsapMsg;
use asap::wire::param::{Namespace, PoolHandle};
use identity::{Revocation, SpiffeId};
use store::db::{self, Store, StoreOptions, test_db};
use support::{Pki, init_registrar};
use testkit::msg::registration;

/// The fleet's budget from a committed change to its effect at every registrar.
const WITHIN: Duration = Duration::from_secs(1);

/// Registers PE `pe_id` in pool `fleet` over `conn`; panics unless accepted.
async fn register(conn: &mut Connection, pe_id: u32) {
    let pool = PoolHandle::new("fleet").expect("pool handle");
    conn.send(&registration(&pool, pe_id, IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .await
        .expect("send");
    loop {
        match conn.recv().await.expect("answer") {
            AsapMsg::EndpointKeepAlive { .. } => {}
            AsapMsg::RegistrationResponse { reject: false, .. } => return,
            other => panic!("PE {pe_id} refused: {other:?}"),
        }
    }
}

/// The PE IDs of pool `fleet` in the registrar's handlespace.
async fn pes(running: &enrp::Running) -> Vec<u32> {
    let ns = Namespace::new("default").expect("namespace");
    let pool = PoolHandle::new("fleet").expect("pool handle");
    running
        .control_plane()
        .control()
        .pool(ns, pool)
        .await
        .map(|p| {
            p.pool_elements
                .iter()
                .map(|e| e.pool_element.pe_id.get())
                .collect()
        })
        .unwrap_or_default()
}

/// How many audit records of `action` for PE `pe_id` the registrar's own store holds.
async fn audited(data: &std::path::Path, pe_id: u32, action: &str) -> i64 {
    let store = Store::open(data, &StoreOptions::default())
        .await
        .expect("the registrar's store");
    let mut conn = store.acquire().await.expect("connection");
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE pe_id = ? AND action = ?")
        .bind(i64::from(pe_id))
        .bind(action)
        .fetch_one(conn.sqlite().expect("SQLite"))
        .await
        .expect("query");
    drop(conn);
    store.close().await;
    n
}

/// A registrar started as `enrpd init` + `enrpd run` start it, and a PostgreSQL database
/// of its own as the fleet's shared store, seeded with what `enrpd init` gave the
/// registrar (its trust domain, namespace and grants). `None`: no PostgreSQL (skipped).
async fn registrar(test: &str) -> Option<(Pki, tempfile::TempDir, enrp::Running, test_db::TestDb)> {
    let shared = test_db::postgres(test).await?;
    let pki = Pki::new();
    pki.registrar("c");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = init_registrar(pki.dir.path(), "c", dir.path()).await;
    let running = enrp::run(config).await.expect("registrar");
    let local = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("the registrar's store");
    let seed = local.snapshot().await.expect("snapshot");
    local.close().await;
    let mut tx = shared.store.begin().await.expect("begin");
    for ns in &seed.namespaces {
        db::create_namespace(&mut tx, &ns.name, 1)
            .await
            .expect("ns");
    }
    for d in &seed.trust_domains {
        db::add_trust_domain(&mut tx, &d.name, d.is_local, &d.roots_pem, None, 1)
            .await
            .expect("domain");
    }
    for g in &seed.grants {
        db::add_grant(&mut tx, &g.grant, 1).await.expect("grant");
    }
    tx.commit().await.expect("commit");
    Some((pki, dir, running, shared))
}

/// Starts the fleet sync of `running` on the shared store.
async fn sync(shared: &Store, running: &enrp::Running) -> tokio::task::JoinHandle<()> {
    sync_every(shared, running, Duration::from_secs(10)).await
}

/// [`sync`] with a re-read every `every`.
async fn sync_every(
    shared: &Store,
    running: &enrp::Running,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    enrp::fleet::sync(
        shared.clone(),
        Arc::clone(running.control_plane()),
        None,
        every,
    )
    .await
    .expect("fleet sync")
    .expect("a shared store")
}

/// Waits until the registrar's audit holds one `action` record of PE `pe_id` (the
/// record commits just after the handlespace changed), and checks it stays one.
async fn removal_audited(data: &std::path::Path, pe_id: u32, action: &str) {
    until(action, || async { audited(data, pe_id, action).await >= 1 }).await;
    assert_eq!(
        audited(data, pe_id, action).await,
        1,
        "{action} of PE {pe_id}"
    );
}

/// Polls `done` every 10 ms until it holds; returns how long that took (panics past 5 s).
async fn until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_and_a_withdrawn_grant_committed_elsewhere_take_effect_here_within_a_second() {
    let Some((pki, dir, running, shared)) = registrar("fleet::revocation_and_grant").await else {
        return;
    };
    let fleet = sync(&shared.store, &running).await;

    let addr = running.asap_addr();
    let mut a = Connection::connect(&pki.client("pe/a"), addr)
        .await
        .expect("connect");
    let mut b = Connection::connect(&pki.client("pe/b"), addr)
        .await
        .expect("connect");
    register(&mut a, 1).await;
    register(&mut b, 2).await;
    assert_eq!(pes(&running).await, [1, 2]);

    // (i) A revocation committed elsewhere: pe/a's connection closes, its PE goes, the
    // removal is audited here.
    let revoked = Revocation::Identity(SpiffeId::parse("spiffe://bench.test/pe/a").expect("id"));
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        db::add_revocation(&mut tx, &revoked, Some("test"), 2)
            .await
            .expect("revoke");
        tx.commit().await.expect("commit");
    }
    assert!(
        closed(&mut a).await,
        "the revoked PE's connection stays open"
    );
    let took = start.elapsed();
    eprintln!("revocation committed elsewhere -> connection closed here: {took:?}");
    assert!(took < WITHIN, "{took:?}");
    until("the revoked PE removed", || async {
        pes(&running).await == [2]
    })
    .await;
    removal_audited(dir.path(), 1, "remove:revoked").await;
    // A revoked identity cannot come back: its handshake is refused (with TLS 1.3 the
    // client learns it at its first read).
    let refused = match Connection::connect(&pki.client("pe/a"), addr).await {
        Err(_) => true,
        Ok(mut again) => {
            let pool = PoolHandle::new("fleet").expect("pool handle");
            let _ = again
                .send(&registration(&pool, 3, IpAddr::V4(Ipv4Addr::LOCALHOST)))
                .await;
            matches!(
                tokio::time::timeout(Duration::from_secs(5), again.recv()).await,
                Ok(Err(_))
            )
        }
    };
    assert!(refused, "the revoked identity is refused");
    assert_eq!(pes(&running).await, [2]);

    // (iii) The grant withdrawn elsewhere: pe/b's PE goes, audited here.
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        for g in db::list_grants(&mut tx).await.expect("grants") {
            db::delete_grant(&mut tx, g.id).await.expect("withdraw");
        }
        tx.commit().await.expect("commit");
    }
    let took = until("the ungranted PE removed", || async {
        pes(&running).await.is_empty()
    })
    .await;
    eprintln!(
        "grant withdrawn elsewhere -> PE removed here: {:?}",
        start.elapsed()
    );
    assert!(took < WITHIN, "{took:?}");
    removal_audited(dir.path(), 2, "remove:ungranted").await;

    // Applying the same state again (the periodic re-read) changes nothing and audits
    // nothing more.
    fleet.abort();
    let again = sync(&shared.store, &running).await;
    removal_audited(dir.path(), 1, "remove:revoked").await;
    removal_audited(dir.path(), 2, "remove:ungranted").await;
    again.abort();
    running.shutdown().await.expect("stops cleanly");
}

/// Whether the connection is closed by the registrar within 5 s (keep-alives skipped).
async fn closed(conn: &mut Connection) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.recv().await {
                Ok(AsapMsg::EndpointKeepAlive { .. }) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => return,
            }
        }
    })
    .await
    .is_ok()
}

/// (ii) and (v): a federated trust domain and a grant for it created elsewhere let its
/// PE register here (refused before the grant, and audited so); the domain removed
/// elsewhere closes the PE's connection here and removes its PE within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_domain_and_grant_created_elsewhere_admit_a_pe_here_and_its_removal_drops_it() {
    let Some((pki, dir, running, shared)) = registrar("fleet::trust_domain").await else {
        return;
    };
    let _fleet = sync(&shared.store, &running).await;
    let partner = trust::testing::TestCa::new("partner.test");
    let client = {
        let store =
            trust::TrustStore::new(partner.leaf("pe/x").issue().identity()).expect("trust store");
        store
            .add_domain(pki.ca.bundle())
            .expect("the registrar's CA");
        Arc::new(store)
    };
    let name = identity::TrustDomain::new("partner.test").expect("domain");
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        db::add_trust_domain(&mut tx, &name, false, &partner.root_pem(), None, 2)
            .await
            .expect("domain");
        tx.commit().await.expect("commit");
    }
    let took = until("the partner domain trusted", || async {
        running.control_plane().is_trusted(&name)
    })
    .await;
    eprintln!(
        "trust domain added elsewhere -> trusted here: {:?}",
        start.elapsed()
    );
    assert!(took < WITHIN, "{took:?}");

    // A valid certificate of a trusted domain, but no grant: refused, and audited here.
    let addr = running.asap_addr();
    let mut pe = Connection::connect(&client, addr).await.expect("connect");
    let pool = PoolHandle::new("fleet").expect("pool handle");
    pe.send(&registration(&pool, 7, IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .await
        .expect("send");
    let answer = loop {
        match pe.recv().await.expect("answer") {
            AsapMsg::EndpointKeepAlive { .. } => {}
            other => break other,
        }
    };
    assert!(
        matches!(answer, AsapMsg::RegistrationResponse { reject: true, .. }),
        "{answer:?}"
    );
    until("the refusal audited", || async {
        audited(dir.path(), 7, "register").await >= 1
    })
    .await;

    // The grant created elsewhere: the same PE registers here.
    let grant = identity::Grant {
        identity: "spiffe://partner.test/pe/*".parse().expect("pattern"),
        namespace: "*".parse().expect("pattern"),
        pools: "*".parse().expect("pattern"),
        actions: [identity::Action::Register].into_iter().collect(),
        labels: None,
    };
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        db::add_grant(&mut tx, &grant, 3).await.expect("grant");
        tx.commit().await.expect("commit");
    }
    let mut tries = 0;
    loop {
        tries += 1;
        pe.send(&registration(&pool, 7, IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .await
            .expect("send");
        let accepted = loop {
            match pe.recv().await.expect("answer") {
                AsapMsg::EndpointKeepAlive { .. } => {}
                AsapMsg::RegistrationResponse { reject, .. } => break !reject,
                other => panic!("{other:?}"),
            }
        };
        if accepted {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed();
    eprintln!("grant created elsewhere -> PE registered here: {took:?} ({tries} tries)");
    assert!(took < WITHIN, "{took:?}");
    assert_eq!(pes(&running).await, [7]);

    // The trust domain removed elsewhere: its PE's connection closes, its PE goes.
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        db::remove_trust_domain(&mut tx, &name)
            .await
            .expect("remove");
        tx.commit().await.expect("commit");
    }
    assert!(
        closed(&mut pe).await,
        "the partner PE's connection stays open"
    );
    let took = start.elapsed();
    eprintln!("trust domain removed elsewhere -> connection closed here: {took:?}");
    assert!(took < WITHIN, "{took:?}");
    until("the partner PE removed", || async {
        pes(&running).await.is_empty()
    })
    .await;
    assert!(!running.control_plane().is_trusted(&name));
    running.shutdown().await.expect("stops cleanly");
}

/// A CRL stored elsewhere for the local domain closes the listed PE's connection here and
/// removes its PE (the core half of a CRL upload, for the serials it newly lists). And the
/// safety net: a revocation written with the notice trigger disabled (as if the notice
/// were lost) is applied by the periodic re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_stored_elsewhere_revokes_here_and_the_periodic_re_read_catches_a_lost_notice() {
    let Some((pki, dir, running, shared)) = registrar("fleet::crl_and_safety_net").await else {
        return;
    };
    let every = Duration::from_secs(1);
    let _fleet = sync_every(&shared.store, &running, every).await;
    let connect = |leaf: &trust::testing::TestLeaf| {
        let store = trust::TrustStore::new(leaf.identity()).expect("trust store");
        store
            .add_domain(pki.ca.bundle())
            .expect("the registrar's CA");
        Arc::new(store)
    };
    let (x, y) = (pki.ca.leaf("pe/x").issue(), pki.ca.leaf("pe/y").issue());
    let addr = running.asap_addr();
    let mut pe_x = Connection::connect(&connect(&x), addr)
        .await
        .expect("connect");
    let mut pe_y = Connection::connect(&connect(&y), addr)
        .await
        .expect("connect");
    register(&mut pe_x, 1).await;
    register(&mut pe_y, 2).await;

    let crl = trust::testing::pem("X509 CRL", &pki.ca.crl(&[&x.serial]));
    let local = identity::TrustDomain::new(support::DOMAIN).expect("domain");
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        db::set_trust_domain_crls(&mut tx, &local, Some(&crl))
            .await
            .expect("CRL");
        tx.commit().await.expect("commit");
    }
    assert!(
        closed(&mut pe_x).await,
        "the listed PE's connection stays open"
    );
    let took = start.elapsed();
    eprintln!("CRL stored elsewhere -> connection closed here: {took:?}");
    assert!(took < WITHIN, "{took:?}");
    until("the listed PE removed", || async {
        pes(&running).await == [2]
    })
    .await;
    removal_audited(dir.path(), 1, "remove:revoked").await;

    // No notice: the trigger is off while the revocation is written.
    let revoked = Revocation::Identity(SpiffeId::parse("spiffe://bench.test/pe/y").expect("id"));
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        let quiet = |sql: &'static str| sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
        let db::StoreTx::Postgres(pg) = &mut tx else {
            unreachable!("a PostgreSQL store");
        };
        quiet("ALTER TABLE revocations DISABLE TRIGGER revocations_changed")
            .execute(&mut **pg)
            .await
            .expect("trigger off");
        db::add_revocation(&mut tx, &revoked, None, 3)
            .await
            .expect("revoke");
        let db::StoreTx::Postgres(pg) = &mut tx else {
            unreachable!("a PostgreSQL store");
        };
        quiet("ALTER TABLE revocations ENABLE TRIGGER revocations_changed")
            .execute(&mut **pg)
            .await
            .expect("trigger on");
        tx.commit().await.expect("commit");
    }
    assert!(
        closed(&mut pe_y).await,
        "the revoked PE's connection stays open"
    );
    let took = start.elapsed();
    eprintln!("revocation without a notice -> connection closed here: {took:?}");
    assert!(took < every + WITHIN, "{took:?}");
    until("the revoked PE removed", || async {
        pes(&running).await.is_empty()
    })
    .await;
    removal_audited(dir.path(), 2, "remove:revoked").await;
    running.shutdown().await.expect("stops cleanly");
}

/// The listener's connection killed (`pg_terminate_backend`) and a revocation written at
/// once, while it reconnects: its notice is lost, and the resync after the reconnect
/// applies it well before the periodic re-read (10 s here) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_listener_reconnects_is_applied_by_the_resync() {
    let Some((pki, dir, running, shared)) = registrar("fleet::resync").await else {
        return;
    };
    let _fleet = sync(&shared.store, &running).await;
    let addr = running.asap_addr();
    let mut pe = Connection::connect(&pki.client("pe/a"), addr)
        .await
        .expect("connect");
    register(&mut pe, 1).await;
    let revoked = Revocation::Identity(SpiffeId::parse("spiffe://bench.test/pe/a").expect("id"));
    let start = Instant::now();
    {
        let mut tx = shared.store.begin().await.expect("begin");
        let db::StoreTx::Postgres(pg) = &mut tx else {
            unreachable!("a PostgreSQL store");
        };
        assert_eq!(
            test_db::terminate_listeners(pg).await,
            1,
            "the fleet's listener"
        );
        db::add_revocation(&mut tx, &revoked, None, 2)
            .await
            .expect("revoke");
        tx.commit().await.expect("commit");
    }
    assert!(
        closed(&mut pe).await,
        "the revoked PE's connection stays open"
    );
    let took = start.elapsed();
    eprintln!("revocation while the listener reconnects -> connection closed here: {took:?}");
    assert!(took < 2 * WITHIN, "{took:?}");
    removal_audited(dir.path(), 1, "remove:revoked").await;
    running.shutdown().await.expect("stops cleanly");
}
