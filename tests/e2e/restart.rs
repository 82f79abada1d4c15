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
    lab.init_peer("b", "data-b");
    let serving = lab.start_peer("data-b", &[]);
    let b = serving.registrar.addr.to_string();
    let (_pe_b, pe_b_lines) = spawn_pe(&lab, &b, "pe-echo-2", &[], "pe B");
    wait_line(&pe_b_lines, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("the PE of B never registered: {seen:?}"));

    // A starts now, its peer down: it refuses for its mentor timeout.
    let mentor = Duration::from_millis(5000);
    let starting = lab.start_peer_with(
        "data-a",
        &[dead_address()],
        &["--mentor-timeout-ms", &mentor.as_millis().to_string()],
    );
    let started = Instant::now();
    let a = starting.registrar.addr.to_string();
    // A PE of A, and a PU asking A first: refused there (0x6), answered through B.
    let (mut pe, pe_lines) = spawn_pe(&lab, &a, "pe-echo-1", &[], "pe A");
    let (_pu, mut pu_in, pu_out, pu_err) = spawn_pu(&lab, &format!("{a},{b}"), "echo", "pu");
    writeln!(pu_in, "hello").expect("write");
    let answer = wait_line(&pu_out, Duration::from_secs(20), |l| l == "hello");
    assert!(answer.is_ok(), "rsp pu never answered: {answer:?}");
    // `rsp resolve` too passes over the starting registrar.
    let out = rsp(&lab, &format!("{a},{b}"), "pu-client-1")
        .args(["resolve", "echo"])
        .output()
        .expect("rsp resolve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("cause 0x6"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let inconclusive = started.elapsed() >= mentor;
    drop(pu_in);
    let notes: Vec<String> = pu_err.try_iter().collect();
    assert!(!notes.iter().any(|l| l.contains("error")), "{notes:?}");

    // The PE of A: refused (once said, however many attempts), then registered.
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

/// A member of the restarting fleet: fixed ASAP and ENRP ports, so that PEs and peers
/// find it again after a restart.
struct Member {
    data: String,
    asap: std::net::SocketAddr,
    enrp: std::net::SocketAddr,
    token: String,
}

/// Mentor discovery timeout of the fleet test (spec §9.3), short to keep it quick.
const MENTOR: Duration = Duration::from_millis(2000);

/// `enrpd run` for `m`, dialing `peers`, with short ENRP and keep-alive timers.
fn start_member(lab: &Lab, m: &Member, peers: &[&Member]) -> crate::support::Registrar {
    let mut cmd = Command::new(bin("enrpd"));
    cmd.arg("run")
        .arg("--data")
        .arg(lab.path(&m.data))
        .args(["--asap-listen", &m.asap.to_string(), "--allow-loopback"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--enrp-listen", &m.enrp.to_string()])
        .args(["--keep-alive-interval-ms", "1000"])
        .args(["--keep-alive-timeout-ms", "3000"])
        .args(["--peer-heartbeat-ms", "500"])
        .args(["--peer-no-response-ms", "1500"])
        .args(["--mentor-timeout-ms", &MENTOR.as_millis().to_string()])
        .env("ENRPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for p in peers {
        cmd.args(["--peer", &p.enrp.to_string()]);
    }
    let mut child = cmd.spawn().expect("spawn enrpd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("enrpd prints its addresses");
    // "enrpd: serving ASAP on A (Server ID X), admin API on https://B, ENRP on C"
    let addrs: Vec<std::net::SocketAddr> = line
        .split([' ', ',', '/', ')', '\n'])
        .filter_map(|w| w.parse().ok())
        .collect();
    let admin = *addrs
        .get(1)
        .unwrap_or_else(|| panic!("no admin address in {line:?}"));
    crate::support::Registrar {
        child,
        addr: m.asap,
        admin,
    }
}

/// A free loopback port (bound and released: nothing else on loopback races for it here).
fn free_port() -> std::net::SocketAddr {
    dead_address()
}

/// The PE IDs of pool `echo` at the registrar `at` (up to 128), or `None` when it does
/// not answer (down, starting, or refusing).
async fn echo_pes(pu: &trust::TrustStore, at: std::net::SocketAddr) -> Option<Vec<u32>> {
    use asap::wire::AsapMsg;
    use asap::wire::param::{HandleResolutionOption, PoolHandle};
    let mut asap = tokio::time::timeout(
        Duration::from_secs(2),
        crate::support::Asap::connect(pu, at),
    )
    .await
    .ok()?
    .ok()?;
    let ask = AsapMsg::HandleResolution {
        namespace: None,
        pool_handle: PoolHandle::new("echo").expect("pool handle"),
        option: Some(HandleResolutionOption { items: 128 }),
        hints: Default::default(),
    };
    if !asap.try_send(&ask).await {
        return None;
    }
    let reply = tokio::time::timeout(Duration::from_secs(2), asap.recv_reply())
        .await
        .ok()?;
    crate::registrar::resolved(reply)
        .ok()
        .map(|pes| pes.into_iter().map(|(id, _)| id).collect())
}

/// Whether every registrar of `live` resolves exactly `want` and sees each other live
/// one with a matching checksum (`GET /v1/peers`).
async fn fleet_agrees(
    lab: &Lab,
    pu: &trust::TrustStore,
    live: &[(&Member, &crate::support::Registrar)],
    want: &std::collections::BTreeSet<u32>,
) -> Result<(), String> {
    for (m, reg) in live {
        let got: std::collections::BTreeSet<u32> = echo_pes(pu, m.asap)
            .await
            .ok_or_else(|| format!("{} does not resolve", m.data))?
            .into_iter()
            .collect();
        if got != *want {
            return Err(format!(
                "{} resolves {} of {} PEs",
                m.data,
                got.intersection(want).count(),
                want.len()
            ));
        }
        let (status, body) = crate::admin::api(lab, reg, Some(&m.token), "GET", "/v1/peers", None);
        if status != 200 {
            return Err(format!("{}: GET /v1/peers {status} {body}", m.data));
        }
        let peers: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let peers = peers["peers"].as_array().expect("a list");
        for (other, _) in live.iter().filter(|(o, _)| o.data != m.data) {
            let name = other.data.trim_start_matches("data-");
            let id = format!("spiffe://acme.test/registrar/{name}");
            let agrees = peers.iter().any(|p| {
                p["identity"] == id.as_str()
                    && p["state"] == "active"
                    && p["checksum_match"] == true
            });
            if !agrees {
                return Err(format!("{} does not agree with {name}: {peers:?}", m.data));
            }
        }
    }
    Ok(())
}

/// Polls [`fleet_agrees`] until it holds; how long that took after `since`, or why not
/// by `deadline` after `since`.
async fn until_agreed(
    lab: &Lab,
    pu: &trust::TrustStore,
    live: &[(&Member, &crate::support::Registrar)],
    want: &std::collections::BTreeSet<u32>,
    since: Instant,
    deadline: Duration,
) -> Duration {
    loop {
        let verdict = fleet_agrees(lab, pu, live, want).await;
        match verdict {
            Ok(()) => return since.elapsed(),
            Err(why) if since.elapsed() > deadline => {
                panic!(
                    "not agreed {:?} after the last start: {why}",
                    since.elapsed()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A small xorshift for the restart order and delays, seeded from the clock (printed, and
/// taken from RSP_E2E_SEED when set, to replay a run).
struct Dice(u64);

impl Dice {
    fn new() -> Self {
        let seed = std::env::var("RSP_E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("fleet restart: RSP_E2E_SEED={seed}");
        Self(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_fleet_comes_back_by_itself() {
    // Issue 25: three peered registrars, 20 `rsp pe` and two `rsp pu`; every registrar is
    // SIGKILLed and restarted in random order with random delays, twice: once all
    // together, once with one staying down past the mentor timeout. No PE process exits,
    // every PE is resolvable at every live registrar within mentor timeout + 2 s of the
    // last start, the checksums agree, and the PUs' sessions go on.
    const PES: usize = 20;
    let within = MENTOR + Duration::from_secs(2);
    let mut dice = Dice::new();
    let lab = Lab::new();
    let members: Vec<Member> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let data = format!("data-{name}");
            let token = lab.init_peer(name, &data);
            Member {
                data,
                asap: free_port(),
                enrp: free_port(),
                token,
            }
        })
        .collect();
    let others = |i: usize| -> Vec<&Member> {
        (0..members.len())
            .filter(|&j| j != i)
            .map(|j| &members[j])
            .collect()
    };
    let mut regs: Vec<Option<crate::support::Registrar>> = (0..members.len())
        .map(|i| Some(start_member(&lab, &members[i], &others(i))))
        .collect();

    // Twenty PEs, each trying the registrars from a different one first.
    let pes: Vec<(Proc, u32)> = (0..PES)
        .map(|i| {
            let order: Vec<String> = (0..3)
                .map(|k| members[(i + k) % 3].asap.to_string())
                .collect();
            let mut child = rsp(&lab, &order.join(","), "pe-echo-1")
                .args(["pe", "--pool", "echo", "--serve", "echo"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rsp pe");
            let out = lines(child.stdout.take().expect("stdout"), format!("pe {i} out"));
            // Drained (and shown) so that the PE never blocks on its standard error.
            let _ = lines(child.stderr.take().expect("stderr"), format!("pe {i}"));
            let child = Proc(child);
            let first = out
                .recv_timeout(Duration::from_secs(30))
                .expect("rsp pe says who it is");
            let id = first
                .split_whitespace()
                .nth(3)
                .and_then(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16).ok())
                .unwrap_or_else(|| panic!("no PE ID in {first:?}"));
            (child, id)
        })
        .collect();
    let want: std::collections::BTreeSet<u32> = pes.iter().map(|(_, id)| *id).collect();
    let pu = lab.identity("pu-client-1");
    let live = |regs: &[Option<crate::support::Registrar>]| -> Vec<usize> {
        (0..members.len()).filter(|&i| regs[i].is_some()).collect()
    };
    {
        let idx = live(&regs);
        let view: Vec<_> = idx
            .iter()
            .map(|&i| (&members[i], regs[i].as_ref().expect("live")))
            .collect();
        until_agreed(
            &lab,
            &pu,
            &view,
            &want,
            Instant::now(),
            Duration::from_secs(30),
        )
        .await;
    }

    // Two PUs in sessions with PEs, a request every 200 ms each, throughout.
    let all: Vec<String> = members.iter().map(|m| m.asap.to_string()).collect();
    let pus: Vec<_> = (0..2)
        .map(|i| spawn_pu(&lab, &all.join(","), "echo", &format!("pu {i}")))
        .collect();
    // Each PU's session is up (it resolved the pool and a PE answered) before the fleet
    // goes down: a PU that starts against a registrar whose handlespace is still empty is
    // told the pool is unknown (0x9) and, with nothing cached, rightly gives up.
    let pus: Vec<_> = pus
        .into_iter()
        .map(|(proc_, mut stdin, out, err)| {
            writeln!(stdin, "ping 0").expect("write to rsp pu");
            let first = out.recv_timeout(Duration::from_secs(30));
            assert_eq!(
                first.as_deref(),
                Ok("ping 0"),
                "the PU's first answer; notes {:?}",
                err.try_iter().collect::<Vec<_>>()
            );
            (proc_, stdin, out, err)
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talkers: Vec<_> = pus
        .into_iter()
        .map(|(proc_, mut stdin, out, err)| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut sent, mut answered) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    sent += 1;
                    if writeln!(stdin, "ping {sent}").is_err() {
                        break;
                    }
                    if out
                        .recv_timeout(Duration::from_secs(10))
                        .is_ok_and(|l| l == format!("ping {sent}"))
                    {
                        answered += 1;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                drop(stdin);
                let notes: Vec<String> = err.try_iter().collect();
                (proc_, sent, answered, notes)
            })
        })
        .collect();

    for round in ["all together", "one down past the mentor timeout"] {
        for r in &mut regs {
            let mut reg = r.take().expect("running");
            reg.child.kill().expect("SIGKILL enrpd");
            reg.child.wait().expect("reap enrpd");
        }
        let mut order: Vec<usize> = (0..members.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, dice.below(i as u64 + 1) as usize);
        }
        let late = (round != "all together").then(|| order.pop().expect("three"));
        println!("fleet restart, {round}: order {order:?}, late {late:?}");
        let mut last_start = Instant::now();
        for &i in &order {
            tokio::time::sleep(Duration::from_millis(dice.below(1500))).await;
            regs[i] = Some(start_member(&lab, &members[i], &others(i)));
            last_start = Instant::now();
        }
        let idx = live(&regs);
        {
            let view: Vec<_> = idx
                .iter()
                .map(|&i| (&members[i], regs[i].as_ref().expect("live")))
                .collect();
            let took = until_agreed(&lab, &pu, &view, &want, last_start, within).await;
            println!(
                "fleet restart, {round}: {PES} PEs resolvable at {} registrars, checksums agreed, {} ms after the last start",
                view.len(),
                took.as_millis()
            );
        }
        if let Some(i) = late {
            // Past the mentor timeout of the others, then back.
            tokio::time::sleep(MENTOR + Duration::from_millis(500)).await;
            regs[i] = Some(start_member(&lab, &members[i], &others(i)));
            let started = Instant::now();
            let view: Vec<_> = (0..members.len())
                .map(|i| (&members[i], regs[i].as_ref().expect("live")))
                .collect();
            let took = until_agreed(&lab, &pu, &view, &want, started, within).await;
            println!(
                "fleet restart, {round}: the late registrar and its peers agreed {} ms after its start",
                took.as_millis()
            );
        }
    }

    // No PE process gave up.
    let mut pes = pes;
    for (i, (p, _)) in pes.iter_mut().enumerate() {
        assert!(p.0.try_wait().expect("wait").is_none(), "PE {i} exited");
    }
    // The PUs' sessions went on: every request answered but a bounded few.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in talkers {
        let (mut proc_, sent, answered, notes) = t.join().expect("PU talker");
        println!("a PU: {answered} of {sent} requests answered; notes {notes:?}");
        assert!(proc_.0.try_wait().expect("wait").is_none() || sent == answered);
        assert!(
            sent - answered <= 2,
            "{answered} of {sent} answered: {notes:?}"
        );
        assert!(!notes.iter().any(|l| l.starts_with("error")), "{notes:?}");
    }
}

#[test]
fn a_pu_of_a_federated_domain_reaches_a_pe_whose_ca_file_bundles_both_domains() {
    // Issue 25: --ca / RSP_CA take several trust domains (concatenated `rsp-pki bundle
    // export`s), so a PE trusts the PUs of a domain its registrar federates; a PE with its
    // own ca.pem alone refuses them.
    let lab = Lab::new();
    let token = lab.init_peer("a", "data-a");
    let a = lab.start_peer("data-a", &[]);
    let partner = |args: &[&str]| {
        crate::support::run_ok(
            Command::new(bin("rsp-pki"))
                .arg("--dir")
                .arg(lab.path("partner"))
                .args(args),
        )
    };
    partner(&["init", "--trust-domain", "partner.test"]);
    partner(&["issue", "pu", "client-9"]);
    let theirs = String::from_utf8(partner(&["bundle", "export"]).stdout).expect("PEM");
    let ours = String::from_utf8(lab.pki(&["bundle", "export"]).stdout).expect("PEM");
    for (path, body) in [
        ("/v1/trust-domains", theirs.as_str()),
        (
            "/v1/grants",
            r#"{"identity":"spiffe://partner.test/pu/*","namespace":"default","pools":"echo","actions":["resolve","report"]}"#,
        ),
    ] {
        let (status, answer) =
            crate::admin::api(&lab, &a.registrar, Some(&token), "POST", path, Some(body));
        assert_eq!(status, 201, "{path}: {answer}");
    }
    // Ours then theirs for the PE; theirs (headerless) then ours for the partner's PU.
    let own_ca = std::fs::read_to_string(lab.path("pki/ca.pem")).expect("ca.pem");
    let pe_trust = lab.path("pe-trust.pem");
    std::fs::write(&pe_trust, format!("{own_ca}{theirs}")).expect("write");
    let partner_ca = std::fs::read_to_string(lab.path("partner/ca.pem")).expect("ca.pem");
    let pu_trust = lab.path("pu-trust.pem");
    std::fs::write(&pu_trust, format!("{partner_ca}{ours}")).expect("write");
    let at = a.registrar.addr.to_string();
    let partner_pu = || {
        rsp(&lab, &at, "pu-client-1")
            .env("RSP_CERT", lab.path("partner/pu-client-9.pem"))
            .env("RSP_CA", &pu_trust)
            .args(["pu", "echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rsp pu")
    };
    let ask = |mut pu: Child| {
        writeln!(pu.stdin.take().expect("stdin"), "hello").expect("write");
        let out = pu.wait_with_output().expect("rsp pu");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // A PE trusting its own domain only: the partner's PU is refused at the handshake.
    let (_plain, plain_lines) = spawn_pe(&lab, &at, "pe-echo-2", &[], "pe own ca");
    wait_line(&plain_lines, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("the PE never registered: {seen:?}"));
    let (ok, out, err) = ask(partner_pu());
    assert!(!ok && out.is_empty(), "{out}{err}");
    // The PE's refusal reaches the PU as an alert or a closed connection, depending on
    // when it lands (TLS 1.3 sends the client's certificate after the client is done).
    assert!(err.contains("failing over"), "{err}");

    // A PE whose --ca bundles both domains: answered.
    let mut fed = rsp(&lab, &at, "pe-echo-1")
        .env("RSP_CA", &pe_trust)
        .args(["pe", "--pool", "echo", "--serve", "echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let fed_lines = lines(fed.stderr.take().expect("stderr"), "pe two domains".into());
    let _fed = Proc(fed);
    wait_line(&fed_lines, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("the federated PE never registered: {seen:?}"));
    let (ok, out, err) = ask(partner_pu());
    assert!(ok && out == "hello\n", "{out}{err}");
}
