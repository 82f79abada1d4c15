//! Removals the registrar did not get a deregistration for: a revocation (spec §7.1 [P],
//! issue 16: every connection and PE of the revoked certificate, identity or trust
//! domain), a grant change (the PEs whose registration the grants no longer allow), an
//! operator's [`Scope`] removal from the admin API, and the audit record each writes.
//! Called from the dispatch in `mod.rs` ([`Core::handle`]) and the timers.

use identity::SpiffeId;

use super::{
    Action, AuditAction, AuditEvent, ConnId, Core, Durability, PeKey, Revocation, Scope, TimerKey,
};

/// The audit record of a PE removed for `why`, durable before anything else of the batch
/// is carried out.
pub(super) fn audit_removal(removed: &crate::handlespace::Removed, why: AuditAction) -> Action {
    Action::Audit {
        event: AuditEvent {
            actor: None,
            remote: None,
            namespace: Some(removed.namespace.clone()),
            pool_handle: Some(removed.pool_handle.clone()),
            pe_id: Some(removed.entry.pool_element.pe_id),
            action: why,
            outcome: None,
            detail: removed
                .entry
                .registrant
                .as_ref()
                .map(|r| format!("registrant {}", r.as_str())),
        },
        durability: Durability::BeforeReply,
    }
}

impl Core {
    pub(super) fn on_revoked(&mut self, revocation: &Revocation, out: &mut Vec<Action>) {
        let mut closing: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| revocation.covers(&c.client.id, &c.client.serial))
            .map(|(id, _)| *id)
            .collect();
        closing.sort_unstable();
        // Every PE whose registrant is revoked goes, wherever it registered. A serial names
        // one certificate: its PEs are those registered with it (`by_serial`), and the
        // whole handlespace need not be walked for it.
        let registrant_revoked =
            |r: &str| SpiffeId::parse(r).is_ok_and(|id| revocation.covers_identity(&id));
        let revoked_pes: Vec<PeKey> = if matches!(revocation, Revocation::Serial { .. }) {
            Vec::new()
        } else {
            self.handlespace
                .iter()
                .filter(|(_, _, e)| {
                    e.registrant
                        .as_ref()
                        .is_some_and(|r| registrant_revoked(r.as_str()))
                })
                .map(|(ns, h, e)| (ns.clone(), h.clone(), e.pool_element.pe_id))
                .collect()
        };
        let by_serial = self.owned.iter().filter_map(|(pe, o)| match revocation {
            Revocation::Serial { domain, serial } => o
                .serial
                .as_ref()
                .is_some_and(|(d, s)| d == domain && s == serial)
                .then(|| pe.clone()),
            _ => None,
        });
        let mut pes: Vec<PeKey> = closing
            .iter()
            .filter_map(|c| self.conns.get(c))
            .flat_map(|c| c.pes.iter().cloned())
            .chain(revoked_pes)
            .chain(by_serial)
            .collect();
        pes.sort();
        pes.dedup();
        for pe in pes {
            if self.owned.contains_key(&pe) {
                self.remove_owned(&pe, AuditAction::RemoveRevoked, out);
            } else if let Some(removed) = self.handlespace.remove(&pe.0, &pe.1, pe.2) {
                out.push(audit_removal(&removed, AuditAction::RemoveRevoked));
                self.after_removal(&removed, out);
            }
        }
        for conn in closing {
            if let Some(c) = self.conns.get(&conn) {
                c.view.revoke();
            }
            out.push(Action::Close {
                conn,
                reason: "certificate revoked",
            });
        }
        self.close_revoked_peers(revocation, out);
    }

    /// Removes the PEs whose registration the grants no longer allow: a registrant keeps
    /// a PE only while some grant lets it register in that namespace and pool, with the
    /// PE's labels (here: a
    /// peer's PE goes from this registrar's handlespace, not from its home's).
    pub(super) fn on_grants_changed(&mut self, out: &mut Vec<Action>) {
        // Peers' PEs too (issue 16): a PE learnt from a peer obeys this registrar's grants
        // for its registrant, as when it was learnt.
        let mut ungranted: Vec<PeKey> = self
            .handlespace
            .iter()
            .filter(|(ns, handle, e)| {
                let Some(r) = &e.registrant else { return false };
                // A registrant the grants cannot even parse is not allowed anything.
                SpiffeId::parse(r.as_str()).map_or(true, |id| {
                    self.register_refusal(&id, ns, handle, &e.pool_element.labels)
                        .is_some()
                })
            })
            .map(|(ns, h, e)| (ns.clone(), h.clone(), e.pool_element.pe_id))
            .collect();
        ungranted.sort();
        for pe in ungranted {
            self.remove_any(&pe, AuditAction::RemoveUngranted, None, out);
        }
        self.close_ungranted_peers(out);
    }

    /// An operator's removal: every PE in `scope`, each audited with the operator.
    pub(super) fn on_admin_remove(&mut self, scope: &Scope, actor: &str, out: &mut Vec<Action>) {
        let mut pes: Vec<PeKey> = match scope {
            Scope::Pe(pe) => vec![pe.clone()],
            Scope::Pool(ns, handle) => self
                .handlespace
                .pool(ns, handle)
                .map(|p| {
                    p.entries()
                        .map(|e| (ns.clone(), handle.clone(), e.pool_element.pe_id))
                        .collect()
                })
                .unwrap_or_default(),
            Scope::Namespace(ns) => self
                .handlespace
                .pools(ns)
                .flat_map(|(h, p)| {
                    p.entries()
                        .map(|e| (ns.clone(), h.clone(), e.pool_element.pe_id))
                })
                .collect(),
        };
        pes.sort();
        for pe in pes {
            self.remove_any(&pe, AuditAction::RemoveAdmin, Some(actor), out);
        }
    }

    /// Removes a PE, owned or not, with an audit record naming `why` (and the operator).
    pub(super) fn remove_any(
        &mut self,
        pe: &PeKey,
        why: AuditAction,
        operator: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        self.forget_owned(pe);
        if let Some(removed) = self.handlespace.remove(&pe.0, &pe.1, pe.2) {
            let mut audit = audit_removal(&removed, why);
            if let (Some(op), Action::Audit { event, .. }) = (operator, &mut audit) {
                let registrant = event.detail.take().unwrap_or_default();
                event.detail = Some(
                    format!("by {op}; {registrant}")
                        .trim_end_matches("; ")
                        .to_owned(),
                );
            }
            out.push(audit);
            self.after_removal(&removed, out);
        }
    }

    /// Removes an owned PE and forgets its timers and connection binding.
    pub(super) fn remove_owned(&mut self, pe: &PeKey, why: AuditAction, out: &mut Vec<Action>) {
        self.forget_owned(pe);
        if let Some(removed) = self.handlespace.remove(&pe.0, &pe.1, pe.2) {
            out.push(audit_removal(&removed, why));
            self.after_removal(&removed, out);
        }
    }

    /// Forgets the registrar-side state of a PE: timers, ownership, connection binding.
    /// Harmless for a PE this registrar does not own.
    pub(super) fn forget_owned(&mut self, pe: &PeKey) {
        self.timers.stop(&TimerKey::KeepAlive(pe.clone()));
        self.timers.stop(&TimerKey::KeepAliveTimeout(pe.clone()));
        self.timers.stop(&TimerKey::Orphaned(pe.clone()));
        if let Some(o) = self.owned.remove(pe)
            && let Some(c) = o.conn.and_then(|c| self.conns.get_mut(&c))
        {
            c.remove_pe(pe);
        }
    }
}
