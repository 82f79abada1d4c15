//! `rsp-pki` end to end: the real binary in a temporary directory, then real handshakes
//! with the files it wrote.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use identity::TrustDomain;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trust::{DomainBundle, LocalIdentity, Peer, Protocol, TrustStore};

fn rsp_pki(dir: &Path, args: &[&str]) -> Output {
    rsp_pki_env(dir, args, None)
}

fn rsp_pki_env(dir: &Path, args: &[&str], passphrase: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rsp-pki"));
    command
        .env_remove("RSP_PKI_PASSPHRASE")
        .env_remove("RSP_PKI_DIR");
    if let Some(passphrase) = passphrase {
        command.env("RSP_PKI_PASSPHRASE", passphrase);
    }
    command
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run rsp-pki")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = rsp_pki(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs a failing command: its exit code and its single stderr line.
fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = rsp_pki(dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    (out.status.code().expect("exit code"), stderr)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

fn identity(dir: &Path, stem: &str) -> LocalIdentity {
    LocalIdentity::from_pem(
        &read(&dir.join(format!("{stem}.pem"))),
        &read(&dir.join(format!("{stem}.key"))),
    )
    .expect("identity from rsp-pki files")
}

fn store(dir: &Path, stem: &str, with_crl: bool) -> Arc<TrustStore> {
    let store = TrustStore::new(identity(dir, stem)).expect("store");
    let domain = TrustDomain::new("acme.test").expect("domain");
    let mut bundle = DomainBundle::from_pem(domain, &read(&dir.join("ca.pem"))).expect("bundle");
    if with_crl {
        bundle = bundle.with_crls(trust::crls_from_pem(&read(&dir.join("crl.pem"))).expect("crl"));
    }
    store.add_domain(bundle).expect("add");
    Arc::new(store)
}

/// One handshake: a server with `server`'s config, a client with `client`'s. Returns the
/// server's view.
async fn handshake(server: &TrustStore, client: &TrustStore) -> Result<Peer, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(server.server_config(Protocol::Asap));
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = Peer::from_tls(tls.get_ref().1).map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let connector = TlsConnector::from(client.client_config(Protocol::Asap));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    if let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
    {
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
    }
    accept.await.expect("server task")
}

#[tokio::test]
async fn init_issue_inspect_revoke_crl_then_the_revoked_certificate_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");

    // Mistakes before there is a PKI.
    let (code, err) = fails(&dir, &["issue", "pe", "echo-1"]);
    assert_eq!(code, 1);
    assert!(err.contains("no PKI in"), "{err}");

    let out = ok(&dir, &["init", "--trust-domain", "acme.test"]);
    assert!(
        out.contains("created a PKI for trust domain acme.test"),
        "{out}"
    );
    let (code, err) = fails(&dir, &["init", "--trust-domain", "acme.test"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    ok(
        &dir,
        &[
            "issue",
            "registrar",
            "enrp-1",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ],
    );
    for (role, name) in [
        ("pe", "echo-1"),
        ("pu", "client-1"),
        ("gateway", "gw-1"),
        ("admin", "ops"),
    ] {
        let out = ok(&dir, &["issue", role, name]);
        assert!(
            out.contains(&format!("spiffe://acme.test/{role}/{name}")),
            "{out}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "pe-echo-1.key", "registrar-enrp-1.key"] {
            let mode = std::fs::metadata(dir.join(key))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    // Mistakes with a PKI.
    let (code, err) = fails(&dir, &["issue", "pe", "echo-1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists; refusing to overwrite"),
        "{err}"
    );
    let (code, _) = fails(&dir, &["issue", "wizard", "x"]);
    assert_eq!(code, 2);
    let (code, err) = fails(&dir, &["issue", "pe", "a/b"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid name"), "{err}");
    let (code, err) = fails(&dir, &["revoke", "abcdef"]);
    assert_eq!(code, 1);
    assert!(err.contains("no certificate with serial abcdef"), "{err}");

    let inspect = ok(
        &dir,
        &[
            "inspect",
            dir.join("pe-echo-1.pem").to_str().expect("utf-8"),
        ],
    );
    assert!(
        inspect.contains("identity:   spiffe://acme.test/pe/echo-1"),
        "{inspect}"
    );
    assert!(inspect.contains("status:     valid"), "{inspect}");
    assert!(
        inspect.contains("eku:        server-auth, client-auth"),
        "{inspect}"
    );
    let inspect_pu = ok(
        &dir,
        &[
            "inspect",
            dir.join("pu-client-1.pem").to_str().expect("utf-8"),
        ],
    );
    assert!(
        inspect_pu.contains("eku:        client-auth\n"),
        "{inspect_pu}"
    );

    // Before revocation, both the PE and the PU get in with the CRL configured.
    let registrar = store(&dir, "registrar-enrp-1", true);
    let pe = store(&dir, "pe-echo-1", false);
    let pu = store(&dir, "pu-client-1", false);
    let peer = handshake(&registrar, &pe).await.expect("pe accepted");
    assert_eq!(peer.id().as_str(), "spiffe://acme.test/pe/echo-1");

    let revoked = ok(
        &dir,
        &[
            "revoke",
            dir.join("pe-echo-1.pem").to_str().expect("utf-8"),
            "--reason",
            "key-compromise",
        ],
    );
    assert!(
        revoked.contains("revoked spiffe://acme.test/pe/echo-1"),
        "{revoked}"
    );
    let (code, err) = fails(
        &dir,
        &["revoke", dir.join("pe-echo-1.pem").to_str().expect("utf-8")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("already revoked"), "{err}");
    ok(&dir, &["crl"]);
    let list = ok(&dir, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("revoked") && l.contains("spiffe://acme.test/pe/echo-1")),
        "{list}"
    );
    assert!(
        ok(
            &dir,
            &[
                "inspect",
                dir.join("pe-echo-1.pem").to_str().expect("utf-8")
            ]
        )
        .contains("status:     revoked")
    );

    // A registrar loading the new CRL refuses the revoked PE, and still accepts the PU.
    let registrar = store(&dir, "registrar-enrp-1", true);
    let err = handshake(&registrar, &pe)
        .await
        .expect_err("revoked pe refused");
    assert!(err.contains("Revoked"), "{err}");
    let peer = handshake(&registrar, &pu).await.expect("pu accepted");
    assert_eq!(peer.id().as_str(), "spiffe://acme.test/pu/client-1");
}

#[tokio::test]
async fn intermediate_pki_with_ed25519_and_crl_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    ok(
        &dir,
        &[
            "init",
            "--trust-domain",
            "acme.test",
            "--key-type",
            "ed25519",
            "--intermediate",
        ],
    );
    ok(&dir, &["issue", "registrar", "r1"]);
    ok(&dir, &["issue", "pe", "p1"]);
    ok(&dir, &["issue", "pu", "u1"]);
    let registrar = store(&dir, "registrar-r1", true);
    let pe = store(&dir, "pe-p1", false);
    handshake(&registrar, &pe)
        .await
        .expect("accepted through the intermediate");
    let serial = {
        let inspect = ok(
            &dir,
            &["inspect", dir.join("pe-p1.pem").to_str().expect("utf-8")],
        );
        inspect
            .lines()
            .find_map(|l| l.strip_prefix("serial:"))
            .expect("serial line")
            .trim()
            .to_owned()
    };
    ok(&dir, &["revoke", &serial]);
    let registrar = store(&dir, "registrar-r1", true);
    let err = handshake(&registrar, &pe).await.expect_err("refused");
    assert!(err.contains("Revoked"), "{err}");
    let pu = store(&dir, "pu-u1", false);
    handshake(&registrar, &pu).await.expect("pu accepted");
}

#[tokio::test]
async fn bundles_federate_two_domains() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    ok(&a, &["init", "--trust-domain", "a.test"]);
    ok(&b, &["init", "--trust-domain", "b.test"]);
    let exported = tmp.path().join("b.bundle");
    ok(
        &b,
        &[
            "bundle",
            "export",
            "--out",
            exported.to_str().expect("utf-8"),
        ],
    );
    let out = ok(&a, &["bundle", "import", exported.to_str().expect("utf-8")]);
    assert!(out.contains("imported trust bundle of b.test"), "{out}");
    assert!(a.join("federated/b.test.pem").exists());
    let (code, err) = fails(&a, &["bundle", "import", exported.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    // Its own bundle is refused.
    let own = tmp.path().join("a.bundle");
    ok(
        &a,
        &["bundle", "export", "--out", own.to_str().expect("utf-8")],
    );
    let (_, err) = fails(&a, &["bundle", "import", own.to_str().expect("utf-8")]);
    assert!(err.contains("own trust domain"), "{err}");
}

#[test]
fn encrypted_ca_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let out = rsp_pki_env(
        &dir,
        &["init", "--trust-domain", "acme.test", "--intermediate"],
        Some("s3cret"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in ["ca.key", "intermediate.key"] {
        let text = std::fs::read_to_string(dir.join(key)).expect("key");
        // The standard PKCS#8 EncryptedPrivateKeyInfo (issue 17), which openssl reads.
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key}"
        );
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{key}");
    }
    let (code, err) = fails(&dir, &["issue", "pe", "p1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("intermediate.key is encrypted: set RSP_PKI_PASSPHRASE"),
        "{err}"
    );
    let out = rsp_pki_env(&dir, &["issue", "pe", "p1"], Some("wrong"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    let pass_file = tmp.path().join("pass");
    std::fs::write(&pass_file, "s3cret\n").expect("write");
    let pass_arg = pass_file.to_str().expect("utf-8");
    ok(&dir, &["--passphrase-file", pass_arg, "issue", "pe", "p1"]);
    ok(
        &dir,
        &[
            "--passphrase-file",
            pass_arg,
            "revoke",
            dir.join("pe-p1.pem").to_str().expect("utf-8"),
        ],
    );
    // Nothing was half-written by the failed attempts.
    let list = ok(&dir, &["list"]);
    assert_eq!(
        list.lines().filter(|l| l.contains("spiffe://")).count(),
        1,
        "{list}"
    );
}
