//! The admin API's way into a running registrar: questions answered by the core task
//! between two inputs (so they see a consistent handlespace), operator commands fed to
//! the core as inputs, and the counters behind `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ::asap::wire::PeEntry;
use ::asap::wire::param::{Namespace, Policy, PoolHandle, ServerId};
use identity::Grant;
use store::audit::{AuditLog, Record};
use tokio::sync::{mpsc, oneshot};

use super::Event;
use super::refusals::Refusals;
use enrp_core::registrar::{AuditEvent, Core, Declared, Input, Scope};
use identity::Revocation;
use identity::audit::AuditAction;

/// A pool as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The namespace.
    pub namespace: Namespace,
    /// The pool handle.
    pub handle: PoolHandle,
    /// The pool policy (that of its PEs).
    pub policy: Option<Policy>,
    /// Its PEs, by PE ID.
    pub pool_elements: Vec<PeEntry>,
    /// The measured keep-alive round trip of each of `pool_elements` (same order): `None`
    /// for a peer's PE or one not measured yet.
    pub round_trips: Vec<Option<std::time::Duration>>,
    /// When each of `pool_elements` first registered here, unix ms: `None` for a peer's PE
    /// (or one taken over that has not registered here yet).
    pub registered_ms: Vec<Option<u64>>,
}

/// An ENRP peer as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Its SPIFFE ID.
    pub identity: String,
    /// Its Server ID.
    pub server_id: ServerId,
    /// `active`, `probing` or `dead` (spec §9.5).
    pub state: &'static str,
    /// When it was last heard, unix ms.
    pub last_heard_ms: Option<u64>,
    /// Whether our copy of its PEs has the checksum it last announced (spec §9.6).
    pub checksum_match: Option<bool>,
    /// The last other identity that claimed its Server ID and was refused.
    pub conflict: Option<String>,
}

/// The registrar's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Open ASAP connections.
    pub connections: u64,
    /// PEs in the handlespace.
    pub pool_elements: u64,
    /// PEs this registrar owns.
    pub owned: u64,
    /// Registrations and re-registrations accepted.
    pub registrations: u64,
    /// Handle resolutions answered with PEs.
    pub resolutions: u64,
    /// Refusals by spec §4.7 cause code (the sum over namespaces; a code of
    /// [`super::by_namespace::CAUSE_SLOTS`] or more is counted as that).
    pub rejections: BTreeMap<u16, u64>,
    /// Registrations, resolutions and refusals per namespace, bounded
    /// ([`super::by_namespace`]).
    pub by_namespace: Vec<super::by_namespace::NamespaceCounts>,
    /// Failed handshakes by reason.
    pub handshake_failures: BTreeMap<&'static str, u64>,
    /// Audit records queued, not yet committed.
    pub audit_queue: u64,
    /// Refusals counted into a summary audit record instead of one record each
    /// (docs/SECURITY.md, audit budget).
    pub refusals_aggregated: u64,
    /// The data directory is below its free-space watermark (a gauge, 0 or 1).
    pub low_disk: bool,
    /// The store does not answer (a gauge, 0 or 1).
    pub store_down: bool,
    /// Audit batches whose commit failed, since the start.
    pub audit_failed_commits: u64,
    /// Audit records dropped because the writer's queue and the backlog were full.
    pub audit_dropped: u64,
    /// Hand-over to commit of each audit record committed.
    pub audit_commit: store::audit::LatencyHistogram,
}

/// Counters kept by the daemon's tasks (monotonic).
#[derive(Debug)]
pub struct Counters {
    /// Registrations, resolutions and refusals per namespace and cause: fixed atomics, no
    /// lock on the resolution path ([`super::by_namespace`]).
    by_namespace: super::by_namespace::ByNamespace,
    // A handful of keys: a mutex held for one increment is cheaper than a map of
    // atomics built in advance for every reason.
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// The core is in its start-up phase (spec §9.3): not ready. The core task keeps it
    /// in step, so that `/readyz` need not queue behind the core's work.
    pub(super) starting: AtomicBool,
    /// Refusals on their way to the audit log, aggregated ([`super::refusals`]).
    refusals: Mutex<Refusals>,
    /// The request rate limits and the identities' buckets ([`super::limits`]), shared by
    /// the connection tasks like these counters.
    pub(super) limiter: super::limits::Limiter,
    /// Authenticated ASAP connections per identity ([`super::listen::admit_identity`]).
    pub(super) identities: super::listen::PerIdentity,
    /// The data directory is below its free-space watermark (`watch_disk`).
    pub(super) low_disk: AtomicBool,
    /// The store does not answer (`watch_disk`'s ping, PostgreSQL down or unreachable).
    pub(super) store_down: AtomicBool,
    /// Audit records dropped because the writer and the backlog were full.
    pub(super) audit_dropped: AtomicU64,
    /// Of those, how many no `audit:gap` record has accounted for yet.
    pub(super) audit_gap: AtomicU64,
    /// The connection tasks' resolutions not yet audited ([`super::tally`]).
    pub(super) tallies: super::tally::Tallies,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new(
            super::refusals::DEFAULT_BUDGET,
            super::limits::RateLimits::default(),
        )
    }
}

