//! Multicast discovery of registrars, the edge (spec §7.7, D-5; issue 23 item 4): a UDP
//! socket joined to the ASAP announce group feeds [`crate::discovery::RegistrarList`], and
//! the server hunt of PEs and PUs tries its candidates. Off unless a [`Discovery`] is
//! given ([`super::pe::PeConfig::discovery`], [`super::pu::PuConfig::discovery`]).
//!
//! An announced address is only a candidate: [`Connection::open`] is the same mutual-TLS
//! handshake with the registrar identity check as for a configured registrar, and a
//! candidate that fails it (a forged announce: nobody there, or a TLS server with a
//! non-registrar identity) is reported and held back (the list's rate limit), so it never
//! becomes the PE's or PU's registrar.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use trust::TrustStore;

use super::{Connection, Error};
use crate::addr::TransportAddr;
use crate::discovery::{DiscoveryStats, Heard, RegistrarList};
use crate::wire::param::ServerId;

/// What discovery reports, for the caller to log.
#[derive(Debug)]
#[non_exhaustive]
pub enum DiscoveryEvent<'a> {
    /// A registrar announced itself for the first time (or again after expiring).
    Announced {
        /// Its Server ID, as announced (unauthenticated).
        server_id: ServerId,
        /// Where it will be tried.
        addrs: &'a [TransportAddr],
        /// Who sent the announce.
        from: SocketAddr,
    },
    /// An announced address failed the connection or the handshake (not a registrar of
    /// a trusted domain, or nobody there): it is not tried again for `hold`.
    Refused {
        /// The address.
        addr: &'a TransportAddr,
        /// Why.
        error: &'a Error,
        /// How long it is left out.
        hold: Duration,
    },
    /// Datagrams dropped (malformed, not an announce, or the list full). Reported at the
    /// 1st, 2nd, 4th, 8th, ... drop, so that a flood cannot flood the log.
    Dropped {
        /// The last sender.
        from: SocketAddr,
        /// Why the last one was dropped.
        why: String,
        /// Drops so far.
        count: u64,
    },
}

type Report = dyn Fn(DiscoveryEvent<'_>) + Send + Sync;

struct Inner {
    group: SocketAddr,
    list: Mutex<RegistrarList>,
    heard: Notify,
    report: Box<Report>,
}

/// Registrars learnt from announces on one multicast group: the receiver task and the
/// list it feeds. Clones share both; the task ends with the last clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("group", &self.inner.group)
            .finish_non_exhaustive()
    }
}

/// How long [`Discovery::wait`] listens on after the first announce: one announce period
/// (T6, 1 s) and its ±25 % jitter, so that every registrar on the link was heard once.
pub const SETTLE: Duration = Duration::from_millis(1_250);

/// Largest datagram read: an announce of a registrar with a TCP and a 16-address SCTP
/// transport is under 200 bytes; the rest of a longer datagram is cut and fails to decode.
const MAX_DATAGRAM: usize = 2048;

