//! The registrar core: a deterministic state machine with no I/O (STYLE.md §2).
//!
//! The driver (`enrpd`) feeds it [`Input`]s — an authenticated connection opened, a
//! decoded ASAP message, a malformed frame, a closed connection, a revocation — with the
//! current time, and carries out the [`Action`]s it returns, in order: send a message,
//! close a connection, write an audit record. An [`Action::Audit`] with
//! [`Durability::BeforeReply`] is a barrier: the driver commits it before carrying out any
//! later action of the same batch (raft's "persist before send"), so that no registration
//! is acknowledged before its audit record is durable.
//!
//! Time comes in as `now`; the one RNG, a ChaCha8 stream (the same for a seed whatever
//! the `rand` release), is seeded from [`Config::rng_seed`]. Timers are
//! values ([`Core::next_timeout`], [`Core::handle_timeout`]).
//!
//! Read [`Core::handle`] first; the ASAP server procedures of spec §7 are in `asap.rs`,
//! the ENRP procedures of spec §9 (peers, handle updates, liveness, handle tables,
//! takeover) in `enrp/`. This file holds the types the driver sees ([`Input`], [`Action`],
//! the audit records) and the dispatch ([`Core::handle`], [`Core::handle_timeout`]); the
//! configuration is in `config.rs`, the legacy (RSPLIB) identities in `legacy.rs`, the
//! removals an operator, a revocation or a grant change causes in `removals.rs`, the
//! timer queue in `timers.rs`.

mod asap;
mod config;
mod drain;
mod enrp;
mod legacy;
mod read_view;
mod refresh;
mod removals;
mod rtt;
mod timers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ::asap::wire::param::{Namespace, PeId, PolicyType, PoolHandle, ServerId};
use ::asap::wire::{AsapMsg, DecodeError, Decoded, EnrpMsg};
use identity::{DefaultNamespace, Grant, Serial, SpiffeId, TrustDomain};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng as _;

use crate::handlespace::Handlespace;
use crate::hash::{HashMap, HashSet};

pub use config::{Config, Timing};
pub use drain::{DrainRefusal, MAX_DRAINS};
pub use enrp::{MAX_CLAIMS, MAX_LIST_DIALS, PeerState, PeerStatus};
// What a revocation names, what an audit record says happened and when it must be
// durable: `identity`'s, one vocabulary for the core, the store and the admin API.
use asap::client_event;
use identity::Revocation;
/// The core's audit records are `identity`'s (typed subjects, one type from the core to the
/// store, issue 24); re-exported so that the core's modules and the driver keep one path.
pub use identity::audit::AuditEvent;
use identity::audit::{AuditAction, Durability};
pub use legacy::{
    is_legacy, is_legacy_peer, legacy_identity, legacy_peer_identity, legacy_registrant,
};
pub use read_view::{Answered, ClientView, ConnRng, ReadView, Resolved};
pub use refresh::Refresh;
use removals::audit_removal;
pub use timers::Timers;

/// A connection of the driver, named by a number the driver chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// The authenticated remote of a connection, ASAP or ENRP: what the TLS handshake proved
/// about it (for a legacy SCTP association: its address, [`legacy_identity`]), and where it
/// is. On an ASAP connection it is a client (a PE or a PU); on an ENRP connection a peer
/// registrar. "Peer" in the core means only an ENRP peer registrar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The SPIFFE ID of its certificate.
    pub id: SpiffeId,
    /// Its certificate's serial.
    pub serial: Serial,
    /// The remote address of the connection.
    pub addr: SocketAddr,
}

