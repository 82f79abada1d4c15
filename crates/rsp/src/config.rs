//! `rsp`'s identity, trust and registrar options as one configuration (issue 24), as
//! `enrp::config` is for `enrpd run`: [`OPTIONS`] defines each option once (its config-file
//! key, flag, default and help; the environment variable is `RSP_` plus the flag in upper
//! case, e.g. `--registrar` and `RSP_REGISTRAR` for the key `registrars`). The layers
//! (defaults < `--config` file < `RSP_*` variables < flags) are merged by figment and read
//! by [`Options`]' one `Deserialize`, so a value means the same wherever it is given.
//! Relative paths in the file are from the file's directory.
//!
//! A command's own options ([`PE_OPTIONS`], [`RESOLVE_OPTIONS`], [`GATEWAY_OPTIONS`]) are
//! layered the same way, each [`Table`] defined once; in the file they sit under the
//! command's table (`[pe]`, `[resolve]`, `[gateway]`), so that one file serves every
//! command.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use asap::addr::TransportAddr;
use asap::client::card::Alternates;
use asap::client::check::Check;
use asap::client::forward::Target;
use asap::policy::{DistanceValues, LeastUsedDistance};
use asap::wire::param::{Labels, Policy, PolicyType};
use figment::value::{Dict, Value, magic::RelativePathBuf};
use identity::IdentityPattern;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, de};

use crate::services::Service;

