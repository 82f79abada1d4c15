//! A pool member selection policy of rsp's private range (docs/PROTOCOL-EXTENSIONS.md),
//! plugged into a [`PolicyRegistry`]: **same zone first**. PEs register with a `zone`
//! label (`rsp pe --label zone=a`); a pool user that sends a `zone` hint (`rsp resolve
//! --hint zone=a`) gets the PEs of its zone first, then the others, round robin within
//! each group. Without a hint it is plain round robin.
//!
//! To use it, register it where selection happens:
//!
//! ```no_run
//! // A registrar (crates/enrp), started by your own program instead of `enrpd run`:
//! // enrp::run_with(config, |s| s.registrar.policies = custom_policy::registry()).await?;
//! // A pool user (crates/asap, feature client):
//! // PoolUser::new(trust, pu_config).with_registry(custom_policy::registry());
//! let registry = custom_policy::registry();
//! assert!(registry.supports(custom_policy::SAME_ZONE_FIRST));
//! ```
//!
//! PEs choose the policy with `Policy::private(SAME_ZONE_FIRST, &[])` as their
//! `PeConfig::policy`. A registrar without this crate still accepts them and selects them
//! round robin (`asap::policy::RoundRobinFallback`).

use std::collections::HashMap;

use asap::policy::{OrderedSelector, PolicyError, PolicyRegistry, RoundRobin, Selector};
use asap::wire::param::{Labels, PeId, Policy, PolicyType};
use rand_core::Rng;

/// The policy's type number, in the private range 0xFF000000–0xFFFFFFFE.
pub const SAME_ZONE_FIRST: PolicyType = PolicyType(0xFF00_0001);

/// The label (PE) and hint (PU) key it reads.
pub const ZONE: &str = "zone";

/// The nine RFC 5356 policies plus [`SameZoneFirst`].
pub fn registry() -> PolicyRegistry {
    let mut registry = PolicyRegistry::rfc5356();
    registry.register(SAME_ZONE_FIRST, || Box::<SameZoneFirst>::default());
    registry
}

/// The selector: every PE in one round robin order, and each zone's PEs in one of their
/// own. Each operation costs O(log n) (a registrar serves pools of 100,000 PEs), selecting
/// *k* PEs O(k log n).
#[derive(Default)]
pub struct SameZoneFirst {
    all: OrderedSelector<RoundRobin>,
    zones: HashMap<String, OrderedSelector<RoundRobin>>,
    zone_of: HashMap<PeId, String>,
}

impl SameZoneFirst {
    fn leave_zone(&mut self, pe: PeId) {
        if let Some(zone) = self.zone_of.remove(&pe)
            && let Some(members) = self.zones.get_mut(&zone)
        {
            members.remove(pe);
            if members.is_empty() {
                self.zones.remove(&zone);
            }
        }
    }
}

impl Selector for SameZoneFirst {
    fn policy_type(&self) -> PolicyType {
        SAME_ZONE_FIRST
    }

    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError> {
        self.insert_or_update_labeled(pe, policy, &Labels::default())
    }

    fn insert_or_update_labeled(
        &mut self,
        pe: PeId,
        policy: &Policy,
        labels: &Labels,
    ) -> Result<(), PolicyError> {
        if policy.policy_type() != SAME_ZONE_FIRST {
            return Err(PolicyError::InconsistentPolicy {
                pool: SAME_ZONE_FIRST,
                offered: *policy,
            });
        }
        self.all.insert_or_update(pe, &Policy::RoundRobin)?;
        // A re-registration may move the PE to another zone (or out of any).
        self.leave_zone(pe);
        if let Some(zone) = labels.get(ZONE) {
            self.zones
                .entry(zone.to_owned())
                .or_default()
                .insert_or_update(pe, &Policy::RoundRobin)?;
            self.zone_of.insert(pe, zone.to_owned());
        }
        Ok(())
    }

    fn remove(&mut self, pe: PeId) -> bool {
        self.leave_zone(pe);
        self.all.remove(pe)
    }

    fn select(&mut self, n: usize, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        self.all.select(n, rng, out);
    }

