//! `enrpd init` and what `enrpd run` loads: the data directory, its SQLite store, the
//! registrar's identity from an `rsp-pki` directory, and the first grants and admin token.
//!
//! Data directory layout: `enrpd.json` (where the PKI files and the store are, written by
//! `init`), the registrar's copies of its PKI files, and the store when it is the default
//! SQLite file (`rsp.db`, see `store::db`). A store given with `--store URL` (a SQLite file
//! elsewhere, or a PostgreSQL database that a fleet of registrars shares: docs/STORE.md)
//! is recorded in `enrpd.json`, so that every subcommand opens the same one.

use enrp_core::server_id_of;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use asap::wire::param::ServerId;
use identity::{Grant, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use store::db::{self, Store, StoreOptions};
use trust::{DomainBundle, LocalIdentity, TrustStore};

/// Name of the installation file in the data directory.
pub const INSTALL_FILE: &str = "enrpd.json";

/// Why setting up or loading the registrar failed. Each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory is initialised already.
    #[error("{0} is already initialised (remove it to start over)")]
    AlreadyInitialised(PathBuf),
    /// The data directory was never initialised.
    #[error("{0} is not initialised: run `enrpd init --pki DIR` first")]
    NotInitialised(PathBuf),
    /// The registrar certificate could not be chosen.
    #[error("{0}")]
    Identity(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The installation file is damaged.
    #[error("{path}: {reason}")]
    Install {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificates or keys were refused.
    #[error("{0}")]
    Trust(#[from] trust::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] db::Error),
    /// A store URL that rsp does not take.
    #[error("store URL {url}: {reason}")]
    StoreUrl {
        /// The URL, without a password.
        url: String,
        /// Why, and what to do.
        reason: String,
    },
    /// `--store` names another store than the one `enrpd init` recorded.
    #[error(
        "{data} was initialised with the store {recorded}, not {given}: drop --store (and \
         ENRPD_STORE, `store` in the config file) or give the recorded one"
    )]
    StoreMismatch {
        /// The data directory.
        data: PathBuf,
        /// The store its `enrpd.json` records.
        recorded: String,
        /// The store given.
        given: String,
    },
    /// `init` (not `--join`) on a store that another installation initialised already.
    #[error(
        "the store {url} already holds the local trust domain {domain} (another registrar \
         initialised it): to add this registrar to that fleet, run `enrpd init --join \
         --store {url} --pki DIR --data DIR` (it shares the fleet's grants and tokens)"
    )]
    StoreInitialised {
        /// The store, without a password.
        url: String,
        /// Its local trust domain.
        domain: String,
    },
    /// `init --join` on a store that is not a fleet this registrar can join.
    #[error("cannot join the store {url}: {reason}")]
    Join {
        /// The store, without a password.
        url: String,
        /// Why, and what to do.
        reason: String,
    },
}

/// Where `enrpd run` finds its PKI files; written by `init` as `enrpd.json`. Since issue
/// 17 these are the registrar's own copies in its data directory (`enrpd update-pki`
/// refreshes them); an older installation may still name the PKI directory's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// The registrar's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The local trust domain's root bundle (PEM).
    pub ca: PathBuf,
    /// The local trust domain's CRL (PEM), used when the file exists.
    pub crl: PathBuf,
    /// The store (`--store URL` of `init`, never with a password); absent (as in every
    /// installation before issue 19): the data directory's `rsp.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// Checks a store URL and returns it as `enrpd.json` records it: `sqlite://` with an
/// absolute path (`enrpd run` may start elsewhere), `postgres://` / `postgresql://` as
/// given. A password in the URL is refused: it would be written to `enrpd.json` and show
/// in `ps`; PostgreSQL's own `PGPASSWORD` or a passfile (`~/.pgpass`, `PGPASSFILE`), which
/// sqlx reads when the URL has none, keep it out of both (docs/STORE.md). A server that is
/// not reached over a Unix socket or loopback must be reached with `sslmode=verify-full`
/// or `verify-ca` ([`db::check_postgres_transport`]).
pub fn check_store_url(url: &str) -> Result<String, Error> {
    let refuse = |reason: &str| Error::StoreUrl {
        url: db::redact_url(url),
        reason: reason.to_owned(),
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(refuse("no file after sqlite://"));
        }
        let path = Path::new(path);
        let abs = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()
                .map_err(|source| Error::File {
                    path: path.to_owned(),
                    source,
                })?
                .join(path)
        };
        return Ok(format!("sqlite://{}", abs.display()));
    }
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(refuse("expected sqlite://PATH or postgres://…"));
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'));
    let in_query = query
        .split('&')
        .any(|p| p.split('=').next().is_some_and(|k| k == "password"));
    if in_userinfo || in_query {
        return Err(refuse(
            "a password in the URL would be recorded in enrpd.json and seen in `ps`: give \
             it with PGPASSWORD or a passfile (~/.pgpass or PGPASSFILE) instead",
        ));
    }
    // A server off this machine only with TLS that verifies it (docs/SECURITY.md).
    db::check_postgres_transport(url).map_err(|e| refuse(&e.to_string()))?;
    Ok(url.to_owned())
}

