//! Pool elements and pool users over mutual TLS (ARCHITECTURE.md §3, spec §7, §11.2): the
//! connection to a registrar, and the credentials both sides present.
//!
//! - [`Connection`]: ASAP messages over TLS to a registrar, found by server hunt among
//!   the configured registrars (spec §7.7).
//! - [`pe`]: a PE that registers, answers keep-alives, re-registers, survives registrar
//!   loss with the same PE ID (spec §7.1, §7.5, §12.6) and deregisters on shutdown.
//! - [`pu`]: handle resolution and endpoint unreachable reports (spec §7.3, §7.6).

mod backoff;
pub mod pe;
pub mod pu;
pub mod session;

pub use backoff::BACKOFF_CAP;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use trust::{DomainBundle, LocalIdentity, Protocol, TrustStore};

use crate::transport::{MessageReader, ReadError, TransportAddr, write_message};
use crate::wire::limits::MAX_MESSAGE_LEN;
use crate::wire::param::ErrorCause;
use crate::wire::{AsapMsg, DecodeError, EncodeError, Framer};

/// Why talking to a registrar failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Certificates or keys were refused.
    #[error("{0}")]
    Trust(#[from] trust::Error),
    /// No configured registrar could be reached.
    #[error("no registrar reachable (tried {tried}): {last}")]
    NoRegistrar {
        /// How many were tried.
        tried: usize,
        /// The last failure.
        last: String,
    },
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a message.
    #[error("framing: {0}")]
    Read(#[from] ReadError),
    /// The peer sent a message that does not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// The registrar closed the connection or did not answer in time.
    #[error("the registrar closed the connection or did not answer in time")]
    Closed,
    /// The registrar refused the request with this error cause (spec §4.7). The message
    /// names the cause and what to do about it.
    #[error("refused by the registrar: {}", refusal(*.0))]
    Rejected(u16),
}

impl Error {
    /// Whether trying again, at this registrar or another, can succeed without anyone
    /// changing anything, so that a PE or PU rides it out instead of giving up:
    ///
    /// - transient: cause 0x6 Lack of Resources (a registrar still synchronising after
    ///   its start, spec §9.3 step 5; one at a resource limit or with its store
    ///   unavailable, §7.1 step 6), and every failure to reach or hear a registrar
    ///   (no registrar reachable, the connection failed or closed, no answer in time,
    ///   bytes that are not a message: another registrar, or the same one restarted,
    ///   may answer);
    /// - permanent: every other refusal (0x3 Invalid Values, 0x4 Non-unique PE
    ///   Identifier, 0x5/0x7/0x8 inconsistent policy, transport or data/control use,
    ///   0x9 Unknown Pool Handle, 0xA security, and unknown causes: the same request gets
    ///   the same answer, spec §7.1 step 5 "do not retry blindly"), files and
    ///   certificates that do not load, a message that cannot be encoded, and a
    ///   connection that is refused before it starts as misconfigured (e.g. plain text
    ///   over TCP).
    ///
    /// A PU's unknown pool (0x9) is permanent here; [`pu::PoolUser`] still answers from
    /// its cache while it has entries (a restarted registrar may not know the pool yet).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rejected(code) => *code == ErrorCause::LackOfResources.code(),
            Self::NoRegistrar { .. } | Self::Read(_) | Self::Decode(_) | Self::Closed => true,
            Self::Io(e) => !matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ),
            Self::File { .. } | Self::Trust(_) | Self::Encode(_) => false,
        }
    }
}

