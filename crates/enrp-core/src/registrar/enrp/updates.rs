//! Handle updates (spec §9.4, §9.6): ENRP_HANDLE_UPDATE sent for the PEs this registrar
//! owns (`announce_owned`), and those of peers applied here under our grants, quotas and
//! each peer's share (docs/ENRP-TRUST.md): a PE re-homed from a live home waits as a
//! [`Claim`] until that home lets it go. What one peer message changed is audited as a
//! [`Tally`]. Called from the dispatch in `super` and from the handle tables
//! (`tables.rs`), which apply their entries the same way.

use std::time::{Duration, Instant};

use ::asap::wire::param::{ErrorCause, Namespace, PeId, PoolHandle, ServerId};
use ::asap::wire::{EnrpBody, EnrpMsg, PeEntry, UpdateAction};
use identity::SpiffeId;

use super::PeerState;
use crate::handlespace::Removed;
use crate::registrar::{
    Action, AuditAction, AuditEvent, Core, Durability, PeKey, Remote, TimerKey,
};

/// Most re-homes waiting for the withdrawal of a live home (docs/ENRP-TRUST.md §2).
/// Beyond it a re-home is refused without waiting; the §9.6 checksum audit offers it
/// again. 10,000 entries of a few hundred bytes.
pub const MAX_CLAIMS: usize = 10_000;

/// A peer's ADD_PE (or handle table entry) for a PE whose home is another live peer:
/// applied once that home withdraws the PE (DEL_PE, its handle table) or dies here.
#[derive(Debug)]
pub(in crate::registrar) struct Claim {
    pub(super) by: ServerId,
    pub(super) entry: PeEntry,
    /// When it arrived: the PE's registration life counts from then.
    pub(super) at: Instant,
}

/// What one peer message changed here, or refused: audited as at most two records (one
/// for the changes, one for the refusals) with counts, not one per PE (issue 16).
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) added: usize,
    pub(super) rehomed: usize,
    pub(super) removed: usize,
    /// The first PE changed: named in the record when it is the only one.
    pub(super) first: Option<PeKey>,
    pub(super) refused: usize,
    pub(super) first_refusal: Option<(PeKey, String)>,
}

impl Tally {
    pub(super) fn changed(&mut self, key: &PeKey) {
        if self.first.is_none() {
            self.first = Some(key.clone());
        }
    }

    pub(super) fn refuse(&mut self, key: PeKey, why: String) {
        self.refused += 1;
        if self.first_refusal.is_none() {
            self.first_refusal = Some((key, why));
        }
    }

