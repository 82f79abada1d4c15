//! The shared control plane (issue 19 item 2): three `enrpd`s on one PostgreSQL database
//! (`enrpd init --store`, then `init --join`), peered over ENRP. A change made through
//! one registrar's admin API reaches the others within 1 s through the store's change
//! feed: a withdrawn grant removes a PE everywhere, a grant created at B lets a PE
//! register at C, a revocation through A closes the PE's connection at C and removes it
//! from every registrar's resolutions, a token revoked at A is refused at B. Each effect's
//! delay from the API call is printed. Needs `RSP_TEST_POSTGRES` (skipped without it
//! unless `RSP_REQUIRE_POSTGRES=1`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::admin::{admin_token, api};
use crate::fleet::{audited, init_fleet};
use crate::registrar::{accepted, registration, resolution, resolved};
use crate::support::{Asap, Lab, Peered};

/// The fleet's budget from an API call at one registrar to its effect at another.
pub(crate) const WITHIN: Duration = Duration::from_secs(1);

/// The PE IDs that registrar `at` returns for pool `pool` (empty: none).
pub(crate) async fn pe_ids(lab: &Lab, at: SocketAddr, pool: &str) -> Vec<u32> {
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), at)
        .await
        .expect("PU connects");
    pu.send(&resolution(pool)).await;
    resolved(pu.recv_reply().await)
        .map(|pes| pes.into_iter().map(|(id, _)| id).collect())
        .unwrap_or_default()
}

