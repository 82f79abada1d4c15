//! A registrar on PostgreSQL over verified TLS (issue 19, docs/STORE.md "Connecting"): its
//! own cluster on 127.0.0.1 that accepts TLS only (`.ci/postgres start-tls`), with a server
//! certificate from the lab's CA; `enrpd init --store '…?sslmode=verify-full&sslrootcert=CA'`
//! and `enrpd run`, and a PE registers. Gated like the other PostgreSQL tests.

use std::process::Command;

use crate::admin::admin_token;
use crate::fleet::{OwnCluster, audited, init, spawn_logged};
use crate::registrar::{accepted, registration};
use crate::support::{Asap, Lab, bin, run_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_on_postgres_over_verified_tls_registers_a_pe() {
    if !OwnCluster::tests_run("store_tls::verified") {
        return;
    }
    let lab = Lab::new();
    // The server's certificate (serverAuth, 127.0.0.1) from the lab's CA.
    lab.pki(&[
        "issue",
        "registrar",
        "postgres",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let pg = OwnCluster::start_tls(
        &lab.path("pki/registrar-postgres.pem"),
        &lab.path("pki/registrar-postgres.key"),
        port,
    );
    let ca = lab.path("pki/ca.pem");

    // Without TLS the server itself refuses, and init leaves nothing behind.
    let plain = Command::new(bin("enrpd"))
        .arg("init")
        .arg("--pki")
        .arg(lab.path("pki"))
        .args(["--name", "enrp-1", "--store"])
        .arg(format!("{}?sslmode=disable", pg.url))
        .arg("--data")
        .arg(lab.path("data"))
        .output()
        .expect("enrpd init");
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && text.contains("no pg_hba.conf entry"),
        "{text}"
    );
    assert!(!lab.path("data").exists());

    // The roots (docs/STORE.md "Connecting", the trap): sqlx trusts the system's roots
    // beside `sslrootcert`, and `SSL_CERT_FILE` replaces the system's roots.
    run_ok(
        Command::new(bin("rsp-pki"))
            .arg("--dir")
            .arg(lab.path("other-pki"))
            .args(["init", "--trust-domain", "other.test"]),
    );
    let other = lab.path("other-pki/ca.pem");
    let migrate = |root: &std::path::Path, system: Option<&std::path::Path>| {
        let mut cmd = Command::new(bin("enrpd"));
        cmd.args(["migrate", "--store"]).arg(format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url,
            root.display()
        ));
        if let Some(system) = system {
            cmd.env("SSL_CERT_FILE", system);
        }
        let out = cmd.output().expect("enrpd migrate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text) = migrate(&other, None);
    assert!(!ok && text.contains("UnknownIssuer"), "{text}");
    let (ok, text) = migrate(&other, Some(&ca));
    assert!(ok, "a CA in SSL_CERT_FILE is trusted too: {text}");
    let (ok, text) = migrate(&ca, Some(&other));
    assert!(ok, "{text}");

    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        ca.display()
    );
    let token = admin_token(&init(&lab, "enrp-1", "data", &url, &[]));
    assert!(!token.is_empty());
    let (registrar, _, _log) = spawn_logged(&lab, "data", &["--allow-loopback"]);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    pe.send(&registration("echo", 1)).await;
    assert!(accepted(pe.recv_reply().await));
    drop(pe);
    assert!(registrar.terminate().success());
    // The acknowledged registration's record is in the store, read over TLS too.
    let registered: Vec<_> = audited(&url, "register")
        .await
        .into_iter()
        .filter(|r| r.outcome == store::audit::Outcome::Ok)
        .collect();
    assert_eq!(registered.len(), 1, "{registered:?}");
}
