//! The handlespace as readers outside the core see it (issue 20, "reads where they
//! arrive"): a connection task answers a handle resolution from here without a trip to
//! the core task.
//!
//! Not a copy: each [`Pool`](super::Pool) keeps its selection state and its PEs by ID in
//! one [`PoolView`] that the core and the readers share, and the core changes it in the
//! same [`Handlespace`](super::Handlespace) call that changes the pool. So a reader is
//! never behind the core: a resolution served after a change's actions were carried out
//! sees the change (the staleness bound is zero committed steps). The PE entries are
//! `Arc`s shared with the core's ordered map, so the view adds an index entry and a
//! pointer per PE, not a second PE.
//!
//! Locks: the pools map is read-locked only to find a pool (written when a pool is
//! created or deleted); a pool's lock is held for one selection, O(k log n) in the pool
//! size, or one change. The order is always map, then pool, never the other way round.
//! The policy state (round robin positions and the like) advances under the pool's lock,
//! so concurrent readers and the core share one cycle, as before.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use asap::policy::PoolSelection;
use asap::wire::param::{Labels, Namespace, PeId, Policy, PoolHandle};
use asap::wire::{AsapMsg, EncodeError, PeEntry};
use rand_core::Rng;

// The core's hasher (`crate::hash`): readers look pools and PEs up on every resolution and
// re-registration, and SipHash showed in their profile (issue 20).
use crate::hash::HashMap;

/// What readers need of one pool: its PEs by ID, its selection state and its overall
/// policy (spec §5.3: the first PE's, in PE ID order).
#[derive(Debug, Default)]
pub struct PoolView {
    state: Mutex<Selectable>,
}

#[derive(Debug, Default)]
pub(super) struct Selectable {
    pub(super) selection: PoolSelection,
    pub(super) by_id: HashMap<PeId, Arc<PeEntry>>,
    /// The encodings of the PEs resolved since they last changed.
    pub(super) wire: HashMap<PeId, Encodings>,
    pub(super) policy: Option<Policy>,
    /// How many of `by_id` are draining (out of `selection`).
    pub(super) draining: usize,
}

/// A pool's answer to a resolution: the pool's policy and the PEs chosen, in order.
pub type Selected = (Option<Policy>, Vec<Arc<PeEntry>>);

/// A PE's parameters as resolution responses carry them ([`PeEntry::encoded_as`]):
/// `[plain, with identities]`, each encoded at the first resolution that returns the PE
/// that way and kept until the PE changes or leaves (the core drops them then): a
/// resolution copies them instead of encoding the PE again (issue 20). Kept apart from
/// `by_id`, so that a PE nobody resolves costs nothing here (100,000 PEs of a
/// keep-alive load stay within 2 KiB each).
type Encodings = [Option<Box<[u8]>>; 2];

impl PoolView {
    /// Chooses up to `n` PEs with the pool's policy (spec §5.2, §7.3), advancing the
    /// policy's state. `None` when the pool has no PE: it was deleted after the caller
    /// found it, and answers as an unknown pool.
    /// `hints` are the pool user's (project parameter 0x8103), for policies that read them.
    pub fn select(&self, n: usize, hints: &Labels, rng: &mut dyn Rng) -> Option<Selected> {
        let mut s = self.lock();
        // A pool whose every PE drains answers as one without PEs: an unknown pool.
        if s.by_id.len() == s.draining {
            return None;
        }
        let mut ids = Vec::with_capacity(n.min(s.by_id.len()));
        s.selection.select_hinted(n, hints, rng, &mut ids);
        let pes = ids
            .iter()
            .filter_map(|id| s.by_id.get(id).cloned())
            .collect();
        Some((s.policy, pes))
    }

    /// [`Self::select`] answered at once: the handle resolution response for
    /// `pool_handle` appended to `out` (`plain`: without identities), with the chosen
    /// PEs that fit one message ([`AsapMsg::encode_found_encoded`]), each copied from
    /// its encoding made once. How many PEs it carries. `ids`: the caller's buffer for
    /// the chosen IDs (no allocation per resolution).
    #[allow(clippy::too_many_arguments)] // select's, and where the answer goes
    pub fn answer(
        &self,
        n: usize,
        hints: &Labels,
        rng: &mut dyn Rng,
        pool_handle: &PoolHandle,
        plain: bool,
        ids: &mut Vec<PeId>,
        out: &mut Vec<u8>,
    ) -> Option<Result<usize, EncodeError>> {
        let mut s = self.lock();
        if s.by_id.len() == s.draining {
            return None;
        }
        ids.clear();
        s.selection.select_hinted(n, hints, rng, ids);
        let s = &mut *s;
        let at = usize::from(!plain);
        for id in ids.iter() {
            if let Some(entry) = s.by_id.get(id) {
                let slot = &mut s.wire.entry(*id).or_default()[at];
                if slot.is_none() {
                    *slot = Some(entry.encoded_as(plain).into_boxed_slice());
                }
            }
        }
        let pes = ids
            .iter()
            .filter_map(|id| s.wire.get(id).and_then(|w| w[at].as_deref()));
        Some(AsapMsg::encode_found_encoded(
            out,
            pool_handle,
            s.policy.as_ref(),
            pes,
        ))
    }

    /// Whether the pool holds `entry` itself (the same `Arc`, not an equal copy): nothing
    /// changed or replaced that PE since the core stored it (an unchanged re-registration,
    /// [`crate::registrar::ReadView::refresh`]).
    pub fn holds(&self, entry: &Arc<PeEntry>) -> bool {
        let s = self.lock();
        s.by_id
            .get(&entry.pool_element.pe_id)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// The state, for the core's changes ([`super::Pool`]).
    pub(super) fn lock(&self) -> MutexGuard<'_, Selectable> {
        // A panic while it was held left a whole state (each change is one call that
        // cannot fail half-way): keep serving it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pools of every namespace, as readers find them.
#[derive(Debug, Default)]
pub struct HandlespaceView {
    pools: RwLock<HashMap<Namespace, HashMap<PoolHandle, Arc<PoolView>>>>,
}

impl HandlespaceView {
    /// The pool `handle` of `namespace`, if it has PEs.
    pub fn pool(&self, namespace: &Namespace, handle: &PoolHandle) -> Option<Arc<PoolView>> {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        pools.get(namespace)?.get(handle).cloned()
    }

    pub(super) fn publish(&self, namespace: &Namespace, handle: &PoolHandle, pool: Arc<PoolView>) {
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        pools
            .entry(namespace.clone())
            .or_default()
            .insert(handle.clone(), pool);
    }

    pub(super) fn withdraw(&self, namespace: &Namespace, handle: &PoolHandle) {
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(ns) = pools.get_mut(namespace) {
            ns.remove(handle);
            if ns.is_empty() {
                pools.remove(namespace);
            }
        }
    }
}
