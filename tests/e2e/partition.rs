//! A network partition between real `enrpd`s (issue 7): three registrars, each in its own
//! network namespace, joined by veth pairs to a bridge in a hub namespace. A's link is cut,
//! so A and {B, C} each declare the other side dead and take over its PEs (spec §9.5,
//! §9.8); PEs come and go on both sides; the link is healed, and every registrar must come
//! back to the same handlespace (spec §9.6: checksum mismatch, handle table download) with
//! one home per PE. The time from the heal to agreement is printed.
//!
//! Two rounds: a short partition healed as soon as both sides took over (ownership
//! conflicts at the heal), and a long one (20 s, or `RSP_PARTITION_SECS`) healed after
//! each side dropped the other's PEs. Needs root and `ip` (iproute2); skips with a
//! message otherwise.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    Lab, Netns, Registrar, Serving, admin_token, bin, in_ns, ip, serving, unsupported_netns,
};

/// One registrar of the test: its namespace, address and running `enrpd`.
struct Node {
    name: &'static str,
    ns: String,
    ip: String,
    token: String,
    server_id: u32,
    registrar: Registrar,
}

/// The ENRP and keep-alive timers: a dead peer is found within about a second; a PE taken
/// over waits 5 s (the connection grace = keep-alive timeout) for its re-registration.
const TIMERS: [&str; 14] = [
    "--peer-heartbeat-ms",
    "200",
    "--peer-last-heard-ms",
    "600",
    "--peer-no-response-ms",
    "600",
    "--takeover-expiry-ms",
    "2000",
    "--keep-alive-interval-ms",
    "500",
    "--keep-alive-timeout-ms",
    "5000",
    "--mentor-timeout-ms",
    "5000",
];

/// `enrpd run` for registrar `name` at `ip` in `ns`, ASAP on 3864, ENRP on 9902 and the
/// admin API on 127.0.0.1:8443 of its own namespace, dialing `peers` (ENRP addresses).
fn start_registrar(lab: &Lab, name: &'static str, ns: &str, ip: &str, peers: &[&Node]) -> Node {
    lab.pki(&[
        "issue",
        "registrar",
        name,
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--ip",
        ip,
    ]);
    let data = format!("data-{name}");
    let init = crate::support::run_ok(
        Command::new(bin("enrpd"))
            .arg("init")
            .arg("--pki")
            .arg(lab.path("pki"))
            .args(["--name", name])
            .arg("--data")
            .arg(lab.path(&data)),
    );
    let token = admin_token(&init);
    let mut cmd = in_ns(ns, &bin("enrpd"));
    cmd.arg("run")
        .arg("--data")
        .arg(lab.path(&data))
        .args(["--asap-listen", &format!("{ip}:3864")])
        .args(["--enrp-listen", &format!("{ip}:9902")])
        .args(["--admin-listen", "127.0.0.1:8443"])
        .args(TIMERS)
        .env("ENRPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for p in peers {
        cmd.args(["--peer", &format!("{}:9902", p.ip)]);
    }
    let mut child = cmd.spawn().expect("spawn enrpd");
    let Serving {
        line,
        addrs,
        server_id,
    } = serving(&mut child);
    let server_id = hex(&server_id);
    let (Some(server_id), [addr, admin, _enrp]) = (server_id, &addrs[..]) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("unexpected first line of enrpd: {line:?}");
    };
    Node {
        name,
        ns: ns.to_owned(),
        ip: ip.to_owned(),
        token,
        server_id,
        registrar: Registrar {
            child,
            addr: *addr,
            admin: *admin,
        },
    }
}

/// `0x1a2b3c4d` → its value.
fn hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().strip_prefix("0x")?, 16).ok()
}

/// A running `rsp pe` (killed when dropped) and its PE ID.
struct Pe {
    child: Child,
    id: u32,
}

impl Pe {
    /// SIGTERM: the PE deregisters (spec §7.2) and exits.
    fn deregister(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait for rsp pe");
        assert!(status.success(), "rsp pe exited with {status}");
    }
}

