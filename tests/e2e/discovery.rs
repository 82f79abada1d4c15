//! Multicast discovery of registrars (issue 23 item 4, spec §7.7, §9.2, D-5), with real
//! binaries in network namespaces joined by veth pairs to a bridge in a hub namespace
//! (multicast works on veth; each namespace routes 224.0.0.0/4 to its link).
//!
//! - PEs and PUs started with `--discover` and no registrar address find the registrar
//!   that `enrpd run --announce` announces, and ignore a forged announcer; the PE finds it
//!   again after a restart.
//! - Registrars with `--announce-peers`/`--discover-peers` and no `--peer` find each other
//!   and replicate, and refuse a forged presence.
//!
//! The forger is a real `enrpd` that announces itself on the same groups but presents a PE
//! certificate of the trusted domain (a valid identity, not a registrar's), so an announce
//! that leads to it costs one refused handshake, logged (PE, PU) or audited (registrar),
//! and it never becomes anyone's registrar or peer. In the first test it announces first,
//! alone: the PE and the PU must try it and refuse it; then the real registrar starts, and
//! they end there. Needs root and `ip` (iproute2); skips with a message otherwise.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Lab, Netns, admin_token, bin, in_ns, ip, run_ok, serving, unsupported_netns};

const GROUP: &str = "239.0.0.50:3863";
const PEER_GROUP: &str = "239.0.0.51:9901";

/// A child process killed when dropped (also on a panic).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Namespaces `NAME` at `PREFIX.N` on one link (a bridge in a hub namespace, a veth pair
/// each), multicast routed to the link; `None` (the test skips, said why) where
/// namespaces cannot be made.
fn lan<const K: usize>(
    netns: &mut Netns,
    prefix: &str,
    nodes: [(&str, u8); K],
) -> Option<[String; K]> {
    if let Some(why) = unsupported_netns() {
        println!("SKIPPED discovery test: {why} (needs root and iproute2 for network namespaces)");
        return None;
    }
    let hub = match netns.add("hub") {
        Ok(h) => h,
        Err(e) => {
            println!("SKIPPED discovery test: cannot add a network namespace: {e}");
            return None;
        }
    };
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]).expect("bridge");
    // Without a querier, IGMP snooping could hold the group back: flood it to every port.
    ip(&[
        "-n",
        &hub,
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ])
    .expect("no snooping");
    ip(&["-n", &hub, "link", "set", "br0", "up"]).expect("bridge up");
    Some(nodes.map(|(name, n)| {
        let ns = netns.add(name).expect("namespace");
        let port = format!("link-{name}");
        ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .expect("veth");
        ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]).expect("port");
        let addr = format!("{prefix}.{n}/24");
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]).expect("addr");
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).expect("up");
        ip(&["-n", &ns, "link", "set", "lo", "up"]).expect("lo");
        // Multicast leaves (and is joined) on the link.
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]).expect("route");
        ns
    }))
}

/// `enrpd init` into `data` of the registrar certificate `pki/registrar-NAME.pem`; the
/// admin token.
fn init(lab: &Lab, pki: &str, name: &str, data: &str) -> String {
    admin_token(&run_ok(
        Command::new(bin("enrpd"))
            .arg("init")
            .arg("--pki")
            .arg(lab.path(pki))
            .args(["--name", name])
            .arg("--data")
            .arg(lab.path(data)),
    ))
}

/// The forger's data directory `data`: a PE certificate of the trusted domain
/// (`pe/mallory`, at `ip`), set up as a registrar's, so that a real `enrpd` presents it.
fn forger_data(lab: &Lab, ip: &str, data: &str) {
    lab.pki(&["issue", "pe", "mallory", "--ip", ip]);
    std::fs::create_dir(lab.path("forged")).expect("mkdir");
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("pe-mallory.pem", "registrar-mallory.pem"),
        ("pe-mallory.key", "registrar-mallory.key"),
    ] {
        std::fs::copy(
            lab.path(&format!("pki/{from}")),
            lab.path(&format!("forged/{to}")),
        )
        .expect("copy");
    }
    init(lab, "forged", "mallory", data);
}