/// What happens to the registrar.
#[derive(Debug)]
pub enum Input {
    /// A client finished its TLS handshake.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Who it is.
        client: Remote,
        /// Every address of the client's end: over SCTP the association's peer
        /// addresses (the kernel's `sctp_getpaddrs`); over TCP, or when the kernel did not
        /// tell them, none. `client.addr` counts in any case. A PE may register only these
        /// addresses (spec §7.1 PR step 3).
        addrs: Vec<std::net::IpAddr>,
    },
    /// A whole message arrived and decoded.
    Asap {
        /// The connection it came on.
        conn: ConnId,
        /// The message and the parameters to report as unrecognized.
        msg: Decoded<AsapMsg>,
    },
    /// A whole frame arrived but did not decode (spec §3.3, §3.4, §7.9).
    Malformed {
        /// The connection it came on.
        conn: ConnId,
        /// Why.
        error: DecodeError,
    },
    /// Unchanged re-registrations that the connection task acknowledged itself
    /// ([`ReadView::refresh`]), in the order they came, for the core to apply
    /// ([`refresh`]). The connection task sends them before any other input of the
    /// connection, so the core sees its messages in order.
    Refreshed {
        /// The connection they came on.
        conn: ConnId,
        /// What was re-registered.
        refreshed: Vec<Refresh>,
    },
    /// The connection closed (by the peer, a framing fault, or an earlier [`Action::Close`]).
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// The grants changed (admin API, reload): the PEs they no longer allow are removed.
    Grants(Vec<Grant>),
    /// A connection made for [`Action::DialPe`] is up (after its `Connected`): the
    /// registrar sends the PE the keep-alive with H=1 that makes it its new home.
    PeDialed {
        /// The connection.
        conn: ConnId,
        /// The PE it was made for.
        pe: PeKey,
    },
    /// The default-namespace rules changed (admin API, reload): requests without a
    /// Namespace parameter go where they say from now on; registered PEs stay.
    DefaultNamespaces(Vec<DefaultNamespace>),
    /// An identity was revoked: its connections close and its PEs are removed.
    Revoked(Revocation),
    /// A federated trust domain was removed from the trust store: like a revocation of
    /// the domain, but not remembered, so that the domain can be added again.
    DomainRemoved(String),
    /// An operator declared a pool's policy and most PEs (admin API, or the store at
    /// start-up); `None` removes the declaration. New registrations must fit it.
    DeclarePool {
        /// The namespace.
        namespace: Namespace,
        /// The pool handle.
        pool_handle: PoolHandle,
        /// What is declared.
        declared: Option<Declared>,
    },
    /// An ENRP peer finished its TLS handshake (spec §9.2). The driver derived
    /// `server_id` from the certificate's SPIFFE ID (ARCHITECTURE.md §3).
    PeerUp {
        /// The connection (numbered like ASAP connections, from the same counter).
        conn: ConnId,
        /// Who it is.
        peer: Remote,
        /// The Server ID its identity implies: every message must carry it.
        server_id: ServerId,
        /// Whether this registrar dialed it (`--peer`) rather than accepted it: of two
        /// connections between the same pair, both keep the one the lower Server ID dialed.
        outbound: bool,
    },
    /// A whole ENRP message arrived on a peer connection and decoded.
    Enrp {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: Decoded<EnrpMsg>,
    },
    /// An ENRP frame that did not decode.
    EnrpMalformed {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: DecodeError,
    },
    /// A peer connection closed.
    PeerDown {
        /// The connection.
        conn: ConnId,
    },
    /// An operator deregisters PEs (admin API); `actor` names them in the audit records.
    Remove {
        /// Which PEs.
        scope: Scope,
        /// Who asked (`token:ID` or a SPIFFE ID).
        actor: String,
    },
}

/// What an operator declared for a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Declared {
    /// The policy type every PE must register with.
    pub policy: Option<PolicyType>,
    /// At most this many PEs (new PEs beyond it are refused with cause 0x6).
    pub max_pes: Option<u32>,
}

