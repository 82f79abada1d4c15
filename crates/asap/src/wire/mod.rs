//! The RSerPool wire codec (spec §3–§8, §12): bytes ↔ typed messages.
//!
//! - [`asap`] and [`enrp`]: the two protocols' messages, [`AsapMsg`] and [`EnrpMsg`]
//!   (re-exported here): every message of spec §6.1 and §8.1, with
//!   `decode(&[u8]) -> Result<Decoded<_>, DecodeError>` for one whole message and
//!   `encode(&self, &mut Vec<u8>) -> Result<(), EncodeError>` (fails only on message-level
//!   rules such as the 65532-byte maximum; parameters always encode).
//! - [`param`]: every RFC 5354 parameter and the project parameters (spec §4, §12.9),
//!   each a typed value built by a checked constructor.
//! - [`Framer`]: cuts a TCP byte stream into messages (spec §12.2).
//! - [`DecodeError`]: where the input is wrong, and the error cause to answer with.
//! - [`Reader`] / [`Writer`]: the TLV primitives everything above is written with.
//!
//! Pure: no I/O, no clock. Decoding never panics and allocates no more than the message
//! it was given.
//!
//! What a receiver does with the result of `decode` (spec §3.3, §3.4, §7.9, §12.2):
//!
//! | result | action |
//! |--------|--------|
//! | `Ok(d)` | process `d.msg`; report each of `d.unrecognized` (cause 0x1) in the response, or in an ASAP_ERROR / ENRP_ERROR |
//! | `Err(e)`, [`e.is_framing()`](DecodeError::is_framing) | close the connection without reply |
//! | `Err(e)`, [`e.cause()`](DecodeError::cause) is `None` | discard the message silently, keep the connection |
//! | `Err(e)`, `e.cause()` is `Some(c)` | answer with `c` (in the response if the message has one, else in an error message), keep the connection; never answer an error message with an error |

pub mod asap;
pub mod enrp;
mod error;
mod framer;
pub mod limits;
mod names;
pub mod param;
mod reader;
mod rejection;
mod writer;

#[cfg(test)]
mod tests;

pub use asap::{AsapMsg, PeEntry, Resolution};
pub use enrp::{EnrpBody, EnrpMsg, PoolEntries, UpdateAction};
pub use error::{DecodeError, DecodeErrorKind, EncodeError};
pub use framer::Framer;
pub use reader::{Params, RawParam, Reader};
pub use rejection::rejection;
pub use writer::Writer;

/// A Message Type (spec §3.1, §6.1, §8.1). The same number means different things in
/// ASAP and ENRP; the connection decides which protocol applies (spec §12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgType(pub u8);

