//! Registrars learnt from multicast ASAP_SERVER_ANNOUNCE (spec §7.7, §2.2, D-5; issue 23
//! item 4): the list a PE or PU hunts in, its statically configured registrars first, then
//! the announced ones, each expiring after T7-ENRPoutdate without a new announce.
//!
//! Pure: no sockets, no clock (every call takes `now`), no randomness of its own (the
//! caller passes a draw). The UDP receiver and the hunt are `client::discovery`.
//!
//! An announce is a hint, never a trust decision (spec §7.7 [P], threats T-6/T-12): it
//! only yields an address to try, and the mutual-TLS handshake with the registrar identity
//! check decides. What this list bounds is the cost of a forged announce:
//!
//! - at most [`MAX_ANNOUNCED`] announced registrars are kept; when full, a new one takes
//!   the place of one whose handshake failed, never of one that may be good;
//! - an announced address whose handshake failed (a certificate that is not a trusted
//!   registrar's) is held back ([`handle_refused`](RegistrarList::handle_refused)) for
//!   [`REFUSED_HOLD_FIRST`], doubling per further failure up to [`REFUSED_HOLD_MAX`]: one
//!   failed handshake per address per window, however often it is announced;
//! - one that could not be reached (refused, timed out: a registrar restarting, or a
//!   forger's blackhole) is held for [`UNREACHABLE_HOLD_FIRST`], doubling up to
//!   [`UNREACHABLE_HOLD_MAX`], and released when it announces itself anew after its entry
//!   expired (a registrar that came back), so that a restart costs its PEs about a
//!   second, not minutes;
//! - datagrams that do not decode, or announce nothing this side can dial, are counted
//!   and dropped ([`Heard`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::addr::TransportAddr;
use crate::wire::param::{ServerId, Transport};
use crate::wire::{AsapMsg, DecodeError, EnrpBody, EnrpMsg};

/// The de-facto ASAP announce group and port (spec §2.2; RSPLIB's default).
pub const ASAP_ANNOUNCE_GROUP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 0, 0, 50)), 3863);
/// The de-facto ENRP presence group and port (spec §2.2).
pub const ENRP_ANNOUNCE_GROUP: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 0, 0, 51)), 9901);
/// The port an announce without transport parameters means, with its source address
/// (spec §7.7 "the default port"): ours, ASAP over TLS/TCP (spec §2.1).
pub const DEFAULT_REGISTRAR_PORT: u16 = 3864;
/// T6-Serverannounce: a registrar's announce period (spec §10).
pub const T6_SERVER_ANNOUNCE: Duration = Duration::from_secs(1);
/// T7-ENRPoutdate: an announced registrar not heard again for this long is dropped
/// (spec §10).
pub const T7_ENRP_OUTDATE: Duration = Duration::from_secs(5);
/// Most announced registrars kept: a site has a handful of registrars; more announcers
/// than this on one group is a flood, and each kept one is a handshake to try.
pub const MAX_ANNOUNCED: usize = 16;
/// How long an announced address whose handshake failed is not tried again, at first.
pub const REFUSED_HOLD_FIRST: Duration = Duration::from_secs(5);
/// The longest hold: the hold doubles at each further failure up to this.
pub const REFUSED_HOLD_MAX: Duration = Duration::from_secs(300);
/// How long an announced address that could not be reached is not tried again, at first.
pub const UNREACHABLE_HOLD_FIRST: Duration = Duration::from_secs(1);
/// The longest hold of an unreachable address.
pub const UNREACHABLE_HOLD_MAX: Duration = Duration::from_secs(30);
/// Most refused addresses remembered (the oldest hold is forgotten first): bounds the
/// memory a flood of forged announces can take.
pub const MAX_HELD: usize = 256;

/// What became of one datagram ([`RegistrarList::handle_datagram`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Heard {
    /// A registrar not in the list before: a new candidate.
    New {
        /// The announcing registrar.
        server_id: ServerId,
        /// Where to try it, TLS/TCP first.
        addrs: Vec<TransportAddr>,
    },
    /// A registrar already in the list: its expiry is pushed back.
    Refreshed,
    /// A new registrar, but the list is full of ones that may be good: dropped.
    Full,
    /// Not an announce this side can use (another message, no TCP or SCTP transport,
    /// an address that cannot be dialed): dropped, counted.
    Ignored(&'static str),
    /// Bytes that are not an ASAP message: dropped, counted.
    Malformed(DecodeError),
}

/// Counters of what was heard, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Announces that added or refreshed a registrar.
    pub announces: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Datagrams dropped as [`Heard::Ignored`].
    pub ignored: u64,
    /// New registrars dropped because the list was full.
    pub full: u64,
    /// Failed handshakes with announced addresses ([`RegistrarList::handle_refused`]).
    pub refused: u64,
}