/// Which PEs an operator's removal covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every PE of a namespace.
    Namespace(Namespace),
    /// Every PE of a pool.
    Pool(Namespace, PoolHandle),
    /// One PE.
    Pe(PeKey),
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message on a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: AsapMsg,
    },
    /// Send an ENRP message on a peer connection.
    SendEnrp {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: EnrpMsg,
    },
    /// Close a connection (an [`Input::Closed`] or [`Input::PeerDown`] follows from the
    /// driver).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: &'static str,
    },
    /// Dial a registrar learnt from a peer's list (spec §9.2), or a dead peer at the
    /// address it advertised, and keep a connection to it, like a configured peer. The
    /// driver dials each address once; whoever answers is authenticated as usual.
    DialPeer {
        /// Its advertised ENRP address: TCP, or a (multi-homed) SCTP endpoint.
        addr: ::asap::addr::TransportAddr,
    },
    /// Dial a taken-over PE's ASAP listener (spec §12.6) over mutual TLS, insisting that it
    /// presents `registrant`'s certificate, announce the connection with
    /// [`Input::Connected`] and then [`Input::PeDialed`], and serve it like an accepted one.
    /// A legacy PE (`registrant` a legacy identity, RSPLIB's) is dialed over plain SCTP,
    /// as the legacy listener serves it: it takes its new home from the H=1 keep-alive on
    /// a new association (docs/RSPLIB.md §0.7).
    DialPe {
        /// The PE.
        pe: PeKey,
        /// The ASAP transport it advertised: TCP, or SCTP with all its addresses.
        addr: ::asap::addr::TransportAddr,
        /// The identity it registered with: nobody else may answer for it.
        registrant: SpiffeId,
    },
    /// Store for good that `server_id` is bound to `identity`, the first identity that
    /// proved it (docs/ENRP-TRUST.md §4); a binding already stored stays.
    BindServerId {
        /// The Server ID.
        server_id: ServerId,
        /// Its identity.
        identity: SpiffeId,
    },
    /// Write an audit record.
    Audit {
        /// The record.
        event: AuditEvent,
        /// When it must be durable.
        durability: Durability,
    },
}

/// A PE this registrar knows, as a key: (namespace, pool handle, PE ID).
pub type PeKey = (Namespace, PoolHandle, PeId);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TimerKey {
    /// Send the next endpoint keep-alive to an owned PE.
    KeepAlive(PeKey),
    /// The keep-alive (or probe) went unanswered.
    KeepAliveTimeout(PeKey),
    /// The PE's connection closed; remove it unless it re-registers.
    Orphaned(PeKey),
    /// A PU's report window ends.
    ReportWindow(ConnId),
    /// Send PRESENCE to every peer (spec §9.5).
    PeerHeartbeat,
    /// A peer has been silent for MAX-TIME-LAST-HEARD: probe it.
    PeerLastHeard(ServerId),
    /// A probed or disconnected peer did not answer: it is dead.
    PeerNoResponse(ServerId),
    /// A handle table continuation point expires (spec §9.7 [P]).
    Continuation(ServerId, bool),
    /// A peer's PE was not refreshed within its registration life (spec §9.4).
    PeerPeLife(PeKey),
    /// A takeover of this dead peer is still missing acknowledgements (spec §9.8 step 5).
    TakeoverExpiry(ServerId),
    /// The start-up phase ends without a mentor (spec §9.3 step 4).
    MentorTimeout,
    /// An operator's drain of an owned PE reaches its deadline (`drain.rs`).
    DrainDeadline(PeKey),
}

/// What the registrar remembers of a PE it owns (its home registrar, spec §7.4).
#[derive(Debug, Default)]
struct Owned {
    /// The connection it registered on; `None` during the grace period of §12.6.
    conn: Option<ConnId>,
    /// Distinct PUs that reported it unreachable since its last keep-alive answer.
    reporters: HashSet<SpiffeId>,
    /// The trust domain and serial of the certificate it was (last) registered with:
    /// revoking that certificate removes it even after its connection is gone.
    serial: Option<(TrustDomain, Serial)>,
    /// The peer it was taken over from (spec §9.8), until it re-registers here. If that
    /// peer comes back (a healed partition) and no longer lists it, it is gone.
    taken_from: Option<ServerId>,
    /// The keep-alive round trip to it (docs/PROTOCOL-EXTENSIONS.md §3).
    rtt: rtt::RttEstimator,
    /// When it first registered here (re-registrations keep it): its age in the admin API.
    /// `None` for a PE taken over from a peer until it registers here.
    registered: Option<Instant>,
    /// When a registration here last started its keep-alive over: an unchanged
    /// re-registration within half an interval of it leaves the timer as it is
    /// ([`refresh`]).
    restarted: Option<Instant>,
}

