//! Takeover of a dead peer (spec §9.8): ENRP_INIT_TAKEOVER to the live peers, their
//! acknowledgements, ENRP_TAKEOVER_SERVER, and the hand-over of the taken-over PEs (a PE
//! with an ASAP listener is dialed and sent the H=1 keep-alive, `Action::DialPe`). Only a
//! registrar dead here is taken over, and only after our own acknowledgement
//! (docs/ENRP-TRUST.md). Started by `liveness.rs` when a peer dies.

use std::collections::BTreeSet;
use std::time::Instant;

use ::asap::addr::TransportAddr;
use ::asap::wire::param::{ErrorCause, ServerId};
use ::asap::wire::{AsapMsg, EnrpBody, PeEntry};
use identity::SpiffeId;

use super::{PeerState, Tally};
use crate::registrar::{
    Action, AuditAction, AuditEvent, ConnId, Core, Durability, PeKey, Remote, TimerKey,
};

/// A takeover of a dead peer this registrar runs (spec §9.8).
#[derive(Debug, Default)]
pub(in crate::registrar) struct Takeover {
    /// The peers that acknowledged it. Only those of live, authenticated peers count:
    /// acknowledgements arrive only on accepted peer connections with a checked Sender ID.
    pub(super) acks: BTreeSet<ServerId>,
}

impl Core {
    pub(super) fn takeover_event(
        &self,
        target: ServerId,
        action: AuditAction,
        detail: String,
    ) -> Action {
        // The registrar acts on its own: the target is named in the detail, not as actor.
        let who = self
            .peers
            .get(&target)
            .map(|p| format!(" ({})", p.remote.id))
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
    pub(super) fn live_peers(&self, target: ServerId) -> Vec<(ServerId, Option<ConnId>)> {
        self.peers
            .iter()
            .filter(|(sid, p)| **sid != target && p.state != PeerState::Dead)
            .map(|(sid, p)| (*sid, p.conn))
            .collect()
    }

    /// Sends `body` to every live, connected peer but `target`.
    pub(super) fn to_live_peers(&self, target: ServerId, body: &EnrpBody, out: &mut Vec<Action>) {
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
    pub(super) fn start_takeover(&mut self, target: ServerId, now: Instant, out: &mut Vec<Action>) {
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
    pub(super) fn check_takeover(&mut self, target: ServerId, now: Instant, out: &mut Vec<Action>) {
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
    pub(super) fn complete_takeover(
        &mut self,
        target: ServerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
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
                crate::registrar::Owned {
                    taken_from: Some(target),
                    ..crate::registrar::Owned::default()
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
    pub(in crate::registrar) fn on_pe_dialed(
        &mut self,
        conn: ConnId,
        pe: PeKey,
        out: &mut Vec<Action>,
    ) {
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
    pub(in crate::registrar) fn takeover_expired(
        &mut self,
        target: ServerId,
        out: &mut Vec<Action>,
    ) {
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
    pub(super) fn target_alive(&mut self, sid: ServerId, out: &mut Vec<Action>) {
        // An acknowledgement of its takeover no longer holds: it is alive.
        self.acked_takeovers.remove(&sid);
        if self.takeovers.remove(&sid).is_some() {
            self.timers.stop(&TimerKey::TakeoverExpiry(sid));
            let detail = "the target is alive".to_owned();
            out.push(self.takeover_event(sid, AuditAction::TakeoverAbandoned, detail));
        }
    }

    /// Step 2: a peer announces its takeover of `target`.
    pub(super) fn on_init_takeover(
        &mut self,
        conn: ConnId,
        from: ServerId,
        remote: &Remote,
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
            out.push(Self::peer_audit(
                remote,
                AuditAction::TakeoverRefused,
                Some(ErrorCause::SecurityRejection.code()),
                format!("INIT_TAKEOVER of {target}: not acknowledged, it is {state} here"),
            ));
            return;
        }
        self.ack_takeover(conn, from, remote, target, until, out);
    }

    /// Step 2, the acknowledgement: `from` takes over `target` (dead here); this registrar
    /// refrains from its own takeover of it until `until`.
    pub(super) fn ack_takeover(
        &mut self,
        conn: ConnId,
        from: ServerId,
        remote: &Remote,
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
                remote,
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
    pub(super) fn on_takeover_server(
        &mut self,
        from: ServerId,
        remote: &Remote,
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
            out.push(Self::peer_audit(
                remote,
                AuditAction::TakeoverRefused,
                Some(ErrorCause::SecurityRejection.code()),
                format!("TAKEOVER_SERVER of {target}: {why}"),
            ));
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
            if !self.permits(&remote.id, &key.0, &key.1, identity::Action::Peer) {
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
                remote,
                AuditAction::TakeoverApplied,
                None,
                format!("Server ID {from} took over {target}: {moved} PEs moved"),
            ),
            durability: Durability::BeforeReply,
        });
        tally.emit(remote, "TAKEOVER_SERVER", out);
        // The taker may not have known every PE moved here (it missed an update): its
        // own table, asked for now, confirms the rest and purges those (spec §9.6),
        // rather than leave them under its name until the next checksum mismatch.
        if moved > 0 {
            self.request_own_pes(from, out);
        }
    }
}
