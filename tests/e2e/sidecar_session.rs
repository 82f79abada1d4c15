//! `rsp pe --forward --session-channel` (issue 21, last part): an existing server that
//! opts in to sessions by speaking the §12.7 frames over plain TCP; the sidecar PE seals
//! its plain session state into pool cookies, so the state survives a failover to another
//! server, and refuses echoes that are not this PU's.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use asap::client::session::{self, Binding, CookieKey, Frame};
use asap::wire::AsapMsg;
use asap::wire::param::{Cookie, PoolHandle};
use tokio::io::AsyncWriteExt as _;

use crate::endpoints::{Pe, rsp};
use crate::restart::{lines, wait_line};
use crate::support::Lab;

/// What a framed server saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A session opened (the sidecar connected).
    Opened,
    /// It sent this state in a Cookie.
    Sent(Vec<u8>),
    /// A Cookie Echo with this state came.
    Echo(Vec<u8>),
    /// A data frame came.
    Data(Vec<u8>),
    /// The session ended.
    Closed,
}

/// A server that opted in to sessions, on its own thread and runtime, speaking only the
/// frame shim: on a new session it sends a Cookie with its state (`count=0 by NAME`);
/// each data frame counts, sends the new state in a Cookie and answers `COUNT PAYLOAD at
/// NAME`; a Cookie Echo sets the count from the state it carries. Reports what it sees.
fn framed_server(name: &'static str) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Seen::Opened);
                    let _ = serve(name, conn, &tx).await;
                    let _ = tx.send(Seen::Closed);
                });
            }
        });
    });
    (addr, rx)
}

async fn serve(
    name: &str,
    conn: tokio::net::TcpStream,
    tx: &mpsc::Sender<Seen>,
) -> Result<(), session::ChannelError> {
    // A Cookie and its answer are two small writes: without TCP_NODELAY the answer waits
    // for the delayed ACK of the Cookie (~40 ms), as it would from any server.
    conn.set_nodelay(true)?;
    let (mut r, mut w) = tokio::io::split(conn);
    let mut count: u64 = 0;
    let state = |count: u64| format!("count={count} by {name}").into_bytes();
    let first = state(0);
    let _ = tx.send(Seen::Sent(first.clone()));
    let cookie = Cookie::new(first).expect("small");
    session::write_control(&mut w, &AsapMsg::Cookie(cookie)).await?;
    while let Some(frame) = session::read_frame(&mut r).await? {
        match frame {
            Frame::Control(AsapMsg::CookieEcho(plain)) => {
                let text = String::from_utf8_lossy(plain.as_bytes()).into_owned();
                count = text
                    .strip_prefix("count=")
                    .and_then(|t| t.split(' ').next()?.parse().ok())
                    .unwrap_or(0);
                let _ = tx.send(Seen::Echo(plain.as_bytes().to_vec()));
            }
            Frame::Data { ppid, payload } => {
                let _ = tx.send(Seen::Data(payload.clone()));
                count += 1;
                let now = state(count);
                let _ = tx.send(Seen::Sent(now.clone()));
                let cookie = Cookie::new(now).expect("small");
                session::write_control(&mut w, &AsapMsg::Cookie(cookie)).await?;
                let mut answer = format!("{count} ").into_bytes();
                answer.extend_from_slice(&payload);
                answer.extend_from_slice(format!(" at {name}").as_bytes());
                session::write_data(&mut w, ppid, &answer).await?;
            }
            other => panic!("{name}: the sidecar passed {other:?}"),
        }
    }
    w.shutdown().await?;
    Ok(())
}

/// A sidecar PE of pool `web` as `cert` in front of `server`, with the lab's pool key;
/// once registered: the process, its standard error, and where PUs reach it.
fn sidecar(
    lab: &Lab,
    registrar: SocketAddr,
    cert: &str,
    server: SocketAddr,
) -> (Pe, mpsc::Receiver<String>, SocketAddr) {
    sidecar_with_key(lab, registrar, cert, server, "pool.key")
}

