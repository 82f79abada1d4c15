//! `rsp-pki`: bootstrap a PKI for an rsp trust domain and issue certificates.
//!
//! The layout every other rsp command relies on, in the PKI directory (default `./pki`):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the trust bundle: the root certificate |
//! | `ca.key` | the root's private key (0600) |
//! | `intermediate.pem`, `intermediate.key` | the issuing CA, with `init --intermediate` |
//! | `crl.pem` | the CRLs: the issuing CA's (leaves), and the root's (intermediates) |
//! | `ROLE-NAME.pem`, `ROLE-NAME.key` | a leaf (then intermediates) and its key (0600) |
//! | `index.json` | what was issued and revoked |
//! | `federated/DOMAIN.pem` | imported trust bundles of federated domains |
#![warn(missing_docs)]

pub mod cli;
pub mod files;
pub mod keyfile;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use identity::{Serial, SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::files::{KEY_MODE, PUBLIC_MODE, create_dir, read_string, replace, write_new};

/// Errors of `rsp-pki`. Each names the file, serial or name at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `init` found a PKI already there.
    #[error("a PKI already exists in {} (found {}); refusing to overwrite it", dir.display(), found.display())]
    AlreadyExists {
        /// The PKI directory.
        dir: PathBuf,
        /// The file that shows it.
        found: PathBuf,
    },
    /// A file to be created exists.
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    FileExists(PathBuf),
    /// `issue --renew` of a certificate that was never issued here.
    #[error("{} does not exist: nothing to renew (issue it without --renew)", .0.display())]
    NothingToRenew(PathBuf),
    /// No PKI in the directory.
    #[error("no PKI in {} (run `rsp-pki init --trust-domain NAME` first)", .0.display())]
    NoPki(PathBuf),
    /// A certificate name (the NAME of `issue ROLE NAME`) is not usable.
    #[error("invalid name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A name, serial or trust domain was refused by the trust crate.
    #[error(transparent)]
    Trust(#[from] trust::Error),
    /// rcgen could not generate a key, certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The index is unreadable.
    #[error("{}: {source}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// No issued certificate has this serial.
    #[error("no certificate with serial {0} was issued by this PKI")]
    UnknownSerial(String),
    /// The certificate is already revoked.
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    /// The CA certificate has expired.
    #[error("the CA certificate {} expired on {expired}; create a new PKI", path.display())]
    CaExpired {
        /// The CA certificate.
        path: PathBuf,
        /// When it expired (RFC 3339).
        expired: String,
    },
    /// A certificate file is not a usable certificate.
    #[error("{}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A revocation reason is unknown.
    #[error("unknown revocation reason {0:?} (one of: {REASONS})")]
    BadReason(String),
    /// A bundle names no trust domain, or the one of this PKI.
    #[error("bundle {}: {reason}", path.display())]
    BadBundle {
        /// The bundle file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// An encrypted CA key needs a passphrase and none was given.
    #[error("{} is encrypted: set RSP_PKI_PASSPHRASE or pass --passphrase-file", .0.display())]
    PassphraseRequired(PathBuf),
    /// The passphrase does not open the key (or the file was altered).
    #[error("wrong passphrase for {} (or the file was altered)", .0.display())]
    WrongPassphrase(PathBuf),
    /// The passphrase is empty.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    /// An encrypted key file is malformed.
    #[error("{}: {reason}", path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Key derivation or encryption failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
    /// `--minutes` is out of range.
    #[error("--minutes must be between 1 and 525600 (a year), not {0}")]
    BadMinutes(u32),
    /// `--days` is out of range.
    #[error("--days must be between 1 and 36500, not {0}")]
    BadDays(u32),
}

/// A name or serial that does not parse: the same error (and message) as before the
/// identity types left `trust` (issue 24).
impl From<identity::Error> for PkiError {
    fn from(e: identity::Error) -> Self {
        Self::Trust(trust::Error::Identity(e))
    }
}

impl PkiError {
    /// Whether the error is a usage mistake (exit 2) rather than a runtime failure (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::BadName { .. }
                | Self::BadReason(_)
                | Self::BadDays(_)
                | Self::Trust(trust::Error::Identity(
                    identity::Error::InvalidTrustDomain { .. }
                        | identity::Error::InvalidSerial { .. }
                        | identity::Error::InvalidSpiffeId { .. }
                ))
        )
    }
}