#[derive(Clone, Debug)]
struct Announced {
    server_id: ServerId,
    /// TLS/TCP first, then TLS/SCTP; at most one of each.
    addrs: Vec<TransportAddr>,
    expires: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Hold {
    until: Instant,
    window: Duration,
    /// Not reached, rather than refused by the handshake.
    unreachable: bool,
}

/// The registrars announced on one group, with the holds of those that failed (see the
/// module doc).
#[derive(Debug)]
pub struct RegistrarList {
    outdate: Duration,
    announced: Vec<Announced>,
    held: HashMap<SocketAddr, Hold>,
    stats: DiscoveryStats,
}

impl Default for RegistrarList {
    fn default() -> Self {
        Self::new(T7_ENRP_OUTDATE)
    }
}

impl RegistrarList {
    /// An empty list whose entries expire `outdate` after their last announce
    /// (T7-ENRPoutdate, [`T7_ENRP_OUTDATE`] by default).
    pub fn new(outdate: Duration) -> Self {
        Self {
            outdate,
            announced: Vec::new(),
            held: HashMap::new(),
            stats: DiscoveryStats::default(),
        }
    }

    /// One datagram received from `source` on the announce group.
    pub fn handle_datagram(&mut self, source: SocketAddr, bytes: &[u8], now: Instant) -> Heard {
        let heard = match AsapMsg::decode(bytes) {
            Ok(d) => self.handle_announce(source, &d.msg, now),
            Err(e) => Heard::Malformed(e),
        };
        match &heard {
            Heard::New { .. } | Heard::Refreshed => self.stats.announces += 1,
            Heard::Full => self.stats.full += 1,
            Heard::Ignored(_) => self.stats.ignored += 1,
            Heard::Malformed(_) => self.stats.malformed += 1,
        }
        heard
    }

    fn handle_announce(&mut self, source: SocketAddr, msg: &AsapMsg, now: Instant) -> Heard {
        let AsapMsg::ServerAnnounce {
            server_id,
            transports,
        } = msg
        else {
            return Heard::Ignored("not an ASAP_SERVER_ANNOUNCE");
        };
        let addrs = match announced_addrs(source.ip(), transports) {
            Ok(a) => a,
            Err(why) => return Heard::Ignored(why),
        };
        self.expire(now);
        let expires = now + self.outdate;
        // The same registrar: the same first address (not the Server ID, which anyone
        // can claim: a forged announce of a real registrar's ID must not move it).
        if let Some(e) = self.announced.iter_mut().find(|e| e.addrs[0] == addrs[0]) {
            e.expires = expires;
            e.server_id = *server_id;
            e.addrs = addrs;
            return Heard::Refreshed;
        }
        // Announced anew after its entry expired: a registrar that could not be reached
        // before may have come back (a restart); one that failed the handshake stays held.
        for a in &addrs {
            if self.held.get(&a.primary()).is_some_and(|h| h.unreachable) {
                self.held.remove(&a.primary());
            }
        }
        if self.announced.len() >= MAX_ANNOUNCED {
            // Make room only by dropping one that already failed its handshake.
            let held = self
                .announced
                .iter()
                .position(|e| e.addrs.iter().all(|a| self.is_held(a, now)));
            match held {
                Some(i) => {
                    self.announced.swap_remove(i);
                }
                None => return Heard::Full,
            }
        }
        self.announced.push(Announced {
            server_id: *server_id,
            addrs: addrs.clone(),
            expires,
        });
        Heard::New {
            server_id: *server_id,
            addrs,
        }
    }

    /// Drops the announced registrars not heard for T7-ENRPoutdate, and holds that ended
    /// long ago (their window is forgotten after [`REFUSED_HOLD_MAX`] without a failure).
    pub fn expire(&mut self, now: Instant) {
        self.announced.retain(|e| e.expires > now);
        self.held.retain(|_, h| h.until + REFUSED_HOLD_MAX > now);
    }

    /// Where to hunt, in order: `statics` (the configured registrars) as given, then the
    /// announced addresses that are neither configured nor held, starting at announced
    /// registrar `pick % n` (spec §7.7: a random pick spreads PEs over the registrars).
    pub fn candidates(
        &mut self,
        statics: &[TransportAddr],
        now: Instant,
        pick: usize,
    ) -> Vec<TransportAddr> {
        self.expire(now);
        let mut out = statics.to_vec();
        let n = self.announced.len();
        for i in 0..n {
            let e = &self.announced[(pick + i) % n];
            for a in &e.addrs {
                if !out.iter().any(|s| s.overlaps(a)) && !self.is_held(a, now) {
                    out.push(a.clone());
                }
            }
        }
        out
    }

