//! `enrpd run`'s options as one type (issue 24): [`RunConfig`] names every option once,
//! with its default; [`OPTIONS`] gives each its help. Its field is the config-file key, `--` plus the key in kebab case is the flag and
//! `ENRPD_` plus the key in upper case the environment variable (`peers` and
//! `legacy_peers` keep their singular flags `--peer` and `--legacy-peer`). The layers
//! (defaults < file < variables < flags) are merged by `enrpd`; every layer is read by
//! the same `Deserialize` here, so a value means the same wherever it is given.
//!
//! Durations take a humane string (`5s`, `250ms`, `1h`) or, as they always have, a bare
//! number in the unit the key names (`keep_alive_interval_ms = 5000`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use asap::addr::Endpoint;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::daemon::LegacyPeer;

/// Every option of `enrpd run` with its default (see the module doc for the names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The data directory made by `enrpd init`.
    #[serde(deserialize_with = "text")]
    pub data: PathBuf,
    /// The store `enrpd init` recorded (`sqlite://PATH`, `postgres://…`), to check: by
    /// default the recorded one is used.
    #[serde(deserialize_with = "optional_text")]
    pub store: Option<String>,
    /// Where to serve ASAP over TLS/TCP (spec §2: port 3864).
    pub asap_listen: SocketAddr,
    /// Where to serve ENRP over TLS/TCP for peer registrars (spec §2.1), or off.
    pub enrp_listen: Listen,
    /// Peer registrars, `HOST:PORT` or `HOST:PORT=spiffe://…`.
    #[serde(deserialize_with = "list")]
    pub peers: Vec<String>,
    /// Multicast ASAP_SERVER_ANNOUNCE to this group (spec §7.7), or off (D-5).
    #[serde(with = "optional_parsed")]
    pub announce: Option<SocketAddr>,
    /// The interface (its IPv4 address) the announces leave from.
    #[serde(with = "optional_parsed")]
    pub announce_interface: Option<Ipv4Addr>,
    /// The announces' multicast TTL.
    #[serde(deserialize_with = "number")]
    pub announce_ttl: u32,
    /// T6-Serverannounce (spec §10), also the presence period.
    pub announce_interval_ms: Millis,
    /// Multicast ENRP_PRESENCE to this group (spec §9.2), or off (D-5).
    #[serde(with = "optional_parsed")]
    pub announce_peers: Option<SocketAddr>,
    /// Learn peer registrars from multicast ENRP_PRESENCE on this group, or off (D-5).
    #[serde(with = "optional_parsed")]
    pub discover_peers: Option<SocketAddr>,
    /// Where to serve the admin API over HTTPS, or off.
    pub admin_listen: Listen,
    /// Endpoint keep-alive interval (spec §7.5).
    pub keep_alive_interval_ms: Millis,
    /// Endpoint keep-alive timeout (spec §7.5), also the connection-loss grace (§12.6).
    pub keep_alive_timeout_ms: Millis,
    /// PEER-HEARTBEAT-CYCLE (spec §9.5).
    pub peer_heartbeat_ms: Millis,
    /// MAX-TIME-LAST-HEARD (spec §9.5).
    pub peer_last_heard_ms: Millis,
    /// MAX-TIME-NO-RESPONSE (spec §9.5, §9.8).
    pub peer_no_response_ms: Millis,
    /// Takeover expiry (spec §9.8).
    pub takeover_expiry_ms: Millis,
    /// Mentor discovery timeout (spec §9.3).
    pub mentor_timeout_ms: Millis,
    /// Most PEs one ENRP peer may own here.
    #[serde(deserialize_with = "number")]
    pub max_pes_per_peer: usize,
    /// Refusal kinds audited individually per listener and second.
    #[serde(deserialize_with = "number")]
    pub refusal_audit_budget: u32,
    /// Handle resolutions per connection and second (0: no limit).
    #[serde(deserialize_with = "number")]
    pub rate_resolutions: u32,
    /// Registrations and deregistrations per connection and second (0: no limit).
    #[serde(deserialize_with = "number")]
    pub rate_registrations: u32,
    /// Endpoint unreachable reports per connection and second (0: no limit).
    #[serde(deserialize_with = "number")]
    pub rate_unreachable: u32,
    /// Connections from one IP address per listener.
    #[serde(deserialize_with = "number")]
    pub max_connections_per_ip: usize,
    /// Of those, connections still in their TLS handshake.
    #[serde(deserialize_with = "number")]
    pub max_handshakes_per_ip: usize,
    /// Authenticated ASAP connections of one identity.
    #[serde(deserialize_with = "number")]
    pub max_connections_per_identity: usize,
    /// Free space (MiB) the data directory must keep.
    #[serde(deserialize_with = "number")]
    pub min_free_mib: u64,
    /// Interval of signed audit checkpoints in the log; 0: none.
    pub checkpoint_log_secs: Secs,
    /// With a shared (PostgreSQL) store: interval of the full re-read of the control plane,
    /// the safety net under the change feed.
    pub fleet_resync_secs: Secs,
    /// Pools one identity may have created in one namespace.
    #[serde(deserialize_with = "number")]
    pub max_pools_per_identity: usize,
    /// Whether to serve SCTP.
    pub sctp: SctpMode,
    /// Where to serve ASAP over TLS/SCTP instead.
    #[serde(with = "endpoint")]
    pub asap_sctp_listen: Option<Endpoint>,
    /// Where to serve ENRP over TLS/SCTP instead.
    #[serde(with = "endpoint")]
    pub enrp_sctp_listen: Option<Endpoint>,
    /// INSECURE: plain-SCTP ASAP for legacy clients.
    #[serde(with = "endpoint")]
    pub legacy_asap_listen: Option<Endpoint>,
    /// INSECURE: plain-SCTP ENRP for legacy peers.
    #[serde(with = "endpoint")]
    pub legacy_enrp_listen: Option<Endpoint>,
    /// INSECURE: legacy ENRP peers, `sctp:IP:PORT=SERVERID`.
    #[serde(with = "legacy_peers")]
    pub legacy_peers: Vec<LegacyPeer>,
    /// The one namespace legacy clients may use.
    #[serde(deserialize_with = "optional_text")]
    pub legacy_namespace: Option<String>,
    /// Accept loopback addresses in PE user transports.
    #[serde(deserialize_with = "switch")]
    pub allow_loopback: bool,
    /// Do not require a PE's user addresses to be its connection's.
    #[serde(deserialize_with = "switch")]
    pub no_address_check: bool,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for RunConfig {
    fn default() -> Self {
        let ms = |n| Millis(Duration::from_millis(n));
        Self {
            data: PathBuf::from("enrpd-data"),
            store: None,
            asap_listen: SocketAddr::from(([0u16; 8], 3864)),
            enrp_listen: Listen(Some(SocketAddr::from(([0u16; 8], 9902)))),
            peers: Vec::new(),
            announce: None,
            announce_interface: None,
            announce_ttl: 1,
            announce_interval_ms: ms(1000),
            announce_peers: None,
            discover_peers: None,
            admin_listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 8443)))),
            keep_alive_interval_ms: ms(5000),
            keep_alive_timeout_ms: ms(5000),
            peer_heartbeat_ms: ms(30_000),
            peer_last_heard_ms: ms(61_000),
            peer_no_response_ms: ms(5_000),
            takeover_expiry_ms: ms(30_000),
            mentor_timeout_ms: ms(5_000),
            max_pes_per_peer: 250_000,
            refusal_audit_budget: 20,
            rate_resolutions: 100,
            rate_registrations: 100,
            rate_unreachable: 10,
            max_connections_per_ip: 1_000,
            max_handshakes_per_ip: 64,
            max_connections_per_identity: 256,
            min_free_mib: 64,
            checkpoint_log_secs: Secs(Duration::from_secs(3600)),
            fleet_resync_secs: Secs(Duration::from_secs(10)),
            max_pools_per_identity: 100,
            sctp: SctpMode::Auto,
            asap_sctp_listen: None,
            enrp_sctp_listen: None,
            legacy_asap_listen: None,
            legacy_enrp_listen: None,
            legacy_peers: Vec::new(),
            legacy_namespace: None,
            allow_loopback: false,
            no_address_check: false,
            log_format: LogFormat::Text,
        }
    }
}