const REASONS: &str = "unspecified, key-compromise, ca-compromise, affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn";

fn parse_reason(s: &str) -> Result<RevocationReason, PkiError> {
    Ok(match s {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "ca-compromise" => RevocationReason::CaCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return Err(PkiError::BadReason(s.to_owned())),
    })
}

/// Key algorithm of the CA and the certificates it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA with P-256 and SHA-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    fn generate(self) -> Result<KeyPair, PkiError> {
        let alg = match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        };
        Ok(KeyPair::generate_for(alg)?)
    }
}

/// The role of a leaf; it is the first path segment of its SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A registrar (ENRP server): server and client authentication.
    Registrar,
    /// A pool element: client authentication (to its registrar) and server authentication
    /// (for its own service).
    Pe,
    /// A pool user: client authentication.
    Pu,
    /// A gateway: client authentication.
    Gateway,
    /// An operator of the admin API: client authentication.
    Admin,
}

impl Role {
    /// The path segment, e.g. `registrar`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registrar => "registrar",
            Self::Pe => "pe",
            Self::Pu => "pu",
            Self::Gateway => "gateway",
            Self::Admin => "admin",
        }
    }

    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Self::Registrar | Self::Pe => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Self::Pu | Self::Gateway | Self::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// One issued certificate in the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Role (`pe`, ...).
    pub role: String,
    /// Name.
    pub name: String,
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// File stem in the PKI directory (`ROLE-NAME`).
    pub file: String,
    /// Validity start, RFC 3339.
    pub not_before: String,
    /// Validity end, Unix seconds.
    pub not_after_unix: i64,
    /// Validity end, RFC 3339.
    pub not_after: String,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
}

/// A revocation in the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    /// When, Unix seconds.
    pub at_unix: i64,
    /// When, RFC 3339.
    pub at: String,
    /// Reason, as given to `revoke --reason`.
    pub reason: String,
}

/// `index.json`: the PKI's parameters and what it issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    /// Format version.
    pub version: u32,
    /// The trust domain.
    pub trust_domain: String,
    /// Key algorithm.
    pub key_type: KeyType,
    /// Whether leaves are issued by `intermediate.pem`.
    pub intermediate: bool,
    /// Last CRL number used.
    pub crl_number: u64,
    /// Issued certificates, oldest first.
    pub certificates: Vec<Issued>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A PKI directory.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    passphrase: Option<keyfile::Passphrase>,
}

/// What `inspect` found.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Human-readable lines.
    pub text: String,
}

