//! Pool elements and pool users over mutual TLS (ARCHITECTURE.md §3, spec §7, §11.2): the
//! connection to a registrar, and the credentials both sides present.
//!
//! - [`Connection`]: ASAP messages over TLS to a registrar, found by server hunt among
//!   the configured registrars (spec §7.7), and [`discovery`], the registrars learnt
//!   from multicast announces (off unless asked).
//! - [`pe`]: a PE that registers, answers keep-alives, re-registers, survives registrar
//!   loss with the same PE ID (spec §7.1, §7.5, §12.6) and deregisters on shutdown.
//! - [`pu`]: handle resolution and endpoint unreachable reports (spec §7.3, §7.6).
//! - [`failover`]: a PU session that fails over between PEs and resumes from the last
//!   cookie (spec §7.8), what `rsp pu` runs.
//! - [`gateway`]: a client that does not speak ASAP carried to a PE of the pool.
//! - [`forward`]: the PE side's counterpart, a PE that carries its PUs' sessions to an
//!   existing server (`rsp pe --forward`), with [`admit`] (which PUs a PE serves) and
//!   [`check`] (health checks that take the PE out of its pool and back).

pub mod admit;
mod backoff;
pub mod card;
pub mod check;
pub mod discovery;
pub mod failover;
pub mod forward;
pub mod gateway;
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

use crate::addr::TransportAddr;
use crate::transport::{MessageReader, ReadError, write_message};
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
    /// A trust bundle file is not one this client can use (see [`trust_bundles`]).
    #[error("the trust bundle {path}: {reason}")]
    Bundle {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
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
            Self::Rejected(code) => ErrorCause::from_parts(*code, &[]).is_transient(),
            Self::NoRegistrar { .. } | Self::Read(_) | Self::Decode(_) | Self::Closed => true,
            Self::Io(e) => !matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ),
            Self::File { .. } | Self::Trust(_) | Self::Bundle { .. } | Self::Encode(_) => false,
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
            "this identity may not do this; check its grants for the pool and namespace at the registrar, and that the PE's addresses are its connection's, or whether an operator drained this PE ID"
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

/// The identity a PE or PU presents and the trust bundles it trusts, from the files
/// `rsp-pki` writes (`ROLE-NAME.pem`, `ROLE-NAME.key`, and `ca.pem` or a bundle of several
/// trust domains, see [`trust_bundles`]), with its own domain's CRLs from `crl.pem` beside
/// `ca` when that file exists ([`default_crl`]).
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
    let text = String::from_utf8_lossy(&read(ca)?).into_owned();
    let bundles = trust_bundles(&domain, &text).map_err(|reason| Error::Bundle {
        path: ca.display().to_string(),
        reason,
    })?;
    for mut bundle in bundles {
        // `crl.pem` is the CRL of the identity's own domain (where `rsp-pki` writes it).
        if let Some(crl) = crl.filter(|_| *bundle.domain() == domain) {
            bundle = bundle.with_crls(trust::crls_from_pem(&read(crl)?)?);
        }
        store.add_domain(bundle)?;
    }
    Ok(Arc::new(store))
}

/// Most trust domains one bundle file may name: a federation of a few partners, not a
/// directory of the world (each domain is one more set of roots every handshake tries).
pub const MAX_BUNDLE_DOMAINS: usize = 64;

