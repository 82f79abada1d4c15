//! The demo services a `rsp pe` offers (echo RFC 862, discard RFC 863, daytime RFC 867,
//! chargen RFC 864, and `counter`, a session whose state survives failover in ASAP
//! cookies, spec §7.8), over TLS with the PE's certificate. (`rsp pu`'s side is
//! `asap::client::failover`.)

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use asap::client::admit::{AdmitError, Admitted, AllowedPus, accept_pu};
use asap::client::failover::{PPID_SERVICE, Stream};
use asap::client::forward::{ForwardError, Forwarder};
use asap::client::session::{self, Binding, CookieKey, Frame};
use asap::wire::AsapMsg;
use asap::wire::param::{ErrorCause, Load, OperationError, PoolHandle};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use trust::{Peer, TrustStore};

/// Longest line echoed; a longer one ends the session (bounded memory per client).
const MAX_LINE: usize = 64 * 1024;

/// A demo service.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Service {
    /// Each line comes back (RFC 862).
    Echo,
    /// Everything is read and dropped (RFC 863).
    Discard,
    /// The time, then close (RFC 867).
    Daytime,
    /// Lines of rotating characters until the client closes (RFC 864).
    Chargen,
    /// A session: each request is answered with the session's running count, which the
    /// PE hands the PU as an authenticated ASAP cookie; after a failover the PU echoes it
    /// and the new PE continues the count (spec §7.8, §12.7). Needs --cookie-key.
    Counter,
}

impl Service {
    /// Whether the service carries ASAP control messages on its channel (spec §7.8:
    /// registered with Transport Use = data plus control).
    pub(crate) fn has_sessions(self) -> bool {
        matches!(self, Self::Counter)
    }
}

/// What a session service needs: the pool key and the pool the cookies are bound to.
pub(crate) struct Sessions {
    pub(crate) key: CookieKey,
    pub(crate) pool_handle: PoolHandle,
    pub(crate) lifetime: Duration,
    /// The business card each session starts with (spec §7.8), kept current by
    /// `client::card::keep_current`; `None` sends none.
    pub(crate) card: Option<watch::Receiver<AsapMsg>>,
}

/// The PE's load for an adaptive policy: open client sessions over the capacity, sent to
/// the PE's registration loop, which re-registers with it (spec §7.1 step 4).
pub(crate) struct LoadMeter {
    open: AtomicUsize,
    capacity: NonZeroUsize,
    load: watch::Sender<Load>,
}

impl LoadMeter {
    pub(crate) fn new(capacity: NonZeroUsize) -> (Arc<Self>, watch::Receiver<Load>) {
        let (load, rx) = watch::channel(0);
        let meter = Self {
            open: AtomicUsize::new(0),
            capacity,
            load,
        };
        (Arc::new(meter), rx)
    }

    /// Counts a session until the guard drops.
    fn open(self: &Arc<Self>) -> SessionGuard {
        let n = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.publish(n);
        SessionGuard(Arc::clone(self))
    }

    fn publish(&self, open: usize) {
        // Loads are fractions of u32::MAX (spec §5.1); beyond capacity is 100%.
        let cap = self.capacity.get() as u64;
        let load = u64::from(u32::MAX) * (open as u64).min(cap) / cap;
        self.load
            .send_replace(Load::try_from(load).unwrap_or(Load::MAX));
    }
}

/// One open session of a [`LoadMeter`].
struct SessionGuard(Arc<LoadMeter>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let n = self.0.open.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.publish(n);
    }
}

/// What a PE does with each admitted PU session.
pub(crate) enum Handler {
    /// A demo service, with its sessions' cookie key for `counter`.
    Demo {
        service: Service,
        sessions: Option<Arc<Sessions>>,
    },
    /// Carries the session to an existing server (`--forward`).
    Forward(Arc<Forwarder>),
}