/// Every option of [`RunConfig`], one row each: its key, how its flag takes it, its help
/// (what `enrpd run --help` shows). The flag is `--` plus the key in kebab case (unless
/// [`Takes::Repeated`] names it), the variable `ENRPD_` plus the key in upper case; the
/// help gets each default from [`RunConfig::default`], so that none is written twice.
pub const OPTIONS: &[(&str, Takes, &str)] = &[
    (
        "data",
        Takes::Value("DIR"),
        "The data directory made by `enrpd init`.",
    ),
    (
        "store",
        Takes::Value("URL"),
        "The store (`sqlite://PATH` or `postgres://…`, docs/STORE.md). `enrpd init --store` records it in the data directory and `run` uses the recorded one: given here, it must be the same (a registrar never opens another store than its own). Default: the recorded store, else the data directory's rsp.db.",
    ),
    (
        "asap_listen",
        Takes::Value("ADDR"),
        "Where to serve ASAP over TLS/TCP (spec §2: port 3864).",
    ),
    (
        "enrp_listen",
        Takes::Value("ADDR|off"),
        "Where to serve ENRP over TLS/TCP for peer registrars (spec §2.1: port 9902), or `off`.",
    ),
    (
        "peers",
        Takes::Repeated("peer", "HOST:PORT[=SPIFFE-ID]"),
        "A peer registrar's ENRP address, HOST:PORT (repeatable; the environment variable takes a comma-separated list). Peers need the `peer` grant. `HOST:PORT=spiffe://…` also binds the Server ID of that identity to it from the start: no other identity may use it (docs/ENRP-TRUST.md §4).",
    ),
    (
        "announce",
        Takes::Value("GROUP:PORT"),
        "Announce this registrar by multicast (ASAP_SERVER_ANNOUNCE, spec §7.7) to GROUP:PORT, conventionally 239.0.0.50:3863, every --announce-interval-ms, so that `rsp ... --discover GROUP:PORT` finds it. Off unless given (spec D-5). An announce is only a hint: clients still require this registrar's certificate (docs/PROTOCOL-EXTENSIONS.md).",
    ),
    (
        "announce_interface",
        Takes::Value("IPV4"),
        "The interface (its IPv4 address) the announces leave from, also the address announced when --asap-listen is a wildcard. Default: the route to the group decides, and a wildcard is announced as such (receivers use the datagram's source).",
    ),
    (
        "announce_ttl",
        Takes::Value("HOPS"),
        "The announces' multicast TTL, 1 to 255; 1 keeps them on the link.",
    ),
    (
        "announce_interval_ms",
        Takes::Value("DURATION"),
        "T6-Serverannounce: the mean time between two announces (and presences), each randomised ±25 % (spec §10). A duration or milliseconds.",
    ),
    (
        "announce_peers",
        Takes::Value("GROUP:PORT"),
        "Announce this registrar to peer registrars by multicast (ENRP_PRESENCE with its ENRP address, spec §9.2) to GROUP:PORT, conventionally 239.0.0.51:9901, every --announce-interval-ms, on --announce-interface with --announce-ttl. Needs --enrp-listen. Off unless given (spec D-5).",
    ),
    (
        "discover_peers",
        Takes::Value("GROUP:PORT"),
        "Learn peer registrars from their multicast presences on GROUP:PORT (what --announce-peers sends) and dial them as if named by a peer list: each must pass the ENRP mutual-TLS handshake as a registrar with the `peer` grant, exactly as a --peer; the address of one is handed to the dialer at most once a minute. Joined on --announce-interface. Off unless given (spec D-5).",
    ),
    (
        "admin_listen",
        Takes::Value("ADDR|off"),
        "Where to serve the admin API over HTTPS (ARCHITECTURE.md §7), or `off`.",
    ),
    (
        "keep_alive_interval_ms",
        Takes::Value("DURATION"),
        "Endpoint keep-alive interval (spec §7.5): a duration (`5s`, `250ms`) or milliseconds.",
    ),
    (
        "keep_alive_timeout_ms",
        Takes::Value("DURATION"),
        "Endpoint keep-alive timeout (spec §7.5); also the grace period of a lost connection (spec §12.6). A duration or milliseconds.",
    ),
    (
        "peer_heartbeat_ms",
        Takes::Value("DURATION"),
        "PEER-HEARTBEAT-CYCLE: a PRESENCE to every peer this often (spec §9.5). A duration or milliseconds.",
    ),
    (
        "peer_last_heard_ms",
        Takes::Value("DURATION"),
        "MAX-TIME-LAST-HEARD: a peer silent this long is probed (spec §9.5). A duration or milliseconds.",
    ),
    (
        "peer_no_response_ms",
        Takes::Value("DURATION"),
        "MAX-TIME-NO-RESPONSE: a probed or disconnected peer silent this long is dead, and its PEs are taken over (spec §9.5, §9.8). A duration or milliseconds.",
    ),
    (
        "takeover_expiry_ms",
        Takes::Value("DURATION"),
        "Takeover expiry: a takeover still missing acknowledgements is abandoned (spec §9.8). A duration or milliseconds.",
    ),
    (
        "mentor_timeout_ms",
        Takes::Value("DURATION"),
        "Mentor discovery timeout: a registrar started with peers serves alone after this long without a mentor's handle table (spec §9.3). A duration or milliseconds.",
    ),
    (
        "max_pes_per_peer",
        Takes::Value("N"),
        "Most PEs one ENRP peer may own in this registrar's handlespace; its PEs beyond are refused and audited (docs/ENRP-TRUST.md §3).",
    ),
    (
        "refusal_audit_budget",
        Takes::Value("N"),
        "Kinds of refusal (failed handshakes per source address, repeated refused requests) audited one record each per listener per second; more are counted into summary records (docs/SECURITY.md).",
    ),
    (
        "rate_resolutions",
        Takes::Value("N"),
        "Handle resolutions a connection may send per second (bursts of twice that; an identity ten times that over all its connections); more are answered with cause 0x6. 0: no limit.",
    ),
    (
        "rate_registrations",
        Takes::Value("N"),
        "Registrations and deregistrations a connection may send per second (as --rate-resolutions).",
    ),
    (
        "rate_unreachable",
        Takes::Value("N"),
        "Endpoint unreachable reports a connection may send per second (as --rate-resolutions; more are dropped).",
    ),
    (
        "max_connections_per_ip",
        Takes::Value("N"),
        "Connections from one IP address per listener (ASAP, ENRP, legacy); more are closed at once, counted and audited in aggregate.",
    ),
    (
        "max_handshakes_per_ip",
        Takes::Value("N"),
        "Of those, connections still in their TLS handshake.",
    ),
    (
        "max_connections_per_identity",
        Takes::Value("N"),
        "Authenticated ASAP connections of one identity at once; more are closed after the handshake and audited.",
    ),
    (
        "min_free_mib",
        Takes::Value("MIB"),
        "Free space (MiB) the data directory must keep: below it registrations are refused (cause 0x6) and admin writes too (507), resolutions and keep-alives go on, the state is logged and exported (`rsp_low_disk`); enrpd never exits for it.",
    ),
    (
        "checkpoint_log_secs",
        Takes::Value("DURATION"),
        "Interval of signed audit checkpoints written to the log (one JSON line, the same as `enrpd audit checkpoint` writes), so that log shipping anchors the chain's head elsewhere: a duration (`1h`) or seconds; 0: none.",
    ),
    (
        "fleet_resync_secs",
        Takes::Value("DURATION"),
        "With a shared PostgreSQL store: how often the registrar re-reads the whole control plane (trust domains, grants, revocations, CRLs, pool declarations, default namespaces, tokens) and applies what changed, the safety net under the change feed that applies a change within 1 s; a duration (`10s`) or seconds, at least 1 s.",
    ),
    (
        "max_pools_per_identity",
        Takes::Value("N"),
        "Pools one identity may have created in one namespace (that still exist); a registration creating one more is refused with cause 0x6.",
    ),
    (
        "sctp",
        Takes::Value("auto|on|off"),
        "SCTP, the transport RFC 5352/5353 require: `auto` serves ASAP and ENRP over TLS/SCTP at the TLS/TCP listeners' addresses and ports when the kernel has SCTP, `on` insists (start-up fails without it), `off` serves TCP only.",
    ),
    (
        "asap_sctp_listen",
        Takes::Value("IP:PORT[+IP:PORT...]"),
        "Where to serve ASAP over TLS/SCTP instead (one port, several addresses: multi-homed). Implies SCTP.",
    ),
    (
        "enrp_sctp_listen",
        Takes::Value("IP:PORT[+IP:PORT...]"),
        "Where to serve ENRP over TLS/SCTP instead. Implies SCTP.",
    ),
    (
        "legacy_asap_listen",
        Takes::Value("IP:PORT[+IP:PORT...]"),
        "INSECURE, for RSPLIB and other legacy clients only: also serve ASAP over plain SCTP here (spec: port 3863). Its clients are not authenticated: they are known by their address, confined to --legacy-namespace (required), and every message they send is audited as unauthenticated. Off unless given.",
    ),
    (
        "legacy_enrp_listen",
        Takes::Value("IP:PORT[+IP:PORT...]"),
        "INSECURE, for RSPLIB's rspregistrar only: also serve ENRP over plain SCTP here (spec: port 9901, PPID 12). Only --legacy-peer registrars are admitted (by address and Server ID, not authenticated), they speak and hear of --legacy-namespace (required) only, and what they do is audited as unauthenticated.",
    ),
    (
        "legacy_peers",
        Takes::Repeated("legacy-peer", "sctp:IP:PORT=SERVERID"),
        "INSECURE: a legacy ENRP peer (RSPLIB's rspregistrar) (repeatable; the Server ID as 0x11111111 or decimal): dialed over plain SCTP, and admitted on --legacy-enrp-listen (required) from that address with that Server ID.",
    ),
    (
        "legacy_namespace",
        Takes::Value("NAMESPACE"),
        "The one namespace legacy clients may use (it must exist; nothing else is open to them).",
    ),
    (
        "allow_loopback",
        Takes::Switch,
        "Accept loopback addresses in PE user transports (single-host setups and tests).",
    ),
    (
        "no_address_check",
        Takes::Switch,
        "Do not require every address of a PE's user transport to be one of its connection's (its SCTP association's peer addresses) (behind NAT or a proxy).",
    ),
    ("log_format", Takes::Value("text|json"), "Log format."),
];

