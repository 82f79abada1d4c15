//! Which selector serves which policy type, and the pool-level rule that one pool has one
//! policy type (spec §5.3).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rand_core::Rng;

use super::{
    CycleSelector, LeastUsed, LeastUsedDegradation, LeastUsedDistance, OrderedSelector,
    PolicyError, Priority, PriorityLeastUsed, Random, RandomSelector, RandomizedLeastUsed,
    Selector, WeightedRandom, WeightedRoundRobin,
};
use crate::wire::param::{Labels, PeId, Policy, PolicyType};

/// Makes an empty selector for one policy type.
pub type SelectorFactory = Arc<dyn Fn() -> Box<dyn Selector> + Send + Sync>;

/// Maps a policy type to the factory of its selector: the plug-in point for policies.
///
/// [`PolicyRegistry::default`] serves the nine RFC 5356 policies (spec §5.1) and the
/// project's built-in private ones ([`PolicyRegistry::standard`]). Registrars
/// and pool users only ever go through the registry, so a new policy is one
/// [`PolicyRegistry::register`] call.
#[derive(Clone)]
pub struct PolicyRegistry {
    factories: BTreeMap<PolicyType, SelectorFactory>,
}

impl PolicyRegistry {
    /// A registry without any policy.
    pub fn empty() -> Self {
        Self {
            factories: BTreeMap::new(),
        }
    }

    /// A registry with the nine RFC 5356 policies (spec §5.1).
    pub fn rfc5356() -> Self {
        let mut registry = Self::empty();
        registry.register_rule::<CycleSelector>(PolicyType::ROUND_ROBIN);
        registry
            .register_rule::<OrderedSelector<WeightedRoundRobin>>(PolicyType::WEIGHTED_ROUND_ROBIN);
        registry.register_rule::<RandomSelector<Random>>(PolicyType::RANDOM);
        registry.register_rule::<RandomSelector<WeightedRandom>>(PolicyType::WEIGHTED_RANDOM);
        registry.register_rule::<OrderedSelector<Priority>>(PolicyType::PRIORITY);
        registry.register_rule::<OrderedSelector<LeastUsed>>(PolicyType::LEAST_USED);
        registry.register_rule::<OrderedSelector<LeastUsedDegradation>>(
            PolicyType::LEAST_USED_DEGRADATION,
        );
        registry
            .register_rule::<OrderedSelector<PriorityLeastUsed>>(PolicyType::PRIORITY_LEAST_USED);
        registry.register_rule::<RandomSelector<RandomizedLeastUsed>>(
            PolicyType::RANDOMIZED_LEAST_USED,
        );
        registry
    }

    /// The nine RFC 5356 policies and the project's built-in private ones: Least Used with
    /// Distance Penalty ([`LeastUsedDistance`], docs/PROTOCOL-EXTENSIONS.md §3). What
    /// registrars (`enrpd`) and pool users serve by default.
    pub fn standard() -> Self {
        let mut registry = Self::rfc5356();
        registry.register_rule::<LeastUsedDistance>(LeastUsedDistance::POLICY_TYPE);
        registry
    }

    fn register_rule<S: Selector + Default + 'static>(&mut self, ty: PolicyType) {
        self.register(ty, || Box::new(S::default()));
    }

    /// Serves `ty` with selectors made by `factory`, replacing and returning any factory
    /// registered for `ty` before. The selectors it makes must report `ty` as their
    /// [`Selector::policy_type`].
    pub fn register(
        &mut self,
        ty: PolicyType,
        factory: impl Fn() -> Box<dyn Selector> + Send + Sync + 'static,
    ) -> Option<SelectorFactory> {
        self.factories.insert(ty, Arc::new(factory))
    }

    /// Stops serving `ty`; returns whether it was served.
    pub fn unregister(&mut self, ty: PolicyType) -> bool {
        self.factories.remove(&ty).is_some()
    }

    /// Whether `ty` has a selector registered (a private type without one is still
    /// accepted, selected by [`RoundRobinFallback`]).
    pub fn supports(&self, ty: PolicyType) -> bool {
        self.factories.contains_key(&ty)
    }

    /// The served policy types, in ascending order.
    pub fn policy_types(&self) -> impl Iterator<Item = PolicyType> + '_ {
        self.factories.keys().copied()
    }

    /// Whether pools of type `ty` are selected by [`RoundRobinFallback`] here: a private
    /// type without a registered selector (docs/PROTOCOL-EXTENSIONS.md).
    pub fn falls_back(&self, ty: PolicyType) -> bool {
        ty.is_private() && !self.supports(ty)
    }

    /// An empty selector for `ty`: the registered one; for a private type without one,
    /// a [`RoundRobinFallback`]; otherwise [`PolicyError::UnsupportedPolicy`] (spec §5.1:
    /// Invalid Values, cause 0x3).
    pub fn selector(&self, ty: PolicyType) -> Result<Box<dyn Selector>, PolicyError> {
        match self.factories.get(&ty) {
            Some(factory) => Ok(factory()),
            None if ty.is_private() => Ok(Box::new(RoundRobinFallback::new(ty))),
            None => Err(PolicyError::UnsupportedPolicy(ty)),
        }
    }
}

impl Default for PolicyRegistry {
    fn default() -> Self {
        Self::standard()
    }
}

impl fmt::Debug for PolicyRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

/// The selector of a private policy type that a registry has no selector for
/// (docs/PROTOCOL-EXTENSIONS.md): it accepts that type's PEs, whatever their values, and
/// selects them round robin (spec §5.2 RR). The PEs' policy parameters are not changed:
/// they travel on as registered, so a registrar or pool user that has the policy applies it.
pub struct RoundRobinFallback {
    policy_type: PolicyType,
    inner: CycleSelector,
}

