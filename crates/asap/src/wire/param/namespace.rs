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

use super::{Namespace, Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::limits::MAX_NAMESPACE_LEN;
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

/// A parameter whose value is an identity as UTF-8 text (a SPIFFE ID, not parsed here):
/// non-empty, bounded, shown with control characters
/// escaped so that logs cannot be forged (the bound:
/// [`MAX_REGISTRANT_IDENTITY_LEN`](crate::wire::limits::MAX_REGISTRANT_IDENTITY_LEN)).
/// Registrant Identity (0x8101) and Serving
/// Identity (0x8105, `serving.rs`) are two of them.
macro_rules! identity_param {
    ($(#[$doc:meta])* $name:ident, $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Box<str>);

        impl $name {
            /// `None` when empty or longer than
            /// [`MAX_REGISTRANT_IDENTITY_LEN`](crate::wire::limits::MAX_REGISTRANT_IDENTITY_LEN)
            /// bytes.
            pub fn new(id: &str) -> Option<Self> {
                (!id.is_empty() && id.len() <= $crate::wire::limits::MAX_REGISTRANT_IDENTITY_LEN)
                    .then(|| Self(id.into()))
            }

            /// The identity as sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        /// Control characters are escaped so logs cannot be forged.
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0.escape_debug())
            }
        }

        impl $crate::wire::param::Param for $name {
            fn param_type(&self) -> $crate::wire::param::ParamType {
                $crate::wire::param::ParamType::$ty
            }

            fn is_type(ty: $crate::wire::param::ParamType) -> bool {
                ty == $crate::wire::param::ParamType::$ty
            }

            fn write_value(&self, w: &mut $crate::wire::writer::Writer<'_>) {
                w.bytes(self.0.as_bytes());
            }

            fn read_value(
                p: &$crate::wire::reader::RawParam<'_>,
                r: &mut $crate::wire::reader::Reader<'_>,
                _: &mut Vec<$crate::wire::param::UnknownParam>,
            ) -> Result<Self, $crate::wire::error::DecodeError> {
                let max = $crate::wire::limits::MAX_REGISTRANT_IDENTITY_LEN;
                let at = r.offset();
                let b = r.rest();
                if b.len() > max {
                    return Err($crate::wire::error::DecodeError::with_tlv(
                        at,
                        $crate::wire::error::DecodeErrorKind::Limit {
                            what: concat!($what, " length"),
                            max,
                        },
                        p.tlv(),
                    ));
                }
                let s = std::str::from_utf8(b)
                    .map_err(|_| p.invalid(at, concat!($what, " not UTF-8")))?;
                Self::new(s).ok_or_else(|| p.invalid(at, concat!("empty ", $what)))
            }
        }
    };
}
pub(super) use identity_param;

identity_param!(
    /// The identity (a SPIFFE ID, not parsed here) that registered a PE (spec §12.9):
    /// non-empty UTF-8 of at most 2048 bytes.
    RegistrantIdentity,
    REGISTRANT_IDENTITY,
    "registrant identity"
);
