//! The handlespace: namespaces → pools → pool elements (spec §1, §5.3, §7.1–§7.3, D-7).
//!
//! Pure data and functions: no I/O, no clock, randomness only from the caller's RNG. The
//! registrar core decides *whether* a request may happen (authorization, timers); this
//! module keeps the handlespace consistent: one policy type, transport protocol and
//! transport use per pool, PE IDs unique per pool and bound to their registrant identity,
//! declared limits, and the per-owner PE checksums of spec §9.6.
//!
//! Read [`Handlespace::register`] first: it is the registration path of spec §7.1 steps
//! 4–7 (authentication, authorization and the address check happen before it).

mod pool;
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;

use asap::policy::PolicyRegistry;
use asap::wire::param::{
    ErrorCause, Namespace, PeId, PoolElement, PoolHandle, RegistrantIdentity, ServerId,
};
use rand_core::Rng;

use crate::checksum::PeChecksum;
use crate::hash::HashMap;

use asap::wire::PeEntry;
pub use pool::Pool;
pub use view::{HandlespaceView, PoolView, Selected};

/// Limits that keep one registrant or one pool from exhausting the registrar (spec §3.5,
/// threat T-1, T-15). Exceeding one answers cause 0x6 Lack of Resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Pools per namespace. Default 10,000.
    pub max_pools_per_namespace: usize,
    /// PEs per pool. Default 100,000.
    pub max_pes_per_pool: usize,
    /// PEs in the whole handlespace. Default 1,000,000.
    pub max_pes: usize,
    /// PEs registered by one registrant identity (all namespaces). Default 10,000.
    pub max_pes_per_registrant: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pools_per_namespace: 10_000,
            max_pes_per_pool: 100_000,
            max_pes: 1_000_000,
            max_pes_per_registrant: 10_000,
        }
    }
}

/// Why the handlespace refused a change. Each maps to a spec §4.7 cause code
/// ([`Reject::cause_code`]); nothing changed when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// The pool uses another policy type (spec §5.3). Cause 0x5.
    #[error("inconsistent pooling policy")]
    InconsistentPolicy,
    /// No selector exists for the PE's policy type (spec §5.1). Cause 0x3.
    #[error("unsupported pool member selection policy")]
    UnsupportedPolicy,
    /// The pool uses another transport protocol (spec §5.3). Cause 0x7.
    #[error("inconsistent transport type")]
    InconsistentTransport,
    /// The pool uses the other transport use, data only vs data plus control (spec §5.3).
    /// Cause 0x8.
    #[error("inconsistent data/control configuration")]
    InconsistentDataControl,
    /// The PE ID is taken by another registrant or another user transport (spec §7.1
    /// step 5). Cause 0x4.
    #[error("non-unique PE identifier")]
    NonUniquePeId,
    /// A limit of [`Limits`] is reached. Cause 0x6.
    #[error("lack of resources: {0}")]
    LackOfResources(&'static str),
    /// Another identity owns this PE entry (spec §7.2 [P], threat T-3). Cause 0xA.
    #[error("the PE belongs to another registrant")]
    NotRegistrant,
    /// No such pool in this namespace. Cause 0x9.
    #[error("unknown pool handle")]
    UnknownPool,
}

impl Reject {
    /// The spec §4.7 cause code to answer with.
    pub const fn cause_code(&self) -> u16 {
        match self {
            Self::UnsupportedPolicy => ErrorCause::INVALID_VALUES,
            Self::NonUniquePeId => ErrorCause::NON_UNIQUE_PE_ID,
            Self::InconsistentPolicy => ErrorCause::INCONSISTENT_POLICY,
            Self::LackOfResources(_) => ErrorCause::LACK_OF_RESOURCES,
            Self::InconsistentTransport => ErrorCause::INCONSISTENT_TRANSPORT,
            Self::InconsistentDataControl => ErrorCause::INCONSISTENT_DATA_CONTROL,
            Self::UnknownPool => ErrorCause::UNKNOWN_POOL_HANDLE,
            Self::NotRegistrant => ErrorCause::SECURITY_REJECTION,
        }
    }

