//! Pool Handle parameter (0x0009). Spec §4.1, §3.5; RFC 5354 §3.9.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x0009           |         Length = 4 + n        |
//! +-------------------------------+-------------------------------+
//! :                  Pool Handle bytes (padded to 4)              :
//! +---------------------------------------------------------------+
//! ```

use std::fmt;

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// The name of a pool: an opaque byte string of 1 to 32 bytes, compared byte for byte.
///
/// Spec §1, §3.5: the RFCs set no maximum; rsplib's `MAX_POOLHANDLESIZE` (32) is ours too.
/// The only way to build one is [`PoolHandle::new`], so an invalid handle never leaves the
/// codec.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolHandle(Box<[u8]>);

impl PoolHandle {
    /// Longest pool handle accepted (spec §3.5).
    pub const MAX_LEN: usize = 32;

    /// A pool handle from its bytes; `None` when empty or longer than [`Self::MAX_LEN`].
    pub fn new(bytes: impl AsRef<[u8]>) -> Option<Self> {
        let bytes = bytes.as_ref();
        (!bytes.is_empty() && bytes.len() <= Self::MAX_LEN).then(|| Self(bytes.into()))
    }

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolHandle({self})")
    }
}

/// Printable bytes as they are, others as `\xNN`, so logs cannot be forged with newlines.
impl fmt::Display for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.iter() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl Param for PoolHandle {
    fn param_type(&self) -> ParamType {
        ParamType::POOL_HANDLE
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::POOL_HANDLE
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