    fn select_hinted(&mut self, n: usize, hints: &Labels, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        let start = out.len();
        if let Some(zone) = hints.get(ZONE).and_then(|z| self.zones.get_mut(z)) {
            zone.select(n, rng, out);
        }
        let near = out.len() - start;
        if near < n {
            // Then the others, round robin: `n` selections give `n - near` others even
            // when all `near` zone PEs chosen come up again (they are skipped).
            let mut rest = Vec::with_capacity(n);
            self.all.select(n, rng, &mut rest);
            let chosen: Vec<PeId> = out[start..].to_vec();
            out.extend(
                rest.into_iter()
                    .filter(|pe| !chosen.contains(pe))
                    .take(n - near),
            );
        }
    }

    fn len(&self) -> usize {
        self.all.len()
    }

    fn contains(&self, pe: PeId) -> bool {
        self.all.contains(pe)
    }
}

#[cfg(test)]
mod tests {
    use asap::policy::PoolSelection;

    use super::*;

    /// A deterministic stand-in for a random source: the policy never draws from it.
    struct NoRandom;

    impl rand_core::TryRng for NoRandom {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(0);
            Ok(())
        }
    }

    fn pool(zones: &[(u32, &str)]) -> PoolSelection {
        let registry = registry();
        let policy = Policy::private(SAME_ZONE_FIRST, &[]).expect("private");
        let mut pool = PoolSelection::new();
        for &(id, zone) in zones {
            let labels = Labels::parse([format!("zone={zone}")]).expect("valid");
            pool.insert_or_update_labeled(
                &registry,
                PeId::new(id).expect("non-zero"),
                &policy,
                &labels,
            )
            .expect("accepted");
        }
        pool
    }

    fn pick(pool: &mut PoolSelection, n: usize, hints: &[&str]) -> Vec<u32> {
        let mut out = Vec::new();
        let hints = Labels::parse(hints).expect("valid");
        pool.select_hinted(n, &hints, &mut NoRandom, &mut out);
        out.into_iter().map(PeId::get).collect()
    }

    #[test]
    fn the_hinted_zone_comes_first_then_the_others() {
        let mut pool = pool(&[(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "c")]);
        assert_eq!(pick(&mut pool, 2, &["zone=b"]), [2, 4]);
        assert_eq!(
            pick(&mut pool, 2, &["zone=b"]),
            [2, 4],
            "round robin in the zone"
        );
        let three = pick(&mut pool, 3, &["zone=c"]);
        assert_eq!(three[0], 5);
        assert_eq!(three.len(), 3);
        assert!(!three[1..].contains(&5), "each PE at most once: {three:?}");
        // No hint, or a zone without PEs: round robin over all.
        assert_eq!(pick(&mut pool, 5, &[]).len(), 5);
        assert_eq!(pick(&mut pool, 1, &["zone=z"]).len(), 1);
    }

    #[test]
    fn a_pe_that_moves_zone_or_leaves_is_followed() {
        let registry = registry();
        let policy = Policy::private(SAME_ZONE_FIRST, &[]).expect("private");
        let mut pool = pool(&[(1, "a"), (2, "b")]);
        let b = Labels::parse(["zone=b"]).expect("valid");
        pool.insert_or_update_labeled(&registry, PeId::new(1).expect("non-zero"), &policy, &b)
            .expect("re-registered");
        assert_eq!(pick(&mut pool, 2, &["zone=b"]).len(), 2);
        assert_eq!(
            pick(&mut pool, 1, &["zone=a"]).len(),
            1,
            "zone a is empty: the others"
        );
        assert!(pool.remove(PeId::new(2).expect("non-zero")));
        assert_eq!(pick(&mut pool, 2, &["zone=b"]), [1]);
        // Another type in this pool is refused with 0x5 (spec §5.3).
        let e = pool
            .insert_or_update(
                &registry,
                PeId::new(9).expect("non-zero"),
                &Policy::RoundRobin,
            )
            .expect_err("inconsistent");
        assert_eq!(
            e.cause_code(),
            PolicyError::CAUSE_INCONSISTENT_POOLING_POLICY
        );
    }
}
