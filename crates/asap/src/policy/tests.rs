//! Tests of the RFC 5356 policies against spec §5.2 and §5.3.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_core::TryRng;

use super::random::uniform_below;
use super::*;

fn pe(id: u32) -> PeId {
    PeId::new(id).expect("test PE IDs are non-zero")
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn pool(policies: &[(u32, Policy)]) -> PoolSelection {
    let registry = PolicyRegistry::default();
    let mut pool = PoolSelection::new();
    for &(id, policy) in policies {
        pool.insert_or_update(&registry, pe(id), &policy)
            .expect("consistent test pool");
    }
    pool
}

fn select(pool: &mut PoolSelection, n: usize, rng: &mut StdRng) -> Vec<u32> {
    let mut out = Vec::new();
    pool.select(n, rng, &mut out);
    out.into_iter().map(PeId::get).collect()
}

/// The next `count` single selections.
fn singles(pool: &mut PoolSelection, count: usize, rng: &mut StdRng) -> Vec<u32> {
    (0..count).flat_map(|_| select(pool, 1, rng)).collect()
}

/// How often each PE is selected first in `draws` single selections.
fn frequencies(pool: &mut PoolSelection, draws: u32, rng: &mut StdRng) -> HashMap<u32, u32> {
    let mut counts = HashMap::new();
    for _ in 0..draws {
        for id in select(pool, 1, rng) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Each observed count is within 2 % (relative) of `draws * weight / total`.
fn assert_shares(counts: &HashMap<u32, u32>, weights: &[(u32, f64)], draws: u32) {
    let total: f64 = weights.iter().map(|&(_, w)| w).sum();
    for &(id, w) in weights {
        let expected = f64::from(draws) * w / total;
        let seen = f64::from(counts.get(&id).copied().unwrap_or(0));
        assert!(
            (seen - expected).abs() <= 0.02 * expected,
            "PE {id}: seen {seen}, expected {expected:.0} ± 2 %"
        );
    }
}

// ---- RR -------------------------------------------------------------------------------

#[test]
fn round_robin_cycles_in_registration_order() {
    // Spec §5.2 RR: each selection continues after the PE selected last.
    let mut pool = pool(&[
        (1, Policy::RoundRobin),
        (2, Policy::RoundRobin),
        (3, Policy::RoundRobin),
    ]);
    let mut rng = rng(1);
    assert_eq!(singles(&mut pool, 7, &mut rng), [1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn round_robin_response_of_n_advances_cycle_by_n() {
    // Spec §5.2 RR: a PR returning n PEs returns the next n and advances the cycle by n.
    let ids = [1, 2, 3, 4];
    let mut pool = pool(&ids.map(|id| (id, Policy::RoundRobin)));
    let mut rng = rng(1);
    assert_eq!(select(&mut pool, 3, &mut rng), [1, 2, 3]);
    assert_eq!(select(&mut pool, 3, &mut rng), [4, 1, 2]);
    assert_eq!(select(&mut pool, 1, &mut rng), [3]);
    // More than the pool holds: every PE once, still in cycle order.
    assert_eq!(select(&mut pool, 10, &mut rng), [4, 1, 2, 3]);
}

#[test]
fn round_robin_newcomer_joins_cycle_and_removed_pe_is_skipped() {
    let registry = PolicyRegistry::default();
    let mut pool = pool(&[
        (1, Policy::RoundRobin),
        (2, Policy::RoundRobin),
        (3, Policy::RoundRobin),
    ]);
    let mut rng = rng(1);
    assert_eq!(singles(&mut pool, 1, &mut rng), [1]);
    pool.insert_or_update(&registry, pe(9), &Policy::RoundRobin)
        .expect("same type");
    assert!(pool.remove(pe(2)));
    assert_eq!(singles(&mut pool, 6, &mut rng), [3, 1, 9, 3, 1, 9]);
    // A re-registration keeps the PE's place in the cycle.
    pool.insert_or_update(&registry, pe(3), &Policy::RoundRobin)
        .expect("same type");
    assert_eq!(singles(&mut pool, 3, &mut rng), [3, 1, 9]);
}

// ---- WRR ------------------------------------------------------------------------------

#[test]
fn weighted_round_robin_selects_weight_times_per_round() {
    // Spec §5.2 WRR: within one round a PE is selected `weight` times; weight 0 never.
    let mut pool = pool(&[
        (1, Policy::WeightedRoundRobin { weight: 1 }),
        (2, Policy::WeightedRoundRobin { weight: 2 }),
        (3, Policy::WeightedRoundRobin { weight: 3 }),
        (4, Policy::WeightedRoundRobin { weight: 0 }),
    ]);
    let mut rng = rng(1);
    // One round is 1 + 2 + 3 = 6 selections, interleaved round robin.
    assert_eq!(singles(&mut pool, 6, &mut rng), [1, 2, 3, 2, 3, 3]);
    assert_eq!(singles(&mut pool, 6, &mut rng), [1, 2, 3, 2, 3, 3]);
    let mut counts = [0u32; 5];
    for id in singles(&mut pool, 600, &mut rng) {
        counts[id as usize] += 1;
    }
    assert_eq!(counts, [0, 100, 200, 300, 0]);
    // Weight 0 is never selected, even when more PEs are asked for than are selectable.
    assert_eq!(select(&mut pool, 10, &mut rng).len(), 3);
}

#[test]
fn weighted_round_robin_newcomer_starts_in_current_round() {
    let registry = PolicyRegistry::default();
    let mut pool = pool(&[(1, Policy::WeightedRoundRobin { weight: 1 })]);
    let mut rng = rng(1);
    singles(&mut pool, 50, &mut rng); // PE 1 is now in round 50.
    pool.insert_or_update(&registry, pe(2), &Policy::WeightedRoundRobin { weight: 1 })
        .expect("same type");
    // Had PE 2 started in round 0 it would be selected 50 times in a row.
    assert_eq!(singles(&mut pool, 4, &mut rng), [1, 2, 1, 2]);
}

#[test]
fn weighted_round_robin_reregistration_keeps_round_progress() {
    let registry = PolicyRegistry::default();
    let mut pool = pool(&[
        (1, Policy::WeightedRoundRobin { weight: 3 }),
        (2, Policy::WeightedRoundRobin { weight: 1 }),
    ]);
    let mut rng = rng(1);
    assert_eq!(singles(&mut pool, 2, &mut rng), [1, 2]);
    // Routine re-registration with the same weight: PE 1 still has 2 selections left.
    pool.insert_or_update(&registry, pe(1), &Policy::WeightedRoundRobin { weight: 3 })
        .expect("same type");
    assert_eq!(singles(&mut pool, 4, &mut rng), [1, 1, 2, 1]);
    // Weight 0 takes a PE out of the rotation; a positive weight brings it back.
    pool.insert_or_update(&registry, pe(2), &Policy::WeightedRoundRobin { weight: 0 })
        .expect("same type");
    assert_eq!(singles(&mut pool, 3, &mut rng), [1, 1, 1]);
    pool.insert_or_update(&registry, pe(2), &Policy::WeightedRoundRobin { weight: 1 })
        .expect("same type");
    assert_eq!(select(&mut pool, 2, &mut rng).len(), 2);
}

// ---- RAND, WRAND, RLU -----------------------------------------------------------------

#[test]
fn random_is_distinct_within_a_response_and_roughly_uniform() {
    // Spec §5.2 RAND: uniformly random; a response contains each PE at most once.
    let ids: Vec<u32> = (1..=10).collect();
    let policies: Vec<_> = ids.iter().map(|&id| (id, Policy::Random)).collect();
    let mut pool = pool(&policies);
    let mut rng = rng(7);
    for n in [2, 3, 5, 10, 20] {
        for _ in 0..200 {
            let got = select(&mut pool, n, &mut rng);
            assert_eq!(got.len(), n.min(10));
            let distinct: HashSet<_> = got.iter().collect();
            assert_eq!(distinct.len(), got.len(), "duplicate in {got:?}");
        }
    }
    let counts = frequencies(&mut pool, 100_000, &mut rng);
    // 10,000 expected per PE, standard deviation ≈ 95: 5 % is over 5 sigma.
    for id in ids {
        let seen = counts[&id];
        assert!(
            (9_500..=10_500).contains(&seen),
            "PE {id} selected {seen} times"
        );
    }
}

#[test]
fn random_response_positions_are_uniform() {
    // Drawing without replacement: the second place is uniform too, not biased to a slot.
    let mut pool = pool(&[
        (1, Policy::Random),
        (2, Policy::Random),
        (3, Policy::Random),
    ]);
    let mut rng = rng(8);
    let mut second = [0u32; 4];
    for _ in 0..30_000 {
        second[select(&mut pool, 2, &mut rng)[1] as usize] += 1;
    }
    for id in 1..=3 {
        assert!((9_500..=10_500).contains(&second[id]), "{second:?}");
    }
}

#[test]
fn weighted_random_frequencies_match_weights_within_2_percent() {
    // Spec §5.2 WRAND: probability ∝ weight; weight 0 never selected.
    let weights = [(1, 2.0), (2, 3.0), (3, 5.0), (4, 0.0)];
    let policies = weights.map(|(id, w)| (id, Policy::WeightedRandom { weight: w as u32 }));
    let mut pool = pool(&policies);
    let mut rng = rng(42);
    let counts = frequencies(&mut pool, 100_000, &mut rng);
    assert_shares(&counts, &weights[..3], 100_000);
    assert_eq!(counts.get(&4), None, "weight 0 selected");
    // Asking for more than the selectable PEs returns only those.
    let mut got = select(&mut pool, 4, &mut rng);
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
}

#[test]
fn weighted_random_spanning_many_blocks_keeps_shares() {
    // 1,000 PEs over many blocks of the weight tree, with removals and updates: the
    // groups by ID mod 3 weigh 2 : 3 : 5 and removed PEs are never drawn.
    let registry = PolicyRegistry::default();
    let mut pool = PoolSelection::new();
    let weight = |id: u32| Policy::WeightedRandom {
        weight: [2, 3, 5][id as usize % 3],
    };
    for id in 1..=1200 {
        pool.insert_or_update(&registry, pe(id), &Policy::WeightedRandom { weight: 9 })
            .expect("same type");
    }
    for id in 1001..=1200 {
        assert!(pool.remove(pe(id)));
    }
    for id in 1..=1000 {
        pool.insert_or_update(&registry, pe(id), &weight(id))
            .expect("same type");
    }
    let mut rng = rng(44);
    let mut groups = HashMap::new();
    for (id, count) in frequencies(&mut pool, 100_000, &mut rng) {
        assert!(id <= 1000, "removed PE {id} selected");
        *groups.entry(id % 3).or_insert(0) += count;
    }
    // 334 PEs weigh 2 (IDs ≡ 0), 333 weigh 3, 333 weigh 5.
    assert_shares(
        &groups,
        &[(0, 334.0 * 2.0), (1, 333.0 * 3.0), (2, 333.0 * 5.0)],
        100_000,
    );
}

#[test]
fn weighted_random_large_weights_do_not_overflow() {
    let max = Policy::WeightedRandom { weight: u32::MAX };
    let policies: Vec<_> = (1..=1000).map(|id| (id, max)).collect();
    let mut pool = pool(&policies);
    let mut rng = rng(3);
    let got = select(&mut pool, 1000, &mut rng);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 1000);
}

#[test]
fn randomized_least_used_frequencies_match_free_capacity_within_2_percent() {
    // Spec §5.2 RLU: probability ∝ (0xFFFFFFFF − load), floor 1.
    let tenth = u32::MAX / 10;
    let free = [(1, 2 * tenth), (2, 3 * tenth), (3, 5 * tenth), (4, 0)];
    let policies = free.map(|(id, f)| (id, Policy::RandomizedLeastUsed { load: u32::MAX - f }));
    let mut pool = pool(&policies);
    let mut rng = rng(43);
    let counts = frequencies(&mut pool, 100_000, &mut rng);
    let shares: Vec<_> = free[..3]
        .iter()
        .map(|&(id, f)| (id, f64::from(f)))
        .collect();
    assert_shares(&counts, &shares, 100_000);
    // Weight 1 out of ~2^32: practically never, but possible.
    assert!(counts.get(&4).copied().unwrap_or(0) <= 1);
}

#[test]
fn randomized_least_used_fully_loaded_pe_can_still_be_selected() {
    assert_eq!(RandomizedLeastUsed::weight_of(u32::MAX), 1);
    assert_eq!(RandomizedLeastUsed::weight_of(0), u32::MAX);
    let mut pool = pool(&[(1, Policy::RandomizedLeastUsed { load: u32::MAX })]);
    assert_eq!(select(&mut pool, 1, &mut rng(1)), [1]);
}

// ---- PRI, LU, LUD, PLU ----------------------------------------------------------------

#[test]
fn priority_highest_first_round_robin_among_equals() {
    // Spec §5.2 PRI: highest priority value first; equal priority round robin.
    let mut pool = pool(&[
        (1, Policy::Priority { priority: 5 }),
        (2, Policy::Priority { priority: 10 }),
        (3, Policy::Priority { priority: 10 }),
        (4, Policy::Priority { priority: 1 }),
    ]);
    let mut rng = rng(1);
    assert_eq!(select(&mut pool, 4, &mut rng), [2, 3, 1, 4]);
    assert_eq!(singles(&mut pool, 5, &mut rng), [2, 3, 2, 3, 2]);
    assert_eq!(select(&mut pool, 3, &mut rng), [3, 2, 1]);
    let registry = PolicyRegistry::default();
    pool.insert_or_update(&registry, pe(4), &Policy::Priority { priority: u32::MAX })
        .expect("same type");
    assert_eq!(singles(&mut pool, 2, &mut rng), [4, 4]);
}

#[test]
fn least_used_lowest_load_first_round_robin_among_equals() {
    // Spec §5.2 LU: lowest load first; equal load round robin.
    let registry = PolicyRegistry::default();
    let mut pool = pool(&[
        (1, Policy::LeastUsed { load: 300 }),
        (2, Policy::LeastUsed { load: 100 }),
        (3, Policy::LeastUsed { load: 100 }),
        (4, Policy::LeastUsed { load: u32::MAX }),
    ]);
    let mut rng = rng(1);
    assert_eq!(select(&mut pool, 4, &mut rng), [2, 3, 1, 4]);
    assert_eq!(singles(&mut pool, 4, &mut rng), [2, 3, 2, 3]);
    // Fresh load from a re-registration reorders.
    pool.insert_or_update(&registry, pe(1), &Policy::LeastUsed { load: 0 })
        .expect("same type");
    assert_eq!(singles(&mut pool, 2, &mut rng), [1, 1]);
    assert_eq!(select(&mut pool, 3, &mut rng), [1, 2, 3]);
}

#[test]
fn least_used_degradation_accumulates_and_reregistration_forgets() {
    // Spec §5.2 LUD: each selection adds the degradation to the selector's copy of the
    // load; a re-registration with a fresh load forgets the additions.
    let registry = PolicyRegistry::default();
    let a = Policy::LeastUsedDegradation {
        load: 100,
        degradation: 50,
    };
    let b = Policy::LeastUsedDegradation {
        load: 200,
        degradation: 10,
    };
    let mut pool = pool(&[(1, a), (2, b)]);
    let mut rng = rng(1);
    // 1: 100→150→200; tie at 200 goes to 2 (selected longer ago); 2: 200→210;
    // 1: 200→250; 2: 210→…→250; tie at 250 goes to 1.
    assert_eq!(singles(&mut pool, 9, &mut rng), [1, 1, 2, 1, 2, 2, 2, 2, 1]);
    // PE 1 (at 300) re-registers with load 100: the accumulated 200 is forgotten.
    pool.insert_or_update(&registry, pe(1), &a)
        .expect("same type");
    assert_eq!(singles(&mut pool, 3, &mut rng), [1, 1, 1]);
    // Without the re-registration PE 2 would be next at 250; PE 1 is back at 250 too
    // and was selected last, so PE 2 goes first.
    assert_eq!(singles(&mut pool, 2, &mut rng), [2, 1]);
}

#[test]
fn least_used_degradation_response_of_n_degrades_each_once() {
    let lud = |load| Policy::LeastUsedDegradation {
        load,
        degradation: 100,
    };
    let mut pool = pool(&[(1, lud(0)), (2, lud(50)), (3, lud(120))]);
    let mut rng = rng(1);
    // Loads 0, 50, 120 → after one response of 2: 100, 150, 120.
    assert_eq!(select(&mut pool, 2, &mut rng), [1, 2]);
    assert_eq!(select(&mut pool, 3, &mut rng), [1, 3, 2]);
}

#[test]
fn priority_least_used_orders_by_load_plus_degradation_without_accumulating() {
    // Spec §5.2 PLU: lowest (load + degradation) first; the degradation is static.
    let mut pool = pool(&[
        (
            1,
            Policy::PriorityLeastUsed {
                load: 100,
                degradation: 300,
            },
        ),
        (
            2,
            Policy::PriorityLeastUsed {
                load: 300,
                degradation: 0,
            },
        ),
        (
            3,
            Policy::PriorityLeastUsed {
                load: 200,
                degradation: 100,
            },
        ),
        (
            4,
            Policy::PriorityLeastUsed {
                load: u32::MAX,
                degradation: u32::MAX,
            },
        ),
    ]);
    let mut rng = rng(1);
    assert_eq!(select(&mut pool, 4, &mut rng), [2, 3, 1, 4]);
    assert_eq!(singles(&mut pool, 6, &mut rng), [2, 3, 2, 3, 2, 3]);
}

// ---- Pool-level rules and the registry -------------------------------------------------

#[test]
fn mixed_policy_types_rejected_with_cause_0x5() {
    // Spec §5.3: the first registration fixes the pool's policy type.
    let registry = PolicyRegistry::default();
    let mut pool = PoolSelection::new();
    assert_eq!(pool.policy_type(), None);
    pool.insert_or_update(&registry, pe(1), &Policy::WeightedRoundRobin { weight: 1 })
        .expect("first PE fixes the policy");
    // Differing values are fine.
    pool.insert_or_update(&registry, pe(2), &Policy::WeightedRoundRobin { weight: 7 })
        .expect("same type, other weight");
    let offered = Policy::WeightedRandom { weight: 1 };
    let err = pool
        .insert_or_update(&registry, pe(3), &offered)
        .expect_err("other type");
    assert_eq!(
        err,
        PolicyError::InconsistentPolicy {
            pool: PolicyType::WEIGHTED_ROUND_ROBIN,
            offered
        }
    );
    assert_eq!(err.cause_code(), 0x5);
    assert!(
        err.to_string().contains("inconsistent pooling policy"),
        "{err}"
    );
    // A registered PE cannot switch type either, and nothing changed.
    let err = pool
        .insert_or_update(&registry, pe(1), &Policy::RoundRobin)
        .expect_err("switch");
    assert_eq!(
        err.cause_code(),
        PolicyError::CAUSE_INCONSISTENT_POOLING_POLICY
    );
    assert_eq!(pool.len(), 2);
    assert!(!pool.contains(pe(3)));
    assert_eq!(pool.policy_type(), Some(PolicyType::WEIGHTED_ROUND_ROBIN));

    // When the last PE leaves, the policy is forgotten (spec §5.3).
    assert!(pool.remove(pe(1)));
    assert!(pool.remove(pe(2)));
    assert!(!pool.remove(pe(2)));
    assert_eq!(pool.policy_type(), None);
    pool.insert_or_update(&registry, pe(3), &offered)
        .expect("empty pool takes any type");
    assert_eq!(pool.policy_type(), Some(PolicyType::WEIGHTED_RANDOM));
}

#[test]
fn selector_refuses_other_policy_type() {
    let mut selector = OrderedSelector::<LeastUsed>::new();
    let err = selector
        .insert_or_update(pe(1), &Policy::RoundRobin)
        .expect_err("other type");
    assert_eq!(err.cause_code(), 0x5);
    assert!(selector.is_empty());
    let mut selector = RandomSelector::<Random>::new();
    assert!(
        selector
            .insert_or_update(pe(1), &Policy::RoundRobin)
            .is_err()
    );
    assert!(selector.is_empty());
}

#[test]
fn registry_serves_the_nine_rfc_policies() {
    let registry = PolicyRegistry::rfc5356();
    let expected = [
        PolicyType::ROUND_ROBIN,
        PolicyType::WEIGHTED_ROUND_ROBIN,
        PolicyType::RANDOM,
        PolicyType::WEIGHTED_RANDOM,
        PolicyType::PRIORITY,
        PolicyType::LEAST_USED,
        PolicyType::LEAST_USED_DEGRADATION,
        PolicyType::PRIORITY_LEAST_USED,
        PolicyType::RANDOMIZED_LEAST_USED,
    ];
    assert_eq!(registry.policy_types().collect::<Vec<_>>(), expected);
    for ty in expected {
        let selector = registry.selector(ty).expect("served");
        assert_eq!(selector.policy_type(), ty);
        assert!(selector.is_empty());
    }
    let err = registry
        .selector(PolicyType(0xB000_0001))
        .expect_err("not an RFC type");
    assert_eq!(err, PolicyError::UnsupportedPolicy(PolicyType(0xB000_0001)));
    assert_eq!(err.cause_code(), 0x3);
    // The default (standard) registry adds the built-in private policy, nothing else.
    let standard: Vec<_> = PolicyRegistry::default().policy_types().collect();
    let mut want = expected.to_vec();
    want.push(LeastUsedDistance::POLICY_TYPE);
    assert_eq!(standard, want);
}

/// A plug-in policy: always the smallest PE ID (stands in for a policy added later).
#[derive(Default)]
struct LowestId(std::collections::BTreeSet<PeId>);

impl Selector for LowestId {
    fn policy_type(&self) -> PolicyType {
        PolicyType::ROUND_ROBIN
    }
    fn insert_or_update(&mut self, pe: PeId, policy: &Policy) -> Result<(), PolicyError> {
        if policy.policy_type() != PolicyType::ROUND_ROBIN {
            return Err(PolicyError::InconsistentPolicy {
                pool: PolicyType::ROUND_ROBIN,
                offered: *policy,
            });
        }
        self.0.insert(pe);
        Ok(())
    }
    fn remove(&mut self, pe: PeId) -> bool {
        self.0.remove(&pe)
    }
    fn select(&mut self, n: usize, _rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        out.extend(self.0.iter().take(n));
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn contains(&self, pe: PeId) -> bool {
        self.0.contains(&pe)
    }
}

#[test]
fn registry_plugs_in_a_new_selector_without_changing_pools() {
    let mut registry = PolicyRegistry::default();
    let old = registry.register(PolicyType::ROUND_ROBIN, || Box::new(LowestId::default()));
    assert!(old.is_some());
    let mut pool = PoolSelection::new();
    for id in [5, 3, 9] {
        pool.insert_or_update(&registry, pe(id), &Policy::RoundRobin)
            .expect("served");
    }
    let mut rng = rng(1);
    assert_eq!(singles(&mut pool, 3, &mut rng), [3, 3, 3]);

    // A factory whose selector reports another type would corrupt §5.3; refused.
    registry.register(PolicyType::RANDOM, || Box::new(LowestId::default()));
    let err = PoolSelection::new()
        .insert_or_update(&registry, pe(1), &Policy::Random)
        .expect_err("mislabelled plug-in");
    assert_eq!(err, PolicyError::UnsupportedPolicy(PolicyType::RANDOM));
    assert!(registry.unregister(PolicyType::RANDOM));
    assert!(!registry.supports(PolicyType::RANDOM));
}

#[test]
fn select_appends_and_zero_selects_nothing() {
    let mut pool = pool(&[(1, Policy::RoundRobin), (2, Policy::RoundRobin)]);
    let mut rng = rng(1);
    let mut out = vec![pe(77)];
    pool.select(0, &mut rng, &mut out);
    assert_eq!(out, [pe(77)]);
    pool.select(1, &mut rng, &mut out);
    assert_eq!(out, [pe(77), pe(1)]);
    assert_eq!(pool.select_one(&mut rng), Some(pe(2)));
    assert_eq!(PoolSelection::new().select_one(&mut rng), None);
}

// ---- Uniform sampling -----------------------------------------------------------------

/// Replays fixed `next_u64` values.
struct Replay(Vec<u64>);

impl TryRng for Replay {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.remove(0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        dst.fill(0);
        Ok(())
    }
}

#[test]
fn uniform_below_rejects_the_biased_low_values() {
    // 2^64 mod 3 = 1, so x = 0 (low half of 0 * 3 is 0 < 1) is rejected; u64::MAX maps
    // to the top of the range.
    let mut replay = Replay(vec![0, u64::MAX]);
    assert_eq!(uniform_below(&mut replay, 3), 2);
    assert!(replay.0.is_empty(), "the biased value was not rejected");
    assert_eq!(uniform_below(&mut Replay(vec![u64::MAX / 3 + 1]), 3), 1);
    assert_eq!(uniform_below(&mut Replay(vec![u64::MAX]), 1), 0);
    assert_eq!(uniform_below(&mut Replay(vec![]), 0), 0);
    let mut rng = rng(5);
    for bound in [1, 2, 7, 1 << 40, u64::MAX] {
        for _ in 0..1000 {
            assert!(uniform_below(&mut rng, bound) < bound);
        }
    }
}

// ---- Model-based property tests --------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Insert or re-register a PE (index into a small ID space, so updates are common).
    Upsert {
        id: u32,
        a: u32,
        b: u32,
    },
    /// Insert or re-register with a policy of another type: must be refused.
    WrongType {
        id: u32,
    },
    Remove {
        id: u32,
    },
    Select {
        n: usize,
    },
}

fn value() -> impl Strategy<Value = u32> {
    // Small values make ties (round robin among equals); extremes test the u64 sums.
    prop_oneof![4 => 0..4u32, 1 => Just(u32::MAX), 1 => Just(u32::MAX - 1), 1 => any::<u32>()]
}

/// Operations on PE IDs `1..ids`: few IDs make re-registrations and ties common, many
/// make the random selectors span several blocks of their weight tree.
fn ops_over(ids: u32) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        5 => (1..ids, value(), value()).prop_map(|(id, a, b)| Op::Upsert { id, a, b }),
        1 => (1..ids).prop_map(|id| Op::WrongType { id }),
        2 => (1..ids).prop_map(|id| Op::Remove { id }),
        4 => (0..6usize).prop_map(|n| Op::Select { n }),
    ];
    proptest::collection::vec(op, 0..80)
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    ops_over(12)
}

fn many_ops() -> impl Strategy<Value = Vec<Op>> {
    // Grow to span several 32-slot blocks, then churn.
    (0..150u32, ops_over(150)).prop_map(|(first, churn)| {
        let mut v: Vec<_> = (1..=first)
            .map(|id| Op::Upsert { id, a: id, b: 1 })
            .collect();
        v.extend(churn);
        v
    })
}

fn make_policy(ty: PolicyType, a: u32, b: u32) -> Policy {
    match ty {
        PolicyType::ROUND_ROBIN => Policy::RoundRobin,
        PolicyType::WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: a % 4 },
        PolicyType::RANDOM => Policy::Random,
        PolicyType::WEIGHTED_RANDOM => Policy::WeightedRandom { weight: a },
        PolicyType::PRIORITY => Policy::Priority { priority: a },
        PolicyType::LEAST_USED => Policy::LeastUsed { load: a },
        PolicyType::LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation {
            load: a,
            degradation: b,
        },
        PolicyType::PRIORITY_LEAST_USED => Policy::PriorityLeastUsed {
            load: a,
            degradation: b,
        },
        _ => Policy::RandomizedLeastUsed { load: a },
    }
}

fn other_type(policy: &Policy) -> Policy {
    match policy {
        Policy::RoundRobin => Policy::Random,
        _ => Policy::RoundRobin,
    }
}

/// A naive model of the ordered policies, written from spec §5.2 with linear scans.
#[derive(Default)]
struct OrderedModel {
    pes: Vec<ModelPe>,
    next_seq: u64,
}

struct ModelPe {
    id: PeId,
    policy: Policy,
    seq: u64,
    round: u64,
    remaining: u32,
    accumulated: u64,
}

impl ModelPe {
    fn key(&self) -> Option<u64> {
        match self.policy {
            Policy::RoundRobin => Some(0),
            Policy::WeightedRoundRobin { weight } => (weight > 0).then_some(self.round),
            Policy::Priority { priority } => Some(u64::from(u32::MAX - priority)),
            Policy::LeastUsed { load } => Some(u64::from(load)),
            Policy::LeastUsedDegradation { load, .. } => Some(u64::from(load) + self.accumulated),
            Policy::PriorityLeastUsed { load, degradation } => {
                Some(u64::from(load) + u64::from(degradation))
            }
            _ => unreachable!("not an ordered policy"),
        }
    }
}

fn weight_of(policy: &Policy) -> u32 {
    match *policy {
        Policy::WeightedRoundRobin { weight } => weight,
        _ => 0,
    }
}

impl OrderedModel {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn order(&self) -> Vec<PeId> {
        let mut v: Vec<_> = self
            .pes
            .iter()
            .filter_map(|p| p.key().map(|k| (k, p.seq, p.id)))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, _, id)| id).collect()
    }

    fn front(&self) -> u64 {
        self.pes
            .iter()
            .filter_map(|p| p.key().map(|k| (k, p.seq)))
            .min()
            .map_or(0, |(k, _)| k)
    }

    fn upsert(&mut self, id: PeId, policy: Policy) {
        let front = self.front();
        let seq = self.seq();
        let Some(p) = self.pes.iter_mut().find(|p| p.id == id) else {
            let w = weight_of(&policy);
            self.pes.push(ModelPe {
                id,
                policy,
                seq,
                round: front,
                remaining: w,
                accumulated: 0,
            });
            return;
        };
        let was_selectable = p.key().is_some();
        let (old_w, new_w) = (weight_of(&p.policy), weight_of(&policy));
        p.policy = policy;
        p.accumulated = 0;
        if old_w == 0 {
            p.round = front;
            p.remaining = new_w;
        } else {
            let used = old_w - p.remaining;
            if new_w == 0 {
                p.remaining = 0;
            } else if used >= new_w {
                p.round += 1;
                p.remaining = new_w;
            } else {
                p.remaining = new_w - used;
            }
        }
        if !was_selectable && p.key().is_some() {
            p.seq = seq;
        }
    }

    fn select(&mut self, n: usize) -> Vec<PeId> {
        let chosen: Vec<_> = self.order().into_iter().take(n).collect();
        for &id in &chosen {
            let seq = self.seq();
            let p = self
                .pes
                .iter_mut()
                .find(|p| p.id == id)
                .expect("chosen from the model");
            p.seq = seq;
            if let Policy::WeightedRoundRobin { weight } = p.policy {
                p.remaining -= 1;
                if p.remaining == 0 {
                    p.round += 1;
                    p.remaining = weight;
                }
            }
            if let Policy::LeastUsedDegradation { degradation, .. } = p.policy {
                p.accumulated += u64::from(degradation);
            }
        }
        chosen
    }
}

