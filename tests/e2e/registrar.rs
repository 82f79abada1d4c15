//! `enrpd` serving ASAP over mutual TLS (issue 4): registration, resolution,
//! authorization, keep-alives, malformed input, the audit log.

use std::net::Ipv4Addr;
use std::time::Duration;

use asap::wire::AsapMsg;
use asap::wire::Resolution;
use asap::wire::param::{PeId, Policy, PoolHandle};

use crate::support::{Asap, Lab};

/// A registration of PE `id` in `pool` at 127.0.0.1 (port 7777, round robin, 300 s).
pub(crate) fn registration(pool: &str, id: u32) -> AsapMsg {
    testkit::msg::registration(&testkit::msg::pool(pool), id, Ipv4Addr::LOCALHOST.into())
}

pub(crate) fn resolution(pool: &str) -> AsapMsg {
    AsapMsg::HandleResolution {
        namespace: None,
        pool_handle: PoolHandle::new(pool).expect("pool handle"),
        option: None,
        hints: Default::default(),
    }
}

pub(crate) fn accepted(m: Option<AsapMsg>) -> bool {
    matches!(m, Some(AsapMsg::RegistrationResponse { reject: false, .. }))
}

pub(crate) fn rejected_with(m: Option<AsapMsg>) -> Option<u16> {
    match m {
        Some(AsapMsg::RegistrationResponse {
            reject: true,
            error: Some(e),
            ..
        }) => Some(e.causes()[0].code()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The PEs of a resolution (sorted IDs with registrants), or the error cause.
pub(crate) fn resolved(m: Option<AsapMsg>) -> Result<Vec<(u32, String)>, u16> {
    match m {
        Some(AsapMsg::HandleResolutionResponse {
            result: Resolution::Found { pool_elements, .. },
            ..
        }) => {
            let mut v: Vec<(u32, String)> = pool_elements
                .iter()
                .map(|e| {
                    (
                        e.pool_element.pe_id.get(),
                        e.registrant
                            .as_ref()
                            .map(|r| r.as_str().to_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            v.sort();
            Ok(v)
        }
        Some(AsapMsg::HandleResolutionResponse {
            result: Resolution::Error(e),
            ..
        }) => Err(e.causes()[0].code()),
        other => panic!("expected a resolution response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pe_registers_pu_resolves_and_both_are_audited() {
    let lab = Lab::new();
    let init = lab.init_registrar();
    assert!(init.contains("admin token"), "{init}");
    let registrar = lab.start_registrar_with(500, 500);
    let pe_id = lab.identity("pe-echo-1");
    let pu_id = lab.identity("pu-client-1");

    let mut pe = Asap::connect(&pe_id, registrar.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));

    let mut pu = Asap::connect(&pu_id, registrar.addr)
        .await
        .expect("PU handshake");
    pu.send(&resolution("echo")).await;
    assert_eq!(
        resolved(pu.recv_reply().await),
        Ok(vec![(7, "spiffe://acme.test/pe/echo-1".to_owned())])
    );

    // The PE never answers keep-alives: gone within interval + timeout (500 + 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pu.send(&resolution("echo")).await;
    assert_eq!(resolved(pu.recv_reply().await), Err(0x9));

    drop((pe, pu));
    assert!(registrar.terminate().success(), "SIGTERM exits 0");
    let verify = lab.verify_audit();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    assert!(text.contains("intact"), "{text}");

    // The records, with identities (read back through the store).
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    let page = store::audit::query(&mut conn, &Default::default())
        .await
        .expect("query");
    let has = |action: &str, actor: Option<&str>, outcome: &str| {
        page.events.iter().any(|e| {
            e.record.action == action
                && e.record.actor.as_ref().map(|a| a.as_str()) == actor
                && e.record.outcome.to_text() == outcome
        })
    };
    assert!(has("register", Some("spiffe://acme.test/pe/echo-1"), "ok"));
    assert!(has("resolve", Some("spiffe://acme.test/pu/client-1"), "ok"));
    assert!(has(
        "resolve",
        Some("spiffe://acme.test/pu/client-1"),
        "cause:0x0009"
    ));
    assert!(has("remove:timeout", None, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_answered_and_audited() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(10_000, 10_000);
    let pe1 = lab.identity("pe-echo-1");
    let pe2 = lab.identity("pe-echo-2");
    let pu = lab.identity("pu-client-1");

    // A PU identity has no register grant: 0xA.
    let mut c = Asap::connect(&pu, registrar.addr).await.expect("handshake");
    c.send(&registration("echo", 1)).await;
    assert_eq!(rejected_with(c.recv_reply().await), Some(0xA));
    // A PE identity has no resolve grant, but may resolve the pools it may register in
    // (issue 25: its business card names the pool's other PEs; docs/CLIENTS.md).
    let mut a = Asap::connect(&pe1, registrar.addr)
        .await
        .expect("handshake");
    a.send(&registration("echo", 5)).await;
    assert!(accepted(a.recv_reply().await));
    a.send(&resolution("echo")).await;
    assert_eq!(
        resolved(a.recv_reply().await),
        Ok(vec![(5, "spiffe://acme.test/pe/echo-1".to_owned())])
    );
    // A pool that does not exist: 0x9.
    c.send(&resolution("nowhere")).await;
    assert_eq!(resolved(c.recv_reply().await), Err(0x9));
    // Another PE identity cannot take over PE 5: 0x4, and cannot deregister it: 0xA.
    let mut b = Asap::connect(&pe2, registrar.addr)
        .await
        .expect("handshake");
    b.send(&registration("echo", 5)).await;
    assert_eq!(rejected_with(b.recv_reply().await), Some(0x4));
    b.send(&AsapMsg::Deregistration {
        namespace: None,
        pool_handle: PoolHandle::new("echo").expect("pool handle"),
        pe_id: PeId::new(5).expect("non-zero"),
    })
    .await;
    match b.recv_reply().await {
        Some(AsapMsg::DeregistrationResponse { error: Some(e), .. }) => {
            assert_eq!(e.causes()[0].code(), 0xA);
        }
        other => panic!("expected a refused deregistration, got {other:?}"),
    }
    c.send(&resolution("echo")).await;
    assert_eq!(
        resolved(c.recv_reply().await),
        Ok(vec![(5, "spiffe://acme.test/pe/echo-1".to_owned())]),
        "the entry is unchanged"
    );

    // Malformed input: an unknown message type is answered with cause 0x2 and the
    // connection stays; a framing fault closes that connection only.
    c.send_raw(&[0x42, 0, 0, 8, 1, 2, 3, 4]).await;
    match c.recv_reply().await {
        Some(AsapMsg::Error(e)) => assert_eq!(e.causes()[0].code(), 0x2),
        other => panic!("expected an ASAP error, got {other:?}"),
    }
    c.send_raw(&[0x05, 0, 0, 6, 0, 0]).await;
    assert!(c.recv().await.is_none(), "closed after a framing fault");
    let mut d = Asap::connect(&pu, registrar.addr)
        .await
        .expect("others still served");
    d.send(&resolution("echo")).await;
    assert!(resolved(d.recv_reply().await).is_ok());

    // A certificate of an unknown trust domain does not get through the handshake.
    let other = tempfile::tempdir().expect("temp dir");
    let pki = |args: &[&str]| {
        crate::support::run_ok(
            std::process::Command::new(crate::support::bin("rsp-pki"))
                .arg("--dir")
                .arg(other.path())
                .args(args),
        )
    };
    pki(&["init", "--trust-domain", "evil.test"]);
    pki(&["issue", "pe", "x"]);
    let read = |f: &str| std::fs::read(other.path().join(f)).expect("file");
    let id =
        trust::LocalIdentity::from_pem(&read("pe-x.pem"), &read("pe-x.key")).expect("identity");
    let store = trust::TrustStore::new(id).expect("store");
    // It trusts the registrar's CA, so only the registrar's refusal can stop it.
    store
        .add_domain(
            trust::DomainBundle::from_pem(
                identity::TrustDomain::new("acme.test").expect("domain"),
                &std::fs::read(lab.path("pki/ca.pem")).expect("ca"),
            )
            .expect("bundle"),
        )
        .expect("add");
    let refused = match Asap::connect(&store, registrar.addr).await {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server's alert arrives.
        Ok(mut x) => {
            x.send(&resolution("echo")).await;
            x.recv().await.is_none()
        }
    };
    assert!(refused, "an unknown trust domain is refused");

    drop((a, b, c, d));
    assert!(registrar.terminate().success());
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    let page = store::audit::query(&mut conn, &Default::default())
        .await
        .expect("query");
    let outcomes: Vec<(String, String)> = page
        .events
        .iter()
        .map(|e| {
            (
                e.record.action.to_string(),
                e.record.outcome.to_text().into_owned(),
            )
        })
        .collect();
    for want in [
        ("register", "cause:0x000a"),
        ("register", "cause:0x0004"),
        ("deregister", "cause:0x000a"),
        ("resolve", "cause:0x0009"),
        ("malformed", "cause:0x0002"),
        ("handshake", "tls-handshake"),
    ] {
        assert!(
            outcomes.iter().any(|(a, o)| a == want.0 && o == want.1),
            "missing {want:?} in {outcomes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_crl_and_sighup_closes_the_connection_and_removes_the_pe() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(10_000, 10_000);
    let pe_id = lab.identity("pe-echo-1");
    let mut pe = Asap::connect(&pe_id, registrar.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("echo", 9)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("PU handshake");

    // The operator revokes the PE's certificate with rsp-pki (which rewrites crl.pem),
    // brings the CRL over to the registrar's data directory and tells it to reload.
    lab.pki(&[
        "revoke",
        lab.path("pki/pe-echo-1.pem").to_str().expect("utf-8 path"),
    ]);
    lab.update_pki();
    let started = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &registrar.child.id().to_string()])
        .status();
    // Its connection closes (keep-alives aside, nothing else comes)...
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while pe.recv().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the revoked PE's connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // ...its PE is gone at once (no grace period for a revoked registrant)...
    pu.send(&resolution("echo")).await;
    assert_eq!(resolved(pu.recv_reply().await), Err(0x9));
    // ...and the certificate cannot handshake again.
    let refused = match Asap::connect(&pe_id, registrar.addr).await {
        Err(_) => true,
        Ok(mut again) => {
            again.send(&registration("echo", 9)).await;
            again.recv().await.is_none()
        }
    };
    assert!(refused, "a revoked certificate is refused");
}

/// The serial of the certificate the registrar presents to a new ASAP connection.
async fn presented_serial(store: &trust::TrustStore, addr: std::net::SocketAddr) -> String {
    let connector = tokio_rustls::TlsConnector::from(store.client_config(trust::Protocol::Asap));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    trust::Peer::from_tls(tls.get_ref().1)
        .expect("the registrar's identity")
        .serial()
        .to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_presents_a_renewed_certificate_and_keeps_live_connections() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar();
    let pu_id = lab.identity("pu-client-1");
    let pe_id = lab.identity("pe-echo-1");
    let old = presented_serial(&pu_id, registrar.addr).await;
    let mut pe = Asap::connect(&pe_id, registrar.addr)
        .await
        .expect("PE handshake");
    pe.send(&registration("echo", 9)).await;
    assert!(accepted(pe.recv_reply().await));

    // The operator renews the registrar's certificate and tells enrpd to reload.
    let out = lab.pki(&[
        "issue",
        "registrar",
        "enrp-1",
        "--renew",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("renewed spiffe://acme.test/registrar/enrp-1"),
        "{text}"
    );
    lab.update_pki();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &registrar.child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        let serial = presented_serial(&pu_id, registrar.addr).await;
        if serial != old {
            break serial;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still presenting {old}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let renewed = trust::Peer::from_certificate(
        &trust::certs_from_pem(&std::fs::read(lab.path("pki/registrar-enrp-1.pem")).expect("pem"))
            .expect("certificate")[0],
    )
    .expect("identity");
    assert_eq!(new, renewed.serial().to_hex());
    // The PE's connection, made with the old certificate, still works: the PE re-registers
    // over it and a PU resolves it.
    pe.send(&registration("echo", 9)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&pu_id, registrar.addr)
        .await
        .expect("PU handshake");
    pu.send(&resolution("echo")).await;
    assert!(resolved(pu.recv_reply().await).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_registrations_loses_no_acknowledged_record() {
    let lab = Lab::new();
    lab.init_registrar();
    // A storm on one connection, far above what a real PE sends: no rate limit.
    let mut registrar = lab.start_registrar_with_args(200, 200, &["--rate-registrations", "0"]);
    let pe_id = lab.identity("pe-echo-1");
    let mut pe = Asap::connect(&pe_id, registrar.addr)
        .await
        .expect("PE handshake");
    // 1,000 registrations, 32 in flight at a time; the registrar is killed (SIGKILL) in
    // the middle. Every registration whose response arrived must be in the audit log.
    let mut acked = Vec::new();
    let mut sent = 0u32;
    let mut killed = false;
    while acked.len() < 1000 {
        while sent < 1000 && sent - (acked.len() as u32) < 32 {
            sent += 1;
            if !pe.try_send(&registration("crash", sent)).await {
                break; // the registrar is gone
            }
        }
        match pe.recv_reply().await {
            Some(AsapMsg::RegistrationResponse {
                reject: false,
                pe_id,
                ..
            }) => {
                acked.push(pe_id.get());
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => break, // the registrar is gone
        }
        if acked.len() == 300 && !killed {
            registrar.child.kill().expect("SIGKILL");
            killed = true;
        }
    }
    assert!(
        killed && acked.len() >= 300 && acked.len() < 1000,
        "{}",
        acked.len()
    );
    let _ = registrar.child.wait();
    drop(registrar);

    let verify = lab.verify_audit();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "the chain survives SIGKILL: {text}"
    );
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    let mut logged = std::collections::HashSet::new();
    let mut filter = store::audit::AuditFilter::default();
    loop {
        let page = store::audit::query(&mut conn, &filter)
            .await
            .expect("query");
        for e in &page.events {
            if e.record.action == "register" && e.record.outcome.to_text() == "ok" {
                logged.extend(e.record.pe_id.map(PeId::get));
            }
        }
        match page.next {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    let missing: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|id| !logged.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not audited: {missing:?}"
    );
    // And a restarted registrar serves again on the same data.
    let again = lab.start_registrar();
    assert!(again.terminate().success());
}

fn hex(s: &str) -> Vec<u8> {
    ::hex::decode(s).expect("hex")
}

/// A response whose Pool Handle or PE ID is itself invalid, so that only its bytes can
/// say what it is: (message type, flags, first error cause, the echoed Pool Handle).
fn raw_rejection(frame: Option<Vec<u8>>) -> (u8, u8, u16, Vec<u8>) {
    let frame = frame.expect("an answer");
    let (mut at, mut cause, mut handle) = (4, None, Vec::new());
    while at + 4 <= frame.len() {
        let ty = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let len = usize::from(u16::from_be_bytes([frame[at + 2], frame[at + 3]]));
        match ty {
            0x0009 => handle = frame[at + 4..at + len].to_vec(),
            0x000c => cause = Some(u16::from_be_bytes([frame[at + 4], frame[at + 5]])),
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    (
        frame[0],
        frame[1],
        cause.expect("an Operation Error"),
        handle,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_registrations_get_the_spec_answer_on_a_live_connection() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(10_000, 10_000);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("handshake");
    // Spec §13.6's registration, taken apart: header, pool handle "EchoPool", PE param.
    let handle = "0009000c4563686f506f6f6c";
    let pe_param = |id: &str| {
        format!("000a0028{id}00000000000493e0000500101e610000000100087f0000010008000800000001")
    };
    // Spec §7.1 step 2, §7.9: a registration that fails validation is answered with a
    // REGISTRATION_RESPONSE, R flag set, cause 0x3 Invalid Values with the offending TLV,
    // echoing its Pool Handle and PE ID as sent (not an ASAP_ERROR).
    // PE ID 0 (spec §4.4).
    pe.send_raw(&hex(&format!("01000038{handle}{}", pe_param("00000000"))))
        .await;
    assert_eq!(
        raw_rejection(pe.recv_frame().await),
        (0x03, 0x01, 0x3, b"EchoPool".to_vec())
    );
    // A 33-byte pool handle (spec §3.5).
    let long = format!("00090025{}000000", "61".repeat(33));
    pe.send_raw(&hex(&format!("01000054{long}{}", pe_param("deadbeef"))))
        .await;
    assert_eq!(
        raw_rejection(pe.recv_frame().await),
        (0x03, 0x01, 0x3, vec![b'a'; 33])
    );
    // A deregistration of PE ID 0: its own response, cause 0x3.
    pe.send_raw(&hex(&format!("02000018{handle}000e000800000000")))
        .await;
    assert_eq!(
        raw_rejection(pe.recv_frame().await),
        (0x04, 0x00, 0x3, b"EchoPool".to_vec())
    );
    // An unknown parameter whose action bits say "stop and report" (0x4abc, spec §3.3):
    // Unrecognized Parameter, in the registration's response (which the PE library reads).
    pe.send_raw(&hex(&format!(
        "01000040{handle}{}4abc000801020304",
        pe_param("deadbeef")
    )))
    .await;
    assert_eq!(rejected_with(pe.recv_reply().await), Some(0x1));
    // "Stop, no report" (0x0abc): discarded silently; the connection serves on.
    pe.send_raw(&hex(&format!(
        "01000040{handle}{}0abc000801020304",
        pe_param("deadbeef")
    )))
    .await;
    pe.send(&registration("EchoPool", 1)).await;
    assert!(
        accepted(pe.recv_reply().await),
        "the next request is answered"
    );
    // A second policy type in the pool (spec §5.3): Inconsistent Pooling Policy.
    let mut random = registration("EchoPool", 2);
    if let AsapMsg::Registration { pool_element, .. } = &mut random {
        pool_element.policy = Policy::Random;
    }
    pe.send(&random).await;
    assert_eq!(rejected_with(pe.recv_reply().await), Some(0x5));
}

#[test]
fn enrpd_reads_a_config_file_and_refuses_a_bad_one() {
    let lab = Lab::new();
    lab.init_registrar();
    let bad = lab.path("bad.toml");
    std::fs::write(&bad, "asap_lisen = \"127.0.0.1:0\"\n").expect("write");
    let out = std::process::Command::new(crate::support::bin("enrpd"))
        .arg("run")
        .arg("--data")
        .arg(lab.path("data"))
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run enrpd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("asap_lisen"),
        "{err}"
    );

    // A good file: the registrar listens where it says, with no flag but --config.
    let good = lab.path("enrpd.toml");
    let data = lab.path("data");
    std::fs::write(
        &good,
        format!(
            "data = {:?}\nasap_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nenrp_listen = \"off\"\npeer_no_response_ms = 3000\ntakeover_expiry_ms = 10000\nallow_loopback = true\nlog_format = \"json\"\n",
            data.to_str().expect("utf-8 path")
        ),
    )
    .expect("write");
    let mut child = std::process::Command::new(crate::support::bin("enrpd"))
        .arg("run")
        .arg("--config")
        .arg(&good)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn enrpd");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("serving ASAP on 127.0.0.1:"), "{line}");
    // The file's listeners: the admin API on a free port, no ENRP (never the defaults,
    // which another registrar on this machine may hold).
    assert!(line.contains("admin API on https://127.0.0.1:"), "{line}");
    assert!(!line.contains("ENRP on"), "{line}");
}

/// Issue 24: durations in the file as humane strings; on SIGHUP enrpd names the keys of
/// its config file that changed (they apply at the next start) and reports a file that
/// no longer parses, serving on either way.
#[test]
fn on_sighup_enrpd_names_the_changed_config_keys_and_a_broken_file() {
    use std::io::BufRead as _;
    let lab = Lab::new();
    lab.init_registrar();
    let file = lab.path("enrpd.toml");
    let data = lab.path("data");
    let base = format!(
        "data = {:?}\nasap_listen = \"127.0.0.1:0\"\nadmin_listen = \"off\"\nenrp_listen = \"off\"\nkeep_alive_timeout_ms = \"2s\"\nmentor_timeout_ms = \"1500ms\"\n",
        data.to_str().expect("utf-8 path")
    );
    std::fs::write(&file, &base).expect("write");
    let mut child = std::process::Command::new(crate::support::bin("enrpd"))
        .args(["run", "--config"])
        .arg(&file)
        .env("ENRPD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn enrpd");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.contains("serving ASAP on 127.0.0.1:"), "{line}");
    let asap: std::net::SocketAddr = line
        .split_whitespace()
        .nth(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    // The log lines, as they come.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let hup = |child: &std::process::Child| {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status();
    };
    let wait_for = |what: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {what:?} within 30 s"),
            }
        }
    };

    std::fs::write(
        &file,
        format!("{base}rate_resolutions = 5\nmentor_timeout_ms = \"3s\"\n")
            .replace("mentor_timeout_ms = \"1500ms\"\n", ""),
    )
    .expect("write");
    hup(&child);
    let changed = wait_for("take effect at the next start");
    assert!(
        changed.contains("mentor_timeout_ms, rate_resolutions"),
        "{changed}"
    );

    std::fs::write(&file, format!("{base}rate_resolutions = \"lots\"\n")).expect("write");
    hup(&child);
    let broken = wait_for("the next start will fail");
    assert!(broken.contains("rate_resolutions"), "{broken}");
    // Still serving.
    std::net::TcpStream::connect(asap).expect("still listening");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn enrpd_creates_lists_and_revokes_admin_tokens_and_audits_each() {
    let lab = Lab::new();
    lab.init_registrar();
    let enrpd = |args: &[&str]| {
        let out = crate::support::run_ok(
            std::process::Command::new(crate::support::bin("enrpd"))
                .args(args)
                .arg("--data")
                .arg(lab.path("data")),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let created = enrpd(&[
        "token",
        "create",
        "--name",
        "ci robot",
        "--role",
        "auditor",
        "--expires-in-days",
        "7",
    ]);
    let secret = created
        .split_whitespace()
        .find(|w| w.starts_with("rsp_"))
        .unwrap_or_else(|| panic!("no secret in {created}"));
    let id = created.split_whitespace().nth(1).expect("token id");
    assert!(secret.contains(id), "{created}");
    let listed = enrpd(&["token", "list"]);
    assert!(listed.contains(id) && listed.contains("auditor") && listed.contains("ci robot"));
    assert!(!listed.contains(secret), "a listing never shows a secret");
    enrpd(&["token", "revoke", id]);
    let listed = enrpd(&["token", "list"]);
    let line = listed
        .lines()
        .find(|l| l.contains(id))
        .expect("still listed");
    assert!(line.contains("revoked"), "{line}");

    // A bad role or an unknown token: one clear line, nothing changes.
    let out = std::process::Command::new(crate::support::bin("enrpd"))
        .args(["token", "revoke", "0000000000000000", "--data"])
        .arg(lab.path("data"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    let out = std::process::Command::new(crate::support::bin("enrpd"))
        .args(["token", "create", "--name", "x", "--role", "root", "--data"])
        .arg(lab.path("data"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "clap refuses the role");
    assert_eq!(
        enrpd(&["token", "list"]).lines().count(),
        2,
        "initial + ci robot"
    );

    let verified = lab.verify_audit();
    assert!(verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stdout).contains("intact"));
}
