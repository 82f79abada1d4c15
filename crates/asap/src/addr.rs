//! Transport addresses and SCTP endpoints as configured: one port, one or more addresses
//! (multi-homing). Plain data with their parsing and formatting, available without any
//! feature (no tokio) so that the registrar core and configuration use them everywhere
//! (and say "built without SCTP" where SCTP is missing).

use std::net::SocketAddr;

/// Most addresses of one multi-homed endpoint (spec §3.5: an SCTP transport parameter
/// lists at most [`MAX_SCTP_ADDRESSES`](crate::wire::limits::MAX_SCTP_ADDRESSES)).
pub const MAX_ENDPOINT_ADDRESSES: usize = crate::wire::limits::MAX_SCTP_ADDRESSES;

/// An SCTP endpoint's addresses, all on one port (spec §4.3: one port, 1 to 16 addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(Vec<SocketAddr>);

/// Why an endpoint's text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// An address does not parse.
    #[error("{0:?} is not an address (IP:PORT, [IPv6]:PORT)")]
    Address(String),
    /// None, or more than [`MAX_ENDPOINT_ADDRESSES`].
    #[error("an SCTP endpoint has 1 to {MAX_ENDPOINT_ADDRESSES} addresses")]
    Count,
    /// The addresses name different ports.
    #[error("all addresses of an SCTP endpoint share one port")]
    Ports,
    /// IPv4 and IPv6 mixed, or several IPv6 addresses (only IPv4 endpoints may be
    /// multi-homed here: `sctp_bindx` through `tokio-sctp` takes IPv4 socket addresses).
    #[error("a multi-homed SCTP endpoint takes IPv4 addresses only")]
    Family,
}

impl Endpoint {
    /// One address.
    pub fn single(addr: SocketAddr) -> Self {
        Self(vec![addr])
    }

    /// Several addresses of one endpoint; all share one port, and more than one only for
    /// IPv4.
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Self, EndpointError> {
        if addrs.is_empty() || addrs.len() > MAX_ENDPOINT_ADDRESSES {
            return Err(EndpointError::Count);
        }
        if addrs.iter().any(|a| a.port() != addrs[0].port()) {
            return Err(EndpointError::Ports);
        }
        if addrs.len() > 1 && addrs.iter().any(SocketAddr::is_ipv6) {
            return Err(EndpointError::Family);
        }
        Ok(Self(addrs))
    }

    /// `ADDR[+ADDR...]`, e.g. `127.0.0.1:3864+192.0.2.1:3864`.
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let addrs = text
            .split('+')
            .map(|a| {
                a.trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| EndpointError::Address(a.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(addrs)
    }

    /// The addresses, the primary first.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0
    }

    /// The port they share.
    pub fn port(&self) -> u16 {
        self.0[0].port()
    }

    /// The same addresses on another port.
    pub fn with_port(&self, port: u16) -> Self {
        Self(
            self.0
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect(),
        )
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// Where a registrar, a peer or a PE is reached: TLS over TCP (`HOST:PORT`, the default)
/// or over SCTP (`sctp:ADDR[+ADDR...]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportAddr {
    /// TLS over TCP.
    Tcp(SocketAddr),
    /// Over SCTP, to a possibly multi-homed endpoint.
    Sctp(Endpoint),
}

impl TransportAddr {
    /// The primary address.
    pub fn primary(&self) -> SocketAddr {
        match self {
            Self::Tcp(a) => *a,
            Self::Sctp(e) => e.addrs()[0],
        }
    }

    /// Every address (one for TCP).
    pub fn addrs(&self) -> &[SocketAddr] {
        match self {
            Self::Tcp(a) => std::slice::from_ref(a),
            Self::Sctp(e) => e.addrs(),
        }
    }

    /// Where a transport parameter (a PE's user or ASAP transport, a registrar's Server
    /// Information) can be reached: TCP, or an SCTP endpoint of all its usable addresses
    /// (spec §4.3). Unspecified and multicast addresses cannot be dialed and are left
    /// out; a multi-homed endpoint this side cannot dial as one (IPv6,
    /// [`EndpointError::Family`]) keeps its first address. Other transports: `None`.
    pub fn of_transport(transport: &crate::wire::param::Transport) -> Option<Self> {
        use crate::wire::param::Transport;
        let port = transport.port().get();
        let addrs: Vec<SocketAddr> = transport
            .addresses()
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        match transport {
            Transport::Tcp { .. } => addrs.first().copied().map(Self::Tcp),
            Transport::Sctp { .. } => Endpoint::new(addrs.clone())
                .or_else(|_| Endpoint::new(addrs.into_iter().take(1).collect()))
                .ok()
                .map(Self::Sctp),
            _ => None,
        }
    }

    /// Whether the two name one listener: an address (IP and port) in common, whatever
    /// the transport (a registrar serves TLS over TCP and over SCTP at one address).
    pub fn overlaps(&self, other: &Self) -> bool {
        self.addrs().iter().any(|a| other.addrs().contains(a))
    }
}

impl From<SocketAddr> for TransportAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Tcp(a)
    }
}

