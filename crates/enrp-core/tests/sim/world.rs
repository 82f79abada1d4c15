//! The simulated world: registrars (real [`Core`]s), PEs, PUs, links, a clock and an event
//! queue, all driven by one seed.
//!
//! How it mirrors `enrpd` (`src/daemon/`):
//! - Each registrar's core gets its inputs and `handle_timeout` at the exact time of its
//!   `next_timeout`, like the daemon's one `sleep_until`. Actions are carried out in order;
//!   audit records are durable at once (the commit gate opens immediately).
//! - Every message is encoded with the real codec (`to_bytes`) and decoded at the
//!   receiver (`decode`), so the wire format is exercised; a frame that does not decode
//!   becomes `EnrpMalformed`/`Malformed` as in the daemon. (Framing by length is not
//!   simulated: a message is one frame.)
//! - A link is a TCP connection: an ordered stream per direction with a random delay
//!   per message (never reordered), a connect and a TLS handshake delay, and `PeerUp`
//!   (`Connected`) at each end before any message from the other end. A `Close` action
//!   sends what was queued, then EOF; a reset (crash, cut) loses what was in flight and
//!   each live end hears `PeerDown` (`Closed`) a little later.
//! - Registrars dial their configured peers and those they learn from lists
//!   (`Action::DialPeer`) with the redial back-off of `daemon/peer.rs` (100 ms doubling to
//!   5 s, reset after a connection that lasted 2 s). A dial to a crashed or partitioned
//!   registrar fails quickly (the real `TcpStream::connect` may hang for the kernel's
//!   SYN retries instead).
//! - A crash drops the `Core`; a restart makes a new one (same identity and Server ID,
//!   empty handlespace) which, having peers configured, goes through the mentor start-up.
//! - Partitions split the registrars in two: ENRP links across are either cut (reset) or
//!   stalled (held, delivered after the heal unless a core gives up first); dials across
//!   fail while it lasts. ASAP links are not partitioned (a PE losing its registrar is
//!   simulated by resets and registrar crashes).
//! - PEs follow `asap::client::pe`: hunt a registrar, register, answer keep-alives,
//!   re-register every T4, hunt another registrar (same PE ID) when the connection is
//!   lost or the registration refused for a transient cause (0x6, while a registrar
//!   starts); a permanent cause would end the PE (invariant 7). Chaos makes them deregister, hang (stop answering
//!   keep-alives), crash, or lose their connection. A restarted PE takes a new PE ID.
//! - PUs resolve random pools on a registrar and reconnect elsewhere when it goes.
//!
//! Invariants (each failure names its number):
//! 1. After the heal and a quiet period: every registrar is up, past start-up, connected
//!    to every other (full mesh through the list exchange) with matching PRESENCE
//!    checksums; all hold the same handlespace, whose per-home checksums agree; and that
//!    handlespace is the truth: exactly the PEs registered and alive, each with the
//!    registrar it is connected to as home.
//! 2. At quiescence no PE is owned (home = itself) by two registrars.
//! 3. a) Each crash of a registrar leads to at most one completed takeover of it (checked
//!    for crashes that leave the survivors a full mesh, with no partition and no other
//!    crash or restart meanwhile: a split network may take over twice by design). b) No registrar ever holds a peer's PE
//!    longer than its registration life after the last ADD_PE or handle table entry that
//!    refreshed it (checked every 50 ms and at each resolution).
//! 4. No resolution returns a PE removed more than one keep-alive timeout earlier:
//!    a) by the registrar the PE was registered with, counted from when the PE went away
//!    (deregistration answered; hang, plus the keep-alive detection time; crash, plus the
//!    connection grace); b) by any registrar, counted from its home's DEL_PE, when the
//!    link between the two stayed up and unstalled since before that DEL_PE and nothing
//!    newer about the PE reached the registrar since (it may come back under another
//!    home, and a TAKEOVER_SERVER may move it to the remover: spec §9.8 step 4 moves
//!    every PE the receiver holds for the target, also those the taker never heard of;
//!    the PRESENCE checksum then finds the difference, spec §9.6).
//! 5. Every acknowledged registration, re-registration and deregistration is preceded in
//!    its batch by its audit record with `Durability::BeforeReply` (STYLE.md §2).
//! 6. A Byzantine registrar (issue 16; half the seeds): the last one, a granted peer whose
//!    core is honest but which also, during the chaos, forges TAKEOVER_SERVERs (with or
//!    without INIT_TAKEOVER) of live registrars, ADD_PEs and unsolicited handle tables
//!    naming itself home of others' PEs, empty handle tables, DEL_PEs of others' PEs and
//!    lists of addresses no registrar may dial.
//!    No message of it makes an honest registrar remove a PE whose home is another
//!    registrar that it holds alive, or re-home such a PE to the Byzantine; and the
//!    honest registrars (with it) still converge (invariant 1). What it announces as its
//!    own is believed, as from any granted peer: a PE it names after that PE's removal
//!    may come back at the registrar it told (and be taken over from it), which 4a then
//!    excuses.
//! 7. No PE gives up (issue 25): every refusal a PE meets is transient in the sense of
//!    `ErrorCause::is_transient`, as `asap::client::Error::is_transient` decides it (0x6
//!    Lack of Resources from a registrar still starting), which the PE rides out by
//!    hunting on; a permanent cause, on which `asap::client::pe::run` would return,
//!    fails the run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use asap::wire::param::{
    Address, ErrorCause, HandleResolutionOption, Namespace, PeId, Policy, PoolElement, PoolHandle,
    ServerId, Transport, TransportUse,
};
use asap::wire::{AsapMsg, Decoded, EnrpBody, EnrpMsg, PeEntry, Resolution, UpdateAction};
use enrp_core::registrar::{
    Action, AuditAction, Client, Config, ConnId, Core, Durability, Input, PeKey, PeerState, Timing,
};
use enrp_core::server_id_of;
use identity::{Grant, Serial, SpiffeId};

use crate::rng::Rng;

/// `daemon/peer.rs`: first redial delay, longest, and what counts as a stable connection.
const REDIAL_MIN: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_secs(5);
const STABLE: Duration = Duration::from_secs(2);
/// `daemon::Settings::handshake_timeout`'s default.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `daemon/peer.rs`: most registrars dialed because a list named them.
const MAX_DISCOVERED: usize = 256;
/// The PEs' registration life, and their T4 re-registration interval as
/// `asap::client::pe::PeConfig::reregistration_interval` computes it for that life.
const REGISTRATION_LIFE: Duration = Duration::from_secs(4);
const REREGISTRATION: Duration = Duration::from_millis(1333);
/// How often invariant 3b is checked.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// A run that needs more events than this is stuck in a loop.
const MAX_EVENTS: u64 = 20_000_000;
/// Trace lines kept for a failure report.
const TRACE_TAIL: usize = 60;

/// The knobs of one run, all drawn from its seed.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) seed: u64,
    pub(crate) registrars: usize,
    pub(crate) pes: usize,
    pub(crate) pus: usize,
    pub(crate) pools: usize,
    /// Registrars crash and restart.
    pub(crate) crashes: bool,
    /// The registrars' network splits.
    pub(crate) partitions: bool,
    /// PEs deregister, hang, crash and lose connections.
    pub(crate) pe_churn: bool,
    /// Longest one-way delay of a message.
    pub(crate) max_delay: Duration,
    /// How long chaos lasts, then how long everything is left alone before the final check.
    pub(crate) chaos: Duration,
    pub(crate) quiet: Duration,
    /// The last registrar forges messages during the chaos (invariant 6).
    pub(crate) byzantine: bool,
}

impl Scenario {
    /// `heavy` (`RSP_SIM_HEAVY=1`): more registrars, PEs, delay and chaos, for sweeps.
    pub(crate) fn from_seed(seed: u64, heavy: bool) -> Self {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(17));
        // One run in three crashes only, one partitions only, one does both: crashes
        // alone are where invariant 3a can be checked.
        let (crashes, partitions) = match rng.range(0, 2) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        let h = u64::from(heavy);
        Self {
            seed,
            registrars: rng.range(2 + h, 5 + 2 * h) as usize,
            pes: rng.range(3 + 5 * h, 10 + 10 * h) as usize,
            pus: rng.range(1, 3) as usize,
            pools: rng.range(1, 3) as usize,
            crashes,
            partitions,
            pe_churn: rng.chance(0.8),
            max_delay: rng.ms(2, 40 + 30 * h),
            chaos: rng.ms(4_000 + 4_000 * h, 8_000 + 7_000 * h),
            // Long enough for a redial at the 5 s back-off, a mentor timeout and the
            // registration life of whatever a split left behind.
            quiet: Duration::from_secs(12),
            byzantine: rng.chance(0.5),
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) scenario: Scenario,
    pub(crate) failure: Option<String>,
    pub(crate) trace_tail: Vec<String>,
    /// A hash of every delivery (time, receiver, bytes): equal for equal runs.
    pub(crate) digest: u64,
    pub(crate) simulated: Duration,
    pub(crate) stats: Stats,
}

/// Counters, to see what the seeds covered.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) messages: u64,
    pub(crate) resolutions: u64,
    pub(crate) returned_pes: u64,
    pub(crate) crashes: u64,
    pub(crate) partitions: u64,
    pub(crate) takeovers: u64,
    /// Crash episodes for which invariant 3a was checked.
    pub(crate) takeover_episodes_checked: u64,
    pub(crate) pe_deaths: u64,
    pub(crate) stale_checks_4b: u64,
    /// Messages the Byzantine registrar forged (invariant 6).
    pub(crate) forged: u64,
    /// Registrations refused with 0x6 Lack of Resources (a registrar starting), ridden
    /// out (invariant 7).
    pub(crate) refusals_0x6: u64,
    /// Runs' moments when every registrar crashed at once.
    pub(crate) fleet_restarts: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Self) {
        self.messages += o.messages;
        self.resolutions += o.resolutions;
        self.returned_pes += o.returned_pes;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.takeovers += o.takeovers;
        self.takeover_episodes_checked += o.takeover_episodes_checked;
        self.pe_deaths += o.pe_deaths;
        self.stale_checks_4b += o.stale_checks_4b;
        self.forged += o.forged;
        self.refusals_0x6 += o.refusals_0x6;
        self.fleet_restarts += o.fleet_restarts;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages, {} resolutions ({} PEs returned), {} registrar crashes, \
             {} partitions, {} takeovers completed ({} crash episodes checked for 3a), \
             {} PE deaths, {} link-stable resolutions checked for 4b, {} forged ENRP messages, \
             {} registrations refused with 0x6 and ridden out, {} whole-fleet crashes",
            self.messages,
            self.resolutions,
            self.returned_pes,
            self.crashes,
            self.partitions,
            self.takeovers,
            self.takeover_episodes_checked,
            self.pe_deaths,
            self.stale_checks_4b,
            self.forged,
            self.refusals_0x6,
            self.fleet_restarts
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Reg(usize),
    Pe(usize),
    Pu(usize),
}

