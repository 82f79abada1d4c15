//! Handle tables (spec §9.3, §9.6, §9.7): ENRP_HANDLE_TABLE_REQUEST and RESPONSE with the
//! M-bit paging and continuation points, the W=1 download of a peer's own PEs (the
//! checksum audit, which purges what it no longer lists) and the W=0 download from the
//! mentor at start-up, which ends the start-up phase. Entries are applied by
//! `updates.rs`.

use crate::hash::HashSet;
use std::time::Instant;

use ::asap::wire::param::{ErrorCause, Param as _, ServerId};
use ::asap::wire::{EnrpBody, EnrpMsg, PoolEntries};

use super::Tally;
use crate::registrar::{
    Action, AuditAction, AuditEvent, ConnId, Core, Durability, PeKey, Remote, TimerKey,
};

impl Core {
    /// Starts (or restarts) the download of a peer's own PEs (spec §9.6, §9.7).
    pub(super) fn request_own_pes(&mut self, sid: ServerId, out: &mut Vec<Action>) {
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
    pub(super) fn request_handle_table(
        &mut self,
        sid: ServerId,
        own_only: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        let Some(conn) = p.conn else { return };
        p.sync = Some(HashSet::default());
        p.sync_own = own_only;
        out.push(Action::SendEnrp {
            conn,
            msg: self.table_request(sid, own_only),
        });
    }

    /// An ENRP_HANDLE_TABLE_REQUEST to `sid`: its own PEs (W=1) or all it knows (W=0).
    fn table_request(&self, sid: ServerId, own_only: bool) -> EnrpMsg {
        self.enrp_msg(
            sid,
            EnrpBody::HandleTableRequest {
                own_children_only: own_only,
            },
        )
    }

    /// Ends the start-up phase (spec §9.3 steps 3 and 4): the registrar serves ASAP.
    pub(in crate::registrar) fn end_startup(
        &mut self,
        why: AuditAction,
        mentor: Option<&Remote>,
        out: &mut Vec<Action>,
    ) {
        if !self.starting {
            return;
        }
        self.set_starting(false);
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

    /// Spec §9.7: one page of PEs (all, or only ours with W=1), from the requester's
    /// continuation point; M=1 when more remain.
    ///
    /// A page starts at the continuation point through the handlespace's ordered maps
    /// ([`Handlespace::iter_after`](crate::handlespace::Handlespace::iter_after)), so a
    /// whole download costs O(PEs) (plus, with W=1, the other registrars' PEs stepped
    /// over). PEs added behind the point during a download come with the next one (or
    /// with their ADD_PE); none is listed twice.
    pub(super) fn answer_handle_table(
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
    pub(super) fn on_handle_table(
        &mut self,
        sid: ServerId,
        remote: &Remote,
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
            out.push(Self::peer_audit(
                remote,
                AuditAction::PeerIgnored,
                None,
                "the peer rejected our handle table request".to_owned(),
            ));
            return;
        }
        // Only the answer to our own request (issue 16), like a list: what a peer volunteers
        // as a table is ignored (its PEs come with its ADD_PEs).
        if self.peers.get(&sid).is_none_or(|p| p.sync.is_none()) {
            out.push(Self::peer_audit(
                remote,
                AuditAction::PeerIgnored,
                Some(ErrorCause::SecurityRejection.code()),
                "ENRP_HANDLE_TABLE_RESPONSE we did not ask for".to_owned(),
            ));
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
                    remote,
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
        tally.emit(remote, "handle table page", out);
        let Some(p) = self.peers.get_mut(&sid) else {
            return;
        };
        let Some(sync) = p.sync.as_mut() else {
            return;
        };
        sync.extend(seen);
        if more {
            if let Some(conn) = p.conn {
                let own_only = p.sync_own;
                out.push(Action::SendEnrp {
                    conn,
                    msg: self.table_request(sid, own_only),
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
                remote,
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
            self.end_startup(AuditAction::MentorDone, Some(remote), out);
        }
    }
}
