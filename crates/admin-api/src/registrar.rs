//! What the admin API sees of the running registrar (ARCHITECTURE.md §2: `enrp` serves the
//! API and implements this trait; the API never depends on `enrp`).
//!
//! Everything the API changes in SQLite it applies to the running registrar through this
//! trait: to its TLS layer (revocations, trust domains, CRLs: the next handshake sees
//! them: [`TlsLayer`]) and to what only the registrar holds (the live handlespace,
//! its connections and its counters). `enrpd` implements it with its control plane, which
//! applies a reload (SIGHUP) by the same code. The API reads the trust store itself.

use std::future::Future;
use std::pin::Pin;

use identity::Revocation;
use identity::{Grant, SpiffeId, TrustDomain};
use rustls_pki_types::CertificateRevocationListDer;
use serde::Serialize;
use trust::DomainBundle;

/// The registrar's TLS layer, as the admin API changes it: what the next handshake
/// accepts. Applied inside the API's store transaction, before it commits.
pub trait TlsLayer {
    /// The TLS half of a revocation, applied before the store commits it (should the
    /// commit fail, the registrar refuses a little more than the store says until a
    /// restart, which errs on the safe side): new handshakes of `revoked` fail, and a
    /// revoked trust domain is no longer trusted. A kind the TLS layer does not know is
    /// left to [`Registrar::revoke`].
    fn deny(&self, revoked: &Revocation) -> Result<(), trust::Error>;

    /// A federated trust domain is trusted from the next handshake.
    fn add_domain(&self, bundle: DomainBundle) -> Result<(), trust::Error>;

    /// A trust domain is no longer trusted from the next handshake (one that was not is
    /// no error); what it has live goes with [`Registrar::domain_removed`].
    fn remove_domain(&self, domain: &TrustDomain) -> Result<(), trust::Error>;

    /// A trust domain's CRLs are replaced: new handshakes of the certificates they list
    /// fail at once; their PEs go with [`Registrar::revoke`].
    fn set_crls(
        &self,
        domain: &TrustDomain,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), trust::Error>;
}

/// The live registrar, as the admin API drives it.
pub trait Registrar: TlsLayer + Send + Sync + 'static {
    /// The pools of `namespace` that have PEs, by pool handle.
    fn pools(&self, namespace: &str) -> impl Future<Output = Vec<PoolView>> + Send;

    /// One pool of `namespace` (`None`: no PE is registered under that handle).
    fn pool(&self, namespace: &str, handle: &[u8])
    -> impl Future<Output = Option<PoolView>> + Send;

    /// Deregisters every PE in `scope` and closes nothing; each removal is audited by the
    /// registrar with `actor` as its cause. Returns how many PEs were removed.
    fn remove(&self, scope: Scope, actor: Actor) -> impl Future<Output = usize> + Send;

    /// An operator drains one PE until `deadline_ms` (unix ms), or lifts its drain
    /// (`None`): while draining no registrar returns it in resolutions, and at the
    /// deadline its home registrar deregisters it (`PUT|DELETE …/drain`).
    fn drain(
        &self,
        pe: PeRef,
        deadline_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), DrainError>> + Send;

    /// The grants changed: the registrar uses `grants` from now on and removes the PEs
    /// whose registration they no longer allow.
    fn set_grants(&self, grants: Vec<Grant>) -> impl Future<Output = ()> + Send;

    /// The default-namespace rules changed: requests without a namespace parameter go
    /// where `rules` say from now on (PEs already registered stay where they are).
    fn set_default_namespaces(
        &self,
        rules: Vec<identity::DefaultNamespace>,
    ) -> impl Future<Output = ()> + Send;

    /// `revoked` was revoked (and denied with [`TlsLayer::deny`], so it cannot handshake
    /// again): its live connections close and its PEs are removed.
    fn revoke(&self, revoked: Revocation) -> impl Future<Output = ()> + Send;

    /// A federated trust domain was removed (already gone from the trust store): its
    /// connections close and its PEs are removed, but nothing is remembered, so that the
    /// domain can be added again.
    fn domain_removed(&self, domain: &TrustDomain) -> impl Future<Output = ()> + Send;

    /// A pool's declaration changed (`None`: withdrawn): from now on new registrations
    /// must use its policy and fit its most PEs. PEs already registered stay.
    fn declare_pool(&self, declaration: PoolDeclaration) -> impl Future<Output = ()> + Send;

    /// The ENRP peers (empty until peering lands, issue 7).
    fn peers(&self) -> impl Future<Output = Vec<PeerView>> + Send;

    /// Counters for `/metrics`.
    fn metrics(&self) -> impl Future<Output = Metrics> + Send;

    /// Whether the registrar serves (false while it starts, stops, or waits for its
    /// mentor): `/readyz`.
    fn ready(&self) -> bool;

    /// Whether its data directory is below the free-space watermark: writes are then
    /// refused with 507. Default: never.
    fn low_disk(&self) -> bool {
        false
    }

    /// Whether its store does not answer (PostgreSQL down): writes are then refused with
    /// 503. Default: never.
    fn store_down(&self) -> bool {
        false
    }

    /// Its feed of handlespace changes (`GET /v1/watch/pools`). Default: none (the route
    /// then answers 503).
    fn changes(&self) -> Option<crate::PoolChanges> {
        None
    }
}

