//! `rsp-bench`: the load generator of issue 9. It drives PEs and PUs over mutual TLS
//! against rsp's registrar and, in the same run and alternating round by round, against
//! two baselines: a minimal TLS server with the same TLS setup (the floor) and etcd 3.4
//! with client certificates. See docs/BENCHMARKS.md for the commands and the figures.
//!
//! Everything is real: the registrar is `enrp::run` in a child process, started as
//! `enrpd run` starts it (SQLite store in a fresh directory, WAL, `synchronous=FULL`,
//! the audit log on), the clients are `asap::client` connections, certificates come from
//! one fresh test PKI (ECDSA P-256). Servers run in child processes so that /proc gives
//! each one's CPU and memory; the load generators stay in this process. All share the
//! machine's cores: throughput figures are for client and server together on this host.

// A benchmark driver measures wall time.
#![allow(clippy::disallowed_methods)]

mod child;
mod etcd;
mod floor;
mod pki;
mod stats;

use std::future::Future;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::client::pu::{PoolUser, PuConfig};
use asap::wire::AsapMsg;
use asap::wire::param::{Address, PeId, Policy, PoolElement, PoolHandle, Transport, TransportUse};
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use child::ChildProc;
use pki::Pki;
use stats::{Figures, Proc, histogram, record};

/// Measurements, in the order they run.
const ALL: &[&str] = &[
    "resolve",
    "register",
    "handshake",
    "churn",
    "failover",
    "keepalive",
];

#[derive(Parser, Debug)]
#[command(
    name = "rsp-bench",
    about = "rsp's registrar under load, beside a TLS floor and etcd"
)]
struct Opts {
    /// Seconds each system runs in each round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds: floor, rsp and etcd take turns in each (after an untimed warm-up round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients (PUs resolving, PEs registering), each on its own connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Concurrent connections of the handshake and churn measurements.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// PEs of the keep-alive load.
    #[arg(long, default_value_t = 100_000)]
    pes: usize,
    /// etcd leases of the keep-alive load (default: as many as --pes, at most 10,000:
    /// etcd-client opens one keep-alive stream per lease, which costs etcd ~95 KB each).
    #[arg(long)]
    etcd_leases: Option<usize>,
    /// Keep-alive interval of the keep-alive load, in seconds.
    #[arg(long, default_value_t = 5)]
    keep_alive_secs: u64,
    /// Length of the keep-alive load's CPU window, in seconds.
    #[arg(long, default_value_t = 20)]
    window_secs: u64,
    /// Failover trials (each kills one PE of four).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// PUs of the failover measurement.
    #[arg(long, default_value_t = 16)]
    pus: usize,
    /// Only these measurements (comma-separated): resolve, register, handshake, churn,
    /// failover, keepalive.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave etcd out even if it is installed.
    #[arg(long)]
    no_etcd: bool,
    /// Print JSON instead of Markdown tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (with the tables on stdout).
    #[arg(long)]
    json_file: Option<std::path::PathBuf>,
    /// A smoke run of a few seconds with tiny numbers (checks that everything works).
    #[arg(long)]
    quick: bool,
    /// The child-process protocol (internal).
    #[arg(long, num_args = 1.., allow_hyphen_values = true, hide = true)]
    child: Vec<String>,
}

