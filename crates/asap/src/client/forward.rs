//! A PE for a server that does not speak RSerPool (issue 21, `rsp pe --forward`): the PE
//! terminates the pool user's mutual TLS and carries each session's bytes over a new plain
//! TCP or Unix-socket connection to the existing server, its [`Target`], both ways.
//!
//! - Half-close is kept: the end of one direction (EOF) shuts down only that direction's
//!   write side (the TLS side with close_notify), the other goes on until it ends too.
//! - Back-pressure is kept: each direction copies through one bounded buffer
//!   ([`BUFFER_LEN`]); a side that does not read stops the other from being read.
//! - Limits ([`ForwardConfig`]): at most `max_sessions` sessions at once (the next PU is
//!   closed before its handshake, [`ForwardError::Busy`]), and `connect_timeout` to reach
//!   the target; a target that refuses or does not answer closes the PU's session at once
//!   ([`ForwardError::Target`]).
//!
//! - Session channels ([`ForwardConfig::session_channel`], `rsp pe --forward
//!   --session-channel`): instead of a byte stream, the spec §12.7 frames, with the PE
//!   sealing the server's session state into cookies and opening the PU's echoes
//!   ([`channel`]).
//!
//! ```no_run
//! # async fn run(trust: std::sync::Arc<trust::TrustStore>) -> std::io::Result<()> {
//! use asap::client::admit::AllowedPus;
//! use asap::client::forward::{ForwardConfig, Forwarder};
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7000").await?;
//! let forwarder = Forwarder::new(ForwardConfig::new("127.0.0.1:8080".parse().unwrap()));
//! // Register the PE with `pe::run` (its user transport: the listener's port) meanwhile.
//! std::sync::Arc::new(forwarder)
//!     .serve(listener, trust, AllowedPus::default(), |event| eprintln!("{event}"))
//!     .await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trust::TrustStore;

use super::admit::{AdmitError, AllowedPus, accept_pu};

pub mod channel;
mod pump;
use super::failover::Stream;
use super::session::Binding;
pub use channel::SessionChannel;
use channel::{CarryError, Refusal, Relay};

/// Bytes buffered per direction of a session: the back-pressure bound (two per session,
/// so at most `2 × BUFFER_LEN × max_sessions` in flight). 64 KiB keeps bulk transfers at
/// TLS record size multiples without copying in small pieces.
pub const BUFFER_LEN: usize = 64 * 1024;

/// Default limit on concurrent sessions (`rsp pe --max-sessions`): two descriptors each,
/// within the usual limit of 1024 per process; raise `ulimit -n` with it.
pub const DEFAULT_MAX_SESSIONS: usize = 256;

/// Default limit on reaching the target (`rsp pe --connect-timeout`): a target that does
/// not answer within it is as good as down.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the existing server listens: `HOST:PORT` (TCP; a name is resolved at each
/// connection) or `unix:/path` (a Unix stream socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `HOST:PORT`.
    Tcp {
        /// The host name or IP address.
        host: String,
        /// The port.
        port: u16,
    },
    /// `unix:/path`.
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!(
                    "{s:?}: unix: needs a socket path (unix:/run/app.sock)"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Self::tcp(addr.ip().to_string(), addr.port(), s);
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT or unix:/path"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        if host.is_empty() || host.contains([':', '/', ' ']) {
            return Err(format!("{s:?} is not HOST:PORT or unix:/path"));
        }
        Self::tcp(host.to_owned(), port, s)
    }
}

impl Target {
    fn tcp(host: String, port: u16, input: &str) -> Result<Self, String> {
        if port == 0 {
            return Err(format!("{input:?}: port 0 is not a server's port"));
        }
        Ok(Self::Tcp { host, port })
    }