#[derive(Debug)]
struct Connection {
    client: Remote,
    /// The client's addresses in canonical form (IPv4-mapped IPv6 as IPv4), `client.addr`
    /// first: what its PEs may register (spec §7.1 PR step 3).
    addrs: Vec<std::net::IpAddr>,
    /// Owned PEs registered on this connection. Change it with [`Connection::add_pe`] and
    /// [`Connection::remove_pe`], which keep `namespaces` in step.
    pes: HashSet<PeKey>,
    /// The namespaces of `pes`, with how many PEs each. A keep-alive ack names no
    /// namespace: it is looked up under these few instead of by scanning `pes`.
    namespaces: BTreeMap<Namespace, usize>,
    /// Unreachable reports in the current window.
    reports: u32,
    /// What readers see of it ([`ReadView`]): whether it was revoked (it is being closed
    /// and nothing it sends counts) and where its requests without a Namespace parameter
    /// go (worked out from the rules when it connects and when they change, not per
    /// request).
    view: Arc<ClientView>,
}

impl Connection {
    fn add_pe(&mut self, key: PeKey) {
        if !self.pes.contains(&key) {
            *self.namespaces.entry(key.0.clone()).or_default() += 1;
            self.pes.insert(key);
        }
    }

    fn remove_pe(&mut self, key: &PeKey) {
        self.view.unbind(key.2);
        if self.pes.remove(key)
            && let Some(n) = self.namespaces.get_mut(&key.0)
        {
            *n -= 1;
            if *n == 0 {
                self.namespaces.remove(&key.0);
            }
        }
    }

    /// The PE of this connection with this pool handle and PE ID, in the first namespace
    /// (in order) that has one. O(namespaces of this connection), not O(PEs): 20,000
    /// keep-alive acks a second on connections of 1,000 PEs (benches/registrar.rs).
    fn find_pe(&self, pool_handle: &PoolHandle, pe_id: PeId) -> Option<PeKey> {
        self.namespaces
            .keys()
            .map(|ns| (ns.clone(), pool_handle.clone(), pe_id))
            .find(|key| self.pes.contains(key))
    }
}

/// Counters for tests, metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections open.
    pub connections: usize,
    /// PEs in the handlespace.
    pub pes: usize,
    /// PEs owned by this registrar.
    pub owned: usize,
    /// Armed timers.
    pub timers: usize,
}

