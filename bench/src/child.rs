//! Child processes: rsp-bench re-executes itself as the registrar, the floor server or a
//! PE, so that each server's /proc CPU and memory are its own, and a PE can be killed.
//!
//! The protocol with the parent: the child prints `listening ADDR` when it serves, then
//! reads commands on stdin (`stats`, `stop`); end of input stops it too.

use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use asap::client::pe::{PeConfig, run as run_pe};
use asap::wire::param::{Address, PeId, Policy, PoolHandle, Transport, TransportUse};
use enrp::config::{Listen, Millis, RunConfig, SctpMode, Secs};
use enrp::daemon::now_ms;
use enrp::setup;
use enrp_core::handlespace::Limits;
use testkit::child::{commands, read_line};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::floor;
use crate::pin::{self, Cpus};
use crate::pki::store_from;
use crate::rounds::Meter;
use crate::stats::Proc;

/// The registrar child runs on enrpd's allocator (crates/enrpd/src/main.rs says why). A
/// global allocator is the whole process's: the floor and the load generator get it too,
/// so the ratios compare servers on the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The first argument that makes this binary a child.
pub(crate) const CHILD_ARG: &str = "--child";

/// Runs the child named by `args` (after [`CHILD_ARG`]).
pub(crate) fn main(args: &[String]) {
    // `enrpd` uses `Runtime::new()`: one worker per core. So do the other servers.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match args {
        [kind, pki, data, keep_alive_ms, rest @ ..] if kind == "registrar" => {
            let keep_alive = Duration::from_millis(keep_alive_ms.parse().expect("ms"));
            let postgres = matches!(rest, [p] if p == "postgres");
            rt.block_on(registrar(
                Path::new(pki),
                Path::new(data),
                keep_alive,
                postgres,
            ));
        }
        [kind, pki] if kind == "floor" => rt.block_on(floor::serve(Path::new(pki))),
        [kind, pki, registrar, pe_id] if kind == "pe" => rt.block_on(pe(
            Path::new(pki),
            registrar.parse().expect("registrar address"),
            pe_id.parse().expect("PE ID"),
        )),
        _ => panic!("usage: {CHILD_ARG} registrar|floor|pe ARGS"),
    }
}

/// The registrar, started as `enrpd run` starts it (`enrpd init`, then [`enrp::run`]):
/// SQLite store (WAL, `synchronous=FULL`), or with `postgres` a fresh database on the
/// server of `RSP_TEST_POSTGRES` (set by the parent from `--postgres`; `enrpd init
/// --store`); the audit log on, the default grants; loopback PEs allowed; no admin API,
/// ENRP or SCTP listener.
async fn registrar(pki: &Path, data: &Path, keep_alive: Duration, postgres: bool) {
    let database = if postgres {
        Some(
            store::db::test_db::empty_postgres("rsp-bench")
                .await
                .expect("--postgres sets RSP_TEST_POSTGRES"),
        )
    } else {
        None
    };
    let store_url = database.as_ref().map(|d| d.url.clone());
    let options = setup::InitOptions {
        name: Some("bench".into()),
        store: store_url.clone(),
        ..setup::InitOptions::default()
    };
    setup::init_with(pki, data, &options, now_ms())
        .await
        .expect("enrpd init");
    let config = RunConfig {
        data: data.to_owned(),
        asap_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        enrp_listen: Listen(None),
        admin_listen: Listen(None),
        sctp: SctpMode::Off,
        keep_alive_interval_ms: Millis(keep_alive),
        keep_alive_timeout_ms: Millis(keep_alive),
        allow_loopback: true, // `--allow-loopback`: PEs advertise 127.0.0.1
        checkpoint_log_secs: Secs(Duration::ZERO),
        ..RunConfig::default()
    };
    let running = enrp::run_with(config, |settings| {
        // Registration storms and the keep-alive load register more PEs per identity and
        // per pool than the defaults allow; the limits are checks, not costs, when not
        // reached.
        settings.registrar.limits = Limits {
            max_pools_per_namespace: 10_000,
            max_pes_per_pool: 1_000_000,
            max_pes: 2_000_000,
            max_pes_per_registrant: 1_000_000,
        };
        settings.registrar.max_pools_per_identity = usize::MAX;
        settings.registrar.rng_seed = 1;
        // The benchmark's clients load the registrar on purpose, from one address and one
        // identity: no per-client limits.
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
                let url = store_url.as_deref();
                let resolutions = audited(data, url, &["resolve"]).await;
                let registrations = audited(data, url, &["register", "reregister"]).await;
                println!(
                    "stats {} {} {resolutions} {registrations}",
                    s.records, s.transactions
                );
            }
            "stop" => break,
            _ => {}
        }
    }
    running.shutdown().await.expect("shutdown");
    drop(database);
    println!("stopped");
}

