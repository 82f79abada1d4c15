//! The session channel through a forwarding PE (issue 21, `rsp pe --forward
//! --session-channel`): the PE registers its transport as data plus control (spec §7.8),
//! speaks the §12.7 frame shim (`u32 PPID | u32 length | payload`) with the PU, and
//! carries the session to the existing server in the same framing. The PE owns cookie
//! security, so the server never holds the pool key:
//!
//! - data frames (PPID ≠ 11) pass unchanged both ways, at most [`MAX_DATA_LEN`](session::MAX_DATA_LEN) each;
//! - an ASAP_COOKIE from the server holds its plain session state (at most
//!   [`MAX_STATE_LEN`](session::MAX_STATE_LEN)): the PE seals it with the pool key, bound to this pool and this
//!   PU's identity, and sends the PU the sealed cookie;
//! - an ASAP_COOKIE_ECHO from the PU is opened; the server receives the plain state in an
//!   ASAP_COOKIE_ECHO. One that does not open (forged, expired, another pool's or another
//!   PU's) is answered with an ASAP_ERROR (0xA, Security Rejection), the session closed,
//!   and nothing passed to the server;
//! - anything else on PPID 11, from either side, or a control frame that does not
//!   decode, ends the session ([`Refusal`]): the PE carries no other control message, so
//!   neither side can make it speak for the other.
//!
//! [`Relay`] is the pure core (a frame in, the frame to write on the other side or a
//! [`Refusal`] out); [`carry`] drives it over the two streams.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Mutex, watch};

use crate::client::session::{self, Binding, ChannelError, CookieError, CookieKey, Frame};
use crate::wire::param::{Cookie, ErrorCause, OperationError, PoolHandle};
use crate::wire::{AsapMsg, DecodeError};

/// Limit: how long the PE waits, after a refusal, to send the PU its ASAP_ERROR and the
/// TLS close_notify. A PU that does not read (its socket buffers full) is cut off after it
/// instead of keeping the session and its slot.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A forwarding PE's session channel: the pool key its cookies are sealed with, the pool
/// they are bound to, how long they last, and the business card each session starts with.
#[derive(Clone, Debug)]
pub struct SessionChannel {
    /// The pool's cookie key, shared by the pool's PEs (`--cookie-key`).
    pub key: Arc<CookieKey>,
    /// The pool the cookies are bound to.
    pub pool_handle: PoolHandle,
    /// How long a sealed cookie stays valid (`--cookie-lifetime`).
    pub lifetime: Duration,
    /// The business card sent at the start of each session (spec §7.8), kept current by
    /// `client::card::keep_current`; `None` sends none.
    pub card: Option<watch::Receiver<AsapMsg>>,
}

impl SessionChannel {
    /// With `key` for `pool_handle`, the default cookie lifetime, no business card.
    pub fn new(key: Arc<CookieKey>, pool_handle: PoolHandle) -> Self {
        Self {
            key,
            pool_handle,
            lifetime: session::DEFAULT_COOKIE_LIFETIME,
            card: None,
        }
    }
}

/// Which end of a session channel sent a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The pool user.
    Pu,
    /// The existing server behind the PE.
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pu => "the PU",
            Self::Server => "the server",
        })
    }
}

/// Why the PE ended a session channel. Each is logged with the PU's identity; nothing of
/// the refused frame reaches the other side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The PU's Cookie Echo did not open (threat T-9): answered with Security Rejection.
    #[error("refused its Cookie Echo: {0}")]
    Echo(CookieError),
    /// The server's session state could not be sealed (over [`MAX_STATE_LEN`](session::MAX_STATE_LEN)).
    #[error("the server's session state was not sealed: {0}")]
    State(CookieError),
    /// A control message the PE does not carry from this side.
    #[error("{side} sent an ASAP {name} on PPID 11; only {allowed} is carried from it")]
    Unexpected {
        /// Who sent it.
        side: Side,
        /// The message's name.
        name: &'static str,
        /// What is carried from that side.
        allowed: &'static str,
        /// Its header (type, flags, length): the evidence in the PU's ASAP_ERROR.
        header: Vec<u8>,
    },
    /// A PPID 11 frame that does not decode.
    #[error("{side} sent a control frame that does not decode: {error}")]
    Malformed {
        /// Who sent it.
        side: Side,
        /// Why it does not decode.
        error: DecodeError,
    },
    /// A frame longer than its cap (data: [`MAX_DATA_LEN`](session::MAX_DATA_LEN); control: the ASAP message
    /// cap): a framing fault.
    #[error("{side} sent a frame with PPID {ppid} of {len} bytes, over the cap of {max}")]
    TooLong {
        /// Who sent it.
        side: Side,
        /// Its PPID.
        ppid: u32,
        /// Its announced length.
        len: u32,
        /// The cap.
        max: usize,
    },
}

