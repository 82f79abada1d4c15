//! rsp against RSPLIB, the reference implementation (issue 9, "Against RSPLIB in the
//! guest"): `enrpd`'s legacy plain-SCTP ASAP listener and RSPLIB's `rspregistrar` under the
//! same resolution and registration load, each measure on both back to back, in one run.
//!
//! Needs kernel SCTP and RSPLIB, so it runs in the qemu guest:
//! `ci/sctp-lab/test bench -p enrp --bench rsplib` (add `-- --secs 5 --rounds 3`).
//! Elsewhere it says why and does nothing. Under TCG emulation absolute figures mean
//! little; the ratio is what counts.
//!
//! Both registrars get the same clients: plain ASAP over SCTP (PPID 11, one message per
//! SCTP message) from `asap::client::Connection` with `insecure_legacy`, all from
//! 192.0.2.1 (RSPLIB refuses loopback addresses in PE registrations):
//! - **resolutions**: `--conc` PUs each resolve a pool of 10 PEs in a closed loop;
//!   rsp audits each one (batched);
//! - **registrations**: `--conc` PEs each re-register 50 PE IDs in turn (closed loop); rsp
//!   acknowledges a PE's first registration only after its audit record is durable
//!   (SQLite, synchronous=FULL; in the guest the data directory is on tmpfs, so fsync is
//!   cheap), and the unchanged ones after from the connection, audited in aggregate.
//!
//! `--only resolutions` (or `registrations`) runs one measure. `RSPLIB_BENCH_WRAP` runs
//! both registrars under a command, e.g. `valgrind --tool=callgrind
//! --callgrind-out-file=/tmp/cg.%p` for each one's instructions per operation, which the
//! guest's clock is too noisy to compare (docs/BENCHMARKS.md, "Commands").
//!
//! The rsp registrar runs in a child process (this binary re-executed with
//! [`CHILD_ARG`]) so that `/proc` gives each registrar's own CPU time.

// A benchmark measures wall time: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

/// The registrar child runs as `enrpd` runs, with mimalloc (crates/enrpd/src/main.rs);
/// with glibc's allocator its malloc and free were ~9 % of its CPU in the guest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The shared bench module; this bench uses its child protocol and start-up only.
#[allow(dead_code)]
mod support;

use support::{CHILD_ARG, Pki, init_registrar};
use testkit::child::read_line;
use testkit::proc::Proc;

use std::io::BufReader;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asap::addr::{Endpoint, TransportAddr};
use asap::client::Connection;
use asap::wire::AsapMsg;
use asap::wire::param::{
    Address, PeId, Policy, PoolElement, PoolHandle, SctpAddresses, Transport, TransportUse,
};
use trust::testing::TestCa;

/// The documentation address the guest has on `lo`; RSPLIB needs a non-loopback one.
const DOC_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RSP_PORT: u16 = 3863;
const RSPLIB_PORT: u16 = 3873;
/// PE IDs each registering client cycles through.
const IDS_PER_CLIENT: u32 = 50;

