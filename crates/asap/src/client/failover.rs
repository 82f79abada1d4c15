//! A pool user's session with failover and cookie resume (spec §7.6, §7.8, §12.7;
//! draft-tuexen-rserpool-reqts §5): requests go to the PE the pool policy chose, for as
//! long as it answers; when it fails it is reported unreachable and the next PE (the last
//! business card's order first) gets the request, the session resumed from the last
//! cookie the old PE sent. What `rsp pu` runs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use asap::client::{self, failover::{Event, Session}, pu::{PoolUser, PuConfig}};
//! use asap::wire::param::PoolHandle;
//!
//! let trust = client::credentials(
//!     "pki/pu-client-1.pem".as_ref(),
//!     "pki/pu-client-1.key".as_ref(),
//!     "pki/ca.pem".as_ref(),
//! )?;
//! let pool = PoolHandle::new("counter").ok_or("a pool handle is 1 to 32 bytes")?;
//! let registrar: std::net::SocketAddr = "127.0.0.1:3864".parse()?;
//! let config = PuConfig::new([registrar], pool);
//! let users = PoolUser::new(Arc::clone(&trust), config);
//! let mut session = Session::new(&users);
//! for request in ["one", "two"] {
//!     let answer = session
//!         .exchange(request, |event| {
//!             if let Event::FailedOver { from, to, took } = event {
//!                 eprintln!("failed over from PE {from} to PE {to} in {took:?}");
//!             }
//!         })
//!         .await?;
//!     println!("{answer}");
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use identity::{IdentityPattern, SpiffeId};
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use trust::{Protocol, TrustStore};

use super::Error;
use super::pu::{Affinity, CardError, PoolUser};
use super::session::{self, ChannelError, Frame};
use crate::addr::TransportAddr;
use crate::wire::param::{Cookie, ErrorCause, PeId, PoolHandle, Transport, TransportUse};
use crate::wire::{AsapMsg, PeEntry};