impl Refusal {
    /// The ASAP_ERROR the PU is sent before its session closes, when the refusal is of
    /// something the PU sent; the server's faults just close the session (the PU fails
    /// over).
    pub fn answer_to_pu(&self) -> Option<AsapMsg> {
        let cause = match self {
            Self::Echo(_) => ErrorCause::SecurityRejection,
            Self::Unexpected {
                side: Side::Pu,
                header,
                ..
            } => ErrorCause::UnrecognizedMessage(header.clone()),
            Self::Malformed {
                side: Side::Pu,
                error,
            } => error
                .cause()
                .unwrap_or(ErrorCause::InvalidValues(Vec::new())),
            _ => return None,
        };
        Some(AsapMsg::Error(OperationError::single(cause)))
    }
}

/// A frame to write on the other side.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Application data, unchanged.
    Data {
        /// Its PPID (never 11).
        ppid: u32,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A control message the PE built (a sealed Cookie to the PU, an opened Cookie Echo
    /// to the server).
    Control(AsapMsg),
}

/// The pure core of one session channel: what each frame becomes, given the pool key,
/// the PU it is bound to and the time.
#[derive(Debug)]
pub struct Relay<'a> {
    key: &'a CookieKey,
    binding: Binding<'a>,
    lifetime: Duration,
}

/// A control message's header: type, flags, length (evidence for an ASAP_ERROR).
fn header(msg: &AsapMsg) -> Vec<u8> {
    msg.to_bytes()
        .map(|b| b.get(..4).unwrap_or_default().to_vec())
        .unwrap_or_default()
}

impl<'a> Relay<'a> {
    /// For the session of `binding`'s PU, sealing with `key` for `lifetime`.
    pub fn new(key: &'a CookieKey, binding: Binding<'a>, lifetime: Duration) -> Self {
        Self {
            key,
            binding,
            lifetime,
        }
    }

    /// What a frame from the PU becomes at the server, at wall-clock time `now`.
    pub fn from_pu(&self, frame: Frame, now: SystemTime) -> Result<Relayed, Refusal> {
        match frame {
            Frame::Data { ppid, payload } => Ok(Relayed::Data { ppid, payload }),
            Frame::Control(AsapMsg::CookieEcho(sealed)) => {
                let state = self
                    .key
                    .open(sealed.as_bytes(), &self.binding, now)
                    .map_err(Refusal::Echo)?;
                let plain = Cookie::new(state).expect("an opened state is shorter than its cookie");
                Ok(Relayed::Control(AsapMsg::CookieEcho(plain)))
            }
            Frame::Control(other) => Err(Refusal::Unexpected {
                side: Side::Pu,
                name: other.name(),
                allowed: "Cookie Echo",
                header: header(&other),
            }),
            Frame::BadControl(error) => Err(Refusal::Malformed {
                side: Side::Pu,
                error,
            }),
        }
    }

    /// What a frame from the server becomes at the PU, at wall-clock time `now`.
    pub fn from_server(&self, frame: Frame, now: SystemTime) -> Result<Relayed, Refusal> {
        match frame {
            Frame::Data { ppid, payload } => Ok(Relayed::Data { ppid, payload }),
            Frame::Control(AsapMsg::Cookie(plain)) => {
                let sealed = self
                    .key
                    .seal(&self.binding, plain.as_bytes(), now + self.lifetime)
                    .map_err(Refusal::State)?;
                Ok(Relayed::Control(AsapMsg::Cookie(sealed)))
            }
            Frame::Control(other) => Err(Refusal::Unexpected {
                side: Side::Server,
                name: other.name(),
                allowed: "Cookie",
                header: header(&other),
            }),
            Frame::BadControl(error) => Err(Refusal::Malformed {
                side: Side::Server,
                error,
            }),
        }
    }
}

