//! The handlespace's changes as watchers see them (issue 22, `GET /v1/watch/pools`): the
//! registrar publishes one [`PoolChange`] per PE added, updated or removed into
//! [`PoolChanges`], which numbers it, keeps the last [`HISTORY`] for clients that resume
//! with `Last-Event-ID`, and broadcasts it to the live streams.
//!
//! Memory is bounded whatever the clients do: one history ring and one broadcast channel
//! of [`CHANNEL`] events shared by every stream; a stream that falls further behind is not
//! buffered for, it is told to start again (`reset`, then a fresh snapshot).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::registrar::PeView;

/// Events kept for clients that reconnect with `Last-Event-ID`: about 300 bytes each, so
/// at most some 300 KiB; a client whose last event is older gets `reset` and a snapshot.
pub const HISTORY: usize = 1024;

/// Events the broadcast channel holds for the slowest live stream: one that falls further
/// behind gets `reset` and a snapshot rather than a buffer of its own.
pub const CHANNEL: usize = 256;

/// What happened to a PE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new PE.
    Added,
    /// A PE whose entry changed (policy or load, home registrar, registration life).
    Updated,
    /// A PE removed; [`PoolChange::reason`] says why.
    Removed,
}

/// One change of one PE (the `data` of the stream's `added`, `updated` and `removed`
/// events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PoolChange {
    /// The namespace.
    pub namespace: String,
    /// The pool handle, as the API writes it ([`crate::handle_text`]).
    pub pool: String,
    /// What happened.
    pub change: ChangeKind,
    /// The PE ID, in hex (`0x1a2b3c4d`).
    pub pe_id: String,
    /// The PE as it is now (added, updated), as `GET .../pool-elements` shows it; `null`
    /// for a removal.
    pub pool_element: Option<PeView>,
    /// Why a PE was removed: the audit log's action (`deregister`, `remove:timeout`,
    /// `remove:connection-loss`, `remove:revoked`, `remove:ungranted`, `remove:admin`,
    /// `remove:expired`, `remove:resync`), or `peer-update` when a peer's message removed
    /// it; `null` otherwise.
    pub reason: Option<String>,
}

/// A change with its number: the stream's `id`.
#[derive(Debug)]
pub struct Numbered {
    /// The event id: one more than the previous change's.
    pub id: u64,
    /// The change.
    pub change: PoolChange,
}

/// Where a new stream starts, given the `Last-Event-ID` it sent.
#[derive(Debug)]
pub enum Start {
    /// No id: a snapshot first.
    Fresh,
    /// The changes after the id, all still in the history (possibly none).
    Replay(Vec<Arc<Numbered>>),
    /// The id is older than the history, or not one this registrar gave out in this
    /// run: `reset`, then a snapshot.
    Reset,
}

/// The registrar's change feed: cloned cheaply, shared by the publisher and every stream.
#[derive(Clone, Debug)]
pub struct PoolChanges {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Numbered>>,
    /// Whether a stream ever subscribed: until then nobody holds an id of this feed, so
    /// the publisher need not build changes at all ([`PoolChanges::armed`]).
    armed: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Ring {
    /// The id of the next change.
    next: u64,
    events: VecDeque<Arc<Numbered>>,
    capacity: usize,
    /// PEs per (namespace, pool) as the changes say (`/metrics`): exact, since the
    /// registrar publishes every change from an empty handlespace on. One entry per pool
    /// with PEs: bounded by the handlespace's own pool limits.
    pes: HashMap<(String, String), u64>,
}

impl Ring {
    fn count(&mut self, namespace: &str, pool: &str, change: ChangeKind) {
        match change {
            ChangeKind::Added => {
                *self
                    .pes
                    .entry((namespace.to_owned(), pool.to_owned()))
                    .or_default() += 1;
            }
            ChangeKind::Updated => {}
            ChangeKind::Removed => {
                let key = (namespace.to_owned(), pool.to_owned());
                if let Some(n) = self.pes.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.pes.remove(&key);
                    }
                }
            }
        }
    }
}