fn run_ordered<R: OrderRule>(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut selector = OrderedSelector::<R>::new();
    let mut model = OrderedModel::default();
    let mut rng = rng(0);
    for op in ops {
        match *op {
            Op::Upsert { id, a, b } => {
                let policy = make_policy(R::POLICY_TYPE, a, b);
                prop_assert!(selector.insert_or_update(pe(id), &policy).is_ok());
                model.upsert(pe(id), policy);
            }
            Op::WrongType { id } => {
                let policy = other_type(&make_policy(R::POLICY_TYPE, 1, 1));
                let err = selector.insert_or_update(pe(id), &policy);
                prop_assert_eq!(err.map_err(|e| e.cause_code()), Err(0x5));
            }
            Op::Remove { id } => {
                let there = model.pes.iter().any(|p| p.id == pe(id));
                model.pes.retain(|p| p.id != pe(id));
                prop_assert_eq!(selector.remove(pe(id)), there);
            }
            Op::Select { n } => {
                let mut out = Vec::new();
                selector.select(n, &mut rng, &mut out);
                prop_assert_eq!(out, model.select(n));
            }
        }
        selector.check_invariants();
        prop_assert_eq!(selector.len(), model.pes.len());
        prop_assert_eq!(selector.ordered_pes(), model.order());
    }
    Ok(())
}

