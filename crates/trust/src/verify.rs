//! The certificate verifiers: webpki chain verification against the claimed trust
//! domain's roots, revocation against its CRLs (`crl`), plus the SPIFFE rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use identity::{IdentityPattern, RegistrarIds, Serial, SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertRevocationListError, CertificateError, DigitallySignedStruct, DistinguishedName,
    ExtendedKeyPurpose, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy, VerifiedPath,
};

use crate::cert::{leaf_facts, spiffe_id_of};
use crate::crl::{CrlCheck, check_path};

/// Why a certificate was refused by the SPIFFE rules of this crate (chain, validity and
/// CRL failures are reported with rustls' own [`CertificateError`] variants instead).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The leaf cannot be parsed.
    #[error("malformed certificate: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The leaf has no URI SAN, so it names no SPIFFE ID.
    #[error("certificate has no URI SAN (a SPIFFE ID is required)")]
    NoUriSan,
    /// The leaf has several URI SANs; SPIFFE allows exactly one.
    #[error("certificate has {count} URI SANs (exactly one SPIFFE ID is allowed)")]
    MultipleUriSans {
        /// How many.
        count: usize,
    },
    /// The URI SAN is not a `spiffe://` URI.
    #[error("URI SAN {uri:?} is not a SPIFFE ID")]
    NotSpiffe {
        /// The URI, shortened if long.
        uri: String,
    },
    /// The URI SAN is a `spiffe://` URI that breaks the SPIFFE ID rules.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The URI, shortened if long.
        uri: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The SPIFFE ID's trust domain is not trusted here.
    #[error("trust domain {domain} of {id} is not trusted")]
    UnknownTrustDomain {
        /// The claimed trust domain.
        domain: TrustDomain,
        /// The claimed SPIFFE ID.
        id: SpiffeId,
    },
    /// The chain verifies to the root of another trust domain than the one the SPIFFE ID
    /// names: a CA of one domain issuing identities of another.
    #[error(
        "{id} claims trust domain {claimed} but its chain verifies to the root of {verified_by}"
    )]
    TrustDomainMismatch {
        /// The SPIFFE ID presented.
        id: SpiffeId,
        /// Its trust domain.
        claimed: TrustDomain,
        /// The domain whose root actually signed the chain.
        verified_by: TrustDomain,
    },
    /// The serial is on the deny-list.
    #[error("certificate serial {serial} of trust domain {domain} is revoked (deny-list)")]
    DeniedSerial {
        /// The trust domain.
        domain: TrustDomain,
        /// The serial.
        serial: Serial,
    },
    /// The serial is on one of the domain's CRLs (reported when a connection registers
    /// after a CRL update; during a handshake the CRL check reports `Revoked`).
    #[error("certificate serial {serial} of trust domain {domain} is revoked (CRL)")]
    RevokedSerial {
        /// The trust domain.
        domain: TrustDomain,
        /// The serial.
        serial: Serial,
    },
    /// The SPIFFE ID is on the deny-list.
    #[error("identity {id} is revoked (deny-list)")]
    DeniedIdentity {
        /// The SPIFFE ID.
        id: SpiffeId,
    },
    /// The server's SPIFFE ID is valid but not the one the client expects.
    #[error("server identity {id} does not match the expected {expected}")]
    UnexpectedIdentity {
        /// What the server presented.
        id: SpiffeId,
        /// What the client expected.
        expected: String,
    },
}

/// Debug shows the message: rustls prints `CertificateError::Other` with `{:?}`, and this
/// makes the reason readable in every handshake error.
impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Rejection> for rustls::Error {
    fn from(rejection: Rejection) -> Self {
        Self::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(rejection))))
    }
}

/// One trust domain's verification material.
pub(crate) struct DomainAnchors {
    pub(crate) roots: Vec<TrustAnchor<'static>>,
    pub(crate) revocation: CrlCheck,
}

/// An immutable view of the trust store that the verifiers of one configuration use.
pub(crate) struct Snapshot {
    pub(crate) domains: BTreeMap<TrustDomain, DomainAnchors>,
    /// Leaf serials the domains' CRLs list, for re-checking registered connections.
    /// What the domains' CRLs list: (domain, issuer Name DER, serial), for re-checking
    /// every certificate of a registered connection's chain.
    pub(crate) crl_revoked: HashSet<(TrustDomain, Box<[u8]>, Serial)>,
    pub(crate) denied_serials: HashSet<(TrustDomain, Serial)>,
    pub(crate) denied_ids: HashSet<SpiffeId>,
    pub(crate) hints: Vec<DistinguishedName>,
    pub(crate) algs: WebPkiSupportedAlgorithms,
    /// Chains this snapshot verified ([`VerifiedChains`]).
    pub(crate) verified: VerifiedChains,
}

