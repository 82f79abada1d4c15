//! Round Robin as a queue (spec §5.2 RR): the order of `OrderedSelector<RoundRobin>`,
//! whose key is the same for every PE, so that its B-tree is only a first-in first-out
//! queue of the PEs by the last time each was selected (or registered). A queue does the
//! same at O(1) per selected PE instead of two B-tree operations (a registrar runs it for
//! each resolution it answers, issue 20).
//!
//! A removed PE is not searched for in the queue: its place is left there, stale, and
//! skipped when it reaches the front; the queue is compacted when stale places outnumber
//! live ones, so it holds at most twice the PEs (plus a small constant).

use std::collections::{HashMap, VecDeque};
use std::fmt;

use rand_core::Rng;

use super::{PolicyError, Selector};
use crate::wire::param::{PeId, Policy, PolicyType};

/// Compaction leaves alone a queue of at most this many stale places more than live ones.
const SLACK: usize = 32;

/// The Round Robin selector: every PE in turn, in registration order, each selection
/// continuing after the PE selected last; a PE registered (again, after a removal) joins
/// at the back, a re-registration keeps its place.
#[derive(Default)]
pub struct CycleSelector {
    /// Places in selection order: a slot and the generation it was queued with.
    queue: VecDeque<(usize, u64)>,
    /// The PEs by slot, with the generation of their one live place; freed slots are
    /// `None` and listed in `free`.
    slots: Vec<Option<(PeId, u64)>>,
    free: Vec<usize>,
    index: HashMap<PeId, usize>,
    next_gen: u64,
    /// The slots taken out during one `select`, kept to reuse the allocation.
    taken: Vec<usize>,
}

impl CycleSelector {
    /// An empty selector.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue_back(&mut self, slot: usize) {
        let generation = self.next_gen;
        // 2^64 places never happen; wrapping keeps this total without a panic path.
        self.next_gen = self.next_gen.wrapping_add(1);
        if let Some(Some((_, g))) = self.slots.get_mut(slot) {
            *g = generation;
        }
        self.queue.push_back((slot, generation));
    }

    fn live(&self, (slot, generation): (usize, u64)) -> bool {
        matches!(self.slots.get(slot), Some(Some((_, g))) if *g == generation)
    }

    /// Drops the stale places once they outnumber the live ones.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.index.len() + SLACK {
            let slots = &self.slots;
            self.queue
                .retain(|&(slot, g)| matches!(slots.get(slot), Some(Some((_, l))) if *l == g));
        }
    }

    /// Places in the queue, stale ones included (tests).
    #[cfg(test)]
    pub(crate) fn places(&self) -> usize {
        self.queue.len()
    }

    /// The PEs in selection order (test oracle).
    #[cfg(test)]
    pub(crate) fn ordered_pes(&self) -> Vec<PeId> {
        self.queue
            .iter()
            .filter(|&&place| self.live(place))
            .filter_map(|&(slot, _)| self.slots[slot].map(|(pe, _)| pe))
            .collect()
    }
}

impl fmt::Debug for CycleSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CycleSelector")
            .field("pes", &self.index.len())
            .field("places", &self.queue.len())
            .finish()
    }
}

impl Selector for CycleSelector {
    fn policy_type(&self) -> PolicyType {
        PolicyType::ROUND_ROBIN
    }

    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError> {
        if !matches!(policy, Policy::RoundRobin) {
            return Err(PolicyError::InconsistentPolicy {
                pool: PolicyType::ROUND_ROBIN,
                offered: *policy,
            });
        }
        if self.index.contains_key(&pe) {
            return Ok(()); // A re-registration keeps its place.
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some((pe, 0));
                slot
            }
            None => {
                self.slots.push(Some((pe, 0)));
                self.slots.len() - 1
            }
        };
        self.index.insert(pe, slot);
        self.queue_back(slot);
        Ok(())
    }

    fn remove(&mut self, pe: PeId) -> bool {
        let Some(slot) = self.index.remove(&pe) else {
            return false;
        };
        self.slots[slot] = None;
        self.free.push(slot);
        self.compact();
        true
    }

    fn select(&mut self, n: usize, _rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        // All n leave the queue before any returns to its back, so one response holds
        // distinct PEs and advances the cycle by n (spec §5.2, RR).
        while self.taken.len() < n {
            let Some(place) = self.queue.pop_front() else {
                break;
            };
            if self.live(place) {
                self.taken.push(place.0);
            }
        }
        let mut taken = std::mem::take(&mut self.taken);
        for slot in taken.drain(..) {
            if let Some(Some((pe, _))) = self.slots.get(slot) {
                out.push(*pe);
                self.queue_back(slot);
            }
        }
        self.taken = taken;
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn contains(&self, pe: PeId) -> bool {
        self.index.contains_key(&pe)
    }
}
