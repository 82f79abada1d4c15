//! One pool: its PEs and its selection state (spec §5.2, §5.3).

use std::collections::BTreeMap;

use asap::policy::{PolicyError, PolicyRegistry, PoolSelection};
use asap::wire::PeEntry;
use asap::wire::param::{
    Param as _, ParamType, PeId, PoolElement, RegistrantIdentity, TransportUse,
};
use rand_core::Rng;

use super::{Registered, Reject};

/// The PEs of one pool handle in one namespace, with the pool's policy state.
///
/// PEs are kept in PE ID order, so that handle table paging (spec §9.7) can continue
/// after the last (pool handle, PE ID) sent.
#[derive(Debug, Default)]
pub struct Pool {
    selection: PoolSelection,
    entries: BTreeMap<PeId, PeEntry>,
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
        self.entries.get(&pe_id)
    }

    /// The PEs in PE ID order.
    pub fn entries(&self) -> impl Iterator<Item = &PeEntry> {
        self.entries.values()
    }

    /// The PEs whose ID is greater than `after` (all with `None`), in order (handle table
    /// paging, §9.7): a range of the ordered map, so no PE before `after` is visited.
    pub fn entries_after(&self, after: Option<PeId>) -> impl Iterator<Item = &PeEntry> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.entries
            .range((after.map_or(Unbounded, Excluded), Unbounded))
            .map(|(_, e)| e)
    }

    /// The pool's policy (the first PE's, spec §5.3: the "overall PE selection policy"
    /// of a handle resolution response).
    pub fn policy(&self) -> Option<&asap::wire::param::Policy> {
        self.entries.values().next().map(|e| &e.pool_element.policy)
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
        if lone_update {
            // The only PE may change the pool's policy type: start the pool's state afresh.
            let mut fresh = PoolSelection::new();
            fresh
                .insert_or_update(registry, pe_id, &pe.policy)
                .map_err(reject_of)?;
            self.selection = fresh;
        } else {
            self.selection
                .insert_or_update(registry, pe_id, &pe.policy)
                .map_err(reject_of)?;
        }
        let entry = PeEntry {
            pool_element: pe,
            registrant,
        };
        Ok(match self.entries.insert(pe_id, entry) {
            None => Registered::New,
            Some(old) => Registered::Updated {
                previous_home: old.pool_element.home_server_id,
            },
        })
    }

    pub(super) fn remove(&mut self, pe_id: PeId) -> Option<PeEntry> {
        let e = self.entries.remove(&pe_id)?;
        self.selection.remove(pe_id);
        Some(e)
    }

    pub(super) fn select(&mut self, n: usize, rng: &mut dyn Rng) -> Vec<&PeEntry> {
        let mut ids = Vec::with_capacity(n.min(self.entries.len()));
        self.selection.select(n, rng, &mut ids);
        ids.iter().filter_map(|id| self.entries.get(id)).collect()
    }
}

fn reject_of(e: PolicyError) -> Reject {
    match e {
        PolicyError::InconsistentPolicy { .. } => Reject::InconsistentPolicy,
        _ => Reject::UnsupportedPolicy,
    }
}
