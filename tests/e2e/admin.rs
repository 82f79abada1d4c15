//! The admin API over real HTTPS against a real `enrpd`, driven with curl as an operator
//! would: resources, credentials, live effects on the registrar, and the audit trail.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use identity::TrustDomain;
use trust::{DomainBundle, LocalIdentity, TrustStore};

use crate::registrar::{accepted, registration, resolution, resolved};
use crate::support::{Asap, Lab, Registrar, bin, run_ok};

/// A new token of `role` made by `admin` (valid 10 minutes): the API's answer, with its
/// `token` (the secret) and `id`.
pub(crate) fn new_token(
    lab: &Lab,
    reg: &Registrar,
    admin: &str,
    name: &str,
    role: &str,
) -> serde_json::Value {
    let request = serde_json::json!({"name": name, "role": role, "ttl_seconds": 600});
    let (status, body) = api(
        lab,
        reg,
        Some(admin),
        "POST",
        "/v1/tokens",
        Some(&request.to_string()),
    );
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// One request with curl: (status, body). `body` is JSON if it starts with `{`, else PEM.
pub(crate) fn api(
    lab: &Lab,
    reg: &Registrar,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let out = curl(lab, reg, token.map(Credential::Token), method, path, body);
    assert!(out.0 != 0, "no HTTP answer: {}", out.1);
    out
}

/// What a request authenticates with.
#[derive(Clone, Copy)]
enum Credential<'a> {
    Token(&'a str),
    /// The client certificate `pki/NAME.pem` with its key.
    Certificate(&'a str),
}

/// One request with curl: (status, body), status 0 when no HTTP answer came (for example
/// a refused handshake; the body then holds curl's error).
fn curl(
    lab: &Lab,
    reg: &Registrar,
    credential: Option<Credential<'_>>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ])
    .arg("--cacert")
    .arg(lab.path("pki/ca.pem"))
    .arg(format!("https://{}{path}", reg.admin));
    match credential {
        Some(Credential::Token(t)) => {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        Some(Credential::Certificate(name)) => {
            cmd.arg("--cert")
                .arg(lab.path(&format!("pki/{name}.pem")))
                .arg("--key")
                .arg(lab.path(&format!("pki/{name}.key")));
        }
        None => {}
    }
    if let Some(b) = body {
        let media = if b.starts_with('{') {
            "application/json"
        } else {
            "application/x-pem-file"
        };
        cmd.args(["-H", &format!("Content-Type: {media}"), "--data-binary", b]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, status)) if out.status.success() => {
            (status.trim().parse().expect("HTTP status"), body.to_owned())
        }
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

pub(crate) fn admin_token(init: &str) -> String {
    init.split_whitespace()
        .find(|w| w.starts_with("rsp_"))
        .unwrap_or_else(|| panic!("no token in {init}"))
        .to_owned()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits until the connection ends; how long that took (`None`: still open after 5 s).
async fn closed_within(conn: &mut Asap) -> Option<Duration> {
    let start = Instant::now();
    while conn.recv().await.is_some() {}
    let took = start.elapsed();
    (took < Duration::from_secs(5)).then_some(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_namespaces_tokens_and_pes_and_every_action_is_audited() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let call = |t: Option<&str>, m: &str, p: &str, b: Option<&str>| api(&lab, &reg, t, m, p, b);
    let admin = Some(token.as_str());

    // Credentials: none or a wrong token is 401, as problem+json.
    let (status, body) = call(None, "GET", "/v1/namespaces", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["type"], "urn:rsp:problem:unauthenticated");
    let last = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert_eq!(call(Some(&forged), "GET", "/v1/namespaces", None).0, 401);
    assert_eq!(call(None, "GET", "/healthz", None).0, 200);

    // Namespaces: create, conflict, validation, get, not found.
    let (status, body) = call(admin, "POST", "/v1/namespaces", Some(r#"{"name":"lab"}"#));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        call(admin, "POST", "/v1/namespaces", Some(r#"{"name":"lab"}"#)).0,
        409
    );
    assert_eq!(
        call(
            admin,
            "POST",
            "/v1/namespaces",
            Some(r#"{"name":"Bad Name!"}"#)
        )
        .0,
        422
    );
    assert_eq!(
        call(
            admin,
            "POST",
            "/v1/namespaces",
            Some(r#"{"name":"x","extra":1}"#)
        )
        .0,
        422,
        "unknown fields are refused"
    );
    assert_eq!(
        call(admin, "POST", "/v1/namespaces", Some("{not json")).0,
        400
    );
    assert_eq!(call(admin, "GET", "/v1/namespaces/lab", None).0, 200);
    assert_eq!(call(admin, "GET", "/v1/namespaces/nope", None).0, 404);

    // An auditor token made through the API reads but cannot write (403).
    let (status, body) = call(
        admin,
        "POST",
        "/v1/tokens",
        Some(r#"{"name":"night shift","role":"auditor","ttl_seconds":3600}"#),
    );
    assert_eq!(status, 201, "{body}");
    let created = json(&body);
    let auditor = created["token"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    let auditor_id = created["id"].as_str().expect("id").to_owned();
    let (_, listed) = call(admin, "GET", "/v1/tokens", None);
    assert!(listed.contains(&auditor_id) && !listed.contains(&auditor));
    assert_eq!(call(Some(&auditor), "GET", "/v1/namespaces", None).0, 200);
    let (status, body) = call(
        Some(&auditor),
        "POST",
        "/v1/namespaces",
        Some(r#"{"name":"z"}"#),
    );
    assert_eq!(status, 403, "{body}");

    // A live PE shows in its pool; an operator force-deregisters it.
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), reg.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("echo", 0x1234)).await;
    assert!(accepted(pe.recv_reply().await));
    let (status, body) = call(admin, "GET", "/v1/namespaces/default/pools/echo", None);
    assert_eq!(status, 200, "{body}");
    let pool = json(&body);
    let pes = pool["pool_elements"].as_array().expect("PEs");
    assert_eq!(pes.len(), 1, "{body}");
    assert_eq!(pes[0]["pe_id"], "0x00001234");
    assert_eq!(pes[0]["registrant"], "spiffe://acme.test/pe/echo-1");
    let pe_path = "/v1/namespaces/default/pools/echo/pool-elements/0x00001234";
    assert_eq!(call(Some(&auditor), "DELETE", pe_path, None).0, 403);
    assert_eq!(call(admin, "DELETE", pe_path, None).0, 204);
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), reg.addr)
        .await
        .expect("PU handshake");
    pu.send(&resolution("echo")).await;
    assert_eq!(resolved(pu.recv_reply().await), Err(0x9), "the PE is gone");
    assert_eq!(call(admin, "DELETE", pe_path, None).0, 404);

    // The metrics count what happened.
    let (status, metrics) = call(Some(&auditor), "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\nrsp_registrations_total{namespace=\"default\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nrsp_rejections_total{namespace=\"default\",cause=\"0x0009\"} 1\n"),
        "{metrics}"
    );

    // The audit log names the token for each admin action, refusals included.
    let token_id = token.split('_').nth(1).expect("token id");
    let (status, body) = call(
        Some(&auditor),
        "GET",
        &format!("/v1/audit?identity=token:{token_id}&limit=100"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    for action in [
        "admin:namespace.create",
        "admin:token.create",
        "admin:pe.deregister",
    ] {
        assert!(body.contains(action), "no {action} record in {body}");
    }
    // The registrar's own record of the removal names the operator too.
    let (_, body) = call(admin, "GET", "/v1/audit?action=remove:admin", None);
    assert!(body.contains(&format!("by token:{token_id}")), "{body}");
    let (status, body) = call(Some(&auditor), "GET", "/v1/audit/verify", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("true"), "{body}");
    // The auditor's refused write is on record too.
    let (_, body) = call(
        admin,
        "GET",
        &format!("/v1/audit?identity=token:{auditor_id}&limit=100"),
        None,
    );
    assert!(body.contains("forbidden"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_the_api_closes_live_connections_within_a_second() {
    let lab = Lab::new();
    lab.pki(&["issue", "pu", "client-2"]);
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let admin = Some(token.as_str());

    let pe_id = lab.identity("pe-echo-1");
    let mut pe = Asap::connect(&pe_id, reg.addr).await.expect("PE handshake");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), reg.addr)
        .await
        .expect("PU handshake");
    pu.send(&resolution("echo")).await;
    assert_eq!(resolved(pu.recv_reply().await).map(|v| v.len()), Ok(1));

    // The PE by identity, the PU by its certificate's serial.
    let pu_serial = String::from_utf8_lossy(
        &run_ok(
            Command::new(bin("rsp-pki"))
                .arg("--dir")
                .arg(lab.path("pki"))
                .args(["inspect"])
                .arg(lab.path("pki/pu-client-1.pem")),
        )
        .stdout,
    )
    .lines()
    .find_map(|l| {
        l.trim()
            .strip_prefix("serial")
            .map(|s| s.trim_matches([' ', ':']).to_owned())
    })
    .expect("serial line");
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "POST",
        "/v1/revocations",
        Some(
            r#"{"kind":"spiffe_id","spiffe_id":"spiffe://acme.test/pe/echo-1","reason":"stolen"}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let pe_closed = closed_within(&mut pe).await.expect("PE connection closed");
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "POST",
        "/v1/revocations",
        Some(&format!(
            r#"{{"kind":"serial","trust_domain":"acme.test","serial":"{pu_serial}"}}"#
        )),
    );
    assert_eq!(status, 201, "{body}");
    let pu_closed = closed_within(&mut pu).await.expect("PU connection closed");
    println!("revocation to close: PE {pe_closed:?}, PU {pu_closed:?} after the API answered");
    assert!(pe_closed < Duration::from_secs(1) && pu_closed < Duration::from_secs(1));

    // The PE is gone from resolutions, and neither certificate handshakes again.
    let mut pu2 = Asap::connect(&lab.identity("pu-client-2"), reg.addr)
        .await
        .expect("another PU");
    pu2.send(&resolution("echo")).await;
    assert_eq!(resolved(pu2.recv_reply().await), Err(0x9));
    for cert in ["pe-echo-1", "pu-client-1"] {
        match Asap::connect(&lab.identity(cert), reg.addr).await {
            Err(_) => {}
            // TLS 1.3: the client may finish before the server refuses its certificate.
            Ok(mut c) => assert!(closed_within(&mut c).await.is_some(), "{cert} still served"),
        }
    }
    let (_, list) = api(&lab, &reg, admin, "GET", "/v1/revocations", None);
    assert!(
        list.contains("stolen") && list.contains(&pu_serial.to_lowercase()),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_trust_domain_lets_its_pe_register_until_it_is_removed() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let admin = Some(token.as_str());
    let partner = |args: &[&str]| {
        run_ok(
            Command::new(bin("rsp-pki"))
                .arg("--dir")
                .arg(lab.path("partner"))
                .args(args),
        )
    };
    partner(&["init", "--trust-domain", "partner.test"]);
    partner(&["issue", "pe", "echo-9"]);
    let bundle = String::from_utf8(partner(&["bundle", "export"]).stdout).expect("PEM");

    // A partner PE trusting our CA for the registrar, presenting its own certificate.
    let read = |f: &str| std::fs::read(lab.path(f)).expect("PKI file");
    let id = LocalIdentity::from_pem(
        &read("partner/pe-echo-9.pem"),
        &read("partner/pe-echo-9.key"),
    )
    .expect("identity");
    let store = TrustStore::new(id).expect("trust store");
    let ours = TrustDomain::new("acme.test").expect("domain");
    store
        .add_domain(DomainBundle::from_pem(ours, &read("pki/ca.pem")).expect("bundle"))
        .expect("add");
    let store = Arc::new(store);

    // Unknown domain: no handshake.
    if let Ok(mut c) = Asap::connect(&store, reg.addr).await {
        assert!(
            closed_within(&mut c).await.is_some(),
            "an unknown domain is served"
        );
    }
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "POST",
        "/v1/trust-domains",
        Some(&bundle),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "POST",
        "/v1/grants",
        Some(
            r#"{"identity":"spiffe://partner.test/pe/*","namespace":"default","pools":"echo","actions":["register"]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let grant_id = json(&body)["id"].as_i64().expect("grant id");
    let mut pe = Asap::connect(&store, reg.addr)
        .await
        .expect("partner PE handshake");
    pe.send(&registration("echo", 9)).await;
    assert!(
        accepted(pe.recv_reply().await),
        "the grant lets it register"
    );
    let pool = "/v1/namespaces/default/pools/echo";
    assert!(
        api(&lab, &reg, admin, "GET", pool, None)
            .1
            .contains("partner.test")
    );

    // Withdrawing the grant removes the registration it allowed; granting again lets the
    // PE back in.
    let grant_path = format!("/v1/grants/{grant_id}");
    assert_eq!(api(&lab, &reg, admin, "DELETE", &grant_path, None).0, 204);
    assert!(
        !api(&lab, &reg, admin, "GET", pool, None)
            .1
            .contains("partner.test")
    );
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "POST",
        "/v1/grants",
        Some(
            r#"{"identity":"spiffe://partner.test/pe/*","namespace":"default","pools":"echo","actions":["register"]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    pe.send(&registration("echo", 9)).await;
    assert!(accepted(pe.recv_reply().await), "granted again");

    // The local domain cannot be removed; the partner's can, and its PE goes with it.
    assert_eq!(
        api(
            &lab,
            &reg,
            admin,
            "DELETE",
            "/v1/trust-domains/acme.test",
            None
        )
        .0,
        409
    );
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "DELETE",
        "/v1/trust-domains/partner.test",
        None,
    );
    assert_eq!(status, 204, "{body}");
    let took = closed_within(&mut pe).await.expect("partner PE closed");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (_, body) = api(
        &lab,
        &reg,
        admin,
        "GET",
        "/v1/namespaces/default/pools/echo",
        None,
    );
    assert!(!body.contains("partner.test"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_client_certificate_is_a_credential_while_granted_and_unrevoked() {
    let lab = Lab::new();
    lab.pki(&["issue", "admin", "ops"]);
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let with_cert = |method: &str, path: &str, body: Option<&str>| {
        curl(
            &lab,
            &reg,
            Some(Credential::Certificate("admin-ops")),
            method,
            path,
            body,
        )
    };
    // A valid certificate without an admin grant is authenticated but not allowed.
    assert_eq!(with_cert("GET", "/v1/namespaces", None).0, 403);
    let (status, body) = api(
        &lab,
        &reg,
        Some(&token),
        "POST",
        "/v1/grants",
        Some(
            r#"{"identity":"spiffe://acme.test/admin/ops","namespace":"*","pools":"*","actions":["admin:read","admin:write"]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = with_cert("POST", "/v1/namespaces", Some(r#"{"name":"ops-made"}"#));
    assert_eq!(status, 201, "{body}");
    // The audit record names the certificate's identity.
    let (_, audit) = api(
        &lab,
        &reg,
        Some(&token),
        "GET",
        "/v1/audit?identity=spiffe://acme.test/admin/ops",
        None,
    );
    assert!(audit.contains("admin:namespace.create"), "{audit}");
    // Revoked: the certificate no longer completes a handshake.
    let (status, body) = api(
        &lab,
        &reg,
        Some(&token),
        "POST",
        "/v1/revocations",
        Some(r#"{"kind":"spiffe_id","spiffe_id":"spiffe://acme.test/admin/ops"}"#),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        with_cert("GET", "/v1/namespaces", None).0,
        0,
        "no HTTP answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_declared_through_the_api_limits_its_registrations() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let admin = Some(token.as_str());
    let path = "/v1/namespaces/default/pools/echo";
    let (status, body) = api(
        &lab,
        &reg,
        admin,
        "PUT",
        path,
        Some(r#"{"policy":"round-robin","max_pes":1}"#),
    );
    assert_eq!(status, 200, "{body}");
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), reg.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("echo", 1)).await;
    assert!(accepted(pe.recv_reply().await));
    pe.send(&registration("echo", 2)).await;
    assert_eq!(
        crate::registrar::rejected_with(pe.recv_reply().await),
        Some(0x6),
        "beyond the declared maximum"
    );
    // Withdrawn with the pool: its PE goes, and the limit with it.
    assert_eq!(api(&lab, &reg, admin, "DELETE", path, None).0, 204);
    for id in [2, 3] {
        pe.send(&registration("echo", id)).await;
        assert!(accepted(pe.recv_reply().await), "PE {id}");
    }
}

/// A resolution of `pool` in `namespace` (`None`: the identity's default namespace).
fn resolution_in(namespace: Option<&str>, pool: &str) -> asap::wire::AsapMsg {
    asap::wire::AsapMsg::HandleResolution {
        namespace: namespace.map(|n| asap::wire::param::Namespace::new(n).expect("namespace")),
        pool_handle: asap::wire::param::PoolHandle::new(pool).expect("pool handle"),
        option: None,
        hints: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_namespace_rule_sends_an_identitys_requests_to_its_namespace() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let admin = Some(token.as_str());
    for (path, body) in [
        ("/v1/namespaces", r#"{"name":"lab"}"#),
        (
            "/v1/grants",
            r#"{"identity":"spiffe://acme.test/pe/echo-1","namespace":"lab","pools":"echo","actions":["register"]}"#,
        ),
        (
            "/v1/grants",
            r#"{"identity":"spiffe://acme.test/pu/*","namespace":"lab","pools":"*","actions":["resolve"]}"#,
        ),
        (
            "/v1/default-namespaces",
            r#"{"identity":"spiffe://acme.test/pe/echo-1","namespace":"lab"}"#,
        ),
    ] {
        let (status, answer) = api(&lab, &reg, admin, "POST", path, Some(body));
        assert_eq!(status, 201, "{path}: {answer}");
    }
    // PE echo-1 names no namespace: its registration lands in lab, not in default.
    let pe_id = lab.identity("pe-echo-1");
    let mut pe = Asap::connect(&pe_id, reg.addr).await.expect("PE handshake");
    pe.send(&registration("echo", 1)).await;
    assert!(accepted(pe.recv_reply().await));
    let pu_id = lab.identity("pu-client-1");
    let mut pu = Asap::connect(&pu_id, reg.addr).await.expect("PU handshake");
    pu.send(&resolution_in(Some("lab"), "echo")).await;
    assert_eq!(resolved(pu.recv_reply().await).map(|f| f.len()), Ok(1));
    pu.send(&resolution("echo")).await;
    assert_eq!(
        resolved(pu.recv_reply().await),
        Err(0x9),
        "nothing in default"
    );
    // The namespace cannot go while the rule sends requests there.
    let (status, _) = api(&lab, &reg, admin, "DELETE", "/v1/namespaces/lab", None);
    assert_eq!(status, 409);

    // The rule is in force from the first connection after a restart.
    drop(pe);
    assert!(reg.terminate().success());
    let reg = lab.start_registrar_with(10_000, 10_000);
    let mut pe = Asap::connect(&pe_id, reg.addr).await.expect("PE handshake");
    pe.send(&registration("echo", 2)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&pu_id, reg.addr).await.expect("PU handshake");
    pu.send(&resolution_in(Some("lab"), "echo")).await;
    let found = resolved(pu.recv_reply().await).expect("found in lab");
    assert!(found.iter().any(|(id, _)| *id == 2), "{found:?}");
}
