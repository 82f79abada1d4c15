//! A PE's side of a pool user's connection (issue 21): the TLS handshake, then whether the
//! PU's identity may use this PE's pool ([`AllowedPus`]), then its registration with the
//! trust store so that a revocation or its certificate's notAfter ends the session.
//!
//! The handshake already proved that the PU holds a certificate of a trusted domain; what
//! it did not decide is whether that identity is a pool user at all. By default a PE takes
//! the identities the registrar's default grants let resolve a pool (`enrp::setup`'s
//! `default_grants`): role `pu/*` or `gateway/*`, in any trust domain the PE trusts (a
//! federated domain's PUs included). A PE or registrar certificate is refused. `rsp pe
//! --allow-pu PATTERN` narrows it to those patterns.

use std::io;
use std::time::Duration;

use identity::{IdentityPattern, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use trust::{LiveConnection, Peer, Protocol, TrustStore};

/// The roles a PE accepts by default (`spiffe://<trusted domain>/ROLE/NAME`): those the
/// registrar's default grants let resolve and report.
pub const DEFAULT_PU_ROLES: [&str; 2] = ["pu", "gateway"];

/// Limit: how long a PU's TLS handshake may take before the PE drops the connection (a
/// silent client must not hold a session slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which identities may open a session with this PE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedPus {
    /// Empty: the default, [`DEFAULT_PU_ROLES`] of the PU's own (trusted) domain.
    patterns: Vec<IdentityPattern>,
}

impl AllowedPus {
    /// Only identities matching one of `patterns`; none means the default.
    pub fn patterns(patterns: Vec<IdentityPattern>) -> Self {
        Self { patterns }
    }

    /// Whether `id`, verified by the handshake to chain to a trusted domain, may use the
    /// pool. The default is matched with the same [`IdentityPattern`]s a grant would hold
    /// (`spiffe://D/pu/*`, `spiffe://D/gateway/*`), built for the PU's domain D: the
    /// handshake decided that D is trusted, the pattern decides the role.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        if !self.patterns.is_empty() {
            return self.patterns.iter().any(|p| p.matches(id));
        }
        DEFAULT_PU_ROLES.iter().any(|role| {
            IdentityPattern::parse(&format!("spiffe://{}/{role}/*", id.trust_domain_str()))
                .is_ok_and(|p| p.matches(id))
        })
    }
}

impl std::fmt::Display for AllowedPus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str(
                "spiffe://<trusted domain>/pu/* or spiffe://<trusted domain>/gateway/*",
            );
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            f.write_str(p.as_str())?;
        }
        Ok(())
    }
}

/// Why a PU's connection was not admitted. The connection is closed in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// The TLS handshake failed or took longer than [`HANDSHAKE_TIMEOUT`] (an
    /// untrusted, revoked or expired certificate, or none).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// A valid identity that may not use this pool.
    #[error("{id} may not use this pool (allowed: {allowed})")]
    NotAllowed {
        /// The identity presented.
        id: SpiffeId,
        /// Who is allowed, as configured.
        allowed: String,
    },
    /// The certificate was revoked between the handshake and now, or is unreadable.
    #[error("{0}")]
    Untrusted(String),
}

/// A PU admitted to a session: its TLS stream, its identity, and its registration with
/// the trust store (wait on [`LiveConnection::closed`] to end the session on revocation).
pub struct Admitted<S> {
    /// The TLS session.
    pub tls: TlsStream<S>,
    /// The PU's identity.
    pub peer: Peer,
    /// Closed when the PU's certificate is revoked or expires.
    pub live: LiveConnection,
}

/// Accepts a PU's TLS connection on `stream` and admits it if `allowed` allows its
/// identity. On a refusal the PE closes the TLS session at once (close_notify), so the
/// PU's session fails rather than hangs.
pub async fn accept_pu<S: AsyncRead + AsyncWrite + Unpin>(
    trust: &TrustStore,
    allowed: &AllowedPus,
    stream: S,
) -> Result<Admitted<S>, AdmitError> {
    let acceptor = TlsAcceptor::from(trust.server_config(Protocol::Asap));
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| AdmitError::Handshake(io::ErrorKind::TimedOut.into()))?
        .map_err(AdmitError::Handshake)?;
    let peer = Peer::from_tls(tls.get_ref().1).map_err(|e| AdmitError::Untrusted(e.to_string()))?;
    if !allowed.allows(peer.id()) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return Err(AdmitError::NotAllowed {
            id: peer.id().clone(),
            allowed: allowed.to_string(),
        });
    }
    let live = trust
        .register_connection(&peer)
        .map_err(|e| AdmitError::Untrusted(e.to_string()))?;
    Ok(Admitted { tls, peer, live })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("SPIFFE ID")
    }

    #[test]
    fn by_default_pool_users_and_gateways_of_any_trusted_domain_and_no_other_role() {
        let d = AllowedPus::default();
        assert!(d.allows(&id("spiffe://acme.test/pu/client-1")));
        assert!(d.allows(&id("spiffe://acme.test/gateway/gw-1")));
        assert!(d.allows(&id("spiffe://partner.test/pu/client-9")));
        for other in [
            "spiffe://acme.test/pe/echo-1",
            "spiffe://acme.test/registrar/enrp-1",
            "spiffe://acme.test/admin/ops",
            "spiffe://acme.test/pu",
            "spiffe://acme.test/pu/a/b",
            "spiffe://acme.test",
        ] {
            assert!(!d.allows(&id(other)), "{other}");
        }
    }

    #[test]
    fn allow_pu_patterns_replace_the_default() {
        let only = AllowedPus::patterns(vec![
            "spiffe://acme.test/pu/client-*".parse().expect("pattern"),
        ]);
        assert!(only.allows(&id("spiffe://acme.test/pu/client-1")));
        assert!(!only.allows(&id("spiffe://acme.test/pu/other")));
        assert!(!only.allows(&id("spiffe://acme.test/gateway/gw-1")));
        assert!(!only.allows(&id("spiffe://partner.test/pu/client-1")));
        assert_eq!(only.to_string(), "spiffe://acme.test/pu/client-*");
    }
}