/// The store an installation uses, as a URL (for messages and comparisons).
fn store_url_of(data: &Path, install: &Install) -> String {
    match &install.store {
        Some(url) => url.clone(),
        None => {
            let data = fs::canonicalize(data).unwrap_or_else(|_| data.to_owned());
            format!("sqlite://{}", data.join(db::DB_FILE).display())
        }
    }
}

/// Opens an installation's store (running pending migrations).
async fn open_store(data: &Path, install: &Install) -> Result<Store, Error> {
    Ok(match &install.store {
        Some(url) => Store::connect(url, &StoreOptions::default()).await?,
        None => Store::open(data, &StoreOptions::default()).await?,
    })
}

/// What `init` did, for the one message it prints.
#[derive(Debug)]
pub struct InitReport {
    /// The registrar's identity.
    pub identity: SpiffeId,
    /// Its Server ID.
    pub server_id: ServerId,
    /// The first admin token; shown once, only its hash is stored. `None` when the
    /// registrar joined a fleet's store: the fleet's tokens apply.
    pub admin_token: Option<String>,
    /// The store, as recorded (the data directory's `rsp.db` by default).
    pub store: String,
}

/// What `enrpd init` is given.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Which registrar certificate of the PKI directory (`--name`).
    pub name: Option<String>,
    /// When the first admin token expires (unix ms; `None`: never).
    pub token_expires_ms: Option<u64>,
    /// `--store URL`; `None`: the data directory's `rsp.db`.
    pub store: Option<String>,
    /// `--join`: the store is a fleet's that another registrar initialised; this one
    /// installs its own files and shares the fleet's trust domain, grants and tokens.
    pub join: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

/// Picks `DIR/registrar-NAME.pem`; without a name, the only registrar certificate in DIR.
fn registrar_files(pki: &Path, name: Option<&str>) -> Result<Install, Error> {
    let stem = match name {
        Some(n) => format!("registrar-{n}"),
        None => {
            let entries = fs::read_dir(pki).map_err(|source| Error::File {
                path: pki.to_owned(),
                source,
            })?;
            let mut found: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|f| f.starts_with("registrar-") && f.ends_with(".pem"))
                .map(|f| f.trim_end_matches(".pem").to_owned())
                .collect();
            found.sort();
            match found.len() {
                1 => found.remove(0),
                0 => {
                    return Err(Error::Identity(format!(
                        "no registrar certificate in {}: run `rsp-pki issue registrar NAME` first",
                        pki.display()
                    )));
                }
                _ => {
                    return Err(Error::Identity(format!(
                        "several registrar certificates in {} ({}): choose one with --name",
                        pki.display(),
                        found.join(", ")
                    )));
                }
            }
        }
    };
    let abs = fs::canonicalize(pki).map_err(|source| Error::File {
        path: pki.to_owned(),
        source,
    })?;
    let install = Install {
        cert: abs.join(format!("{stem}.pem")),
        key: abs.join(format!("{stem}.key")),
        ca: abs.join("ca.pem"),
        crl: abs.join("crl.pem"),
        store: None,
    };
    for f in [&install.cert, &install.key, &install.ca] {
        if !f.exists() {
            return Err(Error::Identity(format!("{} does not exist", f.display())));
        }
    }
    Ok(install)
}

/// The grants that make the quickstart work in the local trust domain (issue 4): PEs
/// register and PUs resolve and report in `default`, registrars peer. An operator
/// tightens them over the admin API.
pub fn default_grants(domain: &TrustDomain) -> Vec<Grant> {
    let d = domain.as_str();
    let grant = |who: String, actions: &[identity::Action]| -> Grant {
        Grant {
            identity: who
                .parse()
                .expect("a valid pattern from a valid trust domain"),
            namespace: "default".parse().expect("valid namespace"),
            pools: "*".parse().expect("valid pool pattern"),
            actions: actions.iter().copied().collect(),
            labels: None,
        }
    };
    vec![
        grant(format!("spiffe://{d}/pe/*"), &[identity::Action::Register]),
        grant(
            format!("spiffe://{d}/pu/*"),
            &[identity::Action::Resolve, identity::Action::Report],
        ),
        grant(
            format!("spiffe://{d}/gateway/*"),
            &[identity::Action::Resolve, identity::Action::Report],
        ),
        grant(
            format!("spiffe://{d}/registrar/*"),
            &[identity::Action::Peer],
        ),
    ]
}

