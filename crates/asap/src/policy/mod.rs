//! Pool member selection policies (RFC 5356, spec §5).
//!
//! Pure: no I/O, no clock, and randomness only from the [`Rng`] the caller passes in
//! (a registrar's seeded core RNG, STYLE.md §2), so runs replay from a seed.
//!
//! - [`Selector`]: the one interface every policy implements. The registrar uses it to
//!   choose *n* PEs for a Handle Resolution Response, the pool user to choose one PE from
//!   its cache (spec §5.2: both apply the same rule).
//! - [`PoolSelection`]: a pool's selector; the first PE fixes the pool's policy type and a
//!   PE with another type is refused with cause 0x5 (spec §5.3).
//! - [`PolicyRegistry`]: policy type → selector factory, by default the nine RFC policies;
//!   a new policy is registered there, without touching the registrar. Types of the
//!   private range ([`PolicyType::PRIVATE`]) it has no selector for are selected round
//!   robin ([`RoundRobinFallback`], docs/PROTOCOL-EXTENSIONS.md).
//! - PE labels and PU hints (project parameters, docs/PROTOCOL-EXTENSIONS.md) reach a
//!   selector through [`Selector::insert_or_update_labeled`] and
//!   [`Selector::select_hinted`]; the nine RFC policies ignore them.
//!
//! The nine policies come in two families, each with a small rule trait:
//! [`OrderedSelector`] + [`OrderRule`] (RR, WRR, PRI, LU, LUD, PLU: a sorted set, ties
//! broken round robin as in rsplib) and [`RandomSelector`] + [`WeightRule`] (RAND, WRAND,
//! RLU: a Fenwick tree of weights). Every operation costs O(log n) in the pool size;
//! selecting *k* PEs costs O(k log n). Round Robin, whose key is the same for all, is
//! served by [`CycleSelector`], a queue in the same order at O(1) per PE selected.

mod cycle;
mod distance;
mod least_used;
mod ordered;
mod priority;
mod random;
mod registry;
mod round_robin;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use rand_core::Rng;

pub use cycle::CycleSelector;
pub use distance::{DistanceValues, FULL_LOAD, LeastUsedDistance, MAX_RTT, UNMEASURED_RTT};
pub use least_used::{LeastUsed, LeastUsedDegradation, LudState, PriorityLeastUsed};
pub use ordered::{OrderRule, OrderedSelector};
pub use priority::Priority;
pub use random::{Random, RandomSelector, RandomizedLeastUsed, WeightRule, WeightedRandom};
pub use registry::{PolicyRegistry, PoolSelection, RoundRobinFallback, SelectorFactory};
pub use round_robin::{RoundRobin, WeightedRoundRobin, WrrState};

use crate::wire::param::{Labels, PeId, Policy, PolicyType};

/// One pool's selection state for one policy type: the PEs with their policy values, and
/// whatever the policy remembers between selections (position in the cycle, accumulated
/// degradation). Spec §5.2.
///
/// Implementations must cost at most O(log n) per operation in the pool size *n* (rsplib
/// uses red-black trees), because a registrar serves pools of 100,000 PEs.
pub trait Selector: Send {
    /// The policy type this selector serves.
    fn policy_type(&self) -> PolicyType;

    /// Adds `pe` with its policy values, or applies its re-registration: new values
    /// replace the old ones, and state tied to the old values is forgotten (LUD's
    /// accumulated degradation, spec §5.2).
    ///
    /// # Errors
    /// [`PolicyError::InconsistentPolicy`] when `policy` is of another type; nothing
    /// changes then.
    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError>;

    /// [`Self::insert_or_update`] with the PE's labels (project parameter, spec §12.9
    /// style; empty when it registered none). A policy that selects by label keeps them;
    /// the default, for policies that do not, ignores them.
    ///
    /// # Errors
    /// As [`Self::insert_or_update`].
    fn insert_or_update_labeled(
        &mut self,
        pe: PeId,
        policy: &Policy,
        labels: &Labels,
    ) -> Result<(), PolicyError> {
        let _ = labels;
        self.insert_or_update(pe, policy)
    }

    /// The round trip a registrar measured to `pe` (keep-alive → ack, at the application
    /// level; `None`: not measured, e.g. a peer's PE). Policies that select by distance
    /// ([`LeastUsedDistance`]) keep it; the default ignores it.
    fn set_round_trip(&mut self, pe: PeId, rtt: Option<Duration>) {
        let _ = (pe, rtt);
    }

    /// Removes `pe`; returns whether it was there.
    fn remove(&mut self, pe: PeId) -> bool;

    /// Appends up to `n` distinct PEs to `out`, in selection order (the first is the most
    /// preferred). Fewer when the pool has fewer selectable PEs (weight 0 never is).
    /// Selecting advances the policy's state, e.g. a round robin cycle by the number of
    /// PEs selected.
    fn select(&mut self, n: usize, rng: &mut dyn Rng, out: &mut Vec<PeId>);

    /// [`Self::select`] for a pool user that sent hints with its handle resolution
    /// (key=value pairs, the labels' form; empty when it sent none). A policy that
    /// matches hints against labels overrides it; the default ignores the hints.
    fn select_hinted(&mut self, n: usize, hints: &Labels, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        let _ = hints;
        self.select(n, rng, out);
    }

    /// How many PEs are registered (selectable or not).
    fn len(&self) -> usize;

    /// Whether no PE is registered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `pe` is registered.
    fn contains(&self, pe: PeId) -> bool;
}

impl fmt::Debug for dyn Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("policy_type", &self.policy_type())
            .field("pes", &self.len())
            .finish()
    }
}

/// Why a PE's policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The PE's policy type differs from the pool's (spec §5.3). Answered with cause 0x5
    /// "Inconsistent Pooling Policy" carrying the offending policy parameter.
    #[error("inconsistent pooling policy: the pool uses {pool:?}, the PE offered {offered:?}")]
    InconsistentPolicy {
        /// The pool's policy type, fixed by its first PE.
        pool: PolicyType,
        /// The refused policy parameter.
        offered: Policy,
    },
    /// No selector is registered for this policy type and it is not a private type (spec
    /// §5.1: only the nine RFC types are accepted). Answered with cause 0x3 "Invalid
    /// Values".
    #[error("unsupported pool member selection policy {0:?}")]
    UnsupportedPolicy(PolicyType),
    /// The policy's values do not parse for its type (a private policy with the wrong
    /// number of bytes). Answered with cause 0x3 "Invalid Values".
    #[error("invalid values for pool member selection policy {0:?}")]
    InvalidValues(Policy),
}

impl PolicyError {
    /// Cause code 0x3, Invalid Values (spec §4.7).
    pub const CAUSE_INVALID_VALUES: u16 = 0x3;
    /// Cause code 0x5, Inconsistent Pooling Policy (spec §4.7).
    pub const CAUSE_INCONSISTENT_POOLING_POLICY: u16 = 0x5;

    /// The spec §4.7 error cause code to answer the registration with.
    pub const fn cause_code(&self) -> u16 {
        match self {
            Self::InconsistentPolicy { .. } => Self::CAUSE_INCONSISTENT_POOLING_POLICY,
            Self::UnsupportedPolicy(_) | Self::InvalidValues(_) => Self::CAUSE_INVALID_VALUES,
        }
    }
}