/// [`sidecar`] with the pool key in the lab's file `key`.
fn sidecar_with_key(
    lab: &Lab,
    registrar: SocketAddr,
    cert: &str,
    server: SocketAddr,
    key: &str,
) -> (Pe, mpsc::Receiver<String>, SocketAddr) {
    let mut child = rsp(lab, registrar, cert)
        .args(["pe", "--pool", "web", "--forward", &server.to_string()])
        .arg("--session-channel")
        .arg("--cookie-key")
        .arg(lab.path(key))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rsp pe --forward --session-channel");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("rsp pe says where it serves");
    // "rsp pe: PE 0x… of pool web serving 127.0.0.1:1 (forwarded as a session channel) on
    // 127.0.0.1:2 as spiffe://…"
    assert!(
        first.contains("(forwarded as a session channel)"),
        "{first}"
    );
    let words: Vec<&str> = first.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "on")
        .and_then(|i| words.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let rx = lines(child.stderr.take().expect("stderr"), cert.into());
    wait_line(&rx, Duration::from_secs(20), |l| {
        l.starts_with("registered with")
    })
    .unwrap_or_else(|seen| panic!("{cert} never registered: {seen:?}"));
    (Pe(child), rx, at)
}

/// What `server` reported within a short while.
fn seen(server: &mpsc::Receiver<Seen>, within: Duration) -> Vec<Seen> {
    let mut all = Vec::new();
    while let Ok(s) = server.recv_timeout(within) {
        all.push(s);
    }
    all
}

