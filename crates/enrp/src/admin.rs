//! The admin API's view of this registrar: [`admin_api::Registrar`] for the
//! [`ControlPlane`], which applies its changes (grants, revocations, …) as it applies a
//! reload's; its queries go to the daemon's [`crate::daemon::Control`] handle. Only
//! conversions here; the work is in the core and the daemon.

use ::asap::policy::LeastUsedDistance;
use ::asap::wire::PeEntry;
use ::asap::wire::param::{CheckKind, Namespace, PeId, Policy, PolicyType, PoolHandle, Transport};
use admin_api::{
    Actor, CheckView, DrainError, Metrics, PeRef, PeView, PeerView, PoolDeclaration, PoolView,
    Registrar, Scope, TlsLayer, handle_text,
};
use identity::Revocation;
use identity::{Grant, TrustDomain};
use tokio_rustls::rustls::pki_types::CertificateRevocationListDer;
use trust::DomainBundle;

use crate::control_plane::ControlPlane;
use crate::daemon::PoolSnapshot;
use enrp_core::registrar::{self, Declared};

impl TlsLayer for ControlPlane {
    fn deny(&self, revoked: &Revocation) -> Result<(), trust::Error> {
        Self::deny(self, revoked)
    }

    fn add_domain(&self, bundle: DomainBundle) -> Result<(), trust::Error> {
        Self::add_domain(self, bundle)
    }

    fn remove_domain(&self, domain: &TrustDomain) -> Result<(), trust::Error> {
        Self::remove_domain(self, domain)
    }

    fn set_crls(
        &self,
        domain: &TrustDomain,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), trust::Error> {
        Self::set_crls(self, domain, crls)
    }
}

impl Registrar for ControlPlane {
    async fn pools(&self, namespace: &str) -> Vec<PoolView> {
        let Some(ns) = Namespace::new(namespace) else {
            return Vec::new();
        };
        self.control()
            .pools(ns)
            .await
            .iter()
            .map(pool_view)
            .collect()
    }

    async fn pool(&self, namespace: &str, handle: &[u8]) -> Option<PoolView> {
        let ns = Namespace::new(namespace)?;
        let handle = PoolHandle::new(handle)?;
        self.control()
            .pool(ns, handle)
            .await
            .as_ref()
            .map(pool_view)
    }

    async fn remove(&self, scope: Scope, actor: Actor) -> usize {
        let scope = match scope {
            Scope::Namespace(ns) => Namespace::new(&ns).map(registrar::Scope::Namespace),
            Scope::Pool { namespace, handle } => Namespace::new(&namespace)
                .zip(PoolHandle::new(handle))
                .map(|(ns, h)| registrar::Scope::Pool(ns, h)),
            Scope::Pe {
                namespace,
                handle,
                pe_id,
            } => Namespace::new(&namespace)
                .zip(PoolHandle::new(handle))
                .zip(PeId::new(pe_id))
                .map(|((ns, h), id)| registrar::Scope::Pe((ns, h, id))),
        };
        // A name the handlespace cannot hold has no PEs to remove.
        match scope {
            Some(scope) => self.control().remove(scope, actor.to_string()).await,
            None => 0,
        }
    }

    async fn drain(&self, pe: PeRef, deadline_ms: Option<u64>) -> Result<(), DrainError> {
        // A name the handlespace cannot hold has no PE to drain.
        let key = Namespace::new(&pe.namespace)
            .zip(PoolHandle::new(pe.handle))
            .zip(PeId::new(pe.pe_id))
            .map(|((ns, h), id)| (ns, h, id))
            .ok_or(DrainError::NoSuchPe)?;
        self.control()
            .drain(key, deadline_ms)
            .await
            .map_err(|e| match e {
                registrar::DrainRefusal::NotHome(home) => {
                    DrainError::NotHome(format!("{home:#010x}"))
                }
                registrar::DrainRefusal::TooMany => DrainError::TooMany,
                _ => DrainError::NoSuchPe,
            })
    }

    async fn set_grants(&self, grants: Vec<Grant>) {
        Self::set_grants(self, grants).await;
    }

    async fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) {
        Self::set_default_namespaces(self, rules).await;
    }

    async fn revoke(&self, revoked: Revocation) {
        Self::revoke(self, revoked).await;
    }

    async fn domain_removed(&self, domain: &TrustDomain) {
        Self::domain_removed(self, domain).await;
    }

    async fn declare_pool(&self, d: PoolDeclaration) {
        let (Some(ns), Some(handle)) = (Namespace::new(&d.namespace), PoolHandle::new(d.handle))
        else {
            return; // A name the handlespace cannot hold has no registrations to limit.
        };
        let declared = d.limits.map(|(policy, max_pes)| Declared {
            policy: policy.map(PolicyType),
            max_pes,
        });
        self.control().declare_pool(ns, handle, declared).await;
    }

    async fn peers(&self) -> Vec<PeerView> {
        self.control()
            .peers()
            .await
            .into_iter()
            .map(|p| PeerView {
                identity: p.identity,
                server_id: p.server_id.to_string(),
                state: p.state.to_owned(),
                last_heard_ms: p.last_heard_ms,
                checksum_match: p.checksum_match,
                conflict: p.conflict,
            })
            .collect()
    }

    async fn metrics(&self) -> Metrics {
        let s = self.control().snapshot().await;
        Metrics {
            connections: s.connections,
            pool_elements: s.pool_elements,
            by_namespace: s
                .by_namespace
                .into_iter()
                .map(|c| admin_api::NamespaceMetrics {
                    namespace: c.namespace,
                    registrations: c.registrations,
                    resolutions: c.resolutions,
                    rejections: c.refusals,
                })
                .collect(),
            handshake_failures: s
                .handshake_failures
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            audit_queue: s.audit_queue,
            refusals_aggregated: s.refusals_aggregated,
            low_disk: s.low_disk,
            audit_failed_commits: s.audit_failed_commits,
            audit_dropped: s.audit_dropped,
            audit_commit: s.audit_commit,
        }
    }

    fn ready(&self) -> bool {
        self.control().ready()
    }

    fn low_disk(&self) -> bool {
        self.control().low_disk()
    }

    fn store_down(&self) -> bool {
        self.control().store_down()
    }

    fn changes(&self) -> Option<admin_api::PoolChanges> {
        Some(self.control().changes())
    }
}

