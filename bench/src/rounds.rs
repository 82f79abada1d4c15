//! Closed loops and alternating rounds: every client one operation in flight for a
//! round's length, floor, rsp and etcd one after the other on connections kept from round
//! to round; and the clients of each system.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use asap::client::Connection;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use testkit::client::answer_keep_alive;
use tokio::sync::watch;

use crate::child::ChildProc;
use crate::cli::Opts;
use crate::pki::Pki;
use crate::report::Report;
use crate::stats::{Figures, Proc, histogram, record};
use crate::throughput::Registering;
use crate::{etcd, floor};

/// What one closed-loop run did.
pub(crate) struct Run<C> {
    pub(crate) clients: Vec<C>,
    pub(crate) ops: u64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) elapsed: Duration,
    pub(crate) cpu: Duration,
    /// The store server's CPU time (PostgreSQL: [`Meter::store`]), if it has one.
    pub(crate) store_cpu: Option<Duration>,
}

/// Whose CPU time a run counts: the server under test, and the database server it uses
/// when that is a process of its own (PostgreSQL's postmaster, counted with its backends:
/// `Proc::tree_cpu`). SQLite runs inside the registrar: no store process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meter {
    pub(crate) server: Proc,
    pub(crate) store: Option<Proc>,
}

impl From<Proc> for Meter {
    fn from(server: Proc) -> Self {
        Self {
            server,
            store: None,
        }
    }
}

/// Every client runs `op` back to back for `length` (closed loop: one operation in flight
/// per client); the server's (and its store's) CPU time is taken around the run. An
/// operation takes its client by value and gives it back, so that clients keep their
/// connections from round to round.
pub(crate) async fn closed_loop<C, F, Fut>(
    meter: impl Into<Meter>,
    clients: Vec<C>,
    length: Duration,
    op: F,
) -> Run<C>
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = C> + Send,
{
    let Meter { server, store } = meter.into();
    let cpu0 = server.cpu();
    let store0 = store.map(Proc::tree_cpu);
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
        store_cpu: None,
    };
    for t in tasks {
        let (c, n, h) = t.await.expect("a client task panicked");
        run.clients.push(c);
        run.ops += n;
        run.latency.add(&h).expect("same bounds");
    }
    run.elapsed = t0.elapsed();
    run.cpu = server.cpu().saturating_sub(cpu0);
    run.store_cpu = store
        .zip(store0)
        .map(|(p, cpu0)| p.tree_cpu().saturating_sub(cpu0));
    run
}

/// rsp clients between their turns: either simply held, or handed to tasks that keep
/// them alive (PEs answer keep-alives while the other systems run, as live PEs do).
pub(crate) struct Idle<R> {
    pub(crate) held: Vec<R>,
    pub(crate) stop: Option<watch::Sender<bool>>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<R>>,
}

impl<R> Idle<R> {
    pub(crate) fn hold(held: Vec<R>) -> Self {
        Self {
            held,
            stop: None,
            tasks: Vec::new(),
        }
    }

    pub(crate) async fn resume(mut self) -> Vec<R> {
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
pub(crate) fn answer_while_idle(clients: Vec<Registering>) -> Idle<Registering> {
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
pub(crate) struct Sides<F, R, E> {
    pub(crate) floor: Vec<F>,
    pub(crate) rsp: Vec<R>,
    pub(crate) etcd: Option<Vec<E>>,
}

/// The warm-up round, then `opts.rounds` rounds of floor, rsp, etcd in turn; figures
/// summed per system. Returns the figures and the rsp operations (warm-up included).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn alternate<F, R, E, OF, FF, OR, FR, OE, FE>(
    opts: &Opts,
    what: &'static str,
    procs: (Proc, Meter, Option<Proc>),
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
            f_rsp.add_store(r.store_cpu);
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

pub(crate) async fn floor_clients(pki: &Pki, floor: &ChildProc, n: usize) -> Vec<floor::FloorConn> {
    let store = pki.client("pu/floor");
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(floor::connect(&store, floor.addr).await);
    }
    v
}

pub(crate) async fn etcd_clients(
    etcd: Option<&etcd::Etcd>,
    n: usize,
) -> Option<Vec<etcd_client::Client>> {
    let etcd = etcd?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(etcd.client().await.expect("etcd client"));
    }
    Some(v)
}

/// Connections to the registrar, one identity each (`{prefix}-{i}`), connected in turn.
pub(crate) async fn rsp_connections(
    pki: &Pki,
    addr: SocketAddr,
    prefix: &str,
    n: usize,
) -> Vec<Connection> {
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

/// Waits until the registrar's committed audit records, and the resolutions they account
/// for, stop changing for 1.2 s (batched records are committed within the batch delay; a
/// connection's resolutions and unchanged re-registrations are written once a second,
/// `enrp`'s `tally::INTERVAL`), at most 10 s; returns (records, resolutions audited,
/// registrations audited).
pub(crate) async fn settled_audit(registrar: &mut ChildProc) -> (u64, u64, u64) {
    let counts = |r: &mut ChildProc| {
        let (records, _, resolutions, registrations) = r.audit();
        (records, resolutions, registrations)
    };
    let mut last = counts(registrar);
    let mut same = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counts(registrar);
        same = if now == last { same + 1 } else { 0 };
        if same == 6 {
            break;
        }
        last = now;
    }
    last
}
