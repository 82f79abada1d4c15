//! The registrar's I/O edge (STYLE.md §2, quinn's driver): a TLS listener, one task per
//! connection, one task that owns the [`Core`], and the audit writer.
//!
//! - A connection task does the TLS handshake (a fresh rustls `ServerConfig` from the
//!   trust store per accept, so revocations and new trust domains apply to the next
//!   handshake), cuts frames, decodes them and hands them to the core task; it also
//!   writes what the core sends, in order.
//! - The core task feeds inputs and timeouts to the core and carries out its actions. An
//!   audit record with [`Durability::BeforeReply`] is queued to the audit writer and the
//!   messages after it travel to their connection with a *gate* that opens when the
//!   record's transaction has committed: the core never waits for the disk, yet no reply
//!   leaves before its record is durable, and many records share one commit.

mod connection;
mod control;
mod limits;
mod listen;
mod peer;
mod refusals;

pub use control::{Control, Counters, PeerSnapshot, PoolSnapshot, Snapshot};
pub use limits::{IDENTITY_FACTOR, Rate, RateLimits};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::asap::transport::{Endpoint, TransportAddr};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use trust::audit::{AuditLog, Outcome, Record};
use trust::{Grant, Protocol, TrustStore};

use listen::{Listener, Security};

use crate::registrar::{
    Action, AuditEvent, Client, Config, ConnId, Core, Durability, Input, Revocation,
};