impl Pki {
    /// The PKI in `dir` (nothing is read yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            passphrase: None,
        }
    }

    /// With a passphrase: `init` encrypts the CA keys with it, other commands open them.
    #[must_use]
    pub fn with_passphrase(mut self, passphrase: Option<keyfile::Passphrase>) -> Self {
        self.passphrase = passphrase;
        self
    }

    /// A CA key as stored: encrypted if there is a passphrase.
    fn seal_ca_key(&self, key: &KeyPair) -> Result<String, PkiError> {
        let pem = key.serialize_pem();
        match &self.passphrase {
            Some(pass) => keyfile::encrypt(&pem, pass),
            None => Ok(pem),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn index_path(&self) -> PathBuf {
        self.path("index.json")
    }

    /// Reads the index; [`PkiError::NoPki`] if there is none.
    pub fn index(&self) -> Result<Index, PkiError> {
        let path = self.index_path();
        if !path.exists() {
            return Err(PkiError::NoPki(self.dir.clone()));
        }
        let text = read_string(&path)?;
        serde_json::from_str(&text).map_err(|source| PkiError::Index { path, source })
    }

    fn save_index(&self, index: &Index) -> Result<(), PkiError> {
        let path = self.index_path();
        let text = serde_json::to_string_pretty(index).map_err(|source| PkiError::Index {
            path: path.clone(),
            source,
        })?;
        replace(&path, format!("{text}\n").as_bytes(), PUBLIC_MODE)
    }

    /// `init`: a root CA (and optionally an intermediate) for `domain`, an empty CRL and
    /// the index. Refuses to touch an existing PKI.
    pub fn init(
        &self,
        domain: &str,
        key_type: KeyType,
        intermediate: bool,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let domain = TrustDomain::new(domain)?;
        check_days(days)?;
        for name in [
            "index.json",
            "ca.pem",
            "ca.key",
            "intermediate.key",
            "crl.pem",
        ] {
            let found = self.path(name);
            if found.exists() {
                return Err(PkiError::AlreadyExists {
                    dir: self.dir.clone(),
                    found,
                });
            }
        }
        // Everything is generated before anything is written.
        let root_key = key_type.generate()?;
        let mut root_params = ca_params(&domain, "root CA", now, days)?;
        root_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(u8::from(intermediate)));
        root_params.serial_number = Some(random_serial());
        let root_cert = root_params.self_signed(&root_key)?;
        let mut files: Vec<(&str, String, u32)> = vec![
            ("ca.key", self.seal_ca_key(&root_key)?, KEY_MODE),
            ("ca.pem", root_cert.pem(), PUBLIC_MODE),
        ];
        let root = Issuer::new(root_params, root_key);
        let mut index = Index {
            version: 1,
            trust_domain: domain.to_string(),
            key_type,
            intermediate,
            crl_number: 0,
            certificates: Vec::new(),
        };
        let inter = if intermediate {
            let key = key_type.generate()?;
            let mut params = ca_params(&domain, "intermediate CA", now, days)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.serial_number = Some(random_serial());
            let cert = params.signed_by(&key, &root)?;
            files.push(("intermediate.key", self.seal_ca_key(&key)?, KEY_MODE));
            files.push(("intermediate.pem", cert.pem(), PUBLIC_MODE));
            Some(Issuer::new(params, key))
        } else {
            None
        };
        let crl = crl_pem(&root, inter.as_ref(), &mut index, now, 30)?;
        files.push(("crl.pem", crl, PUBLIC_MODE));
        create_dir(&self.dir)?;
        for (name, contents, mode) in &files {
            write_new(&self.path(name), contents.as_bytes(), *mode)?;
        }
        // The index goes last: its presence is what marks a complete PKI.
        self.save_index(&index)?;
        Ok(format!(
            "created a PKI for trust domain {domain} in {} ({}{})\n{}",
            self.dir.display(),
            match key_type {
                KeyType::EcdsaP256 => "ECDSA P-256",
                KeyType::Ed25519 => "Ed25519",
            },
            if intermediate {
                ", with an intermediate CA"
            } else {
                ""
            },
            key_advice(intermediate, self.passphrase.is_some())
        ))
    }

    fn root_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        self.load_issuer("ca.pem", "ca.key")
    }

    fn load_issuer(&self, cert: &str, key: &str) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let cert_path = self.path(cert);
        let der = read_cert(&cert_path)?;
        let key_path = self.path(key);
        let mut text = read_string(&key_path)?;
        if keyfile::is_encrypted(&text) {
            text = keyfile::decrypt(&text, self.passphrase.as_ref(), &key_path)?;
        }
        let key = KeyPair::from_pem(&text)?;
        Ok(Issuer::from_ca_cert_der(&der, key)?)
    }

    fn check_ca_valid(&self, name: &str, now: OffsetDateTime) -> Result<i64, PkiError> {
        let path = self.path(name);
        let der = read_cert(&path)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|_| PkiError::BadCertificate {
            path: path.clone(),
            reason: "not a DER X.509 certificate",
        })?;
        let not_after = cert.validity().not_after.timestamp();
        if now.unix_timestamp() >= not_after {
            let expired = OffsetDateTime::from_unix_timestamp(not_after)
                .map(rfc3339)
                .unwrap_or_default();
            return Err(PkiError::CaExpired { path, expired });
        }
        Ok(not_after)
    }

    /// `issue ROLE NAME`: a leaf with the single URI SAN `spiffe://DOMAIN/ROLE/NAME`.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        self.issue_leaf(role, name, dns, ips, validity_days(days)?, now, false)
    }

    /// `issue --renew ROLE NAME`: a new key and certificate for an identity issued before,
    /// replacing its files (each atomically; then SIGHUP `enrpd`, or restart the PE). The
    /// old certificate stays valid until it expires or is revoked, so that connections
    /// made with it are not cut.
    pub fn renew(
        &self,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        self.issue_leaf(role, name, dns, ips, validity_days(days)?, now, true)
    }

    /// `issue [--renew] ROLE NAME --minutes N`: a short-lived leaf (SPIRE-style, renewed
    /// by a timer long before it expires; `rsp pe`, `pu` and `gateway` pick the renewal
    /// up without a restart). From 1 minute to a year.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_minutes(
        &self,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        minutes: u32,
        now: OffsetDateTime,
        renew: bool,
    ) -> Result<String, PkiError> {
        if !(1..=MAX_MINUTES).contains(&minutes) {
            return Err(PkiError::BadMinutes(minutes));
        }
        let validity = Duration::minutes(i64::from(minutes));
        self.issue_leaf(role, name, dns, ips, validity, now, renew)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_leaf(
        &self,
        role: Role,
        name: &str,
        dns: &[String],
        ips: &[IpAddr],
        validity: Duration,
        now: OffsetDateTime,
        renew: bool,
    ) -> Result<String, PkiError> {
        let mut index = self.index()?;
        check_name(name)?;
        let domain = TrustDomain::new(&index.trust_domain)?;
        let id = SpiffeId::from_segments(&domain, [role.as_str(), name])?;
        let stem = format!("{}-{name}", role.as_str());
        let (cert_path, key_path) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        for path in [&cert_path, &key_path] {
            match (renew, path.exists()) {
                (false, true) => return Err(PkiError::FileExists(path.clone())),
                (true, false) => return Err(PkiError::NothingToRenew(path.clone())),
                _ => {}
            }
        }
        let (issuer_cert, issuer_key) = if index.intermediate {
            ("intermediate.pem", "intermediate.key")
        } else {
            ("ca.pem", "ca.key")
        };
        let mut ca_not_after = self.check_ca_valid("ca.pem", now)?;
        if index.intermediate {
            ca_not_after = ca_not_after.min(self.check_ca_valid(issuer_cert, now)?);
        }
        let issuer = self.load_issuer(issuer_cert, issuer_key)?;

        let key = index.key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, id.as_str());
        params.serial_number = Some(random_serial());
        params.not_before = now - Duration::minutes(5);
        // A leaf never outlives its CA.
        let ca_end = OffsetDateTime::from_unix_timestamp(ca_not_after).unwrap_or(now);
        params.not_after = (now + validity).min(ca_end);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = role.ekus();
        params.use_authority_key_identifier_extension = true;
        params
            .subject_alt_names
            .push(SanType::URI(id.as_str().try_into()?));
        for name in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let cert = params.signed_by(&key, &issuer)?;
        let mut chain = cert.pem();
        if index.intermediate {
            chain.push_str(&read_string(&self.path("intermediate.pem"))?);
        }
        let serial = Serial::from_bytes(
            params
                .serial_number
                .as_ref()
                .map(|s| s.as_ref())
                .unwrap_or_default(),
        );
        if renew {
            // The key first: a reader between the two sees a pair that does not match and
            // refuses it (enrpd keeps its current certificate), never a half-written file.
            replace(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
            replace(&cert_path, chain.as_bytes(), PUBLIC_MODE)?;
        } else {
            write_new(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
            write_new(&cert_path, chain.as_bytes(), PUBLIC_MODE)?;
        }
        index.certificates.push(Issued {
            serial: serial.to_hex(),
            role: role.as_str().to_owned(),
            name: name.to_owned(),
            spiffe_id: id.to_string(),
            file: stem,
            not_before: rfc3339(params.not_before),
            not_after_unix: params.not_after.unix_timestamp(),
            not_after: rfc3339(params.not_after),
            revoked: None,
        });
        self.save_index(&index)?;
        Ok(format!(
            "{} {id} serial {serial} valid until {}: {} {}",
            if renew { "renewed" } else { "issued" },
            rfc3339(params.not_after),
            cert_path.display(),
            key_path.display()
        ))
    }

    /// `revoke SERIAL|CERT`: marks the certificate revoked and writes a new CRL.
    pub fn revoke(
        &self,
        target: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        parse_reason(reason)?;
        let mut index = self.index()?;
        let path = Path::new(target);
        let serial = if path.is_file() {
            serial_of(&read_cert(path)?, path)?
        } else {
            target.parse::<Serial>()?
        };
        let hex = serial.to_hex();
        let entry = index
            .certificates
            .iter_mut()
            .find(|c| c.serial == hex)
            .ok_or_else(|| PkiError::UnknownSerial(hex.clone()))?;
        if entry.revoked.is_some() {
            return Err(PkiError::AlreadyRevoked(hex));
        }
        entry.revoked = Some(Revocation {
            at_unix: now.unix_timestamp(),
            at: rfc3339(now),
            reason: reason.to_owned(),
        });
        let id = entry.spiffe_id.clone();
        self.write_crl(&mut index, now, 30)?;
        self.save_index(&index)?;
        Ok(format!(
            "revoked {id} serial {hex} ({reason}); wrote {}",
            self.path("crl.pem").display()
        ))
    }

    fn write_crl(&self, index: &mut Index, now: OffsetDateTime, days: u32) -> Result<(), PkiError> {
        let root = self.root_issuer()?;
        let inter = if index.intermediate {
            Some(self.load_issuer("intermediate.pem", "intermediate.key")?)
        } else {
            None
        };
        let pem = crl_pem(&root, inter.as_ref(), index, now, days)?;
        replace(&self.path("crl.pem"), pem.as_bytes(), PUBLIC_MODE)
    }

    /// `crl`: writes a fresh CRL (next update in `days`).
    pub fn crl(&self, days: u32, now: OffsetDateTime) -> Result<String, PkiError> {
        check_days(days)?;
        let mut index = self.index()?;
        self.write_crl(&mut index, now, days)?;
        self.save_index(&index)?;
        let revoked = index
            .certificates
            .iter()
            .filter(|c| c.revoked.is_some())
            .count();
        Ok(format!(
            "wrote {} ({revoked} revoked, next update {})",
            self.path("crl.pem").display(),
            rfc3339(now + Duration::days(i64::from(days)))
        ))
    }

    /// `list`: the issued certificates and their status, one per line.
    pub fn list(&self, now: OffsetDateTime) -> Result<String, PkiError> {
        let index = self.index()?;
        let mut out = format!("trust domain {}\n", index.trust_domain);
        let _ = writeln!(
            out,
            "{:<34} {:<8} {:<26} IDENTITY",
            "SERIAL", "STATUS", "NOT AFTER"
        );
        for c in &index.certificates {
            let status = status_of(c, now);
            let _ = writeln!(
                out,
                "{:<34} {:<8} {:<26} {}",
                c.serial, status, c.not_after, c.spiffe_id
            );
        }
        Ok(out)
    }

    /// `inspect CERT`: identity, serial, validity, issuer, and status in this PKI.
    pub fn inspect(&self, cert: &Path, now: OffsetDateTime) -> Result<Inspection, PkiError> {
        let der = read_cert(cert)?;
        let (_, x509) = X509Certificate::from_der(&der).map_err(|_| PkiError::BadCertificate {
            path: cert.to_owned(),
            reason: "not a DER X.509 certificate",
        })?;
        let serial = Serial::from_bytes(x509.raw_serial());
        let mut uris = Vec::new();
        let mut other = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => other.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(ip) => other.push(format!("IP:{}", ip_text(ip))),
                    _ => {}
                }
            }
        }
        let identity = match trust::Peer::from_certificate(&der) {
            Ok(peer) => peer.id().to_string(),
            Err(e) => format!("none ({e})"),
        };
        let mut ekus = Vec::new();
        if let Ok(Some(eku)) = x509.extended_key_usage() {
            if eku.value.server_auth {
                ekus.push("server-auth");
            }
            if eku.value.client_auth {
                ekus.push("client-auth");
            }
        }
        let not_before = x509.validity().not_before.timestamp();
        let not_after = x509.validity().not_after.timestamp();
        let ts = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .map(rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        let status = match self.index() {
            Ok(index) => match index
                .certificates
                .iter()
                .find(|c| c.serial == serial.to_hex())
            {
                Some(c) => match &c.revoked {
                    Some(r) => format!("revoked at {} ({})", r.at, r.reason),
                    None => status_of(c, now).to_owned(),
                },
                None => format!("not issued by the PKI in {}", self.dir.display()),
            },
            Err(_) => "unknown (no PKI to check against)".to_owned(),
        };
        let mut text = String::new();
        let _ = writeln!(text, "identity:   {identity}");
        let _ = writeln!(text, "serial:     {serial}");
        let _ = writeln!(text, "not before: {}", ts(not_before));
        let _ = writeln!(text, "not after:  {}", ts(not_after));
        let _ = writeln!(text, "subject:    {}", x509.subject());
        let _ = writeln!(text, "issuer:     {}", x509.issuer());
        let _ = writeln!(text, "uri sans:   {}", uris.join(", "));
        let _ = writeln!(text, "other sans: {}", other.join(", "));
        let _ = writeln!(text, "eku:        {}", ekus.join(", "));
        let _ = writeln!(text, "ca:         {}", x509.is_ca());
        let _ = writeln!(text, "status:     {status}");
        Ok(Inspection { text })
    }

    /// `bundle export`: the trust bundle with its trust domain named in a header line.
    pub fn bundle_export(&self) -> Result<String, PkiError> {
        let index = self.index()?;
        let roots = read_string(&self.path("ca.pem"))?;
        Ok(format!("trust-domain: {}\n{roots}", index.trust_domain))
    }

    /// `bundle import FILE`: stores a federated domain's bundle as
    /// `federated/DOMAIN.pem`. The domain comes from the header line (or `domain`).
    pub fn bundle_import(&self, file: &Path, domain: Option<&str>) -> Result<String, PkiError> {
        let index = self.index()?;
        let text = read_string(file)?;
        let header = text
            .lines()
            .find_map(|l| l.strip_prefix("trust-domain:"))
            .map(str::trim);
        let name = domain.or(header).ok_or_else(|| PkiError::BadBundle {
            path: file.to_owned(),
            reason: "names no trust domain (no `trust-domain:` line; pass --trust-domain)",
        })?;
        let domain = TrustDomain::new(name)?;
        if domain.as_str() == index.trust_domain {
            return Err(PkiError::BadBundle {
                path: file.to_owned(),
                reason: "is this PKI's own trust domain",
            });
        }
        let roots = trust::certs_from_pem(text.as_bytes())?;
        // Validate it now: a bundle the registrar cannot load later is refused here.
        trust::DomainBundle::new(domain.clone(), roots).validate()?;
        create_dir(&self.path("federated"))?;
        let target = self.path(&format!("federated/{domain}.pem"));
        let pem: String = text
            .lines()
            .filter(|l| !l.starts_with("trust-domain:"))
            .map(|l| format!("{l}\n"))
            .collect();
        write_new(&target, pem.as_bytes(), PUBLIC_MODE)?;
        Ok(format!(
            "imported trust bundle of {domain} into {}",
            target.display()
        ))
    }
}