impl RoundRobinFallback {
    /// An empty fallback selector for `policy_type`.
    pub fn new(policy_type: PolicyType) -> Self {
        Self {
            policy_type,
            inner: CycleSelector::new(),
        }
    }
}

impl Selector for RoundRobinFallback {
    fn policy_type(&self) -> PolicyType {
        self.policy_type
    }

    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError> {
        if policy.policy_type() != self.policy_type {
            return Err(PolicyError::InconsistentPolicy {
                pool: self.policy_type,
                offered: *policy,
            });
        }
        self.inner.insert_or_update(pe, &Policy::RoundRobin)
    }

    fn remove(&mut self, pe: PeId) -> bool {
        self.inner.remove(pe)
    }

    fn select(&mut self, n: usize, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        self.inner.select(n, rng, out);
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn contains(&self, pe: PeId) -> bool {
        self.inner.contains(pe)
    }
}

/// The selection state of one pool: its policy type, fixed by the first PE, and the
/// selector that serves it. Spec §5.3.
///
/// A PE with another policy type is refused with [`PolicyError::InconsistentPolicy`]
/// (cause 0x5); differing values (weights, loads) are fine. When the last PE leaves, the
/// policy is forgotten and the next PE fixes it anew.
#[derive(Default)]
pub struct PoolSelection {
    selector: Option<Box<dyn Selector>>,
}

impl PoolSelection {
    /// A pool without PEs (and so without a policy yet).
    pub fn new() -> Self {
        Self { selector: None }
    }

    /// The pool's policy type; `None` while the pool is empty.
    pub fn policy_type(&self) -> Option<PolicyType> {
        self.selector.as_ref().map(|s| s.policy_type())
    }

    /// Registers `pe` or applies its re-registration.
    ///
    /// # Errors
    /// [`PolicyError::InconsistentPolicy`] (cause 0x5) when the pool has another policy
    /// type; [`PolicyError::UnsupportedPolicy`] (cause 0x3) when the first PE's policy type
    /// is not in `registry`. Nothing changes on error.
    pub fn insert_or_update(
        &mut self,
        registry: &PolicyRegistry,
        pe: PeId,
        policy: &Policy,
    ) -> Result<(), PolicyError> {
        self.insert_or_update_labeled(registry, pe, policy, &Labels::default())
    }

    /// [`Self::insert_or_update`] with the PE's labels, for policies that read them
    /// ([`Selector::insert_or_update_labeled`]).
    ///
    /// # Errors
    /// As [`Self::insert_or_update`].
    pub fn insert_or_update_labeled(
        &mut self,
        registry: &PolicyRegistry,
        pe: PeId,
        policy: &Policy,
        labels: &Labels,
    ) -> Result<(), PolicyError> {
        let offered = policy.policy_type();
        if let Some(selector) = &mut self.selector {
            let pool = selector.policy_type();
            if pool != offered {
                return Err(PolicyError::InconsistentPolicy {
                    pool,
                    offered: *policy,
                });
            }
            return selector.insert_or_update_labeled(pe, policy, labels);
        }
        let mut selector = registry.selector(offered)?;
        if selector.policy_type() != offered {
            // A misconfigured plug-in; refuse rather than fix the pool to a wrong type.
            return Err(PolicyError::UnsupportedPolicy(offered));
        }
        selector.insert_or_update_labeled(pe, policy, labels)?;
        self.selector = Some(selector);
        Ok(())
    }

    /// Removes `pe`; returns whether it was there. Removing the last PE forgets the
    /// policy (spec §5.3).
    pub fn remove(&mut self, pe: PeId) -> bool {
        let Some(selector) = &mut self.selector else {
            return false;
        };
        let removed = selector.remove(pe);
        if selector.is_empty() {
            self.selector = None;
        }
        removed
    }

    /// Appends up to `n` distinct PEs to `out`, in selection order, by the pool's policy
    /// (spec §5.2); fewer when the pool has fewer selectable PEs.
    pub fn select(&mut self, n: usize, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        if let Some(selector) = &mut self.selector {
            selector.select(n, rng, out);
        }
    }

    /// Tells the pool's selector the measured round trip to `pe`
    /// ([`Selector::set_round_trip`]).
    pub fn set_round_trip(&mut self, pe: PeId, rtt: Option<std::time::Duration>) {
        if let Some(selector) = &mut self.selector {
            selector.set_round_trip(pe, rtt);
        }
    }

    /// [`Self::select`] with a pool user's hints ([`Selector::select_hinted`]).
    pub fn select_hinted(
        &mut self,
        n: usize,
        hints: &Labels,
        rng: &mut dyn Rng,
        out: &mut Vec<PeId>,
    ) {
        if let Some(selector) = &mut self.selector {
            selector.select_hinted(n, hints, rng, out);
        }
    }

    /// One PE by the pool's policy (a pool user choosing from its cache).
    pub fn select_one(&mut self, rng: &mut dyn Rng) -> Option<PeId> {
        let mut out = Vec::with_capacity(1);
        self.select(1, rng, &mut out);
        out.pop()
    }

    /// How many PEs the pool has.
    pub fn len(&self) -> usize {
        self.selector.as_ref().map_or(0, |s| s.len())
    }

    /// Whether the pool has no PEs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `pe` is in the pool.
    pub fn contains(&self, pe: PeId) -> bool {
        self.selector.as_ref().is_some_and(|s| s.contains(pe))
    }
}

impl fmt::Debug for PoolSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolSelection")
            .field("policy_type", &self.policy_type())
            .field("pes", &self.len())
            .finish()
    }
}