fn run_random<W: WeightRule>(ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
    let mut selector = RandomSelector::<W>::new();
    let mut model: HashMap<PeId, u32> = HashMap::new();
    let mut rng = rng(seed);
    for op in ops {
        match *op {
            Op::Upsert { id, a, b } => {
                let policy = make_policy(W::POLICY_TYPE, a, b);
                prop_assert!(selector.insert_or_update(pe(id), &policy).is_ok());
                let weight = match policy {
                    Policy::Random => 1,
                    Policy::WeightedRandom { weight } => weight,
                    Policy::RandomizedLeastUsed { load } => (u32::MAX - load).max(1),
                    _ => unreachable!("a random policy"),
                };
                model.insert(pe(id), weight);
            }
            Op::WrongType { id } => {
                let policy = other_type(&make_policy(W::POLICY_TYPE, 1, 1));
                prop_assert!(selector.insert_or_update(pe(id), &policy).is_err());
            }
            Op::Remove { id } => {
                prop_assert_eq!(selector.remove(pe(id)), model.remove(&pe(id)).is_some());
            }
            Op::Select { n } => {
                let mut out = Vec::new();
                selector.select(n, &mut rng, &mut out);
                let selectable = model.values().filter(|&&w| w > 0).count();
                prop_assert_eq!(out.len(), n.min(selectable));
                let distinct: HashSet<_> = out.iter().collect();
                prop_assert_eq!(distinct.len(), out.len());
                for id in &out {
                    prop_assert!(
                        model.get(id).is_some_and(|&w| w > 0),
                        "{:?} not selectable",
                        id
                    );
                }
            }
        }
        selector.check_invariants();
        prop_assert_eq!(selector.weights(), model.clone());
    }
    Ok(())
}

