//! ENRP peers (spec §9.1, §9.2, §11.2): who may peer (a `peer` grant, a Server ID bound
//! to one identity), the peer table and the connections in use, the peer list exchange
//! (ENRP_LIST_REQUEST/RESPONSE) and what becomes of a peer's connection when it closes or
//! its identity is revoked. The dispatch in `super` (`Core::on_enrp`) calls in here;
//! liveness (`liveness.rs`) moves a peer's [`PeerState`].

use crate::hash::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Instant;

use ::asap::addr::{Endpoint, TransportAddr};
use ::asap::wire::EnrpBody;
use ::asap::wire::param::{
    Address, ErrorCause, SctpAddresses, ServerId, ServerInformation, Transport, TransportUse,
};
use identity::SpiffeId;

use crate::registrar::{
    Action, AuditAction, AuditEvent, ConnId, Core, Durability, PeKey, Remote, Revocation, TimerKey,
    is_legacy, is_legacy_peer,
};

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
pub(in crate::registrar) struct Peer {
    pub(super) remote: Remote,
    /// The connection in use, if any.
    pub(super) conn: Option<ConnId>,
    pub(super) state: PeerState,
    pub(super) last_heard: Option<Instant>,
    /// The checksum of its own PEs it last announced.
    pub(super) their_checksum: Option<u16>,
    /// A handle table download (W=1) in progress: the PEs it listed so far. At the last
    /// page, its PEs not listed are purged (spec §9.6).
    pub(super) sync: Option<HashSet<PeKey>>,
    /// The W flag of the download in `sync`: W=0 only for the mentor at start-up.
    pub(super) sync_own: bool,
    /// Continuation points of its handle table requests, by W flag (spec §9.7).
    pub(in crate::registrar) continuation: HashMap<bool, PeKey>,
    /// The ENRP address it advertised in its PRESENCE (spec §4.5), TCP or multi-homed
    /// SCTP: where it is dialed again when declared dead, and what our list responses say.
    pub(super) enrp_addr: Option<TransportAddr>,
    /// Our ENRP_LIST_REQUEST to it is unanswered: only its answer is taken (issue 16).
    pub(super) list_asked: bool,
    /// The last other identity that claimed its Server ID, refused.
    pub(super) conflict: Option<SpiffeId>,
}

/// Most new peers one ENRP_LIST_RESPONSE may make this registrar dial: a peer's list is
/// bounded by configuration (spec §9.2), and one peer must not make us dial without end.
pub const MAX_LIST_DIALS: usize = 64;

/// Where a Server Information says its registrar serves ENRP, if that can be dialed
/// ([`TransportAddr::of_transport`]).
pub(super) fn dialable(info: &ServerInformation) -> Option<TransportAddr> {
    TransportAddr::of_transport(&info.transport)
}

