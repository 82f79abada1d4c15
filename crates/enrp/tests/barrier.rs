//! Audit before ack under load (issue 24 item 3, the commit index): a registration's
//! acceptance never leaves the registrar before its audit record has committed, and each
//! connection's answers come in the order of its requests, with many PEs registering at
//! once. Real TLS, a real SQLite file, the registrar started as `enrpd init` + `enrpd run`
//! start it (`enrp::run_with`).

// A test measures wall time around a stalled disk: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

#[allow(
    dead_code,
    reason = "the benches' helpers: this test takes the PKI and the registration"
)]
#[path = "../benches/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::wire::AsapMsg;
use asap::wire::param::PoolHandle;
use store::db::{Store, StoreOptions};
use support::{Pki, init_registrar};
use testkit::msg::registration;

/// PEs registering at once, each on its own connection with its own identity.
const PES: u32 = 16;
/// Registrations each sends at once, without waiting for the answers.
const EACH: u32 = 20;
/// How long the disk is stalled while they are in flight.
const STALL: Duration = Duration::from_millis(500);

/// Whether the audit log holds a committed `register` record of PE `pe_id` (read through
/// a connection of its own: it sees committed rows only).
async fn audited(store: &Store, pe_id: u32) -> bool {
    let mut conn = store.acquire().await.expect("connection");
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE pe_id = ? AND action = 'register'",
    )
    .bind(i64::from(pe_id))
    .fetch_one(conn.sqlite().expect("SQLite"))
    .await
    .expect("query");
    n > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acceptance_leaves_before_its_record_commits_and_each_connection_keeps_its_order() {
    let pki = Pki::new();
    pki.registrar("a");
    let dir = tempfile::tempdir().expect("temp dir");
    // Loopback PEs allowed (they advertise 127.0.0.1), the default grants.
    let config = init_registrar(pki.dir.path(), "a", dir.path()).await;
    // Sixteen PEs from one address: no per-client limits.
    let running = enrp::run_with(config, |s| s.lift_client_limits())
        .await
        .expect("registrar");
    let addr = running.asap_addr();
    let mut conns = Vec::new();
    for i in 0..PES {
        let client = pki.client(&format!("pe/p{i}"));
        conns.push(Connection::connect(&client, addr).await.expect("connect"));
    }

    // The disk stalls: another connection holds SQLite's write lock, so no record can
    // commit (the writer waits, up to its busy timeout of 5 s).
    let reader = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("a second store on the file");
    let mut lock = reader.acquire().await.expect("connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(lock.sqlite().expect("SQLite"))
        .await
        .expect("write lock");
    let reader = Arc::new(reader);
    let (released_tx, released) = tokio::sync::watch::channel(None::<Instant>);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let reader = Arc::clone(&reader);
            let released = released.clone();
            tokio::spawn(async move {
                let ids: Vec<u32> = (1..=EACH)
                    .map(|k| u32::try_from(i).expect("small") * 1000 + k)
                    .collect();
                let pool = PoolHandle::new("barrier").expect("pool handle");
                let here = IpAddr::V4(Ipv4Addr::LOCALHOST);
                for id in &ids {
                    conn.send(&registration(&pool, *id, here))
                        .await
                        .expect("send");
                }
                for id in &ids {
                    // Keep-alives (every 5 s) may come in between: not what is looked at.
                    let reply = loop {
                        let m = tokio::time::timeout(Duration::from_secs(60), conn.recv())
                            .await
                            .expect("answered within a minute")
                            .expect("answer");
                        if !matches!(m, AsapMsg::EndpointKeepAlive { .. }) {
                            break m;
                        }
                    };
                    let at = Instant::now();
                    let AsapMsg::RegistrationResponse {
                        pe_id,
                        reject: false,
                        ..
                    } = reply
                    else {
                        panic!("PE {id}: not an acceptance: {reply:?}");
                    };
                    // In the order of the requests.
                    assert_eq!(pe_id.get(), *id, "connection {i}: answers out of order");
                    // Not before the disk was back, and only with its record committed.
                    let back = *released.borrow();
                    assert!(
                        back.is_some_and(|b| b <= at),
                        "PE {id} accepted while no record could commit"
                    );
                    assert!(
                        audited(&reader, *id).await,
                        "PE {id} accepted before its record committed"
                    );
                }
            })
        })
        .collect();
    tokio::time::sleep(STALL).await;
    // Set before the lock goes: an acceptance seen after it may be a legitimate one.
    released_tx.send_replace(Some(Instant::now()));
    sqlx::query("ROLLBACK")
        .execute(lock.sqlite().expect("SQLite"))
        .await
        .expect("release");
    drop(lock);
    for t in tasks {
        t.await.expect("a PE's checks");
    }
    reader.close().await;
    running.shutdown().await.expect("stops cleanly");
}
