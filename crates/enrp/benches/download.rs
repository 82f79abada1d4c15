//! A registrar started later learns the whole handlespace from its mentor (issue 7,
//! spec §9.3, §9.7): `cargo bench -p enrp --bench download [-- --pes 10000,100000]`.
//!
//! Everything is real, as in `benches/registrar.rs`: each registrar is started by
//! `enrpd init` and [`enrp::run_with`] in a **child process** (this binary re-executed
//! with [`CHILD_ARG`], started as `enrpd run` starts it), with its own SQLite store (WAL, `synchronous=FULL`) and audit
//! log, mutual TLS 1.3 over loopback with certificates from `trust::testing`.
//!
//! 1. Registrar A starts alone; PEs register with it over ASAP, 1,000 per connection and
//!    identity, ten per pool (100,000 PEs in 10,000 pools), each acknowledged after its
//!    audit record committed. Their keep-alive interval is long (10 min), so the PE
//!    connections stay idle and every PE stays registered during the run.
//! 2. Registrar B starts with `--peer A` (a fresh data directory and identity each run).
//!    It dials A, takes A as its mentor and downloads A's handle table (W=0), 128 PEs or
//!    16 KiB per page (the defaults), serving nothing meanwhile. B itself times it: from
//!    just before the daemon starts (the last step of `enrp::run_with`) until its readiness (what `/readyz` answers) turns
//!    true, then counts its PEs, which must equal A's. The mentor timeout is 10 min, so
//!    readiness can only come from a finished download.
//!
//! Run without `--bench` (`cargo test --benches`) it does a smoke run of a few seconds
//! with 600 PEs (five pages), so that the code keeps working.

// A benchmark measures wall time: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

mod support;

use support::{CHILD_ARG, PES_PER_CONN, Pki, init_registrar};
use testkit::child::{commands, read_line};
use testkit::msg::registration;
use testkit::proc::Proc;

use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::wire::AsapMsg;
use asap::wire::param::PoolHandle;
use enrp::config::{Listen, Millis};

/// PEs per pool: 100,000 PEs make 10,000 pools, the default limit per namespace.
const PES_PER_POOL: usize = 10;
/// Registrations a connection keeps in flight.
const REGISTRATION_WINDOW: u32 = 64;
/// Keep-alive interval and timeout, mentor timeout, idle timeout: longer than any run.
const LONG: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Options {
    /// PE counts to download.
    pes: Vec<usize>,
    /// Downloads per PE count (each by a fresh registrar B).
    runs: usize,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let full = args.iter().any(|a| a == "--bench");
        let mut o = if full {
            Self {
                pes: vec![10_000, 100_000],
                runs: 3,
            }
        } else {
            Self {
                pes: vec![600],
                runs: 1,
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--pes" => {
                    o.pes = it
                        .next()
                        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                        .unwrap_or_default();
                }
                "--runs" => {
                    if let Some(n) = it.next().and_then(|v| v.parse().ok()) {
                        o.runs = n;
                    }
                }
                _ => {} // `--bench` and test-harness flags
            }
        }
        o
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_ARG) {
        child_main(&args[1..]);
        return;
    }
    let opts = Options::parse(&args);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = Pki::new();
    let mut results = Vec::new();
    for &pes in &opts.pes {
        results.push(rt.block_on(download(&pki, pes, opts.runs)));
    }
    print_table(&results);
}

// ---------------------------------------------------------------------------------------
// The registrar processes

/// The child: `CHILD_ARG NAME PKI_DIR DATA_DIR [PEER]`. Starts the daemon as `enrpd run`
/// does, with ENRP on a loopback port and `PEER` (`HOST:PORT`) as its one configured
/// peer, and prints `listening ASAP ENRP`. With a peer it then waits for readiness (the
/// end of its start-up, spec §9.3) and prints `ready MILLISECONDS PES CPU_MILLISECONDS`,
/// timed from just before the daemon started. It answers `count` with `count PES`, and
/// `stop` (or the end of its input) with a shutdown.
fn child_main(args: &[String]) {
    let (name, pki, data, peer) = match args {
        [n, p, d] => (n, p, d, None),
        [n, p, d, peer] => (n, p, d, Some(peer.clone())),
        _ => panic!("usage: {CHILD_ARG} NAME PKI_DIR DATA_DIR [PEER]"),
    };
    // `enrpd` uses `Runtime::new()`: one worker per core.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(serve_registrar(
        name,
        Path::new(pki),
        &PathBuf::from(data),
        peer,
    ));
}

