//! The random policies: Random (0x00000003), Weighted Random (0x00000004) and Randomized
//! Least Used (0x40000004). Spec §5.2; RFC 5356 §4.1.3, §4.1.4, §4.2.4.
//!
//! All three draw a PE with probability proportional to a per-PE weight. The weights sit
//! in slots grouped into blocks of [`BLOCK`] with a Fenwick tree over the block sums, so a
//! draw descends the tree in O(log n) and scans one block, and an insert, update or
//! removal is O(log n) too. The tree has one entry per block rather than per slot so that
//! it stays in cache at 100,000 PEs (32 KiB instead of 1 MiB): the descent was
//! cache-miss bound. *k* distinct PEs are drawn by zeroing each chosen weight until the
//! response is complete.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use rand_core::Rng;

use super::{PolicyError, Selector};
use crate::wire::param::{Load, PeId, Policy, PolicyType};

/// The rule of one random policy: a PE's selection weight.
///
/// Implement it to add a random policy; [`RandomSelector`] does the sampling.
pub trait WeightRule: Send + 'static {
    /// The policy type this rule serves.
    const POLICY_TYPE: PolicyType;

    /// The selection weight of a PE registered with `policy` (0 = never selected);
    /// `None` when `policy` is of another type.
    fn weight(policy: &Policy) -> Option<u32>;
}

/// Random: every PE equally likely.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl WeightRule for Random {
    const POLICY_TYPE: PolicyType = PolicyType::RANDOM;

    fn weight(policy: &Policy) -> Option<u32> {
        matches!(policy, Policy::Random).then_some(1)
    }
}

/// Weighted Random: probability proportional to `weight`; weight 0 is never selected.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

impl WeightRule for WeightedRandom {
    const POLICY_TYPE: PolicyType = PolicyType::WEIGHTED_RANDOM;

    fn weight(policy: &Policy) -> Option<u32> {
        match *policy {
            Policy::WeightedRandom { weight } => Some(weight),
            _ => None,
        }
    }
}

/// Randomized Least Used: probability proportional to the free capacity
/// `0xFFFFFFFF − load`, at least 1 so that a fully loaded PE can still be picked.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomizedLeastUsed;

impl RandomizedLeastUsed {
    /// The selection weight for `load`.
    pub const fn weight_of(load: Load) -> u32 {
        let free = u32::MAX - load;
        if free == 0 { 1 } else { free }
    }
}

impl WeightRule for RandomizedLeastUsed {
    const POLICY_TYPE: PolicyType = PolicyType::RANDOMIZED_LEAST_USED;

    fn weight(policy: &Policy) -> Option<u32> {
        match *policy {
            Policy::RandomizedLeastUsed { load } => Some(Self::weight_of(load)),
            _ => None,
        }
    }
}

/// A uniform integer in `0..bound` (0 when `bound` is 0), without modulo bias.
///
/// Lemire's multiply-and-reject ("Fast Random Integer Generation in an Interval", 2019):
/// the high half of `x * bound` is uniform once the few low halves below
/// `2^64 mod bound` are rejected.
pub(crate) fn uniform_below(rng: &mut dyn Rng, bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut m = u128::from(rng.next_u64()) * u128::from(bound);
    if (m as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(bound);
        }
    }
    (m >> 64) as u64
}

/// Slots per block of the weight tree.
const BLOCK: usize = 32;

/// Slot weights and prefix sums over blocks of them (a Fenwick or binary indexed tree).
/// Sums are `u64`: even 2^32 slots of weight `u32::MAX` cannot overflow.
#[derive(Default)]
struct WeightTree {
    /// Each slot's weight.
    weights: Vec<u32>,
    /// Fenwick tree over the block sums, 1-based: `blocks.len() == cap + 1` with `cap` a
    /// power of two (or 0), which lets [`WeightTree::find`] descend by halving steps.
    blocks: Vec<u64>,
    /// Sum of `weights`.
    total: u64,
}

impl WeightTree {
    fn block_cap(&self) -> usize {
        self.blocks.len().saturating_sub(1)
    }

    /// Appends a slot of weight 0 and returns it; grows the tree by doubling, so the O(n)
    /// rebuild is amortised O(1) per slot.
    fn push_slot(&mut self) -> usize {
        let slot = self.weights.len();
        self.weights.push(0);
        if slot / BLOCK >= self.block_cap() {
            let cap = (slot / BLOCK + 1).next_power_of_two();
            self.blocks.clear();
            self.blocks.resize(cap + 1, 0);
            for (i, chunk) in self.weights.chunks(BLOCK).enumerate() {
                self.blocks[i + 1] = chunk.iter().map(|&w| u64::from(w)).sum();
            }
            for i in 1..=cap {
                let parent = i + (i & i.wrapping_neg());
                if parent <= cap {
                    self.blocks[parent] += self.blocks[i];
                }
            }
        }
        slot
    }

    /// Sets a slot's weight and returns the old one.
    fn set(&mut self, slot: usize, weight: u32) -> u32 {
        let old = std::mem::replace(&mut self.weights[slot], weight);
        let mut i = slot / BLOCK + 1;
        if weight > old {
            let delta = u64::from(weight - old);
            self.total += delta;
            while i < self.blocks.len() {
                self.blocks[i] += delta;
                i += i & i.wrapping_neg();
            }
        } else if old > weight {
            let delta = u64::from(old - weight);
            self.total -= delta;
            while i < self.blocks.len() {
                self.blocks[i] -= delta;
                i += i & i.wrapping_neg();
            }
        }
        old
    }

