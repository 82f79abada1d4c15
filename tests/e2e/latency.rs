//! Least Used with Distance Penalty through the real binaries, with real delays (issue 23
//! item 3, docs/PROTOCOL-EXTENSIONS.md §3): four `rsp pe` in their own network namespaces,
//! two behind a 2 ms netem delay ("near"), two behind 60 ms ("far"), register with one
//! `enrpd`, which measures their keep-alive round trips itself (the admin API's `rtt_us`).
//! Resolutions then go to the near PEs while they have capacity, and to the far ones once
//! `rsp pu` sessions fill the near ones (`--capacity 1`: load 100 %); a PU hinting at the
//! far PEs' label gets them first.
//!
//! Needs root, network namespaces, veth and `sch_netem`: the SCTP lab guest has them
//! (`ci/sctp-lab/test test -p rsp-e2e --test e2e latency -- --test-threads 1`, and
//! `.ci/run` runs it there with `RSP_REQUIRE_NETEM=1`). Elsewhere it skips with a message,
//! unless `RSP_REQUIRE_NETEM=1`, when it fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asap::wire::param::{HandleResolutionOption, Labels, PoolHandle};
use asap::wire::{AsapMsg, Resolution};

use crate::admin::{admin_token, api};
use crate::endpoints::{Pe, rsp};
use crate::support::{Asap, Lab, bin};

/// The one-way delays (ms) in front of the near and the far PEs.
const NEAR_MS: u64 = 2;
const FAR_MS: u64 = 60;
/// Resolutions counted in each phase.
const RESOLUTIONS: usize = 40;

/// `cmd args…`: `Err` with its standard error when it fails.
fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Network namespaces this test made; deleted on drop (their veth pairs go with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

/// Whether this machine can put a netem delay in a network namespace: tried in a
/// throw-away namespace, so the host's own interfaces are never touched.
fn netem_here() -> Result<(), String> {
    let probe = Namespaces(vec![format!("rsplat-probe-{}", std::process::id())]);
    sh("ip", &["netns", "add", &probe.0[0]])?;
    sh("ip", &["-n", &probe.0[0], "link", "set", "lo", "up"])?;
    sh(
        "tc",
        &[
            "-n",
            &probe.0[0],
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            "1ms",
        ],
    )
}

/// PE `i` (1-based) lives in namespace `rsplat-<pid>-<i>` at 10.77.i.2, joined to this
/// namespace (10.77.i.1) by a veth pair whose PE end delays everything it sends by
/// `delay_ms`: so every round trip to it, keep-alives included, is that much longer.
fn pe_namespace(spaces: &mut Namespaces, i: u8, delay_ms: u64) -> Result<String, String> {
    let ns = format!("rsplat-{}-{i}", std::process::id());
    sh("ip", &["netns", "add", &ns])?;
    spaces.0.push(ns.clone());
    // Interface names: at most 15 bytes.
    let (host, pe) = (
        format!("rl{}h{i}", std::process::id() % 100_000),
        format!("rl{}p{i}", std::process::id() % 100_000),
    );
    let delay = format!("{delay_ms}ms");
    let (host_addr, pe_addr) = (format!("10.77.{i}.1/24"), format!("10.77.{i}.2/24"));
    sh(
        "ip",
        &["link", "add", &host, "type", "veth", "peer", "name", &pe],
    )?;
    sh("ip", &["link", "set", &pe, "netns", &ns])?;
    sh("ip", &["addr", "add", &host_addr, "dev", &host])?;
    sh("ip", &["link", "set", &host, "up"])?;
    sh("ip", &["-n", &ns, "addr", "add", &pe_addr, "dev", &pe])?;
    sh("ip", &["-n", &ns, "link", "set", &pe, "up"])?;
    sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    sh(
        "tc",
        &[
            "-n", &ns, "qdisc", "add", "dev", &pe, "root", "netem", "delay", &delay,
        ],
    )?;
    Ok(ns)
}

/// `rsp pe` in namespace `ns` as PE `i`, with the distance policy and a capacity of one
/// session; returns once it registered.
fn start_pe_in_namespace(lab: &Lab, ns: &str, i: u8, port: u16) -> Pe {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin("rsp"))
        .env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_REGISTRAR", format!("10.77.{i}.1:{port}"))
        .env("RSP_CERT", lab.path(&format!("pki/pe-echo-{i}.pem")))
        .args(["pe", "--pool", "echo", "--serve", "echo"])
        .args(["--listen", &format!("10.77.{i}.2:0")])
        .args(["--policy", "least-used-distance:0:1", "--capacity", "1"])
        .args(["--label", if i <= 2 { "site=near" } else { "site=far" }])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("rsp pe reports");
    assert!(line.starts_with("registered with"), "PE {i}: {line}");
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[pe {i}] {line}");
        }
    });
    Pe(child)
}