/// The registrar core. See the module docs.
#[derive(Debug)]
pub struct Core {
    config: Config,
    handlespace: Handlespace,
    /// The grants; the same `Arc` is in [`Self::view`].
    grants: Arc<Vec<Grant>>,
    /// What connection tasks read to answer resolutions themselves, changed in the same
    /// step as the core's state ([`ReadView`]).
    view: Arc<ReadView>,
    /// Where requests without a Namespace parameter go (ARCHITECTURE.md §3).
    default_namespaces: Vec<DefaultNamespace>,
    conns: HashMap<ConnId, Connection>,
    owned: HashMap<PeKey, Owned>,
    timers: Timers<TimerKey>,
    rng: ChaCha8Rng,
    /// Revocations heard of: a connection they cover is closed as soon as it is
    /// announced (it may have finished its handshake before the TLS layer knew).
    revocations: Vec<Revocation>,
    /// Pools with declared limits (admin API).
    declared: HashMap<(Namespace, PoolHandle), Declared>,
    /// ENRP peers by Server ID, with their state (spec §9.2, §9.5).
    peers: BTreeMap<ServerId, enrp::Peer>,
    /// The peer connections in use: which Server ID each speaks for.
    peer_conns: HashMap<ConnId, enrp::PeerConn>,
    /// Takeovers of dead peers this registrar runs, by target (spec §9.8).
    takeovers: BTreeMap<ServerId, enrp::Takeover>,
    /// Takeovers by peers this registrar acknowledged: target → (initiator, until when it
    /// refrains from its own takeover of that target).
    acked_takeovers: BTreeMap<ServerId, (ServerId, Instant)>,
    /// INIT_TAKEOVERs not acknowledged because their target is alive here: (target,
    /// initiator) → until when the initiator's takeover may still be waiting. Acknowledged
    /// if this registrar declares the target dead before then. Bounded: both are accepted
    /// peers, so at most peers² entries.
    pending_inits: BTreeMap<(ServerId, ServerId), Instant>,
    /// Re-homes waiting for the withdrawal or death of the PE's live home, by PE
    /// (docs/ENRP-TRUST.md §2). At most [`enrp::MAX_CLAIMS`].
    claims: BTreeMap<PeKey, enrp::Claim>,
    /// Server IDs bound for good to the identity that first proved them (stored, and
    /// learnt since): no other identity may peer with one (docs/ENRP-TRUST.md §4).
    bindings: BTreeMap<ServerId, SpiffeId>,
    /// In the start-up phase (spec §9.3): ASAP registrations and resolutions are refused.
    starting: bool,
    /// The peer whose whole handle table (W=0) is being downloaded during start-up.
    mentor: Option<ServerId>,
    /// Pools created by registrations on this registrar, by namespace and identity
    /// ([`Config::max_pools_per_identity`]); pools gone since are dropped when looked at.
    pool_creators: HashMap<(Namespace, SpiffeId), Vec<PoolHandle>>,
    /// Operators' drains of owned PEs, draining or drained (`drain.rs`), at most
    /// [`MAX_DRAINS`].
    drains: HashMap<PeKey, drain::Drain>,
}

impl Core {
    /// A registrar with an empty handlespace and these grants.
    pub fn new(config: Config, grants: Vec<Grant>) -> Self {
        let handlespace = Handlespace::with_registry(config.limits, config.policies.clone());
        let grants = Arc::new(grants);
        let view = Arc::new(ReadView::new(
            &config,
            Arc::clone(handlespace.view()),
            Arc::clone(&grants),
        ));
        Self {
            handlespace,
            view,
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            config,
            grants,
            default_namespaces: Vec::new(),
            conns: HashMap::default(),
            owned: HashMap::default(),
            timers: Timers::default(),
            revocations: Vec::new(),
            declared: HashMap::default(),
            peers: BTreeMap::new(),
            peer_conns: HashMap::default(),
            takeovers: BTreeMap::new(),
            acked_takeovers: BTreeMap::new(),
            pending_inits: BTreeMap::new(),
            claims: BTreeMap::new(),
            bindings: BTreeMap::new(),
            starting: false,
            mentor: None,
            pool_creators: HashMap::default(),
            drains: HashMap::default(),
        }
    }

    /// Sets the stored Server ID bindings before the first input (docs/ENRP-TRUST.md §4):
    /// another identity claiming one of these Server IDs is refused from the start.
    pub fn set_server_id_bindings(&mut self, bindings: Vec<(ServerId, SpiffeId)>) {
        self.bindings.extend(bindings);
    }

    /// Sets the revocations in force before the first input: those stored by the admin
    /// API, so that after a restart no peer can bring back a revoked identity's PEs
    /// (issue 16). Later ones arrive as [`Input::Revoked`].
    pub fn set_revocations(&mut self, revocations: Vec<Revocation>) {
        for r in revocations {
            if !self.revocations.contains(&r) {
                self.revocations.push(r);
            }
        }
    }

    /// Sets the default-namespace rules before the first input (later changes arrive as
    /// [`Input::DefaultNamespaces`]).
    pub fn set_default_namespaces(&mut self, rules: Vec<DefaultNamespace>) {
        self.default_namespaces = rules;
        let ids: Vec<(ConnId, SpiffeId)> = self
            .conns
            .iter()
            .map(|(conn, c)| (*conn, c.client.id.clone()))
            .collect();
        for (conn, id) in ids {
            let ns = self.default_namespace_of(&id);
            if let Some(c) = self.conns.get(&conn) {
                c.view.set_default_namespace(ns);
            }
        }
    }

