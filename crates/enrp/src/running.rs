//! [`run`]: the one way a registrar starts, from a [`RunConfig`] and an initialised data
//! directory, as `enrpd run` starts it (and the benchmarks, which must measure the same
//! thing). It loads the data directory, starts the audit log, the daemon and the admin
//! API, and returns a [`Running`] registrar that reloads its files on request
//! ([`Running::reload`], what SIGHUP does) and stops cleanly ([`Running::shutdown`]).
//! Logging, signals and the command line stay in the binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use asap::addr::Endpoint;
use asap::wire::param::{Namespace, ServerId};
use identity::SpiffeId;
use store::audit::{AuditConfig, AuditLog};
use store::db::Store;
use trust::TrustStore;

use crate::config::{RunConfig, SctpMode};
use crate::control_plane::ControlPlane;
use crate::daemon::{self, Daemon, Settings, now_ms};
use crate::fleet;
use crate::setup;
use enrp_core::registrar::{Config, Timing};

/// Why a registrar did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The data directory could not be loaded.
    #[error("loading {}", data.display())]
    Load {
        /// The data directory.
        data: PathBuf,
        /// Why.
        source: setup::Error,
    },
    /// The options do not fit this data directory or this machine.
    #[error("{0}")]
    Config(String),
    /// The store refused a read or write at start.
    #[error("the store")]
    Store(#[from] store::db::Error),
    /// The daemon did not start.
    #[error(transparent)]
    Daemon(#[from] daemon::Error),
    /// The admin API's address could not be bound.
    #[error("cannot listen on {addr} for the admin API")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the registrar `config` describes (see the module doc).
pub async fn run(config: RunConfig) -> Result<Running, RunError> {
    run_with(config, |_| {}).await
}

/// [`run`], with `adjust` applied to the daemon's settings last: what no option of
/// `enrpd run` sets (the benchmarks lift the per-client and handlespace limits, which
/// their load would hit, and fix the random seed).
pub async fn run_with(
    config: RunConfig,
    adjust: impl FnOnce(&mut Settings),
) -> Result<Running, RunError> {
    config
        .validate()
        .map_err(|e| RunError::Config(e.to_string()))?;
    if let Some(warning) = trust::key_log_warning() {
        tracing::warn!("{warning}");
    }
    let loaded = setup::load_with_store(&config.data, config.store.as_deref())
        .await
        .map_err(|source| RunError::Load {
            data: config.data.clone(),
            source,
        })?;
    let mut registrar = Config::new(loaded.server_id);
    registrar.timing = Timing {
        keep_alive_interval: config.keep_alive_interval_ms.0,
        keep_alive_timeout: config.keep_alive_timeout_ms.0,
        connection_grace: config.keep_alive_timeout_ms.0,
        peer_heartbeat: config.peer_heartbeat_ms.0,
        peer_last_heard: config.peer_last_heard_ms.0,
        peer_no_response: config.peer_no_response_ms.0,
        takeover_expiry: config.takeover_expiry_ms.0,
        mentor_timeout: config.mentor_timeout_ms.0,
        ..Timing::default()
    };
    registrar.allow_loopback = config.allow_loopback;
    registrar.max_pes_per_peer = config.max_pes_per_peer;
    registrar.check_user_address = !config.no_address_check;
    if let Some(name) = &config.legacy_namespace {
        let ns = Namespace::new(name).ok_or_else(|| {
            RunError::Config(format!(
                "--legacy-namespace {name:?}: 1-63 bytes of a-z 0-9 - ."
            ))
        })?;
        let mut conn = loaded.store.acquire().await?;
        if store::db::get_namespace(&mut conn, name).await?.is_none() {
            return Err(RunError::Config(format!(
                "--legacy-namespace {name:?}: no such namespace (create it with the admin API)"
            )));
        }
        registrar.legacy_namespace = Some(ns);
    }
    registrar.max_pools_per_identity = config.max_pools_per_identity;
    registrar.rng_seed = now_ms();
    let mut settings = Settings::new(config.asap_listen, registrar);
    settings.enrp_listen = config.enrp_listen.0;
    (settings.asap_sctp_listen, settings.enrp_sctp_listen) =
        sctp_endpoints(&config, daemon::sctp_available())?;
    settings.legacy_asap_listen = config.legacy_asap_listen.clone();
    settings.legacy_enrp_listen = config.legacy_enrp_listen.clone();
    settings.legacy_peers = config.legacy_peers.clone();
    for p in &config.peers {
        let (addr, identity) = split_peer(p)?;
        if addr.starts_with("sctp:") {
            addr.parse::<asap::addr::TransportAddr>()
                .map_err(|e| RunError::Config(format!("--peer {p:?}: {e}")))?;
        }
        if let Some(id) = identity {
            let server_id = bind_configured_peer(&loaded.store, p, &id).await?;
            settings.server_id_bindings.push((server_id, id));
        }
        settings.peers.push(addr.to_owned());
    }
    settings.default_namespaces = loaded.default_namespaces;
    settings.revocations = loaded.revocations;
    settings
        .server_id_bindings
        .extend(loaded.server_id_bindings.iter().cloned());
    settings.bindings_store = Some(loaded.store.clone());
    settings.refusal_audit_budget = config.refusal_audit_budget;
    settings.max_connections_per_ip = config.max_connections_per_ip;
    settings.max_handshakes_per_ip = config.max_handshakes_per_ip;
    settings.max_connections_per_identity = config.max_connections_per_identity;
    settings.data_dir = Some(config.data.clone());
    settings.min_free_bytes = config.min_free_mib.saturating_mul(1 << 20);
    let rate = |per_sec| daemon::Rate { per_sec };
    settings.rate_limits = daemon::RateLimits {
        resolutions: rate(config.rate_resolutions),
        registrations: rate(config.rate_registrations),
        unreachable: rate(config.rate_unreachable),
    };
    adjust(&mut settings);
    let has_peers = !config.peers.is_empty() || !config.legacy_peers.is_empty();
    if has_peers && loaded.store.backend() == store::db::Backend::Sqlite {
        tracing::warn!("{LOCAL_CONTROL_PLANE}");
    }
    let chain = setup::audit_chain(&loaded.store, loaded.trust.identity().id());
    let mut audit_config = AuditConfig::default();
    audit_config.chain = chain.clone();
    let audit = AuditLog::start(&loaded.store, audit_config).await?;
    let daemon = Daemon::start(
        settings,
        Arc::clone(&loaded.trust),
        audit.clone(),
        loaded.grants,
    )
    .await?;
    let plane = Arc::new(ControlPlane::new(
        Arc::clone(&loaded.trust),
        daemon.control(),
        loaded.revoked.iter().cloned(),
    ));
    // Declared pools are enforced from the first registration on.
    for decl in &loaded.pools {
        admin_api::Registrar::declare_pool(
            &*plane,
            admin_api::PoolDeclaration {
                namespace: decl.namespace.clone(),
                handle: decl.handle.clone(),
                limits: Some((decl.policy, decl.max_pes)),
            },
        )
        .await;
    }
    let admin = match config.admin_listen.0 {
        Some(addr) => {
            match start_admin(addr, &loaded.store, &loaded.trust, &config.data, &plane).await {
                Ok(admin) => Some(admin),
                Err(e) => {
                    // Stop what started, flushing the audit log, then report the cause.
                    let _ = daemon.shutdown().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    // A shared (PostgreSQL) store: changes made at other registrars of the fleet are
    // applied here within 1 s (crates/enrp/src/fleet.rs). None on SQLite.
    let fleet = fleet::sync(
        loaded.store.clone(),
        Arc::clone(&plane),
        admin.as_ref().map(|a| a.tokens.clone()),
        config.fleet_resync_secs.0,
    )
    .await;
    let fleet = match fleet {
        Ok(task) => task,
        Err(e) => {
            if let Some(admin) = admin {
                admin.stop().await;
            }
            let _ = daemon.shutdown().await;
            return Err(e.into());
        }
    };
    if fleet.is_some() {
        tracing::info!(
            resync_secs = config.fleet_resync_secs.0.as_secs(),
            "control plane shared with the fleet (PostgreSQL change feed)"
        );
    }
    // CRLs do not expire silently: a warning from a week before, an error after.
    let crl_trust = Arc::clone(&loaded.trust);
    let mut tasks = vec![tokio::spawn(async move {
        loop {
            warn_crl_expiry(&crl_trust);
            tokio::time::sleep(CRL_CHECK).await;
        }
    })];
    tasks.extend(fleet);
    // Multicast discovery (spec §7.7, §9.2), each part off unless configured (D-5).
    match start_multicast(&config, &daemon, loaded.server_id) {
        Ok(started) => tasks.extend(started),
        Err(e) => {
            for t in &tasks {
                t.abort();
            }
            if let Some(admin) = admin {
                admin.stop().await;
            }
            let _ = daemon.shutdown().await;
            return Err(RunError::Config(e));
        }
    }
    // Signed checkpoints in the log: whoever keeps the log can later tell a truncated or
    // rewritten chain (`enrpd audit verify --checkpoint`).
    if !config.checkpoint_log_secs.0.is_zero() {
        let (store, data) = (loaded.store.clone(), config.data.clone());
        let every = config.checkpoint_log_secs.0;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match checkpoint_now(&store, &chain, &data).await {
                    Ok(c) => tracing::info!(
                        checkpoint = %serde_json::to_string(&c).unwrap_or_default(),
                        "audit checkpoint: record {}, head {}", c.id, c.hash
                    ),
                    Err(e) => tracing::error!(error = %e, "no audit checkpoint"),
                }
            }
        }));
    }
    Ok(Running {
        daemon,
        admin,
        store: loaded.store,
        audit,
        plane,
        data: config.data,
        server_id: loaded.server_id,
        tasks,
    })
}

/// The multicast tasks `config` asks for (`--announce`, `--announce-peers`,
/// `--discover-peers`), or why one cannot start (the flag and its reason).
fn start_multicast(
    config: &RunConfig,
    daemon: &Daemon,
    server_id: ServerId,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    use crate::announce;
    let mut tasks = Vec::new();
    let every = |group| announce::AnnounceConfig {
        group,
        interface: config.announce_interface,
        ttl: config.announce_ttl,
        interval: config.announce_interval_ms.0,
    };
    if let Some(group) = config.announce {
        let sctp = daemon
            .sctp_addrs()
            .iter()
            .find(|(what, _)| *what == "ASAP over TLS/SCTP")
            .map(|(_, e)| e.clone());
        let msg = announce::announce_message(
            server_id,
            daemon.asap_addr(),
            sctp.as_ref(),
            config.announce_interface,
        );
        let bytes = msg.to_bytes().map_err(|e| format!("--announce: {e}"))?;
        tasks.push(
            announce::start(&every(group), bytes)
                .map_err(|e| format!("--announce {group}: {e}"))?,
        );
        tracing::info!(%group, asap = %daemon.asap_addr(), "announcing this registrar by multicast (ASAP_SERVER_ANNOUNCE) every {:?}", config.announce_interval_ms.0);
    }
    if let Some(group) = config.announce_peers {
        let enrp = daemon
            .enrp_addr()
            .ok_or("--announce-peers needs ENRP served (--enrp-listen)")?;
        let msg = announce::presence_message(server_id, enrp, config.announce_interface)
            .ok_or("--announce-peers: ENRP listens on port 0")?;
        let bytes = msg
            .to_bytes()
            .map_err(|e| format!("--announce-peers: {e}"))?;
        tasks.push(
            announce::start(&every(group), bytes)
                .map_err(|e| format!("--announce-peers {group}: {e}"))?,
        );
        tracing::info!(%group, %enrp, "announcing this registrar to peers by multicast (ENRP_PRESENCE)");
    }
    if let Some(group) = config.discover_peers {
        tasks.push(
            announce::discover_peers(
                group,
                config.announce_interface,
                server_id,
                daemon.peer_dialer(),
            )
            .map_err(|e| format!("--discover-peers {group}: {e}"))?,
        );
        tracing::info!(%group, "learning peer registrars from multicast presences");
    }
    Ok(tasks)
}

/// A registrar started by [`run`].
pub struct Running {
    daemon: Daemon,
    admin: Option<Admin>,
    store: Store,
    audit: AuditLog,
    plane: Arc<ControlPlane>,
    data: PathBuf,
    server_id: ServerId,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Where ASAP is served over TLS/TCP.
    pub fn asap_addr(&self) -> SocketAddr {
        self.daemon.asap_addr()
    }

    /// Where the admin API is served, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Where ENRP is served over TLS/TCP, unless it is off.
    pub fn enrp_addr(&self) -> Option<SocketAddr> {
        self.daemon.enrp_addr()
    }

    /// The SCTP listeners: what (`ASAP`, `ENRP`, …) and where.
    pub fn sctp_addrs(&self) -> &[(&'static str, Endpoint)] {
        self.daemon.sctp_addrs()
    }

    /// This registrar's Server ID.
    pub fn server_id(&self) -> ServerId {
        self.server_id
    }

    /// The audit log (its counters).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The control plane: grants, revocations, CRLs (what the admin API changes).
    pub fn control_plane(&self) -> &Arc<ControlPlane> {
        &self.plane
    }

    /// What SIGHUP does: re-reads the registrar's certificate and key, the local CRL, the
    /// grants and the default namespaces from the data directory and applies them through
    /// the control plane. A file that does not parse is an error and changes nothing; the
    /// registrar keeps serving. Options (the [`RunConfig`]) take effect at start only.
    pub async fn reload(&self) -> Result<(), setup::Error> {
        let r = setup::reload(&self.data, &self.store).await?;
        tracing::info!(
            revoked = r.revoked.len(),
            grants = r.grants.len(),
            "reloaded"
        );
        self.plane.apply_reload(r).await;
        Ok(())
    }

    /// Stops the admin API (requests in flight finish), then the daemon (the audit log
    /// flushed), then closes the store.
    pub async fn shutdown(self) -> Result<(), daemon::Error> {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        self.daemon.shutdown().await?;
        self.store.close().await;
        Ok(())
    }
}

/// The SCTP listeners to open: explicit ones, or in `auto`/`on` mode the TCP listeners'
/// addresses (after binding, so that a TCP port 0 is the same SCTP port where free).
fn sctp_endpoints(
    config: &RunConfig,
    available: bool,
) -> Result<(Option<Endpoint>, Option<Endpoint>), RunError> {
    let explicit = config.asap_sctp_listen.is_some() || config.enrp_sctp_listen.is_some();
    match config.sctp {
        SctpMode::Off if explicit => Err(RunError::Config(
            "--sctp off contradicts --asap-sctp-listen / --enrp-sctp-listen".into(),
        )),
        SctpMode::Off => Ok((None, None)),
        SctpMode::On if !available => Err(RunError::Config(format!(
            "--sctp on: {}",
            daemon::SCTP_UNAVAILABLE
        ))),
        SctpMode::Auto if !available => {
            if explicit {
                return Err(RunError::Config(daemon::SCTP_UNAVAILABLE.into()));
            }
            tracing::info!("{}", daemon::SCTP_UNAVAILABLE);
            Ok((None, None))
        }
        SctpMode::Auto | SctpMode::On => Ok((
            Some(
                config
                    .asap_sctp_listen
                    .clone()
                    .unwrap_or_else(|| Endpoint::single(config.asap_listen)),
            ),
            config
                .enrp_sctp_listen
                .clone()
                .or_else(|| config.enrp_listen.0.map(Endpoint::single)),
        )),
    }
}

/// What a registrar with ENRP peers and its own SQLite store logs, at start-up (configured
/// peers) or when the first peer connects; `GET /v1/peers` (`control_plane`) and
/// `rsp_control_plane_shared` say the same (issue 19).
pub const LOCAL_CONTROL_PLANE: &str = "control plane is local (SQLite): revocations, grants, \
     trust domains made here do not reach peers; use --store postgres://… for a fleet";

/// `HOST:PORT` or `HOST:PORT=spiffe://…` of `--peer`: the address, and the identity
/// its Server ID is bound to.
fn split_peer(p: &str) -> Result<(&str, Option<SpiffeId>), RunError> {
    match p.split_once('=') {
        None => Ok((p, None)),
        Some((addr, id)) => {
            let id = SpiffeId::parse(id).map_err(|e| {
                RunError::Config(format!("--peer {p:?}: {id:?} is no SPIFFE ID: {e}"))
            })?;
            Ok((addr, Some(id)))
        }
    }
}

/// Binds the Server ID of a configured peer's identity for good (stored), unless the
/// store binds it to another identity already: then the registrar does not start.
async fn bind_configured_peer(store: &Store, p: &str, id: &SpiffeId) -> Result<ServerId, RunError> {
    let server_id = enrp_core::server_id_of(id);
    let mut conn = store.acquire().await?;
    let bound = store::db::bind_server_id(&mut conn, server_id.get(), id, now_ms()).await?;
    if &bound != id {
        return Err(RunError::Config(format!(
            "--peer {p:?}: Server ID {server_id} is bound to {bound} in the store"
        )));
    }
    Ok(server_id)
}

/// The admin API server task.
struct Admin {
    addr: SocketAddr,
    /// Its cache of verified tokens, which the fleet sync tells of tokens revoked elsewhere.
    tokens: admin_api::TokenCache,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Stops accepting and lets requests in flight finish (bounded by the serve options).
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start_admin(
    addr: SocketAddr,
    store: &Store,
    trust: &Arc<TrustStore>,
    data: &Path,
    plane: &Arc<ControlPlane>,
) -> Result<Admin, RunError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Admin { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| RunError::Admin { addr, source })?;
    let state = admin_api::AdminState::new(
        store.clone(),
        Arc::clone(trust),
        Arc::clone(plane),
        store::db::TokenHasher::default(),
        now_ms,
    )
    .with_archive_dir(data.join(store::audit::archive::ARCHIVE_DIR))
    .with_audit_chain(setup::audit_chain(store, trust.identity().id()));
    let tokens = state.token_cache();
    let mut options = admin_api::ServeOptions::new(state.serve_counters());
    // Certificate sessions are registered, so that a revocation closes them too.
    options.trust = Some(Arc::clone(trust));
    let router = admin_api::router(state);
    let trust = Arc::clone(trust);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(admin_api::serve(
        listener,
        move || trust.admin_server_config(),
        router,
        options,
        async move {
            let _ = stopped.await;
        },
    ));
    tracing::info!(%addr, "serving the admin API over HTTPS");
    Ok(Admin {
        addr,
        tokens,
        stop,
        task,
    })
}

/// How long before a CRL's nextUpdate the registrar warns (issue 17): once it passes,
/// every handshake of that domain fails closed; a week leaves room for a weekend and a
/// holiday.
const CRL_WARNING: Duration = Duration::from_secs(7 * 86_400);
/// How often the CRLs' nextUpdate is checked (and the warning repeated).
const CRL_CHECK: Duration = Duration::from_secs(3600);

/// Logs a warning for each trust domain whose CRLs stop being current within
/// [`CRL_WARNING`], an error for each whose CRLs have (`/metrics` has the same as
/// `rsp_crl_next_update_seconds`).
fn warn_crl_expiry(trust: &TrustStore) {
    let now = std::time::UNIX_EPOCH + Duration::from_millis(now_ms());
    for (domain, at) in trust.crl_next_updates() {
        match at.duration_since(now) {
            Err(past) => tracing::error!(
                trust_domain = %domain,
                expired_s_ago = past.duration().as_secs(),
                "the CRL has expired: every handshake of this trust domain fails until it is re-signed (rsp-pki crl, enrpd update-pki, then SIGHUP enrpd)"
            ),
            Ok(left) if left <= CRL_WARNING => tracing::warn!(
                trust_domain = %domain,
                seconds_left = left.as_secs(),
                "the CRL expires soon: re-sign it (rsp-pki crl, enrpd update-pki, then SIGHUP enrpd) or every handshake of this trust domain fails"
            ),
            Ok(_) => {}
        }
    }
}

/// Why no periodic checkpoint was written.
#[derive(Debug, thiserror::Error)]
enum CheckpointError {
    #[error(transparent)]
    Store(#[from] store::db::Error),
    #[error(transparent)]
    Setup(#[from] setup::Error),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing the checkpoint: {0}")]
    Sign(String),
}

/// The stored head of this registrar's chain, signed with its current key (the periodic
/// log checkpoint; the chain itself is checked by `enrpd audit verify`).
async fn checkpoint_now(
    store: &Store,
    chain: &store::audit::Chain,
    data: &Path,
) -> Result<crate::checkpoint::Checkpoint, CheckpointError> {
    let mut conn = store.acquire().await?;
    let (id, hash) = store::audit::head(&mut conn, chain).await?;
    drop(conn);
    // Row ids are positive (INTEGER PRIMARY KEY from 1).
    let id = u64::try_from(id).unwrap_or(0);
    let install = setup::read_install(data)?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CheckpointError::Read {
            path: path.to_owned(),
            source,
        })
    };
    crate::checkpoint::Checkpoint::sign(
        id,
        &hash,
        now_ms(),
        &read(&install.cert)?,
        &read(&install.key)?,
    )
    .map_err(|e| CheckpointError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_may_name_the_identity_its_server_id_is_bound_to() {
        assert_eq!(split_peer("a:9902").expect("plain"), ("a:9902", None));
        let (addr, id) = split_peer("a:9902=spiffe://acme.test/registrar/a").expect("bound");
        assert_eq!(addr, "a:9902");
        assert_eq!(
            id.map(|i| i.to_string()).as_deref(),
            Some("spiffe://acme.test/registrar/a")
        );
        assert!(split_peer("a:9902=registrar/a").is_err());
    }
}