type LinkId = u64;

#[derive(Debug)]
enum Event {
    /// Deliver what is due on a link in direction `from` → `1 - from`.
    Pump {
        link: LinkId,
        from: usize,
    },
    /// The handshake finished at end `side`.
    Up {
        link: LinkId,
        side: usize,
    },
    /// End `side` learns that the link is gone (EOF, reset, or its own close).
    Down {
        link: LinkId,
        side: usize,
    },
    /// A registrar's dial loop tries `target`.
    Dial {
        reg: usize,
        target: usize,
        epoch: u64,
    },
    Chaos,
    EndChaos,
    Restart {
        reg: usize,
    },
    Heal {
        id: u64,
    },
    PeTick {
        pe: usize,
        epoch: u64,
    },
    PuTick {
        pu: usize,
    },
    PeKill {
        pe: usize,
        epoch: u64,
    },
    Check,
}

struct End {
    node: Node,
    /// The node's incarnation when the link was made: a restarted node hears nothing of
    /// its former life's links.
    inc: u32,
    up_at: Duration,
    up: bool,
    down: bool,
}

#[derive(Default)]
struct Dir {
    /// (ready time, frame; `None` is the EOF after a close).
    queue: VecDeque<(Duration, Option<Vec<u8>>)>,
    last: Duration,
    pumping: bool,
    /// The writer closed: nothing more is sent.
    closed: bool,
    /// The reader is gone: everything is dropped.
    discard: bool,
}

struct Link {
    enrp: bool,
    ends: [End; 2],
    /// `dirs[s]` carries from end `s` to end `1 - s`.
    dirs: [Dir; 2],
    stalled: bool,
    /// The dial loop that made it (end 0 is the dialer).
    dialer: Option<(usize, u64)>,
    created: Duration,
}

struct Dialer {
    epoch: u64,
    delay: Duration,
    configured: bool,
    /// It has reached its target before (`answered` in `dial_loop`).
    answered: bool,
}

