//! The application-level round trip from the registrar to each PE it is home of:
//! ASAP_ENDPOINT_KEEP_ALIVE sent → its ASAP_ENDPOINT_KEEP_ALIVE_ACK received (spec §7.5),
//! for policies that select by distance (docs/PROTOCOL-EXTENSIONS.md §3). Not the
//! transport's RTT: spec §5 rules out selecting by the transport's internals.
//!
//! Pure: the times come from the core's `now` (tests drive it with a paused clock).
//! Smoothed like TCP's SRTT (RFC 6298 §2): the first sample is taken as it is, then
//! `srtt = 7/8 srtt + 1/8 sample` (α = 1/8). Karn's rule: when a second keep-alive goes
//! out before the first is answered (an unreachable-report probe, spec §7.6), the ack
//! cannot be matched to a send, so it gives no sample.

use std::time::{Duration, Instant};

/// One PE's round-trip estimator.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RttEstimator {
    /// When the outstanding keep-alive went out.
    sent: Option<Instant>,
    /// More than one keep-alive is outstanding (Karn).
    ambiguous: bool,
    srtt: Option<Duration>,
}

impl RttEstimator {
    /// A keep-alive went out at `now`.
    pub(super) fn sent(&mut self, now: Instant) {
        if self.sent.is_some() {
            self.ambiguous = true;
        } else {
            self.sent = Some(now);
        }
    }

    /// Its ack arrived at `now`: the new smoothed round trip if this was a sample.
    pub(super) fn acked(&mut self, now: Instant) -> Option<Duration> {
        let sent = self.sent.take()?;
        if std::mem::take(&mut self.ambiguous) {
            return None;
        }
        let sample = now.saturating_duration_since(sent);
        let srtt = match self.srtt {
            None => sample,
            Some(old) => (old * 7 + sample) / 8,
        };
        self.srtt = Some(srtt);
        Some(srtt)
    }

    /// Whether a keep-alive is out and not answered.
    pub(super) fn outstanding(&self) -> bool {
        self.sent.is_some()
    }

    /// The outstanding keep-alive no longer counts (a re-registration stopped its timeout,
    /// so its ack, if any, is ignored).
    pub(super) fn abandon(&mut self) {
        self.sent = None;
        self.ambiguous = false;
    }

    /// The smoothed round trip; `None` before the first sample.
    pub(super) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some base instant
    fn first_sample_then_seven_eighths_and_karn() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = RttEstimator::default();
        assert_eq!(
            e.acked(t0),
            None,
            "an ack without a keep-alive is no sample"
        );
        e.sent(t0);
        assert_eq!(e.acked(t0 + ms(80)), Some(ms(80)));
        e.sent(t0 + ms(1000));
        assert_eq!(e.acked(t0 + ms(1016)), Some(ms(72)), "7/8·80 + 1/8·16");
        // A probe on top of an outstanding keep-alive: the ack is ambiguous.
        e.sent(t0 + ms(2000));
        e.sent(t0 + ms(2500));
        assert_eq!(e.acked(t0 + ms(2510)), None);
        assert_eq!(e.srtt(), Some(ms(72)));
        // And the next exchange measures again.
        e.sent(t0 + ms(3000));
        assert_eq!(e.acked(t0 + ms(3072)), Some(ms(72)));
    }
}
