//! A registrar started with a policy of its own (issue 23, docs/PROTOCOL-EXTENSIONS.md):
//! `enrp::run_with` given examples/custom-policy's registry selects with it, reading the
//! PEs' labels and the PU's hints, over real TLS; one started without it accepts the same
//! PEs and selects them round robin. Real TLS, a real SQLite file, as `enrpd run` starts.

#[allow(
    dead_code,
    reason = "the benches' helpers: this test takes the PKI and the registrar's start-up"
)]
#[path = "../benches/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};

use asap::client::Connection;
use asap::wire::param::{HandleResolutionOption, Labels, Policy, PoolHandle};
use asap::wire::{AsapMsg, Resolution};
use custom_policy::{SAME_ZONE_FIRST, registry};
use enrp::Running;
use support::{Pki, answer, init_registrar};
use testkit::msg::{pool, registration};

const HERE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A registrar (with the custom registry or not), PEs 1–4 registered in zones a, b, a, b
/// with the "same zone first" policy, and a PU connected: the registrar, its files and
/// the PU's connection.
async fn start(custom: bool) -> (Running, (Pki, tempfile::TempDir), Connection) {
    let pki = Pki::new();
    pki.registrar("a");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = init_registrar(pki.dir.path(), "a", dir.path()).await;
    let running = enrp::run_with(config, |s| {
        s.lift_client_limits();
        if custom {
            s.registrar.policies = registry();
        }
    })
    .await
    .expect("registrar");
    let mut pe = Connection::connect(&pki.client("pe/p1"), running.asap_addr())
        .await
        .expect("connect");
    register_zones(&mut pe, &pool("echo")).await;
    let pu = Connection::connect(&pki.client("pu/u1"), running.asap_addr())
        .await
        .expect("connect");
    (running, (pki, dir), pu)
}

/// PEs 1–4 in zones a, b, a, b with the "same zone first" policy.
async fn register_zones(conn: &mut Connection, echo: &PoolHandle) {
    for (id, zone) in [(1, "a"), (2, "b"), (3, "a"), (4, "b")] {
        let mut msg = registration(echo, id, HERE);
        if let AsapMsg::Registration { pool_element, .. } = &mut msg {
            pool_element.policy = Policy::private(SAME_ZONE_FIRST, &[]).expect("private");
            pool_element.labels = Labels::parse([format!("zone={zone}")]).expect("valid");
        }
        conn.send(&msg).await.expect("send");
        let reply = answer(conn).await;
        assert!(
            matches!(reply, AsapMsg::RegistrationResponse { reject: false, .. }),
            "not accepted: {reply:?}"
        );
    }
}

/// The PE IDs answered, in order, for 2 PEs with these hints.
async fn resolve(conn: &mut Connection, echo: &PoolHandle, hints: &[&str]) -> Vec<u32> {
    conn.send(&AsapMsg::HandleResolution {
        namespace: None,
        pool_handle: echo.clone(),
        option: Some(HandleResolutionOption { items: 2 }),
        hints: Labels::parse(hints).expect("valid"),
    })
    .await
    .expect("send");
    match answer(conn).await {
        AsapMsg::HandleResolutionResponse {
            result:
                Resolution::Found {
                    pool_elements,
                    policy,
                },
            ..
        } => {
            assert_eq!(policy.map(|p| p.policy_type()), Some(SAME_ZONE_FIRST));
            pool_elements
                .iter()
                .map(|e| e.pool_element.pe_id.get())
                .collect()
        }
        other => panic!("not found: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_started_with_a_custom_policy_selects_by_the_pus_hints() {
    let (running, _files, mut pu) = start(true).await;
    let echo = pool("echo");
    // Asked twice each: the first may be the core's answer, the next the connection
    // task's (issue 20); both select with the plugged-in policy.
    for _ in 0..2 {
        assert_eq!(resolve(&mut pu, &echo, &["zone=b"]).await, [2, 4]);
        assert_eq!(resolve(&mut pu, &echo, &["zone=a"]).await, [1, 3]);
    }
    running.shutdown().await.expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_it_the_same_pes_are_accepted_and_selected_round_robin() {
    let (running, _files, mut pu) = start(false).await;
    let echo = pool("echo");
    // Hints change nothing: the cycle goes on, two PEs per answer.
    let first = resolve(&mut pu, &echo, &["zone=b"]).await;
    let second = resolve(&mut pu, &echo, &["zone=b"]).await;
    let mut all = [first, second].concat();
    all.sort_unstable();
    assert_eq!(
        all,
        [1, 2, 3, 4],
        "round robin: each PE once in two answers of two"
    );
    running.shutdown().await.expect("stops cleanly");
}
