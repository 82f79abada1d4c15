//! Bulk throughput of a forwarding PE (`asap::client::forward`, `rsp pe --forward`) against
//! a direct TLS connection (issue 21): a PU sends N bytes over mutual TLS either to a TLS
//! server that discards them (direct) or to a forwarding PE that carries them over plain
//! TCP to a server that discards them (forwarded). The PU, the PE and each server run on
//! their own thread with their own single-threaded runtime, as separate processes would.
//! Runs alternate, so that a noisy machine weighs on both alike.
//!
//! `cargo run --release -p asap --example forward_throughput -- [MiB] [rounds] [pin]`
//! (default 1024 MiB, 3 rounds).
#![allow(clippy::disallowed_methods)] // a benchmark measures real time

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use asap::client::admit::AllowedPus;
use asap::client::forward::{ForwardConfig, Forwarder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trust::testing::TestCa;
use trust::{Protocol, TrustStore};

const CHUNK: usize = 64 * 1024;

fn store(ca: &TestCa, path: &str) -> Arc<TrustStore> {
    let s = TrustStore::new(ca.leaf(path).issue().identity()).expect("store");
    s.add_domain(ca.bundle()).expect("domain");
    Arc::new(s)
}

/// Runs `f` on its own thread with a single-threaded runtime; returns the thread's id in
/// /proc (for its CPU time).
fn on_thread<F: Future<Output = ()> + Send + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // "/proc/thread-self" links to "PID/task/TID".
        let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let _ = tx.send(me.file_name().expect("TID").to_string_lossy().into_owned());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f());
    });
    rx.recv().expect("the thread starts")
}

/// CPU seconds (user + system) a thread of this process has used.
fn cpu_secs(tid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    // Fields after the command's closing parenthesis: state is field 3; utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0 // USER_HZ
}

/// A loopback listener for a runtime on another thread, and its address.
fn listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    l.set_nonblocking(true).expect("nonblocking");
    (l, addr)
}

/// Reads a stream to its end, then reports the bytes read.
async fn discard<S: tokio::io::AsyncRead + Unpin>(mut s: S, done: mpsc::Sender<u64>) {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    while let Ok(k) = s.read(&mut buf).await {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let _ = done.send(n);
}

/// A plain TCP discard server (the existing server behind the PE), and its thread.
fn plain_sink(done: mpsc::Sender<u64>) -> (SocketAddr, String) {
    let (l, addr) = listener();
    let tid = on_thread(move || async move {
        let l = TcpListener::from_std(l).expect("listener");
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(discard(s, done.clone()));
        }
    });
    (addr, tid)
}

/// A TLS discard server presenting `pe` (the direct path), and its thread.
fn tls_sink(pe: Arc<TrustStore>, done: mpsc::Sender<u64>) -> (SocketAddr, String) {
    let (l, addr) = listener();
    let tid = on_thread(move || async move {
        let l = TcpListener::from_std(l).expect("listener");
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let acceptor = TlsAcceptor::from(pe.server_config(Protocol::Asap));
            let done = done.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    discard(tls, done).await;
                }
            });
        }
    });
    (addr, tid)
}

/// A forwarding PE presenting `pe`, to `target`, and its thread.
fn forwarding_pe(pe: Arc<TrustStore>, target: SocketAddr) -> (SocketAddr, String) {
    let (l, addr) = listener();
    let tid = on_thread(move || async move {
        let l = TcpListener::from_std(l).expect("listener");
        let f = Arc::new(Forwarder::new(ForwardConfig::new(
            target.to_string().parse().expect("target"),
        )));
        f.serve(l, pe, AllowedPus::default(), |_| {}).await;
    });
    (addr, tid)
}

/// The reference the forwarding PE is measured against besides direct TLS: the same TLS
/// termination and `tokio::io::copy_bidirectional` with the same buffers, which writes
/// each TLS record's plaintext (at most 16 KiB) on its own (what `Forwarder` did before
/// it gathered reads, `forward/pump.rs`).
fn plain_copy_pe(pe: Arc<TrustStore>, target: SocketAddr) -> (SocketAddr, String) {
    let (l, addr) = listener();
    let tid = on_thread(move || async move {
        let l = TcpListener::from_std(l).expect("listener");
        while let Ok((s, _)) = l.accept().await {
            let acceptor = TlsAcceptor::from(pe.server_config(Protocol::Asap));
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut out)) =
                    (acceptor.accept(s).await, TcpStream::connect(target).await)
                else {
                    return;
                };
                let len = asap::client::forward::BUFFER_LEN;
                let _ =
                    tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut out, len, len).await;
            });
        }
    });
    (addr, tid)
}