/// Most chains a [`Snapshot`] remembers as verified: ~1 KiB of DER each, so a few MiB at
/// most. Only chains that passed every check get in (a valid certificate of a trusted
/// domain is needed to add one); when full, it is emptied and fills again.
pub(crate) const MAX_VERIFIED_CHAINS: usize = 4096;

/// The chains (exact DER bytes, leaf and intermediates, and the key usage) that passed
/// [`Snapshot::verify`], with the SPIFFE ID they proved and the time window in which the
/// same checks give the same answer: from the verification until the first notAfter of
/// the chain or nextUpdate of the domain's CRLs. A peer presenting the same chain again
/// (a PU or PE reconnecting) then costs no chain signature verification and no parse of
/// its leaf: the ECDSA verification of its chain was a seventh of a registrar's
/// handshake CPU. Nothing is weakened: the snapshot is immutable (any change of trust
/// domains, CRLs or deny-lists builds a new one, with an empty cache), the inputs are
/// compared byte for byte, the time window is the one webpki's checks give, and the
/// handshake's own signature (the peer holds the key) is verified every time by rustls.
#[derive(Default)]
pub(crate) struct VerifiedChains(Mutex<HashMap<Box<[u8]>, Verified>>);

struct Verified {
    id: SpiffeId,
    /// Seconds since the epoch: valid for `since <= now < until`.
    since: u64,
    until: u64,
}

/// Which side a chain authenticates (the extended key usage it needs).
#[derive(Clone, Copy)]
pub(crate) enum Usage {
    Client,
    Server,
}

impl Usage {
    fn key_usage(self) -> KeyUsage {
        match self {
            Self::Client => KeyUsage::client_auth(),
            Self::Server => KeyUsage::server_auth(),
        }
    }
}

impl VerifiedChains {
    /// The cache key: the usage, then each certificate's length and bytes.
    fn key(usage: Usage, end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Box<[u8]> {
        let certs = std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref()));
        let mut key = Vec::with_capacity(1 + certs.clone().map(|c| c.len() + 4).sum::<usize>());
        key.push(match usage {
            Usage::Client => 0,
            Usage::Server => 1,
        });
        for c in certs {
            key.extend_from_slice(&u32::try_from(c.len()).unwrap_or(u32::MAX).to_be_bytes());
            key.extend_from_slice(c);
        }
        key.into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Verified>> {
        // Every operation is one lookup, insert or clear: a poisoned map is consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &[u8], now: UnixTime) -> Option<SpiffeId> {
        let now = now.as_secs();
        self.lock()
            .get(key)
            .filter(|v| v.since <= now && now < v.until)
            .map(|v| v.id.clone())
    }

    fn insert(&self, key: Box<[u8]>, verified: Verified) {
        let mut map = self.lock();
        if map.len() >= MAX_VERIFIED_CHAINS {
            map.clear();
        }
        map.insert(key, verified);
    }

    /// How many chains it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Until when (exclusive, seconds since the epoch) a chain verified now stays valid: its
/// certificates' notAfter (webpki accepts up to and including it; one second is given
/// up) and the CRLs' nextUpdate. `None` if an intermediate does not parse or the CRLs
/// are webpki's to check: then the chain is not remembered.
fn valid_until(
    leaf_not_after: i64,
    intermediates: &[CertificateDer<'_>],
    crls: &CrlCheck,
) -> Option<u64> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let mut until = crls
        .passes_until()?
        .min(u64::try_from(leaf_not_after).ok()?);
    for der in intermediates {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        until = until.min(u64::try_from(cert.validity().not_after.timestamp()).ok()?);
    }
    Some(until)
}

impl Snapshot {
    /// Whether a peer that passed an earlier configuration's verifier is still trusted
    /// by this one (deny-list, trust domain, any certificate of its chain on a CRL).
    pub(crate) fn still_trusted(&self, peer: &crate::Peer) -> Result<(), Rejection> {
        let id = peer.id();
        if self.denied_ids.contains(id) {
            return Err(Rejection::DeniedIdentity { id: id.clone() });
        }
        let domain = peer.trust_domain();
        if !self.domains.contains_key(&domain) {
            return Err(Rejection::UnknownTrustDomain {
                domain,
                id: id.clone(),
            });
        }
        let key = (domain, peer.serial().clone());
        if self.denied_serials.contains(&key) {
            let (domain, serial) = key;
            return Err(Rejection::DeniedSerial { domain, serial });
        }
        let (domain, _) = key;
        if let Some(link) = peer.chain().iter().find(|l| {
            self.crl_revoked
                .contains(&(domain.clone(), l.issuer.clone(), l.serial.clone()))
        }) {
            return Err(Rejection::RevokedSerial {
                domain,
                serial: link.serial.clone(),
            });
        }
        Ok(())
    }

