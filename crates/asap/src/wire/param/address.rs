//! IPv4 and IPv6 Address parameters (0x0001, 0x0002). Spec §4.2; RFC 5354 §3.1.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x0001           |          Length = 8           |
//! +-------------------------------+-------------------------------+
//! |                         IPv4 Address                          |
//! +---------------------------------------------------------------+
//! ```
//! IPv6: Type 0x0002, Length 20, 16 address bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::DecodeError;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// An address as carried in a transport parameter, in canonical form: an IPv4-mapped
/// IPv6 address is held (and sent) as IPv4 (spec §4.2, as rsplib does), so that one
/// endpoint has one representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(IpAddr);

impl Address {
    /// The canonical form of `ip`.
    pub fn new(ip: impl Into<IpAddr>) -> Self {
        Self(ip.into().to_canonical())
    }

    /// The address.
    pub const fn ip(self) -> IpAddr {
        self.0
    }

    /// Whether a registrar may accept this address in a PE's user transport (spec §4.2,
    /// project rule): not unspecified, multicast or broadcast; loopback only when allowed. The
    /// codec accepts any address so it can decode what others send; registrars call this.
    pub fn is_acceptable_user_address(self, allow_loopback: bool) -> bool {
        let ip = self.0;
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return false;
        }
        allow_loopback || !ip.is_loopback()
    }
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        Self::new(ip)
    }
}

impl From<Ipv4Addr> for Address {
    fn from(ip: Ipv4Addr) -> Self {
        Self::new(ip)
    }
}

impl From<Ipv6Addr> for Address {
    fn from(ip: Ipv6Addr) -> Self {
        Self::new(ip)
    }
}

impl Param for Address {
    fn param_type(&self) -> ParamType {
        match self.0 {
            IpAddr::V4(_) => ParamType::IPV4_ADDRESS,
            IpAddr::V6(_) => ParamType::IPV6_ADDRESS,
        }
    }

    fn is_type(ty: ParamType) -> bool {
        ty.is_address()
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        match self.0 {
            IpAddr::V4(a) => w.bytes(&a.octets()),
            IpAddr::V6(a) => w.bytes(&a.octets()),
        }
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        if p.ty == ParamType::IPV4_ADDRESS {
            super::fixed_len(p, 4, "IPv4 address length must be 8")?;
            let mut a = [0; 4];
            a.copy_from_slice(r.take(4)?);
            Ok(Self::new(Ipv4Addr::from(a)))
        } else {
            super::fixed_len(p, 16, "IPv6 address length must be 20")?;
            let mut a = [0; 16];
            a.copy_from_slice(r.take(16)?);
            Ok(Self::new(Ipv6Addr::from(a)))
        }
    }
}