/// `addr` as the transport of a Server Information (spec §4.5): TCP, or SCTP listing
/// every address of the endpoint.
pub(super) fn server_transport(addr: &TransportAddr) -> Option<Transport> {
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

/// A peer connection in use.
#[derive(Debug)]
pub(in crate::registrar) struct PeerConn {
    pub(super) server_id: ServerId,
    pub(super) remote: Remote,
    /// Dialed by the lower of the two Server IDs: of two connections between the same
    /// pair, both sides keep that one.
    pub(super) dialed_by_lower: bool,
    /// Being closed: nothing it sends counts any more.
    pub(super) closing: bool,
}

impl Core {
    /// The peers, by Server ID.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(sid, p)| PeerStatus {
                identity: p.remote.id.clone(),
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
    pub(super) fn peer_granted(&self, id: &SpiffeId) -> bool {
        // A legacy peer is configured (address and Server ID), not granted: it may peer
        // while there is a legacy namespace to confine it to.
        if is_legacy(id) {
            return is_legacy_peer(id) && self.config.legacy_namespace.is_some();
        }
        self.grants
            .iter()
            .any(|g| g.actions.contains(identity::Action::Peer) && g.identity.matches(id))
    }

    pub(super) fn peer_event(
        remote: &Remote,
        action: AuditAction,
        outcome: Option<u16>,
        detail: String,
    ) -> AuditEvent {
        // ARCHITECTURE.md §4: whatever a legacy peer says is marked so.
        let detail = if is_legacy(&remote.id) {
            format!("{detail}; unauthenticated: legacy SCTP peer")
        } else {
            detail
        };
        AuditEvent {
            actor: Some((remote.id.clone(), remote.serial.clone())),
            remote: Some(remote.addr),
            namespace: None,
            pool_handle: None,
            pe_id: None,
            action,
            outcome,
            detail: Some(detail),
        }
    }

    /// The audit record of what a peer did or was refused ([`Self::peer_event`]),
    /// batched: no reply waits for it.
    pub(super) fn peer_audit(
        remote: &Remote,
        action: AuditAction,
        outcome: Option<u16>,
        detail: String,
    ) -> Action {
        Action::Audit {
            event: Self::peer_event(remote, action, outcome, detail),
            durability: Durability::Batched,
        }
    }

    /// Spec §9.1, §9.2, §11.2: a peer connection is accepted when its identity holds a
    /// `peer` grant and its Server ID is not bound to another live identity. Then it is
    /// greeted with a PRESENCE and asked for its own PEs (W=1).
    pub(in crate::registrar) fn on_peer_up(
        &mut self,
        conn: ConnId,
        peer: Remote,
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
                        .map(|p| &p.remote.id)
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
            out.push(Self::peer_audit(
                &peer,
                AuditAction::PeerRefused,
                Some(ErrorCause::SecurityRejection.code()),
                why,
            ));
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
                remote: peer.clone(),
                dialed_by_lower,
                closing: false,
            },
        );
        let p = self.peers.entry(server_id).or_insert_with(|| Peer {
            remote: peer.clone(),
            conn: None,
            state: PeerState::Active,
            last_heard: None,
            their_checksum: None,
            sync: None,
            sync_own: true,
            continuation: HashMap::default(),
            enrp_addr: None,
            list_asked: false,
            conflict: None,
        });
        p.remote = peer.clone();
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
        out.push(Self::peer_audit(
            &peer,
            AuditAction::PeerUp,
            None,
            format!(
                "Server ID {server_id}, {}",
                if outbound { "dialed" } else { "accepted" }
            ),
        ));
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

    /// Where this registrar tells its peers it serves ENRP over TLS (spec §4.5): its
    /// TLS/SCTP endpoint where it has one (RFC usage, every address: multi-homing), the
    /// TLS/TCP address first when the endpoint has it, so that a peer without SCTP can
    /// dial that address over TCP (`daemon/peer.rs`); else its TLS/TCP address. Unspecified
    /// addresses are left out; none usable, none advertised.
    pub(super) fn advertised_enrp(&self) -> Option<TransportAddr> {
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
    pub(super) fn is_own_enrp(&self, addr: &TransportAddr) -> bool {
        addr.addrs()
            .iter()
            .any(|a| Some(*a) == self.config.enrp_addr || self.config.enrp_sctp_addrs.contains(a))
    }

    /// This registrar's Server Information (spec §4.5) for an ENRP listener at `at`.
    pub(super) fn server_info(&self, at: &TransportAddr) -> Option<ServerInformation> {
        Some(ServerInformation {
            server_id: self.config.server_id,
            transport: server_transport(at)?,
        })
    }

    /// Spec §9.2: the live peers (but the asker) whose ENRP address we know.
    pub(super) fn peer_list(&self, asker: ServerId) -> Vec<ServerInformation> {
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
    pub(super) fn on_peer_list(
        &self,
        from: &Remote,
        servers: &[ServerInformation],
        out: &mut Vec<Action>,
    ) {
        let mut dialed = HashSet::default();
        let mut refused = 0usize;
        for info in servers {
            if dialed.len() >= MAX_LIST_DIALS {
                out.push(Self::peer_audit(
                    from,
                    AuditAction::PeerIgnored,
                    None,
                    format!("peer list beyond {MAX_LIST_DIALS} new peers"),
                ));
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
            out.push(Self::peer_audit(
                    from,
                    AuditAction::PeerIgnored,
                    Some(ErrorCause::SecurityRejection.code()),
                    format!(
                        "{refused} listed addresses not dialed: loopback, unspecified, multicast or none"
                    ),
                ));
        }
    }

    /// Whether a learnt address (a peer's list, a PRESENCE, a taken-over PE's ASAP
    /// transport) may be dialed: every address passes the rules of a PE's user addresses
    /// (no unspecified, multicast or broadcast; loopback only with `allow_loopback`), so a
    /// peer cannot point this registrar at its own host's services (issue 16).
    pub(in crate::registrar) fn may_dial(&self, addr: &TransportAddr) -> bool {
        addr.addrs().iter().all(|a| {
            a.port() != 0
                && Address::new(a.ip()).is_acceptable_user_address(self.config.allow_loopback)
        })
    }

    /// Spec §9.5 [P]: a lost connection starts the probe phase at once; the peer has
    /// MAX-TIME-NO-RESPONSE to come back (either side redials).
    pub(in crate::registrar) fn on_peer_down(&mut self, conn: ConnId, now: Instant) {
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

    /// A revocation closes the connections of the peers it covers.
    pub(in crate::registrar) fn close_revoked_peers(
        &mut self,
        revocation: &Revocation,
        out: &mut Vec<Action>,
    ) {
        let mut closing: Vec<ConnId> = self
            .peer_conns
            .iter()
            .filter(|(_, pc)| !pc.closing && revocation.covers(&pc.remote.id, &pc.remote.serial))
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
    pub(in crate::registrar) fn close_ungranted_peers(&mut self, out: &mut Vec<Action>) {
        let mut closing: Vec<ConnId> = self
            .peer_conns
            .iter()
            .filter(|(_, pc)| !pc.closing && !self.peer_granted(&pc.remote.id))
            .map(|(c, _)| *c)
            .collect();
        closing.sort_unstable();
        for conn in closing {
            let Some(pc) = self.peer_conns.get_mut(&conn) else {
                continue;
            };
            pc.closing = true;
            let event = Self::peer_event(
                &pc.remote,
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