/// How an option's flag takes its value.
#[derive(Clone, Copy)]
pub(crate) enum Takes {
    /// One value, named so in the help.
    Value(&'static str),
    /// Repeatable, or comma-separated.
    Repeated(&'static str),
    /// A switch (`--insecure-legacy`); its variable is true unless 0, false, no, off, n, f
    /// or empty.
    Switch,
}

/// One option: its config-file key, its flag (without `--`), how the flag takes it, its
/// default (as it would be written in a flag), its help.
pub(crate) struct Opt {
    pub(crate) key: &'static str,
    pub(crate) flag: &'static str,
    pub(crate) takes: Takes,
    pub(crate) default: Option<&'static str>,
    pub(crate) help: &'static str,
}

impl Opt {
    /// `RSP_` plus the flag in upper case: `RSP_REGISTRAR_ID` for `--registrar-id`.
    pub(crate) fn env(&self) -> String {
        format!("RSP_{}", self.flag.replace('-', "_").to_uppercase())
    }
}

/// Every option of [`Options`], each once.
pub(crate) const OPTIONS: &[Opt] = &[
    Opt {
        key: "cert",
        flag: "cert",
        takes: Takes::Value("FILE"),
        default: None,
        help: "This identity's certificate chain (PEM), e.g. pki/pe-echo-1.pem. Required, here or in the config file, except with --insecure-legacy when every hop is plain text (SCTP registrars only; for `rsp pe`, an SCTP --listen and no --asap-listen).",
    },
    Opt {
        key: "key",
        flag: "key",
        takes: Takes::Value("FILE"),
        default: None,
        help: "Its private key (PEM); default: the certificate's path with .key.",
    },
    Opt {
        key: "ca",
        flag: "ca",
        takes: Takes::Value("FILE"),
        default: Some("pki/ca.pem"),
        help: "The trust bundle of the local trust domain.",
    },
    Opt {
        key: "crl",
        flag: "crl",
        takes: Takes::Value("FILE"),
        default: None,
        help: "The trust domain's CRLs (PEM, as `rsp-pki` writes them): peers whose certificate, or any certificate of whose chain, they list are refused, registrar, PE and PU alike. Default: crl.pem beside --ca when it exists.",
    },
    Opt {
        key: "registrars",
        flag: "registrar",
        takes: Takes::Repeated("ADDR"),
        // 127.0.0.1:3864 unless --discover (Options::registrars_or_default).
        default: None,
        help: "Registrars, tried in order; repeat the flag or separate with commas. IP:PORT for ASAP over TLS/TCP, sctp:IP:PORT[+IP:PORT...] for ASAP over TLS/SCTP. Default: 127.0.0.1:3864, or none with --discover.",
    },
    Opt {
        key: "discover",
        flag: "discover",
        takes: Takes::Value("GROUP:PORT"),
        default: None,
        help: "Also learn registrars from their multicast announces on GROUP:PORT (ASAP_SERVER_ANNOUNCE, spec §7.7; conventionally 239.0.0.50:3863, what `enrpd run --announce` sends), tried after any --registrar. An announced registrar is only an address to try: it must pass the same handshake (--registrar-id) as a configured one; one whose certificate is not a registrar's is not tried again for 5 s, doubling to 5 min (one that does not answer: 1 s, doubling to 30 s). Off unless given.",
    },
    Opt {
        key: "discover_timeout",
        flag: "discover-timeout",
        takes: Takes::Value("DURATION"),
        default: Some("10s"),
        help: "With --discover and no --registrar: how long to wait at start for a first announce before giving up.",
    },
    Opt {
        key: "discover_interface",
        flag: "discover-interface",
        takes: Takes::Value("IPV4"),
        default: None,
        help: "With --discover: the interface (its IPv4 address) to join the group on. Default: the one the route to the group names.",
    },
    Opt {
        key: "insecure_legacy",
        flag: "insecure-legacy",
        takes: Takes::Switch,
        // Off when not given (bool's default).
        default: None,
        help: "INSECURE, for legacy registrars (RSPLIB's rspregistrar) only: talk to the SCTP registrars in plain text, with no authentication of either side, so that anyone who answers at their address can swallow registrations and forge resolutions. A PE also serves its legacy pool users (rspterminal) in plain text over SCTP.",
    },
    Opt {
        key: "namespace",
        flag: "namespace",
        takes: Takes::Value("NAMESPACE"),
        default: None,
        help: "The namespace (default: the identity's default namespace).",
    },
    Opt {
        key: "registrar_ids",
        flag: "registrar-id",
        takes: Takes::Repeated("PATTERN"),
        default: None,
        help: "Whom to accept as registrar: a SPIFFE ID pattern such as spiffe://acme.test/registrar/enrp-* (repeat the flag or separate with commas). Default: spiffe://<trusted domain>/registrar/*. A registrar presenting another identity (a PE certificate, say) fails the handshake.",
    },
];

/// `rsp pe`'s own options (`[pe]` in the config file).
pub(crate) const PE_OPTIONS: &[Opt] = &[
    Opt {
        key: "serve",
        flag: "serve",
        takes: Takes::Value("SERVICE"),
        default: Some("echo"),
        help: "The service to offer: echo (each line comes back), discard, daytime, chargen, or counter (a session whose running count the PE hands the PU as an ASAP cookie, so that it survives a failover; needs --cookie-key).",
    },
    Opt {
        key: "policy",
        flag: "policy",
        takes: Takes::Value("POLICY"),
        default: Some("rr"),
        help: "Selection policy and this PE's values: rr, wrr:W, rand, wrand:W, pri:P, lu:L, lud:L:D, plu:L:D, rlu:L (loads in percent), least-used-distance:L:P (load L%, penalty P% of load per ms of the round trip the registrar measures, default 1), or a private type 0xff000000-0xfffffffe with its values in hex (0xff000001:0a0b; docs/PROTOCOL-EXTENSIONS.md).",
    },
    Opt {
        key: "listen",
        flag: "listen",
        takes: Takes::Value("ADDR"),
        default: Some("127.0.0.1:0"),
        help: "Where to serve (port 0: any free port): IP:PORT over TLS/TCP, or sctp:IP:PORT[+IP:PORT...] over SCTP (a multi-homed PE registers every address).",
    },
    Opt {
        key: "registration_life",
        flag: "registration-life",
        takes: Takes::Value("DURATION"),
        default: Some("5m"),
        help: "Registration Life (spec §4.4): a duration (`5m`, `90s`) or seconds.",
    },
    Opt {
        key: "cookie_key",
        flag: "cookie-key",
        takes: Takes::Value("FILE"),
        default: None,
        help: "The pool's cookie key: a file of at least 32 secret bytes shared by the pool's PEs (e.g. `head -c 32 /dev/urandom > pool.key`). Needed by --serve counter and --session-channel.",
    },
    Opt {
        key: "cookie_lifetime",
        flag: "cookie-lifetime",
        takes: Takes::Value("DURATION"),
        default: Some("10m"),
        help: "How long a session cookie stays valid: a duration (`10m`, `90s`) or seconds.",
    },
    Opt {
        key: "capacity",
        flag: "capacity",
        takes: Takes::Value("N"),
        default: None,
        help: "With an adaptive policy (lu, lud, plu, rlu, least-used-distance): report load = open client sessions / N, re-registering when it changes (at most 4 times a second), so that the registrar sends PUs to the least loaded PE.",
    },
    Opt {
        key: "asap_listen",
        flag: "asap-listen",
        takes: Takes::Value("ADDR"),
        default: None,
        help: "Also listen for registrars here (ASAP over TLS, registrar identities only), so that one taking over from a dead home registrar can adopt this PE (spec §7.4, §12.6). Port 0: any free port.",
    },
    Opt {
        key: "business_card",
        flag: "business-card",
        takes: Takes::Value("self|auto|PE_ID,..."),
        default: Some("auto"),
        help: "Which PEs the business card (sent at the start of each --serve counter or --session-channel session, spec §7.8) names after this PE, for a PU to fail over to in that order: `auto`, the pool's other PEs as this PE resolves them (refreshed every 5 s, at most 8); `self`, none; or PE IDs (`0x1a2b3c4d,0x5e6f7a8b`, at most 8) in that order.",
    },
    Opt {
        key: "forward",
        flag: "forward",
        takes: Takes::Value("HOST:PORT|unix:PATH"),
        default: None,
        help: "Instead of a demo service: carry each PU's session, its TLS terminated here, to this existing server over plain TCP (HOST:PORT) or a Unix socket (unix:/run/app.sock), both ways, half-close kept. The registered transport stays this PE's --listen.",
    },
    Opt {
        key: "session_channel",
        flag: "session-channel",
        takes: Takes::Switch,
        default: None,
        help: "With --forward: carry each session as frames (`u32 PPID | u32 length | payload`, spec §12.7) instead of a byte stream, registered as data plus control. Data frames (PPID ≠ 11) pass unchanged; the server's ASAP Cookie (PPID 11) holds its plain session state, which this PE seals with --cookie-key for the PU, and a PU's Cookie Echo reaches the server opened, as plain state (forged, expired or another PU's: refused, the session closed). Needs --cookie-key.",
    },
    Opt {
        key: "allow_pu",
        flag: "allow-pu",
        takes: Takes::Repeated("PATTERN"),
        default: None,
        help: "Which pool users may open a session here: SPIFFE ID patterns (spiffe://acme.test/pu/web-*; repeat the flag or separate with commas). Default: spiffe://<trusted domain>/pu/* and spiffe://<trusted domain>/gateway/*, the identities the registrar's default grants let resolve. Others are refused after the handshake, logged with their identity and counted.",
    },
    Opt {
        key: "max_sessions",
        flag: "max-sessions",
        takes: Takes::Value("N"),
        default: Some("256"),
        help: "With --forward: the most sessions at once; a PU beyond them is closed before its handshake (two descriptors per session: raise `ulimit -n` with it).",
    },
    Opt {
        key: "connect_timeout",
        flag: "connect-timeout",
        takes: Takes::Value("DURATION"),
        default: Some("5s"),
        help: "With --forward: how long reaching the server may take; a server that refuses or does not answer in time closes the PU's session at once.",
    },
    Opt {
        key: "check",
        flag: "check",
        takes: Takes::Value("tcp|http:/PATH|exec:CMD"),
        default: None,
        help: "With --forward: a health check of the server. `tcp` connects to it, `http:/healthz` sends GET /healthz over HTTP/1.1 and expects 2xx, `exec:CMD` runs `sh -c CMD` and expects exit 0. After --fall failures in a row the PE deregisters; after --rise successes it registers again with the same PE ID. Default: no check, always registered.",
    },
    Opt {
        key: "check_interval",
        flag: "check-interval",
        takes: Takes::Value("DURATION"),
        default: Some("5s"),
        help: "Time between two health checks.",
    },
    Opt {
        key: "check_timeout",
        flag: "check-timeout",
        takes: Takes::Value("DURATION"),
        default: Some("2s"),
        help: "How long one health check may take; longer is a failure.",
    },
    Opt {
        key: "rise",
        flag: "rise",
        takes: Takes::Value("N"),
        default: Some("2"),
        help: "Passing checks in a row that bring a failing server back into the pool.",
    },
    Opt {
        key: "fall",
        flag: "fall",
        takes: Takes::Value("N"),
        default: Some("3"),
        help: "Failing checks in a row that take the server out of the pool.",
    },
    Opt {
        key: "drain_timeout",
        flag: "drain-timeout",
        takes: Takes::Value("DURATION"),
        default: Some("30s"),
        help: "On SIGUSR1 the PE drains: it deregisters (the registrar no longer returns it), refuses new sessions, and exits once the open ones have ended or after this long.",
    },
    Opt {
        key: "stop_grace",
        flag: "stop-grace",
        takes: Takes::Value("DURATION"),
        default: Some("5s"),
        help: "On SIGTERM the PE deregisters at once, refuses new sessions and serves the open ones for at most this long before it exits (0: exit at once). A second SIGTERM or Ctrl-C ends it at once.",
    },
    Opt {
        key: "advertise",
        flag: "advertise",
        takes: Takes::Value("HOST:PORT"),
        default: None,
        help: "Register this TCP address, where an existing server terminates the PUs' TLS itself, instead of serving or forwarding: the PE only keeps the registration (HOST must be this host's address towards the registrar). PUs insist on the server's certificate carrying --serving-identity.",
    },
    Opt {
        key: "serving_identity",
        flag: "serving-identity",
        takes: Takes::Value("SPIFFE-ID"),
        default: None,
        help: "With --advertise: the SPIFFE ID of the server's certificate. The registrar accepts only the PE's own identity or one below its path (spiffe://acme.test/pe/web-1/nginx for the PE spiffe://acme.test/pe/web-1). Default: the PE's own.",
    },
    Opt {
        key: "control",
        flag: "control",
        takes: Takes::Value("PATH"),
        default: None,
        help: "A Unix socket (mode 0600; only this user or root may connect) where `rsp pe drain --control PATH` drains this PE and `rsp pe status --control PATH` shows its state. Default: none (SIGUSR1 still drains).",
    },
    Opt {
        key: "labels",
        flag: "label",
        takes: Takes::Repeated("KEY=VALUE"),
        default: None,
        help: "A label registered with this PE, for policies that select by label (docs/PROTOCOL-EXTENSIONS.md); repeat the flag or separate with commas. At most 16; keys 1-32 bytes of a-z A-Z 0-9 . _ - /, values at most 64 bytes of printable ASCII.",
    },
];

/// `rsp resolve`'s own options (`[resolve]` in the config file).
pub(crate) const RESOLVE_OPTIONS: &[Opt] = &[
    Opt {
        key: "items",
        flag: "items",
        takes: Takes::Value("N"),
        default: None,
        help: "How many PEs to ask for.",
    },
    Opt {
        key: "json",
        flag: "json",
        takes: Takes::Switch,
        default: None,
        help: "Print JSON.",
    },
    Opt {
        key: "hints",
        flag: "hint",
        takes: Takes::Repeated("KEY=VALUE"),
        default: None,
        help: "A hint sent with the resolution for the pool's policy, matched against PE labels by policies that read them (docs/PROTOCOL-EXTENSIONS.md); repeat the flag or separate with commas. Same bounds as rsp pe --label.",
    },
];

/// `rsp gateway`'s own options (`[gateway]` in the config file).
pub(crate) const GATEWAY_OPTIONS: &[Opt] = &[Opt {
    key: "listen",
    flag: "listen",
    takes: Takes::Value("ADDR"),
    default: None,
    help: "Where plain TCP clients connect (IP:PORT). Required, here or in the config file.",
}];

/// A table of options and where it sits in the config file: at the top (the shared
/// ones) or under `[SECTION]` (a command's own).
pub(crate) trait Table: Clone + Default + std::fmt::Debug + Send + Sync + 'static {
    const SECTION: Option<&'static str>;
    const OPTIONS: &'static [Opt];
    /// What the options merge into.
    type Options: DeserializeOwned;
}

/// [`OPTIONS`]: identity, trust and registrars, shared by every command.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shared;
/// [`PE_OPTIONS`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Pe;
/// [`RESOLVE_OPTIONS`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Resolve;
/// [`GATEWAY_OPTIONS`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Gateway;

impl Table for Shared {
    const SECTION: Option<&'static str> = None;
    const OPTIONS: &'static [Opt] = OPTIONS;
    type Options = Options;
}
impl Table for Pe {
    const SECTION: Option<&'static str> = Some("pe");
    const OPTIONS: &'static [Opt] = PE_OPTIONS;
    type Options = PeOptions;
}
impl Table for Resolve {
    const SECTION: Option<&'static str> = Some("resolve");
    const OPTIONS: &'static [Opt] = RESOLVE_OPTIONS;
    type Options = ResolveOptions;
}
impl Table for Gateway {
    const SECTION: Option<&'static str> = Some("gateway");
    const OPTIONS: &'static [Opt] = GATEWAY_OPTIONS;
    type Options = GatewayOptions;
}

/// `rsp pe`'s options of [`PE_OPTIONS`], merged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeOptions {
    #[serde(deserialize_with = "service")]
    pub(crate) serve: Service,
    #[serde(deserialize_with = "policy_of")]
    pub(crate) policy: Policy,
    #[serde(deserialize_with = "parsed")]
    pub(crate) listen: TransportAddr,
    #[serde(deserialize_with = "duration")]
    pub(crate) registration_life: Duration,
    pub(crate) cookie_key: Option<RelativePathBuf>,
    #[serde(deserialize_with = "duration")]
    pub(crate) cookie_lifetime: Duration,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) capacity: Option<NonZeroUsize>,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) asap_listen: Option<SocketAddr>,
    #[serde(deserialize_with = "parsed")]
    pub(crate) business_card: Alternates,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) forward: Option<Target>,
    #[serde(default)]
    pub(crate) session_channel: bool,
    #[serde(default, deserialize_with = "parsed_list")]
    pub(crate) allow_pu: Vec<IdentityPattern>,
    #[serde(deserialize_with = "parsed")]
    pub(crate) max_sessions: NonZeroUsize,
    #[serde(deserialize_with = "duration")]
    pub(crate) connect_timeout: Duration,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) check: Option<Check>,
    #[serde(deserialize_with = "duration")]
    pub(crate) check_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) check_timeout: Duration,
    #[serde(deserialize_with = "parsed")]
    pub(crate) rise: NonZeroU32,
    #[serde(deserialize_with = "parsed")]
    pub(crate) fall: NonZeroU32,
    #[serde(deserialize_with = "duration")]
    pub(crate) drain_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) stop_grace: Duration,
    #[serde(default, deserialize_with = "labels_of")]
    pub(crate) labels: Labels,
    pub(crate) control: Option<RelativePathBuf>,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) serving_identity: Option<String>,
}

