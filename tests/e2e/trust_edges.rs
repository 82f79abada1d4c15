//! Trust at the edges (issue 17): `rsp` authenticates its registrar by role, not merely by
//! trust domain (spec §11.1, threats T-6/T-7).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
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
/// registrar is: `rsp resolve` fails with one line naming the identity presented, `rsp pu`,
/// `rsp gateway` and `rsp pe` say so and keep looking for a registrar, and none of them
/// sends the impostor a single ASAP message (no resolution to forge, no registration to
/// swallow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_certificate_posing_as_registrar_gets_nothing_from_any_rsp_command() {
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

    // The long-running commands ride out a registrar they cannot accept (issue 25: a
    // reload of their CA or --registrar-id may fix it, and another registrar may answer),
    // saying why once; the impostor still gets no ASAP byte.
    let mut pu = rsp(&lab, fake, "pu-client-1");
    pu.args(["pu", "echo"]).stdin(Stdio::piped());
    let line = first_error_line(pu, Some(b"hello\n")).await;
    assert!(line.contains(POSING), "rsp pu: {line}");
    let mut gateway = rsp(&lab, fake, "gateway-gw-1");
    gateway.args(["gateway", "--listen", "127.0.0.1:0", "--pool", "echo"]);
    let line = first_error_line(gateway, None).await;
    assert!(line.contains(POSING), "rsp gateway: {line}");
    let mut pe = rsp(&lab, fake, "pe-echo-2");
    pe.args(["pe", "--pool", "echo"]);
    let line = first_error_line(pe, None).await;
    assert!(line.contains(POSING), "rsp pe: {line}");
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "no ASAP byte reached it"
    );
}

/// The first line a long-running `rsp` command writes to standard error (after `input` on
/// its standard input), within a minute; the command is killed then.
async fn first_error_line(mut cmd: Command, input: Option<&'static [u8]>) -> String {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rsp");
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("a line");
    }
    let stderr = child.stderr.take().expect("stderr");
    let first = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .next()
            .unwrap_or_default()
    });
    let line = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .expect("rsp reports in time")
        .expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    line
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

/// `echo hello | rsp pu echo` as `cert`: whether it answered, and its standard error.
fn pu_once(lab: &Lab, registrar: SocketAddr, cert: &str) -> (bool, String) {
    pu_exchange(rsp(lab, registrar, cert))
}

/// `rsp` as the identity `cert` (a path), with `ca`, towards `registrar`: for threads,
/// which cannot borrow the lab.
fn rsp_as(ca: &std::path::Path, cert: &std::path::Path, registrar: SocketAddr) -> Command {
    let mut c = Command::new(crate::support::bin("rsp"));
    c.env("RSP_CA", ca)
        .env("RSP_REGISTRAR", registrar.to_string())
        .env("RSP_CERT", cert);
    c
}