impl PoolChanges {
    /// A feed whose first change gets id `first_id` (`enrpd` starts from the time in
    /// microseconds, so that ids grow across restarts too and an id of an earlier run
    /// is recognised as too old), keeping the last `history` changes.
    pub fn new(first_id: u64, history: usize) -> Self {
        let (live, _) = broadcast::channel(CHANNEL);
        Self {
            shared: Arc::new(Shared {
                ring: Mutex::new(Ring {
                    next: first_id.max(1),
                    events: VecDeque::with_capacity(history.min(HISTORY)),
                    capacity: history.max(1),
                    pes: HashMap::new(),
                }),
                live,
                armed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether any stream ever subscribed. Until one does, the publisher may call
    /// [`PoolChanges::count`] instead of [`PoolChanges::publish`]: no client can hold an id
    /// of this feed yet, and the first one's snapshot, taken after it subscribed, shows
    /// what was not published (the registration path then builds no PE views for nobody).
    pub fn armed(&self) -> bool {
        self.shared.armed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a change for [`PoolChanges::pool_sizes`] without publishing it (see
    /// [`PoolChanges::armed`]).
    pub fn count(&self, namespace: &str, pool: &str, change: ChangeKind) {
        self.ring().count(namespace, pool, change);
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while it was held left a whole ring (each change is one push).
        self.shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers `change`, keeps it in the history and sends it to the live streams.
    pub fn publish(&self, change: PoolChange) {
        let mut ring = self.ring();
        ring.count(&change.namespace, &change.pool, change.change);
        let event = Arc::new(Numbered {
            id: ring.next,
            change,
        });
        ring.next += 1;
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(Arc::clone(&event));
        // Sent under the lock, so that a stream subscribing sees each change once: in
        // its replay or on its receiver. No receiver is no error.
        let _ = self.shared.live.send(event);
    }

    /// The id of the last change published (one less than the first when none was).
    pub fn last_id(&self) -> u64 {
        self.ring().next - 1
    }

    /// The PEs of each pool that has some: (namespace, pool handle as the API writes it,
    /// PEs), most PEs first.
    pub fn pool_sizes(&self) -> Vec<(String, String, u64)> {
        let mut sizes: Vec<_> = self
            .ring()
            .pes
            .iter()
            .map(|((ns, pool), n)| (ns.clone(), pool.clone(), *n))
            .collect();
        sizes.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        sizes
    }

    /// How many streams watch now.
    pub fn watchers(&self) -> usize {
        self.shared.live.receiver_count()
    }

    /// A receiver of the changes from now on, where the stream starts given the client's
    /// `Last-Event-ID` (`after`), and the id of the last change before the receiver's
    /// first (the id a snapshot taken now is given).
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (broadcast::Receiver<Arc<Numbered>>, Start, u64) {
        let ring = self.ring();
        self.shared
            .armed
            .store(true, std::sync::atomic::Ordering::Release);
        let rx = self.shared.live.subscribe();
        let last = ring.next - 1;
        let Some(after) = after else {
            return (rx, Start::Fresh, last);
        };
        let first = ring.events.front().map_or(ring.next, |e| e.id);
        let start = if after >= first.saturating_sub(1) && after <= last {
            Start::Replay(
                ring.events
                    .iter()
                    .filter(|e| e.id > after)
                    .cloned()
                    .collect(),
            )
        } else {
            Start::Reset
        };
        (rx, start, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(pe: u32) -> PoolChange {
        PoolChange {
            namespace: "default".into(),
            pool: "echo".into(),
            change: ChangeKind::Removed,
            pe_id: format!("{pe:#010x}"),
            pool_element: None,
            reason: Some("deregister".into()),
        }
    }

    fn ids(start: &Start) -> Vec<u64> {
        match start {
            Start::Replay(events) => events.iter().map(|e| e.id).collect(),
            other => panic!("not a replay: {other:?}"),
        }
    }

    #[test]
    fn a_resuming_client_gets_exactly_the_changes_after_its_id() {
        let feed = PoolChanges::new(100, 4);
        assert_eq!(feed.last_id(), 99);
        // Nothing published yet: the id before the first resumes with nothing.
        assert!(ids(&feed.subscribe(Some(99)).1).is_empty());
        for pe in 1..=3 {
            feed.publish(change(pe));
        }
        assert_eq!(feed.last_id(), 102);
        assert_eq!(ids(&feed.subscribe(Some(99)).1), [100, 101, 102]);
        assert_eq!(ids(&feed.subscribe(Some(101)).1), [102]);
        assert!(ids(&feed.subscribe(Some(102)).1).is_empty());
        assert!(matches!(feed.subscribe(None).1, Start::Fresh));
    }

    #[test]
    fn an_id_older_than_the_history_or_not_given_out_is_a_reset() {
        let feed = PoolChanges::new(100, 4);
        for pe in 1..=6 {
            feed.publish(change(pe)); // 100..=105; the history keeps 102..=105
        }
        assert_eq!(ids(&feed.subscribe(Some(101)).1), [102, 103, 104, 105]);
        assert!(matches!(feed.subscribe(Some(100)).1, Start::Reset));
        assert!(matches!(feed.subscribe(Some(5)).1, Start::Reset));
        // Not given out yet (another registrar's, or a later run's): a reset too.
        assert!(matches!(feed.subscribe(Some(106)).1, Start::Reset));
    }

    #[test]
    fn pool_sizes_follow_adds_and_removals() {
        let feed = PoolChanges::new(1, 4);
        let mut add = change(1);
        add.change = ChangeKind::Added;
        for pe in 1..=3 {
            add.pe_id = format!("{pe}");
            feed.publish(add.clone());
        }
        let mut other = add.clone();
        other.pool = "other".into();
        feed.publish(other);
        feed.publish(change(1)); // removes one of echo's
        assert_eq!(
            feed.pool_sizes(),
            [
                ("default".into(), "echo".into(), 2),
                ("default".into(), "other".into(), 1)
            ]
        );
        feed.publish(change(2));
        feed.publish(change(3));
        assert_eq!(feed.pool_sizes(), [("default".into(), "other".into(), 1)]);
    }

    #[test]
    fn a_feed_is_armed_by_its_first_subscriber_and_counts_without_publishing() {
        let feed = PoolChanges::new(1, 4);
        assert!(!feed.armed());
        feed.count("default", "echo", ChangeKind::Added);
        feed.count("default", "echo", ChangeKind::Added);
        feed.count("default", "echo", ChangeKind::Removed);
        assert_eq!(feed.pool_sizes(), [("default".into(), "echo".into(), 1)]);
        assert_eq!(feed.last_id(), 0, "counted, not published");
        let _ = feed.subscribe(None);
        assert!(feed.armed());
    }

    #[tokio::test]
    async fn each_change_comes_once_in_the_replay_or_on_the_receiver() {
        let feed = PoolChanges::new(1, 8);
        feed.publish(change(1));
        let (mut rx, start, _) = feed.subscribe(Some(0));
        assert_eq!(ids(&start), [1]);
        feed.publish(change(2));
        assert_eq!(rx.recv().await.expect("live").id, 2);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_receiver_behind_by_more_than_the_channel_lags_rather_than_buffers() {
        let feed = PoolChanges::new(1, HISTORY);
        let (mut rx, _, _) = feed.subscribe(None);
        for pe in 0..(CHANNEL as u32 + 10) {
            feed.publish(change(pe));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }
}
