//! A pool element's life with its registrars (spec §7.1, §7.2, §7.4, §7.5, §12.4, §12.6):
//! register, answer keep-alives, re-register every T4, hunt another registrar when the
//! home registrar is lost and register there with the same PE ID, re-register when the
//! load of an adaptive policy changes (rate-limited, [`LOAD_UPDATE_INTERVAL`]), deregister
//! on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use trust::{Peer, Protocol, TrustStore};

use super::backoff::Backoff;
use super::card::Alternates;
use super::discovery::{self, Discovery};
use super::{CONNECT_TIMEOUT, Connection, Error};
use crate::addr::TransportAddr;
use crate::policy::{DistanceValues, LeastUsedDistance};
use crate::wire::AsapMsg;
use crate::wire::param::{
    Address, CheckKind, Labels, Load, Namespace, PeId, PeStatus, Policy, PoolElement, PoolHandle,
    ServerId, ServingIdentity, Transport, TransportUse,
};

/// What a PE registers, and with whom.
#[derive(Clone, Debug)]
pub struct PeConfig {
    /// The registrars, tried in order (server hunt, spec §7.7). Whom it accepts as one is
    /// the trust store's: `spiffe://<trusted domain>/registrar/*` unless
    /// [`trust::TrustStore::set_registrar_ids`] pins others (`rsp --registrar-id`); any
    /// other identity fails the handshake (spec §11.1, threats T-6/T-7).
    pub registrars: Vec<TransportAddr>,
    /// Also hunt among the registrars announced by multicast (spec §7.7), after
    /// `registrars`; an announced one must pass the same handshake. `None` (the default,
    /// spec D-5): configured registrars only.
    pub discovery: Option<Discovery>,
    /// Register over plain SCTP, unauthenticated, with legacy registrars such as RSPLIB's
    /// (see [`Connection::open`]). Default `false`.
    pub insecure_legacy: bool,
    /// The namespace (project parameter 0x8100); `None` for the identity's default.
    pub namespace: Option<Namespace>,
    /// The pool.
    pub pool_handle: PoolHandle,
    /// This PE's ID: random, kept for the life of the process (spec §7.1 step 1).
    pub pe_id: PeId,
    /// The policy and this PE's policy values.
    pub policy: Policy,
    /// Where pool users reach this PE. An unspecified address (0.0.0.0 or ::) is
    /// replaced by the address this PE's registrar connection leaves from.
    pub user_transport: Transport,
    /// Registration Life (spec §4.4). Default 300 s.
    pub registration_life: Duration,
    /// A registrar silent for this long is lost (spec §12.4: 3 × keep-alive interval).
    pub liveness: Duration,
    /// The current load (a fraction of `u32::MAX`, spec §5.1) for an adaptive policy (lu,
    /// lud, plu, rlu): each change is sent as a re-registration with the same PE ID (spec
    /// §7.1 step 4), at most one per [`LOAD_UPDATE_INTERVAL`]. `None`: the load in
    /// `policy` is fixed. Ignored for the other policies.
    pub load: Option<watch::Receiver<Load>>,
    /// Where registrars may connect to this PE (spec §12.6), advertised as its ASAP
    /// transport: a registrar taking over from a dead home delivers its H=1 keep-alive
    /// here, and the PE adopts it as home (spec §7.4). Only registrar identities are
    /// served. `None`: no listener; a PE whose home dies then hunts and re-registers.
    pub asap_listen: Option<SocketAddr>,
    /// Which PEs this PE's business card names after itself (spec §7.8); default
    /// [`Alternates::Auto`], kept current by [`super::card::keep_current`].
    pub business_card: Alternates,
    /// This PE's labels (project parameter 0x8102, docs/PROTOCOL-EXTENSIONS.md), sent
    /// with every registration; `rsp pe --label k=v`. Empty: none.
    pub labels: Labels,
    /// The health check this PE runs (`rsp pe --check`), told to registrars in PE Status
    /// 0x8104 (docs/PROTOCOL-EXTENSIONS.md §5) so that the admin API shows it; the drain
    /// bit of that parameter is the registrar's, never sent. Default: none.
    pub check: CheckKind,
    /// The identity of the server pool users reach, when it is not this PE's (`rsp pe
    /// --advertise --serving-identity`): sent as Serving Identity 0x8105; the registrar
    /// checks that this PE's identity may vouch for it. `None`: this PE's own.
    pub serving_identity: Option<ServingIdentity>,
}