/// Pins thread `tid` of this process to `cpu` (`taskset`, util-linux); false if it cannot.
fn pin(tid: &str, cpu: usize) -> bool {
    std::process::Command::new("taskset")
        .args(["-pc", &cpu.to_string(), tid])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `bytes` over mutual TLS as the PU to `addr`; the time until the sink counted
/// them all.
fn send(
    pu: &TrustStore,
    addr: SocketAddr,
    bytes: u64,
    done: &mpsc::Receiver<u64>,
    pu_cpu: Option<usize>,
) -> Duration {
    let pe = identity::SpiffeId::parse("spiffe://acme.test/pe/bench").expect("id");
    let config = pu
        .client_config_expecting(Protocol::Asap, identity::IdentityPattern::exact(&pe))
        .expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(cpu) = pu_cpu {
        let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        assert!(
            pin(&me.file_name().expect("TID").to_string_lossy(), cpu),
            "taskset"
        );
    }
    let start = Instant::now();
    rt.block_on(async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let _ = tcp.set_nodelay(true);
        let mut tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("handshake");
        let chunk = vec![0x5au8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            tls.write_all(&chunk[..n]).await.expect("write");
            left -= n as u64;
        }
        tls.shutdown().await.expect("close");
    });
    let got = done
        .recv_timeout(Duration::from_secs(600))
        .expect("the sink reports");
    assert_eq!(got, bytes, "every byte arrived");
    start.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(1024, |a| a.parse().expect("MiB"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("rounds"));
    // `pin`: the PU on CPU 0, every server-side thread (the TLS server; the PE and the
    // server behind it) on CPU 1: each path gets one core for its server side, as on a
    // host of its own, instead of the three threads of the forwarded path sharing two cores
    // with the PU.
    let pinned = args.next().as_deref() == Some("pin");
    let bytes = mib * 1024 * 1024;
    let ca = TestCa::new("acme.test");
    let (pe, pu) = (store(&ca, "pe/bench"), store(&ca, "pu/bench"));
    let (direct_tx, direct_rx) = mpsc::channel();
    let (fwd_tx, fwd_rx) = mpsc::channel();
    let (ref_tx, ref_rx) = mpsc::channel();
    let (direct, direct_tid) = tls_sink(Arc::clone(&pe), direct_tx);
    let (sink, sink_tid) = plain_sink(fwd_tx);
    let (forwarded, pe_tid) = forwarding_pe(Arc::clone(&pe), sink);
    let (ref_sink, ref_sink_tid) = plain_sink(ref_tx);
    let (reference, ref_tid) = plain_copy_pe(pe, ref_sink);
    if pinned {
        for tid in [&direct_tid, &sink_tid, &pe_tid, &ref_sink_tid, &ref_tid] {
            assert!(pin(tid, 1), "taskset -pc 1 {tid}");
        }
    }
    let pu_cpu = pinned.then_some(0);
    let mib_f = mib as f64;
    // One run: wall MiB/s, and the CPU-seconds of the server side's threads.
    let run = |addr, done: &mpsc::Receiver<u64>, tids: &[&str]| {
        let before: Vec<f64> = tids.iter().map(|t| cpu_secs(t)).collect();
        let took = send(&pu, addr, bytes, done, pu_cpu);
        let used: Vec<f64> = tids
            .iter()
            .zip(&before)
            .map(|(t, b)| cpu_secs(t) - b)
            .collect();
        (mib_f / took.as_secs_f64(), used)
    };
    let (mut walls, mut per_cpu) = ([(); 3].map(|()| Vec::new()), [(); 2].map(|()| Vec::new()));
    for round in 1..=rounds {
        let (wd, cd) = run(direct, &direct_rx, &[&direct_tid]);
        let (wf, cf) = run(forwarded, &fwd_rx, &[&pe_tid, &sink_tid]);
        let (wr, _) = run(reference, &ref_rx, &[&ref_tid, &ref_sink_tid]);
        let (d_cpu, pe_cpu, both_cpu) = (mib_f / cd[0], mib_f / cf[0], mib_f / (cf[0] + cf[1]));
        println!(
            "round {round}: wall: direct TLS {wd:.0} MiB/s, forwarded {wf:.0} MiB/s ({:.0} %), \
             forwarded by tokio's copy {wr:.0} MiB/s ({:.0} %); per server CPU-second: TLS \
             server {d_cpu:.0} MiB, forwarding PE {pe_cpu:.0} MiB ({:.0} %), PE + the server \
             behind it {both_cpu:.0} MiB ({:.0} %)",
            wf / wd * 100.0,
            wr / wd * 100.0,
            pe_cpu / d_cpu * 100.0,
            both_cpu / d_cpu * 100.0,
        );
        walls[0].push(wd);
        walls[1].push(wf);
        walls[2].push(wr);
        per_cpu[0].push(d_cpu);
        per_cpu[1].push(pe_cpu);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [wd, wf, wr] = walls.map(|mut v| median(&mut v));
    let [cd, cf] = per_cpu.map(|mut v| median(&mut v));
    println!(
        "{mib} MiB × {rounds}{}, medians: wall {wf:.0} of {wd:.0} MiB/s ({:.0} %; tokio's copy \
         {wr:.0}, {:.0} %); per server CPU-second, the forwarding PE {cf:.0} of the TLS \
         server's {cd:.0} MiB ({:.0} %)",
        if pinned { ", pinned" } else { "" },
        wf / wd * 100.0,
        wr / wd * 100.0,
        cf / cd * 100.0
    );
}
