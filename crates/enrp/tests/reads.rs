//! Resolutions answered where they arrive (issue 20): a connection task answers a handle
//! resolution from the core's read view, and what the core decides still holds there —
//! grants (a valid certificate without one gets 0x9, audited with its identity; a
//! withdrawn grant stops the answers at once), removals (a deregistered PE is in no later
//! answer), the start-up phase (0x6), and a PE's own registration (answered first, and
//! seen by its resolution behind it on the same connection). Real TLS, a real SQLite
//! file, the registrar started as `enrpd init` + `enrpd run` start it.
//!
//! On a connection the core already knows (its first answer came back) with nothing in
//! flight, a resolution is answered by the connection task: each test asks once first so
//! that what it checks next is the fast path's answer.

// A test waits for the audit writer's batched commits: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

#[allow(
    dead_code,
    reason = "the benches' helpers: this test takes the PKI and the registrar's start-up"
)]
#[path = "../benches/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::wire::param::{ErrorCause, PeId, PoolHandle};
use asap::wire::{AsapMsg, Resolution};
use enrp::Running;
use enrp::config::{Millis, RunConfig};
use store::db::{Store, StoreOptions};
use support::{DOMAIN, Pki, answer, init_registrar};
use testkit::msg::{grant, pool, registration};

const HERE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Registrar {
    pki: Pki,
    dir: tempfile::TempDir,
    running: Running,
}

async fn start(change: impl FnOnce(&mut RunConfig)) -> Registrar {
    let pki = Pki::new();
    pki.registrar("a");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = init_registrar(pki.dir.path(), "a", dir.path()).await;
    change(&mut config);
    let running = enrp::run_with(config, |s| s.lift_client_limits())
        .await
        .expect("registrar");
    Registrar { pki, dir, running }
}

impl Registrar {
    async fn connect(&self, who: &str) -> Connection {
        let client = self.pki.client(who);
        Connection::connect(&client, self.running.asap_addr())
            .await
            .expect("connect")
    }
}

fn resolution(pool_handle: &PoolHandle) -> AsapMsg {
    AsapMsg::HandleResolution {
        namespace: None,
        pool_handle: pool_handle.clone(),
        option: None,
        hints: Default::default(),
    }
}

async fn resolve(conn: &mut Connection, pool_handle: &PoolHandle) -> Resolution {
    conn.send(&resolution(pool_handle)).await.expect("send");
    match answer(conn).await {
        AsapMsg::HandleResolutionResponse { result, .. } => result,
        other => panic!("not a resolution response: {other:?}"),
    }
}

fn pe_ids(r: &Resolution) -> Vec<u32> {
    match r {
        Resolution::Found { pool_elements, .. } => {
            let mut ids: Vec<u32> = pool_elements
                .iter()
                .map(|e| e.pool_element.pe_id.get())
                .collect();
            ids.sort_unstable();
            ids
        }
        Resolution::Error(e) => panic!("refused: {e:?}"),
    }
}

fn cause(r: &Resolution) -> Option<u16> {
    match r {
        Resolution::Error(e) => e.causes().first().map(ErrorCause::code),
        Resolution::Found { .. } => None,
    }
}

async fn register(conn: &mut Connection, pool_handle: &PoolHandle, pe_id: u32) {
    conn.send(&registration(pool_handle, pe_id, HERE))
        .await
        .expect("send");
    let reply = answer(conn).await;
    assert!(
        matches!(reply, AsapMsg::RegistrationResponse { reject: false, .. }),
        "not accepted: {reply:?}"
    );
}