/// Polls `done` every 20 ms until it holds; how long that took (panics past 10 s).
pub(crate) async fn until<F: Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Waits (up to 30 s: three registrars starting on a loaded machine) until each of `all`
/// lists the other two as active peers in `GET /v1/peers`.
async fn peered(lab: &Lab, all: &[&Peered], token: &str) {
    let start = Instant::now();
    for r in all {
        loop {
            let (status, body) = api(lab, &r.registrar, Some(token), "GET", "/v1/peers", None);
            assert_eq!(status, 200, "{body}");
            let active = json(&body)["peers"]
                .as_array()
                .expect("a list")
                .iter()
                .filter(|p| p["state"] == "active")
                .count();
            if active == all.len() - 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "not all peered within 30 s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until none of `all` resolves a PE of pool `fleet`, printing when each stopped
/// (from `start`, the API call of `change`); all within the fleet's budget plus the
/// resolutions' own time.
async fn gone_everywhere(lab: &Lab, all: &[&Peered], start: Instant, change: &str) {
    for (r, name) in all.iter().zip(["A", "B", "C"]) {
        until("the PE gone", || async {
            pe_ids(lab, r.registrar.addr, "fleet").await.is_empty()
        })
        .await;
        eprintln!(
            "{change} -> PE gone from {name}'s resolutions: {:?}",
            start.elapsed()
        );
    }
    assert!(start.elapsed() < WITHIN + Duration::from_millis(500));
}

/// One admin API request to `at` with `token`, which must answer `want`: when it was
/// sent, and the body.
fn call(
    lab: &Lab,
    at: &Peered,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    want: u16,
) -> (Instant, String) {
    let start = Instant::now();
    let (status, body) = api(lab, &at.registrar, Some(token), method, path, body);
    assert_eq!(status, want, "{method} {path}: {body}");
    (start, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_at_one_registrar_reaches_the_others_within_a_second() {
    let Some(db) = store::db::test_db::empty_postgres("fleet_sync::three").await else {
        return;
    };
    let lab = Lab::new();
    let token = admin_token(&init_fleet(&lab, &db.url));
    let a = lab.start_peer("data", &[]);
    let b = lab.start_peer("data-2", &[a.enrp]);
    let c = lab.start_peer("data-3", &[a.enrp, b.enrp]);
    let all: [&Peered; 3] = [&a, &b, &c];
    // Peered first: a PE registered while a peer link is still coming up reaches that
    // peer only at the next checksum comparison, which is not what this test times.
    peered(&lab, &all, &token).await;

    // A PE registered at C is resolved at all three (ENRP).
    let mut pe1 = Asap::connect(&lab.identity("pe-echo-1"), c.registrar.addr)
        .await
        .expect("PE connects");
    pe1.send(&registration("fleet", 1)).await;
    assert!(accepted(pe1.recv_reply().await));
    for r in all {
        until("the PE resolved everywhere", || async {
            pe_ids(&lab, r.registrar.addr, "fleet").await == [1]
        })
        .await;
    }

    // (iii) The PE grant withdrawn through A: the PE goes at C (its home), and so from
    // every registrar's resolutions.
    let (_, body) = call(&lab, &a, &token, "GET", "/v1/grants", None, 200);
    let pe_grant = json(&body)
        .as_array()
        .expect("grants")
        .iter()
        .find(|g| g["identity"] == "spiffe://acme.test/pe/*")
        .expect("the PE grant")["id"]
        .clone();
    let path = format!("/v1/grants/{pe_grant}");
    let (start, _) = call(&lab, &a, &token, "DELETE", &path, None, 204);
    gone_everywhere(&lab, &all, start, "grant withdrawn at A").await;

    // (ii) Without the grant, a PE with a valid certificate is refused at C; the grant
    // created through B lets it register at C.
    let mut pe2 = Asap::connect(&lab.identity("pe-echo-2"), c.registrar.addr)
        .await
        .expect("PE connects");
    pe2.send(&registration("fleet", 2)).await;
    assert!(!accepted(pe2.recv_reply().await), "refused without a grant");
    let of_pe = |records: Vec<store::audit::Record>, id: u32| {
        records
            .into_iter()
            .filter(|r| r.pe_id.map(|p| p.get()) == Some(id))
            .collect::<Vec<_>>()
    };
    until("the refusal audited", || async {
        of_pe(audited(&db.url, "register").await, 2)
            .iter()
            .any(|r| r.outcome != store::audit::Outcome::Ok)
    })
    .await;
    let grant = r#"{"identity": "spiffe://acme.test/pe/*", "namespace": "*", "pools": "*", "actions": ["register"]}"#;
    let (start, _) = call(&lab, &b, &token, "POST", "/v1/grants", Some(grant), 201);
    loop {
        pe2.send(&registration("fleet", 2)).await;
        if accepted(pe2.recv_reply().await) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never admitted at C"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    eprintln!("grant created at B -> PE registered at C: {took:?}");
    assert!(took < WITHIN, "{took:?}");

    // (i) pe-echo-2 revoked through A: its connection at C closes, its PE goes from
    // every registrar's resolutions.
    for r in all {
        until("the PE resolved everywhere", || async {
            pe_ids(&lab, r.registrar.addr, "fleet").await == [2]
        })
        .await;
    }
    let revocation = r#"{"kind": "spiffe_id", "spiffe_id": "spiffe://acme.test/pe/echo-2"}"#;
    let (start, _) = call(
        &lab,
        &a,
        &token,
        "POST",
        "/v1/revocations",
        Some(revocation),
        201,
    );
    while pe2.recv().await.is_some() {}
    let took = start.elapsed();
    eprintln!("revoked at A -> connection closed at C: {took:?}");
    assert!(took < WITHIN, "{took:?}");
    gone_everywhere(&lab, &all, start, "revoked at A").await;
    // Each registrar audits what it removes from its own handlespace, once: a registrar
    // that applied a change locally and then again from the feed removed nothing the
    // second time. (A peer may also have dropped its copy on C's ENRP deregistration
    // first, which is no such record: between one and three, never more.)
    for (action, id) in [("remove:ungranted", 1), ("remove:revoked", 2)] {
        until("the removal audited", || async {
            !of_pe(audited(&db.url, action).await, id).is_empty()
        })
        .await;
        let n = of_pe(audited(&db.url, action).await, id).len();
        eprintln!("{action} records of PE {id}: {n} (one per registrar at most)");
        assert!((1..=3).contains(&n), "{action}: {n} records");
    }
    // And it cannot come back at C.
    let refused = match Asap::connect(&lab.identity("pe-echo-2"), c.registrar.addr).await {
        Err(_) => true,
        Ok(mut again) => {
            let _ = again.try_send(&registration("fleet", 2)).await;
            again.recv().await.is_none()
        }
    };
    assert!(refused, "the revoked identity handshakes at C");

    // (iv) A token created at A works at B; revoked at A, it is refused at B within 1 s.
    let new_token = r#"{"name": "fleet", "role": "operator"}"#;
    let (_, body) = call(&lab, &a, &token, "POST", "/v1/tokens", Some(new_token), 201);
    let created = json(&body);
    let (ops, id) = (
        created["token"].as_str().expect("token").to_owned(),
        created["id"].as_str().expect("id").to_owned(),
    );
    let at_b = || {
        api(
            &lab,
            &b.registrar,
            Some(&ops),
            "GET",
            "/v1/revocations",
            None,
        )
        .0
    };
    assert_eq!(
        at_b(),
        200,
        "the new token works at B (and is cached there)"
    );
    let path = format!("/v1/tokens/{id}");
    let (start, _) = call(&lab, &a, &token, "DELETE", &path, None, 204);
    let took = until("the revoked token refused at B", || async { at_b() == 401 }).await;
    eprintln!("token revoked at A -> refused at B: {:?}", start.elapsed());
    assert!(took < WITHIN, "{took:?}");

    // One audit query at A shows the three registrars' records, and each registrar's
    // API verifies the three chains.
    let ids = ["enrp-1", "enrp-2", "enrp-3"].map(|n| format!("spiffe://acme.test/registrar/{n}"));
    let (_, body) = call(&lab, &a, &token, "GET", "/v1/audit?limit=1000", None, 200);
    let page = json(&body);
    let registrars: std::collections::BTreeSet<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["registrar"].as_str())
        .collect();
    for id in &ids {
        assert!(
            registrars.contains(id.as_str()),
            "{id} missing from {registrars:?}"
        );
    }
    for r in all {
        let (_, body) = call(&lab, r, &token, "GET", "/v1/audit/verify", None, 200);
        let report = json(&body);
        assert_eq!(report["intact"], true, "{body}");
        let chains: std::collections::BTreeSet<&str> = report["chains"]
            .as_array()
            .expect("chains")
            .iter()
            .filter_map(|c| c["registrar"].as_str())
            .collect();
        for id in &ids {
            assert!(chains.contains(id.as_str()), "{id} not verified: {body}");
        }
    }
}
