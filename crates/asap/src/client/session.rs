//! The session layer between a pool user and a pool element (spec §7.8, §12.7, threats
//! T-9 and T-16): authenticated session cookies and the framing that carries ASAP control
//! messages (Cookie, Cookie Echo, Business Card, Error) next to application data on the
//! PU ↔ PE TLS channel.
//!
//! - [`CookieKey`]: the pool key, shared by the pool's PEs, that seals a PE's session
//!   state into an ASAP Cookie and opens a Cookie Echo at whichever PE the PU fails over
//!   to. A cookie that is forged, sealed for another pool or pool user, expired, or over
//!   the size cap is refused with a [`CookieError`], and the caller changes nothing.
//! - [`read_frame`], [`write_control`], [`write_data`]: the spec §12.7 shim,
//!   `u32 PPID | u32 length | payload`, PPID [`PPID_ASAP`] for ASAP control messages.
//!
//! Only channels registered with Transport Use = data plus control carry these frames
//! (spec §7.8); a PU learns that from the PE's user transport in the resolution.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::wire::limits::{MAX_COOKIE_LEN, MAX_MESSAGE_LEN};
use crate::wire::param::{Cookie, PoolHandle};
use crate::wire::{AsapMsg, DecodeError, EncodeError};

/// PPID of an ASAP control message on a PU ↔ PE channel (spec §12.7: 11, the ASAP PPID).
pub const PPID_ASAP: u32 = 11;

/// Largest application payload in one frame. A longer one is a framing fault: bounded
/// memory per session, like [`MAX_MESSAGE_LEN`] for control messages.
pub const MAX_DATA_LEN: usize = 64 * 1024;

/// Shortest pool key accepted: the HMAC-SHA256 output size (RFC 2104 §3 recommends a key
/// at least as long as the hash output).
pub const MIN_KEY_LEN: usize = 32;

/// How long a cookie stays valid by default: long enough for a session to sit idle
/// between requests, short enough that a leaked cookie is soon worthless (threat T-8).
pub const DEFAULT_COOKIE_LIFETIME: Duration = Duration::from_secs(600);

const VERSION: u8 = 1;
/// Version (1), three reserved bytes, expiry (u64 seconds since the Unix epoch).
const HEADER_LEN: usize = 12;
const TAG_LEN: usize = 32; // HMAC-SHA256
/// Largest session state a cookie carries: the cookie cap ([`MAX_COOKIE_LEN`], spec §3.5,
/// T-16) minus the header and the tag.
pub const MAX_STATE_LEN: usize = MAX_COOKIE_LEN - HEADER_LEN - TAG_LEN;
/// Domain separation: this key's MACs mean nothing outside rsp session cookies.
const CONTEXT: &[u8] = b"rsp session cookie v1";

/// Why a cookie was not sealed or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// The pool key is shorter than [`MIN_KEY_LEN`].
    #[error("the pool cookie key has {len} bytes; at least {min} are needed")]
    KeyTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The state does not fit in a cookie (seal), or the cookie is over the cap (open).
    #[error("{what} of {len} bytes exceeds the cap of {max}")]
    TooLarge {
        /// "session state" or "cookie".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Too short to hold a header and a tag.
    #[error("cookie of {len} bytes is too short to be a session cookie")]
    Malformed {
        /// Its length.
        len: usize,
    },
    /// The tag does not verify: forged, altered, sealed under another pool key, or
    /// sealed for another pool or another pool user (the binding is part of the MAC).
    #[error("cookie is not authentic for this pool and pool user (forged or altered)")]
    Forged,
    /// Authentic but of a version this PE does not know.
    #[error("cookie version {0} is not supported")]
    Version(u8),
    /// Authentic but past its expiry.
    #[error("cookie expired {ago_secs} s ago")]
    Expired {
        /// How long ago.
        ago_secs: u64,
    },
}

/// What a cookie is bound to (spec §7.8 "session binding"): the pool, and the pool
/// user's authenticated identity (the SPIFFE ID of its TLS certificate). A cookie echoed
/// by another PU, or in another pool sharing the key, does not verify.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// The pool.
    pub pool_handle: &'a PoolHandle,
    /// The pool user's identity.
    pub pool_user: &'a str,
}

