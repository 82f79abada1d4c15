//! The audit writer task: group commit, bounded queue, clean shutdown.
//!
//! One task owns a dedicated connection. It takes the first queued record, then gathers
//! everything already queued; if any gathered record is [`Durability::BeforeReply`] it
//! commits at once, otherwise it keeps gathering until the batch delay since the first
//! record has passed or the batch is full. While a transaction commits (an fsync with
//! `synchronous=FULL`), new records queue up and go into the next transaction together:
//! the more concurrent callers, the more records per fsync.
//!
//! A commit that fails is retried with a back-off; if it keeps failing, the callers
//! waiting for that batch get [`Error::AuditWrite`] (and must refuse the state changes
//! they meant to audit), its batched records are counted as lost, and the writer goes on
//! with the next batch: a full or failing disk refuses the operations that need a record
//! for as long as it lasts, it does not stop the registrar (issue 18). The log closes
//! only at [`AuditLog::shutdown`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Sqlite};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout_at};

use super::{Durability, Record, insert_checked};
use crate::db::{Error, Result, Store};

/// Configuration of the [`AuditLog`] writer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuditConfig {
    /// Records that may wait in the queue; when it is full, [`AuditLog::append`] waits
    /// (backpressure). Default 8192.
    pub queue: usize,
    /// Most records per transaction. Default 1024.
    pub max_batch: usize,
    /// How long the writer gathers [`Durability::Batched`] records before committing them
    /// (when no [`Durability::BeforeReply`] record forces an earlier commit), counted from
    /// when the oldest of them was queued. Unless the queue is full (backpressure), a
    /// batched record is durable at most this long plus one commit time after it was
    /// queued, or plus two when a commit was in progress at the deadline. Default 50 ms
    /// (issue 4 asks for ≤ 100 ms).
    pub batch_delay: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            queue: 8192,
            max_batch: 1024,
            batch_delay: Duration::from_millis(50),
        }
    }
}

/// Counters of the writer (for `/metrics` and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Records committed.
    pub records: u64,
    /// Records waiting in the queue now.
    pub queued: usize,
    /// Whether the last commit failed (after its retries): the disk is full or failing.
    pub failed: bool,
    /// [`Durability::Batched`] records accepted but not committed because their commit
    /// failed. `BeforeReply` callers were told instead.
    pub lost: u64,
    /// Batches whose commit failed after its retries, since the start.
    pub failed_commits: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    records: AtomicU64,
    failed: AtomicBool,
    lost: AtomicU64,
    failed_commits: AtomicU64,
}

struct Job {
    record: Record,
    /// When the caller queued it: the batch delay counts from here.
    queued_at: Instant,
    /// `Some` for [`Durability::BeforeReply`]: answered after the commit.
    done: Option<oneshot::Sender<Result<()>>>,
}

#[allow(
    clippy::large_enum_variant,
    reason = "records are nearly every message; boxing would allocate once per record"
)]
enum Msg {
    Record(Job),
    Shutdown(oneshot::Sender<Result<()>>),
}

