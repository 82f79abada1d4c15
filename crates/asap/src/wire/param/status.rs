//! Project parameter PE Status (0x8104), docs/PROTOCOL-EXTENSIONS.md §5.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x8104           |         Length = 16           |
//! +---------------+---------------+-------------------------------+
//! |     Flags     |  Check Kind   |           Reserved            |
//! +---------------+---------------+-------------------------------+
//! |              Drain Deadline (unix ms, high 32 bits)           |
//! +---------------------------------------------------------------+
//! |              Drain Deadline (unix ms, low 32 bits)            |
//! +---------------------------------------------------------------+
//! ```
//! Action bits `10`: implementations that do not know it (rsplib, older rsp) skip it.
//! It travels inside the Pool Element parameter, after the labels, so it goes wherever
//! the PE goes. Flags: bit 0 (0x01) D, draining: an operator drains the PE (the home
//! registrar sets it, never the PE: a registrar overwrites what a registration says);
//! other bits are sent 0 and ignored. Check Kind: the health check the PE runs (the PE
//! says it; a PE that is registered passes its check, since it deregisters while it
//! fails): 0 none, 1 tcp, 2 http, 3 exec; other values are kept and shown as a number.
//! Drain Deadline: when the home registrar deregisters a draining PE, unix time in ms
//! (0 when not draining); shown by every registrar, enforced by the home.

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::DecodeError;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// The health check a PE runs, as it registers it (PE Status, 0x8104).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CheckKind(pub u8);

impl CheckKind {
    /// No health check.
    pub const NONE: Self = Self(0);
    /// A TCP connect to the service.
    pub const TCP: Self = Self(1);
    /// An HTTP GET answered with 2xx.
    pub const HTTP: Self = Self(2);
    /// A command that exits 0.
    pub const EXEC: Self = Self(3);

    /// `tcp`, `http`, `exec`; `None` for none or an unknown kind.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("tcp"),
            2 => Some("http"),
            3 => Some("exec"),
            _ => None,
        }
    }
}

/// What a PE entry says besides where and how it serves: whether an operator drains it
/// and which health check it runs (PE Status, 0x8104). The default (not draining, no
/// check) is not sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeStatus {
    /// The drain deadline, unix ms, when an operator drains the PE: no registrar returns
    /// it in resolutions, and its home deregisters it then.
    pub drain_deadline_ms: Option<u64>,
    /// The health check the PE runs.
    pub check: CheckKind,
}

const FLAG_DRAINING: u8 = 0x01;

impl PeStatus {
    /// Whether an operator drains the PE.
    pub const fn draining(&self) -> bool {
        self.drain_deadline_ms.is_some()
    }

    /// Whether it says nothing (then the parameter is not sent).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Param for PeStatus {
    fn param_type(&self) -> ParamType {
        ParamType::PE_STATUS
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::PE_STATUS
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u8(if self.draining() { FLAG_DRAINING } else { 0 });
        w.u8(self.check.0);
        w.u16(0);
        let deadline = self.drain_deadline_ms.unwrap_or(0);
        w.u32((deadline >> 32) as u32);
        w.u32(deadline as u32);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let short = |_| p.invalid(at, "PE status truncated");
        let flags = r.u8().map_err(short)?;
        let check = CheckKind(r.u8().map_err(short)?);
        r.u16().map_err(short)?;
        let hi = u64::from(r.u32().map_err(short)?);
        let lo = u64::from(r.u32().map_err(short)?);
        if r.remaining() > 0 {
            return Err(p.invalid(r.offset(), "PE status longer than 12 bytes"));
        }
        let deadline = (hi << 32) | lo;
        let draining = flags & FLAG_DRAINING != 0;
        if draining && deadline == 0 {
            return Err(p.invalid(at, "draining without a deadline"));
        }
        Ok(Self {
            drain_deadline_ms: draining.then_some(deadline),
            check,
        })
    }
}
