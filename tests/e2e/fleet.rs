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

/// Three registrars' data directories on the store `url`: `enrp-1` in `data` creates the
/// fleet, `enrp-2` and `enrp-3` (certificates issued here) join it in `data-2` and
/// `data-3`. The first `init`'s standard output (with the admin token).
pub(crate) fn init_fleet(lab: &Lab, url: &str) -> String {
    let first = init(lab, "enrp-1", "data", url, &[]);
    for (name, data) in [("enrp-2", "data-2"), ("enrp-3", "data-3")] {
        lab.issue_registrar(name);
        init(lab, name, data, url, &["--join"]);
    }
    first
}

/// Every audit record of the store `url` whose action is `action`.
pub(crate) async fn audited(url: &str, action: &str) -> Vec<store::audit::Record> {
    audited_in_chains(url, action)
        .await
        .into_iter()
        .map(|e| e.record)
        .collect()
}

/// Every audit record of the store `url` whose action is `action`, with its chain.
pub(crate) async fn audited_in_chains(url: &str, action: &str) -> Vec<store::audit::ChainedRecord> {
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
        .filter(|e| e.record.action.as_ref() == action)
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

/// An admin write at `reg` while its store is down: refused with 503 (problem+json), not
/// a 500.
fn write_unavailable(lab: &Lab, reg: &crate::support::Registrar, token: &str) {
    let namespace = Some(r#"{"name":"during"}"#);
    let (status, body) = api(lab, reg, Some(token), "POST", "/v1/namespaces", namespace);
    assert_eq!(status, 503, "{}: {body}", reg.admin);
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
    write_unavailable(&lab, &registrar, &token);

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

/// A registrar's log lines ([`spawn_logged`]), kept once read so that they can be counted
/// at the end.
struct Log {
    rx: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Log {
    fn new(rx: std::sync::mpsc::Receiver<String>) -> Self {
        Self {
            rx,
            lines: Vec::new(),
        }
    }

    /// Whether a line containing `needle` was logged, waiting up to `within` for it.
    fn wait_for(&mut self, needle: &str, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.lines.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(_) => return false,
            }
        }
    }

    /// How many lines so far contain `needle`.
    fn count(&mut self, needle: &str) -> usize {
        self.lines.extend(self.rx.try_iter());
        self.lines.iter().filter(|l| l.contains(needle)).count()
    }
}

/// Issue 19's Proof for a fleet: three registrars on one PostgreSQL database, peered over
/// ENRP, PostgreSQL stopped for ~10 s. All along, each keeps resolving from memory and
/// refuses registrations with 0x6 (admin writes with 503); once PostgreSQL is back each
/// accepts registrations again, each re-listens to the change feed (a revocation made
/// through A closes the revoked PE's connections at B and C within 1 s, with the
/// periodic re-read an hour away), every acknowledged registration is in its registrar's
/// chain, the three chains verify, and each log says once that the store went down and
/// came back, and once that the change feed did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_with_postgres_stopped_resolves_refuses_registrations_then_resumes() {
    use std::time::{Duration, Instant};

    use crate::fleet_sync::{WITHIN, pe_ids, until};
    use crate::registrar::{accepted, registration, rejected_with, resolution, resolved};
    use crate::support::Asap;

    const NAMES: [&str; 3] = ["A", "B", "C"];
    let Some(pg) = OwnCluster::start("fleet::a_fleet_of_three_with_postgres_stopped") else {
        return;
    };
    let lab = Lab::new();
    let token = admin_token(&init_fleet(&lab, &pg.url));
    // Keep-alives of a minute (these PEs do not answer them); the control plane's periodic
    // re-read an hour apart, so that a change that reaches another registrar within 1 s
    // came through the change feed.
    let flags = [
        "--allow-loopback",
        "--keep-alive-interval-ms",
        "60000",
        "--keep-alive-timeout-ms",
        "60000",
        "--fleet-resync-secs",
        "3600",
    ];
    let (a, a_enrp, a_log) = spawn_logged(&lab, "data", &flags);
    let a_enrp = a_enrp.to_string();
    let (b, b_enrp, b_log) =
        spawn_logged(&lab, "data-2", &[&flags[..], &["--peer", &a_enrp]].concat());
    let b_enrp = b_enrp.to_string();
    let with_both = [&flags[..], &["--peer", &a_enrp, "--peer", &b_enrp]].concat();
    let (c, _, c_log) = spawn_logged(&lab, "data-3", &with_both);
    let fleet = [&a, &b, &c];
    let mut logs = [a_log, b_log, c_log].map(Log::new);

    // pe-echo-1 registers PE i+1 in pool `fleet` at registrar i; ENRP spreads them.
    let mut homes = Vec::new();
    for (r, id) in fleet.iter().zip(1..) {
        let mut pe = Asap::connect(&lab.identity("pe-echo-1"), r.addr)
            .await
            .expect("PE connects");
        pe.send(&registration("fleet", id)).await;
        assert!(accepted(pe.recv_reply().await));
        homes.push(pe);
    }
    for r in fleet {
        until("the PEs resolved everywhere", || async {
            pe_ids(&lab, r.addr, "fleet").await == [1, 2, 3]
        })
        .await;
        ready_says(&lab, r, r#""store":"up""#);
    }

    pg.server("pause");
    let down_at = Instant::now();
    for r in fleet {
        ready_says(&lab, r, r#""store":"down""#);
    }
    // At each: pe-echo-2's registration (PE 4, 5, 6 in pool `late`) refused with 0x6, an
    // admin write with 503.
    let mut late = Vec::new();
    for ((r, id), name) in fleet.iter().zip(4..).zip(NAMES) {
        let mut pe = Asap::connect(&lab.identity("pe-echo-2"), r.addr)
            .await
            .expect("PE connects");
        pe.send(&registration("late", id)).await;
        assert_eq!(rejected_with(pe.recv_reply().await), Some(0x6), "at {name}");
        late.push(pe);
        write_unavailable(&lab, r, &token);
    }
    // Resolutions at all three all along the outage, answered from memory (the PUs'
    // handshakes too).
    let mut pus = Vec::new();
    for r in fleet {
        let pu = Asap::connect(&lab.identity("pu-client-1"), r.addr).await;
        pus.push(pu.expect("a PU connects while the store is down"));
    }
    let mut answered = 0;
    while down_at.elapsed() < Duration::from_secs(10) {
        for (pu, name) in pus.iter_mut().zip(NAMES) {
            pu.send(&resolution("fleet")).await;
            let found = resolved(pu.recv_reply().await)
                .unwrap_or_else(|e| panic!("{name} refused a resolution ({e:#x})"));
            let ids: Vec<u32> = found.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, [1, 2, 3], "at {name}");
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{answered} resolutions answered during the outage");

    pg.server("resume");
    let back_at = Instant::now();
    for r in fleet {
        ready_says(&lab, r, r#""store":"up""#);
    }
    // Registrations accepted again at each (their audit records committed first).
    for ((pe, id), name) in late.iter_mut().zip(4..).zip(NAMES) {
        pe.send(&registration("late", id)).await;
        let reply = pe.recv_reply().await;
        assert!(accepted(reply.clone()), "at {name}: {reply:?}");
    }
    for r in fleet {
        until("the late PEs resolved everywhere", || async {
            pe_ids(&lab, r.addr, "late").await == [4, 5, 6]
        })
        .await;
    }
    // Each listens to the change feed again (LISTEN re-issued on a new connection).
    for (log, name) in logs.iter_mut().zip(NAMES) {
        let back = log.wait_for("change feed back", Duration::from_secs(10));
        assert!(back, "{name}'s change feed not back: {:#?}", log.lines);
    }
    eprintln!(
        "change feeds back by {:?} after PostgreSQL",
        back_at.elapsed()
    );

    // A change through A's API after the outage reaches B and C within 1 s: pe-echo-2
    // revoked, its connection closes at every registrar.
    let revocation = r#"{"kind": "spiffe_id", "spiffe_id": "spiffe://acme.test/pe/echo-2"}"#;
    let start = Instant::now();
    let (status, body) = api(
        &lab,
        &a,
        Some(&token),
        "POST",
        "/v1/revocations",
        Some(revocation),
    );
    assert_eq!(status, 201, "{body}");
    for (pe, name) in late.iter_mut().zip(NAMES) {
        while pe.recv().await.is_some() {}
        let took = start.elapsed();
        eprintln!("revoked at A after the outage -> connection closed at {name}: {took:?}");
        assert!(took < WITHIN, "{name}: {took:?}");
    }
    for r in fleet {
        until("the revoked PEs gone everywhere", || async {
            pe_ids(&lab, r.addr, "late").await.is_empty()
        })
        .await;
        assert_eq!(pe_ids(&lab, r.addr, "fleet").await, [1, 2, 3]);
    }

    drop((homes, late, pus));
    for r in [a, b, c] {
        assert!(r.terminate().success());
    }
    for (log, name) in logs.iter_mut().zip(NAMES) {
        for needle in [
            "STORE DOWN",
            "store back",
            "change feed down",
            "change feed back",
        ] {
            assert_eq!(
                log.count(needle),
                1,
                "{name}: {needle:?} in {:#?}",
                log.lines
            );
        }
    }
    // Nothing acknowledged is lost: each accepted registration is in the chain of the
    // registrar that accepted it.
    let registrar = |i: usize| format!("spiffe://acme.test/registrar/enrp-{}", i + 1);
    let stored: std::collections::BTreeSet<(String, u32)> = audited_in_chains(&pg.url, "register")
        .await
        .into_iter()
        .filter(|e| e.record.outcome == store::audit::Outcome::Ok)
        .filter_map(|e| Some((e.chain.to_string(), e.record.pe_id?.get())))
        .collect();
    let acknowledged: std::collections::BTreeSet<(String, u32)> = (0..3)
        .flat_map(|i| [(registrar(i), i as u32 + 1), (registrar(i), i as u32 + 4)])
        .collect();
    assert_eq!(stored, acknowledged);
    // `enrpd audit verify` from each data directory checks the three chains.
    for data in ["data", "data-2", "data-3"] {
        let out = run_ok(
            Command::new(bin("enrpd"))
                .args(["audit", "verify", "--data"])
                .arg(lab.path(data)),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for i in 0..3 {
            let id = registrar(i);
            assert!(
                text.lines().any(|l| l.starts_with("audit chain intact")
                    && l.ends_with(&format!("(registrar {id})"))),
                "{data}: {text}"
            );
        }
    }
}
