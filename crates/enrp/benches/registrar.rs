//! The registrar under load (issue 4, "Benchmarks in the closing note"):
//! `cargo bench -p enrp --bench registrar [-- --json] [-- --pes 20000,50000,100000]`.
//!
//! Everything is real: the registrar is started by `enrpd init` and [`enrp::run_with`], as
//! `enrpd run` starts it, with a SQLite store in a temporary directory (WAL, `synchronous=FULL`, the default), the audit log on, mutual
//! TLS 1.3 over loopback with certificates from `trust::testing`, and the clients are
//! [`asap::client::Connection`]s. Three measurements, printed as Markdown tables:
//!
//! 1. **Registrations/s**: 64 PEs, each on its own TLS connection with its own identity,
//!    register distinct PE IDs one after the other (closed loop). Each registration is
//!    acknowledged only after its audit record committed (group commit).
//! 2. **Resolutions/s**: 64 PUs resolve a pool of 10 PEs in a closed loop; each
//!    resolution is audited (batched, committed within the batch delay).
//! 3. **Keep-alive steady state**: N PEs (default 20k, 50k and 100k) on connections of
//!    1,000 PEs each answer the registrar's keep-alives (every 5 s, the default). The
//!    registrar's resident memory per PE and the CPU it spends over a 20 s window.
//!
//! The registrar runs in a **child process**: this binary re-executes itself with
//! [`CHILD_ARG`], and the child starts the daemon exactly as `enrpd run` does (same
//! runtime, same defaults). The load generators stay in this process, so the child's
//! `/proc/PID/status` VmRSS and `/proc/PID/stat` utime+stime are the registrar's alone.
//! Both still share the machine's cores, so throughput figures are for client and
//! registrar together on this host.
//!
//! Run without `--bench` (`cargo test --benches`) it does a smoke run of a few seconds
//! with tiny numbers and short timers, so that the code keeps working.

// A benchmark measures wall time: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

mod support;

use support::{CHILD_ARG, PES_PER_CONN, Pki, init_registrar};
use testkit::child::{commands, read_line};
use testkit::client::{answer_keep_alives_until, register, register_windowed};
use testkit::msg::{pool, registration};
use testkit::proc::{Proc, clock_ticks};