impl Opts {
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }

    fn round(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

fn main() {
    let mut opts = Opts::parse();
    if !opts.child.is_empty() {
        child::main(&opts.child);
        return;
    }
    if opts.quick {
        opts.seconds = 1;
        opts.rounds = 1;
        opts.clients = 4;
        opts.connections = 4;
        opts.pes = 500;
        opts.keep_alive_secs = 1;
        opts.window_secs = 2;
        opts.trials = 1;
        opts.pus = 4;
    }
    for o in &opts.only {
        assert!(
            ALL.contains(&o.as_str()),
            "unknown measurement {o:?}: one of {ALL:?}"
        );
    }
    stats::clock_ticks(); // asks `getconf` now, not inside a measurement
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(run(&opts));
    if let Some(path) = &opts.json_file {
        std::fs::write(path, format!("{:#}\n", report.json(&opts))).expect("write the JSON report");
    }
    if opts.json {
        println!("{:#}", report.json(&opts));
    } else {
        report.print(&opts);
    }
}

/// Everything measured in one run.
#[derive(Default)]
struct Report {
    etcd_note: Option<String>,
    /// (measurement, system, figures), e.g. ("resolve", "rsp", …).
    throughput: Vec<(&'static str, &'static str, Figures)>,
    /// Audit records committed / operations, per rsp measurement.
    audit: Vec<(&'static str, u64, u64)>,
    churn: Option<Figures>,
    failover: Option<Failover>,
    /// The keep-alive load: rsp, then etcd.
    keep_alive: Vec<Steady>,
    /// The main registrar's RSS and peak RSS at the end, KiB.
    registrar_rss: (u64, u64),
}

async fn run(opts: &Opts) -> Report {
    let pki = Pki::new();
    let mut report = Report::default();
    let steps = ALL.iter().filter(|w| opts.wants(w)).count() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(steps);
        b.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let pki_dir = pki.path().display().to_string();
    let data = registrar_data();
    let data_dir = data.path().display().to_string();
    let mut registrar = ChildProc::start(&["registrar", &pki_dir, &data_dir, "5000"]);
    let mut floor = ChildProc::start(&["floor", &pki_dir]);
    // The keep-alive load starts a fresh etcd (as it starts a fresh registrar).
    let mut etcd_exe = None;
    let etcd = if opts.no_etcd {
        report.etcd_note = Some("etcd left out (--no-etcd)".into());
        None
    } else {
        match etcd::binary() {
            None => {
                let note = "etcd is not installed: the etcd columns are skipped \
                            (Debian: apt-get install -y etcd-server etcd-client)";
                eprintln!("rsp-bench: {note}");
                report.etcd_note = Some(note.into());
                None
            }
            Some(exe) => match etcd::Etcd::start(&exe, pki.path()).await {
                Ok(e) => {
                    etcd_exe = Some(exe);
                    Some(e)
                }
                Err(e) => {
                    eprintln!("rsp-bench: {e}");
                    report.etcd_note = Some(format!("etcd failed to start: {e}"));
                    None
                }
            },
        }
    };
    if opts.wants("resolve") {
        bar.set_message("resolutions");
        resolutions(
            opts,
            &pki,
            &mut registrar,
            &floor,
            etcd.as_ref(),
            &mut report,
            &bar,
        )
        .await;
        bar.inc(1);
    }
    if opts.wants("handshake") {
        bar.set_message("handshakes");
        handshakes(opts, &pki, &registrar, &floor, &mut report).await;
        bar.inc(1);
    }
    if opts.wants("churn") {
        bar.set_message("PE churn");
        report.churn = Some(churn(opts, &pki, &registrar).await);
        bar.inc(1);
    }
    if opts.wants("failover") {
        bar.set_message("failover");
        report.failover = Some(failover(opts, &pki, &registrar).await);
        bar.inc(1);
    }
    // Registrations last on this registrar: at the end of the storm tens of thousands of
    // PEs lose their connections at once, and their removal would load the measurements
    // that follow.
    if opts.wants("register") {
        bar.set_message("registrations");
        registrations(
            opts,
            &pki,
            &mut registrar,
            &floor,
            etcd.as_ref(),
            &mut report,
            &bar,
        )
        .await;
        bar.inc(1);
    }
    drop(etcd);
    report.registrar_rss = registrar.proc().rss_kib();
    registrar.stop();
    let _ = floor.ask("stop");
    floor.stop();
    if opts.wants("keepalive") {
        bar.set_message(format!("keep-alive load, {} PEs", opts.pes));
        report.keep_alive.push(keep_alives(opts, &pki).await);
        if let Some(exe) = &etcd_exe {
            let leases = opts
                .etcd_leases
                .unwrap_or_else(|| opts.pes.min(ETCD_LEASES));
            bar.set_message(format!("keep-alive load, {leases} etcd leases"));
            match etcd::Etcd::start(exe, pki.path()).await {
                Ok(e) => report
                    .keep_alive
                    .push(etcd_keep_alives(opts, &e, leases).await),
                Err(e) => eprintln!("rsp-bench: a fresh etcd for the keep-alive load: {e}"),
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report
}

/// A fresh data directory for a registrar child. Declare it before the child: locals drop
/// in reverse order, so the child is stopped (or killed) before its directory goes.
fn registrar_data() -> tempfile::TempDir {
    tempfile::tempdir().expect("data dir")
}

// ---------------------------------------------------------------------------------------
// Closed loops

/// What one closed-loop run did.
struct Run<C> {
    clients: Vec<C>,
    ops: u64,
    latency: Histogram<u64>,
    elapsed: Duration,
    cpu: Duration,
}

/// Every client runs `op` back to back for `length` (closed loop: one operation in flight
/// per client); `server`'s CPU time is taken around the run. An operation takes its
/// client by value and gives it back, so that clients keep their connections from round
/// to round.
async fn closed_loop<C, F, Fut>(server: Proc, clients: Vec<C>, length: Duration, op: F) -> Run<C>
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = C> + Send,
{
    let cpu0 = server.cpu();
    let t0 = Instant::now();
    let deadline = t0 + length;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    c = op(c).await;
                    record(&mut h, t.elapsed());
                    n += 1;
                }
                (c, n, h)
            })
        })
        .collect();
    let mut run = Run {
        clients: Vec::with_capacity(tasks.len()),
        ops: 0,
        latency: histogram(),
        elapsed: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    for t in tasks {
        let (c, n, h) = t.await.expect("a client task panicked");
        run.clients.push(c);
        run.ops += n;
        run.latency.add(&h).expect("same bounds");
    }
    run.elapsed = t0.elapsed();
    run.cpu = server.cpu().saturating_sub(cpu0);
    run
}

/// rsp clients between their turns: either simply held, or handed to tasks that keep
/// them alive (PEs answer keep-alives while the other systems run, as live PEs do).
struct Idle<R> {
    held: Vec<R>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<R>>,
}

impl<R> Idle<R> {
    fn hold(held: Vec<R>) -> Self {
        Self {
            held,
            stop: None,
            tasks: Vec::new(),
        }
    }

    async fn resume(mut self) -> Vec<R> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for t in self.tasks {
            self.held
                .push(t.await.expect("an idle client task panicked"));
        }
        self.held
    }
}

/// Registering PEs answer their keep-alives between their turns.
fn answer_while_idle(clients: Vec<Registering>) -> Idle<Registering> {
    let (stop, stopped) = watch::channel(false);
    let tasks = clients
        .into_iter()
        .map(|mut r| {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        // Cancel-safe: a partly read message stays in the framer.
                        msg = r.conn.recv() => {
                            answer_keep_alive(&mut r.conn, &msg.expect("PE connection")).await;
                        }
                        _ = stopped.changed() => return r,
                    }
                }
            })
        })
        .collect();
    Idle {
        held: Vec::new(),
        stop: Some(stop),
        tasks,
    }
}

/// Clients of the three systems for one measurement.
struct Sides<F, R, E> {
    floor: Vec<F>,
    rsp: Vec<R>,
    etcd: Option<Vec<E>>,
}