impl std::str::FromStr for TransportAddr {
    type Err = EndpointError;

    /// `IP:PORT` (TCP) or `sctp:IP:PORT[+IP:PORT...]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sctp:") {
            Some(rest) => Endpoint::parse(rest).map(Self::Sctp),
            None => s
                .trim()
                .parse()
                .map(Self::Tcp)
                .map_err(|_| EndpointError::Address(s.to_owned())),
        }
    }
}

impl std::fmt::Display for TransportAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Sctp(e) => write!(f, "sctp:{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_become_addresses_to_dial() {
        use crate::wire::param::{Address, SctpAddresses, Transport, TransportUse};
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        use std::num::NonZeroU16;
        let port = NonZeroU16::new(9902).expect("port");
        let sctp = |ips: &[IpAddr]| Transport::Sctp {
            port,
            transport_use: TransportUse::DataOnly,
            addrs: SctpAddresses::new(ips.iter().map(|ip| Address::new(*ip))).expect("addrs"),
        };
        let (a, b) = (
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::from(Ipv4Addr::new(192, 0, 2, 2)),
        );
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            TransportAddr::of_transport(&sctp(&[a, any, b])),
            Some("sctp:192.0.2.1:9902+192.0.2.2:9902".parse().expect("sctp"))
        );
        let (v6a, v6b) = (
            IpAddr::from(Ipv6Addr::LOCALHOST),
            "2001:db8::1".parse().expect("v6"),
        );
        assert_eq!(
            TransportAddr::of_transport(&sctp(&[v6a, v6b])),
            Some("sctp:[::1]:9902".parse().expect("v6"))
        );
        assert_eq!(TransportAddr::of_transport(&sctp(&[any])), None);
        let tcp = |ip| Transport::Tcp {
            port,
            transport_use: TransportUse::DataOnly,
            addr: Address::new(ip),
        };
        assert_eq!(
            TransportAddr::of_transport(&tcp(a)),
            Some(TransportAddr::Tcp(SocketAddr::new(a, 9902)))
        );
        assert_eq!(TransportAddr::of_transport(&tcp(any)), None);
        let udp = Transport::Udp {
            port,
            addr: Address::new(a),
        };
        assert_eq!(TransportAddr::of_transport(&udp), None);
    }

    #[test]
    fn transport_addrs_overlap_on_a_shared_address() {
        let tcp: TransportAddr = "192.0.2.1:9902".parse().expect("tcp");
        let sctp: TransportAddr = "sctp:127.0.0.1:9902+192.0.2.1:9902".parse().expect("sctp");
        let other: TransportAddr = "sctp:192.0.2.1:9903".parse().expect("other port");
        assert!(tcp.overlaps(&sctp) && sctp.overlaps(&tcp));
        assert!(!sctp.overlaps(&other) && !tcp.overlaps(&other));
        assert_eq!(sctp.addrs().len(), 2);
        assert_eq!(tcp.addrs(), &["192.0.2.1:9902".parse().expect("addr")]);
    }

    #[test]
    fn endpoints_parse_and_refuse() {
        let e = Endpoint::parse("127.0.0.1:3864+192.0.2.1:3864").expect("two");
        assert_eq!(e.addrs().len(), 2);
        assert_eq!(e.port(), 3864);
        assert_eq!(e.to_string(), "127.0.0.1:3864+192.0.2.1:3864");
        assert_eq!(Endpoint::parse("[::1]:3864").expect("v6").port(), 3864);
        assert_eq!(
            Endpoint::parse("127.0.0.1:1+192.0.2.1:2"),
            Err(EndpointError::Ports)
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:1+[::1]:1"),
            Err(EndpointError::Family)
        );
        assert!(matches!(
            Endpoint::parse("localhost:1"),
            Err(EndpointError::Address(_))
        ));
        let many = vec!["127.0.0.1:1"; MAX_ENDPOINT_ADDRESSES + 1].join("+");
        assert_eq!(Endpoint::parse(&many), Err(EndpointError::Count));
        let t: TransportAddr = "sctp:127.0.0.1:3864+192.0.2.1:3864".parse().expect("sctp");
        assert_eq!(t.to_string(), "sctp:127.0.0.1:3864+192.0.2.1:3864");
        assert_eq!(t.primary(), "127.0.0.1:3864".parse().expect("addr"));
        let t: TransportAddr = "[::1]:3864".parse().expect("tcp");
        assert!(matches!(t, TransportAddr::Tcp(_)));
        assert!("sctp:".parse::<TransportAddr>().is_err());
    }
}
