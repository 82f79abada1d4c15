//! Registrars on a PostgreSQL store (issue 19): `enrpd init --store postgres://…`, a
//! second registrar that joins the same database with `--join`, and everything that opens
//! the store (`run`, `audit verify`, `token`) using the recorded one. Needs a server in
//! `RSP_TEST_POSTGRES` (`bash .ci/postgres start`); each test gets a fresh, empty database.
//! Without it the tests print why and pass, unless `RSP_REQUIRE_POSTGRES=1`.

use std::process::Command;

use crate::admin::{admin_token, api};
use crate::endpoints::{resolve, start_pe_lines};
use crate::support::{Lab, bin, run_ok};

/// `enrpd init --store URL` into `data` with the registrar certificate `name`, plus
/// `extra` flags; its standard output.
pub(crate) fn init(lab: &Lab, name: &str, data: &str, url: &str, extra: &[&str]) -> String {
    let out = run_ok(
        Command::new(bin("enrpd"))
            .arg("init")
            .arg("--pki")
            .arg(lab.path("pki"))
            .args(["--name", name, "--store", url])
            .arg("--data")
            .arg(lab.path(data))
            .args(extra),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every audit record of the store `url` whose action is `action`.
pub(crate) async fn audited(url: &str, action: &str) -> Vec<store::audit::Record> {
    let store = store::db::Store::connect(url, &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    let mut filter = store::audit::AuditFilter::default();
    filter.limit = 1000;
    let rows = store::audit::query(&mut conn, &filter)
        .await
        .expect("query")
        .events
        .into_iter()
        .map(|e| e.record)
        .filter(|r| r.action.as_ref() == action)
        .collect();
    drop(conn);
    store.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_on_postgres_registers_resolves_audits_and_a_second_joins() {
    let Some(db) = store::db::test_db::empty_postgres("fleet::on_postgres").await else {
        return;
    };
    let lab = Lab::new();
    let first = init(&lab, "enrp-1", "data", &db.url, &[]);
    assert!(first.contains(&format!("store      {}", db.url)), "{first}");
    let token = admin_token(&first);
    assert!(!lab.path("data/rsp.db").exists(), "no SQLite file: {first}");
    // `enrpd run` finds the store in the data directory; a --store naming another one is
    // refused before anything starts.
    let other = format!("sqlite://{}", lab.path("other.db").display());
    let out = Command::new(bin("enrpd"))
        .arg("run")
        .arg("--data")
        .arg(lab.path("data"))
        .args(["--store", &other, "--asap-listen", "127.0.0.1:0"])
        .output()
        .expect("enrpd run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("was initialised with the store"),
        "{err}"
    );
    assert!(!lab.path("other.db").exists());

    let registrar = lab.start_registrar_with(1000, 2000);
    let (pe, _lines) = start_pe_lines(
        &lab,
        registrar.addr,
        "pe-echo-1",
        &["--pool", "echo", "--serve", "echo"],
    );
    assert_eq!(resolve(&lab, registrar.addr).len(), 1);

    // A second registrar joins the fleet's database: its own files, the fleet's grants
    // and tokens (no second admin token, no second trust domain).
    lab.issue_registrar("enrp-2");
    let second = init(&lab, "enrp-2", "data-2", &db.url, &["--join"]);
    assert!(
        second.contains("joined the fleet's store") && !second.contains("admin token ("),
        "{second}"
    );
    let joined = lab.start_peer("data-2", &[]);
    // The token registrar 1's init printed works at registrar 2.
    let (status, body) = api(
        &lab,
        &joined.registrar,
        Some(&token),
        "GET",
        "/v1/grants",
        None,
    );
    assert_eq!(status, 200, "{body}");
    // Both say that their control plane is shared (issue 19 item 5).
    for reg in [&registrar, &joined.registrar] {
        let (status, body) = api(&lab, reg, Some(&token), "GET", "/v1/peers", None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""control_plane":"shared""#), "{body}");
        let (_, metrics) = api(&lab, reg, Some(&token), "GET", "/metrics", None);
        assert!(
            metrics.contains("\nrsp_control_plane_shared 1\n"),
            "{metrics}"
        );
    }
    // Without --join, a third init would make a second trust domain: refused, saying how.
    let out = Command::new(bin("enrpd"))
        .arg("init")
        .arg("--pki")
        .arg(lab.path("pki"))
        .args(["--name", "enrp-2", "--store", &db.url])
        .arg("--data")
        .arg(lab.path("data-3"))
        .output()
        .expect("enrpd init");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--join"), "{err}");
    assert!(!lab.path("data-3").exists());

    drop(pe);
    assert!(joined.registrar.terminate().success());
    assert!(registrar.terminate().success());
    // The audit, in PostgreSQL, shows both; `enrpd audit verify` (which finds the store
    // in the data directory) checks the chain.
    assert!(!audited(&db.url, "register").await.is_empty());
    assert!(!audited(&db.url, "resolve").await.is_empty());
    let verify = lab.verify_audit();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && text.contains("audit chain intact"),
        "{text}"
    );
    // `enrpd token list` on the joined registrar's data directory lists the fleet's token.
    let out = run_ok(
        Command::new(bin("enrpd"))
            .args(["token", "list", "--data"])
            .arg(lab.path("data-2")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("initial admin"));
    // `enrpd migrate --data` finds the same store: nothing to do, the version printed.
    let out = run_ok(
        Command::new(bin("enrpd"))
            .args(["migrate", "--data"])
            .arg(lab.path("data")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema at version"));
}

/// `enrpd run --data DATA EXTRA…` on loopback ports with its log (warnings) on a channel:
/// the registrar, its ENRP address, the log lines.
pub(crate) fn spawn_logged(
    lab: &Lab,
    data: &str,
    extra: &[&str],
) -> (
    crate::support::Registrar,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(bin("enrpd"))
        .arg("run")
        .arg("--data")
        .arg(lab.path(data))
        .args([
            "--asap-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--enrp-listen", "127.0.0.1:0", "--mentor-timeout-ms", "200"])
        .args(extra)
        .env("ENRPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn enrpd");
    // Every line is read (a full pipe would stall enrpd).
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = crate::support::serving(&mut child);
    let [addr, admin, enrp] = serving.addrs[..] else {
        panic!("no addresses in {:?}", serving.line);
    };
    (crate::support::Registrar { child, addr, admin }, enrp, rx)
}

/// The first line of `log` that contains `needle`, waiting up to 10 s for each.
fn logged(log: &std::sync::mpsc::Receiver<String>, needle: &str) -> Option<String> {
    std::iter::from_fn(|| log.recv_timeout(std::time::Duration::from_secs(10)).ok())
        .find(|l| l.contains(needle))
}

/// Issue 19 item 5: registrars peered over ENRP, each on its own SQLite store, are no fleet.
/// A registrar with a configured peer says so at start-up, one without when its first
/// peer connects; both in `GET /v1/peers` and in `/metrics`.
#[test]
fn registrars_with_peers_and_sqlite_stores_say_their_control_plane_is_local() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    lab.init_peer("enrp-2", "data-2");
    let (a, a_enrp, a_log) = spawn_logged(&lab, "data", &[]);
    let (b, _, b_log) = spawn_logged(&lab, "data-2", &["--peer", &a_enrp.to_string()]);
    const WARNING: &str = "control plane is local (SQLite)";
    let at_start = logged(&b_log, WARNING).expect("B warns at start-up");
    assert!(at_start.contains("use --store postgres://"), "{at_start}");
    assert!(at_start.contains("enrp::running"), "{at_start}");
    let connected = logged(&a_log, WARNING).expect("A warns when B connects");
    assert!(connected.contains("enrp::daemon"), "{connected}");
    let (status, body) = api(&lab, &a, Some(&token), "GET", "/v1/peers", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""control_plane":"local""#), "{body}");
    let (_, metrics) = api(&lab, &a, Some(&token), "GET", "/metrics", None);
    assert!(
        metrics.contains("\nrsp_control_plane_shared 0\n"),
        "{metrics}"
    );
    assert!(b.terminate().success());
    assert!(a.terminate().success());
}

/// A PostgreSQL cluster of this test's own (`.ci/postgres start`), that it may stop and
/// start again; deleted when dropped.
pub(crate) struct OwnCluster {
    dir: String,
    pub(crate) url: String,
}

impl OwnCluster {
    /// Whether PostgreSQL tests run here (else printed, or a failure with
    /// `RSP_REQUIRE_POSTGRES=1`).
    pub(crate) fn tests_run(test: &str) -> bool {
        if std::env::var("RSP_TEST_POSTGRES").is_err() {
            assert!(
                std::env::var("RSP_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "{test}: RSP_REQUIRE_POSTGRES=1 but RSP_TEST_POSTGRES is not set"
            );
            eprintln!("skipped {test}: RSP_TEST_POSTGRES is not set (no PostgreSQL here)");
            return false;
        }
        true
    }

    /// A fresh cluster, or `None` (printed) where PostgreSQL tests do not run.
    fn start(test: &str) -> Option<Self> {
        Self::tests_run(test).then(|| Self::launch(&["start"]))
    }

    /// `.ci/postgres start-tls`: a fresh cluster on 127.0.0.1:`port` that accepts TLS
    /// only, with `cert` and `key` (PEM) as its certificate; `url` has no `sslmode` yet.
    pub(crate) fn start_tls(cert: &std::path::Path, key: &std::path::Path, port: u16) -> Self {
        let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
        Self::launch(&["start-tls", &cert, &key, &port.to_string()])
    }

    fn launch(args: &[&str]) -> Self {
        let out = run_ok(Command::new("bash").arg(Self::script()).args(args));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let (Some(dir), Some(url)) = (lines.next(), lines.next()) else {
            panic!(".ci/postgres {args:?} printed {text:?}");
        };
        Self {
            dir: dir.to_owned(),
            url: url.to_owned(),
        }
    }

    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/postgres")
    }

    /// `.ci/postgres pause|resume DIR`.
    fn server(&self, what: &str) {
        run_ok(
            Command::new("bash")
                .arg(Self::script())
                .args([what, &self.dir]),
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .args(["stop", &self.dir])
            .status();
    }
}

/// `/readyz` until its body contains `want` (10 s at most).
fn ready_says(lab: &Lab, reg: &crate::support::Registrar, want: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = api(lab, reg, None, "GET", "/readyz", None);
        if body.contains(want) {
            assert_eq!(status, 200, "ready for PUs also without its store: {body}");
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz: {body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Issue 19 item 4: PostgreSQL stopped for ~10 s. The registrar keeps resolving and
/// serving from memory, refuses registrations with 0x6, says so in `/readyz` and once in
/// its log; once PostgreSQL is back registrations succeed, the store says so once, and
/// the audit chain verifies with every acknowledged registration in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_resolutions_go_on_registrations_are_refused_then_resume() {
    use crate::registrar::{accepted, registration, rejected_with, resolution, resolved};
    use crate::support::Asap;

    let Some(pg) = OwnCluster::start("fleet::with_postgres_stopped") else {
        return;
    };
    let lab = Lab::new();
    let token = admin_token(&init(&lab, "enrp-1", "data", &pg.url, &[]));
    let long = [
        "--keep-alive-interval-ms",
        "60000",
        "--keep-alive-timeout-ms",
        "60000",
    ];
    let mut extra = vec!["--allow-loopback"];
    extra.extend(long);
    let (registrar, _, log) = spawn_logged(&lab, "data", &extra);
    let mut pe1 = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE 1");
    pe1.send(&registration("echo", 1)).await;
    assert!(accepted(pe1.recv_reply().await));
    ready_says(&lab, &registrar, r#""store":"up""#);

    pg.server("pause");
    let down_at = std::time::Instant::now();
    ready_says(&lab, &registrar, r#""store":"down""#);
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("PU");
    let mut pe2 = Asap::connect(&lab.identity("pe-echo-2"), registrar.addr)
        .await
        .expect("PE 2");
    pe2.send(&registration("echo", 2)).await;
    assert_eq!(rejected_with(pe2.recv_reply().await), Some(0x6));
    // Resolutions all along the outage, answered from memory.
    while down_at.elapsed() < std::time::Duration::from_secs(10) {
        pu.send(&resolution("echo")).await;
        let found = resolved(pu.recv_reply().await).expect("resolved while the store is down");
        assert_eq!(found.len(), 1, "{found:?}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // An admin write is refused with 503 (problem+json), not a 500.
    let (status, body) = api(
        &lab,
        &registrar,
        Some(&token),
        "POST",
        "/v1/namespaces",
        Some(r#"{"name":"during"}"#),
    );
    assert_eq!(status, 503, "{body}");

    pg.server("resume");
    ready_says(&lab, &registrar, r#""store":"up""#);
    pe2.send(&registration("echo", 2)).await;
    // Also the audit writer is back (a fresh connection: the old one died with the
    // server), or this registration would wait for a commit that never comes.
    let reply = pe2.recv_reply().await;
    assert!(
        accepted(reply.clone()),
        "{reply:?}\n{:#?}",
        log.try_iter().collect::<Vec<_>>()
    );
    pu.send(&resolution("echo")).await;
    assert_eq!(resolved(pu.recv_reply().await).expect("resolved").len(), 2);
    drop((pe1, pe2, pu));
    assert!(registrar.terminate().success());
    let lines: Vec<String> = log.try_iter().collect();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("STORE DOWN"), 1, "{lines:#?}");
    assert_eq!(count("store back"), 1, "{lines:#?}");
    // Nothing acknowledged is lost: both accepted registrations are in the chain.
    let registered: Vec<_> = audited(&pg.url, "register")
        .await
        .into_iter()
        .filter(|r| r.outcome == store::audit::Outcome::Ok)
        .collect();
    assert_eq!(registered.len(), 2, "{registered:?}");
    let verify = lab.verify_audit();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && text.contains("audit chain intact"),
        "{text}"
    );
}
