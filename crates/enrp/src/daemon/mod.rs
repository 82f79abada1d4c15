//! The registrar's I/O edge (STYLE.md §2, quinn's driver): a TLS listener, one task per
//! connection, one task that owns the [`Core`], and the audit writer.
//!
//! - A connection task does the TLS handshake (a fresh rustls `ServerConfig` from the
//!   trust store per accept, so revocations and new trust domains apply to the next
//!   handshake), cuts frames, decodes them and hands them to the core task, except the
//!   handle resolutions it answers itself from the core's [`ReadView`]; it also writes
//!   what the core sends, in order ([`connection`], [`peer`] for ENRP, [`listen`],
//!   [`limits`], [`refusals`]).
//! - The core task ([`driver`]) feeds inputs and timeouts to the core and carries out its
//!   actions; its module doc says how a message flows and how no reply leaves before its
//!   audit record is durable. [`audit`] turns the core's audit events into records.
//! - This file starts it all ([`Daemon::start`]) from [`Settings`] and stops it.

mod audit;
mod barrier;
pub mod by_namespace;
mod changes;
mod connection;
mod control;
mod driver;
mod limits;
mod listen;
mod on_wake;
mod peer;
mod refusals;
mod settings;
mod tally;

pub(crate) use audit::audit_text;
pub use control::{Control, Counters, PeerSnapshot, PoolSnapshot, Snapshot};
pub use limits::{IDENTITY_FACTOR, Rate, RateLimits};
pub use settings::{LegacyPeer, Settings};
pub use tally::resolutions_in;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::asap::addr::{Endpoint, TransportAddr};
use identity::Grant;
use store::audit::AuditLog;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use trust::{Protocol, TrustStore};

use listen::{Listener, Security};

use driver::{AUDIT_BACKLOG, AuditJob, Dials, forward_audit, run_core};

