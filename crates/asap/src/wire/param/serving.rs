//! Project parameter Serving Identity (0x8105), docs/PROTOCOL-EXTENSIONS.md §6.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x8105           |         Length = 4 + n        |
//! +-------------------------------+-------------------------------+
//! :  SPIFFE ID of the server that terminates the PUs' TLS (UTF-8)  :
//! +---------------------------------------------------------------+
//! ```
//! Action bits `10` (skip if unknown). Inside the Pool Element parameter, after PE Status:
//! a PE registered with `rsp pe --advertise` names the identity its server's certificate
//! carries; the registrar checks that the PE's own identity may vouch for it, and pool
//! users insist on it instead of the registrant (0x8101) when they connect.

use std::fmt;

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::limits::MAX_REGISTRANT_IDENTITY_LEN;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// The identity a PE's server presents to pool users, when it is not the PE's own (a
/// server that terminates TLS itself): 1 to 2048 bytes, as a registrant identity.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServingIdentity(Box<str>);

impl ServingIdentity {
    /// `None` when empty or longer than 2048 bytes.
    pub fn new(id: &str) -> Option<Self> {
        (!id.is_empty() && id.len() <= MAX_REGISTRANT_IDENTITY_LEN).then(|| Self(id.into()))
    }

    /// The identity as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ServingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServingIdentity({:?})", self.0)
    }
}

/// Control characters are escaped so logs cannot be forged.
impl fmt::Display for ServingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

impl Param for ServingIdentity {
    fn param_type(&self) -> ParamType {
        ParamType::SERVING_IDENTITY
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::SERVING_IDENTITY
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.bytes(self.0.as_bytes());
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let b = r.rest();
        if b.len() > MAX_REGISTRANT_IDENTITY_LEN {
            return Err(DecodeError::with_tlv(
                at,
                DecodeErrorKind::Limit {
                    what: "serving identity length",
                    max: MAX_REGISTRANT_IDENTITY_LEN,
                },
                p.tlv(),
            ));
        }
        let s = std::str::from_utf8(b).map_err(|_| p.invalid(at, "serving identity not UTF-8"))?;
        Self::new(s).ok_or_else(|| p.invalid(at, "empty serving identity"))
    }
}
