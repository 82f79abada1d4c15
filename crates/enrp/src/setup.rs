//! `enrpd init` and what `enrpd run` loads: the data directory, its SQLite store, the
//! registrar's identity from an `rsp-pki` directory, and the first grants and admin token.
//!
//! Data directory layout: `enrpd.json` (where the PKI files are, written by `init`) and
//! the store (`rsp.db`, see `store::db`).

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
}

/// What `init` did, for the one message it prints.
#[derive(Debug)]
pub struct InitReport {
    /// The registrar's identity.
    pub identity: SpiffeId,
    /// Its Server ID.
    pub server_id: ServerId,
    /// The first admin token; shown once, only its hash is stored.
    pub admin_token: String,
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
    let install_path = data.join(INSTALL_FILE);
    if install_path.exists() || data.join(db::DB_FILE).exists() {
        return Err(Error::AlreadyInitialised(data.to_owned()));
    }
    let install = registrar_files(pki, name)?;
    let identity = LocalIdentity::from_pem(&read(&install.cert)?, &read(&install.key)?)?;
    let id = identity.id().clone();
    let domain = id.trust_domain();
    let roots = read(&install.ca)?;
    DomainBundle::from_pem(domain.clone(), &roots)?; // refuse a bundle that does not parse
    let roots = String::from_utf8(roots).map_err(|_| Error::Install {
        path: install.ca.clone(),
        reason: "not UTF-8 PEM".into(),
    })?;
    let created = !data.exists(); // Store::open creates it, mode 0700.
    let result = async {
        let store = Store::open(data, &StoreOptions::default()).await?;
        // The registrar's own copies: it never reads the directory that holds the CA keys.
        let copies = install_copies(&install, data)?;
        let mut conn = store.acquire().await?;
        db::add_trust_domain(&mut conn, &domain, true, &roots, None, now_ms).await?;
        db::create_namespace(&mut conn, "default", now_ms).await?;
        for g in default_grants(&domain) {
            db::add_grant(&mut conn, &g, now_ms).await?;
        }
        let token = db::create_token(
            &mut conn,
            &db::TokenHasher::default(),
            "initial admin",
            db::Role::Admin,
            token_expires_ms,
            now_ms,
        )
        .await?;
        drop(conn);
        store.close().await;
        Ok::<_, Error>((token.token, copies))
    }
    .await;
    let (admin_token, install) = match result {
        Ok(t) => t,
        Err(e) => {
            // Nothing half-written: remove what this run created.
            let _ = fs::remove_file(data.join(db::DB_FILE));
            if created {
                let _ = fs::remove_dir_all(data);
            }
            return Err(e);
        }
    };
    let json = serde_json::to_vec_pretty(&install).expect("plain struct serializes");
    write_new(&install_path, &json)?;
    Ok(InitReport {
        server_id: server_id_of(&id),
        identity: id,
        admin_token,
    })
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
/// grants from the store.
pub async fn load(data: &Path) -> Result<Loaded, Error> {
    let install = read_install(data)?;
    let identity = LocalIdentity::from_pem(&read(&install.cert)?, &read(&install.key)?)?;
    let server_id = server_id_of(identity.id());
    let trust = TrustStore::new(identity)?;
    let store = Store::open(data, &StoreOptions::default()).await?;
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

/// Opens the store of a data directory made by `enrpd init` (not a fresh one).
async fn open_existing(data: &Path) -> Result<Store, Error> {
    if !data.join(db::DB_FILE).is_file() {
        return Err(Error::Install {
            path: data.to_path_buf(),
            reason: "no store here: run `enrpd init` first".into(),
        });
    }
    Ok(Store::open(data, &StoreOptions::default()).await?)
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
