//! The registrar Server ID (spec §4.5, §9.1). The other 32-bit identifier, the PE ID
//! (spec §1, §4.4), is [`identity::PeId`].

use std::fmt;

/// A registrar's (ENRP server's) identifier. Spec §4.5, §9.1.
///
/// The value 0 is meaningful only in a few places: a Pool Element's "Home ENRP Server
/// Identifier" is 0 in a registration (the PE does not know its home yet), and an ENRP
/// Receiver ID of 0 means "unknown / everybody". Those fields use `u32`; a `ServerId`
/// always names a real registrar and is never 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerId(u32);

impl ServerId {
    /// A Server ID; `None` for 0.
    pub const fn new(id: u32) -> Option<Self> {
        if id == 0 { None } else { Some(Self(id)) }
    }

    /// The identifier as sent on the wire.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({:#010x})", self.0)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}
