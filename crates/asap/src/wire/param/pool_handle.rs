//! Pool Handle parameter (0x0009). Spec §4.1, §3.5; RFC 5354 §3.9.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x0009           |         Length = 4 + n        |
//! +-------------------------------+-------------------------------+
//! :                  Pool Handle bytes (padded to 4)              :
//! +---------------------------------------------------------------+
//! ```

use super::{Param, ParamType, PoolHandle, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// The pool handle's wire encoding; the type and its rules (1 to
/// [`PoolHandle::MAX_LEN`] bytes) are [`identity::PoolHandle`]'s (issue 24). The only way
/// to build one is its checked constructor, so an invalid handle never leaves the codec.
impl Param for PoolHandle {
    fn param_type(&self) -> ParamType {
        ParamType::POOL_HANDLE
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::POOL_HANDLE
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.bytes(self.as_bytes());
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let b = r.rest();
        if b.is_empty() {
            return Err(p.invalid(at, "empty pool handle"));
        }
        Self::new(b).ok_or_else(|| {
            DecodeError::with_tlv(
                at,
                DecodeErrorKind::Limit {
                    what: "pool handle length",
                    max: Self::MAX_LEN,
                },
                p.tlv(),
            )
        })
    }
}