impl Drop for Pe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rsp` in `node`'s namespace with the certificate `pki/CERT.pem`, talking to its
/// registrar.
fn rsp(lab: &Lab, node: &Node, cert: &str) -> Command {
    let mut c = in_ns(&node.ns, &bin("rsp"));
    c.env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_REGISTRAR", node.registrar.addr.to_string())
        .env("RSP_CERT", lab.path(&format!("pki/{cert}.pem")));
    c
}

/// `rsp pe` of pool `part` with a new certificate `pe-NAME`, in `node`'s namespace,
/// serving on its address (the registrar checks that the PE's transport is the address of
/// its connection), once registered.
fn start_pe(lab: &Lab, node: &Node, name: &'static str) -> Pe {
    lab.pki(&["issue", "pe", name]);
    let mut child = rsp(lab, node, &format!("pe-{name}"))
        .args(["pe", "--pool", "part", "--serve", "echo"])
        .args(["--listen", &format!("{}:0", node.ip)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("rsp pe reports");
    // "rsp pe: PE 0x… of pool part serving Echo on ADDR as ID"
    let id = line
        .split_whitespace()
        .find_map(hex)
        .unwrap_or_else(|| panic!("no PE ID in {line:?}"));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("rsp pe reports");
    assert!(line.starts_with("registered with"), "{name}: {line}");
    // Keep reading: a PE whose stderr is closed dies at its next report (EPIPE).
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[pe {name}] {line}");
        }
    });
    Pe { child, id }
}

/// One admin API GET in `node`'s namespace: (status, body); status 0 without an answer.
fn admin_get(lab: &Lab, node: &Node, path: &str) -> (u16, String) {
    let out = in_ns(&node.ns, Path::new("curl"))
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(lab.path("pki/ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {}", node.token)])
        .arg(format!("https://{}{path}", node.registrar.admin))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, status)) if out.status.success() => {
            (status.trim().parse().unwrap_or(0), body.to_owned())
        }
        _ => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The PEs of pool `part` in `node`'s handlespace as (PE ID, home Server ID), from the
/// admin API; empty when the pool is not there.
fn pool_at(lab: &Lab, node: &Node) -> BTreeSet<(u32, u32)> {
    let (status, body) = admin_get(lab, node, "/v1/namespaces/default/pools/part/pool-elements");
    if status == 404 {
        return BTreeSet::new();
    }
    assert_eq!(status, 200, "{}: {body}", node.name);
    let pes: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    pes.as_array()
        .expect("a list")
        .iter()
        .map(|pe| {
            let id = pe["pe_id"].as_str().and_then(hex);
            let home = pe["home_registrar"].as_str().and_then(hex);
            (id.expect("pe_id"), home.expect("home_registrar"))
        })
        .collect()
}

/// `node`'s view of each other node: (name, state, checksum_match).
fn peers_at(lab: &Lab, node: &Node) -> Vec<(String, String, Option<bool>)> {
    let (status, body) = admin_get(lab, node, "/v1/peers");
    assert_eq!(status, 200, "{}: {body}", node.name);
    let peers: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    peers["peers"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            let name = p["identity"]
                .as_str()
                .and_then(|i| i.rsplit('/').next())
                .unwrap_or_default()
                .to_owned();
            let state = p["state"].as_str().unwrap_or_default().to_owned();
            (name, state, p["checksum_match"].as_bool())
        })
        .collect()
}

/// Whether `node` sees each of `others` in `state` (and, if `checksums`, with a matching
/// checksum).
fn sees(lab: &Lab, node: &Node, others: &[&Node], state: &str, checksums: bool) -> bool {
    let peers = peers_at(lab, node);
    others.iter().all(|o| {
        peers
            .iter()
            .any(|(name, s, m)| name == o.name && s == state && (!checksums || *m == Some(true)))
    })
}

/// `rsp resolve part --json` in `node`'s namespace: (PE ID, home Server ID) of every PE.
fn resolve_at(lab: &Lab, node: &Node) -> BTreeSet<(u32, u32)> {
    let out: Output = rsp(lab, node, "pu-client-1")
        .args(["resolve", "part", "--json", "--items", "64"])
        .output()
        .expect("rsp resolve");
    assert!(
        out.status.success(),
        "rsp resolve at {}: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            let id = v["pe_id"].as_u64().and_then(|n| u32::try_from(n).ok());
            let home = v["home"].as_u64().and_then(|n| u32::try_from(n).ok());
            (id.expect("pe_id"), home.expect("home"))
        })
        .collect()
}

/// Polls `done` until it holds; how long that took, `None` after `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether `node` sees every other node active with a matching checksum, and exactly
/// `expected` (PE ID, home) in pool `part`.
fn agrees(lab: &Lab, node: &Node, nodes: &[&Node], expected: &BTreeSet<(u32, u32)>) -> bool {
    let others: Vec<&Node> = nodes
        .iter()
        .copied()
        .filter(|o| o.name != node.name)
        .collect();
    sees(lab, node, &others, "active", true) && pool_at(lab, node) == *expected
}

/// How long after the heal every node saw its peers active again (reconnected), and
/// agreed with the expected handlespace.
struct Convergence {
    reconnected: Duration,
    agreed: Duration,
}

