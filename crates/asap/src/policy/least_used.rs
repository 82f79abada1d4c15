//! The load-based ordered policies: Least Used (0x40000001), Least Used with Degradation
//! (0x40000002) and Priority Least Used (0x40000003). Spec §5.2; RFC 5356 §4.2.
//!
//! Loads are fractions of `u32::MAX` (spec §5.1); sums are kept in `u64` so that
//! load + degradation never wraps.

use super::ordered::OrderRule;
use crate::wire::param::{Load, Policy, PolicyType};

/// Least Used: the lowest load first; equal loads round robin.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastUsed;

impl OrderRule for LeastUsed {
    type Values = Load;
    type State = Load;

    const POLICY_TYPE: PolicyType = PolicyType::LEAST_USED;

    fn values(policy: &Policy) -> Option<Load> {
        match *policy {
            Policy::LeastUsed { load } => Some(load),
            _ => None,
        }
    }

    fn new_state(load: Load, _front: u64) -> Load {
        load
    }

    fn update(state: &mut Load, load: Load, _front: u64) {
        *state = load;
    }

    fn key(load: &Load) -> Option<u64> {
        Some(u64::from(*load))
    }
}

/// Least Used with Degradation: like [`LeastUsed`], but each selection adds the PE's load
/// degradation to the selector's own copy of its load, until the PE re-registers with a
/// fresh load (rsplib resets its degradation counter on update).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastUsedDegradation;

/// Per-PE state of [`LeastUsedDegradation`].
#[derive(Debug, Clone, Copy)]
pub struct LudState {
    load: Load,
    degradation: Load,
    /// Degradation accumulated by selections since the last (re-)registration.
    accumulated: u64,
}

impl OrderRule for LeastUsedDegradation {
    type Values = (Load, Load);
    type State = LudState;

    const POLICY_TYPE: PolicyType = PolicyType::LEAST_USED_DEGRADATION;

    fn values(policy: &Policy) -> Option<(Load, Load)> {
        match *policy {
            Policy::LeastUsedDegradation { load, degradation } => Some((load, degradation)),
            _ => None,
        }
    }

    fn new_state((load, degradation): (Load, Load), _front: u64) -> LudState {
        LudState {
            load,
            degradation,
            accumulated: 0,
        }
    }

    fn update(state: &mut LudState, values: (Load, Load), front: u64) {
        // The PE reported its load afresh, which already includes the work we sent it.
        *state = Self::new_state(values, front);
    }

    fn key(state: &LudState) -> Option<u64> {
        Some(u64::from(state.load).saturating_add(state.accumulated))
    }

    fn selected(state: &mut LudState) {
        state.accumulated = state
            .accumulated
            .saturating_add(u64::from(state.degradation));
    }
}

/// Priority Least Used: the lowest load + load degradation first, equal sums round robin.
/// The degradation is a static per-PE penalty here and is not accumulated.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriorityLeastUsed;

impl OrderRule for PriorityLeastUsed {
    type Values = (Load, Load);
    type State = u64;

    const POLICY_TYPE: PolicyType = PolicyType::PRIORITY_LEAST_USED;

    fn values(policy: &Policy) -> Option<(Load, Load)> {
        match *policy {
            Policy::PriorityLeastUsed { load, degradation } => Some((load, degradation)),
            _ => None,
        }
    }

    fn new_state((load, degradation): (Load, Load), _front: u64) -> u64 {
        u64::from(load) + u64::from(degradation)
    }

    fn update(state: &mut u64, values: (Load, Load), front: u64) {
        *state = Self::new_state(values, front);
    }

    fn key(sum: &u64) -> Option<u64> {
        Some(*sum)
    }
}
