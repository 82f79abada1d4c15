//! One registrar [`Core`] driven by arbitrary bytes: the body of the `core` fuzz target
//! (`fuzz/fuzz_targets/core.rs`) and of its ordinary test (`tests/drive.rs`, a few
//! hundred pseudo-random inputs in every `cargo test`).
//!
//! The bytes are a program, read one step at a time (a missing byte reads as 0, so every
//! input is a valid program): PUs', PEs' and an ungranted client's connections come and
//! go; they send well-formed messages built from a few bytes (registrations,
//! deregistrations, resolutions, keep-alive acks, unreachable reports) or raw bytes; two
//! ENRP peers come and go and send handle updates, presences, table requests and
//! takeovers, or raw bytes; time steps fire the core's timers; operators change the
//! grants and remove pools. Every message goes through the real codec (`to_bytes`, then
//! `decode`, like the daemon's connection task); a frame that does not decode is fed as
//! `Malformed`/`EnrpMalformed`.
//!
//! After each step the driver checks [`crate::invariants`]: the handlespace's
//! bookkeeping and checksums against its entries, audit before acknowledgement, and that
//! everything the core sends encodes. A panic in the core is a finding too (the fuzzer
//! reports it; the test fails).
//!
//! The driver behaves like the daemon: it feeds messages only on connections the core
//! was told are up, and tells it of a close it asked for (`Action::Close`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use asap::wire::param::{
    Address, HandleResolutionOption, Labels, Namespace, PeChecksum as WirePeChecksum, PeId, Policy,
    PolicyType, PoolElement, PoolHandle, ServerId, Transport, TransportUse,
};
use asap::wire::{AsapMsg, EnrpBody, EnrpMsg, UpdateAction};
use enrp_core::checksum::PeChecksum;
use enrp_core::handlespace::Limits;
use enrp_core::registrar::{Action, Config, ConnId, Core, Input, Remote, Scope, Timing};
use enrp_core::server_id_of;
use identity::{Action as Grantable, Grant, Serial, SpiffeId};

use crate::invariants::{self, DurableBeforeReply};
use crate::msg::grant;

/// Steps of one input at most: a longer input is cut, so that one fuzz input costs a
/// bounded time (each step is a handful of core calls and one invariant walk over at
/// most [`LIMITS`]`.max_pes` PEs).
pub const MAX_STEPS: usize = 4096;

/// Small handlespace limits, so that short inputs reach them (cause 0x6 paths).
pub const LIMITS: Limits = Limits {
    max_pools_per_namespace: 4,
    max_pes_per_pool: 6,
    max_pes: 12,
    max_pes_per_registrant: 8,
};

/// Raw frames are at most this many bytes: enough for any header and a few parameters
/// (the codec's own limits are fuzzed by `asap_message`/`enrp_message`), short enough
/// that a raw frame does not eat the steps after it.
const MAX_RAW: usize = 63;

/// The ASAP clients: (SPIFFE path, granted). The last holds a valid identity that no
/// grant names: everything it asks for must be refused.
const CLIENTS: [(&str, bool); 4] = [
    ("pe/p0", true),
    ("pe/p1", true),
    ("pu/u0", true),
    ("intruder/x", false),
];
/// The ENRP peers (SPIFFE paths).
const PEERS: [&str; 2] = ["registrar/r1", "registrar/r2"];
/// Pools the messages name (the third only with an unusual policy).
const POOLS: [&str; 3] = ["pool-0", "pool-1", "other"];

/// What one run did, to see that the inputs reach the core's paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Steps taken.
    pub steps: usize,
    /// Actions the core returned.
    pub actions: usize,
    /// Registrations the core accepted.
    pub accepted: usize,
    /// The most PEs the handlespace held at once.
    pub most_pes: usize,
}

