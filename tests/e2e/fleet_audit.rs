//! The audit log of a fleet (issue 19 item 3; docs/STORE.md "The audit log in a fleet"
//! and "Archives in a fleet"): two `enrpd`s on one PostgreSQL database each append to
//! their own hash chain; either registrar's API and `enrpd audit verify` see and check
//! both; each archives its own chain while the other goes on. Needs a server in
//! `RSP_TEST_POSTGRES`, as `fleet.rs`.

use std::process::Command;

use serde_json::Value;

use crate::admin::{admin_token, api};
use crate::endpoints::{resolve, start_pe_lines};
use crate::fleet::init;
use crate::support::{Lab, Registrar, bin, enrpd_audit};

const A: &str = "spiffe://acme.test/registrar/enrp-1";
const B: &str = "spiffe://acme.test/registrar/enrp-2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registrars_on_postgres_append_to_their_own_chains_and_verify_both() {
    let Some(db) = store::db::test_db::empty_postgres("fleet_audit::two_chains").await else {
        return;
    };
    let lab = Lab::new();
    let token = admin_token(&init(&lab, "enrp-1", "data", &db.url, &[]));
    lab.issue_registrar("enrp-2");
    init(&lab, "enrp-2", "data-2", &db.url, &["--join"]);
    let a = lab.start_registrar_with(1000, 2000);
    let b = lab.start_peer("data-2", &[]);
    // A audits a registration and a resolution, B an admin write.
    let (pe, _lines) = start_pe_lines(
        &lab,
        a.addr,
        "pe-echo-1",
        &["--pool", "echo", "--serve", "echo"],
    );
    assert_eq!(resolve(&lab, a.addr).len(), 1);
    create_namespace(&lab, &b.registrar, &token, "lab");

    // At A, the fleet's log: B's records, named as B's, with the filter.
    let (status, body) = api(
        &lab,
        &a,
        Some(&token),
        "GET",
        &format!("/v1/audit?registrar={B}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("json");
    let events = page["events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "admin:namespace.create"),
        "{body}"
    );
    assert!(events.iter().all(|e| e["registrar"] == B), "{body}");
    let (_, body) = api(&lab, &a, Some(&token), "GET", "/v1/audit?limit=1000", None);
    let all: Value = serde_json::from_str(&body).expect("json");
    let registrars: Vec<&Value> = all["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["registrar"])
        .collect();
    assert!(registrars.contains(&&Value::from(A)) && registrars.contains(&&Value::from(B)));
    let (status, body) = api(
        &lab,
        &a,
        Some(&token),
        "GET",
        "/v1/audit?registrar=spiffe",
        None,
    );
    assert_eq!(status, 422, "a bad filter is refused: {body}");
    assert!(body.contains("registrar"), "{body}");

    // Either registrar's API checks both chains.
    for reg in [&a, &b.registrar] {
        let (status, body) = api(&lab, reg, Some(&token), "GET", "/v1/audit/verify", None);
        assert_eq!(status, 200, "{body}");
        let report: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(report["intact"], true, "{body}");
        let chains: Vec<&Value> = report["chains"]
            .as_array()
            .expect("chains")
            .iter()
            .map(|c| &c["registrar"])
            .collect();
        assert_eq!(chains, [&Value::from(A), &Value::from(B)], "{body}");
    }

    // A archives its own chain through its API, all but its newest record, while B runs.
    let a_ids = chain_ids(&lab, &a, &token, A);
    let b_before = chain_ids(&lab, &a, &token, B);
    let cut = *a_ids.last().expect("A has records");
    let (status, body) = api(
        &lab,
        &a,
        Some(&token),
        "POST",
        "/v1/audit/archives",
        Some(&format!(r#"{{"before_seq":{cut}}}"#)),
    );
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        created["records"],
        a_ids.len() - 1,
        "A's records only: {body}"
    );
    let a_archive = lab
        .path("data/audit-archive")
        .join(created["name"].as_str().expect("name"));
    assert!(a_archive.is_file());
    // B's records all stay, and B goes on appending.
    create_namespace(&lab, &b.registrar, &token, "after");
    let b_after = chain_ids(&lab, &a, &token, B);
    assert!(b_after.starts_with(&b_before) && b_after.len() > b_before.len());
    // Both chains verify at both registrars, A's from its anchor.
    for reg in [&a, &b.registrar] {
        let (status, body) = api(&lab, reg, Some(&token), "GET", "/v1/audit/verify", None);
        assert_eq!(status, 200, "{body}");
        let report: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(report["intact"], true, "{body}");
        let chains = report["chains"].as_array().expect("chains");
        assert!(chains.iter().all(|c| c["intact"] == true), "{body}");
        assert_eq!(chains[0]["archived_through"], created["last_id"], "{body}");
        assert_eq!(chains[1]["archived_through"], 0, "{body}");
    }
    // Each registrar lists its own chain's archives.
    for (reg, n) in [(&a, 1), (&b.registrar, 0)] {
        let (status, body) = api(&lab, reg, Some(&token), "GET", "/v1/audit/archives", None);
        assert_eq!(status, 200, "{body}");
        let list: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(list["archives"].as_array().map(Vec::len), Some(n), "{body}");
    }

    drop(pe);
    assert!(b.registrar.terminate().success());
    assert!(a.terminate().success());
    let verify = lab.verify_audit();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    for id in [A, B] {
        assert!(
            text.lines().any(|l| l.starts_with("audit chain intact")
                && l.ends_with(&format!("(registrar {id})"))),
            "{text}"
        );
    }

    // A checkpoint is of the registrar's own chain, and verifies against it.
    let file = lab.path("a.json");
    let file = file.to_str().expect("path");
    let (ok, text) = enrpd_audit(&lab, &["checkpoint", "--to", file]);
    assert!(ok, "{text}");
    let (ok, text) = enrpd_audit(&lab, &["verify", "--checkpoint", file]);
    assert!(ok && text.contains("checkpoint"), "{text}");
    let a_file = a_archive.to_str().expect("path");
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", a_file]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "archives of registrar {A} link to the live log: the whole chain"
        )),
        "{text}"
    );

    // B archives its own chain with the command line, from its data directory.
    let b_file = lab.path("b.jsonl.gz");
    let b_file = b_file.to_str().expect("path");
    let out = Command::new(bin("enrpd"))
        .args(["audit", "archive", "--before-seq"])
        .arg(b_after.last().expect("B has records").to_string())
        .args(["--to", b_file, "--data"])
        .arg(lab.path("data-2"))
        .output()
        .expect("enrpd audit archive");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("archived records"),
        "{text}"
    );
    // Both registrars' archives, checked from A's data directory against the one store.
    let (ok, text) = enrpd_audit(&lab, &["verify", "--archive", b_file, "--archive", a_file]);
    assert!(ok, "{text}");
    for id in [A, B] {
        assert!(
            text.contains(&format!("archives of registrar {id} link to the live log")),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("audit chain intact")
                && l.ends_with(&format!("(registrar {id})"))),
            "{text}"
        );
    }
}

/// Creates namespace `name` through `reg`'s API (an audited admin write).
fn create_namespace(lab: &Lab, reg: &Registrar, token: &str, name: &str) {
    let body = format!(r#"{{"name":"{name}"}}"#);
    let (status, body) = api(lab, reg, Some(token), "POST", "/v1/namespaces", Some(&body));
    assert_eq!(status, 201, "{body}");
}

/// The ids of `registrar`'s chain's live records, oldest first, through `reg`'s API.
fn chain_ids(lab: &Lab, reg: &Registrar, token: &str, registrar: &str) -> Vec<u64> {
    let (status, body) = api(
        lab,
        reg,
        Some(token),
        "GET",
        &format!("/v1/audit?registrar={registrar}&order=oldest&limit=1000"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("json");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect()
}