/// The warm-up round, then `opts.rounds` rounds of floor, rsp, etcd in turn; figures
/// summed per system. Returns the figures and the rsp operations (warm-up included).
#[allow(clippy::too_many_arguments)]
async fn alternate<F, R, E, OF, FF, OR, FR, OE, FE>(
    opts: &Opts,
    what: &'static str,
    procs: (Proc, Proc, Option<Proc>),
    mut sides: Sides<F, R, E>,
    (op_floor, op_rsp, op_etcd): (OF, OR, OE),
    idle: fn(Vec<R>) -> Idle<R>,
    report: &mut Report,
    bar: &ProgressBar,
) -> u64
where
    F: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
    OF: Fn(F) -> FF + Clone + Send + Sync + 'static,
    FF: Future<Output = F> + Send,
    OR: Fn(R) -> FR + Clone + Send + Sync + 'static,
    FR: Future<Output = R> + Send,
    OE: Fn(E) -> FE + Clone + Send + Sync + 'static,
    FE: Future<Output = E> + Send,
{
    let (mut f_floor, mut f_rsp, mut f_etcd) =
        (Figures::default(), Figures::default(), Figures::default());
    let mut rsp_ops = 0;
    let mut rsp_idle = idle(std::mem::take(&mut sides.rsp));
    for round in 0..=opts.rounds {
        // Round 0 warms up (connections, caches, the JIT-less but lazy bits) and is not kept.
        let length = if round == 0 {
            Duration::from_secs(1)
        } else {
            opts.round()
        };
        bar.set_message(format!("{what}: round {round}/{}", opts.rounds));
        let r = closed_loop(
            procs.0,
            std::mem::take(&mut sides.floor),
            length,
            op_floor.clone(),
        )
        .await;
        sides.floor = r.clients;
        if round > 0 {
            f_floor.add(r.ops, r.elapsed, &r.latency, r.cpu);
        }
        let clients = rsp_idle.resume().await;
        let r = closed_loop(procs.1, clients, length, op_rsp.clone()).await;
        rsp_idle = idle(r.clients);
        rsp_ops += r.ops;
        if round > 0 {
            f_rsp.add(r.ops, r.elapsed, &r.latency, r.cpu);
        }
        if let (Some(clients), Some(p)) = (sides.etcd.take(), procs.2) {
            let r = closed_loop(p, clients, length, op_etcd.clone()).await;
            sides.etcd = Some(r.clients);
            if round > 0 {
                f_etcd.add(r.ops, r.elapsed, &r.latency, r.cpu);
            }
        }
    }
    drop(rsp_idle.resume().await);
    report.throughput.push((what, "floor", f_floor));
    report.throughput.push((what, "rsp", f_rsp));
    if procs.2.is_some() {
        report.throughput.push((what, "etcd", f_etcd));
    }
    rsp_ops
}

async fn floor_clients(pki: &Pki, floor: &ChildProc, n: usize) -> Vec<floor::FloorConn> {
    let store = pki.client("pu/floor");
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(floor::connect(&store, floor.addr).await);
    }
    v
}

async fn etcd_clients(etcd: Option<&etcd::Etcd>, n: usize) -> Option<Vec<etcd_client::Client>> {
    let etcd = etcd?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(etcd.client().await.expect("etcd client"));
    }
    Some(v)
}

/// Connections to the registrar, one identity each (`{prefix}-{i}`), connected in turn.
async fn rsp_connections(pki: &Pki, addr: SocketAddr, prefix: &str, n: usize) -> Vec<Connection> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let store = pki.client(&format!("{prefix}-{i}"));
        v.push(
            Connection::connect(&store, addr)
                .await
                .expect("connect to the registrar"),
        );
    }
    v
}

/// Waits until the registrar's committed audit records stop changing (batched records
/// are committed within the batch delay), at most 5 s; returns the count.
async fn settled_audit(registrar: &mut ChildProc) -> u64 {
    let mut last = registrar.audit().0;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = registrar.audit().0;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

// ---------------------------------------------------------------------------------------
// Messages

fn pool(name: &str) -> PoolHandle {
    PoolHandle::new(name).expect("pool handle")
}

fn registration(pool_handle: &PoolHandle, pe_id: u32, ip: IpAddr) -> AsapMsg {
    AsapMsg::Registration {
        namespace: None,
        pool_handle: pool_handle.clone(),
        pool_element: PoolElement {
            pe_id: PeId::new(pe_id).expect("PE IDs start at 1"),
            home_server_id: 0,
            registration_life: 300_000,
            user_transport: Transport::Tcp {
                port: NonZeroU16::new(7777).expect("non-zero"),
                transport_use: TransportUse::DataOnly,
                // The address check (spec §7.1 step 3): the connection's own address.
                addr: Address::new(ip),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        },
    }
}

/// Answers a keep-alive as a PE does (spec §7.5); `true` if `msg` was one.
async fn answer_keep_alive(conn: &mut Connection, msg: &AsapMsg) -> bool {
    let AsapMsg::EndpointKeepAlive {
        pool_handle,
        pe_id: Some(pe_id),
        ..
    } = msg
    else {
        return false;
    };
    conn.send(&AsapMsg::EndpointKeepAliveAck {
        pool_handle: pool_handle.clone(),
        pe_id: *pe_id,
    })
    .await
    .expect("send keep-alive ack");
    true
}

/// Registers and waits for the acceptance, answering keep-alives meanwhile.
async fn register(conn: &mut Connection, msg: &AsapMsg) {
    conn.send(msg).await.expect("send registration");
    loop {
        let reply = conn.recv().await.expect("registration response");
        match &reply {
            AsapMsg::RegistrationResponse { reject: false, .. } => return,
            AsapMsg::RegistrationResponse { .. } => panic!("registration refused: {reply:?}"),
            _ => {
                answer_keep_alive(conn, &reply).await;
            }
        }
    }
}

/// Deregisters and waits for the answer, answering keep-alives meanwhile.
async fn deregister(conn: &mut Connection, pool_handle: &PoolHandle, pe_id: u32) {
    let pe_id = PeId::new(pe_id).expect("non-zero");
    conn.send(&AsapMsg::Deregistration {
        namespace: None,
        pool_handle: pool_handle.clone(),
        pe_id,
    })
    .await
    .expect("send deregistration");
    loop {
        let reply = conn.recv().await.expect("deregistration response");
        match &reply {
            AsapMsg::DeregistrationResponse { error: None, .. } => return,
            AsapMsg::DeregistrationResponse { .. } => panic!("deregistration failed: {reply:?}"),
            _ => {
                answer_keep_alive(conn, &reply).await;
            }
        }
    }
}

/// A resolution of `pool_handle` (the registrar's default: 3 PEs).
async fn resolve(conn: &mut Connection, pool_handle: &PoolHandle) -> usize {
    asap::client::pu::resolve(conn, None, pool_handle, None)
        .await
        .expect("resolution")
        .pool_elements
        .len()
}

// ---------------------------------------------------------------------------------------
// Resolutions and registrations

/// PEs in the resolved pool (rsp and etcd alike).
const POOL_PES: u32 = 10;

async fn resolutions(
    opts: &Opts,
    pki: &Pki,
    registrar: &mut ChildProc,
    floor: &ChildProc,
    etcd: Option<&etcd::Etcd>,
    report: &mut Report,
    bar: &ProgressBar,
) {
    let handle = pool("bench-resolve");
    // Ten PEs to resolve, kept alive by one connection for the whole measurement.
    let (stop, keeper) = standing_pool(pki, registrar.addr, &handle, POOL_PES).await;
    let mut etcd_clients = etcd_clients(etcd, opts.clients).await;
    if let Some(c) = etcd_clients.as_mut().and_then(|v| v.first_mut()) {
        for id in 1..=u64::from(POOL_PES) {
            etcd::register(c, "bench-resolve", id).await;
        }
    }
    let sides = Sides {
        floor: floor_clients(pki, floor, opts.clients).await,
        rsp: rsp_connections(pki, registrar.addr, "pu/res", opts.clients).await,
        etcd: etcd_clients,
    };
    let audit0 = settled_audit(registrar).await;
    let h = handle.clone();
    let ops = alternate(
        opts,
        "resolve",
        (floor.proc(), registrar.proc(), etcd.map(etcd::Etcd::proc)),
        sides,
        (
            |mut c| async move {
                floor::request(&mut c).await;
                c
            },
            move |mut c: Connection| {
                let h = h.clone();
                async move {
                    assert_eq!(resolve(&mut c, &h).await, 3, "the default: 3 PEs");
                    c
                }
            },
            |mut c: etcd_client::Client| async move {
                assert_eq!(
                    etcd::resolve(&mut c, "bench-resolve").await,
                    POOL_PES as usize
                );
                c
            },
        ),
        Idle::hold,
        report,
        bar,
    )
    .await;
    let audited = settled_audit(registrar).await - audit0;
    report.audit.push(("resolve", audited, ops));
    let _ = stop.send(true);
    let _ = keeper.await;
}

/// A registering PE: its connection, its address, and the next PE ID it registers.
struct Registering {
    conn: Connection,
    ip: IpAddr,
    next: u32,
}

async fn registrations(
    opts: &Opts,
    pki: &Pki,
    registrar: &mut ChildProc,
    floor: &ChildProc,
    etcd: Option<&etcd::Etcd>,
    report: &mut Report,
    bar: &ProgressBar,
) {
    let handle = pool("bench-register");
    // PE `i` registers IDs i·10⁷+1, i·10⁷+2, …: distinct, new PEs (a storm, not updates).
    let rsp = rsp_connections(pki, registrar.addr, "pe/reg", opts.clients)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, conn)| Registering {
            ip: conn.local_addr().ip(),
            conn,
            next: (i as u32) * 10_000_000 + 1,
        })
        .collect();
    let etcd_proc = etcd.map(etcd::Etcd::proc);
    let etcd = etcd_clients(etcd, opts.clients).await.map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, c)| (c, (i as u64) * 10_000_000 + 1))
            .collect::<Vec<_>>()
    });
    let sides = Sides {
        floor: floor_clients(pki, floor, opts.clients).await,
        rsp,
        etcd,
    };
    let audit0 = settled_audit(registrar).await;
    let h = handle.clone();
    let ops = alternate(
        opts,
        "register",
        (floor.proc(), registrar.proc(), etcd_proc),
        sides,
        (
            |mut c| async move {
                floor::request(&mut c).await;
                c
            },
            move |mut r: Registering| {
                let h = h.clone();
                async move {
                    register(&mut r.conn, &registration(&h, r.next, r.ip)).await;
                    r.next += 1;
                    r
                }
            },
            |(mut c, next): (etcd_client::Client, u64)| async move {
                etcd::register(&mut c, "bench-register", next).await;
                (c, next + 1)
            },
        ),
        answer_while_idle,
        report,
        bar,
    )
    .await;
    let audited = settled_audit(registrar).await - audit0;
    report.audit.push(("register", audited, ops));
}

