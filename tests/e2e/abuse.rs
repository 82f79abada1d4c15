//! Abuse bounds (issue 18, docs/SECURITY.md): floods by clients without credentials, or
//! with credentials but too much zeal, against a real `enrpd`. Each flood is bounded in
//! time and count and targets loopback only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use trust::Protocol;

use crate::registrar::{accepted, registration, resolution, resolved};
use crate::support::{Asap, Lab};

/// A client that offers no certificate (the registrar requires one).
#[derive(Debug)]
struct NoCertificate;

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// One handshake without a client certificate, through to the registrar's refusal.
/// `true` once the registrar refused it (it cannot accept it: no certificate).
async fn handshake_without_certificate(config: Arc<rustls::ClientConfig>, to: SocketAddr) -> bool {
    let Ok(tcp) = TcpStream::connect(to).await else {
        return false;
    };
    let name = ServerName::try_from("localhost").expect("server name");
    // TLS 1.3: the client may finish before the server's alert; reading shows the refusal.
    match TlsConnector::from(config).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut tls) => {
            let mut byte = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await,
                Ok(Err(_) | Ok(0))
            )
        }
    }
}

/// The audit records of `actions`, read from the data directory after enrpd stopped.
async fn audit_rows(lab: &Lab, actions: &[&str]) -> Vec<store::audit::Record> {
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut conn = store.acquire().await.expect("connection");
    let mut filter = store::audit::AuditFilter::default();
    filter.limit = 1000;
    let mut rows = Vec::new();
    loop {
        let page = store::audit::query(&mut conn, &filter)
            .await
            .expect("query");
        rows.extend(
            page.events
                .into_iter()
                .map(|e| e.record)
                .filter(|r| actions.contains(&r.action.as_ref())),
        );
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => return rows,
        }
    }
}