/// `enrpd init`: creates the data directory and store, records the local trust domain,
/// the `default` namespace, the default grants and the first admin token. Refuses an
/// initialised directory; on failure it leaves no half-initialised one behind.
pub async fn init(
    pki: &Path,
    name: Option<&str>,
    data: &Path,
    now_ms: u64,
) -> Result<InitReport, Error> {
    init_with_token_expiry(pki, name, data, now_ms, None).await
}

/// [`init`], with the first admin token expiring at `token_expires_ms` (unix ms; `None`:
/// never), so that a bootstrap credential does not outlive its use.
pub async fn init_with_token_expiry(
    pki: &Path,
    name: Option<&str>,
    data: &Path,
    now_ms: u64,
    token_expires_ms: Option<u64>,
) -> Result<InitReport, Error> {
    let options = InitOptions {
        name: name.map(str::to_owned),
        token_expires_ms,
        ..InitOptions::default()
    };
    init_with(pki, data, &options, now_ms).await
}

/// `enrpd init [--store URL] [--join]`: [`init`] on the store `options` name. A store
/// (any backend) that holds a local trust domain already is refused, unless `join`: then
/// it must hold this registrar's trust domain with the same roots, and nothing is added
/// to it; the registrar's own files go to `data` as always. Everything written to the
/// store is one transaction (on PostgreSQL under the store's write lock, so two
/// concurrent `init`s cannot both create a fleet).
pub async fn init_with(
    pki: &Path,
    data: &Path,
    options: &InitOptions,
    now_ms: u64,
) -> Result<InitReport, Error> {
    let install_path = data.join(INSTALL_FILE);
    let store_url = options.store.as_deref().map(check_store_url).transpose()?;
    if install_path.exists() || (store_url.is_none() && data.join(db::DB_FILE).exists()) {
        return Err(Error::AlreadyInitialised(data.to_owned()));
    }
    let shown = |url: &Option<String>| {
        url.as_deref()
            .map_or_else(|| "rsp.db".into(), db::redact_url)
    };
    if options.join && !store_url.as_deref().is_some_and(is_postgres) {
        return Err(Error::Join {
            url: shown(&store_url),
            reason: "--join takes a fleet's shared store: --store postgres://…".into(),
        });
    }
    let mut install = registrar_files(pki, options.name.as_deref())?;
    let identity = LocalIdentity::from_pem(&read(&install.cert)?, &read(&install.key)?)?;
    let id = identity.id().clone();
    let domain = id.trust_domain();
    let roots = read(&install.ca)?;
    DomainBundle::from_pem(domain.clone(), &roots)?; // refuse a bundle that does not parse
    let roots = String::from_utf8(roots).map_err(|_| Error::Install {
        path: install.ca.clone(),
        reason: "not UTF-8 PEM".into(),
    })?;
    install.store = store_url.clone();
    // What this run creates, to remove on failure: the directory, a SQLite file.
    let created = !data.exists();
    let sqlite_file = match &store_url {
        None => Some(data.join(db::DB_FILE)),
        Some(url) => url.strip_prefix("sqlite://").map(PathBuf::from),
    }
    .filter(|f| !f.exists());
    let result = async {
        db::create_private_dir(data)?;
        let store = open_store(data, &install).await?;
        let written = async {
            let mut tx = store.begin().await?;
            let local = db::list_trust_domains(&mut tx)
                .await?
                .into_iter()
                .find(|d| d.is_local);
            let token = match (local, options.join) {
                (Some(d), false) => {
                    return Err(Error::StoreInitialised {
                        url: shown(&store_url),
                        domain: d.name.to_string(),
                    });
                }
                (None, true) => {
                    return Err(Error::Join {
                        url: shown(&store_url),
                        reason: "it holds no fleet yet: initialise it with `enrpd init \
                                 --store URL` (without --join) on the first registrar"
                            .into(),
                    });
                }
                (Some(d), true) => {
                    if d.name != domain {
                        return Err(Error::Join {
                            url: shown(&store_url),
                            reason: format!(
                                "its trust domain is {}, this registrar's {domain}",
                                d.name
                            ),
                        });
                    }
                    if d.roots_pem.trim() != roots.trim() {
                        return Err(Error::Join {
                            url: shown(&store_url),
                            reason: format!(
                                "{} is not the fleet's CA bundle for {domain}: issue this \
                                 registrar's certificate from the fleet's PKI",
                                install.ca.display()
                            ),
                        });
                    }
                    None
                }
                (None, false) => {
                    db::add_trust_domain(&mut tx, &domain, true, &roots, None, now_ms).await?;
                    db::create_namespace(&mut tx, "default", now_ms).await?;
                    for g in default_grants(&domain) {
                        db::add_grant(&mut tx, &g, now_ms).await?;
                    }
                    let token = db::create_token(
                        &mut tx,
                        &db::TokenHasher::default(),
                        "initial admin",
                        db::Role::Admin,
                        options.token_expires_ms,
                        now_ms,
                    )
                    .await?;
                    Some(token.token)
                }
            };
            tx.commit().await?;
            Ok::<_, Error>(token)
        }
        .await;
        store.close().await;
        let token = written?;
        // The registrar's own copies: it never reads the directory that holds the CA keys.
        let mut copies = install_copies(&install, data)?;
        copies.store = store_url.clone();
        let json = serde_json::to_vec_pretty(&copies).expect("plain struct serializes");
        write_new(&install_path, &json)?;
        Ok::<_, Error>((token, copies))
    }
    .await;
    let (admin_token, install) = match result {
        Ok(t) => t,
        Err(e) => {
            // Nothing half-written: remove what this run created.
            if let Some(file) = &sqlite_file {
                for suffix in ["", "-wal", "-shm"] {
                    let mut f = file.clone().into_os_string();
                    f.push(suffix);
                    let _ = fs::remove_file(f);
                }
            }
            if created {
                let _ = fs::remove_dir_all(data);
            }
            return Err(e);
        }
    };
    Ok(InitReport {
        server_id: server_id_of(&id),
        identity: id,
        admin_token,
        store: store_url_of(data, &install),
    })
}