struct Registrar {
    id: SpiffeId,
    sid: ServerId,
    ip: Ipv4Addr,
    core: Option<Core>,
    inc: u32,
    configured: Vec<usize>,
    dialers: BTreeMap<usize, Dialer>,
    links: BTreeSet<LinkId>,
    down_since: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeState {
    Off,
    Hunting,
    Connecting,
    Registering,
    Registered,
    Deregistering,
    Hung,
}

struct Pe {
    id: SpiffeId,
    ip: Ipv4Addr,
    pool: usize,
    pe_id: Option<PeId>,
    state: PeState,
    epoch: u64,
    inc: u32,
    link: Option<LinkId>,
    registrar: Option<usize>,
    /// The registrar (and its incarnation) that acknowledged the current registration.
    registered_at: Option<(usize, u32)>,
    last_registrar: Option<usize>,
    /// Restarts are off after the chaos.
    may_restart: bool,
}

struct Pu {
    id: SpiffeId,
    ip: Ipv4Addr,
    inc: u32,
    link: Option<LinkId>,
}

/// A PE that went away: who held it, since when, and how long its removal may take.
struct Gone {
    at: Duration,
    bound: Duration,
    registrar: (usize, u32),
    why: &'static str,
}

struct Partition {
    id: u64,
    side: Vec<bool>,
}

pub(crate) struct World {
    sc: Scenario,
    rng: Rng,
    base: Instant,
    now: Duration,
    seq: u64,
    events: BTreeMap<(Duration, u64), Event>,
    regs: Vec<Registrar>,
    pes: Vec<Pe>,
    pus: Vec<Pu>,
    links: BTreeMap<LinkId, Link>,
    next_link: LinkId,
    next_pe_id: u32,
    timing: Timing,
    grants: Vec<Grant>,
    partition: Option<Partition>,
    next_partition: u64,
    chaos_over: bool,
    // The oracle.
    /// Per unordered registrar pair: the last time a link between them changed.
    pair_event: BTreeMap<(usize, usize), Duration>,
    /// When a registrar incarnation last sent DEL_PE for a PE it was home of.
    del_sent: BTreeMap<(usize, u32, PeKey), Duration>,
    /// When a registrar incarnation last heard anything of a PE from a peer (ADD_PE, a
    /// handle table entry, a TAKEOVER_SERVER that moves it).
    learned: BTreeMap<(usize, u32, PeKey), Duration>,
    /// When a registrar incarnation last accepted a refresh of a peer's PE.
    refreshed: BTreeMap<(usize, u32, PeKey), Duration>,
    /// When a registrar incarnation last heard a peer's ADD_PE (or table entry) for a PE
    /// it did not move at once: a re-home waiting for the old home's withdrawal, whose
    /// registration life counts from then (docs/ENRP-TRUST.md §2). Keyed by the sender.
    claimed: BTreeMap<(usize, u32, PeKey, u32), Duration>,
    /// When the Byzantine last named a PE ID to a registrar incarnation as its own (its
    /// forged ADD_PEs and tables): invariant 4a does not hold what follows against the
    /// registrar (a granted peer may announce PEs under its grants; see invariant 6).
    byzantine_named: BTreeMap<(usize, u32, PeId), Duration>,
    gone: BTreeMap<PeId, Gone>,
    /// Crash episodes: (registrar, crashed at, restarted at, whether the survivors were
    /// a full mesh then).
    episodes: Vec<(usize, Duration, Option<Duration>, bool)>,
    /// Takeovers completed: (time, by registrar, target registrar).
    takeovers: Vec<(Duration, usize, usize)>,
    /// Partitions and crashes/restarts, as (start, end) intervals, for 3a.
    disturbances: Vec<(Duration, Duration, Option<usize>)>,
    failure: Option<String>,
    trace: VecDeque<String>,
    /// Keep every trace line, not just the tail (`RSP_SIM_TRACE=1`).
    full_trace: bool,
    /// Trace every ENRP message too (`RSP_SIM_TRACE=2`).
    trace_messages: bool,
    digest: u64,
    stats: Stats,
}

fn pool_handle(i: usize) -> PoolHandle {
    PoolHandle::new(format!("pool-{i}")).expect("pool handle")
}

/// Pool 1 selects at random: the registrars' own RNGs take part in the run.
fn policy(pool: usize) -> Policy {
    if pool == 1 {
        Policy::Random
    } else {
        Policy::RoundRobin
    }
}

fn grant(identity: &str, pools: &str, actions: &[identity::Action]) -> Grant {
    Grant {
        identity: identity.parse().expect("identity pattern"),
        namespace: "default".parse().expect("namespace pattern"),
        pools: pools.parse().expect("pool pattern"),
        actions: actions.iter().copied().collect(),
    }
}

fn spiffe(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://sim.test/{path}")).expect("SPIFFE ID")
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl World {
    pub(crate) fn new(sc: Scenario) -> Self {
        let mut rng = Rng::new(sc.seed);
        let grants = vec![
            grant(
                "spiffe://sim.test/pe/*",
                "pool-*",
                &[identity::Action::Register],
            ),
            grant(
                "spiffe://sim.test/pu/*",
                "*",
                &[identity::Action::Resolve, identity::Action::Report],
            ),
            grant(
                "spiffe://sim.test/registrar/*",
                "*",
                &[identity::Action::Peer],
            ),
        ];
        let regs = (0..sc.registrars)
            .map(|i| {
                let id = spiffe(&format!("registrar/r{i}"));
                // Each registrar but the first is configured with an earlier one (so the
                // configuration is connected) and maybe more; the rest comes from lists.
                let mut configured = Vec::new();
                if i > 0 {
                    configured.push(rng.range(0, i as u64 - 1) as usize);
                    for j in 0..sc.registrars {
                        if j != i && !configured.contains(&j) && rng.chance(0.2) {
                            configured.push(j);
                        }
                    }
                }
                Registrar {
                    sid: server_id_of(&id),
                    id,
                    ip: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                    core: None,
                    inc: 0,
                    configured,
                    dialers: BTreeMap::new(),
                    links: BTreeSet::new(),
                    down_since: None,
                }
            })
            .collect();
        let pes = (0..sc.pes)
            .map(|i| Pe {
                id: spiffe(&format!("pe/p{i}")),
                ip: Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1),
                pool: i % sc.pools,
                pe_id: None,
                state: PeState::Off,
                epoch: 0,
                inc: 0,
                link: None,
                registrar: None,
                registered_at: None,
                last_registrar: None,
                may_restart: true,
            })
            .collect();
        let pus = (0..sc.pus)
            .map(|i| Pu {
                id: spiffe(&format!("pu/u{i}")),
                ip: Ipv4Addr::new(10, 2, 0, i as u8 + 1),
                inc: 0,
                link: None,
            })
            .collect();
        #[allow(clippy::disallowed_methods)] // an origin only: the cores compare instants
        let base = Instant::now();
        Self {
            sc,
            rng,
            base,
            now: Duration::ZERO,
            seq: 0,
            events: BTreeMap::new(),
            regs,
            pes,
            pus,
            links: BTreeMap::new(),
            next_link: 1,
            next_pe_id: 1,
            timing: Timing::fast(),
            grants,
            partition: None,
            next_partition: 0,
            chaos_over: false,
            pair_event: BTreeMap::new(),
            del_sent: BTreeMap::new(),
            refreshed: BTreeMap::new(),
            claimed: BTreeMap::new(),
            byzantine_named: BTreeMap::new(),
            learned: BTreeMap::new(),
            gone: BTreeMap::new(),
            episodes: Vec::new(),
            takeovers: Vec::new(),
            disturbances: Vec::new(),
            failure: None,
            trace: VecDeque::new(),
            full_trace: std::env::var_os("RSP_SIM_TRACE").is_some(),
            trace_messages: std::env::var("RSP_SIM_TRACE").is_ok_and(|v| v == "2"),
            digest: 0xcbf2_9ce4_8422_2325,
            stats: Stats::default(),
        }
    }

    fn at(&mut self, when: Duration, ev: Event) {
        self.seq += 1;
        self.events.insert((when.max(self.now), self.seq), ev);
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn log(&mut self, line: String) {
        if self.trace.len() == TRACE_TAIL && !self.full_trace {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {line}", self.now.as_secs_f64()));
    }

    fn fail(&mut self, msg: String) {
        if self.failure.is_none() {
            self.log(format!("FAILED: {msg}"));
            self.failure = Some(format!("at {:.3}s: {msg}", self.now.as_secs_f64()));
        }
    }

    fn delay(&mut self) -> Duration {
        let max = self.sc.max_delay.as_micros() as u64;
        self.rng.us(200, max.max(200))
    }

    pub(crate) fn run(mut self) -> Outcome {
        for i in 0..self.regs.len() {
            // Registrars come up over the first half second.
            let t = self.rng.ms(0, 500);
            self.at(t, Event::Restart { reg: i });
        }
        for pe in 0..self.pes.len() {
            let t = self.rng.ms(600, 1500);
            self.at(t, Event::PeTick { pe, epoch: 0 });
        }
        for pu in 0..self.pus.len() {
            let t = self.rng.ms(600, 1500);
            self.at(t, Event::PuTick { pu });
        }
        self.at(Duration::from_millis(1500), Event::Chaos);
        let chaos_end = self.sc.chaos;
        self.at(chaos_end, Event::EndChaos);
        self.at(CHECK_EVERY, Event::Check);
        let end = chaos_end + self.sc.quiet;
        let mut count = 0u64;
        while self.failure.is_none() {
            count += 1;
            if count > MAX_EVENTS {
                self.fail("too many events: a loop?".to_owned());
                break;
            }
            // The earliest of: the next event, the next registrar timer.
            let next_event = self.events.first_key_value().map(|((t, _), _)| *t);
            let next_timer = self
                .regs
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let t = r.core.as_ref()?.next_timeout()?;
                    Some((t.saturating_duration_since(self.base), i))
                })
                .min();
            let take_timer = match (next_event, next_timer) {
                (None, None) => break,
                (Some(e), Some((t, _))) => t < e,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if take_timer {
                let (t, reg) = next_timer.expect("checked");
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                let now = self.instant();
                let actions = match self.regs[reg].core.as_mut() {
                    Some(core) => core.handle_timeout(now),
                    None => continue,
                };
                self.execute(reg, actions);
            } else {
                let Some(((t, _), ev)) = self.events.pop_first() else {
                    break;
                };
                if t > end {
                    break;
                }
                self.now = t;
                self.handle(ev);
            }
        }
        if self.failure.is_none() {
            self.now = end;
            self.final_check();
        }
        Outcome {
            scenario: self.sc.clone(),
            failure: self.failure.take(),
            trace_tail: self.trace.iter().cloned().collect(),
            digest: self.digest,
            simulated: self.now,
            stats: self.stats.clone(),
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Pump { link, from } => self.pump(link, from),
            Event::Up { link, side } => self.link_up(link, side),
            Event::Down { link, side } => self.link_down(link, side),
            Event::Dial { reg, target, epoch } => self.dial(reg, target, epoch),
            Event::Chaos => self.chaos(),
            Event::EndChaos => self.end_chaos(),
            Event::Restart { reg } => self.restart(reg),
            Event::Heal { id } => self.heal(id),
            Event::PeTick { pe, epoch } => self.pe_tick(pe, epoch),
            Event::PuTick { pu } => self.pu_tick(pu),
            Event::PeKill { pe, epoch } => {
                if self.pes[pe].epoch == epoch && self.pes[pe].state == PeState::Hung {
                    self.pe_stop(pe, "killed after hanging");
                }
            }
            Event::Check => {
                self.check_peer_pe_life();
                self.at(self.now + CHECK_EVERY, Event::Check);
            }
        }
    }

    // ---- links ----

    fn node_inc(&self, node: Node) -> Option<u32> {
        match node {
            Node::Reg(i) => self.regs[i].core.as_ref().map(|_| self.regs[i].inc),
            Node::Pe(i) => Some(self.pes[i].inc),
            Node::Pu(i) => Some(self.pus[i].inc),
        }
    }

    fn end_alive(&self, link: &Link, side: usize) -> bool {
        let e = &link.ends[side];
        !e.down && self.node_inc(e.node) == Some(e.inc)
    }

    /// Opens a link from `a` (end 0, the dialer or ASAP client) to `b` (end 1): connect,
    /// then the handshake ends at the dialer and a little later at the acceptor.
    fn connect(&mut self, a: Node, b: Node, enrp: bool, dialer: Option<(usize, u64)>) -> LinkId {
        let id = self.next_link;
        self.next_link += 1;
        let connected = self.now + self.delay() + self.delay();
        let up0 = connected + self.delay();
        let up1 = up0 + self.delay();
        let end = |w: &Self, node, up_at| End {
            node,
            inc: w.node_inc(node).unwrap_or(0),
            up_at,
            up: false,
            down: false,
        };
        let link = Link {
            enrp,
            ends: [end(self, a, up0), end(self, b, up1)],
            dirs: [Dir::default(), Dir::default()],
            stalled: false,
            dialer,
            created: self.now,
        };
        self.links.insert(id, link);
        for n in [a, b] {
            if let Node::Reg(i) = n {
                self.regs[i].links.insert(id);
            }
        }
        if let (Node::Reg(i), Node::Reg(j)) = (a, b) {
            self.pair_changed(i, j);
        }
        self.at(up0, Event::Up { link: id, side: 0 });
        self.at(up1, Event::Up { link: id, side: 1 });
        id
    }

    fn pair_changed(&mut self, i: usize, j: usize) {
        self.pair_event.insert((i.min(j), i.max(j)), self.now);
    }

    fn reg_pair(link: &Link) -> Option<(usize, usize)> {
        match (link.ends[0].node, link.ends[1].node) {
            (Node::Reg(i), Node::Reg(j)) => Some((i, j)),
            _ => None,
        }
    }

    fn send(&mut self, id: LinkId, from: usize, bytes: Vec<u8>) {
        let d = self.delay();
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let dir = &mut link.dirs[from];
        if dir.closed || dir.discard || link.ends[from].down {
            return;
        }
        let ready = (now + d).max(dir.last).max(link.ends[1 - from].up_at);
        dir.last = ready;
        dir.queue.push_back((ready, Some(bytes)));
        if !dir.pumping && !link.stalled {
            dir.pumping = true;
            self.at(ready, Event::Pump { link: id, from });
        }
    }

    /// End `side` closes: what it queued goes out, then EOF; it reads no more.
    fn close(&mut self, id: LinkId, side: usize) {
        let d = self.delay();
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.ends[side].down || link.dirs[side].closed {
            return;
        }
        let out = &mut link.dirs[side];
        out.closed = true;
        let ready = (now + d).max(out.last);
        out.last = ready;
        out.queue.push_back((ready, None));
        let pump = !out.pumping && !link.stalled;
        if pump {
            out.pumping = true;
        }
        let back = &mut link.dirs[1 - side];
        back.discard = true;
        back.queue.clear();
        if let Some((i, j)) = Self::reg_pair(link) {
            self.pair_changed(i, j);
        }
        if pump {
            self.at(
                ready,
                Event::Pump {
                    link: id,
                    from: side,
                },
            );
        }
        // The closing end's task ends at once and tells its own side.
        self.at(
            now + Duration::from_micros(50),
            Event::Down { link: id, side },
        );
    }

    /// The connection breaks: what is in flight is lost, each live end hears of it.
    fn reset(&mut self, id: LinkId) {
        let d = [self.delay(), self.delay()];
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for dir in &mut link.dirs {
            dir.discard = true;
            dir.closed = true;
            dir.queue.clear();
        }
        if let Some((i, j)) = Self::reg_pair(link) {
            self.pair_changed(i, j);
        }
        for (side, d) in d.into_iter().enumerate() {
            self.at(now + d, Event::Down { link: id, side });
        }
    }

    fn pump(&mut self, id: LinkId, from: usize) {
        loop {
            let now = self.now;
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            let dir = &mut link.dirs[from];
            dir.pumping = false;
            if link.stalled || dir.discard {
                return;
            }
            let Some(&(ready, _)) = dir.queue.front() else {
                return;
            };
            if ready > now {
                dir.pumping = true;
                self.at(ready, Event::Pump { link: id, from });
                return;
            }
            let (_, frame) = dir.queue.pop_front().expect("front checked");
            let to = 1 - from;
            match frame {
                Some(bytes) => self.deliver(id, to, &bytes),
                None => self.link_down(id, to),
            }
        }
    }

    fn link_up(&mut self, id: LinkId, side: usize) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if !self.end_alive(link, side) {
            return;
        }
        if link.dirs[1 - side].discard {
            // The other end vanished mid-handshake: this end gives up at the handshake
            // timeout (`Settings::handshake_timeout`), as `daemon::connection` does.
            let at = link.created + HANDSHAKE_TIMEOUT;
            self.at(at, Event::Down { link: id, side });
            return;
        }
        let node = link.ends[side].node;
        let other = link.ends[1 - side].node;
        let enrp = link.enrp;
        if let Some(l) = self.links.get_mut(&id) {
            l.ends[side].up = true;
        }
        match node {
            Node::Reg(i) => {
                let (client, server_id) = self.client_of(other, side);
                let conn = ConnId(id);
                let input = if enrp {
                    self.log(format!("r{i} PeerUp {other:?} on link {id}"));
                    Input::PeerUp {
                        conn,
                        peer: client,
                        server_id: server_id.expect("a registrar"),
                        outbound: side == 0,
                    }
                } else {
                    // The simulated links are TCP-like: one address, the client's.
                    Input::Connected {
                        conn,
                        client,
                        addrs: Vec::new(),
                    }
                };
                if let Some((a, b)) = self.links.get(&id).and_then(Self::reg_pair) {
                    self.pair_changed(a, b);
                }
                self.feed(i, input);
            }
            Node::Pe(p) => self.pe_connected(p, id),
            Node::Pu(_) => {}
        }
    }

    /// The identity and address that end `side` of a link sees at its other end.
    fn client_of(&mut self, other: Node, side: usize) -> (Client, Option<ServerId>) {
        let port = self.rng.range(30_000, 60_000) as u16;
        let (id, ip, sid, serial) = match other {
            Node::Reg(j) => {
                let r = &self.regs[j];
                (
                    r.id.clone(),
                    r.ip,
                    Some(r.sid),
                    vec![1, j as u8, r.inc as u8],
                )
            }
            Node::Pe(p) => {
                let pe = &self.pes[p];
                (pe.id.clone(), pe.ip, None, vec![2, p as u8])
            }
            Node::Pu(u) => {
                let pu = &self.pus[u];
                (pu.id.clone(), pu.ip, None, vec![3, u as u8])
            }
        };
        // The dialer sees the acceptor's listening port; the acceptor an ephemeral one.
        let port = if side == 0 { 9902 } else { port };
        let client = Client {
            id,
            serial: Serial::from_bytes(&serial),
            addr: SocketAddr::new(IpAddr::V4(ip), port),
        };
        (client, sid)
    }

    fn link_down(&mut self, id: LinkId, side: usize) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if link.ends[side].down {
            return;
        }
        let alive = self.end_alive(link, side);
        let was_up = link.ends[side].up;
        let node = link.ends[side].node;
        let enrp = link.enrp;
        let dialer = link.dialer;
        let created = link.created;
        let pair = Self::reg_pair(link);
        if let Some(l) = self.links.get_mut(&id) {
            l.ends[side].down = true;
            // Its reader is gone; whatever still travels to it is dropped.
            l.dirs[1 - side].discard = true;
            l.dirs[1 - side].queue.clear();
            l.dirs[side].closed = true;
        }
        if let Some((a, b)) = pair {
            self.pair_changed(a, b);
        }
        if self
            .links
            .get(&id)
            .is_some_and(|l| l.ends.iter().all(|e| e.down))
            && let Some(l) = self.links.remove(&id)
        {
            for e in &l.ends {
                if let Node::Reg(i) = e.node {
                    self.regs[i].links.remove(&id);
                }
            }
        }
        if !alive {
            return;
        }
        match node {
            Node::Reg(i) => {
                if was_up {
                    let conn = ConnId(id);
                    let input = if enrp {
                        self.log(format!("r{i} PeerDown link {id}"));
                        Input::PeerDown { conn }
                    } else {
                        Input::Closed { conn }
                    };
                    self.feed(i, input);
                }
                if side == 0
                    && let Some((reg, epoch)) = dialer
                {
                    let now = self.now;
                    self.redial(reg, pair.map_or(0, |p| p.1), epoch, created, now);
                }
            }
            Node::Pe(p) => self.pe_lost(p, id),
            Node::Pu(u) => {
                if self.pus[u].link == Some(id) {
                    self.pus[u].link = None;
                }
            }
        }
    }