struct Opts {
    secs: u64,
    rounds: usize,
    conc: usize,
    /// `--only resolutions` or `--only registrations`: the other measure is skipped (a
    /// profiler's run, e.g. under `RSPLIB_BENCH_WRAP`, then counts one kind).
    only: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_ARG) {
        child_main(&args[1..]);
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not: a smoke run then.
    let bench = args.iter().any(|a| a == "--bench");
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let opts = Opts {
        secs: flag("--secs", if bench { 5 } else { 1 }),
        rounds: flag("--rounds", if bench { 3 } else { 1 }) as usize,
        conc: flag("--conc", 16) as usize,
        only: args
            .iter()
            .position(|a| a == "--only")
            .map(|i| args.get(i + 1).cloned().unwrap_or_default()),
    };
    if let Some(only) = opts.only.as_deref()
        && !["resolutions", "registrations"].contains(&only)
    {
        eprintln!("--only takes `resolutions` or `registrations`, not {only:?}");
        std::process::exit(2);
    }
    let measures = |name: &str| opts.only.as_deref().is_none_or(|o| o == name);
    if !asap::transport::sctp::available() {
        println!("skipped: {}", asap::transport::sctp::UNAVAILABLE);
        return;
    }
    if std::net::UdpSocket::bind((DOC_ADDR, 0)).is_err() {
        println!("skipped: {DOC_ADDR} is not on lo (run it in the guest: ci/sctp-lab)");
        return;
    }
    if Command::new("rspregistrar").arg("-help").output().is_err() {
        println!("skipped: rspregistrar is not installed (apt install rsplib-registrar)");
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let rsp = Server::rsp(data.path());
    let rsplib = Server::rsplib();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut results: Vec<(&str, Vec<Rates>)> = vec![
        ("rsp (enrpd legacy listener)", Vec::new()),
        ("RSPLIB rspregistrar", Vec::new()),
    ];
    rt.block_on(async {
        // A pool of 10 PEs at each, kept registered for the resolutions.
        let _pools = [populate(rsp.addr).await, populate(rsplib.addr).await];
        // Each measure runs on both registrars back to back, the one that goes first
        // alternating by round: the machine (a shared host under emulation) drifts by
        // the second, and a ratio of phases run minutes apart, or always in the same
        // order, carried that drift (issue 20).
        let servers = [&rsp, &rsplib];
        for round in 0..opts.rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut rates = [Rates::default(); 2];
            for i in order.into_iter().filter(|_| measures("resolutions")) {
                let cpu0 = servers[i].cpu();
                let (res, res_p) = resolutions(servers[i].addr, &opts).await;
                let cpu = (servers[i].cpu() - cpu0) * 1e6;
                rates[i].resolutions = res;
                rates[i].res_p50_p99 = res_p;
                rates[i].res_cpu_us = cpu / (res * opts.secs as f64).max(1.0);
            }
            for i in order.into_iter().filter(|_| measures("registrations")) {
                let cpu0 = servers[i].cpu();
                let (reg, reg_p) = registrations(servers[i].addr, &opts, round).await;
                let cpu = (servers[i].cpu() - cpu0) * 1e6;
                rates[i].registrations = reg;
                rates[i].reg_p50_p99 = reg_p;
                rates[i].reg_cpu_us = cpu / (reg * opts.secs as f64).max(1.0);
            }
            for (i, r) in rates.into_iter().enumerate() {
                results[i].1.push(r);
            }
        }
    });
    println!(
        "\n### rsp vs RSPLIB (guest, plain ASAP over SCTP, {} clients, {} s x {} rounds, median round)\n",
        opts.conc, opts.secs, opts.rounds
    );
    println!(
        "| registrar | resolutions/s | p50 / p99 ms | server CPU µs/res | registrations/s | p50 / p99 ms | server CPU µs/reg |"
    );
    println!("|---|---:|---|---:|---:|---|---:|");
    let mut medians = Vec::new();
    for (name, rounds) in &results {
        let m = Rates::median(rounds);
        println!(
            "| {name} | {:.0} | {:.2} / {:.2} | {:.0} | {:.0} | {:.2} / {:.2} | {:.0} |",
            m.resolutions,
            m.res_p50_p99.0,
            m.res_p50_p99.1,
            m.res_cpu_us,
            m.registrations,
            m.reg_p50_p99.0,
            m.reg_p50_p99.1,
            m.reg_cpu_us
        );
        medians.push(m);
    }
    println!(
        "\nrsp / RSPLIB: resolutions {:.2}x, registrations {:.2}x (target >= 3x)",
        medians[0].resolutions / medians[1].resolutions.max(1e-9),
        medians[0].registrations / medians[1].registrations.max(1e-9)
    );
    // Issue 20's measure: CPU per operation, each round's rsp against the same round's
    // RSPLIB (each measure ran on both back to back, so a slower machine slows both).
    let ratios = |cpu: fn(&Rates) -> f64| -> Vec<f64> {
        results[0]
            .1
            .iter()
            .zip(&results[1].1)
            .map(|(rsp, rsplib)| cpu(rsp) / cpu(rsplib).max(1e-9))
            .collect()
    };
    let show = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        let each: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
        format!(
            "{} (median {:.2})",
            each.join(", "),
            sorted[sorted.len() / 2]
        )
    };
    println!(
        "CPU per operation, rsp / RSPLIB, by round: resolutions {}; registrations {} (issue 20 target <= 1)",
        show(&ratios(|r| r.res_cpu_us)),
        show(&ratios(|r| r.reg_cpu_us))
    );
}