    /// The audit records, naming the peer `remote`; `what` names the message.
    pub(super) fn emit(self, remote: &Remote, what: &str, out: &mut Vec<Action>) {
        let name = |event: &mut AuditEvent, key: &PeKey| {
            event.namespace = Some(key.0.clone());
            event.pool_handle = Some(key.1.clone());
            event.pe_id = Some(key.2);
        };
        let changes = self.added + self.rehomed + self.removed;
        if changes > 0 {
            let mut event = Core::peer_event(
                remote,
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
                remote,
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
    /// A peer's PE reached its registration life without a refresh from its home.
    pub(in crate::registrar) fn expire_peer_pe(&mut self, pe: &PeKey, out: &mut Vec<Action>) {
        if self.owned.contains_key(pe) {
            return;
        }
        let theirs = self
            .handlespace
            .pool(&pe.0, &pe.1)
            .and_then(|p| p.entry(pe.2))
            .is_some_and(|e| e.pool_element.home_server_id != self.config.server_id.get());
        if theirs && let Some(removed) = self.handlespace.remove(&pe.0, &pe.1, pe.2) {
            out.push(crate::registrar::audit_removal(
                &removed,
                AuditAction::RemoveExpired,
            ));
        }
    }

    /// A PE left the handlespace: forget its peer expiry, and tell the peers when it was
    /// ours (spec §9.4, DEL_PE).
    pub(in crate::registrar) fn after_removal(&mut self, removed: &Removed, out: &mut Vec<Action>) {
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
    pub(in crate::registrar) fn announce_owned(&mut self, key: &PeKey, out: &mut Vec<Action>) {
        // Borrowed, not cloned: every unchanged re-registration comes here (issue 20),
        // and most registrars have few peers or none.
        let Some(entry) = self
            .handlespace
            .pool(&key.0, &key.1)
            .and_then(|p| p.entry(key.2))
        else {
            return;
        };
        self.send_update(UpdateAction::AddPe, &key.0, &key.1, entry, out);
    }

    pub(super) fn send_update(
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
    pub(super) fn send_update_but(
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
    pub(super) fn ignore_pe(
        remote: &Remote,
        ns: &Namespace,
        handle: &PoolHandle,
        pe_id: PeId,
        why: String,
        out: &mut Vec<Action>,
    ) {
        let mut event = Self::peer_event(
            remote,
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
    pub(super) fn accept_peer_pe(
        &mut self,
        sid: ServerId,
        remote: &Remote,
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
        } else if !self.permits(&remote.id, &key.0, &key.1, identity::Action::Peer) {
            Some("no peer grant for this namespace and pool".to_owned())
        } else if !pe.registration_life_valid() {
            Some("registration life out of range".to_owned())
        } else if entry
            .registrant
            .as_ref()
            .is_some_and(|r| self.registrant_revoked(r.as_str()))
        {
            Some("registrant revoked here".to_owned())
        } else if pe.serving_identity.as_ref().is_some_and(|s| {
            // As for an ASAP registration here: its registrant vouches for it, or nobody.
            !entry
                .registrant
                .as_ref()
                .and_then(|r| SpiffeId::parse(r.as_str()).ok())
                .zip(SpiffeId::parse(s.as_str()).ok())
                .is_some_and(|(r, s)| r.may_vouch_for(&s))
        }) {
            Some("its registrant may not vouch for its serving identity".to_owned())
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
    /// against the peer's share, [`crate::registrar::Config::max_pes_per_peer`].
    pub(super) fn peer_pe_refusal(
        &self,
        sid: ServerId,
        key: &PeKey,
        entry: &PeEntry,
    ) -> Option<String> {
        let Some(registrant) = &entry.registrant else {
            return Some("no registrant identity".to_owned());
        };
        let Ok(id) = SpiffeId::parse(registrant.as_str()) else {
            return Some(format!(
                "registrant {} holds no register grant here for this namespace and pool",
                registrant.as_str()
            ));
        };
        if let Some(why) = self.register_refusal(&id, &key.0, &key.1, &entry.pool_element.labels) {
            return Some(format!("registrant {}: {why} here", registrant.as_str()));
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
    pub(in crate::registrar) fn settle_claims(
        &mut self,
        keys: &[PeKey],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let mut by: std::collections::BTreeMap<ServerId, (Remote, Tally)> = Default::default();
        for key in keys {
            let Some(claim) = self.claims.remove(key) else {
                continue;
            };
            let life = Duration::from_millis(
                u64::try_from(claim.entry.pool_element.registration_life).unwrap_or(0),
            );
            let Some(remote) = self
                .peers
                .get(&claim.by)
                .filter(|p| p.state != PeerState::Dead && p.conn.is_some())
                .map(|p| p.remote.clone())
            else {
                continue;
            };
            if claim.at + life <= now {
                continue;
            }
            let (remote, tally) = by
                .entry(claim.by)
                .or_insert_with(|| (remote, Tally::default()));
            let remote = remote.clone();
            let ns_handle = (key.0.clone(), key.1.clone());
            self.accept_peer_pe(
                claim.by,
                &remote,
                ns_handle,
                claim.entry,
                claim.at,
                tally,
                out,
            );
        }
        for (_, (remote, tally)) in by {
            tally.emit(&remote, "re-home once the old home let the PE go", out);
        }
    }

    pub(super) fn registrant_revoked(&self, registrant: &str) -> bool {
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
    pub(super) fn delete_peer_pe(
        &mut self,
        sid: ServerId,
        remote: &Remote,
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
            return Self::ignore_pe(remote, &ns, &handle, pe_id, why, out);
        }
        if !self.permits(&remote.id, &ns, &handle, identity::Action::Peer) {
            let why = "no peer grant for this namespace and pool".to_owned();
            return Self::ignore_pe(remote, &ns, &handle, pe_id, why, out);
        }
        if let Some(removed) = self.handlespace.remove(&ns, &handle, pe_id) {
            self.after_removal(&removed, out);
            let key: PeKey = (ns, handle, pe_id);
            let mut tally = Tally {
                removed: 1,
                ..Tally::default()
            };
            tally.changed(&key);
            tally.emit(remote, "DEL_PE", out);
            // Its home let it go: a peer's re-home waiting for that applies now.
            self.settle_claims(&[key], now, out);
        }
    }
}