    /// The slot whose weight covers `target`, i.e. the first slot whose prefix sum
    /// exceeds `target`; `None` unless `target < total`. Never a zero-weight slot.
    fn find(&self, mut target: u64) -> Option<usize> {
        let cap = self.block_cap();
        let mut block = 0;
        let mut step = cap;
        while step > 0 {
            let next = block + step;
            if next <= cap && self.blocks[next] <= target {
                block = next;
                target -= self.blocks[next];
            }
            step >>= 1;
        }
        let base = block * BLOCK;
        let end = self.weights.len().min(base + BLOCK);
        for (i, &w) in self.weights.get(base..end)?.iter().enumerate() {
            let w = u64::from(w);
            if target < w {
                return Some(base + i);
            }
            target -= w;
        }
        None
    }

    /// Checks the block sums against the weights (tests only).
    #[cfg(test)]
    fn check(&self) {
        let mut prefix = 0u64;
        for (b, chunk) in self.weights.chunks(BLOCK).enumerate() {
            prefix += chunk.iter().map(|&w| u64::from(w)).sum::<u64>();
            let mut sum = 0u64;
            let mut i = b + 1;
            while i > 0 {
                sum += self.blocks[i];
                i -= i & i.wrapping_neg();
            }
            assert_eq!(sum, prefix, "prefix sum up to block {b}");
        }
        assert_eq!(prefix, self.total);
    }
}

/// A [`Selector`] drawing PEs at random with probability proportional to the weight its
/// [`WeightRule`] gives them; one response never holds a PE twice. Spec §5.2.
pub struct RandomSelector<W: WeightRule> {
    /// The PE in each slot; freed slots are `None`, weigh 0 and are listed in `free`.
    slots: Vec<Option<PeId>>,
    free: Vec<usize>,
    index: HashMap<PeId, usize>,
    tree: WeightTree,
    /// The slots and weights taken out during one `select`, kept to reuse the allocation.
    taken: Vec<(usize, u32)>,
    rule: PhantomData<fn() -> W>,
}

impl<W: WeightRule> RandomSelector<W> {
    /// An empty selector.
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            tree: WeightTree::default(),
            taken: Vec::new(),
            rule: PhantomData,
        }
    }

    fn alloc_slot(&mut self, pe: PeId) -> usize {
        if let Some(slot) = self.free.pop() {
            self.slots[slot] = Some(pe);
            return slot;
        }
        self.slots.push(Some(pe));
        self.tree.push_slot()
    }

    /// The selection weight of each PE (test oracle).
    #[cfg(test)]
    pub(crate) fn weights(&self) -> HashMap<PeId, u32> {
        self.index
            .iter()
            .map(|(&pe, &slot)| (pe, self.tree.weights[slot]))
            .collect()
    }

    /// Checks that slots, index and tree agree (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.tree.check();
        assert_eq!(self.slots.len(), self.tree.weights.len());
        for (slot, pe) in self.slots.iter().enumerate() {
            match pe {
                Some(pe) => assert_eq!(self.index.get(pe), Some(&slot)),
                None => {
                    assert_eq!(self.tree.weights[slot], 0);
                    assert!(self.free.contains(&slot));
                }
            }
        }
        assert_eq!(self.index.len() + self.free.len(), self.slots.len());
        assert!(self.taken.is_empty());
    }
}

impl<W: WeightRule> Default for RandomSelector<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: WeightRule> fmt::Debug for RandomSelector<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomSelector")
            .field("policy_type", &W::POLICY_TYPE)
            .field("pes", &self.index.len())
            .field("total_weight", &self.tree.total)
            .finish()
    }
}

impl<W: WeightRule> Selector for RandomSelector<W> {
    fn policy_type(&self) -> PolicyType {
        W::POLICY_TYPE
    }

    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError> {
        let weight = W::weight(policy).ok_or(PolicyError::InconsistentPolicy {
            pool: W::POLICY_TYPE,
            offered: *policy,
        })?;
        let slot = match self.index.get(&pe) {
            Some(&slot) => slot,
            None => {
                let slot = self.alloc_slot(pe);
                self.index.insert(pe, slot);
                slot
            }
        };
        self.tree.set(slot, weight);
        Ok(())
    }

    fn remove(&mut self, pe: PeId) -> bool {
        let Some(slot) = self.index.remove(&pe) else {
            return false;
        };
        self.tree.set(slot, 0);
        self.slots[slot] = None;
        self.free.push(slot);
        true
    }

    fn select(&mut self, n: usize, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        let mut picked = 0;
        while picked < n && self.tree.total > 0 {
            // Always a live slot: free slots weigh 0 and are never found.
            let Some(slot) = self.tree.find(uniform_below(rng, self.tree.total)) else {
                break;
            };
            let Some(pe) = self.slots[slot] else {
                break;
            };
            out.push(pe);
            picked += 1;
            // Take the chosen weight out until the response is complete, so the next draw
            // is among the others (spec §5.2: a PE at most once per response). The last
            // pick needs no removal.
            if picked < n {
                let weight = self.tree.set(slot, 0);
                self.taken.push((slot, weight));
            }
        }
        for (slot, weight) in self.taken.drain(..) {
            self.tree.set(slot, weight);
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn contains(&self, pe: PeId) -> bool {
        self.index.contains_key(&pe)
    }
}