/// `rsp resolve`'s options of [`RESOLVE_OPTIONS`], merged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveOptions {
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) items: Option<u32>,
    #[serde(default)]
    pub(crate) json: bool,
    #[serde(default, deserialize_with = "labels_of")]
    pub(crate) hints: Labels,
}

/// `rsp gateway`'s options of [`GATEWAY_OPTIONS`], merged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayOptions {
    #[serde(default, deserialize_with = "some_parsed")]
    listen: Option<SocketAddr>,
}

impl GatewayOptions {
    /// `--listen`, which has no default.
    pub(crate) fn listen(&self) -> Result<SocketAddr, String> {
        self.listen.ok_or_else(|| {
            "rsp gateway needs --listen ADDR (or RSP_LISTEN, or listen under [gateway] in the config file)".to_owned()
        })
    }
}

/// The options, merged (see the module doc). Paths from the config file are relative to
/// its directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    pub(crate) cert: Option<RelativePathBuf>,
    pub(crate) key: Option<RelativePathBuf>,
    pub(crate) ca: RelativePathBuf,
    pub(crate) crl: Option<RelativePathBuf>,
    #[serde(default, deserialize_with = "parsed_list")]
    pub(crate) registrars: Vec<TransportAddr>,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) discover: Option<SocketAddr>,
    #[serde(deserialize_with = "duration")]
    pub(crate) discover_timeout: Duration,
    #[serde(default, deserialize_with = "some_parsed")]
    pub(crate) discover_interface: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub(crate) insecure_legacy: bool,
    pub(crate) namespace: Option<String>,
    #[serde(default, deserialize_with = "parsed_list")]
    pub(crate) registrar_ids: Vec<IdentityPattern>,
    // The commands' own tables, read by their own [`Table`]s.
    #[serde(default, rename = "pe")]
    _pe: Option<de::IgnoredAny>,
    #[serde(default, rename = "resolve")]
    _resolve: Option<de::IgnoredAny>,
    #[serde(default, rename = "gateway")]
    _gateway: Option<de::IgnoredAny>,
}