/// How a flag takes its option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takes {
    /// `--key VALUE` (the value's name in the help).
    Value(&'static str),
    /// `--FLAG VALUE`, repeatable (a list): the flag's name, the value's name.
    Repeated(&'static str, &'static str),
    /// `--key` alone: true.
    Switch,
}

/// A configuration that does not hold together (checked after the layers are merged,
/// since the parts may come from different layers).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key that needs another one set.
    #[error("{key} needs {needs}")]
    Needs {
        /// The key given.
        key: &'static str,
        /// The key it needs.
        needs: &'static str,
    },
    /// A value out of its range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key given.
        key: &'static str,
        /// What it must be.
        reason: &'static str,
    },
}

impl RunConfig {
    /// The config-file keys, sorted (also the variables' names after
    /// `ENRPD_`).
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(Self::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// The options that only make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let needs = |key, needs| Err(ConfigError::Needs { key, needs });
        if self.legacy_asap_listen.is_some() && self.legacy_namespace.is_none() {
            return needs("legacy_asap_listen", "legacy_namespace");
        }
        if self.legacy_enrp_listen.is_some() && self.legacy_namespace.is_none() {
            return needs("legacy_enrp_listen", "legacy_namespace");
        }
        if !self.legacy_peers.is_empty() && self.legacy_enrp_listen.is_none() {
            return needs("legacy_peers", "legacy_enrp_listen");
        }
        if !(1..=255).contains(&self.announce_ttl) {
            return Err(ConfigError::Invalid {
                key: "announce_ttl",
                reason: "1 to 255",
            });
        }
        // Zero would announce in a busy loop.
        if self.announce_interval_ms.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "announce_interval_ms",
                reason: "at least 100 ms",
            });
        }
        for (key, group, example) in [
            (
                "announce",
                self.announce,
                "a multicast group such as 239.0.0.50:3863",
            ),
            (
                "announce_peers",
                self.announce_peers,
                "a multicast group such as 239.0.0.51:9901",
            ),
            (
                "discover_peers",
                self.discover_peers,
                "a multicast group such as 239.0.0.51:9901",
            ),
        ] {
            if group.is_some_and(|g| !g.ip().is_multicast()) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: example,
                });
            }
        }
        if self.announce_peers.is_some() && self.enrp_listen.0.is_none() {
            return needs("announce_peers", "enrp_listen");
        }
        // Zero would re-read the shared store in a busy loop.
        if self.fleet_resync_secs.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "fleet_resync_secs",
                reason: "at least 1 s",
            });
        }
        Ok(())
    }
}

