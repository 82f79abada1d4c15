//! Errors of the trust crate.

use identity::TrustDomain;

/// Errors of the trust crate: bad names and patterns, unreadable certificates, keys and
/// CRLs, and refused changes to the trust store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE ID, trust domain, pattern, action or serial number does not parse.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// PEM input could not be read.
    #[error("cannot read {what} from PEM: {source}")]
    Pem {
        /// What was being read (`certificate`, `private key`, `CRL`).
        what: &'static str,
        /// The PEM decoder's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// PEM input holds none of the expected objects.
    #[error("no {what} found in PEM input")]
    Empty {
        /// What was expected.
        what: &'static str,
    },
    /// A certificate is malformed or unusable for the stated purpose.
    #[error("bad certificate: {reason}")]
    BadCertificate {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A replacement identity names another SPIFFE ID than the one in use.
    #[error("the new certificate is for {to}, not {from}: a different identity needs a restart")]
    IdentityChanged {
        /// The identity in use.
        from: identity::SpiffeId,
        /// The one offered.
        to: identity::SpiffeId,
    },
    /// A certificate was refused by the SPIFFE rules (see [`Rejection`](crate::Rejection)).
    #[error(transparent)]
    Rejected(#[from] crate::Rejection),
    /// A CRL could not be parsed.
    #[error("bad CRL: {0}")]
    BadCrl(webpki::Error),
    /// A CRL names one of its trust domain's roots as its issuer, but no root of that
    /// name signed it: forged, corrupted, or from another CA with the same name.
    #[error(
        "CRL of trust domain {domain} names a root as issuer but its signature does not verify: {source}"
    )]
    CrlSignature {
        /// The trust domain whose bundle holds it.
        domain: TrustDomain,
        /// webpki's reason (bad signature, unsupported algorithm).
        #[source]
        source: webpki::Error,
    },
    /// A CRL offered for a trust domain is signed by neither a root of that domain nor a
    /// known intermediate CA of it (one that chains to a root and may sign CRLs).
    #[error(
        "CRL issued by {issuer:?} is signed by neither a root nor a known intermediate CA of trust domain {domain}"
    )]
    CrlUnverified {
        /// The trust domain it was offered for.
        domain: TrustDomain,
        /// The issuer name the CRL claims.
        issuer: String,
    },
    /// A root certificate cannot serve as a trust anchor.
    #[error("bad root certificate for trust domain {domain}: {source}")]
    BadRoot {
        /// The trust domain whose bundle holds it.
        domain: TrustDomain,
        /// webpki's reason.
        #[source]
        source: webpki::Error,
    },
    /// A trust domain bundle has no root certificate.
    #[error("trust domain {0} has no root certificate")]
    NoRoots(TrustDomain),
    /// The trust domain is already in the store.
    #[error("trust domain {0} is already trusted")]
    DuplicateTrustDomain(TrustDomain),
    /// The trust domain is not in the store.
    #[error("trust domain {0} is not trusted")]
    UnknownTrustDomain(TrustDomain),
    /// The finished TLS session shows no peer certificate (the verifier should have made
    /// this impossible; seen when a `Peer` is asked of an unauthenticated session).
    #[error("the TLS session has no peer certificate")]
    NoPeerCertificate,
    /// The session negotiated another application protocol than the listener serves
    /// (or none: the client offered no ALPN).
    #[error("ALPN: expected {expected}, the session negotiated {}", negotiated.as_deref().unwrap_or("none"))]
    AlpnMismatch {
        /// The protocol the listener serves.
        expected: &'static str,
        /// What was negotiated, if anything (lossy UTF-8).
        negotiated: Option<String>,
    },
    /// rustls refused the configuration, key or certificate.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}