/// What the daemon needs besides the trust store and the audit log.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where ASAP over TLS/TCP is served (spec §2: 3864).
    pub asap_listen: SocketAddr,
    /// The registrar core's configuration.
    pub registrar: Config,
    /// Largest message accepted from a client (spec §3.5). Default 65532.
    pub max_message_len: usize,
    /// A TLS handshake that takes longer is abandoned (spec §10). Default 10 s.
    pub handshake_timeout: Duration,
    /// Messages queued for one connection before it counts as stuck and is closed.
    pub send_queue: usize,
    /// A connection that sends nothing for this long is closed (spec §10: 300 s for PU
    /// links; PEs answer keep-alives far more often). Default 300 s.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue (threat T-15).
    /// Default 10,000.
    pub max_connections: usize,
    /// Connections from one IP address per listener; more are closed at once (threat
    /// T-15, docs/SECURITY.md). Default 1,000 (a site behind one NAT address).
    pub max_connections_per_ip: usize,
    /// Of those, connections still in their TLS handshake (not yet authenticated).
    /// Default 64.
    pub max_handshakes_per_ip: usize,
    /// Authenticated ASAP connections of one identity at once; more are closed after the
    /// handshake, audited. Default 256.
    pub max_connections_per_identity: usize,
    /// Where ENRP over TLS/TCP is served (spec §2.1, D-4: 9902); `None` serves none.
    /// Default `None` (the `enrpd` binary defaults to `[::]:9902`).
    pub enrp_listen: Option<SocketAddr>,
    /// Where ASAP over TLS/SCTP is served (spec §2: 3864, PPID 11); `None` serves none.
    /// Default `None`.
    pub asap_sctp_listen: Option<Endpoint>,
    /// Where ENRP over TLS/SCTP is served (spec §2: 9902, PPID 12); `None` serves none.
    /// Default `None`.
    pub enrp_sctp_listen: Option<Endpoint>,
    /// A plain SCTP ASAP listener for legacy clients such as RSPLIB (spec: 3863), confined
    /// to [`Config::legacy_namespace`](crate::registrar::Config::legacy_namespace), which
    /// must be set with it. Off (`None`) unless configured.
    pub legacy_asap_listen: Option<Endpoint>,
    /// A plain SCTP ENRP listener for legacy peers such as RSPLIB's `rspregistrar` (spec:
    /// 9901, PPID 12), who speak for [`Config::legacy_namespace`](crate::registrar::Config::legacy_namespace)
    /// only, which must be set with it. An association is admitted only from a
    /// [`Settings::legacy_peers`] address with that peer's Server ID. Off (`None`) unless
    /// configured.
    pub legacy_enrp_listen: Option<Endpoint>,
    /// The legacy ENRP peers: dialed over plain SCTP like [`Settings::peers`], and the only
    /// ones the legacy ENRP listener admits. Only with [`Settings::legacy_enrp_listen`].
    pub legacy_peers: Vec<LegacyPeer>,
    /// Peers to dial, `HOST:PORT` or `sctp:IP:PORT` (spec §9.2: static configuration). Each is redialed
    /// while the daemon runs, 100 ms after a loss, backing off to 5 s.
    pub peers: Vec<String>,
    /// Where requests without a Namespace parameter go, from the first connection on
    /// (ARCHITECTURE.md §3; changes arrive through [`Daemon::set_default_namespaces`]).
    pub default_namespaces: Vec<trust::DefaultNamespace>,
    /// A peer learnt from a list (not configured) that has had no connection for this
    /// long is no longer dialed (until the core asks again: a list naming it at a new
    /// address; or it dials us). Default 10 min.
    pub learnt_peer_give_up: Duration,
    /// The revocations stored before the start (admin API), in force in the core from
    /// the first input (issue 16: a peer cannot re-inject a revoked identity's PEs).
    pub revocations: Vec<Revocation>,
    /// The Server ID bindings stored before the start, and where new ones are stored
    /// (docs/ENRP-TRUST.md §4). `None`: bindings last as long as the process.
    pub server_id_bindings: Vec<(::asap::wire::param::ServerId, trust::SpiffeId)>,
    /// The store that keeps new Server ID bindings.
    pub bindings_store: Option<trust::db::Store>,
    /// Kinds of refusal (failed handshakes per source, repeated refused requests) audited
    /// one record each per listener per second; more are counted into summary records
    /// (docs/SECURITY.md). Default 20.
    pub refusal_audit_budget: u32,
    /// Request rate limits per connection (and [`IDENTITY_FACTOR`] times as much per
    /// identity); over them a request is answered with cause 0x6 (docs/SECURITY.md).
    pub rate_limits: RateLimits,
    /// The data directory (the store and its audit log), watched for free space; `None`
    /// watches nothing. Default `None`.
    pub data_dir: Option<std::path::PathBuf>,
    /// Below this many free bytes in [`Settings::data_dir`] the registrar refuses new
    /// registrations (cause 0x6) and the admin API its writes (507), and keeps serving
    /// resolutions and keep-alives; it never exits for it (docs/SECURITY.md). Default
    /// 64 MiB (a few hundred thousand audit records of headroom).
    pub min_free_bytes: u64,
}

impl Settings {
    /// Defaults around a registrar configuration.
    pub fn new(asap_listen: SocketAddr, registrar: Config) -> Self {
        Self {
            asap_listen,
            registrar,
            max_message_len: ::asap::wire::limits::MAX_MESSAGE_LEN,
            handshake_timeout: Duration::from_secs(10),
            send_queue: 4096,
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_handshakes_per_ip: 64,
            max_connections_per_identity: 256,
            enrp_listen: None,
            asap_sctp_listen: None,
            enrp_sctp_listen: None,
            legacy_asap_listen: None,
            legacy_enrp_listen: None,
            legacy_peers: Vec::new(),
            peers: Vec::new(),
            default_namespaces: Vec::new(),
            learnt_peer_give_up: Duration::from_secs(600),
            revocations: Vec::new(),
            server_id_bindings: Vec::new(),
            bindings_store: None,
            refusal_audit_budget: refusals::DEFAULT_BUDGET,
            rate_limits: RateLimits::default(),
            data_dir: None,
            min_free_bytes: 64 << 20,
        }
    }

