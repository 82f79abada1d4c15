//! Least Used with Distance Penalty: a private policy (type [`LeastUsedDistance::POLICY_TYPE`],
//! docs/PROTOCOL-EXTENSIONS.md §3) for pools whose PEs sit at different distances from
//! their users (issue 23: "coping with heterogeneous latencies").
//!
//! The distance is the round trip a registrar measured itself, at the application level:
//! ASAP_ENDPOINT_KEEP_ALIVE → ASAP_ENDPOINT_KEEP_ALIVE_ACK to a PE it is home of (spec
//! §5 rules out transport internals such as SCTP path RTTs). The registrar hands it to the
//! selector through [`Selector::set_round_trip`]; a PE without one (not yet measured, or
//! owned by a peer) counts as [`UNMEASURED_RTT`] away.
//!
//! Order (smallest first, a pure function of the state: [`LeastUsedDistance::rank`]):
//! 1. PEs that are not full before full ones (load ≥ [`FULL_LOAD`]): a full PE loses all
//!    its preference, so far PEs serve while near ones are full;
//! 2. PEs whose labels match every hint the pool user sent (`region=eu`, `zone=a1`)
//!    before the others;
//! 3. score = load + penalty × RTT in milliseconds (the penalty is in load units, fractions
//!    of `u32::MAX`, per millisecond);
//! 4. ties: the PE selected (or registered) longest ago first, so equals take turns
//!    (rsplib's sequence numbers, as [`super::OrderedSelector`]).
//!
//! Costs: registration, removal, a new RTT and each selected PE cost O((1 + labels) log n);
//! a hinted selection of *k* PEs also walks past the PEs of the smallest hint's label set
//! that miss another hint (none with one hint).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rand_core::Rng;

use super::{PolicyError, Selector};
use crate::wire::param::{Labels, Load, PeId, Policy, PolicyType};

/// A load at or above this is "full" (99.998 %: `rsp pe --capacity N` reports exactly
/// `u32::MAX` at N sessions; the slack absorbs rounding of other PEs' percentages).
pub const FULL_LOAD: Load = 0xFFFF_0000;

/// The distance of a PE without a measured round trip: as far as a keep-alive may take
/// before the PE is declared dead with the default timing (5 s), so any measured PE that
/// is not full is preferred to it, and unmeasured PEs among themselves go by load.
pub const UNMEASURED_RTT: Duration = Duration::from_secs(5);

/// Round trips are counted up to this (and capped): more is a dead PE anyway.
pub const MAX_RTT: Duration = UNMEASURED_RTT;

/// The policy's values: the PE's load and the penalty per millisecond of round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistanceValues {
    /// Load, a fraction of `u32::MAX` (spec §5.1), as for Least Used.
    pub load: Load,
    /// Load units added per millisecond of round trip.
    pub penalty: u32,
}

/// The selector of Least Used with Distance Penalty (module docs).
#[derive(Default)]
pub struct LeastUsedDistance {
    pes: HashMap<PeId, Entry>,
    /// Every PE by rank.
    order: BTreeSet<Rank>,
    /// The PEs carrying each label, by rank.
    by_label: HashMap<(Box<str>, Box<str>), BTreeSet<Rank>>,
    next_seq: u64,
}

struct Entry {
    values: DistanceValues,
    rtt: Option<Duration>,
    labels: Labels,
    seq: u64,
}

/// (full, score, seq, PE): smallest first; `seq` is unique, so ranks are too.
type Rank = (bool, u64, u64, PeId);

const PE_MIN: PeId = PeId::new(1).expect("not 0");
const PE_MAX: PeId = PeId::new(u32::MAX).expect("not 0");

impl LeastUsedDistance {
    /// Its private policy type, 0xFF00_0100 (docs/PROTOCOL-EXTENSIONS.md §3).
    pub const POLICY_TYPE: PolicyType = PolicyType(0xFF00_0100);

    /// Its name where rsp prints policies (`rsp pe --policy`, `rsp resolve`, the admin API).
    pub const NAME: &'static str = "least-used-distance";

