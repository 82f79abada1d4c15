//! Cookie parameter (0x000D). Spec §4.1, §7.8, §3.5; RFC 5354 §3.13.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x000D           |         Length = 4 + n        |
//! +-------------------------------+-------------------------------+
//! :                  Cookie bytes (padded to 4)                   :
//! +---------------------------------------------------------------+
//! ```

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::limits::MAX_COOKIE_LEN;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// Opaque PE session state, at most [`MAX_COOKIE_LEN`] bytes (spec §3.5, threat T-16).
/// The codec does not interpret it; the receiving PE must authenticate it (spec §7.8).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cookie(Box<[u8]>);

impl Cookie {
    /// `None` when longer than [`MAX_COOKIE_LEN`].
    pub fn new(bytes: impl AsRef<[u8]>) -> Option<Self> {
        let b = bytes.as_ref();
        (b.len() <= MAX_COOKIE_LEN).then(|| Self(b.into()))
    }

    /// The cookie bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Param for Cookie {
    fn param_type(&self) -> ParamType {
        ParamType::COOKIE
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::COOKIE
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.bytes(&self.0);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        Self::new(r.rest()).ok_or_else(|| {
            DecodeError::with_tlv(
                at,
                DecodeErrorKind::Limit {
                    what: "cookie length",
                    max: MAX_COOKIE_LEN,
                },
                p.tlv(),
            )
        })
    }
}