/// Why [`carry`] ended a session early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarryError {
    /// A frame was refused (see [`Refusal`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The next frame from `side`, a framing fault as a [`Refusal`]; `None` at its end.
async fn next<R: AsyncRead + Unpin>(r: &mut R, side: Side) -> Result<Option<Frame>, CarryError> {
    match session::read_frame(r).await {
        Ok(f) => Ok(f),
        Err(ChannelError::TooLong { ppid, len, max }) => Err(Refusal::TooLong {
            side,
            ppid,
            len,
            max,
        }
        .into()),
        Err(ChannelError::Io(e)) => Err(e.into()),
        Err(e) => Err(io::Error::other(e.to_string()).into()),
    }
}

/// Writes `frame`; the bytes written (header included).
async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Relayed) -> Result<u64, CarryError> {
    let written = match frame {
        Relayed::Data { ppid, payload } => session::write_data(w, *ppid, payload)
            .await
            .map(|()| payload.len()),
        Relayed::Control(msg) => {
            let len = msg.to_bytes().map_or(0, |b| b.len());
            session::write_control(w, msg).await.map(|()| len)
        }
    };
    match written {
        Ok(n) => Ok(8 + n as u64),
        Err(ChannelError::Io(e)) => Err(e.into()),
        Err(e) => Err(io::Error::other(e.to_string()).into()),
    }
}

