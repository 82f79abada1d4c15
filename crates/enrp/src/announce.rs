//! Multicast discovery from the registrar's side (spec §7.7, §9.2, §2.2; issue 23 item
//! 4), each part off unless configured (spec D-5):
//!
//! - `enrpd run --announce GROUP:PORT`: every T6 (1 s, randomised ±25 %) one
//!   ASAP_SERVER_ANNOUNCE with the Server ID and where ASAP is served (TLS/TCP first,
//!   TLS/SCTP after), so that PEs and PUs started with `--discover` find it;
//! - `--announce-peers GROUP:PORT`: as often, one ENRP_PRESENCE (receiver 0) with the
//!   ENRP transport, so that registrars started with `--discover-peers` find it;
//! - `--discover-peers GROUP:PORT`: presences heard there are dialed as peers
//!   ([`asap::discovery::PeerPresences`] decides which, [`crate::daemon::Daemon::peer_dialer`]
//!   dials).
//!
//! An announce or presence authenticates nothing, and is not meant to: the receiver's
//! mutual-TLS handshake with the registrar identity check (and for peers the `peer`
//! grant) decides (docs/PROTOCOL-EXTENSIONS.md). Messages are built once (pure); the
//! sender and the receiver are small tasks.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use asap::addr::{Endpoint, TransportAddr};
use asap::discovery::{PeerPresences, Presence};
use asap::wire::param::{
    Address, PeChecksum, SctpAddresses, ServerId, ServerInformation, Transport, TransportUse,
};
use asap::wire::{AsapMsg, EnrpBody, EnrpMsg};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Where and how to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// The multicast group and port (spec §2.2: 239.0.0.50:3863 by convention).
    pub group: SocketAddr,
    /// The interface to send on (its IPv4 address); `None`: the route to the group
    /// decides. Also the address announced when ASAP listens on every address.
    pub interface: Option<Ipv4Addr>,
    /// The multicast TTL (hops); 1 by default: the announce stays on the link.
    pub ttl: u32,
    /// T6-Serverannounce, the mean period (spec §10: 1 s).
    pub interval: Duration,
}

/// The announce of registrar `server_id` serving ASAP over TLS/TCP at `asap` and, when
/// it does, over TLS/SCTP at `sctp`. An unspecified listening address (0.0.0.0, ::) is
/// announced as `interface` when given, else as it is: receivers read an unspecified
/// address as the datagram's source (docs/PROTOCOL-EXTENSIONS.md).
pub fn announce_message(
    server_id: ServerId,
    asap: SocketAddr,
    sctp: Option<&Endpoint>,
    interface: Option<Ipv4Addr>,
) -> AsapMsg {
    let shown = |ip: IpAddr| match interface {
        Some(i) if ip.is_unspecified() => IpAddr::V4(i),
        _ => ip,
    };
    let mut transports = Vec::new();
    if let Some(port) = NonZeroU16::new(asap.port()) {
        transports.push(Transport::Tcp {
            port,
            transport_use: TransportUse::DataOnly,
            addr: Address::new(shown(asap.ip())),
        });
    }
    if let Some(e) = sctp
        && let Some(port) = NonZeroU16::new(e.port())
        && let Some(addrs) =
            SctpAddresses::new(e.addrs().iter().map(|a| Address::new(shown(a.ip()))))
    {
        transports.push(Transport::Sctp {
            port,
            transport_use: TransportUse::DataOnly,
            addrs,
        });
    }
    AsapMsg::ServerAnnounce {
        server_id,
        transports,
    }
}

/// The multicast ENRP_PRESENCE of registrar `server_id` serving ENRP over TLS/TCP at
/// `enrp` (spec §8.1: receiver 0, "everybody"; R=0, no reply wanted; checksum 0: a
/// multicast presence only says where the registrar is, the checksum travels on the
/// authenticated connection). An unspecified address as in [`announce_message`].
pub fn presence_message(
    server_id: ServerId,
    enrp: SocketAddr,
    interface: Option<Ipv4Addr>,
) -> Option<EnrpMsg> {
    let ip = match interface {
        Some(i) if enrp.ip().is_unspecified() => IpAddr::V4(i),
        _ => enrp.ip(),
    };
    Some(EnrpMsg {
        sender: server_id,
        receiver: 0,
        body: EnrpBody::Presence {
            reply_required: false,
            checksum: PeChecksum(0),
            server_info: Some(ServerInformation {
                server_id,
                transport: Transport::Tcp {
                    port: NonZeroU16::new(enrp.port())?,
                    transport_use: TransportUse::DataOnly,
                    addr: Address::new(ip),
                },
            }),
        },
    })
}

