//! The daemon's listeners and dials over either transport: TLS over TCP, and with the
//! `sctp` feature, TLS over SCTP (PPIDs 11/12) and plain SCTP for legacy peers. Everything
//! past this file sees one boxed byte stream.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use ::asap::addr::{Endpoint, TransportAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use trust::Protocol;

/// A connection's bytes, whatever carries them.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub(super) type BoxStream = Box<dyn Stream>;

/// How the bytes of a connection are protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Security {
    /// Mutual TLS (every listener but the legacy ones).
    Tls,
    /// None: RSPLIB and other legacy peers (plain SCTP, one message per SCTP message).
    Plain,
}

/// A bound listener.
#[derive(Debug)]
pub(super) enum Listener {
    Tcp(TcpListener),
    #[cfg(feature = "sctp")]
    Sctp {
        listener: ::asap::transport::sctp::SctpListener,
        ppid: u32,
        framing: ::asap::transport::sctp::Framing,
    },
}

/// SCTP was asked for but this build or this kernel has none.
fn no_sctp() -> io::Error {
    #[cfg(feature = "sctp")]
    let why = ::asap::transport::sctp::UNAVAILABLE;
    #[cfg(not(feature = "sctp"))]
    let why = "this enrpd was built without the `sctp` feature";
    io::Error::new(io::ErrorKind::Unsupported, why)
}

/// Whether SCTP can be used here: built in and the kernel has it.
pub(super) fn sctp_available() -> bool {
    #[cfg(feature = "sctp")]
    return ::asap::transport::sctp::available();
    #[cfg(not(feature = "sctp"))]
    false
}

fn ppid(protocol: Protocol) -> u32 {
    match protocol {
        Protocol::Asap => 11,
        Protocol::Enrp => 12,
    }
}

impl Listener {
    /// Binds `at` for `protocol`.
    pub(super) async fn bind(
        at: &TransportAddr,
        protocol: Protocol,
        security: Security,
    ) -> io::Result<Self> {
        match at {
            TransportAddr::Tcp(addr) => {
                if security == Security::Plain {
                    // Plaintext exists only for legacy SCTP peers (ARCHITECTURE.md §4).
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a plaintext listener must be SCTP",
                    ));
                }
                Ok(Self::Tcp(TcpListener::bind(addr).await?))
            }
            TransportAddr::Sctp(endpoint) => Self::bind_sctp(endpoint, protocol, security),
        }
    }

    #[cfg(feature = "sctp")]
    fn bind_sctp(endpoint: &Endpoint, protocol: Protocol, security: Security) -> io::Result<Self> {
        use ::asap::transport::sctp::{Framing, SctpListener};
        if !sctp_available() {
            return Err(no_sctp());
        }
        Ok(Self::Sctp {
            listener: SctpListener::bind(endpoint)?,
            ppid: ppid(protocol),
            framing: match security {
                Security::Tls => Framing::Stream,
                Security::Plain => Framing::Messages,
            },
        })
    }

    #[cfg(not(feature = "sctp"))]
    fn bind_sctp(_: &Endpoint, protocol: Protocol, _: Security) -> io::Result<Self> {
        let _ = ppid(protocol);
        Err(no_sctp())
    }

    /// Where it listens, with the real port.
    pub(super) fn local(&self) -> io::Result<TransportAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().map(TransportAddr::Tcp),
            #[cfg(feature = "sctp")]
            Self::Sctp { listener, .. } => Ok(TransportAddr::Sctp(listener.local().clone())),
        }
    }

    /// The next connection, its peer's primary address and, over SCTP, all of the
    /// association's peer addresses (none over TCP, or when the kernel did not tell them:
    /// then the primary address is all there is to go by).
    pub(super) async fn accept(&self) -> io::Result<(BoxStream, SocketAddr, Vec<IpAddr>)> {
        match self {
            Self::Tcp(l) => {
                let (tcp, addr) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Box::new(tcp), addr, Vec::new()))
            }
            #[cfg(feature = "sctp")]
            Self::Sctp {
                listener,
                ppid,
                framing,
            } => {
                let (conn, addr) = listener.accept(*ppid, *framing).await?;
                let addrs = association_addrs(&conn, addr);
                Ok((Box::new(conn), addr, addrs))
            }
        }
    }
}

