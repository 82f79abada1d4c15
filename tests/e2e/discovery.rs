//! Multicast discovery of registrars (issue 23 item 4, spec §7.7, D-5): PEs and PUs
//! started with `--discover` and no registrar address find the registrar that `enrpd run
//! --announce` announces, and ignore a forged announcer.
//!
//! Four network namespaces joined by veth pairs to a bridge in a fifth (multicast works
//! on veth; each namespace routes 224.0.0.0/4 to its link): the real registrar, a PE, a
//! PU, and the forger. The forger is a real `enrpd` that announces itself on the same
//! group but presents a PE certificate of the trusted domain (a valid identity, not a
//! registrar's), so an announce that leads to it costs one refused handshake, logged, and
//! it never becomes anyone's registrar. It announces first, alone: the PE and the PU must
//! try it and refuse it; then the real registrar starts, and they end there.
//! Needs root and `ip` (iproute2); skips with a message otherwise.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Lab, Netns, bin, in_ns, ip, run_ok, serving, unsupported_netns};

const GROUP: &str = "239.0.0.50:3863";

/// A child process killed when dropped (also on a panic).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `enrpd init` of the PKI directory `pki` (its only registrar certificate) into `data`.
fn init(lab: &Lab, pki: &str, data: &str) {
    run_ok(
        Command::new(bin("enrpd"))
            .arg("init")
            .arg("--pki")
            .arg(lab.path(pki))
            .arg("--data")
            .arg(lab.path(data)),
    );
}

/// `enrpd run` on `data` in `ns`, ASAP at `asap`, announcing itself on [`GROUP`] every
/// 200 ms; once it serves.
fn announcing_registrar(lab: &Lab, ns: &str, data: &str, asap: &str) -> Running {
    let mut child = in_ns(ns, &bin("enrpd"))
        .arg("run")
        .arg("--data")
        .arg(lab.path(data))
        .args(["--asap-listen", asap, "--enrp-listen", "off"])
        .args(["--admin-listen", "off", "--sctp", "off"])
        .args(["--announce", GROUP, "--announce-interval-ms", "200ms"])
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
    if let Some(why) = unsupported_netns() {
        println!("SKIPPED discovery test: {why} (needs root and iproute2 for network namespaces)");
        return;
    }
    // Declared first, dropped last: the processes in the namespaces die before them.
    let mut netns = Netns::new("disc");
    let hub = match netns.add("hub") {
        Ok(h) => h,
        Err(e) => {
            println!("SKIPPED discovery test: cannot add a network namespace: {e}");
            return;
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
    let mut node = |name: &str, addr: &str| -> String {
        let ns = netns.add(name).expect("namespace");
        let port = format!("link-{name}");
        ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .expect("veth");
        ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]).expect("port");
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])
        .expect("addr");
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).expect("up");
        ip(&["-n", &ns, "link", "set", "lo", "up"]).expect("lo");
        // Multicast leaves (and is joined) on the link.
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]).expect("route");
        ns
    };
    let ns_r = node("r", "10.78.0.1");
    let ns_pe = node("pe", "10.78.0.2");
    let ns_pu = node("pu", "10.78.0.3");
    let ns_x = node("x", "10.78.0.66");

    let lab = Lab::new();
    lab.pki(&["issue", "registrar", "disc-1", "--ip", "10.78.0.1"]);
    // The forger: a PE certificate of the trusted domain, run as a registrar's.
    lab.pki(&["issue", "pe", "mallory", "--ip", "10.78.0.66"]);
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
    init(&lab, "forged", "data-x");
    // The real registrar's data directory: the PKI has two registrar certificates.
    run_ok(
        Command::new(bin("enrpd"))
            .arg("init")
            .arg("--pki")
            .arg(lab.path("pki"))
            .args(["--name", "disc-1"])
            .arg("--data")
            .arg(lab.path("data-r")),
    );

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
    let _registrar = announcing_registrar(&lab, &ns_r, "data-r", "10.78.0.1:3864");
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
    // The PE never took the forger for its registrar.
    while let Ok(line) = pe_lines.try_recv() {
        assert!(!line.contains("registered with 10.78.0.66"), "{line}");
    }
    drop(pe);
}
