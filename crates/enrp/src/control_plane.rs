//! The control plane (issue 24): one service that applies grants, default namespaces,
//! revocations, trust-domain removals, CRLs and the registrar's own certificate to a
//! running registrar — to its core (PEs removed, requests refused) and to its TLS layer
//! (handshakes refused, live connections closed) — for every caller: the admin API (it
//! sees the registrar through [`admin_api::Registrar`], implemented for the plane in
//! [`crate::admin`]) and a reload
//! of the data directory ([`ControlPlane::apply_reload`], what SIGHUP does).
//!
//! The admin API calls the TLS half ([`ControlPlane::deny`], [`ControlPlane::add_domain`],
//! [`ControlPlane::remove_domain`], [`ControlPlane::set_crls`]) inside its store
//! transaction (a revocation refuses handshakes before it commits, which errs on the safe
//! side), and the core half ([`ControlPlane::revoke`], [`ControlPlane::domain_removed`])
//! once it has committed; a reload calls the same methods.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use identity::{Grant, Serial, TrustDomain};
use tokio_rustls::rustls::pki_types::CertificateRevocationListDer;
use trust::{DomainBundle, LocalIdentity, TrustStore};

use crate::daemon::{Control, now_ms};
use crate::setup::Reloaded;
use identity::Revocation;

/// Applies control-plane changes to one running registrar (see the module doc).
pub struct ControlPlane {
    trust: Arc<TrustStore>,
    control: Control,
    /// The local CRL's serials already applied: a reload only acts on what the CRL newly
    /// lists.
    applied: Mutex<HashSet<Serial>>,
}

impl ControlPlane {
    /// The plane of the registrar that `control` drives and `trust` secures, whose local
    /// CRL listed `applied` at start (enforced from the start by the data directory).
    pub fn new(
        trust: Arc<TrustStore>,
        control: Control,
        applied: impl IntoIterator<Item = Serial>,
    ) -> Self {
        Self {
            trust,
            control,
            applied: Mutex::new(applied.into_iter().collect()),
        }
    }

    /// The grants now in force.
    pub async fn set_grants(&self, grants: Vec<Grant>) {
        self.control.set_grants(grants).await;
    }

    /// The default-namespace rules now in force.
    pub async fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) {
        self.control.set_default_namespaces(rules).await;
    }

    /// The TLS half of a revocation: new handshakes of `revoked` fail (a revoked trust
    /// domain is no longer trusted). A kind the TLS layer does not know changes nothing
    /// here ([`ControlPlane::revoke`] says so).
    pub fn deny(&self, revoked: &Revocation) -> Result<(), trust::Error> {
        self.trust.revoke(revoked).map(drop)
    }

    /// A federated trust domain, trusted from the next handshake.
    pub fn add_domain(&self, bundle: DomainBundle) -> Result<(), trust::Error> {
        self.trust.add_domain(bundle)
    }

    /// A trust domain no longer trusted from the next handshake (one that was not is no
    /// error); its PEs go with [`ControlPlane::domain_removed`].
    pub fn remove_domain(&self, domain: &TrustDomain) -> Result<(), trust::Error> {
        self.trust.forget_domain(domain).map(drop)
    }

    /// A trust domain's CRLs: new handshakes of what they list fail at once (their PEs go
    /// with [`ControlPlane::revoke`]).
    pub fn set_crls(
        &self,
        domain: &TrustDomain,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), trust::Error> {
        self.trust.set_crls(domain, crls).map(drop)
    }

    /// Enforces a stored revocation in the core: the PEs it covers are removed and its
    /// requests refused (the TLS half is [`ControlPlane::deny`]).
    pub async fn revoke(&self, revocation: Revocation) {
        self.control.revoke(revocation).await;
    }

    /// A trust domain no longer trusted: its PEs go.
    pub async fn domain_removed(&self, domain: &TrustDomain) {
        self.control
            .domain_removed(domain.as_str().to_owned())
            .await;
    }

    /// The local trust domain's CRLs as a reload read them: the core first (it removes
    /// the PEs of the serials newly listed and refuses them), then the TLS layer (new
    /// handshakes fail, live connections close).
    pub async fn apply_local_crls(
        &self,
        serials: Vec<Serial>,
        crls: Option<Vec<CertificateRevocationListDer<'static>>>,
    ) {
        let domain = self.trust.identity().id().trust_domain();
        let new: Vec<Serial> = {
            let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            serials
                .into_iter()
                .filter(|s| applied.insert(s.clone()))
                .collect()
        };
        for serial in new {
            self.revoke(Revocation::Serial {
                domain: domain.clone(),
                serial,
            })
            .await;
        }
        if let Some(crls) = crls
            && let Err(e) = self.set_crls(&domain, crls)
        {
            tracing::error!(error = %e, "the new CRL was refused");
        }
    }

    /// The registrar's renewed certificate and key: served from the next handshake; live
    /// connections keep the one they proved.
    pub fn set_identity(&self, identity: LocalIdentity) {
        let serial = identity.as_peer().serial().to_hex();
        match self.trust.set_identity(
            identity,
            std::time::UNIX_EPOCH + Duration::from_millis(now_ms()),
        ) {
            Ok(()) => tracing::info!(%serial, "presenting certificate"),
            Err(e) => tracing::error!(error = %e, "the certificate was not replaced"),
        }
    }

    /// Applies what a reload of the data directory read ([`crate::setup::reload`]).
    pub async fn apply_reload(&self, r: Reloaded) {
        self.set_identity(r.identity);
        self.set_grants(r.grants).await;
        self.set_default_namespaces(r.default_namespaces).await;
        self.apply_local_crls(r.revoked, r.crls).await;
    }

    /// Whether the TLS layer trusts `domain` now.
    pub fn is_trusted(&self, domain: &TrustDomain) -> bool {
        self.trust.is_trusted(domain)
    }

    /// The trust domains the TLS layer trusts now.
    pub fn trusted_domains(&self) -> Vec<TrustDomain> {
        self.trust.domains()
    }

    /// The daemon's control handle (the admin API's queries).
    pub fn control(&self) -> &Control {
        &self.control
    }
}