/// The bytes, read as a program: each read takes the next byte, 0 once they run out.
struct Program<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Program<'_> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to [`MAX_RAW`] bytes, their count first.
    fn raw(&mut self) -> &[u8] {
        let n = usize::from(self.byte()) % (MAX_RAW + 1);
        let from = self.at.min(self.bytes.len());
        let to = (from + n).min(self.bytes.len());
        self.at = from + n;
        &self.bytes[from..to]
    }
}

/// The core, the state of its connections and the checks.
struct Driver {
    core: Core,
    sid: ServerId,
    base: Instant,
    now: Duration,
    /// Connection ids: clients are 1..=4, peers 5..=6.
    up: BTreeSet<u64>,
    report: Report,
}

fn spiffe(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://fuzz.test/{path}")).expect("SPIFFE ID")
}

fn all_grants() -> Vec<Grant> {
    vec![
        grant("spiffe://fuzz.test/pe/*", "pool-*", &[Grantable::Register]),
        grant(
            "spiffe://fuzz.test/pu/*",
            "*",
            &[Grantable::Resolve, Grantable::Report],
        ),
        grant("spiffe://fuzz.test/registrar/*", "*", &[Grantable::Peer]),
    ]
}

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, i as u8 + 1)
}

fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i as u8 + 2)
}

/// Runs the program `data` on a fresh core; `Err` says which invariant broke at which step.
pub fn run(data: &[u8]) -> Result<Report, String> {
    let mut p = Program { bytes: data, at: 0 };
    let me = spiffe("registrar/r0");
    let sid = server_id_of(&me);
    let mut config = Config::new(sid);
    config.timing = Timing::fast();
    config.limits = LIMITS;
    config.rng_seed = u64::from(p.byte());
    config.enrp_addr = Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        9902,
    ));
    let grants = all_grants();
    #[allow(clippy::disallowed_methods)] // an origin only: the core compares instants
    let base = Instant::now();
    let mut d = Driver {
        core: Core::new(config, grants),
        sid,
        base,
        now: Duration::ZERO,
        up: BTreeSet::new(),
        report: Report::default(),
    };
    while !p.done() && d.report.steps < MAX_STEPS {
        d.report.steps += 1;
        d.step(&mut p)
            .map_err(|e| format!("step {}: {e}", d.report.steps))?;
    }
    Ok(d.report)
}

impl Driver {
    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn step(&mut self, p: &mut Program<'_>) -> Result<(), String> {
        match p.byte() % 12 {
            0 => {
                let c = usize::from(p.byte()) % CLIENTS.len();
                self.connect_client(c)
            }
            1 => {
                let conn = 1 + u64::from(p.byte()) % CLIENTS.len() as u64;
                if self.up.remove(&conn) {
                    self.feed(Input::Closed { conn: ConnId(conn) })?;
                }
                Ok(())
            }
            2..=4 => {
                let c = usize::from(p.byte()) % CLIENTS.len();
                let msg = self.asap_msg(p, c);
                self.connect_client(c)?;
                self.send_asap(c, &msg)
            }
            5 => {
                let c = usize::from(p.byte()) % CLIENTS.len();
                self.connect_client(c)?;
                let conn = ConnId(1 + c as u64);
                let input = match AsapMsg::decode(p.raw()) {
                    Ok(msg) => Input::Asap { conn, msg },
                    Err(error) => Input::Malformed { conn, error },
                };
                self.feed(input)
            }
            6 => {
                let i = usize::from(p.byte()) % PEERS.len();
                let outbound = p.byte().is_multiple_of(2);
                self.connect_peer(i, outbound)
            }
            7 => {
                let conn = 1 + CLIENTS.len() as u64 + u64::from(p.byte()) % PEERS.len() as u64;
                if self.up.remove(&conn) {
                    self.feed(Input::PeerDown { conn: ConnId(conn) })?;
                }
                Ok(())
            }
            8 => {
                let i = usize::from(p.byte()) % PEERS.len();
                let body = self.enrp_body(p, i);
                self.connect_peer(i, false)?;
                self.send_enrp(i, body)
            }
            9 => {
                let i = usize::from(p.byte()) % PEERS.len();
                self.connect_peer(i, false)?;
                let conn = ConnId(1 + (CLIENTS.len() + i) as u64);
                let input = match EnrpMsg::decode(p.raw()) {
                    Ok(msg) => Input::Enrp { conn, msg },
                    Err(error) => Input::EnrpMalformed { conn, error },
                };
                self.feed(input)
            }
            10 => {
                // Up to about 4 s in one step: past every fast timer.
                let ms = u64::from(p.byte()) * 16;
                self.advance(Duration::from_millis(ms))
            }
            _ => self.operator(p),
        }
    }

