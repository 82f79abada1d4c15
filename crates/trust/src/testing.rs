//! Test certificate authorities (feature `testing`): issue roots, intermediates, leaves
//! (good and deliberately bad) and CRLs with rcgen, for this crate's tests and other
//! crates' tests. Not for production: keys live in memory and serials are sequential.

use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use time::{Duration, OffsetDateTime};

use crate::{DomainBundle, LocalIdentity};
use identity::{Serial, TrustDomain};

/// The key algorithm of a test key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

impl KeyAlg {
    fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn generate(self) -> KeyPair {
        KeyPair::generate_for(self.alg()).expect("ring generates P-256 and Ed25519 keys")
    }
}

#[allow(clippy::disallowed_methods)] // test support reads the clock, like any driver
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A test CA (root or intermediate) of one trust domain.
pub struct TestCa {
    domain: TrustDomain,
    alg: KeyAlg,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    root: CertificateDer<'static>,
    /// Certificates a leaf of this CA sends after itself (intermediates, leaf side first).
    chain: Vec<CertificateDer<'static>>,
    next_serial: AtomicU64,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

fn ca_params(domain: &TrustDomain, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(
        domain.id().as_str().try_into().expect("a SPIFFE ID is IA5"),
    )];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(365);
    params.use_authority_key_identifier_extension = true;
    params
}

impl TestCa {
    /// A root CA for `domain` with an ECDSA P-256 key.
    pub fn new(domain: &str) -> Self {
        Self::with_alg(domain, KeyAlg::EcdsaP256)
    }

    /// A root CA for `domain` with a key of `alg`.
    pub fn with_alg(domain: &str, alg: KeyAlg) -> Self {
        let domain = TrustDomain::new(domain).expect("a valid test trust domain");
        let key = alg.generate();
        let params = ca_params(&domain, &format!("{domain} test root"));
        let cert = params
            .self_signed(&key)
            .expect("rcgen signs a root")
            .der()
            .clone();
        Self {
            domain,
            alg,
            issuer: Issuer::new(params, key),
            root: cert.clone(),
            cert,
            chain: Vec::new(),
            next_serial: AtomicU64::new(0x1000),
        }
    }

    /// An intermediate CA signed by this CA; its leaves carry the intermediate(s).
    pub fn intermediate(&self) -> Self {
        let key = self.alg.generate();
        let mut params = ca_params(&self.domain, &format!("{} test intermediate", self.domain));
        params.serial_number = Some(self.next_serial());
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("rcgen signs an intermediate")
            .der()
            .clone();
        let mut chain = vec![cert.clone()];
        chain.extend(self.chain.iter().cloned());
        Self {
            domain: self.domain.clone(),
            alg: self.alg,
            issuer: Issuer::new(params, key),
            cert,
            root: self.root.clone(),
            chain,
            next_serial: AtomicU64::new(0x2000),
        }
    }

    fn next_serial(&self) -> SerialNumber {
        let n = self.next_serial.fetch_add(1, Ordering::Relaxed);
        SerialNumber::from_slice(&n.to_be_bytes())
    }

    /// The trust domain.
    pub fn domain(&self) -> &TrustDomain {
        &self.domain
    }

    /// This CA's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The serial of this CA's certificate.
    pub fn serial(&self) -> Serial {
        serial_of(&self.cert)
    }

    /// The root certificate of the domain.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The root certificate in PEM.
    pub fn root_pem(&self) -> String {
        pem("CERTIFICATE", &self.root)
    }

    /// The domain's trust bundle (its root), without CRLs.
    pub fn bundle(&self) -> DomainBundle {
        DomainBundle::new(self.domain.clone(), vec![self.root.clone()])
    }

