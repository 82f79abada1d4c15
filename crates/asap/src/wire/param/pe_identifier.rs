//! Small fixed-size parameters: PE Identifier (0x000E), PE Checksum (0x000F) and the
//! Handle Resolution Option (0x803F). Spec §4.1, §4.6, §4.8.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x000E           |          Length = 8           |
//! +-------------------------------+-------------------------------+
//! |                        PE Identifier                          |
//! +---------------------------------------------------------------+
//!
//! +-------------------------------+-------------------------------+
//! |       Type = 0x000F           |          Length = 6           |
//! +-------------------------------+-------------------------------+
//! |          PE Checksum          |      Padding (2 bytes)        |
//! +-------------------------------+-------------------------------+
//!
//! +-------------------------------+-------------------------------+
//! |       Type = 0x803F           |          Length = 8           |
//! +-------------------------------+-------------------------------+
//! |                            Items                              |
//! +---------------------------------------------------------------+
//! ```

use super::{Param, ParamType, PeId, UnknownParam};
use crate::wire::error::DecodeError;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// The PE Identifier parameter is a [`PeId`] (never 0, spec §4.4).
impl Param for PeId {
    fn param_type(&self) -> ParamType {
        ParamType::PE_IDENTIFIER
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::PE_IDENTIFIER
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u32(self.get());
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        super::fixed_len(p, 4, "PE identifier length must be 8")?;
        let at = r.offset();
        Self::new(r.u32()?).ok_or_else(|| p.invalid(at, "PE identifier 0"))
    }
}

/// PE Checksum (0x000F): the checksum of the PEs the sender owns (spec §4.6, §9.6).
/// Length is 6, followed by 2 padding bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeChecksum(pub u16);

impl Param for PeChecksum {
    fn param_type(&self) -> ParamType {
        ParamType::PE_CHECKSUM
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::PE_CHECKSUM
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u16(self.0);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        super::fixed_len(p, 2, "PE checksum length must be 6")?;
        Ok(Self(r.u16()?))
    }
}

/// Handle Resolution Option (0x803F): how many PEs the pool user wants (spec §4.8).
/// Action bits `10`: registrars that do not know it skip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandleResolutionOption {
    /// Number of PEs wanted; [`Self::ALL`] for as many as possible.
    pub items: u32,
}

impl HandleResolutionOption {
    /// "As many as possible" (still capped by the registrar's maximum).
    pub const ALL: u32 = u32::MAX;
}

impl Param for HandleResolutionOption {
    fn param_type(&self) -> ParamType {
        ParamType::HANDLE_RESOLUTION_OPTION
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::HANDLE_RESOLUTION_OPTION
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u32(self.items);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        super::fixed_len(p, 4, "handle resolution option length must be 8")?;
        Ok(Self { items: r.u32()? })
    }
}
