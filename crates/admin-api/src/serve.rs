//! HTTPS for the router: axum has no TLS, so each accepted connection is handshaken with
//! tokio-rustls and served by hyper-util's auto builder (HTTP/1.1 and h2).
//!
//! Failed handshakes are counted by reason (`/metrics`, `rsp_handshake_failures_total`
//! with `listener="admin"`) and logged at debug level, not audited: a handshake that fails
//! proves no identity, and auditing each would let anyone on the network make the
//! registrar write (and fsync) a record per TCP connection. Refused requests on an
//! established connection are audited (see [`crate::auth`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::Service;
use trust::{Peer, TrustStore};

use crate::auth::RemoteAddr;

/// Counters of the HTTPS listener, reported by `/metrics`.
#[derive(Debug, Default)]
pub struct ServeCounters {
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    open_connections: AtomicU64,
    unaudited_refusals: AtomicU64,
}

/// A copy of [`ServeCounters`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CountersSnapshot {
    pub(crate) handshake_failures: Vec<(&'static str, u64)>,
    pub(crate) open_connections: u64,
    pub(crate) unaudited_refusals: u64,
}

impl ServeCounters {
    fn handshake_failed(&self, reason: &'static str) {
        let mut map = self
            .handshake_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *map.entry(reason).or_default() += 1;
    }

    pub(crate) fn unaudited_refusal(&self) {
        self.unaudited_refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        let failures = self
            .handshake_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        CountersSnapshot {
            handshake_failures: failures.iter().map(|(k, v)| (*k, *v)).collect(),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            unaudited_refusals: self.unaudited_refusals.load(Ordering::Relaxed),
        }
    }
}

/// Limits of [`serve`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Longest TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog. Default 256.
    pub max_connections: usize,
    /// HTTP/1.1: longest wait for a request's headers. Default 10 s.
    pub header_read_timeout: Duration,
    /// HTTP/1.1: the read buffer, which bounds the request head. HTTP/2: the header list
    /// limit. Default 64 KiB.
    pub max_header_bytes: usize,
    /// HTTP/2: concurrent streams per connection. Default 32.
    pub max_streams: u32,
    /// How long [`serve`] waits for open connections after `shutdown`. Default 10 s.
    pub shutdown_grace: Duration,
    /// A connection whose first request has not started this long after its TLS
    /// handshake is closed: it covers hyper's protocol detection, which waits for the
    /// first bytes without a timeout of its own (a silent connection would hold its slot
    /// forever). Default 10 s.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive
    /// and HTTP/2 alike). Default 60 s.
    pub idle_timeout: Duration,
    /// HTTP/2: a PING this often; no answer within as long closes the connection.
    /// Default 20 s.
    pub h2_keep_alive: Duration,
    /// Connections (handshaking or established) from one IP address; more are closed at
    /// once, so that one host cannot take all of [`ServeOptions::max_connections`] and
    /// lock the operators out. Default 32.
    pub max_connections_per_ip: usize,
    /// Where handshake failures and open connections are counted (from
    /// [`crate::AdminState::serve_counters`], so that `/metrics` reports them).
    pub counters: Arc<ServeCounters>,
    /// When set, a connection with a client certificate is registered in this trust
    /// store's connection registry, so that revoking its identity, serial or domain
    /// closes it. Default `None`; `enrpd` sets its trust store.
    pub trust: Option<Arc<TrustStore>>,
}

impl ServeOptions {
    /// The defaults, counting into `counters`.
    pub fn new(counters: Arc<ServeCounters>) -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_streams: 32,
            shutdown_grace: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_keep_alive: Duration::from_secs(20),
            max_connections_per_ip: 32,
            counters,
            trust: None,
        }
    }
}

/// Serves `router` over HTTPS on `listener` until `shutdown` completes, then lets open
/// connections finish for [`ServeOptions::shutdown_grace`].
///
/// Each connection takes a fresh configuration from `tls` (so trust changes apply to the
/// next handshake); it should offer ALPN `h2` and `http/1.1` and request, not require, a
/// client certificate. A client that presents one gets its [`Peer`] into every request's
/// extensions; every request also gets the [`RemoteAddr`].
pub async fn serve<F>(
    listener: TcpListener,
    tls: F,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn() -> Arc<ServerConfig> + Send + Sync + 'static,
{
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(options.max_streams)
        .keep_alive_interval(Some(options.h2_keep_alive))
        .keep_alive_timeout(options.h2_keep_alive);
    let http = Arc::new(http);
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::new(options.max_connections_per_ip));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(ip_slot) = PerIp::admit(&per_ip, remote.ip()) else {
            tracing::debug!(%remote, "admin API: too many connections from this address");
            options.counters.handshake_failed("per-ip-cap");
            continue;
        };
        let connection = Connection {
            timeouts: Timeouts {
                first_request: options.first_request_timeout,
                idle: options.idle_timeout,
            },
            config: tls(),
            http: http.clone(),
            router: router.clone(),
            counters: options.counters.clone(),
            handshake_timeout: options.handshake_timeout,
            trust: options.trust.clone(),
        };
        let watcher = graceful.watcher();
        tasks.spawn(async move {
            connection.run(tcp, remote, watcher).await;
            drop(ip_slot);
            drop(permit);
        });
        // Reap finished tasks so the set does not grow with every connection served.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin API connections still open after the grace period: closing");
    }
    tasks.shutdown().await;
}

