//! The driver: the one task that owns the registrar [`Core`] and carries out its actions.
//!
//! How a message flows:
//! 1. A listener ([`super::listen`]) accepts; a connection task ([`super::connection`], or
//!    [`super::peer`] for ENRP) does the TLS handshake, cuts frames, decodes them, applies
//!    the rate limits ([`super::limits`]) and sends an [`Event`] to this task. A handle
//!    resolution does not come here: the connection task answers it from the core's read
//!    view ([`enrp_core::registrar::ReadView`]) and hands its audit record to the writer
//!    ([`record_of`], [`hand_over`]: through [`forward_audit`], which hands what is queued
//!    to the writer as one batch), unless the connection still waits for answers from
//!    this task (then the resolution queues behind them, to keep the connection's order).
//! 2. [`run_core`] turns the event into a core input ([`Core::handle`]), or a due timer
//!    into [`Core::handle_timeout`], and gets back a list of actions.
//! 3. [`execute`] carries them out in order: the step's audit records go to the audit
//!    writer as one batch ([`AuditLog::try_queue`], one message and one wake-up of the
//!    writer per step) without waiting; messages are encoded into one buffer per connection
//!    per step ([`Outbox`]) and go to its send queue ([`deliver`]), whose write loop sends
//!    them in order; dials go to the dialers.
//! 4. The barrier ([`super::barrier`]): an audit record with [`Durability::BeforeReply`]
//!    gets a number, and the messages after it are held in the driver's [`Barrier`] under
//!    that number until the commit index the writer publishes ([`AuditLog::commit_index`]:
//!    the number up to which every record settled) passes it; then they go to their
//!    connections. The core never waits for the disk, yet no reply leaves before its record
//!    is durable, each connection's messages leave in order, and many records share one
//!    commit; no task, channel or answer per record.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ::asap::addr::TransportAddr;
use store::audit::{AuditLog, CommitIndex, Outcome, Queued, Record};
use tokio::sync::{mpsc, oneshot, watch};

use super::audit::to_record;
use super::barrier::Barrier;
use super::{ConnHandle, Counters, Error, Event, Outgoing, connection, limits, now_ms};
use enrp_core::registrar::{Action, AuditEvent, ConnId, Core, Input};
use identity::audit::{AuditAction, Durability};

/// Most queued events applied in a row before a due timer gets its turn (the size of the
/// event channel: one queue's worth).
const MAX_STREAK: usize = 8192;

