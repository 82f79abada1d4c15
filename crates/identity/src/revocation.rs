//! What a revocation names: one identity, one certificate (a serial of one trust domain's
//! CA) or a whole trust domain. One type for the registrar core (which PEs go), the store
//! (`store::db::RevocationRecord`) and the admin API (issue 24 item 4).

use std::fmt;

use crate::{Serial, SpiffeId, TrustDomain};

/// What is revoked (ARCHITECTURE.md §3).
///
/// `#[non_exhaustive]`: a kind added later must be refused by a registrar that cannot
/// enforce it, so every `match` outside this crate says what it does with one it does not
/// know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Revocation {
    /// One certificate: a serial of the CA of one trust domain (serials are unique per
    /// CA only, so a federated domain's serial must not revoke a local certificate that
    /// happens to have the same one).
    Serial {
        /// The trust domain whose CA issued it.
        domain: TrustDomain,
        /// Its serial.
        serial: Serial,
    },
    /// Every certificate of this SPIFFE ID.
    Identity(SpiffeId),
    /// Every identity of this trust domain.
    TrustDomain(TrustDomain),
}

impl Revocation {
    /// Whether it covers the certificate with SPIFFE ID `id` and serial `serial`.
    pub fn covers(&self, id: &SpiffeId, serial: &Serial) -> bool {
        match self {
            Self::Serial { domain, serial: s } => {
                s == serial && id.trust_domain_str() == domain.as_str()
            }
            _ => self.covers_identity(id),
        }
    }

    /// Whether it covers every certificate of `id`: what is asked of an identity known
    /// without its certificate (a PE's registrant), which a serial never covers.
    pub fn covers_identity(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Identity(i) => i == id,
            Self::TrustDomain(d) => id.trust_domain_str() == d.as_str(),
            Self::Serial { .. } => false,
        }
    }

    /// The trust domain it belongs to: the issuing one for a serial, the identity's, or
    /// the domain revoked.
    pub fn trust_domain(&self) -> TrustDomain {
        match self {
            Self::Serial { domain, .. } | Self::TrustDomain(domain) => domain.clone(),
            Self::Identity(id) => id.trust_domain(),
        }
    }

    /// Its kind as the store and the admin API name it: `serial`, `spiffe_id` or
    /// `trust_domain`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Serial { .. } => "serial",
            Self::Identity(_) => "spiffe_id",
            Self::TrustDomain(_) => "trust_domain",
        }
    }
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial { domain, serial } => write!(f, "serial {serial} of {domain}"),
            Self::Identity(id) => write!(f, "identity {id}"),
            Self::TrustDomain(domain) => write!(f, "trust domain {domain}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("id")
    }

    fn serial(s: &str) -> Serial {
        s.parse().expect("serial")
    }

    fn domain(s: &str) -> TrustDomain {
        TrustDomain::new(s).expect("domain")
    }

    #[test]
    fn a_serial_covers_only_its_certificate_of_its_domain() {
        let r = Revocation::Serial {
            domain: domain("a.test"),
            serial: serial("0a"),
        };
        assert!(r.covers(&id("spiffe://a.test/pe/x"), &serial("0a")));
        // The same serial from another CA is another certificate.
        assert!(!r.covers(&id("spiffe://b.test/pe/x"), &serial("0a")));
        assert!(!r.covers(&id("spiffe://a.test/pe/x"), &serial("0b")));
        // A registrant known without its certificate is not covered by a serial.
        assert!(!r.covers_identity(&id("spiffe://a.test/pe/x")));
    }

    #[test]
    fn an_identity_or_a_domain_covers_every_certificate_of_it() {
        let r = Revocation::Identity(id("spiffe://a.test/pe/x"));
        assert!(r.covers(&id("spiffe://a.test/pe/x"), &serial("01")));
        assert!(!r.covers(&id("spiffe://a.test/pe/y"), &serial("01")));
        let r = Revocation::TrustDomain(domain("a.test"));
        assert!(r.covers_identity(&id("spiffe://a.test/pe/y")));
        assert!(!r.covers_identity(&id("spiffe://b.test/pe/y")));
    }

    #[test]
    fn display_and_kind_name_what_is_revoked() {
        let r = Revocation::Serial {
            domain: domain("a.test"),
            serial: serial("0a"),
        };
        assert_eq!(r.to_string(), "serial 0a of a.test");
        assert_eq!(r.kind(), "serial");
        assert_eq!(r.trust_domain(), domain("a.test"));
        let r = Revocation::Identity(id("spiffe://a.test/pe/x"));
        assert_eq!(r.to_string(), "identity spiffe://a.test/pe/x");
        assert_eq!(r.kind(), "spiffe_id");
        assert_eq!(r.trust_domain(), domain("a.test"));
        let r = Revocation::TrustDomain(domain("b.test"));
        assert_eq!(r.to_string(), "trust domain b.test");
        assert_eq!(r.kind(), "trust_domain");
    }
}
