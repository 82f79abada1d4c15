//! `enrpd`: the rsp registrar. Thin: flags and logging here, the work in `enrp`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use asap::transport::Endpoint;
use asap::wire::param::Namespace;
use clap::{Parser, Subcommand, ValueEnum};
use enrp::daemon::{Daemon, LegacyPeer, Settings, now_ms};
use enrp::registrar::{Config, Timing};
use enrp::setup;
use trust::audit::{AuditConfig, AuditLog};

/// An ENRP registrar: keeps the handlespace of pools, serves ASAP over mutual TLS, audits
/// every operation.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory: store, local trust domain, default namespace and grants,
    /// and the first admin token (printed once).
    Init {
        #[command(flatten)]
        files: PkiFiles,
        /// Days until the first admin token expires (default: never): make more with
        /// `enrpd token create` or the API before it does.
        #[arg(long, value_name = "DAYS")]
        admin_token_expires_in_days: Option<u32>,
    },
    /// Copy the registrar's renewed certificate and key, the CA bundle and the CRL from
    /// the PKI directory into the data directory (after `rsp-pki issue --renew`,
    /// `revoke` or `crl`); then SIGHUP the running enrpd. The registrar itself never reads
    /// the PKI directory, which holds the CA keys.
    UpdatePki(PkiFiles),
    /// Run the registrar until SIGTERM or Ctrl-C. SIGHUP reloads the registrar's
    /// certificate and key, the local CRL, the grants and the default namespaces; options
    /// (flags, variables, the config file) take effect at start only, and SIGHUP logs
    /// which keys of the config file changed.
    Run(Box<RunArgs>),
    /// Inspect the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage admin API tokens (also possible through the API itself).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Where `enrpd init` and `enrpd update-pki` take the registrar's PKI files from, and