#[allow(clippy::too_many_arguments)] // each a different thing the one core task drives
pub(super) async fn run_core(
    mut core: Core,
    mut events: mpsc::Receiver<Event>,
    audit: AuditLog,
    jobs: mpsc::Sender<AuditJob>,
    counters: Arc<Counters>,
    dials: Dials,
    mut stop: watch::Receiver<bool>,
    changes: admin_api::PoolChanges,
) -> Result<(), Error> {
    let mut index = audit.commit_index();
    let mut writers: HashMap<ConnId, ConnHandle> = HashMap::new();
    let mut barrier = Barrier::default();
    // Events already queued are applied before a due timer, at most MAX_STREAK in a row:
    // a keep-alive acknowledgement waiting behind a burst of work (say, thousands of PEs
    // removed at once) must count before its PE's timeout is judged; the bound keeps
    // timers from starving under a steady flood.
    let mut streak = 0usize;
    let mut warn_local_plane = dials.warn_local_plane;
    loop {
        // Replies whose records committed leave first, also in a streak of queued events
        // (and what waits for a record refused at once: it is withheld now).
        if index.moved() || barrier.has_failed() {
            release(&mut barrier, &mut index, &writers);
        }
        let deadline = core.next_timeout().map(tokio::time::Instant::from_std);
        let mut done = None;
        let queued = if streak < MAX_STREAK {
            events.try_recv().ok()
        } else {
            None
        };
        streak = if queued.is_some() { streak + 1 } else { 0 };
        let event = match queued {
            Some(event) => Some(event),
            None => tokio::select! {
                event = events.recv() => match event {
                    Some(event) => Some(event),
                    None => break,
                },
                () = sleep_until(deadline) => None,
                Ok(()) = index.changed() => {
                    release(&mut barrier, &mut index, &writers);
                    continue;
                }
                _ = stop.changed() => break,
            },
        };
        let now = tokio::time::Instant::now().into_std();
        let mut response = None;
        let actions = match event {
            None => core.handle_timeout(now),
            Some(Event::Connected {
                conn,
                client,
                addrs,
                writer,
            }) => {
                writers.insert(conn, writer);
                core.handle(
                    Input::Connected {
                        conn,
                        client,
                        addrs,
                    },
                    now,
                )
            }
            Some(Event::PeerConnected { input, writer }) => {
                if let Input::PeerUp { conn, .. } = &input {
                    writers.insert(*conn, writer);
                }
                if std::mem::take(&mut warn_local_plane) {
                    tracing::warn!("{}", crate::running::LOCAL_CONTROL_PLANE);
                }
                core.handle(input, now)
            }
            Some(Event::Input(input)) => {
                if let Input::Closed { conn } | Input::PeerDown { conn } = &input {
                    writers.remove(conn);
                }
                core.handle(input, now)
            }
            Some(Event::Invalid {
                conn,
                error,
                response: bytes,
            }) => {
                let mut actions = core.handle(Input::Malformed { conn, error }, now);
                let before = actions.len();
                actions.retain(|a| {
                    !matches!(a, Action::Send { conn: c, msg: ::asap::wire::AsapMsg::Error(_) } if *c == conn)
                });
                if actions.len() < before {
                    response = Some((conn, bytes));
                }
                actions
            }
            Some(Event::Limited {
                conn,
                client,
                msg,
                over,
            }) => limits::refused(conn, &client, &msg, over),
            Some(Event::Query(query)) => {
                query.answer(&core, now);
                continue;
            }
            Some(Event::Command { input, done: reply }) => {
                done = Some(reply);
                core.handle(input, now)
            }
            Some(Event::Drain {
                pe,
                deadline_ms,
                reply,
            }) => {
                let result = match deadline_ms {
                    // The core keeps monotonic instants; the operator gave wall-clock time.
                    Some(ms) => {
                        let left = std::time::Duration::from_millis(ms.saturating_sub(now_ms()));
                        core.drain(&pe, now + left, ms)
                    }
                    None => core.undrain(&pe),
                };
                let (actions, answer) = match result {
                    Ok(actions) => (actions, Ok(())),
                    Err(e) => (Vec::new(), Err(e)),
                };
                let _ = reply.send(answer);
                actions
            }
        };
        let removed = actions
            .iter()
            .filter(|a| matches!(a, Action::Audit { event, .. } if event.action.is_removal()))
            .count();
        counters.starting.store(core.starting(), Ordering::Relaxed);
        super::changes::publish(&mut core, &actions, &changes, now);
        let gate = execute(actions, &writers, &mut barrier, &audit, &counters, &dials);
        if let Some((conn, bytes)) = response {
            out(
                &writers,
                &mut barrier,
                gate,
                conn,
                Outgoing::Message { bytes },
            );
        }
        if let Some(reply) = done {
            // The operator hears back once the removals are durable in the audit log.
            if let Some(now) = barrier.hold(gate, None, Deferred::Removed(reply, removed)) {
                now.carry_out(&writers, true);
            }
        }
    }
    // The connection tasks see the core task gone: they answer no more resolutions.
    drop(jobs);
    // What waits for its record leaves once the record settled (the writer runs until
    // the daemon has stopped): no reply is lost to a shutdown, none leaves early.
    loop {
        release(&mut barrier, &mut index, &writers);
        if barrier.is_empty() || index.changed().await.is_err() {
            break;
        }
    }
    if !barrier.is_empty() {
        // The writer stopped first: every record handed over has settled.
        release(&mut barrier, &mut index, &writers);
    }
    // Dropping the writers lets every connection task end after what it was sent.
    Ok(())
}

/// An audit record on its way from a connection task (a resolution it answered) to the
/// writer through [`forward_audit`]: [`Durability::Batched`], nothing waits for it.
pub(super) struct AuditJob {
    record: Record,
}

impl AuditJob {
    /// A [`Durability::Batched`] record: nothing waits for its commit.
    pub(super) fn batched(record: Record) -> Self {
        Self { record }
    }
}

/// What the driver holds back until an audit record settled.
#[derive(Debug)]
enum Deferred {
    /// A message or a close for a connection.
    Out(ConnId, Outgoing),
    /// The count of PEs an operator's command removed ([`Event::Command`]).
    Removed(oneshot::Sender<usize>, usize),
}

