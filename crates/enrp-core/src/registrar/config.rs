//! The registrar's configuration: [`Config`] (Server ID, limits, listeners, the RNG seed)
//! and the durations of spec §10 ([`Timing`]). The driver builds it from `enrpd`'s
//! configuration (`enrp::config`); the core only reads it.

use std::net::SocketAddr;
use std::time::Duration;

use ::asap::policy::PolicyRegistry;
use ::asap::wire::param::{Namespace, ServerId};

use crate::handlespace::Limits;

/// The durations of spec §10 that the registrar uses. [`Timing::default`] has the
/// project defaults; tests use [`Timing::fast`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Endpoint keep-alive interval (spec §7.5). Default 5 s.
    pub keep_alive_interval: Duration,
    /// Endpoint keep-alive timeout (spec §7.5). Default 5 s.
    pub keep_alive_timeout: Duration,
    /// How long the PEs of a closed connection stay, waiting for a re-registration
    /// (spec §12.6). Default: the keep-alive timeout.
    pub connection_grace: Duration,
    /// Window of the per-PU limit on endpoint unreachable reports (spec §7.6). 1 s.
    pub report_window: Duration,
    /// PEER-HEARTBEAT-CYCLE: a PRESENCE to every peer this often (spec §9.5). 30 s.
    pub peer_heartbeat: Duration,
    /// MAX-TIME-LAST-HEARD: a peer silent this long is probed with PRESENCE R=1
    /// (spec §9.5). 61 s.
    pub peer_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE: a probed (or disconnected) peer that says nothing for this
    /// long is dead (spec §9.5, §12.4). 5 s.
    pub peer_no_response: Duration,
    /// Takeover expiry: a takeover still missing acknowledgements this long after it
    /// started is abandoned (spec §9.8 step 5). 30 s.
    pub takeover_expiry: Duration,
    /// Mentor discovery timeout: a registrar started with peers serves alone after this
    /// long without a complete handle table download from a mentor (spec §9.3). 5 s.
    pub mentor_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            connection_grace: Duration::from_secs(5),
            report_window: Duration::from_secs(1),
            peer_heartbeat: Duration::from_secs(30),
            peer_last_heard: Duration::from_secs(61),
            peer_no_response: Duration::from_secs(5),
            takeover_expiry: Duration::from_secs(30),
            mentor_timeout: Duration::from_secs(5),
        }
    }
}

impl Timing {
    /// Short timers for tests: 200 ms keep-alive interval, timeout and grace; peers: a
    /// heartbeat every 200 ms, probed after 400 ms of silence, dead 200 ms later; a
    /// takeover expires after 1 s; the mentor timeout is 1 s.
    pub fn fast() -> Self {
        Self {
            keep_alive_interval: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_millis(200),
            connection_grace: Duration::from_millis(200),
            report_window: Duration::from_millis(200),
            peer_heartbeat: Duration::from_millis(200),
            peer_last_heard: Duration::from_millis(400),
            peer_no_response: Duration::from_millis(200),
            takeover_expiry: Duration::from_secs(1),
            mentor_timeout: Duration::from_secs(1),
        }
    }
}

/// How the registrar behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// This registrar's Server ID (derived from its SPIFFE ID, ARCHITECTURE.md §3).
    pub server_id: ServerId,
    /// Timers.
    pub timing: Timing,
    /// Handlespace limits (cause 0x6 beyond them).
    pub limits: Limits,
    /// PEs returned by a handle resolution without the option (spec §7.3). Default 3.
    pub default_resolution_items: usize,
    /// Most PEs returned by one handle resolution (spec §4.8, §3.5). Default 128.
    pub max_resolution_items: usize,
    /// MAX-BAD-PE-REPORT: distinct reporters before the PE is probed (spec §7.6). 3.
    pub max_bad_pe_reports: usize,
    /// Endpoint unreachable reports one PU may make per [`Timing::report_window`]. 10.
    pub max_reports_per_window: u32,
    /// Accept loopback addresses in PE user transports (spec §4.2 [P]): for tests and
    /// single-host setups.
    pub allow_loopback: bool,
    /// Require every address of a PE's user transport to be one of the connection's
    /// (its remote address; over SCTP, its association's peer addresses) (spec §7.1 PR
    /// step 3 [P]). On by default; off behind NAT or a proxy.
    pub check_user_address: bool,
    /// Seed of the core's RNG (random policies), so that runs replay.
    pub rng_seed: u64,
    /// Where this registrar serves ENRP over TLS/TCP, sent to peers in PRESENCE (spec §4.5)
    /// unless it has a TLS/SCTP endpoint; `None` (or an unspecified address) sends none.
    pub enrp_addr: Option<SocketAddr>,
    /// Where it serves ENRP over TLS/SCTP: sent to peers in PRESENCE (spec §4.5, every
    /// address) in preference to [`Config::enrp_addr`]. Default empty.
    pub enrp_sctp_addrs: Vec<SocketAddr>,
    /// Most PEs in one handle table response (spec §9.7, §10). Default 128.
    pub handle_table_pes: usize,
    /// Most bytes of PEs in one handle table response (spec §10). Default 16 KiB.
    pub handle_table_bytes: usize,
    /// The namespace legacy (unauthenticated, plain SCTP) clients are confined to: they may
    /// register, resolve and report in it, and nowhere else (ARCHITECTURE.md §4). `None`:
    /// no legacy clients. Default `None`.
    pub legacy_namespace: Option<Namespace>,
    /// Where this registrar serves ENRP to legacy peers (plain SCTP), sent to them as the
    /// SCTP transport of its Server Information, non-loopback addresses first (RSPLIB
    /// drops loopback ones and refuses a Server Information left with none). Empty: the
    /// Server Information is left out. Default empty.
    pub legacy_enrp_addrs: Vec<SocketAddr>,
    /// Most PEs one peer may own in this registrar's handlespace (issue 16): its ADD_PEs
    /// and handle table entries beyond it are refused, so that one peer cannot fill the
    /// handlespace ([`Limits::max_pes`]) by itself. Default 250,000, a quarter of it.
    pub max_pes_per_peer: usize,
    /// Pools one identity may have created in one namespace (those of them that still
    /// exist); a registration that would create one more is refused with 0x6, so that one
    /// PE cannot take the namespace's whole pool limit (issue 18). Default 100.
    pub max_pools_per_identity: usize,
    /// The selectors of the pools' policies: the nine RFC 5356 ones and Least Used with
    /// Distance Penalty by default (`PolicyRegistry::standard`). A program
    /// that runs a registrar (`enrp::run_with`) registers its own policies here
    /// (examples/custom-policy, docs/PROTOCOL-EXTENSIONS.md); private types without one
    /// are selected round robin.
    pub policies: PolicyRegistry,
}

impl Config {
    /// The defaults for a registrar with this Server ID.
    pub fn new(server_id: ServerId) -> Self {
        Self {
            server_id,
            timing: Timing::default(),
            limits: Limits::default(),
            default_resolution_items: 3,
            max_resolution_items: ::asap::wire::limits::MAX_RESOLUTION_PES,
            max_bad_pe_reports: 3,
            max_reports_per_window: 10,
            allow_loopback: false,
            check_user_address: true,
            rng_seed: 0,
            enrp_addr: None,
            enrp_sctp_addrs: Vec::new(),
            handle_table_pes: 128,
            handle_table_bytes: 16 * 1024,
            legacy_namespace: None,
            legacy_enrp_addrs: Vec::new(),
            max_pes_per_peer: 250_000,
            max_pools_per_identity: 100,
            policies: PolicyRegistry::standard(),
        }
    }
}