/// Limit: how long connecting to a PE may take (TCP connect or SCTP association).
pub const PE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit: how long the TLS handshake with a PE may take.
pub const PE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit: how long a PE may take to answer a request before it counts as failed (and the
/// session fails over).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The PPID of a PE's service data over SCTP: 0 (unspecified), as RSPLIB's rspserver and
/// rspterminal use; ASAP control messages (PPID 11) never travel on it here.
pub const PPID_SERVICE: u32 = 0;

/// A connection's bytes, whatever carries them (TLS over TCP or SCTP, plain SCTP).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a PE could not be reached or failed under a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeError {
    /// A legacy PE (no certificate) over SCTP, and the pool user was not configured for
    /// plain text ([`super::pu::PuConfig::insecure_legacy`]).
    #[error("a legacy PE (no certificate): reaching it needs --insecure-legacy")]
    LegacyNeedsInsecure,
    /// The PE speaks TLS and this pool user has no certificate (a legacy identity).
    #[error("this PE speaks TLS only, and this rsp runs without a certificate: give --cert")]
    NoCertificate,
    /// The resolution did not say who registered the PE (project parameter 0x8101).
    #[error("the registrar did not say who registered this PE")]
    NoRegistrant,
    /// The registrant is not a SPIFFE ID.
    #[error("the registrant is not a SPIFFE ID")]
    BadRegistrant(#[source] trust::Error),
    /// The PE's transport has no address this pool user can dial.
    #[error("the PE's transport is neither TCP nor SCTP, or has no address to dial")]
    NoAddress,
    /// Plain text is for legacy PEs over SCTP only.
    #[error("plaintext to a PE is for legacy PEs over SCTP only")]
    PlainTcp,
    /// SCTP PEs need the `sctp` feature.
    #[error("the PE is over SCTP, and this build has no SCTP")]
    NoSctp,
    /// The TLS configuration for the PE could not be made.
    #[error("{0}")]
    Trust(#[from] trust::Error),
    /// What timed out (the limits above).
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Connecting failed.
    #[error("connecting to {to}: {source}")]
    Connect {
        /// Where.
        to: String,
        /// Why.
        source: io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with the PE: {0}")]
    Handshake(#[source] io::Error),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The session framing failed (spec §12.7).
    #[error("{0}")]
    Channel(#[from] ChannelError),
    /// The PE closed the connection.
    #[error("the PE closed")]
    Closed,
    /// The PE's answer line passed [`session::MAX_DATA_LEN`] bytes: a PE cannot make the
    /// pool user buffer without bound.
    #[error("the PE's answer is longer than {} bytes", session::MAX_DATA_LEN)]
    AnswerTooLong,
}

/// Where a PE is, and a TLS configuration that accepts only the identity the registrar
/// vouched for: the PE's serving identity (0x8105, a server that terminates TLS itself,
/// which the registrar let its registrant vouch for), else its registrant (0x8101); a
/// server with another certificate is refused.
pub fn pe_target(
    trust: &TrustStore,
    e: &PeEntry,
) -> Result<(Arc<ClientConfig>, SocketAddr), PeError> {
    let registrant = e.registrant.as_ref().ok_or(PeError::NoRegistrant)?;
    let expected = e
        .pool_element
        .serving_identity
        .as_ref()
        .map_or(registrant.as_str(), |s| s.as_str());
    let id =
        SpiffeId::parse(expected).map_err(|e| PeError::BadRegistrant(trust::Error::from(e)))?;
    let config = trust.client_config_expecting(Protocol::Asap, IdentityPattern::exact(&id))?;
    let t = &e.pool_element.user_transport;
    let ip = t.addresses().first().ok_or(PeError::NoAddress)?.ip();
    Ok((config, SocketAddr::new(ip, t.port().get())))
}

/// A TLS session with a PE; `config` checks the PE's identity.
pub async fn connect_tls(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, PeError> {
    let tcp = tokio::time::timeout(PE_CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| PeError::Timeout("connect"))?
        .map_err(|source| PeError::Connect {
            to: addr.to_string(),
            source,
        })?;
    // Requests are small and a resumed session writes Cookie Echo and the request back to
    // back: without this, Nagle holds the second until the first is acknowledged (up to
    // the peer's delayed-ACK timer, 40 ms on Linux), which is most of a failover.
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(
        PE_HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .map_err(|_| PeError::Timeout("TLS handshake with the PE"))?
    .map_err(PeError::Handshake)
}

/// A stream to a PE at `transport`'s first address: TLS with `config` (which checks the
/// PE's identity), or with `None`, plain (legacy PEs over SCTP only).
async fn connect_pe_stream(
    transport: &Transport,
    config: Option<Arc<ClientConfig>>,
) -> Result<Box<dyn Stream>, PeError> {
    // All of a multi-homed PE's addresses: the association survives losing one.
    let to = TransportAddr::of_transport(transport).ok_or(PeError::NoAddress)?;
    let first = to.primary();
    match (to, config) {
        (TransportAddr::Tcp(_), Some(config)) => Ok(Box::new(connect_tls(config, first).await?)),
        (TransportAddr::Tcp(_), None) => Err(PeError::PlainTcp),
        #[cfg(feature = "sctp")]
        (TransportAddr::Sctp(to), config) => {
            use crate::transport::sctp::{Framing, SctpConnection};
            let conn = tokio::time::timeout(
                PE_CONNECT_TIMEOUT,
                SctpConnection::connect(&to, PPID_SERVICE, Framing::Stream),
            )
            .await
            .map_err(|_| PeError::Timeout("connect"))?
            .map_err(|source| PeError::Connect {
                to: TransportAddr::Sctp(to.clone()).to_string(),
                source,
            })?;
            let Some(config) = config else {
                return Ok(Box::new(conn));
            };
            let tls = tokio::time::timeout(
                PE_HANDSHAKE_TIMEOUT,
                TlsConnector::from(config).connect(ServerName::IpAddress(first.ip().into()), conn),
            )
            .await
            .map_err(|_| PeError::Timeout("TLS handshake with the PE"))?
            .map_err(PeError::Handshake)?;
            Ok(Box::new(tls))
        }
        #[cfg(not(feature = "sctp"))]
        (TransportAddr::Sctp(_), _) => Err(PeError::NoSctp),
    }
}

/// A line-oriented session with a PE (TLS, or plain to a legacy PE).
struct Line {
    reader: BufReader<tokio::io::ReadHalf<Box<dyn Stream>>>,
    writer: tokio::io::WriteHalf<Box<dyn Stream>>,
}

impl Line {
    /// Connects to `transport` with `config`, which checks the PE's identity (`None`:
    /// plain, legacy PEs over SCTP only).
    async fn connect(
        transport: &Transport,
        config: Option<Arc<ClientConfig>>,
    ) -> Result<Self, PeError> {
        let (r, w) = tokio::io::split(connect_pe_stream(transport, config).await?);
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends one line and reads one line back.
    async fn exchange(&mut self, line: &str) -> Result<String, PeError> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        self.writer.flush().await?;
        let mut answer = String::new();
        // One byte past the limit tells an over-long line from one of exactly the limit.
        let limit = session::MAX_DATA_LEN as u64 + 1;
        let n = tokio::time::timeout(
            ANSWER_TIMEOUT,
            (&mut self.reader).take(limit).read_line(&mut answer),
        )
        .await
        .map_err(|_| PeError::Timeout("waiting for the answer"))??;
        if n == 0 {
            return Err(PeError::Closed);
        }
        if answer.trim_end_matches(['\r', '\n']).len() > session::MAX_DATA_LEN {
            return Err(PeError::AnswerTooLong);
        }
        Ok(answer.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// What a session exchange learns besides the answer.
#[derive(Debug, Default)]
struct Notes {
    /// Causes of ASAP_ERRORs the PE sent (e.g. 0xA: it refused the echoed cookie).
    refusals: Vec<u16>,
    /// Business cards the PE sent: pool handle and PEs, not yet checked.
    cards: Vec<(PoolHandle, Vec<crate::wire::param::PoolElement>)>,
}

/// A session channel with a PE (spec §12.7 framing), PU side.
struct SessionChannel {
    reader: tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    writer: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    /// Whether the channel began with a Cookie Echo (a refusal of it may close it).
    echoed: bool,
}

impl SessionChannel {
    /// Connects with `config` (which checks the PE's identity) and, when resuming a
    /// session, echoes its last cookie first.
    async fn connect(
        config: Arc<ClientConfig>,
        addr: SocketAddr,
        cookie: Option<&Cookie>,
    ) -> Result<Self, PeError> {
        let (reader, mut writer) = tokio::io::split(connect_tls(config, addr).await?);
        if let Some(c) = cookie {
            session::write_control(&mut writer, &AsapMsg::CookieEcho(c.clone())).await?;
        }
        Ok(Self {
            reader,
            writer,
            echoed: cookie.is_some(),
        })
    }

    /// Sends one request and reads frames up to its answer; a Cookie on the way replaces
    /// `cookie` (spec §7.8: only the latest is kept).
    async fn exchange(
        &mut self,
        line: &str,
        cookie: &mut Option<Cookie>,
        notes: &mut Notes,
    ) -> Result<String, PeError> {
        session::write_data(&mut self.writer, 0, line.as_bytes()).await?;
        let read = async {
            loop {
                match session::read_frame(&mut self.reader).await? {
                    None => return Err(PeError::Closed),
                    Some(Frame::Data { payload, .. }) => {
                        return Ok(String::from_utf8_lossy(&payload).into_owned());
                    }
                    Some(Frame::Control(AsapMsg::Cookie(c))) => *cookie = Some(c),
                    Some(Frame::Control(AsapMsg::Error(e))) => {
                        // Security Rejection: the PE refused the echoed cookie. Every PE
                        // of the pool shares its key, so it would be refused everywhere
                        // (a forwarding PE closes the session, too): forgotten, so the
                        // failover starts a fresh session instead of going round.
                        if e.causes().contains(&ErrorCause::SecurityRejection) {
                            *cookie = None;
                        }
                        notes
                            .refusals
                            .extend(e.causes().iter().map(ErrorCause::code));
                    }
                    Some(Frame::Control(AsapMsg::BusinessCard {
                        pool_handle,
                        pool_elements,
                        ..
                    })) => notes.cards.push((pool_handle, pool_elements)),
                    // A malformed card (or other control message) changes nothing.
                    Some(Frame::Control(_) | Frame::BadControl(_)) => {}
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, read)
            .await
            .map_err(|_| PeError::Timeout("waiting for the answer"))?
    }
}

/// A channel to the PE in use: plain lines, or the session framing when the PE registered
/// with Transport Use = data plus control (spec §7.8).
enum Channel {
    Line(Line),
    Session(SessionChannel),
}

/// Connects to a PE, insisting on the identity the registrar vouched for (0x8101), with
/// the session framing if the PE registered for it, echoing `cookie` then.
async fn connect_pe(
    trust: &TrustStore,
    e: &PeEntry,
    cookie: Option<&Cookie>,
    insecure_legacy: bool,
) -> Result<Channel, PeError> {
    let transport = &e.pool_element.user_transport;
    // A legacy PE (registered through a legacy listener, or known from a legacy
    // registrar, which names no registrant) has no certificate: plain SCTP, and only
    // when asked for.
    let legacy = e
        .registrant
        .as_ref()
        .is_none_or(|r| SpiffeId::parse(r.as_str()).is_ok_and(|id| id.is_legacy()));
    if legacy && matches!(transport, Transport::Sctp { .. }) {
        if !insecure_legacy {
            return Err(PeError::LegacyNeedsInsecure);
        }
        return Ok(Channel::Line(Line::connect(transport, None).await?));
    }
    // The throwaway identity of a plain-text-only pool user is in the legacy domain.
    if trust.identity().id().is_legacy() {
        return Err(PeError::NoCertificate);
    }
    let (config, addr) = pe_target(trust, e)?;
    Ok(match transport.transport_use() {
        Some(TransportUse::DataPlusControl) if !matches!(transport, Transport::Sctp { .. }) => {
            Channel::Session(SessionChannel::connect(config, addr, cookie).await?)
        }
        // Data only, or over SCTP: plain lines.
        _ => Channel::Line(Line::connect(transport, Some(config)).await?),
    })
}

/// What a [`Session`] tells its caller while it works.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// No registrar answers and nothing is cached: the session waits for one (said once
    /// per outage; retried every [`super::BACKOFF_CAP`]).
    Waiting(&'a Error),
    /// The resolution in use is stale because refreshing it failed (said when the reason
    /// changes).
    Stale(&'a str),
    /// The session uses this PE now.
    Using(PeId),
    /// The PE could not be reached; it is reported and the session fails over.
    Unreachable(PeId, &'a PeError),
    /// The PE failed under a request; it is reported and the session fails over.
    Failed(PeId, &'a PeError),
    /// The PE refused the echoed cookie (the cause): the session starts afresh there.
    CookieRefused {
        /// The PE.
        pe: PeId,
        /// The ASAP_ERROR cause code (0xA: the cookie).
        cause: u16,
    },
    /// The PE sent a business card (spec §7.8): accepted with its failover order, or
    /// refused.
    BusinessCard {
        /// The PE that sent it.
        pe: PeId,
        /// The pool it names.
        pool: &'a PoolHandle,
        /// How many PEs it names.
        pes: usize,
        /// The failover order, or why the card was refused.
        order: Result<&'a [PeId], CardError>,
    },
    /// The first answer after a failure: from which PE to which, and how long since the
    /// failure.
    FailedOver {
        /// The PE that failed first.
        from: PeId,
        /// The PE that answered.
        to: PeId,
        /// From the failure to the answer.
        took: Duration,
    },
}

/// A pool user's session (module doc): one PE while it answers, failover with cookie
/// resume when it does not.
pub struct Session<'a> {
    users: &'a PoolUser,
    affinity: Affinity<'a>,
    current: Option<(PeId, Channel)>,
    cookie: Option<Cookie>,
    /// Set when a PE failed under a request: from then until the next answer is the
    /// failover time the PU sees.
    failed_at: Option<(PeId, Instant)>,
    /// Whether [`Event::Waiting`] was said for this outage.
    waiting: bool,
    /// The last [`Event::Stale`] reason said.
    stale_noted: Option<String>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pool_handle", self.users.pool_handle())
            .field("pe", &self.current.as_ref().map(|(id, _)| *id))
            .finish_non_exhaustive()
    }
}

impl<'a> Session<'a> {
    /// A session of `users`' pool, with its identity and its `insecure_legacy`.
    pub fn new(users: &'a PoolUser) -> Self {
        Self {
            users,
            affinity: users.session(),
            current: None,
            cookie: None,
            failed_at: None,
            waiting: false,
            stale_noted: None,
        }
    }

    /// The last cookie a PE sent (spec §7.8), echoed to the next PE after a failover.
    pub fn cookie(&self) -> Option<&Cookie> {
        self.cookie.as_ref()
    }

    /// Sends `request` (one line) to the session's PE and returns its answer, failing
    /// over as often as it takes; `on` hears what happens on the way. Waits while no
    /// registrar answers and nothing is cached; fails only when the pool cannot be
    /// resolved for good (a permanent refusal).
    pub async fn exchange(
        &mut self,
        request: &str,
        mut on: impl FnMut(Event<'_>),
    ) -> Result<String, Error> {
        loop {
            if self.current.is_none() {
                let e = match self.affinity.pe().await {
                    Ok(e) => e,
                    Err(err) if err.is_transient() => {
                        if !self.waiting {
                            on(Event::Waiting(&err));
                            self.waiting = true;
                        }
                        tokio::time::sleep(super::BACKOFF_CAP).await;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                self.waiting = false;
                let stale = self.users.staleness().await.map(|s| s.error);
                if stale != self.stale_noted {
                    if let Some(why) = &stale {
                        on(Event::Stale(why));
                    }
                    self.stale_noted = stale;
                }
                let pe_id = e.pool_element.pe_id;
                let connected = connect_pe(
                    self.users.trust(),
                    &e,
                    self.cookie.as_ref(),
                    self.users.insecure_legacy(),
                )
                .await;
                match connected {
                    Ok(c) => {
                        on(Event::Using(pe_id));
                        self.current = Some((pe_id, c));
                    }
                    Err(err) => {
                        on(Event::Unreachable(pe_id, &err));
                        self.failed_at
                            .get_or_insert_with(|| (pe_id, Instant::now()));
                        self.affinity.failed().await;
                        continue;
                    }
                }
            }
            let Some((pe_id, conn)) = self.current.as_mut() else {
                continue;
            };
            let pe_id = *pe_id;
            let mut notes = Notes::default();
            let answer = match conn {
                Channel::Line(l) => l.exchange(request).await,
                Channel::Session(s) => s.exchange(request, &mut self.cookie, &mut notes).await,
            };
            // Only for a channel that echoed a cookie: a PE that sends 0xA and closes
            // without one is an ordinary failure (no retrying it for ever).
            let cookie_refused = matches!(conn, Channel::Session(s) if s.echoed)
                && notes
                    .refusals
                    .contains(&ErrorCause::SecurityRejection.code());
            for cause in notes.refusals {
                on(Event::CookieRefused { pe: pe_id, cause });
            }
            for (pool, pes) in notes.cards {
                let order = self.affinity.business_card(&pool, &pes);
                on(Event::BusinessCard {
                    pe: pe_id,
                    pool: &pool,
                    pes: pes.len(),
                    order,
                });
            }
            match answer {
                Ok(answer) => {
                    if let Some((from, at)) = self.failed_at.take() {
                        on(Event::FailedOver {
                            from,
                            to: pe_id,
                            took: at.elapsed(),
                        });
                    }
                    return Ok(answer);
                }
                // The PE refused the echoed cookie and then closed the session (a
                // forwarding PE does, docs/PROTOCOL-EXTENSIONS.md §7): not a failure of
                // the PE, so not reported. The cookie is forgotten already; the next
                // attempt is a fresh session with the same PE, which cannot be refused
                // again for a cookie.
                Err(_) if cookie_refused => self.current = None,
                Err(err) => {
                    on(Event::Failed(pe_id, &err));
                    self.failed_at
                        .get_or_insert_with(|| (pe_id, Instant::now()));
                    self.affinity.failed().await;
                    self.current = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Line` over one end of an in-memory pipe; the other end plays the PE.
    fn line() -> (Line, tokio::io::DuplexStream) {
        let (ours, pe) = tokio::io::duplex(256 * 1024);
        let (r, w) = tokio::io::split(Box::new(ours) as Box<dyn Stream>);
        let line = Line {
            reader: BufReader::new(r),
            writer: w,
        };
        (line, pe)
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_limit_is_refused_and_one_at_the_limit_is_not() {
        let (mut line, mut pe) = line();
        let mut at_limit = vec![b'a'; session::MAX_DATA_LEN];
        at_limit.push(b'\n');
        pe.write_all(&at_limit).await.expect("write");
        let answer = line
            .exchange("hello")
            .await
            .expect("an answer at the limit");
        assert_eq!(answer.len(), session::MAX_DATA_LEN);

        // A PE that never ends its line: the pool user stops one byte past the limit.
        pe.write_all(&vec![b'b'; 2 * session::MAX_DATA_LEN])
            .await
            .expect("write");
        match line.exchange("again").await {
            Err(PeError::AnswerTooLong) => {}
            other => panic!("{other:?}"),
        }
    }
}