use enrp_core::registrar::{ConnId, Core, Input, ReadView, Remote};
use identity::Revocation;
use identity::audit::Durability;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address (`sctp:` for SCTP).
        addr: TransportAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The audit log could not be flushed at shutdown. (While it runs, a failing audit
    /// log refuses the operations it cannot record; it does not stop the registrar.)
    #[error("audit log: {0}")]
    Audit(#[from] store::db::Error),
}

/// The namespace a legacy listener at `e` confines its clients and peers to; starting one
/// without it is an error.
fn legacy_namespace(
    settings: &Settings,
    e: &Endpoint,
) -> Result<::asap::wire::param::Namespace, Error> {
    settings
        .registrar
        .legacy_namespace
        .clone()
        .ok_or_else(|| Error::Listen {
            addr: TransportAddr::Sctp(e.clone()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a legacy listener needs the namespace its clients and peers are confined to",
            ),
        })
}

/// Whether this build and this kernel can serve SCTP.
pub fn sctp_available() -> bool {
    listen::sctp_available()
}

/// Why there is no SCTP here, in one line.
pub const SCTP_UNAVAILABLE: &str = "no SCTP: this kernel has none (socket(IPPROTO_SCTP) fails) or enrpd was built without the `sctp` feature";

/// What connection tasks tell the core task.
#[derive(Debug)]
enum Event {
    Connected {
        conn: ConnId,
        client: Remote,
        /// [`Input::Connected`]'s `addrs`.
        addrs: Vec<std::net::IpAddr>,
        writer: ConnHandle,
    },
    /// An authenticated ENRP peer connection ([`Input::PeerUp`]) and its writer.
    PeerConnected {
        input: Input,
        writer: ConnHandle,
    },
    Input(Input),
    /// A registration or deregistration that failed validation ([`Input::Malformed`] for
    /// the core), answered with `response` (its own response message, spec §7.1, §7.9)
    /// instead of the core's ASAP_ERROR.
    Invalid {
        conn: ConnId,
        error: ::asap::wire::DecodeError,
        response: Vec<u8>,
    },
    /// A request refused by a rate limit before it reached the core ([`limits`]).
    Limited {
        conn: ConnId,
        client: Remote,
        msg: ::asap::wire::AsapMsg,
        over: limits::Over,
    },
    /// The admin API's questions, answered from the core between inputs.
    Query(control::Query),
    /// An input whose PE removals are counted back once their audit records committed.
    Command {
        input: Input,
        done: oneshot::Sender<usize>,
    },
    /// An operator's drain of a PE until a deadline (unix ms), or its lifting (`None`),
    /// answered once the core took it.
    Drain {
        pe: enrp_core::registrar::PeKey,
        deadline_ms: Option<u64>,
        reply: oneshot::Sender<Result<(), enrp_core::registrar::DrainRefusal>>,
    },
}

/// What the core task tells a connection task (once the audit records it waits for
/// committed: [`barrier`]).
#[derive(Debug)]
enum Outgoing {
    /// Write this message.
    Message { bytes: Vec<u8> },
    /// Close the connection (after what was sent before).
    Close,
}

/// The core task's way to a connection task.
#[derive(Debug, Clone)]
struct ConnHandle {
    tx: mpsc::Sender<Outgoing>,
    /// Ends the connection at once (its send queue is full).
    kill: Arc<tokio::sync::Notify>,
}

/// What every listener, dialer and connection task shares: the daemon's settings, the
/// trust store, the way to the core task, the audit log, the counters and the stop signal.
#[derive(Clone)]
struct Shared {
    settings: Arc<Settings>,
    trust: Arc<TrustStore>,
    events: mpsc::Sender<Event>,
    audit: AuditLog,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    /// What the core publishes for resolutions answered where they arrive.
    view: Arc<ReadView>,
    /// The way to the audit writer for those resolutions' records, through
    /// [`forward_audit`] (weak: the core task holds the sender, so the forwarder ends when
    /// the core task does, whatever connection tasks hold).
    audit_jobs: mpsc::WeakSender<AuditJob>,
}

impl Shared {
    /// Its parts, for a task that takes them apart.
    #[allow(
        clippy::type_complexity,
        reason = "taken apart at once into named bindings"
    )]
    fn parts(
        self,
    ) -> (
        Arc<Settings>,
        Arc<TrustStore>,
        mpsc::Sender<Event>,
        AuditLog,
        Arc<Counters>,
        watch::Receiver<bool>,
    ) {
        (
            self.settings,
            self.trust,
            self.events,
            self.audit,
            self.counters,
            self.stop,
        )
    }
}

