//! `rsp`: the RSerPool command line. Thin: flags here, work in the `asap` library.

mod config;
mod control;
mod decode;
// systemd's notify protocol, shared with enrpd (the file says why it is not a crate).
#[path = "../../enrpd/src/notify.rs"]
mod notify;
mod services;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use asap::addr::TransportAddr;
use asap::client::discovery::{Discovery, DiscoveryEvent};
use asap::client::pu::PoolUser;
use asap::client::reload::{CredentialFiles, RELOAD_POLL};
use asap::client::{self, admit, check, failover, forward, gateway, pe, pu, session};
use asap::wire::param::{
    Address, Namespace, PeId, Policy, PoolHandle, SctpAddresses, Transport, TransportUse,
};
use clap::{Parser, Subcommand};
use identity::IdentityPattern;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use trust::TrustStore;

/// Reliable Server Pooling (ASAP/ENRP) tools.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file with any of the options --cert, --key, --ca, --crl, --registrar,
    /// --registrar-id, --namespace and --insecure-legacy, under their keys in
    /// rsp/src/config.rs (`cert = "pki/pu-client-1.pem"`, `key`, `ca`, `crl`, `registrars =
    /// ["127.0.0.1:3864"]`, `registrar_ids = ["spiffe://acme.test/registrar/*"]`,
    /// `namespace`, `insecure_legacy = true`; relative paths are from the file's
    /// directory), and each command's own options under its table (`[pe]` with `policy =
    /// "lu"`, `registration_life = "5m"`, …; `[resolve]`; `[gateway]`). Flags and RSP_*
    /// variables override it.
    #[arg(long, env = "RSP_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode ASAP or ENRP messages given in hex and print them.
    ///
    /// Several messages may follow each other back to back, as on a TCP connection
    /// (spec §12.2). Whitespace and `:` in the hex are ignored. Exits 1 at the first
    /// message that does not decode, saying where and why.
    Decode {
        /// The messages are ENRP (registrar to registrar), not ASAP.
        #[arg(long)]
        enrp: bool,
        /// Hex bytes; read from standard input when absent.
        hex: Vec<String>,
    },
    /// Run a pool element: register with the registrars, serve a demo service over TLS,
    /// stay registered until Ctrl-C or SIGTERM (then deregister). `rsp pe drain` and
    /// `rsp pe status` talk to a running one through its --control socket.
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Pe {
        /// The pool to join.
        #[arg(long, required = true)]
        pool: Option<String>,
        #[command(subcommand)]
        action: Option<PeAction>,
        #[command(flatten)]
        own: config::Flags<config::Pe>,
        #[command(flatten)]
        common: config::Flags,
    },
    /// Resolve a pool handle and print the PEs the registrar returns.
    Resolve {
        /// The pool.
        pool: String,
        #[command(flatten)]
        own: config::Flags<config::Resolve>,
        #[command(flatten)]
        common: config::Flags,
    },
    /// A gateway for clients that do not speak ASAP: every TCP connection accepted on
    /// --listen is carried over TLS to a PE of the pool; failed PEs are reported and
    /// skipped.
    Gateway {
        /// The pool to forward to.
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        own: config::Flags<config::Gateway>,
        #[command(flatten)]
        common: config::Flags,
    },
    /// A pool user: send standard input lines to a PE of the pool, print its answers;
    /// fail over to another PE when one fails.
    Pu {
        /// The pool.
        pool: String,
        #[command(flatten)]
        common: config::Flags,
    },
    /// Print the PEs of a pool as they are added, updated and removed (with the reason),
    /// from the registrar's admin API (`GET /v1/watch/pools`); runs until Ctrl-C.
    Watch(watch::Args),
}