/// `enrpd run` on `data` in `ns`, ASAP at `asap`, announcing itself on [`GROUP`] every
/// 200 ms; once it serves.
fn announcing_registrar(lab: &Lab, ns: &str, data: &str, asap: &str) -> Running {
    enrpd(
        lab,
        ns,
        data,
        asap,
        &[
            "--enrp-listen",
            "off",
            "--admin-listen",
            "off",
            "--announce",
            GROUP,
        ],
    )
}

/// `enrpd run` on `data` in `ns`, ASAP at `asap`, with `extra` flags, announcing every
/// 200 ms where it announces; once it serves.
fn enrpd(lab: &Lab, ns: &str, data: &str, asap: &str, extra: &[&str]) -> Running {
    let mut child = in_ns(ns, &bin("enrpd"))
        .arg("run")
        .arg("--data")
        .arg(lab.path(data))
        .args(["--asap-listen", asap, "--sctp", "off"])
        .args(["--announce-interval-ms", "200ms"])
        .args(extra)
        .env("ENRPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn enrpd");
    let s = serving(&mut child);
    assert!(
        s.line.contains(asap),
        "enrpd serves elsewhere: {:?}",
        s.line
    );
    Running(child)
}

/// `rsp` in `ns` with the certificate `pki/CERT.pem`, discovering registrars on
/// [`GROUP`], with no registrar address.
fn rsp(lab: &Lab, ns: &str, cert: &str) -> Command {
    let mut c = in_ns(ns, &bin("rsp"));
    c.env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_CERT", lab.path(&format!("pki/{cert}.pem")))
        .env_remove("RSP_REGISTRAR")
        .env("RSP_DISCOVER", GROUP);
    c
}

