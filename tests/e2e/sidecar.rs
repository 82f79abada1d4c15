//! `rsp pe --forward` (issue 21): an existing server that does not speak RSerPool put in a
//! pool by a sidecar PE, with health checks and PU authorization at the PE.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::endpoints::{Pe, rsp};
use crate::restart::{lines, wait_line};
use crate::support::Lab;

/// A minimal HTTP/1.1 server on loopback that answers every request with 200 and its
/// name as the body, until stopped; started again on the same port.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(name: &'static str, at: SocketAddr) -> Self {
        // std's listener sets SO_REUSEADDR: the port can be taken again after a stop.
        let listener = TcpListener::bind(at).expect("bind the backend");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            }
        });
        Self {
            name,
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes the port.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /` through the gateway at `gw`: the body, or why there is none.
fn get(gw: SocketAddr) -> Result<String, String> {
    let mut tcp = TcpStream::connect(gw).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("no answer: {answer:?}")),
    }
}

/// `rsp gateway` for `pool` as `cert` (killed on drop), and its address.
pub(crate) fn gateway(
    lab: &Lab,
    registrar: SocketAddr,
    cert: &str,
    pool: &str,
) -> (Pe, SocketAddr) {
    let mut gw = rsp(lab, registrar, cert)
        .args(["gateway", "--listen", "127.0.0.1:0", "--pool", pool])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rsp gateway");
    let mut line = String::new();
    BufReader::new(gw.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the gateway reports its address");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (Pe(gw), addr)
}

/// The PE IDs the registrar returns for `web`, sorted.
pub(crate) fn pool(lab: &Lab, registrar: SocketAddr) -> Vec<String> {
    let out = rsp(lab, registrar, "pu-client-1")
        .args(["resolve", "web", "--json"])
        .output()
        .expect("rsp resolve");
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("\"pe_id\":")
                .nth(1)?
                .split(',')
                .next()
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

/// Polls `f` every 100 ms until it holds or `within` passes; how long it took.
pub(crate) fn until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;
const RISE: u64 = 2;

#[test]
fn two_http_servers_behind_sidecar_pes_fail_over_come_back_and_refuse_unallowed_pus() {
    let lab = Lab::new();
    lab.pki(&["issue", "gateway", "gw-1"]);
    lab.pki(&["issue", "gateway", "gw-2"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut a = Backend::start("backend-A", any);
    let _b = Backend::start("backend-B", any);
    let sidecar = |cert: &str, backend: &Backend| -> (Pe, mpsc::Receiver<String>) {
        let mut child = rsp(&lab, registrar.addr, cert)
            .args([
                "pe",
                "--pool",
                "web",
                "--forward",
                &backend.addr.to_string(),
            ])
            .args(["--check", "http:/healthz"])
            .args(["--check-interval", &format!("{INTERVAL_MS}ms")])
            .args(["--check-timeout", "1s"])
            .args(["--rise", &RISE.to_string(), "--fall", &FALL.to_string()])
            .args(["--allow-pu", "spiffe://acme.test/gateway/gw-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rsp pe --forward");
        let rx = lines(child.stderr.take().expect("stderr"), backend.name.into());
        (Pe(child), rx)
    };
    let (_pe_a, lines_a) = sidecar("pe-echo-1", &a);
    let (_pe_b, lines_b) = sidecar("pe-echo-2", &_b);
    for rx in [&lines_a, &lines_b] {
        wait_line(rx, Duration::from_secs(20), |l| {
            l.starts_with("registered with")
        })
        .unwrap_or_else(|seen| panic!("a sidecar never registered: {seen:?}"));
    }
    let both = pool(&lab, registrar.addr);
    assert_eq!(both.len(), 2, "{both:?}");

    // A plain HTTP client reaches both servers through the gateway and the pool.
    let (_gw, gw) = gateway(&lab, registrar.addr, "gateway-gw-1", "web");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(get(gw).expect("an answer through the pool"));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["backend-A", "backend-B"],
        "round robin reaches both servers"
    );

    // Server A stops: its PE leaves the pool within interval × fall (+ slack for a
    // loaded machine), and every client is then answered by B.
    a.stop();
    let slack = Duration::from_secs(5);
    let out = until(Duration::from_millis(INTERVAL_MS * FALL) + slack, || {
        pool(&lab, registrar.addr).len() == 1
    })
    .unwrap_or_else(|| panic!("PE A still in the pool: {:?}", pool(&lab, registrar.addr)));
    eprintln!("PE A left the pool {out:?} after its server stopped");
    wait_line(&lines_a, Duration::from_secs(5), |l| {
        l.starts_with("left pool web")
    })
    .unwrap_or_else(|seen| panic!("no line saying PE A left: {seen:?}"));
    for i in 0..10 {
        assert_eq!(get(gw).as_deref(), Ok("backend-B"), "request {i}");
    }

    // Server A is back: its PE registers again with the same PE ID.
    let _a = Backend::start("backend-A", a.addr);
    until(Duration::from_millis(INTERVAL_MS * RISE) + slack, || {
        pool(&lab, registrar.addr) == both
    })
    .unwrap_or_else(|| panic!("PE A not back: {:?}", pool(&lab, registrar.addr)));
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        until(Duration::from_secs(15), || {
            seen.insert(get(gw).unwrap_or_default());
            seen.contains("backend-A")
        })
        .is_some(),
        "server A answers again: {seen:?}"
    );

    // A gateway whose identity is valid but outside --allow-pu: every session refused,
    // and each PE logs the identity it refused.
    let (_gw2, gw2) = gateway(&lab, registrar.addr, "gateway-gw-2", "web");
    for _ in 0..4 {
        let refused = get(gw2);
        assert!(refused.is_err(), "{refused:?}");
    }
    let refusal = |l: &str| {
        l.starts_with("refused PU from ")
            && l.contains("spiffe://acme.test/gateway/gw-2 may not use this pool")
    };
    let by_a = wait_line(&lines_a, Duration::from_secs(5), refusal).is_ok();
    let by_b = wait_line(&lines_b, Duration::from_secs(5), refusal).is_ok();
    assert!(by_a || by_b, "no PE logged the refused identity");
    // The allowed one still gets through.
    assert!(get(gw).is_ok());
}

#[test]
fn bad_sidecar_options_are_one_line_and_nothing_runs() {
    let lab = Lab::new();
    let nowhere: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    for (args, code, says) in [
        (&["--check", "tcp"][..], 1, "--check needs --forward"),
        (&["--forward", "nowhere"][..], 2, "--forward: "),
        (
            &["--forward", "127.0.0.1:8080", "--check", "ping"][..],
            2,
            "--check: ",
        ),
        (
            &["--forward", "127.0.0.1:8080", "--allow-pu", "pu/*"][..],
            2,
            "--allow-pu: ",
        ),
        (
            &[
                "--forward",
                "127.0.0.1:8080",
                "--check",
                "tcp",
                "--check-interval",
                "0",
            ][..],
            1,
            "--check-interval and --check-timeout must be longer than 0",
        ),
        (
            &[
                "--advertise",
                "127.0.0.1:8443",
                "--forward",
                "127.0.0.1:8080",
            ][..],
            1,
            "--advertise registers a server that terminates TLS itself",
        ),
        (&["--advertise", "nowhere"][..], 2, "--advertise: "),
        (
            &["--session-channel"][..],
            1,
            "--session-channel needs --forward",
        ),
        (
            &["--forward", "127.0.0.1:8080", "--session-channel"][..],
            1,
            "--session-channel needs --cookie-key FILE",
        ),
        (
            &[
                "--forward",
                "127.0.0.1:8080",
                "--session-channel",
                "--cookie-key",
                "/nonexistent/pool.key",
            ][..],
            1,
            "the cookie key /nonexistent/pool.key",
        ),
        (
            &["--serving-identity", "spiffe://acme.test/pe/echo-1"][..],
            1,
            "--serving-identity needs --advertise",
        ),
        (
            &[
                "--advertise",
                "127.0.0.1:8443",
                "--serving-identity",
                "pe/echo-1",
            ][..],
            1,
            "--serving-identity: ",
        ),
    ] {
        let out = rsp(&lab, nowhere, "pe-echo-1")
            .args(["pe", "--pool", "web"])
            .args(args)
            .output()
            .expect("rsp pe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(says),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// A line echo server on loopback (a thread per connection), for the life of the test.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut out = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    if writeln!(out, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A registrar, a forwarding PE of pool `web` to a line echo server with this
/// `--drain-timeout`, and a gateway to the pool.
pub(crate) struct Draining {
    pub(crate) lab: Lab,
    pub(crate) registrar: crate::support::Registrar,
    pub(crate) pe: Pe,
    pub(crate) lines: mpsc::Receiver<String>,
    _gw: Pe,
    pub(crate) gw: SocketAddr,
    /// The registrar's admin token (`enrpd init`).
    pub(crate) token: String,
}

impl Draining {
    fn start(drain_timeout: &str) -> Self {
        Self::start_with(&["--drain-timeout", drain_timeout])
    }

    /// [`Draining::start`] with these options of `rsp pe`.
    pub(crate) fn start_with(options: &[&str]) -> Self {
        let lab = Lab::new();
        lab.pki(&["issue", "gateway", "gw-1"]);
        let token = crate::admin::admin_token(&lab.init_registrar());
        let registrar = lab.start_registrar_with(300, 1000);
        let backend = echo_server();
        let mut child = rsp(&lab, registrar.addr, "pe-echo-1")
            .args(["pe", "--pool", "web", "--forward", &backend.to_string()])
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rsp pe --forward");
        let lines = lines(child.stderr.take().expect("stderr"), "pe".into());
        let pe = Pe(child);
        wait_line(&lines, Duration::from_secs(20), |l| {
            l.starts_with("registered with")
        })
        .unwrap_or_else(|seen| panic!("never registered: {seen:?}"));
        let (_gw, gw) = gateway(&lab, registrar.addr, "gateway-gw-1", "web");
        Self {
            lab,
            registrar,
            pe,
            lines,
            _gw,
            gw,
            token,
        }
    }

    /// A client session through the gateway, checked with one line.
    pub(crate) fn session(&self) -> (TcpStream, BufReader<TcpStream>) {
        let mut open = TcpStream::connect(self.gw).expect("connect");
        open.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answers = BufReader::new(open.try_clone().expect("clone"));
        assert_eq!(exchange(&mut open, &mut answers, "one"), "one\n");
        (open, answers)
    }

    /// SIGUSR1 to the PE; waits for its line saying it deregistered with `open` sessions.
    fn drain(&self, open: usize) {
        self.signal("-USR1", "draining", open);
    }

    /// `sig` to the PE; waits for its line saying it is `doing` (draining, stopping) and
    /// deregistered with `open` sessions.
    fn signal(&self, sig: &str, doing: &str, open: usize) {
        self.signal_only(sig);
        let want = format!("{doing}: deregistered from pool web; {open} open sessions");
        wait_line(&self.lines, Duration::from_secs(10), |l| {
            l.starts_with(&want)
        })
        .unwrap_or_else(|seen| panic!("no drain line: {seen:?}"));
    }

    /// `sig` to the PE, nothing awaited.
    fn signal_only(&self, sig: &str) {
        let pid = self.pe.0.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("kill")
                .success()
        );
    }

    /// Waits up to 10 s for the PE's line `want`.
    pub(crate) fn says(&self, want: &str) {
        wait_line(&self.lines, Duration::from_secs(10), |l| l == want)
            .unwrap_or_else(|seen| panic!("no {want:?}: {seen:?}"));
    }

    /// Whether the PE exits within 10 s.
    pub(crate) fn exits(&mut self) -> bool {
        until(Duration::from_secs(10), || {
            self.pe.0.try_wait().expect("wait").is_some()
        })
        .is_some()
    }
}

/// One line out, one line back.
pub(crate) fn exchange(
    out: &mut TcpStream,
    answers: &mut BufReader<TcpStream>,
    text: &str,
) -> String {
    writeln!(out, "{text}").expect("write");
    let mut line = String::new();
    answers.read_line(&mut line).expect("read");
    line
}

#[test]
fn sigusr1_drains_the_pe_the_open_session_completes_then_it_exits() {
    // Issue 21, drain: SIGUSR1 deregisters at once (the registrar stops returning the
    // PE), new PUs are refused, the open session goes on to its end, then the PE exits.
    let mut d = Draining::start("60s");
    let (mut open, mut answers) = d.session();
    d.drain(1);
    assert!(
        pool(&d.lab, d.registrar.addr).is_empty(),
        "the registrar still returns it"
    );
    // A new client finds no PE (the gateway's cached one refuses it before its
    // handshake); the open session goes on.
    let mut late = TcpStream::connect(d.gw).expect("connect");
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut late_answers = BufReader::new(late.try_clone().expect("clone"));
    let _ = writeln!(late, "late");
    let mut line = String::new();
    let answered = late_answers.read_line(&mut line);
    assert!(
        matches!(answered, Ok(0) | Err(_)),
        "served while draining: {line:?}"
    );
    assert_eq!(exchange(&mut open, &mut answers, "two"), "two\n");
    assert!(d.pe.0.try_wait().expect("wait").is_none(), "still serving");
    // The client closes (both handles of its socket): the session ends end to end.
    drop((open, answers));
    d.says("drained: every session ended");
    assert!(d.exits(), "the PE exits once drained");
}

#[test]
fn a_drain_ends_at_its_timeout_with_the_session_still_open() {
    // The limit: a session that does not end is closed when --drain-timeout runs out.
    let mut d = Draining::start("1s");
    let (_open, mut answers) = d.session();
    d.drain(1);
    d.says("drain timeout: closing 1 open sessions");
    assert!(d.exits(), "the PE exits at the drain timeout");
    // The session was closed with the PE.
    let mut rest = String::new();
    assert!(
        matches!(answers.read_to_string(&mut rest), Ok(0) | Err(_)),
        "{rest:?}"
    );
}

#[test]
fn sigterm_deregisters_and_serves_the_open_session_for_the_stop_grace() {
    // Issue 21: on SIGTERM (systemd's stop, a container's) the PE deregisters at once and
    // serves its open sessions for --stop-grace, then exits; a second SIGTERM ends it.
    let mut d = Draining::start_with(&["--stop-grace", "2s"]);
    let (mut open, mut answers) = d.session();
    d.signal("-TERM", "stopping", 1);
    assert!(
        pool(&d.lab, d.registrar.addr).is_empty(),
        "the registrar still returns it"
    );
    assert_eq!(exchange(&mut open, &mut answers, "two"), "two\n");
    d.says("stop grace over: closing 1 open sessions");
    assert!(d.exits(), "the PE exits at the end of the grace");
    let mut rest = String::new();
    assert!(
        matches!(answers.read_to_string(&mut rest), Ok(0) | Err(_)),
        "{rest:?}"
    );

    // A second SIGTERM during the grace: out at once.
    let mut d = Draining::start_with(&["--stop-grace", "60s"]);
    let (_open, _answers) = d.session();
    d.signal("-TERM", "stopping", 1);
    d.signal_only("-TERM");
    d.says("stopped while stopping: closing 1 open sessions");
    assert!(d.exits(), "the PE exits on the second SIGTERM");
}