async fn serve_registrar(name: &str, pki: &Path, data: &Path, peer: Option<String>) {
    let mut config = init_registrar(pki, name, data).await;
    config.enrp_listen = Listen(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
    config.keep_alive_interval_ms = Millis(LONG);
    config.keep_alive_timeout_ms = Millis(LONG);
    config.mentor_timeout_ms = Millis(LONG);
    config.peers = peer.into_iter().collect();
    let with_peer = !config.peers.is_empty();
    // Set by the hook, which runs just before the daemon starts: the data directory's
    // loading is not the download's.
    let mut t0 = None;
    let running = enrp::run_with(config, |settings| {
        settings.registrar.rng_seed = 1;
        settings.idle_timeout = LONG; // the PE connections are idle once registered
        // Its clients load the registrar on purpose: no per-client limits.
        settings.lift_client_limits();
        t0 = Some(Instant::now());
    })
    .await
    .expect("registrar");
    let t0 = t0.expect("the hook ran");
    let control = running.control_plane().control().clone();
    println!(
        "listening {} {}",
        running.asap_addr(),
        running.enrp_addr().expect("ENRP listener")
    );
    if with_peer {
        // What `/readyz` answers, read without the HTTP round trip.
        while !control.ready() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = t0.elapsed();
        let pes = control.snapshot().await.pool_elements;
        println!(
            "ready {:.1} {pes} {:.0}",
            elapsed.as_secs_f64() * 1e3,
            Proc::this().cpu().as_secs_f64() * 1e3
        );
    }
    let mut commands = commands();
    while let Some(command) = commands.recv().await {
        match command.trim() {
            "count" => println!("count {}", control.snapshot().await.pool_elements),
            "stop" => break,
            _ => {}
        }
    }
    running.shutdown().await.expect("shutdown");
}

/// A registrar child as the parent sees it.
struct Registrar {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    asap: SocketAddr,
    enrp: SocketAddr,
    _data: tempfile::TempDir,
}

impl Registrar {
    fn start(pki: &Pki, name: &str, peer: Option<SocketAddr>) -> Self {
        pki.registrar(name);
        let data = tempfile::tempdir().expect("data dir");
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.arg(CHILD_ARG)
            .arg(name)
            .arg(pki.dir.path())
            .arg(data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(p) = peer {
            cmd.arg(p.to_string());
        }
        let mut child = cmd.spawn().expect("spawn a registrar");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let line = read_line(&mut stdout);
        let addrs: Vec<SocketAddr> = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("registrar said {line:?}"))
            .split_whitespace()
            .filter_map(|a| a.parse().ok())
            .collect();
        let [asap, enrp] = addrs[..] else {
            panic!("registrar said {line:?}");
        };
        Self {
            child,
            stdin,
            stdout,
            asap,
            enrp,
            _data: data,
        }
    }

    fn cpu(&self) -> Duration {
        Proc(self.child.id()).cpu()
    }

    /// PEs in its handlespace.
    fn count(&mut self) -> u64 {
        writeln!(self.stdin, "count").expect("registrar stdin");
        let line = read_line(&mut self.stdout);
        line.strip_prefix("count ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("registrar said {line:?}"))
    }

    /// Waits for `ready MS PES CPU_MS` (a registrar started with a peer).
    fn ready(&mut self) -> (Duration, u64, Duration) {
        let line = read_line(&mut self.stdout);
        let f: Vec<f64> = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("registrar said {line:?}"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [ms, pes, cpu_ms] = f[..] else {
            panic!("registrar said {line:?}");
        };
        (
            Duration::from_secs_f64(ms / 1e3),
            pes as u64,
            Duration::from_secs_f64(cpu_ms / 1e3),
        )
    }

    fn stop(mut self) {
        writeln!(self.stdin, "stop").expect("registrar stdin");
        let status = self.child.wait().expect("wait for the registrar");
        assert!(status.success(), "registrar exited with {status}");
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        // After `stop` the child has exited: this only reaps a registrar left by a panic.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// PEs

/// The pool of PE `n` (1-based): PEs 1, 1+pools, 1+2·pools, … share a pool.
fn pool_of(n: usize, pools: usize) -> PoolHandle {
    PoolHandle::new(format!("pool-{:05}", (n - 1) % pools)).expect("pool handle")
}

/// Registers PEs `first..first+count` on `conn` with [`REGISTRATION_WINDOW`] in flight;
/// returns the connection, which keeps them registered while it is open.
async fn register_all(
    mut conn: Connection,
    first: usize,
    count: usize,
    pools: usize,
) -> Connection {
    let ip = conn.local_addr().ip();
    let count = u32::try_from(count).expect("small");
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < count {
        while sent < count && sent - acked < REGISTRATION_WINDOW {
            let n = first + sent as usize;
            let id = u32::try_from(n).expect("PE ID fits");
            conn.send(&registration(&pool_of(n, pools), id, ip))
                .await
                .expect("send registration");
            sent += 1;
        }
        match conn.recv().await.expect("registration response") {
            AsapMsg::RegistrationResponse { reject: false, .. } => acked += 1,
            AsapMsg::RegistrationResponse { .. } => panic!("registration refused"),
            _ => {} // no keep-alive is due within the run (LONG)
        }
    }
    conn
}

// ---------------------------------------------------------------------------------------
// The measurement

struct Download {
    pes: usize,
    pools: usize,
    /// Registering the PEs with A.
    setup: Duration,
    /// B's start until its readiness, per run, sorted.
    times: Vec<Duration>,
    /// B's CPU time until ready, and A's CPU time during the download, of the median run.
    cpu_b: Duration,
    cpu_a: Duration,
}

async fn download(pki: &Pki, pes: usize, runs: usize) -> Download {
    let pools = pes.div_ceil(PES_PER_POOL);
    let mut a = Registrar::start(pki, "a", None);
    let t0 = Instant::now();
    let conns = pes.div_ceil(PES_PER_CONN);
    let asap = a.asap;
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let store = pki.client(&format!("pe/dl-{c}"));
            let first = c * PES_PER_CONN + 1;
            let count = PES_PER_CONN.min(pes - c * PES_PER_CONN);
            tokio::spawn(async move {
                let conn = Connection::connect(&store, asap).await.expect("connect PE");
                register_all(conn, first, count, pools).await
            })
        })
        .collect();
    let mut held = Vec::with_capacity(conns);
    for t in tasks {
        held.push(
            t.await
                .expect("a PE connection failed (see its panic above)"),
        );
    }
    let setup = t0.elapsed();
    assert_eq!(a.count(), pes as u64, "A holds every PE");
    let mut samples = Vec::new();
    for run in 0..runs {
        let cpu_a0 = a.cpu();
        let mut b = Registrar::start(pki, &format!("b{pes}-{run}"), Some(a.enrp));
        let (time, got, cpu_b) = b.ready();
        let cpu_a = a.cpu() - cpu_a0;
        assert_eq!(got, pes as u64, "B learnt every PE from its mentor");
        b.stop();
        samples.push((time, cpu_b, cpu_a));
    }
    samples.sort_by_key(|s| s.0);
    let (_, cpu_b, cpu_a) = samples[samples.len() / 2];
    drop(held);
    a.stop();
    Download {
        pes,
        pools,
        setup,
        times: samples.iter().map(|s| s.0).collect(),
        cpu_b,
        cpu_a,
    }
}

fn print_table(results: &[Download]) {
    println!(
        "## Mentor download: a registrar started later learns the handlespace ({} cores; \
         each registrar a child process; SQLite WAL synchronous=FULL; mutual TLS 1.3 over \
         loopback; 128 PEs / 16 KiB per page)\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "| PEs | pools | pages (≥) | register with A | download: min | median | max | CPU of B | CPU of A |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let t = &r.times;
        println!(
            "| {} | {} | {} | {:.1} s | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            r.pes,
            r.pools,
            r.pes.div_ceil(128),
            r.setup.as_secs_f64(),
            ms(t[0]),
            ms(t[t.len() / 2]),
            ms(t[t.len() - 1]),
            ms(r.cpu_b),
            ms(r.cpu_a),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