    /// A frame reaches end `to` of a link.
    fn deliver(&mut self, id: LinkId, to: usize, bytes: &[u8]) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if !self.end_alive(link, to) || !link.ends[to].up {
            return;
        }
        let node = link.ends[to].node;
        let enrp = link.enrp;
        self.stats.messages += 1;
        let nanos = self.now.as_nanos() as u64;
        self.digest = fnv(self.digest, &nanos.to_be_bytes());
        self.digest = fnv(self.digest, &id.to_be_bytes());
        self.digest = fnv(self.digest, bytes);
        match node {
            Node::Reg(i) => {
                let conn = ConnId(id);
                if enrp {
                    match EnrpMsg::decode(bytes) {
                        Ok(msg) => self.feed_enrp(i, conn, msg),
                        Err(error) => {
                            self.fail(format!("r{i}: an ENRP message did not decode: {error}"));
                        }
                    }
                } else {
                    match AsapMsg::decode(bytes) {
                        Ok(msg) => self.feed(i, Input::Asap { conn, msg }),
                        Err(error) => {
                            self.fail(format!("r{i}: an ASAP message did not decode: {error}"));
                        }
                    }
                }
            }
            Node::Pe(p) => match AsapMsg::decode(bytes) {
                Ok(m) => self.pe_receive(p, id, m.msg),
                Err(e) => self.fail(format!("pe{p}: a message did not decode: {e}")),
            },
            Node::Pu(u) => match AsapMsg::decode(bytes) {
                Ok(m) => {
                    if !matches!(m.msg, AsapMsg::HandleResolutionResponse { .. }) {
                        self.fail(format!("pu{u}: unexpected {:?}", m.msg.name()));
                    }
                }
                Err(e) => self.fail(format!("pu{u}: a message did not decode: {e}")),
            },
        }
    }

    // ---- registrars ----

    fn feed(&mut self, reg: usize, input: Input) {
        let now = self.instant();
        let Some(core) = self.regs[reg].core.as_mut() else {
            return;
        };
        let actions = core.handle(input, now);
        self.execute(reg, actions);
    }

    /// An ENRP message for registrar `reg`, noting the refreshes of peers' PEs it brings
    /// (for invariant 3b).
    fn feed_enrp(&mut self, reg: usize, conn: ConnId, msg: Decoded<EnrpMsg>) {
        let sender = msg.msg.sender;
        if self.trace_messages {
            let from = self.regs.iter().position(|r| r.sid == sender);
            let line = format!("r{reg} <- r{from:?}: {}", describe(&msg.msg.body));
            self.log(line);
        }
        let mut offered: Vec<PeKey> = Vec::new();
        match &msg.msg.body {
            EnrpBody::HandleUpdate {
                action: UpdateAction::AddPe,
                namespace,
                pool_handle,
                pool_element,
                ..
            } => offered.push((namespace.clone(), pool_handle.clone(), pool_element.pe_id)),
            EnrpBody::HandleTableResponse { pools, .. } => {
                for g in pools {
                    for e in &g.entries {
                        offered.push((
                            g.namespace.clone(),
                            g.pool_handle.clone(),
                            e.pool_element.pe_id,
                        ));
                    }
                }
            }
            EnrpBody::TakeoverServer { target } => {
                // The target's PEs here get the sender as home: news about each of them.
                if let Some(core) = &self.regs[reg].core {
                    let target = target.get();
                    offered.extend(
                        core.handlespace()
                            .iter()
                            .filter(|(_, _, e)| e.pool_element.home_server_id == target)
                            .map(|(ns, h, e)| (ns.clone(), h.clone(), e.pool_element.pe_id)),
                    );
                }
            }
            _ => {}
        }
        let guarded = self.guarded_pes(reg, sender);
        self.feed(reg, Input::Enrp { conn, msg });
        let inc = self.regs[reg].inc;
        let from_byzantine = self.byzantine().is_some_and(|b| self.regs[b].sid == sender);
        for key in offered {
            if from_byzantine {
                self.byzantine_named.insert((reg, inc, key.2), self.now);
            }
            self.learned.insert((reg, inc, key.clone()), self.now);
            let home = self.regs[reg].core.as_ref().and_then(|c| {
                c.handlespace()
                    .pool(&key.0, &key.1)?
                    .entry(key.2)
                    .map(|e| e.pool_element.home_server_id)
            });
            if home == Some(sender.get()) {
                self.refreshed.insert((reg, inc, key), self.now);
            } else {
                self.claimed.insert((reg, inc, key, sender.get()), self.now);
            }
        }
        self.check_byzantine(reg, sender, &guarded);
    }

    /// The Byzantine registrar's index, when this run has one.
    fn byzantine(&self) -> Option<usize> {
        self.sc.byzantine.then(|| self.regs.len() - 1)
    }

    /// Invariant 6, before a message from `sender` reaches `reg`: when the sender is the
    /// Byzantine, the PEs at `reg` whose home is another registrar `reg` holds alive.
    fn guarded_pes(&self, reg: usize, sender: ServerId) -> Vec<(PeKey, u32)> {
        let Some(b) = self.byzantine() else {
            return Vec::new();
        };
        if self.regs[b].sid != sender {
            return Vec::new();
        }
        let Some(core) = &self.regs[reg].core else {
            return Vec::new();
        };
        let me = self.regs[reg].sid.get();
        let alive: BTreeSet<u32> = core
            .peers()
            .iter()
            .filter(|p| p.state != PeerState::Dead && p.server_id != sender)
            .map(|p| p.server_id.get())
            .collect();
        core.handlespace()
            .iter()
            .filter(|(_, _, e)| {
                let home = e.pool_element.home_server_id;
                home != me && alive.contains(&home)
            })
            .map(|(ns, h, e)| {
                (
                    (ns.clone(), h.clone(), e.pool_element.pe_id),
                    e.pool_element.home_server_id,
                )
            })
            .collect()
    }

    /// Invariant 6, after the message: none of `guarded` was removed or re-homed to the
    /// Byzantine.
    fn check_byzantine(&mut self, reg: usize, sender: ServerId, guarded: &[(PeKey, u32)]) {
        let Some(core) = &self.regs[reg].core else {
            return;
        };
        for (key, home) in guarded {
            let now_home = core
                .handlespace()
                .pool(&key.0, &key.1)
                .and_then(|p| p.entry(key.2))
                .map(|e| e.pool_element.home_server_id);
            if now_home.is_none() || now_home == Some(sender.get()) {
                let msg = format!(
                    "6: a message of the Byzantine {sender} made r{reg} {} PE {} of live {home:#x}",
                    if now_home.is_none() {
                        "remove"
                    } else {
                        "re-home"
                    },
                    key.2.get()
                );
                self.fail(msg);
                return;
            }
        }
    }

    /// The refresh that lets registrar `reg` hold `key` with home `home`: its last ADD_PE
    /// or table entry with that home, or a re-home from `home` that waited (3b).
    fn last_refresh(&self, reg: usize, inc: u32, key: &PeKey, home: u32) -> Option<Duration> {
        let refreshed = self.refreshed.get(&(reg, inc, key.clone())).copied();
        let claimed = self.claimed.get(&(reg, inc, key.clone(), home)).copied();
        refreshed.max(claimed)
    }

    /// The Byzantine registrar forges one message to an honest peer it has a link to.
    fn forge(&mut self) {
        let Some(b) = self.byzantine() else { return };
        let Some(core) = &self.regs[b].core else {
            return;
        };
        let links: Vec<(LinkId, usize, usize)> = self.regs[b]
            .links
            .iter()
            .filter_map(|id| {
                let l = self.links.get(id)?;
                let side = (0..2).find(|s| l.ends[*s].node == Node::Reg(b))?;
                let Node::Reg(r) = l.ends[1 - side].node else {
                    return None;
                };
                (l.enrp && l.ends.iter().all(|e| e.up && !e.down)).then_some((*id, side, r))
            })
            .collect();
        let Some((link, side, r)) = self.rng.pick(&links) else {
            return;
        };
        let me = self.regs[b].sid;
        // Others' PEs as the Byzantine knows them, named its own.
        let mut theirs: Vec<(Namespace, PoolHandle, PeEntry)> = core
            .handlespace()
            .iter()
            .filter(|(_, _, e)| e.pool_element.home_server_id != me.get())
            .map(|(ns, h, e)| (ns.clone(), h.clone(), e.clone()))
            .collect();
        for (_, _, e) in &mut theirs {
            e.pool_element.home_server_id = me.get();
        }
        let others: Vec<ServerId> = (0..self.regs.len())
            .filter(|i| *i != b && *i != r)
            .map(|i| self.regs[i].sid)
            .collect();
        let target = self.rng.pick(&others).unwrap_or(self.regs[r].sid);
        // A list naming registrars at addresses a peer must never dial (loopback,
        // unspecified, multicast), and real ones (harmless): taken only in answer to a
        // request, and the bad addresses never dialed (docs/ENRP-TRUST.md §6).
        let bogus_list = EnrpBody::ListResponse {
            reject: false,
            servers: [
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::new(224, 0, 0, 9),
                self.regs[r].ip,
            ]
            .into_iter()
            .enumerate()
            .filter_map(|(i, ip)| {
                Some(asap::wire::param::ServerInformation {
                    server_id: ServerId::new(0x0bad_0000 + i as u32)?,
                    transport: Transport::Tcp {
                        port: NonZeroU16::new(9902)?,
                        transport_use: TransportUse::DataOnly,
                        addr: Address::new(ip),
                    },
                })
            })
            .collect(),
        };
        let pick = self.rng.range(0, 6);
        let bodies: Vec<EnrpBody> = match pick {
            0 => vec![EnrpBody::TakeoverServer { target }],
            1 => vec![
                EnrpBody::InitTakeover { target },
                EnrpBody::TakeoverServer { target },
            ],
            2 => theirs
                .iter()
                .take(1 + self.rng.range(0, 2) as usize)
                .map(|(ns, h, e)| EnrpBody::HandleUpdate {
                    action: UpdateAction::AddPe,
                    namespace: ns.clone(),
                    pool_handle: h.clone(),
                    pool_element: e.pool_element.clone(),
                    registrant: e.registrant.clone(),
                })
                .collect(),
            3 => {
                let mut pools: Vec<asap::wire::PoolEntries> = Vec::new();
                for (ns, h, e) in theirs.into_iter().take(20) {
                    match pools.last_mut() {
                        Some(g) if g.namespace == ns && g.pool_handle == h => g.entries.push(e),
                        _ => pools.push(asap::wire::PoolEntries {
                            namespace: ns,
                            pool_handle: h,
                            entries: vec![e],
                        }),
                    }
                }
                if self.rng.chance(0.3) {
                    pools.clear();
                }
                vec![EnrpBody::HandleTableResponse {
                    reject: false,
                    more: false,
                    pools,
                }]
            }
            4 => vec![bogus_list],
            _ => theirs
                .iter()
                .take(1)
                .map(|(ns, h, e)| EnrpBody::HandleUpdate {
                    action: UpdateAction::DelPe,
                    namespace: ns.clone(),
                    pool_handle: h.clone(),
                    pool_element: e.pool_element.clone(),
                    registrant: e.registrant.clone(),
                })
                .collect(),
        };
        for body in bodies {
            self.log(format!("r{b} forges to r{r}: {}", describe(&body)));
            let msg = EnrpMsg {
                sender: me,
                receiver: self.regs[r].sid.get(),
                body,
            };
            match msg.to_bytes() {
                Ok(bytes) => {
                    self.stats.forged += 1;
                    self.send(link, side, bytes);
                }
                Err(e) => self.fail(format!("r{b}: cannot encode a forgery: {e}")),
            }
        }
    }

    /// Carries out a core's actions in order, like `daemon::execute`.
    fn execute(&mut self, reg: usize, actions: Vec<Action>) {
        let inc = self.regs[reg].inc;
        // Invariant 5: what this batch recorded durably before replying.
        let mut durable: Vec<(AuditAction, PeId)> = Vec::new();
        for action in actions {
            match action {
                Action::Audit { event, durability } => {
                    if durability == Durability::BeforeReply
                        && event.outcome.is_none()
                        && let Some(pe_id) = event.pe_id
                    {
                        durable.push((event.action, pe_id));
                    }
                    if matches!(
                        event.action,
                        AuditAction::PeerDead
                            | AuditAction::TakeoverStarted
                            | AuditAction::TakeoverAcked
                            | AuditAction::TakeoverAbandoned
                            | AuditAction::TakeoverApplied
                            | AuditAction::TakeoverRefused
                            | AuditAction::PeerUpdate
                            | AuditAction::PeerIgnored
                            | AuditAction::MentorDone
                            | AuditAction::MentorTimeout
                    ) {
                        let line = format!(
                            "r{reg} {}: {}",
                            event.action.as_str(),
                            event.detail.as_deref().unwrap_or("")
                        );
                        self.log(line);
                    }
                    if event.action == AuditAction::TakeoverCompleted {
                        self.note_takeover(reg, event.detail.as_deref().unwrap_or(""));
                    }
                    if matches!(
                        event.action,
                        AuditAction::Register | AuditAction::Reregister
                    ) && event.outcome.is_none()
                        && let (Some(ns), Some(h), Some(p)) =
                            (event.namespace, event.pool_handle, event.pe_id)
                    {
                        self.del_sent.remove(&(reg, inc, (ns, h, p)));
                    }
                }
                Action::Send { conn, msg } => {
                    let acked = match &msg {
                        AsapMsg::RegistrationResponse {
                            reject: false,
                            pe_id,
                            ..
                        } => Some((*pe_id, [AuditAction::Register, AuditAction::Reregister])),
                        AsapMsg::DeregistrationResponse {
                            pe_id, error: None, ..
                        } => Some((*pe_id, [AuditAction::Deregister; 2])),
                        _ => None,
                    };
                    if let Some((pe_id, kinds)) = acked
                        && !durable
                            .iter()
                            .any(|(a, p)| *p == pe_id && kinds.contains(a))
                    {
                        let msg = format!(
                            "5: r{reg} acknowledged PE {} before a durable audit record",
                            pe_id.get()
                        );
                        self.fail(msg);
                    }
                    if let AsapMsg::HandleResolutionResponse {
                        pool_handle,
                        result,
                    } = &msg
                    {
                        self.check_resolution(reg, pool_handle, result);
                    }
                    match msg.to_bytes() {
                        Ok(bytes) => self.send_from_reg(reg, conn.0, bytes),
                        Err(e) => self.fail(format!("r{reg}: cannot encode {}: {e}", msg.name())),
                    }
                }
                Action::SendEnrp { conn, msg } => {
                    if let EnrpBody::HandleUpdate {
                        action,
                        namespace,
                        pool_handle,
                        pool_element,
                        ..
                    } = &msg.body
                    {
                        let key = (namespace.clone(), pool_handle.clone(), pool_element.pe_id);
                        match action {
                            UpdateAction::DelPe => {
                                self.del_sent.insert((reg, inc, key), self.now);
                            }
                            UpdateAction::AddPe => {
                                self.del_sent.remove(&(reg, inc, key));
                            }
                        }
                    }
                    match msg.to_bytes() {
                        Ok(bytes) => self.send_from_reg(reg, conn.0, bytes),
                        Err(e) => self.fail(format!("r{reg}: cannot encode ENRP: {e}")),
                    }
                }
                Action::Close { conn, reason } => {
                    self.log(format!("r{reg} closes link {}: {reason}", conn.0));
                    if let Some(side) = self.side_of(conn.0, Node::Reg(reg)) {
                        self.close(conn.0, side);
                    }
                }
                Action::DialPeer { addr } => match addr {
                    asap::addr::TransportAddr::Tcp(addr) => self.dial_discovered(reg, addr),
                    // The simulated registrars advertise TLS/TCP only.
                    other => self.fail(format!("r{reg} was told to dial {other} over SCTP")),
                },
                // Bindings last as long as a core here (no store): a restarted registrar
                // keeps its identity, so it binds its peers' Server IDs again alike.
                Action::BindServerId { .. } => {}
                // The simulated PEs advertise no ASAP listener (spec §12.6), so no
                // registrar may ask to dial one.
                Action::DialPe { addr, .. } => {
                    self.fail(format!(
                        "r{reg} dials a PE listener {addr} nobody advertised"
                    ));
                }
            }
        }
    }

    fn side_of(&self, id: LinkId, node: Node) -> Option<usize> {
        let link = self.links.get(&id)?;
        (0..2).find(|s| link.ends[*s].node == node)
    }

    fn send_from_reg(&mut self, reg: usize, id: LinkId, bytes: Vec<u8>) {
        if let Some(side) = self.side_of(id, Node::Reg(reg)) {
            self.send(id, side, bytes);
        }
    }

    fn note_takeover(&mut self, by: usize, detail: &str) {
        let target = self.regs.iter().position(|r| {
            detail.starts_with(&format!("target {} ", r.sid))
                || detail.starts_with(&format!("target {}:", r.sid))
        });
        match target {
            Some(t) => {
                self.log(format!("r{by} completed the takeover of r{t}"));
                self.stats.takeovers += 1;
                self.takeovers.push((self.now, by, t));
            }
            None => self.fail(format!("r{by}: takeover of an unknown target: {detail}")),
        }
    }

    fn restart(&mut self, reg: usize) {
        if self.regs[reg].core.is_some() {
            return;
        }
        let r = &mut self.regs[reg];
        r.inc += 1;
        let mut config = Config::new(r.sid);
        config.timing = self.timing;
        config.rng_seed = self.sc.seed ^ ((reg as u64) << 32) ^ u64::from(r.inc);
        config.enrp_addr = Some(SocketAddr::new(IpAddr::V4(r.ip), 9902));
        // Small handle table pages, so that the M-bit paging of spec §9.7 is exercised.
        config.handle_table_pes = 4;
        let mut core = Core::new(config, self.grants.clone());
        if !r.configured.is_empty() {
            core.begin_startup(self.base + self.now);
        }
        r.core = Some(core);
        if let Some(since) = r.down_since.take() {
            self.disturbances.push((since, self.now, Some(reg)));
            if let Some(e) = self.episodes.iter_mut().rev().find(|e| e.0 == reg) {
                e.2 = Some(self.now);
            }
        }
        self.log(format!(
            "r{reg} starts (incarnation {})",
            self.regs[reg].inc
        ));
        let configured = self.regs[reg].configured.clone();
        for target in configured {
            self.add_dialer(reg, target, true);
        }
    }

    fn crash(&mut self, reg: usize) {
        if self.regs[reg].core.take().is_none() {
            return;
        }
        self.stats.crashes += 1;
        self.log(format!("r{reg} crashes"));
        self.regs[reg].down_since = Some(self.now);
        self.regs[reg].dialers.clear();
        let mesh = self.full_mesh();
        self.episodes.push((reg, self.now, None, mesh));
        // A process crash resets its connections (the kernel sends RST); a host crash
        // leaves them silent, and the other ends find out by their own timers.
        let silent = self.rng.chance(0.5);
        let links: Vec<LinkId> = std::mem::take(&mut self.regs[reg].links)
            .into_iter()
            .collect();
        for id in links {
            if silent {
                self.vanish(id, Node::Reg(reg));
            } else {
                self.reset(id);
            }
        }
    }

    /// The host at `dead` is gone without a word: nothing gets through any more, but a
    /// registrar at the other end hears nothing until its core gives up (PRESENCE
    /// timers, spec §9.5) and closes; a PE gives up after 3 keep-alive intervals of
    /// silence (spec §12.4), a PU after its request times out.
    fn vanish(&mut self, id: LinkId, dead: Node) {
        let now = self.now;
        let silence = self.timing.keep_alive_interval * 3;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for dir in &mut link.dirs {
            dir.discard = true;
            dir.queue.clear();
        }
        if let Some((i, j)) = Self::reg_pair(link) {
            self.pair_changed(i, j);
        }
        let Some(nodes) = self
            .links
            .get(&id)
            .map(|l| [l.ends[0].node, l.ends[1].node])
        else {
            return;
        };
        for (side, node) in nodes.into_iter().enumerate() {
            match node {
                n if n == dead => self.at(now, Event::Down { link: id, side }),
                Node::Reg(_) => {}
                Node::Pe(_) | Node::Pu(_) => self.at(now + silence, Event::Down { link: id, side }),
            }
        }
    }

    /// Whether every two live registrars have a link up between them (not stalled).
    fn full_mesh(&self) -> bool {
        let live = self.live_regs();
        let mut linked = BTreeSet::new();
        for l in self.links.values() {
            if let Some((a, b)) = Self::reg_pair(l)
                && !l.stalled
                && l.ends.iter().all(|e| e.up && !e.down)
            {
                linked.insert((a.min(b), a.max(b)));
            }
        }
        live.iter().all(|&a| {
            live.iter()
                .all(|&b| a >= b || linked.contains(&(b.min(a), b.max(a))))
        })
    }

    fn add_dialer(&mut self, reg: usize, target: usize, configured: bool) {
        let epoch = self.rng.next_u64();
        self.regs[reg].dialers.insert(
            target,
            Dialer {
                epoch,
                delay: REDIAL_MIN,
                configured,
                answered: false,
            },
        );
        self.at(self.now, Event::Dial { reg, target, epoch });
    }

    fn dial_discovered(&mut self, reg: usize, addr: SocketAddr) {
        let Some(target) = self
            .regs
            .iter()
            .position(|r| SocketAddr::new(IpAddr::V4(r.ip), 9902) == addr)
        else {
            self.fail(format!(
                "r{reg} was told to dial {addr}, which nobody advertised"
            ));
            return;
        };
        let r = &self.regs[reg];
        let discovered = r.dialers.values().filter(|d| !d.configured).count();
        if target == reg || r.dialers.contains_key(&target) || discovered >= MAX_DISCOVERED {
            return;
        }
        self.log(format!("r{reg} dials r{target}, learnt from a list"));
        self.add_dialer(reg, target, false);
    }

    fn blocked(&self, a: usize, b: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|p| p.side[a] != p.side[b])
    }

    fn dial(&mut self, reg: usize, target: usize, epoch: u64) {
        if self.regs[reg]
            .dialers
            .get(&target)
            .is_none_or(|d| d.epoch != epoch)
        {
            return;
        }
        // `dial_loop`: no dial while the core has another connection to a peer that
        // answered here before; a learnt dialer then ends, a configured one looks again
        // after REDIAL_MAX.
        let answered = self.regs[reg]
            .dialers
            .get(&target)
            .is_some_and(|d| d.answered);
        let target_sid = self.regs[target].sid;
        let connected_otherwise = answered
            && self.regs[reg].core.as_ref().is_some_and(|c| {
                c.peers()
                    .iter()
                    .any(|p| p.server_id == target_sid && p.connected)
            });
        if connected_otherwise {
            let configured = self.regs[reg]
                .dialers
                .get(&target)
                .is_some_and(|d| d.configured);
            if configured {
                self.at(self.now + REDIAL_MAX, Event::Dial { reg, target, epoch });
            } else {
                self.regs[reg].dialers.remove(&target);
            }
            return;
        }
        if self.regs[target].core.is_some() && !self.blocked(reg, target) {
            if let Some(d) = self.regs[reg].dialers.get_mut(&target) {
                d.answered = true;
            }
            let link = self.connect(Node::Reg(reg), Node::Reg(target), true, Some((reg, epoch)));
            if self.trace_messages {
                self.log(format!("r{reg} dials r{target}: link {link}"));
            }
        } else {
            if self.trace_messages {
                self.log(format!("r{reg} dials r{target}: fails"));
            }
            // Refused or unreachable, after a short while; then the back-off.
            let failed = self.now + self.rng.ms(1, 20);
            self.redial(reg, target, epoch, self.now, failed);
        }
    }

    /// `dial_loop`: back to the minimum after a stable connection, else double.
    fn redial(&mut self, reg: usize, target: usize, epoch: u64, started: Duration, now: Duration) {
        let Some(d) = self.regs[reg].dialers.get_mut(&target) else {
            return;
        };
        if d.epoch != epoch {
            return;
        }
        d.delay = if now.saturating_sub(started) >= STABLE {
            REDIAL_MIN
        } else {
            (d.delay * 2).min(REDIAL_MAX)
        };
        let at = now + d.delay;
        self.at(at, Event::Dial { reg, target, epoch });
    }

    // ---- chaos ----

    fn live_regs(&self) -> Vec<usize> {
        (0..self.regs.len())
            .filter(|i| self.regs[*i].core.is_some())
            .collect()
    }

    fn chaos(&mut self) {
        if self.chaos_over {
            return;
        }
        let roll = self.rng.range(0, 99);
        if roll < 2 && self.sc.crashes && self.sc.partitions && self.live_regs().len() > 1 {
            // The whole fleet (a power cut, an upgrade): every registrar crashes and comes
            // back after its own delay, in a random order; the first back starts with no
            // peer to mentor it and refuses PEs with 0x6 until its mentor timeout
            // (invariant 7). Only in runs that also partition: 3a is not checked there.
            self.stats.fleet_restarts += 1;
            self.log("the whole fleet crashes".to_owned());
            for reg in self.live_regs() {
                self.crash(reg);
                let back = self.rng.ms(100, 2500);
                self.at(self.now + back, Event::Restart { reg });
            }
        } else if roll < 12 && self.sc.crashes {
            let live = self.live_regs();
            // Crash-only runs crash one registrar at a time, so that 3a can be checked.
            let one_at_a_time = !self.sc.partitions;
            let down = self.regs.len() - live.len();
            if live.len() > 1
                && (!one_at_a_time || down == 0)
                && let Some(reg) = self.rng.pick(&live)
            {
                self.crash(reg);
                let back = self.rng.ms(100, 2500);
                self.at(self.now + back, Event::Restart { reg });
            }
        } else if roll < 22 && self.sc.partitions && self.partition.is_none() {
            self.split();
        } else if roll < 60 && self.sc.pe_churn {
            let pe = self.rng.range(0, self.pes.len() as u64 - 1) as usize;
            self.pe_chaos(pe);
        }
        if self.sc.byzantine && self.rng.chance(0.5) {
            self.forge();
        }
        let next = self.rng.ms(20, 300);
        self.at(self.now + next, Event::Chaos);
    }

    fn split(&mut self) {
        let n = self.regs.len();
        let mut side: Vec<bool> = (0..n).map(|_| self.rng.chance(0.5)).collect();
        if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
            let i = self.rng.range(0, n as u64 - 1) as usize;
            side[i] = !side[i];
        }
        let stall = self.rng.chance(0.5);
        let id = self.next_partition;
        self.next_partition += 1;
        self.stats.partitions += 1;
        self.log(format!(
            "partition {id} {side:?} ({})",
            if stall { "stall" } else { "cut" }
        ));
        let crossing: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| Self::reg_pair(l).is_some_and(|(a, b)| side[a] != side[b]))
            .map(|(id, _)| *id)
            .collect();
        self.partition = Some(Partition { id, side });
        for l in crossing {
            if stall {
                if let Some(link) = self.links.get_mut(&l) {
                    link.stalled = true;
                }
                if let Some((a, b)) = self.links.get(&l).and_then(Self::reg_pair) {
                    self.pair_changed(a, b);
                }
            } else {
                self.reset(l);
            }
        }
        let d = self.rng.ms(300, 3000);
        self.disturbances.push((self.now, self.now + d, None));
        self.at(self.now + d, Event::Heal { id });
    }

    fn heal(&mut self, id: u64) {
        if self.partition.as_ref().is_none_or(|p| p.id != id) {
            return;
        }
        self.partition = None;
        self.log(format!("partition {id} healed"));
        let stalled: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.stalled)
            .map(|(i, _)| *i)
            .collect();
        for l in stalled {
            if let Some(link) = self.links.get_mut(&l) {
                link.stalled = false;
                for dir in &mut link.dirs {
                    dir.pumping = false;
                }
            }
            if let Some((a, b)) = self.links.get(&l).and_then(Self::reg_pair) {
                self.pair_changed(a, b);
            }
            for from in [0, 1] {
                let ready = self
                    .links
                    .get(&l)
                    .and_then(|k| k.dirs[from].queue.front().map(|f| f.0));
                if let Some(ready) = ready {
                    if let Some(link) = self.links.get_mut(&l) {
                        link.dirs[from].pumping = true;
                    }
                    self.at(ready, Event::Pump { link: l, from });
                }
            }
        }
    }

    fn end_chaos(&mut self) {
        self.chaos_over = true;
        self.log("chaos ends: heal, restart, quiet".to_owned());
        if let Some(id) = self.partition.as_ref().map(|p| p.id) {
            if let Some((_, end, _)) = self.disturbances.iter_mut().rev().find(|d| d.2.is_none()) {
                *end = self.now;
            }
            self.heal(id);
        }
        for reg in 0..self.regs.len() {
            self.restart(reg);
        }
        for pe in 0..self.pes.len() {
            self.pes[pe].may_restart = false;
            if self.pes[pe].state == PeState::Hung {
                self.pe_stop(pe, "killed after hanging");
            }
        }
    }

    // ---- PEs ----

    fn pe_element(&self, pe: usize) -> Option<PoolElement> {
        let p = &self.pes[pe];
        Some(PoolElement {
            pe_id: p.pe_id?,
            home_server_id: 0,
            registration_life: REGISTRATION_LIFE.as_millis() as i32,
            user_transport: Transport::Tcp {
                port: NonZeroU16::new(7000 + pe as u16).expect("non-zero"),
                transport_use: TransportUse::DataOnly,
                addr: Address::new(IpAddr::V4(p.ip)),
            },
            policy: policy(p.pool),
            asap_transport: None,
        })
    }

    fn pe_send(&mut self, pe: usize, msg: &AsapMsg) {
        let Some(link) = self.pes[pe].link else {
            return;
        };
        match msg.to_bytes() {
            Ok(b) => self.send(link, 0, b),
            Err(e) => self.fail(format!("pe{pe}: cannot encode {}: {e}", msg.name())),
        }
    }

    fn pe_timer(&mut self, pe: usize, after: Duration) {
        self.pes[pe].epoch += 1;
        let epoch = self.pes[pe].epoch;
        self.at(self.now + after, Event::PeTick { pe, epoch });
    }

    fn pe_tick(&mut self, pe: usize, epoch: u64) {
        if self.pes[pe].epoch != epoch {
            return;
        }
        match self.pes[pe].state {
            PeState::Off => {
                if !self.pes[pe].may_restart && self.pes[pe].pe_id.is_some() {
                    return;
                }
                let id = PeId::new(self.next_pe_id).expect("non-zero");
                self.next_pe_id += 1;
                self.pes[pe].pe_id = Some(id);
                self.log(format!("pe{pe} starts as PE {}", id.get()));
                self.pes[pe].state = PeState::Hunting;
                self.pe_hunt(pe);
            }
            PeState::Hunting => self.pe_hunt(pe),
            PeState::Registered => {
                // T4: re-register with the same PE ID.
                if let Some(element) = self.pe_element(pe) {
                    let msg = AsapMsg::Registration {
                        namespace: None,
                        pool_handle: pool_handle(self.pes[pe].pool),
                        pool_element: element,
                    };
                    self.pe_send(pe, &msg);
                }
                self.pe_timer(pe, REREGISTRATION);
            }
            _ => {}
        }
    }

    /// Spec §12.6: another registrar than the last one, if there is one.
    fn pe_hunt(&mut self, pe: usize) {
        let live = self.live_regs();
        let others: Vec<usize> = live
            .iter()
            .copied()
            .filter(|r| Some(*r) != self.pes[pe].last_registrar)
            .collect();
        let choice = if others.is_empty() {
            self.rng.pick(&live)
        } else {
            self.rng.pick(&others)
        };
        let Some(reg) = choice else {
            let d = self.rng.ms(100, 500);
            self.pe_timer(pe, d);
            return;
        };
        self.pes[pe].epoch += 1;
        self.pes[pe].state = PeState::Connecting;
        self.pes[pe].registrar = Some(reg);
        self.pes[pe].last_registrar = Some(reg);
        let link = self.connect(Node::Pe(pe), Node::Reg(reg), false, None);
        self.pes[pe].link = Some(link);
    }

    fn pe_connected(&mut self, pe: usize, link: LinkId) {
        if self.pes[pe].link != Some(link) || self.pes[pe].state != PeState::Connecting {
            return;
        }
        self.pes[pe].state = PeState::Registering;
        if let Some(element) = self.pe_element(pe) {
            let msg = AsapMsg::Registration {
                namespace: None,
                pool_handle: pool_handle(self.pes[pe].pool),
                pool_element: element,
            };
            self.pe_send(pe, &msg);
        }
    }

    fn pe_receive(&mut self, pe: usize, link: LinkId, msg: AsapMsg) {
        if self.pes[pe].link != Some(link) {
            return;
        }
        let state = self.pes[pe].state;
        match msg {
            AsapMsg::RegistrationResponse {
                reject,
                pe_id,
                error,
                ..
            } => {
                if Some(pe_id) != self.pes[pe].pe_id {
                    self.fail(format!("pe{pe}: a response for PE {}", pe_id.get()));
                    return;
                }
                if reject {
                    // As asap::client::pe decides: a transient refusal is ridden out, a
                    // permanent one ends the PE, which no scenario here may cause.
                    let code = error
                        .as_ref()
                        .and_then(|e| e.causes().first())
                        .map_or(0, |c| c.code());
                    if !ErrorCause::from_parts(code, &[]).is_transient() {
                        self.fail(format!(
                            "6: pe{pe} gave up: refused by r{:?} with cause {code:#x}",
                            self.pes[pe].registrar
                        ));
                        return;
                    }
                    self.stats.refusals_0x6 += 1;
                    // Refused (a registrar still starting): try another, a bit later.
                    if matches!(state, PeState::Registering | PeState::Registered) {
                        self.log(format!("pe{pe} refused by r{:?}", self.pes[pe].registrar));
                        self.pes[pe].registered_at = None;
                        self.close(link, 0);
                        self.pes[pe].link = None;
                        self.pes[pe].state = PeState::Hunting;
                        let d = self.rng.ms(50, 400);
                        self.pe_timer(pe, d);
                    }
                } else if state == PeState::Registering {
                    let reg = self.pes[pe].registrar.expect("connected to one");
                    self.pes[pe].state = PeState::Registered;
                    self.pes[pe].registered_at = Some((reg, self.regs[reg].inc));
                    self.pe_timer(pe, REREGISTRATION);
                }
            }
            AsapMsg::EndpointKeepAlive { pool_handle, .. } => {
                if matches!(
                    state,
                    PeState::Registered | PeState::Registering | PeState::Deregistering
                ) && let Some(pe_id) = self.pes[pe].pe_id
                {
                    self.pe_send(pe, &AsapMsg::EndpointKeepAliveAck { pool_handle, pe_id });
                }
            }
            AsapMsg::DeregistrationResponse { error, .. } => {
                if state == PeState::Deregistering {
                    if let Some(e) = error {
                        self.fail(format!("pe{pe}: deregistration refused: {e:?}"));
                        return;
                    }
                    if let (Some(id), Some(at)) = (self.pes[pe].pe_id, self.pes[pe].registered_at) {
                        let bound = self.timing.keep_alive_timeout;
                        self.gone.insert(
                            id,
                            Gone {
                                at: self.now,
                                bound,
                                registrar: at,
                                why: "deregistered",
                            },
                        );
                    }
                    self.close(link, 0);
                    self.pe_off(pe);
                }
            }
            other => self.fail(format!("pe{pe}: unexpected {}", other.name())),
        }
    }

    fn pe_lost(&mut self, pe: usize, link: LinkId) {
        if self.pes[pe].link != Some(link) {
            return;
        }
        self.pes[pe].link = None;
        self.pes[pe].registered_at = None;
        match self.pes[pe].state {
            PeState::Deregistering | PeState::Hung => self.pe_off(pe),
            PeState::Off => {}
            _ => {
                self.pes[pe].state = PeState::Hunting;
                let d = self.rng.ms(50, 400);
                self.pe_timer(pe, d);
            }
        }
    }

    fn pe_off(&mut self, pe: usize) {
        self.pes[pe].state = PeState::Off;
        self.pes[pe].link = None;
        self.pes[pe].registered_at = None;
        self.pes[pe].pe_id = self.pes[pe].pe_id.filter(|_| !self.pes[pe].may_restart);
        if self.pes[pe].may_restart {
            let d = self.rng.ms(200, 2000);
            self.pe_timer(pe, d);
        } else {
            self.pes[pe].epoch += 1;
        }
    }

    /// The PE process ends: its connection resets.
    fn pe_stop(&mut self, pe: usize, why: &'static str) {
        let reg_at = self.pes[pe].registered_at;
        if let (Some(id), Some(at)) = (self.pes[pe].pe_id, reg_at)
            && self.pes[pe].state != PeState::Hung
        {
            let bound =
                self.sc.max_delay + self.timing.connection_grace + self.timing.keep_alive_timeout;
            self.gone.insert(
                id,
                Gone {
                    at: self.now,
                    bound,
                    registrar: at,
                    why,
                },
            );
        }
        self.log(format!("pe{pe} stops: {why}"));
        if let Some(link) = self.pes[pe].link.take() {
            self.reset(link);
        }
        self.pes[pe].inc += 1;
        self.pe_off(pe);
    }

    fn pe_chaos(&mut self, pe: usize) {
        let state = self.pes[pe].state;
        let roll = self.rng.range(0, 99);
        match state {
            PeState::Registered if roll < 25 => {
                let (Some(pe_id), pool) = (self.pes[pe].pe_id, self.pes[pe].pool) else {
                    return;
                };
                self.log(format!("pe{pe} deregisters"));
                self.pes[pe].state = PeState::Deregistering;
                self.pes[pe].epoch += 1;
                let msg = AsapMsg::Deregistration {
                    namespace: None,
                    pool_handle: pool_handle(pool),
                    pe_id,
                };
                self.pe_send(pe, &msg);
            }
            PeState::Registered if roll < 45 => {
                self.stats.pe_deaths += 1;
                self.log(format!("pe{pe} hangs"));
                if let (Some(id), Some(at)) = (self.pes[pe].pe_id, self.pes[pe].registered_at) {
                    // The next keep-alive (up to an interval after the last answer, or
                    // after a re-registration in flight) and its timeout; if the
                    // connection closes first (the PE is killed), the connection grace
                    // from then (spec §12.6); and the one keep-alive timeout allowed.
                    let bound = self.sc.max_delay * 2
                        + self.timing.keep_alive_interval
                        + self.timing.keep_alive_timeout * 2
                        + self.timing.connection_grace;
                    self.gone.insert(
                        id,
                        Gone {
                            at: self.now,
                            bound,
                            registrar: at,
                            why: "hung",
                        },
                    );
                }
                self.pes[pe].state = PeState::Hung;
                self.pes[pe].epoch += 1;
                let epoch = self.pes[pe].epoch;
                let d = self.rng.ms(300, 2000);
                self.at(self.now + d, Event::PeKill { pe, epoch });
            }
            PeState::Registered if roll < 65 => {
                self.stats.pe_deaths += 1;
                self.pe_stop(pe, "crashed");
            }
            PeState::Registered | PeState::Registering => {
                // Reset, or half-open: the PE gives up on a silent registrar and hunts
                // another while the old one still believes the connection is up (until
                // its keep-alive times out).
                let silent = self.rng.chance(0.5);
                self.log(format!("pe{pe} loses its connection (silently: {silent})"));
                if let Some(link) = self.pes[pe].link {
                    if silent {
                        self.vanish(link, Node::Pe(pe));
                    } else {
                        self.reset(link);
                    }
                }
            }
            _ => {}
        }
    }

    // ---- PUs ----

    fn pu_tick(&mut self, pu: usize) {
        let up = self.pus[pu]
            .link
            .and_then(|l| self.links.get(&l))
            .map(|l| l.ends[0].up && !l.ends[0].down);
        match up {
            None => {
                self.pus[pu].link = None;
                let live = self.live_regs();
                if let Some(reg) = self.rng.pick(&live) {
                    let link = self.connect(Node::Pu(pu), Node::Reg(reg), false, None);
                    self.pus[pu].link = Some(link);
                }
            }
            Some(true) => {
                let pool = self.rng.range(0, self.sc.pools as u64 - 1) as usize;
                let msg = AsapMsg::HandleResolution {
                    namespace: None,
                    pool_handle: pool_handle(pool),
                    option: Some(HandleResolutionOption { items: 128 }),
                };
                if let (Some(link), Ok(bytes)) = (self.pus[pu].link, msg.to_bytes()) {
                    self.send(link, 0, bytes);
                }
            }
            Some(false) => {}
        }
        let d = self.rng.ms(10, 150);
        self.at(self.now + d, Event::PuTick { pu });
    }

    // ---- invariants ----

    /// Invariant 4, at the moment registrar `reg` answers a resolution.
    fn check_resolution(&mut self, reg: usize, handle: &PoolHandle, result: &Resolution) {
        self.stats.resolutions += 1;
        let Resolution::Found { pool_elements, .. } = result else {
            return;
        };
        let inc = self.regs[reg].inc;
        let me = self.regs[reg].sid.get();
        let ka = self.timing.keep_alive_timeout;
        for PeEntry { pool_element, .. } in pool_elements {
            self.stats.returned_pes += 1;
            let pe_id = pool_element.pe_id;
            let home = pool_element.home_server_id;
            if home == me
                && let Some(g) = self.gone.get(&pe_id)
                && g.registrar == (reg, inc)
                && self.now > g.at + g.bound
                // The registrar removed it up to one message delay before `g.at` (when
                // the PE heard so).
                && self
                    .byzantine_named
                    .get(&(reg, inc, pe_id))
                    .is_none_or(|t| *t + self.sc.max_delay < g.at)
            {
                let msg = format!(
                    "4a: r{reg} returned PE {} {:.3}s after it {} (bound {:?})",
                    pe_id.get(),
                    (self.now - g.at).as_secs_f64(),
                    g.why,
                    g.bound
                );
                self.fail(msg);
                return;
            }
            let Some(h) = self.regs.iter().position(|r| r.sid.get() == home) else {
                self.fail(format!(
                    "r{reg} returned PE {} of unknown home {home:#x}",
                    pe_id.get()
                ));
                return;
            };
            if h == reg {
                continue;
            }
            // 3b for what is returned (the whole handlespace is checked every 50 ms).
            let key = (Namespace::default_namespace(), handle.clone(), pe_id);
            let life = Duration::from_millis(pool_element.registration_life as u64);
            match self.last_refresh(reg, inc, &key, home) {
                Some(t) if self.now <= t + life => {}
                t => {
                    let msg = format!(
                        "3b: r{reg} returned PE {} of r{h}, last refreshed at {t:?} (life {life:?})",
                        pe_id.get()
                    );
                    self.fail(msg);
                    return;
                }
            }
            if self.regs[h].core.is_none() {
                continue;
            }
            let hinc = self.regs[h].inc;
            let key = (Namespace::default_namespace(), handle.clone(), pe_id);
            // What the responder heard of the PE after the DEL_PE (it came back under
            // another home that then moved) is newer news, not a missed removal.
            let learned = self.learned.get(&(reg, inc, key.clone())).copied();
            if let Some(&t) = self.del_sent.get(&(h, hinc, key))
                && learned.is_none_or(|l| l < t)
            {
                let stable_since = self.pair_event.get(&(reg.min(h), reg.max(h))).copied();
                let linked = self.links.values().any(|l| {
                    Self::reg_pair(l).is_some_and(|(a, b)| (a, b) == (reg, h) || (a, b) == (h, reg))
                        && l.ends.iter().all(|e| e.up && !e.down)
                        && !l.stalled
                });
                if linked && stable_since.is_some_and(|s| s < t) {
                    self.stats.stale_checks_4b += 1;
                    if self.now > t + ka {
                        let msg = format!(
                            "4b: r{reg} returned PE {} {:.3}s after its home r{h} sent DEL_PE \
                             over a link up since {:.3}s",
                            pe_id.get(),
                            (self.now - t).as_secs_f64(),
                            stable_since.map_or(0.0, |s| s.as_secs_f64())
                        );
                        self.fail(msg);
                        return;
                    }
                }
            }
        }
    }

    /// Invariant 3b: a peer's PE is never kept past its registration life after its last
    /// refresh.
    fn check_peer_pe_life(&mut self) {
        let mut bad = None;
        for (i, r) in self.regs.iter().enumerate() {
            let Some(core) = &r.core else { continue };
            for (ns, h, e) in core.handlespace().iter() {
                if e.pool_element.home_server_id == r.sid.get() {
                    continue;
                }
                let key = (ns.clone(), h.clone(), e.pool_element.pe_id);
                let life = Duration::from_millis(e.pool_element.registration_life as u64);
                match self.last_refresh(i, r.inc, &key, e.pool_element.home_server_id) {
                    None => {
                        bad = Some(format!(
                            "3b: r{i} holds PE {} of {:#x} that no peer ever sent it",
                            e.pool_element.pe_id.get(),
                            e.pool_element.home_server_id
                        ));
                    }
                    Some(t) if self.now > t + life => {
                        bad = Some(format!(
                            "3b: r{i} holds PE {} of {:#x} {:.3}s after its last refresh \
                             (registration life {life:?})",
                            e.pool_element.pe_id.get(),
                            e.pool_element.home_server_id,
                            (self.now - t).as_secs_f64()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(msg) = bad {
            self.fail(msg);
        }
    }

    /// Invariant 3a over the whole run: at most one takeover completed per crash episode
    /// that nothing else disturbed. Only crashes that left the survivors a full mesh count:
    /// registrars that do not hear each other act as if partitioned (spec §9.8's tie-break
    /// only settles initiators that hear each other, and a third registrar acknowledges
    /// every initiator), and after a partition heals the mesh takes a redial back-off to
    /// close again (seed 623 crashes a registrar in that window).
    fn check_takeovers(&mut self) {
        let end = self.now;
        let mut bad = None;
        let mut checked = 0;
        for &(reg, from, to, mesh) in &self.episodes {
            if !mesh {
                continue;
            }
            let to = to.unwrap_or(end);
            let done: Vec<&(Duration, usize, usize)> = self
                .takeovers
                .iter()
                .filter(|(t, _, target)| *target == reg && *t >= from && *t <= to)
                .collect();
            let last = done.last().map_or(from, |d| d.0);
            let disturbed = self
                .disturbances
                .iter()
                .any(|&(s, e, who)| who != Some(reg) && s <= last && e >= from)
                || self
                    .episodes
                    .iter()
                    .any(|&(r, s, e, _)| r != reg && s <= last && e.unwrap_or(end) >= from);
            if disturbed {
                continue;
            }
            checked += 1;
            if done.len() > 1 {
                bad = Some(format!(
                    "3a: r{reg} crashed at {:.3}s and was taken over {} times: {:?}",
                    from.as_secs_f64(),
                    done.len(),
                    done.iter()
                        .map(|d| (d.0.as_secs_f64(), d.1))
                        .collect::<Vec<_>>()
                ));
            }
        }
        self.stats.takeover_episodes_checked += checked;
        if let Some(b) = bad {
            self.fail(b);
        }
    }

    /// Invariants 1 and 2 after the quiet period, and 3 over the run.
    fn final_check(&mut self) {
        self.check_peer_pe_life();
        self.check_takeovers();
        if self.failure.is_some() {
            return;
        }
        let n = self.regs.len();
        if self.regs.iter().all(|r| r.core.is_some()) {
            self.check_owners();
            if self.failure.is_some() {
                return;
            }
        }
        for (i, r) in self.regs.iter().enumerate() {
            let Some(core) = &r.core else {
                return self.fail(format!("1: r{i} is down after the quiet period"));
            };
            if core.starting() {
                return self.fail(format!("1: r{i} is still starting"));
            }
            let peers = core.peers();
            for (j, other) in self.regs.iter().enumerate() {
                if i == j {
                    continue;
                }
                let Some(p) = peers.iter().find(|p| p.server_id == other.sid) else {
                    return self.fail(format!("1: r{i} does not know r{j}"));
                };
                if p.state != PeerState::Active || !p.connected || p.checksum_match != Some(true) {
                    return self.fail(format!(
                        "1: r{i} sees r{j} {}, connected {}, checksum match {:?}",
                        p.state.as_str(),
                        p.connected,
                        p.checksum_match
                    ));
                }
            }
        }
        // The truth: each PE registered and alive, homed where it is connected.
        let mut truth: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (p, pe) in self.pes.iter().enumerate() {
            match pe.state {
                PeState::Registered => {
                    let reg = pe.registrar.expect("registered somewhere");
                    truth.insert((pe.pe_id.expect("started").get(), self.regs[reg].sid.get()));
                }
                PeState::Off => {}
                s => return self.fail(format!("1: pe{p} is still {s:?} after the quiet period")),
            }
        }
        let views: Vec<Vec<(Namespace, PoolHandle, PeEntry)>> = self
            .regs
            .iter()
            .map(|r| {
                r.core
                    .as_ref()
                    .expect("checked")
                    .handlespace()
                    .iter()
                    .map(|(ns, h, e)| (ns.clone(), h.clone(), e.clone()))
                    .collect()
            })
            .collect();
        for i in 1..n {
            if views[i] != views[0] {
                return self.fail(format!(
                    "1: r{i}'s handlespace differs from r0's:\n  r0: {:?}\n  r{i}: {:?}",
                    summary(&views[0]),
                    summary(&views[i])
                ));
            }
        }
        for h in &self.regs {
            let sums: BTreeSet<u16> = self
                .regs
                .iter()
                .map(|r| {
                    r.core
                        .as_ref()
                        .expect("checked")
                        .handlespace()
                        .checksum(h.sid)
                })
                .collect();
            if sums.len() != 1 {
                return self.fail(format!(
                    "1: the checksums of {}'s PEs differ: {sums:?}",
                    h.sid
                ));
            }
        }
        let held: BTreeSet<(u32, u32)> = views[0]
            .iter()
            .map(|(_, _, e)| (e.pool_element.pe_id.get(), e.pool_element.home_server_id))
            .collect();
        if held != truth {
            self.fail(format!(
                "1: the handlespace {held:?} is not the registered PEs {truth:?}"
            ));
        }
    }

    /// Invariant 2: no PE has two registrars that each hold it as their own.
    fn check_owners(&mut self) {
        let mut owners: BTreeMap<PeKey, Vec<usize>> = BTreeMap::new();
        for (i, r) in self.regs.iter().enumerate() {
            let Some(core) = &r.core else { continue };
            for (ns, h, e) in core.handlespace().iter() {
                if e.pool_element.home_server_id == r.sid.get() {
                    let key = (ns.clone(), h.clone(), e.pool_element.pe_id);
                    owners.entry(key).or_default().push(i);
                }
            }
        }
        if let Some((k, o)) = owners.iter().find(|(_, o)| o.len() > 1) {
            let msg = format!("2: PE {} is owned by registrars {o:?}", k.2.get());
            self.fail(msg);
        }
    }
}

/// An ENRP message body in one line, for the trace.
fn describe(body: &EnrpBody) -> String {
    match body {
        EnrpBody::HandleUpdate {
            action,
            pool_element,
            ..
        } => format!(
            "{action:?} PE {} home {:#x}",
            pool_element.pe_id.get(),
            pool_element.home_server_id
        ),
        EnrpBody::HandleTableResponse { more, pools, .. } => {
            let pes: Vec<(u32, u32)> = pools
                .iter()
                .flat_map(|g| g.entries.iter())
                .map(|e| (e.pool_element.pe_id.get(), e.pool_element.home_server_id))
                .collect();
            format!("HandleTableResponse more={more} {pes:x?}")
        }
        EnrpBody::Presence { checksum, .. } => format!("Presence {:#x}", checksum.0),
        other => format!("{other:?}"),
    }
}

fn summary(view: &[(Namespace, PoolHandle, PeEntry)]) -> Vec<(u32, u32)> {
    view.iter()
        .map(|(_, _, e)| (e.pool_element.pe_id.get(), e.pool_element.home_server_id))
        .collect()
}