/// Registers `n` PEs in `handle` on one connection and keeps them alive until the
/// returned sender says stop.
async fn standing_pool(
    pki: &Pki,
    addr: SocketAddr,
    handle: &PoolHandle,
    n: u32,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut pe = Connection::connect(&pki.client("pe/standing"), addr)
        .await
        .expect("connect PE");
    let ip = pe.local_addr().ip();
    for id in 1..=n {
        register(&mut pe, &registration(handle, id, ip)).await;
    }
    let (stop, mut stopped) = watch::channel(false);
    let keeper = tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = pe.recv() => {
                    answer_keep_alive(&mut pe, &msg.expect("PE connection")).await;
                }
                _ = stopped.changed() => return,
            }
        }
    });
    (stop, keeper)
}

// ---------------------------------------------------------------------------------------
// Handshakes

/// Full mutual-TLS handshakes: each operation is a new connection (TCP, full TLS 1.3
/// handshake with client certificate, no resumption: the trust store's configurations
/// disable it), one request and its answer (a resolution at the registrar, 16/128 bytes
/// at the floor), and the close. The figure is operations per server CPU-second.
async fn handshakes(
    opts: &Opts,
    pki: &Pki,
    registrar: &ChildProc,
    floor: &ChildProc,
    report: &mut Report,
) {
    let handle = pool("bench-handshake");
    let (stop, keeper) = standing_pool(pki, registrar.addr, &handle, 3).await;
    let store = pki.client("pu/handshake");
    let (reg_addr, floor_addr) = (registrar.addr, floor.addr);
    let (mut f_floor, mut f_rsp) = (Figures::default(), Figures::default());
    for round in 0..=opts.rounds {
        let length = if round == 0 {
            Duration::from_secs(1)
        } else {
            opts.round()
        };
        let clients = vec![Arc::clone(&store); opts.connections];
        let r = closed_loop(floor.proc(), clients, length, move |s| async move {
            let mut c = floor::connect(&s, floor_addr).await;
            floor::request(&mut c).await;
            s
        })
        .await;
        if round > 0 {
            f_floor.add(r.ops, r.elapsed, &r.latency, r.cpu);
        }
        let clients = vec![Arc::clone(&store); opts.connections];
        let h = handle.clone();
        let r = closed_loop(registrar.proc(), clients, length, move |s| {
            let h = h.clone();
            async move {
                let mut c = Connection::connect(&s, reg_addr)
                    .await
                    .expect("connect to the registrar");
                resolve(&mut c, &h).await;
                s
            }
        })
        .await;
        if round > 0 {
            f_rsp.add(r.ops, r.elapsed, &r.latency, r.cpu);
        }
    }
    report.throughput.push(("handshake", "floor", f_floor));
    report.throughput.push(("handshake", "rsp", f_rsp));
    let _ = stop.send(true);
    let _ = keeper.await;
}

// ---------------------------------------------------------------------------------------
// Churn

