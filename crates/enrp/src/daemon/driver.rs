//! The driver: the one task that owns the registrar [`Core`] and carries out its actions.
//!
//! How a message flows:
//! 1. A listener ([`super::listen`]) accepts; a connection task ([`super::connection`], or
//!    [`super::peer`] for ENRP) does the TLS handshake, cuts frames, decodes them, applies
//!    the rate limits ([`super::limits`]) and sends an [`Event`] to this task. A handle
//!    resolution does not come here: the connection task answers it from the core's read
//!    view ([`enrp_core::registrar::ReadView`]) and hands its audit record to the writer
//!    ([`record_of`], [`hand_over`]), unless the connection still waits for answers from
//!    this task (then the resolution queues behind them, to keep the connection's order).
//! 2. [`run_core`] turns the event into a core input ([`Core::handle`]), or a due timer
//!    into [`Core::handle_timeout`], and gets back a list of actions.
//! 3. [`execute`] carries them out in order: audit records go to the audit writer through
//!    [`forward_audit`] without waiting; messages are encoded into one buffer per connection
//!    per step ([`Outbox`]) and go to its send queue ([`deliver`]), whose write loop sends
//!    them in order; dials go to the dialers.
//! 4. The barrier ([`super::barrier`]): an audit record with [`Durability::BeforeReply`]
//!    gets a number, and the messages after it are held in the driver's [`Barrier`] under
//!    that number until the commit index (the last record the writer settled) passes it;
//!    then they go to their connections. The core never waits for the disk, yet no reply
//!    leaves before its record is durable, each connection's messages leave in order, and
//!    many records share one commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ::asap::addr::TransportAddr;
use store::audit::{AuditLog, Outcome, Record};
use tokio::sync::{mpsc, oneshot, watch};

use super::audit::to_record;
use super::barrier::{Barrier, CommitIndex, Pending};
use super::{ConnHandle, Counters, Error, Event, Outgoing, connection, limits, now_ms};
use enrp_core::registrar::{Action, AuditEvent, ConnId, Core, Input};
use identity::audit::{AuditAction, Durability};

/// Most queued events applied in a row before a due timer gets its turn (the size of the
/// event channel: one queue's worth).
const MAX_STREAK: usize = 8192;