proptest! {
    #[test]
    fn round_robin_matches_model(ops in ops()) { run_ordered::<RoundRobin>(&ops)?; }

    #[test]
    fn weighted_round_robin_matches_model(ops in ops()) {
        run_ordered::<WeightedRoundRobin>(&ops)?;
    }

    #[test]
    fn priority_matches_model(ops in ops()) { run_ordered::<Priority>(&ops)?; }

    #[test]
    fn least_used_matches_model(ops in ops()) { run_ordered::<LeastUsed>(&ops)?; }

    #[test]
    fn least_used_degradation_matches_model(ops in ops()) {
        run_ordered::<LeastUsedDegradation>(&ops)?;
    }

    #[test]
    fn priority_least_used_matches_model(ops in ops()) {
        run_ordered::<PriorityLeastUsed>(&ops)?;
    }

    #[test]
    fn random_keeps_structures_consistent(ops in ops(), seed in any::<u64>()) {
        run_random::<Random>(&ops, seed)?;
    }

    #[test]
    fn weighted_random_keeps_structures_consistent(ops in ops(), seed in any::<u64>()) {
        run_random::<WeightedRandom>(&ops, seed)?;
    }

    #[test]
    fn randomized_least_used_keeps_structures_consistent(ops in ops(), seed in any::<u64>()) {
        run_random::<RandomizedLeastUsed>(&ops, seed)?;
    }

    #[test]
    fn weighted_random_large_pool_keeps_structures_consistent(
        ops in many_ops(),
        seed in any::<u64>(),
    ) {
        run_random::<WeightedRandom>(&ops, seed)?;
    }

    #[test]
    fn least_used_degradation_large_pool_matches_model(ops in many_ops()) {
        run_ordered::<LeastUsedDegradation>(&ops)?;
    }
}