/// PE churn: each connection registers a new PE and deregisters it, back to back (both
/// audited). One operation = the pair.
async fn churn(opts: &Opts, pki: &Pki, registrar: &ChildProc) -> Figures {
    let handle = pool("bench-churn");
    let clients: Vec<_> = rsp_connections(pki, registrar.addr, "pe/churn", opts.connections)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, conn)| Registering {
            ip: conn.local_addr().ip(),
            conn,
            next: (i as u32) * 10_000_000 + 1,
        })
        .collect();
    let h = handle.clone();
    let op = move |mut r: Registering| {
        let h = h.clone();
        async move {
            register(&mut r.conn, &registration(&h, r.next, r.ip)).await;
            deregister(&mut r.conn, &h, r.next).await;
            r.next += 1;
            r
        }
    };
    let warm = closed_loop(
        registrar.proc(),
        clients,
        Duration::from_secs(1),
        op.clone(),
    )
    .await;
    let length = opts.round() * opts.rounds.max(1) as u32;
    let r = closed_loop(registrar.proc(), warm.clients, length, op).await;
    let mut f = Figures::default();
    f.add(r.ops, r.elapsed, &r.latency, r.cpu);
    f
}

// ---------------------------------------------------------------------------------------
// Failover

/// PEs in the failover pool.
const FAILOVER_PES: u32 = 4;

/// Failover figures over the trials.
struct Failover {
    trials: usize,
    /// PUs that were using the killed PE, summed over the trials.
    affected: usize,
    /// Kill → that PU's next successful request on another PE.
    pu_visible: Histogram<u64>,
    /// Kill → the registrar's resolutions no longer list the killed PE.
    registrar_visible: Histogram<u64>,
}