impl Deferred {
    /// Carries it out now; `committed`: whether the record it waited for committed.
    fn carry_out(self, writers: &HashMap<ConnId, ConnHandle>, committed: bool) {
        match self {
            Self::Out(conn, out) if committed => deliver(writers, conn, out),
            // Audit before ack: a record that did not commit withholds the reply and ends
            // the connection, so that the client retries elsewhere.
            Self::Out(conn, _) => deliver(writers, conn, Outgoing::Close),
            Self::Removed(reply, removed) => {
                let _ = reply.send(removed);
            }
        }
    }
}

/// Applies the commit index: carries out what it releases.
fn release(
    barrier: &mut Barrier<Deferred>,
    index: &mut CommitIndex,
    writers: &HashMap<ConnId, ConnHandle>,
) {
    let (settled, failed) = index.take();
    for (deferred, committed) in barrier.release(settled, failed) {
        deferred.carry_out(writers, committed);
    }
}

/// Resolution records the connection tasks hand over without waiting, before
/// [`forward_audit`] takes them. Beyond it, the writer's queue and backlog
/// ([`store::audit::AuditConfig`]: 8,192 + 65,536 records). When they are full the disk is
/// far behind: batched records are dropped (counted, `rsp_audit_dropped_total`) and
/// operations that need theirs are refused, rather than the core task, and with it every
/// keep-alive and heartbeat, waiting for the disk.
pub(super) const AUDIT_BACKLOG: usize = 65_536;

/// Most records [`forward_audit`] takes in one wake-up (one message to the writer).
const FORWARD_BATCH: usize = 1024;

/// Hands the connection tasks' records to the audit writer, everything queued at once as
/// one batch, until the core task ends.
pub(super) async fn forward_audit(
    mut jobs: mpsc::Receiver<AuditJob>,
    audit: AuditLog,
    counters: Arc<Counters>,
) {
    let mut taken = Vec::with_capacity(FORWARD_BATCH);
    while jobs.recv_many(&mut taken, FORWARD_BATCH).await > 0 {
        let batch = taken
            .drain(..)
            .map(|job| Queued::new(job.record, None))
            .collect();
        queue(&audit, batch, &counters);
    }
}

/// Queues a batch of records for the writer without waiting, behind an `audit:gap` record
/// if records were dropped before (see [`record_gap`]); returns the numbers of those that
/// did not fit (the writer's queue and backlog are full), which never reach the writer.
fn queue(audit: &AuditLog, mut batch: Vec<Queued>, counters: &Counters) -> Vec<u64> {
    let gap = record_gap(counters);
    if let Some((record, _)) = &gap {
        batch.insert(0, Queued::new(record.clone(), None));
    }
    let n = batch.len();
    // Kept only in case the whole batch is refused (below).
    let numbered: Vec<u64> = batch.iter().filter_map(|q| q.seq).collect();
    let refused = match audit.try_queue(batch) {
        Ok(refused) => refused,
        Err(e) => {
            // Closed (the daemon stops) or a record the log refuses (checked before, in
            // [`record_of`]): nothing of it was queued, and what waits for it is withheld.
            tracing::error!(error = %e, records = n, "cannot audit: records lost, replies that wait for theirs withheld");
            for _ in usize::from(gap.is_some())..n {
                dropped(counters);
            }
            return numbered;
        }
    };
    if let Some((_, missing)) = gap
        && refused.len() < n
    {
        counters.audit_gap.fetch_sub(missing, Ordering::Relaxed);
    }
    // The gap record comes first: when it is refused, so is everything after it.
    let refused_gap = usize::from(gap.is_some() && refused.len() == n);
    for _ in refused_gap..refused.len() {
        dropped(counters);
    }
    refused.into_iter().filter_map(|q| q.seq).collect()
}

/// Where the core's dial requests go: registrars from peer lists, taken-over PEs.
pub(super) struct Dials {
    pub(super) peers: mpsc::Sender<TransportAddr>,
    pub(super) pes: mpsc::Sender<connection::PeDial>,
    /// Where Server ID bindings are stored ([`Action::BindServerId`]).
    pub(super) bindings: Option<store::db::Store>,
    /// Warn once, at the first peer that connects, that the control plane is local: the
    /// store is SQLite and no peer was configured (configured ones are warned of at
    /// start-up, `running::LOCAL_CONTROL_PLANE`; issue 19).
    pub(super) warn_local_plane: bool,
}

