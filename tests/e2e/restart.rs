//! Clients ride out what is temporary (issue 25): `rsp pe` and `rsp pu` against real
//! `enrpd`s that refuse with 0x6 Lack of Resources while they start (spec §9.3 step 5),
//! a permanent refusal that ends `rsp pe` with one line, and a PU that fails over to the
//! PE its PE's business card names.

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

/// `rsp pu POOL` as `pu-client-1`: the process, its standard input, and the lines of its
/// standard output and error.
pub(crate) fn spawn_pu(
    lab: &Lab,
    registrars: &str,
    pool: &str,
    tag: &str,
) -> (
    Proc,
    std::process::ChildStdin,
    mpsc::Receiver<String>,
    mpsc::Receiver<String>,
) {
    let mut pu = rsp(lab, registrars, "pu-client-1")
        .args(["pu", pool])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pu");
    let out = lines(pu.stdout.take().expect("stdout"), format!("{tag} out"));
    let err = lines(pu.stderr.take().expect("stderr"), tag.into());
    let stdin = pu.stdin.take().expect("stdin");
    (Proc(pu), stdin, out, err)
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
    let (_pu, mut pu_in, pu_out, pu_err) = spawn_pu(&lab, &format!("{a},{b}"), "echo", "pu");
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

/// `rsp pe --pool counter --serve counter` with `extra` arguments, once registered: the
/// process, its PE ID (as `rsp` prints it) and its standard error's later lines.
fn spawn_counter_pe(
    lab: &Lab,
    registrar: &str,
    cert: &str,
    extra: &[&str],
) -> (Proc, String, mpsc::Receiver<String>) {
    let key = lab.path("pool.key");
    if !key.exists() {
        std::fs::write(&key, [0x5a; 32]).expect("write the pool key");
    }
    let mut child = rsp(lab, registrar, cert)
        .args(["pe", "--pool", "counter", "--serve", "counter"])
        .args(extra)
        .env("RSP_COOKIE_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let out = lines(child.stdout.take().expect("stdout"), cert.into());
    let err = lines(child.stderr.take().expect("stderr"), cert.into());
    let child = Proc(child);
    // "rsp pe: PE 0x1234abcd of pool counter serving Counter on 127.0.0.1:4567 as …"
    let first = out
        .recv_timeout(Duration::from_secs(20))
        .expect("rsp pe says who it is");
    let id = first.split_whitespace().nth(3).expect("PE ID").to_owned();
    wait_line(&err, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("{cert} never registered: {seen:?}"));
    (child, id, err)
}

#[test]
fn a_pu_fails_over_to_the_pe_the_business_card_names_not_the_pool_policys_choice() {
    // Issue 25: a business card names failover candidates, and the PU follows it. With
    // the priority policy the PU starts on A (highest) and its pool policy would fail
    // over to B (next highest); A's card names C, so the PU goes to C.
    let lab = Lab::new();
    lab.pki(&["issue", "pe", "echo-3"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let at = registrar.addr.to_string();
    let (_c, c_id, _) = spawn_counter_pe(&lab, &at, "pe-echo-3", &["--policy", "pri:1"]);
    let (_b, b_id, _) = spawn_counter_pe(&lab, &at, "pe-echo-2", &["--policy", "pri:5"]);
    let card = c_id.clone();
    let (mut a, a_id, a_lines) = spawn_counter_pe(
        &lab,
        &at,
        "pe-echo-1",
        &["--policy", "pri:9", "--business-card", &card],
    );
    // A resolves its pool once registered and puts C on its card.
    wait_line(&a_lines, Duration::from_secs(20), |l| {
        l == "business card: names this PE and 1 other PEs"
    })
    .unwrap_or_else(|seen| panic!("A's card never named C: {seen:?}"));

    let (_pu, mut stdin, answers, reports) = spawn_pu(&lab, &at, "counter", "pu");
    let mut ask = |line: &str| {
        writeln!(stdin, "{line}").expect("write to rsp pu");
        answers
            .recv_timeout(Duration::from_secs(20))
            .expect("rsp pu answers")
    };
    assert_eq!(ask("a"), "1 a");
    let seen = wait_line(&reports, Duration::from_secs(5), |l| {
        l.starts_with("business card:")
    })
    .expect("A hands the PU its card");
    assert!(seen.contains(&format!("using PE {a_id}")), "{seen:?}");
    let order = format!("failover order {a_id} {c_id})");
    assert!(seen.last().is_some_and(|l| l.ends_with(&order)), "{seen:?}");

    let _ = a.0.kill();
    let _ = a.0.wait();
    assert_eq!(ask("b"), "2 b", "the session continues");
    let failover = wait_line(&reports, Duration::from_secs(5), |l| {
        l.starts_with("failed over from")
    })
    .expect("the PU reports its failover");
    let line = failover.last().expect("the failover line");
    assert!(
        line.starts_with(&format!("failed over from PE {a_id} to PE {c_id} in")),
        "the card's PE ({c_id}), not the policy's ({b_id}): {failover:?}"
    );
}
