//! Priority (0x00000005). Spec §5.2; RFC 5356 §4.1.5.

use super::ordered::OrderRule;
use crate::wire::param::{Policy, PolicyType};

/// Priority: the highest `priority` value first; equal priorities round robin.
#[derive(Debug, Clone, Copy, Default)]
pub struct Priority;

impl OrderRule for Priority {
    type Values = u32;
    type State = u32;

    const POLICY_TYPE: PolicyType = PolicyType::PRIORITY;

    fn values(policy: &Policy) -> Option<u32> {
        match *policy {
            Policy::Priority { priority } => Some(priority),
            _ => None,
        }
    }

    fn new_state(priority: u32, _front: u64) -> u32 {
        priority
    }

    fn update(state: &mut u32, priority: u32, _front: u64) {
        *state = priority;
    }

    fn key(priority: &u32) -> Option<u64> {
        // Smallest key first, so invert.
        Some(u64::from(u32::MAX - *priority))
    }
}
