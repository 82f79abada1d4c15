//! A pool element's life with its registrars (spec §7.1, §7.2, §7.4, §7.5, §12.4, §12.6):
//! register, answer keep-alives, re-register every T4, hunt another registrar when the
//! home registrar is lost and register there with the same PE ID, deregister on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use trust::TrustStore;

use super::backoff::Backoff;
use super::{Connection, Error};
use crate::wire::AsapMsg;
use crate::wire::param::{Address, Namespace, PeId, Policy, PoolElement, PoolHandle, Transport};

/// What a PE registers, and with whom.
#[derive(Clone, Debug)]
pub struct PeConfig {
    /// The registrars, tried in order (server hunt, spec §7.7).
    pub registrars: Vec<SocketAddr>,
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
}

impl PeConfig {
    /// T4-reregistration: min(600 s, Registration Life − 20 s), at least 1 s (spec §7.1).
    pub fn reregistration_interval(&self) -> Duration {
        self.registration_life
            .saturating_sub(Duration::from_secs(20))
            .min(Duration::from_secs(600))
            .max(Duration::from_secs(1))
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
    /// No registrar could be reached; retrying after a pause.
    Unreachable(Error),
    /// Deregistered on shutdown.
    Deregistered,
}

/// T2-registration (spec §10): how long a registration waits for its response.
const T2_REGISTRATION: Duration = Duration::from_secs(30);
/// T3-deregistration, shortened: a PE that is shutting down does not wait long; the
/// registrar's keep-alive removes it anyway (spec §7.2).
const T3_DEREGISTRATION: Duration = Duration::from_secs(2);

/// Runs the PE's registration until `shutdown` completes (then deregisters) or a
/// registrar refuses the registration ([`Error::Rejected`], not retried blindly, spec
/// §7.1 step 5).
pub async fn run(
    trust: &TrustStore,
    config: &PeConfig,
    shutdown: impl Future<Output = ()>,
    mut events: impl FnMut(PeEvent),
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let mut start = 0;
    let mut backoff = Backoff::new(config.pe_id.get());
    loop {
        let hunted = tokio::select! {
            h = Connection::hunt(trust, &config.registrars, start) => h,
            () = &mut shutdown => return Ok(()),
        };
        let (mut conn, idx) = match hunted {
            Ok(c) => c,
            Err(e) => {
                events(PeEvent::Unreachable(e));
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        let registrar = conn.registrar();
        match serve(&mut conn, config, &mut shutdown, &mut backoff, &mut events).await {
            Ok(()) => return Ok(()),
            Err(e @ Error::Rejected(_)) => return Err(e),
            Err(e) => {
                events(PeEvent::Lost(registrar, e));
                // Prefer another registrar next (spec §12.6); the jittered pause keeps a
                // registrar outage from becoming a reconnection storm (see Backoff).
                start = idx + 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

fn registration(config: &PeConfig, conn: &Connection) -> AsapMsg {
    let mut transport = config.user_transport.clone();
    set_unspecified_address(&mut transport, Address::new(conn.local_addr().ip()));
    AsapMsg::Registration {
        namespace: config.namespace.clone(),
        pool_handle: config.pool_handle.clone(),
        pool_element: PoolElement {
            pe_id: config.pe_id,
            home_server_id: 0,
            registration_life: i32::try_from(config.registration_life.as_millis())
                .unwrap_or(i32::MAX),
            user_transport: transport,
            policy: config.policy,
            asap_transport: None,
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
        Transport::Sctp { .. } => {}
    }
}

/// Registers on `conn` and keeps the registration until shutdown or loss.
async fn serve(
    conn: &mut Connection,
    config: &PeConfig,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    backoff: &mut Backoff,
    events: &mut impl FnMut(PeEvent),
) -> Result<(), Error> {
    let register = registration(config, conn);
    conn.send(&register).await?;
    tokio::time::timeout(T2_REGISTRATION, await_registered(conn, config))
        .await
        .map_err(|_| Error::Closed)??;
    backoff.reset();
    events(PeEvent::Registered(conn.registrar()));
    let mut reregister = tokio::time::interval(config.reregistration_interval());
    reregister.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            msg = tokio::time::timeout(config.liveness, conn.recv()) => {
                let msg = msg.map_err(|_| Error::Closed)??;
                answer(conn, config, msg).await?;
            }
            _ = reregister.tick() => conn.send(&register).await?,
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
                return Ok(());
            }
        }
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
        AsapMsg::EndpointKeepAlive {
            pool_handle, pe_id, ..
        } if pool_handle == config.pool_handle && pe_id.is_none_or(|id| id == config.pe_id) => {
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