/// The trust bundles of a `--ca` file: root certificates (PEM) of `own`, the identity's
/// domain, and sections that each start with a `trust-domain: NAME` line followed by that
/// domain's roots, as `rsp-pki bundle export` writes them. `ca.pem` alone, an export of
/// the own domain, and several exports concatenated (`cat ca.pem partner.bundle >
/// trust.pem`) all work, so that a PU of a federated domain reaches the PEs its registrar
/// lets it resolve. Certificates before any `trust-domain:` line are `own`'s. Refused
/// (one line saying why): no roots for `own`, a domain named twice or without
/// certificates, more than [`MAX_BUNDLE_DOMAINS`] domains, PEM that does not parse.
pub fn trust_bundles(own: &identity::TrustDomain, text: &str) -> Result<Vec<DomainBundle>, String> {
    let mut sections: Vec<(identity::TrustDomain, String)> = vec![(own.clone(), String::new())];
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("trust-domain:") {
            let domain = identity::TrustDomain::new(name.trim()).map_err(|e| e.to_string())?;
            sections.push((domain, String::new()));
        } else if let Some((_, pem)) = sections.last_mut() {
            pem.push_str(line);
            pem.push('\n');
        }
    }
    // The headerless start holds nothing when the file is exports only.
    if !sections[0].1.contains("-----BEGIN") {
        sections.remove(0);
    }
    if sections.len() > MAX_BUNDLE_DOMAINS {
        return Err(format!(
            "names {} trust domains; at most {MAX_BUNDLE_DOMAINS}",
            sections.len()
        ));
    }
    let mut bundles: Vec<DomainBundle> = Vec::with_capacity(sections.len());
    for (domain, pem) in sections {
        if bundles.iter().any(|b| *b.domain() == domain) {
            return Err(format!("names trust domain {domain} twice"));
        }
        if !pem.contains("-----BEGIN") {
            return Err(format!(
                "names trust domain {domain} but holds no certificate for it"
            ));
        }
        let bundle = DomainBundle::from_pem(domain.clone(), pem.as_bytes())
            .map_err(|e| format!("trust domain {domain}: {e}"))?;
        bundles.push(bundle);
    }
    if !bundles.iter().any(|b| b.domain() == own) {
        return Err(format!(
            "holds no roots of this identity's trust domain {own} (start with its ca.pem, \
             or its `rsp-pki bundle export`)"
        ));
    }
    Ok(bundles)
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
        endpoint: &crate::addr::Endpoint,
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

    /// "trust-domain: NAME" and the roots, as `rsp-pki bundle export` writes them.
    fn export(ca: &TestCa) -> String {
        format!("trust-domain: {}\n{}", ca.domain(), ca.root_pem())
    }

    /// A store presenting `leaf` of `ca` and trusting the bundles of `file`.
    fn store(ca: &TestCa, leaf: &str, file: &str) -> TrustStore {
        let store = TrustStore::new(ca.leaf(leaf).issue().identity()).expect("store");
        for b in trust_bundles(ca.domain(), file).expect("bundle file") {
            store.add_domain(b).expect("add");
        }
        store
    }

    /// A real TLS handshake (in memory) of a PU presenting `client` with a PE presenting
    /// `server`: whether both ends accept it.
    async fn handshake(server: &TrustStore, client: &TrustStore) -> bool {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(Protocol::Asap));
        // A PU dials a PE: it expects that PE's identity, not a registrar's.
        let expected = identity::IdentityPattern::exact(server.identity().id());
        let Ok(config) = client.client_config_expecting(Protocol::Asap, expected) else {
            return false;
        };
        let connector = TlsConnector::from(config);
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        s.is_ok() && c.is_ok()
    }

    #[tokio::test]
    async fn a_bundle_of_several_domains_federates_them_and_no_other() {
        let (acme, partner, evil) = (
            TestCa::new("acme.test"),
            TestCa::new("partner.test"),
            TestCa::new("evil.test"),
        );
        // ca.pem alone, and ca.pem with a partner's export after it.
        assert_eq!(
            trust_bundles(acme.domain(), &acme.root_pem())
                .expect("ca.pem")
                .len(),
            1
        );
        let federated = format!("{}{}", acme.root_pem(), export(&partner));
        let bundles = trust_bundles(acme.domain(), &federated).expect("federated");
        assert_eq!(bundles.len(), 2);
        // Exports only, the PU's own domain second.
        let exports = format!("{}{}", export(&partner), export(&acme));
        let pe = store(&acme, "pe/echo-1", &exports);
        let pu = store(&partner, "pu/client-1", &exports);
        assert!(handshake(&pe, &pu).await, "the federated PU reaches the PE");
        // A valid certificate of a domain the bundle does not name is refused.
        let stranger = store(&evil, "pu/client-1", &format!("{exports}{}", export(&evil)));
        assert!(!handshake(&pe, &stranger).await, "a stranger is refused");

        // Refused, each with its reason.
        let refused = |text: &str| trust_bundles(acme.domain(), text).expect_err(text);
        assert!(refused(&export(&partner)).contains("no roots of this identity's trust domain"));
        assert!(refused(&format!("{}{}", export(&acme), export(&acme))).contains("twice"));
        assert!(
            refused(&format!("{}trust-domain: partner.test\n", acme.root_pem()))
                .contains("no certificate")
        );
        assert!(refused("trust-domain: spiffe://x\n").contains("spiffe://x"));
        let many: String = (0..=MAX_BUNDLE_DOMAINS)
            .map(|i| format!("trust-domain: d{i}.test\n{}", partner.root_pem()))
            .collect();
        assert!(refused(&format!("{}{many}", acme.root_pem())).contains("at most"));
    }

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