/// Polls every node at once (a thread each, for a finer measure than one node after the
/// other) until each agrees with `expected`; then checks they still all do. The times
/// from `since` until the last one reconnected and agreed, or a panic with every node's
/// view after 60 s.
fn converge(
    lab: &Lab,
    nodes: &[&Node],
    expected: &BTreeSet<(u32, u32)>,
    since: Instant,
) -> Convergence {
    let times: Vec<Option<(Duration, Duration)>> = std::thread::scope(|s| {
        let polls: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let others: Vec<&Node> =
                        nodes.iter().copied().filter(|o| o.name != n.name).collect();
                    let mut reconnected = None;
                    let agreed = wait_until(Duration::from_secs(60), || {
                        if reconnected.is_none() && sees(lab, n, &others, "active", false) {
                            reconnected = Some(since.elapsed());
                        }
                        agrees(lab, n, nodes, expected)
                    })
                    .map(|_| since.elapsed())?;
                    Some((reconnected.unwrap_or(agreed), agreed))
                })
            })
            .collect();
        polls
            .into_iter()
            .map(|p| p.join().expect("poll thread"))
            .collect()
    });
    let all = times.iter().copied().collect::<Option<Vec<_>>>();
    let stable = all.is_some() && nodes.iter().all(|n| agrees(lab, n, nodes, expected));
    match all.filter(|_| stable) {
        Some(t) => Convergence {
            reconnected: t.iter().map(|(r, _)| *r).max().unwrap_or_default(),
            agreed: t.iter().map(|(_, a)| *a).max().unwrap_or_default(),
        },
        None => {
            let views: Vec<String> = nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}: peers {:?}, PEs {}",
                        n.name,
                        peers_at(lab, n),
                        named(&pool_at(lab, n), nodes)
                    )
                })
                .collect();
            panic!(
                "no lasting agreement within 60 s on {}:\n{}",
                named(expected, nodes),
                views.join("\n")
            );
        }
    }
}

/// The (PE ID, home) set of these PEs.
fn homes(pes: &[(&Pe, &Node)]) -> BTreeSet<(u32, u32)> {
    pes.iter().map(|(pe, n)| (pe.id, n.server_id)).collect()
}