#[derive(Clone, Copy, Default)]
struct Rates {
    resolutions: f64,
    res_p50_p99: (f64, f64),
    res_cpu_us: f64,
    registrations: f64,
    reg_p50_p99: (f64, f64),
    reg_cpu_us: f64,
}

impl Rates {
    /// The round with the median resolution rate, and that with the median registration
    /// rate (each measure from its own median round).
    fn median(rounds: &[Self]) -> Self {
        let pick = |key: fn(&Self) -> f64| {
            let mut v = rounds.to_vec();
            v.sort_by(|a, b| key(a).total_cmp(&key(b)));
            v[v.len() / 2]
        };
        let r = pick(|r| r.resolutions);
        let g = pick(|r| r.registrations);
        Self {
            registrations: g.registrations,
            reg_p50_p99: g.reg_p50_p99,
            reg_cpu_us: g.reg_cpu_us,
            ..r
        }
    }
}

/// A registrar process under test.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn rsp(data: &Path) -> Self {
        let mut child = wrapped(std::env::current_exe().expect("self"))
            .arg(CHILD_ARG)
            .arg(data)
            .stdout(Stdio::piped())
            .spawn()
            .expect("registrar child");
        let line = read_line(&mut BufReader::new(child.stdout.take().expect("stdout")));
        assert!(line.starts_with("listening"), "child said {line:?}");
        Self {
            child,
            addr: SocketAddr::from((DOC_ADDR, RSP_PORT)),
        }
    }

    fn rsplib() -> Self {
        let child = wrapped("rspregistrar".into())
            .arg(format!("-asap={DOC_ADDR}:{RSPLIB_PORT}"))
            .arg(format!("-enrp={DOC_ADDR}:9911"))
            .args([
                "-asapannounce=off",
                "-enrpannounce=off",
                "-minaddressscope=loopback",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rspregistrar");
        // Under a wrapper (a profiler) it starts slower.
        std::thread::sleep(Duration::from_secs(if wrapper().is_some() {
            10
        } else {
            1
        }));
        Self {
            child,
            addr: SocketAddr::from((DOC_ADDR, RSPLIB_PORT)),
        }
    }

    /// The process's CPU time so far, seconds.
    fn cpu(&self) -> f64 {
        Proc(self.child.id()).cpu().as_secs_f64()
    }
}

/// The command in `RSPLIB_BENCH_WRAP`, split at spaces, if one is set: both registrars run
/// under it (e.g. `valgrind --tool=callgrind`, which counts each one's instructions per
/// operation, as the guest's noisy clock cannot).
fn wrapper() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var("RSPLIB_BENCH_WRAP")
        .ok()?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// `program`, under the [`wrapper`] if there is one.
fn wrapped(program: std::path::PathBuf) -> Command {
    match wrapper() {
        Some(words) => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A wrapper (a profiler) writes its output at SIGTERM, not at SIGKILL.
        if wrapper().is_some() {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(addr: SocketAddr) -> Connection {
    // Any identity: nothing is authenticated on a legacy connection.
    let ca = TestCa::new("bench.test");
    let trust = trust::TrustStore::new(ca.leaf("pu/bench").issue().identity()).expect("trust");
    let to = TransportAddr::Sctp(Endpoint::single(addr));
    Connection::open(&trust, &to, true)
        .await
        .expect("plain SCTP connection")
}

fn registration(pe_id: u32) -> AsapMsg {
    AsapMsg::Registration {
        namespace: None,
        pool_handle: PoolHandle::new("bench").expect("pool"),
        pool_element: PoolElement {
            pe_id: PeId::new(pe_id).expect("non-zero"),
            home_server_id: 0,
            registration_life: 300_000,
            user_transport: Transport::Sctp {
                port: NonZeroU16::new(7777).expect("non-zero"),
                transport_use: TransportUse::DataOnly,
                addrs: SctpAddresses::new([Address::new(IpAddr::V4(DOC_ADDR))]).expect("one"),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
            labels: Default::default(),
            status: Default::default(),
            serving_identity: None,
        },
    }
}

/// Sends `msg` and waits for the answer for which `done` says true, answering the
/// registrar's keep-alives meanwhile (it sends them to every PE registered here).
async fn request(conn: &mut Connection, msg: &AsapMsg, done: fn(&AsapMsg) -> bool) {
    conn.send(msg).await.expect("send");
    loop {
        let m = conn.recv().await.expect("answer");
        if let AsapMsg::EndpointKeepAlive {
            pool_handle,
            pe_id: Some(pe_id),
            ..
        } = &m
        {
            let ack = AsapMsg::EndpointKeepAliveAck {
                pool_handle: pool_handle.clone(),
                pe_id: *pe_id,
            };
            conn.send(&ack).await.expect("ack");
            continue;
        }
        if done(&m) {
            return;
        }
    }
}

/// Registers 10 PEs of pool `bench` and keeps them alive until the task is dropped.
async fn populate(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let mut conn = connect(addr).await;
    for id in 1..=10 {
        request(&mut conn, &registration(0x7000_0000 + id), |m| {
            matches!(m, AsapMsg::RegistrationResponse { .. })
        })
        .await;
    }
    tokio::spawn(async move {
        while let Ok(m) = conn.recv().await {
            if let AsapMsg::EndpointKeepAlive {
                pool_handle,
                pe_id: Some(pe_id),
                ..
            } = m
            {
                let ack = AsapMsg::EndpointKeepAliveAck { pool_handle, pe_id };
                if conn.send(&ack).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Closed loops of `opts.conc` clients for `opts.secs`: operations per second and the
/// p50 / p99 latency in ms.
async fn closed_loop(
    addr: SocketAddr,
    opts: &Opts,
    op: impl Fn(usize, u64) -> (AsapMsg, fn(&AsapMsg) -> bool) + Send + Sync + 'static,
) -> (f64, (f64, f64)) {
    let op = Arc::new(op);
    let until = Instant::now() + Duration::from_secs(opts.secs);
    let mut tasks = Vec::new();
    for client in 0..opts.conc {
        let op = Arc::clone(&op);
        let mut conn = connect(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                let (msg, done) = op(client, i);
                let t = Instant::now();
                request(&mut conn, &msg, done).await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (all.len() as f64 / opts.secs as f64, (pct(0.5), pct(0.99)))
}

async fn resolutions(addr: SocketAddr, opts: &Opts) -> (f64, (f64, f64)) {
    closed_loop(addr, opts, |_, _| {
        (
            AsapMsg::HandleResolution {
                namespace: None,
                pool_handle: PoolHandle::new("bench").expect("pool"),
                option: None,
                hints: Default::default(),
            },
            |m| matches!(m, AsapMsg::HandleResolutionResponse { .. }),
        )
    })
    .await
}

async fn registrations(addr: SocketAddr, opts: &Opts, round: usize) -> (f64, (f64, f64)) {
    // Distinct PE IDs per round and client; each client re-registers its 50 in turn.
    let base = 0x1000_0000 + (round as u32) * 0x0100_0000;
    closed_loop(addr, opts, move |client, i| {
        let id = base + client as u32 * IDS_PER_CLIENT + (i % u64::from(IDS_PER_CLIENT)) as u32 + 1;
        (registration(id), |m| {
            matches!(m, AsapMsg::RegistrationResponse { .. })
        })
    })
    .await
}

/// The rsp registrar: `CHILD_ARG DATA_DIR`. Started as `enrpd init` + `enrpd run` start it, with
/// its legacy listener on DOC_ADDR:RSP_PORT confined to `default`; prints `listening`
/// and serves until killed.
fn child_main(args: &[String]) {
    let [data] = args else {
        panic!("usage: {CHILD_ARG} DATA_DIR");
    };
    // `enrpd` uses `Runtime::new()` (a worker per core); RSP_BENCH_WORKERS=N asks for N,
    // to see what thread hand-offs cost under emulation.
    let rt = match std::env::var("RSP_BENCH_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    }
    .expect("runtime");
    rt.block_on(async {
        let pki = Pki::new();
        pki.registrar("rsp");
        let mut config = init_registrar(pki.dir.path(), "rsp", Path::new(data)).await;
        // Its PEs advertise DOC_ADDR, not loopback.
        config.allow_loopback = false;
        config.legacy_asap_listen = Some(Endpoint::single(SocketAddr::from((DOC_ADDR, RSP_PORT))));
        config.legacy_namespace = Some("default".to_owned());
        // Its clients load the registrar on purpose: no per-client limits.
        let _running = enrp::run_with(config, |settings| settings.lift_client_limits())
            .await
            .expect("registrar");
        println!("listening");
        std::future::pending::<()>().await;
    });
}