fn status_of(c: &Issued, now: OffsetDateTime) -> &'static str {
    if c.revoked.is_some() {
        "revoked"
    } else if now.unix_timestamp() >= c.not_after_unix {
        "expired"
    } else {
        "valid"
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let a: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
            IpAddr::from(a).to_string()
        }
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            IpAddr::from(a).to_string()
        }
        _ => "?".to_owned(),
    }
}

/// Longest `--minutes`: a year (longer lives are given in days).
const MAX_MINUTES: u32 = 525_600;

/// How to keep the CA keys safe, printed by `init` (issue 17): whoever holds `ca.key`
/// can mint any identity of the domain.
fn key_advice(intermediate: bool, encrypted: bool) -> String {
    let mut advice = vec![if intermediate {
        "ca.key (the root) is needed only to sign the intermediate and the root's CRL: move it \
         offline; intermediate.key issues the leaves"
            .to_owned()
    } else {
        "ca.key signs every certificate: keep it off the hosts that run enrpd and rsp; \
         `rsp-pki init --intermediate` (recommended) lets the root key live offline"
            .to_owned()
    }];
    if !encrypted {
        advice.push(
            "the CA keys are not encrypted: give --passphrase-file FILE (or RSP_PKI_PASSPHRASE) \
             to encrypt them"
                .to_owned(),
        );
    }
    advice.push(
        "`enrpd init` reads only ca.pem, crl.pem and the registrar's own files; never copy a \
         CA key to a registrar"
            .to_owned(),
    );
    advice
        .iter()
        .map(|a| format!("  note: {a}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--days` as a validity, checked.
fn validity_days(days: u32) -> Result<Duration, PkiError> {
    check_days(days)?;
    Ok(Duration::days(i64::from(days)))
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if (1..=36500).contains(&days) {
        Ok(())
    } else {
        Err(PkiError::BadDays(days))
    }
}

/// A NAME becomes a SPIFFE path segment and a file name: `a-zA-Z0-9.-_`, not `.`/`..`,
/// not starting with `.` (hidden files), at most 64 bytes.
fn check_name(name: &str) -> Result<(), PkiError> {
    let bad = |reason| PkiError::BadName {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 64 {
        return Err(bad("longer than 64 bytes"));
    }
    if name.starts_with('.') {
        return Err(bad("must not start with ."));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("only letters, digits, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let text = read_string(path)?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|_| PkiError::BadCertificate {
        path: path.to_owned(),
        reason: "no PEM certificate in the file",
    })
}

fn serial_of(der: &[u8], path: &Path) -> Result<Serial, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| PkiError::BadCertificate {
        path: path.to_owned(),
        reason: "not a DER X.509 certificate",
    })?;
    Ok(Serial::from_bytes(cert.raw_serial()))
}

/// 16 random bytes from the OS, positive and non-zero (RFC 5280 §4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // ring's system RNG; failing to read it is an unrecoverable environment fault.
    trust::provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the OS random number generator is readable");
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(
    domain: &TrustDomain,
    what: &str,
    now: OffsetDateTime,
    days: u32,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{domain} {what}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "rsp");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The CA's own SPIFFE ID, as SPIRE does. No URI name constraints: webpki refuses
    // them (RUSTSEC-2026-0098); the trust domain is checked by the verifier instead.
    params.subject_alt_names = vec![SanType::URI(domain.id().as_str().try_into()?)];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The CRLs: the issuing CA's over leaves, and with an intermediate also the root's over
/// intermediates (webpki checks the whole chain and needs both).
fn crl_pem(
    root: &Issuer<'_, KeyPair>,
    inter: Option<&Issuer<'_, KeyPair>>,
    index: &mut Index,
    now: OffsetDateTime,
    days: u32,
) -> Result<String, PkiError> {
    let revoked: Vec<RevokedCertParams> = index
        .certificates
        .iter()
        .filter_map(|c| {
            let r = c.revoked.as_ref()?;
            let serial: Serial = c.serial.parse().ok()?;
            Some(RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial.as_bytes()),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.at_unix).unwrap_or(now),
                reason_code: parse_reason(&r.reason).ok(),
                invalidity_date: None,
            })
        })
        .collect();
    let mut sign = |issuer: &Issuer<'_, KeyPair>, revoked_certs: Vec<RevokedCertParams>| {
        index.crl_number += 1;
        CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(i64::from(days)),
            crl_number: SerialNumber::from_slice(&index.crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .and_then(|crl| crl.pem())
    };
    let mut out = String::new();
    match inter {
        Some(inter) => {
            out.push_str(&sign(inter, revoked)?);
            out.push_str(&sign(root, Vec::new())?);
        }
        None => out.push_str(&sign(root, revoked)?),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("echo-1").is_ok());
        assert!(check_name("a.b_C").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_expired_ca_issues_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(tmp.path().join("pki"));
        let then = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        pki.init("acme.test", KeyType::Ed25519, false, 1, then)
            .expect("init");
        let out = pki
            .issue(Role::Pe, "p1", &[], &[], 30, then)
            .expect("issue while valid");
        assert!(out.contains("spiffe://acme.test/pe/p1"), "{out}");
        // A leaf never outlives its CA.
        let index = pki.index().expect("index");
        assert!(
            index.certificates[0].not_after_unix <= (then + Duration::days(1)).unix_timestamp()
        );
        let later = then + Duration::days(2);
        let err = pki
            .issue(Role::Pe, "p2", &[], &[], 30, later)
            .expect_err("expired CA");
        assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
        assert!(!pki.dir().join("pe-p2.pem").exists());
        assert!(!pki.dir().join("pe-p2.key").exists());
    }

    #[test]
    fn renew_replaces_an_issued_pair_and_only_that() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(tmp.path().join("pki"));
        let now = OffsetDateTime::now_utc();
        pki.init("acme.test", KeyType::EcdsaP256, false, 30, now)
            .expect("init");
        let err = pki
            .renew(Role::Pe, "p1", &[], &[], 30, now)
            .expect_err("nothing issued yet");
        assert!(matches!(err, PkiError::NothingToRenew(_)), "{err}");
        pki.issue(Role::Pe, "p1", &[], &[], 30, now).expect("issue");
        let (cert, key) = (pki.dir().join("pe-p1.pem"), pki.dir().join("pe-p1.key"));
        let before = (
            read_string(&cert).expect("pem"),
            read_string(&key).expect("key"),
        );
        let out = pki.renew(Role::Pe, "p1", &[], &[], 30, now).expect("renew");
        assert!(out.starts_with("renewed spiffe://acme.test/pe/p1"), "{out}");
        let after = (
            read_string(&cert).expect("pem"),
            read_string(&key).expect("key"),
        );
        assert_ne!(before.0, after.0);
        assert_ne!(before.1, after.1);
        // Both are in the index, neither revoked; the new pair loads as one identity.
        let index = pki.index().expect("index");
        assert_eq!(index.certificates.len(), 2);
        assert!(index.certificates.iter().all(|c| c.revoked.is_none()));
        trust::LocalIdentity::from_pem(after.0.as_bytes(), after.1.as_bytes())
            .expect("a matching pair");
    }

    #[test]
    fn short_lived_leaves_last_minutes_and_renew_likewise() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(tmp.path().join("pki"));
        let then = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        pki.init("acme.test", KeyType::Ed25519, false, 30, then)
            .expect("init");
        pki.issue_minutes(Role::Pe, "p1", &[], &[], 10, then, false)
            .expect("issue");
        pki.issue_minutes(Role::Pe, "p1", &[], &[], 20, then, true)
            .expect("renew");
        let index = pki.index().expect("index");
        let ends: Vec<i64> = index
            .certificates
            .iter()
            .map(|c| c.not_after_unix - then.unix_timestamp())
            .collect();
        assert_eq!(ends, [600, 1200]);
        for bad in [0, MAX_MINUTES + 1] {
            let err = pki
                .issue_minutes(Role::Pe, "p2", &[], &[], bad, then, false)
                .expect_err("out of range");
            assert!(matches!(err, PkiError::BadMinutes(m) if m == bad), "{err}");
        }
    }

    #[test]
    fn reasons() {
        assert!(parse_reason("key-compromise").is_ok());
        assert!(parse_reason("because").is_err());
    }

    #[test]
    fn serials_are_positive_and_16_bytes() {
        let s = random_serial();
        assert_eq!(s.len(), 16);
        assert!(s.as_ref()[0] & 0x80 == 0 && s.as_ref()[0] != 0);
    }
}