/// What `rsp pe drain|status` asks of a running PE through its control socket.
#[derive(Subcommand)]
enum PeAction {
    /// Drain the PE (what SIGUSR1 does): it deregisters, refuses new sessions and exits
    /// once the open ones end or the deadline passes. Prints its progress until then;
    /// exits 1 if the deadline passed with sessions open.
    Drain {
        /// The PE's control socket (its --control); default: `control` under [pe] in the
        /// config file, or RSP_CONTROL.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// How long open sessions may run before they are closed (at most 24h); default:
        /// the PE's --drain-timeout.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        deadline: Option<Duration>,
    },
    /// Print the PE's state: registered or not, serving or draining, its health check,
    /// its open sessions.
    Status {
        /// The PE's control socket (its --control); default as for `drain`.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Identity, trust and registrars: the same for every command that talks to a registrar
/// (the options of [`config::OPTIONS`], merged).
struct Common {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: PathBuf,
    crl: Option<PathBuf>,
    registrars: Vec<TransportAddr>,
    /// `--discover`: the announce group, the first wait, the interface.
    discover: Option<(SocketAddr, Duration, Option<std::net::Ipv4Addr>)>,
    insecure_legacy: bool,
    namespace: Option<String>,
    registrar_ids: Vec<IdentityPattern>,
}

impl From<config::Options> for Common {
    fn from(o: config::Options) -> Self {
        let registrars = o.registrars_or_default();
        Self {
            cert: o.cert.map(|p| p.relative()),
            key: o.key.map(|p| p.relative()),
            ca: o.ca.relative(),
            crl: o.crl.map(|p| p.relative()),
            registrars,
            discover: o
                .discover
                .map(|g| (g, o.discover_timeout, o.discover_interface)),
            insecure_legacy: o.insecure_legacy,
            namespace: o.namespace,
            registrar_ids: o.registrar_ids,
        }
    }
}

impl Common {
    /// The credential files: --cert, --key (default: beside the certificate), --ca, --crl
    /// (default: crl.pem beside the CA when it exists).
    fn files(&self) -> anyhow::Result<CredentialFiles> {
        let cert = self
            .cert
            .clone()
            .context("no certificate: give --cert FILE, RSP_CERT, or cert in the --config file")?;
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| cert.with_extension("key"));
        let crl = self.crl.clone().or_else(|| client::default_crl(&self.ca));
        Ok(CredentialFiles {
            cert,
            key,
            ca: self.ca.clone(),
            crl,
        })
    }

    fn trust(&self) -> anyhow::Result<Arc<TrustStore>> {
        self.trust_for(true)
    }

    /// With `plain_ok` (this command's own hops may all be plain text), --insecure-legacy,
    /// only SCTP registrars and no --cert: an anonymous identity that trusts no domain, so
    /// that every TLS hop fails closed (and says why) while the plain ones work.
    fn trust_for(&self, plain_ok: bool) -> anyhow::Result<Arc<TrustStore>> {
        let plain_only = plain_ok
            && self.insecure_legacy
            && self.discover.is_none()
            && self
                .registrars
                .iter()
                .all(|r| matches!(r, TransportAddr::Sctp(_)));
        if self.cert.is_none() && plain_only {
            return anonymous();
        }
        let files = self.files()?;
        let trust = files.load().with_context(|| {
            let crl = files
                .crl
                .as_ref()
                .map_or_else(String::new, |c| format!(" / {}", c.display()));
            format!(
                "loading {} / {} / {}{crl}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            )
        })?;
        trust.set_registrar_ids(self.registrar_ids.clone())?;
        Ok(trust)
    }

    /// Reloads the credentials into `trust` on SIGHUP and when their files change (polled
    /// every [`RELOAD_POLL`]), for as long as the process runs; each reload, or its
    /// refusal, is one line on standard error.
    fn keep_reloaded(&self, trust: &Arc<TrustStore>) -> anyhow::Result<()> {
        if self.cert.is_none() {
            // The anonymous identity of a plain-text-only --insecure-legacy run: no files.
            return Ok(());
        }
        use tokio::signal::unix::{SignalKind, signal};
        let files = self.files()?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let trust = Arc::clone(trust);
        tokio::spawn(async move {
            let mut seen = files.fingerprint();
            loop {
                tokio::select! {
                    _ = hup.recv() => {}
                    () = tokio::time::sleep(RELOAD_POLL) => {
                        if files.fingerprint() == seen {
                            continue;
                        }
                    }
                }
                seen = files.fingerprint();
                match files.reload(&trust, services::wall_clock()) {
                    Ok(r) => eprintln!(
                        "reloaded credentials: presenting certificate serial {}{}{}",
                        r.serial,
                        if r.renewed { " (renewed)" } else { "" },
                        if r.closed > 0 {
                            format!(", closed {} revoked connection(s)", r.closed)
                        } else {
                            String::new()
                        }
                    ),
                    Err(e) => eprintln!("reload refused, the current credentials stay: {e}"),
                }
            }
        });
        Ok(())
    }

    /// `--discover`: joins the announce group and, with no --registrar, waits (at most
    /// --discover-timeout) for a first announce; `None` without it (spec D-5).
    async fn discovery(&self) -> anyhow::Result<Option<Discovery>> {
        let Some((group, wait, interface)) = self.discover else {
            return Ok(None);
        };
        let discovery = Discovery::listen(group, interface, report_discovery)
            .with_context(|| format!("--discover {group}: joining the group"))?;
        eprintln!("discovering registrars on {group}");
        if self.registrars.is_empty() {
            discovery.wait(&[], wait).await?;
        }
        Ok(Some(discovery))
    }

    fn namespace(&self) -> anyhow::Result<Option<Namespace>> {
        self.namespace
            .as_deref()
            .map(|n| {
                Namespace::new(n)
                    .with_context(|| format!("bad namespace {n:?}: 1-63 bytes of a-z 0-9 - ."))
            })
            .transpose()
    }
}

/// What `--discover` hears, one line each on standard error.
fn report_discovery(event: DiscoveryEvent<'_>) {
    match event {
        DiscoveryEvent::Announced {
            server_id,
            addrs,
            from,
        } => {
            let at: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            eprintln!(
                "registrar {server_id} announced at {} (from {from}); a candidate until its handshake",
                at.join(" ")
            );
        }
        DiscoveryEvent::Refused { addr, error, hold } => {
            eprintln!("announced registrar {addr} refused: {error}; not tried again for {hold:?}")
        }
        DiscoveryEvent::Dropped { from, why, count } => {
            eprintln!("announce from {from} dropped: {why} ({count} dropped so far)");
        }
        _ => {}
    }
}

/// The SPIFFE ID of `rsp --insecure-legacy` without a certificate: in the legacy domain,
/// which no trust store may trust (identity::LEGACY_TRUST_DOMAIN).
const ANONYMOUS: &str = "spiffe://legacy.invalid/anonymous";

/// A throwaway self-signed identity trusting no domain, for plain-text-only paths: no
/// TLS peer accepts it and it accepts no TLS peer.
fn anonymous() -> anyhow::Result<Arc<TrustStore>> {
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = rcgen::KeyPair::generate().context("generating a throwaway key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(ANONYMOUS.try_into()?)];
    let cert = params.self_signed(&key)?;
    let identity = trust::LocalIdentity::from_der(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    Ok(Arc::new(TrustStore::new(identity)?))
}

/// A command with its options merged: flags over `RSP_*` variables over the config file
/// over the defaults ([`config`]).
enum Job {
    Decode {
        enrp: bool,
        hex: Vec<String>,
    },
    Watch(watch::Args),
    /// `rsp pe drain|status`, with the control socket found.
    PeControl {
        action: PeAction,
        control: PathBuf,
    },
    Pe {
        pool: String,
        // Boxed: the PE's options are many times the other commands'.
        own: Box<config::PeOptions>,
        common: Common,
    },
    Resolve {
        pool: String,
        own: config::ResolveOptions,
        common: Common,
    },
    Gateway {
        pool: String,
        listen: SocketAddr,
        common: Common,
    },
    Pu {
        pool: String,
        common: Common,
    },
}

/// The command line, its options merged with the `RSP_*` variables and the config file;
/// an error is one line naming the flag, variable or file (and line) at fault.
fn parse_cli() -> Result<Job, String> {
    let cli = Cli::parse();
    let file = cli.config.as_deref();
    let var = |v: &str| std::env::var(v).ok();
    let common = |flags: &config::Flags| flags.load(file, var).map(Common::from);
    // The shared options first: their errors come first, as before.
    Ok(match cli.command {
        Command::Decode { enrp, hex } => Job::Decode { enrp, hex },
        Command::Pe {
            action: Some(action),
            own,
            ..
        } => {
            let given = match &action {
                PeAction::Drain { control, .. } | PeAction::Status { control, .. } => {
                    control.clone()
                }
            };
            let control = match given {
                Some(path) => path,
                None => own.load(file, var)?.control.map(|p| p.relative()).ok_or(
                    "rsp pe drain|status needs --control PATH (or RSP_CONTROL, or control under [pe] in the config file)",
                )?,
            };
            Job::PeControl { action, control }
        }
        Command::Pe {
            pool,
            own,
            common: c,
            action: None,
        } => {
            // clap requires --pool unless a subcommand is given.
            let pool = pool.ok_or("rsp pe needs --pool")?;
            let common = common(&c)?;
            Job::Pe {
                pool,
                own: Box::new(own.load(file, var)?),
                common,
            }
        }
        Command::Resolve {
            pool,
            own,
            common: c,
        } => {
            let common = common(&c)?;
            Job::Resolve {
                pool,
                own: own.load(file, var)?,
                common,
            }
        }
        Command::Gateway {
            pool,
            own,
            common: c,
        } => {
            let common = common(&c)?;
            Job::Gateway {
                pool,
                listen: own.load(file, var)?.listen()?,
                common,
            }
        }
        Command::Pu { pool, common: c } => Job::Pu {
            pool,
            common: common(&c)?,
        },
        Command::Watch(args) => Job::Watch(args),
    })
}

fn pool_handle(name: &str) -> anyhow::Result<PoolHandle> {
    PoolHandle::new(name).with_context(|| format!("bad pool handle {name:?}: 1 to 32 bytes"))
}

/// An error and its causes on one line, each said once: library errors name their
/// source in their own message too (`framing: read failed: X` over `read failed: X` over
/// `X`), which `{:#}` would print three times.
pub(crate) fn chain(err: &anyhow::Error) -> String {
    error_chain(&**err)
}

/// [`chain`] for any error: it and its sources, each said once.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

fn main() -> ExitCode {
    let job = match parse_cli() {
        Ok(job) => job,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(warning) = trust::key_log_warning() {
        eprintln!("warning: {warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(job)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run(job: Job) -> anyhow::Result<()> {
    match job {
        Job::Decode { enrp, hex } => decode::run(enrp, hex),
        Job::Watch(args) => watch::run(args).await,
        Job::PeControl { action, control } => match action {
            PeAction::Drain { deadline, .. } => control::drain(&control, deadline).await,
            PeAction::Status { json, .. } => control::status(&control, json).await,
        },
        Job::Pe { pool, own, common } => {
            let config::PeOptions {
                serve,
                policy,
                listen,
                registration_life,
                cookie_key,
                cookie_lifetime,
                capacity,
                asap_listen,
                business_card,
                forward,
                session_channel,
                allow_pu,
                max_sessions,
                connect_timeout,
                check,
                check_interval,
                check_timeout,
                rise,
                fall,
                drain_timeout,
                stop_grace,
                labels,
                control,
                advertise,
                serving_identity,
            } = *own;
            if advertise.is_some() && forward.is_some() {
                bail!(
                    "--advertise registers a server that terminates TLS itself: not with --forward"
                );
            }
            if advertise.is_some() && check.is_some() {
                bail!("--check needs --forward: it checks the server the PE forwards to");
            }
            let serving_identity = match (serving_identity, advertise) {
                (Some(_), None) => bail!("--serving-identity needs --advertise"),
                (Some(id), Some(_)) => {
                    identity::SpiffeId::parse(&id).context("--serving-identity")?;
                    Some(
                        asap::wire::param::ServingIdentity::new(&id)
                            .context("--serving-identity: 1 to 2048 bytes")?,
                    )
                }
                (None, _) => None,
            };
            if capacity.is_some() && !pe::is_adaptive(&policy) {
                bail!(
                    "--capacity needs an adaptive policy (--policy lu, lud:L:D, plu:L:D, rlu or least-used-distance)"
                );
            }
            if session_channel && forward.is_none() {
                bail!(
                    "--session-channel needs --forward: it carries sessions to an existing server"
                );
            }
            if session_channel && matches!(listen, TransportAddr::Sctp(_)) {
                bail!("--session-channel runs over TCP only");
            }
            let channel = match (session_channel, &cookie_key) {
                (false, _) => None,
                (true, None) => bail!(
                    "--session-channel needs --cookie-key FILE (the pool's cookie key: this PE seals the server's session state)"
                ),
                (true, Some(path)) => {
                    let path = path.relative();
                    let key = session::CookieKey::from_file(&path)
                        .with_context(|| format!("the cookie key {}", path.display()))?;
                    let mut channel =
                        forward::SessionChannel::new(Arc::new(key), pool_handle(&pool)?);
                    channel.lifetime = cookie_lifetime;
                    // Set by run_pe, once the PE's ID and transport are known.
                    Some(channel)
                }
            };
            let forward = forward.map(|target| forward::ForwardConfig {
                target,
                max_sessions: max_sessions.get(),
                connect_timeout,
                session: channel,
            });
            let check = match (check, &forward) {
                (None, _) => None,
                (Some(_), None) => {
                    bail!("--check needs --forward: it checks the server the PE forwards to")
                }
                (Some(_), Some(_)) if check_interval.is_zero() || check_timeout.is_zero() => {
                    bail!("--check-interval and --check-timeout must be longer than 0")
                }
                (Some(kind), Some(_)) => Some(check::CheckConfig {
                    check: kind,
                    interval: check_interval,
                    timeout: check_timeout,
                    rise,
                    fall,
                }),
            };
            // A forwarding PE's sessions are the server's bytes: no demo service, no
            // cookies on the channel.
            let serve_sessions = serve.has_sessions() && forward.is_none();
            let sessions = match (serve_sessions, cookie_key.map(|p| p.relative())) {
                (true, Some(path)) => Some(services::Sessions {
                    key: session::CookieKey::from_file(&path)
                        .with_context(|| format!("the cookie key {}", path.display()))?,
                    pool_handle: pool_handle(&pool)?,
                    lifetime: cookie_lifetime,
                    // Set by run_pe, once the PE's ID and transport are known.
                    card: None,
                }),
                (true, None) => {
                    bail!("--serve {serve:?} needs --cookie-key FILE (the pool's cookie key)")
                }
                (false, _) => None,
            };
            let pe = PeArgs {
                pool,
                service: serve,
                policy,
                listen,
                registration_life,
                sessions,
                capacity,
                asap_listen,
                business_card,
                forward,
                allowed: admit::AllowedPus::patterns(allow_pu),
                check,
                drain_timeout,
                stop_grace,
                labels,
                control: control.map(|p| p.relative()),
                advertise,
                serving_identity,
            };
            run_pe(pe, common).await
        }
        Job::Resolve { pool, own, common } => run_resolve(pool, own, common).await,
        Job::Pu { pool, common } => run_pu(pool, common).await,
        Job::Gateway {
            pool,
            listen,
            common,
        } => run_gateway(listen, pool, common).await,
    }
}

/// A random non-zero PE ID from the OS (spec §7.1 step 1).
fn random_pe_id() -> anyhow::Result<PeId> {
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b)
            .map_err(|_| anyhow::anyhow!("the OS random source failed"))?;
        if let Some(id) = PeId::new(u32::from_be_bytes(b)) {
            return Ok(id);
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// `rsp pe`'s options, checked.
struct PeArgs {
    pool: String,
    service: services::Service,
    policy: Policy,
    listen: TransportAddr,
    registration_life: Duration,
    sessions: Option<services::Sessions>,
    capacity: Option<std::num::NonZeroUsize>,
    asap_listen: Option<SocketAddr>,
    business_card: client::card::Alternates,
    /// `--forward`: carry sessions to this server instead of serving `service`.
    forward: Option<forward::ForwardConfig>,
    /// `--allow-pu`.
    allowed: admit::AllowedPus,
    /// `--check` and its timing (only with `forward`).
    check: Option<check::CheckConfig>,
    /// `--drain-timeout`.
    drain_timeout: Duration,
    /// `--stop-grace`.
    stop_grace: Duration,
    labels: asap::wire::param::Labels,
    /// `--control`: the control socket's path.
    control: Option<PathBuf>,
    /// `--advertise`: register this server instead of serving.
    advertise: Option<SocketAddr>,
    /// `--serving-identity`.
    serving_identity: Option<asap::wire::param::ServingIdentity>,
}

async fn run_pe(pe: PeArgs, common: Common) -> anyhow::Result<()> {
    let PeArgs {
        pool,
        service,
        policy,
        listen,
        registration_life,
        mut sessions,
        capacity,
        asap_listen,
        business_card,
        mut forward,
        allowed,
        check,
        drain_timeout,
        stop_grace,
        labels,
        control,
        advertise,
        serving_identity,
    } = pe;
    // Plain text all the way: legacy registrars, legacy pool users over SCTP, no
    // registrar calling in over TLS.
    let plain = matches!(listen, TransportAddr::Sctp(_)) && asap_listen.is_none();
    let trust = common.trust_for(plain)?;
    common.keep_reloaded(&trust)?;
    let (meter, load) = capacity.map(services::LoadMeter::new).unzip();
    // Spec §7.8: cookies flow only on channels registered as data plus control; that is
    // also how a PU knows to speak the §12.7 framing to this PE.
    let session_channel = forward.as_ref().is_some_and(|f| f.session.is_some());
    let transport_use = if (service.has_sessions() && forward.is_none()) || session_channel {
        TransportUse::DataPlusControl
    } else {
        TransportUse::DataOnly
    };
    let (listener, user_transport, local) = match &listen {
        TransportAddr::Tcp(at) => {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("listening on {at}"))?;
            let local = l.local_addr()?;
            let port =
                std::num::NonZeroU16::new(local.port()).context("the listener has no port")?;
            let t = Transport::Tcp {
                port,
                transport_use,
                addr: Address::new(local.ip()),
            };
            (services::PeListener::Tcp(l), t, local.to_string())
        }
        TransportAddr::Sctp(at) => {
            if forward.is_some() && common.insecure_legacy {
                bail!("--forward carries TLS sessions only: not with --insecure-legacy over SCTP");
            }
            if service.has_sessions() && forward.is_none() {
                bail!("--serve counter runs over TCP only");
            }
            let l = asap::transport::sctp::SctpListener::bind(at)
                .with_context(|| format!("listening on {listen}"))?;
            let bound = l.local().clone();
            let port =
                std::num::NonZeroU16::new(bound.port()).context("the listener has no port")?;
            let addrs = SctpAddresses::new(bound.addrs().iter().map(|a| Address::new(a.ip())))
                .context("1 to 16 addresses")?;
            let t = Transport::Sctp {
                port,
                transport_use,
                addrs,
            };
            let plain = common.insecure_legacy;
            (
                services::PeListener::Sctp { listener: l, plain },
                t,
                TransportAddr::Sctp(bound).to_string(),
            )
        }
    };
    // --advertise: the server at that address terminates the PUs' TLS itself; this PE
    // only registers it (and serves nothing: its listener is closed).
    let (listener, user_transport, local) = match advertise {
        Some(at) => {
            drop(listener);
            let port = std::num::NonZeroU16::new(at.port()).context("--advertise needs a port")?;
            let t = Transport::Tcp {
                port,
                transport_use: TransportUse::DataOnly,
                addr: Address::new(at.ip()),
            };
            (None, t, at.to_string())
        }
        None => (Some(listener), user_transport, local),
    };
    if common.insecure_legacy {
        eprintln!(
            "warning: --insecure-legacy: registering in plain text, unauthenticated{}",
            if matches!(listen, TransportAddr::Sctp(_)) {
                ", and serving pool users in plain text"
            } else {
                ""
            }
        );
    }
    let discovery = common.discovery().await?;
    let config = pe::PeConfig {
        registrars: common.registrars.clone(),
        discovery,
        insecure_legacy: common.insecure_legacy,
        namespace: common.namespace()?,
        pool_handle: pool_handle(&pool)?,
        pe_id: random_pe_id()?,
        policy,
        user_transport,
        registration_life,
        liveness: Duration::from_secs(15),
        load,
        asap_listen,
        business_card,
        labels,
        check: check
            .as_ref()
            .map_or(asap::wire::param::CheckKind::NONE, |c| c.check.kind()),
        // Advertised, the server's identity is always said (the PE's own by default), so
        // that the registrar's entry shows whom PUs insist on.
        serving_identity: serving_identity.or_else(|| {
            advertise.and_then(|_| {
                asap::wire::param::ServingIdentity::new(trust.identity().id().as_str())
            })
        }),
    };
    // The card's alternates come from resolving the pool once this PE has registered.
    let registered = Arc::new(tokio::sync::Notify::new());
    let card = match (&mut sessions, &mut forward) {
        (Some(s), _) => Some(&mut s.card),
        (None, Some(f)) => f.session.as_mut().map(|c| &mut c.card),
        (None, None) => None,
    };
    if let Some(card) = card {
        let (tx, rx) = tokio::sync::watch::channel(config.business_card());
        *card = Some(rx);
        let start = Arc::clone(&registered);
        let pool = pool.clone();
        tokio::spawn(client::card::keep_current(
            Arc::clone(&trust),
            config.clone(),
            tx,
            async move { start.notified().await },
            move |r| match r {
                client::card::CardReport::Names(n) => {
                    eprintln!("business card: names this PE and {n} other PEs");
                }
                client::card::CardReport::Failed(e) => {
                    eprintln!("business card: unchanged, resolving {pool} failed: {e}");
                }
                _ => {}
            },
        ));
    }
    let mut forwarder = None;
    let (handler, serving) = match forward {
        Some(f) => {
            let what = if f.session.is_some() {
                format!("{} (forwarded as a session channel)", f.target)
            } else {
                format!("{} (forwarded)", f.target)
            };
            let f = Arc::new(forward::Forwarder::new(f));
            forwarder = Some(Arc::clone(&f));
            (services::Handler::Forward(f), what)
        }
        None => (
            services::Handler::Demo {
                service,
                sessions: sessions.map(Arc::new),
            },
            format!("{service:?}"),
        ),
    };
    let gate = services::Gate::new();
    match listener {
        Some(listener) => {
            tokio::spawn(services::serve(
                listener,
                Arc::clone(&trust),
                handler,
                Arc::new(allowed),
                meter,
                Arc::clone(&gate),
            ));
            println!(
                "rsp pe: PE {} of pool {pool} serving {serving} on {local} as {}",
                config.pe_id,
                trust.identity().id()
            );
        }
        None => println!(
            "rsp pe: PE {} of pool {pool} advertising the server at {local} as {} (PUs insist on {})",
            config.pe_id,
            trust.identity().id(),
            config
                .serving_identity
                .as_ref()
                .map_or_else(String::new, ToString::to_string)
        ),
    }
    // systemd's Type=notify (contrib/systemd/rsp-pe@.service): ready once registered.
    let notifier = notify::Notifier::from_env().context("opening $NOTIFY_SOCKET")?;
    let tell = |state: &str| {
        if let Some(Err(e)) = notifier.as_ref().map(|n| n.notify(state)) {
            eprintln!("systemd notification not sent: {e}");
        }
    };
    let (stop_tx, mut stop) = stop_signals()?;
    // `rsp pe drain` over the control socket: SIGUSR1's drain, with its own deadline.
    let asked_deadline = Arc::new(std::sync::Mutex::new(None));
    let board = match control {
        Some(path) => {
            let asked = Arc::clone(&asked_deadline);
            let board = control::Board::new(
                pool.clone(),
                config.pe_id.to_string(),
                check.as_ref().map(|c| c.check.to_string()),
                Arc::clone(&gate),
                move |deadline| {
                    *asked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = deadline;
                    stop_tx.send_if_modified(|s| s.is_none() && s.replace(Stop::Drain).is_none());
                },
            );
            control::listen(&path, Arc::clone(&board))
                .await
                .with_context(|| format!("the control socket {}", path.display()))?;
            Some(board)
        }
        None => None,
    };
    let stopping = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(Option::is_some).await;
        }
    };
    let events = |event: pe::PeEvent| {
        if let Some(b) = &board {
            match &event {
                pe::PeEvent::Registered(_) | pe::PeEvent::HomeAdopted { .. } => {
                    b.set_registered(true);
                }
                pe::PeEvent::Lost(..)
                | pe::PeEvent::Refused(..)
                | pe::PeEvent::Unreachable(_)
                | pe::PeEvent::Deregistered => b.set_registered(false),
                _ => {}
            }
        }
        if let pe::PeEvent::Registered(r) = &event {
            tell(&format!(
                "READY=1\nSTATUS={}",
                notify::status_line(&format!("registered with {r}"))
            ));
        }
        pe_event(event, &registered);
    };
    match (check, forwarder) {
        (Some(check), Some(f)) => {
            let board = board.clone();
            let on_check = move |passing| {
                if let Some(b) = &board {
                    b.set_check(passing);
                }
            };
            run_checked(&trust, &config, check, f, stopping, events, on_check).await
        }
        _ => pe::run(&trust, &config, stopping, events).await,
    }
    .context("registration")?;
    tell("STOPPING=1");
    let why = *stop.borrow();
    let phase = |p| {
        if let Some(b) = &board {
            b.set_registered(false);
            b.set_phase(p);
        }
    };
    let asked = *asked_deadline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (deadline, doing, over) = match why {
        Some(Stop::Drain) => (asked.unwrap_or(drain_timeout), "draining", "drain timeout"),
        // Nothing open: nothing to wait for (and nothing more to say).
        Some(Stop::Terminate) if !stop_grace.is_zero() && gate.open() > 0 => {
            (stop_grace, "stopping", "stop grace over")
        }
        _ => {
            phase(control::Phase::Drained);
            settle(board.as_deref()).await;
            return Ok(());
        }
    };
    phase(if why == Some(Stop::Drain) {
        control::Phase::Draining
    } else {
        control::Phase::Stopping
    });
    // Deregistered: the registrar no longer returns this PE. New PUs (from a cache) are
    // refused so that they fail over; open sessions run to their end or the deadline.
    gate.drain();
    eprintln!(
        "{doing}: deregistered from pool {pool}; {} open sessions, served until they end or for {}",
        gate.open(),
        humantime::format_duration(deadline)
    );
    tokio::select! {
        () = gate.idle() => {
            eprintln!("drained: every session ended");
            phase(control::Phase::Drained);
        }
        () = tokio::time::sleep(deadline) => {
            eprintln!("{over}: closing {} open sessions", gate.open());
            phase(control::Phase::TimedOut);
        }
        _ = stop.wait_for(|s| *s == Some(Stop::Now)) => {
            eprintln!("stopped while {doing}: closing {} open sessions", gate.open());
            phase(control::Phase::TimedOut);
        }
    }
    settle(board.as_deref()).await;
    Ok(())
}

/// Lets `rsp pe drain` clients read the last state before the process exits (at most a
/// second).
async fn settle(board: Option<&control::Board>) {
    if let Some(b) = board {
        b.settle(Duration::from_secs(1)).await;
    }
}

/// Why `rsp pe` stops. Each deregisters first; they differ in how long open sessions
/// are served after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM (systemd's stop, a container's): refuse new sessions, serve the open ones
    /// for at most `--stop-grace`, then exit.
    Terminate,
    /// SIGUSR1: refuse new sessions, exit once the open ones end (`--drain-timeout`).
    Drain,
    /// Ctrl-C, or SIGTERM once already stopping or draining: exit at once.
    Now,
}

/// The stop signals, as they arrive; the sender, for the control socket's drain.
#[allow(clippy::type_complexity)]
fn stop_signals() -> anyhow::Result<(
    tokio::sync::watch::Sender<Option<Stop>>,
    tokio::sync::watch::Receiver<Option<Stop>>,
)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let sender = tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    eprintln!("SIGUSR1: draining");
                    tx.send_replace(Some(Stop::Drain));
                }
                _ = term.recv() => {
                    let again = tx.borrow().is_some();
                    tx.send_replace(Some(if again { Stop::Now } else { Stop::Terminate }));
                    if again {
                        return;
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    tx.send_replace(Some(Stop::Now));
                    return;
                }
            }
        }
    });
    Ok((sender, rx))
}

