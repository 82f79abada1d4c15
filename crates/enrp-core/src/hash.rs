//! The hasher of the core's internal maps (issue 20): foldhash's fast variant instead of
//! std's SipHash-1-3, which the registrar's profile showed in every keep-alive (the timers'
//! `TimerKey`: namespace, pool handle and PE ID, hashed on each set, stop and expiry).
//!
//! Why foldhash: it is already in the dependency graph (hashbrown's), it hashes short keys
//! several times faster than SipHash, and each map still gets its own random seed, so an
//! input chosen to collide in one process does not collide in another. It is only
//! "minimally" HashDoS-resistant, which fits here: every key comes from an authenticated
//! client, and the per-registrant, per-pool and per-identity limits bound how many keys
//! any one client makes. Iteration order stays unspecified, as with std's `RandomState`;
//! nothing in the core depends on it (the simulation is deterministic without it).

/// A `HashMap` with the core's hasher.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with the core's hasher.
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