// The project's private policy range, labels and hints (docs/PROTOCOL-EXTENSIONS.md). A
// selector that reads labels and hints: examples/custom-policy (its tests), and the
// registrar's, crates/enrp-core/src/registrar/tests/extensions.rs.

use crate::wire::param::Labels;

const PRIVATE: PolicyType = PolicyType(0xFF00_0001);

fn private(values: &[u8]) -> Policy {
    Policy::private(PRIVATE, values).expect("a private type, a short value")
}

fn labels(texts: &[&str]) -> Labels {
    Labels::parse(texts).expect("valid labels")
}

#[test]
fn a_private_type_without_a_selector_is_selected_round_robin() {
    let registry = PolicyRegistry::default();
    assert!(registry.falls_back(PRIVATE));
    assert!(!registry.falls_back(PolicyType::ROUND_ROBIN));
    let mut pool = PoolSelection::new();
    for (id, values) in [(1, &[9u8][..]), (2, &[][..]), (3, &[1, 2, 3][..])] {
        pool.insert_or_update(&registry, pe(id), &private(values))
            .expect("accepted: the fallback takes any values of the type");
    }
    assert_eq!(
        pool.policy_type(),
        Some(PRIVATE),
        "the pool keeps the registered type"
    );
    assert_eq!(singles(&mut pool, 6, &mut rng(1)), [1, 2, 3, 1, 2, 3]);
    // One pool, one policy type (spec §5.3): another type is 0x5, as for RFC types.
    for other in [
        Policy::RoundRobin,
        Policy::private(PolicyType(0xFF00_0002), &[]).expect("private"),
    ] {
        let e = pool
            .insert_or_update(&registry, pe(4), &other)
            .expect_err("inconsistent");
        assert_eq!(
            e.cause_code(),
            PolicyError::CAUSE_INCONSISTENT_POOLING_POLICY
        );
    }
    // Not in the range, not registered: still Invalid Values (0x3).
    let e = PoolSelection::new()
        .insert_or_update(&PolicyRegistry::empty(), pe(1), &Policy::RoundRobin)
        .expect_err("unsupported");
    assert_eq!(e.cause_code(), PolicyError::CAUSE_INVALID_VALUES);
}