pub(super) async fn run_core(
    mut core: Core,
    mut events: mpsc::Receiver<Event>,
    audit: mpsc::Sender<AuditJob>,
    counters: Arc<Counters>,
    dials: Dials,
    mut index: CommitIndex,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut writers: HashMap<ConnId, ConnHandle> = HashMap::new();
    let mut barrier = Barrier::default();
    // Events already queued are applied before a due timer, at most MAX_STREAK in a row:
    // a keep-alive acknowledgement waiting behind a burst of work (say, thousands of PEs
    // removed at once) must count before its PE's timeout is judged; the bound keeps
    // timers from starving under a steady flood.
    let mut streak = 0usize;
    loop {
        // Replies whose records committed leave first, also in a streak of queued events.
        if index.moved() {
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
                Ok(()) = index.settled.changed() => {
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
        };
        let removed = actions
            .iter()
            .filter(|a| matches!(a, Action::Audit { event, .. } if event.action.is_removal()))
            .count();
        counters.starting.store(core.starting(), Ordering::Relaxed);
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
    // What waits for its record leaves once the record settled (the writer runs until
    // the daemon has stopped): no reply is lost to a shutdown, none leaves early.
    drop(audit);
    while !barrier.is_empty() {
        let ended = index.settled.changed().await.is_err();
        release(&mut barrier, &mut index, &writers);
        if ended {
            // Every record handed over has settled.
            break;
        }
    }
    // Dropping the writers lets every connection task end after what it was sent.
    Ok(())
}

/// An audit record on its way from the core task (or a connection task: a resolution it
/// answered, never numbered) to the writer, with its number if it is
/// [`Durability::BeforeReply`] ([`Barrier::number`]).
pub(super) struct AuditJob {
    record: Record,
    seq: Option<u64>,
}

impl AuditJob {
    /// A [`Durability::Batched`] record: nothing waits for its commit.
    pub(super) fn batched(record: Record) -> Self {
        Self { record, seq: None }
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

/// Records the core task hands over without waiting, beyond the writer's own queue (8,192).
/// When both are full the disk is far behind: batched records are dropped (counted,
/// `rsp_audit_dropped_total`) and operations that need theirs are refused, rather than the
/// core task, and with it every keep-alive and heartbeat, waiting for the disk.
pub(super) const AUDIT_BACKLOG: usize = 65_536;

/// Hands the core's records to the audit writer in order, waiting for room in its queue
/// (the core task does not), until the core task ends; the numbered ones, with the writer's
/// answer, go on to the commit index ([`super::barrier::commit_index`]) in the same order.
pub(super) async fn forward_audit(
    mut jobs: mpsc::Receiver<AuditJob>,
    audit: AuditLog,
    pending: mpsc::Sender<Pending>,
) {
    while let Some(AuditJob { record, seq }) = jobs.recv().await {
        let Some(seq) = seq else {
            if let Err(e) = audit.append(record, Durability::Batched).await {
                tracing::error!(error = %e, "cannot audit: record lost");
            }
            continue;
        };
        let committed = match audit.enqueue_before_reply(record).await {
            Ok(committed) => committed,
            Err(e) => {
                tracing::error!(error = %e, "cannot audit: the reply is withheld");
                // An answer that never comes: the index counts the record as failed.
                oneshot::channel().1
            }
        };
        if pending.send((seq, committed)).await.is_err() {
            return; // The commit index is gone: the daemon has stopped.
        }
    }
}

/// Where the core's dial requests go: registrars from peer lists, taken-over PEs.
pub(super) struct Dials {
    pub(super) peers: mpsc::Sender<TransportAddr>,
    pub(super) pes: mpsc::Sender<connection::PeDial>,
    /// Where Server ID bindings are stored ([`Action::BindServerId`]).
    pub(super) bindings: Option<store::db::Store>,
}

/// After records were dropped (the audit backlog was full), one `audit:gap` record says
/// how many, as soon as the backlog has room for it: the hash chain then shows the gap
/// and its size instead of hiding it.
fn record_gap(audit: &mpsc::Sender<AuditJob>, counters: &Counters) {
    let missing = counters.audit_gap.load(Ordering::Relaxed);
    if missing == 0 {
        return;
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
    if audit.try_send(AuditJob { record, seq: None }).is_ok() {
        counters.audit_gap.fetch_sub(missing, Ordering::Relaxed);
    }
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
    audit: &mpsc::Sender<AuditJob>,
    counters: &Counters,
    dials: &Dials,
) -> Option<u64> {
    let mut gate: Option<u64> = None;
    let mut outbox = Outbox::default();
    for action in actions {
        match action {
            Action::Audit { event, durability } => {
                let Some(record) = record_of(event, counters) else {
                    continue;
                };
                // Handed over without waiting: a slow disk delays only the replies that
                // wait for their record (the barrier), never this task (keep-alives,
                // heartbeats, resolutions).
                let seq = match durability {
                    Durability::Batched => None,
                    Durability::BeforeReply => Some(barrier.number()),
                };
                if let Some(job) = hand_over(AuditJob { record, seq }, audit, counters)
                    && let Some(seq) = job.seq
                {
                    barrier.refused(seq);
                }
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

/// Hands `job` to the audit writer without waiting; gives it back when it was dropped
/// because the writer's queue and the backlog are full.
pub(super) fn hand_over(
    job: AuditJob,
    audit: &mpsc::Sender<AuditJob>,
    counters: &Counters,
) -> Option<AuditJob> {
    record_gap(audit, counters);
    let Err(mpsc::error::TrySendError::Full(job)) = audit.try_send(job) else {
        return None;
    };
    // The disk is far behind. Batched records are dropped (counted, and accounted for by
    // an `audit:gap` record once there is room), operations that need theirs are
    // refused: their replies are withheld.
    let dropped = counters.audit_dropped.fetch_add(1, Ordering::Relaxed) + 1;
    counters.audit_gap.fetch_add(1, Ordering::Relaxed);
    // Loud, but not a line per record.
    if dropped == 1 || dropped.is_multiple_of(1000) {
        tracing::error!(
            dropped,
            "AUDIT BACKLOG FULL: records dropped, replies that wait for theirs withheld"
        );
    }
    Some(job)
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
        }
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
    #[test]
    fn a_steps_messages_for_a_connection_leave_gathered_and_in_order() {
        use ::asap::wire::AsapMsg;
        use ::asap::wire::param::{PeId, PoolHandle, ServerId};
        let (audit, _backlog) = mpsc::channel(16);
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
    /// `audit:gap` record with their count, written first once there is room again.
    #[test]
    fn dropped_records_leave_a_gap_record_with_their_count() {
        let (audit, mut backlog) = mpsc::channel(1);
        let counters = Counters::default();
        let dials = no_dials();
        let resolution = || audited(AuditAction::Resolve, Durability::Batched);
        let run = |n: usize| {
            execute(
                (0..n).map(|_| resolution()).collect(),
                &HashMap::new(),
                &mut Barrier::default(),
                &audit,
                &counters,
                &dials,
            )
        };
        // The backlog holds one record: the next three are dropped.
        run(4);
        assert_eq!(counters.audit_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(
            backlog.try_recv().expect("the first").record.action,
            "resolve"
        );
        // Room again: the gap record goes first, with the count, then the new record.
        run(1);
        let gap = backlog.try_recv().expect("the gap record").record;
        assert_eq!(gap.action, "audit:gap");
        assert!(
            gap.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("3 audit records"))
        );
        assert!(gap.check().is_ok());
        // The gap of 3 is settled; the resolution after the gap record found the backlog
        // of one full again: a new gap of 1, for the next record to account for.
        assert_eq!(counters.audit_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(counters.audit_gap.load(Ordering::Relaxed), 1);
    }
}