impl MsgType {
    /// ASAP_REGISTRATION.
    pub const ASAP_REGISTRATION: Self = Self(0x01);
    /// ASAP_DEREGISTRATION.
    pub const ASAP_DEREGISTRATION: Self = Self(0x02);
    /// ASAP_REGISTRATION_RESPONSE.
    pub const ASAP_REGISTRATION_RESPONSE: Self = Self(0x03);
    /// ASAP_DEREGISTRATION_RESPONSE.
    pub const ASAP_DEREGISTRATION_RESPONSE: Self = Self(0x04);
    /// ASAP_HANDLE_RESOLUTION.
    pub const ASAP_HANDLE_RESOLUTION: Self = Self(0x05);
    /// ASAP_HANDLE_RESOLUTION_RESPONSE.
    pub const ASAP_HANDLE_RESOLUTION_RESPONSE: Self = Self(0x06);
    /// ASAP_ENDPOINT_KEEP_ALIVE.
    pub const ASAP_ENDPOINT_KEEP_ALIVE: Self = Self(0x07);
    /// ASAP_ENDPOINT_KEEP_ALIVE_ACK.
    pub const ASAP_ENDPOINT_KEEP_ALIVE_ACK: Self = Self(0x08);
    /// ASAP_ENDPOINT_UNREACHABLE.
    pub const ASAP_ENDPOINT_UNREACHABLE: Self = Self(0x09);
    /// ASAP_SERVER_ANNOUNCE.
    pub const ASAP_SERVER_ANNOUNCE: Self = Self(0x0A);
    /// ASAP_COOKIE.
    pub const ASAP_COOKIE: Self = Self(0x0B);
    /// ASAP_COOKIE_ECHO.
    pub const ASAP_COOKIE_ECHO: Self = Self(0x0C);
    /// ASAP_BUSINESS_CARD.
    pub const ASAP_BUSINESS_CARD: Self = Self(0x0D);
    /// ASAP_ERROR.
    pub const ASAP_ERROR: Self = Self(0x0E);
    /// ENRP_PRESENCE.
    pub const ENRP_PRESENCE: Self = Self(0x01);
    /// ENRP_HANDLE_TABLE_REQUEST.
    pub const ENRP_HANDLE_TABLE_REQUEST: Self = Self(0x02);
    /// ENRP_HANDLE_TABLE_RESPONSE.
    pub const ENRP_HANDLE_TABLE_RESPONSE: Self = Self(0x03);
    /// ENRP_HANDLE_UPDATE.
    pub const ENRP_HANDLE_UPDATE: Self = Self(0x04);
    /// ENRP_LIST_REQUEST.
    pub const ENRP_LIST_REQUEST: Self = Self(0x05);
    /// ENRP_LIST_RESPONSE.
    pub const ENRP_LIST_RESPONSE: Self = Self(0x06);
    /// ENRP_INIT_TAKEOVER.
    pub const ENRP_INIT_TAKEOVER: Self = Self(0x07);
    /// ENRP_INIT_TAKEOVER_ACK.
    pub const ENRP_INIT_TAKEOVER_ACK: Self = Self(0x08);
    /// ENRP_TAKEOVER_SERVER.
    pub const ENRP_TAKEOVER_SERVER: Self = Self(0x09);
    /// ENRP_ERROR.
    pub const ENRP_ERROR: Self = Self(0x0A);
}

/// Checks the header of one whole message (spec §3.1, §12.2) and returns a reader over
/// it positioned after the 4-byte header, with the type and flags. Every fault here is a
/// framing fault (close without reply).
pub(crate) fn open_message(buf: &[u8]) -> Result<(MsgType, u8, Reader<'_>), DecodeError> {
    use DecodeErrorKind as K;
    if buf.len() < 4 {
        return Err(DecodeError::framing(0, K::Truncated { need: 4 }));
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len < 4 || !len.is_multiple_of(4) {
        return Err(DecodeError::framing(2, K::BadLength { len }));
    }
    if len > buf.len() {
        return Err(DecodeError::framing(0, K::Truncated { need: len }));
    }
    if len < buf.len() {
        return Err(DecodeError::framing(len, K::TrailingBytes));
    }
    let mut r = Reader::new(buf);
    r.take(4)?;
    Ok((MsgType(buf[0]), buf[1], r))
}

/// Runs a message writer, then checks the encoded size against
/// [`limits::MAX_MESSAGE_LEN`]: one pass (a counting pass first doubled the cost of every
/// message sent, issue 20). A message too long is taken out again, so that `out` ends as
/// it began.
pub(crate) fn encode_checked(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Writer<'_>),
) -> Result<(), EncodeError> {
    let start = out.len();
    write(&mut Writer::new(out));
    let len = out.len() - start;
    if len > limits::MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong {
            len,
            max: limits::MAX_MESSAGE_LEN,
        });
    }
    Ok(())
}

/// A decoded message and the parameters the receiver must report as unrecognized
/// (action bits `11`, spec §3.3): in the response to the message if it has one,
/// otherwise in an ASAP_ERROR / ENRP_ERROR (see [`param::UnknownParam::cause`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<M> {
    /// The message (or parameter).
    pub msg: M,
    /// Skipped parameters to report, in message order.
    pub unrecognized: Vec<param::UnknownParam>,
}
