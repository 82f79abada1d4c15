//! The failover workload: PE processes killed under PUs with session affinity; the time
//! until the PUs and the registrar see it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap::client::Connection;
use asap::client::pu::{PoolUser, PuConfig};
use asap::wire::param::{PoolHandle, Transport};
use hdrhistogram::Histogram;
use testkit::msg::pool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use crate::child::ChildProc;
use crate::cli::Opts;
use crate::floor;
use crate::pki::Pki;
use crate::stats::{histogram, record};

/// PEs in the failover pool.
pub(crate) const FAILOVER_PES: u32 = 4;

/// Failover figures over the trials.
pub(crate) struct Failover {
    pub(crate) trials: usize,
    /// PUs that were using the killed PE, summed over the trials.
    pub(crate) affected: usize,
    /// Kill → that PU's next successful request on another PE.
    pub(crate) pu_visible: Histogram<u64>,
    /// Kill → the registrar's resolutions no longer list the killed PE.
    pub(crate) registrar_visible: Histogram<u64>,
}

/// PE processes (`--child pe`) serve a pool; PUs (`asap::client::pu::PoolUser`, session
/// affinity) send a 16-byte request every millisecond to their PE. Each trial SIGKILLs
/// the PE that serves the most PUs and measures, per PU that was on it, the time from the
/// kill to its next successful request (it notices the dead PE, reports it unreachable,
/// fails over to another from its cache); and the time until the registrar's resolution
/// no longer lists the dead PE (its connection loss removed it).
pub(crate) async fn failover(opts: &Opts, pki: &Pki, registrar: &ChildProc) -> Failover {
    let handle = pool("failover");
    let pki_dir = pki.path().display().to_string();
    let reg = registrar.addr.to_string();
    let start_pe = |id: u32| ChildProc::start(&["pe", &pki_dir, &reg, &id.to_string()], None);
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
pub(crate) async fn pool_user(
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