/// the data directory they go to.
#[derive(clap::Args)]
struct PkiFiles {
    /// The rsp-pki directory holding ca.pem, crl.pem and registrar-NAME.pem/.key.
    #[arg(long, env = "ENRPD_PKI", default_value = "pki")]
    pki: PathBuf,
    /// Which registrar certificate (registrar-NAME.pem): for init, optional when the
    /// directory has one; for update-pki, default this registrar's.
    #[arg(long, env = "ENRPD_NAME")]
    name: Option<String>,
    /// The registrar's data directory (init creates it).
    #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
    data: PathBuf,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
        /// What it is for (shown in listings and the audit log).
        #[arg(long)]
        name: String,
        /// admin (everything), operator (pools, PEs, revocations) or auditor (read-only).
        #[arg(long)]
        role: trust::db::Role,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List the tokens (never their secrets).
    List {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
        /// The token's id (the part after `rsp_`, before the second `_`).
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain; report the first broken link. Exits 1 if broken.
    Verify {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
        /// A checkpoint (`enrpd audit checkpoint`): also check that the chain still
        /// holds the head it signed (not truncated, not rewritten before it).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Archives (`enrpd audit archive`) to verify too, and that they link to each
        /// other and to the live log (repeatable; any order).
        #[arg(long, value_name = "FILE")]
        archive: Vec<PathBuf>,
    },
    /// Move the records older than --before (or below --before-seq) into a gzip'd JSON
    /// Lines archive that verifies on its own, then delete them from the live log, which
    /// keeps the archived head as its anchor. Works while `enrpd run` runs.
    Archive {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
        /// Archive the records before this RFC 3339 time (2026-12-01T00:00:00Z): up to
        /// the first record stamped at or after it.
        #[arg(long, value_name = "TIME", required_unless_present = "before_seq")]
        before: Option<String>,
        /// Archive the records with a sequence number (id) below N.
        #[arg(long, value_name = "N", conflicts_with = "before")]
        before_seq: Option<u64>,
        /// The archive file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Sign the chain's head (row, hash, time) with the registrar's key; keep the file
    /// elsewhere, then `enrpd audit verify --checkpoint FILE` detects a truncated tail or
    /// a rewritten chain.
    Checkpoint {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
        /// Where to write it (default: standard output).
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A TOML file with any of the options below (names with `_` instead of `-`, e.g.
    /// `asap_listen = "[::]:3864"`). Flags and ENRPD_* variables override it.
    #[arg(long, env = "ENRPD_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory made by `enrpd init`.
    #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
    data: PathBuf,
    /// Where to serve ASAP over TLS/TCP (spec §2: port 3864).
    #[arg(long, env = "ENRPD_ASAP_LISTEN", default_value = "[::]:3864")]
    asap_listen: SocketAddr,
    /// Where to serve ENRP over TLS/TCP for peer registrars (spec §2.1: port 9902), or `off`.
    #[arg(long, env = "ENRPD_ENRP_LISTEN", default_value = "[::]:9902", value_parser = parse_listen)]
    enrp_listen: Listen,
    /// A peer registrar's ENRP address, HOST:PORT (repeatable; the environment variable
    /// takes a comma-separated list). Peers need the `peer` grant. `HOST:PORT=spiffe://…`
    /// also binds the Server ID of that identity to it from the start: no other identity
    /// may use it (docs/ENRP-TRUST.md §4).
    #[arg(long = "peer", env = "ENRPD_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Where to serve the admin API over HTTPS (ARCHITECTURE.md §7), or `off`.
    #[arg(long, env = "ENRPD_ADMIN_LISTEN", default_value = "127.0.0.1:8443", value_parser = parse_listen)]
    admin_listen: Listen,
    /// Endpoint keep-alive interval in milliseconds (spec §7.5).
    #[arg(long, env = "ENRPD_KEEP_ALIVE_INTERVAL_MS", default_value_t = 5000)]
    keep_alive_interval_ms: u64,
    /// Endpoint keep-alive timeout in milliseconds (spec §7.5); also the grace period of a
    /// lost connection (spec §12.6).
    #[arg(long, env = "ENRPD_KEEP_ALIVE_TIMEOUT_MS", default_value_t = 5000)]
    keep_alive_timeout_ms: u64,
    /// PEER-HEARTBEAT-CYCLE in milliseconds: a PRESENCE to every peer this often (spec §9.5).
    #[arg(long, env = "ENRPD_PEER_HEARTBEAT_MS", default_value_t = 30_000)]
    peer_heartbeat_ms: u64,
    /// MAX-TIME-LAST-HEARD in milliseconds: a peer silent this long is probed (spec §9.5).
    #[arg(long, env = "ENRPD_PEER_LAST_HEARD_MS", default_value_t = 61_000)]
    peer_last_heard_ms: u64,
    /// MAX-TIME-NO-RESPONSE in milliseconds: a probed or disconnected peer silent this long
    /// is dead, and its PEs are taken over (spec §9.5, §9.8).
    #[arg(long, env = "ENRPD_PEER_NO_RESPONSE_MS", default_value_t = 5_000)]
    peer_no_response_ms: u64,
    /// Takeover expiry in milliseconds: a takeover still missing acknowledgements is
    /// abandoned (spec §9.8).
    #[arg(long, env = "ENRPD_TAKEOVER_EXPIRY_MS", default_value_t = 30_000)]
    takeover_expiry_ms: u64,
    /// Mentor discovery timeout in milliseconds: a registrar started with peers serves
    /// alone after this long without a mentor's handle table (spec §9.3).
    #[arg(long, env = "ENRPD_MENTOR_TIMEOUT_MS", default_value_t = 5_000)]
    mentor_timeout_ms: u64,
    /// Most PEs one ENRP peer may own in this registrar's handlespace; its PEs beyond are
    /// refused and audited (docs/ENRP-TRUST.md §3).
    #[arg(long, env = "ENRPD_MAX_PES_PER_PEER", default_value_t = 250_000)]
    max_pes_per_peer: usize,
    /// Kinds of refusal (failed handshakes per source address, repeated refused requests)
    /// audited one record each per listener per second; more are counted into summary
    /// records (docs/SECURITY.md).
    #[arg(long, env = "ENRPD_REFUSAL_AUDIT_BUDGET", default_value_t = 20)]
    refusal_audit_budget: u32,
    /// Handle resolutions a connection may send per second (bursts of twice that; an
    /// identity ten times that over all its connections); more are answered with cause
    /// 0x6. 0: no limit.
    #[arg(long, env = "ENRPD_RATE_RESOLUTIONS", default_value_t = 100)]
    rate_resolutions: u32,
    /// Registrations and deregistrations a connection may send per second (as
    /// --rate-resolutions).
    #[arg(long, env = "ENRPD_RATE_REGISTRATIONS", default_value_t = 100)]
    rate_registrations: u32,
    /// Endpoint unreachable reports a connection may send per second (as
    /// --rate-resolutions; more are dropped).
    #[arg(long, env = "ENRPD_RATE_UNREACHABLE", default_value_t = 10)]
    rate_unreachable: u32,
    /// Connections from one IP address per listener (ASAP, ENRP, legacy); more are
    /// closed at once, counted and audited in aggregate.
    #[arg(long, env = "ENRPD_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    max_connections_per_ip: usize,
    /// Of those, connections still in their TLS handshake.
    #[arg(long, env = "ENRPD_MAX_HANDSHAKES_PER_IP", default_value_t = 64)]
    max_handshakes_per_ip: usize,
    /// Authenticated ASAP connections of one identity at once; more are closed after
    /// the handshake and audited.
    #[arg(
        long,
        env = "ENRPD_MAX_CONNECTIONS_PER_IDENTITY",
        default_value_t = 256
    )]
    max_connections_per_identity: usize,
    /// Free space (MiB) the data directory must keep: below it registrations are refused
    /// (cause 0x6) and admin writes too (507), resolutions and keep-alives go on, the
    /// state is logged and exported (`rsp_low_disk`); enrpd never exits for it.
    #[arg(long, env = "ENRPD_MIN_FREE_MIB", default_value_t = 64)]
    min_free_mib: u64,
    /// Seconds between signed audit checkpoints written to the log (one JSON line, the
    /// same as `enrpd audit checkpoint` writes), so that log shipping anchors the chain's
    /// head elsewhere; 0: none.
    #[arg(long, env = "ENRPD_CHECKPOINT_LOG_SECS", default_value_t = 3600)]
    checkpoint_log_secs: u64,
    /// Pools one identity may have created in one namespace (that still exist); a
    /// registration creating one more is refused with cause 0x6.
    #[arg(long, env = "ENRPD_MAX_POOLS_PER_IDENTITY", default_value_t = 100)]
    max_pools_per_identity: usize,
    /// SCTP, the transport RFC 5352/5353 require: `auto` serves ASAP and ENRP over
    /// TLS/SCTP at the TLS/TCP listeners' addresses and ports when the kernel has SCTP,
    /// `on` insists (start-up fails without it), `off` serves TCP only.
    #[arg(long, env = "ENRPD_SCTP", value_enum, default_value_t = SctpMode::Auto)]
    sctp: SctpMode,
    /// Where to serve ASAP over TLS/SCTP instead, IP:PORT[+IP:PORT...] (one port,
    /// several addresses: multi-homed). Implies SCTP.
    #[arg(long, env = "ENRPD_ASAP_SCTP_LISTEN", value_parser = parse_endpoint)]
    asap_sctp_listen: Option<Endpoint>,
    /// Where to serve ENRP over TLS/SCTP instead, IP:PORT[+IP:PORT...]. Implies SCTP.
    #[arg(long, env = "ENRPD_ENRP_SCTP_LISTEN", value_parser = parse_endpoint)]
    enrp_sctp_listen: Option<Endpoint>,
    /// INSECURE, for RSPLIB and other legacy clients only: also serve ASAP over plain
    /// SCTP here (spec: port 3863), IP:PORT[+IP:PORT...]. Its clients are not
    /// authenticated: they are known by their address, confined to --legacy-namespace,
    /// and every message they send is audited as unauthenticated. Off unless given.
    #[arg(long, env = "ENRPD_LEGACY_ASAP_LISTEN", value_parser = parse_endpoint, requires = "legacy_namespace")]
    legacy_asap_listen: Option<Endpoint>,
    /// INSECURE, for RSPLIB's rspregistrar only: also serve ENRP over plain SCTP here
    /// (spec: port 9901, PPID 12), IP:PORT[+IP:PORT...]. Only --legacy-peer registrars are
    /// admitted (by address and Server ID, not authenticated), they speak and hear of
    /// --legacy-namespace only, and what they do is audited as unauthenticated.
    #[arg(long, env = "ENRPD_LEGACY_ENRP_LISTEN", value_parser = parse_endpoint, requires = "legacy_namespace")]
    legacy_enrp_listen: Option<Endpoint>,
    /// INSECURE: a legacy ENRP peer (RSPLIB's rspregistrar), sctp:IP:PORT=SERVERID
    /// (repeatable; the Server ID as 0x11111111 or decimal): dialed over plain SCTP, and
    /// admitted on --legacy-enrp-listen (required) from that address with that Server ID.
    #[arg(long = "legacy-peer", env = "ENRPD_LEGACY_PEERS", value_delimiter = ',', value_parser = parse_legacy_peer, requires = "legacy_enrp_listen")]
    legacy_peers: Vec<LegacyPeer>,
    /// The one namespace legacy clients may use (it must exist; nothing else is open to
    /// them).
    #[arg(long, env = "ENRPD_LEGACY_NAMESPACE")]
    legacy_namespace: Option<String>,
    /// Accept loopback addresses in PE user transports (single-host setups and tests).
    #[arg(long, env = "ENRPD_ALLOW_LOOPBACK")]
    allow_loopback: bool,
    /// Do not require every address of a PE's user transport to be one of its
    /// connection's (its SCTP association's peer addresses) (behind NAT or a proxy).
    #[arg(long, env = "ENRPD_NO_ADDRESS_CHECK")]
    no_address_check: bool,
    /// Log format.
    #[arg(long, env = "ENRPD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `enrpd run --config FILE`: the same options as the flags, all optional.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    asap_listen: Option<SocketAddr>,
    enrp_listen: Option<String>,
    peers: Option<Vec<String>>,
    admin_listen: Option<String>,
    keep_alive_interval_ms: Option<u64>,
    keep_alive_timeout_ms: Option<u64>,
    peer_heartbeat_ms: Option<u64>,
    peer_last_heard_ms: Option<u64>,
    peer_no_response_ms: Option<u64>,
    takeover_expiry_ms: Option<u64>,
    mentor_timeout_ms: Option<u64>,
    max_pes_per_peer: Option<usize>,
    refusal_audit_budget: Option<u32>,
    rate_resolutions: Option<u32>,
    rate_registrations: Option<u32>,
    rate_unreachable: Option<u32>,
    max_connections_per_ip: Option<usize>,
    max_handshakes_per_ip: Option<usize>,
    max_connections_per_identity: Option<usize>,
    min_free_mib: Option<u64>,
    checkpoint_log_secs: Option<u64>,
    max_pools_per_identity: Option<usize>,
    allow_loopback: Option<bool>,
    no_address_check: Option<bool>,
    log_format: Option<LogFormat>,
    sctp: Option<SctpMode>,
    asap_sctp_listen: Option<String>,
    enrp_sctp_listen: Option<String>,
    legacy_asap_listen: Option<String>,
    legacy_namespace: Option<String>,
    legacy_enrp_listen: Option<String>,
    legacy_peers: Option<Vec<String>>,
}

/// The config file as a table, after checking that it is a valid [`FileConfig`].
fn read_config_table(path: &std::path::Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let _: FileConfig = toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in {}", path.display()))
}

/// The keys whose values differ between two versions of the config file, sorted.
fn changed_keys(before: &toml::Table, after: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl RunArgs {
    /// Fills every option not given by flag or environment from the config file.
    fn merge_file(mut self, matches: &clap::ArgMatches) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        let unset = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        };
        if let Some(v) = file.data.filter(|_| unset("data")) {
            self.data = v;
        }
        if let Some(v) = file.asap_listen.filter(|_| unset("asap_listen")) {
            self.asap_listen = v;
        }
        if let Some(v) = file.enrp_listen.filter(|_| unset("enrp_listen")) {
            self.enrp_listen = parse_listen(&v).map_err(anyhow::Error::msg)?;
        }
        if let Some(v) = file.peers.filter(|_| unset("peers")) {
            self.peers = v;
        }
        if let Some(v) = file.admin_listen.filter(|_| unset("admin_listen")) {
            self.admin_listen = parse_listen(&v).map_err(anyhow::Error::msg)?;
        }
        if let Some(v) = file
            .keep_alive_interval_ms
            .filter(|_| unset("keep_alive_interval_ms"))
        {
            self.keep_alive_interval_ms = v;
        }
        if let Some(v) = file
            .keep_alive_timeout_ms
            .filter(|_| unset("keep_alive_timeout_ms"))
        {
            self.keep_alive_timeout_ms = v;
        }
        // The ENRP timers (spec §9.5, §9.8).
        if let Some(v) = file
            .peer_heartbeat_ms
            .filter(|_| unset("peer_heartbeat_ms"))
        {
            self.peer_heartbeat_ms = v;
        }
        if let Some(v) = file
            .peer_last_heard_ms
            .filter(|_| unset("peer_last_heard_ms"))
        {
            self.peer_last_heard_ms = v;
        }
        if let Some(v) = file
            .peer_no_response_ms
            .filter(|_| unset("peer_no_response_ms"))
        {
            self.peer_no_response_ms = v;
        }
        if let Some(v) = file
            .takeover_expiry_ms
            .filter(|_| unset("takeover_expiry_ms"))
        {
            self.takeover_expiry_ms = v;
        }
        if let Some(v) = file
            .mentor_timeout_ms
            .filter(|_| unset("mentor_timeout_ms"))
        {
            self.mentor_timeout_ms = v;
        }
        if let Some(v) = file.max_pes_per_peer.filter(|_| unset("max_pes_per_peer")) {
            self.max_pes_per_peer = v;
        }
        if let Some(v) = file
            .refusal_audit_budget
            .filter(|_| unset("refusal_audit_budget"))
        {
            self.refusal_audit_budget = v;
        }
        if let Some(v) = file.rate_resolutions.filter(|_| unset("rate_resolutions")) {
            self.rate_resolutions = v;
        }
        if let Some(v) = file
            .rate_registrations
            .filter(|_| unset("rate_registrations"))
        {
            self.rate_registrations = v;
        }
        if let Some(v) = file.rate_unreachable.filter(|_| unset("rate_unreachable")) {
            self.rate_unreachable = v;
        }
        if let Some(v) = file
            .max_connections_per_ip
            .filter(|_| unset("max_connections_per_ip"))
        {
            self.max_connections_per_ip = v;
        }
        if let Some(v) = file
            .max_handshakes_per_ip
            .filter(|_| unset("max_handshakes_per_ip"))
        {
            self.max_handshakes_per_ip = v;
        }
        if let Some(v) = file
            .max_connections_per_identity
            .filter(|_| unset("max_connections_per_identity"))
        {
            self.max_connections_per_identity = v;
        }
        if let Some(v) = file.min_free_mib.filter(|_| unset("min_free_mib")) {
            self.min_free_mib = v;
        }
        if let Some(v) = file
            .checkpoint_log_secs
            .filter(|_| unset("checkpoint_log_secs"))
        {
            self.checkpoint_log_secs = v;
        }
        if let Some(v) = file
            .max_pools_per_identity
            .filter(|_| unset("max_pools_per_identity"))
        {
            self.max_pools_per_identity = v;
        }
        if let Some(v) = file.allow_loopback.filter(|_| unset("allow_loopback")) {
            self.allow_loopback = v;
        }
        if let Some(v) = file.no_address_check.filter(|_| unset("no_address_check")) {
            self.no_address_check = v;
        }
        if let Some(v) = file.log_format.filter(|_| unset("log_format")) {
            self.log_format = v;
        }
        if let Some(v) = file.sctp.filter(|_| unset("sctp")) {
            self.sctp = v;
        }
        let endpoint = |v: String| parse_endpoint(&v).map_err(anyhow::Error::msg);
        if let Some(v) = file.asap_sctp_listen.filter(|_| unset("asap_sctp_listen")) {
            self.asap_sctp_listen = Some(endpoint(v)?);
        }
        if let Some(v) = file.enrp_sctp_listen.filter(|_| unset("enrp_sctp_listen")) {
            self.enrp_sctp_listen = Some(endpoint(v)?);
        }
        if let Some(v) = file
            .legacy_asap_listen
            .filter(|_| unset("legacy_asap_listen"))
        {
            self.legacy_asap_listen = Some(endpoint(v)?);
        }
        if let Some(v) = file.legacy_namespace.filter(|_| unset("legacy_namespace")) {
            self.legacy_namespace = Some(v);
        }
        if let Some(v) = file
            .legacy_enrp_listen
            .filter(|_| unset("legacy_enrp_listen"))
        {
            self.legacy_enrp_listen = Some(endpoint(v)?);
        }
        if let Some(v) = file.legacy_peers.filter(|_| unset("legacy_peers")) {
            self.legacy_peers = v
                .iter()
                .map(|p| parse_legacy_peer(p).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
        }
        if self.legacy_enrp_listen.is_some() && self.legacy_namespace.is_none() {
            bail!("legacy_enrp_listen needs legacy_namespace");
        }
        if !self.legacy_peers.is_empty() && self.legacy_enrp_listen.is_none() {
            bail!("legacy_peers need legacy_enrp_listen");
        }
        Ok(self)
    }
}

/// Whether to serve SCTP (see `--sctp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum SctpMode {
    Auto,
    On,
    Off,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s.trim_start_matches("sctp:")).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_legacy_peer(s: &str) -> Result<LegacyPeer, String> {
    s.parse()
}

/// The SCTP listeners to open: explicit ones, or in `auto`/`on` mode the TCP listeners'
/// addresses (after binding, so that a TCP port 0 is the same SCTP port where free).
fn sctp_endpoints(
    args: &RunArgs,
    available: bool,
) -> anyhow::Result<(Option<Endpoint>, Option<Endpoint>)> {
    match args.sctp {
        SctpMode::Off => {
            if args.asap_sctp_listen.is_some() || args.enrp_sctp_listen.is_some() {
                bail!("--sctp off contradicts --asap-sctp-listen / --enrp-sctp-listen");
            }
            Ok((None, None))
        }
        SctpMode::On if !available => bail!("--sctp on: {}", enrp::daemon::SCTP_UNAVAILABLE),
        SctpMode::Auto if !available => {
            if args.asap_sctp_listen.is_some() || args.enrp_sctp_listen.is_some() {
                bail!("{}", enrp::daemon::SCTP_UNAVAILABLE);
            }
            tracing::info!("{}", enrp::daemon::SCTP_UNAVAILABLE);
            Ok((None, None))
        }
        SctpMode::Auto | SctpMode::On => Ok((
            Some(
                args.asap_sctp_listen
                    .clone()
                    .unwrap_or_else(|| Endpoint::single(args.asap_listen)),
            ),
            args.enrp_sctp_listen
                .clone()
                .or_else(|| args.enrp_listen.0.map(Endpoint::single)),
        )),
    }
}

/// A listening address, or `off`.
#[derive(Clone, Copy, Debug)]
struct Listen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is neither an address (127.0.0.1:8443) nor `off`"))
}