/// Who made an admin change, for the registrar's audit records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A bearer token, by its public id.
    Token(String),
    /// An admin client certificate.
    Certificate(SpiffeId),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(id) => write!(f, "token:{id}"),
            Self::Certificate(id) => write!(f, "{id}"),
        }
    }
}

/// Which PEs an admin removal covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every PE of a namespace.
    Namespace(String),
    /// Every PE of one pool.
    Pool {
        /// The namespace.
        namespace: String,
        /// The pool handle.
        handle: Vec<u8>,
    },
    /// One PE.
    Pe {
        /// The namespace.
        namespace: String,
        /// The pool handle.
        handle: Vec<u8>,
        /// The PE ID.
        pe_id: u32,
    },
}

/// One PE, as an operator names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeRef {
    /// The namespace.
    pub namespace: String,
    /// The pool handle.
    pub handle: Vec<u8>,
    /// The PE ID.
    pub pe_id: u32,
}

/// Why the registrar refused an operator's drain (or its lifting); nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// No such PE here (for a lifting: no drain of it here).
    #[error("no such PE")]
    NoSuchPe,
    /// The PE is another registrar's (this Server ID, in hex): only its home drains it.
    #[error("the PE's home is registrar {0}: drain it there")]
    NotHome(String),
    /// The registrar remembers its most drains already.
    #[error("the registrar remembers its most drains already")]
    TooMany,
}

/// What an operator declared for a pool, as the registrar enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDeclaration {
    /// The namespace.
    pub namespace: String,
    /// The pool handle.
    pub handle: Vec<u8>,
    /// `None`: the declaration was withdrawn. Else the policy type (RFC 5356 number) and
    /// the most PEs, each optional.
    pub limits: Option<(Option<u32>, Option<u32>)>,
}

/// A pool with its live PEs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PoolView {
    /// The namespace.
    pub namespace: String,
    /// The pool handle as text when it is UTF-8 without control characters, else
    /// `hex:` and the bytes in hex.
    pub handle: String,
    /// The pool policy (RFC 5356 name, e.g. `round-robin`), `None` when the pool is empty.
    pub policy: Option<String>,
    /// The PEs, by PE ID.
    pub pool_elements: Vec<PeView>,
}