#[test]
fn the_rfc_policies_ignore_labels_and_hints() {
    let registry = PolicyRegistry::default();
    let mut hinted = PoolSelection::new();
    let mut plain = pool(&[
        (1, Policy::RoundRobin),
        (2, Policy::RoundRobin),
        (3, Policy::RoundRobin),
    ]);
    for id in 1..=3 {
        hinted
            .insert_or_update_labeled(
                &registry,
                pe(id),
                &Policy::RoundRobin,
                &labels(&["region=eu"]),
            )
            .expect("accepted");
    }
    let mut a = Vec::new();
    hinted.select_hinted(2, &labels(&["region=us"]), &mut rng(1), &mut a);
    assert_eq!(
        a.iter().map(|p| p.get()).collect::<Vec<_>>(),
        select(&mut plain, 2, &mut rng(1))
    );
}

/// Least Used with Distance Penalty (docs/PROTOCOL-EXTENSIONS.md §3).
mod distance {
    use std::time::Duration;

    use super::*;

    const PCT: u32 = u32::MAX / 100;

    fn ld(load_pct: u32, penalty: u32) -> Policy {
        let load = if load_pct >= 100 {
            u32::MAX
        } else {
            load_pct * PCT
        };
        LeastUsedDistance::policy(DistanceValues { load, penalty })
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).expect("valid labels")
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    /// Near PEs (2 ms) win at equal load; a far one (60 ms) wins once the near ones carry
    /// more load than the penalty of the difference; full near PEs lose to any far one.
    #[test]
    fn near_first_while_they_have_capacity_then_far() {
        // 1 % of load per millisecond of round trip.
        let mut s = LeastUsedDistance::default();
        for (id, rtt) in [(1, 60), (2, 2), (3, 2), (4, 60)] {
            s.insert_or_update(pe(id), &ld(0, PCT)).expect("insert");
            s.set_round_trip(pe(id), ms(rtt));
        }
        let none = Labels::default();
        assert_eq!(s.ordered(&none, 4), [pe(2), pe(3), pe(1), pe(4)]);
        // 50 % + 2 ms·1 % = 52 % < 60 %: the near ones still win.
        s.insert_or_update(pe(2), &ld(50, PCT)).expect("update");
        assert_eq!(s.ordered(&none, 2), [pe(3), pe(2)]);
        // 70 % + 2 % > 60 %: the far ones are better now.
        s.insert_or_update(pe(2), &ld(70, PCT)).expect("update");
        s.insert_or_update(pe(3), &ld(70, PCT)).expect("update");
        assert_eq!(s.ordered(&none, 4), [pe(1), pe(4), pe(2), pe(3)]);
        // Full: last whatever their distance, even behind a far PE at 99 %.
        s.insert_or_update(pe(2), &ld(0, PCT)).expect("update");
        s.insert_or_update(pe(2), &ld(100, PCT)).expect("update");
        s.insert_or_update(pe(3), &ld(100, PCT)).expect("update");
        s.insert_or_update(pe(1), &ld(99, PCT)).expect("update");
        assert_eq!(s.ordered(&none, 4), [pe(4), pe(1), pe(2), pe(3)]);
        // A re-registration keeps the measured round trip.
        s.insert_or_update(pe(2), &ld(0, PCT)).expect("update");
        assert_eq!(s.ordered(&none, 1), [pe(2)]);
    }

