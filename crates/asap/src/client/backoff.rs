//! The pause between attempts to reach a registrar (spec §7.7 server hunt, issue 5): short,
//! jittered, capped.

use std::time::Duration;

/// The pause before the next attempt (server hunt, T1 retry): full jitter (a uniform draw from zero to a
/// ceiling), the ceiling doubling from 50 ms to [`BACKOFF_CAP`] and back to 50 ms after
/// each successful registration.
///
/// Why these numbers (issue 5: "every PE is registered again within 1 s of the registrar
/// coming back", without a reconnection storm): the ceiling bounds the gap between two
/// attempts of one PE, so a registrar that comes back sees every PE within 500 ms, which
/// leaves half of the second for the handshake and the registration on a loaded host. The
/// full jitter is what avoids the storm: PEs that lost the same registrar at the same
/// moment draw independent delays, so N PEs arrive spread evenly over the 500 ms (about
/// 2N/s) instead of in synchronized waves, and the short first ceiling lets a registrar
/// that merely closed one connection be found again at once. While the registrar is down,
/// each PE makes on average one (cheap, refused) connection attempt per 250 ms.
/// Randomness is xorshift seeded from the PE ID: PE IDs come from the OS random source, so
/// PEs started together draw differently.
pub(crate) struct Backoff {
    ceiling: Duration,
    state: u64,
}

/// The largest pause between two server hunts of one PE (see [`Backoff`]).
pub const BACKOFF_CAP: Duration = Duration::from_millis(500);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);

impl Backoff {
    pub(crate) fn new(seed: u32) -> Self {
        Self {
            ceiling: BACKOFF_FIRST,
            // xorshift must not start at zero; spread the 32-bit seed over 64 bits.
            state: (u64::from(seed) << 32 | u64::from(seed)) | 1,
        }
    }

    /// Back to the short first ceiling (after a success).
    pub(crate) fn reset(&mut self) {
        self.ceiling = BACKOFF_FIRST;
    }

    pub(crate) fn next(&mut self) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(BACKOFF_CAP);
        let ceiling_us = ceiling.as_micros() as u64;
        Duration::from_micros(self.state % (ceiling_us + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_never_exceeds_the_cap_and_restarts_short_after_reset() {
        let mut b = Backoff::new(0xdead_beef);
        let draws: Vec<Duration> = (0..1000).map(|_| b.next()).collect();
        assert!(draws[0] <= BACKOFF_FIRST);
        assert!(draws.iter().all(|d| *d <= BACKOFF_CAP));
        // Full jitter: the draws after the ramp cover the whole range, not a narrow band.
        let late = &draws[10..];
        assert!(late.iter().any(|d| *d < BACKOFF_CAP / 4));
        assert!(late.iter().any(|d| *d > BACKOFF_CAP * 3 / 4));
        b.reset();
        assert!(b.next() <= BACKOFF_FIRST);
    }

    #[test]
    fn pes_with_different_ids_draw_different_delays() {
        let mut a = Backoff::new(1);
        let mut b = Backoff::new(2);
        for _ in 0..5 {
            a.next();
            b.next();
        }
        let (da, db): (Vec<_>, Vec<_>) = (0..20).map(|_| (a.next(), b.next())).unzip();
        assert_ne!(da, db);
    }
}