/// `echo hello | CMD pu echo`: whether it answered, and its standard error.
fn pu_exchange(mut cmd: Command) -> (bool, String) {
    let mut pu = cmd
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
    let ok = out.status.success() && out.stdout == b"hello\n";
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

/// `rsp pu echo` as pu-client-1, a long session: the child, its stdin and stdout.
fn pu_session(
    lab: &Lab,
    registrar: SocketAddr,
    stderr: Stdio,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let mut session = rsp(lab, registrar, "pu-client-1")
        .args(["pu", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("rsp pu");
    let to_pu = session.stdin.take().expect("stdin");
    let from_pu = BufReader::new(session.stdout.take().expect("stdout"));
    (session, to_pu, from_pu)
}

/// SIGHUP to `child`.
fn hup(child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
}

/// The serial of the certificate the PE listening on `port` presents to a new handshake.
async fn presented_serial(lab: &Lab, port: u16) -> identity::Serial {
    let pu = lab.identity("pu-client-1");
    let pe = identity::SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id");
    let config = pu
        .client_config_expecting(Protocol::Asap, identity::IdentityPattern::exact(&pe))
        .expect("config");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the PE");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake with the PE");
    trust::Peer::from_tls(tls.get_ref().1)
        .expect("peer")
        .serial()
        .clone()
}

fn serial_of(lab: &Lab, cert: &str) -> identity::Serial {
    let pem = std::fs::read(lab.path(&format!("pki/{cert}.pem"))).expect("certificate");
    let chain = trust::certs_from_pem(&pem).expect("PEM");
    trust::Peer::from_certificate(&chain[0])
        .expect("leaf")
        .serial()
        .clone()
}

/// Pool users using the pool until told to stop: one PU session that stays (a live TLS
/// session with its PE throughout) sending a request every `every`, a stream of new PU
/// processes (a handshake each), and a stream of resolutions.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    session: std::process::Child,
    sent: Arc<AtomicUsize>,
    writer: std::thread::JoinHandle<()>,
    reader: std::thread::JoinHandle<Vec<String>>,
    others: std::thread::JoinHandle<Vec<(bool, String)>>,
    resolutions: std::thread::JoinHandle<(usize, usize)>,
}

impl Load {
    fn start(lab: &Lab, registrar: SocketAddr, every: Duration) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (session, mut to_pu, from_pu) = pu_session(lab, registrar, Stdio::inherit());
        let sent = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    to_pu
                        .write_all(format!("request {n}\n").as_bytes())
                        .expect("the PU reads");
                    std::thread::sleep(every);
                }
                // Closing stdin ends the PU once it has answered everything.
            })
        };
        let reader = std::thread::spawn(move || {
            from_pu
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let as_pu = {
            let (ca, pki) = (lab.path("pki/ca.pem"), lab.path("pki/pu-client-1.pem"));
            move || rsp_as(&ca, &pki, registrar)
        };
        let others = {
            let (stop, as_pu) = (stop.clone(), as_pu.clone());
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    outcomes.push(pu_exchange(as_pu()));
                    std::thread::sleep(every);
                }
                outcomes
            })
        };
        let resolutions = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut count, mut gaps) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let out = as_pu()
                        .args(["resolve", "echo", "--json"])
                        .output()
                        .expect("rsp resolve");
                    count += 1;
                    if !out.status.success() || out.stdout.is_empty() {
                        gaps += 1;
                    }
                    std::thread::sleep(every.max(Duration::from_millis(50)));
                }
                (count, gaps)
            })
        };
        Self {
            stop,
            session,
            sent,
            writer,
            reader,
            others,
            resolutions,
        }
    }

    /// Stops, and asserts that every request was answered, in order, every new PU was
    /// served and every resolution found the PE.
    fn finish(mut self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        self.writer.join().expect("writer");
        let answers = self.reader.join().expect("reader");
        assert!(self.session.wait().expect("the PU ends").success());
        let sent = self.sent.load(Ordering::SeqCst);
        assert!(sent > 20, "{sent} requests");
        assert_eq!(answers.len(), sent, "every request answered");
        assert!(
            answers
                .iter()
                .enumerate()
                .all(|(n, a)| *a == format!("request {n}"))
        );
        let outcomes = self.others.join().expect("others");
        assert!(!outcomes.is_empty());
        for (ok, err) in &outcomes {
            assert!(ok, "a new PU failed: {err}");
        }
        let (count, gaps) = self.resolutions.join().expect("resolutions");
        assert!(count > 0);
        assert_eq!(
            gaps, 0,
            "the PE was missing from {gaps} of {count} resolutions"
        );
        eprintln!(
            "{what}: {sent} session requests, {} new PUs, {count} resolutions, none failed",
            outcomes.len()
        );
    }
}