    /// Without the per-client limits (request rates, connections per address and per
    /// identity): for benchmarks, whose clients load the registrar on purpose from one
    /// address and often one identity. Never for a registrar that serves anyone.
    pub fn without_client_limits(mut self) -> Self {
        self.lift_client_limits();
        self
    }

    /// [`Settings::without_client_limits`] in place (for [`crate::run_with`]).
    pub fn lift_client_limits(&mut self) {
        self.rate_limits = RateLimits::UNLIMITED;
        self.max_connections_per_ip = usize::MAX;
        self.max_handshakes_per_ip = usize::MAX;
        self.max_connections_per_identity = usize::MAX;
    }
}

/// A legacy ENRP peer (RSPLIB's `rspregistrar`), known by its address and its configured
/// Server ID (it has no certificate): `sctp:IP:PORT[+IP:PORT...]=SERVERID`, the Server ID
/// in hex (`0x11111111`) or decimal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPeer {
    /// Where it serves ENRP over plain SCTP; its associations must come from one of these
    /// addresses (any port: the address is what identifies it).
    pub at: Endpoint,
    /// The Server ID every message of it must carry.
    pub server_id: ::asap::wire::param::ServerId,
}

impl std::str::FromStr for LegacyPeer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (at, id) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected sctp:IP:PORT=SERVERID"))?;
        let at = match at
            .parse::<TransportAddr>()
            .map_err(|e| format!("{s:?}: {e}"))?
        {
            TransportAddr::Sctp(e) => e,
            TransportAddr::Tcp(_) => return Err(format!("{s:?}: a legacy peer is sctp:")),
        };
        let id = match id.strip_prefix("0x").or_else(|| id.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => id.parse(),
        }
        .map_err(|e| format!("{s:?}: Server ID: {e}"))?;
        let server_id = ::asap::wire::param::ServerId::new(id)
            .ok_or_else(|| format!("{s:?}: Server ID 0 is not a Server ID"))?;
        Ok(Self { at, server_id })
    }
}

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
    Audit(#[from] trust::db::Error),
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
        client: Client,
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
        client: Client,
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
}

/// What the core task tells a connection task.
#[derive(Debug)]
enum Outgoing {
    /// Write this message once `gate` (if any) says its audit record committed.
    Message { bytes: Vec<u8>, gate: Option<Gate> },
    /// Close the connection (after the gate, if any).
    Close { gate: Option<Gate> },
}

/// The core task's way to a connection task.
#[derive(Debug, Clone)]
struct ConnHandle {
    tx: mpsc::Sender<Outgoing>,
    /// Ends the connection at once (its send queue is full).
    kill: Arc<tokio::sync::Notify>,
}