    /// The cause to answer with, without cause-specific information: the registrar adds
    /// the offending parameter where spec §4.7 has one (0x5, 0x7).
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::from_parts(self.cause_code(), &[])
    }
}

/// What a successful registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new PE entry.
    New,
    /// An existing entry of the same registrant was updated (a re-registration, or a PE
    /// that moved to this registrar keeping its PE ID, spec §12.6). `previous_home` is the
    /// owner before the update.
    Updated {
        /// The owner registrar before this registration.
        previous_home: u32,
    },
}

/// A PE removed from the handlespace, returned so the caller can audit it and tell peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Its namespace.
    pub namespace: Namespace,
    /// Its pool.
    pub pool_handle: PoolHandle,
    /// The entry as it was.
    pub entry: PeEntry,
}

/// What happened to one PE, as the journal ([`Handlespace::journal_changes`]) records it
/// for watchers outside the core (issue 22: the admin API's watch streams). Only the PE's
/// key: the driver reads the entry from the handlespace after the step (an `Added` or
/// `Updated` PE removed later in the same step is followed by its `Removed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its namespace.
    pub namespace: Namespace,
    /// Its pool.
    pub pool_handle: PoolHandle,
    /// Its PE ID.
    pub pe_id: PeId,
    /// What happened.
    pub kind: ChangeKind,
}

/// See [`Change`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new PE.
    Added,
    /// A PE whose entry changed (policy or load, owner, registration life, …); a
    /// re-registration that changes nothing is not recorded.
    Updated,
    /// A PE removed, for whatever reason (the step's audit records say which).
    Removed,
}

/// All namespaces a registrar knows, with their pools and PEs.
#[derive(Debug)]
pub struct Handlespace {
    registry: PolicyRegistry,
    limits: Limits,
    namespaces: BTreeMap<Namespace, BTreeMap<PoolHandle, Pool>>,
    /// Spec §9.6: one incremental checksum per owner registrar.
    checksums: HashMap<u32, PeChecksum>,
    /// PEs per owner registrar: what one peer holds here (its bounded share).
    per_home: HashMap<u32, usize>,
    per_registrant: HashMap<RegistrantIdentity, usize>,
    pe_count: usize,
    /// The pools as readers outside the core find them ([`view`]).
    view: Arc<HandlespaceView>,
    /// The changes since the last [`Handlespace::take_changes`], when journaling is on.
    journal: Option<Vec<Change>>,
}

impl Handlespace {
    /// An empty handlespace with the standard policies (`PolicyRegistry::standard`).
    pub fn new(limits: Limits) -> Self {
        Self::with_registry(limits, PolicyRegistry::standard())
    }

    /// An empty handlespace whose pools draw their selectors from `registry` (a policy
    /// plug-in is registered there, spec §5, draft-tuexen-rserpool-reqts §5).
    pub fn with_registry(limits: Limits, registry: PolicyRegistry) -> Self {
        Self {
            registry,
            limits,
            namespaces: BTreeMap::new(),
            checksums: HashMap::default(),
            per_home: HashMap::default(),
            per_registrant: HashMap::default(),
            pe_count: 0,
            view: Arc::default(),
            journal: None,
        }
    }