/// Issue 17 item 3: a PE's certificate is renewed (`rsp-pki issue --renew` + SIGHUP) while
/// pool users keep using it: no request fails, the PE never leaves the registrar's
/// answers, new handshakes get the new certificate, and a bad file is refused with a log
/// line while the current certificate stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_certificate_renewed_under_load_with_sighup_fails_no_request() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let (pe, lines) = start_pe(&lab, registrar.addr, "pe-echo-1", &["--pool", "echo"]);
    let port = crate::endpoints::resolve_pool(&lab, registrar.addr, "echo", 4)[0].1;
    let old = serial_of(&lab, "pe-echo-1");
    assert_eq!(presented_serial(&lab, port).await, old);

    let load = Load::start(&lab, registrar.addr, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A bad certificate file first: refused, the old certificate stays.
    let cert = lab.path("pki/pe-echo-1.pem");
    let good = std::fs::read(&cert).expect("certificate");
    std::fs::write(&cert, "not a certificate\n").expect("write");
    hup(&pe.0);
    let refused = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("a log line");
    assert!(
        refused.starts_with("reload refused, the current credentials stay:"),
        "{refused}"
    );
    std::fs::write(&cert, &good).expect("restore");
    assert_eq!(presented_serial(&lab, port).await, old);

    // The renewal.
    lab.pki(&["issue", "pe", "echo-1", "--renew"]);
    let new = serial_of(&lab, "pe-echo-1");
    assert_ne!(new, old);
    hup(&pe.0);
    let reloaded = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line");
        // The file poll may have seen the restore and logged it first.
        if line.contains(&new.to_string()) {
            break line;
        }
    };
    assert!(reloaded.contains("(renewed)"), "{reloaded}");
    assert_eq!(presented_serial(&lab, port).await, new);
    tokio::time::sleep(Duration::from_secs(1)).await;

    load.finish("renewal under load");
}

/// Issue 17 item 2: a PE that reloads a CRL revoking a PU closes that PU's live session
/// at once (and refuses it from then on).
#[test]
fn a_pe_closes_the_live_session_of_a_pu_its_reloaded_crl_revokes() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let (pe, lines) = start_pe(&lab, registrar.addr, "pe-echo-1", &["--pool", "echo"]);
    let (session, mut to_pu, mut from_pu) = pu_session(&lab, registrar.addr, Stdio::piped());
    to_pu.write_all(b"before\n").expect("write");
    let mut answer = String::new();
    from_pu.read_line(&mut answer).expect("an answer");
    assert_eq!(answer, "before\n");

    lab.pki(&[
        "revoke",
        lab.path("pki/pu-client-1.pem").to_str().expect("path"),
    ]);
    hup(&pe.0);
    // The SIGHUP, or the file poll before it: either reload closes the session.
    let closed = (0..4)
        .filter_map(|_| lines.recv_timeout(Duration::from_secs(30)).ok())
        .find(|l| l.starts_with("closed the session with"))
        .expect("the PE closes the revoked PU's session");
    assert!(closed.ends_with("SerialRevoked"), "{closed}");
    // The PU's next request finds no PE that serves it.
    to_pu.write_all(b"after\n").expect("write");
    drop(to_pu);
    let out = session.wait_with_output().expect("the PU ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut from_pu, &mut rest).expect("read");
    assert!(!rest.contains("after"), "{rest}");
}

/// Issue 17 item 3: short-lived certificates in practice. A PE's certificates live one
/// minute and are renewed every 15 s (`rsp-pki issue --renew --minutes 1`, picked up by
/// the PE's file poll, no signal): when the certificate its registrar connection was
/// made with expires, the registrar closes that connection at its notAfter and the PE
/// re-registers over a new one with the renewed certificate, and through all of it no
/// PU request fails and the PE never leaves the registrar's answers. (About 75 s: the
/// first certificate must expire; renewing every few minutes for an hour is the same
/// cycle, slower; `RSP_ROTATION_SECS=3600` runs this one for an hour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pe_with_one_minute_certificates_renewed_every_15_s_stays_registered_and_serving() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let renew = || lab.pki(&["issue", "pe", "echo-1", "--renew", "--minutes", "1"]);
    renew();
    let first = serial_of(&lab, "pe-echo-1");
    let (_pe, lines) = start_pe(&lab, registrar.addr, "pe-echo-1", &["--pool", "echo"]);
    let load = Load::start(&lab, registrar.addr, Duration::from_millis(100));
    let started = std::time::Instant::now();
    let mut renewals = 0;
    let run_for = std::env::var("RSP_ROTATION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(72), Duration::from_secs);
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(15)).await;
        renew();
        renewals += 1;
    }
    load.finish("one-minute certificates");
    let log: Vec<String> = lines.try_iter().collect();
    let reloads = log
        .iter()
        .filter(|l| l.starts_with("reloaded credentials") && l.contains("(renewed)"))
        .count();
    assert!(
        reloads >= renewals - 1,
        "{reloads} reloads of {renewals}: {log:?}"
    );
    // The registrar closed the first certificate's connection at its notAfter; the PE
    // registered again over a new one.
    let lost = log
        .iter()
        .position(|l| l.starts_with("lost registrar"))
        .unwrap_or_else(|| panic!("the registrar closes at notAfter ({first}): {log:?}"));
    assert!(
        log[lost..].iter().any(|l| l.starts_with("registered with")),
        "{log:?}"
    );
}

