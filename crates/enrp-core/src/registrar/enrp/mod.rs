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
//!
//! This file holds the dispatch of a peer's messages ([`Core::on_enrp`]); each concern
//! has its own file: `peers.rs` (peer table, connections, Server IDs, peer lists),
//! `liveness.rs` (heartbeats, probes, dead peers), `updates.rs` (handle updates sent and
//! applied, claims), `tables.rs` (handle table requests and responses, start-up),
//! `takeover.rs` (§9.8 and the PE hand-over), `legacy.rs` (RSPLIB peers).

use std::time::Instant;

use ::asap::wire::param::{ErrorCause, OperationError, ServerId};
use ::asap::wire::{DecodeError, Decoded, EnrpBody, EnrpMsg, PeEntry, UpdateAction};

use super::{Action, AuditAction, ConnId, Core, is_legacy};

mod legacy;
mod liveness;
mod peers;
mod tables;
mod takeover;
mod updates;

use peers::dialable;
pub use peers::{MAX_LIST_DIALS, PeerState, PeerStatus};
pub(super) use peers::{Peer, PeerConn};
pub(super) use takeover::Takeover;
pub(super) use updates::Claim;
pub use updates::MAX_CLAIMS;
use updates::Tally;

impl Core {
    fn enrp_msg(&self, to: ServerId, body: EnrpBody) -> EnrpMsg {
        EnrpMsg {
            sender: self.config.server_id,
            receiver: to.get(),
            body,
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
        let remote = pc.remote.clone();
        let mut msg = msg.msg;
        // Spec §11.2: the Sender ID must be the one the TLS identity implies.
        if msg.sender != sid {
            pc.closing = true;
            out.push(Self::peer_audit(
                &remote,
                AuditAction::PeerRefused,
                Some(ErrorCause::SecurityRejection.code()),
                format!(
                    "sender ID {} is not {sid}, the Server ID of its identity",
                    msg.sender
                ),
            ));
            out.push(Action::Close {
                conn,
                reason: "ENRP sender ID mismatch",
            });
            return;
        }
        self.heard(sid, now);
        self.target_alive(sid, out);
        if msg.receiver != 0 && msg.receiver != self.config.server_id.get() {
            out.push(Self::peer_audit(
                &remote,
                AuditAction::PeerIgnored,
                None,
                format!("message addressed to {:#010x}", msg.receiver),
            ));
            return;
        }
        if is_legacy(&remote.id) {
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
                    .filter(|i| i.server_id == sid && !is_legacy(&remote.id))
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
            } => self.on_handle_table(sid, &remote, reject, more, pools, now, out),
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
                            &remote,
                            (namespace, pool_handle),
                            entry,
                            now,
                            &mut tally,
                            out,
                        );
                        tally.emit(&remote, "ADD_PE", out);
                    }
                    UpdateAction::DelPe => {
                        self.delete_peer_pe(sid, &remote, namespace, pool_handle, &entry, now, out);
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
            EnrpBody::Error(e) => out.push(Self::peer_audit(
                &remote,
                AuditAction::PeerIgnored,
                e.causes().first().map(ErrorCause::code),
                "ENRP_ERROR from the peer".to_owned(),
            )),
            EnrpBody::InitTakeover { target } => {
                self.on_init_takeover(conn, sid, &remote, target, now, out);
            }
            EnrpBody::InitTakeoverAck { target } => {
                if let Some(t) = self.takeovers.get_mut(&target) {
                    t.acks.insert(sid);
                    self.check_takeover(target, now, out);
                }
            }
            EnrpBody::TakeoverServer { target } => {
                self.on_takeover_server(sid, &remote, target, out);
            }
            EnrpBody::ListResponse { reject, servers } => {
                // Only the answer to our own request (issue 16): a peer cannot make this
                // registrar dial at will by sending lists.
                let asked = self
                    .peers
                    .get_mut(&sid)
                    .is_some_and(|p| std::mem::take(&mut p.list_asked));
                if !asked {
                    out.push(Self::peer_audit(
                        &remote,
                        AuditAction::PeerIgnored,
                        Some(ErrorCause::SecurityRejection.code()),
                        "ENRP_LIST_RESPONSE we did not ask for".to_owned(),
                    ));
                } else if !reject {
                    self.on_peer_list(&remote, &servers, out);
                }
            }
        }
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
        out.push(Self::peer_audit(
            &pc.remote,
            AuditAction::Malformed,
            error.cause().map(|c| c.code()),
            error.to_string(),
        ));
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
}