/// The pause before the next announce: `interval` ±25 %, from a uniform `draw` (spec
/// §7.7: randomised, so that registrars started together do not announce in step).
pub fn jittered(interval: Duration, draw: u32) -> Duration {
    let fraction = f64::from(draw) / f64::from(u32::MAX); // 0..=1
    interval.mul_f64(0.75 + fraction / 2.0)
}

/// A UDP socket sending to `config.group`: TTL, interface, and loopback on (receivers on
/// this host hear it too).
fn sender(config: &AnnounceConfig) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let group = config.group;
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not a multicast group (e.g. 239.0.0.50:3863)"),
        ));
    }
    let socket = Socket::new(Domain::for_address(group), Type::DGRAM, Some(Protocol::UDP))?;
    match group {
        SocketAddr::V4(_) => {
            socket.set_multicast_ttl_v4(config.ttl)?;
            socket.set_multicast_loop_v4(true)?;
            if let Some(i) = config.interface {
                socket.set_multicast_if_v4(&i)?;
            }
            let local = SocketAddr::from((config.interface.unwrap_or(Ipv4Addr::UNSPECIFIED), 0));
            socket.bind(&local.into())?;
        }
        SocketAddr::V6(_) => {
            socket.set_multicast_hops_v6(config.ttl)?;
            socket.bind(&SocketAddr::from(([0u16; 8], 0)).into())?;
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Starts sending `bytes` (an encoded announce or presence) to `config.group` every
/// period until the task is aborted. The socket is made here, so that a bad group or
/// interface fails the start-up with its reason.
pub fn start(config: &AnnounceConfig, bytes: Vec<u8>) -> io::Result<tokio::task::JoinHandle<()>> {
    let socket = sender(config)?;
    let (group, interval) = (config.group, config.interval);
    // xorshift for the jitter, seeded from the clock: nothing here needs to be secret.
    let mut state = crate::daemon::now_ms() | 1;
    Ok(tokio::spawn(async move {
        let mut failing = false;
        loop {
            match socket.send_to(&bytes, group).await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!(%group, "announcing again");
                }
                Ok(_) => {}
                // Once per outage (no route, interface down), not once per period.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(%group, error = %e, "cannot send the server announce");
                }
                Err(_) => {}
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            tokio::time::sleep(jittered(interval, state as u32)).await;
        }
    }))
}

/// The ENRP port a presence without Server Information means (ours, spec §2.1).
pub const DEFAULT_ENRP_PORT: u16 = 9902;

/// Starts learning peers from multicast ENRP_PRESENCE on `group` (joined on `interface`,
/// default: by route): each presence [`PeerPresences`] lets through goes to `dialer`.
pub fn discover_peers(
    group: SocketAddr,
    interface: Option<Ipv4Addr>,
    own: ServerId,
    dialer: mpsc::Sender<TransportAddr>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let socket = receiver(group, interface)?;
    Ok(tokio::spawn(async move {
        let mut presences = PeerPresences::new(own);
        // Presences are a few dozen bytes; a longer datagram is cut and fails to decode.
        let mut buf = vec![0u8; 2048];
        let mut dropped: u64 = 0;
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let now = tokio::time::Instant::now().into_std();
            match presences.handle_datagram(from, &buf[..n], DEFAULT_ENRP_PORT, now) {
                Presence::Dial { server_id, addr } => {
                    tracing::info!(%from, %server_id, peer = %addr, "peer registrar announced by multicast presence: dialing it (it must authenticate as a registrar with the peer grant)");
                    // Full: dropped; the next presence after PRESENCE_REDIAL brings it.
                    let _ = dialer.try_send(addr);
                }
                Presence::Recent | Presence::Own => {}
                other => {
                    dropped += 1;
                    // 1st, 2nd, 4th, ... drop: a flood cannot flood the log.
                    if dropped.is_power_of_two() {
                        tracing::warn!(%from, dropped, "multicast presence dropped: {other:?}");
                    }
                }
            }
        }
    }))
}

