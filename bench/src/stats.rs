//! Latency histograms, throughput, and a child process's CPU and memory from /proc.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
// The /proc readings, shared with the workspace's benches.
pub(crate) use testkit::proc::{Proc, clock_ticks};

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records `d` (clamped into the histogram's range).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 600_000_000);
    h.saturating_record(us);
}

/// One system's work in one measurement, summed over its rounds.
#[derive(Debug)]
pub(crate) struct Figures {
    pub(crate) ops: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
    /// The server process's CPU time (user + system) while it ran.
    pub(crate) server_cpu: Duration,
    /// Operations per second of each round (to show the spread).
    pub(crate) rounds: Vec<f64>,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            ops: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            server_cpu: Duration::ZERO,
            rounds: Vec::new(),
        }
    }
}

impl Figures {
    /// Adds one round; a round without any operation means a broken run, not a figure.
    pub(crate) fn add(
        &mut self,
        ops: u64,
        elapsed: Duration,
        latency: &Histogram<u64>,
        cpu: Duration,
    ) {
        assert!(ops > 0, "a round completed no operation");
        self.ops += ops;
        self.elapsed += elapsed;
        self.latency.add(latency).expect("same histogram bounds");
        self.server_cpu += cpu;
        self.rounds
            .push(ops as f64 / elapsed.as_secs_f64().max(1e-9));
    }

    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q`, in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e3
    }

    pub(crate) fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1e3
    }

    /// Server cores in use while it ran.
    pub(crate) fn server_cores(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Operations per second of server CPU.
    pub(crate) fn per_server_core_second(&self) -> f64 {
        self.ops as f64 / self.server_cpu.as_secs_f64().max(1e-9)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "operations": self.ops,
            "seconds": self.elapsed.as_secs_f64(),
            "per_second": self.rate(),
            "per_second_by_round": self.rounds,
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "max_ms": self.max_ms(),
            "server_cpu_cores": self.server_cores(),
            "per_server_core_second": self.per_server_core_second(),
        })
    }
}
