//! The machinery shared by the deterministic policies (RR, WRR, PRI, LU, LUD, PLU):
//! PEs kept sorted by a per-policy key, ties broken round robin. Spec §5.2.
//!
//! rsplib keeps each pool's PEs in a red-black tree ordered by the policy's key and a
//! sequence number; a selected PE gets a fresh sequence number, which moves it behind its
//! equals. We do the same with a `BTreeSet<(key, seq, slot)>` over a slab of per-PE
//! entries, so every operation costs O(log n) and selecting *k* PEs O(k log n). The map
//! from PE ID to slot is only needed to register or remove a PE: selection pops the first
//! tuples and reaches the entries by slot, without hashing or searching.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use rand_core::Rng;

use super::{PolicyError, Selector};
use crate::wire::param::{PeId, Policy, PolicyType};

/// The rule of one ordered policy: which key a PE sorts by (smallest first) and how a
/// selection or a re-registration changes it.
///
/// Implement it to add an ordered policy; [`OrderedSelector`] does the bookkeeping.
pub trait OrderRule: Send + 'static {
    /// The policy's values as parsed from a [`Policy`] (weight, load, ...).
    type Values: Copy;
    /// What the selector keeps per PE.
    type State: Send;

    /// The policy type this rule serves.
    const POLICY_TYPE: PolicyType;

    /// The values of `policy`; `None` when `policy` is of another type.
    fn values(policy: &Policy) -> Option<Self::Values>;

    /// The state of a newly registered PE. `front` is the smallest key currently in the
    /// order (0 when none), so a rule whose keys grow over time (WRR rounds) can place a
    /// newcomer at the current position instead of far ahead of everybody.
    fn new_state(values: Self::Values, front: u64) -> Self::State;

    /// Applies a re-registration (spec §7.1) with possibly new values.
    fn update(state: &mut Self::State, values: Self::Values, front: u64);

    /// The sort key, smallest selected first; `None` when the PE must never be selected
    /// (WRR weight 0).
    fn key(state: &Self::State) -> Option<u64>;

    /// Called once each time the PE is selected, before it moves behind its equals.
    fn selected(state: &mut Self::State) {
        let _ = state;
    }
}

struct Entry<S> {
    pe: PeId,
    /// Tie breaker: smaller was selected (or registered) longer ago.
    seq: u64,
    state: S,
}

/// A [`Selector`] for an ordered policy: the *n* PEs with the smallest keys, equal keys in
/// round robin order. Spec §5.2.
pub struct OrderedSelector<R: OrderRule> {
    /// Every selectable PE as `(key, seq, slot)`; `seq` is unique, so the tuples are too.
    order: BTreeSet<(u64, u64, usize)>,
    /// The PEs by slot; freed slots are `None` and listed in `free`.
    entries: Vec<Option<Entry<R::State>>>,
    free: Vec<usize>,
    index: HashMap<PeId, usize>,
    next_seq: u64,
    /// The slots taken out during one `select`, kept to reuse the allocation.
    taken: Vec<(u64, usize)>,
}

impl<R: OrderRule> OrderedSelector<R> {
    /// An empty selector.
    pub fn new() -> Self {
        Self {
            order: BTreeSet::new(),
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            next_seq: 0,
            taken: Vec::new(),
        }
    }

    fn fresh_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        // 2^64 selections never happen; wrapping keeps this total without a panic path.
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn front(&self) -> u64 {
        self.order.first().map_or(0, |&(key, _, _)| key)
    }

    /// The selectable PEs in selection order (test oracle).
    #[cfg(test)]
    pub(crate) fn ordered_pes(&self) -> Vec<PeId> {
        let pe = |slot: usize| self.entries[slot].as_ref().map(|e| e.pe);
        self.order
            .iter()
            .filter_map(|&(_, _, slot)| pe(slot))
            .collect()
    }