    /// ARCHITECTURE.md §3: the most specific default-namespace rule for `id`, else
    /// `default`. (The store checked each rule's name; one that still does not parse is
    /// skipped.)
    fn default_namespace_of(&self, id: &SpiffeId) -> Namespace {
        if is_legacy(id)
            && let Some(ns) = &self.config.legacy_namespace
        {
            return ns.clone();
        }
        identity::default_namespace(&self.default_namespaces, id)
            .and_then(Namespace::new)
            .unwrap_or_else(Namespace::default_namespace)
    }

    /// Enters the start-up phase of spec §9.3: the driver calls it once, before any input,
    /// when peers are configured. ASAP registrations and resolutions are refused until a
    /// mentor's handle table is downloaded or [`Timing::mentor_timeout`] passes.
    pub fn begin_startup(&mut self, now: Instant) {
        self.set_starting(true);
        self.timers.set(
            TimerKey::MentorTimeout,
            now + self.config.timing.mentor_timeout,
        );
    }

    /// Whether the registrar is still in its start-up phase (not serving ASAP).
    pub fn starting(&self) -> bool {
        self.starting
    }

    fn set_starting(&mut self, starting: bool) {
        self.starting = starting;
        self.view.set_starting(starting);
    }

    /// What connection tasks read to answer resolutions themselves ([`ReadView`]).
    pub fn read_view(&self) -> &Arc<ReadView> {
        &self.view
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When a PE this registrar is home of first registered here (re-registrations keep
    /// the time); `None` for a peer's PE, or one taken over that has not registered here.
    pub fn home_registered(
        &self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
    ) -> Option<Instant> {
        let key: PeKey = (namespace.clone(), pool_handle.clone(), pe_id);
        self.owned.get(&key)?.registered
    }

    /// The smoothed keep-alive round trip to a PE this registrar is home of (`None`: not
    /// ours, or not measured yet; docs/PROTOCOL-EXTENSIONS.md §3).
    pub fn home_round_trip(
        &self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
    ) -> Option<std::time::Duration> {
        let key: PeKey = (namespace.clone(), pool_handle.clone(), pe_id);
        self.owned.get(&key)?.rtt.srtt()
    }

    /// The handlespace (read-only: changes go through [`Self::handle`]).
    pub fn handlespace(&self) -> &Handlespace {
        &self.handlespace
    }

    /// Journals the handlespace's changes from now on, for
    /// [`Core::take_handlespace_changes`] (the daemon's watch streams, issue 22).
    pub fn journal_handlespace_changes(&mut self) {
        self.handlespace.journal_changes();
    }

    /// The PEs added, updated and removed since the last call, in order (none unless
    /// [`Core::journal_handlespace_changes`] was called).
    pub fn take_handlespace_changes(&mut self) -> Vec<crate::handlespace::Change> {
        self.handlespace.take_changes()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            pes: self.handlespace.pe_count(),
            owned: self.owned.len(),
            timers: self.timers.len(),
        }
    }

    /// Applies one input and returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Connected {
                conn,
                client,
                addrs,
            } => {
                let revoked = self
                    .revocations
                    .iter()
                    .any(|r| r.covers(&client.id, &client.serial));
                if revoked {
                    out.push(Action::Close {
                        conn,
                        reason: "certificate revoked",
                    });
                }
                let default_namespace = self.default_namespace_of(&client.id);
                let view = Arc::new(ClientView::new(client.clone(), default_namespace, revoked));
                self.view.add_client(conn, Arc::clone(&view));
                let mut canonical = vec![client.addr.ip().to_canonical()];
                for ip in addrs.into_iter().map(|a| a.to_canonical()) {
                    if !canonical.contains(&ip) {
                        canonical.push(ip);
                    }
                }
                self.conns.insert(
                    conn,
                    Connection {
                        client,
                        addrs: canonical,
                        pes: HashSet::default(),
                        namespaces: BTreeMap::new(),
                        reports: 0,
                        view,
                    },
                );
            }
            Input::Asap { conn, msg } => self.on_asap(conn, msg, now, &mut out),
            Input::Malformed { conn, error } => self.on_malformed(conn, &error, &mut out),
            Input::Refreshed { conn, refreshed } => {
                for r in refreshed {
                    self.on_refreshed(conn, r, now, &mut out);
                }
            }
            Input::Closed { conn } => self.on_closed(conn, now),
            // The same grants again (a fleet's periodic re-read sets them every
            // `fleet_resync_secs`): every PE present is allowed by them already, so the
            // walk of the whole handlespace would remove nothing.
            Input::Grants(grants) if *self.grants == grants => {}
            Input::Grants(grants) => {
                self.grants = Arc::new(grants);
                self.view.set_grants(Arc::clone(&self.grants));
                self.on_grants_changed(&mut out);
            }
            Input::DefaultNamespaces(rules) => self.set_default_namespaces(rules),
            Input::PeDialed { conn, pe } => self.on_pe_dialed(conn, pe, &mut out),
            Input::Revoked(r) => {
                self.on_revoked(&r, &mut out);
                if !self.revocations.contains(&r) {
                    self.revocations.push(r);
                }
            }
            Input::DomainRemoved(domain) => {
                // A name that is not a trust domain's names no identity: nothing to remove.
                if let Ok(domain) = TrustDomain::new(&domain) {
                    self.on_revoked(&Revocation::TrustDomain(domain), &mut out);
                }
            }
            Input::Remove { scope, actor } => self.on_admin_remove(&scope, &actor, &mut out),
            Input::DeclarePool {
                namespace,
                pool_handle,
                declared,
            } => {
                // A re-registration in the pool is the core's to judge again.
                for c in self.conns.values() {
                    c.view.unbind_all();
                }
                match declared {
                    Some(d) => {
                        self.declared.insert((namespace, pool_handle), d);
                    }
                    None => {
                        self.declared.remove(&(namespace, pool_handle));
                    }
                }
            }
            Input::PeerUp {
                conn,
                peer,
                server_id,
                outbound,
            } => self.on_peer_up(conn, peer, server_id, outbound, now, &mut out),
            Input::Enrp { conn, msg } => self.on_enrp(conn, msg, now, &mut out),
            Input::EnrpMalformed { conn, error } => {
                self.on_enrp_malformed(conn, &error, &mut out);
            }
            Input::PeerDown { conn } => self.on_peer_down(conn, now),
        }
        self.confine_legacy_sends(&mut out);
        out
    }

    /// The earliest time at which [`Self::handle_timeout`] has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// Runs every timer due at `now`, in deadline order. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(key) = self.timers.pop_expired(now) {
            match key {
                TimerKey::KeepAlive(pe) => self.send_keep_alive(pe, false, now, &mut out),
                TimerKey::KeepAliveTimeout(pe) => {
                    self.remove_owned(&pe, AuditAction::RemoveTimeout, &mut out);
                    // We let it go (DEL_PE sent): a peer's re-home of it may apply now.
                    self.settle_claims(&[pe], now, &mut out);
                }
                TimerKey::Orphaned(pe) => {
                    if self.owned.get(&pe).is_some_and(|o| o.conn.is_none()) {
                        self.remove_owned(&pe, AuditAction::RemoveConnectionLoss, &mut out);
                        self.settle_claims(&[pe], now, &mut out);
                    }
                }
                TimerKey::ReportWindow(conn) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.reports = 0;
                    }
                }
                TimerKey::PeerHeartbeat => self.send_heartbeats(now, &mut out),
                TimerKey::PeerLastHeard(sid) => self.probe_peer(sid, now, &mut out),
                TimerKey::PeerNoResponse(sid) => self.peer_dead(sid, now, &mut out),
                TimerKey::Continuation(sid, own) => {
                    if let Some(p) = self.peers.get_mut(&sid) {
                        p.continuation.remove(&own);
                    }
                }
                TimerKey::PeerPeLife(pe) => self.expire_peer_pe(&pe, &mut out),
                TimerKey::TakeoverExpiry(target) => self.takeover_expired(target, &mut out),
                TimerKey::MentorTimeout => {
                    self.end_startup(AuditAction::MentorTimeout, None, &mut out);
                }
                TimerKey::DrainDeadline(pe) => self.drain_deadline(&pe, &mut out),
            }
        }
        self.confine_legacy_sends(&mut out);
        out
    }

    fn on_closed(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.view.remove_client(conn);
        self.timers.stop(&TimerKey::ReportWindow(conn));
        // Spec §12.6: the PEs wait one grace period for their re-registration elsewhere.
        let grace = now + self.config.timing.connection_grace;
        for pe in c.pes {
            if let Some(o) = self.owned.get_mut(&pe) {
                o.conn = None;
                self.timers.stop(&TimerKey::KeepAlive(pe.clone()));
                self.timers.stop(&TimerKey::KeepAliveTimeout(pe.clone()));
                self.timers.set(TimerKey::Orphaned(pe), grace);
            }
        }
    }

    /// Whether `id` may do `action` on `handle` in `ns`: the grants, or for a legacy
    /// identity, the legacy namespace: a legacy client every ASAP action there and no
    /// peering, a legacy peer (configured by address and Server ID) peering there and no
    /// ASAP action; neither anything anywhere else.
    fn permits(
        &self,
        id: &SpiffeId,
        ns: &Namespace,
        handle: &PoolHandle,
        action: identity::Action,
    ) -> bool {
        let legacy = self.config.legacy_namespace.as_ref();
        permits(&self.grants, legacy, id, ns, handle, action)
    }

    /// Why `id` may not hold a PE carrying `labels` in `handle` of `ns`, or `None` when it
    /// may ([`register_refusal`]).
    fn register_refusal(
        &self,
        id: &SpiffeId,
        ns: &Namespace,
        handle: &PoolHandle,
        labels: &::asap::wire::param::Labels,
    ) -> Option<String> {
        let legacy = self.config.legacy_namespace.as_ref();
        register_refusal(&self.grants, legacy, id, ns, handle, labels)
    }
}