/// Handle to the audit writer task. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    capacity: usize,
    counters: Arc<Counters>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer on a connection of `store` that it keeps until shutdown (so the
    /// store needs at least two connections: not [`Store::in_memory`]). The chain continues
    /// from the last stored row.
    pub async fn start(store: &Store, config: AuditConfig) -> Result<Self> {
        if config.queue == 0 || config.max_batch == 0 {
            return Err(Error::Invalid {
                what: "audit config",
                reason: "queue and max_batch must be at least 1",
            });
        }
        let mut conn = store.acquire().await?;
        // Fail now rather than on the first record if the table is unreadable.
        super::head(&mut conn).await?;
        let (tx, rx) = mpsc::channel(config.queue);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(conn, rx, config.clone(), Arc::clone(&counters)));
        Ok(Self {
            tx,
            capacity: config.queue,
            counters,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Appends `record`. With [`Durability::BeforeReply`] this returns after the record's
    /// transaction committed; with [`Durability::Batched`], once it is queued. Waits while
    /// the queue is full; never drops a record. Errors: [`Error::Invalid`] for a bad record
    /// (nothing queued), [`Error::AuditClosed`] after shutdown, [`Error::AuditWrite`] if its
    /// transaction could not be committed.
    pub async fn append(&self, record: Record, durability: Durability) -> Result<()> {
        record.check()?;
        match durability {
            Durability::Batched => self.queue(record, None).await,
            Durability::BeforeReply => {
                let (done, committed) = oneshot::channel();
                self.queue(record, Some(done)).await?;
                committed.await.map_err(|_| Error::AuditClosed)?
            }
        }
    }

    /// Queues a [`Durability::BeforeReply`] record and returns at once (after waiting for
    /// queue space) with a receiver that answers when its transaction committed. A driver
    /// that must not wait for the disk itself (the registrar core task) holds its replies
    /// on this receiver, so many records share one commit. Records are committed in the
    /// order they are queued.
    pub async fn enqueue_before_reply(
        &self,
        record: Record,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        record.check()?;
        let (done, committed) = oneshot::channel();
        self.queue(record, Some(done)).await?;
        Ok(committed)
    }

    /// Queues a checked record, waiting for space.
    async fn queue(&self, record: Record, done: Option<oneshot::Sender<Result<()>>>) -> Result<()> {
        // The driver's clock, for the batch delay only; the record carries its own time.
        let queued_at = Instant::now();
        self.tx
            .send(Msg::Record(Job {
                record,
                queued_at,
                done,
            }))
            .await
            .map_err(|_| Error::AuditClosed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            records: self.counters.records.load(Ordering::Relaxed),
            queued: self.capacity.saturating_sub(self.tx.capacity()),
            failed: self.counters.failed.load(Ordering::Relaxed),
            lost: self.counters.lost.load(Ordering::Relaxed),
            failed_commits: self.counters.failed_commits.load(Ordering::Relaxed),
        }
    }

    /// Commits everything queued, stops the writer and waits for it. Appends that were not
    /// queued before the shutdown fail with [`Error::AuditClosed`]. Calling it again is
    /// harmless. Returns [`Error::AuditWrite`] if the last commits failed.
    pub async fn shutdown(&self) -> Result<()> {
        let (done, flushed) = oneshot::channel();
        let result = match self.tx.send(Msg::Shutdown(done)).await {
            Ok(()) => flushed.await.unwrap_or(Err(Error::AuditClosed)),
            // Already stopped.
            Err(_) => Ok(()),
        };
        if let Some(task) = self.task.lock().await.take() {
            task.await.map_err(|_| Error::AuditWrite {
                reason: "the writer task panicked".to_owned(),
            })?;
        }
        if self.counters.failed.load(Ordering::Relaxed) {
            return result.and(Err(Error::AuditWrite {
                reason: "the last commit failed".to_owned(),
            }));
        }
        result
    }
}

/// Attempts per batch before the writer gives up (first try included).
const ATTEMPTS: u32 = 4;
/// Back-off before the first retry; doubled for each further retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);

async fn run(
    mut conn: PoolConnection<Sqlite>,
    mut rx: mpsc::Receiver<Msg>,
    config: AuditConfig,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(config.max_batch);
    let mut shutdowns: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let mut closing = false;
    loop {
        // Wait for the first message of a batch.
        if !closing {
            match rx.recv().await {
                Some(msg) => take(msg, &mut batch, &mut shutdowns, &mut closing),
                None => closing = true,
            }
        }
        if !closing {
            gather(&mut rx, &config, &mut batch, &mut shutdowns, &mut closing).await;
        }
        if closing {
            // Refuse new messages, and take every one already queued (also those queued
            // after the shutdown request): an accepted record is never dropped.
            rx.close();
            while let Some(msg) = rx.recv().await {
                take(msg, &mut batch, &mut shutdowns, &mut closing);
            }
        }
        let mut result = Ok(());
        // At shutdown the batch may exceed max_batch: commit it in pieces.
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(config.max_batch));
            if let Err(reason) = commit(&mut conn, &batch, &counters).await {
                // This batch is refused; the next one is tried afresh (the disk may have
                // room again). Its callers refuse what they meant to audit; the counters
                // tell the driver, which logs it.
                counters.failed.store(true, Ordering::Relaxed);
                counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                fail_all(std::mem::replace(&mut batch, rest), &reason, &counters);
                result = Err(reason);
                continue;
            }
            counters.failed.store(false, Ordering::Relaxed);
            result = Ok(());
            for job in std::mem::replace(&mut batch, rest) {
                if let Some(done) = job.done {
                    // The caller may have given up waiting; the record is committed anyway.
                    let _ = done.send(Ok(()));
                }
            }
        }
        if closing {
            for done in shutdowns.drain(..) {
                let _ = done.send(match &result {
                    Ok(()) => Ok(()),
                    Err(reason) => Err(Error::AuditWrite {
                        reason: reason.clone(),
                    }),
                });
            }
            return;
        }
    }
}

