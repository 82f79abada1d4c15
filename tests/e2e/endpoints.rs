//! `rsp pe`, `rsp resolve` and `rsp pu` against a real `enrpd` (first slice of issue 5).

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Lab, bin};

struct Pe(Child);

impl Drop for Pe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rsp(lab: &Lab, registrar: std::net::SocketAddr, cert: &str) -> Command {
    let mut c = Command::new(bin("rsp"));
    c.env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_REGISTRAR", registrar.to_string())
        .env("RSP_CERT", lab.path(&format!("pki/{cert}.pem")));
    c
}

fn start_pe(lab: &Lab, registrar: std::net::SocketAddr, cert: &str) -> Pe {
    start_pe_in(lab, registrar, cert, "echo", "rr")
}

fn start_pe_in(
    lab: &Lab,
    registrar: std::net::SocketAddr,
    cert: &str,
    pool: &str,
    policy: &str,
) -> Pe {
    let mut child = rsp(lab, registrar, cert)
        .args(["pe", "--pool", pool, "--serve", "echo", "--policy", policy])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("rsp pe reports");
    assert!(line.starts_with("registered with"), "{line}");
    Pe(child)
}

fn resolve(lab: &Lab, registrar: std::net::SocketAddr) -> Vec<String> {
    let out = rsp(lab, registrar, "pu-client-1")
        .args(["resolve", "echo", "--json"])
        .output()
        .expect("rsp resolve");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn pes_register_and_a_pu_fails_over_when_one_dies() {
    let lab = Lab::new();
    lab.init_registrar();
    // Short timers, with room for a loaded machine: PEs answer within a second.
    let registrar = lab.start_registrar_with(300, 1000);
    let mut pe1 = start_pe(&lab, registrar.addr, "pe-echo-1");
    let _pe2 = start_pe(&lab, registrar.addr, "pe-echo-2");

    let pes = resolve(&lab, registrar.addr);
    assert_eq!(pes.len(), 2, "{pes:?}");
    assert!(
        pes.iter()
            .any(|p| p.contains("spiffe://acme.test/pe/echo-1"))
    );
    assert!(pes.iter().all(|p| p.contains("\"policy\":\"rr\"")));

    // Both PEs answer keep-alives: still registered after several keep-alive timeouts.
    std::thread::sleep(Duration::from_millis(1500));
    let order = resolve(&lab, registrar.addr);
    assert_eq!(order.len(), 2);
    // With the whole pool in each answer, round robin keeps this order next time too.
    let dead_first = order[0].contains("echo-1");

    // One PE is killed; a PU sent to it reports it and fails over to the other.
    let _ = pe1.0.kill();
    let _ = pe1.0.wait();
    let started = Instant::now();
    let mut pu = rsp(&lab, registrar.addr, "pu-client-1")
        .args(["pu", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pu");
    {
        let mut stdin = pu.stdin.take().expect("stdin");
        for i in 0..4 {
            writeln!(stdin, "line {i}").expect("write");
        }
    }
    let out = pu.wait_with_output().expect("rsp pu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 0\nline 1\nline 2\nline 3\n",
        "every line answered despite the dead PE"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if dead_first {
        assert!(stderr.contains("failing over"), "{stderr}");
    }

    // The registrar removes the dead PE (connection loss + grace of one keep-alive
    // timeout, 1 s here).
    std::thread::sleep(Duration::from_millis(2000));
    let pes = resolve(&lab, registrar.addr);
    assert_eq!(pes.len(), 1, "{pes:?}");
    assert!(pes[0].contains("echo-2"));
}

/// One line through the gateway over plain TCP, as `nc` would send it.
fn through_gateway(addr: std::net::SocketAddr, line: &str) -> std::io::Result<String> {
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(tcp, "{line}")?;
    let mut answer = String::new();
    BufReader::new(tcp).read_line(&mut answer)?;
    Ok(answer)
}

#[test]
fn a_plain_tcp_client_reaches_the_pool_through_the_gateway_and_fails_over() {
    let lab = Lab::new();
    lab.pki(&["issue", "gateway", "gw-1"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let mut pe1 = start_pe(&lab, registrar.addr, "pe-echo-1");
    let _pe2 = start_pe(&lab, registrar.addr, "pe-echo-2");
    let mut gw = rsp(&lab, registrar.addr, "gateway-gw-1")
        .args(["gateway", "--listen", "127.0.0.1:0", "--pool", "echo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rsp gateway");
    let mut line = String::new();
    BufReader::new(gw.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the gateway reports its address");
    let gw = Pe(gw); // killed on drop
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    for i in 0..4 {
        assert_eq!(
            through_gateway(addr, &format!("hello {i}")).expect("answer"),
            format!("hello {i}\n")
        );
    }
    // One PE dies: every client is still served, by the other.
    let _ = pe1.0.kill();
    let _ = pe1.0.wait();
    for i in 0..4 {
        assert_eq!(
            through_gateway(addr, &format!("again {i}")).expect("answer"),
            format!("again {i}\n")
        );
    }
    drop(gw);
}

/// The PE IDs of `n` one-PE resolutions of `pool`, counted by PE.
fn spread(lab: &Lab, registrar: std::net::SocketAddr, pool: &str, n: usize) -> Vec<usize> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let out = rsp(lab, registrar, "pu-client-1")
            .args(["resolve", pool, "--items", "1", "--json"])
            .output()
            .expect("rsp resolve");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = text
            .split("\"pe_id\":")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("no PE in {text:?}"))
            .to_owned();
        *counts.entry(id).or_default() += 1;
    }
    let mut v: Vec<usize> = counts.into_values().collect();
    v.sort_unstable();
    v
}

#[test]
fn round_robin_spreads_evenly_and_weighted_round_robin_by_weight() {
    // Issue 5: three PEs, round robin, 30 requests spread 10/10/10; weighted round robin
    // 1:2 spreads in that ratio. Each request is a resolution of one PE (spec §7.3: the
    // registrar advances the cycle by the PEs it returns).
    let lab = Lab::new();
    lab.pki(&["issue", "pe", "echo-3"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with(1000, 2000);
    let _rr: Vec<Pe> = ["pe-echo-1", "pe-echo-2", "pe-echo-3"]
        .iter()
        .map(|c| start_pe_in(&lab, registrar.addr, c, "rr", "rr"))
        .collect();
    assert_eq!(spread(&lab, registrar.addr, "rr", 30), [10, 10, 10]);
    let _wrr = [
        start_pe_in(&lab, registrar.addr, "pe-echo-1", "wrr", "wrr:1"),
        start_pe_in(&lab, registrar.addr, "pe-echo-2", "wrr", "wrr:2"),
    ];
    assert_eq!(spread(&lab, registrar.addr, "wrr", 30), [10, 20]);
}