/// A listening address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|_| format!("{s:?} is neither an address (127.0.0.1:8443) nor `off`"))
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.collect_str(&a),
            None => s.serialize_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A duration whose bare numbers are milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub Duration);

/// A duration whose bare numbers are seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.as_secs())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor(Duration::from_millis))
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor(Duration::from_secs))
            .map(Self)
    }
}

/// A number in the key's unit, or a humane duration (`250ms`, `5s`, `2m`).
struct DurationVisitor(fn(u64) -> Duration);

impl de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as `5s` or `250ms`, or a number in the key's unit")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok((self.0)(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(self.0)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        match v.trim().parse::<u64>() {
            Ok(n) => Ok((self.0)(n)),
            Err(_) => humantime::parse_duration(v)
                .map_err(|e| E::custom(format_args!("{v:?} is no duration: {e}"))),
        }
    }
}

/// Whether to serve SCTP (`--sctp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SctpMode {
    /// Where the kernel has it.
    Auto,
    /// Start-up fails without it.
    On,
    /// TCP only.
    Off,
}

/// The log format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// A string, also where a layer read a number or a boolean (an environment variable
/// `ENRPD_DATA=2024` is the directory `2024`).
struct Text;

impl de::Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

fn text<'de, D: Deserializer<'de>, T: From<String>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Text).map(T::from)
}

fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct OptionalText;
    impl<'de> de::Visitor<'de> for OptionalText {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            text(d).map(Some)
        }
    }
    d.deserialize_option(OptionalText)
}

/// A list (file), or one comma-separated string (an environment variable).
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct List;
    impl<'de> de::Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_any(List)
}

/// A number, also written as text (a flag or a variable).
fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + TryFrom<u64>,
{
    struct Number<T>(std::marker::PhantomData<T>);
    impl<T: std::str::FromStr + TryFrom<u64>> de::Visitor<'_> for Number<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            u64::try_from(v)
                .ok()
                .and_then(|v| T::try_from(v).ok())
                .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(Number(std::marker::PhantomData))
}

/// A boolean, also as a flag or a variable takes it: `0`, `false`, `no`, `off`, `n`,
/// `f` or nothing is false, any other text true (as enrpd's variables always were).
fn switch<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct Switch;
    impl de::Visitor<'_> for Switch {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true or false")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            Ok(v != 0)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            Ok(v != 0)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            Ok(!matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "false" | "no" | "off" | "0" | "n" | "f" | ""
            ))
        }
    }
    d.deserialize_any(Switch)
}

/// `IP:PORT[+IP:PORT...]`, with or without `sctp:`.
fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s.trim_start_matches("sctp:")).map_err(|e| format!("{s:?}: {e}"))
}

