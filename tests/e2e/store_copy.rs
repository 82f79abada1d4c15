//! Moving a registrar from its SQLite file to PostgreSQL with `enrpd store copy` (issue 19
//! item 6; docs/STORE.md "Moving a registrar to PostgreSQL"): tokens, grants, revocations
//! and the audit log survive the move, and the registrar then appends to its own chain on
//! PostgreSQL. Needs a server in `RSP_TEST_POSTGRES`, as `fleet.rs`.

use std::process::{Command, Output};

use crate::admin::{admin_token, api};
use crate::endpoints::{resolve, rsp, start_pe_lines};
use crate::support::{Lab, Registrar, bin};

const REGISTRAR: &str = "spiffe://acme.test/registrar/enrp-1";

fn store_copy(lab: &Lab, url: &str) -> Output {
    Command::new(bin("enrpd"))
        .args(["store", "copy", "--to", url, "--data"])
        .arg(lab.path("data"))
        .output()
        .expect("spawn enrpd store copy")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `rsp resolve` as the PU `cert`: whether it was served.
fn resolves_as(lab: &Lab, addr: std::net::SocketAddr, cert: &str) -> bool {
    rsp(lab, addr, cert)
        .args(["resolve", "echo", "--json"])
        .output()
        .expect("rsp resolve")
        .status
        .success()
}

/// The PE `pe-echo-1` registered in `echo` and resolved by `pu-client-1`.
fn echo_pe_resolves(
    lab: &Lab,
    reg: &Registrar,
) -> (crate::endpoints::Pe, std::sync::mpsc::Receiver<String>) {
    let pe = start_pe_lines(
        lab,
        reg.addr,
        "pe-echo-1",
        &["--pool", "echo", "--serve", "echo"],
    );
    assert_eq!(resolve(lab, reg.addr).len(), 1);
    pe
}

/// Audit records in the SQLite file, read directly.
async fn sqlite_records(lab: &Lab) -> u64 {
    let store = store::db::Store::open_file(&lab.path("data/rsp.db"), &Default::default())
        .await
        .expect("SQLite store");
    let n = store::audit::count(&mut store.acquire().await.expect("conn"))
        .await
        .expect("count");
    store.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_registrar_moves_to_postgres_with_its_tokens_grants_revocations_and_audit_log() {
    let Some(db) = store::db::test_db::empty_postgres("store_copy::moves").await else {
        return;
    };
    let lab = Lab::new();
    lab.pki(&["issue", "pu", "client-2"]);
    let admin = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(1000, 2000);
    let (pe, _lines) = echo_pe_resolves(&lab, &reg);
    assert!(resolves_as(&lab, reg.addr, "pu-client-2"));
    let (status, body) = api(
        &lab,
        &reg,
        Some(&admin),
        "POST",
        "/v1/tokens",
        Some(r#"{"name": "ops", "role": "operator"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).expect("json");
    let operator = created["token"].as_str().expect("token").to_owned();
    let (status, body) = api(
        &lab,
        &reg,
        Some(&admin),
        "POST",
        "/v1/grants",
        Some(
            r#"{"identity":"spiffe://acme.test/pe/echo-2","namespace":"default","pools":"moved","actions":["register"]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let grant: serde_json::Value = serde_json::from_str(&body).expect("json");
    let grant_id = grant["id"].as_i64().expect("grant id");
    let (status, body) = api(
        &lab,
        &reg,
        Some(&admin),
        "POST",
        "/v1/revocations",
        Some(
            r#"{"kind":"spiffe_id","spiffe_id":"spiffe://acme.test/pu/client-2","reason":"lost"}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    assert!(!resolves_as(&lab, reg.addr, "pu-client-2"), "revoked");
    // Refused while the registrar runs, changing nothing.
    let install = std::fs::read(lab.path("data/enrpd.json")).expect("enrpd.json");
    let out = store_copy(&lab, &db.url);
    assert!(
        !out.status.success() && text(&out).contains("is the registrar running?"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(lab.path("data/enrpd.json")).expect("enrpd.json"),
        install
    );
    drop(pe);
    assert!(reg.terminate().success());
    let sqlite_before = sqlite_records(&lab).await;

    let out = store_copy(&lab, &db.url);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("audit chain local verified"), "{said}");
    assert!(said.contains("admin_tokens"), "{said}");
    // Run again: the data directory now uses PostgreSQL.
    let reg = lab.start_registrar_with(1000, 2000);
    let (status, body) = api(&lab, &reg, Some(&admin), "GET", "/v1/tokens", None);
    assert_eq!(status, 200, "the admin token works after the move: {body}");
    assert!(body.contains("\"ops\""), "{body}");
    let (status, body) = api(&lab, &reg, Some(&operator), "GET", "/v1/revocations", None);
    assert_eq!(status, 200, "the operator token works: {body}");
    assert!(body.contains("spiffe://acme.test/pu/client-2"), "{body}");
    let (_, body) = api(&lab, &reg, Some(&admin), "GET", "/v1/grants", None);
    let grants: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        grants
            .as_array()
            .or_else(|| grants["grants"].as_array())
            .expect("grants")
            .iter()
            .any(|g| g["id"] == grant_id && g["pools"] == "moved"),
        "the grant, with its id: {body}"
    );
    let (pe, _lines) = echo_pe_resolves(&lab, &reg);
    assert!(!resolves_as(&lab, reg.addr, "pu-client-2"), "still revoked");
    drop(pe);
    assert!(reg.terminate().success());

    // Both chains verify: the copied local chain, and the registrar's own on PostgreSQL.
    let verify = lab.verify_audit();
    let said = text(&verify);
    assert!(verify.status.success(), "{said}");
    let lines: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("audit chain intact"))
        .collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(
        lines[1].ends_with(&format!("(registrar {REGISTRAR})")),
        "{said}"
    );
    assert_eq!(
        sqlite_records(&lab).await,
        sqlite_before,
        "the SQLite file is the fallback, unchanged"
    );

    // A second copy has nothing to copy; another registrar's copy into this database is
    // refused (it holds rows), its data directory unchanged.
    let out = store_copy(&lab, &db.url);
    assert!(
        !out.status.success() && text(&out).contains("nothing to copy"),
        "{}",
        text(&out)
    );
    let other = Lab::new();
    other.init_registrar();
    let install = std::fs::read(other.path("data/enrpd.json")).expect("enrpd.json");
    let out = store_copy(&other, &db.url);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("not empty") && said.contains("enrpd init --join"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(other.path("data/enrpd.json")).expect("enrpd.json"),
        install
    );
}
