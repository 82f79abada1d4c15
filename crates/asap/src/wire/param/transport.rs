//! Transport parameters: DCCP (0x0003), SCTP (0x0004), TCP (0x0005), UDP (0x0006),
//! UDP-Lite (0x0007). Spec §4.3; RFC 5354 §3.2–§3.6.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |      Type = 0x0004 (SCTP)     |           Length              |
//! +-------------------------------+-------------------------------+
//! |          SCTP Port            |        Transport Use          |
//! +-------------------------------+-------------------------------+
//! :            IPv4/IPv6 Address parameter × 1..16                :
//! +---------------------------------------------------------------+
//! ```
//! TCP has the same layout with exactly one address. UDP and UDP-Lite carry a reserved
//! u16 instead of Transport Use; DCCP has a reserved u16 and a 32-bit service code before
//! its one address.

use std::num::NonZeroU16;

use super::{Address, Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::limits::MAX_SCTP_ADDRESSES;
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// Transport Use of SCTP and TCP transports (spec §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportUse {
    /// 0x0000: data only.
    DataOnly,
    /// 0x0001: data plus control (ASAP cookies and business cards on the data channel).
    DataPlusControl,
}

impl TransportUse {
    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Self::DataOnly => 0,
            Self::DataPlusControl => 1,
        }
    }

    /// From the wire value; `None` for anything but 0 and 1.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0 => Some(Self::DataOnly),
            1 => Some(Self::DataPlusControl),
            _ => None,
        }
    }
}

/// The 1 to [`MAX_SCTP_ADDRESSES`] addresses of an SCTP endpoint (spec §3.5, §4.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SctpAddresses(Box<[Address]>);

impl SctpAddresses {
    /// `None` when empty or longer than [`MAX_SCTP_ADDRESSES`].
    pub fn new(addrs: impl IntoIterator<Item = Address>) -> Option<Self> {
        let v: Vec<Address> = addrs.into_iter().take(MAX_SCTP_ADDRESSES + 1).collect();
        (!v.is_empty() && v.len() <= MAX_SCTP_ADDRESSES).then(|| Self(v.into()))
    }

    /// The addresses, in the sender's order.
    pub fn as_slice(&self) -> &[Address] {
        &self.0
    }
}

/// A transport parameter: where an endpoint can be reached (spec §4.3). Ports are never
/// 0; every kind but SCTP carries exactly one address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// DCCP (0x0003).
    Dccp {
        /// DCCP port.
        port: NonZeroU16,
        /// DCCP service code.
        service_code: u32,
        /// The address.
        addr: Address,
    },
    /// SCTP (0x0004), multi-homed.
    Sctp {
        /// SCTP port.
        port: NonZeroU16,
        /// Transport Use.
        transport_use: TransportUse,
        /// The addresses.
        addrs: SctpAddresses,
    },
    /// TCP (0x0005), our profile's transport (spec §12).
    Tcp {
        /// TCP port.
        port: NonZeroU16,
        /// Transport Use.
        transport_use: TransportUse,
        /// The address.
        addr: Address,
    },
    /// UDP (0x0006).
    Udp {
        /// UDP port.
        port: NonZeroU16,
        /// The address.
        addr: Address,
    },
    /// UDP-Lite (0x0007).
    UdpLite {
        /// UDP-Lite port.
        port: NonZeroU16,
        /// The address.
        addr: Address,
    },
}

impl Transport {
    /// The port.
    pub const fn port(&self) -> NonZeroU16 {
        match self {
            Self::Dccp { port, .. }
            | Self::Sctp { port, .. }
            | Self::Tcp { port, .. }
            | Self::Udp { port, .. }
            | Self::UdpLite { port, .. } => *port,
        }
    }

    /// The addresses (one for every kind but SCTP).
    pub fn addresses(&self) -> &[Address] {
        match self {
            Self::Sctp { addrs, .. } => addrs.as_slice(),
            Self::Dccp { addr, .. }
            | Self::Tcp { addr, .. }
            | Self::Udp { addr, .. }
            | Self::UdpLite { addr, .. } => std::slice::from_ref(addr),
        }
    }