/// Whether a (checked) store URL names PostgreSQL.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Copies what the registrar reads from the PKI directory (its certificate and key, the
/// CA bundle, the CRL when there is one) into `data`, replacing earlier copies each
/// atomically, and returns where they are. The PKI directory holds the CA keys: the
/// registrar, and whoever takes it over, need never read it (`enrpd update-pki` brings a
/// new CRL or a renewed certificate over).
fn install_copies(from: &Install, data: &Path) -> Result<Install, Error> {
    let data = fs::canonicalize(data).map_err(|source| Error::File {
        path: data.to_owned(),
        source,
    })?;
    let to = Install {
        cert: data.join("registrar.pem"),
        key: data.join("registrar.key"),
        ca: data.join("ca.pem"),
        crl: data.join("crl.pem"),
        store: from.store.clone(),
    };
    copy_file(&from.cert, &to.cert, 0o644)?;
    copy_file(&from.key, &to.key, 0o600)?;
    copy_file(&from.ca, &to.ca, 0o644)?;
    if from.crl.exists() {
        copy_file(&from.crl, &to.crl, 0o644)?;
    }
    Ok(to)
}

/// Copies `from` to `to` through a temporary file created with `mode`, then renamed.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let bytes = read(from)?;
    let tmp = to.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, to))
        .map_err(|source| Error::File {
            path: to.to_owned(),
            source,
        })
}

/// `enrpd update-pki`: brings the registrar's renewed certificate and key (`name`, by
/// default the installed registrar's own), the CA bundle and the CRL from the PKI
/// directory into its data directory (run by whoever holds the
/// PKI, then SIGHUP the registrar). Refuses, changing nothing, a certificate for another
/// identity than the installed one, or files that do not parse. Returns the identity and
/// the certificate's serial.
pub fn update_pki(
    pki: &Path,
    name: Option<&str>,
    data: &Path,
) -> Result<(SpiffeId, identity::Serial), Error> {
    let installed = read_install(data)?;
    let current = LocalIdentity::from_pem(&read(&installed.cert)?, &read(&installed.key)?)?;
    // Without a name, this registrar's own (`spiffe://D/registrar/NAME` → registrar-NAME).
    let own = current.id().path().strip_prefix("/registrar/");
    let from = registrar_files(pki, name.or(own))?;
    let identity = LocalIdentity::from_pem(&read(&from.cert)?, &read(&from.key)?)?;
    if identity.id() != current.id() {
        return Err(Error::Identity(format!(
            "{} is the certificate of {}; this registrar is {}",
            from.cert.display(),
            identity.id(),
            current.id()
        )));
    }
    DomainBundle::from_pem(identity.id().trust_domain(), &read(&from.ca)?)?;
    if from.crl.exists() {
        trust::crls_from_pem(&read(&from.crl)?)?;
    }
    let from = Install {
        store: installed.store.clone(),
        ..from
    };
    let copies = install_copies(&from, data)?;
    if copies != installed {
        // An installation from before the copies: from now on it reads them.
        let json = serde_json::to_vec_pretty(&copies).expect("plain struct serializes");
        write_new(&data.join(INSTALL_FILE), &json)?;
    }
    Ok((identity.id().clone(), identity.as_peer().serial().clone()))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })
}