    /// Unmeasured PEs (a peer's, or before the first keep-alive ack) count as
    /// UNMEASURED_RTT away; without a penalty the policy is Least Used.
    #[test]
    fn unmeasured_pes_are_far_and_a_zero_penalty_is_least_used() {
        let mut s = LeastUsedDistance::default();
        s.insert_or_update(pe(1), &ld(0, PCT)).expect("insert");
        s.insert_or_update(pe(2), &ld(90, PCT)).expect("insert");
        s.set_round_trip(pe(2), ms(100));
        assert_eq!(s.ordered(&Labels::default(), 2), [pe(2), pe(1)]);
        let mut lu = LeastUsedDistance::default();
        lu.insert_or_update(pe(1), &ld(30, 0)).expect("insert");
        lu.insert_or_update(pe(2), &ld(10, 0)).expect("insert");
        lu.set_round_trip(pe(2), ms(4000));
        assert_eq!(lu.ordered(&Labels::default(), 2), [pe(2), pe(1)]);
        assert_eq!(
            LeastUsedDistance::score(
                DistanceValues {
                    load: 0,
                    penalty: 1
                },
                None
            ),
            LeastUsedDistance::score(
                DistanceValues {
                    load: 0,
                    penalty: 1
                },
                ms(60_000)
            ),
            "unmeasured = the cap",
        );
    }

    /// PEs matching every hint come first (among those not full), then the rest by
    /// score; equal PEs take turns; a full matching PE loses to a non-matching one.
    #[test]
    fn hints_first_then_score_and_equals_take_turns() {
        let mut s = LeastUsedDistance::default();
        let eu_a = labels(&[("region", "eu"), ("zone", "a")]);
        let eu_b = labels(&[("region", "eu"), ("zone", "b")]);
        let us = labels(&[("region", "us")]);
        for (id, l, rtt) in [(1, &us, 1), (2, &eu_b, 30), (3, &eu_a, 50), (4, &eu_a, 50)] {
            s.insert_or_update_labeled(pe(id), &ld(0, PCT), l)
                .expect("insert");
            s.set_round_trip(pe(id), ms(rtt));
        }
        let hint = labels(&[("region", "eu")]);
        assert_eq!(s.ordered(&hint, 4), [pe(2), pe(3), pe(4), pe(1)]);
        let hint = labels(&[("region", "eu"), ("zone", "a")]);
        assert_eq!(s.ordered(&hint, 4), [pe(3), pe(4), pe(1), pe(2)]);
        let unknown = labels(&[("region", "ap")]);
        assert_eq!(s.ordered(&unknown, 4), [pe(1), pe(2), pe(3), pe(4)]);
        // 3 and 4 are equal: selecting one moves it behind the other.
        let mut r = rng(1);
        let mut picks = Vec::new();
        for _ in 0..4 {
            let mut out = Vec::new();
            s.select_hinted(1, &hint, &mut r, &mut out);
            picks.extend(out);
        }
        assert_eq!(picks, [pe(3), pe(4), pe(3), pe(4)]);
        s.insert_or_update_labeled(pe(3), &ld(100, PCT), &eu_a)
            .expect("update");
        s.insert_or_update_labeled(pe(4), &ld(100, PCT), &eu_a)
            .expect("update");
        assert_eq!(s.ordered(&hint, 4), [pe(1), pe(2), pe(3), pe(4)]);
    }

    /// Registered by default; wrong value lengths are Invalid Values (0x3) and change
    /// nothing; another type in the pool is 0x5.
    #[test]
    fn registered_by_default_and_bad_values_are_refused() {
        let registry = PolicyRegistry::default();
        assert!(registry.supports(LeastUsedDistance::POLICY_TYPE));
        assert!(!PolicyRegistry::rfc5356().supports(LeastUsedDistance::POLICY_TYPE));
        let mut pool = PoolSelection::new();
        let short = Policy::private(LeastUsedDistance::POLICY_TYPE, &[0; 4]).expect("private");
        let err = pool
            .insert_or_update(&registry, pe(1), &short)
            .expect_err("4 bytes");
        assert_eq!(err.cause_code(), PolicyError::CAUSE_INVALID_VALUES);
        assert!(pool.is_empty());
        pool.insert_or_update(&registry, pe(1), &ld(5, 7))
            .expect("8 bytes");
        let err = pool
            .insert_or_update(&registry, pe(2), &Policy::RoundRobin)
            .expect_err("other type");
        assert_eq!(
            err.cause_code(),
            PolicyError::CAUSE_INCONSISTENT_POOLING_POLICY
        );
        assert_eq!(
            LeastUsedDistance::values(&ld(5, 7)),
            Some(DistanceValues {
                load: 5 * PCT,
                penalty: 7
            })
        );
    }