/// "cause 0x6 (Lack of Resources): …": a refusal's code, its spec §4.7 name, and what to
/// do about it, in one line.
fn refusal(code: u16) -> String {
    let cause = ErrorCause::from_parts(code, &[]);
    let what = match cause {
        ErrorCause::LackOfResources => {
            "the registrar is still starting or at a limit; retried, here or at another registrar"
        }
        ErrorCause::InvalidValues(_) => {
            "a value of the request is out of range; check the pool handle, registration life and transport"
        }
        ErrorCause::NonUniquePeId => {
            "another registrant holds this PE ID in the pool; start the PE again for a new random PE ID"
        }
        ErrorCause::InconsistentPolicy(_) => {
            "the pool's PEs use another policy; register with the pool's policy"
        }
        ErrorCause::InconsistentTransport(_) => {
            "the pool's PEs use another transport protocol; listen on the pool's (TCP or SCTP)"
        }
        ErrorCause::InconsistentDataControl => {
            "the pool's PEs use another transport use; serve what the pool's PEs serve (data only, or data plus control)"
        }
        ErrorCause::UnknownPoolHandle => {
            "no such pool, or this identity may not see it; check the pool handle, the namespace and the identity's grants"
        }
        ErrorCause::SecurityRejection => {
            "this identity may not do this; check its grants for the pool and namespace at the registrar, and that the PE's addresses are its connection's"
        }
        _ => "the registrar did not accept the request as sent",
    };
    format!("cause {code:#x} ({}): {what}", cause.name())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })
}