/// A live PE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PeView {
    /// The PE ID, in hex as in the spec (`0x1a2b3c4d`).
    pub pe_id: String,
    /// The SPIFFE ID that registered it (project parameter 0x8101).
    pub registrant: Option<String>,
    /// The Server ID of its home registrar, in hex.
    pub home_registrar: String,
    /// Its user transport: protocol and addresses (`tcp 192.0.2.1:7`).
    pub transport: String,
    /// The policy parameters it registered with (e.g. `weight=2`), empty for none.
    pub policy: String,
    /// Registration life in milliseconds.
    pub registration_life_ms: u32,
    /// Its labels (project parameter 0x8102, docs/PROTOCOL-EXTENSIONS.md), key → value;
    /// empty when it registered none.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The smoothed round trip, in microseconds, of this registrar's keep-alives to the PE
    /// (ASAP_ENDPOINT_KEEP_ALIVE → ACK, docs/PROTOCOL-EXTENSIONS.md §3): what Least Used
    /// with Distance Penalty selects by. `null` for a PE this registrar is not home of
    /// (a peer's), before the first keep-alive is answered, and in watch events.
    pub rtt_us: Option<u64>,
    /// When the PE first registered at this registrar, its home (re-registrations keep
    /// it), unix ms: its age. `null` for a peer's PE (this registrar did not see it
    /// register) and for one taken over that has not registered here yet.
    pub registered_ms: Option<u64>,
    /// Whether an operator drains it (`PUT …/drain`): no registrar returns it in
    /// resolutions, and its home deregisters it at `drain_deadline_ms`.
    pub draining: bool,
    /// When its home deregisters it, unix ms, while it drains.
    pub drain_deadline_ms: Option<u64>,
    /// The identity of the server pool users reach, when it terminates their TLS itself
    /// (`rsp pe --advertise`, 0x8105): what PUs insist on instead of the registrant.
    pub serving_identity: Option<String>,
    /// The health check it runs, as it registered it (PE Status 0x8104); absent when it
    /// runs none. A PE whose check fails deregisters, so a listed one passes.
    pub check: Option<CheckView>,
}

/// A PE's health check in the admin API (`{"kind": "http", "state": "passing"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CheckView {
    /// `tcp`, `http`, `exec`, or a number for a kind this registrar does not know.
    pub kind: String,
    /// Always `passing`: a PE whose check fails is not registered (it deregisters).
    pub state: String,
}

/// An ENRP peer's status (`GET /v1/peers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PeerView {
    /// Its SPIFFE ID.
    pub identity: String,
    /// Its Server ID, in hex.
    pub server_id: String,
    /// `active`, `connecting`, `dead`, ...
    pub state: String,
    /// When it was last heard, unix ms.
    pub last_heard_ms: Option<u64>,
    /// Whether its handlespace checksum matches ours.
    pub checksum_match: Option<bool>,
    /// The last other identity that claimed its Server ID and was refused: a Server ID
    /// stays bound to the first identity that proved it (docs/ENRP-TRUST.md §4).
    pub conflict: Option<String>,
}

/// Registrar counters for `/metrics` (monotonic unless said otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Open ASAP connections (a gauge).
    pub connections: u64,
    /// PEs in the handlespace (a gauge).
    pub pool_elements: u64,
    /// Registrations, resolutions and refusals per namespace, at most a bounded number
    /// of namespaces and the folded `(other)` and `(none)` (the registrar bounds them).
    pub by_namespace: Vec<NamespaceMetrics>,
    /// Failed TLS handshakes by reason (`untrusted`, `revoked`, `timeout`, ...).
    pub handshake_failures: Vec<(String, u64)>,
    /// Audit records queued and not yet committed (a gauge).
    pub audit_queue: u64,
    /// Refusals counted into a summary audit record instead of one record each.
    pub refusals_aggregated: u64,
    /// The data directory is below its free-space watermark (a gauge).
    pub low_disk: bool,
    /// Audit batches whose commit failed.
    pub audit_failed_commits: u64,
    /// Audit records dropped because the writer could not keep up.
    pub audit_dropped: u64,
    /// The time from each audit record's hand-over to the writer until its commit.
    pub audit_commit: store::audit::LatencyHistogram,
}