/// A socket bound to `group`'s port and joined to it (bound to the group address: a
/// wildcard socket would also get every other group joined on this host at that port;
/// SO_REUSEADDR: several registrars on one host listen together).
fn receiver(group: SocketAddr, interface: Option<Ipv4Addr>) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not a multicast group (e.g. 239.0.0.51:9901)"),
        ));
    }
    let socket = Socket::new(Domain::for_address(group), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&group.into())?;
    match group.ip() {
        IpAddr::V4(g) => {
            socket.join_multicast_v4(&g, &interface.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
        }
        IpAddr::V6(g) => socket.join_multicast_v6(&g, 0)?,
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §7.7: the announce carries the Server ID and where ASAP is served, TLS/TCP
    /// first; it decodes to the same message (spec §6.1: Server ID fixed field, then
    /// transports), and the receivers' rule reads it back as those addresses.
    #[test]
    fn the_announce_names_tcp_then_sctp_and_round_trips() {
        let sid = ServerId::new(0x1234_5678).expect("non-zero");
        let sctp = Endpoint::parse("10.0.0.1:3864+10.0.1.1:3864").expect("endpoint");
        let msg = announce_message(
            sid,
            "10.0.0.1:3864".parse().expect("addr"),
            Some(&sctp),
            None,
        );
        let bytes = msg.to_bytes().expect("encodes");
        assert_eq!(AsapMsg::decode(&bytes).expect("decodes").msg, msg);
        let AsapMsg::ServerAnnounce { transports, .. } = &msg else {
            panic!("an announce");
        };
        let read = asap::discovery::announced_addrs("10.0.0.1".parse().expect("ip"), transports)
            .expect("usable");
        assert_eq!(
            read.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1:3864", "sctp:10.0.0.1:3864+10.0.1.1:3864"]
        );
    }

    /// Listening on every address: announced as the interface when one is given, else
    /// as unspecified, which receivers read as the source address.
    #[test]
    fn a_wildcard_listener_is_announced_as_the_interface_or_the_source() {
        let sid = ServerId::new(7).expect("non-zero");
        let any: SocketAddr = "0.0.0.0:3864".parse().expect("addr");
        let with_if = announce_message(sid, any, None, Some(Ipv4Addr::new(10, 0, 0, 9)));
        let without = announce_message(sid, any, None, None);
        let read = |m: &AsapMsg, src: &str| match m {
            AsapMsg::ServerAnnounce { transports, .. } => {
                asap::discovery::announced_addrs(src.parse().expect("ip"), transports)
                    .expect("usable")[0]
                    .to_string()
            }
            _ => panic!("an announce"),
        };
        assert_eq!(read(&with_if, "10.0.0.5"), "10.0.0.9:3864");
        assert_eq!(read(&without, "10.0.0.5"), "10.0.0.5:3864");
    }

    /// The multicast presence carries the ENRP transport in its Server Information and
    /// decodes to itself; the receivers' filter reads it as a peer to dial.
    #[test]
    fn the_presence_names_the_enrp_listener_and_becomes_a_dial() {
        let sid = ServerId::new(9).expect("non-zero");
        let msg = presence_message(sid, "0.0.0.0:9902".parse().expect("addr"), None).expect("port");
        let bytes = msg.to_bytes().expect("encodes");
        assert_eq!(EnrpMsg::decode(&bytes).expect("decodes").msg, msg);
        let mut filter = PeerPresences::new(ServerId::new(1).expect("non-zero"));
        #[allow(clippy::disallowed_methods)] // a test's origin
        let now = std::time::Instant::now();
        assert_eq!(
            filter.handle_datagram("10.0.0.9:5000".parse().expect("addr"), &bytes, 9902, now),
            Presence::Dial {
                server_id: sid,
                addr: "10.0.0.9:9902".parse().expect("addr"),
            }
        );
    }

    /// T6 is randomised ±25 %: every draw stays in [0.75, 1.25] × T6, both ends reached.
    #[test]
    fn the_period_is_jittered_within_a_quarter() {
        let t6 = Duration::from_secs(1);
        assert_eq!(jittered(t6, 0), Duration::from_millis(750));
        assert_eq!(jittered(t6, u32::MAX), Duration::from_millis(1250));
        for d in [1, 1 << 20, u32::MAX / 2, u32::MAX - 1] {
            let j = jittered(t6, d);
            assert!(j >= Duration::from_millis(750) && j <= Duration::from_millis(1250));
        }
    }

    /// A unicast "group" is refused with its reason, before anything is sent.
    #[tokio::test]
    async fn a_group_that_is_not_multicast_is_refused() {
        let config = AnnounceConfig {
            group: "10.0.0.1:3863".parse().expect("addr"),
            interface: None,
            ttl: 1,
            interval: Duration::from_secs(1),
        };
        let msg = announce_message(
            ServerId::new(1).expect("non-zero"),
            "10.0.0.1:3864".parse().expect("addr"),
            None,
            None,
        );
        let err = start(&config, msg.to_bytes().expect("encodes")).expect_err("unicast");
        assert!(
            err.to_string().contains("is not a multicast group"),
            "{err}"
        );
    }
}