/// The connections one listener serves at once: more wait in the kernel's accept queue
/// (threat T-15; unauthenticated peers of a legacy listener included). Per source
/// address, fewer still: [`Settings::max_connections_per_ip`] in all and
/// [`Settings::max_handshakes_per_ip`] of them before authentication, so that one host
/// cannot take every slot; beyond them a connection is closed at once, counted
/// (`per-ip-cap`) and audited in aggregate.
///
/// [`Settings::max_connections_per_ip`]: super::Settings::max_connections_per_ip
/// [`Settings::max_handshakes_per_ip`]: super::Settings::max_handshakes_per_ip
pub(super) struct Slots {
    global: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    counters: Arc<super::Counters>,
    protocol: Protocol,
}

pub(super) fn slots(
    settings: &super::Settings,
    counters: &Arc<super::Counters>,
    protocol: Protocol,
) -> Slots {
    Slots {
        global: Arc::new(Semaphore::new(settings.max_connections.max(1))),
        per_ip: Arc::new(PerIp {
            connections: settings.max_connections_per_ip.max(1),
            handshakes: settings.max_handshakes_per_ip.max(1),
            open: Mutex::new(HashMap::new()),
        }),
        counters: Arc::clone(counters),
        protocol,
    }
}

/// The connections of each source address of one listener: (handshaking, all).
struct PerIp {
    connections: usize,
    handshakes: usize,
    open: Mutex<HashMap<IpAddr, (usize, usize)>>,
}