/// What `enrpd run` starts from.
#[derive(Debug)]
pub struct Loaded {
    /// Trust domains, deny-list and TLS configurations.
    pub trust: Arc<TrustStore>,
    /// The store.
    pub store: Store,
    /// The grants in force.
    pub grants: Vec<Grant>,
    /// The registrar's Server ID.
    pub server_id: ServerId,
    /// The serials the local trust domain's CRL lists at start-up: in force from the first
    /// handshake, so a later reload need only act on serials added since.
    pub revoked: Vec<identity::Serial>,
    /// The pools operators declared (policy, most PEs), for the registrar to enforce.
    pub pools: Vec<db::PoolDecl>,
    /// Where requests without a Namespace parameter go.
    pub default_namespaces: Vec<identity::DefaultNamespace>,
    /// The stored revocations (admin API), for the registrar core: so that no peer can
    /// bring back a revoked identity's PEs after a restart (issue 16).
    pub revocations: Vec<identity::Revocation>,
    /// The Server IDs bound to identities (docs/ENRP-TRUST.md §4).
    pub server_id_bindings: Vec<(ServerId, SpiffeId)>,
}

/// The audit chain a registrar with identity `id` appends to in `store`
/// (docs/STORE.md "The audit log in a fleet"): the local chain in a store of its own
/// (SQLite), its own chain, keyed by its SPIFFE ID, in a store a fleet shares (PostgreSQL).
pub fn audit_chain(store: &Store, id: &SpiffeId) -> store::audit::Chain {
    if store.backend() == db::Backend::Sqlite {
        store::audit::Chain::Local
    } else {
        store::audit::Chain::Registrar(id.clone())
    }
}

impl Loaded {
    /// This registrar's audit chain ([`audit_chain`]).
    pub fn audit_chain(&self) -> store::audit::Chain {
        audit_chain(&self.store, self.trust.identity().id())
    }
}

/// The audit chain of the registrar of `data` in `store`, for the command line: reads
/// its certificate only when the store is shared.
fn command_line_chain(data: &Path, store: &Store) -> Result<store::audit::Chain, Error> {
    if store.backend() == db::Backend::Sqlite {
        return Ok(store::audit::Chain::Local);
    }
    let install = read_install(data)?;
    let identity = LocalIdentity::from_pem(&read(&install.cert)?, &read(&install.key)?)?;
    Ok(audit_chain(store, identity.id()))
}

/// Loads an initialised data directory: identity from the PKI files, trust domains and
/// grants from the store `enrpd init` recorded.
pub async fn load(data: &Path) -> Result<Loaded, Error> {
    load_with_store(data, None).await
}

/// [`load`], where `given` (`enrpd run --store URL`) must name the store `enrpd init`
/// recorded: a registrar never silently opens another store than its own.
pub async fn load_with_store(data: &Path, given: Option<&str>) -> Result<Loaded, Error> {
    let install = read_install(data)?;
    check_given_store(data, &install, given)?;
    let identity = LocalIdentity::from_pem(&read(&install.cert)?, &read(&install.key)?)?;
    let server_id = server_id_of(identity.id());
    let trust = TrustStore::new(identity)?;
    let store = open_store(data, &install).await?;
    let mut conn = store.acquire().await?;
    let mut revoked = Vec::new();
    let mut revocations = Vec::new();
    for row in db::list_trust_domains(&mut conn).await? {
        let mut bundle = DomainBundle::from_pem(row.name.clone(), row.roots_pem.as_bytes())?;
        // The local domain's CRL comes from the registrar's copy of the PKI's (rsp-pki
        // crl), so that `rsp-pki revoke` + `enrpd update-pki` + SIGHUP/restart takes effect.
        let crl = if row.is_local && install.crl.exists() {
            Some(read(&install.crl)?)
        } else {
            row.crls_pem.map(String::into_bytes)
        };
        if let Some(crl) = crl {
            let crls = trust::crls_from_pem(&crl)?;
            if row.is_local {
                for c in &crls {
                    revoked.extend(trust::crl_serials(c)?);
                }
            }
            bundle = bundle.with_crls(crls);
        }
        trust.add_domain(bundle)?;
    }
    // Revocations made through the admin API stay in force across restarts: in the TLS
    // layer from the first handshake.
    for r in db::list_revocations(&mut conn).await? {
        use identity::Revocation::{Identity, Serial, TrustDomain};
        // A kind this enrpd cannot enforce stops the start-up (fail closed) rather than
        // being skipped as the TLS layer skips it.
        if !matches!(r.revocation, Serial { .. } | Identity(_) | TrustDomain(_)) {
            return Err(Error::Install {
                path: data.join(db::DB_FILE),
                reason: format!(
                    "revocation {} of a kind this enrpd cannot enforce",
                    r.revocation
                ),
            });
        }
        trust.revoke(&r.revocation)?;
        revocations.push(r.revocation);
    }
    let grants = db::list_grants(&mut conn)
        .await?
        .into_iter()
        .map(|r| r.grant)
        .collect();
    let mut pools = Vec::new();
    for ns in db::list_namespaces(&mut conn).await? {
        pools.extend(db::list_pools(&mut conn, &ns.name).await?);
    }
    let default_namespaces = db::list_default_namespaces(&mut conn)
        .await?
        .into_iter()
        .map(|r| r.rule)
        .collect();
    let server_id_bindings = db::list_server_id_bindings(&mut conn)
        .await?
        .into_iter()
        .filter_map(|(sid, id)| Some((ServerId::new(sid)?, id)))
        .collect();
    drop(conn);
    Ok(Loaded {
        trust: Arc::new(trust),
        store,
        grants,
        server_id,
        revoked,
        pools,
        default_namespaces,
        revocations,
        server_id_bindings,
    })
}

