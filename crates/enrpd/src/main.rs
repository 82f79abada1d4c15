//! `enrpd`: the rsp registrar. Thin: the command line, its configuration layers
//! (`layers`), logging and signals here; the work in `enrp` (`enrp::run`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use enrp::config::{LogFormat, RunConfig};
use enrp::daemon::now_ms;
use enrp::setup;
use tokio::signal::unix::{SignalKind, signal};

use crate::layers::{RunArgs, changed_keys};

mod layers;
mod notify;

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
        /// The store: `sqlite://PATH`, or `postgres://USER@HOST/DB` (also
        /// `?host=/run/postgresql` for a Unix socket) for a fleet of registrars sharing
        /// one (docs/STORE.md). Recorded in the data directory, so that `run` and every
        /// other subcommand use it. No password in the URL: PGPASSWORD or ~/.pgpass.
        /// Default: the data directory's rsp.db.
        #[arg(long, env = "ENRPD_STORE", value_name = "URL")]
        store: Option<String>,
        /// Join the fleet whose PostgreSQL store (--store) another registrar initialised:
        /// install this registrar's own files and share the fleet's trust domain, grants
        /// and tokens (no new admin token).
        #[arg(long, requires = "store")]
        join: bool,
    },
    /// Run the store's pending migrations (`init` and `run` do too) and print its schema
    /// version; a store written by a newer rsp is refused.
    Migrate {
        /// The store URL (as `init --store`).
        #[arg(long, env = "ENRPD_STORE", value_name = "URL", conflicts_with = "data")]
        store: Option<String>,
        /// Or the data directory whose store to migrate.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
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
    /// Move the registrar's store (`store copy`: from its SQLite file to PostgreSQL).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
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
enum StoreCommand {
    /// Copy the data directory's SQLite store, row for row with its audit log, into an
    /// empty PostgreSQL database, verify the copy's audit chains, and make the data
    /// directory use it. Stop the registrar first. The SQLite file is left as it was (the
    /// fallback: the saved enrpd.json.sqlite-<ms> points back to it).
    Copy {
        /// The data directory.
        #[arg(long, env = "ENRPD_DATA", default_value = "enrpd-data")]
        data: PathBuf,
        /// The empty PostgreSQL database: `postgres://USER@HOST/DB` (no password: use
        /// PGPASSWORD or ~/.pgpass).
        #[arg(long, value_name = "URL")]
        to: String,
    },
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
        role: store::db::Role,
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
    /// Move this registrar's records older than --before (or below --before-seq) into a
    /// gzip'd JSON Lines archive that verifies on its own, then delete them from the live
    /// log, which keeps the archived head as its anchor. Works while `enrpd run` runs; in
    /// a shared store the other registrars' records stay.
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

/// mimalloc instead of glibc's malloc (issue 20): the registrar allocates and frees a few
/// small buffers per message (frames, decoded messages, audit records, encoded replies),
/// across threads (a connection task allocates, the core task frees), and glibc's
/// allocator was ~10 % of its CPU in the registration profile (docs/BENCHMARKS.md).
/// mimalloc's thread-local free lists make those cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            store,
            join,
        } => {
            let now = now_ms();
            let options = setup::InitOptions {
                name,
                token_expires_ms: admin_token_expires_in_days.map(|d| days_after(now, d)),
                store,
                join,
            };
            let report = setup::init_with(&pki, &data, &options, now)
                .await
                .context("enrpd init")?;
            println!("initialised {}", data.display());
            println!(
                "  registrar  {} (Server ID {})",
                report.identity, report.server_id
            );
            match report.admin_token {
                Some(token) => {
                    let expiry = admin_token_expires_in_days
                        .map_or_else(String::new, |d| format!("; it expires in {d} days"));
                    println!("  admin token (shown once, store it now{expiry}): {token}");
                }
                None => {
                    println!("  joined the fleet's store: its grants and admin tokens apply here")
                }
            }
            // After the token: scripts take the first `rsp_…` word of the output.
            println!("  store      {}", report.store);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { store, data } => {
            let (url, version) = setup::migrate(store.as_deref(), data.as_deref())
                .await
                .context("enrpd migrate")?;
            println!("{url}: schema at version {version}");
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
        Command::Store {
            command: StoreCommand::Copy { data, to },
        } => {
            let done = setup::copy_store(&data, &to, now_ms())
                .await
                .context("enrpd store copy")?;
            println!("copied {} to {}:", done.from.display(), done.to);
            for (table, rows) in &done.report.rows {
                println!("  {table:<20} {rows} rows");
            }
            for chain in &done.report.chains {
                println!(
                    "  audit chain {} verified: {} records to id {}, head {}",
                    chain.chain,
                    chain.checked,
                    chain.last_id,
                    chain.head_hex()
                );
            }
            println!(
                "{} now uses {}; the SQLite file is unchanged (the fallback: {} restores it)",
                data.display(),
                done.to,
                done.backup.display()
            );
            Ok(ExitCode::SUCCESS)
        }
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
                (Some(t), _) => store::audit::archive::Cut::Before(
                    store::audit::archive::parse_time(&t).context("--before")?,
                ),
                (None, Some(n)) => store::audit::archive::Cut::BeforeId(n),
                (None, None) => bail!("give --before TIME or --before-seq N"),
            };
            let loaded = setup::load(&data)
                .await
                .context("loading the data directory")?;
            let done = setup::archive_audit(&loaded, to, cut, now_ms())
                .await
                .context("enrpd audit archive")?;
            // In a shared store only this registrar's records of the range are archived.
            println!(
                "archived records {}-{} to {} ({} records, {} bytes, sha256 {}); the live log \
                 continues from record {} (audited as record {})",
                done.anchor.first_id,
                done.anchor.last_id,
                done.path.display(),
                done.records,
                done.bytes,
                hex::encode(done.anchor.sha256),
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
            let own = loaded.audit_chain();
            let mut conn = loaded.store.acquire().await?;
            let reports = store::audit::verify(&mut conn).await?;
            // Every chain of the store (one per registrar of a fleet), one line each.
            for report in &reports {
                print_chain(report);
            }
            if reports.iter().any(|r| !r.is_intact()) {
                return Ok(ExitCode::FAILURE);
            }
            let report = reports
                .into_iter()
                .find(|r| r.chain == own)
                .unwrap_or_else(|| store::audit::VerifyReport::empty(own.clone()));
            if report.checked == 0 && report.anchor.is_none() {
                print_chain(&report);
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
                match store::audit::archive::check_archives(&mut conn, &archive, probe).await? {
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
                return check_checkpoint(checkpoint, &report, archived.as_ref(), &loaded.store)
                    .await;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One chain's result: `audit chain intact: …` as before fleets, followed by
/// ` (registrar spiffe://…)` for a registrar's chain in a shared store.
fn print_chain(report: &store::audit::VerifyReport) {
    let whose = match report.chain.registrar() {
        Some(id) => format!(" (registrar {id})"),
        None => String::new(),
    };
    match report.broken {
        None => {
            println!(
                "audit chain intact: {} records, head {}{whose}",
                report.checked,
                report.head_hex()
            );
            if let Some(a) = &report.anchor {
                println!(
                    "  starting after archived record {} (hash {}, last archive {})",
                    a.last_id,
                    hex::encode(a.last_hash),
                    a.file
                );
            }
        }
        Some(link) => println!(
            "audit chain broken at record {}: {} (last intact record {}){whose}",
            link.id, link.reason, report.last_id
        ),
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
    // The registrar checkpoints its own chain.
    let report = store::audit::verify_chain(&mut conn, &loaded.audit_chain()).await?;
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

/// `enrpd audit verify --archive FILE…`: what the archives cover, per chain.
fn print_archives(check: &store::audit::archive::ArchiveCheck) {
    for a in &check.archives {
        let whose = match a.chain.registrar() {
            Some(id) => format!(" (registrar {id})"),
            None => String::new(),
        };
        println!(
            "archive {}: records {}-{} intact, sha256 {}{whose}",
            a.path.display(),
            a.header.first_id,
            a.header.last_id,
            hex::encode(a.sha256)
        );
    }
    for links in &check.links {
        for name in &links.sha256_differs {
            println!("  note: {name} is not the file archived (recompressed?); its records verify");
        }
        let whose = match links.chain.registrar() {
            Some(id) => format!(" of registrar {id}"),
            None => String::new(),
        };
        if links.from_genesis {
            println!(
                "archives{whose} link to the live log: the whole chain from record {} verifies",
                links.from_id
            );
        } else {
            println!(
                "archives{whose} link to the live log; records before {} not checked \
                 (their archives not given)",
                links.from_id
            );
        }
    }
}

/// `enrpd audit verify --checkpoint FILE`, after the chain checked intact: the signature,
/// then that the chain still holds the signed head (in the live log, at an archive anchor,
/// or in an archive given with `--archive`).
async fn check_checkpoint(
    checkpoint: Result<enrp::checkpoint::Checkpoint, String>,
    report: &store::audit::VerifyReport,
    archived: Option<&store::audit::archive::ArchiveCheck>,
    store: &store::db::Store,
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
        Some(report.chain.genesis())
    } else if checkpoint.id <= anchored {
        let mut conn = store.acquire().await?;
        let anchors = store::audit::archive::anchors(&mut conn, &report.chain).await?;
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
        let mut filter = store::audit::AuditFilter::default();
        filter.order = store::audit::Order::OldestFirst;
        filter.cursor = Some(checkpoint.id - 1);
        filter.chain = Some(report.chain.clone());
        filter.limit = 1;
        let mut conn = store.acquire().await?;
        store::audit::query(&mut conn, &filter)
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
    let serving = format!(
        "enrpd: serving ASAP on {} (Server ID {}){admin_text}{enrp_text}",
        running.asap_addr(),
        running.server_id()
    );
    println!("{serving}");
    // systemd's Type=notify (contrib/systemd/enrpd.service): ready once the line above
    // is true.
    let notifier = notify::Notifier::from_env().context("opening $NOTIFY_SOCKET")?;
    let tell = |state: &str| {
        if let Some(Err(error)) = notifier.as_ref().map(|n| n.notify(state)) {
            tracing::warn!(%error, state, "systemd notification not sent");
        }
    };
    tell(&format!(
        "READY=1\nSTATUS={}",
        notify::status_line(&serving)
    ));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; break; }
            _ = hup.recv() => {
                // SIGHUP: certificate, CRL, grants, default namespaces, without a restart.
                // A bad file changes nothing and is logged; the registrar keeps serving.
                tell("RELOADING=1");
                match running.reload().await {
                    Ok(()) => tell("READY=1\nSTATUS=reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "reload failed; nothing changed");
                        tell(&format!(
                            "READY=1\nSTATUS={}",
                            notify::status_line(&format!("reload failed, nothing changed: {e}"))
                        ));
                    }
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
    tell("STOPPING=1");
    running.shutdown().await.context("shutting down")
}

/// `days` after `now_ms`, in unix ms (token expiries).
fn days_after(now_ms: u64, days: u32) -> u64 {
    now_ms + u64::from(days) * 86_400_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_help_shows_each_default_and_variable() {
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
}