/// A running registrar. Dropping it does not stop it: call [`Daemon::shutdown`].
#[derive(Debug)]
pub struct Daemon {
    asap_addr: SocketAddr,
    enrp_addr: Option<SocketAddr>,
    /// The SCTP listeners: what each serves, and where (with the real port).
    sctp_addrs: Vec<(&'static str, Endpoint)>,
    /// The ENRP listener and the peer dialers.
    peer_tasks: Vec<JoinHandle<()>>,
    events: mpsc::Sender<Event>,
    stop: watch::Sender<bool>,
    core_task: JoinHandle<Result<(), Error>>,
    /// Forwards the connection tasks' audit records to the writer ([`forward_audit`]).
    audit_task: JoinHandle<()>,
    accept_task: JoinHandle<()>,
    audit: AuditLog,
    control: Control,
    /// Peers to dial that were learnt, not configured (the core's peer lists, multicast
    /// presence): [`Daemon::peer_dialer`].
    peer_dials: mpsc::Sender<TransportAddr>,
}

impl Daemon {
    /// Binds the ASAP (and ENRP) listeners, dials the configured peers and starts serving.
    pub async fn start(
        mut settings: Settings,
        trust: Arc<TrustStore>,
        audit: AuditLog,
        grants: Vec<Grant>,
    ) -> Result<Self, Error> {
        let bind = |at: TransportAddr, protocol, security| async move {
            match Listener::bind(&at, protocol, security).await {
                Ok(l) => {
                    let bound = l.local().map_err(|source| Error::Listen {
                        addr: at.clone(),
                        source,
                    })?;
                    Ok((l, bound))
                }
                Err(source) => Err(Error::Listen { addr: at, source }),
            }
        };
        let tcp = |a| TransportAddr::Tcp(a);
        let (listener, asap_bound) =
            bind(tcp(settings.asap_listen), Protocol::Asap, Security::Tls).await?;
        let asap_addr = asap_bound.primary();
        let enrp_listener = match settings.enrp_listen {
            Some(addr) => {
                let (l, bound) = bind(tcp(addr), Protocol::Enrp, Security::Tls).await?;
                Some((l, bound.primary()))
            }
            None => None,
        };
        // SCTP listeners (TLS, and the opt-in plain one for legacy clients).
        let mut sctp = Vec::new();
        let mut sctp_addrs = Vec::new();
        let endpoint_of = |at: TransportAddr| match at {
            TransportAddr::Sctp(e) => e,
            TransportAddr::Tcp(a) => Endpoint::single(a),
        };
        if let Some(e) = &settings.asap_sctp_listen {
            let (l, at) = bind(
                TransportAddr::Sctp(e.clone()),
                Protocol::Asap,
                Security::Tls,
            )
            .await?;
            tracing::info!(%at, "serving ASAP over TLS/SCTP");
            sctp_addrs.push(("ASAP over TLS/SCTP", endpoint_of(at)));
            sctp.push((l, false));
        }
        if let Some(e) = &settings.legacy_asap_listen {
            let ns = legacy_namespace(&settings, e)?;
            let (l, at) = bind(
                TransportAddr::Sctp(e.clone()),
                Protocol::Asap,
                Security::Plain,
            )
            .await?;
            tracing::warn!(%at, namespace = %ns, "serving ASAP over plain SCTP for legacy clients: UNAUTHENTICATED, confined to this namespace, every message audited as such");
            sctp_addrs.push(("legacy ASAP (plain SCTP)", endpoint_of(at)));
            sctp.push((l, true));
        }
        let legacy_enrp = match &settings.legacy_enrp_listen {
            Some(e) => {
                let ns = legacy_namespace(&settings, e)?;
                let (l, at) = bind(
                    TransportAddr::Sctp(e.clone()),
                    Protocol::Enrp,
                    Security::Plain,
                )
                .await?;
                tracing::warn!(%at, namespace = %ns, "serving ENRP over plain SCTP for legacy peers: UNAUTHENTICATED (known by address and configured Server ID), confined to this namespace, audited as such");
                let at = endpoint_of(at);
                settings.registrar.legacy_enrp_addrs = at.addrs().to_vec();
                sctp_addrs.push(("legacy ENRP (plain SCTP)", at));
                Some(l)
            }
            None => None,
        };
        if legacy_enrp.is_none()
            && let Some(p) = settings.legacy_peers.first()
        {
            // Legacy ENRP is off unless its listener is configured: no dialing around it.
            return Err(Error::Listen {
                addr: TransportAddr::Sctp(p.at.clone()),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "legacy peers need the legacy ENRP listener",
                ),
            });
        }
        for p in &settings.legacy_peers {
            tracing::warn!(at = %TransportAddr::Sctp(p.at.clone()), server_id = %p.server_id, "legacy ENRP peer over plain SCTP: UNAUTHENTICATED, confined to the legacy namespace");
        }
        let enrp_sctp = match &settings.enrp_sctp_listen {
            Some(e) => {
                let (l, at) = bind(
                    TransportAddr::Sctp(e.clone()),
                    Protocol::Enrp,
                    Security::Tls,
                )
                .await?;
                tracing::info!(%at, "serving ENRP over TLS/SCTP");
                let at = endpoint_of(at);
                settings.registrar.enrp_sctp_addrs = at.addrs().to_vec();
                sctp_addrs.push(("ENRP over TLS/SCTP", at));
                Some(l)
            }
            None => None,
        };
        let enrp_addr = enrp_listener.as_ref().map(|(_, a)| *a);
        settings.registrar.enrp_addr = enrp_addr;
        let (events, events_rx) = mpsc::channel(8192);
        let (stop, stop_rx) = watch::channel(false);
        let mut core = Core::new(settings.registrar.clone(), grants);
        core.set_default_namespaces(settings.default_namespaces.clone());
        core.set_revocations(settings.revocations.clone());
        core.set_server_id_bindings(settings.server_id_bindings.clone());
        let counters = Arc::new(Counters::new(
            settings.refusal_audit_budget,
            settings.rate_limits,
        ));
        // Spec §9.3: with peers to learn from, no service until synchronised.
        if !settings.peers.is_empty() || !settings.legacy_peers.is_empty() {
            core.begin_startup(tokio::time::Instant::now().into_std());
        }
        counters.starting.store(core.starting(), Ordering::Relaxed);
        // The admin API's watch streams (issue 22, `changes.rs`): ids from the time in µs,
        // so that they grow across restarts and an earlier run's id reads as too old.
        core.journal_handlespace_changes();
        let changes =
            admin_api::PoolChanges::new(now_ms().saturating_mul(1000), admin_api::changes::HISTORY);
        let view = Arc::clone(core.read_view());
        // Bounded: a dial request that does not fit is dropped (the next list brings it).
        let (dial_tx, dial_rx) = mpsc::channel(256);
        let peer_dials = dial_tx.clone();
        // Bounded too: a PE whose dial does not fit re-registers on its own (spec §12.6).
        let (pe_dial_tx, pe_dial_rx) = mpsc::channel(65_536);
        let (audit_jobs, audit_jobs_rx) = mpsc::channel(AUDIT_BACKLOG);
        let weak_audit_jobs = audit_jobs.downgrade();
        let audit_task = tokio::spawn(forward_audit(
            audit_jobs_rx,
            audit.clone(),
            Arc::clone(&counters),
        ));
        let core_task = tokio::spawn(run_core(
            core,
            events_rx,
            audit.clone(),
            audit_jobs,
            Arc::clone(&counters),
            Dials {
                peers: dial_tx,
                pes: pe_dial_tx,
                bindings: settings.bindings_store.clone(),
                warn_local_plane: settings
                    .bindings_store
                    .as_ref()
                    .is_some_and(|s| s.backend() == store::db::Backend::Sqlite)
                    && settings.peers.is_empty()
                    && settings.legacy_peers.is_empty(),
            },
            stop_rx.clone(),
            changes.clone(),
        ));
        let settings = Arc::new(settings);
        let shared = Shared {
            settings: Arc::clone(&settings),
            trust,
            events: events.clone(),
            audit: audit.clone(),
            counters: Arc::clone(&counters),
            stop: stop_rx.clone(),
            view,
            audit_jobs: weak_audit_jobs,
        };
        let mut peer_tasks = vec![tokio::spawn(audit_refusals(
            audit.clone(),
            Arc::clone(&counters),
            stop_rx.clone(),
        ))];
        peer_tasks.push(tokio::spawn(watch_disk(
            settings.data_dir.clone(),
            settings.min_free_bytes,
            settings.bindings_store.clone(),
            audit.clone(),
            Arc::clone(&counters),
            stop_rx.clone(),
        )));
        if let Some((_, addr)) = &enrp_listener {
            tracing::info!(%addr, "serving ENRP over TLS");
        }
        let enrp_listeners = (enrp_listener.map(|(l, _)| (l, Security::Tls)).into_iter())
            .chain(enrp_sctp.map(|l| (l, Security::Tls)))
            .chain(legacy_enrp.map(|l| (l, Security::Plain)));
        for (l, security) in enrp_listeners {
            peer_tasks.push(tokio::spawn(peer::accept_loop(l, security, shared.clone())));
        }
        for p in &settings.legacy_peers {
            peer_tasks.push(tokio::spawn(peer::legacy_dial_loop(
                p.clone(),
                shared.clone(),
            )));
        }
        peer_tasks.push(tokio::spawn(connection::dial_pes(
            pe_dial_rx,
            shared.clone(),
        )));
        peer_tasks.push(tokio::spawn(peer::dial_discovered(dial_rx, shared.clone())));
        for target in &settings.peers {
            peer_tasks.push(tokio::spawn(peer::dial_loop(
                target.clone(),
                None,
                shared.clone(),
            )));
        }
        for (l, legacy) in sctp {
            peer_tasks.push(tokio::spawn(connection::accept_loop(
                l,
                legacy,
                shared.clone(),
            )));
        }
        let accept_task = tokio::spawn(connection::accept_loop(listener, false, shared));
        let control = Control::new(events.clone(), counters, audit.clone(), changes);
        tracing::info!(%asap_addr, "serving ASAP over TLS");
        Ok(Self {
            asap_addr,
            enrp_addr,
            sctp_addrs,
            peer_tasks,
            events,
            stop,
            core_task,
            audit_task,
            accept_task,
            audit,
            control,
            peer_dials,
        })
    }