/// The registrar when none is given and none is discovered.
pub(crate) const DEFAULT_REGISTRAR: &str = "127.0.0.1:3864";

impl Options {
    /// The registrars: as given; none given, [`DEFAULT_REGISTRAR`], unless --discover
    /// is to find them (then none: only announced ones).
    pub(crate) fn registrars_or_default(&self) -> Vec<TransportAddr> {
        if self.registrars.is_empty() && self.discover.is_none() {
            vec![DEFAULT_REGISTRAR.parse().expect("a valid address")]
        } else {
            self.registrars.clone()
        }
    }
}

/// The options of table `T` given as flags (the top layer); `clap` fills it from
/// `T::OPTIONS`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flags<T = Shared>(Dict, PhantomData<T>);

impl<T: Table> clap::Args for Flags<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(T::OPTIONS.iter().map(|o| {
            let mut help = o.help.to_owned();
            if let Some(d) = o.default {
                help.push_str(&format!(" [default: {d}]"));
            }
            help.push_str(&format!(" [env: {}]", o.env()));
            let arg = clap::Arg::new(o.key).long(o.flag).help(help);
            match o.takes {
                Takes::Value(name) => arg.value_name(name).action(clap::ArgAction::Set),
                Takes::Repeated(name) => arg
                    .value_name(name)
                    .value_delimiter(',')
                    .action(clap::ArgAction::Append),
                Takes::Switch => arg.action(clap::ArgAction::SetTrue),
            }
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl<T: Table> clap::FromArgMatches for Flags<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Dict::new();
        for o in T::OPTIONS {
            if matches.value_source(o.key) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let values = || {
                matches
                    .get_many::<String>(o.key)
                    .into_iter()
                    .flatten()
                    .map(|v| Value::from(v.clone()))
            };
            let value = match o.takes {
                Takes::Switch => Value::from(true),
                Takes::Repeated(_) => Value::from(values().collect::<Vec<_>>()),
                Takes::Value(_) => match values().next() {
                    Some(v) => v,
                    None => continue,
                },
            };
            flags.insert(o.key.to_owned(), value);
        }
        Ok(Self(flags, PhantomData))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// A layer of values as written (the defaults, the variables, the flags).
struct Layer {
    name: &'static str,
    values: Dict,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.values.clone()))
    }
}

const DEFAULTS: &str = "the defaults";
const VARIABLES: &str = "the RSP_ variables";
const FLAGS: &str = "the command line";

/// The `[SECTION]` table of the config file as a layer of its own, its keys at the top
/// (the other tables and keys are another [`Table`]'s).
struct SectionOf<P> {
    file: P,
    section: &'static str,
}

impl<P: figment::Provider> figment::Provider for SectionOf<P> {
    fn metadata(&self) -> figment::Metadata {
        self.file.metadata()
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        let mut data = self.file.data()?;
        for dict in data.values_mut() {
            *dict = match dict.remove(self.section) {
                None => Dict::new(),
                Some(Value::Dict(_, table)) => table,
                Some(_) => {
                    let mut e = figment::Error::from(format!("`{}` is not a table", self.section));
                    e.path = vec![self.section.to_owned()];
                    return Err(e);
                }
            };
        }
        Ok(data)
    }
}

/// The `RSP_*` variables of `options`, as written (`RSP_NAMESPACE=007` stays text),
/// except a switch's: true unless 0, false, no, off, n, f, as clap read
/// `RSP_INSECURE_LEGACY` before. An empty variable is unset (for a switch: off, as before).
fn env_layer(options: &[Opt], var: impl Fn(&str) -> Option<String>) -> Layer {
    let values = options
        .iter()
        .filter_map(|o| {
            let text = var(&o.env()).filter(|t| !t.is_empty())?;
            let value = match o.takes {
                Takes::Switch => Value::from(!matches!(
                    text.trim().to_ascii_lowercase().as_str(),
                    "false" | "no" | "off" | "0" | "n" | "f" | ""
                )),
                _ => Value::from(text),
            };
            Some((o.key.to_owned(), value))
        })
        .collect();
    Layer {
        name: VARIABLES,
        values,
    }
}

impl<T: Table> Flags<T> {
    /// Table `T`'s layers (defaults < file < variables < flags) merged, or one line naming
    /// the file (and line), variable or flag at fault. `var` reads the environment (a
    /// parameter, so that tests need not set it).
    pub(crate) fn load(
        &self,
        file: Option<&Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<T::Options, String> {
        use figment::providers::{Format as _, Toml};
        let defaults = T::OPTIONS
            .iter()
            .filter_map(|o| Some((o.key.to_owned(), Value::from(o.default?))))
            .collect();
        let mut layers = figment::Figment::from(Layer {
            name: DEFAULTS,
            values: defaults,
        });
        if let Some(path) = file {
            layers = match T::SECTION {
                None => layers.merge(Toml::file_exact(path)),
                Some(section) => layers.merge(SectionOf {
                    file: Toml::file_exact(path),
                    section,
                }),
            };
        }
        layers
            .merge(env_layer(T::OPTIONS, var))
            .merge(Layer {
                name: FLAGS,
                values: self.0.clone(),
            })
            .extract()
            .map_err(|e| describe(&e, file, T::SECTION, T::OPTIONS))
    }
}

/// One line for a configuration error: for the file, `the config file F line N: …` (as
/// before figment: the e2e `cli::` tests read it); for a variable or flag, its name.
fn describe(
    e: &figment::Error,
    file: Option<&Path>,
    section: Option<&str>,
    options: &[Opt],
) -> String {
    use figment::error::Kind;
    let key = e.path.join(".");
    let layer = e.metadata.as_ref().map(|m| m.name.as_ref());
    let opt = options.iter().find(|o| o.key == key);
    // Messages may span lines (a TOML parse error quotes the line with a caret): keep
    // the prose, one line.
    let prose = |text: String| {
        text.lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.starts_with(' ') && !l.contains(" | "))
            .collect::<Vec<_>>()
            .join(": ")
    };
    let what = match &e.kind {
        Kind::UnknownField(field, expected) => {
            let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown field `{field}`, expected one of {}",
                expected.join(", ")
            )
        }
        kind => prose(kind.to_string()),
    };
    match (layer, opt, &e.kind) {
        // Only the file can hold an unknown key (the others are built from OPTIONS).
        (_, _, Kind::UnknownField(..)) => in_file(file, section, &key, what, &e.kind),
        (Some(VARIABLES), Some(o), _) => format!("{}: {what}", o.env()),
        (Some(FLAGS), Some(o), _) => format!("--{}: {what}", o.flag),
        _ => in_file(file, section, &key, what, &e.kind),
    }
}