/// Which PE (1..=4) an address of 10.77.i.2 is.
fn pe_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..2] == [10, 77] => v4.octets()[2],
        other => panic!("not one of the test's PEs: {other}"),
    }
}

/// One handle resolution of `echo` for `items` PEs: the PEs (1..=4) in the answer's order.
async fn resolve(pu: &mut Asap, items: u32) -> Vec<u8> {
    resolve_hinted(pu, items, &[]).await
}

/// [`resolve`] with selection hints (`site=far`).
async fn resolve_hinted(pu: &mut Asap, items: u32, hints: &[&str]) -> Vec<u8> {
    pu.send(&AsapMsg::HandleResolution {
        namespace: None,
        pool_handle: PoolHandle::new("echo").expect("pool handle"),
        option: Some(HandleResolutionOption { items }),
        hints: Labels::parse(hints).expect("valid hints"),
    })
    .await;
    match pu.recv_reply().await {
        Some(AsapMsg::HandleResolutionResponse {
            result: Resolution::Found { pool_elements, .. },
            ..
        }) => pool_elements
            .iter()
            .map(|e| pe_of(e.pool_element.user_transport.addresses()[0].ip()))
            .collect(),
        other => panic!("no resolution: {other:?}"),
    }
}

/// `RESOLUTIONS` resolutions of one PE each: how many went to a near PE (1 or 2).
async fn near_share(pu: &mut Asap) -> usize {
    let mut near = 0;
    for _ in 0..RESOLUTIONS {
        let first = resolve(pu, 1).await;
        if matches!(first.as_slice(), [1 | 2]) {
            near += 1;
        }
    }
    near
}

