//! The daemon's configuration ([`Settings`]) and the legacy peers it names.

use std::net::SocketAddr;
use std::time::Duration;

use ::asap::addr::{Endpoint, TransportAddr};

use super::limits::RateLimits;
use super::refusals;
use enrp_core::registrar::Config;
use identity::Revocation;

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
    /// to [`Config::legacy_namespace`](enrp_core::registrar::Config::legacy_namespace), which
    /// must be set with it. Off (`None`) unless configured.
    pub legacy_asap_listen: Option<Endpoint>,
    /// A plain SCTP ENRP listener for legacy peers such as RSPLIB's `rspregistrar` (spec:
    /// 9901, PPID 12), who speak for [`Config::legacy_namespace`](enrp_core::registrar::Config::legacy_namespace)
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
    pub default_namespaces: Vec<identity::DefaultNamespace>,
    /// A peer learnt from a list (not configured) that has had no connection for this
    /// long is no longer dialed (until the core asks again: a list naming it at a new
    /// address; or it dials us). Default 10 min.
    pub learnt_peer_give_up: Duration,
    /// The revocations stored before the start (admin API), in force in the core from
    /// the first input (issue 16: a peer cannot re-inject a revoked identity's PEs).
    pub revocations: Vec<Revocation>,
    /// The Server ID bindings stored before the start, and where new ones are stored
    /// (docs/ENRP-TRUST.md §4). `None`: bindings last as long as the process.
    pub server_id_bindings: Vec<(::asap::wire::param::ServerId, identity::SpiffeId)>,
    /// The store that keeps new Server ID bindings.
    pub bindings_store: Option<store::db::Store>,
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