    /// Starts a leaf with the SPIFFE ID `spiffe://DOMAIN/path` (path without the leading
    /// slash, e.g. `pe/echo-1`), client and server auth, valid from an hour ago for a day.
    pub fn leaf(&self, path: &str) -> LeafBuilder<'_> {
        LeafBuilder {
            ca: self,
            uris: vec![format!("spiffe://{}/{path}", self.domain)],
            dns: Vec::new(),
            ekus: vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            not_before: now() - Duration::hours(1),
            not_after: now() + Duration::days(1),
            self_signed: false,
        }
    }

    /// A CRL of this CA revoking `serials`, valid for a day.
    pub fn crl(&self, serials: &[&Serial]) -> CertificateRevocationListDer<'static> {
        self.crl_with_next_update(serials, now() + Duration::days(1))
    }

    /// A CRL of this CA revoking `serials`, with the given next-update time.
    pub fn crl_with_next_update(
        &self,
        serials: &[&Serial],
        next_update: OffsetDateTime,
    ) -> CertificateRevocationListDer<'static> {
        self.crl_dated(serials, now() - Duration::hours(2), next_update)
    }

    /// A CRL of this CA revoking `serials`, issued at `this_update` (for tests on a fixed
    /// clock), current until `next_update`.
    pub fn crl_dated(
        &self,
        serials: &[&Serial],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> CertificateRevocationListDer<'static> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: self.next_serial(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s.as_bytes()),
                    revocation_time: this_update,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("rcgen signs a CRL")
            .der()
            .clone()
    }
}

/// A leaf being built; see [`TestCa::leaf`].
pub struct LeafBuilder<'a> {
    ca: &'a TestCa,
    uris: Vec<String>,
    dns: Vec<String>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    self_signed: bool,
}

impl LeafBuilder<'_> {
    /// Replaces the URI SANs (any text, even invalid SPIFFE IDs; none at all with `&[]`).
    #[must_use]
    pub fn uris(mut self, uris: &[&str]) -> Self {
        self.uris = uris.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Adds a DNS SAN.
    #[must_use]
    pub fn dns(mut self, name: &str) -> Self {
        self.dns.push(name.to_owned());
        self
    }

    /// Only the client-auth EKU.
    #[must_use]
    pub fn client_only(mut self) -> Self {
        self.ekus = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self
    }

    /// Only the server-auth EKU.
    #[must_use]
    pub fn server_only(mut self) -> Self {
        self.ekus = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self
    }

    /// Validity from `not_before` to `not_after`, relative to now.
    #[must_use]
    pub fn valid(mut self, not_before: Duration, not_after: Duration) -> Self {
        self.not_before = now() + not_before;
        self.not_after = now() + not_after;
        self
    }

    /// Expired since yesterday.
    #[must_use]
    pub fn expired(self) -> Self {
        self.valid(Duration::days(-3), Duration::days(-1))
    }

    /// Valid only from tomorrow.
    #[must_use]
    pub fn not_yet_valid(self) -> Self {
        self.valid(Duration::days(1), Duration::days(3))
    }

    /// Signed by its own key instead of the CA.
    #[must_use]
    pub fn self_signed(mut self) -> Self {
        self.self_signed = true;
        self
    }

    /// Issues the leaf.
    pub fn issue(self) -> TestLeaf {
        let key = self.ca.alg.generate();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "rsp test leaf");
        params.serial_number = Some(self.ca.next_serial());
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = self.ekus;
        params.use_authority_key_identifier_extension = !self.self_signed;
        for uri in &self.uris {
            params.subject_alt_names.push(SanType::URI(
                uri.as_str().try_into().expect("test URIs are IA5"),
            ));
        }
        for name in &self.dns {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str().try_into().expect("test DNS names are IA5"),
            ));
        }
        let cert = if self.self_signed {
            params.self_signed(&key)
        } else {
            params.signed_by(&key, &self.ca.issuer)
        }
        .expect("rcgen signs a leaf")
        .der()
        .clone();
        let mut chain = vec![cert];
        if !self.self_signed {
            chain.extend(self.ca.chain.iter().cloned());
        }
        TestLeaf {
            serial: serial_of(&chain[0]),
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

/// An issued test leaf: chain (leaf first) and key.
pub struct TestLeaf {
    /// The leaf, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The PKCS#8 private key.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The leaf's serial.
    pub serial: Serial,
}

impl std::fmt::Debug for TestLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestLeaf")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl TestLeaf {
    /// As the identity a [`TrustStore`](crate::TrustStore) presents. Panics if the leaf's
    /// SPIFFE ID is invalid (use [`TestLeaf::key_der`] with a raw rustls config then).
    pub fn identity(&self) -> LocalIdentity {
        LocalIdentity::from_der(self.chain.clone(), self.key_der())
            .expect("a test leaf with a valid SPIFFE ID")
    }

    /// The private key as rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The chain in PEM.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    /// The key in PEM.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }
}

fn serial_of(der: &[u8]) -> Serial {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).expect("rcgen output parses");
    Serial::from_bytes(cert.raw_serial())
}

/// PEM-encodes DER with a label.
pub fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}