    /// The Policy parameter of a PE with this `load` and `penalty`: 8 value bytes, load
    /// then penalty, each a big-endian u32.
    pub fn policy(values: DistanceValues) -> Policy {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&values.load.to_be_bytes());
        v[4..].copy_from_slice(&values.penalty.to_be_bytes());
        Policy::private(Self::POLICY_TYPE, &v).expect("a private type with 8 bytes")
    }

    /// The values of `policy` when it is this policy with exactly 8 value bytes.
    pub fn values(policy: &Policy) -> Option<DistanceValues> {
        let Policy::Private {
            policy_type,
            values,
        } = policy
        else {
            return None;
        };
        let bytes: [u8; 8] = values.as_bytes().try_into().ok()?;
        (*policy_type == Self::POLICY_TYPE).then(|| DistanceValues {
            load: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            penalty: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }

    /// Whether a PE with this load is full (it loses its preference).
    pub const fn is_full(load: Load) -> bool {
        load >= FULL_LOAD
    }

    /// A PE's score: load + penalty × RTT in ms, the RTT capped at [`MAX_RTT`] and
    /// [`UNMEASURED_RTT`] when there is none. In u64, so it never wraps.
    pub fn score(values: DistanceValues, rtt: Option<Duration>) -> u64 {
        let rtt = rtt.unwrap_or(UNMEASURED_RTT).min(MAX_RTT);
        // Microseconds keep sub-millisecond round trips (loopback, one LAN) apart.
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        u64::from(values.load) + u64::from(values.penalty) * micros / 1000
    }

    fn rank(pe: PeId, e: &Entry) -> Rank {
        (
            Self::is_full(e.values.load),
            Self::score(e.values, e.rtt),
            e.seq,
            pe,
        )
    }

    fn fresh_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn unlink(&mut self, pe: PeId) -> Option<Entry> {
        let e = self.pes.remove(&pe)?;
        let rank = Self::rank(pe, &e);
        self.order.remove(&rank);
        for (k, v) in e.labels.iter() {
            let key = (Box::from(k), Box::from(v));
            if let Some(set) = self.by_label.get_mut(&key) {
                set.remove(&rank);
                if set.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
        Some(e)
    }

    fn link(&mut self, pe: PeId, e: Entry) {
        let rank = Self::rank(pe, &e);
        self.order.insert(rank);
        for (k, v) in e.labels.iter() {
            self.by_label
                .entry((Box::from(k), Box::from(v)))
                .or_default()
                .insert(rank);
        }
        self.pes.insert(pe, e);
    }

    fn matches(&self, pe: PeId, hints: &Labels) -> bool {
        self.pes
            .get(&pe)
            .is_some_and(|e| hints.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
    }

    /// The PEs in selection order for `hints`, without changing anything (tests, and
    /// what `select_hinted` returns the first `n` of).
    pub fn ordered(&self, hints: &Labels, n: usize) -> Vec<PeId> {
        let mut out = Vec::new();
        for full in [false, true] {
            let class = (full, 0, 0, PE_MIN)..=(full, u64::MAX, u64::MAX, PE_MAX);
            if !hints.is_empty() {
                // The smallest label set of the hints holds every PE matching all of them.
                let smallest = hints
                    .iter()
                    .map(|(k, v)| self.by_label.get(&(Box::from(k), Box::from(v))))
                    .min_by_key(|s| s.map_or(0, BTreeSet::len));
                if let Some(Some(set)) = smallest {
                    for &(_, _, _, pe) in set.range(class.clone()) {
                        if out.len() == n {
                            return out;
                        }
                        if self.matches(pe, hints) {
                            out.push(pe);
                        }
                    }
                }
            }
            for &(_, _, _, pe) in self.order.range(class) {
                if out.len() == n {
                    return out;
                }
                // The matching ones of this class are all in `out` already.
                if !hints.is_empty() && self.matches(pe, hints) {
                    continue;
                }
                out.push(pe);
            }
        }
        out
    }
}

impl Selector for LeastUsedDistance {
    fn policy_type(&self) -> PolicyType {
        Self::POLICY_TYPE
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
        if policy.policy_type() != Self::POLICY_TYPE {
            return Err(PolicyError::InconsistentPolicy {
                pool: Self::POLICY_TYPE,
                offered: *policy,
            });
        }
        let values = Self::values(policy).ok_or(PolicyError::InvalidValues(*policy))?;
        // A re-registration keeps the measured round trip (the PE did not move) and its
        // turn among equals.
        let (rtt, seq) = match self.unlink(pe) {
            Some(old) => (old.rtt, old.seq),
            None => (None, self.fresh_seq()),
        };
        self.link(
            pe,
            Entry {
                values,
                rtt,
                labels: labels.clone(),
                seq,
            },
        );
        Ok(())
    }

    fn set_round_trip(&mut self, pe: PeId, rtt: Option<Duration>) {
        if let Some(mut e) = self.unlink(pe) {
            e.rtt = rtt;
            self.link(pe, e);
        }
    }

    fn remove(&mut self, pe: PeId) -> bool {
        self.unlink(pe).is_some()
    }

    fn select(&mut self, n: usize, rng: &mut dyn Rng, out: &mut Vec<PeId>) {
        self.select_hinted(n, &Labels::default(), rng, out);
    }

    fn select_hinted(&mut self, n: usize, hints: &Labels, _: &mut dyn Rng, out: &mut Vec<PeId>) {
        let picked = self.ordered(hints, n);
        // Each selected PE moves behind its equals.
        for &pe in &picked {
            if let Some(mut e) = self.unlink(pe) {
                e.seq = self.fresh_seq();
                self.link(pe, e);
            }
        }
        out.extend(picked);
    }

    fn len(&self) -> usize {
        self.pes.len()
    }

    fn contains(&self, pe: PeId) -> bool {
        self.pes.contains_key(&pe)
    }
}
