//! Round Robin (0x00000001) and Weighted Round Robin (0x00000002). Spec §5.2; RFC 5356
//! §4.1.1, §4.1.2.

use super::ordered::OrderRule;
use crate::wire::param::{Policy, PolicyType};

/// Round Robin: cycle through the PEs in a fixed order (registration order); each
/// selection continues after the PE selected last.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl OrderRule for RoundRobin {
    type Values = ();
    type State = ();

    const POLICY_TYPE: PolicyType = PolicyType::ROUND_ROBIN;

    fn values(policy: &Policy) -> Option<()> {
        matches!(policy, Policy::RoundRobin).then_some(())
    }

    fn new_state((): (), _front: u64) {}

    fn update(_state: &mut (), (): (), _front: u64) {}

    fn key(_state: &()) -> Option<u64> {
        // One key for all: the order is the sequence number alone, i.e. the cycle.
        Some(0)
    }
}

/// Weighted Round Robin: like RR, but within one round a PE is selected `weight` times;
/// weight 0 is never selected.
///
/// As in rsplib, each PE counts the selections it has left in its round; when they run
/// out, the PE moves on to the next round. The key is the PE's round, so the PEs still
/// owed selections in the current round come first, in round robin order.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobin;

/// Per-PE state of [`WeightedRoundRobin`].
#[derive(Debug, Clone, Copy)]
pub struct WrrState {
    weight: u32,
    /// The round this PE is in.
    round: u64,
    /// Selections left in `round`; in `1..=weight` whenever `weight > 0`.
    remaining: u32,
}

impl OrderRule for WeightedRoundRobin {
    type Values = u32;
    type State = WrrState;

    const POLICY_TYPE: PolicyType = PolicyType::WEIGHTED_ROUND_ROBIN;

    fn values(policy: &Policy) -> Option<u32> {
        match *policy {
            Policy::WeightedRoundRobin { weight } => Some(weight),
            _ => None,
        }
    }

    fn new_state(weight: u32, front: u64) -> WrrState {
        // A newcomer joins the round being served, not round 0 (which would let it be
        // selected for many rounds in a row).
        WrrState {
            weight,
            round: front,
            remaining: weight,
        }
    }

    fn update(state: &mut WrrState, weight: u32, front: u64) {
        if state.weight == 0 {
            *state = Self::new_state(weight, front);
            return;
        }
        // Re-registrations are routine (every registration lifetime, spec §7.1), so they
        // keep the PE's place; a new weight applies to what is left of its round.
        let used = state.weight - state.remaining;
        state.weight = weight;
        if weight == 0 {
            state.remaining = 0;
        } else if used >= weight {
            state.round = state.round.saturating_add(1);
            state.remaining = weight;
        } else {
            state.remaining = weight - used;
        }
    }

    fn key(state: &WrrState) -> Option<u64> {
        (state.weight > 0).then_some(state.round)
    }

    fn selected(state: &mut WrrState) {
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining == 0 {
            state.round = state.round.saturating_add(1);
            state.remaining = state.weight;
        }
    }
}