    /// Where to send the ENRP address of a peer registrar learnt elsewhere (multicast
    /// presence, `crate::announce`): it is dialed like one named in a peer list, once,
    /// at most 256 at once, and becomes a peer only through the ENRP mutual-TLS handshake
    /// with the registrar identity check and the `peer` grant.
    pub fn peer_dialer(&self) -> mpsc::Sender<TransportAddr> {
        self.peer_dials.clone()
    }

    /// A handle for the admin API: questions about the handlespace and operator commands.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Where ASAP is served (the bound address, also when port 0 was asked for).
    pub fn asap_addr(&self) -> SocketAddr {
        self.asap_addr
    }

    /// The SCTP listeners: what each serves and where.
    pub fn sctp_addrs(&self) -> &[(&'static str, Endpoint)] {
        &self.sctp_addrs
    }

    /// Where ENRP is served, if it is (the bound address).
    pub fn enrp_addr(&self) -> Option<SocketAddr> {
        self.enrp_addr
    }

    /// Replaces the grants (admin API, reload).
    pub async fn set_grants(&self, grants: Vec<Grant>) {
        let _ = self.events.send(Event::Input(Input::Grants(grants))).await;
    }

    /// Replaces the default-namespace rules (admin API, reload).
    pub async fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) {
        let _ = self
            .events
            .send(Event::Input(Input::DefaultNamespaces(rules)))
            .await;
    }

