//! Which identities a PE, PU, gateway or registrar accepts as its registrar (spec §11.1,
//! threats T-6/T-7): a pure decision on a SPIFFE ID that `trust`'s server certificate
//! verifier applies after the chain checks.

use std::fmt;
use std::sync::Arc;

use crate::{IdentityPattern, SpiffeId};

/// How [`RegistrarIds::default`] is described in errors and docs.
pub const DEFAULT_REGISTRAR_ID: &str = "spiffe://<trusted domain>/registrar/*";

/// The identities a PE, PU, gateway or registrar accepts as a registrar when it dials one
/// (spec §11.1, threats T-6/T-7): by default `spiffe://D/registrar/NAME` of any trusted
/// domain D (the paths `rsp-pki issue registrar` gives), or else only IDs matching one of
/// the configured patterns. A PE certificate posing as a registrar is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrarIds(Option<Arc<[IdentityPattern]>>);

impl RegistrarIds {
    /// Only IDs matching one of `patterns`; none means the default.
    pub fn patterns(patterns: Vec<IdentityPattern>) -> Self {
        if patterns.is_empty() {
            return Self(None);
        }
        Self(Some(patterns.into()))
    }

    /// Whether `id` (already verified to chain to a trusted domain) is a registrar.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match &self.0 {
            Some(patterns) => patterns.iter().any(|p| p.matches(id)),
            None => {
                let mut segments = id.segments();
                segments.next() == Some("registrar")
                    && segments.next().is_some()
                    && segments.next().is_none()
            }
        }
    }
}

impl fmt::Display for RegistrarIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str(DEFAULT_REGISTRAR_ID),
            Some(patterns) => {
                for (i, p) in patterns.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    f.write_str(p.as_str())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("SPIFFE ID")
    }

    #[test]
    fn only_registrar_identities_are_registrars() {
        // Spec §11.1: a PE/PU authenticates its registrar; the default is the role path
        // `rsp-pki issue registrar NAME` gives, in any trusted domain.
        let default = RegistrarIds::default();
        assert!(default.matches(&id("spiffe://acme.test/registrar/enrp-1")));
        assert!(default.matches(&id("spiffe://partner.test/registrar/r")));
        assert!(!default.matches(&id("spiffe://acme.test/registrar")));
        assert!(!default.matches(&id("spiffe://acme.test/registrar/a/b")));
        assert!(!default.matches(&id("spiffe://acme.test/pe/echo-1")));
        assert!(!default.matches(&id("spiffe://acme.test/pe/registrar/x")));
        assert_eq!(default.to_string(), DEFAULT_REGISTRAR_ID);

        let pinned = RegistrarIds::patterns(vec![
            IdentityPattern::parse("spiffe://acme.test/registrar/enrp-1").expect("pattern"),
            IdentityPattern::parse("spiffe://acme.test/ops/pr-*").expect("pattern"),
        ]);
        assert!(pinned.matches(&id("spiffe://acme.test/registrar/enrp-1")));
        assert!(pinned.matches(&id("spiffe://acme.test/ops/pr-7")));
        assert!(!pinned.matches(&id("spiffe://acme.test/registrar/enrp-2")));
        assert_eq!(
            pinned.to_string(),
            "spiffe://acme.test/registrar/enrp-1 or spiffe://acme.test/ops/pr-*"
        );
        assert_eq!(RegistrarIds::patterns(Vec::new()), default);
    }
}