/// The admin API's view of the pool: PE (1..=4) → (rtt_us, policy text).
fn pool_state(
    lab: &Lab,
    registrar: &crate::support::Registrar,
    token: &str,
) -> HashMap<u8, (Option<u64>, String)> {
    let (status, body) = api(
        lab,
        registrar,
        Some(token),
        "GET",
        "/v1/namespaces/default/pools/echo",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let pool: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    pool["pool_elements"]
        .as_array()
        .expect("PEs")
        .iter()
        .map(|pe| {
            let transport = pe["transport"].as_str().expect("transport");
            // "tcp 10.77.3.2:41234"
            let ip: IpAddr = transport
                .split_whitespace()
                .nth(1)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
                .unwrap_or_else(|| panic!("{transport}"));
            (
                pe_of(ip),
                (
                    pe["rtt_us"].as_u64(),
                    pe["policy"].as_str().expect("policy").to_owned(),
                ),
            )
        })
        .collect()
}

/// Polls `cond` every 100 ms for up to `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An `rsp pu echo` holding a session open (its stdin open): it has sent one line and got
/// its echo.
struct Session {
    _stdin: std::process::ChildStdin,
    _pu: Pe,
    /// The PE ID it uses, as `rsp pu` prints it.
    pe_id: String,
}

fn hold_session(lab: &Lab, registrar: SocketAddr, id: &str) -> Session {
    let mut pu = Pe(rsp(lab, registrar, "pu-client-1")
        .args(["pu", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pu"));
    let mut stdin = pu.0.stdin.take().expect("stdin");
    let mut answers = BufReader::new(pu.0.stdout.take().expect("stdout"));
    let mut reports = BufReader::new(pu.0.stderr.take().expect("stderr"));
    writeln!(stdin, "{id}").expect("write to rsp pu");
    let mut answer = String::new();
    answers.read_line(&mut answer).expect("rsp pu answers");
    assert_eq!(answer.trim_end(), id, "echoed");
    let mut line = String::new();
    reports.read_line(&mut line).expect("rsp pu reports");
    let pe_id = line
        .trim_end()
        .strip_prefix("using PE ")
        .unwrap_or_else(|| panic!("rsp pu says which PE it uses: {line}"))
        .to_owned();
    Session {
        _stdin: stdin,
        _pu: pu,
        pe_id,
    }
}

#[tokio::test]
async fn pus_go_to_near_pes_while_they_have_capacity_then_to_far_ones() {
    if let Err(why) = netem_here() {
        assert!(
            std::env::var("RSP_REQUIRE_NETEM").as_deref() != Ok("1"),
            "RSP_REQUIRE_NETEM=1 but no netem delays here: {why}"
        );
        eprintln!(
            "skipping: no network namespaces with netem here ({why}); run it with ci/sctp-lab/test test -p rsp-e2e --test e2e latency"
        );
        return;
    }
    let lab = Lab::new();
    for pe in ["echo-3", "echo-4"] {
        lab.pki(&["issue", "pe", pe]);
    }
    let token = admin_token(&lab.init_registrar());
    // Keep-alives every 300 ms; a generous timeout for a slow (emulated) guest.
    let registrar = lab.start_registrar_on("0.0.0.0:0", 300, 3000);
    let port = registrar.addr.port();
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut spaces = Namespaces(Vec::new());
    let mut pes = Vec::new();
    // PEs 1 and 2 near, 3 and 4 far; registered far first, so registration order does
    // not favour the near ones.
    for i in [3u8, 4, 1, 2] {
        let delay = if i <= 2 { NEAR_MS } else { FAR_MS };
        let ns = pe_namespace(&mut spaces, i, delay).expect("namespace with netem");
        pes.push(start_pe_in_namespace(&lab, &ns, i, port));
    }

    // The registrar measures every PE's round trip (a few keep-alives).
    let mut state = HashMap::new();
    wait_for(30, "a measured round trip to every PE", || {
        state = pool_state(&lab, &registrar, &token);
        state.len() == 4 && state.values().all(|(rtt, _)| rtt.is_some())
    });
    let rtt = |i: u8| state[&i].0.expect("measured");
    eprintln!(
        "measured keep-alive round trips (µs): near {} {}, far {} {}",
        rtt(1),
        rtt(2),
        rtt(3),
        rtt(4)
    );
    for far in [3, 4] {
        assert!(rtt(far) >= FAR_MS * 1000, "far PE {far}: {state:?}");
        for near in [1, 2] {
            assert!(rtt(near) < rtt(far), "{state:?}");
        }
    }

    // While the near PEs have capacity, every resolution names a near PE first.
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), loopback)
        .await
        .expect("connect");
    let near_with_capacity = near_share(&mut pu).await;
    eprintln!(
        "near PEs have capacity: {near_with_capacity}/{RESOLUTIONS} resolutions served by near PEs"
    );
    assert_eq!(near_with_capacity, RESOLUTIONS);
    let order = resolve(&mut pu, 4).await;
    assert!(matches!(order[..2], [1, 2] | [2, 1]), "{order:?}");
    // A PU that hints at the far site gets the far PEs first: labels before distance.
    let order = resolve_hinted(&mut pu, 4, &["site=far"]).await;
    assert!(
        matches!(order[..], [3, 4, _, _] | [4, 3, _, _]),
        "{order:?}"
    );

    // Two PUs hold sessions: each takes a near PE (capacity 1), which then reports 100 %.
    let mut sessions = Vec::new();
    let mut used = Vec::new();
    for n in 0..2 {
        let session = hold_session(&lab, loopback, &format!("hello {n}"));
        used.push(session.pe_id.clone());
        sessions.push(session);
        wait_for(10, "the PE's full load at the registrar", || {
            let full = pool_state(&lab, &registrar, &token)
                .into_iter()
                .filter(|(_, (_, policy))| policy.starts_with("least-used-distance:100:"))
                .count();
            full == n + 1
        });
    }
    let state = pool_state(&lab, &registrar, &token);
    for near in [1, 2] {
        assert!(
            state[&near].1.starts_with("least-used-distance:100:"),
            "the PUs filled the near PEs, not far ones: {state:?} (PUs used {used:?})"
        );
    }

    // Near PEs full: the far ones serve.
    let near_when_full = near_share(&mut pu).await;
    eprintln!("near PEs full: {near_when_full}/{RESOLUTIONS} resolutions served by near PEs");
    assert_eq!(near_when_full, 0);
    let order = resolve(&mut pu, 4).await;
    assert!(matches!(order[..2], [3, 4] | [4, 3]), "{order:?}");

    // A session ends: its near PE has capacity again and is preferred again.
    drop(sessions.pop());
    wait_for(10, "a near PE with capacity again", || {
        pool_state(&lab, &registrar, &token)
            .values()
            .filter(|(_, policy)| policy.starts_with("least-used-distance:0:"))
            .count()
            == 3
    });
    let first = resolve(&mut pu, 1).await;
    assert!(matches!(first[..], [1 | 2]), "{first:?}");
    drop(pes);
}