    /// A new connection to the target, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Box<dyn Stream>> {
        let attempt = async {
            Ok::<Box<dyn Stream>, io::Error>(match self {
                Self::Tcp { host, port } => {
                    let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                    let _ = tcp.set_nodelay(true);
                    Box::new(tcp)
                }
                Self::Unix(path) => Box::new(UnixStream::connect(path).await?),
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// The host to name in an HTTP `Host` header.
    pub fn host(&self) -> &str {
        match self {
            Self::Tcp { host, .. } => host,
            Self::Unix(_) => "localhost",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What a forwarding PE does, and its limits.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// The existing server.
    pub target: Target,
    /// Limit: sessions at once; the next PU is closed before its handshake.
    pub max_sessions: usize,
    /// Limit: how long reaching the target may take.
    pub connect_timeout: Duration,
    /// Carry the session as spec §12.7 frames, cookies sealed here ([`channel`]); `None`:
    /// a plain byte stream.
    pub session: Option<SessionChannel>,
}

impl ForwardConfig {
    /// To `target`, with the default limits.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            max_sessions: DEFAULT_MAX_SESSIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            session: None,
        }
    }

    /// Sessions as a session channel with `channel`'s pool key ([`channel`]): the PE
    /// registers its transport as data plus control (spec §7.8).
    pub fn session_channel(mut self, channel: SessionChannel) -> Self {
        self.session = Some(channel);
        self
    }
}

/// Why a session was not carried, or ended abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// At the session limit: the PU's connection was closed unanswered.
    #[error("at the limit of {max} sessions (--max-sessions)")]
    Busy {
        /// The limit.
        max: usize,
    },
    /// The target fails its health check ([`Forwarder::set_healthy`]): the PU's
    /// connection was closed unanswered, so that it fails over to another PE at once.
    #[error("the target fails its health check")]
    Unhealthy,
    /// The PU was not admitted (handshake failed, identity not allowed).
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// The target refused or did not answer: the PU's session was closed at once.
    #[error("the target {target} refused or did not answer: {source}")]
    Target {
        /// The target.
        target: Target,
        /// Why.
        source: io::Error,
    },
    /// Carrying the bytes failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A session channel's frame was refused ([`Refusal`]): the session was closed.
    #[error("closed the session of {pu}: {refusal}")]
    Refused {
        /// The pool user.
        pu: SpiffeId,
        /// What was refused.
        refusal: Refusal,
    },
    /// The PU's certificate was revoked or expired during the session, which was closed.
    #[error("closed: the PU's certificate is no longer trusted ({0})")]
    Revoked(String),
}

/// One session's end: who, and the bytes carried each way.
#[derive(Clone, Debug)]
pub struct Carried {
    /// The pool user.
    pub pu: SpiffeId,
    /// Bytes from the PU to the target.
    pub to_target: u64,
    /// Bytes from the target to the PU.
    pub to_pu: u64,
}

/// A slot of the session limit, held for one session.
#[derive(Debug)]
pub struct SessionSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// What [`Forwarder::serve`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum ForwardEvent {
    /// A session ended.
    Ended(SocketAddr, Carried),
    /// A connection was refused or a session failed.
    Failed(SocketAddr, ForwardError),
}

impl fmt::Display for ForwardEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ended(addr, c) => write!(
                f,
                "session of {} from {addr} ended: {} bytes to the target, {} back",
                c.pu, c.to_target, c.to_pu
            ),
            Self::Failed(addr, e) => write!(f, "session from {addr}: {e}"),
        }
    }
}

/// Carries PU sessions to a [`Target`] (see the module doc).
#[derive(Debug)]
pub struct Forwarder {
    config: ForwardConfig,
    slots: Arc<Semaphore>,
    /// Whether the target passes its health check (true without checks).
    healthy: AtomicBool,
}