/// Refuses a `--store` that is not the one recorded (the data directory's `rsp.db` also
/// matches its `sqlite://` URL).
fn check_given_store(data: &Path, install: &Install, given: Option<&str>) -> Result<(), Error> {
    let Some(given) = given else {
        return Ok(());
    };
    let recorded = store_url_of(data, install);
    let given = check_store_url(given)?;
    // Compared as paths for SQLite (`sqlite://./d/rsp.db` is `sqlite:///abs/d/rsp.db`).
    let same = match (
        given.strip_prefix("sqlite://"),
        recorded.strip_prefix("sqlite://"),
    ) {
        (Some(a), Some(b)) => {
            let canon = |p: &str| fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            canon(a) == canon(b)
        }
        _ => given == recorded,
    };
    if same {
        Ok(())
    } else {
        Err(Error::StoreMismatch {
            data: data.to_owned(),
            recorded: db::redact_url(&recorded),
            given: db::redact_url(&given),
        })
    }
}

/// `enrpd migrate`: opens the store (`url`, or the one the data directory `data`
/// recorded), which runs its pending migrations, and returns its URL and the schema
/// version it is at. A store written by a newer rsp is refused (sqlx's migrator: a
/// version it does not know), changing nothing.
pub async fn migrate(url: Option<&str>, data: Option<&Path>) -> Result<(String, i64), Error> {
    let (store, url) = match (url, data) {
        (Some(url), _) => {
            let url = check_store_url(url)?;
            (Store::connect(&url, &StoreOptions::default()).await?, url)
        }
        (None, Some(data)) => {
            let install = read_install(data)?;
            (open_existing(data).await?, store_url_of(data, &install))
        }
        (None, None) => {
            return Err(Error::StoreUrl {
                url: String::new(),
                reason: "give --store URL or --data DIR".into(),
            });
        }
    };
    store.close().await;
    let migrator = match store.backend() {
        db::Backend::Postgres => &db::MIGRATOR_POSTGRES,
        _ => &db::MIGRATOR,
    };
    let version = migrator.iter().map(|m| m.version).max();
    Ok((db::redact_url(&url), version.unwrap_or(0)))
}

/// What `enrpd store copy` did, for its message.
#[derive(Debug)]
pub struct StoreCopied {
    /// The SQLite file copied (left as it was: the fallback).
    pub from: PathBuf,
    /// The PostgreSQL store the data directory now records, without a password.
    pub to: String,
    /// The previous `enrpd.json`, kept.
    pub backup: PathBuf,
    /// Rows and audit chains copied.
    pub report: db::CopyReport,
}