#[test]
fn a_framed_servers_state_survives_a_failover_through_sidecar_cookies_and_foreign_echoes_are_refused()
 {
    let lab = Lab::new();
    lab.pki(&["issue", "pu", "client-2"]);
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    let key = [0x5a; 32];
    std::fs::write(lab.path("pool.key"), key).expect("pool key");
    let (server_a, seen_a) = framed_server("A");
    let (server_b, seen_b) = framed_server("B");
    let (pe_a, _log_a, _) = sidecar(&lab, registrar.addr, "pe-echo-1", server_a);
    let (pe_b, log_b, at_b) = sidecar(&lab, registrar.addr, "pe-echo-2", server_b);
    let mut sidecars = vec![("A", pe_a), ("B", pe_b)];

    // `rsp pu` speaks the session framing (the PEs registered data plus control).
    let (mut pu, reports) = Pu::start(&lab, registrar.addr);
    let first = pu.ask("a");
    let (first_server, other) = if first == "1 a at A" {
        ("A", "B")
    } else {
        ("B", "A")
    };
    assert_eq!(first, format!("1 a at {first_server}"));
    assert_eq!(pu.ask("b"), format!("2 b at {first_server}"));
    let (seen_first, seen_other) = if first_server == "A" {
        (&seen_a, &seen_b)
    } else {
        (&seen_b, &seen_a)
    };
    let before = seen(seen_first, Duration::from_millis(300));
    let last_state = before
        .iter()
        .rev()
        .find_map(|s| match s {
            Seen::Sent(state) => Some(state.clone()),
            _ => None,
        })
        .expect("the first server sent its state");
    assert_eq!(
        last_state,
        format!("count=2 by {first_server}").into_bytes()
    );
    assert_eq!(
        before.iter().filter(|s| matches!(s, Seen::Data(_))).count(),
        2
    );

    // The first server's sidecar dies mid-session (SIGKILL).
    let i = sidecars
        .iter()
        .position(|(n, _)| *n == first_server)
        .expect("ours");
    let (_, mut dead) = sidecars.remove(i);
    dead.0.kill().expect("kill the sidecar");
    dead.0.wait().expect("reap");

    // The PU fails over; the other server receives the first server's state verbatim,
    // opened from the cookie the PU echoed, and the count goes on.
    assert_eq!(pu.ask("c"), format!("3 c at {other}"));
    let after = seen(seen_other, Duration::from_millis(300));
    let echoes: Vec<&Vec<u8>> = after
        .iter()
        .filter_map(|s| match s {
            Seen::Echo(state) => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(echoes, [&last_state], "{after:?}");
    let failover = wait_line(&reports, Duration::from_secs(5), |l| {
        l.starts_with("failed over from PE ")
    })
    .unwrap_or_else(|seen| panic!("no failover report: {seen:?}"));
    let took = failover
        .last()
        .and_then(|l| l.rsplit(" in ").next())
        .unwrap_or_default();
    println!("failover through session-channel sidecars, seen by the PU: {took}");
    drop(pu);
    let _ = seen(seen_other, Duration::from_millis(300));

    // Sidecar B refuses echoes that are not pu/client-1's in pool web: forged (another
    // key), the plain state as a PU might try it, and a genuine cookie of pu/client-1
    // echoed by pu/client-2 (a valid identity, the wrong one). Each: an ASAP_ERROR 0xA,
    // the session closed, the PU's identity in the log, nothing passed to the server.
    let pool = PoolHandle::new("web").expect("pool");
    let bound = |user| Binding {
        pool_handle: &pool,
        pool_user: user,
    };
    let later = SystemTime::now() + Duration::from_secs(600);
    let client_1 = "spiffe://acme.test/pu/client-1";
    let genuine = CookieKey::new(&key)
        .expect("key")
        .seal(&bound(client_1), b"count=99 by A", later)
        .expect("seal");
    let forged = CookieKey::new(&[0xa5; 32])
        .expect("key")
        .seal(&bound(client_1), b"count=99 by A", later)
        .expect("seal");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (who, cookie) in [
        ("pu-client-1", forged),
        (
            "pu-client-1",
            Cookie::new(b"count=99 by A").expect("cookie"),
        ),
        ("pu-client-2", genuine.clone()),
    ] {
        let answers = rt.block_on(echo_to(&lab, who, at_b, cookie));
        assert_eq!(answers.0, [0xA], "{who}: {answers:?}");
        assert!(answers.1, "{who}: the session was closed");
        let id = format!("spiffe://acme.test/{}", who.replacen('-', "/", 1));
        wait_line(&log_b, Duration::from_secs(5), |l| {
            l.contains(&format!(
                "closed the session of {id}: refused its Cookie Echo"
            ))
        })
        .unwrap_or_else(|seen| panic!("{who}: no refusal in the log: {seen:?}"));
        let saw = seen(seen_other, Duration::from_millis(300));
        assert!(
            !saw.iter()
                .any(|s| matches!(s, Seen::Echo(_) | Seen::Data(_))),
            "{who}: the server received {saw:?}"
        );
    }
    // The genuine cookie, from its own PU, is honoured.
    let answers = rt.block_on(echo_to(&lab, "pu-client-1", at_b, genuine));
    assert!(answers.0.is_empty(), "{answers:?}");
    let saw = seen(seen_other, Duration::from_millis(300));
    assert!(
        saw.contains(&Seen::Echo(b"count=99 by A".to_vec())),
        "{saw:?}"
    );
}

/// A session with the sidecar at `at` as `who` that echoes `cookie` and sends one data
/// frame: the ASAP_ERROR causes it got, and whether the session then ended without an
/// answer.
async fn echo_to(lab: &Lab, who: &str, at: SocketAddr, cookie: Cookie) -> (Vec<u16>, bool) {
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;
    let pe = identity::SpiffeId::parse("spiffe://acme.test/pe/echo-2").expect("id");
    let config = lab
        .identity(who)
        .client_config_expecting(trust::Protocol::Asap, identity::IdentityPattern::exact(&pe))
        .expect("config");
    let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(at.ip().into()), tcp)
        .await
        .expect("TLS to the sidecar");
    let (mut r, mut w) = tokio::io::split(tls);
    session::write_control(&mut w, &AsapMsg::CookieEcho(cookie))
        .await
        .expect("send");
    let _ = session::write_data(&mut w, 0, b"x").await;
    let mut causes = Vec::new();
    let read = async {
        loop {
            match session::read_frame(&mut r).await {
                Ok(Some(Frame::Control(AsapMsg::Error(e)))) => {
                    causes.extend(e.causes().iter().map(|c| c.code()));
                }
                // The business card, the server's sealed cookies.
                Ok(Some(Frame::Control(_))) => {}
                Ok(Some(Frame::Data { .. })) => return false,
                Ok(None) | Err(_) => return true,
                Ok(Some(Frame::BadControl(e))) => panic!("{e}"),
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer or the end, in time");
    (causes, closed)
}

#[test]
fn a_pu_whose_cookie_another_sidecar_refuses_starts_afresh_instead_of_going_round() {
    // An operator error: the two sidecars of the pool have different keys. After the
    // failover the second refuses the PU's cookie (0xA) and closes the session; the PU
    // forgets the cookie (every PE of a pool shares the key, so it would be refused
    // again) and its next attempt starts a fresh session, instead of echoing the same
    // cookie round and round.
    let lab = Lab::new();
    lab.init_registrar();
    let registrar = lab.start_registrar_with(300, 1000);
    std::fs::write(lab.path("pool.key"), [0x5a; 32]).expect("pool key");
    std::fs::write(lab.path("other.key"), [0xa5; 32]).expect("other key");
    let (server_a, _seen_a) = framed_server("A");
    let (server_b, seen_b) = framed_server("B");
    let (mut pe_a, _log_a, _) = sidecar(&lab, registrar.addr, "pe-echo-1", server_a);
    let (mut pu, reports) = Pu::start(&lab, registrar.addr);
    assert_eq!(pu.ask("a"), "1 a at A", "the only PE");
    // B joins with the wrong key; A dies.
    let (_pe_b, log_b, _) =
        sidecar_with_key(&lab, registrar.addr, "pe-echo-2", server_b, "other.key");
    pe_a.0.kill().expect("kill");
    pe_a.0.wait().expect("reap");
    assert_eq!(pu.ask("b"), "1 b at B", "a fresh session at B");
    wait_line(&log_b, Duration::from_secs(5), |l| {
        l.contains("closed the session of spiffe://acme.test/pu/client-1: refused its Cookie Echo")
    })
    .unwrap_or_else(|seen| panic!("B refused the cookie once: {seen:?}"));
    wait_line(&reports, Duration::from_secs(5), |l| {
        l.contains("refused") && l.contains("0xa")
    })
    .unwrap_or_else(|seen| panic!("the PU reports the refusal: {seen:?}"));
    let saw = seen(&seen_b, Duration::from_millis(300));
    let echoes = saw.iter().filter(|s| matches!(s, Seen::Echo(_))).count();
    assert_eq!(echoes, 0, "B's server never got a state: {saw:?}");
    assert_eq!(pu.ask("c"), "2 c at B", "the fresh session goes on");
    // Only one refusal: the PU did not echo the refused cookie again.
    let again: Vec<String> = log_b
        .try_iter()
        .filter(|l| l.contains("refused its Cookie Echo"))
        .collect();
    assert!(again.is_empty(), "{again:?}");
}

/// `rsp pu web` as `pu-client-1`: one line in, its answer out.
struct Pu {
    _proc: Pe,
    stdin: std::process::ChildStdin,
    answers: BufReader<std::process::ChildStdout>,
}

impl Pu {
    /// Starts it; its stderr lines come on the receiver.
    fn start(lab: &Lab, registrar: SocketAddr) -> (Self, mpsc::Receiver<String>) {
        let mut pu = Pe(rsp(lab, registrar, "pu-client-1")
            .args(["pu", "web"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rsp pu"));
        let stdin = pu.0.stdin.take().expect("stdin");
        let answers = BufReader::new(pu.0.stdout.take().expect("stdout"));
        let reports = lines(pu.0.stderr.take().expect("stderr"), "pu".into());
        let pu = Self {
            _proc: pu,
            stdin,
            answers,
        };
        (pu, reports)
    }

    /// Sends `line` and returns its answer.
    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to rsp pu");
        let mut answer = String::new();
        self.answers.read_line(&mut answer).expect("rsp pu answers");
        answer.trim_end().to_owned()
    }
}