/// PE processes (`--child pe`) serve a pool; PUs (`asap::client::pu::PoolUser`, session
/// affinity) send a 16-byte request every millisecond to their PE. Each trial SIGKILLs
/// the PE that serves the most PUs and measures, per PU that was on it, the time from the
/// kill to its next successful request (it notices the dead PE, reports it unreachable,
/// fails over to another from its cache); and the time until the registrar's resolution
/// no longer lists the dead PE (its connection loss removed it).
async fn failover(opts: &Opts, pki: &Pki, registrar: &ChildProc) -> Failover {
    let handle = pool("failover");
    let pki_dir = pki.path().display().to_string();
    let reg = registrar.addr.to_string();
    let start_pe = |id: u32| ChildProc::start(&["pe", &pki_dir, &reg, &id.to_string()]);
    let mut pes: Vec<(u32, ChildProc)> = (1..=FAILOVER_PES).map(|id| (id, start_pe(id))).collect();
    // Which PE (port) each PU last succeeded on, and its failovers: (from port, when).
    let on: Arc<Mutex<Vec<u16>>> = Arc::new(Mutex::new(vec![0; opts.pus]));
    let (failed_over, mut reports) = mpsc::unbounded_channel::<(u16, Instant)>();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..opts.pus {
        let (store, on, tx, handle, stopped) = (
            pki.client(&format!("pu/failover-{i}")),
            Arc::clone(&on),
            failed_over.clone(),
            handle.clone(),
            stopped.clone(),
        );
        let reg = registrar.addr;
        tasks.push(tokio::spawn(async move {
            pool_user(i, store, reg, handle, on, tx, stopped).await;
        }));
    }
    // The PUs reach their PEs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut poller = Connection::connect(&pki.client("pu/failover-watch"), registrar.addr)
        .await
        .expect("connect");
    let mut result = Failover {
        trials: opts.trials,
        affected: 0,
        pu_visible: histogram(),
        registrar_visible: histogram(),
    };
    // Replacement PEs take IDs from 100 on.
    for next_id in (100..).take(opts.trials) {
        // The victim: the PE with the most PUs.
        let counts: Vec<usize> = {
            let on = on.lock().expect("lock");
            pes.iter()
                .map(|(_, p)| on.iter().filter(|&&port| port == p.addr.port()).count())
                .collect()
        };
        let victim = (0..pes.len()).max_by_key(|&i| counts[i]).expect("PEs");
        let (victim_id, mut victim_proc) = pes.remove(victim);
        let port = victim_proc.addr.port();
        while reports.try_recv().is_ok() {}
        let killed = Instant::now();
        victim_proc.kill();
        // Registrar-visible: poll resolutions (all PEs) until the victim is gone.
        loop {
            let r = asap::client::pu::resolve(&mut poller, None, &handle, Some(32))
                .await
                .expect("resolution");
            if !r
                .pool_elements
                .iter()
                .any(|e| e.pool_element.pe_id.get() == victim_id)
            {
                record(&mut result.registrar_visible, killed.elapsed());
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // PU-visible: the PUs that were on the victim report their failover.
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen < counts[victim] {
            match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
                Ok(Some((from, at))) if from == port => {
                    record(&mut result.pu_visible, at.saturating_duration_since(killed));
                    seen += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        result.affected += seen;
        // A replacement, so that the pool keeps its size.
        pes.push((next_id, start_pe(next_id)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for (_, mut p) in pes {
        p.kill();
    }
    result
}

/// One PU of the failover measurement (see [`failover`]).
async fn pool_user(
    i: usize,
    store: Arc<trust::TrustStore>,
    registrar: SocketAddr,
    handle: PoolHandle,
    on: Arc<Mutex<Vec<u16>>>,
    failed_over: mpsc::UnboundedSender<(u16, Instant)>,
    stopped: watch::Receiver<bool>,
) {
    let pu = PoolUser::new(store, PuConfig::new(vec![registrar], handle));
    let mut session = pu.session();
    let mut conn: Option<(u16, tokio::net::TcpStream)> = None;
    // The port of the PE this PU was on when a request failed.
    let mut failed_from: Option<u16> = None;
    while !*stopped.borrow() {
        let Ok(pe) = session.pe().await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let Transport::Tcp { port, .. } = pe.pool_element.user_transport else {
            panic!("failover PEs serve TCP");
        };
        let port = port.get();
        let ok = async {
            if conn.as_ref().is_none_or(|(p, _)| *p != port) {
                let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
                tcp.set_nodelay(true)?;
                conn = Some((port, tcp));
            }
            let (_, tcp) = conn.as_mut().expect("connected above");
            tcp.write_all(&[1u8; floor::REQUEST]).await?;
            let mut reply = [0u8; floor::REPLY];
            tcp.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(1), ok).await {
            Ok(Ok(())) => {
                if let Some(from) = failed_from.take()
                    && from != port
                {
                    let _ = failed_over.send((from, Instant::now()));
                }
                on.lock().expect("lock")[i] = port;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => {
                conn = None;
                failed_from.get_or_insert(port);
                session.failed().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keep-alive load

/// PEs per connection of the keep-alive load (the registrar allows many per connection).
const PES_PER_CONN: usize = 1_000;
/// Default cap of the etcd side of the keep-alive load: with one gRPC stream per lease
/// (etcd-client 0.21) etcd holds ~95 KB per lease, ~9.5 GB for 100,000; per-lease figures
/// (memory, CPU per keep-alive) are compared instead.
const ETCD_LEASES: usize = 10_000;
/// Registrations a keep-alive connection keeps in flight while it registers its PEs.
const REGISTRATION_WINDOW: u32 = 64;

/// The keep-alive steady state of one system.
struct Steady {
    system: &'static str,
    /// PEs (rsp) or leases with one key each (etcd).
    pes: usize,
    connections: usize,
    setup: Duration,
    rss_idle: u64,
    rss_loaded: u64,
    rss_peak: u64,
    window: Duration,
    cpu: Duration,
    keep_alives: u64,
    /// Due keep-alives per second: one per PE or lease per interval.
    due: f64,
    /// etcd: leases expired (their key gone) or whose keep-alive stream broke. rsp: not
    /// counted here (a PE's timeout shows as missing keep-alives).
    lost: Option<u64>,
}

impl Steady {
    fn bytes_per_pe(&self) -> f64 {
        (self.rss_loaded.saturating_sub(self.rss_idle) * 1024) as f64 / self.pes as f64
    }

    fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// Server CPU per keep-alive answered, µs (comparable at different counts).
    fn cpu_per_keep_alive_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.keep_alives.max(1) as f64
    }

    fn keep_alive_rate(&self) -> f64 {
        self.keep_alives as f64 / self.window.as_secs_f64()
    }
}

/// One connection of the keep-alive load: registers `count` PEs with at most
/// [`REGISTRATION_WINDOW`] in flight, then answers keep-alives until `stop`.
async fn keep_alive_connection(
    mut conn: Connection,
    handle: PoolHandle,
    first_id: u32,
    count: u32,
    registered: mpsc::Sender<()>,
    keep_alives: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Connection {
    let ip = conn.local_addr().ip();
    let (mut sent, mut acked) = (0, 0);
    while acked < count {
        while sent < count && (sent - acked) < REGISTRATION_WINDOW {
            conn.send(&registration(&handle, first_id + sent, ip))
                .await
                .expect("send registration");
            sent += 1;
        }
        let reply = conn.recv().await.expect("registration response");
        match &reply {
            AsapMsg::RegistrationResponse { reject: false, .. } => acked += 1,
            AsapMsg::RegistrationResponse { .. } => panic!("registration refused: {reply:?}"),
            _ => {
                answer_keep_alive(&mut conn, &reply).await;
            }
        }
    }
    let _ = registered.send(()).await;
    loop {
        tokio::select! {
            msg = conn.recv() => {
                if answer_keep_alive(&mut conn, &msg.expect("PE connection")).await {
                    keep_alives.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => return conn,
        }
    }
}

/// `opts.pes` PEs on a fresh registrar with `opts.keep_alive_secs` keep-alives: the
/// registrar's resident memory per PE and its CPU over a window.
async fn keep_alives(opts: &Opts, pki: &Pki) -> Steady {
    let pes = opts.pes;
    let keep_alive = Duration::from_secs(opts.keep_alive_secs);
    let connections = pes.div_ceil(PES_PER_CONN);
    let stores: Vec<_> = (0..connections)
        .map(|c| pki.client(&format!("pe/ka-{c}")))
        .collect();
    let pki_dir = pki.path().display().to_string();
    let data = registrar_data();
    let registrar = ChildProc::start(&[
        "registrar",
        &pki_dir,
        &data.path().display().to_string(),
        &keep_alive.as_millis().to_string(),
    ]);
    // Let the child settle (runtime, SQLite, TLS configuration) before the idle figure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_idle, _) = registrar.proc().rss_kib();
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(connections);
    for s in &stores {
        conns.push(
            Connection::connect(s, registrar.addr)
                .await
                .expect("connect"),
        );
    }
    let (registered, mut registered_rx) = mpsc::channel(connections);
    let counter = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, conn)| {
            let count = PES_PER_CONN.min(pes - c * PES_PER_CONN) as u32;
            tokio::spawn(keep_alive_connection(
                conn,
                pool(&format!("ka-{}", c % 10)),
                (c * PES_PER_CONN + 1) as u32,
                count,
                registered.clone(),
                Arc::clone(&counter),
                stopped.clone(),
            ))
        })
        .collect();
    for _ in 0..connections {
        registered_rx
            .recv()
            .await
            .expect("a keep-alive connection failed");
    }
    let setup = t0.elapsed();
    // All PEs are in their keep-alive cycle one interval after the last registration.
    tokio::time::sleep(keep_alive + Duration::from_secs(1)).await;
    let (w0, cpu0, ka0) = (
        Instant::now(),
        registrar.proc().cpu(),
        counter.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(opts.window_secs)).await;
    let (window, cpu, keep_alives) = (
        w0.elapsed(),
        registrar.proc().cpu().saturating_sub(cpu0),
        counter.load(Ordering::Relaxed) - ka0,
    );
    let (rss_loaded, rss_peak) = registrar.proc().rss_kib();
    let _ = stop.send(true);
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.expect("PE task"));
    }
    registrar.stop();
    drop(conns);
    Steady {
        system: "rsp",
        pes,
        connections,
        setup,
        rss_idle,
        rss_loaded,
        rss_peak,
        window,
        cpu,
        keep_alives,
        due: pes as f64 / keep_alive.as_secs_f64(),
        lost: None,
    }
}

/// The etcd side of the keep-alive load on a fresh etcd: `leases` leases with one key
/// each, on as many connections as rsp's PEs ([`PES_PER_CONN`] per connection), kept
/// alive every `opts.keep_alive_secs` with TTL 3 intervals; etcd's resident memory per
/// lease, its CPU over the window, the keep-alives answered, the leases lost.
async fn etcd_keep_alives(opts: &Opts, etcd: &etcd::Etcd, leases: usize) -> Steady {
    let interval = Duration::from_secs(opts.keep_alive_secs);
    let connections = leases.div_ceil(PES_PER_CONN);
    let load = Arc::new(etcd::LeaseLoad {
        interval,
        ttl: 3 * i64::try_from(opts.keep_alive_secs).expect("interval"),
        answered: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_idle, _) = etcd.proc().rss_kib();
    let t0 = Instant::now();
    let (ready, mut ready_rx) = mpsc::channel(1024);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(leases);
    let mut first = None;
    for c in 0..connections {
        let client = etcd.client().await.expect("etcd client");
        let setup = Arc::new(tokio::sync::Semaphore::new(REGISTRATION_WINDOW as usize));
        let count = PES_PER_CONN.min(leases - c * PES_PER_CONN);
        for i in 0..count {
            // Spread each connection's keep-alives over the interval, as rsp's are.
            let phase = interval.mul_f64(i as f64 / count as f64);
            tasks.push(tokio::spawn(etcd::kept_lease(
                client.clone(),
                format!("/ka/ka-{}/{:08}", c % 10, c * PES_PER_CONN + i + 1),
                phase,
                Arc::clone(&setup),
                Arc::clone(&load),
                ready.clone(),
                stopped.clone(),
            )));
        }
        first.get_or_insert(client);
    }
    drop(ready);
    for _ in 0..leases {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("an etcd lease failed: {e}"),
            None => panic!("an etcd lease task ended before its setup"),
        }
    }
    let setup = t0.elapsed();
    tokio::time::sleep(interval + Duration::from_secs(1)).await;
    let (w0, cpu0, ka0) = (
        Instant::now(),
        etcd.proc().cpu(),
        load.answered.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(opts.window_secs)).await;
    let (window, cpu, keep_alives) = (
        w0.elapsed(),
        etcd.proc().cpu().saturating_sub(cpu0),
        load.answered.load(Ordering::Relaxed) - ka0,
    );
    let (rss_loaded, rss_peak) = etcd.proc().rss_kib();
    let mut client = first.expect("at least one connection");
    let kept = etcd::count(&mut client, "/ka/").await;
    let _ = stop.send(true);
    for t in tasks {
        t.await.expect("etcd lease task");
    }
    let lost = (leases as u64 - kept.min(leases as u64)).max(load.lost.load(Ordering::Relaxed));
    Steady {
        system: "etcd",
        pes: leases,
        connections,
        setup,
        rss_idle,
        rss_loaded,
        rss_peak,
        window,
        cpu,
        keep_alives,
        due: leases as f64 / interval.as_secs_f64(),
        lost: Some(lost),
    }
}

// ---------------------------------------------------------------------------------------
// Output

/// (measurement, target text, rsp/floor minimum, rsp/etcd minimum, p99 maximum in ms).
const TARGETS: &[(&str, f64, f64, f64)] =
    &[("resolve", 0.50, 10.0, 1.0), ("register", 0.25, 10.0, 5.0)];

impl Report {
    fn figures(&self, what: &str, system: &str) -> Option<&Figures> {
        self.throughput
            .iter()
            .find(|(w, s, _)| *w == what && *s == system)
            .map(|(_, _, f)| f)
    }

    /// rsp as a fraction of `other` in `what` (per second; per server core-second for
    /// handshakes).
    fn ratio(&self, what: &str, other: &str) -> Option<f64> {
        let rsp = self.figures(what, "rsp")?;
        let o = self.figures(what, other)?;
        Some(if what == "handshake" {
            rsp.per_server_core_second() / o.per_server_core_second()
        } else {
            rsp.rate() / o.rate()
        })
    }

    fn json(&self, opts: &Opts) -> Value {
        let mut throughput = serde_json::Map::new();
        for (what, system, f) in &self.throughput {
            let entry = throughput
                .entry((*what).to_owned())
                .or_insert_with(|| json!({}));
            entry[*system] = f.json();
        }
        for what in ["resolve", "register", "handshake"] {
            if let Some(e) = throughput.get_mut(what) {
                e["rsp_over_floor"] = json!(self.ratio(what, "floor"));
                e["rsp_over_etcd"] = json!(self.ratio(what, "etcd"));
            }
        }
        json!({
            "machine": machine(),
            "options": {
                "seconds": opts.seconds, "rounds": opts.rounds, "clients": opts.clients,
                "connections": opts.connections, "pes": opts.pes,
                "keep_alive_secs": opts.keep_alive_secs, "window_secs": opts.window_secs,
                "trials": opts.trials, "pus": opts.pus,
            },
            "etcd_note": self.etcd_note,
            "throughput": throughput,
            "audit": self.audit.iter().map(|(w, records, ops)| json!({
                "measurement": w, "audit_records": records, "operations": ops,
            })).collect::<Vec<_>>(),
            "churn": self.churn.as_ref().map(Figures::json),
            "failover": self.failover.as_ref().map(|f| json!({
                "trials": f.trials,
                "pus_affected": f.affected,
                "pu_visible_ms": hist_json(&f.pu_visible),
                "registrar_visible_ms": hist_json(&f.registrar_visible),
            })),
            // Keyed by system, as `throughput` is.
            "keep_alive": self.keep_alive.iter().map(|s| (s.system.to_owned(), json!({
                "registrations": s.pes, "connections": s.connections,
                "setup_seconds": s.setup.as_secs_f64(),
                "rss_idle_kib": s.rss_idle, "rss_loaded_kib": s.rss_loaded,
                "rss_peak_kib": s.rss_peak, "bytes_per_registration": s.bytes_per_pe(),
                "window_seconds": s.window.as_secs_f64(),
                "server_cpu_cores": s.cores(),
                "keep_alives_per_second": s.keep_alive_rate(),
                "server_cpu_us_per_keep_alive": s.cpu_per_keep_alive_us(),
                "keep_alives_due_per_second": s.due,
                "lost": s.lost,
            }))).collect::<serde_json::Map<_, _>>(),
            "registrar_rss_kib": self.registrar_rss.0,
            "registrar_peak_rss_kib": self.registrar_rss.1,
        })
    }

    fn print(&self, opts: &Opts) {
        let m = machine();
        println!(
            "# rsp-bench: {} cores ({}), kernel {}\n",
            m["nproc"],
            m["cpu"].as_str().unwrap_or("?"),
            m["kernel"].as_str().unwrap_or("?")
        );
        println!(
            "{} clients per system; {} rounds of {} s, systems alternating within each \
             round, after a 1 s warm-up round. Latencies are per operation, closed loop.\n",
            opts.clients, opts.rounds, opts.seconds
        );
        if let Some(n) = &self.etcd_note {
            println!("Note: {n}\n");
        }
        for what in ["resolve", "register", "handshake"] {
            let rows: Vec<_> = self
                .throughput
                .iter()
                .filter(|(w, _, _)| *w == what)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let title = match what {
                "resolve" => format!(
                    "Resolutions, {} concurrent PUs (etcd: get by prefix; floor: 16 B → 128 B)",
                    opts.clients
                ),
                "register" => format!(
                    "Registrations, {} concurrent PEs (etcd: lease grant + put)",
                    opts.clients
                ),
                _ => format!(
                    "Full mutual-TLS handshakes + one request, {} concurrent connections",
                    opts.connections
                ),
            };
            println!("## {title}\n");
            println!(
                "| system | ops/s | ops/s by round | p50 ms | p90 ms | p99 ms | max ms | server cores | ops per server core-s | rsp ÷ this |"
            );
            println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
            for (_, system, f) in rows {
                let ratio = if *system == "rsp" {
                    "—".to_owned()
                } else {
                    fmt_opt(self.ratio(what, system))
                };
                println!(
                    "| {system} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {ratio} |",
                    f.rate(),
                    f.rounds
                        .iter()
                        .map(|r| format!("{r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.ms(0.5),
                    f.ms(0.9),
                    f.ms(0.99),
                    f.max_ms(),
                    f.server_cores(),
                    f.per_server_core_second(),
                );
            }
            if let Some((_, records, ops)) = self.audit.iter().find(|(w, _, _)| *w == what) {
                println!(
                    "\nrsp audit records committed: {records} for {ops} operations (warm-up included)."
                );
            }
            for &(w, floor_min, etcd_min, p99_max) in TARGETS {
                if w != what {
                    continue;
                }
                let rsp = self.figures(what, "rsp");
                println!(
                    "\nTargets: rsp ÷ floor {} (≥ {floor_min:.2}); rsp ÷ etcd {} (≥ {etcd_min:.0}); rsp p99 {} ms (≤ {p99_max})",
                    fmt_opt(self.ratio(what, "floor")),
                    fmt_opt(self.ratio(what, "etcd")),
                    fmt_opt(rsp.map(|f| f.ms(0.99))),
                );
            }
            if what == "handshake" {
                println!(
                    "\nTarget: rsp ÷ floor per server core-second {} (≥ 0.90)",
                    fmt_opt(self.ratio(what, "floor"))
                );
            }
            println!();
        }
        if let Some(f) = &self.churn {
            println!(
                "## PE churn: register a new PE + deregister it, {} connections\n",
                opts.connections
            );
            println!("| pairs/s | p50 ms | p90 ms | p99 ms | max ms | registrar cores |");
            println!("|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |\n",
                f.rate(),
                f.ms(0.5),
                f.ms(0.9),
                f.ms(0.99),
                f.max_ms(),
                f.server_cores()
            );
        }
        if let Some(f) = &self.failover {
            println!(
                "## Failover: {} PEs, {} PUs (request every 1 ms), {} trials, SIGKILL of the busiest PE\n",
                FAILOVER_PES, opts.pus, f.trials
            );
            println!("| what | samples | p50 ms | p90 ms | p99 ms | max ms |");
            println!("|---|---:|---:|---:|---:|---:|");
            for (name, h) in [
                (
                    "PU-visible: kill → next request served by another PE",
                    &f.pu_visible,
                ),
                (
                    "registrar-visible: kill → resolution without the PE",
                    &f.registrar_visible,
                ),
            ] {
                println!(
                    "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    h.len(),
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.9) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                    h.max() as f64 / 1e3,
                );
            }
            println!("\nTarget: PU-visible ≤ 50 ms.\n");
        }
        if !self.keep_alive.is_empty() {
            println!(
                "## Keep-alive load: {} PEs (etcd: leases with one key each), keep-alive every {} s, {} per connection, {} s window\n",
                self.keep_alive
                    .iter()
                    .map(|s| s.pes.to_string())
                    .collect::<Vec<_>>()
                    .join(" / "),
                opts.keep_alive_secs,
                PES_PER_CONN,
                opts.window_secs
            );
            println!(
                "| system | PEs / leases | connections | setup s | RSS idle MiB | RSS loaded MiB | RSS peak MiB | (loaded − idle) / PE | server cores | keep-alives/s answered | due | server CPU µs / keep-alive | lost |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for s in &self.keep_alive {
                println!(
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} B | {:.3} | {:.0} | {:.0} | {:.1} | {} |",
                    s.system,
                    s.pes,
                    s.connections,
                    s.setup.as_secs_f64(),
                    s.rss_idle as f64 / 1024.0,
                    s.rss_loaded as f64 / 1024.0,
                    s.rss_peak as f64 / 1024.0,
                    s.bytes_per_pe(),
                    s.cores(),
                    s.keep_alive_rate(),
                    s.due,
                    s.cpu_per_keep_alive_us(),
                    s.lost.map_or_else(|| "—".to_owned(), |l| l.to_string()),
                );
            }
            println!(
                "\nTargets (rsp): ≤ 2048 B per PE, ≤ 0.5 core. etcd: one gRPC keep-alive stream per lease (etcd-client 0.21), TTL 3 intervals.\n"
            );
        }
        if self.registrar_rss.0 > 0 {
            println!(
                "Main registrar at the end: RSS {:.1} MiB, peak {:.1} MiB.",
                self.registrar_rss.0 as f64 / 1024.0,
                self.registrar_rss.1 as f64 / 1024.0
            );
        }
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.2}"))
}

fn hist_json(h: &Histogram<u64>) -> Value {
    json!({
        "samples": h.len(),
        "p50": h.value_at_quantile(0.5) as f64 / 1e3,
        "p90": h.value_at_quantile(0.9) as f64 / 1e3,
        "p99": h.value_at_quantile(0.99) as f64 / 1e3,
        "max": h.max() as f64 / 1e3,
    })
}

/// nproc, CPU model and kernel of this machine.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu": cpu,
        "kernel": kernel,
    })
}
