//! Selection cost of the nine RFC 5356 policies (spec §5.2) by pool size.
//!
//! Run: `cargo bench -p asap --bench policy`. Prints a Markdown table of the median
//! nanoseconds per operation (median over batches) for selecting 1 and 3 PEs and for a
//! re-registration with new values, through [`PoolSelection`] as the registrar uses it.
//! Target: every selection ≤ 1 µs at 10,000 PEs and ≤ 2 µs at 100,000 PEs.
#![allow(clippy::disallowed_methods)] // A benchmark reads the clock.

use std::hint::black_box;
use std::time::Instant;

use asap::policy::{PolicyRegistry, PoolSelection};
use asap::wire::param::{PeId, Policy, PolicyType};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_core::Rng;

const SIZES: [u32; 3] = [1_000, 10_000, 100_000];
const BATCHES: usize = 101;
const BATCH: u32 = 1_000;

/// The policy values of PE number `i`: spread out, with ties where the policy has them.
fn policy(ty: PolicyType, i: u32, rng: &mut StdRng) -> Policy {
    let load = rng.next_u32();
    match ty {
        PolicyType::ROUND_ROBIN => Policy::RoundRobin,
        PolicyType::WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: 1 + i % 10 },
        PolicyType::RANDOM => Policy::Random,
        PolicyType::WEIGHTED_RANDOM => Policy::WeightedRandom {
            weight: 1 + load % 1000,
        },
        PolicyType::PRIORITY => Policy::Priority { priority: i % 16 },
        PolicyType::LEAST_USED => Policy::LeastUsed { load },
        PolicyType::LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation {
            load,
            degradation: u32::MAX / 1000,
        },
        PolicyType::PRIORITY_LEAST_USED => Policy::PriorityLeastUsed {
            load: load / 2,
            degradation: rng.next_u32() / 2,
        },
        _ => Policy::RandomizedLeastUsed { load },
    }
}

fn pe(i: u32) -> PeId {
    PeId::new(i + 1).expect("i + 1 is non-zero")
}

/// Median over `BATCHES` batches of the nanoseconds per call of `op`.
fn median_ns(mut op: impl FnMut()) -> f64 {
    for _ in 0..BATCH {
        op(); // warm-up
    }
    let mut per_op: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                op();
            }
            start.elapsed().as_nanos() as f64 / f64::from(BATCH)
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op[BATCHES / 2]
}

fn main() {
    let registry = PolicyRegistry::default();
    let types: Vec<PolicyType> = registry.policy_types().collect();
    println!("| policy | PEs | select 1 (ns) | select 3 (ns) | re-register (ns) | target |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut misses = 0;
    for &ty in &types {
        for size in SIZES {
            let mut rng = StdRng::seed_from_u64(u64::from(size) ^ u64::from(ty.0));
            let mut pool = PoolSelection::new();
            for i in 0..size {
                let p = policy(ty, i, &mut rng);
                pool.insert_or_update(&registry, pe(i), &p)
                    .expect("one policy type per pool");
            }
            let mut out = Vec::with_capacity(3);
            let mut select = |n: usize, pool: &mut PoolSelection, rng: &mut StdRng| {
                median_ns(|| {
                    out.clear();
                    pool.select(black_box(n), rng, &mut out);
                    black_box(&out);
                })
            };
            let one = select(1, &mut pool, &mut rng);
            let three = select(3, &mut pool, &mut rng);
            let mut values = StdRng::seed_from_u64(7);
            let update = median_ns(|| {
                let i = values.next_u32() % size;
                let p = policy(ty, i, &mut values);
                let result = pool.insert_or_update(&registry, pe(i), &p);
                black_box(result).expect("same policy type");
            });
            let limit = match size {
                10_000 => Some(1_000.0),
                100_000 => Some(2_000.0),
                _ => None,
            };
            let verdict = match limit {
                Some(limit) if one.max(three) > limit => {
                    misses += 1;
                    "MISS"
                }
                Some(_) => "ok",
                None => "",
            };
            let name = ty.name().unwrap_or("?");
            println!("| {name} | {size} | {one:.0} | {three:.0} | {update:.0} | {verdict} |");
        }
    }
    if misses > 0 {
        println!("\n{misses} configuration(s) missed the target");
    }
}
