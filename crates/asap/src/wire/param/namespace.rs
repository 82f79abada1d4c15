//! Project parameters Namespace (0x8100) and Registrant Identity (0x8101). Spec §12.9.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |   Type = 0x8100 / 0x8101      |         Length = 4 + n        |
//! +-------------------------------+-------------------------------+
//! :                UTF-8 text (padded to 4)                       :
//! +---------------------------------------------------------------+
//! ```
//! Both have action bits `10`: implementations that do not know them (rsplib) skip them.

use std::fmt;

use super::{Namespace, Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::limits::{MAX_NAMESPACE_LEN, MAX_REGISTRANT_IDENTITY_LEN};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// The namespace's wire encoding; the type, its rules and its text forms are
/// [`identity::Namespace`]'s (one name per concept, issue 24).
impl Param for Namespace {
    fn param_type(&self) -> ParamType {
        ParamType::NAMESPACE
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::NAMESPACE
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.bytes(self.as_str().as_bytes());
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let b = r.rest();
        if b.is_empty() {
            return Err(p.invalid(at, "empty namespace"));
        }
        if b.len() > MAX_NAMESPACE_LEN {
            return Err(DecodeError::with_tlv(
                at,
                DecodeErrorKind::Limit {
                    what: "namespace length",
                    max: MAX_NAMESPACE_LEN,
                },
                p.tlv(),
            ));
        }
        match std::str::from_utf8(b).ok().and_then(Self::new) {
            Some(ns) => Ok(ns),
            None => Err(p.invalid(at, "namespace characters other than a-z 0-9 - .")),
        }
    }
}

/// The identity (a SPIFFE ID, not parsed here) that registered a PE (spec §12.9):
/// non-empty UTF-8 of at most [`MAX_REGISTRANT_IDENTITY_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistrantIdentity(Box<str>);

impl RegistrantIdentity {
    /// `None` when empty or longer than [`MAX_REGISTRANT_IDENTITY_LEN`] bytes.
    pub fn new(id: &str) -> Option<Self> {
        (!id.is_empty() && id.len() <= MAX_REGISTRANT_IDENTITY_LEN).then(|| Self(id.into()))
    }

    /// The identity as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RegistrantIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistrantIdentity({:?})", self.0)
    }
}

/// Control characters are escaped so logs cannot be forged.
impl fmt::Display for RegistrantIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

impl Param for RegistrantIdentity {
    fn param_type(&self) -> ParamType {
        ParamType::REGISTRANT_IDENTITY
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::REGISTRANT_IDENTITY
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
                    what: "registrant identity length",
                    max: MAX_REGISTRANT_IDENTITY_LEN,
                },
                p.tlv(),
            ));
        }
        let s =
            std::str::from_utf8(b).map_err(|_| p.invalid(at, "registrant identity not UTF-8"))?;
        Self::new(s).ok_or_else(|| p.invalid(at, "empty registrant identity"))
    }
}