/// One line on stderr for what the PE's registration does (the e2e tests read them).
fn pe_event(event: pe::PeEvent, registered: &tokio::sync::Notify) {
    match event {
        pe::PeEvent::Registered(r) => {
            registered.notify_one();
            eprintln!("registered with {r}");
        }
        pe::PeEvent::Lost(r, e) => eprintln!("lost registrar {r} ({e}); hunting"),
        pe::PeEvent::Unreachable(e) => eprintln!("{e}; retrying until one answers"),
        pe::PeEvent::Refused(r, e) => eprintln!("registrar {r}: {e}"),
        pe::PeEvent::HomeAdopted {
            server_id,
            registrar,
        } => eprintln!("adopted registrar {server_id} at {registrar} as home"),
        pe::PeEvent::LoadUpdated(l) => eprintln!(
            "re-registered with load {}%",
            u64::from(l) * 100 / u64::from(u32::MAX)
        ),
        pe::PeEvent::Deregistered => eprintln!("deregistered"),
        _ => {}
    }
}

/// The PE's registration gated by its server's health (`--check`): registered while the
/// checks pass, deregistered after `fall` failures in a row, registered again with the same
/// PE ID after `rise` successes, until Ctrl-C or SIGTERM.
async fn run_checked(
    trust: &Arc<TrustStore>,
    config: &pe::PeConfig,
    check: check::CheckConfig,
    forwarder: Arc<forward::Forwarder>,
    shutdown: impl Future<Output = ()>,
    mut events: impl FnMut(pe::PeEvent),
    on_check: impl Fn(bool) + Send + 'static,
) -> Result<(), client::Error> {
    use check::{CheckEvent, State};
    let (tx, mut health) = tokio::sync::watch::channel(State::Unknown);
    let (kind, rise) = (check.check.to_string(), check.rise);
    let target = forwarder.config().target.clone();
    let checks = tokio::spawn(check::run(check, target, tx, move |event| match event {
        CheckEvent::Changed(state, why) => {
            // New PUs are refused at once while failing, so that they fail over.
            forwarder.set_healthy(state == State::Passing);
            on_check(state == State::Passing);
            match why {
                None => eprintln!("health check {kind} passing"),
                Some(why) => eprintln!("health check {kind} failing: {why}"),
            }
        }
        CheckEvent::Failed(why) => eprintln!("health check {kind} failed: {why}"),
        _ => {}
    }));
    let _checks = AbortOnDrop(checks);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            passing = health.wait_for(|s| *s == State::Passing) => {
                if passing.is_err() {
                    return Ok(()); // the checks ended: only with the runtime
                }
            }
            () = &mut shutdown => return Ok(()),
        }
        let mut stopped = false;
        let mut failing = health.clone();
        let out = async {
            tokio::select! {
                _ = failing.wait_for(|s| *s == State::Failing) => {}
                () = &mut shutdown => stopped = true,
            }
        };
        pe::run(trust, config, out, &mut events).await?;
        if stopped {
            return Ok(());
        }
        eprintln!(
            "left pool {}: its server fails its health check; PE {} registers again after {rise} passing checks",
            config.pool_handle, config.pe_id
        );
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_resolve(
    pool: String,
    own: config::ResolveOptions,
    common: Common,
) -> anyhow::Result<()> {
    let config::ResolveOptions { items, json, hints } = own;
    let trust = common.trust_for(true)?;
    let (namespace, handle) = (common.namespace()?, pool_handle(&pool)?);
    // A registrar that refuses for lack of resources (still starting) is passed over for
    // the next one, once each; the last answer is the one reported.
    let (mut start, mut tries) = (0, 1);
    let started = tokio::time::Instant::now();
    let discovery = common.discovery().await?;
    let resolved = loop {
        let hunted = client::discovery::hunt(
            &trust,
            &common.registrars,
            discovery.as_ref(),
            start,
            common.insecure_legacy,
        )
        .await;
        let (mut conn, idx) = match (hunted, &discovery, &common.discover) {
            (Ok(c), ..) => c,
            // Only announced registrars, all refused: wait for another one to announce
            // (or a hold to end), up to --discover-timeout from the start.
            (Err(e), Some(d), Some((_, wait, _)))
                if common.registrars.is_empty() && started.elapsed() < *wait =>
            {
                d.wait(&[], wait.saturating_sub(started.elapsed()))
                    .await
                    .map_err(|_| e)?;
                continue;
            }
            (Err(e), ..) => return Err(e.into()),
        };
        let known = match &discovery {
            Some(d) => d.candidates(&common.registrars).len(),
            None => common.registrars.len(),
        };
        match pu::resolve_hinted(&mut conn, namespace.clone(), &handle, items, hints.clone()).await
        {
            Err(e) if e.is_transient() && tries < known => {
                eprintln!("{}: {e}", conn.registrar());
                (start, tries) = (idx + 1, tries + 1);
            }
            other => break other.with_context(|| format!("resolving {pool}"))?,
        }
    };
    for e in &resolved.pool_elements {
        let t = &e.pool_element.user_transport;
        let addr = t
            .addresses()
            .first()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let registrant = e.registrant.as_ref().map_or("", |r| r.as_str());
        let all: Vec<String> = t
            .addresses()
            .iter()
            .map(|a| json_string(&a.ip().to_string()))
            .collect();
        let kind = match t {
            Transport::Sctp { .. } => "sctp",
            Transport::Tcp { .. } => "tcp",
            _ => "other",
        };
        let ty = e.pool_element.policy.policy_type();
        // A private type (docs/PROTOCOL-EXTENSIONS.md) in hex.
        let policy = if ty == asap::policy::LeastUsedDistance::POLICY_TYPE {
            asap::policy::LeastUsedDistance::NAME.to_owned()
        } else {
            ty.name()
                .map_or_else(|| format!("{:#010x}", ty.0), str::to_owned)
        };
        let labels = &e.pool_element.labels;
        if json {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                .collect();
            println!(
                "{{\"pe_id\":{},\"address\":\"{addr}\",\"addresses\":[{}],\"transport\":\"{kind}\",\"port\":{},\"policy\":\"{policy}\",\"home\":{},\"registrant\":{},\"labels\":{{{}}}}}",
                e.pool_element.pe_id.get(),
                all.join(","),
                t.port(),
                e.pool_element.home_server_id,
                json_string(registrant),
                labels.join(","),
            );
        } else {
            let extra = if all.len() > 1 || kind == "sctp" {
                format!(" over {kind} (addresses {})", all.join(" "))
            } else {
                String::new()
            };
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!(" labels {labels}")
            };
            println!(
                "PE {} at {addr}:{}{extra} policy {policy} registrant {registrant}{labels}",
                e.pool_element.pe_id,
                t.port()
            );
        }
    }
    Ok(())
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn pool_user(
    common: &Common,
    trust: Arc<TrustStore>,
    pool: &str,
) -> anyhow::Result<PoolUser> {
    let mut config = pu::PuConfig::new(common.registrars.clone(), pool_handle(pool)?);
    config.discovery = common.discovery().await?;
    config.namespace = common.namespace()?;
    config.insecure_legacy = common.insecure_legacy;
    Ok(PoolUser::new(trust, config))
}

