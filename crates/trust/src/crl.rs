//! A trust domain's CRLs, their signatures checked once rather than on every handshake.
//!
//! webpki, given CRLs, verifies the signature of each CRL it consults on every handshake
//! (its issue 81): an eighth of a server's handshake CPU with ECDSA P-256. Here a CRL issued by one of the
//! domain's roots is verified when the store loads it, and refused then if the signature
//! does not hold; a CRL issued by an intermediate (which the store only sees when a peer
//! sends it) is verified the first time a verified chain through that intermediate is
//! checked, and the verdict remembered. Every decision stays webpki's: the whole chain is
//! checked; a certificate whose issuer has no CRL has an unknown status and is refused;
//! the first CRL naming the issuer is the one consulted, and it must be signed by that
//! issuer's key, be current, and (for an intermediate) come from a key allowed to sign
//! CRLs.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use identity::TrustDomain;
use rustls_pki_types::{
    CertificateRevocationListDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use webpki::{
    Cert, CertRevocationList, OwnedCertRevocationList, UnsupportedSignatureAlgorithmContext,
    UnsupportedSignatureAlgorithmForPublicKeyContext, VerifiedPath,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::Error;

/// How many intermediates' verdicts one CRL remembers: normally one (its issuer), a few
/// when an intermediate is re-issued with the same name and key. Past this, the
/// signature is still verified, on every handshake.
const MAX_REMEMBERED_ISSUERS: usize = 8;

/// DER tags read here.
const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;

/// How a domain's chains are checked for revocation by its CRLs (not a revocation: see
/// [`identity::Revocation`] for what an operator revokes).
pub(crate) enum CrlCheck {
    /// No CRL configured: no revocation check (the deny-list still applies).
    None,
    /// CRLs verified at load (roots) or once per issuer (intermediates).
    Checked(Vec<LoadedCrl>),
    /// Some CRL has an issuing distribution point, whose scope rules only webpki
    /// implements: the whole check is left to webpki, per handshake.
    Webpki(Vec<CertRevocationList<'static>>),
}

impl CrlCheck {
    /// Parses a domain's CRLs and verifies those its roots issued: a CRL that names a root
    /// as its issuer but that no root of that name signed is refused. An expired CRL is
    /// accepted here and refuses handshakes that need it, as webpki does.
    pub(crate) fn load(
        domain: &TrustDomain,
        roots: &[TrustAnchor<'static>],
        ders: &[CertificateRevocationListDer<'static>],
        algs: &[&dyn SignatureVerificationAlgorithm],
    ) -> Result<Self, Error> {
        if ders.is_empty() {
            return Ok(Self::None);
        }
        let loaded = ders
            .iter()
            .map(|der| LoadedCrl::load(domain, der, roots, algs))
            .collect::<Result<Vec<_>, _>>()?;
        if loaded
            .iter()
            .any(|l| l.crl.issuing_distribution_point().is_some())
        {
            return Ok(Self::Webpki(loaded.into_iter().map(|l| l.crl).collect()));
        }
        Ok(Self::Checked(loaded))
    }
}

impl CrlCheck {
    /// Until when (seconds since the epoch, exclusive) a chain this check passed keeps
    /// passing as far as the CRLs go: the earliest nextUpdate (past it webpki refuses the
    /// CRL as expired); `u64::MAX` without CRLs. `None` with [`CrlCheck::Webpki`], whose
    /// scope rules are webpki's alone: such chains are verified on every handshake.
    pub(crate) fn passes_until(&self) -> Option<u64> {
        match self {
            Self::None => Some(u64::MAX),
            Self::Checked(crls) => Some(
                crls.iter()
                    .map(|c| c.next_update.as_secs())
                    .min()
                    .unwrap_or(u64::MAX),
            ),
            Self::Webpki(_) => None,
        }
    }
}

/// Checks every certificate of a verified path but the anchor against `crls`, from the
/// anchor's side down, like webpki's `RevocationCheckDepth::Chain` with
/// `UnknownStatusPolicy::Deny` and `ExpirationPolicy::Enforce`.
pub(crate) fn check_path(
    crls: &[LoadedCrl],
    path: &VerifiedPath<'_>,
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), webpki::Error> {
    let end_entity: &Cert<'_> = path.end_entity();
    let mut issuer = Issuer::Anchor(path.anchor());
    for cert in path.intermediate_certificates().rev() {
        check_cert(crls, cert, issuer, now, algs)?;
        issuer = Issuer::Intermediate(cert);
    }
    check_cert(crls, end_entity, issuer, now, algs)
}

fn check_cert(
    crls: &[LoadedCrl],
    cert: &Cert<'_>,
    issuer: Issuer<'_>,
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), webpki::Error> {
    let crl = crls
        .iter()
        .find(|c| c.crl.issuer() == cert.issuer())
        .ok_or(webpki::Error::UnknownRevocationStatus)?;
    crl.signed_by(issuer, algs)?;
    if now >= crl.next_update {
        return Err(webpki::Error::CrlExpired {
            time: now,
            next_update: crl.next_update,
        });
    }
    match crl.crl.find_serial(cert.serial())? {
        None => Ok(()),
        Some(_) => Err(webpki::Error::CertRevoked),
    }
}

/// The certificate that issued the one being checked.
#[derive(Clone, Copy)]
enum Issuer<'a> {
    Anchor(&'a TrustAnchor<'a>),
    Intermediate(&'a Cert<'a>),
}

/// One parsed CRL with what is proven about its signature.
pub(crate) struct LoadedCrl {
    /// Always the owned variant; the enum carries webpki's accessors.
    crl: CertRevocationList<'static>,
    next_update: UnixTime,
    signed: SignedParts,
    /// The roots (their SPKI, as [`TrustAnchor`] holds it) whose key verified it at load.
    anchors: Vec<Box<[u8]>>,
    /// Intermediates (their DER) whose key verified it and may sign CRLs.
    issuers: RwLock<HashSet<Box<[u8]>>>,
}

impl LoadedCrl {
    fn load(
        domain: &TrustDomain,
        der: &[u8],
        roots: &[TrustAnchor<'static>],
        algs: &[&dyn SignatureVerificationAlgorithm],
    ) -> Result<Self, Error> {
        let crl = CertRevocationList::from(
            OwnedCertRevocationList::from_der(der).map_err(Error::BadCrl)?,
        );
        let bad_der = || Error::BadCrl(webpki::Error::BadDer);
        let signed = SignedParts::of(der).ok_or_else(bad_der)?;
        // webpki reads nextUpdate (it requires one) but keeps it private.
        let (_, parsed) = CertificateRevocationList::from_der(der).map_err(|_| bad_der())?;
        let next_update = parsed.next_update().ok_or_else(bad_der)?.timestamp();
        // Before 1970 only in a forged or broken CRL: the epoch is as expired.
        let next_update = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(next_update).unwrap_or(0),
        ));
        let mut anchors = Vec::new();
        let mut failure = None;
        for root in roots.iter().filter(|r| r.subject.as_ref() == crl.issuer()) {
            let spki = root.subject_public_key_info.as_ref();
            match signed.verify(algs, spki) {
                Ok(()) => anchors.push(Box::from(spki)),
                Err(e) => failure = Some(e),
            }
        }
        if anchors.is_empty()
            && let Some(source) = failure
        {
            return Err(Error::CrlSignature {
                domain: domain.clone(),
                source,
            });
        }
        Ok(Self {
            crl,
            next_update,
            signed,
            anchors,
            issuers: RwLock::new(HashSet::new()),
        })
    }

    /// Whether `issuer` signed this CRL (and, for an intermediate, may sign CRLs: webpki
    /// does not track a trust anchor's key usage).
    fn signed_by(
        &self,
        issuer: Issuer<'_>,
        algs: &[&dyn SignatureVerificationAlgorithm],
    ) -> Result<(), webpki::Error> {
        match issuer {
            Issuer::Anchor(anchor) => {
                let spki = anchor.subject_public_key_info.as_ref();
                if self.anchors.iter().any(|a| a.as_ref() == spki) {
                    return Ok(());
                }
                // Another root of the same name, one that did not sign it at load: this
                // fails, as it would in webpki.
                self.signed.verify(algs, spki)
            }
            Issuer::Intermediate(cert) => {
                let der = cert.der();
                let known = self
                    .issuers
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(der.as_ref());
                if known {
                    return Ok(());
                }
                let spki = cert.subject_public_key_info();
                let spki = sequence_contents(spki.as_ref()).ok_or(webpki::Error::BadDer)?;
                self.signed.verify(algs, spki)?;
                may_sign_crls(der.as_ref())?;
                let mut issuers = self.issuers.write().unwrap_or_else(PoisonError::into_inner);
                if issuers.len() < MAX_REMEMBERED_ISSUERS {
                    issuers.insert(Box::from(der.as_ref()));
                }
                Ok(())
            }
        }
    }
}

/// Most intermediates an upload may name to vouch for its CRLs (each is a signature
/// check per CRL): far more than any real chain is deep.
pub(crate) const MAX_UPLOAD_INTERMEDIATES: usize = 16;

/// Checks, before CRLs are accepted from outside (an admin upload), that each is signed by
/// one of `roots` or by a CA among `intermediates` that chains to them (signed by a root,
/// or by such an intermediate) and may sign CRLs: a CRL from another CA, or forged, is
/// refused instead of being enforced unchecked.
pub(crate) fn check_signers(
    domain: &TrustDomain,
    roots: &[TrustAnchor<'_>],
    intermediates: &[&[u8]],
    crls: &[CertificateRevocationListDer<'_>],
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), Error> {
    if intermediates.len() > MAX_UPLOAD_INTERMEDIATES {
        return Err(Error::BadCertificate {
            reason: "more than 16 intermediate CA certificates",
        });
    }
    // Keys (SubjectPublicKeyInfo contents) that may sign CRLs of this domain.
    let mut signers: Vec<Vec<u8>> = roots
        .iter()
        .map(|r| r.subject_public_key_info.to_vec())
        .collect();
    // Issuer keys, whether or not they may sign CRLs; intermediates join as they are
    // proven, so a longer chain needs as many rounds as it is deep.
    let mut issuers = signers.clone();
    let mut pending: Vec<&[u8]> = intermediates.to_vec();
    loop {
        let before = pending.len();
        pending.retain(|der| {
            let Some(key) = ca_key_signed_by(der, &issuers, algs) else {
                return true;
            };
            if may_sign_crls(der).is_ok() {
                signers.push(key.clone());
            }
            issuers.push(key);
            false
        });
        if pending.len() == before {
            break;
        }
    }
    for der in crls {
        let bad = || Error::BadCrl(webpki::Error::BadDer);
        let signed = SignedParts::of(der).ok_or_else(bad)?;
        if !signers.iter().any(|key| signed.verify(algs, key).is_ok()) {
            let (_, parsed) = CertificateRevocationList::from_der(der).map_err(|_| bad())?;
            return Err(Error::CrlUnverified {
                domain: domain.clone(),
                issuer: parsed.issuer().to_string(),
            });
        }
    }
    Ok(())
}

/// The key of CA certificate `der` if one of `keys` signed it.
fn ca_key_signed_by(
    der: &[u8],
    keys: &[Vec<u8>],
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if !cert.is_ca() {
        return None;
    }
    let signed = SignedParts::of(der)?;
    if !keys.iter().any(|key| signed.verify(algs, key).is_ok()) {
        return None;
    }
    sequence_contents(cert.public_key().raw).map(<[u8]>::to_vec)
}

/// RFC 5280 §4.2.1.3: an issuer with a key usage extension must assert cRLSign (without
/// one, any usage is allowed, as webpki has it).
fn may_sign_crls(der: &[u8]) -> Result<(), webpki::Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| webpki::Error::BadDer)?;
    match cert.key_usage().map_err(|_| webpki::Error::BadDer)? {
        Some(usage) if !usage.value.crl_sign() => Err(webpki::Error::IssuerNotCrlSigner),
        _ => Ok(()),
    }
}

/// The signed parts of a CRL (or of a certificate: both are `SEQUENCE { tbs, algorithm,
/// signature }`), as webpki verifies them.
struct SignedParts {
    /// The whole `tbsCertList` element.
    data: Box<[u8]>,
    /// The contents of the `signatureAlgorithm` SEQUENCE.
    algorithm: Box<[u8]>,
    /// The `signatureValue` bits.
    signature: Box<[u8]>,
}

impl SignedParts {
    /// From a CRL's or certificate's DER; `None` if it is not of that shape.
    fn of(der: &[u8]) -> Option<Self> {
        let (outer, trailing) = expect(der, SEQUENCE)?;
        if !trailing.is_empty() {
            return None;
        }
        let tbs = element(outer)?;
        if tbs.tag != SEQUENCE {
            return None;
        }
        let (algorithm, rest) = expect(tbs.rest, SEQUENCE)?;
        let (signature, rest) = expect(rest, BIT_STRING)?;
        if !rest.is_empty() {
            return None;
        }
        Some(Self {
            data: tbs.whole.into(),
            algorithm: algorithm.into(),
            signature: whole_bytes(signature)?.into(),
        })
    }

    /// Verifies the signature with a key given as the contents of a
    /// SubjectPublicKeyInfo, with webpki's rules for matching algorithms and keys.
    fn verify(
        &self,
        algs: &[&dyn SignatureVerificationAlgorithm],
        spki: &[u8],
    ) -> Result<(), webpki::Error> {
        let (key_alg, rest) = expect(spki, SEQUENCE).ok_or(webpki::Error::BadDer)?;
        let (key, rest) = expect(rest, BIT_STRING).ok_or(webpki::Error::BadDer)?;
        let key = whole_bytes(key).ok_or(webpki::Error::BadDer)?;
        if !rest.is_empty() {
            return Err(webpki::Error::BadDer);
        }
        let mut wrong_key = None;
        for alg in algs
            .iter()
            .filter(|alg| alg.signature_alg_id().as_ref() == self.algorithm.as_ref())
        {
            if alg.public_key_alg_id().as_ref() != key_alg {
                wrong_key = Some(UnsupportedSignatureAlgorithmForPublicKeyContext {
                    signature_algorithm_id: alg.signature_alg_id().as_ref().to_vec(),
                    public_key_algorithm_id: key_alg.to_vec(),
                });
                continue;
            }
            return alg
                .verify_signature(key, &self.data, &self.signature)
                .map_err(|_| webpki::Error::InvalidCrlSignatureForPublicKey);
        }
        Err(match wrong_key {
            Some(context) => {
                webpki::Error::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(context)
            }
            None => webpki::Error::UnsupportedCrlSignatureAlgorithmContext(
                UnsupportedSignatureAlgorithmContext {
                    signature_algorithm_id: self.algorithm.to_vec(),
                    supported_algorithms: algs.iter().map(|a| a.signature_alg_id()).collect(),
                },
            ),
        })
    }
}

/// One DER element and what follows it.
#[derive(Debug, PartialEq, Eq)]
struct Element<'a> {
    tag: u8,
    /// The element, header included.
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

/// The DER element at the start of `input` (definite lengths up to 4 octets).
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    Some(Element {
        tag,
        whole: &input[..header + len],
        contents,
        rest: after,
    })
}

/// The contents of an element with tag `tag`, and what follows.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let e = element(input)?;
    (e.tag == tag).then_some((e.contents, e.rest))
}

/// The contents of a SEQUENCE that is the whole input.
fn sequence_contents(input: &[u8]) -> Option<&[u8]> {
    match expect(input, SEQUENCE)? {
        (contents, []) => Some(contents),
        _ => None,
    }
}

/// A BIT STRING's bits, which must be whole bytes (keys and signatures are).
fn whole_bytes(bit_string: &[u8]) -> Option<&[u8]> {
    match bit_string.split_first()? {
        (0, bits) => Some(bits),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, IsCa, Issuer, KeyIdMethod, KeyPair,
        PublicKeyData, SerialNumber,
    };

    use super::*;

    #[test]
    fn der_elements() {
        assert_eq!(
            element(&[0x30, 2, 1, 2, 9]),
            Some(Element {
                tag: 0x30,
                whole: &[0x30, 2, 1, 2],
                contents: &[1, 2],
                rest: &[9],
            })
        );
        let long = [&[0x04, 0x81, 0x80][..], &[7; 0x80]].concat();
        let e = element(&long).expect("long form");
        assert_eq!(
            (e.tag, e.whole.len(), e.contents.len(), e.rest),
            (4, 0x83, 0x80, &[][..])
        );
        assert_eq!(element(&[0x30, 3, 1, 2]), None, "truncated contents");
        assert_eq!(element(&[0x30, 0x82, 1]), None, "truncated length");
        assert_eq!(element(&[0x30, 0x80]), None, "indefinite length");
        assert_eq!(element(&[0x30]), None);
        assert_eq!(whole_bytes(&[1, 0xfe]), None, "unused bits");
        assert_eq!(sequence_contents(&[0x30, 1, 5, 0]), None, "trailing data");
    }

    /// A CA issuer, and a key of the same kind that is not its.
    fn ca() -> (Issuer<'static, KeyPair>, KeyPair) {
        let key = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (Issuer::new(params, key()), key())
    }

    #[test]
    fn crl_signature_is_checked_against_the_issuer_key() {
        let (issuer, other) = ca();
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("CRL")
        .der()
        .to_vec();
        let algs = crate::provider().signature_verification_algorithms.all;
        let signed = SignedParts::of(&crl).expect("parts");
        let spki = issuer.key().subject_public_key_info();
        signed
            .verify(algs, sequence_contents(&spki).expect("SPKI"))
            .expect("the issuer's key verifies it");
        let wrong = other.subject_public_key_info();
        assert!(matches!(
            signed.verify(algs, sequence_contents(&wrong).expect("SPKI")),
            Err(webpki::Error::InvalidCrlSignatureForPublicKey)
        ));
        let mut tampered = crl.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let tampered = SignedParts::of(&tampered).expect("parts");
        assert!(
            tampered
                .verify(algs, sequence_contents(&spki).expect("SPKI"))
                .is_err()
        );
        let trailing = [&crl[..], &[0]].concat();
        assert!(SignedParts::of(&trailing).is_none());
    }
}