    /// Transport Use, for SCTP and TCP.
    pub const fn transport_use(&self) -> Option<TransportUse> {
        match self {
            Self::Sctp { transport_use, .. } | Self::Tcp { transport_use, .. } => {
                Some(*transport_use)
            }
            _ => None,
        }
    }
}

/// The transport kind and its second field, read before the addresses.
enum Kind {
    Dccp(u32),
    Sctp(TransportUse),
    Tcp(TransportUse),
    Udp,
    UdpLite,
}

impl Param for Transport {
    fn param_type(&self) -> ParamType {
        match self {
            Self::Dccp { .. } => ParamType::DCCP_TRANSPORT,
            Self::Sctp { .. } => ParamType::SCTP_TRANSPORT,
            Self::Tcp { .. } => ParamType::TCP_TRANSPORT,
            Self::Udp { .. } => ParamType::UDP_TRANSPORT,
            Self::UdpLite { .. } => ParamType::UDP_LITE_TRANSPORT,
        }
    }

    fn is_type(ty: ParamType) -> bool {
        ty.is_transport()
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u16(self.port().get());
        match self {
            Self::Dccp { service_code, .. } => {
                w.u16(0);
                w.u32(*service_code);
            }
            Self::Sctp { transport_use, .. } | Self::Tcp { transport_use, .. } => {
                w.u16(transport_use.to_u16());
            }
            Self::Udp { .. } | Self::UdpLite { .. } => w.u16(0),
        }
        for a in self.addresses() {
            a.write(w);
        }
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        unrecognized: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let port = NonZeroU16::new(r.u16()?).ok_or_else(|| p.invalid(at, "port 0"))?;
        let at = r.offset();
        let second = r.u16()?;
        let uses = || {
            TransportUse::from_u16(second)
                .ok_or_else(|| p.invalid(at, "transport use must be 0 or 1"))
        };
        // Reserved fields are sent as 0 and ignored on receipt (spec §3.1).
        let kind = match p.ty {
            ParamType::SCTP_TRANSPORT => Kind::Sctp(uses()?),
            ParamType::TCP_TRANSPORT => Kind::Tcp(uses()?),
            ParamType::DCCP_TRANSPORT => Kind::Dccp(r.u32()?),
            ParamType::UDP_TRANSPORT => Kind::Udp,
            // `from_raw` admits only the transport types 0x3–0x7.
            _ => Kind::UdpLite,
        };
        let max = if p.ty == ParamType::SCTP_TRANSPORT {
            MAX_SCTP_ADDRESSES
        } else {
            1
        };
        let mut addrs = Vec::new();
        for q in r.params() {
            let q = q?;
            if !q.ty.is_address() {
                super::other(&q, unrecognized)?;
                continue;
            }
            if addrs.len() == max {
                return Err(DecodeError::with_tlv(
                    q.offset(),
                    DecodeErrorKind::Limit {
                        what: "addresses in the transport parameter",
                        max,
                    },
                    p.tlv(),
                ));
            }
            addrs.push(Address::from_raw(&q, unrecognized)?);
        }
        let Some(&addr) = addrs.first() else {
            return Err(DecodeError::new(
                p.offset(),
                DecodeErrorKind::MissingParam {
                    ty: ParamType::IPV4_ADDRESS,
                },
            ));
        };
        Ok(match kind {
            Kind::Sctp(transport_use) => Self::Sctp {
                port,
                transport_use,
                addrs: SctpAddresses(addrs.into()),
            },
            Kind::Tcp(transport_use) => Self::Tcp {
                port,
                transport_use,
                addr,
            },
            Kind::Dccp(service_code) => Self::Dccp {
                port,
                service_code,
                addr,
            },
            Kind::Udp => Self::Udp { port, addr },
            Kind::UdpLite => Self::UdpLite { port, addr },
        })
    }
}
