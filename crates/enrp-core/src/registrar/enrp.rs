//! The ENRP procedures of a registrar (spec §9, §11.2, §12.4): peers and their Server IDs,
//! handle updates for owned PEs, presence heartbeats with the PE checksum, dead-peer
//! detection, handle table download with the M-bit paging of §9.7, and takeover of a
//! dead peer (§9.8).
//!
//! Pure, like the rest of the core: the driver announces each authenticated peer
//! connection ([`Input::PeerUp`](super::Input::PeerUp)) with the Server ID derived from
//! its certificate, feeds the decoded messages, and sends what comes out as
//! [`Action::SendEnrp`].
//!
//! What this slice of issue 7 does not do yet, and what happens instead:
//! - Takeover (§9.8) gives the taken-over PEs a new home. Over TCP this registrar has no
//!   connection to them (spec §12.6): a PE that advertised an ASAP listener is dialed
//!   ([`Action::DialPe`], authenticated as its registrant) and sent the H=1 keep-alive;
//!   every PE waits one connection grace period for its re-registration here (with its
//!   PE ID), like the PEs of a closed connection.
//!   If the peer they were taken from comes back (a healed partition), its handle table
//!   decides at once: the PEs it lists go back to it, the others are removed.
//! - Peer lists (§9.2): a peer is asked for its list when it connects; each listed Server
//!   ID not known yet is dialed ([`Action::DialPeer`], at most [`MAX_LIST_DIALS`] per
//!   response) and authenticated like any peer: a list only says where to dial. A peer
//!   declared dead is dialed at the address it advertised, so that it is found again.
//! - Mentor start-up (§9.3): a registrar started with peers downloads the whole handle
//!   table (W=0) of the first peer up, its mentor, and serves no ASAP until the last page
//!   or the mentor timeout. Of that table only the mentor's own PEs are taken (the [P]
//!   rule of §9.4: a peer speaks only for its own PEs); every other peer is asked for its
//!   own PEs (W=1) when it connects, so a registrar peered with all others (our static,
//!   full-mesh configuration) learns every PE.
//! - Legacy peers (RSPLIB's `rspregistrar` over plain SCTP, issue 8): the driver admits
//!   them by address and configured Server ID; they need no grant and may peer in the
//!   legacy namespace only. What they send lands there, its PEs known by address
//!   ([`super::legacy_registrant`]), so that they can re-register here and be dialed over
//!   plain SCTP on a takeover; what they hear is that namespace only, without the project parameters RSPLIB rejects
//!   (`Core::confine_legacy_sends`), with a checksum over that namespace and an SCTP
//!   Server Information. RSPLIB never sends TAKEOVER_SERVER: its takeovers reach us
//!   through the checksum audit (W=1 download), which moves a PE's home like an update.
//! - What a peer is trusted with (issue 16, docs/ENRP-TRUST.md): a takeover only of a
//!   registrar dead here, after our acknowledgement; a PE moves from a live home only
//!   once that home lets it go; peers' PEs obey our grants, quotas and each peer's share;
//!   Server IDs stay bound to their first identity; every change a peer causes is audited
//!   here, one record per message.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use ::asap::addr::{Endpoint, TransportAddr};
use ::asap::wire::param::{
    Address, ErrorCause, Namespace, OperationError, Param as _, PeChecksum, PeId, PoolHandle,
    SctpAddresses, ServerId, ServerInformation, Transport, TransportUse,
};
use ::asap::wire::{
    AsapMsg, DecodeError, Decoded, EnrpBody, EnrpMsg, PeEntry, PoolEntries, UpdateAction,
};
use identity::SpiffeId;

use super::{
    Action, AuditAction, AuditEvent, Client, ConnId, Core, Durability, PeKey, Revocation, TimerKey,
    is_legacy, is_legacy_peer,
};
use crate::checksum::PeChecksum as Checksum;
use crate::handlespace::Removed;

/// Where an ENRP peer stands (spec §9.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Connected and heard from within MAX-TIME-LAST-HEARD.
    Active,
    /// Probed with PRESENCE R=1, or its connection was lost: it has MAX-TIME-NO-RESPONSE
    /// to answer or reconnect.
    Probing,
    /// It did not answer: dead. Its PEs are taken over (spec §9.8), or expire at their
    /// registration life.
    Dead,
}

impl PeerState {
    /// The name the admin API shows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Probing => "probing",
            Self::Dead => "dead",
        }
    }
}

/// A peer as the admin API shows it (`GET /v1/peers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its SPIFFE ID.
    pub identity: SpiffeId,
    /// Its Server ID.
    pub server_id: ServerId,
    /// Its state.
    pub state: PeerState,
    /// Whether a connection to it is up.
    pub connected: bool,
    /// When a message from it last arrived.
    pub last_heard: Option<Instant>,
    /// Whether the checksum of its PEs in our handlespace equals the one it last sent
    /// (spec §9.6); `None` before its first PRESENCE.
    pub checksum_match: Option<bool>,
    /// The last other identity that claimed its Server ID and was refused (issue 16).
    pub conflict: Option<SpiffeId>,
}

/// What the core remembers of a peer registrar.
#[derive(Debug)]
pub(super) struct Peer {
    client: Client,
    /// The connection in use, if any.
    conn: Option<ConnId>,
    state: PeerState,
    last_heard: Option<Instant>,
    /// The checksum of its own PEs it last announced.
    their_checksum: Option<u16>,
    /// A handle table download (W=1) in progress: the PEs it listed so far. At the last
    /// page, its PEs not listed are purged (spec §9.6).
    sync: Option<HashSet<PeKey>>,
    /// The W flag of the download in `sync`: W=0 only for the mentor at start-up.
    sync_own: bool,
    /// Continuation points of its handle table requests, by W flag (spec §9.7).
    pub(super) continuation: HashMap<bool, PeKey>,
    /// The ENRP address it advertised in its PRESENCE (spec §4.5), TCP or multi-homed
    /// SCTP: where it is dialed again when declared dead, and what our list responses say.
    enrp_addr: Option<TransportAddr>,
    /// Our ENRP_LIST_REQUEST to it is unanswered: only its answer is taken (issue 16).
    list_asked: bool,
    /// The last other identity that claimed its Server ID, refused.
    conflict: Option<SpiffeId>,
}

/// Most new peers one ENRP_LIST_RESPONSE may make this registrar dial: a peer's list is
/// bounded by configuration (spec §9.2), and one peer must not make us dial without end.
pub const MAX_LIST_DIALS: usize = 64;

/// Where a Server Information says its registrar serves ENRP, if that can be dialed
/// ([`TransportAddr::of_transport`]).
fn dialable(info: &ServerInformation) -> Option<TransportAddr> {
    TransportAddr::of_transport(&info.transport)
}

/// `addr` as the transport of a Server Information (spec §4.5): TCP, or SCTP listing
/// every address of the endpoint.
fn server_transport(addr: &TransportAddr) -> Option<Transport> {
    let port = NonZeroU16::new(addr.primary().port())?;
    Some(match addr {
        TransportAddr::Tcp(a) => Transport::Tcp {
            port,
            transport_use: TransportUse::DataOnly,
            addr: Address::new(a.ip()),
        },
        TransportAddr::Sctp(e) => Transport::Sctp {
            port,
            transport_use: TransportUse::DataOnly,
            addrs: SctpAddresses::new(e.addrs().iter().map(|a| Address::new(a.ip())))?,
        },
    })
}

/// A takeover of a dead peer this registrar runs (spec §9.8).
#[derive(Debug, Default)]
pub(super) struct Takeover {
    /// The peers that acknowledged it. Only those of live, authenticated peers count:
    /// acknowledgements arrive only on accepted peer connections with a checked Sender ID.
    acks: BTreeSet<ServerId>,
}

/// A peer connection in use.
#[derive(Debug)]
pub(super) struct PeerConn {
    server_id: ServerId,
    client: Client,
    /// Dialed by the lower of the two Server IDs: of two connections between the same
    /// pair, both sides keep that one.
    dialed_by_lower: bool,
    /// Being closed: nothing it sends counts any more.
    closing: bool,
}

/// Most re-homes waiting for the withdrawal of a live home (docs/ENRP-TRUST.md §2).
/// Beyond it a re-home is refused without waiting; the §9.6 checksum audit offers it
/// again. 10,000 entries of a few hundred bytes.
pub const MAX_CLAIMS: usize = 10_000;

/// A peer's ADD_PE (or handle table entry) for a PE whose home is another live peer:
/// applied once that home withdraws the PE (DEL_PE, its handle table) or dies here.
#[derive(Debug)]
pub(super) struct Claim {
    by: ServerId,
    entry: PeEntry,
    /// When it arrived: the PE's registration life counts from then.
    at: Instant,
}

/// What one peer message changed here, or refused: audited as at most two records (one
/// for the changes, one for the refusals) with counts, not one per PE (issue 16).
#[derive(Debug, Default)]
pub(super) struct Tally {
    added: usize,
    rehomed: usize,
    removed: usize,
    /// The first PE changed: named in the record when it is the only one.
    first: Option<PeKey>,
    refused: usize,
    first_refusal: Option<(PeKey, String)>,
}

impl Tally {
    fn changed(&mut self, key: &PeKey) {
        if self.first.is_none() {
            self.first = Some(key.clone());
        }
    }

    fn refuse(&mut self, key: PeKey, why: String) {
        self.refused += 1;
        if self.first_refusal.is_none() {
            self.first_refusal = Some((key, why));
        }
    }

    /// The audit records, naming the peer `client`; `what` names the message.
    fn emit(self, client: &Client, what: &str, out: &mut Vec<Action>) {
        let name = |event: &mut AuditEvent, key: &PeKey| {
            event.namespace = Some(key.0.clone());
            event.pool_handle = Some(key.1.clone());
            event.pe_id = Some(key.2);
        };
        let changes = self.added + self.rehomed + self.removed;
        if changes > 0 {
            let mut event = Core::peer_event(
                client,
                AuditAction::PeerUpdate,
                None,
                format!(
                    "{what}: {} added, {} re-homed, {} removed",
                    self.added, self.rehomed, self.removed
                ),
            );
            if let (1, Some(key)) = (changes, &self.first) {
                name(&mut event, key);
            }
            out.push(Action::Audit {
                event,
                durability: Durability::Batched,
            });
        }
        if let Some((key, why)) = self.first_refusal {
            let detail = if self.refused == 1 {
                why
            } else {
                format!("{what}: {} PEs refused; the first: {why}", self.refused)
            };
            let mut event = Core::peer_event(
                client,
                AuditAction::PeerIgnored,
                Some(ErrorCause::SecurityRejection.code()),
                detail,
            );
            name(&mut event, &key);
            out.push(Action::Audit {
                event,
                durability: Durability::Batched,
            });
        }
    }
}