/// `enrpd store copy`: copies the data directory's SQLite store into the empty PostgreSQL
/// database `to` (migrating it), verifies that the copy's audit chains have the source's
/// ids and heads, then records `to` in `enrpd.json` (the old file kept as
/// `enrpd.json.sqlite-<ms>`) so that `enrpd run --data DIR` uses PostgreSQL. The SQLite
/// file is not written. The registrar must be stopped: the copy holds SQLite's write lock
/// throughout, and a SQLite database another process is writing (busy for more than
/// 1 s) is refused. Refused, changing nothing: a data directory already on PostgreSQL, a
/// target with rows (docs/STORE.md "Moving a registrar to PostgreSQL").
pub async fn copy_store(data: &Path, to: &str, now_ms: u64) -> Result<StoreCopied, Error> {
    let install = read_install(data)?;
    let from = match install.store.as_deref() {
        None => data.join(db::DB_FILE),
        Some(url) => match url.strip_prefix("sqlite://") {
            Some(path) => PathBuf::from(path),
            None => {
                return Err(Error::StoreUrl {
                    url: db::redact_url(url),
                    reason: format!(
                        "{} already uses this PostgreSQL store: there is nothing to copy",
                        data.display()
                    ),
                });
            }
        },
    };
    if !from.is_file() {
        return Err(Error::Install {
            path: from,
            reason: "no SQLite store here to copy".into(),
        });
    }
    let to = check_store_url(to)?;
    if !is_postgres(&to) {
        return Err(Error::StoreUrl {
            url: db::redact_url(&to),
            reason: "the copy goes to PostgreSQL: give postgres://…".into(),
        });
    }
    // A registrar running on the file keeps its WAL files (SQLite deletes them when the
    // last connection closes): copying then would miss what it writes next.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", from.display()));
        if side.exists() {
            return Err(Error::Install {
                path: side,
                reason: "the SQLite store is open (is the registrar running?): stop it \
                         first. After a crash, `enrpd audit verify --data DIR` opens and \
                         closes it cleanly"
                    .into(),
            });
        }
    }
    // A short busy timeout: a process writing to the file meanwhile makes the copy fail
    // at once rather than wait.
    let mut options = StoreOptions::default();
    options.busy_timeout = std::time::Duration::from_secs(1);
    let source = Store::open_file(&from, &options).await?;
    let target = Store::connect(&to, &StoreOptions::default()).await?;
    let copied = db::copy_sqlite_to_postgres(&source, &target).await;
    source.close().await;
    target.close().await;
    let report = copied?;
    let path = data.join(INSTALL_FILE);
    let backup = data.join(format!("{INSTALL_FILE}.sqlite-{now_ms}"));
    fs::copy(&path, &backup).map_err(|source| Error::File {
        path: backup.clone(),
        source,
    })?;
    let moved = Install {
        store: Some(to.clone()),
        ..install
    };
    let json = serde_json::to_vec_pretty(&moved).expect("plain struct serializes");
    write_new(&path, &json)?;
    Ok(StoreCopied {
        from,
        to: db::redact_url(&to),
        backup,
        report,
    })
}

/// Where an initialised data directory's PKI files are (its install record).
pub fn read_install(data: &Path) -> Result<Install, Error> {
    let path = data.join(INSTALL_FILE);
    if !path.exists() {
        return Err(Error::NotInitialised(data.to_owned()));
    }
    serde_json::from_slice(&read(&path)?).map_err(|e| Error::Install {
        path,
        reason: e.to_string(),
    })
}

/// What a reload (SIGHUP) read.
#[derive(Debug)]
pub struct Reloaded {
    /// The registrar's certificate and key as its copies hold them now (renewed with
    /// `rsp-pki issue` and `enrpd update-pki`), to apply with [`TrustStore::set_identity`].
    pub identity: LocalIdentity,
    /// The grants now in force.
    pub grants: Vec<Grant>,
    /// The default-namespace rules now in force.
    pub default_namespaces: Vec<identity::DefaultNamespace>,
    /// Every serial the local trust domain's CRL lists.
    pub revoked: Vec<identity::Serial>,
    /// The local trust domain's CRLs, to apply with [`TrustStore::set_crls`] once the
    /// registrar has been told of `revoked` (so that it removes their PEs before their
    /// connections close).
    pub crls: Option<Vec<tokio_rustls::rustls::pki_types::CertificateRevocationListDer<'static>>>,
}

/// Re-reads what can change while the registrar runs: the registrar's certificate and
/// key, the local trust domain's CRL (the copies `enrpd update-pki` brings over from the
/// PKI directory), the grants and the default namespaces. Applies nothing: a file
/// that does not parse is an error and changes nothing.
pub async fn reload(data: &Path, store: &Store) -> Result<Reloaded, Error> {
    let install = read_install(data)?;
    let identity = LocalIdentity::from_pem(&read(&install.cert)?, &read(&install.key)?)?;
    let mut revoked = Vec::new();
    let crls = if install.crl.exists() {
        let crls = trust::crls_from_pem(&read(&install.crl)?)?;
        for crl in &crls {
            revoked.extend(trust::crl_serials(crl)?);
        }
        Some(crls)
    } else {
        None
    };
    let mut conn = store.acquire().await?;
    let grants = db::list_grants(&mut conn)
        .await?
        .into_iter()
        .map(|r| r.grant)
        .collect();
    let default_namespaces = db::list_default_namespaces(&mut conn)
        .await?
        .into_iter()
        .map(|r| r.rule)
        .collect();
    Ok(Reloaded {
        identity,
        grants,
        default_namespaces,
        revoked,
        crls,
    })
}

