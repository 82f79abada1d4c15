//! `enrpd`: the rsp registrar. Thin: flags and logging here, the work in `enrp`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use enrp::config::{LogFormat, RunConfig};
use enrp::daemon::now_ms;
use enrp::setup;
use tokio::signal::unix::{SignalKind, signal};

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

/// `enrpd run`'s flags: the options of [`RunConfig`], one row each (its key, how the flag
/// takes it, its help), and `--config`. The flag is `--` plus the key in kebab case, the
/// variable `ENRPD_` plus the key in upper case; `--help` adds each default and variable
/// from [`RunConfig::default`], so that neither is written twice.
const OPTIONS: &[(&str, Takes, &str)] = &[
    (
        "data",
        Takes::Value("DIR"),
        "The data directory made by `enrpd init`.",
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
#[derive(Clone, Copy)]
enum Takes {
    /// `--key VALUE`.
    Value(&'static str),
    /// `--NAME VALUE`, repeatable (a list).
    Repeated(&'static str, &'static str),
    /// `--key` alone: true.
    Switch,
}

/// `enrpd run`'s arguments: the config file, and the options given as flags (the top
/// layer).
struct RunArgs {
    config: Option<PathBuf>,
    flags: figment::value::Dict,
}

impl clap::Args for RunArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let defaults = serde_json::to_value(RunConfig::default()).unwrap_or_default();
        let config = clap::Arg::new("config")
            .long("config")
            .env("ENRPD_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("A TOML file with any of the options below (names with `_` instead of `-`, e.g. `asap_listen = \"[::]:3864\"`). Flags and ENRPD_* variables override it.");
        cmd.arg(config)
            .args(OPTIONS.iter().map(|&(key, takes, help)| {
                let mut help = help.to_owned();
                match defaults.get(key) {
                    Some(serde_json::Value::String(s)) => {
                        help.push_str(&format!(" [default: {s}]"))
                    }
                    Some(serde_json::Value::Number(n)) => {
                        help.push_str(&format!(" [default: {n}]"))
                    }
                    _ => {}
                }
                help.push_str(&format!(" [env: ENRPD_{}]", key.to_uppercase()));
                let arg = clap::Arg::new(key).help(help);
                match takes {
                    Takes::Value(name) => arg
                        .long(key.replace('_', "-"))
                        .value_name(name)
                        .action(clap::ArgAction::Set),
                    Takes::Repeated(flag, name) => arg
                        .long(flag)
                        .value_name(name)
                        .action(clap::ArgAction::Append),
                    Takes::Switch => arg
                        .long(key.replace('_', "-"))
                        .action(clap::ArgAction::SetTrue),
                }
            }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        use figment::value::Value;
        let mut flags = figment::value::Dict::new();
        for &(key, takes, _) in OPTIONS {
            if matches.value_source(key) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let values = || {
                matches
                    .get_many::<String>(key)
                    .into_iter()
                    .flatten()
                    .map(|v| v.parse::<Value>().unwrap_or_else(|e| match e {}))
            };
            let value = match takes {
                Takes::Switch => Value::from(true),
                Takes::Repeated(..) => Value::from(values().collect::<Vec<_>>()),
                Takes::Value(_) => match values().next() {
                    Some(v) => v,
                    None => continue,
                },
            };
            flags.insert(key.to_owned(), value);
        }
        Ok(Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The flags as figment's top layer.
struct Flags(figment::value::Dict);

impl figment::Provider for Flags {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("the command line")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

/// The ENRPD_* variables of the options (not ENRPD_LOG, ENRPD_CONFIG, …).
fn env_layer() -> figment::providers::Env {
    let keys = RunConfig::keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    figment::providers::Env::prefixed("ENRPD_").only(&keys)
}

impl RunArgs {
    /// The layers, lowest first: the defaults (`RunConfig`'s), the config file, the
    /// ENRPD_* variables, the flags.
    fn figment(&self) -> figment::Figment {
        use figment::providers::Format as _;
        let mut layers = figment::Figment::new();
        if let Some(path) = &self.config {
            layers = layers.merge(figment::providers::Toml::file_exact(path));
        }
        layers.merge(env_layer()).merge(Flags(self.flags.clone()))
    }

    /// The merged configuration, or one line naming the key at fault and where it came
    /// from.
    fn load(&self) -> Result<RunConfig, String> {
        let config: RunConfig = self
            .figment()
            .extract()
            .map_err(|e| describe(e, self.config.as_deref()))?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The config file's keys and values as written (what a SIGHUP compares), after
    /// checking that the layers with it still make a valid configuration.
    fn file_table(&self) -> Result<Option<figment::value::Dict>, String> {
        use figment::providers::Format as _;
        let Some(path) = &self.config else {
            return Ok(None);
        };
        self.load()?;
        let mut data = figment::Provider::data(&figment::providers::Toml::file_exact(path))
            .map_err(|e| describe(e, Some(path)))?;
        Ok(Some(
            data.remove(&figment::Profile::Default).unwrap_or_default(),
        ))
    }
}

/// One line for a configuration error: the key (as the variable, if it came from one),
/// what is wrong, and the layer.
fn describe(e: figment::Error, file: Option<&std::path::Path>) -> String {
    use figment::error::Kind;
    let key = e.path.join(".");
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let layer = match (&e.metadata, file) {
        (Some(m), _) if from_env => format!(" (from {})", m.name),
        (Some(m), _) => match &m.source {
            Some(source) => format!(" (in {source})"),
            None => format!(" (from {})", m.name),
        },
        (None, Some(f)) => format!(" (in {})", f.display()),
        (None, None) => String::new(),
    };
    match &e.kind {
        Kind::UnknownField(field, _) => format!("unknown key `{field}`{layer}"),
        Kind::MissingField(field) => format!("missing key `{field}`{layer}"),
        kind if from_env => format!("ENRPD_{}: {kind}{layer}", key.to_uppercase()),
        kind if key.is_empty() => format!("{kind}{layer}"),
        kind => format!("{key}: {kind}{layer}"),
    }
}

/// The keys whose values differ between two versions of the config file, sorted.
fn changed_keys(before: &figment::value::Dict, after: &figment::value::Dict) -> Vec<String> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
            // A bad file or value: one line naming the key, nothing started.
            let config = args.load().map_err(anyhow::Error::msg)?;
            serve(*args, config).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Token { command } => token(command).await,
        Command::Audit {
            command: AuditCommand::Checkpoint { data, to },
        } => write_checkpoint(&data, to.as_deref()).await,
        Command::Audit {
            command: AuditCommand::Verify { data, checkpoint },
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
                    if let Some(file) = checkpoint {
                        return check_checkpoint(&data, &file, &report, &loaded.store).await;
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

/// `enrpd audit verify --checkpoint FILE`, after the chain checked intact: the signature,
/// then that the chain still holds the signed head.
async fn check_checkpoint(
    data: &std::path::Path,
    file: &std::path::Path,
    report: &trust::audit::VerifyReport,
    store: &trust::db::Store,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let checkpoint: enrp::checkpoint::Checkpoint = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint", file.display()))?;
    let install = setup::read_install(data)?;
    let ca =
        std::fs::read(&install.ca).with_context(|| format!("reading {}", install.ca.display()))?;
    if let Err(e) = checkpoint.check(&ca) {
        println!("checkpoint refused: {e}");
        return Ok(ExitCode::FAILURE);
    }
    if report.last_id < checkpoint.id {
        println!(
            "audit chain TRUNCATED: it ends at record {}, the checkpoint of {} saw record {}",
            report.last_id, checkpoint.time_ms, checkpoint.id
        );
        return Ok(ExitCode::FAILURE);
    }
    let stored = if checkpoint.id == 0 {
        Some(trust::audit::GENESIS)
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

async fn serve(args: RunArgs, config: RunConfig) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENRPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Every setting of the config file takes effect at start only: on SIGHUP, say which
    // changed rather than let an operator believe they apply.
    let at_start = args.file_table().map_err(anyhow::Error::msg)?;
    let running = enrp::run(config).await?;
    // Handlers first: a SIGHUP right after the "serving" line must not kill the process.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let admin_text = running
        .admin_addr()
        .map_or_else(String::new, |a| format!(", admin API on https://{a}"));
    // Tests parse this line: the ASAP address first, then the admin API's, then ENRP's.
    let mut enrp_text = running
        .enrp_addr()
        .map_or_else(String::new, |a| format!(", ENRP on {a}"));
    for (what, at) in running.sctp_addrs() {
        enrp_text.push_str(&format!(", {what} on sctp:{at}"));
    }
    println!(
        "enrpd: serving ASAP on {} (Server ID {}){admin_text}{enrp_text}",
        running.asap_addr(),
        running.server_id()
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; break; }
            _ = hup.recv() => {
                // SIGHUP: certificate, CRL, grants, default namespaces, without a restart.
                // A bad file changes nothing and is logged; the registrar keeps serving.
                if let Err(e) = running.reload().await {
                    tracing::error!(error = %e, "reload failed; nothing changed");
                }
                if let (Some(path), Some(at_start)) = (&args.config, &at_start) {
                    match args.file_table() {
                        Ok(now) => {
                            let changed = changed_keys(at_start, &now.unwrap_or_default());
                            if !changed.is_empty() {
                                tracing::warn!(
                                    file = %path.display(),
                                    keys = %changed.join(", "),
                                    "these settings changed and take effect at the next start"
                                );
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "the config file is invalid; the next start will fail"),
                    }
                }
            }
        }
    }
    tracing::info!("stopping");
    running.shutdown().await.context("shutting down")
}

/// `days` after `now_ms`, in unix ms (token expiries).
fn days_after(now_ms: u64, days: u32) -> u64 {
    now_ms + u64::from(days) * 86_400_000
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `enrpd run ARGS…` as parsed.
    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["enrpd", "run"].iter().chain(args)).expect("parses");
        match cli.command {
            Command::Run(args) => *args,
            _ => unreachable!("run"),
        }
    }

    #[test]
    fn a_flag_beats_a_variable_beats_the_file_beats_the_default() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "enrpd.toml",
                "rate_resolutions = 1\nrate_registrations = 2\nrate_unreachable = 3\npeers = [\"f:1\"]\n",
            )?;
            jail.set_env("ENRPD_RATE_RESOLUTIONS", "10");
            jail.set_env("ENRPD_RATE_REGISTRATIONS", "20");
            jail.set_env("ENRPD_PEERS", "e:1,e:2");
            jail.set_env("ENRPD_ALLOW_LOOPBACK", "1");
            // Not options: ignored, as before.
            jail.set_env("ENRPD_LOG", "debug");
            let c = run_args(&["--config", "enrpd.toml", "--rate-resolutions", "100"])
                .load()
                .expect("valid");
            assert_eq!(c.rate_resolutions, 100, "the flag");
            assert_eq!(c.rate_registrations, 20, "the variable");
            assert_eq!(c.rate_unreachable, 3, "the file");
            assert_eq!(c.max_pools_per_identity, 100, "the default");
            assert_eq!(c.peers, ["e:1", "e:2"], "a comma-separated variable");
            assert!(c.allow_loopback);
            let c = run_args(&["--config", "enrpd.toml", "--peer", "a:1", "--peer", "b:1"])
                .load()
                .expect("valid");
            assert_eq!(c.peers, ["a:1", "b:1"], "repeated flags beat the variable");
            let c = run_args(&[]).load().expect("no file");
            assert_eq!(c.rate_unreachable, 10, "without --config the default");
            Ok(())
        });
    }

    #[test]
    fn durations_are_humane_strings_or_numbers_in_every_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "enrpd.toml",
                "keep_alive_interval_ms = \"250ms\"\nkeep_alive_timeout_ms = 1500\ncheckpoint_log_secs = \"1h\"\n",
            )?;
            jail.set_env("ENRPD_PEER_HEARTBEAT_MS", "2s");
            jail.set_env("ENRPD_TAKEOVER_EXPIRY_MS", "9000");
            let c = run_args(&["--config", "enrpd.toml", "--mentor-timeout-ms", "1m"])
                .load()
                .expect("valid");
            assert_eq!(c.keep_alive_interval_ms.0, Duration::from_millis(250));
            assert_eq!(c.keep_alive_timeout_ms.0, Duration::from_millis(1500));
            assert_eq!(c.checkpoint_log_secs.0, Duration::from_secs(3600));
            assert_eq!(c.peer_heartbeat_ms.0, Duration::from_secs(2));
            assert_eq!(c.takeover_expiry_ms.0, Duration::from_secs(9));
            assert_eq!(c.mentor_timeout_ms.0, Duration::from_secs(60));
            let c = run_args(&["--keep-alive-interval-ms", "200"])
                .load()
                .expect("valid");
            assert_eq!(c.keep_alive_interval_ms.0, Duration::from_millis(200));
            Ok(())
        });
    }

    #[test]
    fn a_bad_key_or_value_is_one_line_naming_the_key_and_its_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "asap_listn = \"[::]:3864\"\n")?;
            let err = run_args(&["--config", "typo.toml"])
                .load()
                .expect_err("typo");
            assert!(
                err.contains("asap_listn") && err.contains("typo.toml"),
                "{err}"
            );
            jail.create_file("bad.toml", "rate_resolutions = \"lots\"\n")?;
            let err = run_args(&["--config", "bad.toml"])
                .load()
                .expect_err("bad value");
            assert!(
                err.starts_with("rate_resolutions: ") && err.contains("bad.toml"),
                "{err}"
            );
            let err = run_args(&["--keep-alive-timeout-ms", "soon"])
                .load()
                .expect_err("flag");
            assert!(
                err.starts_with("keep_alive_timeout_ms: ") && err.contains("command line"),
                "{err}"
            );
            let err = run_args(&["--config", "missing.toml"])
                .load()
                .expect_err("no file");
            assert!(err.contains("missing.toml"), "{err}");
            jail.set_env("ENRPD_ADMIN_LISTEN", "nowhere");
            let err = run_args(&[]).load().expect_err("variable");
            assert!(
                err.starts_with("ENRPD_ADMIN_LISTEN: ") && err.contains("nowhere"),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
            let err = run_args(&[
                "--legacy-peer",
                "sctp:127.0.0.1:9901=7",
                "--admin-listen",
                "off",
            ])
            .load()
            .expect_err("needs its listener");
            assert_eq!(err, "legacy_peers needs legacy_enrp_listen");
            Ok(())
        });
    }

    #[test]
    fn every_option_has_a_flag_and_every_flag_an_option() {
        let keys = RunConfig::keys();
        let mut flags: Vec<&str> = OPTIONS.iter().map(|(k, ..)| *k).collect();
        flags.sort_unstable();
        assert_eq!(keys, flags);
        let help = <Cli as clap::CommandFactory>::command()
            .find_subcommand_mut("run")
            .expect("run")
            .render_help()
            .to_string();
        assert!(
            help.contains("[default: 5000]") && help.contains("[env: ENRPD_RATE_UNREACHABLE]"),
            "{help}"
        );
    }

    #[test]
    fn a_reload_names_the_config_keys_that_changed_and_refuses_a_bad_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("enrpd.toml");
        let path_text = path.to_str().expect("utf-8");
        std::fs::write(
            &path,
            "asap_listen = \"[::]:3864\"\nallow_loopback = true\n",
        )
        .expect("write");
        let args = run_args(&["--config", path_text]);
        let before = args.file_table().expect("valid").expect("a file");
        std::fs::write(
            &path,
            "asap_listen = \"[::]:3865\"\nallow_loopback = true\npeers = [\"b:9902\"]\n",
        )
        .expect("write");
        let after = args.file_table().expect("valid").expect("a file");
        assert_eq!(changed_keys(&before, &after), ["asap_listen", "peers"]);
        assert!(changed_keys(&after, &after).is_empty());
        std::fs::write(&path, "asap_listn = \"[::]:3864\"\n").expect("write");
        let err = args.file_table().expect_err("unknown key");
        assert!(err.contains("asap_listn"), "{err}");
    }
}