/// Why `id` may not hold a PE carrying `labels` in `handle` of `ns` under `grants`, or
/// `None` when it may: a register grant that admits every label (issue 23: grants may
/// restrict the labels an identity sets). Legacy identities set no labels (RSPLIB knows
/// none); they are held to [`permits`] alone. The core's check, and the [`ReadView`]'s
/// for an unchanged re-registration.
fn register_refusal(
    grants: &[Grant],
    legacy_namespace: Option<&Namespace>,
    id: &SpiffeId,
    ns: &Namespace,
    handle: &PoolHandle,
    labels: &::asap::wire::param::Labels,
) -> Option<String> {
    if is_legacy(id) {
        return (!permits(
            grants,
            legacy_namespace,
            id,
            ns,
            handle,
            identity::Action::Register,
        ))
        .then(|| "no register grant for this pool".to_owned());
    }
    match identity::register_allowed(grants, id, ns.as_str(), handle.as_bytes(), labels.iter()) {
        Ok(()) => None,
        Err(identity::RegisterRefusal::NoGrant) => {
            Some("no register grant for this pool".to_owned())
        }
        Err(identity::RegisterRefusal::Label(k, v)) => Some(format!(
            "label {k}={v} is not allowed by a register grant for this pool"
        )),
    }
}

/// Whether `id` may do `action` on `handle` in `ns` under `grants`, or for a legacy
/// identity, in the legacy namespace ([`Core::permits`]; the [`ReadView`] asks the same).
fn permits(
    grants: &[Grant],
    legacy_namespace: Option<&Namespace>,
    id: &SpiffeId,
    ns: &Namespace,
    handle: &PoolHandle,
    action: identity::Action,
) -> bool {
    if is_legacy(id) {
        return (action == identity::Action::Peer) == is_legacy_peer(id)
            && legacy_namespace == Some(ns);
    }
    identity::allowed(grants, id, ns.as_str(), Some(handle.as_bytes()), action)
}

#[cfg(test)]
mod tests;
