//! The keep-alive load: 100,000 PEs answering keep-alives on a fresh registrar, beside
//! etcd leases kept alive through etcd-client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::wire::param::PoolHandle;
use testkit::client::{answer_keep_alives_until, register_windowed};
use testkit::msg::pool;
use tokio::sync::{mpsc, watch};

use crate::child::ChildProc;
use crate::cli::Opts;
use crate::etcd;
use crate::pki::Pki;
use crate::registrar_data;

/// PEs per connection of the keep-alive load (the registrar allows many per connection).
pub(crate) const PES_PER_CONN: usize = 1_000;
/// Default cap of the etcd side of the keep-alive load: with one gRPC stream per lease
/// (etcd-client 0.21) etcd holds ~95 KB per lease, ~9.5 GB for 100,000; per-lease figures
/// (memory, CPU per keep-alive) are compared instead.
pub(crate) const ETCD_LEASES: usize = 10_000;
/// Registrations a keep-alive connection keeps in flight while it registers its PEs.
pub(crate) const REGISTRATION_WINDOW: u32 = 64;

/// The keep-alive steady state of one system.
pub(crate) struct Steady {
    pub(crate) system: &'static str,
    /// PEs (rsp) or leases with one key each (etcd).
    pub(crate) pes: usize,
    pub(crate) connections: usize,
    pub(crate) setup: Duration,
    pub(crate) rss_idle: u64,
    pub(crate) rss_loaded: u64,
    pub(crate) rss_peak: u64,
    pub(crate) window: Duration,
    pub(crate) cpu: Duration,
    pub(crate) keep_alives: u64,
    /// Due keep-alives per second: one per PE or lease per interval.
    pub(crate) due: f64,
    /// etcd: leases expired (their key gone) or whose keep-alive stream broke. rsp: not
    /// counted here (a PE's timeout shows as missing keep-alives).
    pub(crate) lost: Option<u64>,
}

impl Steady {
    pub(crate) fn bytes_per_pe(&self) -> f64 {
        (self.rss_loaded.saturating_sub(self.rss_idle) * 1024) as f64 / self.pes as f64
    }

    pub(crate) fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// Server CPU per keep-alive answered, µs (comparable at different counts).
    pub(crate) fn cpu_per_keep_alive_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.keep_alives.max(1) as f64
    }

    pub(crate) fn keep_alive_rate(&self) -> f64 {
        self.keep_alives as f64 / self.window.as_secs_f64()
    }
}

/// One connection of the keep-alive load: registers `count` PEs with at most
/// [`REGISTRATION_WINDOW`] in flight, then answers keep-alives until `stop`.
pub(crate) async fn keep_alive_connection(
    mut conn: Connection,
    handle: PoolHandle,
    first_id: u32,
    count: u32,
    registered: mpsc::Sender<()>,
    keep_alives: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) -> Connection {
    register_windowed(&mut conn, &handle, first_id, count, REGISTRATION_WINDOW).await;
    let _ = registered.send(()).await;
    answer_keep_alives_until(conn, stop, keep_alives).await
}

/// `opts.pes` PEs on a fresh registrar with `opts.keep_alive_secs` keep-alives: the
/// registrar's resident memory per PE and its CPU over a window.
pub(crate) async fn keep_alives(opts: &Opts, pki: &Pki) -> Steady {
    let pes = opts.pes;
    let keep_alive = Duration::from_secs(opts.keep_alive_secs);
    let connections = pes.div_ceil(PES_PER_CONN);
    let stores: Vec<_> = (0..connections)
        .map(|c| pki.client(&format!("pe/ka-{c}")))
        .collect();
    let pki_dir = pki.path().display().to_string();
    let data = registrar_data();
    let registrar = ChildProc::start(
        &[
            "registrar",
            &pki_dir,
            &data.path().display().to_string(),
            &keep_alive.as_millis().to_string(),
        ],
        opts.server_cpus.as_ref(),
    );
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
pub(crate) async fn etcd_keep_alives(opts: &Opts, etcd: &etcd::Etcd, leases: usize) -> Steady {
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
