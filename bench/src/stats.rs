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
    /// Its store server's CPU time meanwhile (PostgreSQL's processes), if it has one.
    pub(crate) store_cpu: Option<Duration>,
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
            store_cpu: None,
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

    /// Adds the store server's CPU time of one round (nothing for a server without one).
    pub(crate) fn add_store(&mut self, cpu: Option<Duration>) {
        if let Some(cpu) = cpu {
            self.store_cpu = Some(self.store_cpu.unwrap_or_default() + cpu);
        }
    }

    /// The server's CPU time per operation, and with its store server's (the whole
    /// system's), in µs; the second is `None` without a store server.
    pub(crate) fn cpu_us_per_op(&self) -> (f64, Option<f64>) {
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / self.ops.max(1) as f64;
        (
            per_op(self.server_cpu),
            self.store_cpu.map(|s| per_op(self.server_cpu + s)),
        )
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
            "server_cpu_us_per_op": self.cpu_us_per_op().0,
            "store_cpu_seconds": self.store_cpu.map(|s| s.as_secs_f64()),
            "server_and_store_cpu_us_per_op": self.cpu_us_per_op().1,
        })
    }
}
