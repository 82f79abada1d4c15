//! The audit writer task: group commit, bounded queue, clean shutdown.
//!
//! One task owns a dedicated connection. It takes the first queued record, then gathers
//! everything already queued; if any gathered record is [`Durability::BeforeReply`] it
//! commits at once, otherwise it keeps gathering until the batch delay since the first
//! record has passed or the batch is full. While a transaction commits (an fsync with
//! `synchronous=FULL`), new records queue up and go into the next transaction together:
//! the more concurrent callers, the more records per fsync.
//!
//! A driver that must not wait for the disk (the registrar's core task) hands a whole
//! step's records over as one message with [`AuditLog::try_queue`], without waiting, its
//! [`Durability::BeforeReply`] records numbered 1, 2, 3, … in order; the writer publishes
//! the *commit index* ([`AuditLog::commit_index`]): the number up to which every such
//! record is settled (committed, or failed after the retries), and which numbers failed.
//! One wake-up of the writer per batch and one watch for all waiters, instead of a task,
//! a channel and an answer per record.
//!
//! A commit that fails is retried with a back-off; if it keeps failing, the callers
//! waiting for that batch get [`Error::AuditWrite`] (and must refuse the state changes
//! they meant to audit), its batched records are counted as lost, and the writer goes on
//! with the next batch: a full or failing disk refuses the operations that need a record
//! for as long as it lasts, it does not stop the registrar (issue 18). The log closes
//! only at [`AuditLog::shutdown`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use sqlx::Connection;
use tokio::sync::{Mutex, Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout_at};

use super::{AppendPoint, COMMIT_AT_MAX, Chain, Durability, Record, commit_at, insert_at_head};
use crate::db::{Error, Result, Store, StoreConn, WRITE_LOCK};

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
    /// Records [`AuditLog::try_queue`] may add beyond `queue` (it never waits: a caller
    /// that must not wait for the disk gets more room before its records are refused).
    /// Default 65,536.
    pub backlog: usize,
    /// The chain the writer appends to: [`Chain::Local`] (the default) in a store of one
    /// registrar, the registrar's own [`Chain::Registrar`] in a store several share.
    pub chain: Chain,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            backlog: 65_536,
            queue: 8192,
            max_batch: 1024,
            batch_delay: Duration::from_millis(50),
            chain: Chain::Local,
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
    /// Records sent to the writer and not yet taken by it: the queue's bound is kept here
    /// (the channel itself is unbounded, so that a batch is one message).
    queued: AtomicUsize,
    /// Woken when the writer took records (room for [`AuditLog::append`]) or stopped.
    room: Notify,
    transactions: AtomicU64,
    records: AtomicU64,
    failed: AtomicBool,
    lost: AtomicU64,
    failed_commits: AtomicU64,
    /// Hand-over to commit, per record committed.
    commit_latency: super::latency::CommitLatency,
}

/// A record for [`AuditLog::try_queue`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Queued {
    /// The record.
    pub record: Record,
    /// Its number if it is [`Durability::BeforeReply`] (see [`CommitIndex`]); `None` for
    /// [`Durability::Batched`].
    pub seq: Option<u64>,
}

impl Queued {
    /// A record; `seq`: its number if something waits for its commit.
    pub fn new(record: Record, seq: Option<u64>) -> Self {
        Self { record, seq }
    }
}

struct Job {
    record: Record,
    /// When the caller queued it: the batch delay counts from here.
    queued_at: Instant,
    /// Its number in the commit index, if something waits for it.
    seq: Option<u64>,
    /// `Some` for an [`AuditLog::append`] with [`Durability::BeforeReply`]: answered after
    /// the commit.
    done: Option<oneshot::Sender<Result<()>>>,
}

impl Job {
    /// Whether something waits for its commit (the writer commits at once).
    fn urgent(&self) -> bool {
        self.seq.is_some() || self.done.is_some()
    }
}

enum Msg {
    Records(Vec<Job>),
    Shutdown(oneshot::Sender<Result<()>>),
}

