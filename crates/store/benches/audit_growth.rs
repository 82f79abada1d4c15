//! Audit log disk growth (issue 18 item 5, docs/SECURITY.md "Audit retention"):
//! `cargo bench -p store --bench audit_growth`.
//!
//! Appends `RSP_BENCH_RECORDS` (default 100,000) typical records of each kind into a real
//! SQLite audit log in a temporary directory, in transactions of 1,000 (as the writer's
//! group commit does), then archives them all with `store::audit::archive`, and prints the
//! bytes each record takes in the database and in the gzip'd archive, and per million.
//! Sizes do not depend on the build profile (`--profile dev` gives the same figures).

// A benchmark measures wall time: it is a driver, not a core.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use identity::audit::AuditAction;
use identity::{Namespace, PeId, PoolHandle, Serial, SpiffeId};
use store::audit::archive::{self, Cut, Target};
use store::audit::{Chain, Outcome, Record, append_in};
use store::db::{Store, StoreOptions};

/// Records per transaction.
const BATCH: u64 = 1000;

/// A record of `kind` as the registrar writes it (daemon::to_record, daemon::refusals).
fn record(kind: &str, i: u64) -> Record {
    let pe = PeId::new(u32::try_from(i % 4_000_000_000).unwrap_or(1) + 1).expect("nonzero");
    let actor = |path: String| SpiffeId::parse(&format!("spiffe://acme.test/{path}")).expect("id");
    let remote = std::net::SocketAddr::from((
        [10, 1, (i % 200) as u8, (i % 250) as u8],
        40_000 + (i % 20_000) as u16,
    ));
    // rsp-pki serials are 16 random bytes.
    let serial = Serial::from_bytes(
        &(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).to_be_bytes(),
    );
    let t = 1_800_000_000_000 + i;
    match kind {
        "register" => {
            let mut r = Record::new(t, AuditAction::Register, Outcome::Ok)
                .actor(actor(format!("pe/echo-{}", i % 100)))
                .remote(remote)
                .namespace(Namespace::new("default").expect("namespace"))
                .pool(PoolHandle::new(b"echo").expect("pool handle"))
                .pe_id(pe);
            r.serial = Some(serial);
            r
        }
        "resolve" => {
            let mut r = Record::new(t, AuditAction::Resolve, Outcome::Ok)
                .actor(actor(format!("pu/client-{}", i % 1000)))
                .remote(remote)
                .namespace(Namespace::new("default").expect("namespace"))
                .pool(PoolHandle::new(b"echo").expect("pool handle"));
            r.serial = Some(serial);
            r
        }
        // One aggregate of refused handshakes from one source in one second.
        _ => Record::new(t, AuditAction::Handshake, Outcome::Refused("tls".into()))
            .remote(remote)
            .detail(format!(
                "{} more like this one (asap, last 1 s, aggregated): peer sent no certificates",
                i % 1000 + 1
            )),
    }
}

/// Bytes the database holds (pages in use) and its file's size, after a WAL checkpoint.
async fn used_bytes(store: &Store) -> (u64, u64) {
    let mut conn = store.acquire().await.expect("connection");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(conn.sqlite().expect("SQLite"))
        .await
        .expect("checkpoint");
    let q = |sql: &'static str| sqlx::query_as::<_, (i64,)>(sql);
    let (pages,) = q("PRAGMA page_count")
        .fetch_one(conn.sqlite().expect("SQLite"))
        .await
        .expect("pages");
    let (free,) = q("PRAGMA freelist_count")
        .fetch_one(conn.sqlite().expect("SQLite"))
        .await
        .expect("free");
    let (size,) = q("PRAGMA page_size")
        .fetch_one(conn.sqlite().expect("SQLite"))
        .await
        .expect("size");
    let bytes = |pages: i64| u64::try_from(pages * size).unwrap_or_default();
    (bytes(pages - free), bytes(pages))
}

async fn measure(kinds: &[&str], n: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), &StoreOptions::default())
        .await
        .expect("store");
    let (before, _) = used_bytes(&store).await;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let records: Vec<Record> = (i..(i + BATCH).min(n))
            .map(|j| record(kinds[(j % kinds.len() as u64) as usize], j))
            .collect();
        let mut tx = store.begin().await.expect("begin");
        append_in(&mut tx, &Chain::Local, &records)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        i += BATCH;
    }
    let elapsed = started.elapsed();
    let live = used_bytes(&store).await.0 - before;
    // A writer appending one record every 10 ms meanwhile, as the registrar's would:
    // its longest wait is how long the archive holds the write lock.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut longest = std::time::Duration::ZERO;
            let mut j = 10 * n;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let mut tx = store.begin().await.expect("begin");
                append_in(&mut tx, &Chain::Local, &[record("resolve", j)])
                    .await
                    .expect("append");
                tx.commit().await.expect("commit");
                longest = longest.max(t.elapsed());
                j += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            longest
        })
    };
    let file = dir.path().join("all.jsonl.gz");
    let archiving = Instant::now();
    let done = archive::archive(
        &store,
        &Chain::Local,
        &Target::File(file),
        Cut::BeforeId(n + 1),
        None,
        Record::new(1_900_000_000_000, AuditAction::AuditArchive, Outcome::Ok),
        1_900_000_000_000,
    )
    .await
    .expect("archive");
    let archiving = archiving.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stall = writer.await.expect("writer");
    let (in_use, file_size) = used_bytes(&store).await;
    let per = |bytes: u64| bytes as f64 / n as f64;
    println!(
        "{}, {n} records ({:.1} s to append): database {:.1} B/record ({:.0} MB per million), \
         archive {:.1} B/record ({:.0} MB per million); after archiving the database file \
         keeps {:.0} MB, {} KiB of it in use (the rest is reused by new records); archiving \
         took {:.1} s, a concurrent writer waited at most {} ms",
        kinds.join("+"),
        elapsed.as_secs_f64(),
        per(live),
        per(live),
        per(done.bytes),
        per(done.bytes),
        file_size as f64 / 1e6,
        in_use.saturating_sub(before) / 1024,
        archiving.as_secs_f64(),
        stall.as_millis(),
    );
}

fn main() {
    let n = std::env::var("RSP_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for kinds in [
            &["register"][..],
            &["resolve"],
            &["handshake-aggregate"],
            &["register", "resolve", "resolve", "handshake-aggregate"],
        ] {
            measure(kinds, n).await;
        }
    });
}