impl PeConfig {
    /// T4-reregistration: min(600 s, Registration Life − 20 s) (spec §7.1), but at least
    /// a third of the life (rsplib's rule, spec §10): a short life (under 30 s) is then
    /// refreshed three times before it runs out, where the RFC's formula would leave
    /// nothing or less than the life itself. Never under 100 ms.
    pub fn reregistration_interval(&self) -> Duration {
        self.registration_life
            .saturating_sub(Duration::from_secs(20))
            .max(self.registration_life / 3)
            .min(Duration::from_secs(600))
            .max(Duration::from_millis(100))
    }

    /// The ASAP Business Card this PE hands a pool user at the start of a session on a
    /// data plus control channel (spec §7.8) before it knows any other PE of its pool: its
    /// pool and itself only, which the message allows (Pool Element × 1..n, spec §6.1);
    /// the PU then falls back to its pool policy.
    pub fn business_card(&self) -> AsapMsg {
        self.business_card_with(&[])
    }

    /// The business card naming this PE and then `alternates`, the PEs a PU should fail
    /// over to, in that order ([`super::card::alternates`] picks them).
    pub fn business_card_with(&self, alternates: &[PoolElement]) -> AsapMsg {
        let me = PoolElement {
            pe_id: self.pe_id,
            home_server_id: 0,
            registration_life: i32::try_from(self.registration_life.as_millis())
                .unwrap_or(i32::MAX),
            user_transport: self.user_transport.clone(),
            policy: current_policy(self),
            asap_transport: None,
            labels: self.labels.clone(),
            status: Default::default(),
            serving_identity: None,
        };
        AsapMsg::BusinessCard {
            pool_handle: self.pool_handle.clone(),
            policy: None,
            pool_elements: std::iter::once(me)
                .chain(alternates.iter().cloned())
                .collect(),
        }
    }
}

/// Least time between two re-registrations caused by load changes: a load that changes
/// faster reaches the registrar at most this often, with its latest value, so a flapping
/// load costs a registrar at most 4 registrations per PE per second on top of T4.
pub const LOAD_UPDATE_INTERVAL: Duration = Duration::from_millis(250);

/// Whether `policy` is adaptive: one of the least-used family, whose load the registrar
/// selects by (RFC 5356 §4.2), or Least Used with Distance Penalty (private,
/// docs/PROTOCOL-EXTENSIONS.md §3).
pub fn is_adaptive(policy: &Policy) -> bool {
    matches!(
        policy,
        Policy::LeastUsed { .. }
            | Policy::LeastUsedDegradation { .. }
            | Policy::PriorityLeastUsed { .. }
            | Policy::RandomizedLeastUsed { .. }
    ) || LeastUsedDistance::values(policy).is_some()
}

/// `policy` with its load replaced by `load`; other policies are returned unchanged.
pub fn with_load(policy: Policy, load: Load) -> Policy {
    match policy {
        Policy::LeastUsed { .. } => Policy::LeastUsed { load },
        Policy::LeastUsedDegradation { degradation, .. } => {
            Policy::LeastUsedDegradation { load, degradation }
        }
        Policy::PriorityLeastUsed { degradation, .. } => {
            Policy::PriorityLeastUsed { load, degradation }
        }
        Policy::RandomizedLeastUsed { .. } => Policy::RandomizedLeastUsed { load },
        other => match LeastUsedDistance::values(&other) {
            Some(v) => LeastUsedDistance::policy(DistanceValues { load, ..v }),
            None => other,
        },
    }
}

/// Whether `msg` is a keep-alive for this PE (its pool, its PE ID or every PE).
fn keep_alive_for(config: &PeConfig, msg: &AsapMsg) -> bool {
    matches!(msg, AsapMsg::EndpointKeepAlive { pool_handle, pe_id, .. }
        if *pool_handle == config.pool_handle && pe_id.is_none_or(|id| id == config.pe_id))
}

/// The load an adaptive policy carries.
fn load_of(policy: &Policy) -> Option<Load> {
    match *policy {
        Policy::LeastUsed { load }
        | Policy::LeastUsedDegradation { load, .. }
        | Policy::PriorityLeastUsed { load, .. }
        | Policy::RandomizedLeastUsed { load } => Some(load),
        ref other => LeastUsedDistance::values(other).map(|v| v.load),
    }
}

