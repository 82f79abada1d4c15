//! The audit commit latency histogram (`rsp_audit_commit_seconds`, issue 22): the time
//! from a record's hand-over to the writer ([`super::AuditLog::append`] or
//! [`super::AuditLog::try_queue`]) until the commit of the transaction that holds it, one
//! observation per record. Fixed buckets in atomics: observing allocates nothing and takes
//! no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds in microseconds (Prometheus `le`): 0.5 ms to 1 s, about
/// ×2–2.5 apart, around the default batch delay of 50 ms. Longer commits count only in
/// `+Inf`.
pub const BUCKETS_MICROS: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 750_000, 1_000_000,
];

/// The histogram the writer fills (module docs).
#[derive(Debug, Default)]
pub(crate) struct CommitLatency {
    /// Per bucket, not cumulative; the last counts what is above every bound.
    buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl CommitLatency {
    /// Counts one record committed `waited` after its hand-over.
    pub(crate) fn observe(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS.partition_point(|&le| le < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencyHistogram {
        let mut cumulative = [0; BUCKETS_MICROS.len()];
        let mut total = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            if let Some(c) = cumulative.get_mut(i) {
                *c = total;
            }
        }
        LatencyHistogram {
            cumulative,
            count: total,
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A histogram at one moment, in Prometheus' shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations at most [`BUCKETS_MICROS`]`[i]` (cumulative).
    pub cumulative: [u64; BUCKETS_MICROS.len()],
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_micros: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_sum_up() {
        let h = CommitLatency::default();
        h.observe(Duration::from_micros(500)); // On a bound: that bucket (le is inclusive).
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(3)); // Above every bound: +Inf only.
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.sum_micros, 500 + 501 + 40_000 + 3_000_000);
        assert_eq!(s.cumulative[0], 1, "le 0.0005");
        assert_eq!(s.cumulative[1], 2, "le 0.001");
        assert_eq!(s.cumulative[5], 2, "le 0.025");
        assert_eq!(s.cumulative[6], 3, "le 0.05");
        assert_eq!(s.cumulative[BUCKETS_MICROS.len() - 1], 3, "le 1");
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]), "cumulative");
    }
}