/// The expected handlespace, readable in a failure message.
fn named(set: &BTreeSet<(u32, u32)>, nodes: &[&Node]) -> String {
    set.iter()
        .map(|(id, home)| {
            let h = nodes
                .iter()
                .find(|n| n.server_id == *home)
                .map_or_else(|| format!("{home:#010x}"), |n| n.name.to_owned());
            format!("{id:#010x}@{h}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long round 2 keeps A cut off: 20 s, or `RSP_PARTITION_SECS`.
fn long_partition() -> Duration {
    let secs = std::env::var("RSP_PARTITION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// Cuts A's port on the bridge; returns once A declared B and C dead and B and C
/// declared A dead (spec §9.5), with the time that took.
fn cut_a(lab: &Lab, hub: &str, a: &Node, b: &Node, c: &Node) -> Instant {
    ip(&["-n", hub, "link", "set", "link-a", "down"]).expect("cut A's link");
    let cut = Instant::now();
    let split = wait_until(Duration::from_secs(30), || {
        sees(lab, a, &[b, c], "dead", false)
            && sees(lab, b, &[a], "dead", false)
            && sees(lab, c, &[a], "dead", false)
    })
    .expect("both sides declare the other dead within 30 s");
    println!(
        "partition: both sides declared the other dead {} ms after the cut",
        split.as_millis()
    );
    cut
}

/// Heals A's link; the moment it did.
fn heal_a(hub: &str) -> Instant {
    ip(&["-n", hub, "link", "set", "link-a", "up"]).expect("heal A's link");
    Instant::now()
}

#[test]
fn a_partition_heals_to_one_handlespace_with_one_home_per_pe() {
    if let Some(why) = unsupported_netns() {
        println!("SKIPPED partition test: {why} (needs root and iproute2 for network namespaces)");
        return;
    }
    // Declared first, dropped last: the processes in the namespaces die before them.
    let mut netns = Netns::new("part");
    let hub = match netns.add("hub") {
        Ok(h) => h,
        Err(e) => {
            println!("SKIPPED partition test: cannot add a network namespace: {e}");
            return;
        }
    };
    let lab = Lab::new();
    // A bridge in the hub; each registrar's namespace has eth0 = one end of a veth pair
    // whose other end (`link-NAME`) is a port of the bridge.
    let setup = |netns: &mut Netns, name: &str, ip_addr: &str| -> Result<String, String> {
        let ns = netns.add(name)?;
        let port = format!("link-{name}");
        ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    };
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]).expect("bridge");
    ip(&["-n", &hub, "link", "set", "br0", "up"]).expect("bridge up");
    let ns_a = setup(&mut netns, "a", "10.77.0.1").expect("namespace a");
    let ns_b = setup(&mut netns, "b", "10.77.0.2").expect("namespace b");
    let ns_c = setup(&mut netns, "c", "10.77.0.3").expect("namespace c");

    let a = start_registrar(&lab, "a", &ns_a, "10.77.0.1", &[]);
    let b = start_registrar(&lab, "b", &ns_b, "10.77.0.2", &[&a]);
    let c = start_registrar(&lab, "c", &ns_c, "10.77.0.3", &[&a, &b]);
    let nodes = [&a, &b, &c];

    // Before: two PEs at A, one at B, one at C, known everywhere.
    let a1 = start_pe(&lab, &a, "a1");
    let a2 = start_pe(&lab, &a, "a2");
    let b1 = start_pe(&lab, &b, "b1");
    let c1 = start_pe(&lab, &c, "c1");
    let before = homes(&[(&a1, &a), (&a2, &a), (&b1, &b), (&c1, &c)]);
    converge(&lab, &nodes, &before, Instant::now());

    // Round 1, a short partition: healed as soon as both sides took over the other's PEs
    // (spec §9.8), so at the heal A and one of B and C each own the other side's PEs
    // (waiting for their re-registration): ownership conflicts to resolve.
    let cut = cut_a(&lab, &hub, &a, &b, &c);
    let took_over = wait_until(Duration::from_secs(30), || {
        let at_a = pool_at(&lab, &a);
        let at_b = pool_at(&lab, &b);
        // A is home of B's and C's PEs; one of B and C is home of A's.
        at_a.iter().all(|(_, home)| *home == a.server_id)
            && [a1.id, a2.id]
                .iter()
                .all(|id| at_b.iter().any(|(p, h)| p == id && *h != a.server_id))
    });
    assert!(
        took_over.is_some(),
        "no takeover on both sides: A {}, B {}",
        named(&pool_at(&lab, &a), &nodes),
        named(&pool_at(&lab, &b), &nodes)
    );
    // While partitioned, PEs change on both sides: A loses a2 and gains a3, B gains b2,
    // C loses c1 and gains c2.
    a2.deregister();
    let a3 = start_pe(&lab, &a, "a3");
    let b2 = start_pe(&lab, &b, "b2");
    c1.deregister();
    let c2 = start_pe(&lab, &c, "c2");
    let healed = heal_a(&hub);
    // Every registrar agrees on the PEs alive and registered, each with the registrar it
    // is registered with as its home; a2 and c1, still owned by the side that took them
    // over, must not come back.
    let after = homes(&[(&a1, &a), (&a3, &a), (&b1, &b), (&b2, &b), (&c2, &c)]);
    let t = converge(&lab, &nodes, &after, healed);
    println!(
        "round 1 (healed right after the takeovers, partition {} ms): peers active again \
         {} ms and all three agree (checksums match, same PEs, same homes) {} ms after the heal",
        healed.duration_since(cut).as_millis(),
        t.reconnected.as_millis(),
        t.agreed.as_millis()
    );

    // Round 2, a long partition: each side has dropped the other's PEs (their grace
    // period passed without a re-registration) before the heal.
    let cut = cut_a(&lab, &hub, &a, &b, &c);
    let side_a = homes(&[(&a1, &a), (&a3, &a)]);
    let side_bc = homes(&[(&b1, &b), (&b2, &b), (&c2, &c)]);
    let apart = wait_until(Duration::from_secs(30), || {
        pool_at(&lab, &a) == side_a && pool_at(&lab, &b) == side_bc && pool_at(&lab, &c) == side_bc
    });
    assert!(
        apart.is_some(),
        "the sides never dropped each other's PEs: A {}, B {}, C {}",
        named(&pool_at(&lab, &a), &nodes),
        named(&pool_at(&lab, &b), &nodes),
        named(&pool_at(&lab, &c), &nodes)
    );
    a1.deregister();
    let a4 = start_pe(&lab, &a, "a4");
    b2.deregister();
    let c3 = start_pe(&lab, &c, "c3");
    // Long enough for TCP's SYN retransmissions of a dial started at the cut to back off
    // (1, 3, 7, 15 s after it): the redial must not wait for the next one.
    if let Some(rest) = long_partition().checked_sub(cut.elapsed()) {
        std::thread::sleep(rest);
    }
    let healed = heal_a(&hub);
    let after = homes(&[(&a3, &a), (&a4, &a), (&b1, &b), (&c2, &c), (&c3, &c)]);
    let t = converge(&lab, &nodes, &after, healed);
    println!(
        "round 2 (a long partition: the sides dropped each other's PEs, {} ms): peers \
         active again {} ms and all three agree {} ms after the heal",
        healed.duration_since(cut).as_millis(),
        t.reconnected.as_millis(),
        t.agreed.as_millis()
    );
    // PUs in every namespace resolve exactly that set, with the same homes.
    for n in nodes {
        assert_eq!(
            resolve_at(&lab, n),
            after,
            "resolution at {} (expected {})",
            n.name,
            named(&after, &nodes)
        );
    }
    drop((a3, a4, b1, c2, c3));
}