    /// Whether `addr` is an announced address (and not a configured one: the caller
    /// checks that), so that a failed handshake with it is held.
    pub fn is_announced(&self, addr: &TransportAddr) -> bool {
        self.announced.iter().any(|e| e.addrs.contains(addr))
    }

    /// The handshake with announced `addr` failed: it is not tried again for a window,
    /// [`REFUSED_HOLD_FIRST`] doubling to [`REFUSED_HOLD_MAX`]. Returns the window. At
    /// most [`MAX_HELD`] addresses are held; the one whose hold ends first makes room.
    pub fn handle_refused(&mut self, addr: &TransportAddr, now: Instant) -> Duration {
        self.hold(addr, now, false)
    }

    /// Announced `addr` could not be reached (connection refused, timed out): held for
    /// [`UNREACHABLE_HOLD_FIRST`] doubling to [`UNREACHABLE_HOLD_MAX`], and released when
    /// it is announced anew after its entry expired. Returns the window.
    pub fn handle_unreachable(&mut self, addr: &TransportAddr, now: Instant) -> Duration {
        self.hold(addr, now, true)
    }

    fn hold(&mut self, addr: &TransportAddr, now: Instant, unreachable: bool) -> Duration {
        self.stats.refused += 1;
        let key = addr.primary();
        let (first, max) = if unreachable {
            (UNREACHABLE_HOLD_FIRST, UNREACHABLE_HOLD_MAX)
        } else {
            (REFUSED_HOLD_FIRST, REFUSED_HOLD_MAX)
        };
        let window = match self.held.get(&key) {
            // The same kind of failure again: the window doubles; another kind starts over.
            Some(h) if h.unreachable == unreachable => (h.window * 2).min(max),
            _ => first,
        };
        if !self.held.contains_key(&key)
            && self.held.len() >= MAX_HELD
            && let Some(oldest) = self
                .held
                .iter()
                .min_by_key(|(_, h)| h.until)
                .map(|(k, _)| *k)
        {
            self.held.remove(&oldest);
        }
        self.held.insert(
            key,
            Hold {
                until: now + window,
                window,
                unreachable,
            },
        );
        window
    }

    /// The handshake with `addr` succeeded: any hold on it is forgotten.
    pub fn handle_accepted(&mut self, addr: &TransportAddr) {
        self.held.remove(&addr.primary());
    }

    fn is_held(&self, addr: &TransportAddr, now: Instant) -> bool {
        self.held
            .get(&addr.primary())
            .is_some_and(|h| h.until > now)
    }

    /// The announced registrars now kept: Server ID and addresses.
    pub fn announced(&self) -> impl Iterator<Item = (ServerId, &[TransportAddr])> {
        self.announced.iter().map(|e| (e.server_id, &e.addrs[..]))
    }

    /// What was heard so far.
    pub fn stats(&self) -> DiscoveryStats {
        self.stats
    }
}

/// How long a peer registrar learnt from a multicast ENRP_PRESENCE is not handed to the
/// dialer again: the dialer keeps dialing it (with its own backoff) until the learnt-peer
/// give-up; a presence only restarts that once the give-up may have passed.
pub const PRESENCE_REDIAL: Duration = Duration::from_secs(60);

/// What became of one multicast ENRP_PRESENCE ([`PeerPresences::handle_datagram`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presence {
    /// A peer registrar to dial (a candidate only: the ENRP mutual-TLS handshake, the
    /// registrar identity check and the `peer` grant decide, as for a configured peer).
    Dial {
        /// The Sender Server's ID, as claimed (unauthenticated).
        server_id: ServerId,
        /// Its ENRP transport.
        addr: TransportAddr,
    },
    /// Heard within [`PRESENCE_REDIAL`] of the last time: already handed over.
    Recent,
    /// This registrar's own presence (multicast loops back): dropped.
    Own,
    /// Not a usable presence: dropped, counted.
    Ignored(&'static str),
    /// Bytes that are not an ENRP message: dropped, counted.
    Malformed(DecodeError),
}

/// Peer registrars learnt from multicast ENRP_PRESENCE (spec §9.2: "peers come from
/// static configuration or multicast presence"; off unless configured, D-5): decides
/// which presences become a dial, at most one per address per [`PRESENCE_REDIAL`], with
/// at most [`MAX_HELD`] addresses remembered. Pure, as [`RegistrarList`].
#[derive(Debug)]
pub struct PeerPresences {
    own: ServerId,
    handed: HashMap<SocketAddr, Instant>,
    stats: DiscoveryStats,
}

impl PeerPresences {
    /// The filter of registrar `own` (whose own presences are dropped).
    pub fn new(own: ServerId) -> Self {
        Self {
            own,
            handed: HashMap::new(),
            stats: DiscoveryStats::default(),
        }
    }