/// `enrpd token create`: a new admin API token, audited in the same transaction. Works
/// next to a running registrar (SQLite serializes the writers).
pub async fn create_token(
    data: &Path,
    name: &str,
    role: db::Role,
    expires_ms: Option<u64>,
    now_ms: u64,
) -> Result<db::NewToken, Error> {
    let store = open_existing(data).await?;
    let result = async {
        let mut tx = store.begin().await?;
        let token = db::create_token(
            &mut tx,
            &db::TokenHasher::default(),
            name,
            role,
            expires_ms,
            now_ms,
        )
        .await?;
        let record = store::audit::Record::new(
            now_ms,
            identity::audit::AuditAction::TokenCreate,
            store::audit::Outcome::Ok,
        )
        .detail(format!(
            "token {} ({}, {}) by the enrpd command line",
            token.info.id, token.info.name, token.info.role
        ));
        let chain = command_line_chain(data, &store)?;
        store::audit::append_in(&mut tx, &chain, &[record]).await?;
        tx.commit().await?;
        Ok::<_, Error>(token)
    }
    .await;
    store.close().await;
    result
}

/// `enrpd audit archive`: moves the records before `cut` of the loaded data directory's log
/// to the file `to`, audited as [`AuditAction::AuditArchive`] by this registrar.
///
/// [`AuditAction::AuditArchive`]: identity::audit::AuditAction::AuditArchive
pub async fn archive_audit(
    loaded: &Loaded,
    to: PathBuf,
    cut: store::audit::archive::Cut,
    now_ms: u64,
) -> Result<store::audit::archive::Archived, db::Error> {
    let server = loaded.trust.identity().id().clone();
    let record = store::audit::Record::new(
        now_ms,
        identity::audit::AuditAction::AuditArchive,
        store::audit::Outcome::Ok,
    )
    .detail("enrpd audit archive");
    store::audit::archive::archive(
        &loaded.store,
        &loaded.audit_chain(),
        &store::audit::archive::Target::File(to),
        cut,
        Some(&server),
        record,
        now_ms,
    )
    .await
}

/// `enrpd token list`: every token, without secrets.
pub async fn list_tokens(data: &Path) -> Result<Vec<db::TokenInfo>, Error> {
    let store = open_existing(data).await?;
    let result = async {
        let mut conn = store.acquire().await?;
        Ok::<_, Error>(db::list_tokens(&mut conn).await?)
    }
    .await;
    store.close().await;
    result
}

/// `enrpd token revoke ID`, audited in the same transaction.
pub async fn revoke_token(data: &Path, id: &str, now_ms: u64) -> Result<db::TokenInfo, Error> {
    let store = open_existing(data).await?;
    let result = async {
        let mut tx = store.begin().await?;
        let info = db::revoke_token(&mut tx, id, now_ms).await?;
        let record = store::audit::Record::new(
            now_ms,
            identity::audit::AuditAction::TokenRevoke,
            store::audit::Outcome::Ok,
        )
        .detail(format!("token {} by the enrpd command line", info.id));
        let chain = command_line_chain(data, &store)?;
        store::audit::append_in(&mut tx, &chain, &[record]).await?;
        tx.commit().await?;
        Ok::<_, Error>(info)
    }
    .await;
    store.close().await;
    result
}

/// Opens the store of a data directory made by `enrpd init` (not a fresh one): the one
/// its `enrpd.json` records, by default its `rsp.db`.
async fn open_existing(data: &Path) -> Result<Store, Error> {
    let install = read_install(data)?;
    if install.store.is_none() && !data.join(db::DB_FILE).is_file() {
        return Err(Error::Install {
            path: data.to_path_buf(),
            reason: "no store here: run `enrpd init` first".into(),
        });
    }
    open_store(data, &install).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grants_parse_for_a_domain() {
        let d = TrustDomain::new("acme.test").expect("valid");
        let g = default_grants(&d);
        let pe: SpiffeId = "spiffe://acme.test/pe/echo-1".parse().expect("valid");
        let pu: SpiffeId = "spiffe://acme.test/pu/c".parse().expect("valid");
        assert!(identity::allowed(
            &g,
            &pe,
            "default",
            Some(b"echo"),
            identity::Action::Register
        ));
        assert!(!identity::allowed(
            &g,
            &pe,
            "default",
            Some(b"echo"),
            identity::Action::Resolve
        ));
        assert!(identity::allowed(
            &g,
            &pu,
            "default",
            Some(b"echo"),
            identity::Action::Resolve
        ));
        assert!(!identity::allowed(
            &g,
            &pu,
            "other",
            Some(b"echo"),
            identity::Action::Resolve
        ));
    }
}