    /// Verifies a leaf and chain for `usage` and returns the SPIFFE ID it proves (from
    /// [`VerifiedChains`] when this snapshot verified the same chain before and the
    /// answer cannot have changed).
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, rustls::Error> {
        let key = VerifiedChains::key(usage, end_entity, intermediates);
        if let Some(id) = self.verified.get(&key, now) {
            return Ok(id);
        }
        let (id, until) = self.verify_afresh(end_entity, intermediates, now, usage)?;
        if let Some(until) = until {
            let since = now.as_secs();
            self.verified.insert(
                key,
                Verified {
                    id: id.clone(),
                    since,
                    until,
                },
            );
        }
        Ok(id)
    }

    /// [`Snapshot::verify`] without the cache: the SPIFFE ID, and until when the answer
    /// holds (`None`: do not remember it).
    fn verify_afresh(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<(SpiffeId, Option<u64>), rustls::Error> {
        let usage = &usage.key_usage();
        let facts = leaf_facts(end_entity)?;
        let id = spiffe_id_of(&facts)?;
        if self.denied_ids.contains(&id) {
            return Err(Rejection::DeniedIdentity { id }.into());
        }
        let domain = id.trust_domain();
        let Some(anchors) = self.domains.get(&domain) else {
            return Err(self.mismatch_or(
                &id,
                end_entity,
                intermediates,
                now,
                usage,
                Rejection::UnknownTrustDomain {
                    domain,
                    id: id.clone(),
                }
                .into(),
            ));
        };
        let key = (domain, facts.serial);
        if self.denied_serials.contains(&key) {
            let (domain, serial) = key;
            return Err(Rejection::DeniedSerial { domain, serial }.into());
        }
        let ee = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        // With CRLs: check the whole chain, treat an unknown status or an expired CRL as
        // a failure (security first; rsp-pki publishes a root CRL covering intermediates).
        let verified = match &anchors.revocation {
            CrlCheck::None => ee.verify_for_usage(
                self.algs.all,
                &anchors.roots,
                intermediates,
                now,
                usage,
                None,
                None,
            ),
            // Checked on each candidate path webpki builds: a revoked path makes webpki
            // try the next one, as its own CRL check does.
            CrlCheck::Checked(crls) => ee.verify_for_usage(
                self.algs.all,
                &anchors.roots,
                intermediates,
                now,
                usage,
                None,
                Some(&|path: &VerifiedPath<'_>| check_path(crls, path, now, self.algs.all)),
            ),
            CrlCheck::Webpki(crls) => {
                let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
                let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
                    b.with_depth(RevocationCheckDepth::Chain)
                        .with_status_policy(UnknownStatusPolicy::Deny)
                        .with_expiration_policy(ExpirationPolicy::Enforce)
                        .build()
                });
                ee.verify_for_usage(
                    self.algs.all,
                    &anchors.roots,
                    intermediates,
                    now,
                    usage,
                    revocation,
                    None,
                )
            }
        };
        match verified {
            Ok(_) => Ok((
                id,
                valid_until(facts.not_after, intermediates, &anchors.revocation),
            )),
            Err(webpki::Error::UnknownIssuer) => Err(self.mismatch_or(
                &id,
                end_entity,
                intermediates,
                now,
                usage,
                pki_error(webpki::Error::UnknownIssuer),
            )),
            Err(e) => Err(pki_error(e)),
        }
    }

    /// When the chain does not verify to the claimed domain's roots, says whether it
    /// verifies to another trusted domain's (a clearer reason than "unknown issuer").
    fn mismatch_or(
        &self,
        id: &SpiffeId,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: &KeyUsage,
        otherwise: rustls::Error,
    ) -> rustls::Error {
        let Ok(ee) = EndEntityCert::try_from(end_entity) else {
            return otherwise;
        };
        for (other, anchors) in &self.domains {
            if other.as_str() == id.trust_domain_str() {
                continue;
            }
            if ee
                .verify_for_usage(
                    self.algs.all,
                    &anchors.roots,
                    intermediates,
                    now,
                    usage,
                    None,
                    None,
                )
                .is_ok()
            {
                return Rejection::TrustDomainMismatch {
                    id: id.clone(),
                    claimed: id.trust_domain(),
                    verified_by: other.clone(),
                }
                .into();
            }
        }
        otherwise
    }
}

/// webpki's errors as rustls reports them (mirrors rustls' private mapping, so alerts
/// and messages are the usual ones: expired, revoked, unknown issuer...).
fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding.into(),
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }.into()
        }
        E::CertExpired { time, not_after } => {
            CertificateError::ExpiredContext { time, not_after }.into()
        }
        E::InvalidCertValidity => CertificateError::Expired.into(),
        E::UnknownIssuer => CertificateError::UnknownIssuer.into(),
        E::CertRevoked => CertificateError::Revoked.into(),
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus.into(),
        E::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }.into()
        }
        E::IssuerNotCrlSigner => CertRevocationListError::IssuerInvalidForCrl.into(),
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature.into(),
        E::InvalidCrlSignatureForPublicKey => CertRevocationListError::BadSignature.into(),
        #[allow(deprecated)]
        E::RequiredEkuNotFound => CertificateError::InvalidPurpose.into(),
        E::RequiredEkuNotFoundContext(webpki::RequiredEkuNotFoundContext { required, present }) => {
            CertificateError::InvalidPurposeContext {
                required: purpose(required.oid_values()),
                presented: present
                    .into_iter()
                    .map(|eku| purpose(eku.into_iter()))
                    .collect(),
            }
            .into()
        }
        other => CertificateError::Other(OtherError(Arc::new(other))).into(),
    }
}

