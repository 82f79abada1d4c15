//! Reading what a certificate says: serial, SPIFFE ID, validity; and [`Peer`], what a
//! finished handshake proves.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use identity::{Serial, SpiffeId, TrustDomain, echo};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Rejection};

/// The facts the verifier and [`Peer`] read from a leaf certificate.
#[derive(Debug, Clone)]
pub(crate) struct LeafFacts {
    pub(crate) uris: Vec<String>,
    pub(crate) serial: Serial,
    /// The issuer's Name, DER.
    pub(crate) issuer: Box<[u8]>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

/// One certificate of a peer's chain as a CRL names it: its issuer's Name (DER) and its
/// serial, so that live connections whose chain a new CRL revokes (the leaf or an
/// intermediate) can be found without keeping the certificates.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Link {
    pub(crate) issuer: Box<[u8]>,
    pub(crate) serial: Serial,
}

/// Most certificates of a chain kept as [`Link`]s: deeper chains than any PKI uses; the
/// verifier has accepted the chain, this only bounds what a connection remembers.
const MAX_LINKS: usize = 8;

/// The links of the certificates after the leaf (unparseable ones are skipped: the
/// verifier accepted the chain, so they are not part of its path).
fn intermediate_links(certs: &[CertificateDer<'_>]) -> impl Iterator<Item = Link> {
    certs.iter().take(MAX_LINKS - 1).filter_map(|der| {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(Link {
            issuer: cert.issuer().as_raw().into(),
            serial: Serial::from_bytes(cert.raw_serial()),
        })
    })
}

pub(crate) fn leaf_facts(der: &[u8]) -> Result<LeafFacts, Rejection> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| Rejection::Malformed {
        reason: "not a DER X.509 certificate",
    })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| Rejection::Malformed {
            reason: "malformed or duplicated subjectAltName extension",
        })?;
    let uris = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(LeafFacts {
        uris,
        serial: Serial::from_bytes(cert.raw_serial()),
        issuer: cert.issuer().as_raw().into(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The SPIFFE ID a leaf names: its single URI SAN, which must be a valid SPIFFE ID.
pub(crate) fn spiffe_id_of(facts: &LeafFacts) -> Result<SpiffeId, Rejection> {
    match facts.uris.as_slice() {
        [] => Err(Rejection::NoUriSan),
        [uri] => {
            if !uri.starts_with("spiffe://") {
                return Err(Rejection::NotSpiffe { uri: echo(uri) });
            }
            let id = SpiffeId::parse(uri).map_err(|e| match e {
                identity::Error::InvalidSpiffeId { reason, .. } => Rejection::InvalidSpiffeId {
                    uri: echo(uri),
                    reason,
                },
                _ => Rejection::InvalidSpiffeId {
                    uri: echo(uri),
                    reason: "invalid",
                },
            })?;
            // The bare `spiffe://DOMAIN` names the trust domain (its CA), never a workload.
            if id.path().is_empty() {
                return Err(Rejection::InvalidSpiffeId {
                    uri: echo(uri),
                    reason: "a leaf's SPIFFE ID must have a path",
                });
            }
            Ok(id)
        }
        many => Err(Rejection::MultipleUriSans { count: many.len() }),
    }
}

fn to_system_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        // Before 1970: only reachable with odd certificates; the epoch is a safe floor.
        Err(_) => UNIX_EPOCH,
    }
}

/// What a finished, verified handshake proves about the other side.
///
/// Built once per connection with [`Peer::from_tls`] after the handshake; the verifier
/// has already checked the chain, the single SPIFFE URI SAN, the trust domain and the
/// deny-list, so this only reads.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Peer {
    id: SpiffeId,
    serial: Serial,
    not_before: SystemTime,
    not_after: SystemTime,
    /// The chain as presented, leaf first, as issuer and serial.
    chain: Arc<[Link]>,
}

impl Peer {
    /// Reads the peer of a finished rustls session (server or client side).
    pub fn from_tls(conn: &rustls::CommonState) -> Result<Self, Error> {
        let certs = conn.peer_certificates().ok_or(Error::NoPeerCertificate)?;
        let (leaf, intermediates) = certs.split_first().ok_or(Error::NoPeerCertificate)?;
        Self::from_chain(leaf, intermediates)
    }

    pub(crate) fn from_chain(
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Self, Error> {
        let facts = leaf_facts(leaf)?;
        let id = spiffe_id_of(&facts)?;
        let chain = std::iter::once(Link {
            issuer: facts.issuer,
            serial: facts.serial.clone(),
        })
        .chain(intermediate_links(intermediates))
        .collect();
        Ok(Self {
            id,
            serial: facts.serial,
            not_before: to_system_time(facts.not_before),
            not_after: to_system_time(facts.not_after),
            chain,
        })
    }

    /// Reads the peer of a finished rustls session whose peer may have presented no
    /// certificate (the admin listener, where client certificates are optional): `None`
    /// when it presented none.
    pub fn from_tls_optional(conn: &rustls::CommonState) -> Result<Option<Self>, Error> {
        match conn
            .peer_certificates()
            .and_then(|certs| certs.split_first())
        {
            Some((leaf, intermediates)) => Self::from_chain(leaf, intermediates).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the identity of a leaf certificate. This does NOT verify it: use it on
    /// certificates that a verifier of this crate accepted.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Self, Error> {
        Self::from_chain(der, &[])
    }

    /// The SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The trust domain whose root verified the chain (always the SPIFFE ID's).
    pub fn trust_domain(&self) -> TrustDomain {
        self.id.trust_domain()
    }

    /// The leaf certificate's serial.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The presented chain, leaf first (as far as it was read).
    pub(crate) fn chain(&self) -> &Arc<[Link]> {
        &self.chain
    }
}