/// The PE's open sessions, and whether it takes new ones: a draining PE (SIGUSR1) refuses
/// new connections before their handshake and waits for the open sessions to end.
pub(crate) struct Gate {
    open: watch::Sender<usize>,
    draining: AtomicBool,
}

/// One open session of a [`Gate`].
pub(crate) struct GateGuard(Arc<Gate>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            open: watch::Sender::new(0),
            draining: AtomicBool::new(false),
        })
    }

    /// Counts a new session until the guard drops; `None` while draining.
    fn enter(self: &Arc<Self>) -> Option<GateGuard> {
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        self.open.send_modify(|n| *n += 1);
        Some(GateGuard(Arc::clone(self)))
    }

    /// From now on, new sessions are refused.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Sessions open now.
    pub(crate) fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// The count of open sessions as it changes (`rsp pe drain`'s progress).
    pub(crate) fn watch_open(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// Resolves once no session is open.
    pub(crate) async fn idle(&self) {
        let _ = self.open.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Refusals anyone can cause before a handshake (at `--max-sessions`, an unhealthy
/// target): one line a second at most, with how many were not logged since, so that a
/// flood of connections does not become a flood of log lines.
struct Quiet {
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
    unlogged: AtomicU64,
}

static QUIET: Quiet = Quiet {
    last: std::sync::Mutex::new(None),
    unlogged: AtomicU64::new(0),
};

impl Quiet {
    /// Logs `line` unless one was logged less than a second ago.
    fn log(&self, line: impl FnOnce() -> String) {
        if let Some(text) = self.line_at(tokio::time::Instant::now(), line) {
            eprintln!("{text}");
        }
    }

    /// The line to log at `now`, if any.
    fn line_at(&self, now: tokio::time::Instant, line: impl FnOnce() -> String) -> Option<String> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(match self.unlogged.swap(0, Ordering::Relaxed) {
            0 => line(),
            n => format!(
                "{} ({n} more like it in the last second, not logged)",
                line()
            ),
        })
    }
}

/// PU identities the PE refused (not allowed to use the pool), counted for the log line.
static REFUSED_PUS: AtomicU64 = AtomicU64::new(0);

/// One line for a PU the PE did not admit: a refused identity is named and counted.
fn refused(addr: SocketAddr, e: &AdmitError) {
    match e {
        AdmitError::Handshake(_) => eprintln!("TLS handshake with {addr} failed: {e}"),
        AdmitError::NotAllowed { .. } => {
            let n = REFUSED_PUS.fetch_add(1, Ordering::Relaxed) + 1;
            eprintln!("refused PU from {addr}: {e}; {n} refused so far");
        }
        _ => eprintln!("refused {addr}: {e}"),
    }
}

/// Accepts PUs over TLS, admits those `allowed` may use the pool (by default `pu/*` and
/// `gateway/*` of a trusted domain, `asap::client::admit`), and serves each on its own
/// task; each counts towards `meter` while it lasts.
pub(crate) async fn serve(
    listener: PeListener,
    trust: Arc<TrustStore>,
    handler: Handler,
    allowed: Arc<AllowedPus>,
    meter: Option<Arc<LoadMeter>>,
    gate: Arc<Gate>,
) {
    loop {
        let Ok((stream, addr, plain)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Draining: closed before any TLS work, so that the PU fails over at once.
        let Some(open) = gate.enter() else {
            continue;
        };
        let (service, sessions) = match &handler {
            Handler::Forward(forwarder) => {
                // The limit before the handshake: a PU beyond it costs no TLS work.
                let slot = match forwarder.admit() {
                    Ok(slot) => slot,
                    Err(e) => {
                        QUIET.log(|| format!("refused PU from {addr}: {e}"));
                        continue;
                    }
                };
                let (forwarder, trust, allowed, meter) = (
                    Arc::clone(forwarder),
                    Arc::clone(&trust),
                    Arc::clone(&allowed),
                    meter.clone(),
                );
                tokio::spawn(async move {
                    let _open = (open, meter.as_ref().map(LoadMeter::open));
                    match forwarder.session(stream, slot, &trust, &allowed).await {
                        Ok(_) => {}
                        Err(ForwardError::Admit(e)) => refused(addr, &e),
                        Err(e) => eprintln!("session from {addr}: {e}"),
                    }
                });
                continue;
            }
            Handler::Demo { service, sessions } => (*service, sessions.clone()),
        };
        if plain {
            // Legacy pool users (RSPLIB's rspterminal): no TLS, no sessions.
            let meter = meter.clone();
            tokio::spawn(async move {
                let _open = (open, meter.as_ref().map(LoadMeter::open));
                let _ = run(service, stream).await;
            });
            continue;
        }
        let trust = Arc::clone(&trust);
        let allowed = Arc::clone(&allowed);
        let meter = meter.clone();
        tokio::spawn(async move {
            // Registered so that a CRL reloaded later closes the session of a PU it
            // revokes (and the session ends at the PU certificate's notAfter).
            let Admitted { tls, mut live, .. } = match accept_pu(&trust, &allowed, stream).await {
                Ok(a) => a,
                Err(e) => return refused(addr, &e),
            };
            let _open = (open, meter.as_ref().map(LoadMeter::open));
            let session = async {
                match (service, sessions) {
                    (Service::Counter, Some(sessions)) => {
                        if let Err(e) = counter(tls, &sessions).await {
                            eprintln!("session with {addr} ended: {}", crate::chain(&e));
                        }
                    }
                    _ => {
                        let _ = run(service, tls).await;
                    }
                }
            };
            tokio::select! {
                () = session => {}
                reason = live.closed() => eprintln!("closed the session with {addr}: {reason:?}"),
            }
        });
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    service: Service,
    stream: S,
) -> std::io::Result<()> {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    match service {
        Service::Echo => {
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = (&mut r)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 || !line.ends_with(b"\n") {
                    break;
                }
                w.write_all(&line).await?;
                w.flush().await?;
            }
        }
        Service::Discard => {
            tokio::io::copy(&mut r, &mut tokio::io::sink()).await?;
        }
        Service::Daytime => {
            w.write_all(daytime().as_bytes()).await?;
        }
        // Served by `counter`; `rsp pe` refuses to start it without a key.
        Service::Counter => {}
        Service::Chargen => {
            let chars: Vec<u8> = (b' '..=b'~').collect();
            for i in 0.. {
                let mut line: Vec<u8> = (0..72).map(|j| chars[(i + j) % chars.len()]).collect();
                line.extend_from_slice(b"\r\n");
                if w.write_all(&line).await.is_err() {
                    break;
                }
            }
        }
    }
    w.shutdown().await
}

use tokio::io::AsyncReadExt as _;

/// The wall clock: cookie expiry is wall-clock time shared by the pool's PEs, and
/// certificates are valid in wall-clock time.
#[allow(clippy::disallowed_methods)] // the binary is a driver
pub(crate) fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// An ASAP_ERROR with one cause.
fn asap_error(cause: ErrorCause) -> AsapMsg {
    AsapMsg::Error(OperationError::single(cause))
}

/// The `counter` session (PE side): data frames are requests; Cookie Echo restores the
/// count; a cookie that does not open is refused with ASAP_ERROR and changes nothing.
async fn counter(tls: TlsStream<Box<dyn Stream>>, sessions: &Sessions) -> anyhow::Result<()> {
    let pu = Peer::from_tls(tls.get_ref().1)?.id().as_str().to_owned();
    let binding = Binding {
        pool_handle: &sessions.pool_handle,
        pool_user: &pu,
    };
    let (mut r, mut w) = tokio::io::split(tls);
    if let Some(card) = &sessions.card {
        let card = card.borrow().clone();
        session::write_control(&mut w, &card).await?;
    }
    let mut count: u64 = 0;
    while let Some(frame) = session::read_frame(&mut r).await? {
        match frame {
            Frame::Control(AsapMsg::CookieEcho(cookie)) => {
                match sessions.key.open(cookie.as_bytes(), &binding, wall_clock()) {
                    Ok(state) => match <[u8; 8]>::try_from(state) {
                        Ok(b) => {
                            count = u64::from_be_bytes(b);
                            eprintln!("session of {pu} resumed from its cookie at count {count}");
                        }
                        // Authentic, so from a PE of this pool, but not a counter's state.
                        Err(_) => {
                            eprintln!("refused a cookie from {pu}: not a counter state");
                            let cause = ErrorCause::InvalidValues(Vec::new());
                            session::write_control(&mut w, &asap_error(cause)).await?;
                        }
                    },
                    Err(e) => {
                        eprintln!("refused a cookie from {pu}: {e}");
                        let cause = ErrorCause::SecurityRejection;
                        session::write_control(&mut w, &asap_error(cause)).await?;
                    }
                }
            }
            Frame::BadControl(e) => {
                // E.g. a Cookie Echo over the 4 KiB cap (spec §3.5, T-16): refused by the
                // codec, answered with the cause it names, the session unchanged.
                eprintln!("refused a control message from {pu}: {e}");
                let cause = e.cause().unwrap_or(ErrorCause::InvalidValues(Vec::new()));
                session::write_control(&mut w, &asap_error(cause)).await?;
            }
            // Business cards and errors from the PU: parsed, nothing to do for a counter.
            Frame::Control(_) => {}
            Frame::Data { ppid, payload } => {
                count += 1;
                let state = count.to_be_bytes();
                let cookie =
                    sessions
                        .key
                        .seal(&binding, &state, wall_clock() + sessions.lifetime)?;
                // The cookie goes first, so a PU that has the answer also has the state
                // that includes it.
                session::write_control(&mut w, &AsapMsg::Cookie(cookie)).await?;
                let mut answer = format!("{count} ").into_bytes();
                answer.extend_from_slice(&payload);
                session::write_data(&mut w, ppid, &answer).await?;
            }
        }
    }
    Ok(())
}

/// "YYYY-MM-DD HH:MM:SS UTC\r\n" from the system clock.
#[allow(clippy::disallowed_methods)] // the service's purpose is to tell the time
fn daytime() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC\r\n",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Where a PE serves its demo service.
pub(crate) enum PeListener {
    /// TLS over TCP.
    Tcp(TcpListener),
    /// Over SCTP: TLS, or with `plain`, nothing (for legacy pool users).
    Sctp {
        listener: asap::transport::sctp::SctpListener,
        plain: bool,
    },
}

impl PeListener {
    /// The next client's stream, address, and whether it is plain (no TLS).
    async fn accept(&self) -> std::io::Result<(Box<dyn Stream>, SocketAddr, bool)> {
        use asap::transport::sctp::Framing;
        match self {
            Self::Tcp(l) => {
                let (tcp, addr) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Box::new(tcp), addr, false))
            }
            Self::Sctp { listener, plain } => {
                let (conn, addr) = listener.accept(PPID_SERVICE, Framing::Stream).await?;
                Ok((Box::new(conn), addr, *plain))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_before_a_handshake_are_logged_at_most_once_a_second_with_a_count() {
        let quiet = Quiet {
            last: std::sync::Mutex::new(None),
            unlogged: AtomicU64::new(0),
        };
        let t0 = tokio::time::Instant::now();
        let at =
            |ms: u64, text: &str| quiet.line_at(t0 + Duration::from_millis(ms), || text.to_owned());
        assert_eq!(at(0, "a").as_deref(), Some("a"));
        assert_eq!(at(10, "b"), None);
        assert_eq!(at(999, "c"), None);
        assert_eq!(
            at(1000, "d").as_deref(),
            Some("d (2 more like it in the last second, not logged)")
        );
        assert_eq!(at(2500, "e").as_deref(), Some("e"));
    }
}
