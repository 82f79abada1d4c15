//! Watch streams (issue 22) against a real `enrpd`: `rsp watch` sees a real `rsp pe`
//! added and, once it is killed, removed with the registrar's reason; and a thousand idle
//! watchers over real HTTPS cost the registrar less than 10 MiB.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::admin::admin_token;
use crate::endpoints::start_pe_lines;
use crate::support::{Lab, bin};

struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rsp watch echo` against `admin` and its standard output, line by line.
fn rsp_watch(lab: &Lab, admin: std::net::SocketAddr, token: &str) -> (Watcher, Receiver<String>) {
    let mut child = Command::new(bin("rsp"))
        .args(["watch", "echo", "--admin", &format!("https://{admin}")])
        .env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_ADMIN_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rsp watch");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Watcher(child), rx)
}

/// The next line, within 20 s (a loaded CI machine).
fn next_line(lines: &Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(20))
        .expect("a line from rsp watch within 20 s")
}

#[test]
fn rsp_watch_sees_a_pe_added_and_removed_when_it_dies() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar();
    let (_watch, lines) = rsp_watch(&lab, reg.admin, &token);
    assert_eq!(next_line(&lines), "snapshot: 0 PEs: ");

    let (pe, _pe_log) = start_pe_lines(&lab, reg.addr, "pe-echo-1", &["--pool", "echo"]);
    let added = next_line(&lines);
    assert!(
        added.starts_with("added 0x")
            && added.contains(" in echo: tcp 127.0.0.1:")
            && added.contains("spiffe://acme.test/pe/echo-1"),
        "{added}"
    );
    let pe_id = added.split_whitespace().nth(1).expect("a PE ID").to_owned();

    // Killed: no deregistration; the registrar removes it (its connection closed, or no
    // keep-alive answer) and says why.
    drop(pe);
    let removed = next_line(&lines);
    assert!(
        removed.starts_with(&format!("removed {pe_id} from echo: remove:")),
        "{removed}"
    );
    assert!(
        removed.ends_with("remove:connection-loss") || removed.ends_with("remove:timeout"),
        "{removed}"
    );

    // Stopped with SIGTERM, a PE deregisters: the reason is the registrant's own.
    let (pe, _pe_log) = start_pe_lines(&lab, reg.addr, "pe-echo-2", &["--pool", "echo"]);
    let added = next_line(&lines);
    assert!(added.starts_with("added 0x"), "{added}");
    let pe_id = added.split_whitespace().nth(1).expect("a PE ID").to_owned();
    let status = Command::new("kill")
        .args(["-TERM", &pe.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(
        next_line(&lines),
        format!("removed {pe_id} from echo: deregister")
    );
    drop(pe);

    // A wrong token: one line, exit 1, no retry.
    let out = Command::new(bin("rsp"))
        .args([
            "watch",
            "echo",
            "--admin",
            &format!("https://{}", reg.admin),
        ])
        .env("RSP_CA", lab.path("pki/ca.pem"))
        .env("RSP_ADMIN_TOKEN", "rsp_0000_forged")
        .output()
        .expect("rsp watch");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: the admin API answered 401"),
        "{err}"
    );
}

/// The registrar's anonymous memory (its heap and stacks), resident or swapped out: not
/// the pages of its binary, which come and go with the machine's memory pressure, and
/// not affected by swapping (a shared machine swaps), from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    field("RssAnon:") + field("VmSwap:")
}

/// One HTTP/2 connection to the admin API from `from` (a loopback address: the API
/// takes 32 connections per address).
async fn h2_connection(
    config: Arc<rustls::ClientConfig>,
    admin: std::net::SocketAddr,
    from: std::net::Ipv4Addr,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind((from, 0).into()).expect("bind");
    let tcp = socket.connect(admin).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2");
    tokio::spawn(conn);
    sender
}

/// Opens one watch stream and reads up to its snapshot; the stream stays open.
async fn open_watch(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) -> hyper::body::Incoming {
    let request = hyper::Request::get("https://localhost/v1/watch/pools?namespace=default")
        .body(Empty::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("a response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("the snapshot within 30 s")
            .expect("the stream goes on")
            .expect("a frame");
        if let Some(data) = frame.data_ref() {
            seen.extend_from_slice(data);
        }
    }
    body
}

/// Opens a thousand watch streams: from `ADDRESSES` loopback addresses starting at
/// 127.0.0.`first_address`, `CONNECTIONS` HTTP/2 connections each, `STREAMS` streams each
/// (the API takes 32 connections per address and 32 streams per connection). The
/// connections and streams stay open in `held`.
async fn open_thousand(
    config: &Arc<rustls::ClientConfig>,
    admin: std::net::SocketAddr,
    first_address: u8,
    held: &mut Vec<(
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        Vec<hyper::body::Incoming>,
    )>,
) -> usize {
    let mut opened = 0;
    for a in 0..ADDRESSES {
        for _ in 0..CONNECTIONS {
            let from = std::net::Ipv4Addr::new(127, 0, 0, first_address + a);
            let mut sender = h2_connection(Arc::clone(config), admin, from).await;
            let mut streams = Vec::new();
            for _ in 0..STREAMS {
                streams.push(open_watch(&mut sender).await);
            }
            opened += streams.len();
            held.push((sender, streams));
        }
    }
    assert_eq!(opened, 1000);
    opened
}

const ADDRESSES: u8 = 2;
const CONNECTIONS: usize = 20;
const STREAMS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_watchers_cost_the_registrar_less_than_10_mib() {
    // Over HTTP/2, as browsers hold them ([`open_thousand`]).
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar_with(10_000, 10_000);
    // The watchers use an admin certificate: a token is verified again every second
    // (argon2id, 19 MiB), which would make the memory figure a measure of the allocator.
    lab.pki(&["issue", "admin", "watcher"]);
    let (status, body) = crate::admin::api(
        &lab,
        &reg,
        Some(&token),
        "POST",
        "/v1/grants",
        Some(
            r#"{"identity":"spiffe://acme.test/admin/watcher","namespace":"*","pools":"*","actions":["admin:read"]}"#,
        ),
    );
    assert_eq!(status, 201, "{body}");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(lab.path("pki/ca.pem")).expect("CA") {
        roots.add(cert.expect("PEM")).expect("a root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(lab.path("pki/admin-watcher.pem"))
            .expect("the certificate")
            .map(|c| c.expect("PEM"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(lab.path("pki/admin-watcher.key")).expect("the key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    // A first thousand makes the allocator's arenas and lets it give back what the start
    // and the grant's request left (a token's argon2id verification: 19 MiB it keeps until
    // it trims); the second thousand is the figure: what a thousand more watchers cost.
    let mut held = Vec::new();
    let first = open_thousand(&config, reg.admin, 2, &mut held).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = rss_kib(reg.child.id());
    let start = Instant::now();
    let second = open_thousand(&config, reg.admin, 2 + ADDRESSES, &mut held).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(reg.child.id());
    let grown = after.saturating_sub(before);
    eprintln!(
        "{second} more idle watchers (over {first} already open, {} HTTP/2 connections in all): registrar anonymous memory {before} KiB -> {after} KiB (+{grown} KiB, {} bytes each; opened in {:?})",
        held.len(),
        grown * 1024 / second as u64,
        start.elapsed()
    );
    assert!(grown < 10 * 1024, "{second} watchers cost {grown} KiB");
}

/// `/metrics` counts a pool's PEs from the registrar's changes also when nobody ever
/// watched (the feed then counts without publishing).
#[test]
fn metrics_count_a_pools_pes_with_nobody_watching() {
    let lab = Lab::new();
    let token = admin_token(&lab.init_registrar());
    let reg = lab.start_registrar();
    let series = || {
        let (status, body) = crate::admin::api(&lab, &reg, Some(&token), "GET", "/metrics", None);
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find(|l| l.starts_with(r#"rsp_pool_pes{namespace="default",pool="echo"}"#))
            .map(str::to_owned)
    };
    assert_eq!(series(), None);
    let (pe, _log) = start_pe_lines(&lab, reg.addr, "pe-echo-1", &["--pool", "echo"]);
    assert_eq!(
        series().as_deref(),
        Some(r#"rsp_pool_pes{namespace="default",pool="echo"} 1"#)
    );
    drop(pe);
    let deadline = Instant::now() + Duration::from_secs(20);
    while series().is_some() {
        assert!(Instant::now() < deadline, "the PE is still counted");
        std::thread::sleep(Duration::from_millis(100));
    }
}
