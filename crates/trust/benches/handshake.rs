//! Full mutual-TLS handshakes per second, client and server in separate processes.
//!
//! `cargo bench -p trust --bench handshake [-- SECONDS CONCURRENCY]`. The bench spawns
//! itself as the server (one current-thread runtime, so one core), drives it with a
//! multi-threaded client for SECONDS, and reports handshakes per server CPU-second (the
//! server's user+system time from /proc) for ECDSA P-256 and Ed25519. Every handshake is
//! full: the configurations of `TrustStore` disable resumption, and the server checks each
//! handshake's kind and that a client certificate was verified (a resumed, retried or
//! unauthenticated one is reported and would fail the run). `RSP_BENCH_ONLY=bare|rsp` runs
//! one of the two servers.
//!
//! `-- --in-memory [HANDSHAKES]` runs client and server in one thread over memory buffers
//! and times only the server's calls (wall time, so a preempted call counts: compare the
//! rounds): the TLS and verification cost alone, without TCP and the kernel, steadier than
//! the figures above on a busy machine.
#![allow(clippy::disallowed_methods)] // a benchmark driver reads the clock

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use identity::TrustDomain;
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trust::testing::{KeyAlg, TestCa, pem};
use trust::{DomainBundle, LocalIdentity, Protocol, TrustStore};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--in-memory") {
        let handshakes = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
        for (alg, label) in ALGS {
            in_memory(alg, label, handshakes);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("--server") {
        let bare = args.get(2).map(String::as_str) == Some("bare");
        server(Path::new(&args[1]), bare);
        return;
    }
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    for (alg, label) in ALGS {
        for bare in [false, true] {
            let only = std::env::var("RSP_BENCH_ONLY").ok();
            if only.is_some_and(|o| o != if bare { "bare" } else { "rsp" }) {
                continue;
            }
            run(alg, label, bare, seconds, concurrency);
        }
    }
}

const ALGS: [(KeyAlg, &str); 2] = [
    (KeyAlg::EcdsaP256, "ECDSA P-256"),
    (KeyAlg::Ed25519, "Ed25519"),
];

/// A CA, its (empty) CRL, and the server's and client's certificates and keys, in a
/// temporary directory.
fn material(alg: KeyAlg) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::with_alg("bench.test", alg);
    let write =
        |name: &str, text: String| std::fs::write(dir.path().join(name), text).expect("write");
    write("ca.pem", ca.root_pem());
    write("crl.pem", pem("X509 CRL", &ca.crl(&[])));
    let server_leaf = ca.leaf("registrar/bench").issue();
    write("server.pem", server_leaf.chain_pem());
    write("server.key", server_leaf.key_pem());
    let client_leaf = ca.leaf("pe/bench").issue();
    write("client.pem", client_leaf.chain_pem());
    write("client.key", client_leaf.key_pem());
    dir
}

/// Full handshakes over memory buffers, alternating rsp and bare three times; only the
/// server's calls (creation, reading, processing, writing, drop) are timed.
fn in_memory(alg: KeyAlg, label: &str, handshakes: u32) {
    let dir = material(alg);
    let client = store_from(dir.path(), "client").client_config(Protocol::Asap);
    let rsp = store_from(dir.path(), "server").server_config(Protocol::Asap);
    let bare = bare_config(dir.path());
    for round in 1..=3 {
        for (name, config) in [("rsp", &rsp), ("bare", &bare)] {
            let mut server_time = Duration::ZERO;
            for _ in 0..handshakes {
                let name = ServerName::try_from("bench").expect("name");
                let mut client =
                    rustls::ClientConnection::new(client.clone(), name).expect("client");
                let start = Instant::now();
                let mut server = rustls::ServerConnection::new(config.clone()).expect("server");
                server_time += start.elapsed();
                while client.is_handshaking() || server.is_handshaking() {
                    let mut to_server = Vec::new();
                    while client.wants_write() {
                        client.write_tls(&mut to_server).expect("client write");
                    }
                    let start = Instant::now();
                    let mut input = &to_server[..];
                    while !input.is_empty() {
                        server.read_tls(&mut input).expect("server read");
                    }
                    server.process_new_packets().expect("server handshake");
                    let mut to_client = Vec::new();
                    while server.wants_write() {
                        server.write_tls(&mut to_client).expect("server write");
                    }
                    server_time += start.elapsed();
                    let mut input = &to_client[..];
                    while !input.is_empty() {
                        client.read_tls(&mut input).expect("client read");
                    }
                    client.process_new_packets().expect("client handshake");
                }
                assert_eq!(server.handshake_kind(), Some(HandshakeKind::Full));
                let start = Instant::now();
                drop(server);
                server_time += start.elapsed();
            }
            println!(
                "{label}, in memory, round {round}, {name}: {:.0} us of server time per full \
                 mutual-TLS handshake ({:.0} per server core-second)",
                server_time.as_secs_f64() * 1e6 / f64::from(handshakes),
                f64::from(handshakes) / server_time.as_secs_f64().max(1e-9),
            );
        }
    }
}

