//! PE labels and PU hints (issue 23, docs/PROTOCOL-EXTENSIONS.md) through the real
//! binaries: `rsp pe --label` registers them, `rsp resolve --json --hint` and the admin API
//! show them, over-limit labels are refused with a clear line by `rsp pe` and with cause
//! 0x3 by `enrpd`, changing nothing. On SQLite and on PostgreSQL (`RSP_TEST_POSTGRES`).

use std::time::Duration;

use asap::wire::param::MAX_LABELS;

use crate::admin::{admin_token, api};
use crate::endpoints::{resolve, rsp, start_pe_lines};
use crate::registrar::{registration, rejected_with};
use crate::support::{Asap, Lab};

/// A registration of PE `id` in `echo` whose Pool Element carries `pairs` as its PE Labels
/// parameter (0x8102) unchecked, as a PE that bypasses `Labels` could send it.
fn raw_registration_with_labels(id: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut value = Vec::new();
    for (k, v) in pairs {
        value.push(u8::try_from(k.len()).expect("short key"));
        value.extend_from_slice(k.as_bytes());
        value.push(u8::try_from(v.len()).expect("short value"));
        value.extend_from_slice(v.as_bytes());
    }
    let mut labels = 0x8102u16.to_be_bytes().to_vec();
    labels.extend_from_slice(&u16::try_from(4 + value.len()).expect("fits").to_be_bytes());
    labels.extend_from_slice(&value);
    labels.resize(labels.len().next_multiple_of(4), 0);
    let mut msg = registration("echo", id).to_bytes().expect("encodes");
    // The Pool Element is the message's last parameter: its TLV grows by the labels.
    let pe_at = 4 + {
        let handle_len = usize::from(u16::from_be_bytes([msg[6], msg[7]]));
        handle_len.next_multiple_of(4)
    };
    assert_eq!(&msg[pe_at..pe_at + 2], &[0x00, 0x0A], "the Pool Element");
    let grow = |at: usize, msg: &mut Vec<u8>| {
        let len = usize::from(u16::from_be_bytes([msg[at], msg[at + 1]])) + labels.len();
        msg[at..at + 2].copy_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
    };
    grow(pe_at + 2, &mut msg);
    grow(2, &mut msg);
    msg.extend_from_slice(&labels);
    msg
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

async fn labels_hints_and_their_limits(lab: &Lab, init: &str) {
    let token = admin_token(init);
    let registrar = lab.start_registrar_with(1000, 2000);
    let (_pe, _lines) = start_pe_lines(
        lab,
        registrar.addr,
        "pe-echo-1",
        &[
            "--pool",
            "echo",
            "--serve",
            "echo",
            "--label",
            "region=eu",
            "--label",
            "zone=a1",
        ],
    );
    // `rsp resolve --json` shows them (and takes hints, here ignored by round robin).
    let out = rsp(lab, registrar.addr, "pu-client-1")
        .args(["resolve", "echo", "--json", "--hint", "region=eu"])
        .output()
        .expect("rsp resolve");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let pes: Vec<_> = text.lines().map(json).collect();
    assert_eq!(pes.len(), 1, "{text}");
    assert_eq!(
        pes[0]["labels"],
        serde_json::json!({"region": "eu", "zone": "a1"})
    );
    // So does the admin API's pool.
    let (status, body) = api(
        lab,
        &registrar,
        Some(&token),
        "GET",
        "/v1/namespaces/default/pools/echo",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let pool = json(&body);
    assert_eq!(
        pool["pool_elements"][0]["labels"],
        serde_json::json!({"region": "eu", "zone": "a1"}),
        "{body}"
    );

    // Over the limits at the command line: one clear line, nothing sent.
    let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
    let out = rsp(lab, registrar.addr, "pe-echo-2")
        .args([
            "pe",
            "--pool",
            "echo",
            "--serve",
            "echo",
            "--label",
            &many.join(","),
        ])
        .output()
        .expect("rsp pe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("more than 16 labels"), "{err}");
    let out = rsp(lab, registrar.addr, "pu-client-1")
        .args(["resolve", "echo", "--hint", "bad key=v"])
        .output()
        .expect("rsp resolve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("label key"), "{err}");

    // Over the limits on the wire: refused with Invalid Values (0x3), nothing registered.
    let pe2 = lab.identity("pe-echo-2");
    let mut conn = Asap::connect(&pe2, registrar.addr).await.expect("connect");
    let seventeen: Vec<(String, String)> = (0..=MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let pairs: Vec<(&str, &str)> = seventeen
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let long_value = "v".repeat(65);
    for bad in [
        pairs.clone(),
        vec![("region", long_value.as_str())],
        vec![("k", "\n")],
    ] {
        conn.send_raw(&raw_registration_with_labels(0x0102_0304, &bad))
            .await;
        assert_eq!(rejected_with(conn.recv_reply().await), Some(0x3));
    }
    assert_eq!(resolve(lab, registrar.addr).len(), 1, "nothing registered");
    // Within them, the same raw form is accepted: the refusals were the limits'.
    conn.send_raw(&raw_registration_with_labels(
        0x0102_0304,
        &pairs[..MAX_LABELS],
    ))
    .await;
    assert!(crate::registrar::accepted(conn.recv_reply().await));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pes = resolve(lab, registrar.addr);
        if pes.len() == 2 {
            let labels: Vec<usize> = pes
                .iter()
                .map(|l| json(l)["labels"].as_object().map_or(0, |m| m.len()))
                .collect();
            assert!(
                labels.contains(&MAX_LABELS) && labels.contains(&2),
                "{pes:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{pes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_hints_on_sqlite() {
    let lab = Lab::new();
    let init = lab.init_registrar();
    labels_hints_and_their_limits(&lab, &init).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_hints_on_postgres() {
    on_postgres("labels::on_postgres", labels_hints_and_their_limits).await;
}

/// `test` against a registrar initialised on a fresh PostgreSQL database (none: skipped,
/// unless `RSP_REQUIRE_POSTGRES` says it must run).
async fn on_postgres(name: &str, test: impl AsyncFnOnce(&Lab, &str)) {
    let Some(db) = store::db::test_db::empty_postgres(name).await else {
        return;
    };
    let lab = Lab::new();
    let init = crate::fleet::init(&lab, "enrp-1", "data", &db.url, &[]);
    test(&lab, &init).await;
}

/// Spec §9.4 with the extensions: a PE registered at A with labels and a private policy is
/// seen at B (ENRP handle update) with both unchanged, and B, which has no selector for
/// the type either, answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_a_private_policy_travel_to_a_peer_unchanged() {
    use asap::wire::param::{Labels, Policy, PolicyType};
    use asap::wire::{AsapMsg, Resolution};

    let lab = Lab::new();
    for name in ["a", "b"] {
        lab.init_peer(name, &format!("data-{name}"));
    }
    let a = lab.start_peer("data-a", &[]);
    let b = lab.start_peer("data-b", &[a.enrp]);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), a.registrar.addr)
        .await
        .expect("PE connects to A");
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), b.registrar.addr)
        .await
        .expect("PU connects to B");
    let policy = Policy::private(PolicyType(0xFF00_00AB), &[1, 2, 3, 4, 5]).expect("private");
    let labels = Labels::parse(["region=eu", "zone=a1"]).expect("valid");
    let mut msg = registration("echo", 7);
    if let AsapMsg::Registration { pool_element, .. } = &mut msg {
        pool_element.policy = policy;
        pool_element.labels = labels.clone();
    }
    pe.send(&msg).await;
    assert!(crate::registrar::accepted(pe.recv_reply().await));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        pu.send(&crate::registrar::resolution("echo")).await;
        if let Some(AsapMsg::HandleResolutionResponse {
            result:
                Resolution::Found {
                    policy: overall,
                    pool_elements,
                },
            ..
        }) = pu.recv_reply().await
        {
            let e = &pool_elements[0].pool_element;
            assert_eq!((e.pe_id.get(), e.policy, &e.labels), (7, policy, &labels));
            assert_eq!(overall, Some(policy), "the policy as registered");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never learnt A's PE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `rsp pe --policy 0xff000001:0a0b` registers a private policy; the registrar (no
/// selector for it) accepts it and answers with it as registered; `rsp pu` (none either)
/// selects round robin, says so once, and reaches the PE.
#[test]
fn a_private_policy_from_the_command_line_is_served_round_robin_and_said() {
    use std::io::Write as _;

    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let registrar = lab.start_registrar_with(1000, 2000);
    let (_pe, _lines) = start_pe_lines(
        &lab,
        registrar.addr,
        "pe-echo-1",
        &[
            "--pool",
            "echo",
            "--serve",
            "echo",
            "--policy",
            "0xff000001:0a0b",
        ],
    );
    let pes = resolve(&lab, registrar.addr);
    assert_eq!(pes.len(), 1, "{pes:?}");
    assert_eq!(json(&pes[0])["policy"], "0xff000001", "{pes:?}");
    // The registrar noted the fallback in the pool's first audit record.
    let (status, body) = api(
        &lab,
        &registrar,
        Some(&token),
        "GET",
        "/v1/audit?pool=echo&action=register",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("policy 0xff000001 has no selector here: the pool is selected round robin"),
        "{body}"
    );
    let mut pu = rsp(&lab, registrar.addr, "pu-client-1")
        .args(["pu", "echo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rsp pu");
    let mut stdin = pu.stdin.take().expect("stdin");
    writeln!(stdin, "one").expect("write");
    writeln!(stdin, "two").expect("write");
    drop(stdin);
    let out = pu.wait_with_output().expect("rsp pu ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    let said = "pool echo: policy 0xff000001 has no selector here; selecting round robin";
    assert_eq!(err.matches(said).count(), 1, "once: {err}");
}

/// Issue 23: grants may restrict which labels an identity sets, so that a PE certificate
/// cannot claim another region. The operator replaces the quickstart's open register
/// grant with one admitting `region=eu-*`: `rsp pe --label region=us-east` is refused with
/// one clear line (security rejection, 0xA) and the refusal is audited with the label;
/// `region=eu-west` registers; a raw registration trying the same is refused on the wire.
async fn grant_label_rules_hold(lab: &Lab, init: &str) {
    let token = admin_token(init);
    let registrar = lab.start_registrar_with(1000, 2000);
    let call = |method: &str, path: &str, body: Option<&str>| {
        api(lab, &registrar, Some(&token), method, path, body)
    };
    let (status, body) = call("GET", "/v1/grants", None);
    assert_eq!(status, 200, "{body}");
    let open = json(&body)
        .as_array()
        .expect("a list")
        .iter()
        .find(|g| g["identity"] == "spiffe://acme.test/pe/*")
        .map(|g| g["id"].as_i64().expect("an id"))
        .expect("the quickstart's register grant");
    let (status, body) = call("DELETE", &format!("/v1/grants/{open}"), None);
    assert_eq!(status, 204, "{body}");
    let (status, body) = call(
        "POST",
        "/v1/grants",
        Some(
            r#"{"identity":"spiffe://acme.test/pe/*","namespace":"default","pools":"*","actions":["register"],"labels":["region=eu-*","zone=*"]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");

    // Another region: refused, said in one line, nothing registered.
    let mut child = rsp(lab, registrar.addr, "pe-echo-1")
        .args([
            "pe",
            "--pool",
            "echo",
            "--serve",
            "echo",
            "--label",
            "region=us-east",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rsp pe");
    // A PE that registered would serve until killed: bounded, so that this fails, not hangs.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("rsp pe").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("rsp pe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.to_lowercase().contains("security"), "{err}");
    let out = rsp(lab, registrar.addr, "pu-client-1")
        .args(["resolve", "echo"])
        .output()
        .expect("rsp resolve");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0x9"),
        "nothing registered: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same on the wire, from a PE that bypasses `rsp pe`.
    let pe2 = lab.identity("pe-echo-2");
    let mut conn = Asap::connect(&pe2, registrar.addr).await.expect("connect");
    conn.send_raw(&raw_registration_with_labels(
        0x0102_0304,
        &[("region", "us-west")],
    ))
    .await;
    assert_eq!(rejected_with(conn.recv_reply().await), Some(0xA));
    conn.send_raw(&raw_registration_with_labels(
        0x0102_0305,
        &[("owner", "b")],
    ))
    .await;
    assert_eq!(
        rejected_with(conn.recv_reply().await),
        Some(0xA),
        "a key no rule names"
    );
    // Both refusals audited with the label.
    let (status, body) = call("GET", "/v1/audit?action=register&limit=100", None);
    assert_eq!(status, 200, "{body}");
    for label in ["region=us-east", "region=us-west", "owner=b"] {
        assert!(
            body.contains(&format!("label {label} is not allowed by a register grant")),
            "{label} in {body}"
        );
    }

    // Its own region registers.
    let (_pe, _lines) = start_pe_lines(
        lab,
        registrar.addr,
        "pe-echo-1",
        &[
            "--pool",
            "echo",
            "--serve",
            "echo",
            "--label",
            "region=eu-west",
            "--label",
            "zone=b",
        ],
    );
    let pes = resolve(lab, registrar.addr);
    assert_eq!(pes.len(), 1, "{pes:?}");
    assert_eq!(json(&pes[0])["labels"]["region"], "eu-west");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_label_rules_on_sqlite() {
    let lab = Lab::new();
    let init = lab.init_registrar();
    grant_label_rules_hold(&lab, &init).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_label_rules_on_postgres() {
    on_postgres("labels::rules_on_postgres", grant_label_rules_hold).await;
}