impl Discovery {
    /// Joins `group` (a multicast `IP:PORT`, e.g. [`crate::discovery::ASAP_ANNOUNCE_GROUP`])
    /// on `interface` (IPv4: the interface's address; default: the one the kernel picks
    /// by route) and starts receiving announces; `report` hears what happens.
    pub fn listen(
        group: SocketAddr,
        interface: Option<Ipv4Addr>,
        report: impl Fn(DiscoveryEvent<'_>) + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let socket = join(group, interface)?;
        let inner = Arc::new(Inner {
            group,
            list: Mutex::new(RegistrarList::default()),
            heard: Notify::new(),
            report: Box::new(report),
        });
        let task = tokio::spawn(receive(socket, Arc::clone(&inner)));
        Ok(Self {
            inner,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// The group it listens on.
    pub fn group(&self) -> SocketAddr {
        self.inner.group
    }

    /// What was heard so far.
    pub fn stats(&self) -> DiscoveryStats {
        self.list().stats()
    }

    fn list(&self) -> std::sync::MutexGuard<'_, RegistrarList> {
        // A panic while holding the lock leaves a list that is still consistent (each
        // method completes its change or makes none that matters): keep using it.
        self.inner
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The candidates now: `statics`, then announced ones not held (see
    /// [`RegistrarList::candidates`]).
    pub fn candidates(&self, statics: &[TransportAddr]) -> Vec<TransportAddr> {
        let now = tokio::time::Instant::now().into_std();
        self.list().candidates(statics, now, random())
    }

    /// Waits until there is a registrar to try: at once with `statics`, else until an
    /// announced registrar that is not held arrives, and then [`SETTLE`] more, so that
    /// the first hunt picks among every registrar announcing on the link, not the first
    /// heard (a forger answering fastest must not be the only candidate);
    /// [`Error::NoRegistrar`] after `timeout`.
    pub async fn wait(&self, statics: &[TransportAddr], timeout: Duration) -> Result<(), Error> {
        if !statics.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.heard.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.candidates(statics).is_empty() {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + SETTLE)).await;
                return Ok(());
            }
            tokio::select! {
                () = notified => {}
                // A hold that ended makes its address a candidate again without an
                // announce of anything new.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::NoRegistrar {
                        tried: 0,
                        last: format!(
                            "no registrar announced on {} within {timeout:?} (is enrpd run with --announce {}?)",
                            self.inner.group, self.inner.group
                        ),
                    });
                }
            }
        }
    }

    /// Server hunt (spec §7.7): the configured registrars `statics` first, one at a
    /// time from `start` (as [`Connection::hunt`]); then the announced ones, up to
    /// [`PARALLEL`] at once, each within [`ANNOUNCED_TIMEOUT`], the first to pass the
    /// handshake winning (rsplib tries 3 at once too). So announces naming addresses where
    /// nobody answers (a forger's blackholes) delay the hunt by a few seconds, not by the
    /// full connect timeout each. An announced address that fails is reported and held
    /// back. Returns the connection and its index among [`Discovery::candidates`].
    pub async fn hunt(
        &self,
        trust: &Arc<TrustStore>,
        statics: &[TransportAddr],
        start: usize,
        insecure_legacy: bool,
    ) -> Result<(Connection, usize), Error> {
        let candidates = self.candidates(statics);
        let mut last = format!(
            "no registrar configured, none announced on {} yet",
            self.inner.group
        );
        // `candidates` starts with `statics`, as given.
        let configured = statics.len();
        for i in 0..configured {
            let idx = (start + i) % configured;
            match Connection::open(trust, &candidates[idx], insecure_legacy).await {
                Ok(c) => return Ok((c, idx)),
                Err(e) => last = format!("{}: {e}", candidates[idx]),
            }
        }
        let mut pending = candidates[configured..]
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, a)| (configured + i, a));
        // Dropped on return: the attempts still running are aborted.
        let mut attempts = tokio::task::JoinSet::new();
        let attempt = |attempts: &mut tokio::task::JoinSet<_>,
                       (idx, addr): (usize, TransportAddr)| {
            let trust = Arc::clone(trust);
            attempts.spawn(async move {
                let result = tokio::time::timeout(
                    ANNOUNCED_TIMEOUT,
                    Connection::open(&trust, &addr, insecure_legacy),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no handshake within {ANNOUNCED_TIMEOUT:?}"),
                    )))
                });
                (idx, addr, result)
            });
        };
        for next in pending.by_ref().take(PARALLEL) {
            attempt(&mut attempts, next);
        }
        while let Some(joined) = attempts.join_next().await {
            // An attempt that panicked: nothing to learn from it.
            let Ok((idx, addr, result)) = joined else {
                continue;
            };
            match result {
                Ok(c) => {
                    self.list().handle_accepted(&addr);
                    return Ok((c, idx));
                }
                Err(error) => {
                    let now = tokio::time::Instant::now().into_std();
                    let hold = if unreachable(&error) {
                        self.list().handle_unreachable(&addr, now)
                    } else {
                        self.list().handle_refused(&addr, now)
                    };
                    (self.inner.report)(DiscoveryEvent::Refused {
                        addr: &addr,
                        error: &error,
                        hold,
                    });
                    last = format!("{addr}: {error}");
                    if let Some(next) = pending.next() {
                        attempt(&mut attempts, next);
                    }
                }
            }
        }
        Err(Error::NoRegistrar {
            tried: candidates.len(),
            last,
        })
    }
}

