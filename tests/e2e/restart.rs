//! Clients ride out what is temporary (issue 25): `rsp pe` and `rsp pu` against real
//! `enrpd`s that refuse with 0x6 Lack of Resources while they start (spec §9.3 step 5),
//! and a permanent refusal that ends `rsp pe` with one line.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Lab, bin};

/// A child process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn rsp(lab: &Lab, registrars: &str, cert: &str) -> Command {
    let mut c = Command::new(bin("rsp"));
    c.env_remove("RSP_CONFIG")
        .env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_REGISTRAR", registrars)
        .env("RSP_CERT", lab.path(&format!("pki/{cert}.pem")));
    c
}

/// The lines of a pipe, as they come, on a channel (read on a thread, so that the child
/// never blocks on a full pipe); each is also echoed to the test's output with `tag`.
pub(crate) fn lines(
    pipe: impl std::io::Read + Send + 'static,
    tag: String,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining the pipe.
            }
        }
    });
    rx
}

/// Waits up to `within` for a line that `want` accepts; the lines before it are returned
/// too (all of them, on a timeout, as the error).
pub(crate) fn wait_line(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<String>, Vec<String>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return Ok(seen);
                }
            }
            Err(_) => return Err(seen),
        }
    }
}

/// `rsp pe --pool echo --serve echo` with `extra` arguments, and its standard error's
/// lines.
pub(crate) fn spawn_pe(
    lab: &Lab,
    registrars: &str,
    cert: &str,
    extra: &[&str],
    tag: &str,
) -> (Proc, mpsc::Receiver<String>) {
    let mut pe = rsp(lab, registrars, cert)
        .args(["pe", "--pool", "echo", "--serve", "echo"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let rx = lines(pe.stderr.take().expect("stderr"), tag.into());
    (Proc(pe), rx)
}

/// A loopback address where nothing listens (a peer that is down).
fn dead_address() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}

#[test]
fn a_pe_and_a_pu_ride_out_a_registrar_that_refuses_while_it_starts() {
    // The operator's report of issue 25: a registrar started with its peer down refuses
    // with 0x6 until its mentor timeout; an `rsp pe` and an `rsp pu` started in that
    // window used to exit. Now the PE waits, says so once, and registers once it serves;
    // the PU goes on to the next registrar at once.
    let lab = Lab::new();
    lab.init_peer("a", "data-a");
    let mentor = Duration::from_millis(5000);
    let starting = lab.start_peer_with(
        "data-a",
        &[dead_address()],
        &["--mentor-timeout-ms", &mentor.as_millis().to_string()],
    );
    let started = Instant::now();
    let a = starting.registrar.addr.to_string();
    lab.init_peer("b", "data-b");
    let serving = lab.start_peer("data-b", &[]);
    let b = serving.registrar.addr.to_string();

    // A PE of B, and a PU asking A first: refused there (0x6), answered through B.
    let (_pe_b, pe_b_lines) = spawn_pe(&lab, &b, "pe-echo-2", &[], "pe B");
    wait_line(&pe_b_lines, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("the PE of B never registered: {seen:?}"));
    let mut pu = rsp(&lab, &format!("{a},{b}"), "pu-client-1")
        .args(["pu", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pu");
    let pu_out = lines(pu.stdout.take().expect("stdout"), "pu out".into());
    let pu_err = lines(pu.stderr.take().expect("stderr"), "pu".into());
    let mut pu_in = pu.stdin.take().expect("stdin");
    let _pu = Proc(pu);
    writeln!(pu_in, "hello").expect("write");
    let answer = wait_line(&pu_out, Duration::from_secs(20), |l| l == "hello");
    assert!(answer.is_ok(), "rsp pu never answered: {answer:?}");
    let inconclusive = started.elapsed() >= mentor;
    drop(pu_in);
    let notes: Vec<String> = pu_err.try_iter().collect();
    assert!(!notes.iter().any(|l| l.contains("error")), "{notes:?}");

    // A PE of A: refused (once said, however many attempts), then registered.
    let (mut pe, pe_lines) = spawn_pe(&lab, &a, "pe-echo-1", &[], "pe A");
    let seen = wait_line(&pe_lines, mentor + Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("rsp pe never registered: {seen:?}"));
    assert!(
        started.elapsed() >= mentor.saturating_sub(Duration::from_millis(500)),
        "registered before the mentor timeout: the registrar did not refuse"
    );
    let refusals = seen
        .iter()
        .filter(|l| l.contains("cause 0x6 (Lack of Resources)"))
        .count();
    assert_eq!(refusals, 1, "one line per change of state: {seen:?}");
    assert!(pe.0.try_wait().expect("wait").is_none(), "rsp pe exited");
    assert!(
        !inconclusive,
        "the PU was answered only after A served (machine too slow for this test)"
    );
}

#[test]
fn a_permanent_refusal_ends_rsp_pe_with_one_line_naming_the_cause() {
    // A PU identity has no grant to register (spec §11): 0xA, which no retry changes.
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(1000, 2000);
    let out = rsp(&lab, &registrar.addr.to_string(), "pu-client-1")
        .args(["pe", "--pool", "echo", "--serve", "echo"])
        .stdout(Stdio::null())
        .output()
        .expect("rsp pe");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("cause 0xa (Rejection due to security considerations)")
            && errors[0].contains("grants"),
        "{stderr}"
    );
}