/// `the config file F line N: key: what` (`what` alone without a file); a key of a
/// command's table is named `SECTION.key`, as TOML would write it on one line.
fn in_file(
    file: Option<&Path>,
    section: Option<&str>,
    key: &str,
    what: String,
    kind: &figment::error::Kind,
) -> String {
    let Some(path) = file else {
        return what;
    };
    // An unknown key is named in `what`; any other error says its key first.
    let (named, what) = match (kind, section) {
        (figment::error::Kind::UnknownField(field, _), None) => (field.as_str(), what),
        (figment::error::Kind::UnknownField(field, _), Some(s)) => {
            (field.as_str(), format!("[{s}]: {what}"))
        }
        _ if key.is_empty() => ("", what),
        (_, None) => (key, format!("{key}: {what}")),
        (_, Some(s)) => (key, format!("{s}.{key}: {what}")),
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = line_of(&text, section, named).or_else(|| parse_error_line(&what));
    let at = line.map_or_else(String::new, |l| format!(" line {l}"));
    format!("the config file {}{at}: {what}", path.display())
}

/// The line (from 1) where `key` is set in a TOML file, if it is at the start of one: at
/// the top (no `section`) or in the table `[section]`.
fn line_of(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut table: Option<&str> = None;
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            if let Some(header) = l.strip_prefix('[') {
                table = header.split(']').next().map(str::trim);
                return false;
            }
            table == section
                && l.strip_prefix(key)
                    .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The line a TOML parse error names (`… at line 2, column 5 …`).
fn parse_error_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("line ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A duration flag: a humane string (`5m`, `90s`) or, as before, a number of seconds.
pub(crate) fn secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is no duration (`5m`, `90s` or seconds): {e}")),
    }
}

/// `rr`, `wrr:W`, `rand`, `wrand:W`, `pri:P`, `lu:L`, `lud:L:D`, `plu:L:D`, `rlu:L`.
pub(crate) fn policy(s: &str) -> Result<Policy, String> {
    // A private type (docs/PROTOCOL-EXTENSIONS.md): `0xff000001`, or with its values in hex
    // (`0xff000001:0a0b`), sent as they are.
    if let Some(ty) = s.strip_prefix("0x") {
        let (ty, values) = ty.split_once(':').unwrap_or((ty, ""));
        let ty = u32::from_str_radix(ty, 16).map_err(|_| format!("{s:?}: not a hex type"))?;
        let values = crate::decode::parse_hex(values).map_err(|e| format!("{s:?}: {e}"))?;
        return Policy::private(PolicyType(ty), &values).ok_or_else(|| {
            format!("{s:?}: a private type is 0xff000000 to 0xfffffffe, with at most 12 bytes")
        });
    }
    let mut parts = s.split(':');
    let name = parts.next().unwrap_or_default();
    let nums: Vec<u32> = parts
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| format!("{p:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    // Loads are given in percent; the wire wants a fraction of u32::MAX (spec §5.1).
    let load = |pct: u32| -> Result<u32, String> {
        if pct > 100 {
            return Err(format!("load {pct}% is above 100%"));
        }
        Ok((u64::from(u32::MAX) * u64::from(pct) / 100) as u32)
    };
    Ok(match (name, nums.as_slice()) {
        ("rr", []) => Policy::RoundRobin,
        ("wrr", [w]) => Policy::WeightedRoundRobin { weight: *w },
        ("rand", []) => Policy::Random,
        ("wrand", [w]) => Policy::WeightedRandom { weight: *w },
        ("pri", [p]) => Policy::Priority { priority: *p },
        ("lu", [l]) => Policy::LeastUsed { load: load(*l)? },
        ("lu", []) => Policy::LeastUsed { load: 0 },
        ("lud", [l, d]) => Policy::LeastUsedDegradation {
            load: load(*l)?,
            degradation: load(*d)?,
        },
        ("plu", [l, d]) => Policy::PriorityLeastUsed {
            load: load(*l)?,
            degradation: load(*d)?,
        },
        ("rlu", [l]) => Policy::RandomizedLeastUsed { load: load(*l)? },
        ("rlu", []) => Policy::RandomizedLeastUsed { load: 0 },
        // Least Used with Distance Penalty (docs/PROTOCOL-EXTENSIONS.md §3): the load in
        // percent, the penalty in percent of load per millisecond of round trip (1 unless
        // given; 0 is plain Least Used).
        ("least-used-distance", rest) if rest.len() <= 2 => {
            let pct = rest.first().copied().unwrap_or(0);
            let penalty_pct = rest.get(1).copied().unwrap_or(1);
            if penalty_pct > 100 {
                return Err(format!(
                    "penalty {penalty_pct}% per ms is above 100% (a far PE would never be used)"
                ));
            }
            LeastUsedDistance::policy(DistanceValues {
                load: load(pct)?,
                penalty: load(penalty_pct)?,
            })
        }
        _ => {
            return Err(format!(
                "unknown policy {s:?}: use rr, wrr:W, rand, wrand:W, pri:P, lu:L, lud:L:D, plu:L:D, rlu:L, least-used-distance:L:P, or a private type 0xff000000-0xfffffffe[:HEX]"
            ));
        }
    })
}

/// A value as written: text (flags, variables, a TOML string) or a TOML number.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl de::Visitor<'_> for Text {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or a number")
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
    }
    d.deserialize_any(Text)
}

/// A value parsed by its `FromStr`, as its flag parses it.
fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    text(d)?.parse().map_err(de::Error::custom)
}

/// [`parsed`], for an option without a default.
fn some_parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    parsed(d).map(Some)
}

/// A duration: humane (`5m`, `90s`) or seconds ([`secs`]).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    secs(&text(d)?).map_err(de::Error::custom)
}

/// A policy ([`policy`]).
fn policy_of<'de, D: Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
    policy(&text(d)?).map_err(de::Error::custom)
}

/// Labels or hints: `KEY=VALUE` items as a list ([`parsed_list`]), within their bounds.
fn labels_of<'de, D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    let items: Vec<String> = parsed_list(d)?;
    Labels::parse(items).map_err(de::Error::custom)
}

/// A demo service by its name, as the flag took it.
fn service<'de, D: Deserializer<'de>>(d: D) -> Result<Service, D::Error> {
    let name = text(d)?;
    <Service as clap::ValueEnum>::from_str(&name, false).map_err(|_| {
        de::Error::custom(format!(
            "unknown service {name:?}: use echo, discard, daytime, chargen or counter"
        ))
    })
}

/// A list given as a list of strings (the file) or comma-separated (a variable), each
/// parsed; a bad one is named.
fn parsed_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    struct List<T>(PhantomData<T>);
    impl<'de, T: FromStr> de::Visitor<'de> for List<T>
    where
        T::Err: std::fmt::Display,
    {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_each(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.extend(parse_each::<T, A::Error>(&item)?);
            }
            Ok(items)
        }
    }
    d.deserialize_any(List(PhantomData))
}