/// Issue 17 item 6: a CRL does not expire silently. `enrpd` warns from a week before its
/// nextUpdate (`rsp-pki crl --days 1` re-signs it for one day here).
#[test]
fn enrpd_warns_of_a_crl_near_expiry() {
    let lab = Lab::new();
    lab.init_registrar();
    lab.pki(&["crl", "--days", "1"]);
    lab.update_pki();
    let mut enrpd = Killed(
        Command::new(crate::support::bin("enrpd"))
            .arg("run")
            .arg("--data")
            .arg(lab.path("data"))
            .args(["--asap-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "off", "--enrp-listen", "off"])
            .args(["--log-format", "json"])
            .env("ENRPD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enrpd"),
    );
    let stderr = BufReader::new(enrpd.0.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let warning = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(30)).ok())
        .find(|l| l.contains("the CRL expires soon"))
        .expect("enrpd warns of the CRL");
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(
        warning.contains("\"trust_domain\":\"acme.test\""),
        "{warning}"
    );
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 17 item 7: the first admin token can expire, so that the bootstrap credential
/// does not outlive its use.
#[test]
fn the_first_admin_token_can_expire() {
    let lab = Lab::new();
    let out = crate::support::run_ok(
        Command::new(crate::support::bin("enrpd"))
            .arg("init")
            .arg("--pki")
            .arg(lab.path("pki"))
            .arg("--data")
            .arg(lab.path("data"))
            .args(["--admin-token-expires-in-days", "2"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("it expires in 2 days"), "{text}");
    let out = crate::support::run_ok(
        Command::new(crate::support::bin("enrpd"))
            .args(["token", "list", "--data"])
            .arg(lab.path("data")),
    );
    let list = String::from_utf8_lossy(&out.stdout);
    let line = list
        .lines()
        .find(|l| l.ends_with("initial admin"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("  expires "), "{line}");
}

/// Issue 17 item 7: `enrpd init` copies what the registrar needs into its data directory,
/// so that it runs without the PKI directory (which holds the CA keys); `enrpd
/// update-pki` brings a new CRL over and refuses another registrar's certificate.
#[test]
fn the_registrar_runs_without_the_pki_directory() {
    let lab = Lab::new();
    lab.init_registrar();
    lab.pki(&["issue", "registrar", "enrp-2"]);
    let pki = lab.path("pki");
    let away = lab.path("pki-offline");
    std::fs::rename(&pki, &away).expect("move the PKI away");
    let registrar = lab.start_registrar();
    let out = Command::new(crate::support::bin("rsp"))
        .env("RSP_CA", away.join("ca.pem"))
        .env("RSP_REGISTRAR", registrar.addr.to_string())
        .env("RSP_CERT", away.join("pu-client-1.pem"))
        .args(["resolve", "echo"])
        .output()
        .expect("rsp resolve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cause 0x9"), "the registrar serves: {err}");
    drop(registrar);
    std::fs::rename(&away, &pki).expect("the PKI back");
    // Another registrar's certificate is refused and changes nothing.
    let out = Command::new(crate::support::bin("enrpd"))
        .args(["update-pki", "--name", "enrp-2", "--pki"])
        .arg(&pki)
        .arg("--data")
        .arg(lab.path("data"))
        .output()
        .expect("enrpd update-pki");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is the certificate of spiffe://acme.test/registrar/enrp-2; this registrar is spiffe://acme.test/registrar/enrp-1"),
        "{err}"
    );
    let before = std::fs::read(lab.path("data/crl.pem")).expect("the CRL copy");
    lab.pki(&["revoke", pki.join("pe-echo-1.pem").to_str().expect("path")]);
    assert_eq!(
        std::fs::read(lab.path("data/crl.pem")).expect("copy"),
        before
    );
    let out = lab.update_pki();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SIGHUP"));
    assert_eq!(
        std::fs::read(lab.path("data/crl.pem")).expect("copy"),
        std::fs::read(pki.join("crl.pem")).expect("CRL")
    );
}