/// Carries one session channel between the PU's stream `pu` and the server's `server`
/// until both directions have ended: `card` first to the PU, then each frame through
/// `relay` ([`Relay::from_pu`], [`Relay::from_server`]) at the time `clock` tells. The end
/// of one direction shuts down only the other side's writing (half-close, as for plain
/// streams). A [`Refusal`] ends both directions: the PU gets its ASAP_ERROR if it is the
/// one refused, and a clean close. Returns the bytes written each way, frame headers
/// included: (to the server, to the PU).
pub async fn carry<P, S>(
    pu: P,
    server: S,
    relay: &Relay<'_>,
    card: Option<AsapMsg>,
    clock: impl Fn() -> SystemTime,
) -> Result<(u64, u64), CarryError>
where
    P: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut pu_r, pu_w) = tokio::io::split(pu);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    // The PU's writing half is shared: the server's direction writes its frames, the
    // PU's direction only the ASAP_ERROR of a refusal.
    let pu_w = Mutex::new(pu_w);
    let mut to_pu = 0;
    if let Some(card) = card {
        to_pu += write(&mut *pu_w.lock().await, &Relayed::Control(card)).await?;
    }
    let from_pu = async {
        let mut n = 0u64;
        while let Some(frame) = next(&mut pu_r, Side::Pu).await? {
            match relay.from_pu(frame, clock()) {
                Ok(out) => n += write(&mut server_w, &out).await?,
                Err(refusal) => {
                    if let Some(answer) = refusal.answer_to_pu() {
                        // The session ends either way: a PU that stopped reading (the
                        // other direction blocked on it, holding the lock) does not keep
                        // it open.
                        let tell = async {
                            let mut w = pu_w.lock().await;
                            write(&mut *w, &Relayed::Control(answer)).await
                        };
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, tell).await;
                    }
                    return Err(refusal.into());
                }
            }
        }
        server_w.shutdown().await?;
        Ok::<_, CarryError>(n)
    };
    let from_server = async {
        let mut n = 0u64;
        while let Some(frame) = next(&mut server_r, Side::Server).await? {
            let out = relay.from_server(frame, clock())?;
            n += write(&mut *pu_w.lock().await, &out).await?;
        }
        pu_w.lock().await.shutdown().await?;
        Ok::<_, CarryError>(n)
    };
    let carried = tokio::try_join!(from_pu, from_server);
    if carried.is_err() {
        // close_notify: the PU sees the end of the session, not a truncation (bounded:
        // both directions are dropped, so the lock is free; the PU may not read).
        let close = async { pu_w.lock().await.shutdown().await };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
    let (to_server, back) = carried?;
    Ok((to_server, to_pu + back))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use tokio::io::{AsyncReadExt as _, DuplexStream};

    use super::*;
    use crate::client::session::{MAX_DATA_LEN, MAX_STATE_LEN};
    use crate::wire::limits::MAX_COOKIE_LEN;

    const PU: &str = "spiffe://acme.test/pu/client-1";

    fn key(b: u8) -> CookieKey {
        CookieKey::new(&[b; 32]).expect("key")
    }

    fn pool() -> PoolHandle {
        PoolHandle::new("web").expect("pool")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn control(msg: AsapMsg) -> Frame {
        Frame::Control(msg)
    }

    #[test]
    fn the_servers_plain_state_is_sealed_for_this_pu_and_the_echo_opened_back_to_it() {
        let (k, pool) = (key(1), pool());
        let binding = Binding {
            pool_handle: &pool,
            pool_user: PU,
        };
        let relay = Relay::new(&k, binding, Duration::from_secs(60));
        let state = Cookie::new(b"cart=3;user=ann").expect("state");
        let Ok(Relayed::Control(AsapMsg::Cookie(sealed))) =
            relay.from_server(control(AsapMsg::Cookie(state.clone())), at(1_000))
        else {
            panic!("the server's state is sealed");
        };
        // The PU holds a sealed cookie, not the state, bound to its identity and pool.
        assert_ne!(sealed.as_bytes(), state.as_bytes());
        assert_eq!(
            k.open(sealed.as_bytes(), &binding, at(1_059)),
            Ok(&b"cart=3;user=ann"[..])
        );
        // Echoed (at another PE of the pool, same key): the server gets the plain state.
        assert_eq!(
            relay
                .from_pu(control(AsapMsg::CookieEcho(sealed)), at(1_030))
                .expect("opened"),
            Relayed::Control(AsapMsg::CookieEcho(state))
        );
    }

    #[test]
    fn threat_t9_forged_expired_rebound_and_foreign_echoes_are_refused_with_security_rejection() {
        let (k, pool, other_pool) = (key(1), pool(), PoolHandle::new("db").expect("pool"));
        let binding = Binding {
            pool_handle: &pool,
            pool_user: PU,
        };
        let relay = Relay::new(&k, binding, Duration::from_secs(60));
        let later = at(2_000);
        let thief = Binding {
            pool_handle: &pool,
            pool_user: "spiffe://acme.test/pu/other",
        };
        let elsewhere = Binding {
            pool_handle: &other_pool,
            pool_user: PU,
        };
        let refused = [
            ("random bytes", Cookie::new([7u8; 100]).expect("cookie")),
            (
                "another key",
                key(2).seal(&binding, b"s", later).expect("seal"),
            ),
            ("another PU", k.seal(&thief, b"s", later).expect("seal")),
            (
                "another pool",
                k.seal(&elsewhere, b"s", later).expect("seal"),
            ),
            ("expired", k.seal(&binding, b"s", at(999)).expect("seal")),
            // The plain state itself, as a PU might try to send it.
            ("plain state", Cookie::new(b"cart=3").expect("cookie")),
        ];
        for (what, cookie) in refused {
            let refusal = relay
                .from_pu(control(AsapMsg::CookieEcho(cookie)), at(1_000))
                .expect_err(what);
            assert!(matches!(refusal, Refusal::Echo(_)), "{what}: {refusal:?}");
            let Some(AsapMsg::Error(e)) = refusal.answer_to_pu() else {
                panic!("{what}: the PU is told");
            };
            assert_eq!(e.causes()[0].code(), 0xA, "{what}");
        }
    }

    #[test]
    fn an_oversize_state_and_other_control_messages_are_refused_data_passes_unchanged() {
        let (k, pool) = (key(1), pool());
        let binding = Binding {
            pool_handle: &pool,
            pool_user: PU,
        };
        let relay = Relay::new(&k, binding, Duration::from_secs(60));
        // The largest state seals; one byte more is refused, and the PU is not told
        // (the server's fault: the session just ends).
        let largest = Cookie::new(vec![1; MAX_STATE_LEN]).expect("state");
        assert!(
            relay
                .from_server(control(AsapMsg::Cookie(largest)), at(1))
                .is_ok()
        );
        let over = Cookie::new(vec![1; MAX_STATE_LEN + 1]).expect("fits the wire cap");
        const { assert!(MAX_STATE_LEN < MAX_COOKIE_LEN) };
        let refusal = relay
            .from_server(control(AsapMsg::Cookie(over)), at(1))
            .expect_err("oversize");
        assert!(
            matches!(refusal, Refusal::State(CookieError::TooLarge { .. })),
            "{refusal:?}"
        );
        assert!(refusal.answer_to_pu().is_none());
        // A server may not speak for the PE (an error, an echo, a card); a PU may not send
        // a cookie (only echo one).
        let error = AsapMsg::Error(OperationError::single(ErrorCause::Unspecified));
        let echo = AsapMsg::CookieEcho(Cookie::new(b"x").expect("cookie"));
        for msg in [error.clone(), echo] {
            assert!(matches!(
                relay.from_server(control(msg), at(1)),
                Err(Refusal::Unexpected {
                    side: Side::Server,
                    ..
                })
            ));
        }
        for msg in [error, AsapMsg::Cookie(Cookie::new(b"x").expect("cookie"))] {
            let refusal = relay.from_pu(control(msg), at(1)).expect_err("refused");
            let Some(AsapMsg::Error(e)) = refusal.answer_to_pu() else {
                panic!("the PU is told");
            };
            assert_eq!(e.causes()[0].code(), 0x2, "{refusal}");
        }
        // Data, any PPID but 11, either way: unchanged.
        for ppid in [0, 51, u32::MAX] {
            let payload = vec![9u8; 1000];
            let frame = || Frame::Data {
                ppid,
                payload: payload.clone(),
            };
            let want = Relayed::Data {
                ppid,
                payload: payload.clone(),
            };
            assert_eq!(relay.from_pu(frame(), at(1)).expect("data"), want);
            assert_eq!(relay.from_server(frame(), at(1)).expect("data"), want);
        }
    }

    /// A frame's raw bytes.
    fn raw(ppid: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = ppid.to_be_bytes().to_vec();
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    async fn frame(r: &mut DuplexStream) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(5), session::read_frame(r))
            .await
            .expect("in time")
            .expect("a frame")
    }

    type Carrying = tokio::task::JoinHandle<Result<(u64, u64), CarryError>>;

    /// A session channel over in-memory streams: the PU's end, the server's end, and the
    /// carrying task.
    fn channel(k: Arc<CookieKey>, card: Option<AsapMsg>) -> (DuplexStream, DuplexStream, Carrying) {
        let (pu, pe_pu) = tokio::io::duplex(1 << 20);
        let (pe_server, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            let pool = pool();
            let binding = Binding {
                pool_handle: &pool,
                pool_user: PU,
            };
            let relay = Relay::new(&k, binding, Duration::from_secs(600));
            carry(pe_pu, pe_server, &relay, card, || at(1_000)).await
        });
        (pu, server, task)
    }

    #[tokio::test]
    async fn a_session_carries_data_both_ways_seals_the_state_and_half_closes() {
        let k = Arc::new(key(1));
        let card = AsapMsg::Error(OperationError::single(ErrorCause::Unspecified));
        let (mut pu, mut server, task) = channel(Arc::clone(&k), Some(card.clone()));
        // The card comes first.
        assert!(matches!(frame(&mut pu).await, Some(Frame::Control(m)) if m == card));
        session::write_data(&mut pu, 0, b"hello").await.expect("w");
        assert!(matches!(
            frame(&mut server).await,
            Some(Frame::Data { ppid: 0, payload }) if payload == b"hello"
        ));
        // The server's state, in raw bytes as a server in any language writes it:
        // ASAP_COOKIE (0x0B), a Cookie parameter (0x000D) holding "n=1", padded to 4.
        let cookie_msg = [0x0B, 0, 0, 12, 0x00, 0x0D, 0, 7, b'n', b'=', b'1', 0];
        server
            .write_all(&raw(session::PPID_ASAP, &cookie_msg))
            .await
            .expect("w");
        session::write_data(&mut server, 7, b"world")
            .await
            .expect("w");
        let Some(Frame::Control(AsapMsg::Cookie(sealed))) = frame(&mut pu).await else {
            panic!("a sealed cookie");
        };
        let pool = pool();
        let binding = Binding {
            pool_handle: &pool,
            pool_user: PU,
        };
        assert_eq!(
            k.open(sealed.as_bytes(), &binding, at(1_000)),
            Ok(&b"n=1"[..])
        );
        assert!(matches!(
            frame(&mut pu).await,
            Some(Frame::Data { ppid: 7, payload }) if payload == b"world"
        ));
        // Echoed back, it reaches the server as these bytes (docs/PROTOCOL-EXTENSIONS.md
        // §7): PPID 11, ASAP_COOKIE_ECHO (0x0C) with the plain "n=1".
        session::write_control(&mut pu, &AsapMsg::CookieEcho(sealed))
            .await
            .expect("w");
        let mut echo = [0u8; 20];
        server.read_exact(&mut echo).await.expect("r");
        assert_eq!(
            echo,
            [
                0, 0, 0, 11, 0, 0, 0, 12, 0x0C, 0, 0, 12, 0x00, 0x0D, 0, 7, b'n', b'=', b'1', 0
            ]
        );
        // The PU is done sending: the server sees the end, and can still answer.
        pu.shutdown().await.expect("half-close");
        assert!(frame(&mut server).await.is_none());
        session::write_data(&mut server, 0, b"bye")
            .await
            .expect("w");
        assert!(matches!(
            frame(&mut pu).await,
            Some(Frame::Data { payload, .. }) if payload == b"bye"
        ));
        drop(server);
        assert!(frame(&mut pu).await.is_none());
        let (to_server, to_pu) = task.await.expect("task").expect("carried");
        assert_eq!(to_server, 8 + 5 + 8 + 12);
        assert!(to_pu > 8 + 5 + 8 + 3, "{to_pu}");
    }

    #[tokio::test]
    async fn a_forged_echo_closes_the_session_with_an_error_and_the_server_gets_nothing() {
        let (mut pu, mut server, task) = channel(Arc::new(key(1)), None);
        let forged = key(2)
            .seal(
                &Binding {
                    pool_handle: &pool(),
                    pool_user: PU,
                },
                b"admin=1",
                at(5_000),
            )
            .expect("seal");
        session::write_control(&mut pu, &AsapMsg::CookieEcho(forged))
            .await
            .expect("w");
        let Some(Frame::Control(AsapMsg::Error(e))) = frame(&mut pu).await else {
            panic!("an ASAP_ERROR");
        };
        assert_eq!(e.causes()[0].code(), 0xA);
        assert!(frame(&mut pu).await.is_none(), "then the session is closed");
        assert!(matches!(
            task.await.expect("task"),
            Err(CarryError::Refused(Refusal::Echo(CookieError::Forged)))
        ));
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert!(got.is_empty(), "the server got {got:?}");
    }

    #[tokio::test]
    async fn a_pu_that_does_not_read_is_cut_off_at_a_refusal_within_the_close_timeout() {
        // The server floods the PU, which never reads: the server's direction blocks on
        // the PU (holding its writing half). The PU's forged echo still ends the session.
        let (pu, pe_pu) = tokio::io::duplex(4096);
        let (pe_server, mut server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            let (k, pool) = (key(1), pool());
            let binding = Binding {
                pool_handle: &pool,
                pool_user: PU,
            };
            let relay = Relay::new(&k, binding, Duration::from_secs(600));
            carry(pe_pu, pe_server, &relay, None, || at(1_000)).await
        });
        for _ in 0..16 {
            session::write_data(&mut server, 0, &[0; 16 * 1024])
                .await
                .expect("w");
        }
        // Let the PE carry until it blocks on the PU.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_pu_r, mut pu_w) = tokio::io::split(pu);
        let forged = Cookie::new([7u8; 100]).expect("cookie");
        session::write_control(&mut pu_w, &AsapMsg::CookieEcho(forged))
            .await
            .expect("w");
        let ended = tokio::time::timeout(CLOSE_TIMEOUT * 3, task)
            .await
            .expect("cut off, not held open")
            .expect("task");
        assert!(
            matches!(ended, Err(CarryError::Refused(Refusal::Echo(_)))),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn an_oversize_frame_from_the_server_ends_the_session() {
        let (mut pu, mut server, task) = channel(Arc::new(key(1)), None);
        let mut header = 0u32.to_be_bytes().to_vec();
        header.extend_from_slice(&((MAX_DATA_LEN + 1) as u32).to_be_bytes());
        server.write_all(&header).await.expect("w");
        assert!(frame(&mut pu).await.is_none(), "closed, nothing passed");
        assert!(matches!(
            task.await.expect("task"),
            Err(CarryError::Refused(Refusal::TooLong {
                side: Side::Server,
                ..
            }))
        ));
    }
}