/// The pool user: lines to a PE chosen by the pool policy, answers back; on failure the
/// PE is reported (spec §7.6) and the next one used, the session resumed from its last
/// cookie (spec §7.8). Stays with a PE while it works (session affinity, draft §5). The
/// loop is `asap::client::failover::Session`; here, its events become lines on stderr.
async fn run_pu(pool: String, common: Common) -> anyhow::Result<()> {
    let trust = common.trust_for(true)?;
    common.keep_reloaded(&trust)?;
    let users = pool_user(&common, Arc::clone(&trust), &pool).await?;
    let mut session = failover::Session::new(&users);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut fallback_said = false;
    while let Some(line) = stdin.next_line().await? {
        let answer = session
            .exchange(&line, |event| report(&pool, event))
            .await
            .with_context(|| format!("no PE of {pool} is reachable"))?;
        // Once: a private policy this PU has no selector for (docs/PROTOCOL-EXTENSIONS.md).
        if !fallback_said && let Some(ty) = users.policy_fallback().await {
            eprintln!(
                "pool {pool}: policy {:#010x} has no selector here; selecting round robin",
                ty.0
            );
            fallback_said = true;
        }
        stdout.write_all(answer.as_bytes()).await?;
        stdout.write_all(b"\n").await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// One line on stderr for what a PU session does (the e2e tests read them).
fn report(pool: &str, event: failover::Event<'_>) {
    use failover::Event;
    match event {
        Event::Waiting(err) => eprintln!("no PE of {pool} known yet ({err}); retrying"),
        Event::Stale(why) => eprintln!("using the cached resolution of {pool}, stale: {why}"),
        Event::Using(pe_id) => eprintln!("using PE {pe_id}"),
        Event::Unreachable(pe_id, err) => {
            eprintln!(
                "PE {pe_id} unreachable ({}); failing over",
                error_chain(err)
            );
        }
        Event::Failed(pe_id, err) => {
            eprintln!("PE {pe_id} failed ({}); failing over", error_chain(err));
        }
        Event::CookieRefused { pe, cause } => eprintln!(
            "PE {pe} refused the session cookie (cause {cause:#x}); the session starts afresh"
        ),
        Event::BusinessCard {
            pe,
            pool: card_pool,
            pes,
            order,
        } => match order {
            Ok(order) => {
                let order: Vec<String> = order.iter().map(ToString::to_string).collect();
                eprintln!(
                    "business card: pool {card_pool}, {pes} PEs (failover order {})",
                    order.join(" ")
                );
            }
            Err(err) => eprintln!("refused a business card from PE {pe}: {err}"),
        },
        Event::FailedOver { from, to, took } => eprintln!(
            "failed over from PE {from} to PE {to} in {:.1} ms",
            took.as_secs_f64() * 1000.0
        ),
        _ => {}
    }
}

/// The gateway for clients that do not speak ASAP (draft-tuexen-rserpool-reqts §2.5.2):
/// each accepted TCP connection is carried over TLS to a PE chosen by the pool policy
/// (the registrar's order); a PE that cannot be reached is reported and the next tried.
async fn run_gateway(listen: SocketAddr, pool: String, common: Common) -> anyhow::Result<()> {
    let trust = common.trust()?;
    common.keep_reloaded(&trust)?;
    let users = Arc::new(pool_user(&common, Arc::clone(&trust), &pool).await?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    // Resolve once now, so that a pool that does not exist is an error at start; no
    // registrar answering yet is not (each client resolves again).
    match users.select().await {
        Err(e) if e.is_transient() => eprintln!("resolving {pool}: {e}; serving anyway"),
        other => {
            other.with_context(|| format!("resolving {pool}"))?;
        }
    }
    println!(
        "rsp gateway: {} → pool {pool} as {}",
        listener.local_addr()?,
        trust.identity().id()
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let users = Arc::clone(&users);
        tokio::spawn(async move {
            let mut client = client;
            let carried = gateway::forward(&mut client, &users, |pe_id, err| {
                eprintln!(
                    "PE {pe_id} unreachable ({}); trying the next",
                    error_chain(err)
                );
            });
            if let Err(e) = carried.await {
                eprintln!("client {peer}: {}", error_chain(&e));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn insecure_legacy_needs_no_certificate_only_where_every_hop_is_plain() {
        let common = |registrars: &[&str], insecure_legacy: bool| Common {
            cert: None,
            key: None,
            ca: "pki/ca.pem".into(),
            registrars: registrars
                .iter()
                .map(|r| r.parse().expect("registrar"))
                .collect(),
            discover: None,
            insecure_legacy,
            namespace: None,
            crl: None,
            registrar_ids: Vec::new(),
        };
        // Plain text all the way: an identity nobody trusts, that trusts nobody.
        let store = common(&["sctp:192.0.2.1:3863"], true)
            .trust_for(true)
            .expect("no certificate needed");
        assert_eq!(store.identity().id().as_str(), ANONYMOUS);
        assert!(store.domains().is_empty());
        // Any TLS hop still needs one.
        for (registrars, legacy, plain_ok) in [
            (&["127.0.0.1:3864"][..], true, true),
            (&["sctp:192.0.2.1:3863", "127.0.0.1:3864"][..], true, true),
            (&["sctp:192.0.2.1:3863"][..], false, true),
            (&["sctp:192.0.2.1:3863"][..], true, false),
        ] {
            let err = common(registrars, legacy)
                .trust_for(plain_ok)
                .expect_err("a certificate is needed");
            assert!(err.to_string().starts_with("no certificate"), "{err}");
        }
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        // What a registrar that vanishes mid-answer looked like: the rustls text three times.
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify",
        );
        let err = anyhow::Error::from(client::Error::Read(asap::transport::ReadError::Io(eof)))
            .context("resolving echo");
        assert_eq!(
            chain(&err),
            "resolving echo: framing: read failed: peer closed connection without sending TLS \
             close_notify"
        );
        assert_eq!(format!("{err:#}").matches("close_notify").count(), 3);
        // Causes that add something are all kept.
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(chain(&err), "outer: middle: inner");
    }
}