/// One namespace's counters in [`Metrics`] (monotonic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMetrics {
    /// The namespace, or `(other)` for those beyond the registrar's limit, or `(none)`
    /// for refusals that named no namespace.
    pub namespace: String,
    /// Registrations accepted (new PEs and re-registrations).
    pub registrations: u64,
    /// Handle resolutions answered.
    pub resolutions: u64,
    /// Refused operations by spec §4.7 cause code (`None`: a code beyond those counted
    /// one by one, exported as `(other)`).
    pub rejections: Vec<(Option<u16>, u64)>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Registrar`] with boxed futures, so that the router holds one `Arc<dyn ..>` and its
/// handlers are not generic (utoipa-axum's `routes!` takes plain handler paths).
pub(crate) trait DynRegistrar: TlsLayer + Send + Sync + 'static {
    fn pools<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<PoolView>>;
    fn pool<'a>(&'a self, namespace: &'a str, handle: &'a [u8]) -> BoxFuture<'a, Option<PoolView>>;
    fn remove(&self, scope: Scope, actor: Actor) -> BoxFuture<'_, usize>;
    fn drain(&self, pe: PeRef, deadline_ms: Option<u64>) -> BoxFuture<'_, Result<(), DrainError>>;
    fn set_grants(&self, grants: Vec<Grant>) -> BoxFuture<'_, ()>;
    fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) -> BoxFuture<'_, ()>;
    fn revoke(&self, revoked: Revocation) -> BoxFuture<'_, ()>;
    fn domain_removed<'a>(&'a self, domain: &'a TrustDomain) -> BoxFuture<'a, ()>;
    fn declare_pool(&self, declaration: PoolDeclaration) -> BoxFuture<'_, ()>;
    fn peers(&self) -> BoxFuture<'_, Vec<PeerView>>;
    fn metrics(&self) -> BoxFuture<'_, Metrics>;
    fn ready(&self) -> bool;
    fn low_disk(&self) -> bool;
    fn store_down(&self) -> bool;
    fn changes(&self) -> Option<crate::PoolChanges>;
}

impl<R: Registrar> DynRegistrar for R {
    fn pools<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<PoolView>> {
        Box::pin(Registrar::pools(self, namespace))
    }
    fn pool<'a>(&'a self, namespace: &'a str, handle: &'a [u8]) -> BoxFuture<'a, Option<PoolView>> {
        Box::pin(Registrar::pool(self, namespace, handle))
    }
    fn remove(&self, scope: Scope, actor: Actor) -> BoxFuture<'_, usize> {
        Box::pin(Registrar::remove(self, scope, actor))
    }
    fn drain(&self, pe: PeRef, deadline_ms: Option<u64>) -> BoxFuture<'_, Result<(), DrainError>> {
        Box::pin(Registrar::drain(self, pe, deadline_ms))
    }
    fn set_grants(&self, grants: Vec<Grant>) -> BoxFuture<'_, ()> {
        Box::pin(Registrar::set_grants(self, grants))
    }
    fn set_default_namespaces(&self, rules: Vec<identity::DefaultNamespace>) -> BoxFuture<'_, ()> {
        Box::pin(Registrar::set_default_namespaces(self, rules))
    }
    fn revoke(&self, revoked: Revocation) -> BoxFuture<'_, ()> {
        Box::pin(Registrar::revoke(self, revoked))
    }
    fn domain_removed<'a>(&'a self, domain: &'a TrustDomain) -> BoxFuture<'a, ()> {
        Box::pin(Registrar::domain_removed(self, domain))
    }
    fn declare_pool(&self, declaration: PoolDeclaration) -> BoxFuture<'_, ()> {
        Box::pin(Registrar::declare_pool(self, declaration))
    }
    fn peers(&self) -> BoxFuture<'_, Vec<PeerView>> {
        Box::pin(Registrar::peers(self))
    }
    fn metrics(&self) -> BoxFuture<'_, Metrics> {
        Box::pin(Registrar::metrics(self))
    }
    fn ready(&self) -> bool {
        Registrar::ready(self)
    }
    fn low_disk(&self) -> bool {
        Registrar::low_disk(self)
    }
    fn store_down(&self) -> bool {
        Registrar::store_down(self)
    }
    fn changes(&self) -> Option<crate::PoolChanges> {
        Registrar::changes(self)
    }
}