/// Each comma-separated item of `v`, parsed; a bad one is named.
fn parse_each<T: FromStr, E: de::Error>(v: &str) -> Result<Vec<T>, E>
where
    T::Err: std::fmt::Display,
{
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // The parsers' errors quote the value.
        .map(|s| s.parse().map_err(E::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;

    /// The flags of table `T` in `rsp COMMAND ARGS…`, as parsed.
    fn flags_of<T: Table>(args: &[&str]) -> Flags<T> {
        let cmd = <Flags<T> as clap::Args>::augment_args(clap::Command::new("rsp"));
        let matches = cmd
            .try_get_matches_from(["rsp"].iter().chain(args))
            .expect("parses");
        <Flags<T> as clap::FromArgMatches>::from_arg_matches(&matches).expect("flags")
    }

    /// The shared flags.
    fn flags(args: &[&str]) -> Flags {
        flags_of(args)
    }

    /// An environment of these variables only.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn addrs(list: &[&str]) -> Vec<TransportAddr> {
        list.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn a_flag_beats_a_variable_beats_the_file_beats_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(
            &file,
            "cert = \"pki/pu.pem\"\nkey = \"/abs/pu.key\"\nca = \"pki/ca.pem\"\nregistrars = [\"192.0.2.1:3864\", \"192.0.2.2:3864\"]\nnamespace = \"file\"\nregistrar_ids = [\"spiffe://acme.test/registrar/a\"]\n",
        )
        .expect("write");
        let o = flags(&["--namespace", "flag"])
            .load(
                Some(&file),
                env(&[("RSP_NAMESPACE", "var"), ("RSP_CA", "var/ca.pem")]),
            )
            .expect("valid");
        assert_eq!(o.namespace.as_deref(), Some("flag"), "the flag");
        assert_eq!(o.ca.relative(), PathBuf::from("var/ca.pem"), "the variable");
        assert_eq!(
            o.cert.expect("cert").relative(),
            dir.path().join("pki/pu.pem"),
            "the file's relative path is from its directory"
        );
        assert_eq!(o.key.expect("key").relative(), PathBuf::from("/abs/pu.key"));
        assert_eq!(o.registrars, addrs(&["192.0.2.1:3864", "192.0.2.2:3864"]));
        assert_eq!(o.registrar_ids.len(), 1);
        assert!(!o.insecure_legacy, "the default");
        // Without a file: the defaults; a comma-separated variable; repeated flags.
        let o = flags(&[]).load(None, env(&[])).expect("defaults");
        assert_eq!(o.ca.relative(), PathBuf::from("pki/ca.pem"));
        assert_eq!(o.registrars_or_default(), addrs(&["127.0.0.1:3864"]));
        assert_eq!(o.discover, None, "discovery is off by default (spec D-5)");
        // --discover: no default registrar, only announced ones; a given one stays.
        let o = flags(&["--discover", "239.0.0.50:3863"])
            .load(None, env(&[]))
            .expect("valid");
        assert_eq!(o.discover, Some("239.0.0.50:3863".parse().expect("addr")));
        assert_eq!(o.discover_timeout, Duration::from_secs(10));
        assert!(o.registrars_or_default().is_empty());
        let o = flags(&[
            "--discover",
            "239.0.0.50:3863",
            "--registrar",
            "192.0.2.8:1",
        ])
        .load(None, env(&[]))
        .expect("valid");
        assert_eq!(o.registrars_or_default(), addrs(&["192.0.2.8:1"]));
        // The config file key, and its variable.
        let disc = dir.path().join("disc.toml");
        std::fs::write(
            &disc,
            "discover = \"239.0.0.50:3863\"\ndiscover_timeout = \"2s\"\n",
        )
        .expect("write");
        let o = flags(&[]).load(Some(&disc), env(&[])).expect("valid");
        assert_eq!(o.discover, Some("239.0.0.50:3863".parse().expect("addr")));
        assert_eq!(o.discover_timeout, Duration::from_secs(2));
        let o = flags(&[])
            .load(None, env(&[("RSP_DISCOVER", "239.0.0.50:3863")]))
            .expect("valid");
        assert!(o.discover.is_some() && o.registrars_or_default().is_empty());
        let err = flags(&["--discover", "somewhere"])
            .load(None, env(&[]))
            .expect_err("not an address");
        assert!(
            err.contains("--discover") && err.contains("socket address"),
            "{err}"
        );
        assert!(o.cert.is_none() && o.namespace.is_none() && o.registrar_ids.is_empty());
        let vars = env(&[("RSP_REGISTRAR", "192.0.2.3:1,sctp:192.0.2.4:2")]);
        let o = flags(&[]).load(Some(&file), &vars).expect("valid");
        assert_eq!(o.registrars, addrs(&["192.0.2.3:1", "sctp:192.0.2.4:2"]));
        let o = flags(&[
            "--registrar",
            "192.0.2.5:1,192.0.2.6:1",
            "--registrar",
            "192.0.2.7:1",
        ])
        .load(Some(&file), &vars)
        .expect("valid");
        assert_eq!(
            o.registrars,
            addrs(&["192.0.2.5:1", "192.0.2.6:1", "192.0.2.7:1"])
        );
        // A flag's path is as given, relative to where rsp runs.
        let o = flags(&["--cert", "mine.pem"])
            .load(Some(&file), env(&[]))
            .expect("valid");
        assert_eq!(o.cert.expect("cert").relative(), PathBuf::from("mine.pem"));
    }

    #[test]
    fn a_switch_is_a_flag_a_variable_or_a_file_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(&file, "insecure_legacy = true\n").expect("write");
        let legacy = |args: &[&str], file: Option<&Path>, vars: &[(&str, &str)]| {
            flags(args)
                .load(file, env(vars))
                .expect("valid")
                .insecure_legacy
        };
        assert!(legacy(&["--insecure-legacy"], None, &[]));
        assert!(legacy(&[], Some(&file), &[]));
        // As clap read the variable: true unless it says otherwise.
        assert!(legacy(&[], None, &[("RSP_INSECURE_LEGACY", "1")]));
        assert!(legacy(&[], None, &[("RSP_INSECURE_LEGACY", "yes")]));
        for off in ["0", "false", "no", "off", ""] {
            assert!(
                !legacy(&[], None, &[("RSP_INSECURE_LEGACY", off)]),
                "{off:?}"
            );
        }
        // A variable that says no beats the file; an empty one is unset.
        assert!(!legacy(&[], Some(&file), &[("RSP_INSECURE_LEGACY", "0")]));
        assert!(legacy(&[], Some(&file), &[("RSP_INSECURE_LEGACY", "")]));
        let o = flags(&[])
            .load(None, env(&[("RSP_CERT", ""), ("RSP_CA", "")]))
            .expect("empty variables are unset");
        assert!(o.cert.is_none());
        assert_eq!(o.ca.relative(), PathBuf::from("pki/ca.pem"));
    }

    #[test]
    fn a_bad_key_or_value_is_one_line_naming_the_file_and_line_or_the_variable_or_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let load = |file: &Path| flags(&[]).load(Some(file), env(&[]));
        let typo = write(
            "typo.toml",
            "cert = \"x.pem\"\nregistrar = \"127.0.0.1:3864\"\n",
        );
        let err = load(&typo).expect_err("unknown key");
        assert!(
            err.starts_with("the config file ")
                && err.contains("typo.toml line 2: unknown field `registrar`"),
            "{err}"
        );
        let bad = write("bad.toml", "\n\nregistrars = [\"nowhere\"]\n");
        let err = load(&bad).expect_err("bad address");
        assert!(
            err.contains("bad.toml line 3: registrars: ") && err.contains("nowhere"),
            "{err}"
        );
        let broken = write("broken.toml", "cert = [\n");
        let err = load(&broken).expect_err("no TOML");
        assert!(err.contains("broken.toml line 1: "), "{err}");
        let err = load(&dir.path().join("missing.toml")).expect_err("no file");
        assert!(err.contains("missing.toml"), "{err}");
        let err = flags(&[])
            .load(None, env(&[("RSP_REGISTRAR_ID", "nope")]))
            .expect_err("bad pattern");
        assert!(
            err.starts_with("RSP_REGISTRAR_ID: ") && err.contains("nope"),
            "{err}"
        );
        let err = flags(&["--registrar", "nowhere"])
            .load(Some(&typo), env(&[]))
            .expect_err("the file is read even when a flag is bad");
        assert!(err.contains("typo.toml"), "{err}");
        let err = flags(&["--registrar", "nowhere"])
            .load(None, env(&[]))
            .expect_err("bad flag");
        assert!(
            err.starts_with("--registrar: ") && err.contains("nowhere"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    /// `rsp pe`'s own flags.
    fn pe_flags(args: &[&str]) -> Flags<Pe> {
        flags_of(args)
    }

    #[test]
    fn a_pe_option_is_a_flag_a_variable_a_key_of_the_pe_table_or_its_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(
            &file,
            "cert = \"pki/pe.pem\"\n\n[pe]\nregistration_life = \"2m\"\npolicy = \"lu:10\"\ncookie_lifetime = 90\ncookie_key = \"pool.key\"\ncapacity = 8\ncontrol = \"run/pe.sock\"\nadvertise = \"127.0.0.1:8443\"\nserving_identity = \"spiffe://acme.test/pe/w/nginx\"\n",
        )
        .expect("write");
        let life = |args: &[&str], file: Option<&Path>, vars: &[(&str, &str)]| {
            pe_flags(args)
                .load(file, env(vars))
                .expect("valid")
                .registration_life
        };
        let vars = [("RSP_REGISTRATION_LIFE", "45s")];
        assert_eq!(
            life(&["--registration-life", "7"], Some(&file), &vars),
            Duration::from_secs(7),
            "the flag, in seconds as before"
        );
        assert_eq!(
            life(&[], Some(&file), &vars),
            Duration::from_secs(45),
            "the variable"
        );
        assert_eq!(
            life(&[], Some(&file), &[]),
            Duration::from_secs(120),
            "the file"
        );
        assert_eq!(
            life(&[], None, &[]),
            Duration::from_secs(300),
            "the default"
        );
        let o = pe_flags(&[]).load(Some(&file), env(&[])).expect("valid");
        assert!(matches!(o.policy, Policy::LeastUsed { .. }));
        assert_eq!(o.cookie_lifetime, Duration::from_secs(90), "a TOML number");
        assert_eq!(
            o.cookie_key.expect("key").relative(),
            dir.path().join("pool.key"),
            "from the file's directory"
        );
        assert_eq!(o.capacity.map(NonZeroUsize::get), Some(8));
        assert_eq!(
            o.control.expect("control socket").relative(),
            dir.path().join("run/pe.sock"),
            "the control socket, from the file's directory too"
        );
        assert_eq!(o.advertise, "127.0.0.1:8443".parse().ok());
        assert_eq!(
            o.serving_identity.as_deref(),
            Some("spiffe://acme.test/pe/w/nginx")
        );
        assert_eq!(o.listen, "127.0.0.1:0".parse().expect("address"));
        assert_eq!(o.business_card, Alternates::Auto);
        // The shared options ignore the [pe] table; the PE's ignore the shared keys.
        let shared = flags(&[]).load(Some(&file), env(&[])).expect("valid");
        assert!(shared.cert.is_some());
        // Today's forms still work as flags.
        let o = pe_flags(&[
            "--serve",
            "counter",
            "--policy",
            "wrr:3",
            "--listen",
            "sctp:127.0.0.1:0",
            "--cookie-lifetime",
            "600",
            "--asap-listen",
            "127.0.0.1:0",
            "--business-card",
            "0x1a2b3c4d,7",
        ])
        .load(None, env(&[]))
        .expect("valid");
        assert!(o.serve.has_sessions());
        assert_eq!(o.policy, Policy::WeightedRoundRobin { weight: 3 });
        assert!(matches!(o.listen, TransportAddr::Sctp(_)));
        assert_eq!(o.cookie_lifetime, Duration::from_secs(600));
        assert!(o.asap_listen.is_some());
        assert!(matches!(o.business_card, Alternates::Listed(ref ids) if ids.len() == 2));
    }

    #[test]
    fn a_bad_pe_option_names_the_file_and_line_the_variable_or_the_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(&file, "policy = \"rr\"\n[pe]\npolicy = \"fastest\"\n").expect("write");
        // At the top, `policy` is no shared option: the file names where it belongs.
        let err = flags(&[])
            .load(Some(&file), env(&[]))
            .expect_err("unknown key");
        assert!(
            err.contains("rsp.toml line 1: unknown field `policy`"),
            "{err}"
        );
        let err = pe_flags(&[])
            .load(Some(&file), env(&[]))
            .expect_err("bad policy");
        assert!(
            err.contains("rsp.toml line 3: pe.policy: ") && err.contains("fastest"),
            "{err}"
        );
        std::fs::write(&file, "[pe]\nregistration_lif = \"5m\"\n").expect("write");
        let err = pe_flags(&[]).load(Some(&file), env(&[])).expect_err("typo");
        assert!(
            err.contains("rsp.toml line 2: [pe]: unknown field `registration_lif`"),
            "{err}"
        );
        std::fs::write(&file, "pe = 3\n").expect("write");
        let err = pe_flags(&[])
            .load(Some(&file), env(&[]))
            .expect_err("no table");
        assert!(err.contains("`pe` is not a table"), "{err}");
        let err = pe_flags(&[])
            .load(None, env(&[("RSP_REGISTRATION_LIFE", "soon")]))
            .expect_err("bad duration");
        assert!(
            err.starts_with("RSP_REGISTRATION_LIFE: ") && err.contains("soon"),
            "{err}"
        );
        let err = pe_flags(&["--capacity", "0"])
            .load(None, env(&[]))
            .expect_err("zero capacity");
        assert!(err.starts_with("--capacity: "), "{err}");
        let err = pe_flags(&["--serve", "ftp"])
            .load(None, env(&[]))
            .expect_err("unknown service");
        assert!(err.starts_with("--serve: ") && err.contains("ftp"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn the_sidecar_options_come_from_flags_or_the_pe_table_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(
            &file,
            "[pe]\nforward = \"unix:/run/app.sock\"\nsession_channel = true\nallow_pu = [\"spiffe://acme.test/gateway/gw-1\"]\ncheck = \"http:/healthz\"\ncheck_interval = \"1s\"\nfall = 5\n",
        )
        .expect("write");
        let o = pe_flags(&[]).load(Some(&file), env(&[])).expect("valid");
        assert_eq!(o.forward, Some(Target::Unix("/run/app.sock".into())));
        assert!(o.session_channel, "session_channel = true");
        assert_eq!(o.allow_pu.len(), 1);
        assert_eq!(
            o.check,
            Some(Check::Http {
                path: "/healthz".into()
            })
        );
        assert_eq!(o.check_interval, Duration::from_secs(1));
        assert_eq!(
            (o.rise.get(), o.fall.get()),
            (2, 5),
            "the default and the file"
        );
        assert_eq!(o.max_sessions.get(), 256);
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        let o = pe_flags(&[
            "--forward",
            "127.0.0.1:8080",
            "--allow-pu",
            "spiffe://acme.test/pu/a,spiffe://acme.test/pu/b",
            "--check",
            "exec:true",
            "--max-sessions",
            "3",
            "--connect-timeout",
            "250ms",
        ])
        .load(Some(&file), env(&[]))
        .expect("valid");
        assert_eq!(
            o.forward.map(|t| t.to_string()).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(o.allow_pu.len(), 2, "the flag replaces the file's list");
        assert!(o.session_channel, "kept from the file");
        assert!(
            !pe_flags(&[])
                .load(None, env(&[]))
                .expect("valid")
                .session_channel
        );
        assert!(
            pe_flags(&["--session-channel"])
                .load(None, env(&[]))
                .expect("valid")
                .session_channel
        );
        assert_eq!(o.max_sessions.get(), 3);
        assert_eq!(o.connect_timeout, Duration::from_millis(250));
        for (flag, value) in [
            ("--forward", "nowhere"),
            ("--check", "ping"),
            ("--allow-pu", "acme.test/pu/*"),
            ("--rise", "0"),
            ("--max-sessions", "0"),
        ] {
            let err = pe_flags(&[flag, value])
                .load(None, env(&[]))
                .expect_err(value);
            assert!(err.starts_with(&format!("{flag}: ")), "{err}");
        }
    }

    #[test]
    fn the_gateway_needs_listen_and_resolve_takes_its_switch_from_anywhere() {
        let gateway = |args: &[&str], vars: &[(&str, &str)]| {
            let cmd = <Flags<Gateway> as clap::Args>::augment_args(clap::Command::new("gateway"));
            let m = cmd
                .try_get_matches_from(["gateway"].iter().chain(args))
                .expect("parses");
            <Flags<Gateway> as clap::FromArgMatches>::from_arg_matches(&m)
                .expect("flags")
                .load(None, env(vars))
                .expect("valid")
                .listen()
        };
        let err = gateway(&[], &[]).expect_err("no --listen");
        assert!(err.contains("--listen"), "{err}");
        assert_eq!(
            gateway(&[], &[("RSP_LISTEN", "127.0.0.1:7000")]),
            Ok("127.0.0.1:7000".parse().expect("address"))
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(&file, "[resolve]\njson = true\nitems = 3\n").expect("write");
        let o = flags_of::<Resolve>(&[])
            .load(Some(&file), env(&[]))
            .expect("valid");
        assert!(o.json);
        assert_eq!(o.items, Some(3));
    }

    #[test]
    fn labels_and_hints_come_from_flags_variables_or_the_file_within_their_bounds() {
        let o = flags_of::<Pe>(&["--label", "region=eu", "--label", "zone=a1,tier=gold"])
            .load(None, env(&[]))
            .expect("valid");
        assert_eq!(o.labels.to_string(), "region=eu,zone=a1,tier=gold");
        let o = flags_of::<Resolve>(&[])
            .load(None, env(&[("RSP_HINT", "zone=a1")]))
            .expect("valid");
        assert_eq!(o.hints.get("zone"), Some("a1"));
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("rsp.toml");
        std::fs::write(&file, "[pe]\nlabels = [\"region=us\"]\n").expect("write");
        let o = flags_of::<Pe>(&[])
            .load(Some(&file), env(&[]))
            .expect("valid");
        assert_eq!(o.labels.get("region"), Some("us"));
        // Beyond the bounds: one line naming the option and the rule, nothing runs.
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        let err = flags_of::<Pe>(&["--label", &many.join(",")])
            .load(None, env(&[]))
            .expect_err("17 labels");
        assert!(
            err.contains("labels") && err.contains("more than 16"),
            "{err}"
        );
        let err = flags_of::<Resolve>(&["--hint", "no-equals"])
            .load(None, env(&[]))
            .expect_err("not key=value");
        assert!(err.contains("not key=value"), "{err}");
        assert!(
            flags_of::<Pe>(&[])
                .load(None, env(&[]))
                .expect("valid")
                .labels
                .is_empty()
        );
    }

    #[test]
    fn least_used_distance_is_named_with_load_and_penalty_in_percent() {
        let pct = |p: u64| (u64::from(u32::MAX) * p / 100) as u32;
        let of = |s: &str| policy(s).map(|p| LeastUsedDistance::values(&p));
        let v = |load, penalty| Ok(Some(DistanceValues { load, penalty }));
        assert_eq!(of("least-used-distance"), v(0, pct(1)));
        assert_eq!(of("least-used-distance:40"), v(pct(40), pct(1)));
        assert_eq!(of("least-used-distance:0:5"), v(0, pct(5)));
        assert_eq!(of("least-used-distance:0:0"), v(0, 0));
        for bad in [
            "least-used-distance:101",
            "least-used-distance:0:101",
            "least-used-distance:1:2:3",
            "least-used-distance:x",
        ] {
            assert!(policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_private_policy_type_is_given_in_hex() {
        let ty = PolicyType(0xFF00_0001);
        assert_eq!(
            policy("0xff000001"),
            Ok(Policy::private(ty, &[]).expect("private"))
        );
        assert_eq!(
            policy("0xff000001:0a0b"),
            Ok(Policy::private(ty, &[10, 11]).expect("private"))
        );
        for bad in [
            "0x00000009",
            "0xffffffff",
            "0xff000001:0a0",
            "0xzz",
            "0xff000001:00000000000000000000000000",
        ] {
            assert!(policy(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_humane_or_seconds_as_before() {
        assert_eq!(secs("300"), Ok(Duration::from_secs(300)));
        assert_eq!(secs("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(secs("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(secs("1h 30m"), Ok(Duration::from_secs(5400)));
        let err = secs("soon").expect_err("no duration");
        assert!(err.contains("soon"), "{err}");
        assert!(secs("-5").is_err());
    }
}