/// What happened, for the caller to print or log.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeEvent {
    /// Registered (or re-registered after a loss) with this registrar.
    Registered(SocketAddr),
    /// The registrar connection was lost; hunting another.
    Lost(SocketAddr, Error),
    /// No registrar could be reached; retrying after a pause. Reported once per outage,
    /// not once per attempt.
    Unreachable(Error),
    /// A registrar refused the registration for a transient cause (0x6 Lack of
    /// Resources: still starting, or at a limit, see [`Error::is_transient`]); retrying
    /// after a pause, another registrar first. Reported once per change of cause, not
    /// once per attempt.
    Refused(SocketAddr, Error),
    /// A registrar sent a keep-alive with H=1 to the ASAP listener: it is the new home
    /// (spec §7.4), answered there and re-registered with from now on.
    HomeAdopted {
        /// The registrar's Server ID.
        server_id: ServerId,
        /// Where its connection comes from.
        registrar: SocketAddr,
    },
    /// Re-registered with a new load (spec §7.1 step 4).
    LoadUpdated(Load),
    /// Deregistered on shutdown.
    Deregistered,
}

/// T2-registration (spec §10): how long a registration waits for its response.
const T2_REGISTRATION: Duration = Duration::from_secs(30);
/// T3-deregistration, shortened: a PE that is shutting down does not wait long; the
/// registrar's keep-alive removes it anyway (spec §7.2).
const T3_DEREGISTRATION: Duration = Duration::from_secs(2);

/// A connection from a registrar that sent H=1, with its Server ID.
type Adoption = (Connection, ServerId);