impl PerIp {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (usize, usize)>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What an accepted connection holds until it ends: its place under the listener's cap
/// and under its address's caps. It counts as handshaking until [`Slot::established`].
pub(super) struct Slot {
    _global: OwnedSemaphorePermit,
    per_ip: Arc<PerIp>,
    ip: IpAddr,
    handshaking: bool,
}

impl Slot {
    /// The connection is authenticated (or, on a legacy listener, admitted): it no
    /// longer counts against its address's handshake cap.
    pub(super) fn established(&mut self) {
        if std::mem::take(&mut self.handshaking)
            && let Some(n) = self.per_ip.locked().get_mut(&self.ip)
        {
            n.0 -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.per_ip.locked();
        if let Some(n) = open.get_mut(&self.ip) {
            n.0 -= usize::from(self.handshaking);
            n.1 -= 1;
            if n.1 == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Authenticated ASAP connections per identity, over all listeners
/// ([`Settings::max_connections_per_identity`](super::Settings::max_connections_per_identity)).
#[derive(Debug, Default)]
pub(super) struct PerIdentity(Mutex<HashMap<identity::SpiffeId, usize>>);

impl PerIdentity {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<identity::SpiffeId, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One connection counted against its identity; given back when dropped.
pub(super) struct IdentitySlot {
    counters: Arc<super::Counters>,
    id: identity::SpiffeId,
}

/// A place for one more connection of `id`, or `None` when it has `cap` already.
pub(super) fn admit_identity(
    counters: &Arc<super::Counters>,
    id: &identity::SpiffeId,
    cap: usize,
) -> Option<IdentitySlot> {
    let mut open = counters.identities.locked();
    let n = open.entry(id.clone()).or_default();
    if *n >= cap.max(1) {
        return None;
    }
    *n += 1;
    Some(IdentitySlot {
        counters: Arc::clone(counters),
        id: id.clone(),
    })
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut open = self.counters.identities.locked();
        if let Some(n) = open.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// The next connection of `listener`, with the slot it holds until it ends, or `None` once
/// the daemon stops. At the cap of `slots` it waits for a connection to end before
/// accepting; a connection over its address's caps is closed at once. A failed accept
/// (out of descriptors and the like) is logged and retried after 50 ms: the connections
/// already up keep being served.
pub(super) async fn next_connection(
    listener: &Listener,
    slots: &Slots,
    stop: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<(BoxStream, SocketAddr, Slot)> {
    let (stream, addr, _, slot) = next_association(listener, slots, stop, what).await?;
    Some((stream, addr, slot))
}

/// [`next_connection`], with all the peer's addresses ([`Listener::accept`]).
pub(super) async fn next_association(
    listener: &Listener,
    slots: &Slots,
    stop: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<(BoxStream, SocketAddr, Vec<IpAddr>, Slot)> {
    loop {
        let global = tokio::select! {
            s = Arc::clone(&slots.global).acquire_owned() => s.ok()?,
            _ = stop.changed() => return None,
        };
        let (stream, addr, addrs) = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => break accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, what, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => return None,
            }
        };
        let ip = addr.ip().to_canonical();
        let admitted = {
            let mut open = slots.per_ip.locked();
            let n = open.entry(ip).or_default();
            if n.0 < slots.per_ip.handshakes && n.1 < slots.per_ip.connections {
                *n = (n.0 + 1, n.1 + 1);
                true
            } else {
                false
            }
        };
        if admitted {
            let slot = Slot {
                _global: global,
                per_ip: Arc::clone(&slots.per_ip),
                ip,
                handshaking: true,
            };
            return Some((stream, addr, addrs, slot));
        }
        // Dropped unanswered: the cheapest way to say no.
        drop(stream);
        tracing::debug!(%addr, what, "too many connections from this address: closed");
        super::connection::refused_later(
            &slots.counters,
            slots.protocol,
            addr,
            "per-ip-cap",
            format!("more than the {what} listener allows from one address"),
        );
    }
}

/// Opens a connection to `to` for `protocol` (with [`Security::Tls`], TLS comes on top,
/// from the caller; [`Security::Plain`] is SCTP only, one message per SCTP message).
/// Returns the stream and the peer's address.
pub(super) async fn dial(
    to: &TransportAddr,
    protocol: Protocol,
    security: Security,
) -> io::Result<(BoxStream, SocketAddr)> {
    let (stream, peer, _) = dial_association(to, protocol, security).await?;
    Ok((stream, peer))
}

/// An SCTP association's peer addresses, taken once, when it is up: a peer adding
/// addresses later (ASCONF) cannot register them on this association. Empty when the
/// kernel does not tell them: then the primary address is all there is to go by.
#[cfg(feature = "sctp")]
fn association_addrs(
    conn: &::asap::transport::sctp::SctpConnection,
    addr: SocketAddr,
) -> Vec<IpAddr> {
    match conn.peer_addrs() {
        Ok(all) => all.into_iter().map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot read the association's peer addresses: its primary address alone counts");
            Vec::new()
        }
    }
}

/// [`dial`], with all the peer's addresses (as [`Listener::accept`]): a dialed PE
/// re-registers on the association with every address it has.
pub(super) async fn dial_association(
    to: &TransportAddr,
    protocol: Protocol,
    security: Security,
) -> io::Result<(BoxStream, SocketAddr, Vec<IpAddr>)> {
    match to {
        TransportAddr::Tcp(_) if security == Security::Plain => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a plaintext connection must be SCTP",
        )),
        TransportAddr::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr()?;
            Ok((Box::new(tcp), peer, Vec::new()))
        }
        #[cfg(feature = "sctp")]
        TransportAddr::Sctp(endpoint) => {
            use ::asap::transport::sctp::{Framing, SctpConnection};
            if !sctp_available() {
                return Err(no_sctp());
            }
            let framing = match security {
                Security::Tls => Framing::Stream,
                Security::Plain => Framing::Messages,
            };
            let conn = SctpConnection::connect(endpoint, ppid(protocol), framing).await?;
            let peer = conn.peer_addr();
            let addrs = association_addrs(&conn, peer);
            Ok((Box::new(conn), peer, addrs))
        }
        #[cfg(not(feature = "sctp"))]
        TransportAddr::Sctp(_) => {
            let _ = (ppid(protocol), security);
            Err(no_sctp())
        }
    }
}