impl Forwarder {
    /// A forwarder with `config`'s target and limits.
    pub fn new(config: ForwardConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_sessions));
        Self {
            config,
            slots,
            healthy: AtomicBool::new(true),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.config.max_sessions - self.slots.available_permits()
    }

    /// Whether the target passes its health check ([`super::check`]). While it does
    /// not, [`Forwarder::admit`] refuses new sessions before their handshake: a PU that
    /// still has this PE in its cache (the registrar no longer returns it) sees a PE it
    /// cannot reach and fails over at once, instead of a session that ends unanswered.
    /// Open sessions go on.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// A slot for one more session, or [`ForwardError::Busy`] at the limit
    /// ([`ForwardError::Unhealthy`] while the target fails its checks). Take it before the
    /// handshake, so that connections refused cost no TLS work.
    pub fn admit(&self) -> Result<SessionSlot, ForwardError> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Err(ForwardError::Unhealthy);
        }
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .map(SessionSlot)
            .map_err(|_| ForwardError::Busy {
                max: self.config.max_sessions,
            })
    }

    /// One session on an accepted connection: the PU's handshake and admission
    /// ([`accept_pu`]), then its bytes carried to a new connection to the target until
    /// both directions have ended, or until the PU's certificate is revoked.
    pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        slot: SessionSlot,
        trust: &TrustStore,
        allowed: &AllowedPus,
    ) -> Result<Carried, ForwardError> {
        let _slot = slot;
        let mut admitted = accept_pu(trust, allowed, stream).await?;
        let pu = admitted.peer.id().clone();
        let mut target = match self
            .config
            .target
            .connect(self.config.connect_timeout)
            .await
        {
            Ok(t) => t,
            Err(source) => {
                // Closed at once, cleanly: the PU sees the end of the stream, not a hang.
                let _ = admitted.tls.shutdown().await;
                return Err(ForwardError::Target {
                    target: self.config.target.clone(),
                    source,
                });
            }
        };
        if let Some(channel) = &self.config.session {
            let binding = Binding {
                pool_handle: &channel.pool_handle,
                pool_user: pu.as_str(),
            };
            let relay = Relay::new(&channel.key, binding, channel.lifetime);
            let card = channel.card.as_ref().map(|c| c.borrow().clone());
            let carried = tokio::select! {
                carried = channel::carry(&mut admitted.tls, target, &relay, card, wall_clock) => {
                    carried
                }
                reason = admitted.live.closed() => {
                    return Err(ForwardError::Revoked(format!("{reason:?}")));
                }
            };
            let (to_target, to_pu) = match carried {
                Ok(c) => c,
                Err(CarryError::Refused(refusal)) => {
                    return Err(ForwardError::Refused { pu, refusal });
                }
                Err(CarryError::Io(e)) => return Err(e.into()),
            };
            return Ok(Carried {
                pu,
                to_target,
                to_pu,
            });
        }
        let (to_target, to_pu) = tokio::select! {
            carried = pump::copy_both_ways(
                &mut admitted.tls, &mut target, BUFFER_LEN, BUFFER_LEN,
            ) => carried?,
            reason = admitted.live.closed() => {
                return Err(ForwardError::Revoked(format!("{reason:?}")));
            }
        };
        Ok(Carried {
            pu,
            to_target,
            to_pu,
        })
    }

    /// Serves PUs on `listener` until the task is dropped: each connection admitted
    /// ([`Forwarder::admit`]) gets its own task running [`Forwarder::session`]; `events`
    /// hears each session's end or failure (refusals included).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        trust: Arc<TrustStore>,
        allowed: AllowedPus,
        events: impl Fn(ForwardEvent) + Send + Sync + 'static,
    ) {
        let events = Arc::new(events);
        let allowed = Arc::new(allowed);
        loop {
            let Ok((tcp, addr)) = listener.accept().await else {
                // Out of descriptors, say: a pause, not a busy loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let slot = match self.admit() {
                Ok(slot) => slot,
                Err(e) => {
                    drop(tcp);
                    events(ForwardEvent::Failed(addr, e));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (me, trust, allowed, events) = (
                Arc::clone(&self),
                Arc::clone(&trust),
                Arc::clone(&allowed),
                Arc::clone(&events),
            );
            tokio::spawn(async move {
                match me.session(tcp, slot, &trust, &allowed).await {
                    Ok(c) => events(ForwardEvent::Ended(addr, c)),
                    Err(e) => events(ForwardEvent::Failed(addr, e)),
                }
            });
        }
    }
}

/// The wall clock: cookie expiry is wall-clock time shared by the pool's PEs.
#[allow(clippy::disallowed_methods)] // the session driver, not a core
fn wall_clock() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;
    use trust::Protocol;
    use trust::testing::TestCa;

    use super::*;

    /// A store presenting `spiffe://acme.test/PATH`, trusting acme.test.
    fn store(ca: &TestCa, path: &str) -> Arc<TrustStore> {
        let s = TrustStore::new(ca.leaf(path).issue().identity()).expect("store");
        s.add_domain(ca.bundle()).expect("domain");
        Arc::new(s)
    }

    /// A forwarding PE on a loopback port, to `target`, with `max_sessions`; its events go
    /// to the returned channel.
    async fn pe(
        ca: &TestCa,
        target: Target,
        max_sessions: usize,
        connect_timeout: Duration,
        allowed: AllowedPus,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<ForwardEvent>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let forwarder = Arc::new(Forwarder::new(ForwardConfig {
            target,
            max_sessions,
            connect_timeout,
            session: None,
        }));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(
            forwarder.serve(listener, store(ca, "pe/web-1"), allowed, move |e| {
                let _ = tx.send(e);
            }),
        );
        (addr, rx)
    }

    /// A PU presenting `path` dialling the PE at `addr` over mutual TLS.
    async fn dial(
        ca: &TestCa,
        path: &str,
        addr: SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let pe = SpiffeId::parse("spiffe://acme.test/pe/web-1").expect("id");
        let config = store(ca, path)
            .client_config_expecting(Protocol::Asap, identity::IdentityPattern::exact(&pe))
            .expect("config");
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        TlsConnector::from(config).connect(name, tcp).await
    }

    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ForwardEvent>) -> ForwardEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("the PE runs")
    }

    /// A server that reads everything until EOF, then answers how much it read and closes.
    async fn counting_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut buf = vec![0; 8192];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k as u64,
                        }
                    }
                    let _ = s.write_all(format!("read {n} bytes").as_bytes()).await;
                });
            }
        });
        addr
    }

    /// Sends `data`, half-closes (close_notify: done sending, still reading) and reads
    /// the answer to its end.
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        pu: &mut S,
        data: &[u8],
    ) -> io::Result<String> {
        pu.write_all(data).await?;
        pu.shutdown().await?;
        let mut answer = String::new();
        pu.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    fn target(addr: SocketAddr) -> Target {
        addr.to_string().parse().expect("target")
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_the_pus_eof_half_closes_only_its_direction() {
        let ca = TestCa::new("acme.test");
        let server = counting_server().await;
        let (pe, mut events) = pe_default(&ca, server).await;
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
        let answer = tokio::time::timeout(Duration::from_secs(10), finish(&mut pu, &[7; 300_000]))
            .await
            .expect("answered in time")
            .expect("read");
        assert_eq!(answer, "read 300000 bytes");
        let ForwardEvent::Ended(_, carried) = next(&mut events).await else {
            panic!("the session ends cleanly");
        };
        assert_eq!(carried.pu.as_str(), "spiffe://acme.test/pu/client-1");
        assert_eq!((carried.to_target, carried.to_pu), (300_000, 17));
    }

    #[tokio::test]
    async fn a_target_that_does_not_read_stops_the_pu_after_bounded_buffers() {
        // Back-pressure: the target accepts and never reads. Writes from the PU stall once
        // the socket buffers and the one bounded buffer per direction are full, instead of
        // piling up in the PE.
        let ca = TestCa::new("acme.test");
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = l.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let (pe, _events) = pe_default(&ca, server).await;
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
        let chunk = vec![1u8; 64 * 1024];
        let mut written = 0usize;
        let total = 256 * 1024 * 1024;
        while written < total {
            match tokio::time::timeout(Duration::from_secs(2), pu.write_all(&chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => break, // stalled: back-pressure reached the PU
            }
        }
        assert!(
            written < 64 * 1024 * 1024,
            "the PE took {written} bytes its target never read"
        );
        held.abort();
    }

    #[tokio::test]
    async fn a_target_that_refuses_closes_the_pus_session_at_once() {
        let ca = TestCa::new("acme.test");
        // A port nobody listens on (bound, then closed).
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let (pe, mut events) = pe_default(&ca, gone).await;
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), pu.read(&mut buf))
            .await
            .expect("closed at once, not hanging");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let ForwardEvent::Failed(_, ForwardError::Target { source, .. }) = next(&mut events).await
        else {
            panic!("a target failure");
        };
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_target_that_does_not_answer_is_given_up_after_the_connect_timeout() {
        let ca = TestCa::new("acme.test");
        // A listener with a full accept queue (backlog 1, never accepting): further SYNs
        // are dropped, so a connection attempt hangs as to a black-holed host.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let full = socket.listen(1).expect("listen");
        let addr = full.local_addr().expect("addr");
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                _ => break,
            }
        }
        let timeout = Duration::from_millis(400);
        let (pe, mut events) = pe(&ca, target(addr), 4, timeout, AllowedPus::default()).await;
        let started = tokio::time::Instant::now();
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), pu.read(&mut buf))
            .await
            .expect("closed after the connect timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let ForwardEvent::Failed(_, ForwardError::Target { source, .. }) = next(&mut events).await
        else {
            panic!("a target failure");
        };
        assert_eq!(source.kind(), io::ErrorKind::TimedOut, "{source}");
        assert!(started.elapsed() >= timeout);
        drop(fillers);
    }

    #[tokio::test]
    async fn beyond_max_sessions_a_pu_is_closed_before_its_handshake() {
        let ca = TestCa::new("acme.test");
        let server = counting_server().await;
        let (pe, mut events) = pe(
            &ca,
            target(server),
            1,
            DEFAULT_CONNECT_TIMEOUT,
            AllowedPus::default(),
        )
        .await;
        let mut first = dial(&ca, "pu/client-1", pe)
            .await
            .expect("the first session");
        first.write_all(b"x").await.expect("write");
        first.flush().await.expect("flush");
        // The second finds the limit: closed without a handshake.
        assert!(dial(&ca, "pu/client-2", pe).await.is_err(), "refused");
        let ForwardEvent::Failed(_, ForwardError::Busy { max: 1 }) = next(&mut events).await else {
            panic!("the limit");
        };
        // The first ends; its slot is free again.
        assert_eq!(finish(&mut first, b"").await.expect("read"), "read 1 bytes");
        assert!(matches!(next(&mut events).await, ForwardEvent::Ended(..)));
        let mut again = dial(&ca, "pu/client-2", pe).await.expect("a slot again");
        assert_eq!(finish(&mut again, b"").await.expect("read"), "read 0 bytes");
    }

    #[test]
    fn an_unhealthy_target_admits_no_new_session_until_it_is_healthy_again() {
        let f = Forwarder::new(ForwardConfig::new("127.0.0.1:1".parse().expect("target")));
        let open = f.admit().expect("healthy");
        f.set_healthy(false);
        assert!(matches!(f.admit(), Err(ForwardError::Unhealthy)));
        assert_eq!(f.open_sessions(), 1, "the open session goes on");
        drop(open);
        f.set_healthy(true);
        assert!(f.admit().is_ok(), "healthy again");
    }

    #[tokio::test]
    async fn a_pu_outside_allow_pu_or_a_pe_identity_is_refused_and_an_allowed_one_served() {
        let ca = TestCa::new("acme.test");
        let server = counting_server().await;
        let only = AllowedPus::patterns(vec![
            "spiffe://acme.test/pu/client-1".parse().expect("pattern"),
        ]);
        let (pe, mut events) = pe(&ca, target(server), 4, DEFAULT_CONNECT_TIMEOUT, only).await;
        // Valid certificates of the trusted domain, but not allowed: the session fails.
        for who in ["pu/client-2", "pe/echo-1", "registrar/enrp-1"] {
            let refused = async { finish(&mut dial(&ca, who, pe).await?, b"").await };
            let answer = tokio::time::timeout(Duration::from_secs(5), refused)
                .await
                .expect("refused at once");
            assert!(
                !matches!(&answer, Ok(a) if !a.is_empty()),
                "{who}: {answer:?}"
            );
            let ForwardEvent::Failed(_, ForwardError::Admit(AdmitError::NotAllowed { id, .. })) =
                next(&mut events).await
            else {
                panic!("{who} refused for its identity");
            };
            assert_eq!(id.as_str(), format!("spiffe://acme.test/{who}"));
        }
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("allowed");
        assert_eq!(
            finish(&mut pu, b"hello").await.expect("read"),
            "read 5 bytes"
        );

        // The default: a PE or registrar identity is refused, a gateway served.
        let (pe, mut events) = pe_default(&ca, server).await;
        for who in ["pe/echo-1", "registrar/enrp-1"] {
            let _ = dial(&ca, who, pe).await;
            assert!(matches!(
                next(&mut events).await,
                ForwardEvent::Failed(_, ForwardError::Admit(AdmitError::NotAllowed { .. }))
            ));
        }
        let mut gw = dial(&ca, "gateway/gw-1", pe).await.expect("a gateway");
        assert_eq!(finish(&mut gw, b"").await.expect("read"), "read 0 bytes");
    }

    async fn pe_default(
        ca: &TestCa,
        server: SocketAddr,
    ) -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<ForwardEvent>,
    ) {
        pe(
            ca,
            target(server),
            4,
            DEFAULT_CONNECT_TIMEOUT,
            AllowedPus::default(),
        )
        .await
    }

    #[tokio::test]
    async fn a_unix_socket_target_is_carried_too() {
        let ca = TestCa::new("acme.test");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("app.sock");
        let l = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got.reverse();
            s.write_all(&got).await.expect("write");
        });
        let target: Target = format!("unix:{}", path.display()).parse().expect("target");
        let (pe, _events) = pe(
            &ca,
            target,
            4,
            DEFAULT_CONNECT_TIMEOUT,
            AllowedPus::default(),
        )
        .await;
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
        assert_eq!(finish(&mut pu, b"abc").await.expect("read"), "cba");
    }

    #[tokio::test]
    async fn a_pu_revoked_during_its_session_is_cut_off() {
        // The PE's CRL, reloaded while a forwarded session runs, revokes the PU: the
        // session ends at once, with the reason, as for the demo services.
        let ca = TestCa::new("acme.test");
        let server = counting_server().await;
        let pe_store = {
            let s = TrustStore::new(ca.leaf("pe/web-1").issue().identity()).expect("store");
            s.add_domain(ca.bundle().with_crls(vec![ca.crl(&[])]))
                .expect("domain");
            Arc::new(s)
        };
        let pu_leaf = ca.leaf("pu/client-1").issue();
        let pu_store = {
            let s = TrustStore::new(pu_leaf.identity()).expect("store");
            s.add_domain(ca.bundle()).expect("domain");
            s
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let forwarder = Arc::new(Forwarder::new(ForwardConfig::new(target(server))));
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&forwarder).serve(
            listener,
            Arc::clone(&pe_store),
            AllowedPus::default(),
            move |e| {
                let _ = tx.send(e);
            },
        ));
        let pe = SpiffeId::parse("spiffe://acme.test/pe/web-1").expect("id");
        let config = pu_store
            .client_config_expecting(Protocol::Asap, identity::IdentityPattern::exact(&pe))
            .expect("config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut pu = TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .expect("handshake");
        pu.write_all(b"before").await.expect("write");
        pu.flush().await.expect("flush");
        // Wait until the PE has admitted the PU (registered its live connection).
        tokio::time::timeout(Duration::from_secs(10), async {
            while pe_store.connections().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the session opens");
        let closed = pe_store
            .set_crls(ca.domain(), vec![ca.crl(&[&pu_leaf.serial])])
            .expect("CRL");
        assert_eq!(closed, 1, "the PU's session was registered");
        let ForwardEvent::Failed(_, ForwardError::Revoked(reason)) = next(&mut events).await else {
            panic!("cut off for the revocation");
        };
        assert!(reason.contains("SerialRevoked"), "{reason}");
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), pu.read_to_end(&mut rest))
            .await
            .expect("closed at once");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        assert_eq!(forwarder.open_sessions(), 0);
    }

    #[tokio::test]
    async fn a_session_channel_binds_the_cookie_to_the_pus_tls_identity() {
        // Over real TLS: the cookie the PE seals for pu/client-1 (from the server's plain
        // state) resumes client-1's session at the server, and is refused when
        // pu/client-2 (a valid identity, the wrong one) echoes it: its session closed,
        // the refusal naming client-2, the server receiving nothing from it.
        use crate::client::session::{self, CookieKey, Frame};
        use crate::wire::AsapMsg;
        use crate::wire::param::{Cookie, PoolHandle};
        let ca = TestCa::new("acme.test");
        // A framed server: sends its state "s=1" at the start of each session, then
        // reports every frame it receives.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = l.local_addr().expect("addr");
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let state = AsapMsg::Cookie(Cookie::new(b"s=1").expect("state"));
                    session::write_control(&mut s, &state).await.expect("w");
                    while let Ok(Some(frame)) = session::read_frame(&mut s).await {
                        let _ = got_tx.send(format!("{frame:?}"));
                    }
                });
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let pe = listener.local_addr().expect("addr");
        let key = Arc::new(CookieKey::new(&[3; 32]).expect("key"));
        let channel = SessionChannel::new(key, PoolHandle::new("web").expect("pool"));
        let config = ForwardConfig::new(target(server)).session_channel(channel);
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(Arc::new(Forwarder::new(config)).serve(
            listener,
            store(&ca, "pe/web-1"),
            AllowedPus::default(),
            move |e| {
                let _ = tx.send(e);
            },
        ));
        let sealed = {
            let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
            let Some(Frame::Control(AsapMsg::Cookie(c))) =
                session::read_frame(&mut pu).await.expect("frame")
            else {
                panic!("the server's state, sealed");
            };
            assert_ne!(c.as_bytes(), b"s=1", "the PU never sees the plain state");
            c
        };
        let _ = next(&mut events).await; // client-1's first session ends
        let mut thief = dial(&ca, "pu/client-2", pe).await.expect("handshake");
        session::write_control(&mut thief, &AsapMsg::CookieEcho(sealed.clone()))
            .await
            .expect("w");
        let mut causes = Vec::new();
        while let Ok(Some(frame)) = session::read_frame(&mut thief).await {
            if let Frame::Control(AsapMsg::Error(e)) = frame {
                causes.extend(e.causes().iter().map(|c| c.code()));
            }
        }
        assert_eq!(causes, [0xA], "refused, then closed");
        let ForwardEvent::Failed(_, ForwardError::Refused { pu, .. }) = next(&mut events).await
        else {
            panic!("a refusal");
        };
        assert_eq!(pu.as_str(), "spiffe://acme.test/pu/client-2");
        // Its own PU's echo reaches the server opened.
        let mut pu = dial(&ca, "pu/client-1", pe).await.expect("handshake");
        session::write_control(&mut pu, &AsapMsg::CookieEcho(sealed))
            .await
            .expect("w");
        let seen = tokio::time::timeout(Duration::from_secs(5), got.recv())
            .await
            .expect("in time")
            .expect("a frame");
        assert_eq!(
            seen,
            format!(
                "{:?}",
                Frame::Control(AsapMsg::CookieEcho(Cookie::new(b"s=1").expect("c")))
            )
        );
        assert!(
            got.try_recv().is_err(),
            "nothing from client-2 reached the server"
        );
    }

    #[test]
    fn targets_parse_or_say_why_not() {
        assert_eq!(
            "127.0.0.1:8080".parse(),
            Ok(Target::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            })
        );
        assert_eq!(
            "db.internal:5432".parse(),
            Ok(Target::Tcp {
                host: "db.internal".into(),
                port: 5432
            })
        );
        let v6: Target = "[::1]:80".parse().expect("v6");
        assert_eq!(v6.to_string(), "[::1]:80");
        assert_eq!(
            "unix:/run/app.sock".parse(),
            Ok(Target::Unix("/run/app.sock".into()))
        );
        for bad in ["", "nohost", "unix:", "host:http", ":80", "a b:80", "h:0"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
    }
}