/// Runs the PE's registration until `shutdown` completes (then deregisters) or a
/// registrar refuses the registration for a permanent cause ([`Error::Rejected`] that is
/// not [`Error::is_transient`]: not retried blindly, spec §7.1 step 5). Everything
/// transient (registrars unreachable, lost, restarting, refusing with 0x6 Lack of
/// Resources) is ridden out: the PE keeps hunting with the jittered backoff, another
/// registrar first, and never returns for it.
pub async fn run(
    trust: &Arc<TrustStore>,
    config: &PeConfig,
    shutdown: impl Future<Output = ()>,
    mut events: impl FnMut(PeEvent),
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let (listen, mut adoptions) = match config.asap_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            let (tx, rx) = mpsc::channel(1);
            let task = tokio::spawn(accept_registrars(
                listener,
                Arc::clone(trust),
                config.clone(),
                tx,
            ));
            (Some((local, AbortOnDrop(task))), Some(rx))
        }
        None => (None, None),
    };
    let listen = listen.as_ref().map(|(addr, _)| *addr);
    let mut start = 0;
    let mut backoff = Backoff::new(config.pe_id.get());
    let mut adopted: Option<Connection> = None;
    let mut standing = Standing::Hunting;
    loop {
        let (mut conn, idx) = if let Some(conn) = adopted.take() {
            (conn, start)
        } else {
            // While it hunts, a registrar that took it over may call with H=1 (spec
            // §12.6): that connection is as good as one the hunt finds.
            let hunted = tokio::select! {
                h = discovery::hunt(
                    trust,
                    &config.registrars,
                    config.discovery.as_ref(),
                    start,
                    config.insecure_legacy,
                ) => h,
                a = next_adoption(&mut adoptions) => {
                    adopted = Some(adopt(a, &mut events));
                    continue;
                }
                () = &mut shutdown => return Ok(()),
            };
            match hunted {
                Ok(c) => c,
                Err(e) => {
                    if standing.enter(Standing::Unreachable) {
                        events(PeEvent::Unreachable(e));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next()) => continue,
                        a = next_adoption(&mut adoptions) => {
                            adopted = Some(adopt(a, &mut events));
                            continue;
                        }
                        () = &mut shutdown => return Ok(()),
                    }
                }
            }
        };
        let registrar = conn.registrar();
        let mut session = Session {
            config,
            listen,
            backoff: &mut backoff,
            adoptions: &mut adoptions,
            standing: &mut standing,
        };
        match serve(&mut conn, &mut session, &mut shutdown, &mut events).await {
            Ok(None) => return Ok(()),
            // Spec §7.4: re-registrations go to the new home from now on; the old
            // connection closes (its registrar is presumed dead).
            Ok(Some(adoption)) => adopted = Some(adopt(adoption, &mut events)),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                match &e {
                    Error::Rejected(code) => {
                        if standing.enter(Standing::Refused(*code)) {
                            events(PeEvent::Refused(registrar, e));
                        }
                    }
                    _ if standing == Standing::Registered => {
                        standing = Standing::Hunting;
                        events(PeEvent::Lost(registrar, e));
                    }
                    // Not registered on this connection: one more failed attempt of the
                    // same outage.
                    _ => {
                        if standing.enter(Standing::Unreachable) {
                            events(PeEvent::Unreachable(e));
                        }
                    }
                }
                // Prefer another registrar next (spec §12.6); the jittered pause keeps a
                // registrar outage from becoming a reconnection storm (see Backoff).
                start = idx + 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    a = next_adoption(&mut adoptions) => adopted = Some(adopt(a, &mut events)),
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

/// The next registrar connection that sent H=1; never, without an ASAP listener.
async fn next_adoption(adoptions: &mut Option<mpsc::Receiver<Adoption>>) -> Adoption {
    match adoptions {
        Some(rx) => match rx.recv().await {
            Some(a) => a,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Reports an adoption and returns its connection, to register on next.
fn adopt((conn, server_id): Adoption, events: &mut impl FnMut(PeEvent)) -> Connection {
    events(PeEvent::HomeAdopted {
        server_id,
        registrar: conn.registrar(),
    });
    conn
}

/// The load to register now: the application's latest, else the one in the policy.
fn current_policy(config: &PeConfig) -> Policy {
    match &config.load {
        Some(load) if is_adaptive(&config.policy) => with_load(config.policy, *load.borrow()),
        _ => config.policy,
    }
}

/// Aborts the ASAP listener when the PE stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves registrars that connect to the PE's ASAP listener (spec §12.6): keep-alives
/// for this PE are answered; one with H=1 hands its connection to the registration loop.
async fn accept_registrars(
    listener: TcpListener,
    trust: Arc<TrustStore>,
    config: PeConfig,
    adoptions: mpsc::Sender<Adoption>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // E.g. out of file descriptors: pause rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (trust, config, adoptions) = (Arc::clone(&trust), config.clone(), adoptions.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(local) = tcp.local_addr() else { return };
            let acceptor = TlsAcceptor::from(trust.server_config(Protocol::Asap));
            let Ok(Ok(tls)) = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            // Spec §7.5 [P]: only an authenticated registrar may become home; anyone else
            // (a PU of the same domain, say) is closed on without an answer.
            if !Peer::from_tls(tls.get_ref().1).is_ok_and(|p| trust.is_registrar(p.id())) {
                return;
            }
            let mut conn = Connection::accepted(tls, peer, local);
            while let Ok(Ok(msg)) = tokio::time::timeout(config.liveness, conn.recv()).await {
                let home = match &msg {
                    AsapMsg::EndpointKeepAlive {
                        home: true,
                        server_id,
                        ..
                    } if keep_alive_for(&config, &msg) => Some(*server_id),
                    _ => None,
                };
                if answer(&mut conn, &config, msg).await.is_err() {
                    return;
                }
                if let Some(server_id) = home {
                    let _ = adoptions.send((conn, server_id)).await;
                    return;
                }
            }
        });
    }
}

/// The ASAP transport a PE listening at `listen` advertises (spec §12.6: TCP, Transport
/// Use = data only); an unspecified address becomes the registrar connection's.
fn asap_transport(listen: SocketAddr, local: Address) -> Option<Transport> {
    let mut t = Transport::Tcp {
        port: NonZeroU16::new(listen.port())?,
        transport_use: TransportUse::DataOnly,
        addr: Address::new(listen.ip()),
    };
    set_unspecified_address(&mut t, local);
    Some(t)
}

fn registration(config: &PeConfig, conn: &Connection, listen: Option<SocketAddr>) -> AsapMsg {
    let mut transport = config.user_transport.clone();
    let local = Address::new(conn.local_addr().ip());
    set_unspecified_address(&mut transport, local);
    AsapMsg::Registration {
        namespace: config.namespace.clone(),
        pool_handle: config.pool_handle.clone(),
        pool_element: PoolElement {
            pe_id: config.pe_id,
            home_server_id: 0,
            registration_life: i32::try_from(config.registration_life.as_millis())
                .unwrap_or(i32::MAX),
            user_transport: transport,
            policy: current_policy(config),
            asap_transport: listen.and_then(|l| asap_transport(l, local)),
            labels: config.labels.clone(),
            status: PeStatus {
                drain_deadline_ms: None,
                check: config.check,
            },
            serving_identity: config.serving_identity.clone(),
        },
    }
}

fn set_unspecified_address(t: &mut Transport, local: Address) {
    match t {
        Transport::Tcp { addr, .. }
        | Transport::Udp { addr, .. }
        | Transport::UdpLite { addr, .. }
        | Transport::Dccp { addr, .. } => {
            if addr.ip().is_unspecified() {
                *addr = local;
            }
        }
        Transport::Sctp { addrs, .. } => {
            if addrs.as_slice().iter().any(|a| a.ip().is_unspecified()) {
                let named = addrs
                    .as_slice()
                    .iter()
                    .map(|a| if a.ip().is_unspecified() { local } else { *a });
                if let Some(a) = crate::wire::param::SctpAddresses::new(named) {
                    *addrs = a;
                }
            }
        }
    }
}

/// Where the PE stands with its registrars, as last reported: events about an outage
/// go out when this changes, not at every attempt (a registrar that refuses with 0x6
/// for its whole start-up would otherwise log twice a second per PE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Registered with a registrar.
    Registered,
    /// Lost or not yet registered, nothing reported since.
    Hunting,
    /// No registrar could be reached (reported).
    Unreachable,
    /// Refused with this transient cause (reported).
    Refused(u16),
}