    /// Records every change of a PE from now on, until [`Handlespace::take_changes`]
    /// takes them (the daemon takes them after each step of the core). Off by default:
    /// nothing is recorded where nobody takes them (tests, the simulation).
    pub fn journal_changes(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call, in order (none when journaling is off).
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn note(
        &mut self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
        kind: ChangeKind,
    ) {
        if let Some(journal) = &mut self.journal {
            journal.push(Change {
                namespace: namespace.clone(),
                pool_handle: pool_handle.clone(),
                pe_id,
                kind,
            });
        }
    }

    /// The pools' selectors by policy type.
    pub fn registry(&self) -> &PolicyRegistry {
        &self.registry
    }

    /// The pools as readers outside the core see them, always in step with this
    /// handlespace (the module docs of [`view`]).
    pub fn view(&self) -> &Arc<HandlespaceView> {
        &self.view
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of PEs in all namespaces.
    pub fn pe_count(&self) -> usize {
        self.pe_count
    }

    /// The pool `handle` of `namespace`, if it has PEs.
    pub fn pool(&self, namespace: &Namespace, handle: &PoolHandle) -> Option<&Pool> {
        self.namespaces.get(namespace)?.get(handle)
    }

    /// The namespaces that hold at least one pool, in order.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.keys()
    }

    /// The pools of `namespace`, in pool handle order.
    pub fn pools(&self, namespace: &Namespace) -> impl Iterator<Item = (&PoolHandle, &Pool)> {
        self.namespaces.get(namespace).into_iter().flatten()
    }

    /// Every PE, in (namespace, pool handle, PE ID) order.
    pub fn iter(&self) -> impl Iterator<Item = (&Namespace, &PoolHandle, &PeEntry)> {
        self.namespaces.iter().flat_map(|(ns, pools)| {
            pools
                .iter()
                .flat_map(move |(h, pool)| pool.entries().map(move |e| (ns, h, e)))
        })
    }

    /// The PEs after `after` in the order of [`Handlespace::iter`] (all with `None`): the
    /// continuation of a handle table download (spec §9.7). The point need not exist any
    /// more: a PE, pool or namespace removed since the last page is stepped over, and
    /// the walk starts with ordered-map ranges, so a page costs O(log n + page), not a
    /// walk from the start of the handlespace.
    pub fn iter_after(
        &self,
        after: Option<(&Namespace, &PoolHandle, PeId)>,
    ) -> impl Iterator<Item = (&Namespace, &PoolHandle, &PeEntry)> {
        use std::ops::Bound::{Included, Unbounded};
        let after = after.map(|(ns, h, pe)| (ns.clone(), h.clone(), pe));
        let from_ns = after
            .as_ref()
            .map_or(Unbounded, |(ns, _, _)| Included(ns.clone()));
        self.namespaces
            .range((from_ns, Unbounded))
            .flat_map(move |(ns, pools)| {
                // Only the point's own namespace starts inside; later ones start at the top.
                let at = after
                    .as_ref()
                    .filter(|(n, _, _)| n == ns)
                    .map(|(_, h, pe)| (h.clone(), *pe));
                let from_pool = at.as_ref().map_or(Unbounded, |(h, _)| Included(h.clone()));
                pools
                    .range((from_pool, Unbounded))
                    .flat_map(move |(h, pool)| {
                        let pe_after = at.as_ref().filter(|(ah, _)| ah == h).map(|(_, pe)| *pe);
                        pool.entries_after(pe_after).map(move |e| (ns, h, e))
                    })
            })
    }

    /// The spec §9.6 checksum of the PEs owned by `home`, as sent in ENRP_PRESENCE.
    pub fn checksum(&self, home: ServerId) -> u16 {
        self.checksums
            .get(&home.get())
            .map_or_else(|| PeChecksum::new().value(), PeChecksum::value)
    }

    /// Adds a PE or applies its re-registration (spec §7.1 steps 4–7, §5.3, §12.6).
    ///
    /// `pe.home_server_id` must already name the owner (a registrar puts its own Server
    /// ID there). An existing entry with the same PE ID is updated when `registrant` is
    /// the identity that registered it and the user transport is unchanged; otherwise the
    /// registration is refused with [`Reject::NonUniquePeId`]. On error nothing changes.
    pub fn register(
        &mut self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe: PoolElement,
        registrant: Option<RegistrantIdentity>,
    ) -> Result<Registered, Reject> {
        let pe_id = pe.pe_id;
        let existing = self
            .pool(namespace, pool_handle)
            .and_then(|p| p.entry(pe_id));
        // Compared only for the journal: not on the registration path when nobody watches.
        let unchanged = self.journal.is_some()
            && existing.is_some_and(|old| old.pool_element == pe && old.registrant == registrant);
        if let Some(old) = existing {
            // Spec §7.1 step 5: the same registrant re-registers; anyone else collides.
            if old.registrant != registrant || old.pool_element.user_transport != pe.user_transport
            {
                return Err(Reject::NonUniquePeId);
            }
        } else {
            self.check_limits(namespace, pool_handle, registrant.as_ref())?;
        }
        let pools = self.namespaces.entry(namespace.clone()).or_default();
        let fresh_pool = !pools.contains_key(pool_handle);
        let pool = pools.entry(pool_handle.clone()).or_default();
        let result = pool.upsert(&self.registry, pe, registrant.clone());
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                // Leave no empty pool (or namespace) behind a refused first registration.
                if fresh_pool {
                    pools.remove(pool_handle);
                    if pools.is_empty() {
                        self.namespaces.remove(namespace);
                    }
                }
                return Err(e);
            }
        };
        if fresh_pool {
            self.view
                .publish(namespace, pool_handle, Arc::clone(pool.view()));
        }
        match result {
            Registered::New => self.note(namespace, pool_handle, pe_id, ChangeKind::Added),
            Registered::Updated { .. } if !unchanged => {
                self.note(namespace, pool_handle, pe_id, ChangeKind::Updated);
            }
            Registered::Updated { .. } => {}
        }
        match result {
            Registered::New => {
                self.pe_count += 1;
                if let Some(r) = registrant {
                    *self.per_registrant.entry(r).or_default() += 1;
                }
                let home = self.home_of(namespace, pool_handle, pe_id);
                self.checksums
                    .entry(home)
                    .or_default()
                    .add(pool_handle, pe_id);
                *self.per_home.entry(home).or_default() += 1;
            }
            Registered::Updated { previous_home } => {
                let home = self.home_of(namespace, pool_handle, pe_id);
                if previous_home != home {
                    self.move_checksum(pool_handle, pe_id, previous_home, home);
                }
            }
        }
        Ok(result)
    }

    /// How many PEs have `home` as their owner registrar.
    pub fn pes_of(&self, home: u32) -> usize {
        self.per_home.get(&home).copied().unwrap_or(0)
    }

    fn count_out(&mut self, home: u32) {
        if let Some(n) = self.per_home.get_mut(&home) {
            *n -= 1;
            if *n == 0 {
                self.per_home.remove(&home);
            }
        }
    }

    fn home_of(&self, namespace: &Namespace, handle: &PoolHandle, pe_id: PeId) -> u32 {
        self.pool(namespace, handle)
            .and_then(|p| p.entry(pe_id))
            .map_or(0, |e| e.pool_element.home_server_id)
    }

    fn move_checksum(&mut self, handle: &PoolHandle, pe_id: PeId, from: u32, to: u32) {
        if let Some(c) = self.checksums.get_mut(&from) {
            c.remove(handle, pe_id);
        }
        self.checksums.entry(to).or_default().add(handle, pe_id);
        self.count_out(from);
        *self.per_home.entry(to).or_default() += 1;
    }

    fn check_limits(
        &self,
        namespace: &Namespace,
        handle: &PoolHandle,
        registrant: Option<&RegistrantIdentity>,
    ) -> Result<(), Reject> {
        let pools = self.namespaces.get(namespace);
        let pool = pools.and_then(|p| p.get(handle));
        if self.pe_count >= self.limits.max_pes {
            return Err(Reject::LackOfResources("PEs in the handlespace"));
        }
        match pool {
            Some(pool) if pool.len() >= self.limits.max_pes_per_pool => {
                return Err(Reject::LackOfResources("PEs in the pool"));
            }
            None if pools.map_or(0, BTreeMap::len) >= self.limits.max_pools_per_namespace => {
                return Err(Reject::LackOfResources("pools in the namespace"));
            }
            _ => {}
        }
        if let Some(r) = registrant
            && self.per_registrant.get(r).copied().unwrap_or(0)
                >= self.limits.max_pes_per_registrant
        {
            return Err(Reject::LackOfResources("PEs of this registrant"));
        }
        Ok(())
    }

    /// Removes a PE on its registrant's request (spec §7.2). `Ok(None)` when there is no
    /// such PE: deregistration is idempotent. [`Reject::NotRegistrant`] when `registrant`
    /// is not the identity that registered it.
    pub fn deregister(
        &mut self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
        registrant: Option<&RegistrantIdentity>,
    ) -> Result<Option<Removed>, Reject> {
        match self
            .pool(namespace, pool_handle)
            .and_then(|p| p.entry(pe_id))
        {
            None => return Ok(None),
            Some(e) if e.registrant.as_ref() != registrant => return Err(Reject::NotRegistrant),
            Some(_) => {}
        }
        Ok(self.remove(namespace, pool_handle, pe_id))
    }

    /// Removes a PE whatever its registrant (keep-alive timeout, unreachable reports,
    /// connection loss, revocation, ENRP DEL_PE). Deletes the pool when it was the last
    /// PE (spec §7.2) and the namespace when it was the last pool.
    pub fn remove(
        &mut self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
    ) -> Option<Removed> {
        let pools = self.namespaces.get_mut(namespace)?;
        let pool = pools.get_mut(pool_handle)?;
        let entry = pool.remove(pe_id)?;
        if pool.is_empty() {
            self.view.withdraw(namespace, pool_handle);
            pools.remove(pool_handle);
            if pools.is_empty() {
                self.namespaces.remove(namespace);
            }
        }
        self.pe_count -= 1;
        if let Some(r) = &entry.registrant
            && let Some(n) = self.per_registrant.get_mut(r)
        {
            *n -= 1;
            if *n == 0 {
                self.per_registrant.remove(r);
            }
        }
        if let Some(c) = self.checksums.get_mut(&entry.pool_element.home_server_id) {
            c.remove(pool_handle, pe_id);
        }
        self.count_out(entry.pool_element.home_server_id);
        self.note(namespace, pool_handle, pe_id, ChangeKind::Removed);
        Some(Removed {
            namespace: namespace.clone(),
            pool_handle: pool_handle.clone(),
            entry,
        })
    }

    /// Hands the round trip the registrar measured to a PE (keep-alive → ack) to its
    /// pool's policy, for policies that select by distance
    /// ([`asap::policy::LeastUsedDistance`]); nothing when there is no such PE.
    pub fn set_round_trip(
        &self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        pe_id: PeId,
        rtt: Option<std::time::Duration>,
    ) {
        if let Some(pool) = self.pool(namespace, pool_handle) {
            pool.set_round_trip(pe_id, rtt);
        }
    }

    /// Chooses up to `n` PEs of a pool with its policy for a handle resolution response
    /// (spec §7.3), advancing the policy's state (shared with [`HandlespaceView`]'s
    /// readers: [`PoolView::select`] is the one selection). [`Reject::UnknownPool`] when
    /// the pool does not exist in this namespace.
    pub fn resolve(
        &self,
        namespace: &Namespace,
        pool_handle: &PoolHandle,
        n: usize,
        rng: &mut dyn Rng,
    ) -> Result<Vec<Arc<PeEntry>>, Reject> {
        self.pool(namespace, pool_handle)
            .and_then(|pool| pool.select(n, rng))
            .map(|(_, pes)| pes)
            .ok_or(Reject::UnknownPool)
    }
}

#[cfg(test)]
mod tests;
