//! Peer liveness (spec §9.5, §9.6): the PRESENCE heartbeat with the PE checksum, the
//! last-heard time of each peer, the R=1 probe when MAX-TIME-LAST-HEARD passes, and a
//! dead peer when MAX-TIME-NO-RESPONSE passes too. The timers (`registrar/timers.rs`) call
//! in here from `Core::handle_timeout`; a dead peer starts a takeover (`takeover.rs`).

use std::time::Instant;

use ::asap::wire::param::{PeChecksum, ServerId};
use ::asap::wire::{EnrpBody, EnrpMsg};

use super::PeerState;
use crate::registrar::{Action, AuditAction, ConnId, Core, PeKey, TimerKey};

impl Core {
    /// Any message from a peer: it is alive (spec §9.5).
    pub(super) fn heard(&mut self, sid: ServerId, now: Instant) {
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

    /// A PRESENCE with the checksum of the PEs this registrar owns (spec §9.6). A legacy
    /// peer is sent the checksum of those it is told about (the legacy namespace's) and
    /// the legacy ENRP listener as an SCTP Server Information.
    pub(super) fn presence(&self, to: ServerId, reply_required: bool) -> EnrpMsg {
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

    /// PEER-HEARTBEAT-CYCLE: a PRESENCE (R=0) to every connected peer (spec §9.5).
    pub(in crate::registrar) fn send_heartbeats(&mut self, now: Instant, out: &mut Vec<Action>) {
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
    pub(in crate::registrar) fn probe_peer(
        &mut self,
        sid: ServerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
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
    pub(in crate::registrar) fn peer_dead(
        &mut self,
        sid: ServerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
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
        let remote = p.remote.clone();
        // Keep looking for it where it said it serves (spec §9.2 [P]): it may come back
        // with no peer configured that would find us, and a peer list that named it
        // while we still thought it alive made us dial nothing (the deterministic
        // simulation found both, seed 642: the mesh stayed split for good). The driver
        // dials an address once, so a configured or already dialed peer is not doubled.
        if let Some(addr) = p.enrp_addr.clone() {
            out.push(Action::DialPeer { addr });
        }
        out.push(Self::peer_audit(
            &remote,
            AuditAction::PeerDead,
            None,
            format!("Server ID {sid}: no answer; it owns {owned_there} PEs here"),
        ));
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
            let Some((conn, remote)) = self
                .peers
                .get(&by)
                .filter(|p| p.state != PeerState::Dead)
                .and_then(|p| Some((p.conn?, p.remote.clone())))
            else {
                continue;
            };
            self.ack_takeover(conn, by, &remote, sid, until, out);
        }
        if owned_there > 0 {
            self.start_takeover(sid, now, out);
        }
    }
}