#[derive(Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let run_matches = matches.subcommand_matches("run").cloned();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, run_matches)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, run_matches: Option<clap::ArgMatches>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            files: PkiFiles { pki, name, data },
            admin_token_expires_in_days,
        } => {
            let now = now_ms();
            let expires = admin_token_expires_in_days.map(|d| days_after(now, d));
            let report = setup::init_with_token_expiry(&pki, name.as_deref(), &data, now, expires)
                .await
                .context("enrpd init")?;
            println!("initialised {}", data.display());
            println!(
                "  registrar  {} (Server ID {})",
                report.identity, report.server_id
            );
            let expiry = admin_token_expires_in_days
                .map_or_else(String::new, |d| format!("; it expires in {d} days"));
            println!(
                "  admin token (shown once, store it now{expiry}): {}",
                report.admin_token
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::UpdatePki(PkiFiles { pki, name, data }) => {
            let (id, serial) =
                setup::update_pki(&pki, name.as_deref(), &data).context("enrpd update-pki")?;
            println!(
                "copied {id} (certificate serial {serial}), the CA bundle and the CRL into {}; \
                 SIGHUP the running enrpd to apply them",
                data.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let args = match &run_matches {
                Some(m) => args.merge_file(m)?,
                None => *args,
            };
            serve(args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Token { command } => token(command).await,
        Command::Audit {
            command: AuditCommand::Checkpoint { data, to },
        } => write_checkpoint(&data, to.as_deref()).await,
        Command::Audit {
            command:
                AuditCommand::Archive {
                    data,
                    before,
                    before_seq,
                    to,
                },
        } => {
            let cut = match (before, before_seq) {
                (Some(t), _) => trust::audit::archive::Cut::Before(
                    trust::audit::archive::parse_time(&t).context("--before")?,
                ),
                (None, Some(n)) => trust::audit::archive::Cut::BeforeId(n),
                (None, None) => bail!("give --before TIME or --before-seq N"),
            };
            let loaded = setup::load(&data)
                .await
                .context("loading the data directory")?;
            let server = loaded.trust.identity().id().clone();
            let record =
                trust::audit::Record::new(now_ms(), "audit:archive", trust::audit::Outcome::Ok)
                    .detail("enrpd audit archive");
            let done = trust::audit::archive::archive(
                &loaded.store,
                &trust::audit::archive::Target::File(to),
                cut,
                Some(&server),
                record,
                now_ms(),
            )
            .await
            .context("enrpd audit archive")?;
            println!(
                "archived records {}-{} to {} ({} bytes, sha256 {}); the live log continues \
                 from record {} (audited as record {})",
                done.anchor.first_id,
                done.anchor.last_id,
                done.path.display(),
                done.bytes,
                trust::db::hex(&done.anchor.sha256),
                done.anchor.last_id + 1,
                done.record_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    data,
                    checkpoint,
                    archive,
                },
        } => {
            let loaded = setup::load(&data)
                .await
                .context("loading the data directory")?;
            let mut conn = loaded.store.acquire().await?;
            let report = trust::audit::verify(&mut conn).await?;
            match report.broken {
                None => {
                    println!(
                        "audit chain intact: {} records, head {}",
                        report.checked,
                        report.head_hex()
                    );
                    if let Some(a) = &report.anchor {
                        println!(
                            "  starting after archived record {} (hash {}, last archive {})",
                            a.last_id,
                            trust::db::hex(&a.last_hash),
                            a.file
                        );
                    }
                    let checkpoint = match checkpoint {
                        Some(file) => Some(read_checkpoint(&data, &file)?),
                        None => None,
                    };
                    let archived = if archive.is_empty() {
                        None
                    } else {
                        let probe = checkpoint
                            .as_ref()
                            .and_then(|c| c.as_ref().ok())
                            .map(|c| c.id);
                        match trust::audit::archive::check_archives(&mut conn, &archive, probe)
                            .await?
                        {
                            Ok(check) => {
                                print_archives(&check);
                                Some(check)
                            }
                            Err(finding) => {
                                println!("archives: {finding}");
                                return Ok(ExitCode::FAILURE);
                            }
                        }
                    };
                    if let Some(checkpoint) = checkpoint {
                        return check_checkpoint(
                            checkpoint,
                            &report,
                            archived.as_ref(),
                            &loaded.store,
                        )
                        .await;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(link) => {
                    println!(
                        "audit chain broken at record {}: {} (last intact record {})",
                        link.id, link.reason, report.last_id
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// The stored chain head, signed with the registrar's current key (the periodic log
/// checkpoint; the chain itself is checked by `enrpd audit verify`).
async fn checkpoint_now(
    store: &trust::db::Store,
    data: &std::path::Path,
) -> anyhow::Result<enrp::checkpoint::Checkpoint> {
    let mut conn = store.acquire().await?;
    let (id, hash) = trust::audit::head(&mut conn).await?;
    drop(conn);
    // Row ids are positive (INTEGER PRIMARY KEY from 1).
    let id = u64::try_from(id).unwrap_or(0);
    let install = setup::read_install(data)?;
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    enrp::checkpoint::Checkpoint::sign(
        id,
        &hash,
        now_ms(),
        &read(&install.cert)?,
        &read(&install.key)?,
    )
    .map_err(|e| anyhow::anyhow!("signing the checkpoint: {e}"))
}

/// `enrpd audit checkpoint`: the intact chain's head, signed.
async fn write_checkpoint(
    data: &std::path::Path,
    to: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let loaded = setup::load(data)
        .await
        .context("loading the data directory")?;
    let mut conn = loaded.store.acquire().await?;
    let report = trust::audit::verify(&mut conn).await?;
    if let Some(link) = report.broken {
        println!(
            "audit chain broken at record {}: {}: no checkpoint",
            link.id, link.reason
        );
        return Ok(ExitCode::FAILURE);
    }
    let install = setup::read_install(data)?;
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let checkpoint = enrp::checkpoint::Checkpoint::sign(
        report.last_id,
        &report.head,
        now_ms(),
        &read(&install.cert)?,
        &read(&install.key)?,
    )
    .map_err(|e| anyhow::anyhow!("signing the checkpoint: {e}"))?;
    let json = serde_json::to_string_pretty(&checkpoint)? + "\n";
    match to {
        Some(file) => {
            std::fs::write(file, json).with_context(|| format!("writing {}", file.display()))?;
            println!(
                "checkpoint: record {}, head {}, signed by {}",
                checkpoint.id, checkpoint.hash, checkpoint.signer
            );
        }
        None => print!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a checkpoint file.
fn read_checkpoint(
    data: &std::path::Path,
    file: &std::path::Path,
) -> anyhow::Result<Result<enrp::checkpoint::Checkpoint, String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let checkpoint: enrp::checkpoint::Checkpoint = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint", file.display()))?;
    let install = setup::read_install(data)?;
    let ca =
        std::fs::read(&install.ca).with_context(|| format!("reading {}", install.ca.display()))?;
    Ok(checkpoint.check(&ca).map(|()| checkpoint))
}

/// `enrpd audit verify --archive FILE…`: what the archives cover.
fn print_archives(check: &trust::audit::archive::ArchiveCheck) {
    for a in &check.archives {
        println!(
            "archive {}: records {}-{} intact, sha256 {}",
            a.path.display(),
            a.header.first_id,
            a.header.last_id,
            trust::db::hex(&a.sha256)
        );
    }
    for name in &check.links.sha256_differs {
        println!("  note: {name} is not the file archived (recompressed?); its records verify");
    }
    if check.links.from_id > 1 {
        println!(
            "archives link to the live log; records 1-{} not checked (their archives not given)",
            check.links.from_id - 1
        );
    } else {
        println!("archives link to the live log: the whole chain from record 1 verifies");
    }
}

/// `enrpd audit verify --checkpoint FILE`, after the chain checked intact: the signature,
/// then that the chain still holds the signed head (in the live log, at an archive anchor,
/// or in an archive given with `--archive`).
async fn check_checkpoint(
    checkpoint: Result<enrp::checkpoint::Checkpoint, String>,
    report: &trust::audit::VerifyReport,
    archived: Option<&trust::audit::archive::ArchiveCheck>,
    store: &trust::db::Store,
) -> anyhow::Result<ExitCode> {
    let checkpoint = match checkpoint {
        Ok(c) => c,
        Err(e) => {
            println!("checkpoint refused: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if report.last_id < checkpoint.id {
        println!(
            "audit chain TRUNCATED: it ends at record {}, the checkpoint of {} saw record {}",
            report.last_id, checkpoint.time_ms, checkpoint.id
        );
        return Ok(ExitCode::FAILURE);
    }
    let anchored = report.anchor.as_ref().map_or(0, |a| a.last_id);
    let stored = if checkpoint.id == 0 {
        Some(trust::audit::GENESIS)
    } else if checkpoint.id <= anchored {
        let mut conn = store.acquire().await?;
        let anchors = trust::audit::archive::anchors(&mut conn).await?;
        let holder = anchors
            .iter()
            .find(|a| (a.first_id..=a.last_id).contains(&checkpoint.id));
        match (holder, archived.and_then(|c| c.probed())) {
            // An anchor keeps its last record's hash: no archive needed.
            (Some(a), _) if a.last_id == checkpoint.id => Some(a.last_hash),
            (_, Some(hash)) => Some(hash),
            (holder, None) => {
                println!(
                    "the checkpoint's record {} is archived (in {}): give that archive with \
                     --archive to check it",
                    checkpoint.id,
                    holder.map_or("an archive", |a| a.file.as_str())
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    } else {
        let mut filter = trust::audit::AuditFilter::default();
        filter.order = trust::audit::Order::OldestFirst;
        filter.cursor = Some(checkpoint.id - 1);
        filter.limit = 1;
        let mut conn = store.acquire().await?;
        trust::audit::query(&mut conn, &filter)
            .await?
            .events
            .first()
            .filter(|e| e.id == checkpoint.id)
            .map(|e| e.hash)
    };
    if stored.is_none() || stored != checkpoint.head() {
        println!(
            "audit chain REWRITTEN: record {} does not have the hash the checkpoint signed",
            checkpoint.id
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "checkpoint holds: record {} signed by {}",
        checkpoint.id, checkpoint.signer
    );
    Ok(ExitCode::SUCCESS)
}

async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            data,
            name,
            role,
            expires_in_days,
        } => {
            let now = now_ms();
            let expires = expires_in_days.map(|d| days_after(now, d));
            let t = setup::create_token(&data, &name, role, expires, now)
                .await
                .context("creating the token")?;
            println!("token {} ({}, {})", t.info.id, t.info.name, t.info.role);
            println!("  secret (shown once, store it now): {}", t.token);
        }
        TokenCommand::List { data } => {
            for t in setup::list_tokens(&data).await.context("listing tokens")? {
                let state = match (t.revoked_ms, t.expires_ms) {
                    (Some(_), _) => "revoked".to_owned(),
                    (None, Some(e)) if e <= now_ms() => "expired".to_owned(),
                    (None, Some(e)) => format!("expires {e} (unix ms)"),
                    (None, None) => "no expiry".to_owned(),
                };
                println!("{}  {:8}  {}  {}", t.id, t.role.as_str(), state, t.name);
            }
        }
        TokenCommand::Revoke { data, id } => {
            let t = setup::revoke_token(&data, &id, now_ms())
                .await
                .context("revoking the token")?;
            println!("revoked token {} ({})", t.id, t.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENRPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some(warning) = trust::key_log_warning() {
        tracing::warn!("{warning}");
    }
    let loaded = setup::load(&args.data)
        .await
        .with_context(|| format!("loading {}", args.data.display()))?;
    let mut config = Config::new(loaded.server_id);
    config.timing = Timing {
        keep_alive_interval: Duration::from_millis(args.keep_alive_interval_ms),
        keep_alive_timeout: Duration::from_millis(args.keep_alive_timeout_ms),
        connection_grace: Duration::from_millis(args.keep_alive_timeout_ms),
        peer_heartbeat: Duration::from_millis(args.peer_heartbeat_ms),
        peer_last_heard: Duration::from_millis(args.peer_last_heard_ms),
        peer_no_response: Duration::from_millis(args.peer_no_response_ms),
        takeover_expiry: Duration::from_millis(args.takeover_expiry_ms),
        mentor_timeout: Duration::from_millis(args.mentor_timeout_ms),
        ..Timing::default()
    };
    config.allow_loopback = args.allow_loopback;
    config.max_pes_per_peer = args.max_pes_per_peer;
    config.check_user_address = !args.no_address_check;
    if let Some(name) = &args.legacy_namespace {
        let ns = Namespace::new(name)
            .with_context(|| format!("--legacy-namespace {name:?}: 1-63 bytes of a-z 0-9 - ."))?;
        let mut conn = loaded.store.acquire().await.context("opening the store")?;
        if trust::db::get_namespace(&mut conn, name).await?.is_none() {
            bail!("--legacy-namespace {name:?}: no such namespace (create it with the admin API)");
        }
        config.legacy_namespace = Some(ns);
    }
    config.max_pools_per_identity = args.max_pools_per_identity;
    config.rng_seed = now_ms();
    let audit = AuditLog::start(&loaded.store, AuditConfig::default())
        .await
        .context("starting the audit log")?;
    let mut settings = Settings::new(args.asap_listen, config);
    settings.enrp_listen = args.enrp_listen.0;
    (settings.asap_sctp_listen, settings.enrp_sctp_listen) =
        sctp_endpoints(&args, enrp::daemon::sctp_available())?;
    settings.legacy_asap_listen = args.legacy_asap_listen.clone();
    settings.legacy_enrp_listen = args.legacy_enrp_listen.clone();
    settings.legacy_peers = args.legacy_peers.clone();
    let mut peers = Vec::new();
    for p in &args.peers {
        let (addr, identity) = split_peer(p)?;
        if addr.starts_with("sctp:") {
            addr.parse::<asap::transport::TransportAddr>()
                .map_err(|e| anyhow::anyhow!("--peer {p:?}: {e}"))?;
        }
        if let Some(id) = identity {
            bind_configured_peer(&loaded, p, id, &mut settings.server_id_bindings).await?;
        }
        peers.push(addr.to_owned());
    }
    settings.peers = peers;
    settings.default_namespaces = loaded.default_namespaces;
    settings.revocations = loaded.revocations;
    settings
        .server_id_bindings
        .extend(loaded.server_id_bindings.iter().cloned());
    settings.bindings_store = Some(loaded.store.clone());
    settings.refusal_audit_budget = args.refusal_audit_budget;
    settings.max_connections_per_ip = args.max_connections_per_ip;
    settings.max_handshakes_per_ip = args.max_handshakes_per_ip;
    settings.max_connections_per_identity = args.max_connections_per_identity;
    settings.data_dir = Some(args.data.clone());
    settings.min_free_bytes = args.min_free_mib.saturating_mul(1 << 20);
    let rate = |per_sec| enrp::daemon::Rate { per_sec };
    settings.rate_limits = enrp::daemon::RateLimits {
        resolutions: rate(args.rate_resolutions),
        registrations: rate(args.rate_registrations),
        unreachable: rate(args.rate_unreachable),
    };
    let daemon = Daemon::start(settings, Arc::clone(&loaded.trust), audit, loaded.grants).await?;
    // Declared pools are enforced from the first registration on.
    for decl in &loaded.pools {
        admin_api::Registrar::declare_pool(
            &daemon.control(),
            admin_api::PoolDeclaration {
                namespace: decl.namespace.clone(),
                handle: decl.handle.clone(),
                limits: Some((decl.policy, decl.max_pes)),
            },
        )
        .await;
    }
    let admin = match args.admin_listen.0 {
        Some(addr) => match start_admin(
            addr,
            &loaded.store,
            &loaded.trust,
            &args.data,
            daemon.control(),
        )
        .await
        {
            Ok(admin) => Some(admin),
            Err(e) => {
                // Stop what started, flushing the audit log, then report the cause.
                let _ = daemon.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    // Handlers first: a SIGHUP right after the "serving" line must not kill the process.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let admin_text = admin.as_ref().map_or_else(String::new, |a| {
        format!(", admin API on https://{}", a.addr)
    });
    // Tests parse this line: the ASAP address first, then the admin API's, then ENRP's.
    let mut enrp_text = daemon
        .enrp_addr()
        .map_or_else(String::new, |a| format!(", ENRP on {a}"));
    for (what, at) in daemon.sctp_addrs() {
        enrp_text.push_str(&format!(", {what} on sctp:{at}"));
    }
    println!(
        "enrpd: serving ASAP on {} (Server ID {}){admin_text}{enrp_text}",
        daemon.asap_addr(),
        loaded.server_id
    );
    // CRLs do not expire silently: a warning from a week before, an error after.
    let crl_trust = Arc::clone(&loaded.trust);
    tokio::spawn(async move {
        loop {
            warn_crl_expiry(&crl_trust);
            tokio::time::sleep(CRL_CHECK).await;
        }
    });
    // Signed checkpoints in the log: whoever keeps the log can later tell a truncated or
    // rewritten chain (`enrpd audit verify --checkpoint`).
    if args.checkpoint_log_secs > 0 {
        let (store, data) = (loaded.store.clone(), args.data.clone());
        let every = Duration::from_secs(args.checkpoint_log_secs);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match checkpoint_now(&store, &data).await {
                    Ok(c) => tracing::info!(
                        checkpoint = %serde_json::to_string(&c).unwrap_or_default(),
                        "audit checkpoint: record {}, head {}", c.id, c.hash
                    ),
                    Err(e) => tracing::error!(error = %e, "no audit checkpoint"),
                }
            }
        });
    }
    // Serials already applied: a reload only acts on what the CRL newly lists.
    let mut applied: std::collections::HashSet<_> = loaded.revoked.iter().cloned().collect();
    // Every setting of the config file takes effect at start only: on SIGHUP, say which
    // changed rather than let an operator believe they apply.
    let config_file = match &args.config {
        Some(path) => Some((path.clone(), read_config_table(path)?)),
        None => None,
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; break; }
            _ = hup.recv() => {
                // SIGHUP: certificate, CRL, grants, default namespaces, without a restart. A bad file changes
                // nothing and is logged; the registrar keeps serving.
                match setup::reload(&args.data, &loaded.store).await {
                    Ok(r) => {
                        tracing::info!(revoked = r.revoked.len(), grants = r.grants.len(), "reloaded");
                        // A renewed certificate serves from the next handshake; live
                        // connections keep the one they proved.
                        let serial = r.identity.as_peer().serial().to_hex();
                        match loaded.trust.set_identity(r.identity, std::time::UNIX_EPOCH + Duration::from_millis(now_ms())) {
                            Ok(()) => tracing::info!(%serial, "presenting certificate"),
                            Err(e) => tracing::error!(error = %e, "the certificate was not replaced"),
                        }
                        daemon.set_grants(r.grants).await;
                        daemon.set_default_namespaces(r.default_namespaces).await;
                        // The core first (it removes the PEs and refuses the serials), then
                        // the TLS layer (new handshakes fail, live connections close).
                        // The local domain's CRL: its serials are the local CA's.
                        let domain = loaded.trust.identity().id().trust_domain();
                        for serial in r.revoked.into_iter().filter(|s| applied.insert(s.clone())) {
                            let domain = domain.clone();
                            daemon.revoke(enrp::registrar::Revocation::Serial { domain, serial }).await;
                        }
                        if let Some(crls) = r.crls {
                            let local = loaded.trust.identity().id().trust_domain();
                            if let Err(e) = loaded.trust.set_crls(&local, crls) {
                                tracing::error!(error = %e, "the new CRL was refused");
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; nothing changed"),
                }
                if let Some((path, at_start)) = &config_file {
                    match read_config_table(path) {
                        Ok(now) => {
                            let changed = changed_keys(at_start, &now);
                            if !changed.is_empty() {
                                tracing::warn!(
                                    file = %path.display(),
                                    keys = %changed.join(", "),
                                    "these settings changed and take effect at the next start"
                                );
                            }
                        }
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "the config file is invalid; the next start will fail"),
                    }
                }
            }
        }
    }
    tracing::info!("stopping");
    if let Some(admin) = admin {
        admin.stop().await;
    }
    daemon.shutdown().await.context("shutting down")?;
    loaded.store.close().await;
    Ok(())
}

/// The admin API server task.
struct Admin {
    addr: SocketAddr,
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
    store: &trust::db::Store,
    trust: &Arc<trust::TrustStore>,
    data: &std::path::Path,
    control: enrp::daemon::Control,
) -> anyhow::Result<Admin> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the admin API"))?;
    let addr = listener.local_addr()?;
    let state = admin_api::AdminState::new(
        store.clone(),
        Arc::clone(trust),
        Arc::new(control),
        trust::db::TokenHasher::default(),
        now_ms,
    )
    .with_archive_dir(data.join(trust::audit::archive::ARCHIVE_DIR));
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
    Ok(Admin { addr, stop, task })
}

/// `HOST:PORT` or `HOST:PORT=spiffe://…` of `--peer`: the address, and the identity
/// its Server ID is bound to.
fn split_peer(p: &str) -> anyhow::Result<(&str, Option<trust::SpiffeId>)> {
    match p.split_once('=') {
        None => Ok((p, None)),
        Some((addr, id)) => {
            let id = trust::SpiffeId::parse(id)
                .map_err(|e| anyhow::anyhow!("--peer {p:?}: {id:?} is no SPIFFE ID: {e}"))?;
            Ok((addr, Some(id)))
        }
    }
}

/// `days` after `now_ms`, in unix ms (token expiries).
fn days_after(now_ms: u64, days: u32) -> u64 {
    now_ms + u64::from(days) * 86_400_000
}

/// How long before a CRL's nextUpdate `enrpd` warns (issue 17): once it passes, every
/// handshake of that domain fails closed; a week leaves room for a weekend and a holiday.
const CRL_WARNING: Duration = Duration::from_secs(7 * 86_400);
/// How often the CRLs' nextUpdate is checked (and the warning repeated).
const CRL_CHECK: Duration = Duration::from_secs(3600);

/// Logs a warning for each trust domain whose CRLs stop being current within
/// [`CRL_WARNING`], an error for each whose CRLs have (`/metrics` has the same as
/// `rsp_crl_next_update_seconds`).
fn warn_crl_expiry(trust: &trust::TrustStore) {
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

/// Binds the Server ID of a configured peer's identity for good (stored), unless the
/// store binds it to another identity already: then enrpd does not start.
async fn bind_configured_peer(
    loaded: &setup::Loaded,
    p: &str,
    id: trust::SpiffeId,
    bindings: &mut Vec<(asap::wire::param::ServerId, trust::SpiffeId)>,
) -> anyhow::Result<()> {
    let server_id = setup::server_id_of(&id);
    let mut conn = loaded.store.acquire().await.context("opening the store")?;
    let bound = trust::db::bind_server_id(&mut conn, server_id.get(), &id, now_ms()).await?;
    if bound != id {
        bail!("--peer {p:?}: Server ID {server_id} is bound to {bound} in the store");
    }
    bindings.push((server_id, id));
    Ok(())
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

    #[test]
    fn a_reload_names_the_config_keys_that_changed_and_refuses_a_bad_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("enrpd.toml");
        std::fs::write(
            &path,
            "asap_listen = \"[::]:3864\"\nallow_loopback = true\n",
        )
        .expect("write");
        let before = read_config_table(&path).expect("valid");
        std::fs::write(
            &path,
            "asap_listen = \"[::]:3865\"\nallow_loopback = true\npeers = [\"b:9902\"]\n",
        )
        .expect("write");
        let after = read_config_table(&path).expect("valid");
        assert_eq!(changed_keys(&before, &after), ["asap_listen", "peers"]);
        assert!(changed_keys(&after, &after).is_empty());
        std::fs::write(&path, "asap_listn = \"[::]:3864\"\n").expect("write");
        let err = read_config_table(&path).expect_err("unknown key");
        assert!(format!("{err:#}").contains("asap_listn"), "{err:#}");
    }
}