    /// Removes the PEs of a revoked identity and closes its connections. The caller also
    /// adds the revocation to the trust store, so that it cannot handshake again.
    pub async fn revoke(&self, revocation: Revocation) {
        let _ = self
            .events
            .send(Event::Input(Input::Revoked(revocation)))
            .await;
    }

    /// Stops accepting, lets the core finish what it holds, flushes the audit log.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.control.set_ready(false);
        let _ = self.stop.send(true);
        let _ = self.accept_task.await;
        for t in self.peer_tasks {
            let _ = t.await;
        }
        let core = self.core_task.await.unwrap_or(Ok(()));
        // The core's last records reach the writer before it flushes.
        let _ = self.audit_task.await;
        // The core's last refusals, after the flush task's last round.
        write_refusals(&self.audit, &self.control.counters()).await;
        // The resolutions connection tasks tallied but could no longer hand over (the
        // core task, their way to the writer, has ended: no more are answered).
        for record in self.control.counters().tallies.drain(now_ms()) {
            if let Err(e) = self.audit.append(record, Durability::Batched).await {
                tracing::error!(error = %e, "cannot audit resolutions at the stop");
            }
        }
        let flushed = self.audit.shutdown().await.map_err(Error::from);
        core.and(flushed)
    }
}

/// The current time in unix milliseconds, for audit records and the store.
#[allow(clippy::disallowed_methods)] // the driver is where the clock is read
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `at` (an instant of the core's clock, no later than `now`) in unix milliseconds.
pub(crate) fn unix_ms_of(at: std::time::Instant, now: std::time::Instant) -> u64 {
    let ago = u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
    now_ms().saturating_sub(ago)
}

/// Writes the aggregate refusal records ([`refusals`]) once per interval until the
/// daemon stops, and once more then.
async fn audit_refusals(audit: AuditLog, counters: Arc<Counters>, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(refusals::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped = std::pin::pin!(connection::stopped(stop));
    loop {
        tokio::select! {
            _ = tick.tick() => write_refusals(&audit, &counters).await,
            () = &mut stopped => break,
        }
    }
    write_refusals(&audit, &counters).await;
}

/// How often the data directory's free space and the audit writer are looked at.
const DISK_CHECK: Duration = Duration::from_secs(1);

/// Watches the data directory's free space and the audit writer's failed commits once a
/// second until the daemon stops: below `min_free` the registrar is in its low-disk state
/// (a metric; registrations refused with 0x6, admin writes with 507); every change and
/// every failed commit is logged loudly. It never stops the daemon.
async fn watch_disk(
    dir: Option<std::path::PathBuf>,
    min_free: u64,
    store: Option<store::db::Store>,
    audit: AuditLog,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(DISK_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopped = std::pin::pin!(connection::stopped(stop));
    let mut failed_commits = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stopped => return,
        }
        let stats = audit.stats();
        if stats.failed_commits > failed_commits {
            tracing::error!(
                failed_commits = stats.failed_commits - failed_commits,
                lost_batched_records = stats.lost,
                "AUDIT COMMITS FAILING (disk full or failing?): the operations they recorded were refused; the registrar keeps serving"
            );
            failed_commits = stats.failed_commits;
        }
        if let Some(store) = &store {
            watch_store(store, &counters).await;
        }
        let Some(dir) = &dir else { continue };
        let free = match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the data directory's free space");
                continue;
            }
        };
        let low = free < min_free;
        if counters.low_disk.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    dir = %dir.display(), free, min_free,
                    "LOW DISK: below the free-space watermark; refusing registrations (0x6) and admin writes (507), serving resolutions and keep-alives"
                );
            } else {
                tracing::warn!(dir = %dir.display(), free, min_free, "disk space back above the watermark: registrations accepted again");
            }
        }
    }
}

/// How long the store's ping may take before the store counts as down.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Pings the store and records whether it answers (`Counters::store_down`): one log line
/// when it stops answering, one when it is back, never one per request. While it is down
/// registrations are refused with 0x6 and admin writes with 503; resolutions and
/// keep-alives are served from memory; sqlx's pool reconnects by itself (docs/STORE.md).
async fn watch_store(store: &store::db::Store, counters: &Counters) {
    let answer = match tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STORE_PING_TIMEOUT:?}")),
    };
    let down = answer.is_err();
    if counters.store_down.swap(down, Ordering::Relaxed) != down {
        match answer {
            Err(error) => tracing::error!(
                backend = %store.backend(), %error,
                "STORE DOWN: refusing registrations (0x6) and admin writes (503), serving resolutions and keep-alives from memory"
            ),
            Ok(()) => {
                tracing::warn!(backend = %store.backend(), "store back: registrations and admin writes accepted again")
            }
        }
    }
}

async fn write_refusals(audit: &AuditLog, counters: &Counters) {
    for record in counters.flush_refusals() {
        if let Err(e) = audit.append(record, Durability::Batched).await {
            tracing::error!(error = %e, "cannot audit refusals in aggregate");
        }
    }
}
