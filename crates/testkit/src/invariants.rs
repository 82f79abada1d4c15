//! What must hold of registrar cores whatever their inputs. The simulation
//! ([`crate::sim`]) checks these among its invariants (the numbers are its own), and the
//! byte-driven driver ([`crate::drive`]) after every step. Each check says what broke in
//! one line, or nothing.

use std::collections::{BTreeMap, BTreeSet};

use asap::wire::param::{Namespace, PeId, PoolHandle, ServerId};
use asap::wire::{AsapMsg, PeEntry};
use enrp_core::checksum::PeChecksum;
use enrp_core::handlespace::Handlespace;
use enrp_core::registrar::{Action, PeKey};
use identity::audit::{AuditAction, Durability};

/// Invariant 5 (STYLE.md §2): every acknowledged registration, re-registration and
/// deregistration is preceded in its batch of actions by its audit record with
/// [`Durability::BeforeReply`]. Feed it one batch's actions in order.
#[derive(Debug, Default)]
pub struct DurableBeforeReply {
    /// What this batch recorded durably so far.
    durable: Vec<(AuditAction, PeId)>,
}

impl DurableBeforeReply {
    /// A checker for a new batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next action of the batch: `Err` names the PE that `action` acknowledges
    /// before a durable audit record of that change.
    pub fn observe(&mut self, action: &Action) -> Result<(), PeId> {
        match action {
            Action::Audit { event, durability } => {
                if *durability == Durability::BeforeReply
                    && event.outcome.is_none()
                    && let Some(pe_id) = event.pe_id
                {
                    self.durable.push((event.action, pe_id));
                }
                Ok(())
            }
            Action::Send { msg, .. } => {
                let acked = match msg {
                    AsapMsg::RegistrationResponse {
                        reject: false,
                        pe_id,
                        ..
                    } => Some((*pe_id, [AuditAction::Register, AuditAction::Reregister])),
                    AsapMsg::DeregistrationResponse {
                        pe_id, error: None, ..
                    } => Some((*pe_id, [AuditAction::Deregister; 2])),
                    _ => None,
                };
                match acked {
                    Some((pe_id, kinds))
                        if !self
                            .durable
                            .iter()
                            .any(|(a, p)| *p == pe_id && kinds.contains(a)) =>
                    {
                        Err(pe_id)
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// A handlespace's bookkeeping agrees with its entries: the PE count, the PEs per home
/// registrar and each home's spec §9.6 checksum (kept incrementally) equal what a walk
/// over the entries computes from scratch, the walk is in strict (namespace, pool
/// handle, PE ID) order (so no PE ID twice in a pool), and the limits hold. `homes` are
/// further registrars to check (those the caller knows of): one that owns no entry must
/// count no PEs and have the empty checksum, whatever it owned before.
pub fn handlespace_consistent(
    hs: &Handlespace,
    homes: impl IntoIterator<Item = ServerId>,
) -> Result<(), String> {
    let mut per_home: BTreeMap<u32, (usize, PeChecksum)> = BTreeMap::new();
    let mut per_pool: BTreeMap<(&Namespace, &PoolHandle), usize> = BTreeMap::new();
    let mut count = 0usize;
    let mut last: Option<(&Namespace, &PoolHandle, PeId)> = None;
    for (ns, h, e) in hs.iter() {
        let key = (ns, h, e.pool_element.pe_id);
        if last.is_some_and(|prev| prev >= key) {
            return Err(format!(
                "the handlespace lists PE {} of {h} out of order or twice",
                key.2.get()
            ));
        }
        last = Some(key);
        count += 1;
        *per_pool.entry((ns, h)).or_default() += 1;
        let home = per_home.entry(e.pool_element.home_server_id).or_default();
        home.0 += 1;
        home.1.add(h, e.pool_element.pe_id);
    }
    if count != hs.pe_count() {
        return Err(format!(
            "the handlespace counts {} PEs but holds {count}",
            hs.pe_count()
        ));
    }
    let limits = hs.limits();
    if count > limits.max_pes {
        return Err(format!("{count} PEs, over the limit of {}", limits.max_pes));
    }
    if let Some(((_, h), n)) = per_pool.iter().find(|(_, n)| **n > limits.max_pes_per_pool) {
        return Err(format!("pool {h} holds {n} PEs, over the limit"));
    }
    for (&home, (n, sum)) in &per_home {
        if hs.pes_of(home) != *n {
            return Err(format!(
                "home {home:#x}: {} PEs counted, {n} held",
                hs.pes_of(home)
            ));
        }
        // Home 0 is no registrar (ServerId::new refuses it): only its count is checked.
        if let Some(sid) = ServerId::new(home)
            && hs.checksum(sid) != sum.value()
        {
            return Err(format!(
                "home {home:#x}: checksum {:#06x} kept, {:#06x} computed",
                hs.checksum(sid),
                sum.value()
            ));
        }
    }
    for sid in homes {
        if !per_home.contains_key(&sid.get())
            && (hs.pes_of(sid.get()) != 0 || hs.checksum(sid) != PeChecksum::EMPTY)
        {
            return Err(format!(
                "home {sid} owns nothing but counts {} PEs, checksum {:#06x}",
                hs.pes_of(sid.get()),
                hs.checksum(sid)
            ));
        }
    }
    Ok(())
}

/// No PE is owned (its home is the registrar itself) by two registrars. `regs` are
/// (a name for the message, the registrar's Server ID, its handlespace).
pub fn one_owner_each<'a>(
    regs: impl IntoIterator<Item = (usize, ServerId, &'a Handlespace)>,
) -> Result<(), String> {
    let mut owners: BTreeMap<PeKey, Vec<usize>> = BTreeMap::new();
    for (i, sid, hs) in regs {
        for (ns, h, e) in hs.iter() {
            if e.pool_element.home_server_id == sid.get() {
                let key = (ns.clone(), h.clone(), e.pool_element.pe_id);
                owners.entry(key).or_default().push(i);
            }
        }
    }
    match owners.iter().find(|(_, o)| o.len() > 1) {
        Some((k, o)) => Err(format!("PE {} is owned by registrars {o:?}", k.2.get())),
        None => Ok(()),
    }
}

/// Registrars that have converged hold the same handlespace, and agree on the checksum
/// of every home's PEs. `regs` are (Server ID, handlespace), the first the reference;
/// the message names the others by their position.
pub fn handlespaces_agree(regs: &[(ServerId, &Handlespace)]) -> Result<(), String> {
    let views: Vec<Vec<(&Namespace, &PoolHandle, &PeEntry)>> =
        regs.iter().map(|(_, hs)| hs.iter().collect()).collect();
    for i in 1..views.len() {
        if views[i] != views[0] {
            return Err(format!(
                "r{i}'s handlespace differs from r0's:\n  r0: {:?}\n  r{i}: {:?}",
                summary(&views[0]),
                summary(&views[i])
            ));
        }
    }
    for (home, _) in regs {
        let sums: BTreeSet<u16> = regs.iter().map(|(_, hs)| hs.checksum(*home)).collect();
        if sums.len() != 1 {
            return Err(format!("the checksums of {home}'s PEs differ: {sums:?}"));
        }
    }
    Ok(())
}

/// (PE ID, home) of each entry, for messages.
pub fn summary(view: &[(&Namespace, &PoolHandle, &PeEntry)]) -> Vec<(u32, u32)> {
    view.iter()
        .map(|(_, _, e)| (e.pool_element.pe_id.get(), e.pool_element.home_server_id))
        .collect()
}
