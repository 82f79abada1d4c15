//! The command line of `rsp-pki`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;

use crate::keyfile::Passphrase;
use crate::{KeyType, Pki, PkiError, Role};

/// The environment variable that may hold the CA keys' passphrase.
pub const PASSPHRASE_ENV: &str = "RSP_PKI_PASSPHRASE";

/// Bootstrap a PKI for an rsp trust domain and issue certificates.
#[derive(Debug, Parser)]
#[command(name = "rsp-pki", version, about)]
pub struct Cli {
    /// The PKI directory.
    #[arg(long, global = true, default_value = "./pki", env = "RSP_PKI_DIR")]
    pub dir: PathBuf,
    /// A file holding the passphrase of the CA keys (or set RSP_PKI_PASSPHRASE). With
    /// `init`, the CA keys are encrypted with it. Never given on the command line itself.
    #[arg(long, global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a root CA (and optionally an intermediate) for a trust domain.
    Init {
        /// The trust domain, e.g. `acme.test`.
        #[arg(long)]
        trust_domain: String,
        /// Key algorithm of the CA and of the certificates it issues.
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// Issue leaves from an intermediate CA; the root key can then be kept offline.
        #[arg(long)]
        intermediate: bool,
        /// Validity of the CA certificates, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate with the SPIFFE ID spiffe://DOMAIN/ROLE/NAME.
    Issue {
        /// The role.
        #[arg(value_enum)]
        role: Role,
        /// The name (letters, digits, `.`, `-`, `_`).
        name: String,
        /// A DNS name to add (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address to add (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Validity in minutes instead (short-lived certificates, renewed by a timer with
        /// `--renew`; `rsp pe`, `pu` and `gateway` pick a renewal up without a restart).
        #[arg(long, conflicts_with = "days")]
        minutes: Option<u32>,
        /// Renew: replace the existing certificate and key of ROLE NAME with new ones
        /// (the old certificate stays valid until it expires or is revoked).
        #[arg(long)]
        renew: bool,
    },
    /// Revoke a certificate by serial (hex) or certificate file, and write a new CRL.
    Revoke {
        /// A serial in hex, or a certificate file.
        target: String,
        /// Why: unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Write a fresh CRL.
    Crl {
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// List the issued certificates and their status.
    List,
    /// Show a certificate's identity, serial, validity, issuer and status.
    Inspect {
        /// The certificate file (PEM).
        cert: PathBuf,
    },
    /// Export or import trust bundles, to federate trust domains.
    Bundle {
        /// Export or import.
        #[command(subcommand)]
        action: BundleAction,
    },
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleAction {
    /// Print this trust domain's bundle (or write it to --out).
    Export {
        /// Write to this file instead of standard output (never overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import another trust domain's bundle into DIR/federated/DOMAIN.pem.
    Import {
        /// The bundle file.
        file: PathBuf,
        /// The trust domain, if the file does not name it.
        #[arg(long)]
        trust_domain: Option<String>,
    },
}

/// Runs a parsed command; returns what to print.
pub fn run(cli: &Cli, now: OffsetDateTime) -> Result<String, PkiError> {
    // Whole seconds: certificates carry no fractions, and the index and output match them.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let passphrase = match (&cli.passphrase_file, std::env::var_os(PASSPHRASE_ENV)) {
        (Some(path), _) => Some(Passphrase::new(std::fs::read(path).map_err(|source| {
            PkiError::Io {
                path: path.clone(),
                source,
            }
        })?)),
        (None, Some(value)) => Some(Passphrase::new(value.into_encoded_bytes())),
        (None, None) => None,
    };
    let pki = Pki::new(&cli.dir).with_passphrase(passphrase);
    match &cli.command {
        Command::Init {
            trust_domain,
            key_type,
            intermediate,
            days,
        } => pki.init(trust_domain, *key_type, *intermediate, *days, now),
        Command::Issue {
            role,
            name,
            dns,
            ip,
            days,
            minutes,
            renew,
        } => {
            if let Some(minutes) = minutes {
                pki.issue_minutes(*role, name, dns, ip, *minutes, now, *renew)
            } else if *renew {
                pki.renew(*role, name, dns, ip, *days, now)
            } else {
                pki.issue(*role, name, dns, ip, *days, now)
            }
        }
        Command::Revoke { target, reason } => pki.revoke(target, reason, now),
        Command::Crl { days } => pki.crl(*days, now),
        Command::List => pki.list(now).map(|s| s.trim_end().to_owned()),
        Command::Inspect { cert } => pki.inspect(cert, now).map(|i| i.text.trim_end().to_owned()),
        Command::Bundle { action } => match action {
            BundleAction::Export { out: None } => {
                pki.bundle_export().map(|s| s.trim_end().to_owned())
            }
            BundleAction::Export { out: Some(path) } => {
                let bundle = pki.bundle_export()?;
                crate::files::write_new(path, bundle.as_bytes(), crate::files::PUBLIC_MODE)?;
                Ok(format!("wrote {}", path.display()))
            }
            BundleAction::Import { file, trust_domain } => {
                pki.bundle_import(file, trust_domain.as_deref())
            }
        },
    }
}