/// The identity a PE or PU presents and the trust bundle of its own domain, from the
/// files `rsp-pki` writes (`ROLE-NAME.pem`, `ROLE-NAME.key`, `ca.pem`).
pub fn credentials(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<TrustStore>, Error> {
    let identity = LocalIdentity::from_pem(&read(cert)?, &read(key)?)?;
    let domain = identity.id().trust_domain();
    let store = TrustStore::new(identity)?;
    store.add_domain(DomainBundle::from_pem(domain, &read(ca)?)?)?;
    Ok(Arc::new(store))
}

/// How long one connection attempt to a registrar may take (spec §10, T5 per attempt).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(7_500);

/// Either end of a TLS session: a registrar connection is usually dialled by the PE, but a
/// takeover registrar dials the PE's ASAP listener (spec §12.6).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Stream for T {}

/// An ASAP connection to a registrar over mutual TLS.
#[derive(Debug)]
pub struct Connection {
    reader: MessageReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
    registrar: SocketAddr,
    local: SocketAddr,
}

impl Connection {
    /// Connects to one registrar. The registrar must present a certificate of a trusted
    /// domain (spec §11.1: a PE or PU authenticates its registrar).
    pub async fn connect(trust: &TrustStore, addr: SocketAddr) -> Result<Self, Error> {
        let connector = TlsConnector::from(trust.client_config(Protocol::Asap));
        let attempt = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr()?;
            // The identity check is the SPIFFE ID, not the DNS name (ARCHITECTURE.md §3).
            let name = ServerName::IpAddress(addr.ip().into());
            Ok::<_, io::Error>((connector.connect(name, tcp).await?, local))
        };
        let (tls, local) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Ok(Self::over(Box::new(tls), addr, local))
    }

    /// Connects to one registrar over TLS/TCP or TLS/SCTP; with `insecure_legacy`, over
    /// plain SCTP to a legacy registrar (RSPLIB's `rspregistrar`), which is not
    /// authenticated at all: whoever answers at that address can swallow registrations and
    /// forge resolutions (threats T-6, T-7). Plaintext over TCP is refused.
    pub async fn open(
        trust: &TrustStore,
        to: &TransportAddr,
        insecure_legacy: bool,
    ) -> Result<Self, Error> {
        match to {
            TransportAddr::Tcp(addr) if !insecure_legacy => Self::connect(trust, *addr).await,
            TransportAddr::Tcp(_) => Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--insecure-legacy applies to SCTP registrars only (sctp:IP:PORT)",
            ))),
            #[cfg(feature = "sctp")]
            TransportAddr::Sctp(endpoint) => {
                Self::connect_sctp(trust, endpoint, insecure_legacy).await
            }
            #[cfg(not(feature = "sctp"))]
            TransportAddr::Sctp(_) => Err(Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "built without the `sctp` feature",
            ))),
        }
    }

    #[cfg(feature = "sctp")]
    async fn connect_sctp(
        trust: &TrustStore,
        endpoint: &crate::transport::Endpoint,
        insecure_legacy: bool,
    ) -> Result<Self, Error> {
        use crate::transport::sctp::{self, Framing, PPID_ASAP, SctpConnection};
        if !sctp::available() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                sctp::UNAVAILABLE,
            )));
        }
        let addr = endpoint.addrs()[0];
        let framing = if insecure_legacy {
            Framing::Messages
        } else {
            Framing::Stream
        };
        let attempt = async {
            let conn = SctpConnection::connect(endpoint, PPID_ASAP, framing).await?;
            let local = conn.local_addr()?;
            if insecure_legacy {
                return Ok::<_, io::Error>((Box::new(conn) as Box<dyn Stream>, local));
            }
            let connector = TlsConnector::from(trust.client_config(Protocol::Asap));
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = connector.connect(name, conn).await?;
            Ok((Box::new(tls) as Box<dyn Stream>, local))
        };
        let (stream, local) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Ok(Self::over(stream, addr, local))
    }

    /// A connection a registrar opened to this PE, already authenticated.
    pub(crate) fn accepted(
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        registrar: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        Self::over(Box::new(tls), registrar, local)
    }

    fn over(stream: Box<dyn Stream>, registrar: SocketAddr, local: SocketAddr) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: MessageReader::new(r, Framer::asap(MAX_MESSAGE_LEN)),
            writer: w,
            registrar,
            local,
        }
    }

    /// Server hunt (spec §7.7): the registrars in order, starting at `start`, until one
    /// answers. Returns the connection and the index of the registrar.
    /// `insecure_legacy`: see [`Connection::open`].
    pub async fn hunt(
        trust: &TrustStore,
        registrars: &[TransportAddr],
        start: usize,
        insecure_legacy: bool,
    ) -> Result<(Self, usize), Error> {
        let mut last = String::from("no registrar configured");
        for i in 0..registrars.len() {
            let idx = (start + i) % registrars.len();
            match Self::open(trust, &registrars[idx], insecure_legacy).await {
                Ok(c) => return Ok((c, idx)),
                Err(e) => last = format!("{}: {e}", registrars[idx]),
            }
        }
        Err(Error::NoRegistrar {
            tried: registrars.len(),
            last,
        })
    }

    /// The registrar's address.
    pub fn registrar(&self) -> SocketAddr {
        self.registrar
    }

    /// This end's address (what a PE on this host advertises, spec §7.1 step 3).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &AsapMsg) -> Result<(), Error> {
        write_message(&mut self.writer, &msg.to_bytes()?).await?;
        Ok(())
    }

    /// The next message; [`Error::Closed`] at the end of the connection.
    pub async fn recv(&mut self) -> Result<AsapMsg, Error> {
        let frame = self.reader.next().await?.ok_or(Error::Closed)?;
        Ok(AsapMsg::decode(&frame)?.msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lack_of_resources_and_lost_connections_are_transient_other_refusals_permanent() {
        let transient = [
            Error::Rejected(ErrorCause::LackOfResources.code()),
            Error::Closed,
            Error::NoRegistrar {
                tried: 3,
                last: "connection refused".into(),
            },
            Error::Io(io::Error::from(io::ErrorKind::ConnectionReset)),
            Error::Io(io::Error::from(io::ErrorKind::TimedOut)),
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e}");
        }
        let permanent = [
            ErrorCause::InvalidValues(Vec::new()),
            ErrorCause::NonUniquePeId,
            ErrorCause::InconsistentPolicy(Vec::new()),
            ErrorCause::InconsistentTransport(Vec::new()),
            ErrorCause::InconsistentDataControl,
            ErrorCause::UnknownPoolHandle,
            ErrorCause::SecurityRejection,
            ErrorCause::Unspecified,
            ErrorCause::Other {
                code: 0x100a,
                info: Vec::new(),
            },
        ];
        for cause in &permanent {
            let e = Error::Rejected(cause.code());
            assert!(!e.is_transient(), "{e}");
            // One line that names the cause and says what to do.
            let line = e.to_string();
            assert!(line.contains(cause.name()), "{line}");
            assert!(!line.contains('\n') && line.contains("): "), "{line}");
        }
        assert!(!Error::Io(io::Error::from(io::ErrorKind::InvalidInput)).is_transient());
        assert_eq!(
            Error::Rejected(0x6).to_string(),
            "refused by the registrar: cause 0x6 (Lack of Resources): the registrar is still \
             starting or at a limit; retried, here or at another registrar"
        );
    }
}