    /// One datagram received from `source` on the ENRP presence group. The peer's
    /// transport is read as an announce's ([`announced_addrs`]); a presence without
    /// Server Information means the source address and `default_port`.
    pub fn handle_datagram(
        &mut self,
        source: SocketAddr,
        bytes: &[u8],
        default_port: u16,
        now: Instant,
    ) -> Presence {
        let heard = self.judge(source, bytes, default_port, now);
        match &heard {
            Presence::Dial { .. } | Presence::Recent | Presence::Own => self.stats.announces += 1,
            Presence::Ignored(_) => self.stats.ignored += 1,
            Presence::Malformed(_) => self.stats.malformed += 1,
        }
        heard
    }

    fn judge(
        &mut self,
        source: SocketAddr,
        bytes: &[u8],
        default_port: u16,
        now: Instant,
    ) -> Presence {
        let msg = match EnrpMsg::decode(bytes) {
            Ok(d) => d.msg,
            Err(e) => return Presence::Malformed(e),
        };
        let EnrpBody::Presence { server_info, .. } = &msg.body else {
            return Presence::Ignored("not an ENRP_PRESENCE");
        };
        if msg.sender == self.own {
            return Presence::Own;
        }
        let addrs = match server_info {
            Some(info) => announced_addrs(source.ip(), std::slice::from_ref(&info.transport)),
            None => {
                let a = TransportAddr::Tcp(SocketAddr::new(source.ip(), default_port));
                check_dialable(source.ip(), &a).map(|()| vec![a])
            }
        };
        let addr = match addrs {
            Ok(mut a) => a.remove(0),
            Err(why) => return Presence::Ignored(why),
        };
        let key = addr.primary();
        if self
            .handed
            .get(&key)
            .is_some_and(|t| *t + PRESENCE_REDIAL > now)
        {
            return Presence::Recent;
        }
        self.handed.retain(|_, t| *t + PRESENCE_REDIAL > now);
        if self.handed.len() >= MAX_HELD {
            return Presence::Ignored("too many peers heard of recently");
        }
        self.handed.insert(key, now);
        Presence::Dial {
            server_id: msg.sender,
            addr,
        }
    }

