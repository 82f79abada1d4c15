//! TLS to PostgreSQL (issue 19, docs/STORE.md "Connecting"): a throwaway cluster of its own
//! (`.ci/postgres start-tls`) on 127.0.0.1 with a certificate from a test CA, which accepts
//! role `rsp` over TLS only. Runs where the other PostgreSQL tests run (`RSP_TEST_POSTGRES`
//! set; without it skipped, unless `RSP_REQUIRE_POSTGRES=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use sqlx::Connection;
use store::db::{self, Store, StoreOptions};

/// A CA (`ca.pem` and its key) in `dir`, named `name`.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca")
}

/// The cluster of this test; stopped and deleted on drop (also when the test panics).
struct TlsCluster {
    dir: String,
    url: String,
}

impl TlsCluster {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/postgres")
    }

    fn start(cert: &Path, key: &Path, client_ca: &Path) -> Self {
        // A free port: the kernel's pick, released for the server to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = Command::new("bash")
            .arg(Self::script())
            .arg("start-tls")
            .args([cert, key])
            .arg(port.to_string())
            .arg(client_ca)
            .output()
            .expect(".ci/postgres");
        assert!(
            out.status.success(),
            ".ci/postgres start-tls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let (Some(dir), Some(url)) = (lines.next(), lines.next()) else {
            panic!(".ci/postgres start-tls printed {text:?}");
        };
        Self {
            dir: dir.to_owned(),
            url: url.to_owned(),
        }
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .args(["stop", &self.dir])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connects_over_verified_tls_only() {
    if std::env::var("RSP_TEST_POSTGRES").is_err() {
        assert!(
            std::env::var("RSP_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "RSP_REQUIRE_POSTGRES=1 but RSP_TEST_POSTGRES is not set"
        );
        eprintln!("skipped: RSP_TEST_POSTGRES is not set (no PostgreSQL here)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let server_ca = ca("rsp test PostgreSQL CA");
    let other_ca = ca("rsp test other CA");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &server_ca).expect("server cert");
    let cert_path = write("server.crt", &cert.pem());
    let key_path = write("server.key", &key.serialize_pem());
    let ca_path = write("ca.pem", &server_ca.pem());
    let other_path = write("other-ca.pem", &other_ca.pem());

    // Client certificates for role `rsp_cert` (`cert` auth) come from their own CA.
    let client_ca = ca("rsp test PostgreSQL client CA");
    let client_key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params
        .distinguished_name
        .push(DnType::CommonName, "rsp_cert");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = params
        .signed_by(&client_key, &client_ca)
        .expect("client cert");
    let client_ca_path = write("client-ca.pem", &client_ca.pem());
    let client_cert_path = write("client.pem", &client.pem());
    let client_key_path = write("client.key", &client_key.serialize_pem());

    let pg = TlsCluster::start(&cert_path, &key_path, &client_ca_path);
    let options = StoreOptions::default();

    // verify-full with the server's CA: the store connects, migrates and answers, and
    // the session is encrypted (PostgreSQL's own view of it).
    let good = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        ca_path.display()
    );
    db::check_postgres_transport(&good).expect("policy");
    let store = Store::connect(&good, &options).await.expect("verify-full");
    store.ping().await.expect("ping");
    let mut conn = store.acquire().await.expect("acquire");
    db::list_trust_domains(&mut conn).await.expect("query");
    drop(conn);
    store.close().await;
    let mut raw = sqlx::PgConnection::connect(&good).await.expect("raw");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut raw)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the session is not encrypted");
    sqlx::query("CREATE ROLE rsp_cert LOGIN")
        .execute(&mut raw)
        .await
        .expect("role");
    raw.close().await.expect("close");

    // Client-certificate authentication (`sslcert`/`sslkey`, sqlx's rustls path): the
    // server accepts `rsp_cert` with its certificate, and refuses it without one.
    let as_cert = |extra: &str| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}{extra}",
            pg.url.replacen("rsp@", "rsp_cert@", 1),
            ca_path.display()
        )
    };
    let with_cert = as_cert(&format!(
        "&sslcert={}&sslkey={}",
        client_cert_path.display(),
        client_key_path.display()
    ));
    let mut conn = sqlx::PgConnection::connect(&with_cert)
        .await
        .expect("client certificate");
    let (user,): (String,) = sqlx::query_as("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .expect("current_user");
    assert_eq!(user, "rsp_cert");
    conn.close().await.expect("close");
    let err = sqlx::PgConnection::connect(&as_cert(""))
        .await
        .expect_err("no client certificate must be refused")
        .to_string();
    assert!(
        err.contains("connection requires a valid client certificate"),
        "{err}"
    );

    // Another CA: the server's certificate is not trusted and nothing is sent.
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        other_path.display()
    );
    let err = Store::connect(&wrong, &options)
        .await
        .expect_err("a certificate from an untrusted CA must be refused")
        .to_string();
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // No TLS: the server itself refuses (its only rule is `hostssl`).
    let plain = format!("{}?sslmode=disable", pg.url);
    let err = Store::connect(&plain, &options)
        .await
        .expect_err("a plaintext connection must be refused")
        .to_string();
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
}