/// Connections per IP address ([`ServeOptions::max_connections_per_ip`]).
struct PerIp {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` at the cap.
    fn admit(this: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= this.cap {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: Arc::clone(this),
            ip,
        })
    }
}

/// One connection counted against its address; given back when dropped.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .per_ip
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    first_request: Duration,
    idle: Duration,
}

/// What a connection's requests have been doing, for [`idle`].
struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection started); whether one started.
    last: Mutex<(tokio::time::Instant, bool)>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new((tokio::time::Instant::now(), false)),
        }
    }

    /// A request starts; the guard marks its end (also when it is cancelled).
    fn start(this: &Arc<Self>) -> InFlight {
        this.in_flight.fetch_add(1, Ordering::SeqCst);
        this.last.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        InFlight(Arc::clone(this))
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut last = self.0.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.0 = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Returns once the connection has been quiet too long: no first request within
/// `first_request` of the handshake, or no request in flight for `idle`.
async fn idle(activity: &Activity, timeouts: Timeouts) {
    loop {
        let (last, started) = *activity.last.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = if started {
            timeouts.idle
        } else {
            timeouts.first_request
        };
        let deadline = last + limit;
        if tokio::time::Instant::now() >= deadline && activity.in_flight.load(Ordering::SeqCst) == 0
        {
            let (again, _) = *activity.last.lock().unwrap_or_else(PoisonError::into_inner);
            if again == last {
                return;
            }
            continue;
        }
        // In flight at the deadline: look again one limit later (a request ending
        // moves `last`).
        let wake = if tokio::time::Instant::now() >= deadline {
            tokio::time::Instant::now() + limit
        } else {
            deadline
        };
        tokio::time::sleep_until(wake).await;
    }
}

struct Connection {
    timeouts: Timeouts,
    config: Arc<ServerConfig>,
    http: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    counters: Arc<ServeCounters>,
    handshake_timeout: Duration,
    trust: Option<Arc<TrustStore>>,
}

impl Connection {
    async fn run(
        self,
        tcp: TcpStream,
        remote: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let acceptor = TlsAcceptor::from(self.config);
        let tls = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                let reason = handshake_reason(&err);
                tracing::debug!(%remote, reason, error = %err, "admin API handshake failed");
                self.counters.handshake_failed(reason);
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "admin API handshake timed out");
                self.counters.handshake_failed("timeout");
                return;
            }
        };
        let peer = match Peer::from_tls_optional(tls.get_ref().1) {
            Ok(peer) => peer,
            Err(err) => {
                // The verifier accepted a certificate whose identity cannot be read: refuse
                // the connection rather than serve it anonymously.
                tracing::debug!(%remote, error = %err, "admin API client identity unreadable");
                self.counters.handshake_failed("identity");
                return;
            }
        };
        // Registered so that a revocation closes it; refused if one landed since the
        // handshake.
        let mut live = match (&self.trust, &peer) {
            (Some(trust), Some(peer)) => match trust.register_connection(peer) {
                Ok(live) => Some(live),
                Err(rejection) => {
                    tracing::debug!(%remote, %rejection, "admin API client revoked after its handshake");
                    self.counters.handshake_failed("revoked");
                    return;
                }
            },
            _ => None,
        };
        let router = self.router;
        let activity = Arc::new(Activity::new());
        let requests = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let in_flight = Activity::start(&requests);
            request.extensions_mut().insert(RemoteAddr(remote));
            if let Some(peer) = &peer {
                request.extensions_mut().insert(peer.clone());
            }
            let mut router = router.clone();
            async move {
                let response = router.call(request.map(axum::body::Body::new)).await;
                drop(in_flight);
                response
            }
        });
        self.counters
            .open_connections
            .fetch_add(1, Ordering::Relaxed);
        let served = watcher.watch(
            self.http
                .serve_connection(TokioIo::new(tls), service)
                .into_owned(),
        );
        let revoked = async {
            match &mut live {
                Some(live) => live.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = served => {
                if let Err(err) = served {
                    tracing::debug!(%remote, error = %err, "admin API connection ended with an error");
                }
            }
            () = idle(&activity, self.timeouts) => {
                tracing::debug!(%remote, "admin API connection idle: closing");
            }
            reason = revoked => {
                // Dropping the connection closes it, mid-request if need be: its identity
                // was revoked.
                tracing::info!(%remote, ?reason, "admin API connection closed: revoked");
            }
        }
        self.counters
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A short, bounded name for why a handshake failed (a metrics label).
fn handshake_reason(err: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error as Tls};
    match err.get_ref().and_then(|e| e.downcast_ref::<Tls>()) {
        Some(Tls::InvalidCertificate(CertificateError::Revoked)) => "revoked",
        Some(Tls::InvalidCertificate(CertificateError::UnknownIssuer)) => "untrusted",
        Some(Tls::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => "expired",
        Some(Tls::InvalidCertificate(_)) => "bad-certificate",
        Some(Tls::NoCertificatesPresented) => "no-certificate",
        Some(Tls::NoApplicationProtocol) => "alpn",
        Some(Tls::AlertReceived(_)) => "alert",
        Some(Tls::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => match err.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => "closed",
            _ => "io",
        },
    }
}