    /// The vector of docs/PROTOCOL-EXTENSIONS.md §3 (load 25 %, penalty 1 %/ms).
    #[test]
    fn wire_vector() {
        use crate::wire::param::Param as _;
        let policy = LeastUsedDistance::policy(DistanceValues {
            load: (u64::from(u32::MAX) * 25 / 100) as u32,
            penalty: u32::MAX / 100,
        });
        let mut bytes = Vec::new();
        policy.encode(&mut bytes);
        assert_eq!(hex::encode(&bytes), "00080010ff0001003fffffff028f5c28",);
    }

    fn oracle(
        pes: &HashMap<u32, (u32, u32, Option<u64>, bool)>,
        hint: bool,
        seqs: &HashMap<u32, u64>,
    ) -> Vec<u32> {
        let mut v: Vec<_> = pes
            .iter()
            .map(|(&id, &(load, penalty, rtt, eu))| {
                let values = DistanceValues { load, penalty };
                let score = LeastUsedDistance::score(values, rtt.map(Duration::from_millis));
                let miss = hint && !eu;
                (LeastUsedDistance::is_full(load), miss, score, seqs[&id], id)
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|t| t.4).collect()
    }

    proptest! {
        /// Any sequence of registrations, round trips, removals and selections orders the
        /// PEs exactly as sorting them by (full, misses a hint, score, last selected) does.
        #[test]
        fn order_matches_a_sort(ops in proptest::collection::vec(
            (1u32..8, 0u8..4, any::<u32>(), 0u32..(u32::MAX / 1000), proptest::option::of(0u64..6000), any::<bool>()),
            0..60,
        )) {
            let mut s = LeastUsedDistance::default();
            let mut model: HashMap<u32, (u32, u32, Option<u64>, bool)> = HashMap::new();
            let mut seqs: HashMap<u32, u64> = HashMap::new();
            let mut seq = 0u64;
            let eu = labels(&[("region", "eu")]);
            let hint = labels(&[("region", "eu")]);
            let mut r = rng(7);
            for (id, op, load, penalty, rtt, in_eu) in ops {
                match op {
                    0 => {
                        let l = if in_eu { eu.clone() } else { Labels::default() };
                        let policy = LeastUsedDistance::policy(DistanceValues { load, penalty });
                        s.insert_or_update_labeled(pe(id), &policy, &l).expect("insert");
                        let old = model.insert(id, (load, penalty, None, in_eu));
                        if let Some(old) = old {
                            model.get_mut(&id).expect("just put").2 = old.2;
                        } else {
                            seqs.insert(id, seq);
                            seq += 1;
                        }
                    }
                    1 => {
                        s.set_round_trip(pe(id), rtt.map(Duration::from_millis));
                        if let Some(m) = model.get_mut(&id) {
                            m.2 = rtt;
                        }
                    }
                    2 => {
                        prop_assert_eq!(s.remove(pe(id)), model.remove(&id).is_some());
                        seqs.remove(&id);
                    }
                    _ => {
                        let want = oracle(&model, in_eu, &seqs);
                        let mut out = Vec::new();
                        let h = if in_eu { hint.clone() } else { Labels::default() };
                        s.select_hinted(2, &h, &mut r, &mut out);
                        let got: Vec<u32> = out.iter().map(|p| p.get()).collect();
                        prop_assert_eq!(&got[..], &want[..want.len().min(2)]);
                        for id in got {
                            seqs.insert(id, seq);
                            seq += 1;
                        }
                    }
                }
                prop_assert_eq!(s.len(), model.len());
                let want = oracle(&model, true, &seqs);
                let got: Vec<u32> = s.ordered(&hint, usize::MAX).iter().map(|p| p.get()).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}

/// Runs `ops` on the Round Robin queue and on the ordered selector it replaces: they must
/// select the same PEs in the same order, and hold the same PEs.
fn run_cycle(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut queue = CycleSelector::new();
    let mut sorted = OrderedSelector::<RoundRobin>::new();
    let mut rng = StdRng::seed_from_u64(0);
    for op in ops {
        match *op {
            Op::Upsert { id, .. } => {
                let pe = PeId::new(id).expect("non-zero");
                prop_assert_eq!(
                    queue.insert_or_update(pe, &Policy::RoundRobin),
                    sorted.insert_or_update(pe, &Policy::RoundRobin)
                );
            }
            Op::WrongType { id } => {
                let pe = PeId::new(id).expect("non-zero");
                let wrong = Policy::Priority { priority: 1 };
                prop_assert!(queue.insert_or_update(pe, &wrong).is_err());
            }
            Op::Remove { id } => {
                let pe = PeId::new(id).expect("non-zero");
                prop_assert_eq!(queue.remove(pe), sorted.remove(pe));
            }
            Op::Select { n } => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                queue.select(n, &mut rng, &mut a);
                sorted.select(n, &mut rng, &mut b);
                prop_assert_eq!(a, b);
            }
        }
        prop_assert_eq!(queue.len(), sorted.len());
        prop_assert_eq!(queue.ordered_pes(), sorted.ordered_pes());
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_round_robin_queue_selects_as_the_ordered_selector(ops in ops()) {
        run_cycle(&ops)?;
    }

    #[test]
    fn the_round_robin_queue_selects_as_the_ordered_selector_in_a_large_pool(
        ops in many_ops(),
    ) {
        run_cycle(&ops)?;
    }
}

/// Removals leave stale places in the queue; it is compacted, never more than twice the
/// PEs it holds (plus the slack).
#[test]
fn the_round_robin_queue_stays_bounded_under_churn() {
    let mut queue = CycleSelector::new();
    let mut rng = StdRng::seed_from_u64(1);
    for round in 0..1000u32 {
        for id in 1..=10 {
            let pe = PeId::new(round * 10 + id).expect("non-zero");
            queue.insert_or_update(pe, &Policy::RoundRobin).expect("RR");
        }
        let mut out = Vec::new();
        queue.select(3, &mut rng, &mut out);
        assert_eq!(out.len(), 3);
        for id in 1..=10 {
            queue.remove(PeId::new(round * 10 + id).expect("non-zero"));
            assert!(queue.places() <= 2 * queue.len() + 32, "{queue:?}");
        }
        assert!(queue.is_empty());
        assert!(queue.ordered_pes().is_empty());
    }
}