fn store_from(dir: &Path, stem: &str) -> TrustStore {
    let read = |name: String| std::fs::read(dir.join(name)).expect("read bench file");
    let identity =
        LocalIdentity::from_pem(&read(format!("{stem}.pem")), &read(format!("{stem}.key")))
            .expect("identity");
    let store = TrustStore::new(identity).expect("store");
    let domain = TrustDomain::new("bench.test").expect("domain");
    let bundle = DomainBundle::from_pem(domain, &read("ca.pem".to_owned())).expect("bundle");
    // RSP_BENCH_NO_CRL=1 measures the cost of the CRL check (its signature is verified
    // when the store loads it; a handshake only looks the chain's serials up).
    let crls = if std::env::var_os("RSP_BENCH_NO_CRL").is_some() {
        Vec::new()
    } else {
        trust::crls_from_pem(&read("crl.pem".to_owned())).expect("crl")
    };
    store.add_domain(bundle.with_crls(crls)).expect("add");
    store
}

fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat: utime and stime in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The baseline: a bare tokio-rustls server with rustls' stock client verifier (same
/// roots, no CRL, no SPIFFE checks), TLS 1.3, no resumption.
fn bare_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    let read = |name: &str| std::fs::read(dir.join(name)).expect("read bench file");
    let mut roots = rustls::RootCertStore::empty();
    for root in trust::certs_from_pem(&read("ca.pem")).expect("roots") {
        roots.add(root).expect("root");
    }
    let provider = trust::provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain = trust::certs_from_pem(&read("server.pem")).expect("chain");
    let key = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(&read("server.key")).expect("key")
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("cert");
    config.alpn_protocols = vec![trust::ALPN_ASAP.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

fn server(dir: &Path, bare: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(store_from(dir, "server"));
        let bare = bare.then(|| bare_config(dir));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        let count = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        // Handshakes that were not full and mutually authenticated (not counted in `count`).
        let not_full = Arc::new(AtomicU64::new(0));
        let (start_cpu, start) = (cpu_seconds(), Instant::now());
        let accept = {
            let count = count.clone();
            let failures = failures.clone();
            let not_full = not_full.clone();
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    // Per accept, as a registrar does: revocations apply to the next handshake.
                    let config = match &bare {
                        Some(config) => config.clone(),
                        None => store.server_config(Protocol::Asap),
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let (count, failures, not_full) =
                        (count.clone(), failures.clone(), not_full.clone());
                    tokio::spawn(async move {
                        match acceptor.accept(tcp).await {
                            Ok(mut tls) => {
                                let conn = tls.get_ref().1;
                                let full = conn.handshake_kind() == Some(HandshakeKind::Full)
                                    && conn.peer_certificates().is_some_and(|c| !c.is_empty());
                                let _ = tls.write_all(b"k").await;
                                let _ = tls.shutdown().await;
                                if full {
                                    count.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    not_full.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            }
        };
        // The client closes our stdin when it is done.
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin()
                .read_line(&mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        });
        tokio::select! {
            () = accept => {}
            _ = stdin_closed => {}
        }
        println!(
            "{} {} {} {:.3} {:.3}",
            count.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            not_full.load(Ordering::Relaxed),
            cpu_seconds() - start_cpu,
            start.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    });
}

fn run(alg: KeyAlg, label: &str, bare: bool, seconds: u64, concurrency: usize) {
    let dir = material(alg);
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .arg("--server")
        .arg(dir.path())
        .arg(if bare { "bare" } else { "rsp" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("server address");
    let addr: SocketAddr = line.trim().parse().expect("address");

    let client = Arc::new(store_from(dir.path(), "client"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (done, client_failures) = runtime.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (stop, done, failed, client) =
                (stop.clone(), done.clone(), failed.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let connector =
                    tokio_rustls::TlsConnector::from(client.client_config(Protocol::Asap));
                while !stop.load(Ordering::Relaxed) {
                    let ok = async {
                        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                        let name = ServerName::try_from("bench").ok()?;
                        let mut tls = connector.connect(name, tcp).await.ok()?;
                        let mut byte = [0u8; 1];
                        tls.read_exact(&mut byte).await.ok()
                    }
                    .await;
                    match ok {
                        Some(_) => done.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    });
    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line).expect("server stats");
    let _ = child.wait();
    let fields: Vec<f64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [count, failures, not_full, cpu, wall] = fields[..] else {
        panic!("bad server stats {line:?}");
    };
    assert!(
        not_full == 0.0,
        "{not_full} handshakes were resumed, retried or without a client certificate"
    );
    let label = if bare {
        format!("{label}, bare tokio-rustls baseline")
    } else {
        let crl = if std::env::var_os("RSP_BENCH_NO_CRL").is_some() {
            "no CRL"
        } else {
            "CRL"
        };
        format!("{label}, rsp TrustStore (SPIFFE checks, deny-list, {crl})")
    };
    println!(
        "{label}: {count} full mutual-TLS handshakes in {wall:.1} s wall, {cpu:.2} s server CPU: \
         {:.0} handshakes per server core-second, {:.0}/s wall \
         (client saw {done} ok, {client_failures} failed; server {failures} failed; concurrency {concurrency})",
        count / cpu.max(0.001),
        count / wall.max(0.001),
    );
}