impl Core {
    /// The peers, by Server ID.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(sid, p)| PeerStatus {
                identity: p.client.id.clone(),
                server_id: *sid,
                state: p.state,
                connected: p.conn.is_some(),
                last_heard: p.last_heard,
                checksum_match: p
                    .their_checksum
                    .map(|c| c == self.handlespace.checksum(*sid)),
                conflict: p.conflict.clone(),
            })
            .collect()
    }

    /// Whether some grant lets `id` peer at all. Each PE it speaks for is checked again
    /// against the grants of its namespace and pool.
    fn peer_granted(&self, id: &SpiffeId) -> bool {
        // A legacy peer is configured (address and Server ID), not granted: it may peer
        // while there is a legacy namespace to confine it to.
        if is_legacy(id) {
            return is_legacy_peer(id) && self.config.legacy_namespace.is_some();
        }
        self.grants
            .iter()
            .any(|g| g.actions.contains(identity::Action::Peer) && g.identity.matches(id))
    }

    fn peer_event(
        client: &Client,
        action: AuditAction,
        outcome: Option<u16>,
        detail: String,
    ) -> AuditEvent {
        // ARCHITECTURE.md §4: whatever a legacy peer says is marked so.
        let detail = if is_legacy(&client.id) {
            format!("{detail}; unauthenticated: legacy SCTP peer")
        } else {
            detail
        };
        AuditEvent {
            actor: Some((client.id.clone(), client.serial.clone())),
            remote: Some(client.addr),
            namespace: None,
            pool_handle: None,
            pe_id: None,
            action,
            outcome,
            detail: Some(detail),
        }
    }

    /// Spec §9.1, §9.2, §11.2: a peer connection is accepted when its identity holds a
    /// `peer` grant and its Server ID is not bound to another live identity. Then it is
    /// greeted with a PRESENCE and asked for its own PEs (W=1).
    pub(super) fn on_peer_up(
        &mut self,
        conn: ConnId,
        peer: Client,
        server_id: ServerId,
        outbound: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let refusal = if !self.peer_granted(&peer.id) {
            Some("no peer grant".to_owned())
        } else if self
            .revocations
            .iter()
            .any(|r| r.covers(&peer.id, &peer.serial))
        {
            Some("certificate revoked".to_owned())
        } else if server_id == self.config.server_id {
            Some(format!("claims this registrar's Server ID {server_id}"))
        } else {
            // Issue 16: bound for good to the first identity that proved it, live or dead,
            // before a restart too (docs/ENRP-TRUST.md §4). Legacy peers are configured by
            // address and Server ID, not bound: only the peers map knows them.
            let bound = self
                .bindings
                .get(&server_id)
                .or_else(|| {
                    // A legacy peer (known by the address it came from) as before: only
                    // while it is not dead.
                    self.peers
                        .get(&server_id)
                        .filter(|p| p.state != PeerState::Dead)
                        .map(|p| &p.client.id)
                })
                .filter(|id| **id != peer.id)
                .cloned();
            bound.map(|bound| {
                let state = match self.peers.get_mut(&server_id) {
                    Some(p) => {
                        p.conflict = Some(peer.id.clone());
                        p.state.as_str()
                    }
                    None => "not connected since the start",
                };
                format!("Server ID {server_id} is bound to {bound} ({state})")
            })
        };
        if let Some(why) = refusal {
            out.push(Action::Audit {
                event: Self::peer_event(
                    &peer,
                    AuditAction::PeerRefused,
                    Some(ErrorCause::SecurityRejection.code()),
                    why,
                ),
                durability: Durability::Batched,
            });
            out.push(Action::Close {
                conn,
                reason: "peer refused",
            });
            return;
        }
        // A legacy peer (RSPLIB) sends on the association it dialed to our listener, from
        // its one socket: that one is kept, whoever has the lower Server ID.
        let dialed_by_lower = if is_legacy(&peer.id) {
            !outbound
        } else {
            outbound == (self.config.server_id < server_id)
        };
        if let Some(old) = self.peers.get(&server_id).and_then(|p| p.conn)
            && old != conn
        {
            let old_by_lower = self.peer_conns.get(&old).is_some_and(|c| c.dialed_by_lower);
            if old_by_lower && !dialed_by_lower {
                // Both dialed each other: keep the other one (the peer decides alike).
                out.push(Action::Close {
                    conn,
                    reason: "duplicate peer connection",
                });
                return;
            }
            self.peer_conns.remove(&old);
            out.push(Action::Close {
                conn: old,
                reason: "peer connection replaced",
            });
        }
        // First proof of this Server ID (legacy peers are configured, not bound): for good.
        if !is_legacy(&peer.id) && !self.bindings.contains_key(&server_id) {
            self.bindings.insert(server_id, peer.id.clone());
            out.push(Action::BindServerId {
                server_id,
                identity: peer.id.clone(),
            });
        }
        self.peer_conns.insert(
            conn,
            PeerConn {
                server_id,
                client: peer.clone(),
                dialed_by_lower,
                closing: false,
            },
        );
        let p = self.peers.entry(server_id).or_insert_with(|| Peer {
            client: peer.clone(),
            conn: None,
            state: PeerState::Active,
            last_heard: None,
            their_checksum: None,
            sync: None,
            sync_own: true,
            continuation: HashMap::new(),
            enrp_addr: None,
            list_asked: false,
            conflict: None,
        });
        p.client = peer.clone();
        p.conn = Some(conn);
        p.continuation.clear();
        self.timers.stop(&TimerKey::Continuation(server_id, true));
        self.timers.stop(&TimerKey::Continuation(server_id, false));
        self.heard(server_id, now);
        self.target_alive(server_id, out);
        if self.timers.get(&TimerKey::PeerHeartbeat).is_none() {
            self.timers.set(
                TimerKey::PeerHeartbeat,
                now + self.config.timing.peer_heartbeat,
            );
        }
        out.push(Action::Audit {
            event: Self::peer_event(
                &peer,
                AuditAction::PeerUp,
                None,
                format!(
                    "Server ID {server_id}, {}",
                    if outbound { "dialed" } else { "accepted" }
                ),
            ),
            durability: Durability::Batched,
        });
        let hello = self.presence(server_id, false);
        out.push(Action::SendEnrp { conn, msg: hello });
        // Spec §9.3: the first peer up during start-up is the mentor; its whole table.
        let mentor = self.starting && self.mentor.is_none();
        if mentor {
            self.mentor = Some(server_id);
        }
        self.request_handle_table(server_id, !mentor, out);
        // Spec §9.2: its peers may be ones we were not configured with.
        if let Some(p) = self.peers.get_mut(&server_id) {
            p.list_asked = true;
        }
        out.push(Action::SendEnrp {
            conn,
            msg: self.enrp_msg(server_id, EnrpBody::ListRequest),
        });
        // A live peer now: each running takeover needs its acknowledgement too.
        let running: Vec<ServerId> = self.takeovers.keys().copied().collect();
        for target in running {
            out.push(Action::SendEnrp {
                conn,
                msg: self.enrp_msg(server_id, EnrpBody::InitTakeover { target }),
            });
        }
    }

    fn enrp_msg(&self, to: ServerId, body: EnrpBody) -> EnrpMsg {
        EnrpMsg {
            sender: self.config.server_id,
            receiver: to.get(),
            body,
        }
    }

    /// Any message from a peer: it is alive (spec §9.5).
    fn heard(&mut self, sid: ServerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        p.last_heard = Some(now);
        p.state = PeerState::Active;
        self.timers.stop(&TimerKey::PeerNoResponse(sid));
        self.timers.set(
            TimerKey::PeerLastHeard(sid),
            now + self.config.timing.peer_last_heard,
        );
    }

    /// Starts (or restarts) the download of a peer's own PEs (spec §9.6, §9.7).
    fn request_own_pes(&mut self, sid: ServerId, out: &mut Vec<Action>) {
        // A mentor download (W=0) in progress lists its own PEs too: let it finish.
        if self
            .peers
            .get(&sid)
            .is_some_and(|p| p.sync.is_some() && !p.sync_own)
        {
            return;
        }
        self.request_handle_table(sid, true, out);
    }

    /// Starts the download of a peer's handle table: its own PEs (W=1), or all it knows
    /// (W=0, the mentor at start-up, spec §9.3).
    fn request_handle_table(&mut self, sid: ServerId, own_only: bool, out: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        let Some(conn) = p.conn else { return };
        p.sync = Some(HashSet::new());
        p.sync_own = own_only;
        out.push(Action::SendEnrp {
            conn,
            msg: EnrpMsg {
                sender: self.config.server_id,
                receiver: sid.get(),
                body: EnrpBody::HandleTableRequest {
                    own_children_only: own_only,
                },
            },
        });
    }

    /// Ends the start-up phase (spec §9.3 steps 3 and 4): the registrar serves ASAP.
    pub(super) fn end_startup(
        &mut self,
        why: AuditAction,
        mentor: Option<&Client>,
        out: &mut Vec<Action>,
    ) {
        if !self.starting {
            return;
        }
        self.starting = false;
        self.mentor = None;
        self.timers.stop(&TimerKey::MentorTimeout);
        let detail = match mentor {
            Some(m) => format!("handle table downloaded from mentor {}", m.id),
            None => "no mentor download completed: serving alone".to_owned(),
        };
        out.push(Action::Audit {
            event: AuditEvent {
                actor: None,
                remote: mentor.map(|m| m.addr),
                namespace: None,
                pool_handle: None,
                pe_id: None,
                action: why,
                outcome: None,
                detail: Some(detail),
            },
            durability: Durability::Batched,
        });
    }

    /// A PRESENCE with the checksum of the PEs this registrar owns (spec §9.6). A legacy
    /// peer is sent the checksum of those it is told about (the legacy namespace's) and
    /// the legacy ENRP listener as an SCTP Server Information.
    fn presence(&self, to: ServerId, reply_required: bool) -> EnrpMsg {
        if self.is_legacy_peer_sid(to) {
            return EnrpMsg {
                sender: self.config.server_id,
                receiver: to.get(),
                body: EnrpBody::Presence {
                    reply_required,
                    checksum: PeChecksum(self.legacy_checksum()),
                    server_info: self.legacy_server_info(),
                },
            };
        }
        let server_info = self.advertised_enrp().and_then(|a| self.server_info(&a));
        EnrpMsg {
            sender: self.config.server_id,
            receiver: to.get(),
            body: EnrpBody::Presence {
                reply_required,
                checksum: PeChecksum(self.handlespace.checksum(self.config.server_id)),
                server_info,
            },
        }
    }

    /// Where this registrar tells its peers it serves ENRP over TLS (spec §4.5): its
    /// TLS/SCTP endpoint where it has one (RFC usage, every address: multi-homing), the
    /// TLS/TCP address first when the endpoint has it, so that a peer without SCTP can
    /// dial that address over TCP (`daemon/peer.rs`); else its TLS/TCP address. Unspecified
    /// addresses are left out; none usable, none advertised.
    fn advertised_enrp(&self) -> Option<TransportAddr> {
        let tcp = self.config.enrp_addr.filter(|a| !a.ip().is_unspecified());
        let mut sctp: Vec<SocketAddr> = self
            .config
            .enrp_sctp_addrs
            .iter()
            .copied()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        if let Some(t) = tcp {
            sctp.sort_by_key(|a| *a != t);
        }
        match Endpoint::new(sctp) {
            Ok(e) => Some(TransportAddr::Sctp(e)),
            Err(_) => tcp.map(TransportAddr::Tcp),
        }
    }

    /// Whether `addr` is one of this registrar's own ENRP listeners.
    fn is_own_enrp(&self, addr: &TransportAddr) -> bool {
        addr.addrs()
            .iter()
            .any(|a| Some(*a) == self.config.enrp_addr || self.config.enrp_sctp_addrs.contains(a))
    }

    /// Whether `sid` is a legacy peer (RSPLIB): it speaks and hears only the legacy
    /// namespace, without the project's parameters.
    fn is_legacy_peer_sid(&self, sid: ServerId) -> bool {
        self.peers
            .get(&sid)
            .is_some_and(|p| is_legacy(&p.client.id))
    }

    /// The checksum of the PEs this registrar owns in the legacy namespace: what a legacy
    /// peer knows of ours. Computed from scratch, O(PEs of that namespace) per PRESENCE to
    /// a legacy peer (the handlespace keeps running sums per owner, not per namespace).
    fn legacy_checksum(&self) -> u16 {
        let me = self.config.server_id.get();
        let Some(ns) = &self.config.legacy_namespace else {
            return Checksum::EMPTY;
        };
        Checksum::of(self.handlespace.pools(ns).flat_map(|(h, p)| {
            p.entries()
                .filter(move |e| e.pool_element.home_server_id == me)
                .map(move |e| (h, e.pool_element.pe_id))
        }))
        .value()
    }

    /// The legacy ENRP listener as a Server Information: SCTP, Transport Use data only
    /// (as RSPLIB sends its own), non-loopback addresses first.
    fn legacy_server_info(&self) -> Option<ServerInformation> {
        let mut addrs: Vec<SocketAddr> = self
            .config
            .legacy_enrp_addrs
            .iter()
            .copied()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        addrs.sort_by_key(|a| a.ip().is_loopback());
        addrs.dedup();
        self.server_info(&TransportAddr::Sctp(Endpoint::new(addrs).ok()?))
    }

    /// This registrar's Server Information (spec §4.5) for an ENRP listener at `at`.
    fn server_info(&self, at: &TransportAddr) -> Option<ServerInformation> {
        Some(ServerInformation {
            server_id: self.config.server_id,
            transport: server_transport(at)?,
        })
    }

    /// What a legacy peer may hear of an ENRP body: only the legacy namespace's PEs,
    /// without the project parameters (0x8100 Namespace, 0x8101 Registrant Identity) that
    /// RSPLIB refuses (docs/RSPLIB.md §6). `None`: nothing to send it.
    fn for_legacy_peer(&self, body: EnrpBody) -> Option<EnrpBody> {
        let legacy = self.config.legacy_namespace.as_ref();
        match body {
            EnrpBody::HandleUpdate {
                action,
                namespace,
                pool_handle,
                pool_element,
                ..
            } => (Some(&namespace) == legacy).then(|| EnrpBody::HandleUpdate {
                action,
                namespace: Namespace::default_namespace(),
                pool_element: self.with_registrator(&namespace, &pool_handle, pool_element),
                pool_handle,
                registrant: None,
            }),
            EnrpBody::HandleTableResponse {
                reject,
                more,
                pools,
            } => Some(EnrpBody::HandleTableResponse {
                reject,
                more,
                pools: pools
                    .into_iter()
                    .filter(|g| Some(&g.namespace) == legacy)
                    .map(|g| PoolEntries {
                        namespace: Namespace::default_namespace(),
                        entries: g
                            .entries
                            .into_iter()
                            .map(|e| PeEntry {
                                registrant: None,
                                pool_element: self.with_registrator(
                                    &g.namespace,
                                    &g.pool_handle,
                                    e.pool_element,
                                ),
                            })
                            .collect(),
                        pool_handle: g.pool_handle,
                    })
                    .collect(),
            }),
            // Its peers are RSPLIB's business: the others serve TLS it cannot speak.
            EnrpBody::ListResponse { reject, .. } => Some(EnrpBody::ListResponse {
                reject,
                servers: Vec::new(),
            }),
            other => Some(other),
        }
    }

    /// A PE as RSPLIB must get it in ENRP: with an ASAP (registrator) transport, which its
    /// parser reads whether or not it is there (without one it reads past the PE and
    /// rejects the message). That is the PE's ASAP association as this registrar sees it
    /// when it is connected here (SCTP, its source port, Transport Use data only, as
    /// RSPLIB sends them); else, lacking anything better, its user transport's addresses
    /// and port as SCTP. (RSPLIB uses it only to send the H=1 keep-alive of a takeover,
    /// which its 3.4.4 fails to send anyway: docs/RSPLIB.md §0.9.)
    fn with_registrator(
        &self,
        ns: &Namespace,
        handle: &PoolHandle,
        mut pe: ::asap::wire::param::PoolElement,
    ) -> ::asap::wire::param::PoolElement {
        if pe.asap_transport.is_some() {
            return pe;
        }
        let key: PeKey = (ns.clone(), handle.clone(), pe.pe_id);
        let connected = self
            .owned
            .get(&key)
            .and_then(|o| o.conn)
            .and_then(|c| self.conns.get(&c))
            .map(|c| c.client.addr);
        let (port, ips) = match connected {
            Some(a) => (a.port(), vec![a.ip()]),
            None => (
                pe.user_transport.port().get(),
                pe.user_transport
                    .addresses()
                    .iter()
                    .map(|a| a.ip())
                    .collect(),
            ),
        };
        pe.asap_transport = NonZeroU16::new(port)
            .zip(SctpAddresses::new(ips.into_iter().map(Address::new)))
            .map(|(port, addrs)| Transport::Sctp {
                port,
                transport_use: TransportUse::DataOnly,
                addrs,
            });
        pe
    }

    /// Passes every ENRP message for a legacy peer's connection through
    /// [`Self::for_legacy_peer`], in place: the one gate between the core's messages and
    /// a legacy peer, whichever procedure made them.
    pub(super) fn confine_legacy_sends(&self, out: &mut Vec<Action>) {
        let legacy_conn = |conn: &ConnId| {
            self.peer_conns
                .get(conn)
                .is_some_and(|pc| is_legacy(&pc.client.id))
        };
        if !out
            .iter()
            .any(|a| matches!(a, Action::SendEnrp { conn, .. } if legacy_conn(conn)))
        {
            return;
        }
        *out = std::mem::take(out)
            .into_iter()
            .filter_map(|a| match a {
                Action::SendEnrp { conn, msg } if legacy_conn(&conn) => {
                    let body = self.for_legacy_peer(msg.body)?;
                    Some(Action::SendEnrp {
                        conn,
                        msg: EnrpMsg { body, ..msg },
                    })
                }
                other => Some(other),
            })
            .collect();
    }

    /// Everything a legacy peer sends lands in the legacy namespace (it names none: RSPLIB
    /// knows no namespaces), and its PEs are known by address: their registrant is the
    /// legacy identity of their first address ([`super::legacy_registrant`]), whatever the
    /// peer sent, so that they may re-register here and be dialed on a takeover.
    fn confine_from_legacy_peer(&self, body: &mut EnrpBody) {
        let Some(legacy) = &self.config.legacy_namespace else {
            return;
        };
        match body {
            EnrpBody::HandleUpdate {
                namespace,
                registrant,
                pool_element,
                ..
            } => {
                *namespace = legacy.clone();
                *registrant = super::legacy_registrant(pool_element);
            }
            EnrpBody::HandleTableResponse { pools, .. } => {
                for g in pools {
                    g.namespace = legacy.clone();
                    for e in &mut g.entries {
                        e.registrant = super::legacy_registrant(&e.pool_element);
                    }
                }
            }
            _ => {}
        }
    }

    /// One decoded ENRP message from a peer connection.
    pub(super) fn on_enrp(
        &mut self,
        conn: ConnId,
        msg: Decoded<EnrpMsg>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(pc) = self.peer_conns.get_mut(&conn) else {
            return; // Refused or replaced: nothing it says counts.
        };
        if pc.closing {
            return;
        }
        let sid = pc.server_id;
        let client = pc.client.clone();
        let mut msg = msg.msg;
        // Spec §11.2: the Sender ID must be the one the TLS identity implies.
        if msg.sender != sid {
            pc.closing = true;
            out.push(Action::Audit {
                event: Self::peer_event(
                    &client,
                    AuditAction::PeerRefused,
                    Some(ErrorCause::SecurityRejection.code()),
                    format!(
                        "sender ID {} is not {sid}, the Server ID of its identity",
                        msg.sender
                    ),
                ),
                durability: Durability::Batched,
            });
            out.push(Action::Close {
                conn,
                reason: "ENRP sender ID mismatch",
            });
            return;
        }
        self.heard(sid, now);
        self.target_alive(sid, out);
        if msg.receiver != 0 && msg.receiver != self.config.server_id.get() {
            out.push(Action::Audit {
                event: Self::peer_event(
                    &client,
                    AuditAction::PeerIgnored,
                    None,
                    format!("message addressed to {:#010x}", msg.receiver),
                ),
                durability: Durability::Batched,
            });
            return;
        }
        if is_legacy(&client.id) {
            self.confine_from_legacy_peer(&mut msg.body);
        }
        match msg.body {
            EnrpBody::Presence {
                reply_required,
                checksum,
                server_info,
            } => {
                let mismatch = checksum.0 != self.handlespace.checksum(sid);
                // Only its own address counts: a peer does not speak for another's. A
                // legacy peer's is not kept: it speaks plain ENRP, only where configured.
                let advertised = server_info
                    .filter(|i| i.server_id == sid && !is_legacy(&client.id))
                    .as_ref()
                    .and_then(dialable)
                    .filter(|a| self.may_dial(a));
                let syncing = self.peers.get_mut(&sid).is_some_and(|p| {
                    p.their_checksum = Some(checksum.0);
                    if advertised.is_some() {
                        p.enrp_addr.clone_from(&advertised);
                    }
                    p.sync.is_some()
                });
                if reply_required {
                    let reply = self.presence(sid, false);
                    out.push(Action::SendEnrp { conn, msg: reply });
                }
                // Spec §9.6: our copy of its PEs differs: download them again.
                if mismatch && !syncing {
                    self.request_own_pes(sid, out);
                }
            }
            EnrpBody::HandleTableRequest { own_children_only } => {
                self.answer_handle_table(conn, sid, own_children_only, now, out);
            }
            EnrpBody::HandleTableResponse {
                reject,
                more,
                pools,
            } => self.on_handle_table(sid, &client, reject, more, pools, now, out),
            EnrpBody::HandleUpdate {
                action,
                namespace,
                pool_handle,
                pool_element,
                registrant,
            } => {
                let entry = PeEntry {
                    pool_element,
                    registrant,
                };
                match action {
                    UpdateAction::AddPe => {
                        let mut tally = Tally::default();
                        self.accept_peer_pe(
                            sid,
                            &client,
                            (namespace, pool_handle),
                            entry,
                            now,
                            &mut tally,
                            out,
                        );
                        tally.emit(&client, "ADD_PE", out);
                    }
                    UpdateAction::DelPe => {
                        self.delete_peer_pe(sid, &client, namespace, pool_handle, &entry, now, out);
                    }
                }
            }
            EnrpBody::ListRequest => {
                let servers = self.peer_list(sid);
                out.push(Action::SendEnrp {
                    conn,
                    msg: self.enrp_msg(
                        sid,
                        EnrpBody::ListResponse {
                            reject: false,
                            servers,
                        },
                    ),
                });
            }
            EnrpBody::Error(e) => out.push(Action::Audit {
                event: Self::peer_event(
                    &client,
                    AuditAction::PeerIgnored,
                    e.causes().first().map(ErrorCause::code),
                    "ENRP_ERROR from the peer".to_owned(),
                ),
                durability: Durability::Batched,
            }),
            EnrpBody::InitTakeover { target } => {
                self.on_init_takeover(conn, sid, &client, target, now, out);
            }
            EnrpBody::InitTakeoverAck { target } => {
                if let Some(t) = self.takeovers.get_mut(&target) {
                    t.acks.insert(sid);
                    self.check_takeover(target, now, out);
                }
            }
            EnrpBody::TakeoverServer { target } => {
                self.on_takeover_server(sid, &client, target, out);
            }
            EnrpBody::ListResponse { reject, servers } => {
                // Only the answer to our own request (issue 16): a peer cannot make this
                // registrar dial at will by sending lists.
                let asked = self
                    .peers
                    .get_mut(&sid)
                    .is_some_and(|p| std::mem::take(&mut p.list_asked));
                if !asked {
                    out.push(Action::Audit {
                        event: Self::peer_event(
                            &client,
                            AuditAction::PeerIgnored,
                            Some(ErrorCause::SecurityRejection.code()),
                            "ENRP_LIST_RESPONSE we did not ask for".to_owned(),
                        ),
                        durability: Durability::Batched,
                    });
                } else if !reject {
                    self.on_peer_list(&client, &servers, out);
                }
            }
        }
    }

    /// Spec §9.2: the live peers (but the asker) whose ENRP address we know.
    fn peer_list(&self, asker: ServerId) -> Vec<ServerInformation> {
        self.peers
            .iter()
            .filter(|(sid, p)| **sid != asker && p.state != PeerState::Dead)
            .filter_map(|(sid, p)| {
                Some(ServerInformation {
                    server_id: *sid,
                    transport: server_transport(p.enrp_addr.as_ref()?)?,
                })
            })
            .collect()
    }

    /// Spec §9.2: dial the listed registrars we do not know (never ourselves, never a
    /// live or connected peer), at most [`MAX_LIST_DIALS`]. Whoever answers is
    /// authenticated like a configured peer: the list grants no trust.
    fn on_peer_list(&self, from: &Client, servers: &[ServerInformation], out: &mut Vec<Action>) {
        let mut dialed = HashSet::new();
        let mut refused = 0usize;
        for info in servers {
            if dialed.len() >= MAX_LIST_DIALS {
                out.push(Action::Audit {
                    event: Self::peer_event(
                        from,
                        AuditAction::PeerIgnored,
                        None,
                        format!("peer list beyond {MAX_LIST_DIALS} new peers"),
                    ),
                    durability: Durability::Batched,
                });
                break;
            }
            let sid = info.server_id;
            let Some(addr) = dialable(info).filter(|a| self.may_dial(a)) else {
                refused += 1;
                continue;
            };
            // A dead peer listed at the address it advertised to us is one whose
            // connection with us is already redialed, by us or by it (dial loops never
            // end): dialing it too would make a second connection that the tie-break
            // closes, again at every redial (seen after a healed partition).
            let known = self.peers.get(&sid).is_some_and(|p| {
                p.conn.is_some()
                    || p.state != PeerState::Dead
                    || p.enrp_addr.as_ref() == Some(&addr)
            });
            if sid == self.config.server_id || known || dialed.contains(&sid) {
                continue;
            }
            if self.is_own_enrp(&addr) {
                continue;
            }
            dialed.insert(sid);
            out.push(Action::DialPeer { addr });
        }
        if refused > 0 {
            out.push(Action::Audit {
                event: Self::peer_event(
                    from,
                    AuditAction::PeerIgnored,
                    Some(ErrorCause::SecurityRejection.code()),
                    format!(
                        "{refused} listed addresses not dialed: loopback, unspecified, multicast or none"
                    ),
                ),
                durability: Durability::Batched,
            });
        }
    }

    /// Whether a learnt address (a peer's list, a PRESENCE, a taken-over PE's ASAP
    /// transport) may be dialed: every address passes the rules of a PE's user addresses
    /// (no unspecified, multicast or broadcast; loopback only with `allow_loopback`), so a
    /// peer cannot point this registrar at its own host's services (issue 16).
    pub(super) fn may_dial(&self, addr: &TransportAddr) -> bool {
        addr.addrs().iter().all(|a| {
            a.port() != 0
                && Address::new(a.ip()).is_acceptable_user_address(self.config.allow_loopback)
        })
    }

    /// An ENRP frame that did not decode: audited; a framing fault closes the connection
    /// (spec §12.2), a content error is answered with ENRP_ERROR (spec §3.3, §8.1).
    pub(super) fn on_enrp_malformed(
        &mut self,
        conn: ConnId,
        error: &DecodeError,
        out: &mut Vec<Action>,
    ) {
        let Some(pc) = self.peer_conns.get(&conn) else {
            return;
        };
        out.push(Action::Audit {
            event: Self::peer_event(
                &pc.client,
                AuditAction::Malformed,
                error.cause().map(|c| c.code()),
                error.to_string(),
            ),
            durability: Durability::Batched,
        });
        match error.cause() {
            Some(cause) => out.push(Action::SendEnrp {
                conn,
                msg: EnrpMsg {
                    sender: self.config.server_id,
                    receiver: pc.server_id.get(),
                    body: EnrpBody::Error(OperationError::single(cause)),
                },
            }),
            None if error.is_framing() => out.push(Action::Close {
                conn,
                reason: "framing fault",
            }),
            None => {}
        }
    }

    /// Spec §9.5 [P]: a lost connection starts the probe phase at once; the peer has
    /// MAX-TIME-NO-RESPONSE to come back (either side redials).
    pub(super) fn on_peer_down(&mut self, conn: ConnId, now: Instant) {
        let Some(pc) = self.peer_conns.remove(&conn) else {
            return;
        };
        let sid = pc.server_id;
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        if p.conn != Some(conn) {
            return;
        }
        p.conn = None;
        p.sync = None;
        p.continuation.clear();
        // A mentor lost mid-download: the next peer up mentors instead.
        if self.mentor == Some(sid) {
            self.mentor = None;
        }
        self.timers.stop(&TimerKey::PeerLastHeard(sid));
        if p.state != PeerState::Dead {
            p.state = PeerState::Probing;
            if self.timers.get(&TimerKey::PeerNoResponse(sid)).is_none() {
                self.timers.set(
                    TimerKey::PeerNoResponse(sid),
                    now + self.config.timing.peer_no_response,
                );
            }
        }
    }

    /// PEER-HEARTBEAT-CYCLE: a PRESENCE (R=0) to every connected peer (spec §9.5).
    pub(super) fn send_heartbeats(&mut self, now: Instant, out: &mut Vec<Action>) {
        let targets: Vec<(ServerId, ConnId)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state != PeerState::Dead)
            .filter_map(|(sid, p)| Some((*sid, p.conn?)))
            .collect();
        for (sid, conn) in targets {
            let msg = self.presence(sid, false);
            out.push(Action::SendEnrp { conn, msg });
        }
        if !self.peers.is_empty() {
            self.timers.set(
                TimerKey::PeerHeartbeat,
                now + self.config.timing.peer_heartbeat,
            );
        }
    }

    /// MAX-TIME-LAST-HEARD passed: ask for an answer (PRESENCE R=1, spec §9.5).
    pub(super) fn probe_peer(&mut self, sid: ServerId, now: Instant, out: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        if p.state == PeerState::Dead {
            return;
        }
        p.state = PeerState::Probing;
        if let Some(conn) = p.conn {
            let msg = self.presence(sid, true);
            out.push(Action::SendEnrp { conn, msg });
        }
        self.timers.set(
            TimerKey::PeerNoResponse(sid),
            now + self.config.timing.peer_no_response,
        );
    }

    /// MAX-TIME-NO-RESPONSE passed without a word: the peer is dead (spec §9.5). If it
    /// owns PEs here, a takeover starts (§9.8); a running takeover no longer waits for it.
    pub(super) fn peer_dead(&mut self, sid: ServerId, now: Instant, out: &mut Vec<Action>) {
        let owned_there = self
            .handlespace
            .iter()
            .filter(|(_, _, e)| e.pool_element.home_server_id == sid.get())
            .count();
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        if p.state == PeerState::Dead {
            return;
        }
        p.state = PeerState::Dead;
        p.sync = None;
        self.timers.stop(&TimerKey::PeerLastHeard(sid));
        if let Some(conn) = p.conn
            && let Some(pc) = self.peer_conns.get_mut(&conn)
        {
            pc.closing = true;
            out.push(Action::Close {
                conn,
                reason: "peer did not answer",
            });
        }
        let client = p.client.clone();
        // Keep looking for it where it said it serves (spec §9.2 [P]): it may come back
        // with no peer configured that would find us, and a peer list that named it
        // while we still thought it alive made us dial nothing (the deterministic
        // simulation found both, seed 642: the mesh stayed split for good). The driver
        // dials an address once, so a configured or already dialed peer is not doubled.
        if let Some(addr) = p.enrp_addr.clone() {
            out.push(Action::DialPeer { addr });
        }
        out.push(Action::Audit {
            event: Self::peer_event(
                &client,
                AuditAction::PeerDead,
                None,
                format!("Server ID {sid}: no answer; it owns {owned_there} PEs here"),
            ),
            durability: Durability::Batched,
        });
        // A takeover it started is not ours to wait for any more.
        self.acked_takeovers.retain(|_, (by, _)| *by != sid);
        self.pending_inits.retain(|(_, by), _| *by != sid);
        // Its claims die with it; the claims on its PEs apply: their old home is dead.
        self.claims.retain(|_, c| c.by != sid);
        let claimed: Vec<PeKey> = self
            .claims
            .keys()
            .filter(|k| {
                self.handlespace
                    .pool(&k.0, &k.1)
                    .and_then(|p| p.entry(k.2))
                    .is_some_and(|e| e.pool_element.home_server_id == sid.get())
            })
            .cloned()
            .collect();
        self.settle_claims(&claimed, now, out);
        let owned_there = if claimed.is_empty() {
            owned_there
        } else {
            self.handlespace
                .iter()
                .filter(|(_, _, e)| e.pool_element.home_server_id == sid.get())
                .count()
        };
        let running: Vec<ServerId> = self.takeovers.keys().copied().collect();
        for target in running {
            self.check_takeover(target, now, out);
        }
        // Dead here now: the takeovers of it that peers announced while it lived here are
        // acknowledged (those still in time), before ours would start.
        let pending: Vec<(ServerId, Instant)> = self
            .pending_inits
            .iter()
            .filter(|((target, _), until)| *target == sid && **until > now)
            .map(|((_, by), until)| (*by, *until))
            .collect();
        self.pending_inits.retain(|(target, _), _| *target != sid);
        for (by, until) in pending {
            let Some((conn, client)) = self
                .peers
                .get(&by)
                .filter(|p| p.state != PeerState::Dead)
                .and_then(|p| Some((p.conn?, p.client.clone())))
            else {
                continue;
            };
            self.ack_takeover(conn, by, &client, sid, until, out);
        }
        if owned_there > 0 {
            self.start_takeover(sid, now, out);
        }
    }

    /// A peer's PE reached its registration life without a refresh from its home.
    pub(super) fn expire_peer_pe(&mut self, pe: &PeKey, out: &mut Vec<Action>) {
        if self.owned.contains_key(pe) {
            return;
        }
        let theirs = self
            .handlespace
            .pool(&pe.0, &pe.1)
            .and_then(|p| p.entry(pe.2))
            .is_some_and(|e| e.pool_element.home_server_id != self.config.server_id.get());
        if theirs && let Some(removed) = self.handlespace.remove(&pe.0, &pe.1, pe.2) {
            out.push(super::audit_removal(&removed, AuditAction::RemoveExpired));
        }
    }

    /// A PE left the handlespace: forget its peer expiry, and tell the peers when it was
    /// ours (spec §9.4, DEL_PE).
    pub(super) fn after_removal(&mut self, removed: &Removed, out: &mut Vec<Action>) {
        self.timers.stop(&TimerKey::PeerPeLife((
            removed.namespace.clone(),
            removed.pool_handle.clone(),
            removed.entry.pool_element.pe_id,
        )));
        if removed.entry.pool_element.home_server_id == self.config.server_id.get() {
            self.send_update(
                UpdateAction::DelPe,
                &removed.namespace,
                &removed.pool_handle,
                &removed.entry,
                out,
            );
        }
    }

    /// Spec §9.4: an owned PE was added or re-registered: ADD_PE to every peer.
    pub(super) fn announce_owned(&mut self, key: &PeKey, out: &mut Vec<Action>) {
        let Some(entry) = self
            .handlespace
            .pool(&key.0, &key.1)
            .and_then(|p| p.entry(key.2))
            .cloned()
        else {
            return;
        };
        self.send_update(UpdateAction::AddPe, &key.0, &key.1, &entry, out);
    }

    fn send_update(
        &self,
        action: UpdateAction,
        ns: &Namespace,
        handle: &PoolHandle,
        entry: &PeEntry,
        out: &mut Vec<Action>,
    ) {
        self.send_update_but(None, action, ns, handle, entry, out);
    }

    /// [`Self::send_update`] to every peer but `but`.
    fn send_update_but(
        &self,
        but: Option<ServerId>,
        action: UpdateAction,
        ns: &Namespace,
        handle: &PoolHandle,
        entry: &PeEntry,
        out: &mut Vec<Action>,
    ) {
        for (sid, p) in &self.peers {
            let Some(conn) = p.conn else { continue };
            if Some(*sid) == but {
                continue;
            }
            if p.state == PeerState::Dead {
                continue;
            }
            out.push(Action::SendEnrp {
                conn,
                msg: EnrpMsg {
                    sender: self.config.server_id,
                    receiver: sid.get(),
                    body: EnrpBody::HandleUpdate {
                        action,
                        namespace: ns.clone(),
                        pool_handle: handle.clone(),
                        pool_element: entry.pool_element.clone(),
                        registrant: entry.registrant.clone(),
                    },
                },
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ignore_pe(
        client: &Client,
        ns: &Namespace,
        handle: &PoolHandle,
        pe_id: PeId,
        why: String,
        out: &mut Vec<Action>,
    ) {
        let mut event = Self::peer_event(
            client,
            AuditAction::PeerIgnored,
            Some(ErrorCause::SecurityRejection.code()),
            why,
        );
        event.namespace = Some(ns.clone());
        event.pool_handle = Some(handle.clone());
        event.pe_id = Some(pe_id);
        out.push(Action::Audit {
            event,
            durability: Durability::Batched,
        });
    }

    /// ADD_PE or a handle table entry from peer `sid` (spec §9.4 with its [P] rule: a
    /// peer speaks only for PEs it owns, in namespaces and pools it is granted). Stored
    /// as the peer's (not owned here), with an expiry at its registration life from `now`:
    /// the home registrar keeps it alive, this one does not probe it (spec §9.9). A PE
    /// whose home here is another live peer does not move (docs/ENRP-TRUST.md §2): the
    /// claim waits for that home's withdrawal or death. Changes and refusals go to `tally`.
    #[allow(clippy::too_many_arguments)]
    fn accept_peer_pe(
        &mut self,
        sid: ServerId,
        client: &Client,
        (ns, handle): (Namespace, PoolHandle),
        entry: PeEntry,
        now: Instant,
        tally: &mut Tally,
        out: &mut Vec<Action>,
    ) -> Option<PeKey> {
        let pe = &entry.pool_element;
        let key: PeKey = (ns, handle, pe.pe_id);
        let refusal = if pe.home_server_id != sid.get() {
            Some(format!(
                "not the sender's PE: its home is {:#010x}",
                pe.home_server_id
            ))
        } else if !self.permits(&client.id, &key.0, &key.1, identity::Action::Peer) {
            Some("no peer grant for this namespace and pool".to_owned())
        } else if !pe.registration_life_valid() {
            Some("registration life out of range".to_owned())
        } else if entry
            .registrant
            .as_ref()
            .is_some_and(|r| self.registrant_revoked(r.as_str()))
        {
            Some("registrant revoked here".to_owned())
        } else if self.owned.get(&key).is_some_and(|o| o.conn.is_some()) {
            // Its PE is connected here: ours is the fresher claim.
            Some("the PE is registered here".to_owned())
        } else {
            self.peer_pe_refusal(sid, &key, &entry)
        };
        if let Some(why) = refusal {
            tally.refuse(key, why);
            return None;
        }
        let me = self.config.server_id.get();
        let current = self
            .handlespace
            .pool(&key.0, &key.1)
            .and_then(|p| p.entry(key.2))
            .cloned();
        let previous_home = current.as_ref().map(|e| e.pool_element.home_server_id);
        // Ownership moves only with proof: a live peer's PE stays its PE until it lets it
        // go (DEL_PE, its table) or dies here. Ours (its connection lost, spec §12.6)
        // stays ours until its grace period ends, unless it was taken over from the
        // sender, whose it was before (a healed partition).
        let ours_waiting = previous_home == Some(me)
            && self
                .owned
                .get(&key)
                .is_some_and(|o| o.taken_from != Some(sid));
        let live_home = previous_home
            .filter(|h| *h != sid.get() && *h != me)
            .and_then(|h| ServerId::new(h).and_then(|h| self.peers.get(&h)))
            .map(|p| p.state.as_str())
            .filter(|s| *s != PeerState::Dead.as_str());
        let waiting_on = if ours_waiting {
            Some("ours")
        } else {
            live_home
        };
        if let (Some(home), Some(state)) = (previous_home, waiting_on) {
            // A claim the PE's entry refutes already (spec §7.1 step 5) never waits.
            if current.as_ref().is_some_and(|c| {
                c.registrant != entry.registrant
                    || c.pool_element.user_transport != entry.pool_element.user_transport
            }) {
                tally.refuse(key, crate::handlespace::Reject::NonUniquePeId.to_string());
                return None;
            }
            let waits = self.claims.len() < MAX_CLAIMS || self.claims.contains_key(&key);
            let then = match (waits, ours_waiting) {
                (false, _) => "too many re-homes waiting",
                (true, true) => "it moves when its grace period here ends",
                (true, false) => "it moves when that home withdraws it or dies here",
            };
            let why = if ours_waiting {
                format!("re-home of our PE, its connection lost: {then}")
            } else {
                format!("re-home from {home:#010x}, {state} here: {then}")
            };
            if waits {
                let at = now;
                self.claims
                    .insert(key.clone(), Claim { by: sid, entry, at });
            }
            tally.refuse(key, why);
            return None;
        }
        let life = Duration::from_millis(u64::try_from(pe.registration_life).unwrap_or(0));
        match self
            .handlespace
            .register(&key.0, &key.1, entry.pool_element, entry.registrant)
        {
            Ok(_) => {
                self.claims.remove(&key);
                self.timers
                    .set(TimerKey::PeerPeLife(key.clone()), now + life);
                match previous_home {
                    None => tally.added += 1,
                    Some(h) if h != sid.get() => tally.rehomed += 1,
                    Some(_) => return Some(key), // a refresh changes nothing
                }
                tally.changed(&key);
                // Ours, taken over from the sender, which lists it again (a healed
                // partition): let it go, and say so (DEL_PE) to the other peers, whose
                // copy may move only on our word (docs/ENRP-TRUST.md §2).
                if previous_home == Some(me) && self.owned.contains_key(&key) {
                    self.forget_owned(&key);
                    if let Some(old) = current {
                        self.send_update_but(
                            Some(sid),
                            UpdateAction::DelPe,
                            &key.0,
                            &key.1,
                            &old,
                            out,
                        );
                    }
                }
                Some(key)
            }
            Err(e) => {
                tally.refuse(key, e.to_string());
                None
            }
        }
    }

    /// Issue 16, docs/ENRP-TRUST.md §3: a PE learnt from peer `sid` obeys what an ASAP
    /// registration here would: its registrant (0x8101) holds the `register` grant for
    /// the namespace and pool here, the pool's declared policy and most PEs hold, and the
    /// per-registrant limit (the handlespace counts peers' PEs too). A new PE counts
    /// against the peer's share, [`super::Config::max_pes_per_peer`].
    fn peer_pe_refusal(&self, sid: ServerId, key: &PeKey, entry: &PeEntry) -> Option<String> {
        let Some(registrant) = &entry.registrant else {
            return Some("no registrant identity".to_owned());
        };
        let granted = SpiffeId::parse(registrant.as_str())
            .is_ok_and(|id| self.permits(&id, &key.0, &key.1, identity::Action::Register));
        if !granted {
            return Some(format!(
                "registrant {} holds no register grant here for this namespace and pool",
                registrant.as_str()
            ));
        }
        let present = self.handlespace.pool(&key.0, &key.1);
        let held = present.and_then(|p| p.entry(key.2));
        if let Some(d) = self.declared.get(&(key.0.clone(), key.1.clone())) {
            if d.policy
                .is_some_and(|t| t != entry.pool_element.policy.policy_type())
            {
                return Some("the pool is declared with another policy".to_owned());
            }
            let count = present.map_or(0, |p| p.len());
            if held.is_none() && d.max_pes.is_some_and(|m| count >= m as usize) {
                return Some("the pool holds its declared maximum of PEs".to_owned());
            }
        }
        let moves_in = held.is_none_or(|e| e.pool_element.home_server_id != sid.get());
        let share = self.config.max_pes_per_peer;
        if moves_in && self.handlespace.pes_of(sid.get()) >= share {
            return Some(format!(
                "the peer holds its share of the handlespace here ({share} PEs)"
            ));
        }
        None
    }

    /// The PEs `keys` were let go by their home (DEL_PE, its table, its death): the claims
    /// of peers waiting for that apply now, if the claimant is still a live peer and the
    /// claim's registration life has not run out. One audit record per claimant.
    pub(super) fn settle_claims(&mut self, keys: &[PeKey], now: Instant, out: &mut Vec<Action>) {
        let mut by: std::collections::BTreeMap<ServerId, (Client, Tally)> = Default::default();
        for key in keys {
            let Some(claim) = self.claims.remove(key) else {
                continue;
            };
            let life = Duration::from_millis(
                u64::try_from(claim.entry.pool_element.registration_life).unwrap_or(0),
            );
            let Some(client) = self
                .peers
                .get(&claim.by)
                .filter(|p| p.state != PeerState::Dead && p.conn.is_some())
                .map(|p| p.client.clone())
            else {
                continue;
            };
            if claim.at + life <= now {
                continue;
            }
            let (client, tally) = by
                .entry(claim.by)
                .or_insert_with(|| (client, Tally::default()));
            let client = client.clone();
            let ns_handle = (key.0.clone(), key.1.clone());
            self.accept_peer_pe(
                claim.by,
                &client,
                ns_handle,
                claim.entry,
                claim.at,
                tally,
                out,
            );
        }
        for (_, (client, tally)) in by {
            tally.emit(&client, "re-home once the old home let the PE go", out);
        }
    }

    fn registrant_revoked(&self, registrant: &str) -> bool {
        // Asked for every PE of a handle table: parse only when there is something to match.
        if self.revocations.is_empty() {
            return false;
        }
        let Ok(id) = SpiffeId::parse(registrant) else {
            return false;
        };
        self.revocations.iter().any(|r| r.covers_identity(&id))
    }

    /// DEL_PE from peer `sid`: only for a PE whose home, in our handlespace, is the
    /// sender. Deleting an unknown PE is harmless (idempotent).
    #[allow(clippy::too_many_arguments)]
    fn delete_peer_pe(
        &mut self,
        sid: ServerId,
        client: &Client,
        ns: Namespace,
        handle: PoolHandle,
        entry: &PeEntry,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let pe_id = entry.pool_element.pe_id;
        // The sender withdraws a re-home of its that was waiting: it no longer holds.
        let key: PeKey = (ns, handle, pe_id);
        if self.claims.get(&key).is_some_and(|c| c.by == sid) {
            self.claims.remove(&key);
        }
        let (ns, handle, _) = key;
        let home = self
            .handlespace
            .pool(&ns, &handle)
            .and_then(|p| p.entry(pe_id))
            .map(|e| e.pool_element.home_server_id);
        let Some(home) = home else { return };
        if home != sid.get() || entry.pool_element.home_server_id != sid.get() {
            let why = format!("not the sender's PE: its home is {home:#010x}");
            return Self::ignore_pe(client, &ns, &handle, pe_id, why, out);
        }
        if !self.permits(&client.id, &ns, &handle, identity::Action::Peer) {
            let why = "no peer grant for this namespace and pool".to_owned();
            return Self::ignore_pe(client, &ns, &handle, pe_id, why, out);
        }
        if let Some(removed) = self.handlespace.remove(&ns, &handle, pe_id) {
            self.after_removal(&removed, out);
            let key: PeKey = (ns, handle, pe_id);
            let mut tally = Tally {
                removed: 1,
                ..Tally::default()
            };
            tally.changed(&key);
            tally.emit(client, "DEL_PE", out);
            // Its home let it go: a peer's re-home waiting for that applies now.
            self.settle_claims(&[key], now, out);
        }
    }

    /// Spec §9.7: one page of PEs (all, or only ours with W=1), from the requester's
    /// continuation point; M=1 when more remain.
    ///
    /// A page starts at the continuation point through the handlespace's ordered maps
    /// ([`Handlespace::iter_after`](crate::handlespace::Handlespace::iter_after)), so a
    /// whole download costs O(PEs) (plus, with W=1, the other registrars' PEs stepped
    /// over). PEs added behind the point during a download come with the next one (or
    /// with their ADD_PE); none is listed twice.
    fn answer_handle_table(
        &mut self,
        conn: ConnId,
        sid: ServerId,
        own_only: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.server_id.get();
        let start = self
            .peers
            .get(&sid)
            .and_then(|p| p.continuation.get(&own_only).cloned());
        // A legacy peer hears of the legacy namespace only (full pages of it).
        let only = if self.is_legacy_peer_sid(sid) {
            Some(self.config.legacy_namespace.clone())
        } else {
            None
        };
        let mut pages = self
            .handlespace
            .iter_after(start.as_ref().map(|(ns, h, pe)| (ns, h, *pe)))
            .filter(|(_, _, e)| !own_only || e.pool_element.home_server_id == me)
            .filter(|(ns, _, _)| only.as_ref().is_none_or(|o| o.as_ref() == Some(*ns)))
            .peekable();
        let mut pools: Vec<PoolEntries> = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        let mut last: Option<PeKey> = None;
        while let Some((ns, h, e)) = pages.peek().copied() {
            let new_group = pools
                .last()
                .is_none_or(|g| g.namespace != *ns || g.pool_handle != *h);
            let size = e.pool_element.encoded_len()
                + e.registrant.as_ref().map_or(0, |r| r.encoded_len())
                + if new_group {
                    h.encoded_len() + ns.encoded_len()
                } else {
                    0
                };
            if count > 0
                && (count >= self.config.handle_table_pes
                    || bytes + size > self.config.handle_table_bytes)
            {
                break;
            }
            pages.next();
            count += 1;
            bytes += size;
            if new_group {
                pools.push(PoolEntries {
                    namespace: ns.clone(),
                    pool_handle: h.clone(),
                    entries: Vec::new(),
                });
            }
            if let Some(g) = pools.last_mut() {
                g.entries.push(e.clone());
            }
            last = Some((ns.clone(), h.clone(), e.pool_element.pe_id));
        }
        let more = pages.peek().is_some();
        drop(pages);
        let timer = TimerKey::Continuation(sid, own_only);
        if let Some(p) = self.peers.get_mut(&sid) {
            match last.filter(|_| more) {
                Some(point) => {
                    p.continuation.insert(own_only, point);
                    self.timers
                        .set(timer, now + 2 * self.config.timing.peer_no_response);
                }
                None => {
                    p.continuation.remove(&own_only);
                    self.timers.stop(&timer);
                }
            }
        }
        out.push(Action::SendEnrp {
            conn,
            msg: EnrpMsg {
                sender: self.config.server_id,
                receiver: sid.get(),
                body: EnrpBody::HandleTableResponse {
                    reject: false,
                    more,
                    pools,
                },
            },
        });
    }

    /// A page of a peer's handle table: apply its PEs; ask for the next page while M=1;
    /// after the last one, purge its PEs it no longer lists (spec §9.6, §9.7).
    #[allow(clippy::too_many_arguments)]
    fn on_handle_table(
        &mut self,
        sid: ServerId,
        client: &Client,
        reject: bool,
        more: bool,
        pools: Vec<PoolEntries>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if reject {
            if let Some(p) = self.peers.get_mut(&sid) {
                p.sync = None;
            }
            // The next peer up may mentor instead; the mentor timeout still runs.
            if self.mentor == Some(sid) {
                self.mentor = None;
            }
            out.push(Action::Audit {
                event: Self::peer_event(
                    client,
                    AuditAction::PeerIgnored,
                    None,
                    "the peer rejected our handle table request".to_owned(),
                ),
                durability: Durability::Batched,
            });
            return;
        }
        // Only the answer to our own request (issue 16), like a list: what a peer volunteers
        // as a table is ignored (its PEs come with its ADD_PEs).
        if self.peers.get(&sid).is_none_or(|p| p.sync.is_none()) {
            out.push(Action::Audit {
                event: Self::peer_event(
                    client,
                    AuditAction::PeerIgnored,
                    Some(ErrorCause::SecurityRejection.code()),
                    "ENRP_HANDLE_TABLE_RESPONSE we did not ask for".to_owned(),
                ),
                durability: Durability::Batched,
            });
            return;
        }
        // Of a W=0 table only the sender's own PEs are taken (spec §9.4 [P]); the others
        // come from their home registrars.
        let whole = self
            .peers
            .get(&sid)
            .is_some_and(|p| p.sync.is_some() && !p.sync_own);
        let mut seen = Vec::new();
        let mut tally = Tally::default();
        for group in pools {
            for entry in group.entries {
                if whole && entry.pool_element.home_server_id != sid.get() {
                    continue;
                }
                if let Some(key) = self.accept_peer_pe(
                    sid,
                    client,
                    (group.namespace.clone(), group.pool_handle.clone()),
                    entry,
                    now,
                    &mut tally,
                    out,
                ) {
                    seen.push(key);
                }
            }
        }
        tally.emit(client, "handle table page", out);
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        let Some(sync) = p.sync.as_mut() else {
            return;
        };
        sync.extend(seen);
        if more {
            if let Some(conn) = p.conn {
                out.push(Action::SendEnrp {
                    conn,
                    msg: EnrpMsg {
                        sender: self.config.server_id,
                        receiver: sid.get(),
                        body: EnrpBody::HandleTableRequest {
                            own_children_only: p.sync_own,
                        },
                    },
                });
            }
            return;
        }
        let listed = p.sync.take().unwrap_or_default();
        let mentor_done = whole && self.mentor == Some(sid);
        let mut stale: Vec<PeKey> = self
            .handlespace
            .iter()
            .filter(|(_, _, e)| e.pool_element.home_server_id == sid.get())
            .map(|(ns, h, e)| (ns.clone(), h.clone(), e.pool_element.pe_id))
            .filter(|k| !listed.contains(k) && !self.owned.contains_key(k))
            .collect();
        stale.sort();
        let mut purged = 0usize;
        for k in &stale {
            if let Some(removed) = self.handlespace.remove(&k.0, &k.1, k.2) {
                self.after_removal(&removed, out);
                purged += 1;
            }
        }
        if purged > 0 {
            // One record for the whole purge, naming the peer (issue 16).
            let mut event = Self::peer_event(
                client,
                AuditAction::RemoveResync,
                None,
                format!("{purged} PEs its handle table no longer lists"),
            );
            if let [k] = stale.as_slice() {
                event.namespace = Some(k.0.clone());
                event.pool_handle = Some(k.1.clone());
                event.pe_id = Some(k.2);
            }
            out.push(Action::Audit {
                event,
                durability: Durability::BeforeReply,
            });
        }
        // Its home let them go: the re-homes of peers waiting for that apply now.
        self.settle_claims(&stale, now, out);
        // A healed partition: we took over its PEs while it seemed dead, and those it
        // lists went back to it above. Those it does not list are gone (deregistered or
        // lost while we were apart): removed now, with DEL_PE, rather than kept in every
        // handlespace until their grace period ends.
        let mut gone: Vec<PeKey> = self
            .owned
            .iter()
            .filter(|(k, o)| o.conn.is_none() && o.taken_from == Some(sid) && !listed.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        gone.sort();
        for k in gone {
            self.remove_owned(&k, AuditAction::RemoveResync, out);
        }
        if mentor_done {
            self.end_startup(AuditAction::MentorDone, Some(client), out);
        }
    }

    /// A revocation closes the connections of the peers it covers.
    pub(super) fn close_revoked_peers(&mut self, revocation: &Revocation, out: &mut Vec<Action>) {
        let mut closing: Vec<ConnId> = self
            .peer_conns
            .iter()
            .filter(|(_, pc)| !pc.closing && revocation.covers(&pc.client.id, &pc.client.serial))
            .map(|(c, _)| *c)
            .collect();
        closing.sort_unstable();
        for conn in closing {
            if let Some(pc) = self.peer_conns.get_mut(&conn) {
                pc.closing = true;
            }
            out.push(Action::Close {
                conn,
                reason: "certificate revoked",
            });
        }
    }

    /// New grants: peers that lost their `peer` grant are disconnected.
    pub(super) fn close_ungranted_peers(&mut self, out: &mut Vec<Action>) {
        let mut closing: Vec<ConnId> = self
            .peer_conns
            .iter()
            .filter(|(_, pc)| !pc.closing && !self.peer_granted(&pc.client.id))
            .map(|(c, _)| *c)
            .collect();
        closing.sort_unstable();
        for conn in closing {
            let Some(pc) = self.peer_conns.get_mut(&conn) else {
                continue;
            };
            pc.closing = true;
            let event = Self::peer_event(
                &pc.client,
                AuditAction::PeerRefused,
                Some(ErrorCause::SecurityRejection.code()),
                "peer grant withdrawn".to_owned(),
            );
            out.push(Action::Audit {
                event,
                durability: Durability::Batched,
            });
            out.push(Action::Close {
                conn,
                reason: "peer grant withdrawn",
            });
        }
    }
}

/// Takeover of a dead peer (spec §9.8).
impl Core {
    fn takeover_event(&self, target: ServerId, action: AuditAction, detail: String) -> Action {
        // The registrar acts on its own: the target is named in the detail, not as actor.
        let who = self
            .peers
            .get(&target)
            .map(|p| format!(" ({})", p.client.id))
            .unwrap_or_default();
        Action::Audit {
            event: AuditEvent {
                actor: None,
                remote: None,
                namespace: None,
                pool_handle: None,
                pe_id: None,
                action,
                outcome: None,
                detail: Some(format!("target {target}{who}: {detail}")),
            },
            durability: Durability::BeforeReply,
        }
    }

    /// The live peers other than `target`, with their connections if any: the ones whose
    /// acknowledgement a takeover of `target` needs (a probed peer is not dead yet).
    fn live_peers(&self, target: ServerId) -> Vec<(ServerId, Option<ConnId>)> {
        self.peers
            .iter()
            .filter(|(sid, p)| **sid != target && p.state != PeerState::Dead)
            .map(|(sid, p)| (*sid, p.conn))
            .collect()
    }

    /// Sends `body` to every live, connected peer but `target`.
    fn to_live_peers(&self, target: ServerId, body: &EnrpBody, out: &mut Vec<Action>) {
        for (sid, conn) in self.live_peers(target) {
            if let Some(conn) = conn {
                out.push(Action::SendEnrp {
                    conn,
                    msg: self.enrp_msg(sid, body.clone()),
                });
            }
        }
    }

    /// Step 1: INIT_TAKEOVER to every live peer; with none, the takeover completes at once
    /// (two registrars). Not started while a takeover of the same target by a peer that
    /// this registrar acknowledged is still pending: that peer won the tie-break.
    fn start_takeover(&mut self, target: ServerId, now: Instant, out: &mut Vec<Action>) {
        if self.takeovers.contains_key(&target) {
            return;
        }
        if let Some((by, until)) = self.acked_takeovers.get(&target).copied() {
            if until > now {
                let detail = format!("not started: Server ID {by} takes it over");
                out.push(self.takeover_event(target, AuditAction::TakeoverAbandoned, detail));
                return;
            }
            self.acked_takeovers.remove(&target);
        }
        self.takeovers.insert(target, Takeover::default());
        self.timers.set(
            TimerKey::TakeoverExpiry(target),
            now + self.config.timing.takeover_expiry,
        );
        let waiting = self.live_peers(target).len();
        out.push(self.takeover_event(
            target,
            AuditAction::TakeoverStarted,
            format!("waiting for {waiting} live peers"),
        ));
        self.to_live_peers(target, &EnrpBody::InitTakeover { target }, out);
        self.check_takeover(target, now, out);
    }

    /// Step 3 once every live peer acknowledged.
    fn check_takeover(&mut self, target: ServerId, now: Instant, out: &mut Vec<Action>) {
        let Some(t) = self.takeovers.get(&target) else {
            return;
        };
        if self
            .live_peers(target)
            .iter()
            .all(|(sid, _)| t.acks.contains(sid))
        {
            self.complete_takeover(target, now, out);
        }
    }

    /// Step 3: TAKEOVER_SERVER to all, then every PE of `target` is ours. Over TCP there
    /// is no connection to send it the H=1 keep-alive on (spec §12.6): a PE that
    /// advertised an ASAP transport is dialed there (TLS over TCP or SCTP; a legacy PE,
    /// RSPLIB's, over plain SCTP); every PE waits one connection grace period for its
    /// re-registration here, else it is removed (and DEL_PE sent). ADD_PE tells the peers
    /// its new home at once.
    fn complete_takeover(&mut self, target: ServerId, now: Instant, out: &mut Vec<Action>) {
        self.takeovers.remove(&target);
        self.timers.stop(&TimerKey::TakeoverExpiry(target));
        let me = self.config.server_id;
        let pes: Vec<(PeKey, PeEntry)> = self
            .handlespace
            .iter()
            .filter(|(_, _, e)| e.pool_element.home_server_id == target.get())
            .map(|(ns, h, e)| ((ns.clone(), h.clone(), e.pool_element.pe_id), e.clone()))
            .collect();
        out.push(self.takeover_event(
            target,
            AuditAction::TakeoverCompleted,
            format!("{} PEs now have this registrar as home", pes.len()),
        ));
        self.to_live_peers(target, &EnrpBody::TakeoverServer { target }, out);
        let grace = now + self.config.timing.connection_grace;
        for (key, mut entry) in pes {
            entry.pool_element.home_server_id = me.get();
            // Spec §12.6: a PE that advertised an ASAP listener hears at once that this
            // registrar is its home; the others find it themselves within the grace.
            let dial = entry
                .pool_element
                .asap_transport
                .as_ref()
                .and_then(TransportAddr::of_transport)
                .filter(|a| self.may_dial(a))
                .zip(
                    entry
                        .registrant
                        .as_ref()
                        .and_then(|r| SpiffeId::parse(r.as_str()).ok()),
                );
            // Same registrant and transport: an update that only moves its home.
            if self
                .handlespace
                .register(&key.0, &key.1, entry.pool_element, entry.registrant)
                .is_err()
            {
                continue;
            }
            self.timers.stop(&TimerKey::PeerPeLife(key.clone()));
            self.owned.insert(
                key.clone(),
                super::Owned {
                    taken_from: Some(target),
                    ..super::Owned::default()
                },
            );
            self.timers.set(TimerKey::Orphaned(key.clone()), grace);
            self.announce_owned(&key, out);
            if let Some((addr, registrant)) = dial {
                out.push(Action::DialPe {
                    pe: key,
                    addr,
                    registrant,
                });
            }
        }
    }

    /// A connection this registrar dialed to a taken-over PE is up: the keep-alive with
    /// H=1 tells the PE its new home (spec §7.5); it answers, then re-registers on this
    /// connection. Nothing is sent if the PE came back on its own meanwhile, or is gone.
    pub(super) fn on_pe_dialed(&mut self, conn: ConnId, pe: PeKey, out: &mut Vec<Action>) {
        let waiting = self.owned.get(&pe).is_some_and(|o| o.conn.is_none());
        if !waiting || !self.conns.contains_key(&conn) {
            out.push(Action::Close {
                conn,
                reason: "dialed PE no longer waits",
            });
            return;
        }
        let (_, pool_handle, pe_id) = pe;
        out.push(Action::Send {
            conn,
            msg: AsapMsg::EndpointKeepAlive {
                home: true,
                server_id: self.config.server_id,
                pool_handle,
                pe_id: Some(pe_id),
            },
        });
    }

    /// MAX wait passed with acknowledgements missing: abandon (step 5); the target's PEs
    /// expire at their registration life.
    pub(super) fn takeover_expired(&mut self, target: ServerId, out: &mut Vec<Action>) {
        let Some(t) = self.takeovers.remove(&target) else {
            return;
        };
        let missing: Vec<String> = self
            .live_peers(target)
            .iter()
            .filter(|(sid, _)| !t.acks.contains(sid))
            .map(|(sid, _)| sid.to_string())
            .collect();
        let detail = format!(
            "expired without the acknowledgement of {}",
            missing.join(", ")
        );
        out.push(self.takeover_event(target, AuditAction::TakeoverAbandoned, detail));
    }

    /// Step 6: the target spoke, so it is not dead: its takeover stops.
    fn target_alive(&mut self, sid: ServerId, out: &mut Vec<Action>) {
        // An acknowledgement of its takeover no longer holds: it is alive.
        self.acked_takeovers.remove(&sid);
        if self.takeovers.remove(&sid).is_some() {
            self.timers.stop(&TimerKey::TakeoverExpiry(sid));
            let detail = "the target is alive".to_owned();
            out.push(self.takeover_event(sid, AuditAction::TakeoverAbandoned, detail));
        }
    }

    /// Step 2: a peer announces its takeover of `target`.
    fn on_init_takeover(
        &mut self,
        conn: ConnId,
        from: ServerId,
        client: &Client,
        target: ServerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.server_id;
        if target == me {
            // We are alive: say so to every peer (the initiator abandons on hearing us).
            let targets: Vec<(ServerId, ConnId)> = self
                .peers
                .iter()
                .filter_map(|(sid, p)| Some((*sid, p.conn?)))
                .collect();
            for (sid, c) in targets {
                let msg = self.presence(sid, false);
                out.push(Action::SendEnrp { conn: c, msg });
            }
            return;
        }
        if target == from {
            return; // Nobody takes over itself.
        }
        let until = now + self.config.timing.takeover_expiry;
        // An acknowledgement says "it is dead here too" (docs/ENRP-TRUST.md): not while it
        // lives here. It follows if this registrar declares it dead before `until`.
        if let Some(p) = self.peers.get(&target)
            && p.state != PeerState::Dead
        {
            let state = p.state.as_str();
            self.pending_inits.insert((target, from), until);
            out.push(Action::Audit {
                event: Self::peer_event(
                    client,
                    AuditAction::TakeoverRefused,
                    Some(ErrorCause::SecurityRejection.code()),
                    format!("INIT_TAKEOVER of {target}: not acknowledged, it is {state} here"),
                ),
                durability: Durability::Batched,
            });
            return;
        }
        self.ack_takeover(conn, from, client, target, until, out);
    }

    /// Step 2, the acknowledgement: `from` takes over `target` (dead here); this registrar
    /// refrains from its own takeover of it until `until`.
    fn ack_takeover(
        &mut self,
        conn: ConnId,
        from: ServerId,
        client: &Client,
        target: ServerId,
        until: Instant,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.server_id;
        if self.takeovers.contains_key(&target) {
            // Both started: the lower Server ID takes over, the other acknowledges it.
            if me < from {
                return; // Ours wins; it cancels when it gets our INIT_TAKEOVER.
            }
            self.takeovers.remove(&target);
            self.timers.stop(&TimerKey::TakeoverExpiry(target));
            let detail = format!("Server ID {from} (lower) takes it over");
            out.push(self.takeover_event(target, AuditAction::TakeoverAbandoned, detail));
        }
        // Remembered only for a peer of ours, so the map stays bounded by the peers: a
        // registrar we do not know has no PEs here to refrain from taking over.
        if self.peers.contains_key(&target) {
            self.acked_takeovers.insert(target, (from, until));
        }
        out.push(Action::Audit {
            event: Self::peer_event(
                client,
                AuditAction::TakeoverAcked,
                None,
                format!("Server ID {from} takes over {target}"),
            ),
            durability: Durability::BeforeReply,
        });
        out.push(Action::SendEnrp {
            conn,
            msg: self.enrp_msg(from, EnrpBody::InitTakeoverAck { target }),
        });
    }

    /// Step 4: peer `from` took over `target`: the target's PEs have `from` as home (in
    /// the namespaces and pools `from` may speak for). Their expiry keeps running: the
    /// new home refreshes them.
    fn on_takeover_server(
        &mut self,
        from: ServerId,
        client: &Client,
        target: ServerId,
        out: &mut Vec<Action>,
    ) {
        // Issue 16: a takeover moves PEs only of a registrar this one holds dead, by the
        // peer whose INIT_TAKEOVER it acknowledged (docs/ENRP-TRUST.md).
        let refusal = if target == self.config.server_id {
            Some("this registrar is the target".to_owned())
        } else if target == from {
            Some("the sender is the target".to_owned())
        } else {
            match self.peers.get(&target) {
                None => Some("the target is not a peer of this registrar".to_owned()),
                Some(p) if p.state != PeerState::Dead => {
                    Some(format!("the target is {} here", p.state.as_str()))
                }
                Some(_) if self.acked_takeovers.get(&target).map(|(by, _)| *by) != Some(from) => {
                    Some("its INIT_TAKEOVER was not acknowledged here".to_owned())
                }
                Some(_) => None,
            }
        };
        if let Some(why) = refusal {
            out.push(Action::Audit {
                event: Self::peer_event(
                    client,
                    AuditAction::TakeoverRefused,
                    Some(ErrorCause::SecurityRejection.code()),
                    format!("TAKEOVER_SERVER of {target}: {why}"),
                ),
                durability: Durability::Batched,
            });
            return;
        }
        if self.takeovers.remove(&target).is_some() {
            self.timers.stop(&TimerKey::TakeoverExpiry(target));
            let detail = format!("Server ID {from} took it over");
            out.push(self.takeover_event(target, AuditAction::TakeoverAbandoned, detail));
        }
        self.acked_takeovers.remove(&target);
        let pes: Vec<(PeKey, PeEntry)> = self
            .handlespace
            .iter()
            .filter(|(_, _, e)| e.pool_element.home_server_id == target.get())
            .map(|(ns, h, e)| ((ns.clone(), h.clone(), e.pool_element.pe_id), e.clone()))
            .collect();
        let mut moved = 0usize;
        let mut tally = Tally::default();
        for (key, mut entry) in pes {
            if !self.permits(&client.id, &key.0, &key.1, identity::Action::Peer) {
                let why = "no peer grant for this namespace and pool".to_owned();
                tally.refuse(key, why);
                continue;
            }
            entry.pool_element.home_server_id = from.get();
            if self
                .handlespace
                .register(&key.0, &key.1, entry.pool_element, entry.registrant)
                .is_ok()
            {
                moved += 1;
            }
        }
        out.push(Action::Audit {
            event: Self::peer_event(
                client,
                AuditAction::TakeoverApplied,
                None,
                format!("Server ID {from} took over {target}: {moved} PEs moved"),
            ),
            durability: Durability::BeforeReply,
        });
        tally.emit(client, "TAKEOVER_SERVER", out);
        // The taker may not have known every PE moved here (it missed an update): its
        // own table, asked for now, confirms the rest and purges those (spec §9.6),
        // rather than leave them under its name until the next checksum mismatch.
        if moved > 0 {
            self.request_own_pes(from, out);
        }
    }
}