impl Standing {
    /// Moves to `next`; whether that is a change (and so worth reporting). Losing a
    /// registration reports the loss itself, so an outage right after it is news again.
    fn enter(&mut self, next: Self) -> bool {
        let changed = *self != next;
        *self = next;
        changed
    }
}

/// What [`serve`] needs besides the connection.
struct Session<'a> {
    config: &'a PeConfig,
    /// The ASAP listener's address, advertised in registrations.
    listen: Option<SocketAddr>,
    backoff: &'a mut Backoff,
    adoptions: &'a mut Option<mpsc::Receiver<Adoption>>,
    standing: &'a mut Standing,
}

/// Registers on `conn` and keeps the registration until shutdown (`None`), loss (`Err`)
/// or a registrar adopting the PE (its connection).
async fn serve(
    conn: &mut Connection,
    session: &mut Session<'_>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    events: &mut impl FnMut(PeEvent),
) -> Result<Option<Adoption>, Error> {
    let (config, listen) = (session.config, session.listen);
    // Changes before this registration are in it.
    let mut load = config.load.clone().filter(|_| is_adaptive(&config.policy));
    if let Some(l) = load.as_mut() {
        l.mark_unchanged();
    }
    conn.send(&registration(config, conn, listen)).await?;
    tokio::time::timeout(T2_REGISTRATION, await_registered(conn, config))
        .await
        .map_err(|_| Error::Closed)??;
    session.backoff.reset();
    session.standing.enter(Standing::Registered);
    events(PeEvent::Registered(conn.registrar()));
    let mut reregister = tokio::time::interval(config.reregistration_interval());
    reregister.tick().await; // the first tick is immediate
    let mut debounce = LoadDebounce::new(LOAD_UPDATE_INTERVAL);
    debounce.sent(Instant::now());
    loop {
        tokio::select! {
            msg = tokio::time::timeout(config.liveness, conn.recv()) => {
                let msg = msg.map_err(|_| Error::Closed)??;
                answer(conn, config, msg).await?;
            }
            _ = reregister.tick() => {
                conn.send(&registration(config, conn, listen)).await?;
                debounce.sent(Instant::now());
            }
            Some(adoption) = adopted(session.adoptions) => return Ok(Some(adoption)),
            alive = load_changed(&mut load) => {
                if alive {
                    debounce.changed(Instant::now());
                } else {
                    // The application dropped its sender: the load stays as last sent.
                    load = None;
                }
            }
            () = sleep_until(debounce.due()) => {
                conn.send(&registration(config, conn, listen)).await?;
                debounce.sent(Instant::now());
                if let Some(l) = load_of(&current_policy(config)) {
                    events(PeEvent::LoadUpdated(l));
                }
            }
            () = shutdown.as_mut() => {
                conn.send(&AsapMsg::Deregistration {
                    namespace: config.namespace.clone(),
                    pool_handle: config.pool_handle.clone(),
                    pe_id: config.pe_id,
                })
                .await?;
                let _ = tokio::time::timeout(T3_DEREGISTRATION, async {
                    while !matches!(conn.recv().await?, AsapMsg::DeregistrationResponse { .. }) {}
                    Ok::<_, Error>(())
                })
                .await;
                events(PeEvent::Deregistered);
                return Ok(None);
            }
        }
    }
}

