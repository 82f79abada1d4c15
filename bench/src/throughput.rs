//! The throughput workloads against rsp, the floor and etcd: resolutions,
//! registrations, handshakes (a full mutual-TLS handshake per operation) and PE churn.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use asap::client::Connection;
use asap::wire::AsapMsg;
use asap::wire::param::{PeId, PoolHandle};
use indicatif::ProgressBar;
use testkit::client::{answer_keep_alive, answer_keep_alives_until, register};
use testkit::msg::{pool, registration};
use tokio::sync::watch;

use crate::child::ChildProc;
use crate::cli::Opts;
use crate::pki::Pki;
use crate::report::Report;
use crate::rounds::{
    Idle, Sides, alternate, answer_while_idle, closed_loop, etcd_clients, floor_clients,
    rsp_connections, settled_audit,
};
use crate::stats::Figures;
use crate::{etcd, floor};

/// Deregisters and waits for the answer, answering keep-alives meanwhile.
pub(crate) async fn deregister(conn: &mut Connection, pool_handle: &PoolHandle, pe_id: u32) {
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
pub(crate) async fn resolve(conn: &mut Connection, pool_handle: &PoolHandle) -> usize {
    asap::client::pu::resolve(conn, None, pool_handle, None)
        .await
        .expect("resolution")
        .pool_elements
        .len()
}

/// PEs in the resolved pool (rsp and etcd alike).
pub(crate) const POOL_PES: u32 = 10;

pub(crate) async fn resolutions(
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
        (floor.proc(), registrar.meter(), etcd.map(etcd::Etcd::proc)),
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
    let (records, resolutions, _) = settled_audit(registrar).await;
    // Rows, and the resolutions they account for (compacted: a row per connection and
    // pool per second): every resolution must be in the second.
    report
        .audit
        .push(("resolve", records - audit0.0, resolutions - audit0.1, ops));
    let _ = stop.send(true);
    let _ = keeper.await;
}

/// A registering PE: its connection, its address, and the next PE ID it registers.
pub(crate) struct Registering {
    pub(crate) conn: Connection,
    pub(crate) ip: IpAddr,
    pub(crate) next: u32,
}

/// The PE ID a registering client uses after `next`: the next one, or, with a ring of
/// `ring` IDs starting at `first` (`--register-ids`), the first again after the last, so
/// that the client re-registers the same `ring` PEs over and over.
fn after(next: u32, first: u32, ring: u32) -> u32 {
    if ring > 0 && next + 1 >= first + ring {
        first
    } else {
        next + 1
    }
}

pub(crate) async fn registrations(
    opts: &Opts,
    pki: &Pki,
    registrar: &mut ChildProc,
    floor: &ChildProc,
    etcd: Option<&etcd::Etcd>,
    report: &mut Report,
    bar: &ProgressBar,
) {
    let handle = pool("bench-register");
    // PE `i` registers IDs i·10⁷+1, i·10⁷+2, …, i·10⁷+N and then the same N again
    // (`--register-ids N`: re-registrations, unchanged, acknowledged by the connection
    // task and audited in aggregate, docs/SECURITY.md), so that the handlespace, and the keep-alives the registrar sends, stay at
    // clients × N PEs; with `--register-ids 0` every registration is a new PE (a storm
    // whose keep-alives grow with the run: docs/BENCHMARKS.md).
    let ring = opts.register_ids;
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
        (floor.proc(), registrar.meter(), etcd_proc),
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
                    let first = r.next - (r.next - 1) % 10_000_000;
                    r.next = after(r.next, first, ring);
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
    let (records, _, registrations) = settled_audit(registrar).await;
    report.audit.push((
        "register",
        records - audit0.0,
        registrations - audit0.2,
        ops,
    ));
}

/// Registers `n` PEs in `handle` on one connection and keeps them alive until the
/// returned sender says stop.
pub(crate) async fn standing_pool(
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
    let (stop, stopped) = watch::channel(false);
    let keeper = tokio::spawn(async move {
        answer_keep_alives_until(pe, stopped, Arc::default()).await;
    });
    (stop, keeper)
}

/// Full mutual-TLS handshakes: each operation is a new connection (TCP, full TLS 1.3
/// handshake with client certificate, no resumption: the trust store's configurations
/// disable it), one request and its answer (a resolution at the registrar, 16/128 bytes
/// at the floor), and the close. The figure is operations per server CPU-second.
pub(crate) async fn handshakes(
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

/// PE churn: each connection registers a new PE and deregisters it, back to back (both
/// audited). One operation = the pair.
pub(crate) async fn churn(opts: &Opts, pki: &Pki, registrar: &ChildProc) -> Figures {
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

#[cfg(test)]
mod tests {
    use super::after;

    #[test]
    fn a_ring_of_ids_starts_over_and_no_ring_never_does() {
        let first = 30_000_001;
        let ids: Vec<_> = std::iter::successors(Some(first), |&n| Some(after(n, first, 3)))
            .take(7)
            .collect();
        assert_eq!(
            ids,
            [
                first,
                first + 1,
                first + 2,
                first,
                first + 1,
                first + 2,
                first
            ]
        );
        assert_eq!(after(first + 5, first, 0), first + 6);
    }
}