/// After records were dropped (the audit backlog was full), one `audit:gap` record says
/// how many, as soon as the backlog has room for it: the hash chain then shows the gap
/// and its size instead of hiding it. The record and the count it accounts for.
fn record_gap(counters: &Counters) -> Option<(Record, u64)> {
    let missing = counters.audit_gap.load(Ordering::Relaxed);
    if missing == 0 {
        return None;
    }
    let mut record = Record::new(
        now_ms(),
        AuditAction::AuditGap,
        Outcome::Refused("backlog-full".into()),
    );
    record.detail = Some(format!(
        "{missing} audit records were not written: the audit backlog was full \
         (rsp_audit_dropped_total)"
    ));
    Some((record, missing))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Carries out the core's actions in order (see the module docs for the barrier); returns
/// the number of the last record that the messages after it wait for.
fn execute(
    actions: Vec<Action>,
    writers: &HashMap<ConnId, ConnHandle>,
    barrier: &mut Barrier<Deferred>,
    audit: &AuditLog,
    counters: &Counters,
    dials: &Dials,
) -> Option<u64> {
    let mut gate: Option<u64> = None;
    let mut outbox = Outbox::default();
    let mut records = Vec::new();
    for action in actions {
        match action {
            Action::Audit { event, durability } => {
                let Some(record) = record_of(event, counters) else {
                    continue;
                };
                // Handed over at the end of the step without waiting: a slow disk delays
                // only the replies that wait for their record (the barrier), never this
                // task (keep-alives, heartbeats, resolutions).
                let seq = match durability {
                    Durability::Batched => None,
                    Durability::BeforeReply => Some(barrier.number()),
                };
                records.push(Queued::new(record, seq));
                if seq.is_some() {
                    gate = seq;
                }
            }
            Action::Send { conn, msg } => {
                let encoded = outbox.send(writers, barrier, gate, conn, |b| msg.encode(b));
                if let Err(e) = encoded {
                    tracing::error!(?conn, error = %e, msg = msg.name(), "cannot encode");
                }
            }
            Action::SendEnrp { conn, msg } => {
                let encoded = outbox.send(writers, barrier, gate, conn, |b| msg.encode(b));
                if let Err(e) = encoded {
                    tracing::error!(?conn, error = %e, msg = "an ENRP message", "cannot encode");
                }
            }
            Action::BindServerId {
                server_id,
                identity,
            } => {
                // Off the core's task: a slow disk must not stall the registrar. The core
                // holds the binding already; the store keeps it for the next start.
                if let Some(store) = dials.bindings.clone() {
                    tokio::spawn(async move {
                        let bound = match store.acquire().await {
                            Ok(mut conn) => {
                                store::db::bind_server_id(
                                    &mut conn,
                                    server_id.get(),
                                    &identity,
                                    now_ms(),
                                )
                                .await
                            }
                            Err(e) => Err(e),
                        };
                        match bound {
                            Ok(id) if id != identity => {
                                tracing::warn!(%server_id, stored = %id, claimed = %identity, "Server ID bound to another identity in the store")
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(%server_id, error = %e, "storing the Server ID binding failed")
                            }
                        }
                    });
                }
            }
            Action::DialPeer { addr } => {
                if let Err(e) = dials.peers.try_send(addr) {
                    let addr = e.into_inner();
                    tracing::warn!(%addr, "peer dial queue full: not dialed");
                }
            }
            Action::DialPe {
                pe,
                addr,
                registrant,
            } => {
                let dial = connection::PeDial {
                    pe,
                    addr,
                    registrant,
                };
                if let Err(e) = dials.pes.try_send(dial) {
                    let addr = e.into_inner().addr;
                    tracing::warn!(%addr, "PE dial queue full: not dialed");
                }
            }
            Action::Close { conn, reason } => {
                tracing::info!(?conn, reason, "closing connection");
                // What was gathered for it leaves first.
                outbox.flush(writers, conn);
                out(writers, barrier, gate, conn, Outgoing::Close);
            }
        }
    }
    // The step's records as one batch, before its messages leave; a number that did not
    // fit withholds what waits for it (the barrier releases it as failed).
    if !records.is_empty() {
        for seq in queue(audit, records, counters) {
            barrier.refused(seq);
        }
    }
    outbox.flush_all(writers);
    gate
}

/// The record of a core audit event (the resolutions the connection tasks answer are
/// audited in aggregate instead, [`super::tally`]),
/// counted; `None` when nothing is to be written now: a repeated refusal (aggregated), or
/// a record the log would refuse (logged).
pub(super) fn record_of(event: AuditEvent, counters: &Counters) -> Option<Record> {
    counters.count(&event);
    let refused = event.outcome.is_some();
    let mut record = to_record(event);
    // A refusal changes nothing: its repeats are audited in aggregate, so that an
    // authenticated client cannot make a row per request either.
    if refused {
        record = counters.note_refusal("core", record)?;
    }
    // A record the log refuses is a bug here, not a reason to stop serving everyone
    // (checked now: the writer would refuse it later).
    if let Err(e) = record.check() {
        tracing::error!(error = %e, "audit record refused; operation not recorded");
        return None;
    }
    Some(record)
}

/// Hands `job` to the audit writer ([`forward_audit`]) without waiting; gives it back when
/// it was dropped because the backlog is full.
pub(super) fn hand_over(
    job: AuditJob,
    audit: &mpsc::Sender<AuditJob>,
    counters: &Counters,
) -> Option<AuditJob> {
    let Err(mpsc::error::TrySendError::Full(job)) = audit.try_send(job) else {
        return None;
    };
    dropped(counters);
    Some(job)
}

/// Counts a record dropped because the disk is far behind. Batched records are dropped
/// (counted, and accounted for by an `audit:gap` record once there is room), operations
/// that need theirs are refused: their replies are withheld.
fn dropped(counters: &Counters) {
    let dropped = counters.audit_dropped.fetch_add(1, Ordering::Relaxed) + 1;
    counters.audit_gap.fetch_add(1, Ordering::Relaxed);
    // Loud, but not a line per record.
    if dropped == 1 || dropped.is_multiple_of(1000) {
        tracing::error!(
            dropped,
            "AUDIT BACKLOG FULL: records dropped, replies that wait for theirs withheld"
        );
    }
}

/// Most bytes gathered for one connection into one queued message ([`Outbox`]): a queued
/// message's size stays bounded, so the send queue's bound in messages (threat T-15) is
/// still a bound in bytes.
const MAX_GATHERED: usize = 64 * 1024;

/// The messages of one step of the core that may leave at once, gathered per connection:
/// each connection gets one buffer and one send on its queue per step instead of one per
/// message (the keep-alives of a connection's PEs fall due together by the thousand), and
/// the messages are encoded straight into that buffer.
#[derive(Default)]
struct Outbox {
    gathered: HashMap<ConnId, Vec<u8>>,
}

impl Outbox {
    /// Encodes a message for `conn` with `encode` (which writes nothing when it fails) and
    /// sends it behind record `gate`: into the connection's buffer when it waits for
    /// nothing and the connection has nothing held (so the buffer, sent at the end of the
    /// step, keeps the connection's order), otherwise through the barrier ([`out`]).
    fn send<E>(
        &mut self,
        writers: &HashMap<ConnId, ConnHandle>,
        barrier: &mut Barrier<Deferred>,
        gate: Option<u64>,
        conn: ConnId,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !writers.contains_key(&conn) {
            return Ok(()); // Already closed.
        }
        if gate.is_some() || barrier.held_for(conn) > 0 {
            // Held: what was gathered for the connection leaves at the end of the step,
            // before anything the barrier releases (release runs between steps).
            let mut bytes = Vec::new();
            encode(&mut bytes)?;
            out(writers, barrier, gate, conn, Outgoing::Message { bytes });
            return Ok(());
        }
        let buf = self.gathered.entry(conn).or_default();
        if buf.len() >= MAX_GATHERED {
            let full = std::mem::take(buf);
            deliver(writers, conn, Outgoing::Message { bytes: full });
        }
        encode(self.gathered.entry(conn).or_default())
    }

    /// Sends what was gathered for `conn`.
    fn flush(&mut self, writers: &HashMap<ConnId, ConnHandle>, conn: ConnId) {
        if let Some(bytes) = self.gathered.remove(&conn)
            && !bytes.is_empty()
        {
            deliver(writers, conn, Outgoing::Message { bytes });
        }
    }

    /// Sends what was gathered, connection by connection.
    fn flush_all(self, writers: &HashMap<ConnId, ConnHandle>) {
        for (conn, bytes) in self.gathered {
            if !bytes.is_empty() {
                deliver(writers, conn, Outgoing::Message { bytes });
            }
        }
    }
}

/// Delivers `message` to `conn` once record `gate` committed and what `conn` has held
/// before it has gone; at once if it waits for nothing.
fn out(
    writers: &HashMap<ConnId, ConnHandle>,
    barrier: &mut Barrier<Deferred>,
    gate: Option<u64>,
    conn: ConnId,
    message: Outgoing,
) {
    let Some(w) = writers.get(&conn) else {
        return; // Already closed.
    };
    match barrier.hold(gate, Some(conn), Deferred::Out(conn, message)) {
        Some(now) => now.carry_out(writers, true),
        // What is held counts against the connection's send queue too (threat T-15).
        None if barrier.held_for(conn) > w.tx.capacity() => {
            tracing::warn!(?conn, "send queue full: closing the connection");
            w.kill.notify_one();
        }
        None => {}
    }
}

fn deliver(writers: &HashMap<ConnId, ConnHandle>, conn: ConnId, out: Outgoing) {
    let Some(w) = writers.get(&conn) else {
        return; // Already closed.
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = w.tx.try_send(out) {
        // A client that does not read its answers is cut off rather than buffered
        // without bound (threat T-15).
        tracing::warn!(?conn, "send queue full: closing the connection");
        w.kill.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enrp_core::registrar::AuditEvent;
    use identity::audit::AuditAction;

    /// Dial queues nobody reads (the tests dial nothing).
    fn no_dials() -> Dials {
        Dials {
            peers: mpsc::channel(1).0,
            pes: mpsc::channel(1).0,
            bindings: None,
            warn_local_plane: false,
        }
    }

    /// An audit log in `dir` whose writer takes at most `room` records queued; and a
    /// connection of its own to the same file, which can hold the write lock (stalling the
    /// writer: a full or slow disk).
    async fn audit_log(dir: &std::path::Path, room: usize) -> (AuditLog, sqlx::SqliteConnection) {
        use sqlx::Connection;
        let store = store::db::Store::open(dir, &store::db::StoreOptions::default())
            .await
            .expect("store");
        let mut config = store::audit::AuditConfig::default();
        config.queue = room;
        config.backlog = 0;
        let log = AuditLog::start(&store, config).await.expect("audit log");
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join(store::db::DB_FILE));
        let other = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("second connection");
        (log, other)
    }

    /// Waits until the writer took everything queued.
    async fn taken(log: &AuditLog) {
        let poll = async {
            while log.stats().queued > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), poll)
            .await
            .expect("the writer takes what is queued");
    }

    /// A successful `action` without subjects, as an audit action.
    fn audited(action: AuditAction, durability: Durability) -> Action {
        Action::Audit {
            event: AuditEvent {
                actor: None,
                remote: None,
                namespace: None,
                pool_handle: None,
                pe_id: None,
                action,
                outcome: None,
                detail: None,
            },
            durability,
        }
    }

    /// A step's immediate messages for one connection leave as one queued message, in the
    /// core's order; a reply held for its record, and what follows it, leave only after the
    /// record settled; a close goes after what was gathered before it.
    #[tokio::test]
    async fn a_steps_messages_for_a_connection_leave_gathered_and_in_order() {
        use ::asap::wire::AsapMsg;
        use ::asap::wire::param::{PeId, PoolHandle, ServerId};
        let tmp = tempfile::tempdir().expect("tempdir");
        let (audit, _other) = audit_log(tmp.path(), 16).await;
        let counters = Counters::default();
        let dials = no_dials();
        let conn = ConnId(7);
        let (tx, mut rx) = mpsc::channel(16);
        let writers = HashMap::from([(
            conn,
            ConnHandle {
                tx,
                kill: Arc::new(tokio::sync::Notify::new()),
            },
        )]);
        let keep_alive = |id: u32| AsapMsg::EndpointKeepAlive {
            home: false,
            server_id: ServerId::new(1).expect("server id"),
            pool_handle: PoolHandle::new("p").expect("pool handle"),
            pe_id: PeId::new(id),
        };
        let bytes = |id: u32| keep_alive(id).to_bytes().expect("encodes");
        let send = |id: u32| Action::Send {
            conn,
            msg: keep_alive(id),
        };
        let record = || audited(AuditAction::Register, Durability::BeforeReply);
        let mut barrier = Barrier::default();
        let gate = execute(
            vec![send(1), send(2), record(), send(3), send(4)],
            &writers,
            &mut barrier,
            &audit,
            &counters,
            &dials,
        );
        // 1 and 2 in one message; 3 waits for the record, 4 behind it.
        let Ok(Outgoing::Message { bytes: first }) = rx.try_recv() else {
            panic!("the gathered messages");
        };
        assert_eq!(first, [bytes(1), bytes(2)].concat());
        assert!(rx.try_recv().is_err(), "nothing before the record settled");
        let seq = gate.expect("the record's number");
        for (deferred, committed) in barrier.release(seq, vec![]) {
            deferred.carry_out(&writers, committed);
        }
        for id in [3, 4] {
            let Ok(Outgoing::Message { bytes: b }) = rx.try_recv() else {
                panic!("message {id}");
            };
            assert_eq!(b, bytes(id));
        }
        // A close goes after what was gathered before it.
        let close = Action::Close {
            conn,
            reason: "test",
        };
        execute(
            vec![send(5), close],
            &writers,
            &mut barrier,
            &audit,
            &counters,
            &dials,
        );
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Message { bytes: b }) if b == bytes(5)));
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Close)));
    }

    /// Issue 18 item 4: records dropped while the backlog is full are accounted for by one
    /// `audit:gap` record with their count, written first once there is room again; a
    /// reply that waits for a dropped record is withheld at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_records_leave_a_gap_record_with_their_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The writer's queue holds two records.
        let (audit, mut other) = audit_log(tmp.path(), 2).await;
        let counters = Counters::default();
        let dials = no_dials();
        let resolution = || audited(AuditAction::Resolve, Durability::Batched);
        let run = |actions: Vec<Action>, barrier: &mut Barrier<Deferred>| {
            execute(actions, &HashMap::new(), barrier, &audit, &counters, &dials)
        };
        let mut barrier = Barrier::default();
        // The disk stalls: the writer takes a first record and waits for the lock.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .expect("lock");
        run(vec![resolution()], &mut barrier);
        taken(&audit).await;
        // Two more fit; the next two are dropped, and so is a registration's record: what
        // waits for it is withheld at once.
        let register = audited(AuditAction::Register, Durability::BeforeReply);
        let mut actions: Vec<Action> = (0..4).map(|_| resolution()).collect();
        actions.push(register);
        let gate = run(actions, &mut barrier).expect("numbered");
        assert_eq!(counters.audit_dropped.load(Ordering::Relaxed), 3);
        let reply = Deferred::Removed(oneshot::channel().0, 0);
        assert!(barrier.hold(Some(gate), None, reply).is_none());
        assert!(barrier.has_failed());
        let released = barrier.release(0, vec![]);
        assert!(
            matches!(released[..], [(Deferred::Removed(..), false)]),
            "withheld: {released:?}"
        );
        // The disk is back: the gap record goes first, with the count, then the new record.
        sqlx::query("ROLLBACK")
            .execute(&mut other)
            .await
            .expect("unlock");
        taken(&audit).await;
        run(vec![resolution()], &mut Barrier::default());
        audit.shutdown().await.expect("shutdown");
        let mut filter = store::audit::AuditFilter::default();
        filter.order = store::audit::Order::OldestFirst;
        let page = store::audit::query(&mut other, &filter)
            .await
            .expect("query");
        let actions: Vec<&str> = page.events.iter().map(|e| &*e.record.action).collect();
        assert_eq!(
            actions,
            ["resolve", "resolve", "resolve", "audit:gap", "resolve"]
        );
        let gap = page
            .events
            .iter()
            .find(|e| e.record.action == "audit:gap")
            .expect("the gap record");
        assert!(
            gap.record
                .detail
                .as_deref()
                .is_some_and(|d| d.starts_with("3 audit records")),
            "{:?}",
            gap.record.detail
        );
        assert_eq!(
            counters.audit_gap.load(Ordering::Relaxed),
            0,
            "accounted for"
        );
        // A log that no longer takes records (closed) withholds what waits for them too.
        let register = audited(AuditAction::Register, Durability::BeforeReply);
        let gate = run(vec![register], &mut barrier).expect("numbered");
        let reply = Deferred::Removed(oneshot::channel().0, 0);
        assert!(barrier.hold(Some(gate), None, reply).is_none());
        let released = barrier.release(0, vec![]);
        assert!(
            matches!(released[..], [(Deferred::Removed(..), false)]),
            "withheld: {released:?}"
        );
    }
}