mod endpoint {
    use super::{Deserialize as _, Deserializer, Endpoint, Serializer, de};

    pub(super) fn serialize<S: Serializer>(e: &Option<Endpoint>, s: S) -> Result<S::Ok, S::Error> {
        match e {
            Some(e) => s.collect_str(e),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Endpoint>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        super::parse_endpoint(&text)
            .map(Some)
            .map_err(de::Error::custom)
    }
}

/// An optional value given as text (`239.0.0.50:3863`), parsed by its `FromStr`.
mod optional_parsed {
    use super::{Deserialize as _, Deserializer, Serializer, de};
    use std::fmt::Display;
    use std::str::FromStr;

    pub(super) fn serialize<S: Serializer, T: Display>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e| de::Error::custom(format!("{text:?}: {e}")))
    }
}

mod legacy_peers {
    use super::{Deserializer, LegacyPeer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(peers: &[LegacyPeer], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            peers
                .iter()
                .map(|p| format!("sctp:{}={}", p.at, p.server_id)),
        )
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<LegacyPeer>, D::Error> {
        super::list(d)?
            .iter()
            .map(|p| p.parse().map_err(de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: serde_json::Value) -> Result<RunConfig, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_take_a_humane_string_or_a_number_in_the_keys_unit() {
        let c = parse(serde_json::json!({
            "keep_alive_interval_ms": "250ms",
            "keep_alive_timeout_ms": 1500,
            "peer_heartbeat_ms": "2m",
            "checkpoint_log_secs": 60,
            "mentor_timeout_ms": "7000",
        }))
        .expect("valid");
        assert_eq!(c.keep_alive_interval_ms.0, Duration::from_millis(250));
        assert_eq!(c.keep_alive_timeout_ms.0, Duration::from_millis(1500));
        assert_eq!(c.peer_heartbeat_ms.0, Duration::from_secs(120));
        assert_eq!(c.checkpoint_log_secs.0, Duration::from_secs(60));
        assert_eq!(c.mentor_timeout_ms.0, Duration::from_secs(7));
        let err = parse(serde_json::json!({"keep_alive_interval_ms": "5 parsecs"}))
            .expect_err("no duration");
        assert!(err.contains("5 parsecs"), "{err}");
        assert!(parse(serde_json::json!({"peer_heartbeat_ms": -1})).is_err());
    }

    #[test]
    fn the_defaults_are_enrpds_and_serialize_to_what_they_parse_from() {
        let d = RunConfig::default();
        let back: RunConfig =
            serde_json::from_value(serde_json::to_value(&d).expect("serialize")).expect("parse");
        assert_eq!(back, d);
        let keys = RunConfig::keys();
        assert_eq!(keys.len(), 41, "{keys:?}");
        assert!(keys.iter().any(|k| k == "keep_alive_interval_ms"));
        assert_eq!(d.validate(), Ok(()));
    }

    /// Multicast announces: off by default (spec D-5); a group that is not multicast, a
    /// TTL of 0 and a busy-loop period are refused with the key named.
    #[test]
    fn announce_is_off_by_default_and_checked() {
        let d = RunConfig::default();
        assert_eq!((d.announce, d.announce_ttl), (None, 1));
        assert_eq!(d.announce_interval_ms.0, Duration::from_secs(1));
        let c = parse(serde_json::json!({
            "announce": "239.0.0.50:3863", "announce_interface": "10.0.0.1",
            "announce_ttl": "4", "announce_interval_ms": "250ms"
        }))
        .expect("parse");
        assert_eq!(c.announce, Some("239.0.0.50:3863".parse().expect("addr")));
        assert_eq!(c.announce_interface, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!((c.announce_ttl, c.validate()), (4, Ok(())));
        let invalid =
            |v: serde_json::Value| parse(v).expect("parse").validate().expect_err("refused");
        assert!(matches!(
            invalid(serde_json::json!({"announce": "10.0.0.1:3863"})),
            ConfigError::Invalid {
                key: "announce",
                ..
            }
        ));
        assert!(matches!(
            invalid(serde_json::json!({"announce_ttl": 0})),
            ConfigError::Invalid {
                key: "announce_ttl",
                ..
            }
        ));
        assert!(matches!(
            invalid(serde_json::json!({"announce_interval_ms": "1ms"})),
            ConfigError::Invalid {
                key: "announce_interval_ms",
                ..
            }
        ));
        assert!(matches!(
            invalid(serde_json::json!({"discover_peers": "10.0.0.1:9901"})),
            ConfigError::Invalid {
                key: "discover_peers",
                ..
            }
        ));
        assert_eq!(
            invalid(serde_json::json!({"announce_peers": "239.0.0.51:9901", "enrp_listen": "off"})),
            ConfigError::Needs {
                key: "announce_peers",
                needs: "enrp_listen"
            }
        );
        let err = parse(serde_json::json!({"announce": "nowhere"})).expect_err("no address");
        assert!(err.contains("nowhere"), "{err}");
    }

    #[test]
    fn every_option_has_a_row_and_every_row_an_option() {
        let keys = RunConfig::keys();
        let mut rows: Vec<&str> = OPTIONS.iter().map(|(k, ..)| *k).collect();
        rows.sort_unstable();
        assert_eq!(keys, rows);
    }

    #[test]
    fn legacy_options_need_their_namespace_and_listener() {
        let c = parse(serde_json::json!({"legacy_peers": "sctp:127.0.0.1:9901=0x11111111"}))
            .expect("parse");
        assert_eq!(c.legacy_peers.len(), 1);
        assert_eq!(
            c.validate(),
            Err(ConfigError::Needs {
                key: "legacy_peers",
                needs: "legacy_enrp_listen"
            })
        );
        let c =
            parse(serde_json::json!({"legacy_asap_listen": "sctp:127.0.0.1:3863"})).expect("parse");
        assert!(c.validate().is_err());
        assert!(parse(serde_json::json!({"legacy_peers": ["sctp:127.0.0.1:9901"]})).is_err());
    }

    #[test]
    fn the_fleet_resync_interval_is_at_least_a_second() {
        let c = parse(serde_json::json!({"fleet_resync_secs": "2s"})).expect("parse");
        assert_eq!(c.fleet_resync_secs.0, Duration::from_secs(2));
        assert_eq!(c.validate(), Ok(()));
        let c = parse(serde_json::json!({"fleet_resync_secs": 0})).expect("parse");
        assert_eq!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "fleet_resync_secs",
                reason: "at least 1 s"
            })
        );
    }
}
