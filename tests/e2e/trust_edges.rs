//! Trust at the edges (issue 17): `rsp` authenticates its registrar by role, not merely by
//! trust domain (spec §11.1, threats T-6/T-7).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio_rustls::TlsAcceptor;
use trust::Protocol;

use crate::endpoints::{rsp, start_pe_lines as start_pe};
use crate::support::Lab;

/// A TLS server presenting `cert` of the lab's PKI where a registrar is expected; counts
/// the bytes of application data clients manage to send it.
async fn impostor(lab: &Lab, cert: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let store = lab.identity(cert);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = TlsAcceptor::from(store.server_config(Protocol::Asap));
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

const POSING: &str = "server identity spiffe://acme.test/pe/echo-1 does not match the expected registrar identity spiffe://<trusted domain>/registrar/*";

/// Spec §11.1, T-6/T-7: a PE certificate of the trust domain where `rsp` was told its
/// registrar is: `rsp resolve`, `rsp pu`, `rsp gateway` fail with one line naming the
/// identity presented, `rsp pe` says so at every attempt, and none of them sends the
/// impostor a single ASAP message (no resolution to forge, no registration to swallow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_certificate_posing_as_registrar_fails_every_rsp_command() {
    let lab = Lab::new();
    lab.pki(&["issue", "gateway", "gw-1"]);
    let (fake, received) = impostor(&lab, "pe-echo-1").await;

    let out = rsp(&lab, fake, "pu-client-1")
        .args(["resolve", "echo"])
        .output()
        .expect("rsp resolve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(POSING), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let (ok, err) = pu_once(&lab, fake, "pu-client-1");
    assert!(!ok);
    assert!(err.contains(POSING), "{err}");

    let out = rsp(&lab, fake, "gateway-gw-1")
        .args(["gateway", "--listen", "127.0.0.1:0", "--pool", "echo"])
        .output()
        .expect("rsp gateway");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(POSING), "{err}");

    let mut pe = rsp(&lab, fake, "pe-echo-2")
        .args(["pe", "--pool", "echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsp pe");
    let stderr = pe.stderr.take().expect("stderr");
    let first = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .next()
            .unwrap_or_default()
    });
    let line = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .expect("rsp pe reports in time")
        .expect("reader");
    let _ = pe.kill();
    let _ = pe.wait();
    assert!(line.contains(POSING), "{line}");
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "no ASAP byte reached it"
    );
}

/// `--registrar-id` pins the registrar: the genuine registrar passes when it matches, and
/// fails with its own identity named when it does not.
#[test]
fn registrar_id_pins_which_registrar_is_accepted() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar();
    let resolve = |pin: &str| {
        rsp(&lab, registrar.addr, "pu-client-1")
            .args(["resolve", "echo", "--registrar-id", pin])
            .output()
            .expect("rsp resolve")
    };
    // The pool is empty: the registrar answers 0x9 (after the handshake).
    let out = resolve("spiffe://acme.test/registrar/enrp-*");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("does not match"), "{err}");
    assert!(err.contains("cause 0x9"), "{err}");
    let out = resolve("spiffe://acme.test/registrar/enrp-2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "server identity spiffe://acme.test/registrar/enrp-1 does not match the expected registrar identity spiffe://acme.test/registrar/enrp-2"
        ),
        "{err}"
    );
}

/// `echo LINE | rsp pu POOL` as `cert`: its exit status and standard error.
fn pu_once(lab: &Lab, registrar: SocketAddr, cert: &str) -> (bool, String) {
    let mut pu = rsp(lab, registrar, cert)
        .args(["pu", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsp pu");
    pu.stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("a line");
    let out = pu.wait_with_output().expect("rsp pu ends");
    let ok = out.status.success() && String::from_utf8_lossy(&out.stdout) == "hello\n";
    (ok, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 17 item 2: `rsp pu` and `rsp pe` load the domain's CRL (crl.pem beside the CA by
/// default) and refuse a revoked peer, even while the registrar, not yet reloaded, still
/// vouches for it.
#[test]
fn revoked_pes_and_pus_are_refused_by_each_other() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let (pe, _) = start_pe(&lab, registrar.addr, "pe-echo-1", &["--pool", "echo"]);
    let (ok, err) = pu_once(&lab, registrar.addr, "pu-client-1");
    assert!(ok, "served before the revocation: {err}");

    // The PE is revoked; the registrar is not told (no SIGHUP), the PU's CRL says so.
    lab.pki(&[
        "revoke",
        lab.path("pki/pe-echo-1.pem").to_str().expect("path"),
    ]);
    let (ok, err) = pu_once(&lab, registrar.addr, "pu-client-1");
    assert!(!ok, "a revoked PE must not serve: {err}");
    assert!(err.contains("invalid peer certificate: Revoked"), "{err}");
    drop(pe);

    // The PU is revoked; a PE started now refuses it, and serves another PU.
    lab.pki(&["issue", "pu", "client-2"]);
    lab.pki(&[
        "revoke",
        lab.path("pki/pu-client-1.pem").to_str().expect("path"),
    ]);
    let (_pe, lines) = start_pe(&lab, registrar.addr, "pe-echo-2", &["--pool", "echo"]);
    // The revoked PE may still be in the registrar's answer until its keep-alive
    // timeout: the PU skips it (revoked) and reaches PE 2, which refuses it.
    let (ok, err) = pu_once(&lab, registrar.addr, "pu-client-1");
    // In TLS 1.3 the client may finish its side first and see the refusal (the
    // certificate_revoked alert) only as a broken connection: the PE's log is the proof.
    assert!(!ok, "a revoked PU must not be served: {err}");
    let refused = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the PE logs the refusal");
    assert!(refused.contains("TLS handshake with"), "{refused}");
    let (ok, err) = pu_once(&lab, registrar.addr, "pu-client-2");
    assert!(ok, "another PU is served: {err}");
}