use std::io::{BufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::wire::param::PoolHandle;
use asap::wire::{AsapMsg, Resolution};
use enrp::config::Millis;
use enrp_core::handlespace::Limits;
use serde_json::json;
use store::audit::{AuditFilter, MAX_PAGE};
use store::db::{Store, StoreOptions};
use tokio::sync::{Barrier, mpsc, watch};
use trust::TrustStore;

/// Registrations a keep-alive connection keeps in flight while it registers its PEs.
const REGISTRATION_WINDOW: usize = 64;
/// Connections of measurement 3 share this many pools (pool `ka-{conn % POOLS}`).
const POOLS: usize = 10;

/// What to run; `--bench` (passed by `cargo bench`) selects the full sizes.
#[derive(Debug)]
struct Options {
    json: bool,
    /// `--only throughput` or `--only keep-alive`: skip the other measurements.
    only: Option<String>,
    /// Concurrent PEs (measurement 1) and PUs (measurement 2).
    clients: usize,
    /// Registrations per PE in measurement 1 (after 5 untimed ones).
    registrations_per_pe: usize,
    /// Resolutions per PU in measurement 2 (after 5 untimed ones).
    resolutions_per_pu: usize,
    /// PE counts of measurement 3.
    pes: Vec<usize>,
    /// Keep-alive interval and timeout of measurement 3.
    keep_alive: Duration,
    /// Length of the CPU window of measurement 3.
    window: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let full = args.iter().any(|a| a == "--bench");
        let mut o = if full {
            Self {
                json: false,
                only: None,
                clients: 64,
                registrations_per_pe: 100,
                resolutions_per_pu: 500,
                pes: vec![20_000, 50_000, 100_000],
                keep_alive: Duration::from_secs(5),
                window: Duration::from_secs(20),
            }
        } else {
            Self {
                json: false,
                only: None,
                clients: 4,
                registrations_per_pe: 3,
                resolutions_per_pu: 3,
                pes: vec![200],
                keep_alive: Duration::from_millis(500),
                window: Duration::from_secs(1),
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--json" => o.json = true,
                "--only" => o.only = it.next().cloned(),
                "--pes" => {
                    o.pes = it
                        .next()
                        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                        .unwrap_or_default();
                }
                "--window-secs" => {
                    if let Some(s) = it.next().and_then(|v| v.parse().ok()) {
                        o.window = Duration::from_secs(s);
                    }
                }
                "--registrations-per-pe" => {
                    if let Some(n) = it.next().and_then(|v| v.parse().ok()) {
                        o.registrations_per_pe = n;
                    }
                }
                "--resolutions-per-pu" => {
                    if let Some(n) = it.next().and_then(|v| v.parse().ok()) {
                        o.resolutions_per_pu = n;
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
    clock_ticks(); // asks `getconf` now, not inside a measurement
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = Pki::new();
    pki.registrar("registrar");
    let mut throughput = Vec::new();
    if opts.only.as_deref() != Some("keep-alive") {
        throughput.push(rt.block_on(registrations(&pki, &opts)));
        throughput.push(rt.block_on(resolutions(&pki, &opts)));
    }
    let mut steady = Vec::new();
    if opts.only.as_deref() != Some("throughput") {
        for &n in &opts.pes {
            steady.push(rt.block_on(keep_alives(&pki, &opts, n)));
        }
    }
    if opts.json {
        let doc = json!({
            "throughput": throughput.iter().map(Throughput::json).collect::<Vec<_>>(),
            "keep_alive": steady.iter().map(Steady::json).collect::<Vec<_>>(),
            "keep_alive_slope_bytes_per_pe": slope(&steady),
        });
        println!("{doc:#}");
    } else {
        print_tables(&throughput, &steady, &opts);
    }
}

// ---------------------------------------------------------------------------------------
// The registrar process

/// The child: `CHILD_ARG PKI_DIR DATA_DIR KEEP_ALIVE_MS`. Starts the daemon as `enrpd run`
/// does, prints `listening ADDR`, then answers `stats` with `stats RECORDS TRANSACTIONS`
/// and `stop` (or end of input) with a shutdown and `removed TIMEOUT CONNECTION_LOSS`.
fn child_main(args: &[String]) {
    let [pki, data, keep_alive_ms] = args else {
        panic!("usage: {CHILD_ARG} PKI_DIR DATA_DIR KEEP_ALIVE_MS");
    };
    let pki = PathBuf::from(pki);
    let data = PathBuf::from(data);
    let keep_alive = Duration::from_millis(keep_alive_ms.parse().expect("milliseconds"));
    // `enrpd` uses `Runtime::new()`: one worker per core.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(serve_registrar(&pki, &data, keep_alive));
}

async fn serve_registrar(pki: &Path, data: &Path, keep_alive: Duration) {
    let mut config = init_registrar(pki, "registrar", data).await;
    config.keep_alive_interval_ms = Millis(keep_alive);
    config.keep_alive_timeout_ms = Millis(keep_alive);
    let running = enrp::run_with(config, |settings| {
        // The defaults, spelled out because measurement 3 depends on them: each identity
        // registers at most 10,000 PEs, each pool holds at most 100,000, 1,000,000 in all.
        settings.registrar.limits = Limits {
            max_pools_per_namespace: 10_000,
            max_pes_per_pool: 100_000,
            max_pes: 1_000_000,
            max_pes_per_registrant: 10_000,
        };
        settings.registrar.rng_seed = 1;
        // Its clients load the registrar on purpose: no per-client limits.
        settings.lift_client_limits();
    })
    .await
    .expect("registrar");
    let audit = running.audit().clone();
    println!("listening {}", running.asap_addr());
    let mut commands = commands();
    while let Some(command) = commands.recv().await {
        match command.trim() {
            "stats" => {
                let s = audit.stats();
                println!("stats {} {}", s.records, s.transactions);
            }
            "stop" => break,
            _ => {}
        }
    }
    running.shutdown().await.expect("shutdown");
    // The removals, from the audit log the stopped registrar left in its store.
    let store = Store::open(data, &StoreOptions::default())
        .await
        .expect("store");
    let timeouts = count_audited(&store, "remove:timeout").await;
    let lost = count_audited(&store, "remove:connection-loss").await;
    store.close().await;
    println!("removed {timeouts} {lost}");
}

/// Audit records with this action.
async fn count_audited(store: &Store, action: &str) -> usize {
    let mut conn = store.acquire().await.expect("connection");
    let mut filter = AuditFilter::default();
    filter.action = Some(action.to_owned());
    filter.limit = MAX_PAGE;
    let mut n = 0;
    loop {
        let page = store::audit::query(&mut conn, &filter)
            .await
            .expect("audit query");
        n += page.events.len();
        match page.next {
            Some(cursor) => filter.cursor = Some(cursor),
            None => return n,
        }
    }
}

/// The registrar child as the parent sees it.
struct Registrar {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

/// Audit records and transactions committed so far.
#[derive(Clone, Copy, Debug, Default)]
struct AuditCount {
    records: u64,
    transactions: u64,
}

/// PEs the registrar removed, from its audit log.
#[derive(Clone, Copy, Debug, Default)]
struct Removed {
    timeout: u64,
    connection_loss: u64,
}

impl Registrar {
    fn start(pki: &Pki, keep_alive: Duration) -> Self {
        let data = tempfile::tempdir().expect("data dir");
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .arg(CHILD_ARG)
            .arg(pki.dir.path())
            .arg(data.path())
            .arg(keep_alive.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the registrar");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let line = read_line(&mut stdout);
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("registrar said {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            addr,
            _data: data,
        }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        Proc(self.child.id()).rss_kib()
    }

    /// User plus system CPU time of all the registrar's threads.
    fn cpu(&self) -> Duration {
        Proc(self.child.id()).cpu()
    }

    fn audit(&mut self) -> AuditCount {
        writeln!(self.stdin, "stats").expect("registrar stdin");
        let line = read_line(&mut self.stdout);
        let n: Vec<u64> = line
            .strip_prefix("stats ")
            .unwrap_or_else(|| panic!("registrar said {line:?}"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        AuditCount {
            records: n[0],
            transactions: n[1],
        }
    }

    /// Waits until `records` audit records are committed (batched ones lag by up to the
    /// batch delay), at most 5 s.
    async fn await_records(&mut self, records: u64) -> AuditCount {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let a = self.audit();
            if a.records >= records || Instant::now() > deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(mut self) -> Removed {
        writeln!(self.stdin, "stop").expect("registrar stdin");
        let line = read_line(&mut self.stdout);
        let n: Vec<u64> = line
            .strip_prefix("removed ")
            .unwrap_or_else(|| panic!("registrar said {line:?}"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let status = self.child.wait().expect("wait for the registrar");
        assert!(status.success(), "registrar exited with {status}");
        Removed {
            timeout: n[0],
            connection_loss: n[1],
        }
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
// Messages

async fn resolve(conn: &mut Connection, msg: &AsapMsg) {
    conn.send(msg).await.expect("send resolution");
    loop {
        match conn.recv().await.expect("resolution response") {
            AsapMsg::HandleResolutionResponse {
                result: Resolution::Found { pool_elements, .. },
                ..
            } => {
                assert_eq!(pool_elements.len(), 3, "the default: 3 PEs");
                return;
            }
            other => assert!(
                !matches!(other, AsapMsg::HandleResolutionResponse { .. }),
                "resolution failed: {other:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1 and 2: throughput

/// One throughput run.
struct Throughput {
    what: &'static str,
    clients: usize,
    elapsed: Duration,
    /// Per operation, sorted.
    latencies: Vec<Duration>,
    /// Registrar CPU time during the run.
    cpu: Duration,
    /// Audit records and transactions committed for the run's operations.
    audit: AuditCount,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        let l = &self.latencies;
        l.get(((l.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "what": self.what,
            "clients": self.clients,
            "operations": self.latencies.len(),
            "seconds": self.elapsed.as_secs_f64(),
            "per_second": self.rate(),
            "p50_ms": ms(self.pct(0.5)),
            "p99_ms": ms(self.pct(0.99)),
            "max_ms": ms(self.pct(1.0)),
            "registrar_cpu_cores": self.cpu.as_secs_f64() / self.elapsed.as_secs_f64(),
            "audit_records": self.audit.records,
            "audit_transactions": self.audit.transactions,
        })
    }
}

/// Awaits `f`, failing the run after 10 minutes (a client task that panicked would
/// otherwise leave the others waiting for ever).
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .expect("a client task failed (see its panic above)")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `op` `per_client` times on each of `conns` at once, after 5 untimed warm-ups.
async fn closed_loop(
    registrar: &mut Registrar,
    conns: Vec<Connection>,
    per_client: usize,
    op: impl Fn(usize, usize, IpAddr) -> AsapMsg + Send + Sync + 'static,
    register_op: bool,
) -> (Duration, Vec<Duration>, Duration, AuditCount) {
    const WARM_UP: usize = 5;
    let op = Arc::new(op);
    let ready = Arc::new(Barrier::new(conns.len() + 1));
    let start = Arc::new(Barrier::new(conns.len() + 1));
    let done = Arc::new(Barrier::new(conns.len() + 1));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (op, ready, start, done) = (
                Arc::clone(&op),
                Arc::clone(&ready),
                Arc::clone(&start),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                let ip = conn.local_addr().ip();
                let mut run = async |k: usize| {
                    let msg = op(i, k, ip);
                    if register_op {
                        register(&mut conn, &msg).await;
                    } else {
                        resolve(&mut conn, &msg).await;
                    }
                };
                for k in 0..WARM_UP {
                    run(k).await;
                }
                ready.wait().await;
                start.wait().await;
                let mut latencies = Vec::with_capacity(per_client);
                for k in WARM_UP..WARM_UP + per_client {
                    let t = Instant::now();
                    run(k).await;
                    latencies.push(t.elapsed());
                }
                done.wait().await;
                latencies
            })
        })
        .collect();
    within(ready.wait()).await;
    // The warm-ups' batched records are committed within the batch delay (50 ms): wait
    // for the count to settle so that it holds only the run's records.
    let mut audit0 = registrar.audit();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = registrar.audit();
        if now.records == audit0.records {
            break;
        }
        audit0 = now;
    }
    let (t0, cpu0) = (Instant::now(), registrar.cpu());
    within(start.wait()).await;
    within(done.wait()).await;
    let (elapsed, cpu) = (t0.elapsed(), registrar.cpu() - cpu0);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    latencies.sort_unstable();
    let expected = audit0.records + latencies.len() as u64;
    let audit1 = registrar.await_records(expected).await;
    let audit = AuditCount {
        records: audit1.records - audit0.records,
        transactions: audit1.transactions - audit0.transactions,
    };
    (elapsed, latencies, cpu, audit)
}

async fn connect_all(registrar: &Registrar, stores: &[Arc<TrustStore>]) -> Vec<Connection> {
    let addr = registrar.addr;
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = Arc::clone(s);
            tokio::spawn(async move { Connection::connect(&s, addr).await.expect("connect") })
        })
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await.expect("connect task"));
    }
    conns
}

/// Measurement 1.
async fn registrations(pki: &Pki, opts: &Options) -> Throughput {
    let mut registrar = Registrar::start(pki, Duration::from_secs(5));
    let stores: Vec<_> = (0..opts.clients)
        .map(|i| pki.client(&format!("pe/reg-{i}")))
        .collect();
    let conns = connect_all(&registrar, &stores).await;
    let per_pe = opts.registrations_per_pe;
    let handle = pool("bench-register");
    // PE `i` registers IDs i·stride+1, i·stride+2, …: distinct across PEs.
    let stride = per_pe + 100;
    let (elapsed, latencies, cpu, audit) = closed_loop(
        &mut registrar,
        conns,
        per_pe,
        move |i, k, ip| registration(&handle, (i * stride + k + 1) as u32, ip),
        true,
    )
    .await;
    registrar.stop();
    Throughput {
        what: "registrations (audited before the ack)",
        clients: opts.clients,
        elapsed,
        latencies,
        cpu,
        audit,
    }
}

/// Measurement 2.
async fn resolutions(pki: &Pki, opts: &Options) -> Throughput {
    let mut registrar = Registrar::start(pki, Duration::from_secs(5));
    // Ten PEs to resolve, kept alive by one connection for the whole run.
    let handle = pool("bench-resolve");
    let mut pe = Connection::connect(&pki.client("pe/target"), registrar.addr)
        .await
        .expect("connect PE");
    let ip = pe.local_addr().ip();
    for id in 1..=10 {
        register(&mut pe, &registration(&handle, id, ip)).await;
    }
    let (stop, stopped) = watch::channel(false);
    let keeper = tokio::spawn(async move {
        answer_keep_alives_until(pe, stopped, Arc::default()).await;
    });
    let stores: Vec<_> = (0..opts.clients)
        .map(|i| pki.client(&format!("pu/res-{i}")))
        .collect();
    let conns = connect_all(&registrar, &stores).await;
    let (elapsed, latencies, cpu, audit) = closed_loop(
        &mut registrar,
        conns,
        opts.resolutions_per_pu,
        move |_, _, _| AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: handle.clone(),
            option: None,
            hints: Default::default(),
        },
        false,
    )
    .await;
    let _ = stop.send(true);
    let _ = keeper.await;
    registrar.stop();
    Throughput {
        what: "resolutions (audited, batched)",
        clients: opts.clients,
        elapsed,
        latencies,
        cpu,
        audit,
    }
}

// ---------------------------------------------------------------------------------------
// 3: keep-alive steady state

/// One steady-state run.
struct Steady {
    pes: usize,
    connections: usize,
    /// From the first connection to the last registration acknowledged.
    setup: Duration,
    /// Registrar RSS (KiB) before the first PE, after the window, and its peak.
    rss_idle: u64,
    rss_loaded: u64,
    rss_peak: u64,
    window: Duration,
    /// Registrar CPU time in the window.
    cpu: Duration,
    /// Keep-alives the PEs received (and answered) in the window.
    keep_alives: u64,
    removed: Removed,
}

impl Steady {
    fn bytes_per_pe(&self) -> f64 {
        (self.rss_loaded.saturating_sub(self.rss_idle) * 1024) as f64 / self.pes as f64
    }

    fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    fn keep_alive_rate(&self) -> f64 {
        self.keep_alives as f64 / self.window.as_secs_f64()
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "pes": self.pes,
            "connections": self.connections,
            "setup_seconds": self.setup.as_secs_f64(),
            "rss_idle_kib": self.rss_idle,
            "rss_loaded_kib": self.rss_loaded,
            "rss_peak_kib": self.rss_peak,
            "bytes_per_pe": self.bytes_per_pe(),
            "window_seconds": self.window.as_secs_f64(),
            "registrar_cpu_cores": self.cores(),
            "keep_alives_per_second": self.keep_alive_rate(),
            "removed_timeout": self.removed.timeout,
            "removed_connection_loss": self.removed.connection_loss,
        })
    }
}

/// (RSS at the largest count − RSS at the smallest) / (difference in PEs), in bytes.
fn slope(runs: &[Steady]) -> Option<f64> {
    let lo = runs.iter().min_by_key(|r| r.pes)?;
    let hi = runs.iter().max_by_key(|r| r.pes)?;
    (hi.pes > lo.pes)
        .then(|| (hi.rss_loaded as f64 - lo.rss_loaded as f64) * 1024.0 / (hi.pes - lo.pes) as f64)
}

/// One connection of measurement 3: registers `count` PEs with at most
/// [`REGISTRATION_WINDOW`] in flight, reports it on `registered`, then answers
/// keep-alives until `stop`. It answers keep-alives all along: the first PEs' keep-alives
/// are due before the last PEs of a large run are registered.
async fn keep_alive_connection(
    mut conn: Connection,
    handle: PoolHandle,
    first_id: u32,
    count: u32,
    registered: mpsc::Sender<()>,
    keep_alives: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) -> Connection {
    register_windowed(
        &mut conn,
        &handle,
        first_id,
        count,
        REGISTRATION_WINDOW as u32,
    )
    .await;
    let _ = registered.send(()).await;
    answer_keep_alives_until(conn, stop, keep_alives).await
}

/// Measurement 3 with `pes` PEs.
async fn keep_alives(pki: &Pki, opts: &Options, pes: usize) -> Steady {
    let connections = pes.div_ceil(PES_PER_CONN);
    let stores: Vec<_> = (0..connections)
        .map(|c| pki.client(&format!("pe/ka-{c}")))
        .collect();
    let registrar = Registrar::start(pki, opts.keep_alive);
    // Let the child settle (runtime, SQLite, TLS config) before the idle figure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_idle, _) = registrar.rss_kib();
    let t0 = Instant::now();
    let conns = connect_all(&registrar, &stores).await;
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
                pool(&format!("ka-{}", c % POOLS)),
                (c * PES_PER_CONN + 1) as u32,
                count,
                registered.clone(),
                Arc::clone(&counter),
                stopped.clone(),
            ))
        })
        .collect();
    for _ in 0..connections {
        within(registered_rx.recv()).await;
    }
    let setup = t0.elapsed();
    // Every PE registered within `setup`, so one keep-alive interval later all of them
    // are in their keep-alive cycle; one more second for good measure.
    tokio::time::sleep(opts.keep_alive + Duration::from_secs(1)).await;
    let (w0, cpu0, ka0) = (
        Instant::now(),
        registrar.cpu(),
        counter.load(Ordering::Relaxed),
    );
    tokio::time::sleep(opts.window).await;
    let (window, cpu, keep_alives) = (
        w0.elapsed(),
        registrar.cpu() - cpu0,
        counter.load(Ordering::Relaxed) - ka0,
    );
    let (rss_loaded, rss_peak) = registrar.rss_kib();
    let _ = stop.send(true);
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.expect("PE task"));
    }
    // Stop the registrar while the connections are still open: no connection-loss
    // removals are due, so every removal counted is a missed keep-alive.
    let removed = registrar.stop();
    drop(conns);
    Steady {
        pes,
        connections,
        setup,
        rss_idle,
        rss_loaded,
        rss_peak,
        window,
        cpu,
        keep_alives,
        removed,
    }
}

// ---------------------------------------------------------------------------------------
// Output

fn print_tables(throughput: &[Throughput], steady: &[Steady], opts: &Options) {
    if !throughput.is_empty() {
        print_throughput(throughput);
    }
    if !steady.is_empty() {
        print_steady(steady, opts);
    }
}

fn print_throughput(throughput: &[Throughput]) {
    println!(
        "## Registrar throughput ({} cores; registrar in a child process, clients here; \
         SQLite WAL synchronous=FULL; mutual TLS 1.3 over loopback)\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "| operation | clients | operations | per second | p50 | p99 | max | registrar CPU (cores) | audit records / transaction |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in throughput {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {} / {} |",
            t.what,
            t.clients,
            t.latencies.len(),
            t.rate(),
            ms(t.pct(0.5)),
            ms(t.pct(0.99)),
            ms(t.pct(1.0)),
            t.cpu.as_secs_f64() / t.elapsed.as_secs_f64(),
            t.audit.records,
            t.audit.transactions,
        );
    }
}

fn print_steady(steady: &[Steady], opts: &Options) {
    println!(
        "\n## Registered PEs answering keep-alives every {:?} ({} PEs per connection, \
         {:?} window; targets: ≤ 2 KiB per PE, < 0.5 core)\n",
        opts.keep_alive, PES_PER_CONN, opts.window
    );
    println!(
        "| PEs | connections | setup | RSS idle | RSS loaded | RSS peak | (loaded − idle) / PE | registrar CPU (cores) | keep-alives/s answered | removed (timeout / conn. loss) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in steady {
        println!(
            "| {} | {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} B | {:.3} | {:.0} | {} / {} |",
            s.pes,
            s.connections,
            s.setup.as_secs_f64(),
            s.rss_idle as f64 / 1024.0,
            s.rss_loaded as f64 / 1024.0,
            s.rss_peak as f64 / 1024.0,
            s.bytes_per_pe(),
            s.cores(),
            s.keep_alive_rate(),
            s.removed.timeout,
            s.removed.connection_loss,
        );
    }
    if let Some(b) = slope(steady) {
        println!("\nSlope between the smallest and the largest run: {b:.0} bytes of RSS per PE.");
    }
}