    /// Time passes; the timers that are due fire, in order, as the daemon's one
    /// `sleep_until` fires them.
    fn advance(&mut self, by: Duration) -> Result<(), String> {
        let until = self.now + by;
        while let Some(t) = self.core.next_timeout() {
            let t = t.saturating_duration_since(self.base);
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            let actions = self.core.handle_timeout(self.instant());
            self.after(actions)?;
        }
        self.now = until;
        Ok(())
    }

    fn operator(&mut self, p: &mut Program<'_>) -> Result<(), String> {
        match p.byte() % 3 {
            0 => {
                // A subset of the grants (bit i keeps grant i).
                let keep = p.byte();
                let grants = all_grants()
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| keep & (1 << i) != 0)
                    .map(|(_, g)| g)
                    .collect::<Vec<_>>();
                self.feed(Input::Grants(grants))
            }
            1 => {
                let pool = PoolHandle::new(p.pick(&POOLS)).expect("pool handle");
                self.feed(Input::Remove {
                    scope: Scope::Pool(default_ns(), pool),
                    actor: "token:fuzz".to_owned(),
                })
            }
            _ => self.feed(Input::Remove {
                scope: Scope::Namespace(default_ns()),
                actor: "token:fuzz".to_owned(),
            }),
        }
    }

    fn connect_client(&mut self, c: usize) -> Result<(), String> {
        let conn = 1 + c as u64;
        if !self.up.insert(conn) {
            return Ok(());
        }
        let addr = SocketAddr::new(IpAddr::V4(client_ip(c)), 40_000 + c as u16);
        self.feed(Input::Connected {
            conn: ConnId(conn),
            client: Remote {
                id: spiffe(CLIENTS[c].0),
                serial: Serial::from_bytes(&[c as u8 + 1]),
                addr,
            },
            addrs: Vec::new(),
        })
    }

    fn connect_peer(&mut self, i: usize, outbound: bool) -> Result<(), String> {
        let conn = 1 + (CLIENTS.len() + i) as u64;
        if !self.up.insert(conn) {
            return Ok(());
        }
        let id = spiffe(PEERS[i]);
        let server_id = server_id_of(&id);
        self.feed(Input::PeerUp {
            conn: ConnId(conn),
            peer: Remote {
                id,
                serial: Serial::from_bytes(&[0x10 + i as u8]),
                addr: SocketAddr::new(IpAddr::V4(peer_ip(i)), 9902),
            },
            server_id,
            outbound,
        })
    }

    /// A well-formed ASAP message from client `c`, from a few bytes.
    fn asap_msg(&mut self, p: &mut Program<'_>, c: usize) -> AsapMsg {
        let pool_handle = PoolHandle::new(p.pick(&POOLS)).expect("pool handle");
        let pe_id = PeId::new(1 + u32::from(p.byte() % 16)).expect("non-zero");
        let namespace = match p.byte() % 4 {
            0 => Some(default_ns()),
            1 => Namespace::new("elsewhere"),
            _ => None,
        };
        match p.byte() % 6 {
            0 | 1 => {
                // Mostly the connection's own address (spec §7.1 step 3), sometimes not.
                let ip = if p.byte().is_multiple_of(8) {
                    Ipv4Addr::new(192, 0, 2, 1)
                } else {
                    client_ip(c)
                };
                let policy = match p.byte() % 4 {
                    0 => Policy::Random,
                    1 => Policy::LeastUsed { load: p.u32() },
                    // The private range, which a core without a selector for it selects
                    // round robin (docs/PROTOCOL-EXTENSIONS.md).
                    3 => Policy::private(PolicyType(0xFF00_0001), &[p.byte()]).expect("private"),
                    _ => Policy::RoundRobin,
                };
                AsapMsg::Registration {
                    namespace,
                    pool_handle,
                    pool_element: PoolElement {
                        pe_id,
                        home_server_id: 0,
                        registration_life: 1 + i32::from(p.byte()) * 40,
                        user_transport: Transport::Tcp {
                            port: NonZeroU16::new(7777).expect("non-zero"),
                            transport_use: TransportUse::DataOnly,
                            addr: Address::new(IpAddr::V4(ip)),
                        },
                        policy,
                        asap_transport: None,
                        labels: zone(p),
                        status: Default::default(),
                        serving_identity: None,
                    },
                }
            }
            2 => AsapMsg::Deregistration {
                namespace,
                pool_handle,
                pe_id,
            },
            3 => AsapMsg::HandleResolution {
                namespace,
                pool_handle,
                option: (p.byte().is_multiple_of(2)).then_some(HandleResolutionOption {
                    items: u32::from(p.byte() % 8),
                }),
                hints: zone(p),
            },
            4 => AsapMsg::EndpointKeepAliveAck { pool_handle, pe_id },
            _ => AsapMsg::EndpointUnreachable {
                namespace,
                pool_handle,
                pe_id,
            },
        }
    }

    /// A well-formed ENRP message body from peer `i`, from a few bytes: its own PEs, PEs
    /// it claims of others (ours too), checksums, table requests, takeovers.
    fn enrp_body(&mut self, p: &mut Program<'_>, i: usize) -> EnrpBody {
        let peer = server_id_of(&spiffe(PEERS[i]));
        let other = server_id_of(&spiffe(PEERS[1 - i]));
        let home = match p.byte() % 4 {
            0 => other,
            1 => self.sid,
            _ => peer,
        };
        let pool_handle = PoolHandle::new(p.pick(&POOLS)).expect("pool handle");
        let pe_id = PeId::new(1 + u32::from(p.byte() % 16)).expect("non-zero");
        let target = if p.byte().is_multiple_of(2) {
            other
        } else {
            self.sid
        };
        match p.byte() % 7 {
            0 | 1 => EnrpBody::HandleUpdate {
                action: if p.byte().is_multiple_of(3) {
                    UpdateAction::DelPe
                } else {
                    UpdateAction::AddPe
                },
                namespace: default_ns(),
                pool_handle,
                pool_element: PoolElement {
                    pe_id,
                    home_server_id: home.get(),
                    registration_life: 1 + i32::from(p.byte()) * 40,
                    user_transport: Transport::Tcp {
                        port: NonZeroU16::new(7777).expect("non-zero"),
                        transport_use: TransportUse::DataOnly,
                        addr: Address::new(IpAddr::V4(Ipv4Addr::new(10, 3, 0, p.byte() | 1))),
                    },
                    policy: Policy::RoundRobin,
                    asap_transport: None,
                    labels: Default::default(),
                    status: Default::default(),
                    serving_identity: None,
                },
                registrant: None,
            },
            2 => EnrpBody::Presence {
                reply_required: p.byte().is_multiple_of(2),
                // The checksum of what this registrar holds for the peer, or a wrong one.
                checksum: if p.byte().is_multiple_of(2) {
                    WirePeChecksum(PeChecksum::EMPTY)
                } else {
                    WirePeChecksum(self.core.handlespace().checksum(peer))
                },
                server_info: None,
            },
            3 => EnrpBody::HandleTableRequest {
                own_children_only: p.byte().is_multiple_of(2),
            },
            4 => EnrpBody::InitTakeover { target },
            5 => EnrpBody::TakeoverServer { target },
            _ => EnrpBody::ListRequest,
        }
    }

    /// Remote `c` sends `msg`: encoded and decoded as on a real connection.
    fn send_asap(&mut self, c: usize, msg: &AsapMsg) -> Result<(), String> {
        let bytes = msg
            .to_bytes()
            .map_err(|e| format!("the driver's {} does not encode: {e}", msg.name()))?;
        let msg = AsapMsg::decode(&bytes)
            .map_err(|e| format!("a {} does not decode after encoding: {e}", msg.name()))?;
        self.feed(Input::Asap {
            conn: ConnId(1 + c as u64),
            msg,
        })
    }

    fn send_enrp(&mut self, i: usize, body: EnrpBody) -> Result<(), String> {
        let msg = EnrpMsg {
            sender: server_id_of(&spiffe(PEERS[i])),
            receiver: self.sid.get(),
            body,
        };
        let bytes = msg
            .to_bytes()
            .map_err(|e| format!("the driver's ENRP message does not encode: {e}"))?;
        let msg = EnrpMsg::decode(&bytes)
            .map_err(|e| format!("an ENRP message does not decode after encoding: {e}"))?;
        self.feed(Input::Enrp {
            conn: ConnId(1 + (CLIENTS.len() + i) as u64),
            msg,
        })
    }

    fn feed(&mut self, input: Input) -> Result<(), String> {
        let actions = self.core.handle(input, self.instant());
        self.after(actions)
    }

    /// Checks a batch of actions and the handlespace after it, then tells the core of the
    /// closes it asked for (the daemon's connection tasks do, once closed).
    fn after(&mut self, actions: Vec<Action>) -> Result<(), String> {
        self.report.actions += actions.len();
        let mut durable = DurableBeforeReply::new();
        let mut closes = Vec::new();
        for action in &actions {
            durable.observe(action).map_err(|pe| {
                format!("PE {} acknowledged before a durable audit record", pe.get())
            })?;
            match action {
                Action::Send { conn, msg } => {
                    msg.to_bytes().map_err(|e| {
                        format!("the core sent a {} that does not encode: {e}", msg.name())
                    })?;
                    if matches!(msg, AsapMsg::RegistrationResponse { reject: false, .. }) {
                        self.report.accepted += 1;
                        // A registration by an identity no grant names is never accepted.
                        if conn.0 == CLIENTS.len() as u64 {
                            return Err("the ungranted client's registration was accepted".into());
                        }
                    }
                }
                Action::SendEnrp { msg, .. } => {
                    msg.to_bytes()
                        .map_err(|e| format!("the core sent ENRP that does not encode: {e}"))?;
                }
                Action::Close { conn, .. } => closes.push(conn.0),
                _ => {}
            }
        }
        let homes = [self.sid]
            .into_iter()
            .chain(PEERS.iter().map(|p| server_id_of(&spiffe(p))));
        invariants::handlespace_consistent(self.core.handlespace(), homes)?;
        self.report.most_pes = self.report.most_pes.max(self.core.handlespace().pe_count());
        for conn in closes {
            if self.up.remove(&conn) {
                let input = if conn as usize > CLIENTS.len() {
                    Input::PeerDown { conn: ConnId(conn) }
                } else {
                    Input::Closed { conn: ConnId(conn) }
                };
                self.feed(input)?;
            }
        }
        Ok(())
    }
}

fn default_ns() -> Namespace {
    Namespace::new("default").expect("namespace")
}

/// No labels (or hints), or a `zone` of two (docs/PROTOCOL-EXTENSIONS.md).
fn zone(p: &mut Program<'_>) -> Labels {
    match p.byte() % 3 {
        0 => Labels::default(),
        z => Labels::new([("zone", if z == 1 { "a" } else { "b" })]).expect("valid"),
    }
}
