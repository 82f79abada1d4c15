//! The daemon's listeners and dials over either transport: TLS over TCP, and with the
//! `sctp` feature, TLS over SCTP (PPIDs 11/12) and plain SCTP for legacy peers. Everything
//! past this file sees one boxed byte stream.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ::asap::transport::{Endpoint, TransportAddr};
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
/// (threat T-15; unauthenticated peers of a legacy listener included).
pub(super) fn slots(settings: &super::Settings) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(settings.max_connections.max(1)))
}

/// The next connection of `listener`, with the slot it holds until it ends, or `None` once
/// the daemon stops. At the cap of `slots` it waits for a connection to end before
/// accepting. A failed accept (out of descriptors and the like) is logged and retried
/// after 50 ms: the connections already up keep being served.
pub(super) async fn next_connection(
    listener: &Listener,
    slots: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<(BoxStream, SocketAddr, OwnedSemaphorePermit)> {
    let (stream, addr, _, slot) = next_association(listener, slots, stop, what).await?;
    Some((stream, addr, slot))
}

/// [`next_connection`], with all the peer's addresses ([`Listener::accept`]).
pub(super) async fn next_association(
    listener: &Listener,
    slots: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<(BoxStream, SocketAddr, Vec<IpAddr>, OwnedSemaphorePermit)> {
    let slot = tokio::select! {
        s = Arc::clone(slots).acquire_owned() => s.ok()?,
        _ = stop.changed() => return None,
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr, addrs)) => return Some((stream, addr, addrs, slot)),
                Err(e) => {
                    tracing::warn!(error = %e, what, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
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
