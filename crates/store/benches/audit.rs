//! Audit log throughput: `cargo bench -p store --bench audit`.
//!
//! Appends records through `AuditLog` into a real SQLite file in a temporary directory and
//! prints appends/s (and latency percentiles for `BeforeReply`), for `synchronous=FULL`
//! (the default) and `NORMAL`. Plain `std::time`, no harness. `RSP_BENCH_RECORDS` changes
//! the number of records per run (default 20,000).

// A benchmark measures wall time: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use identity::audit::{AuditAction, Durability};
use identity::{Namespace, PeId, PoolHandle, SpiffeId};
use store::audit::{AuditConfig, AuditLog, Outcome, Record};
use store::db::{Store, StoreOptions, Synchronous};

const CALLERS: usize = 64;

fn record(i: u64, actor: &SpiffeId) -> Record {
    Record::new(1_700_000_000_000 + i, AuditAction::Register, Outcome::Ok)
        .actor(actor.clone())
        .remote(std::net::SocketAddr::from(([127, 0, 0, 1], 40_000)))
        .namespace(Namespace::new("default").expect("namespace"))
        .pool(PoolHandle::new(b"echo").expect("pool handle"))
        .pe_id(PeId::new(u32::try_from(i % u64::from(u32::MAX)).unwrap_or(0) + 1).expect("PE ID"))
}

struct Run {
    label: String,
    records: usize,
    elapsed: Duration,
    transactions: u64,
    latencies: Vec<Duration>,
}

impl Run {
    fn print(&self) {
        let rate = self.records as f64 / self.elapsed.as_secs_f64();
        let per_tx = self.records as f64 / self.transactions.max(1) as f64;
        print!(
            "{:<44} {:>9.0} records/s  {:>7} tx  {:>7.1} records/tx",
            self.label, rate, self.transactions, per_tx
        );
        if !self.latencies.is_empty() {
            let mut l = self.latencies.clone();
            l.sort();
            let pct = |p: f64| l[((l.len() - 1) as f64 * p) as usize];
            print!(
                "  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
                pct(0.50),
                pct(0.99),
                l[l.len() - 1]
            );
        }
        println!();
    }
}

async fn run(
    synchronous: Synchronous,
    durability: Durability,
    callers: usize,
    records: usize,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = StoreOptions::default();
    options.synchronous = synchronous;
    let store = Store::open(dir.path(), &options).await.expect("open");
    let log = AuditLog::start(&store, AuditConfig::default())
        .await
        .expect("start");
    let actor = Arc::new(SpiffeId::parse("spiffe://acme.test/pe/echo-1").expect("id"));
    let per_caller = records / callers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let log = log.clone();
            let actor = Arc::clone(&actor);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let t = Instant::now();
                    log.append(record((c * per_caller + i) as u64, &actor), durability)
                        .await
                        .expect("append");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(records);
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    // Batched appends return once queued: the run ends when everything is committed.
    log.shutdown().await.expect("shutdown");
    let elapsed = started.elapsed();
    let stats = log.stats();
    assert_eq!(stats.records as usize, per_caller * callers);
    if durability == Durability::Batched {
        latencies.clear();
    }
    store.close().await;
    Run {
        label: format!("{durability:?} {callers:>2} callers, synchronous={synchronous:?}"),
        records: per_caller * callers,
        elapsed,
        transactions: stats.transactions,
        latencies,
    }
}

fn main() {
    let records: usize = std::env::var("RSP_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("audit log, {records} records per run, SQLite WAL, tempdir on this machine's disk");
    rt.block_on(async {
        for synchronous in [Synchronous::Full, Synchronous::Normal] {
            // One caller at a time: every record is its own transaction (the fsync cost).
            run(synchronous, Durability::BeforeReply, 1, records / 20)
                .await
                .print();
            run(synchronous, Durability::BeforeReply, CALLERS, records)
                .await
                .print();
            run(synchronous, Durability::Batched, CALLERS, records)
                .await
                .print();
        }
    });
}