fn take(
    msg: Msg,
    batch: &mut Vec<Job>,
    shutdowns: &mut Vec<oneshot::Sender<Result<()>>>,
    closing: &mut bool,
) {
    match msg {
        Msg::Record(job) => batch.push(job),
        Msg::Shutdown(done) => {
            shutdowns.push(done);
            *closing = true;
        }
    }
}

/// Adds to `batch` what is queued now, then, unless a record needs to be durable before
/// its reply, what arrives within the batch delay.
async fn gather(
    rx: &mut mpsc::Receiver<Msg>,
    config: &AuditConfig,
    batch: &mut Vec<Job>,
    shutdowns: &mut Vec<oneshot::Sender<Result<()>>>,
    closing: &mut bool,
) {
    // Counted from when the oldest record was queued, not from when the writer took it:
    // time spent queued behind a commit counts against the delay.
    let deadline = match batch.first() {
        Some(job) => job.queued_at + config.batch_delay,
        None => Instant::now() + config.batch_delay,
    };
    loop {
        while batch.len() < config.max_batch && !*closing {
            match rx.try_recv() {
                Ok(msg) => take(msg, batch, shutdowns, closing),
                Err(_) => break,
            }
        }
        let urgent = batch.iter().any(|job| job.done.is_some());
        if urgent || *closing || batch.len() >= config.max_batch {
            return;
        }
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) => take(msg, batch, shutdowns, closing),
            Ok(None) => {
                *closing = true;
                return;
            }
            Err(_elapsed) => return,
        }
    }
}

/// Commits `batch` in one transaction, retrying with a back-off. Returns SQLite's message
/// after the last failed attempt.
async fn commit(
    conn: &mut PoolConnection<Sqlite>,
    batch: &[Job],
    counters: &Counters,
) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match try_commit(conn, batch).await {
            Ok(()) => break,
            Err(_) if attempt < ATTEMPTS => {
                sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(err) => return Err(err.to_string()),
        }
    }
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    counters
        .records
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(())
}

async fn try_commit(conn: &mut PoolConnection<Sqlite>, batch: &[Job]) -> Result<()> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let records: Vec<&Record> = batch.iter().map(|job| &job.record).collect();
    insert_checked(&mut tx, &records).await?;
    tx.commit().await?;
    Ok(())
}

fn fail_all(batch: Vec<Job>, reason: &str, counters: &Counters) {
    for job in batch {
        match job.done {
            Some(done) => {
                let _ = done.send(Err(Error::AuditWrite {
                    reason: reason.to_owned(),
                }));
            }
            None => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