/// How many refusals a record stands for: 1, or the count of a summary record.
fn refusals_in(r: &store::audit::Record) -> u64 {
    let detail = r.detail.as_deref().unwrap_or_default();
    if !detail.contains("aggregated") {
        return 1;
    }
    detail
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a summary starts with its count: {detail:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_without_certificate_is_audited_in_aggregate_and_pus_keep_resolving() {
    const FLOOD: Duration = Duration::from_secs(3);
    const FLOODERS: usize = 8;
    // Bounded in count too (a fast machine): about 1,100 a second from one script.
    const MOST: u64 = 20_000;
    let lab = Lab::new();
    lab.init_registrar();
    // Long keep-alive timers: the PE below does not answer them.
    let mut registrar = lab.start_registrar_with(60_000, 60_000);
    let pe_id = lab.identity("pe-echo-1");
    let mut pe = Asap::connect(&pe_id, registrar.addr).await.expect("PE");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("PU");

    let mut config = (*lab.identity("pu-client-1").client_config(Protocol::Asap)).clone();
    config.client_auth_cert_resolver = Arc::new(NoCertificate);
    let config = Arc::new(config);
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (config, refused, to) = (Arc::clone(&config), Arc::clone(&refused), registrar.addr);
            tokio::spawn(async move {
                while started.elapsed() < FLOOD && refused.load(Ordering::Relaxed) < MOST {
                    if handshake_without_certificate(Arc::clone(&config), to).await {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // A well-behaved PU resolves all along.
    let mut latencies = Vec::new();
    while started.elapsed() < FLOOD {
        let sent = Instant::now();
        pu.send(&resolution("echo")).await;
        assert_eq!(
            resolved(pu.recv_reply().await),
            Ok(vec![(7, "spiffe://acme.test/pe/echo-1".to_owned())]),
            "the PU is answered during the flood"
        );
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in flooders {
        f.await.expect("flooder");
    }
    let elapsed = started.elapsed();
    let refused = refused.load(Ordering::Relaxed);
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "flood: {refused} handshakes without a certificate in {elapsed:?}; \
         PU resolutions during it: {} answered, p50 {p50:?}, max {max:?}",
        latencies.len()
    );
    assert!(refused > 100, "the flood ran: {refused} handshakes");
    assert!(max < Duration::from_secs(2), "resolution latency {max:?}");
    assert!(
        registrar.child.try_wait().expect("status").is_none(),
        "enrpd stays up"
    );
    // Let the last interval's summary be written, then stop cleanly (the rest is flushed).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop((pe, pu));
    assert!(registrar.terminate().success());

    let rows = audit_rows(&lab, &["handshake", "refusals"]).await;
    // One source: at most its first refusal and one summary per second (one more
    // interval for the flush at shutdown).
    let seconds = elapsed.as_secs() + 3;
    assert!(
        rows.len() as u64 <= 2 * seconds,
        "{} audit rows for {refused} refused handshakes in {elapsed:?}",
        rows.len()
    );
    // ...and every refusal is counted in them.
    let counted: u64 = rows.iter().map(refusals_in).sum();
    assert_eq!(counted, refused, "{rows:?}");
    eprintln!(
        "audit: {} rows for {refused} refused handshakes",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_over_the_rate_limit_get_0x6_and_other_clients_do_not_notice() {
    // The defaults: 100 resolutions a second per connection, bursts of 200.
    const SENT: usize = 600;
    let lab = Lab::new();
    lab.pki(&["issue", "pu", "client-2"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with(60_000, 60_000);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut greedy = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("PU");
    let started = Instant::now();
    for _ in 0..SENT {
        greedy.send(&resolution("echo")).await;
    }
    let mut answered = 0;
    let mut limited = 0;
    for _ in 0..SENT {
        match resolved(greedy.recv_reply().await) {
            Ok(_) => answered += 1,
            Err(0x6) => limited += 1,
            Err(other) => panic!("cause {other:#x}"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("rate limit: {answered} answered, {limited} refused with 0x6 in {elapsed:?}");
    // Every request is answered, the burst and what the rate refilled with PEs...
    assert!(answered >= 200, "{answered}");
    let refill = 100.0 * elapsed.as_secs_f64();
    assert!(
        (answered as f64) <= 200.0 + refill + 1.0,
        "{answered} answered in {elapsed:?}"
    );
    // ...the rest with cause 0x6.
    assert!(limited > 0 && answered + limited == SENT);
    // Another PU resolves as usual meanwhile; the greedy one again once its bucket refilled.
    let mut other = Asap::connect(&lab.identity("pu-client-2"), registrar.addr)
        .await
        .expect("PU 2");
    other.send(&resolution("echo")).await;
    assert!(resolved(other.recv_reply().await).is_ok());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    greedy.send(&resolution("echo")).await;
    assert!(resolved(greedy.recv_reply().await).is_ok());
    drop((pe, greedy, other));
    assert!(registrar.terminate().success());

    // Audited as refusals, in aggregate: the first, then a summary with the count.
    let rows: Vec<_> = audit_rows(&lab, &["resolve"])
        .await
        .into_iter()
        .filter(|r| {
            r.outcome
                == store::audit::Outcome::Cause(asap::wire::param::ErrorCause::LACK_OF_RESOURCES)
        })
        .collect();
    let counted: u64 = rows.iter().map(refusals_in).sum();
    assert_eq!(counted, limited as u64, "{rows:?}");
    assert!(
        rows.len() <= 4,
        "{} rows for {limited} refusals",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_and_per_identity_connection_caps_hold_and_spare_other_clients() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with_args(
        60_000,
        60_000,
        &[
            "--max-handshakes-per-ip",
            "4",
            "--max-connections-per-ip",
            "8",
            "--max-connections-per-identity",
            "3",
        ],
    );
    let (attacker, other_host) = (
        std::net::Ipv4Addr::LOCALHOST,
        std::net::Ipv4Addr::new(127, 0, 0, 2),
    );
    // Ten silent TCP connections from one address: four wait in their handshake, the
    // others are closed at once.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(registrar.addr).await.expect("TCP"));
    }
    let mut closed = 0;
    for tcp in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 6, "all but the handshake cap closed");
    // Meanwhile the same address cannot start another handshake, another host can.
    let pu = lab.identity("pu-client-1");
    let refused = match Asap::connect_from(&pu, registrar.addr, attacker).await {
        Err(_) => true,
        Ok(mut c) => {
            c.send(&resolution("echo")).await;
            c.recv().await.is_none()
        }
    };
    assert!(refused, "over the per-address handshake cap");
    // One identity: three connections, the fourth closed after its handshake.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Asap::connect_from(&pu, registrar.addr, other_host)
            .await
            .expect("PU");
        c.send(&resolution("echo")).await;
        assert_eq!(resolved(c.recv_reply().await), Err(0x9), "served");
        held.push(c);
    }
    let mut fourth = Asap::connect_from(&pu, registrar.addr, other_host)
        .await
        .expect("the handshake completes");
    fourth.send(&resolution("echo")).await;
    assert!(fourth.recv().await.is_none(), "over the per-identity cap");
    // Another identity from that host is served.
    let mut pe = Asap::connect_from(&lab.identity("pe-echo-1"), registrar.addr, other_host)
        .await
        .expect("PE");
    // (Its address is not the PE's user address: a resolution, answered whatever it says.)
    pe.send(&resolution("echo")).await;
    assert!(
        pe.recv_reply().await.is_some(),
        "another identity is served"
    );
    // The silent ones gone, the first address is served again.
    drop(silent);
    let mut back = None;
    for _ in 0..50 {
        if let Ok(mut c) =
            Asap::connect_from(&lab.identity("pe-echo-2"), registrar.addr, attacker).await
        {
            c.send(&resolution("echo")).await;
            if c.recv_reply().await.is_some() {
                back = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back.is_some(), "served again once its connections closed");
    drop((held, fourth, pe, back));
    assert!(registrar.terminate().success());
    let rows = audit_rows(&lab, &["handshake", "refusals"]).await;
    for reason in ["per-ip-cap", "per-identity-cap"] {
        assert!(
            rows.iter()
                .any(|r| r.outcome == store::audit::Outcome::Refused(reason.into())),
            "{reason} audited: {rows:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_watermark_registrations_and_admin_writes_are_refused_not_fatal() {
    let lab = Lab::new();
    let token = crate::admin::admin_token(&lab.init_registrar());
    // A watermark above any disk's free space (1 EiB): the registrar is below it from its
    // first check on (within a second), as on a full disk.
    let mut registrar =
        lab.start_registrar_with_args(60_000, 60_000, &["--min-free-mib", "1099511627776"]);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    let mut refused = false;
    for _ in 0..50 {
        pe.send(&registration("echo", 8)).await;
        match rejected_or_accepted(pe.recv_reply().await) {
            Some(0x6) => {
                refused = true;
                break;
            }
            // Before the first check (within a second): accepted.
            None => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(other) => panic!("cause {other:#x}"),
        }
    }
    assert!(
        refused,
        "registrations refused with 0x6 below the watermark"
    );
    // Resolutions go on.
    let mut pu = Asap::connect(&lab.identity("pu-client-1"), registrar.addr)
        .await
        .expect("PU");
    pu.send(&resolution("echo")).await;
    // (No PE: the one registration that may have beaten the first check is all there is.)
    let answer = resolved(pu.recv_reply().await);
    assert!(answer != Err(0x6), "resolutions served: {answer:?}");
    // Admin writes: 507 problem+json; reads: served; the state is a metric.
    let (status, body) = crate::admin::api(
        &lab,
        &registrar,
        Some(&token),
        "POST",
        "/v1/namespaces",
        Some(r#"{"name":"lab"}"#),
    );
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("insufficient-storage"), "{body}");
    let (status, metrics) =
        crate::admin::api(&lab, &registrar, Some(&token), "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("rsp_low_disk 1"), "{metrics}");
    assert!(
        registrar.child.try_wait().expect("status").is_none(),
        "enrpd stays up"
    );
    drop((pe, pu));
    assert!(registrar.terminate().success(), "and stops cleanly");
}

/// `None` for an accepted registration, else its cause.
fn rejected_or_accepted(m: Option<asap::wire::AsapMsg>) -> Option<u16> {
    match m {
        Some(asap::wire::AsapMsg::RegistrationResponse { reject: false, .. }) => None,
        Some(asap::wire::AsapMsg::RegistrationResponse { error: Some(e), .. }) => {
            Some(e.causes()[0].code())
        }
        other => panic!("expected a registration response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_writer_delays_no_resolution_of_another_client() {
    const FLOODERS: usize = 4;
    // Together more than the writer's queue (8,192) holds.
    const EACH: usize = 4_000;
    let lab = Lab::new();
    lab.pki(&["issue", "pu", "client-2"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with_args(60_000, 60_000, &["--rate-resolutions", "0"]);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    pe.send(&registration("echo", 7)).await;
    assert!(accepted(pe.recv_reply().await));
    let mut pu = Asap::connect(&lab.identity("pu-client-2"), registrar.addr)
        .await
        .expect("PU");

    // The disk stalls: another connection holds SQLite's write lock, so the audit writer
    // waits (up to its busy timeout, 5 s) and its queue fills.
    let store = store::db::Store::open(&lab.path("data"), &Default::default())
        .await
        .expect("store");
    let mut lock = store.acquire().await.expect("connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(lock.sqlite().expect("SQLite"))
        .await
        .expect("write lock");
    let locked_at = Instant::now();
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (store, to) = (lab.identity("pu-client-1"), registrar.addr);
            tokio::spawn(async move {
                let mut c = Asap::connect(&store, to).await.expect("flooder");
                let mut answered = 0;
                for _ in 0..EACH {
                    if !c.try_send(&resolution("echo")).await {
                        break;
                    }
                }
                while answered < EACH && c.recv_reply().await.is_some() {
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    // While the writer is stalled, another PU's resolutions are answered at once.
    let mut latencies = Vec::new();
    while locked_at.elapsed() < Duration::from_secs(3) {
        let sent = Instant::now();
        pu.send(&resolution("echo")).await;
        assert!(resolved(pu.recv_reply().await).is_ok());
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("ROLLBACK")
        .execute(lock.sqlite().expect("SQLite"))
        .await
        .expect("release");
    drop(lock);
    store.close().await;
    let mut answered = 0;
    for f in flooders {
        answered += f.await.expect("flooder");
    }
    latencies.sort();
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "stalled writer: {answered} flood resolutions answered; another PU: {} resolutions, p50 {:?}, max {max:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert_eq!(answered, FLOODERS * EACH, "the flood was answered too");
    assert!(max < Duration::from_secs(1), "a resolution waited {max:?}");
    assert!(registrar.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_creates_at_most_its_pools_per_namespace() {
    let lab = Lab::new();
    lab.init_registrar();
    let registrar =
        lab.start_registrar_with_args(60_000, 60_000, &["--max-pools-per-identity", "2"]);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    for (pool, id) in [("a", 1), ("b", 2)] {
        pe.send(&registration(pool, id)).await;
        assert!(accepted(pe.recv_reply().await), "pool {pool}");
    }
    // A third new pool: refused, cause 0x6; more PEs in its own pools: accepted.
    pe.send(&registration("c", 3)).await;
    assert_eq!(rejected_or_accepted(pe.recv_reply().await), Some(0x6));
    pe.send(&registration("a", 4)).await;
    assert!(accepted(pe.recv_reply().await), "a PE more in its pool");
    // Another identity may create its own.
    let mut other = Asap::connect(&lab.identity("pe-echo-2"), registrar.addr)
        .await
        .expect("PE 2");
    other.send(&registration("c", 5)).await;
    assert!(
        accepted(other.recv_reply().await),
        "another identity's pool"
    );
    // Pool b gone (its one PE deregistered), the first identity may create one again.
    pe.send(&asap::wire::AsapMsg::Deregistration {
        namespace: None,
        pool_handle: asap::wire::param::PoolHandle::new("b").expect("handle"),
        pe_id: asap::wire::param::PeId::new(2).expect("id"),
    })
    .await;
    assert!(pe.recv_reply().await.is_some());
    pe.send(&registration("d", 6)).await;
    assert!(
        accepted(pe.recv_reply().await),
        "a pool again once one is gone"
    );
    drop((pe, other));
    assert!(registrar.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_checkpoint_catches_a_truncated_tail_and_a_forged_checkpoint() {
    let lab = Lab::new();
    lab.init_registrar();
    register_and_stop(&lab, 7).await;
    let enrpd = |args: &[&str]| crate::support::enrpd_audit(&lab, args);
    let file = lab.path("checkpoint.json");
    let file = file.to_str().expect("a UTF-8 path");
    let (ok, text) = enrpd(&["checkpoint", "--to", file]);
    assert!(ok, "{text}");
    let (ok, text) = enrpd(&["verify", "--checkpoint", file]);
    assert!(ok && text.contains("checkpoint holds"), "{text}");

    // Someone with the data directory drops the last record (the triggers are only in
    // their way): the chain alone still looks intact, the checkpoint does not agree.
    crate::support::cut_audit_tail(&lab).await;
    let (ok, text) = enrpd(&["verify"]);
    assert!(ok && text.contains("intact"), "{text}");
    let (ok, text) = enrpd(&["verify", "--checkpoint", file]);
    assert!(!ok && text.contains("TRUNCATED"), "{text}");
    // New records in its place: a chain rewritten from that record on.
    register_and_stop(&lab, 8).await;
    let (ok, text) = enrpd(&["verify", "--checkpoint", file]);
    assert!(!ok && text.contains("REWRITTEN"), "{text}");

    // A checkpoint edited to match: its signature no longer holds.
    let json = std::fs::read_to_string(file).expect("checkpoint");
    let mut v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    v["id"] = serde_json::json!(v["id"].as_u64().expect("id") - 1);
    std::fs::write(file, v.to_string()).expect("write");
    let (ok, text) = enrpd(&["verify", "--checkpoint", file]);
    assert!(!ok && text.contains("bad signature"), "{text}");
}

/// Runs `enrpd` on the lab's data directory, registers PE `id` in pool `echo`, stops it.
async fn register_and_stop(lab: &Lab, id: u32) {
    let registrar = lab.start_registrar_with(60_000, 60_000);
    let mut pe = Asap::connect(&lab.identity("pe-echo-1"), registrar.addr)
        .await
        .expect("PE");
    pe.send(&registration("echo", id)).await;
    assert!(accepted(pe.recv_reply().await));
    drop(pe);
    assert!(registrar.terminate().success());
}

/// Issue 18 item 6: `enrpd run` writes a signed checkpoint of the chain head to its log
/// every `--checkpoint-log-secs`; the line, shipped elsewhere, verifies the chain later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_carries_signed_checkpoints_that_verify_the_chain() {
    use std::io::BufRead as _;
    let lab = Lab::new();
    lab.init_registrar();
    register_and_stop(&lab, 7).await;
    let mut enrpd = std::process::Command::new(crate::support::bin("enrpd"))
        .arg("run")
        .arg("--data")
        .arg(lab.path("data"))
        .args(["--asap-listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--enrp-listen", "off", "--sctp", "off"])
        .args(["--checkpoint-log-secs", "1", "--log-format", "json"])
        .env("ENRPD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("enrpd run");
    let stderr = enrpd.stderr.take().expect("stderr");
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("audit checkpoint"))
    });
    let line = tokio::time::timeout(Duration::from_secs(60), line)
        .await
        .expect("a checkpoint within a minute")
        .expect("reader")
        .expect("a checkpoint line");
    let _ = enrpd.kill();
    let _ = enrpd.wait();
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let checkpoint = v["fields"]["checkpoint"]
        .as_str()
        .expect("checkpoint field");
    let file = lab.path("logged-checkpoint.json");
    std::fs::write(&file, checkpoint).expect("write");
    let out = std::process::Command::new(crate::support::bin("enrpd"))
        .args(["audit", "verify", "--data"])
        .arg(lab.path("data"))
        .arg("--checkpoint")
        .arg(&file)
        .output()
        .expect("enrpd audit verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("checkpoint holds"),
        "{text}"
    );
}