    /// Checks that the order, the slab and the index agree (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut selectable = 0;
        for (slot, entry) in self.entries.iter().enumerate() {
            let Some(entry) = entry else {
                assert!(self.free.contains(&slot));
                continue;
            };
            assert_eq!(self.index.get(&entry.pe), Some(&slot));
            if let Some(key) = R::key(&entry.state) {
                selectable += 1;
                assert!(
                    self.order.contains(&(key, entry.seq, slot)),
                    "{:?} not in order",
                    entry.pe
                );
            }
        }
        assert_eq!(selectable, self.order.len(), "stale tuples in the order");
        assert_eq!(self.index.len() + self.free.len(), self.entries.len());
        assert!(self.taken.is_empty());
    }
}

impl<R: OrderRule> Default for OrderedSelector<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: OrderRule> fmt::Debug for OrderedSelector<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderedSelector")
            .field("policy_type", &R::POLICY_TYPE)
            .field("pes", &self.index.len())
            .field("selectable", &self.order.len())
            .finish()
    }
}

impl<R: OrderRule> Selector for OrderedSelector<R> {
    fn policy_type(&self) -> PolicyType {
        R::POLICY_TYPE
    }

    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError> {
        let values = R::values(policy).ok_or(PolicyError::InconsistentPolicy {
            pool: R::POLICY_TYPE,
            offered: *policy,
        })?;
        let front = self.front();
        let Some(&slot) = self.index.get(&pe) else {
            let state = R::new_state(values, front);
            let key = R::key(&state);
            let seq = self.fresh_seq();
            let entry = Some(Entry { pe, seq, state });
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.entries[slot] = entry;
                    slot
                }
                None => {
                    self.entries.push(entry);
                    self.entries.len() - 1
                }
            };
            self.index.insert(pe, slot);
            if let Some(key) = key {
                self.order.insert((key, seq, slot));
            }
            return Ok(());
        };
        let fresh = self.next_seq;
        let Some(entry) = self.entries.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(()); // Unreachable: the index names live slots only.
        };
        let old_key = R::key(&entry.state);
        R::update(&mut entry.state, values, front);
        let new_key = R::key(&entry.state);
        if old_key == new_key {
            return Ok(());
        }
        if let Some(key) = old_key {
            self.order.remove(&(key, entry.seq, slot));
        }
        if let Some(key) = new_key {
            // A PE that was not selectable joins at the back of its equals; one that only
            // changed its key keeps its place among them.
            if old_key.is_none() {
                entry.seq = fresh;
                self.next_seq = self.next_seq.wrapping_add(1);
            }
            self.order.insert((key, entry.seq, slot));
        }
        Ok(())
    }

    fn remove(&mut self, pe: PeId) -> bool {
        let Some(slot) = self.index.remove(&pe) else {
            return false;
        };
        if let Some(entry) = self.entries.get_mut(slot).and_then(Option::take)
            && let Some(key) = R::key(&entry.state)
        {
            self.order.remove(&(key, entry.seq, slot));
        }
        self.free.push(slot);
        true
    }

    fn select(&mut self, n: usize, _rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        // All n leave the order before any returns, so one response holds distinct PEs
        // and advances the cycle by n (spec §5.2, RR).
        while self.taken.len() < n {
            let Some((_, _, slot)) = self.order.pop_first() else {
                break;
            };
            let seq = self.fresh_seq();
            self.taken.push((seq, slot));
        }
        for (seq, slot) in self.taken.drain(..) {
            let Some(entry) = self.entries.get_mut(slot).and_then(Option::as_mut) else {
                continue; // Unreachable: the order names live slots only.
            };
            out.push(entry.pe);
            R::selected(&mut entry.state);
            entry.seq = seq;
            if let Some(key) = R::key(&entry.state) {
                self.order.insert((key, seq, slot));
            }
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn contains(&self, pe: PeId) -> bool {
        self.index.contains_key(&pe)
    }
}