/// The next adoption; never without a listener.
async fn adopted(adoptions: &mut Option<mpsc::Receiver<Adoption>>) -> Option<Adoption> {
    match adoptions {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the load changes (`true`) or its sender is gone (`false`); never
/// without a receiver.
async fn load_changed(load: &mut Option<watch::Receiver<Load>>) -> bool {
    match load {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The rate limit on load re-registrations: the first change after a quiet
/// `interval` goes out at once; later ones wait until `interval` after the previous
/// registration and go out together, as the latest load.
#[derive(Debug)]
struct LoadDebounce {
    interval: Duration,
    last_sent: Option<Instant>,
    due: Option<Instant>,
}

impl LoadDebounce {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            due: None,
        }
    }

    /// The load changed at `now`.
    fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            let earliest = self.last_sent.map_or(now, |t| t + self.interval);
            self.due = Some(earliest.max(now));
        }
    }

    /// When the pending change is to be sent, if one is.
    fn due(&self) -> Option<Instant> {
        self.due
    }

    /// A registration carrying the current load went out at `now` (also T4's).
    fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.due = None;
    }
}

async fn await_registered(conn: &mut Connection, config: &PeConfig) -> Result<(), Error> {
    loop {
        match conn.recv().await? {
            AsapMsg::RegistrationResponse {
                reject,
                pe_id,
                error,
                ..
            } if pe_id == config.pe_id => {
                return if reject {
                    Err(Error::Rejected(
                        error
                            .and_then(|e| e.causes().first().map(|c| c.code()))
                            .unwrap_or(0),
                    ))
                } else {
                    Ok(())
                };
            }
            other => answer(conn, config, other).await?,
        }
    }
}

