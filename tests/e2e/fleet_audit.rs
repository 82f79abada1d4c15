//! The audit log of a fleet (issue 19 item 3; docs/STORE.md "The audit log in a fleet"):
//! two `enrpd`s on one PostgreSQL database each append to their own hash chain; either
//! registrar's API and `enrpd audit verify` see and check both. Needs a server in
//! `RSP_TEST_POSTGRES`, as `fleet.rs`.

use serde_json::Value;

use crate::admin::{admin_token, api};
use crate::endpoints::{resolve, start_pe_lines};
use crate::fleet::init;
use crate::support::{Lab, enrpd_audit};

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
    let (status, body) = api(
        &lab,
        &b.registrar,
        Some(&token),
        "POST",
        "/v1/namespaces",
        Some(r#"{"name":"lab"}"#),
    );
    assert_eq!(status, 201, "{body}");

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
    // Archiving a registrar's chain in a shared store is refused, with nothing changed.
    let archive = lab.path("a.jsonl.gz");
    let (ok, text) = enrpd_audit(
        &lab,
        &[
            "archive",
            "--before-seq",
            "3",
            "--to",
            archive.to_str().expect("path"),
        ],
    );
    assert!(!ok && text.contains("not archived yet"), "{text}");
    assert!(!archive.exists());
    assert!(lab.verify_audit().status.success());
}
