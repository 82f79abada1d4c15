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
//!
//! The files: this one holds the world's state, the scenario drawn from the seed and the
//! event loop; `net` the simulated network, `driver` the cores' inputs and actions,
//! `pe` and `pu` the models of the clients, `chaos` the faults, `invariants` the checks.

mod chaos;
mod driver;
mod invariants;
mod net;
mod pe;
mod pu;
pub mod rng;

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
use enrp_core::registrar::{Action, Config, ConnId, Core, Input, PeKey, PeerState, Remote, Timing};
use enrp_core::server_id_of;
use identity::audit::AuditAction;
use identity::{Grant, Serial, SpiffeId};

use crate::msg::grant;
use rng::Rng;

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
pub struct Scenario {
    pub seed: u64,
    pub registrars: usize,
    pub pes: usize,
    pub pus: usize,
    pub pools: usize,
    /// Registrars crash and restart.
    pub crashes: bool,
    /// The registrars' network splits.
    pub partitions: bool,
    /// PEs deregister, hang, crash and lose connections.
    pub pe_churn: bool,
    /// Longest one-way delay of a message.
    pub max_delay: Duration,
    /// How long chaos lasts, then how long everything is left alone before the final check.
    pub chaos: Duration,
    pub quiet: Duration,
    /// The last registrar forges messages during the chaos (invariant 6).
    pub byzantine: bool,
}

impl Scenario {
    /// `heavy` (`RSP_SIM_HEAVY=1`): more registrars, PEs, delay and chaos, for sweeps.
    pub fn from_seed(seed: u64, heavy: bool) -> Self {
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
pub struct Outcome {
    pub scenario: Scenario,
    pub failure: Option<String>,
    pub trace_tail: Vec<String>,
    /// A hash of every delivery (time, receiver, bytes): equal for equal runs.
    pub digest: u64,
    pub simulated: Duration,
    pub stats: Stats,
}

/// Counters, to see what the seeds covered.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages: u64,
    pub resolutions: u64,
    pub returned_pes: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub takeovers: u64,
    /// Crash episodes for which invariant 3a was checked.
    pub takeover_episodes_checked: u64,
    pub pe_deaths: u64,
    pub stale_checks_4b: u64,
    /// Messages the Byzantine registrar forged (invariant 6).
    pub forged: u64,
    /// Registrations refused with 0x6 Lack of Resources (a registrar starting), ridden
    /// out (invariant 7).
    pub refusals_0x6: u64,
    /// Runs' moments when every registrar crashed at once.
    pub fleet_restarts: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Self) {
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

pub struct World {
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
    pub fn new(sc: Scenario) -> Self {
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

    pub fn run(mut self) -> Outcome {
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