/// The commit index the writer publishes for the records numbered in
/// [`AuditLog::try_queue`]: every record up to [`CommitIndex::take`]'s number is settled,
/// the listed ones failed. One reader takes the failures (the caller that numbers).
#[derive(Debug)]
pub struct CommitIndex {
    settled: watch::Receiver<u64>,
    failed: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl CommitIndex {
    /// Whether the index moved since it was last taken.
    pub fn moved(&self) -> bool {
        self.settled.has_changed().unwrap_or(false)
    }

    /// Waits until the index moves; [`Error::AuditClosed`] once the writer has stopped
    /// (everything it was handed has settled then).
    pub async fn changed(&mut self) -> Result<()> {
        self.settled.changed().await.map_err(|_| Error::AuditClosed)
    }

    /// The index now, and the numbers that failed since the last call.
    pub fn take(&mut self) -> (u64, Vec<u64>) {
        let settled = *self.settled.borrow_and_update();
        // Read after the index: every failure up to it was pushed before it was published.
        let failed =
            std::mem::take(&mut *self.failed.lock().unwrap_or_else(PoisonError::into_inner));
        (settled, failed)
    }
}

/// The writer's side of the commit index.
struct Publisher {
    settled: watch::Sender<u64>,
    failed: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Publisher {
    /// Publishes that the numbered records of `jobs` settled; `failed`: their commit failed.
    fn settle(&self, jobs: &[Job], failed: bool) {
        let Some(last) = jobs.iter().filter_map(|j| j.seq).max() else {
            return;
        };
        if failed {
            // Before the index passes them.
            let mut list = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            list.extend(jobs.iter().filter_map(|j| j.seq));
        }
        self.settled.send_replace(last);
    }
}

/// Handle to the audit writer task. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    /// Records queued before [`AuditLog::append`] waits.
    capacity: usize,
    /// Records queued before [`AuditLog::try_queue`] refuses.
    limit: usize,
    counters: Arc<Counters>,
    index: watch::Receiver<u64>,
    failed: Arc<std::sync::Mutex<Vec<u64>>>,
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
        super::head(&mut conn, &config.chain).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let (settled, index) = watch::channel(0);
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let publisher = Publisher {
            settled,
            failed: Arc::clone(&failed),
        };
        let task = tokio::spawn(run(
            store.clone(),
            conn,
            rx,
            config.clone(),
            Arc::clone(&counters),
            publisher,
        ));
        Ok(Self {
            tx,
            capacity: config.queue,
            limit: config.queue.saturating_add(config.backlog),
            counters,
            index,
            failed,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// The commit index of the records numbered in [`AuditLog::try_queue`]. The failures
    /// go to one reader: the caller that numbers the records.
    pub fn commit_index(&self) -> CommitIndex {
        CommitIndex {
            settled: self.index.clone(),
            failed: Arc::clone(&self.failed),
        }
    }

    /// Queues `records` in order as one message to the writer, without waiting; returns
    /// those that did not fit, from the end (the queue holds `queue + backlog` records:
    /// [`AuditConfig::backlog`]). The numbered ones ([`Queued::seq`]) must be numbered
    /// 1, 2, 3, … in the order they are queued, by one caller; the [`CommitIndex`] passes
    /// each once it settled, and lists it if it failed. A number that did not fit never
    /// reaches the writer: the caller counts it as failed. Errors: [`Error::Invalid`] for
    /// a bad record (nothing queued), [`Error::AuditClosed`] after shutdown.
    pub fn try_queue(&self, mut records: Vec<Queued>) -> Result<Vec<Queued>> {
        for q in &records {
            q.record.check()?;
        }
        let fit = self.reserve(records.len(), self.limit);
        let refused = records.split_off(fit);
        if fit > 0 {
            let queued_at = Instant::now();
            let jobs = records
                .into_iter()
                .map(|q| Job {
                    record: q.record,
                    queued_at,
                    seq: q.seq,
                    done: None,
                })
                .collect();
            self.send(jobs, fit)?;
        }
        Ok(refused)
    }

    /// Takes room for up to `want` records while fewer than `limit` are queued; returns
    /// how many it took.
    fn reserve(&self, want: usize, limit: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .counters
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                granted = want.min(limit.saturating_sub(queued));
                (granted > 0).then_some(queued + granted)
            });
        granted
    }

