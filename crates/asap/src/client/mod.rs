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
pub mod reload;
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
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use trust::{DomainBundle, LiveConnection, LocalIdentity, Peer, Protocol, TrustStore};

use crate::transport::{MessageReader, ReadError, TransportAddr, write_message};
use crate::wire::limits::MAX_MESSAGE_LEN;
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
    /// The registrar refused the request with this error cause (spec §4.7).
    #[error("refused by the registrar: cause {0:#x}")]
    Rejected(u16),
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })
}

/// The identity a PE or PU presents and the trust bundle of its own domain, from the
/// files `rsp-pki` writes (`ROLE-NAME.pem`, `ROLE-NAME.key`, `ca.pem`), with the domain's
/// CRLs from `crl.pem` beside `ca` when that file exists ([`default_crl`]).
pub fn credentials(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<TrustStore>, Error> {
    credentials_with_crl(cert, key, ca, default_crl(ca).as_deref())
}

/// `crl.pem` beside the CA bundle `ca`, if it exists (where `rsp-pki` writes it).
pub fn default_crl(ca: &Path) -> Option<std::path::PathBuf> {
    let crl = ca.with_file_name("crl.pem");
    crl.exists().then_some(crl)
}

/// Like [`credentials`], with the trust domain's CRLs from `crl` (`None`: no revocation
/// check beyond the registrar's). With CRLs, every handshake this side makes or accepts
/// (registrar, PE, PU) refuses a revoked certificate anywhere in the peer's chain, and
/// fails closed once a CRL is past its nextUpdate: renew it with `rsp-pki crl`.
pub fn credentials_with_crl(
    cert: &Path,
    key: &Path,
    ca: &Path,
    crl: Option<&Path>,
) -> Result<Arc<TrustStore>, Error> {
    let identity = LocalIdentity::from_pem(&read(cert)?, &read(key)?)?;
    let domain = identity.id().trust_domain();
    let store = TrustStore::new(identity)?;
    let mut bundle = DomainBundle::from_pem(domain, &read(ca)?)?;
    if let Some(crl) = crl {
        bundle = bundle.with_crls(trust::crls_from_pem(&read(crl)?)?);
    }
    store.add_domain(bundle)?;
    Ok(Arc::new(store))
}

/// Registers the registrar's session with `trust`, so that revocations and expiry end it;
/// refused if a revocation landed since the handshake.
fn watch_registrar(trust: &TrustStore, tls: &rustls::CommonState) -> io::Result<LiveConnection> {
    let refused = |e: String| io::Error::new(io::ErrorKind::PermissionDenied, e);
    let peer = Peer::from_tls(tls).map_err(|e| refused(e.to_string()))?;
    trust
        .register_connection(&peer)
        .map_err(|e| refused(e.to_string()))
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
    /// The registrar's certificate, registered with the trust store: a CRL reloaded later
    /// that revokes it (or its chain), or its notAfter, ends the connection (none over
    /// plain legacy SCTP).
    live: Option<LiveConnection>,
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
        let live = watch_registrar(trust, tls.get_ref().1)?;
        Ok(Self::over(Box::new(tls), addr, local).watched(live))
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
                return Ok::<_, io::Error>((Box::new(conn) as Box<dyn Stream>, local, None));
            }
            let connector = TlsConnector::from(trust.client_config(Protocol::Asap));
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = connector.connect(name, conn).await?;
            let live = watch_registrar(trust, tls.get_ref().1)?;
            Ok((Box::new(tls) as Box<dyn Stream>, local, Some(live)))
        };
        let (stream, local, live) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let conn = Self::over(stream, addr, local);
        Ok(match live {
            Some(live) => conn.watched(live),
            None => conn,
        })
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
            live: None,
        }
    }

    fn watched(mut self, live: LiveConnection) -> Self {
        self.live = Some(live);
        self
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

    /// The next message; [`Error::Closed`] at the end of the connection, an
    /// [`Error::Io`] once the registrar's certificate is revoked or expires (the caller
    /// hunts another registrar, spec §7.7). Cancel-safe.
    pub async fn recv(&mut self) -> Result<AsapMsg, Error> {
        let next = match self.live.as_mut() {
            Some(live) => tokio::select! {
                next = self.reader.next() => next,
                reason = live.closed() => {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the registrar's certificate is no longer trusted ({reason:?})"),
                    )));
                }
            },
            None => self.reader.next().await,
        };
        let frame = next?.ok_or(Error::Closed)?;
        Ok(AsapMsg::decode(&frame)?.msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trust::testing::TestCa;

    /// Issue 17: a registrar connection ends when a CRL loaded later revokes the
    /// registrar's certificate, so that the PE or PU hunts another registrar.
    #[tokio::test]
    async fn a_registrar_revoked_by_a_reloaded_crl_ends_the_connection() {
        let ca = TestCa::new("acme.test");
        let registrar = ca.leaf("registrar/enrp-1").issue();
        let server = TrustStore::new(registrar.identity()).expect("store");
        server.add_domain(ca.bundle()).expect("domain");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(Protocol::Asap));
        let held = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            // Hold the session open, silent, until the client goes.
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
        });
        let client = TrustStore::new(ca.leaf("pe/echo-1").issue().identity()).expect("store");
        client
            .add_domain(ca.bundle().with_crls(vec![ca.crl(&[])]))
            .expect("domain");
        let mut conn = Connection::connect(&client, addr).await.expect("connected");
        let closed = client
            .set_crls(ca.domain(), vec![ca.crl(&[&registrar.serial])])
            .expect("CRL");
        assert_eq!(closed, 1, "the registrar connection was registered");
        let err = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("ends at once")
            .expect_err("revoked");
        assert!(
            err.to_string()
                .contains("the registrar's certificate is no longer trusted (SerialRevoked)"),
            "{err}"
        );
        held.abort();
    }
}