/// Opens with `true` when an audit record committed, `false` if the commit failed.
type Gate = watch::Receiver<Option<bool>>;

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
    /// Forwards the core's audit records to the writer ([`forward_audit`]).
    audit_task: JoinHandle<()>,
    accept_task: JoinHandle<()>,
    audit: AuditLog,
    control: Control,
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
        // Bounded: a dial request that does not fit is dropped (the next list brings it).
        let (dial_tx, dial_rx) = mpsc::channel(256);
        // Bounded too: a PE whose dial does not fit re-registers on its own (spec §12.6).
        let (pe_dial_tx, pe_dial_rx) = mpsc::channel(65_536);
        let (audit_jobs, audit_jobs_rx) = mpsc::channel(AUDIT_BACKLOG);
        let audit_task = tokio::spawn(forward_audit(audit_jobs_rx, audit.clone()));
        let core_task = tokio::spawn(run_core(
            core,
            events_rx,
            audit_jobs,
            Arc::clone(&counters),
            Dials {
                peers: dial_tx,
                pes: pe_dial_tx,
                bindings: settings.bindings_store.clone(),
            },
            stop_rx.clone(),
        ));
        let settings = Arc::new(settings);
        let mut peer_tasks = vec![tokio::spawn(audit_refusals(
            audit.clone(),
            Arc::clone(&counters),
            stop_rx.clone(),
        ))];
        peer_tasks.push(tokio::spawn(watch_disk(
            settings.data_dir.clone(),
            settings.min_free_bytes,
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
            peer_tasks.push(tokio::spawn(peer::accept_loop(
                l,
                security,
                Arc::clone(&settings),
                Arc::clone(&trust),
                events.clone(),
                audit.clone(),
                Arc::clone(&counters),
                stop_rx.clone(),
            )));
        }
        for p in &settings.legacy_peers {
            peer_tasks.push(tokio::spawn(peer::legacy_dial_loop(
                p.clone(),
                Arc::clone(&settings),
                events.clone(),
                audit.clone(),
                Arc::clone(&counters),
                stop_rx.clone(),
            )));
        }
        peer_tasks.push(tokio::spawn(connection::dial_pes(
            pe_dial_rx,
            Arc::clone(&settings),
            Arc::clone(&trust),
            events.clone(),
            audit.clone(),
            Arc::clone(&counters),
            stop_rx.clone(),
        )));
        peer_tasks.push(tokio::spawn(peer::dial_discovered(
            dial_rx,
            Arc::clone(&settings),
            Arc::clone(&trust),
            events.clone(),
            audit.clone(),
            Arc::clone(&counters),
            stop_rx.clone(),
        )));
        for target in &settings.peers {
            peer_tasks.push(tokio::spawn(peer::dial_loop(
                target.clone(),
                None,
                Arc::clone(&settings),
                Arc::clone(&trust),
                events.clone(),
                audit.clone(),
                Arc::clone(&counters),
                stop_rx.clone(),
            )));
        }
        for (l, legacy) in sctp {
            peer_tasks.push(tokio::spawn(connection::accept_loop(
                l,
                legacy,
                Arc::clone(&settings),
                Arc::clone(&trust),
                events.clone(),
                audit.clone(),
                Arc::clone(&counters),
                stop_rx.clone(),
            )));
        }
        let accept_task = tokio::spawn(connection::accept_loop(
            listener,
            false,
            settings,
            trust,
            events.clone(),
            audit.clone(),
            Arc::clone(&counters),
            stop_rx,
        ));
        let control = Control::new(events.clone(), counters, audit.clone());
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
        })
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
    pub async fn set_default_namespaces(&self, rules: Vec<trust::DefaultNamespace>) {
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

async fn write_refusals(audit: &AuditLog, counters: &Counters) {
    for record in counters.flush_refusals() {
        if let Err(e) = audit.append(record, Durability::Batched).await {
            tracing::error!(error = %e, "cannot audit refusals in aggregate");
        }
    }
}

/// Most queued events applied in a row before a due timer gets its turn (the size of the
/// event channel: one queue's worth).
const MAX_STREAK: usize = 8192;

async fn run_core(
    mut core: Core,
    mut events: mpsc::Receiver<Event>,
    audit: mpsc::Sender<AuditJob>,
    counters: Arc<Counters>,
    dials: Dials,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut writers: HashMap<ConnId, ConnHandle> = HashMap::new();
    // Events already queued are applied before a due timer, at most MAX_STREAK in a row:
    // a keep-alive acknowledgement waiting behind a burst of work (say, thousands of PEs
    // removed at once) must count before its PE's timeout is judged; the bound keeps
    // timers from starving under a steady flood.
    let mut streak = 0usize;
    loop {
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
        let gate = execute(actions, &writers, &audit, &counters, &dials);
        if let Some((conn, bytes)) = response {
            let gate = gate.clone();
            deliver(&writers, conn, Outgoing::Message { bytes, gate });
        }
        if let Some(reply) = done {
            // The operator hears back once the removals are durable in the audit log.
            tokio::spawn(async move {
                if let Some(mut gate) = gate {
                    let _ = gate.wait_for(Option::is_some).await;
                }
                let _ = reply.send(removed);
            });
        }
    }
    // Dropping the writers lets every connection task end after what it was sent.
    Ok(())
}

/// An audit record on its way from the core task to the writer; `gate` opens with
/// whether it committed ([`Durability::BeforeReply`]).
struct AuditJob {
    record: Record,
    gate: Option<watch::Sender<Option<bool>>>,
}

/// Records the core task hands over without waiting, beyond the writer's own queue (8,192).
/// When both are full the disk is far behind: batched records are dropped (counted,
/// `rsp_audit_dropped_total`) and operations that need theirs are refused, rather than the
/// core task, and with it every keep-alive and heartbeat, waiting for the disk.
const AUDIT_BACKLOG: usize = 65_536;

/// Hands the core's records to the audit writer in order, waiting for room in its queue
/// (the core task does not), until the core task ends.
async fn forward_audit(mut jobs: mpsc::Receiver<AuditJob>, audit: AuditLog) {
    while let Some(AuditJob { record, gate }) = jobs.recv().await {
        let Some(gate) = gate else {
            if let Err(e) = audit.append(record, Durability::Batched).await {
                tracing::error!(error = %e, "cannot audit: record lost");
            }
            continue;
        };
        match audit.enqueue_before_reply(record).await {
            Ok(committed) => {
                tokio::spawn(async move {
                    let ok = matches!(committed.await, Ok(Ok(())));
                    if !ok {
                        tracing::error!("audit commit failed: the reply is withheld");
                    }
                    let _ = gate.send(Some(ok));
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot audit: the reply is withheld");
                let _ = gate.send(Some(false));
            }
        }
    }
}

/// Where the core's dial requests go: registrars from peer lists, taken-over PEs.
struct Dials {
    peers: mpsc::Sender<TransportAddr>,
    pes: mpsc::Sender<connection::PeDial>,
    /// Where Server ID bindings are stored ([`Action::BindServerId`]).
    bindings: Option<trust::db::Store>,
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
        "audit:gap",
        Outcome::Refused("backlog-full".into()),
    );
    record.detail = Some(format!(
        "{missing} audit records were not written: the audit backlog was full \
         (rsp_audit_dropped_total)"
    ));
    if audit.try_send(AuditJob { record, gate: None }).is_ok() {
        counters.audit_gap.fetch_sub(missing, Ordering::Relaxed);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Carries out the core's actions in order (see the module docs for the gate); returns
/// the gate of the last record that had one.
fn execute(
    actions: Vec<Action>,
    writers: &HashMap<ConnId, ConnHandle>,
    audit: &mpsc::Sender<AuditJob>,
    counters: &Counters,
    dials: &Dials,
) -> Option<Gate> {
    let mut gate: Option<Gate> = None;
    for action in actions {
        match action {
            Action::Audit { event, durability } => {
                counters.count(&event);
                let refused = event.outcome.is_some();
                let mut record = to_record(event);
                // A refusal changes nothing: its repeats are audited in aggregate, so that
                // an authenticated client cannot make a row per request either.
                if refused {
                    match counters.note_refusal("core", record) {
                        Some(r) => record = r,
                        None => continue,
                    }
                }
                // A record the log refuses is a bug here, not a reason to stop serving
                // everyone (checked now: the writer would refuse it later).
                if let Err(e) = record.check() {
                    tracing::error!(error = %e, "audit record refused; operation not recorded");
                    continue;
                }
                // Handed over without waiting: a slow disk delays only the replies that
                // wait for their record (the gate), never this task (keep-alives,
                // heartbeats, resolutions).
                let (job, rx) = match durability {
                    Durability::Batched => (AuditJob { record, gate: None }, None),
                    Durability::BeforeReply => {
                        let (tx, rx) = watch::channel(None);
                        (
                            AuditJob {
                                record,
                                gate: Some(tx),
                            },
                            Some(rx),
                        )
                    }
                };
                record_gap(audit, counters);
                if let Err(mpsc::error::TrySendError::Full(job)) = audit.try_send(job) {
                    // The writer's queue and this backlog are full: the disk is far
                    // behind. Batched records are dropped (counted, and accounted for by
                    // an `audit:gap` record once there is room), operations that need
                    // theirs are refused: their replies are withheld.
                    let dropped = counters.audit_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    counters.audit_gap.fetch_add(1, Ordering::Relaxed);
                    if let Some(tx) = job.gate {
                        let _ = tx.send(Some(false));
                    }
                    // Loud, but not a line per record.
                    if dropped == 1 || dropped.is_multiple_of(1000) {
                        tracing::error!(
                            dropped,
                            "AUDIT BACKLOG FULL: records dropped, replies that wait for theirs withheld"
                        );
                    }
                }
                if let Some(rx) = rx {
                    gate = Some(rx);
                }
            }
            Action::Send { conn, msg } => {
                let bytes = match msg.to_bytes() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(?conn, error = %e, msg = msg.name(), "cannot encode");
                        continue;
                    }
                };
                deliver(
                    writers,
                    conn,
                    Outgoing::Message {
                        bytes,
                        gate: gate.clone(),
                    },
                );
            }
            Action::SendEnrp { conn, msg } => {
                let bytes = match msg.to_bytes() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(?conn, error = %e, "cannot encode an ENRP message");
                        continue;
                    }
                };
                deliver(
                    writers,
                    conn,
                    Outgoing::Message {
                        bytes,
                        gate: gate.clone(),
                    },
                );
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
                                trust::db::bind_server_id(
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
                deliver(writers, conn, Outgoing::Close { gate: gate.clone() });
            }
        }
    }
    gate
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

fn to_record(event: AuditEvent) -> Record {
    let outcome = event.outcome.map_or(Outcome::Ok, Outcome::Cause);
    let mut r = Record::new(now_ms(), event.action, outcome);
    if let Some((id, serial)) = event.actor {
        r.actor = Some(id);
        r.serial = Some(serial);
    }
    r.remote = event.remote;
    r.namespace = event.namespace.map(|n| n.as_str().to_owned());
    r.pool = event.pool_handle.map(|h| h.as_bytes().to_vec());
    r.pe_id = event.pe_id.map(|p| p.get());
    r.detail = event.detail.map(|d| audit_text(&d));
    r
}

/// Detail text as the audit log accepts it: no control characters (they could forge log
/// lines), at most 512 characters. Some of it comes from peers (TLS errors, certificates).
pub(crate) fn audit_text(s: &str) -> String {
    s.chars()
        .take(512)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::AuditAction;

    /// Issue 18 item 4: records dropped while the backlog is full are accounted for by one
    /// `audit:gap` record with their count, written first once there is room again.
    #[test]
    fn dropped_records_leave_a_gap_record_with_their_count() {
        let (audit, mut backlog) = mpsc::channel(1);
        let counters = Counters::default();
        let (peers, _peers_rx) = mpsc::channel(1);
        let (pes, _pes_rx) = mpsc::channel(1);
        let dials = Dials {
            peers,
            pes,
            bindings: None,
        };
        let resolution = || Action::Audit {
            event: AuditEvent {
                actor: None,
                remote: None,
                namespace: None,
                pool_handle: None,
                pe_id: None,
                action: AuditAction::Resolve,
                outcome: None,
                detail: None,
            },
            durability: Durability::Batched,
        };
        let run = |n: usize| {
            execute(
                (0..n).map(|_| resolution()).collect(),
                &HashMap::new(),
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

    #[test]
    fn audit_text_is_bounded_and_printable() {
        assert_eq!(audit_text("bad\ncert\u{1b}[31m"), "bad cert [31m");
        assert_eq!(audit_text(&"é".repeat(1000)).chars().count(), 512);
        let mut r = Record::new(1, "handshake", Outcome::Ok);
        r.detail = Some(audit_text(&"x\r\n".repeat(10_000)));
        assert!(r.check().is_ok());
    }
}
