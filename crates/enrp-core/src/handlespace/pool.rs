//! One pool: its PEs and its selection state (spec §5.2, §5.3).

use std::collections::BTreeMap;
use std::sync::Arc;

use asap::policy::{PolicyError, PolicyRegistry, PoolSelection};
use asap::wire::PeEntry;
use asap::wire::param::{
    Labels, Param as _, ParamType, PeId, PoolElement, RegistrantIdentity, TransportUse,
};
use rand_core::Rng;

use super::view::{PoolView, Selected};
use super::{Registered, Reject};

/// The PEs of one pool handle in one namespace, with the pool's policy state.
///
/// PEs are kept in PE ID order, so that handle table paging (spec §9.7) can continue
/// after the last (pool handle, PE ID) sent. The selection state and the PEs by ID are
/// in the pool's [`PoolView`], shared with readers outside the core and changed in the
/// same call as `entries` (the entries themselves are shared, not copied).
#[derive(Debug, Default)]
pub struct Pool {
    entries: BTreeMap<PeId, Arc<PeEntry>>,
    view: Arc<PoolView>,
}

impl Pool {
    /// Number of PEs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pool has no PE (an empty pool is deleted at once, spec §5.3).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The PE with this ID.
    pub fn entry(&self, pe_id: PeId) -> Option<&PeEntry> {
        self.entries.get(&pe_id).map(|e| &**e)
    }

    /// The PE with this ID as the pool shares it with readers (the same `Arc`).
    pub fn shared_entry(&self, pe_id: PeId) -> Option<&Arc<PeEntry>> {
        self.entries.get(&pe_id)
    }

    /// The PEs in PE ID order.
    pub fn entries(&self) -> impl Iterator<Item = &PeEntry> {
        self.entries.values().map(|e| &**e)
    }

    /// The PEs whose ID is greater than `after` (all with `None`), in order (handle table
    /// paging, §9.7): a range of the ordered map, so no PE before `after` is visited.
    pub fn entries_after(&self, after: Option<PeId>) -> impl Iterator<Item = &PeEntry> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.entries
            .range((after.map_or(Unbounded, Excluded), Unbounded))
            .map(|(_, e)| &**e)
    }

    /// The pool's policy (the first PE's, spec §5.3: the "overall PE selection policy"
    /// of a handle resolution response).
    pub fn policy(&self) -> Option<&asap::wire::param::Policy> {
        self.entries.values().next().map(|e| &e.pool_element.policy)
    }

    /// What readers outside the core see of this pool.
    pub(super) fn view(&self) -> &Arc<PoolView> {
        &self.view
    }

    /// Spec §5.3: transport protocol and data/control use are fixed by the pool's PEs.
    /// A PE that is the pool's only member may change them by re-registering.
    fn check_transport(&self, pe: &PoolElement) -> Result<(), Reject> {
        let Some(other) = self
            .entries
            .values()
            .find(|e| e.pool_element.pe_id != pe.pe_id)
        else {
            return Ok(());
        };
        let kind = |p: &PoolElement| -> (ParamType, Option<TransportUse>) {
            (
                p.user_transport.param_type(),
                p.user_transport.transport_use(),
            )
        };
        let (have_ty, have_use) = kind(&other.pool_element);
        let (ty, use_) = kind(pe);
        if have_ty != ty {
            return Err(Reject::InconsistentTransport);
        }
        if have_use != use_ {
            return Err(Reject::InconsistentDataControl);
        }
        Ok(())
    }

    pub(super) fn upsert(
        &mut self,
        registry: &PolicyRegistry,
        pe: PoolElement,
        registrant: Option<RegistrantIdentity>,
    ) -> Result<Registered, Reject> {
        self.check_transport(&pe)?;
        let pe_id = pe.pe_id;
        let lone_update = self.entries.len() == 1 && self.entries.contains_key(&pe_id);
        let mut shared = self.view.lock();
        if lone_update {
            // The only PE may change the pool's policy type: start the pool's state afresh.
            let mut fresh = PoolSelection::new();
            fresh
                .insert_or_update_labeled(registry, pe_id, &pe.policy, &pe.labels)
                .map_err(reject_of)?;
            shared.selection = fresh;
        } else {
            shared
                .selection
                .insert_or_update_labeled(registry, pe_id, &pe.policy, &pe.labels)
                .map_err(reject_of)?;
        }
        // A draining PE (docs/PROTOCOL-EXTENSIONS.md §5) stays in the pool but out of
        // its selection: no resolution returns it. It is inserted first all the same, so
        // that its policy is checked like any other's.
        let draining = pe.status.draining();
        if draining {
            shared.selection.remove(pe_id);
        }
        let entry = Arc::new(PeEntry {
            pool_element: pe,
            registrant,
        });
        shared.by_id.insert(pe_id, Arc::clone(&entry));
        // Its encodings are of the entry it replaces.
        shared.wire.remove(&pe_id);
        let old = self.entries.insert(pe_id, entry);
        let was_draining = !lone_update
            && old
                .as_ref()
                .is_some_and(|o| o.pool_element.status.draining());
        match (was_draining, draining) {
            (false, true) => shared.draining += 1,
            (true, false) => shared.draining -= 1,
            _ => {}
        }
        if lone_update {
            shared.draining = usize::from(draining);
        }
        shared.policy = self.policy().copied();
        Ok(match old {
            None => Registered::New,
            Some(old) => Registered::Updated {
                previous_home: old.pool_element.home_server_id,
            },
        })
    }

    /// Removes a PE; the entry is returned as it was (a copy only if a reader still
    /// holds it for a response being encoded).
    pub(super) fn remove(&mut self, pe_id: PeId) -> Option<PeEntry> {
        let e = self.entries.remove(&pe_id)?;
        let mut shared = self.view.lock();
        if e.pool_element.status.draining() {
            shared.draining -= 1;
        }
        shared.selection.remove(pe_id);
        shared.by_id.remove(&pe_id);
        shared.wire.remove(&pe_id);
        shared.policy = self.policy().copied();
        drop(shared);
        Some(Arc::unwrap_or_clone(e))
    }

    /// Tells the pool's policy the measured round trip to a PE (readers see it at once).
    pub(super) fn set_round_trip(&self, pe_id: PeId, rtt: Option<std::time::Duration>) {
        if self.entries.contains_key(&pe_id) {
            self.view.lock().selection.set_round_trip(pe_id, rtt);
        }
    }

    pub(super) fn select(&self, n: usize, rng: &mut dyn Rng) -> Option<Selected> {
        self.view.select(n, &Labels::default(), rng)
    }
}

fn reject_of(e: PolicyError) -> Reject {
    match e {
        PolicyError::InconsistentPolicy { .. } => Reject::InconsistentPolicy,
        _ => Reject::UnsupportedPolicy,
    }
}