impl Counters {
    /// Counters that audit at most `refusal_budget` kinds of refusal individually per
    /// scope per second ([`super::refusals`]), with these request rate limits.
    pub(super) fn new(refusal_budget: u32, rate_limits: super::limits::RateLimits) -> Self {
        Self {
            by_namespace: super::by_namespace::ByNamespace::default(),
            handshake_failures: Mutex::default(),
            starting: AtomicBool::default(),
            refusals: Mutex::new(Refusals::new(refusal_budget)),
            limiter: super::limits::Limiter::new(rate_limits),
            identities: super::listen::PerIdentity::default(),
            low_disk: AtomicBool::new(false),
            store_down: AtomicBool::new(false),
            audit_dropped: AtomicU64::new(0),
            audit_gap: AtomicU64::new(0),
            tallies: super::tally::Tallies::default(),
        }
    }

    /// A refusal in `scope` (a listener, or `core`): the record to write now, if any
    /// (repeats and refusals over the budget are written in aggregate by
    /// [`Counters::flush_refusals`]).
    pub(super) fn note_refusal(&self, scope: &'static str, record: Record) -> Option<Record> {
        locked(&self.refusals).note(scope, record)
    }

    /// [`Counters::note_refusal`] where nothing may wait: the record to write, if any,
    /// goes out with [`Counters::flush_refusals`].
    pub(super) fn note_refusal_later(&self, scope: &'static str, record: Record) {
        locked(&self.refusals).note_later(scope, record);
    }

    /// The aggregate records of the interval that ends now.
    pub(super) fn flush_refusals(&self) -> Vec<Record> {
        locked(&self.refusals).flush(super::now_ms())
    }
    /// Counts what an audit record of the core says happened.
    pub(super) fn count(&self, event: &AuditEvent) {
        use super::by_namespace::Counted;
        let what = match (event.action, event.outcome) {
            (AuditAction::Register | AuditAction::Reregister, None) => Counted::Registration,
            (AuditAction::Resolve, None) => Counted::Resolution,
            (_, Some(cause)) => Counted::Refusal(cause),
            _ => return,
        };
        self.by_namespace.count(event.namespace.as_ref(), what);
    }

    /// Counts a resolution a connection task answered: found (`outcome` `None`) or
    /// refused with that cause, as [`Self::count`] counts its event.
    pub(super) fn count_resolution(&self, namespace: Option<&Namespace>, outcome: Option<u16>) {
        use super::by_namespace::Counted;
        let what = outcome.map_or(Counted::Resolution, Counted::Refusal);
        self.by_namespace.count(namespace, what);
    }

    /// Counts an unchanged re-registration a connection task acknowledged, as
    /// [`Self::count`] counts a registration's event.
    pub(super) fn count_refresh(&self, namespace: &Namespace) {
        use super::by_namespace::Counted;
        self.by_namespace
            .count(Some(namespace), Counted::Registration);
    }

    /// Counts a handshake that failed, by reason (`tls-handshake`, `tls-timeout`, ...).
    pub(super) fn handshake_failed(&self, reason: &'static str) {
        *locked(&self.handshake_failures).entry(reason).or_default() += 1;
    }
}