/// Waits for a line of `lines` that contains `what`; the lines seen until then.
fn wait_for(lines: &mpsc::Receiver<String>, what: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = limit.checked_sub(start.elapsed()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(what);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {what:?} within {limit:?}; saw {seen:#?}");
}

#[test]
fn pes_and_pus_without_a_registrar_address_find_the_announced_one_and_refuse_a_forger() {
    // Declared first, dropped last: the processes in the namespaces die before them.
    let mut netns = Netns::new("disc");
    let Some([ns_r, ns_pe, ns_pu, ns_x]) = lan(
        &mut netns,
        "10.78.0",
        [("r", 1), ("pe", 2), ("pu", 3), ("x", 66)],
    ) else {
        return;
    };
    let lab = Lab::new();
    lab.pki(&["issue", "registrar", "disc-1", "--ip", "10.78.0.1"]);
    // The forger: a PE certificate of the trusted domain, run as a registrar's.
    forger_data(&lab, "10.78.0.66", "data-x");
    init(&lab, "pki", "disc-1", "data-r");

    // 1. Only the forger announces.
    let _forger = announcing_registrar(&lab, &ns_x, "data-x", "10.78.0.66:3864");

    // 2. A PE with no registrar address: it hears the forger, tries it, refuses it.
    let mut pe = rsp(&lab, &ns_pe, "pe-echo-1")
        .args(["pe", "--pool", "disc", "--serve", "echo"])
        .args(["--listen", "10.78.0.2:0", "--discover-timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let stderr = BufReader::new(pe.stderr.take().expect("stderr"));
    let stdout = BufReader::new(pe.stdout.take().expect("stdout"));
    let pe = Running(pe);
    let (tx, pe_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[pe] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // "rsp pe: PE 0x… of pool disc serving Echo on ADDR as ID"
    let pe_id = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("0x"))
                .map(str::to_owned)
        })
        .expect("rsp pe prints its PE ID");
    let seen = wait_for(
        &pe_lines,
        "announced registrar 10.78.0.66:3864 refused",
        Duration::from_secs(20),
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("registrar") && l.contains("announced at 10.78.0.66:3864")),
        "the forger's announce was heard: {seen:#?}"
    );
    // The refusal names who answered and what was expected.
    let refusal = seen.last().expect("the refusal");
    assert!(
        refusal.contains("server identity spiffe://acme.test/pe/mallory does not match")
            && refusal.contains("not tried again for 5s"),
        "{refusal}"
    );

    // 3. A PU (resolve) with no registrar address, while only the forger announces: it
    //    refuses it too, and fails with one clear line instead of resolving through it.
    let out = rsp(&lab, &ns_pu, "pu-client-1")
        .args(["resolve", "disc", "--discover-timeout", "3s"])
        .output()
        .expect("rsp resolve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "resolved through the forger: {err}");
    assert!(
        err.contains("announced registrar 10.78.0.66:3864 refused"),
        "the PU's refusal is logged: {err}"
    );
    assert!(err.contains("error: no registrar reachable"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());

    // 4. The real registrar announces: the PE registers there.
    let t = Instant::now();
    let registrar = announcing_registrar(&lab, &ns_r, "data-r", "10.78.0.1:3864");
    let seen = wait_for(&pe_lines, "registered with", Duration::from_secs(20));
    let registered = seen.last().expect("the line");
    assert!(
        registered.contains("registered with 10.78.0.1:3864"),
        "the PE ends on the real registrar: {registered}"
    );
    println!(
        "discovery: the PE registered {} ms after the registrar started announcing",
        t.elapsed().as_millis()
    );

    // 5. A PU with no registrar address resolves the PE through the real registrar,
    //    whether it tries the forger first or not (each run draws the order anew).
    let mut refused_seen = false;
    for _ in 0..4 {
        let out = rsp(&lab, &ns_pu, "pu-client-1")
            .args(["resolve", "disc", "--discover-timeout", "10s"])
            .output()
            .expect("rsp resolve");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "rsp resolve: {stderr}");
        assert!(
            stdout.contains(&format!("PE {pe_id} at 10.78.0.2:")),
            "{stdout}"
        );
        refused_seen |= stderr.contains("announced registrar 10.78.0.66:3864 refused");
    }
    println!("discovery: the PU resolved 4 times (it tried the forger first: {refused_seen})");
    // 6. `rsp pu` with no registrar address: its lines go to the PE and come back.
    let mut pu = rsp(&lab, &ns_pu, "pu-client-1")
        .args(["pu", "disc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pu");
    {
        let mut stdin = pu.stdin.take().expect("stdin");
        for i in 0..3 {
            writeln!(stdin, "line {i}").expect("write");
        }
    }
    let out = pu.wait_with_output().expect("rsp pu");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rsp pu: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 0\nline 1\nline 2\n",
        "{stderr}"
    );

    // 7. The registrar is killed and started again at its address: the PE, which knows
    //    it only from its announces, registers there again within seconds (a registrar
    //    that did not answer is held briefly, not like a refused one).
    drop(registrar);
    let t = Instant::now();
    let lost = wait_for(
        &pe_lines,
        "lost registrar 10.78.0.1:3864",
        Duration::from_secs(20),
    );
    let _registrar = announcing_registrar(&lab, &ns_r, "data-r", "10.78.0.1:3864");
    let seen = wait_for(&pe_lines, "registered with", Duration::from_secs(20));
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("registered with 10.78.0.1:3864")),
        "{seen:#?}"
    );
    println!(
        "discovery: after a registrar restart the PE registered again {} ms after losing it",
        t.elapsed().as_millis()
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The PE never took the forger for its registrar.
    for line in lost.iter().chain(&seen) {
        assert!(!line.contains("registered with 10.78.0.66"), "{line}");
    }
    while let Ok(line) = pe_lines.try_recv() {
        assert!(!line.contains("registered with 10.78.0.66"), "{line}");
    }
    drop(pe);
}

/// One admin API GET at `https://127.0.0.1:8443` in namespace `ns`: the body.
fn admin_get(lab: &Lab, ns: &str, token: &str, path: &str) -> String {
    let out = in_ns(ns, std::path::Path::new("curl"))
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg("--cacert")
        .arg(lab.path("pki/ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://127.0.0.1:8443{path}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Registrars with no --peer find each other from their multicast presences (spec §9.2)
/// and replicate: a PE registered at A is resolved at B. A forger announcing a presence
/// with a PE certificate is dialed, refused by the ENRP handshake's registrar check (the
/// audit at A shows it), and never becomes a peer.
#[test]
fn registrars_without_peers_find_each_other_by_presence_and_refuse_a_forger() {
    let mut netns = Netns::new("discp");
    let Some([ns_a, ns_b, ns_x]) = lan(&mut netns, "10.79.0", [("a", 1), ("b", 2), ("x", 66)])
    else {
        return;
    };
    let lab = Lab::new();
    for (name, ip) in [("disc-a", "10.79.0.1"), ("disc-b", "10.79.0.2")] {
        lab.pki(&[
            "issue",
            "registrar",
            name,
            "--ip",
            ip,
            "--ip",
            "127.0.0.1",
            "--dns",
            "localhost",
        ]);
    }
    let token_a = init(&lab, "pki", "disc-a", "data-a");
    init(&lab, "pki", "disc-b", "data-b");
    forger_data(&lab, "10.79.0.66", "data-x");
    let with = |enrp: &'static str, admin: &'static str| {
        [
            "--enrp-listen",
            enrp,
            "--admin-listen",
            admin,
            "--announce-peers",
            PEER_GROUP,
            "--discover-peers",
            PEER_GROUP,
            "--peer-heartbeat-ms",
            "500",
        ]
    };
    // The forger first: A and B hear it before each other.
    let _forger = enrpd(
        &lab,
        &ns_x,
        "data-x",
        "10.79.0.66:3864",
        &with("10.79.0.66:9902", "off"),
    );
    let _a = enrpd(
        &lab,
        &ns_a,
        "data-a",
        "10.79.0.1:3864",
        &with("10.79.0.1:9902", "127.0.0.1:8443"),
    );
    let _b = enrpd(
        &lab,
        &ns_b,
        "data-b",
        "10.79.0.2:3864",
        &with("10.79.0.2:9902", "off"),
    );

    // A PE registers at A (configured, in A's namespace) ...
    let mut pe = in_ns(&ns_a, &bin("rsp"))
        .env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_CERT", lab.path("pki/pe-echo-1.pem"))
        .env("RSP_REGISTRAR", "10.79.0.1:3864")
        .args([
            "pe",
            "--pool",
            "peers",
            "--serve",
            "echo",
            "--listen",
            "10.79.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rsp pe");
    let mut first = String::new();
    BufReader::new(pe.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("rsp pe reports");
    let _pe = Running(pe);
    let pe_id = first
        .split_whitespace()
        .find(|w| w.starts_with("0x"))
        .expect("a PE ID")
        .to_owned();
    // ... and a PU resolves it at B: B learnt A as a peer from its presence.
    let t = Instant::now();
    let mut last;
    let resolved = loop {
        let out = in_ns(&ns_b, &bin("rsp"))
            .env("RSP_CA", lab.path("pki/ca.pem"))
            .env("RSP_CERT", lab.path("pki/pu-client-1.pem"))
            .env("RSP_REGISTRAR", "10.79.0.2:3864")
            .args(["resolve", "peers"])
            .output()
            .expect("rsp resolve");
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && last.contains(&format!("PE {pe_id} at 10.79.0.1:")) {
            break true;
        }
        if t.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(resolved, "B never learnt the PE registered at A: {last}");
    println!(
        "discovery: a PE registered at A resolved at B {} ms after the PE started (peers from presences only)",
        t.elapsed().as_millis()
    );
    // A's peers: B, not the forger; A's audit: the forger's refused handshake.
    let peers = admin_get(&lab, &ns_a, &token_a, "/v1/peers");
    assert!(
        peers.contains("spiffe://acme.test/registrar/disc-b"),
        "{peers}"
    );
    assert!(
        !peers.contains("mallory"),
        "the forger became a peer: {peers}"
    );
    let audited = (0..20).any(|_| {
        let audit = admin_get(&lab, &ns_a, &token_a, "/v1/audit?limit=500");
        // A dialed the forger's ENRP address (learnt from its presence) and refused
        // its certificate: not a registrar.
        if audit.split("},{").any(|r| {
            r.contains("\"remote\":\"10.79.0.66:9902\"")
                && r.contains(
                    "spiffe://acme.test/pe/mallory does not match the expected registrar identity",
                )
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
        false
    });
    assert!(
        audited,
        "A's audit shows no refused handshake with the forger"
    );
}