/// Waits (up to 10 s: resolutions are audited in batches) for an audit record of a
/// resolution of `pool` by `actor` with `outcome`.
async fn audited_resolution(dir: &std::path::Path, actor: &str, pool: &str, outcome: &str) -> bool {
    let store = Store::open(dir, &StoreOptions::default())
        .await
        .expect("a second store on the file");
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let mut conn = store.acquire().await.expect("connection");
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'resolve' AND actor = ? \
             AND pool = ? AND outcome = ?",
        )
        .bind(actor)
        .bind(pool.as_bytes())
        .bind(outcome)
        .fetch_one(conn.sqlite().expect("SQLite"))
        .await
        .expect("query");
        if n > 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    store.close().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_without_a_grant_gets_unknown_pool_and_is_audited() {
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    register(&mut pe, &echo, 1).await;
    // Valid certificate of the trust domain, but no grant names `other/*`.
    let mut stranger = r.connect("other/x").await;
    let warm = pool("warm-up");
    assert_eq!(
        cause(&resolve(&mut stranger, &warm).await),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    // Answered by the connection task: refused as if the pool did not exist.
    assert_eq!(
        cause(&resolve(&mut stranger, &echo).await),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    let actor = format!("spiffe://{DOMAIN}/other/x");
    assert!(
        audited_resolution(r.dir.path(), &actor, "echo", "cause:0x0009").await,
        "the refused resolution is in the audit log with its identity"
    );
    // A PU with the grant sees the pool.
    let mut pu = r.connect("pu/u1").await;
    assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1]);
    assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1]);
    let actor = format!("spiffe://{DOMAIN}/pu/u1");
    assert!(audited_resolution(r.dir.path(), &actor, "echo", "ok").await);
    r.running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_grant_stops_the_answers_at_once() {
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    register(&mut pe, &echo, 1).await;
    let mut pu = r.connect("pu/u1").await;
    assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1]);
    assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1]);
    // The PU's grant goes (as the admin API or a reload would do it); the PE's stays.
    let pe_grant = grant(
        &format!("spiffe://{DOMAIN}/pe/*"),
        "*",
        &[identity::Action::Register],
    );
    r.running.control_plane().set_grants(vec![pe_grant]).await;
    // Nothing in between: the very next answer on the same connection refuses.
    assert_eq!(
        cause(&resolve(&mut pu, &echo).await),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    // The PE may still resolve its own pool (a register grant is membership).
    assert_eq!(pe_ids(&resolve(&mut pe, &echo).await), [1]);
    r.running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_pe_is_in_no_later_answer() {
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    register(&mut pe, &echo, 1).await;
    register(&mut pe, &echo, 2).await;
    let mut pu = r.connect("pu/u1").await;
    assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1, 2]);
    assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1, 2]);
    pe.send(&AsapMsg::Deregistration {
        namespace: None,
        pool_handle: echo.clone(),
        pe_id: PeId::new(1).expect("non-zero"),
    })
    .await
    .expect("send");
    let reply = answer(&mut pe).await;
    assert!(
        matches!(reply, AsapMsg::DeregistrationResponse { error: None, .. }),
        "deregistered: {reply:?}"
    );
    // Round robin over the rest: PE 1 never again, whichever connection asks.
    let mut late = r.connect("pu/u2").await;
    for _ in 0..20 {
        assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [2]);
        assert_eq!(pe_ids(&resolve(&mut late, &echo).await), [2]);
    }
    r.running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_still_starting_answers_lack_of_resources() {
    // A peer to learn from that never answers: the start-up phase (spec §9.3) lasts
    // until the mentor timeout, a minute here.
    let r = start(|c| {
        c.peers = vec!["127.0.0.1:9".to_owned()];
        c.mentor_timeout_ms = Millis(Duration::from_secs(60));
    })
    .await;
    let echo = pool("echo");
    let mut pu = r.connect("pu/u1").await;
    for _ in 0..3 {
        assert_eq!(
            cause(&resolve(&mut pu, &echo).await),
            Some(ErrorCause::LACK_OF_RESOURCES)
        );
    }
    r.running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_sees_its_own_registration_in_order() {
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    // The connection is known to the core and nothing is in flight: a bare resolution
    // would be answered here, at once.
    assert_eq!(
        cause(&resolve(&mut pe, &echo).await),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    // The disk stalls: the registration's answer is held until its record commits.
    let stall = Store::open(r.dir.path(), &StoreOptions::default())
        .await
        .expect("a second store on the file");
    let mut lock = stall.acquire().await.expect("connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(lock.sqlite().expect("SQLite"))
        .await
        .expect("write lock");
    // Registration and resolution back to back, without waiting for the first answer.
    pe.send(&registration(&echo, 1, HERE)).await.expect("send");
    pe.send(&resolution(&echo)).await.expect("send");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("ROLLBACK")
            .execute(lock.sqlite().expect("SQLite"))
            .await
            .expect("release");
        drop(lock);
        stall.close().await;
    });
    let first = answer(&mut pe).await;
    assert!(
        matches!(first, AsapMsg::RegistrationResponse { reject: false, .. }),
        "the registration is answered first: {first:?}"
    );
    let AsapMsg::HandleResolutionResponse { result, .. } = answer(&mut pe).await else {
        panic!("then the resolution");
    };
    assert_eq!(pe_ids(&result), [1], "the PE sees itself");
    release.await.expect("released");
    r.running.shutdown().await.expect("stops cleanly");
}

/// The `detail` of every resolution record of `actor` (any outcome).
async fn resolution_details(store: &Store, actor: &str) -> Vec<Option<String>> {
    let mut conn = store.acquire().await.expect("connection");
    sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'resolve' AND actor = ?")
        .bind(actor)
        .fetch_all(conn.sqlite().expect("SQLite"))
        .await
        .expect("query")
}

/// How many resolutions these records account for (a compacted record counts its own).
fn counted(details: &[Option<String>]) -> u64 {
    details
        .iter()
        .map(|d| enrp::daemon::resolutions_in(d.as_deref()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolution_is_counted_in_the_compacted_audit_refusals_and_close_included() {
    const FOUND: u64 = 300;
    const REFUSED: u64 = 120;
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    register(&mut pe, &echo, 1).await;
    let mut pu = r.connect("pu/u1").await;
    // Two pools that do not exist: refusals keep their own keys.
    let (nope, gone) = (pool("nope"), pool("gone"));
    for i in 0..FOUND {
        assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1]);
        if i < REFUSED {
            let unknown = if i % 2 == 0 { &nope } else { &gone };
            assert_eq!(
                cause(&resolve(&mut pu, unknown).await),
                Some(ErrorCause::UNKNOWN_POOL_HANDLE)
            );
        }
    }
    // Closed right after its last answer: what it tallied is written all the same.
    drop(pu);
    let actor = format!("spiffe://{DOMAIN}/pu/u1");
    let store = Store::open(r.dir.path(), &StoreOptions::default())
        .await
        .expect("a second store on the file");
    let deadline = Instant::now() + Duration::from_secs(10);
    let details = loop {
        let details = resolution_details(&store, &actor).await;
        let n = counted(&details);
        if n >= FOUND + REFUSED || Instant::now() > deadline {
            break details;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = counted(&details);
    assert_eq!(n, FOUND + REFUSED, "{details:?}");
    // Compacted: a record per pool and outcome per interval, not one per resolution.
    assert!(details.len() < 40, "{} records: {details:?}", details.len());
    let aggregated = details
        .iter()
        .flatten()
        .find(|d| d.contains("aggregated") && !d.contains(" 0 PEs"))
        .expect("a summary of the found ones");
    let pes: u64 = aggregated
        .split(' ')
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("`{count} resolutions, {pes} PEs (...)`");
    assert!(
        aggregated.starts_with(&format!("{} resolutions, {pes} PEs", pes)),
        "one PE per resolution: {aggregated}"
    );
    store.close().await;
    r.running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_tallied_when_the_daemon_stops_are_in_its_audit() {
    const N: u64 = 200;
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    register(&mut pe, &echo, 1).await;
    let mut pu = r.connect("pu/u1").await;
    for _ in 0..N {
        assert_eq!(pe_ids(&resolve(&mut pu, &echo).await), [1]);
    }
    // Stopped with the connection still open, within the tally's interval.
    let dir = r.dir;
    r.running.shutdown().await.expect("stops cleanly");
    let store = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("the store after the stop");
    let details = resolution_details(&store, &format!("spiffe://{DOMAIN}/pu/u1")).await;
    let n = counted(&details);
    assert_eq!(n, N, "{details:?}");
    store.close().await;
    drop((pe, pu));
}

/// A pool user that sends resolutions and never reads their answers (threat T-15): the
/// answers its connection task makes wait for the write loop in a bounded buffer
/// (`MAX_SERVED`, 4 MiB) once the sockets' buffers are full, and past it the registrar
/// ends the connection, so the client's sends start failing; another PU is served as
/// before. Without the bound the registrar would buffer every answer for as long as the
/// client keeps sending, and all 100,000 sends would go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pu_that_never_reads_its_answers_is_cut_off() {
    let r = start(|_| {}).await;
    let echo = pool("echo");
    let mut pe = r.connect("pe/p1").await;
    for id in 1..=9 {
        register(&mut pe, &echo, id).await;
    }
    let mut slow = r.connect("pu/slow").await;
    // Known to the core, nothing in flight: the next answers are made by its task.
    assert_eq!(pe_ids(&resolve(&mut slow, &echo).await).len(), 3);
    let all = AsapMsg::HandleResolution {
        namespace: None,
        pool_handle: echo.clone(),
        option: Some(asap::wire::param::HandleResolutionOption {
            items: asap::wire::param::HandleResolutionOption::ALL,
        }),
        hints: Default::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u32;
    let cut = loop {
        if sent == 100_000 || Instant::now() > deadline {
            break false;
        }
        if slow.send(&all).await.is_err() {
            break true;
        }
        sent += 1;
    };
    assert!(cut, "still open after {sent} resolutions never read");
    let mut other = r.connect("pu/other").await;
    assert_eq!(pe_ids(&resolve(&mut other, &echo).await).len(), 3);
    r.running.shutdown().await.expect("stops cleanly");
}