fn pool_view(p: &PoolSnapshot) -> PoolView {
    PoolView {
        namespace: p.namespace.as_str().to_owned(),
        handle: handle_text(p.handle.as_bytes()),
        policy: p
            .policy
            .as_ref()
            .map(|pol| policy_type_text(pol.policy_type())),
        pool_elements: p
            .pool_elements
            .iter()
            .zip(p.round_trips.iter().zip(&p.registered_ms))
            .map(|(e, (rtt, registered))| pe_view(e, *rtt, *registered))
            .collect(),
    }
}

pub(crate) fn pe_view(
    e: &PeEntry,
    rtt: Option<std::time::Duration>,
    registered_ms: Option<u64>,
) -> PeView {
    let pe = &e.pool_element;
    PeView {
        pe_id: pe.pe_id.to_string(),
        registrant: e.registrant.as_ref().map(|r| r.as_str().to_owned()),
        home_registrar: format!("{:#010x}", pe.home_server_id),
        transport: transport_text(&pe.user_transport),
        policy: policy_text(&pe.policy),
        // Accepted PEs have a positive life (PoolElement::REGISTRATION_LIFE_MS).
        registration_life_ms: u32::try_from(pe.registration_life).unwrap_or(0),
        labels: pe
            .labels
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        rtt_us: rtt.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        registered_ms,
        draining: pe.status.draining(),
        drain_deadline_ms: pe.status.drain_deadline_ms,
        serving_identity: pe.serving_identity.as_ref().map(|s| s.as_str().to_owned()),
        check: (pe.status.check != CheckKind::NONE).then(|| CheckView {
            kind: pe
                .status
                .check
                .name()
                .map_or_else(|| pe.status.check.0.to_string(), str::to_owned),
            state: "passing".to_owned(),
        }),
    }
}

/// The short name of an RFC 5356 type (`rr`); a private type in hex (`0xff000001`).
fn policy_type_text(t: PolicyType) -> String {
    if t == LeastUsedDistance::POLICY_TYPE {
        return LeastUsedDistance::NAME.to_owned();
    }
    t.name()
        .map_or_else(|| format!("{:#010x}", t.0), str::to_owned)
}

/// `tcp 192.0.2.1:7`, `sctp [10.0.0.1, 10.0.0.2]:9`.
fn transport_text(t: &Transport) -> String {
    let kind = match t {
        Transport::Dccp { .. } => "dccp",
        Transport::Sctp { .. } => "sctp",
        Transport::Tcp { .. } => "tcp",
        Transport::Udp { .. } => "udp",
        Transport::UdpLite { .. } => "udplite",
    };
    let addrs: Vec<String> = t.addresses().iter().map(|a| a.ip().to_string()).collect();
    match addrs.as_slice() {
        [one] if one.contains(':') => format!("{kind} [{one}]:{}", t.port()),
        [one] => format!("{kind} {one}:{}", t.port()),
        many => format!("{kind} [{}]:{}", many.join(", "), t.port()),
    }
}

/// The policy in the `rsp pe --policy` form, loads in percent: `wrr:2`, `lud:40:5`; a
/// private type with its values in hex: `0xff000001:0a0b`.
fn policy_text(p: &Policy) -> String {
    let pct = |l: u32| (u64::from(l) * 100 + u64::from(u32::MAX) / 2) / u64::from(u32::MAX);
    let name = policy_type_text(p.policy_type());
    if let Some(v) = LeastUsedDistance::values(p) {
        return format!("{name}:{}:{}", pct(v.load), pct(v.penalty));
    }
    match *p {
        Policy::Private { values, .. } if values.as_bytes().is_empty() => name,
        Policy::Private { values, .. } => format!("{name}:{}", hex::encode(values.as_bytes())),
        Policy::RoundRobin | Policy::Random => name.to_owned(),
        Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
            format!("{name}:{weight}")
        }
        Policy::Priority { priority } => format!("{name}:{priority}"),
        Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => {
            format!("{name}:{}", pct(load))
        }
        Policy::LeastUsedDegradation { load, degradation }
        | Policy::PriorityLeastUsed { load, degradation } => {
            format!("{name}:{}:{}", pct(load), pct(degradation))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_print_in_the_command_line_form() {
        assert_eq!(
            policy_text(&LeastUsedDistance::policy(::asap::policy::DistanceValues {
                load: u32::MAX / 4,
                penalty: u32::MAX / 100,
            })),
            "least-used-distance:25:1"
        );
        assert_eq!(
            policy_type_text(LeastUsedDistance::POLICY_TYPE),
            "least-used-distance"
        );
        assert_eq!(policy_text(&Policy::RoundRobin), "rr");
        assert_eq!(
            policy_text(&Policy::WeightedRoundRobin { weight: 2 }),
            "wrr:2"
        );
        let forty = (u64::from(u32::MAX) * 40 / 100) as u32;
        assert_eq!(
            policy_text(&Policy::LeastUsedDegradation {
                load: forty,
                degradation: 0
            }),
            "lud:40:0"
        );
    }
}