/// A counter map; a panic elsewhere while it was held leaves counts, not a broken state.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the admin API asks the core task.
#[derive(Debug)]
pub(super) enum Query {
    Pools {
        namespace: Namespace,
        reply: oneshot::Sender<Vec<PoolSnapshot>>,
    },
    Pool {
        namespace: Namespace,
        handle: PoolHandle,
        reply: oneshot::Sender<Option<PoolSnapshot>>,
    },
    Stats(oneshot::Sender<(u64, u64, u64)>),
    Peers(oneshot::Sender<Vec<PeerSnapshot>>),
    /// Whether a connection to this peer is up (a dialer asks before it redials).
    PeerConnected(ServerId, oneshot::Sender<bool>),
}

impl Query {
    pub(super) fn answer(self, core: &Core, now: std::time::Instant) {
        let hs = core.handlespace();
        let snapshot = |ns: &Namespace,
                        handle: &PoolHandle,
                        pool: &enrp_core::handlespace::Pool| PoolSnapshot {
            namespace: ns.clone(),
            handle: handle.clone(),
            policy: pool.policy().cloned(),
            pool_elements: pool.entries().cloned().collect(),
            round_trips: pool
                .entries()
                .map(|e| core.home_round_trip(ns, handle, e.pool_element.pe_id))
                .collect(),
            registered_ms: pool
                .entries()
                .map(|e| {
                    let at = core.home_registered(ns, handle, e.pool_element.pe_id)?;
                    Some(super::unix_ms_of(at, now))
                })
                .collect(),
        };
        match self {
            Self::Pools { namespace, reply } => {
                let pools = hs
                    .pools(&namespace)
                    .map(|(h, p)| snapshot(&namespace, h, p))
                    .collect();
                let _ = reply.send(pools);
            }
            Self::Pool {
                namespace,
                handle,
                reply,
            } => {
                let pool = hs
                    .pool(&namespace, &handle)
                    .map(|p| snapshot(&namespace, &handle, p));
                let _ = reply.send(pool);
            }
            Self::PeerConnected(server_id, reply) => {
                let up = core
                    .peers()
                    .iter()
                    .any(|p| p.server_id == server_id && p.connected);
                let _ = reply.send(up);
            }
            Self::Peers(reply) => {
                // The core keeps monotonic instants; the API shows wall-clock time.
                let wall = super::now_ms();
                let peers = core
                    .peers()
                    .into_iter()
                    .map(|p| PeerSnapshot {
                        identity: p.identity.as_str().to_owned(),
                        server_id: p.server_id,
                        state: p.state.as_str(),
                        last_heard_ms: p.last_heard.map(|t| {
                            let ago = now.saturating_duration_since(t).as_millis();
                            wall.saturating_sub(u64::try_from(ago).unwrap_or(u64::MAX))
                        }),
                        checksum_match: p.checksum_match,
                        conflict: p.conflict.map(|id| id.as_str().to_owned()),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Self::Stats(reply) => {
                let s = core.stats();
                let _ = reply.send((s.connections as u64, s.pes as u64, s.owned as u64));
            }
        }
    }
}

/// A cloneable handle on a running registrar for the admin API. Every method answers
/// empty (or zero) once the registrar has stopped.
#[derive(Clone, Debug)]
pub struct Control {
    events: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    audit: AuditLog,
    ready: Arc<AtomicBool>,
    changes: admin_api::PoolChanges,
}

impl Control {
    pub(super) fn new(
        events: mpsc::Sender<Event>,
        counters: Arc<Counters>,
        audit: AuditLog,
        changes: admin_api::PoolChanges,
    ) -> Self {
        Self {
            events,
            counters,
            audit,
            ready: Arc::new(AtomicBool::new(true)),
            changes,
        }
    }

    /// The handlespace's changes, for the admin API's watch streams (`changes.rs`).
    pub fn changes(&self) -> admin_api::PoolChanges {
        self.changes.clone()
    }

    pub(super) fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    pub(super) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the data directory is below its free-space watermark: admin writes are
    /// refused (507) like registrations (0x6).
    pub fn low_disk(&self) -> bool {
        self.counters.low_disk.load(Ordering::Relaxed)
    }

    /// Whether the store did not answer its last ping (registrations refused with 0x6,
    /// admin writes with 503; resolutions and keep-alives served from memory).
    pub fn store_down(&self) -> bool {
        self.counters.store_down.load(Ordering::Relaxed)
    }

    /// Whether the registrar serves (not during its start-up phase, spec §9.3).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.counters.starting.load(Ordering::Relaxed)
            && !self.events.is_closed()
    }

    async fn ask<T: Default>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> T {
        let (tx, rx) = oneshot::channel();
        if self.events.send(Event::Query(make(tx))).await.is_err() {
            return T::default();
        }
        rx.await.unwrap_or_default()
    }

    /// The pools of a namespace with their PEs.
    pub async fn pools(&self, namespace: Namespace) -> Vec<PoolSnapshot> {
        self.ask(|reply| Query::Pools { namespace, reply }).await
    }

    /// One pool.
    pub async fn pool(&self, namespace: Namespace, handle: PoolHandle) -> Option<PoolSnapshot> {
        self.ask(|reply| Query::Pool {
            namespace,
            handle,
            reply,
        })
        .await
    }

    /// The ENRP peers, by Server ID.
    pub async fn peers(&self) -> Vec<PeerSnapshot> {
        self.ask(Query::Peers).await
    }

    /// Deregisters the PEs of `scope`; returns how many were removed, once their audit
    /// records committed.
    pub async fn remove(&self, scope: Scope, actor: String) -> usize {
        self.command(Input::Remove { scope, actor }).await
    }

    /// Drains the owned PE `pe` until `deadline_ms` (unix ms), or lifts its drain
    /// (`None`); see `enrp_core::registrar::Core::drain`.
    pub async fn drain(
        &self,
        pe: enrp_core::registrar::PeKey,
        deadline_ms: Option<u64>,
    ) -> Result<(), enrp_core::registrar::DrainRefusal> {
        let (reply, rx) = oneshot::channel();
        let event = Event::Drain {
            pe,
            deadline_ms,
            reply,
        };
        if self.events.send(event).await.is_err() {
            return Err(enrp_core::registrar::DrainRefusal::NoSuchPe);
        }
        rx.await
            .unwrap_or(Err(enrp_core::registrar::DrainRefusal::NoSuchPe))
    }

    /// Replaces the grants; PEs they no longer allow are removed before this returns.
    pub async fn set_grants(&self, grants: Vec<Grant>) -> usize {
        self.command(Input::Grants(grants)).await
    }

    /// Replaces the default-namespace rules.
    pub async fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) {
        self.command(Input::DefaultNamespaces(rules)).await;
    }

    /// A revocation: the covered connections close, their PEs are removed.
    pub async fn revoke(&self, revocation: Revocation) -> usize {
        self.command(Input::Revoked(revocation)).await
    }

    /// A pool's declaration changed (`None`: withdrawn).
    pub async fn declare_pool(
        &self,
        namespace: Namespace,
        pool_handle: PoolHandle,
        declared: Option<Declared>,
    ) {
        self.command(Input::DeclarePool {
            namespace,
            pool_handle,
            declared,
        })
        .await;
    }

    /// A federated trust domain was removed from the trust store.
    pub async fn domain_removed(&self, domain: String) -> usize {
        self.command(Input::DomainRemoved(domain)).await
    }

    async fn command(&self, input: Input) -> usize {
        let (done, rx) = oneshot::channel();
        if self
            .events
            .send(Event::Command { input, done })
            .await
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// The counters now.
    pub async fn snapshot(&self) -> Snapshot {
        let (connections, pool_elements, owned) = self.ask(Query::Stats).await;
        let by_namespace = self.counters.by_namespace.snapshot();
        let mut rejections = BTreeMap::new();
        for (cause, n) in by_namespace.iter().flat_map(|c| &c.refusals) {
            let cause = cause.unwrap_or(super::by_namespace::CAUSE_SLOTS as u16);
            *rejections.entry(cause).or_default() += n;
        }
        Snapshot {
            connections,
            pool_elements,
            owned,
            registrations: by_namespace.iter().map(|c| c.registrations).sum(),
            resolutions: by_namespace.iter().map(|c| c.resolutions).sum(),
            rejections,
            by_namespace,
            handshake_failures: locked(&self.counters.handshake_failures).clone(),
            audit_queue: self.audit.stats().queued as u64,
            refusals_aggregated: locked(&self.counters.refusals).aggregated(),
            low_disk: self.low_disk(),
            store_down: self.store_down(),
            audit_failed_commits: self.audit.stats().failed_commits,
            audit_dropped: self.counters.audit_dropped.load(Ordering::Relaxed),
            audit_commit: self.audit.commit_latency(),
        }
    }
}