    /// Sends `jobs` (`n` records, room already taken) to the writer.
    fn send(&self, jobs: Vec<Job>, n: usize) -> Result<()> {
        self.tx.send(Msg::Records(jobs)).map_err(|_| {
            self.counters.queued.fetch_sub(n, Ordering::AcqRel);
            Error::AuditClosed
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

    /// Queues a checked record, waiting for space.
    async fn queue(&self, record: Record, done: Option<oneshot::Sender<Result<()>>>) -> Result<()> {
        loop {
            // Registered before looking, so that room made meanwhile is not missed.
            let room = self.counters.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.tx.is_closed() {
                return Err(Error::AuditClosed);
            }
            if self.reserve(1, self.capacity) == 1 {
                break;
            }
            room.await;
        }
        // The driver's clock, for the batch delay only; the record carries its own time.
        let queued_at = Instant::now();
        let job = Job {
            record,
            queued_at,
            seq: None,
            done,
        };
        self.send(vec![job], 1)
    }

    /// The writer's counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            records: self.counters.records.load(Ordering::Relaxed),
            queued: self.counters.queued.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            lost: self.counters.lost.load(Ordering::Relaxed),
            failed_commits: self.counters.failed_commits.load(Ordering::Relaxed),
        }
    }

    /// The time from each record's hand-over to its commit, as a histogram (records
    /// whose commit failed are not in it).
    pub fn commit_latency(&self) -> super::LatencyHistogram {
        self.counters.commit_latency.snapshot()
    }

    /// Commits everything queued, stops the writer and waits for it. Appends that were not
    /// queued before the shutdown fail with [`Error::AuditClosed`]. Calling it again is
    /// harmless. Returns [`Error::AuditWrite`] if the last commits failed.
    pub async fn shutdown(&self) -> Result<()> {
        let (done, flushed) = oneshot::channel();
        let result = match self.tx.send(Msg::Shutdown(done)) {
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
    store: Store,
    mut conn: StoreConn,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    config: AuditConfig,
    counters: Arc<Counters>,
    index: Publisher,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(config.max_batch);
    let mut shutdowns: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let mut closing = false;
    // Whether `conn` failed and is to be replaced before the next attempt (PostgreSQL).
    let mut stale = false;
    // Where the last commit left the chain, so that the next one need not read it back
    // (the fork guard checks that it still holds: `commit_at`); unknown after a failure.
    let mut known: Option<AppendPoint> = None;
    loop {
        // Wait for the first message of a batch.
        if !closing {
            match rx.recv().await {
                Some(msg) => take(msg, &mut batch, &mut shutdowns, &mut closing, &counters),
                None => closing = true,
            }
        }
        if !closing {
            gather(
                &mut rx,
                &config,
                &mut batch,
                &mut shutdowns,
                &mut closing,
                &counters,
            )
            .await;
        }
        if closing {
            // Refuse new messages, and take every one already queued (also those queued
            // after the shutdown request): an accepted record is never dropped.
            rx.close();
            // Waiting appenders see the log closed.
            counters.room.notify_waiters();
            while let Some(msg) = rx.recv().await {
                take(msg, &mut batch, &mut shutdowns, &mut closing, &counters);
            }
        }
        let mut result = Ok(());
        // At shutdown the batch may exceed max_batch: commit it in pieces.
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(config.max_batch));
            if let Err(reason) = commit(
                &store,
                &mut conn,
                &mut stale,
                &config.chain,
                &batch,
                &counters,
                &mut known,
            )
            .await
            {
                // This batch is refused; the next one is tried afresh (the disk may have
                // room again). Its callers refuse what they meant to audit; the counters
                // tell the driver, which logs it.
                counters.failed.store(true, Ordering::Relaxed);
                counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                // Nothing waits for a Batched record: it is counted lost (before the index
                // moves, so that whoever watches it sees the count).
                let lost = batch.iter().filter(|job| !job.urgent()).count();
                counters.lost.fetch_add(lost as u64, Ordering::Relaxed);
                index.settle(&batch, true);
                fail_all(std::mem::replace(&mut batch, rest), &reason);
                result = Err(reason);
                continue;
            }
            counters.failed.store(false, Ordering::Relaxed);
            result = Ok(());
            let committed = Instant::now();
            for job in &batch {
                counters
                    .commit_latency
                    .observe(committed.saturating_duration_since(job.queued_at));
            }
            index.settle(&batch, false);
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
    counters: &Counters,
) {
    match msg {
        Msg::Records(mut jobs) => {
            counters.queued.fetch_sub(jobs.len(), Ordering::AcqRel);
            counters.room.notify_waiters();
            batch.append(&mut jobs);
        }
        Msg::Shutdown(done) => {
            shutdowns.push(done);
            *closing = true;
        }
    }
}

/// Adds to `batch` what is queued now, then, unless a record needs to be durable before
/// its reply, what arrives within the batch delay.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    config: &AuditConfig,
    batch: &mut Vec<Job>,
    shutdowns: &mut Vec<oneshot::Sender<Result<()>>>,
    closing: &mut bool,
    counters: &Counters,
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
                Ok(msg) => take(msg, batch, shutdowns, closing, counters),
                Err(_) => break,
            }
        }
        let urgent = batch.iter().any(Job::urgent);
        if urgent || *closing || batch.len() >= config.max_batch {
            return;
        }
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) => take(msg, batch, shutdowns, closing, counters),
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
    store: &Store,
    conn: &mut StoreConn,
    stale: &mut bool,
    chain: &Chain,
    batch: &[Job],
    counters: &Counters,
    known: &mut Option<AppendPoint>,
) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    // A PostgreSQL connection does not survive its server's restart: after a failed
    // attempt the writer takes a fresh one from the pool (which reconnects) before it
    // tries again, also for the first attempt of the next batch, or it would keep
    // failing on a dead connection once the server is back. SQLite's connection stays.
    let postgres = store.backend() == crate::db::Backend::Postgres;
    loop {
        if *stale {
            match store.acquire().await {
                Ok(fresh) => {
                    *conn = fresh;
                    *stale = false;
                }
                Err(err) if attempt >= ATTEMPTS => return Err(err.to_string()),
                Err(_) => {
                    sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                    continue;
                }
            }
        }
        match try_commit(conn, chain, batch, known.take()).await {
            Ok(end) => {
                *known = Some(end);
                break;
            }
            Err(_) if attempt < ATTEMPTS => {
                *stale = postgres;
                sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(err) => {
                // The next batch starts on a fresh connection.
                *stale = postgres;
                return Err(err.to_string());
            }
        }
    }
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    counters
        .records
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// One transaction that holds the store's write lock (`BEGIN IMMEDIATE` on SQLite,
/// [`WRITE_LOCK`] on PostgreSQL, as [`Store::begin`]) while it reads the chain head
/// and the next id and appends after them: writers of other chains in the same store
/// (other registrars) take the same lock, so nobody's chain forks and ids stay unique.
/// On SQLite, with `known` (where the last commit left the chain) and a batch that fits,
/// the whole transaction is one round trip ([`commit_at`]); if `known` no longer holds,
/// the fork guard refuses it and the head is read as usual. Returns where the chain ends.
async fn try_commit(
    conn: &mut StoreConn,
    chain: &Chain,
    batch: &[Job],
    known: Option<AppendPoint>,
) -> Result<AppendPoint> {
    let records: Vec<&Record> = batch.iter().map(|job| &job.record).collect();
    match conn {
        StoreConn::Sqlite(conn) => {
            if let Some(at) = known.filter(|_| records.len() <= COMMIT_AT_MAX)
                && let Ok(end) = commit_at(conn, chain, &records, at).await
            {
                return Ok(end);
            }
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let (_, end) = insert_at_head(&mut tx, chain, &records).await?;
            tx.commit().await?;
            Ok(end)
        }
        StoreConn::Postgres(conn) => {
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
            let (_, end) = insert_at_head(&mut tx, chain, &records).await?;
            tx.commit().await?;
            Ok(end)
        }
    }
}

fn fail_all(batch: Vec<Job>, reason: &str) {
    for done in batch.into_iter().filter_map(|job| job.done) {
        let _ = done.send(Err(Error::AuditWrite {
            reason: reason.to_owned(),
        }));
    }
}