/// An EKU OID (as arc values) as rustls names it.
fn purpose(values: impl Iterator<Item = usize>) -> ExtendedKeyPurpose {
    const CLIENT_AUTH: [usize; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 2];
    const SERVER_AUTH: [usize; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 1];
    let values: Vec<usize> = values.collect();
    match values.as_slice() {
        v if v == CLIENT_AUTH => ExtendedKeyPurpose::ClientAuth,
        v if v == SERVER_AUTH => ExtendedKeyPurpose::ServerAuth,
        _ => ExtendedKeyPurpose::Other(values),
    }
}

/// The server side's verifier of client certificates: required on the ASAP and ENRP
/// listeners, optional on the admin listener (which also takes bearer tokens); a
/// certificate that is presented is checked the same way in both cases.
pub(crate) struct SpiffeClientVerifier {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) mandatory: bool,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("domains", &self.snapshot.domains.keys().collect::<Vec<_>>())
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.snapshot.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.snapshot
            .verify(end_entity, intermediates, now, Usage::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.snapshot.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.snapshot.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.snapshot.algs.supported_schemes()
    }
}

/// Which server identity a client configuration accepts.
#[derive(Clone, Debug)]
pub(crate) enum Expected {
    /// A registrar (every ASAP and ENRP connection a store's
    /// [`client_config`](crate::TrustStore::client_config) makes).
    Registrar(RegistrarIds),
    /// IDs matching this pattern (a PU pinning the PE the registrar vouched for).
    Pattern(IdentityPattern),
}

impl Expected {
    fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Registrar(ids) => ids.matches(id),
            Self::Pattern(p) => p.matches(id),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Registrar(ids) => format!("registrar identity {ids}"),
            Self::Pattern(p) => p.as_str().to_owned(),
        }
    }
}

/// The client side's verifier of server certificates. SPIFFE authenticates a server by
/// its SPIFFE ID, not its DNS name: the TLS server name is ignored, and the ID must
/// match what the client expects.
pub(crate) struct SpiffeServerVerifier {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) expected: Expected,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("domains", &self.snapshot.domains.keys().collect::<Vec<_>>())
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self
            .snapshot
            .verify(end_entity, intermediates, now, Usage::Server)?;
        if !self.expected.matches(&id) {
            return Err(Rejection::UnexpectedIdentity {
                id,
                expected: self.expected.describe(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.snapshot.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.snapshot.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.snapshot.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache holds at most [`MAX_VERIFIED_CHAINS`]: one more empties it first.
    #[test]
    fn the_verified_chains_are_bounded() {
        let chains = VerifiedChains::default();
        let id = SpiffeId::parse("spiffe://acme.test/pu/one").expect("ID");
        let entry = || Verified {
            id: id.clone(),
            since: 0,
            until: u64::MAX,
        };
        for n in 0..MAX_VERIFIED_CHAINS {
            chains.insert(
                VerifiedChains::key(Usage::Client, &n.to_be_bytes(), &[]),
                entry(),
            );
        }
        assert_eq!(chains.len(), MAX_VERIFIED_CHAINS);
        let first = VerifiedChains::key(Usage::Client, &0usize.to_be_bytes(), &[]);
        assert!(chains.get(&first, UnixTime::now()).is_some());
        let last = VerifiedChains::key(Usage::Client, b"one more", &[]);
        chains.insert(last.clone(), entry());
        assert_eq!(chains.len(), 1, "emptied, then the new chain");
        assert!(chains.get(&first, UnixTime::now()).is_none());
        assert!(chains.get(&last, UnixTime::now()).is_some());
        // The usage is part of the key: a chain verified for clients is not one for servers.
        let server = VerifiedChains::key(Usage::Server, b"one more", &[]);
        assert!(chains.get(&server, UnixTime::now()).is_none());
    }
}