/// Whether `error` says nobody answered (refused, reset, timed out, no route) rather than
/// that the handshake failed: a TLS failure (a certificate that is not a trusted
/// registrar's) comes as `InvalidData`.
fn unreachable(error: &Error) -> bool {
    use io::ErrorKind as K;
    matches!(error, Error::Io(e) if matches!(
        e.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::AddrNotAvailable
            | K::UnexpectedEof
    ))
}

/// How many announced registrars [`Discovery::hunt`] tries at once.
pub const PARALLEL: usize = 3;

/// How long one attempt at an announced registrar may take, connection and handshake:
/// announces reach the link (TTL 1 by default), where a registrar answers in
/// milliseconds; a configured registrar gets the full [`super::CONNECT_TIMEOUT`].
pub const ANNOUNCED_TIMEOUT: Duration = Duration::from_secs(3);

/// Server hunt among `statics`, and the announced registrars with `discovery`
/// ([`Discovery::hunt`]); without, [`Connection::hunt`].
pub async fn hunt(
    trust: &Arc<TrustStore>,
    statics: &[TransportAddr],
    discovery: Option<&Discovery>,
    start: usize,
    insecure_legacy: bool,
) -> Result<(Connection, usize), Error> {
    match discovery {
        Some(d) => d.hunt(trust, statics, start, insecure_legacy).await,
        None => Connection::hunt(trust, statics, start, insecure_legacy).await,
    }
}

/// A socket bound to `group`'s port and joined to it. Bound to the group address, not
/// the wildcard: on Linux a wildcard socket would also get every other group joined on
/// this host at that port. SO_REUSEADDR: several PEs and PUs on one host listen together.
fn join(group: SocketAddr, interface: Option<Ipv4Addr>) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not a multicast group (e.g. 239.0.0.50:3863)"),
        ));
    }
    let socket = Socket::new(Domain::for_address(group), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&group.into())?;
    match group.ip() {
        IpAddr::V4(g) => {
            socket.join_multicast_v4(&g, &interface.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
        }
        IpAddr::V6(g) => socket.join_multicast_v6(&g, 0)?,
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// The receiver: each datagram into the list; malformed ones counted and dropped.
async fn receive(socket: UdpSocket, inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut dropped: u64 = 0;
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            // ICMP errors and the like: the socket stays usable.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = tokio::time::Instant::now().into_std();
        let heard = inner
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .handle_datagram(from, &buf[..n], now);
        let why = match heard {
            Heard::New { server_id, addrs } => {
                (inner.report)(DiscoveryEvent::Announced {
                    server_id,
                    addrs: &addrs,
                    from,
                });
                inner.heard.notify_waiters();
                continue;
            }
            Heard::Refreshed => continue,
            Heard::Full => "the list of announced registrars is full".to_owned(),
            Heard::Ignored(why) => why.to_owned(),
            Heard::Malformed(e) => format!("malformed: {e}"),
        };
        dropped += 1;
        if dropped.is_power_of_two() {
            (inner.report)(DiscoveryEvent::Dropped {
                from,
                why,
                count: dropped,
            });
        }
    }
}

/// A draw from the OS random source for the announced registrars' order (spec §7.7: a
/// random pick spreads PEs and PUs over the registrars).
fn random() -> usize {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 4];
    // A failing OS source leaves the first announced registrar first: still correct.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b) as usize
}