    /// What was heard so far (`announces`: presences of registrars, own included).
    pub fn stats(&self) -> DiscoveryStats {
        self.stats
    }
}

/// Where an announce from `source` says to reach the registrar: its first TCP transport
/// (TLS/TCP, our profile) and its first SCTP transport, in that order; without transport
/// parameters, the source address and [`DEFAULT_REGISTRAR_PORT`] (spec §7.7). An
/// unspecified address (0.0.0.0, ::) in a transport means the source address (a
/// registrar listening on every interface). Refused: multicast and broadcast addresses,
/// and loopback ones from a source that is not loopback (a remote announcer cannot mean
/// this host's loopback; it could only aim this side at a local service).
pub fn announced_addrs(
    source: IpAddr,
    transports: &[Transport],
) -> Result<Vec<TransportAddr>, &'static str> {
    if transports.is_empty() {
        let a = TransportAddr::Tcp(SocketAddr::new(source, DEFAULT_REGISTRAR_PORT));
        check_dialable(source, &a)?;
        return Ok(vec![a]);
    }
    let mut tcp = None;
    let mut sctp = None;
    for t in transports {
        let slot = match t {
            Transport::Tcp { .. } => &mut tcp,
            Transport::Sctp { .. } => &mut sctp,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        // Unspecified means the source; several wildcards of a multi-homed listener all
        // mean it, once.
        let mut addrs: Vec<IpAddr> = Vec::new();
        for a in t.addresses() {
            let ip = if a.ip().is_unspecified() {
                source
            } else {
                a.ip()
            };
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        let port = t.port().get();
        let addr = match t {
            Transport::Tcp { .. } => TransportAddr::Tcp(SocketAddr::new(addrs[0], port)),
            _ => {
                let all: Vec<SocketAddr> =
                    addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
                match crate::addr::Endpoint::new(all.clone())
                    .or_else(|_| crate::addr::Endpoint::new(all.into_iter().take(1).collect()))
                {
                    Ok(e) => TransportAddr::Sctp(e),
                    Err(_) => continue,
                }
            }
        };
        check_dialable(source, &addr)?;
        *slot = Some(addr);
    }
    let out: Vec<_> = tcp.into_iter().chain(sctp).collect();
    if out.is_empty() {
        return Err("announces no TCP or SCTP transport");
    }
    Ok(out)
}

fn check_dialable(source: IpAddr, addr: &TransportAddr) -> Result<(), &'static str> {
    for a in addr.addrs() {
        let ip = a.ip();
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) || ip.is_unspecified() {
            return Err("announces an address that cannot be dialed");
        }
        if ip.is_loopback() && !source.is_loopback() {
            return Err("announces a loopback address from another host");
        }
        if a.port() == 0 {
            return Err("announces port 0");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::param::{Address, SctpAddresses, TransportUse};
    use std::num::NonZeroU16;

    /// The tests' origin: the core only ever adds to it.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    fn sid(n: u32) -> ServerId {
        ServerId::new(n).expect("non-zero")
    }

    fn tcp(ip: &str, port: u16) -> Transport {
        Transport::Tcp {
            port: NonZeroU16::new(port).expect("port"),
            transport_use: TransportUse::DataOnly,
            addr: Address::new(ip.parse::<IpAddr>().expect("ip")),
        }
    }

    fn announce(server: u32, transports: Vec<Transport>) -> Vec<u8> {
        AsapMsg::ServerAnnounce {
            server_id: sid(server),
            transports,
        }
        .to_bytes()
        .expect("encodes")
    }

    fn src(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    fn at(s: &str) -> TransportAddr {
        s.parse().expect("address")
    }

    /// Spec §7.7: statics first, then announced; an announced entry expires T7 after its
    /// last announce, and each announce pushes the expiry back.
    #[test]
    fn announced_registrars_follow_the_statics_and_expire_after_t7() {
        let t0 = start();
        let mut list = RegistrarList::default();
        let statics = [at("192.0.2.9:3864")];
        let heard = list.handle_datagram(
            src("10.0.0.1"),
            &announce(7, vec![tcp("10.0.0.1", 3864)]),
            t0,
        );
        assert_eq!(
            heard,
            Heard::New {
                server_id: sid(7),
                addrs: vec![at("10.0.0.1:3864")]
            }
        );
        assert_eq!(
            list.candidates(&statics, t0, 0),
            vec![at("192.0.2.9:3864"), at("10.0.0.1:3864")]
        );
        // Refreshed at t0 + 4 s: still there at t0 + 8 s, gone at t0 + 9 s.
        let t4 = t0 + Duration::from_secs(4);
        assert_eq!(
            list.handle_datagram(
                src("10.0.0.1"),
                &announce(7, vec![tcp("10.0.0.1", 3864)]),
                t4
            ),
            Heard::Refreshed
        );
        assert_eq!(
            list.candidates(&statics, t0 + Duration::from_secs(8), 0)
                .len(),
            2
        );
        assert_eq!(
            list.candidates(&statics, t4 + T7_ENRP_OUTDATE, 0),
            vec![at("192.0.2.9:3864")]
        );
        assert_eq!(list.announced().count(), 0);
        assert_eq!(list.stats().announces, 2);
    }

    /// Spec §7.7: no transport parameters means the source address and the default port;
    /// an unspecified address means the source; TCP before SCTP; other transports skipped.
    #[test]
    fn an_announce_yields_tcp_first_and_the_source_where_it_names_no_address() {
        let s: IpAddr = "10.0.0.5".parse().expect("ip");
        assert_eq!(announced_addrs(s, &[]), Ok(vec![at("10.0.0.5:3864")]));
        let sctp = Transport::Sctp {
            port: NonZeroU16::new(3864).expect("port"),
            transport_use: TransportUse::DataOnly,
            addrs: SctpAddresses::new([Address::new(s)]).expect("one"),
        };
        let udp = Transport::Udp {
            port: NonZeroU16::new(9).expect("port"),
            addr: Address::new(s),
        };
        assert_eq!(
            announced_addrs(
                s,
                &[udp.clone(), sctp, tcp("0.0.0.0", 4000), tcp("10.0.0.6", 1)]
            ),
            Ok(vec![at("10.0.0.5:4000"), at("sctp:10.0.0.5:3864")])
        );
        let wildcards = Transport::Sctp {
            port: NonZeroU16::new(3864).expect("port"),
            transport_use: TransportUse::DataOnly,
            addrs: SctpAddresses::new([
                Address::new(IpAddr::from([0, 0, 0, 0])),
                Address::new(IpAddr::from([0u16; 8])),
            ])
            .expect("two"),
        };
        assert_eq!(
            announced_addrs(s, &[wildcards]),
            Ok(vec![at("sctp:10.0.0.5:3864")])
        );
        assert_eq!(
            announced_addrs(s, &[udp]),
            Err("announces no TCP or SCTP transport")
        );
        assert!(announced_addrs(s, &[tcp("239.0.0.50", 3864)]).is_err());
        assert!(announced_addrs(s, &[tcp("255.255.255.255", 3864)]).is_err());
        // A remote announcer cannot point at this host's loopback; a local one may.
        assert!(announced_addrs(s, &[tcp("127.0.0.1", 22)]).is_err());
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            announced_addrs(lo, &[tcp("127.0.0.1", 3864)]),
            Ok(vec![at("127.0.0.1:3864")])
        );
    }

    /// Malformed datagrams and other messages are counted and change nothing.
    #[test]
    fn malformed_datagrams_and_other_messages_are_counted_and_dropped() {
        let t0 = start();
        let mut list = RegistrarList::default();
        assert!(matches!(
            list.handle_datagram(src("10.0.0.1"), &[0x0a, 0, 0, 9, 1], t0),
            Heard::Malformed(_)
        ));
        assert!(matches!(
            list.handle_datagram(src("10.0.0.1"), b"", t0),
            Heard::Malformed(_)
        ));
        // An ASAP_ENDPOINT_KEEP_ALIVE_ACK (spec §13.6 vector): not an announce.
        let ack = hex::decode("080000180009000c4563686f506f6f6c000e0008deadbeef").expect("hex");
        assert_eq!(
            list.handle_datagram(src("10.0.0.1"), &ack, t0),
            Heard::Ignored("not an ASAP_SERVER_ANNOUNCE")
        );
        assert!(list.candidates(&[], t0, 0).is_empty());
        let stats = list.stats();
        assert_eq!((stats.malformed, stats.ignored, stats.announces), (2, 1, 0));
    }

    /// A forged announce costs one failed handshake per address per window: after a
    /// refusal the address is left out until the window ends, the window doubling up to
    /// the cap; a success forgets the hold. Configured registrars are never held.
    #[test]
    fn a_refused_announced_address_is_held_for_a_doubling_window() {
        let t0 = start();
        let mut list = RegistrarList::new(Duration::from_secs(3600));
        let forged = at("10.0.0.66:3864");
        list.handle_datagram(src("10.0.0.66"), &announce(66, vec![]), t0);
        list.handle_datagram(src("10.0.0.1"), &announce(1, vec![]), t0);
        assert!(list.is_announced(&forged));
        assert_eq!(list.handle_refused(&forged, t0), REFUSED_HOLD_FIRST);
        // Announced again and again: still held for the window.
        for s in 0..5 {
            let t = t0 + Duration::from_secs(s);
            list.handle_datagram(src("10.0.0.66"), &announce(66, vec![]), t);
            assert_eq!(list.candidates(&[], t, 0), vec![at("10.0.0.1:3864")]);
        }
        let t5 = t0 + REFUSED_HOLD_FIRST;
        assert_eq!(
            list.candidates(&[], t5, 0).len(),
            2,
            "tried again after the window"
        );
        assert_eq!(list.handle_refused(&forged, t5), REFUSED_HOLD_FIRST * 2);
        let mut t = t5;
        let mut window = REFUSED_HOLD_FIRST * 2;
        for _ in 0..10 {
            t += window;
            window = list.handle_refused(&forged, t);
        }
        assert_eq!(window, REFUSED_HOLD_MAX);
        list.handle_accepted(&forged);
        assert_eq!(list.candidates(&[], t, 0).len(), 2);
        // A configured address is tried whatever its announces did.
        list.handle_refused(&forged, t);
        assert_eq!(
            list.candidates(std::slice::from_ref(&forged), t, 0),
            vec![forged.clone(), at("10.0.0.1:3864")]
        );
        assert_eq!(list.stats().refused, 13);
    }

    /// At most MAX_ANNOUNCED kept; when full, a new registrar replaces only one that
    /// failed its handshake, so a flood cannot push out a good registrar; holds are
    /// bounded by MAX_HELD.
    #[test]
    fn the_list_is_bounded_and_a_flood_evicts_only_refused_entries() {
        let t0 = start();
        let mut list = RegistrarList::new(Duration::from_secs(3600));
        list.handle_datagram(src("10.0.0.1"), &announce(1, vec![]), t0);
        for i in 0..MAX_ANNOUNCED as u32 + 10 {
            let ip = format!("10.1.{}.{}", i / 200, i % 200 + 1);
            list.handle_datagram(src(&ip), &announce(100 + i, vec![]), t0);
        }
        assert_eq!(list.announced().count(), MAX_ANNOUNCED);
        assert_eq!(list.stats().full, 11);
        // Every flood entry refused: a newcomer takes one's place, the good one stays.
        let flood: Vec<TransportAddr> = list
            .announced()
            .flat_map(|(_, a)| a.to_vec())
            .filter(|a| *a != at("10.0.0.1:3864"))
            .collect();
        for a in &flood {
            list.handle_refused(a, t0);
        }
        assert!(matches!(
            list.handle_datagram(src("10.0.0.2"), &announce(2, vec![]), t0),
            Heard::New { .. }
        ));
        let kept: Vec<TransportAddr> = list.announced().flat_map(|(_, a)| a.to_vec()).collect();
        assert!(kept.contains(&at("10.0.0.1:3864")) && kept.contains(&at("10.0.0.2:3864")));
        assert_eq!(list.announced().count(), MAX_ANNOUNCED);
        for i in 0..MAX_HELD as u16 + 50 {
            list.handle_refused(
                &TransportAddr::Tcp(SocketAddr::new([10, 9, 0, 1].into(), i + 1)),
                t0,
            );
        }
        assert!(list.held.len() <= MAX_HELD);
    }

    fn presence(sender: u32, info: Option<Transport>) -> Vec<u8> {
        use crate::wire::param::{PeChecksum, ServerInformation};
        EnrpMsg {
            sender: sid(sender),
            receiver: 0,
            body: EnrpBody::Presence {
                reply_required: false,
                checksum: PeChecksum(0),
                server_info: info.map(|transport| ServerInformation {
                    server_id: sid(sender),
                    transport,
                }),
            },
        }
        .to_bytes()
        .expect("encodes")
    }

    /// Spec §9.2: a multicast presence yields a peer to dial, at most once per address
    /// per PRESENCE_REDIAL; its own presence, other messages and garbage are dropped.
    #[test]
    fn presences_become_dials_at_most_once_per_window() {
        let t0 = start();
        let mut p = PeerPresences::new(sid(1));
        assert_eq!(
            p.handle_datagram(
                src("10.0.0.2"),
                &presence(2, Some(tcp("0.0.0.0", 9902))),
                9902,
                t0
            ),
            Presence::Dial {
                server_id: sid(2),
                addr: at("10.0.0.2:9902")
            }
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            p.handle_datagram(src("10.0.0.2"), &presence(2, None), 9902, t1),
            Presence::Recent
        );
        assert_eq!(
            p.handle_datagram(src("10.0.0.1"), &presence(1, None), 9902, t1),
            Presence::Own
        );
        assert!(matches!(
            p.handle_datagram(
                src("10.0.0.3"),
                &presence(3, Some(tcp("127.0.0.1", 9902))),
                9902,
                t1
            ),
            Presence::Ignored(_)
        ));
        assert!(matches!(
            p.handle_datagram(src("10.0.0.3"), &announce(3, vec![]), 9902, t1),
            Presence::Malformed(_) | Presence::Ignored(_)
        ));
        assert!(matches!(
            p.handle_datagram(src("10.0.0.3"), b"\x01\x00", 9902, t1),
            Presence::Malformed(_)
        ));
        let later = t0 + PRESENCE_REDIAL;
        assert!(matches!(
            p.handle_datagram(src("10.0.0.2"), &presence(2, None), 9902, later),
            Presence::Dial { .. }
        ));
        // Bounded: a flood of distinct addresses stops being handed over at MAX_HELD.
        let mut dials = 0;
        for i in 0..MAX_HELD + 10 {
            let ip = format!("10.2.{}.{}", i / 200, i % 200 + 1);
            if matches!(
                p.handle_datagram(src(&ip), &presence(1000 + i as u32, None), 9902, later),
                Presence::Dial { .. }
            ) {
                dials += 1;
            }
        }
        assert_eq!(dials, MAX_HELD - 1);
    }

    /// A registrar that could not be reached (restarting) is held for a second, doubling
    /// to 30 s, and released when it announces itself anew after its entry expired; one
    /// that failed the handshake is not released by announcing again.
    #[test]
    fn an_unreachable_registrar_is_held_briefly_and_released_when_it_comes_back() {
        let t0 = start();
        let mut list = RegistrarList::default();
        let (down, forged) = (at("10.0.0.1:3864"), at("10.0.0.66:3864"));
        list.handle_datagram(src("10.0.0.1"), &announce(1, vec![]), t0);
        list.handle_datagram(src("10.0.0.66"), &announce(66, vec![]), t0);
        assert_eq!(list.handle_unreachable(&down, t0), UNREACHABLE_HOLD_FIRST);
        assert_eq!(list.handle_refused(&forged, t0), REFUSED_HOLD_FIRST);
        assert!(list.candidates(&[], t0, 0).is_empty());
        let t1 = t0 + UNREACHABLE_HOLD_FIRST;
        assert_eq!(list.candidates(&[], t1, 0), vec![down.clone()]);
        let mut window = list.handle_unreachable(&down, t1);
        assert_eq!(window, UNREACHABLE_HOLD_FIRST * 2);
        let mut t = t1;
        for _ in 0..10 {
            t += window;
            window = list.handle_unreachable(&down, t);
        }
        assert_eq!(window, UNREACHABLE_HOLD_MAX);
        // Both stop announcing (the entries expire), then announce again: the restarted
        // registrar is tried at once, the forger is not.
        let back = t + T7_ENRP_OUTDATE + Duration::from_secs(1);
        assert_eq!(list.candidates(&[], back, 0), Vec::<TransportAddr>::new());
        list.handle_refused(&forged, back);
        list.handle_datagram(src("10.0.0.1"), &announce(1, vec![]), back);
        list.handle_datagram(src("10.0.0.66"), &announce(66, vec![]), back);
        assert_eq!(list.candidates(&[], back, 0), vec![down]);
    }

    /// The same registrar is its first address, not its Server ID: a forged announce
    /// claiming a real registrar's ID adds a candidate (to be refused by the handshake)
    /// and does not move the real one.
    #[test]
    fn a_forged_server_id_does_not_replace_the_real_registrar() {
        let t0 = start();
        let mut list = RegistrarList::default();
        list.handle_datagram(src("10.0.0.1"), &announce(7, vec![]), t0);
        list.handle_datagram(src("10.0.0.66"), &announce(7, vec![]), t0);
        let all = list.candidates(&[], t0, 0);
        assert!(all.contains(&at("10.0.0.1:3864")) && all.contains(&at("10.0.0.66:3864")));
        // The random pick rotates the announced part.
        assert_ne!(list.candidates(&[], t0, 0), list.candidates(&[], t0, 1));
    }

    /// What a datagram of the property test is: garbage, or an announce (or presence)
    /// from one of many sources naming one of many addresses.
    #[derive(Debug, Clone)]
    enum Datagram {
        Bytes(Vec<u8>),
        Announce { from: u8, port: u16 },
        Presence { from: u8, sender: u32 },
        Refuse { from: u8 },
        Later(u16),
    }

    fn datagram() -> impl proptest::strategy::Strategy<Value = Datagram> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Datagram::Bytes),
            (any::<u8>(), any::<u16>()).prop_map(|(from, port)| Datagram::Announce { from, port }),
            (any::<u8>(), any::<u32>())
                .prop_map(|(from, sender)| Datagram::Presence { from, sender }),
            any::<u8>().prop_map(|from| Datagram::Refuse { from }),
            any::<u16>().prop_map(Datagram::Later),
        ]
    }

    proptest::proptest! {
        /// Bad input changes nothing and a flood stays bounded: any sequence of datagrams
        /// (garbage or announces from 256 sources), refusals and time never panics, keeps
        /// at most MAX_ANNOUNCED registrars and MAX_HELD holds, and never offers a held
        /// or expired address.
        #[test]
        fn any_datagrams_keep_the_list_bounded(steps in proptest::collection::vec(datagram(), 0..400)) {
            let mut now = start();
            let mut list = RegistrarList::default();
            let mut peers = PeerPresences::new(sid(1));
            for step in steps {
                match step {
                    Datagram::Bytes(b) => {
                        list.handle_datagram(src("10.0.0.1"), &b, now);
                        peers.handle_datagram(src("10.0.0.1"), &b, 9902, now);
                    }
                    Datagram::Announce { from, port } => {
                        let ip = format!("10.3.0.{from}");
                        let t = if port == 0 { vec![] } else { vec![tcp(&ip, port)] };
                        list.handle_datagram(src(&ip), &announce(u32::from(from) + 1, t), now);
                    }
                    Datagram::Presence { from, sender } => {
                        let ip = format!("10.3.0.{from}");
                        if let Some(s) = ServerId::new(sender) {
                            peers.handle_datagram(src(&ip), &presence(s.get(), None), 9902, now);
                        }
                    }
                    Datagram::Refuse { from } => {
                        let a = at(&format!("10.3.0.{from}:3864"));
                        if from % 2 == 0 {
                            list.handle_refused(&a, now);
                        } else {
                            list.handle_unreachable(&a, now);
                        }
                    }
                    Datagram::Later(ms) => now += Duration::from_millis(u64::from(ms)),
                }
                proptest::prop_assert!(list.announced().count() <= MAX_ANNOUNCED);
                proptest::prop_assert!(list.held.len() <= MAX_HELD);
                proptest::prop_assert!(peers.handed.len() <= MAX_HELD);
                for c in list.candidates(&[], now, 0) {
                    proptest::prop_assert!(!list.is_held(&c, now));
                    proptest::prop_assert!(list.is_announced(&c));
                }
            }
        }
    }
}