/// How many operations the committed records of `actions` account for: resolutions and
/// unchanged re-registrations answered by a connection task are audited in aggregate, a
/// record per connection, pool and outcome per second with its count
/// (`enrp::daemon::resolutions_in`). Read back from the audit table, as an auditor would.
async fn audited(data: &Path, url: Option<&str>, actions: &[&str]) -> u64 {
    let store = match url {
        Some(url) => store::db::Store::connect(url, &Default::default()).await,
        None => store::db::Store::open(data, &Default::default()).await,
    }
    .expect("a second store on the registrar's database");
    let mut conn = store.acquire().await.expect("connection");
    let mut sum = 0;
    for action in actions {
        let mut filter = store::audit::AuditFilter::default();
        filter.action = Some((*action).into());
        filter.limit = 1000;
        loop {
            let page = store::audit::query(&mut conn, &filter)
                .await
                .expect("audit query");
            sum += page
                .events
                .iter()
                .map(|e| enrp::daemon::resolutions_in(e.record.detail.as_deref()))
                .sum::<u64>();
            match page.next {
                Some(next) => filter.cursor = Some(next),
                None => break,
            }
        }
    }
    drop(conn);
    store.close().await;
    sum
}

/// A PE process (the failover measurement kills it): a plain TCP service that answers
/// each 16-byte request with 128 bytes, registered with the registrar by
/// `asap::client::pe::run` as any PE is.
async fn pe(pki: &Path, registrar: SocketAddr, pe_id: u32) {
    let trust = Arc::new(store_from(pki, "pe"));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let mut req = [0u8; floor::REQUEST];
                let reply = [7u8; floor::REPLY];
                while tcp.read_exact(&mut req).await.is_ok() {
                    if tcp.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let config = PeConfig {
        registrars: vec![asap::addr::TransportAddr::Tcp(registrar)],
        discovery: None,
        insecure_legacy: false,
        namespace: None,
        pool_handle: PoolHandle::new("failover").expect("pool handle"),
        pe_id: PeId::new(pe_id).expect("non-zero PE ID"),
        policy: Policy::RoundRobin,
        user_transport: Transport::Tcp {
            port: NonZeroU16::new(port).expect("bound port"),
            transport_use: TransportUse::DataOnly,
            addr: Address::new(Ipv4Addr::UNSPECIFIED),
        },
        registration_life: Duration::from_secs(300),
        liveness: Duration::from_secs(15),
        load: None,
        asap_listen: None,
        // The failover benchmark measures the pool policy's failover, not the card's.
        business_card: asap::client::card::Alternates::SelfOnly,
        labels: Default::default(),
        check: Default::default(),
        serving_identity: None,
    };
    let mut announced = false;
    let result = run_pe(&trust, &config, std::future::pending(), |event| {
        if !announced && matches!(event, asap::client::pe::PeEvent::Registered(_)) {
            announced = true;
            println!("listening 127.0.0.1:{port}");
            let _ = std::io::stdout().flush();
        }
    })
    .await;
    panic!("PE {pe_id} stopped: {result:?}");
}

/// A child process as the parent sees it.
pub(crate) struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub(crate) addr: SocketAddr,
    /// The PostgreSQL postmaster of a registrar on PostgreSQL (`--postgres`), whose
    /// processes' CPU time counts with the registrar's ([`ChildProc::meter`]).
    pub(crate) store: Option<Proc>,
}

impl ChildProc {
    /// Starts `rsp-bench --child ARGS…`, on `cpus` if given, and waits for its
    /// `listening ADDR`.
    pub(crate) fn start(args: &[&str], cpus: Option<&Cpus>) -> Self {
        Self::start_env(args, cpus, &[])
    }

    /// [`ChildProc::start`] with these environment variables.
    pub(crate) fn start_env(args: &[&str], cpus: Option<&Cpus>, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command
            .envs(env.iter().copied())
            .arg(CHILD_ARG)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = pin::spawn(&mut command, cpus).expect("spawn a child");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let line = read_line(&mut stdout);
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("child {args:?} said {line:?}"));
        Self {
            child,
            stdin,
            stdout,
            addr,
            store: None,
        }
    }

    pub(crate) fn proc(&self) -> Proc {
        Proc(self.child.id())
    }

    /// Whose CPU a measurement of this server counts: its own and its store server's.
    pub(crate) fn meter(&self) -> Meter {
        Meter {
            server: self.proc(),
            store: self.store,
        }
    }

    /// Sends a command and reads the one-line answer.
    pub(crate) fn ask(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "{command}").expect("child stdin");
        read_line(&mut self.stdout)
    }

    /// Audit records and transactions committed so far, and the resolutions and the
    /// registrations the records account for (registrar only).
    pub(crate) fn audit(&mut self) -> (u64, u64, u64, u64) {
        let line = self.ask("stats");
        let n: Vec<u64> = line
            .strip_prefix("stats ")
            .unwrap_or_else(|| panic!("registrar said {line:?}"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        (n[0], n[1], n[2], n[3])
    }

    /// SIGKILL: the process dies as a crashed PE does, without deregistering.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An orderly stop (`stop`), waiting for the exit.
    pub(crate) fn stop(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // After `stop` or `kill` this only reaps; after a panic it ends the child.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