/// Aborts the receiver when the last [`Discovery`] goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::AsapMsg;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use trust::Protocol;
    use trust::testing::TestCa;

    impl Discovery {
        /// A list without a socket: the tests feed it datagrams themselves.
        fn detached(report: impl Fn(DiscoveryEvent<'_>) + Send + Sync + 'static) -> Self {
            let inner = Arc::new(Inner {
                group: crate::discovery::ASAP_ANNOUNCE_GROUP,
                list: Mutex::new(RegistrarList::default()),
                heard: Notify::new(),
                report: Box::new(report),
            });
            let task = tokio::spawn(std::future::pending());
            Self {
                inner,
                _task: Arc::new(AbortOnDrop(task)),
            }
        }

        fn hear(&self, from: SocketAddr, announce: &AsapMsg) {
            let bytes = announce.to_bytes().expect("encodes");
            let now = tokio::time::Instant::now().into_std();
            self.list().handle_datagram(from, &bytes, now);
            self.inner.heard.notify_waiters();
        }
    }

    /// A TLS server presenting `leaf` of `ca` that completes handshakes and holds them.
    async fn tls_server(ca: &TestCa, leaf: &str) -> SocketAddr {
        let store = TrustStore::new(ca.leaf(leaf).issue().identity()).expect("store");
        store.add_domain(ca.bundle()).expect("domain");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config(Protocol::Asap));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 64];
                        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    }
                });
            }
        });
        addr
    }

    /// A TCP server that accepts and never says a word: a blackhole for the TLS handshake.
    async fn silent_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        addr
    }

    /// Announces naming servers that never answer the handshake (blackholes) cost the
    /// hunt one [`ANNOUNCED_TIMEOUT`] per wave of [`PARALLEL`], not the full connect
    /// timeout each; afterwards they are held, so the real registrar is reached at once.
    #[tokio::test]
    async fn blackholes_are_tried_in_parallel_with_a_short_timeout() {
        let ca = TestCa::new("acme.test");
        let registrar = tls_server(&ca, "registrar/enrp-1").await;
        let client = TrustStore::new(ca.leaf("pu/client-1").issue().identity()).expect("store");
        client.add_domain(ca.bundle()).expect("domain");
        let client = Arc::new(client);
        let discovery = Discovery::detached(|_| {});
        for i in 0..PARALLEL as u32 {
            let hole = silent_server().await;
            discovery.hear(hole, &announce(100 + i, hole));
        }
        let started = tokio::time::Instant::now();
        let err = discovery
            .hunt(&client, &[], 0, false)
            .await
            .expect_err("nobody answers");
        let took = started.elapsed();
        assert!(err.to_string().contains("no handshake within 3s"), "{err}");
        assert!(
            took >= ANNOUNCED_TIMEOUT && took < ANNOUNCED_TIMEOUT + Duration::from_secs(2),
            "one wave: {took:?}"
        );
        assert!(took < super::super::CONNECT_TIMEOUT);
        assert_eq!(
            discovery.stats().refused,
            PARALLEL as u64,
            "every blackhole held"
        );
        discovery.hear(registrar, &announce(1, registrar));
        let started = tokio::time::Instant::now();
        let (conn, _) = discovery
            .hunt(&client, &[], 0, false)
            .await
            .expect("the registrar");
        assert_eq!(conn.registrar(), registrar);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    fn announce(server_id: u32, at: SocketAddr) -> AsapMsg {
        AsapMsg::ServerAnnounce {
            server_id: ServerId::new(server_id).expect("non-zero"),
            transports: vec![crate::wire::param::Transport::Tcp {
                port: std::num::NonZeroU16::new(at.port()).expect("port"),
                transport_use: crate::wire::param::TransportUse::DataOnly,
                addr: crate::wire::param::Address::new(at.ip()),
            }],
        }
    }

    /// Threats T-6/T-12: a forged announce pointing at a real TLS server with a valid
    /// certificate of the trusted domain but a PE identity fails the registrar check,
    /// is reported, and is not tried again within its hold; the real registrar is the
    /// one the hunt ends on, whichever is tried first.
    #[tokio::test]
    async fn a_forged_announce_costs_one_refused_handshake_and_the_registrar_wins() {
        let ca = TestCa::new("acme.test");
        let registrar = tls_server(&ca, "registrar/enrp-1").await;
        let forged = tls_server(&ca, "pe/mallory").await;
        let refused = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&refused);
        let discovery = Discovery::detached(move |e| {
            if let DiscoveryEvent::Refused { addr, error, .. } = e {
                assert_eq!(addr.primary(), forged);
                assert!(!error.to_string().is_empty());
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        let client = TrustStore::new(ca.leaf("pe/echo-1").issue().identity()).expect("store");
        client.add_domain(ca.bundle()).expect("domain");
        let client = Arc::new(client);

        // Nothing configured, nothing announced: the wait ends with a clear error.
        let err = discovery
            .wait(&[], Duration::from_millis(50))
            .await
            .expect_err("nothing announced");
        assert!(
            err.to_string()
                .contains("no registrar announced on 239.0.0.50:3863"),
            "{err}"
        );

        // The forger announces first: its handshake is tried and refused, once.
        discovery.hear(forged, &announce(66, forged));
        discovery
            .wait(&[], Duration::from_secs(1))
            .await
            .expect("a candidate");
        let err = discovery
            .hunt(&client, &[], 0, false)
            .await
            .expect_err("a PE identity is no registrar");
        assert!(
            err.to_string()
                .contains("spiffe://acme.test/pe/mallory does not match the expected registrar"),
            "{err}"
        );
        assert_eq!(refused.load(Ordering::SeqCst), 1, "reported");
        // The registrar announces: every hunt ends there, and the forger, announced again
        // and again, is not tried within its hold.
        discovery.hear(registrar, &announce(1, registrar));
        for start in 0..4 {
            discovery.hear(forged, &announce(66, forged));
            assert_eq!(
                discovery.candidates(&[]),
                vec![TransportAddr::Tcp(registrar)]
            );
            let (conn, _) = discovery
                .hunt(&client, &[], start, false)
                .await
                .expect("the registrar");
            assert_eq!(conn.registrar(), registrar);
        }
        assert_eq!(refused.load(Ordering::SeqCst), 1, "one refusal per hold");
        assert_eq!(discovery.stats().refused, 1);

        // Only the forged one announced: the hunt fails, it never becomes the registrar.
        let only_forged = Discovery::detached(|_| {});
        only_forged.hear(forged, &announce(66, forged));
        let err = only_forged
            .hunt(&client, &[], 0, false)
            .await
            .expect_err("a PE identity is no registrar");
        assert!(matches!(err, Error::NoRegistrar { tried: 1, .. }), "{err}");
        assert_eq!(only_forged.stats().refused, 1);
        assert!(only_forged.candidates(&[]).is_empty(), "held");

        // An announce naming an address where nobody listens: refused and held too.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let nobody = Discovery::detached(|_| {});
        nobody.hear(closed, &announce(67, closed));
        nobody
            .hunt(&client, &[], 0, false)
            .await
            .expect_err("nobody there");
        assert_eq!(nobody.stats().refused, 1);
        assert!(nobody.candidates(&[]).is_empty(), "held");
        // A configured registrar is tried whatever the announces did, first.
        let (conn, idx) = nobody
            .hunt(&client, &[TransportAddr::Tcp(registrar)], 0, false)
            .await
            .expect("the configured registrar");
        assert_eq!((conn.registrar(), idx), (registrar, 0));
    }
}