/// The pool's cookie key (HMAC-SHA256), shared by all PEs of the pool.
pub struct CookieKey {
    key: hmac::Key,
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

impl CookieKey {
    /// A key from secret bytes, at least [`MIN_KEY_LEN`] of them.
    pub fn new(secret: &[u8]) -> Result<Self, CookieError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(CookieError::KeyTooShort {
                len: secret.len(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A key from a file holding the secret bytes as they are (e.g.
    /// `head -c 32 /dev/urandom > pool.key`).
    pub fn from_file(path: &Path) -> Result<Self, super::Error> {
        let bytes = super::read(path)?;
        Self::new(&bytes).map_err(|e| super::Error::File {
            path: path.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    /// What the MAC covers: a context label, the binding, and the cookie body.
    fn mac_input(binding: &Binding<'_>, body: &[u8]) -> Vec<u8> {
        let pool = binding.pool_handle.as_bytes();
        let user = binding.pool_user.as_bytes();
        let mut m = Vec::with_capacity(CONTEXT.len() + 8 + pool.len() + user.len() + body.len());
        m.extend_from_slice(CONTEXT);
        // Length-prefixed so that (pool, user) pairs cannot be shifted into each other.
        m.extend_from_slice(&(pool.len() as u32).to_be_bytes());
        m.extend_from_slice(pool);
        m.extend_from_slice(&(user.len() as u32).to_be_bytes());
        m.extend_from_slice(user);
        m.extend_from_slice(body);
        m
    }

    /// Seals `state` into a cookie valid until `expires`, bound to `binding`.
    pub fn seal(
        &self,
        binding: &Binding<'_>,
        state: &[u8],
        expires: SystemTime,
    ) -> Result<Cookie, CookieError> {
        if state.len() > MAX_STATE_LEN {
            return Err(CookieError::TooLarge {
                what: "session state",
                len: state.len(),
                max: MAX_STATE_LEN,
            });
        }
        let expiry = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut bytes = Vec::with_capacity(HEADER_LEN + state.len() + TAG_LEN);
        bytes.extend_from_slice(&[VERSION, 0, 0, 0]);
        bytes.extend_from_slice(&expiry.to_be_bytes());
        bytes.extend_from_slice(state);
        let tag = hmac::sign(&self.key, &Self::mac_input(binding, &bytes));
        bytes.extend_from_slice(tag.as_ref());
        Ok(Cookie::new(bytes).expect("the state cap keeps the cookie within MAX_COOKIE_LEN"))
    }

    /// The session state in `cookie`, if it is authentic for `binding` and not expired
    /// at `now`. Checks in this order: size cap, tag (constant time, before any field is
    /// believed), version, expiry.
    pub fn open<'c>(
        &self,
        cookie: &'c [u8],
        binding: &Binding<'_>,
        now: SystemTime,
    ) -> Result<&'c [u8], CookieError> {
        if cookie.len() > MAX_COOKIE_LEN {
            return Err(CookieError::TooLarge {
                what: "cookie",
                len: cookie.len(),
                max: MAX_COOKIE_LEN,
            });
        }
        if cookie.len() < HEADER_LEN + TAG_LEN {
            return Err(CookieError::Malformed { len: cookie.len() });
        }
        let (body, tag) = cookie.split_at(cookie.len() - TAG_LEN);
        // hmac::verify compares the tags in constant time.
        hmac::verify(&self.key, &Self::mac_input(binding, body), tag)
            .map_err(|_| CookieError::Forged)?;
        if body[0] != VERSION {
            return Err(CookieError::Version(body[0]));
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&body[4..12]);
        let expiry = u64::from_be_bytes(expiry);
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now >= expiry {
            return Err(CookieError::Expired {
                ago_secs: now - expiry,
            });
        }
        Ok(&body[HEADER_LEN..])
    }
}

/// One frame of a PU ↔ PE channel (spec §12.7). Exhaustive: the shim has only these.
#[derive(Debug)]
pub enum Frame {
    /// An ASAP control message (PPID 11).
    Control(AsapMsg),
    /// A PPID 11 frame that does not decode: an ordinary protocol error (spec §7.9), to
    /// be answered with ASAP_ERROR carrying [`DecodeError::cause`]; the channel stays up.
    BadControl(DecodeError),
    /// Application data (any other PPID).
    Data {
        /// The PPID.
        ppid: u32,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// Why a channel failed. Every variant ends the channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The stream failed (the cause is the error's source).
    #[error("channel")]
    Io(#[from] io::Error),
    /// A frame longer than allowed (a framing fault, spec §12.2: close without reply).
    #[error("frame with PPID {ppid} of {len} bytes exceeds the cap of {max}")]
    TooLong {
        /// The PPID.
        ppid: u32,
        /// The announced length.
        len: u32,
        /// The cap.
        max: usize,
    },
    /// A control message could not be encoded (the cause is the error's source).
    #[error("encode")]
    Encode(#[from] EncodeError),
}

/// Reads the next frame; `None` at a clean end of stream. Not cancel-safe.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ChannelError> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let ppid = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let max = if ppid == PPID_ASAP {
        MAX_MESSAGE_LEN
    } else {
        MAX_DATA_LEN
    };
    if len as usize > max {
        return Err(ChannelError::TooLong { ppid, len, max });
    }
    let mut payload = vec![0; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some(if ppid == PPID_ASAP {
        match AsapMsg::decode(&payload) {
            Ok(d) => Frame::Control(d.msg),
            Err(e) => Frame::BadControl(e),
        }
    } else {
        Frame::Data { ppid, payload }
    }))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    ppid: u32,
    payload: &[u8],
) -> Result<(), ChannelError> {
    let mut buf = Vec::with_capacity(8 + payload.len());
    buf.extend_from_slice(&ppid.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    // One write per frame (spec §12.2's rule for messages).
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Writes an ASAP control message (PPID 11).
pub async fn write_control<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &AsapMsg,
) -> Result<(), ChannelError> {
    write_frame(w, PPID_ASAP, &msg.to_bytes()?).await
}

/// Writes application data with `ppid` (not [`PPID_ASAP`]), at most [`MAX_DATA_LEN`].
pub async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    ppid: u32,
    payload: &[u8],
) -> Result<(), ChannelError> {
    if ppid == PPID_ASAP || payload.len() > MAX_DATA_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "application data must use another PPID than 11 and fit in MAX_DATA_LEN",
        )
        .into());
    }
    write_frame(w, ppid, payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> CookieKey {
        CookieKey::new(&[b; 32]).expect("key")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn pool() -> PoolHandle {
        PoolHandle::new("counter").expect("pool")
    }

    #[test]
    fn a_sealed_cookie_opens_under_the_same_key_binding_and_time() {
        let pool = pool();
        let b = Binding {
            pool_handle: &pool,
            pool_user: "spiffe://acme.test/pu/a",
        };
        let c = key(1).seal(&b, b"count=7", at(1_000)).expect("seal");
        assert_eq!(key(1).open(c.as_bytes(), &b, at(999)), Ok(&b"count=7"[..]));
    }

    #[test]
    fn threat_t9_forged_altered_rebound_and_stale_cookies_are_refused() {
        let pool = pool();
        let other_pool = PoolHandle::new("other").expect("pool");
        let b = Binding {
            pool_handle: &pool,
            pool_user: "spiffe://acme.test/pu/a",
        };
        let c = key(1).seal(&b, b"count=7", at(1_000)).expect("seal");
        // Another key.
        assert_eq!(
            key(2).open(c.as_bytes(), &b, at(10)),
            Err(CookieError::Forged)
        );
        // One bit flipped anywhere, the expiry included.
        for i in 0..c.as_bytes().len() {
            let mut bytes = c.as_bytes().to_vec();
            bytes[i] ^= 1;
            assert_eq!(
                key(1).open(&bytes, &b, at(10)),
                Err(CookieError::Forged),
                "byte {i}"
            );
        }
        // Echoed by another PU, or in another pool.
        let thief = Binding {
            pool_handle: &pool,
            pool_user: "spiffe://acme.test/pu/b",
        };
        assert_eq!(
            key(1).open(c.as_bytes(), &thief, at(10)),
            Err(CookieError::Forged)
        );
        let elsewhere = Binding {
            pool_handle: &other_pool,
            pool_user: b.pool_user,
        };
        assert_eq!(
            key(1).open(c.as_bytes(), &elsewhere, at(10)),
            Err(CookieError::Forged)
        );
        // Stale.
        assert_eq!(
            key(1).open(c.as_bytes(), &b, at(1_005)),
            Err(CookieError::Expired { ago_secs: 5 })
        );
        // Too short, too long.
        assert_eq!(
            key(1).open(&[1; 10], &b, at(10)),
            Err(CookieError::Malformed { len: 10 })
        );
        assert!(matches!(
            key(1).open(&vec![0; MAX_COOKIE_LEN + 1], &b, at(10)),
            Err(CookieError::TooLarge { .. })
        ));
    }

    #[test]
    fn state_is_capped_so_that_the_cookie_fits_the_wire_limit() {
        let pool = pool();
        let b = Binding {
            pool_handle: &pool,
            pool_user: "u",
        };
        let c = key(1)
            .seal(&b, &[7; MAX_STATE_LEN], at(5))
            .expect("largest state");
        assert_eq!(c.as_bytes().len(), MAX_COOKIE_LEN);
        assert!(matches!(
            key(1).seal(&b, &[7; MAX_STATE_LEN + 1], at(5)),
            Err(CookieError::TooLarge { .. })
        ));
        assert!(matches!(
            CookieKey::new(&[0; 31]),
            Err(CookieError::KeyTooShort { len: 31, min: 32 })
        ));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversize_frames_are_framing_faults() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let msg = AsapMsg::CookieEcho(Cookie::new([1, 2, 3, 4]).expect("cookie"));
        write_control(&mut a, &msg).await.expect("write");
        write_data(&mut a, 0, b"hello").await.expect("write");
        // A PPID 11 frame that is not a message: reported, the channel goes on.
        write_frame(&mut a, PPID_ASAP, &[0, 0, 0, 3])
            .await
            .expect("write");
        assert!(matches!(
            read_frame(&mut b).await.expect("read"),
            Some(Frame::Control(m)) if m == msg
        ));
        assert!(matches!(
            read_frame(&mut b).await.expect("read"),
            Some(Frame::Data { ppid: 0, payload }) if payload == b"hello"
        ));
        assert!(matches!(
            read_frame(&mut b).await.expect("read"),
            Some(Frame::BadControl(_))
        ));
        let mut header = 0u32.to_be_bytes().to_vec();
        header.extend_from_slice(&((MAX_DATA_LEN + 1) as u32).to_be_bytes());
        a.write_all(&header).await.expect("write");
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ChannelError::TooLong { .. })
        ));
        assert!(write_data(&mut a, PPID_ASAP, b"x").await.is_err());
        drop(a);
        assert!(read_frame(&mut b).await.expect("clean end").is_none());
    }
}