/// Answers what a registrar sends a PE (spec §7.5): keep-alives for this PE's pool.
async fn answer(conn: &mut Connection, config: &PeConfig, msg: AsapMsg) -> Result<(), Error> {
    match msg {
        AsapMsg::EndpointKeepAlive { pool_handle, .. } if keep_alive_for(config, &msg) => {
            conn.send(&AsapMsg::EndpointKeepAliveAck {
                pool_handle,
                pe_id: config.pe_id,
            })
            .await
        }
        AsapMsg::RegistrationResponse {
            reject: true,
            error,
            ..
        } => Err(Error::Rejected(
            error
                .and_then(|e| e.causes().first().map(|c| c.code()))
                .unwrap_or(0),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flapping_load_is_sent_at_most_once_per_interval_with_its_latest_value() {
        // Spec §7.1 step 4 re-registers on a load change; LOAD_UPDATE_INTERVAL bounds how
        // often, so a flapping load cannot flood the registrar.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = LoadDebounce::new(ms(250));
        // Quiet since the registration long ago: the first change goes out at once.
        d.sent(t0);
        d.changed(t0 + ms(1000));
        assert_eq!(d.due(), Some(t0 + ms(1000)));
        d.sent(t0 + ms(1000));
        // Ten changes within the next 100 ms: one registration, 250 ms after the last.
        for i in 1..=10 {
            d.changed(t0 + ms(1000 + i * 10));
            assert_eq!(d.due(), Some(t0 + ms(1250)));
        }
        d.sent(t0 + ms(1250));
        assert_eq!(d.due(), None);
        // A T4 re-registration carries the current load and counts as the last one sent.
        d.changed(t0 + ms(1300));
        d.sent(t0 + ms(1301));
        assert_eq!(d.due(), None);
        d.changed(t0 + ms(1400));
        assert_eq!(d.due(), Some(t0 + ms(1551)));
    }

    #[test]
    fn reregistration_follows_the_rfc_and_refreshes_a_short_life_three_times() {
        let interval = |life_ms: u64| {
            let mut config = card_config();
            config.registration_life = Duration::from_millis(life_ms);
            config.reregistration_interval().as_millis()
        };
        assert_eq!(interval(300_000), 280_000, "the default life: life − 20 s");
        assert_eq!(interval(3_600_000), 600_000, "at most 10 min");
        assert_eq!(interval(30_000), 10_000, "a third from here down");
        assert_eq!(interval(4_000), 1_333);
        assert_eq!(interval(1_000), 333);
        assert_eq!(interval(0), 100);
    }

    fn card_config() -> PeConfig {
        PeConfig {
            registrars: Vec::new(),
            discovery: None,
            insecure_legacy: false,
            namespace: None,
            pool_handle: PoolHandle::new("counter").expect("pool"),
            pe_id: PeId::new(7).expect("non-zero"),
            policy: Policy::RoundRobin,
            user_transport: Transport::Tcp {
                port: NonZeroU16::new(7000).expect("non-zero"),
                transport_use: TransportUse::DataPlusControl,
                addr: Address::new(std::net::Ipv4Addr::LOCALHOST),
            },
            registration_life: Duration::from_secs(300),
            liveness: Duration::from_secs(15),
            load: None,
            asap_listen: None,
            business_card: Alternates::Auto,
            labels: Labels::default(),
            check: CheckKind::NONE,
            serving_identity: None,
        }
    }

    #[test]
    fn the_business_card_names_the_pool_and_this_pe_and_round_trips() {
        let config = card_config();
        let card = config.business_card();
        let decoded = AsapMsg::decode(&card.to_bytes().expect("encodes"))
            .expect("decodes")
            .msg;
        assert_eq!(decoded, card);
        let AsapMsg::BusinessCard {
            pool_handle,
            pool_elements,
            ..
        } = decoded
        else {
            panic!("{decoded:?}");
        };
        assert_eq!(pool_handle, config.pool_handle);
        assert_eq!(pool_elements.len(), 1);
        assert_eq!(pool_elements[0].pe_id, config.pe_id);
        assert_eq!(pool_elements[0].user_transport, config.user_transport);
    }

    #[test]
    fn an_outage_is_reported_once_per_change_of_state_not_per_attempt() {
        let mut s = Standing::Hunting;
        // Registrars refusing with 0x6 for their whole start-up: one report.
        assert!(s.enter(Standing::Refused(0x6)));
        assert!(!s.enter(Standing::Refused(0x6)));
        assert!(!s.enter(Standing::Refused(0x6)));
        // Then none reachable: news; and again only once.
        assert!(s.enter(Standing::Unreachable));
        assert!(!s.enter(Standing::Unreachable));
        // Registered, and the next outage is news again.
        assert!(s.enter(Standing::Registered));
        assert!(s.enter(Standing::Unreachable));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pe_without_a_reachable_registrar_never_gives_up_and_says_so_once() {
        // An hour of (paused, auto-advancing) time with no registrar: the PE keeps
        // hunting with its backoff (about 2 attempts a second), reports the outage once,
        // and stops only at shutdown.
        let ca = trust::testing::TestCa::new("acme.test");
        let store =
            Arc::new(TrustStore::new(ca.leaf("pe/echo-1").issue().identity()).expect("store"));
        let config = card_config();
        let started = Instant::now();
        let mut events = Vec::new();
        let result = run(
            &store,
            &config,
            tokio::time::sleep(Duration::from_secs(3600)),
            |e| events.push(e),
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert!(started.elapsed() >= Duration::from_secs(3600));
        assert_eq!(events.len(), 1, "{events:?}");
        let PeEvent::Unreachable(e) = &events[0] else {
            panic!("{events:?}");
        };
        assert!(e.is_transient());
    }

    #[test]
    fn only_the_least_used_family_carries_a_load() {
        let lud = Policy::LeastUsedDegradation {
            load: 1,
            degradation: 7,
        };
        assert!(is_adaptive(&lud));
        assert_eq!(
            with_load(lud, 9),
            Policy::LeastUsedDegradation {
                load: 9,
                degradation: 7
            }
        );
        assert_eq!(
            load_of(&with_load(Policy::LeastUsed { load: 0 }, 5)),
            Some(5)
        );
        assert!(!is_adaptive(&Policy::RoundRobin));
        assert_eq!(with_load(Policy::RoundRobin, 5), Policy::RoundRobin);
        assert_eq!(load_of(&Policy::Priority { priority: 3 }), None);
    }
}
