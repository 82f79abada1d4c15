//! The audit vocabulary shared by the registrar core (which says what to record and how
//! soon) and `store::audit` (which chains and stores it): pure values, so that the core
//! need not depend on the store (issue 24 item 4): the core's [`AuditEvent`], the actions
//! and how soon a record must be durable.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use crate::{Namespace, PeId, PoolHandle, Serial, SpiffeId};

/// One audit record as the registrar core produces it, with typed subjects: the driver
/// adds the time (`store::audit::Record::from_event`) and the store the chain. The
/// `store::audit::Record` has the same subjects, of the same types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who asked (`None` when the registrar acted on its own, e.g. a timeout).
    pub actor: Option<(SpiffeId, Serial)>,
    /// The remote address of the request's connection.
    pub remote: Option<SocketAddr>,
    /// The namespace.
    pub namespace: Option<Namespace>,
    /// The pool.
    pub pool_handle: Option<PoolHandle>,
    /// The PE.
    pub pe_id: Option<PeId>,
    /// What.
    pub action: AuditAction,
    /// `None` for success, else the spec §4.7 cause code of the refusal.
    pub outcome: Option<u16>,
    /// A short reason, when there is more to say than the cause.
    pub detail: Option<String>,
}

/// When an audit record must be durable (STYLE.md §2, "audit before ack").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Committed before the reply: `store::audit::AuditLog::append` returns only after
    /// the record's transaction committed, and the registrar's driver carries out no later
    /// action of the same batch before (state changes: the acknowledgement waits for it).
    BeforeReply,
    /// Committed within the writer's bounded batch delay; `append` returns once it is
    /// queued (resolutions, reports).
    Batched,
}

/// What an audit record says happened: the registrar core's actions, `enrpd`'s (TLS,
/// refusals, the log itself, its command line) and the admin API's. The stored name is
/// [`AuditAction::as_str`]; the log's `action` column, archives and `GET /v1/audit` carry
/// that name, unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    /// A registration (new PE).
    Register,
    /// A re-registration of an existing PE.
    Reregister,
    /// A deregistration by its registrant.
    Deregister,
    /// A handle resolution.
    Resolve,
    /// An endpoint unreachable report.
    Report,
    /// A PE removed: no keep-alive acknowledgement in time (spec §7.5).
    RemoveTimeout,
    /// A PE removed: its connection closed and it did not come back (spec §12.6).
    RemoveConnectionLoss,
    /// A PE removed: its registrant's certificate was revoked.
    RemoveRevoked,
    /// A PE removed: the grant that allowed its registration is gone.
    RemoveUngranted,
    /// A PE removed by an operator (admin API).
    RemoveAdmin,
    /// A draining PE removed by its home registrar at its drain deadline
    /// (`PUT …/pool-elements/{pe_id}/drain`).
    RemoveDrained,
    /// A message that did not decode.
    Malformed,
    /// A peer's PE removed: its home registrar did not refresh it within its
    /// registration life (spec §9.4, §9.8 step 5).
    RemoveExpired,
    /// A peer's PE removed: the peer's handle table no longer lists it (spec §9.6).
    RemoveResync,
    /// An ENRP peer connected and was accepted.
    PeerUp,
    /// An ENRP peer was refused or disconnected: no `peer` grant, a Sender ID that is
    /// not its identity's, a Server ID bound to another identity.
    PeerRefused,
    /// An ENRP peer stopped answering (spec §9.5).
    PeerDead,
    /// Part of an ENRP message ignored: a PE the sender does not own, a namespace or pool
    /// it may not speak for, a value or a PE ID that does not fit.
    PeerIgnored,
    /// This registrar started a takeover of a dead peer (spec §9.8 step 1).
    TakeoverStarted,
    /// This registrar acknowledged a peer's takeover of another (spec §9.8 step 2).
    TakeoverAcked,
    /// A takeover of ours was given up: the target spoke, a peer with a lower Server ID
    /// takes it over, or acknowledgements were missing at the expiry (spec §9.8).
    TakeoverAbandoned,
    /// This registrar took over a dead peer's PEs (spec §9.8 step 3).
    TakeoverCompleted,
    /// A peer took over a dead registrar: its PEs now have that peer as home (§9.8 step 4).
    TakeoverApplied,
    /// PEs added, re-homed or removed here because of a peer's message (one record per
    /// message, with the counts, naming the peer).
    PeerUpdate,
    /// A peer's takeover was not acknowledged or not applied: its target is alive here,
    /// not a peer, or this registrar did not acknowledge that peer's INIT_TAKEOVER for it
    /// (docs/ENRP-TRUST.md).
    TakeoverRefused,
    /// The start-up phase ended: the mentor's handle table is downloaded (spec §9.3).
    MentorDone,
    /// The start-up phase ended: no mentor download completed in time (spec §9.3 step 4).
    MentorTimeout,
    /// A TLS handshake (or the ALPN and identity checks after it) refused, or a legacy
    /// plaintext connection accepted (`enrpd`'s listeners).
    Handshake,
    /// Refused requests summed up over a window instead of one record each (`enrpd`).
    Refusals,
    /// Records dropped because the audit backlog was full, counted (`enrpd`).
    AuditGap,
    /// Old records moved to an archive file (`enrpd audit archive`).
    AuditArchive,
    /// An admin token created on the command line (`enrpd token create`).
    TokenCreate,
    /// An admin token revoked on the command line (`enrpd token revoke`).
    TokenRevoke,
    /// An admin API request refused (authentication or permission).
    AdminRequest,
    /// Admin API: a namespace created.
    AdminNamespaceCreate,
    /// Admin API: a namespace deleted.
    AdminNamespaceDelete,
    /// Admin API: a pool declared.
    AdminPoolDeclare,
    /// Admin API: a pool declaration deleted.
    AdminPoolDelete,
    /// Admin API: a PE deregistered by an operator.
    AdminPeDeregister,
    /// Admin API: a PE drained by an operator (no resolution returns it; its home
    /// deregisters it at the deadline).
    AdminPeDrain,
    /// Admin API: an operator's drain of a PE lifted.
    AdminPeUndrain,
    /// Admin API: a grant created.
    AdminGrantCreate,
    /// Admin API: a grant deleted.
    AdminGrantDelete,
    /// Admin API: a default-namespace rule created.
    AdminDefaultNamespaceCreate,
    /// Admin API: a default-namespace rule deleted.
    AdminDefaultNamespaceDelete,
    /// Admin API: a trust domain added.
    AdminTrustDomainAdd,
    /// Admin API: a trust domain removed.
    AdminTrustDomainRemove,
    /// Admin API: an identity, serial or trust domain revoked.
    AdminRevoke,
    /// Admin API: a trust domain's CRLs set.
    AdminCrlSet,
    /// Admin API: a token created.
    AdminTokenCreate,
    /// Admin API: a token revoked.
    AdminTokenRevoke,
    /// Admin API: old records archived.
    AdminAuditArchive,
}

impl AuditAction {
    /// Whether the record is of a PE's removal by the registrar (not by its registrant).
    pub const fn is_removal(self) -> bool {
        matches!(
            self,
            Self::RemoveTimeout
                | Self::RemoveConnectionLoss
                | Self::RemoveRevoked
                | Self::RemoveUngranted
                | Self::RemoveAdmin
                | Self::RemoveDrained
                | Self::RemoveExpired
                | Self::RemoveResync
        )
    }

    /// The name stored in the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Reregister => "reregister",
            Self::Deregister => "deregister",
            Self::Resolve => "resolve",
            Self::Report => "report",
            Self::RemoveTimeout => "remove:timeout",
            Self::RemoveConnectionLoss => "remove:connection-loss",
            Self::RemoveRevoked => "remove:revoked",
            Self::RemoveUngranted => "remove:ungranted",
            Self::RemoveAdmin => "remove:admin",
            Self::RemoveDrained => "remove:drained",
            Self::Malformed => "malformed",
            Self::RemoveExpired => "remove:expired",
            Self::RemoveResync => "remove:resync",
            Self::PeerUp => "peer:up",
            Self::PeerRefused => "peer:refused",
            Self::PeerDead => "peer:dead",
            Self::PeerIgnored => "peer:ignored",
            Self::TakeoverStarted => "takeover:started",
            Self::TakeoverAcked => "takeover:acked",
            Self::TakeoverAbandoned => "takeover:abandoned",
            Self::TakeoverCompleted => "takeover:completed",
            Self::TakeoverApplied => "takeover:applied",
            Self::PeerUpdate => "peer:update",
            Self::TakeoverRefused => "takeover:refused",
            Self::MentorDone => "mentor:done",
            Self::MentorTimeout => "mentor:timeout",
            Self::Handshake => "handshake",
            Self::Refusals => "refusals",
            Self::AuditGap => "audit:gap",
            Self::AuditArchive => "audit:archive",
            Self::TokenCreate => "token:create",
            Self::TokenRevoke => "token:revoke",
            Self::AdminRequest => "admin:request",
            Self::AdminNamespaceCreate => "admin:namespace.create",
            Self::AdminNamespaceDelete => "admin:namespace.delete",
            Self::AdminPoolDeclare => "admin:pool.declare",
            Self::AdminPoolDelete => "admin:pool.delete",
            Self::AdminPeDeregister => "admin:pe.deregister",
            Self::AdminPeDrain => "admin:pe.drain",
            Self::AdminPeUndrain => "admin:pe.undrain",
            Self::AdminGrantCreate => "admin:grant.create",
            Self::AdminGrantDelete => "admin:grant.delete",
            Self::AdminDefaultNamespaceCreate => "admin:default-namespace.create",
            Self::AdminDefaultNamespaceDelete => "admin:default-namespace.delete",
            Self::AdminTrustDomainAdd => "admin:trust-domain.add",
            Self::AdminTrustDomainRemove => "admin:trust-domain.remove",
            Self::AdminRevoke => "admin:revoke",
            Self::AdminCrlSet => "admin:crl.set",
            Self::AdminTokenCreate => "admin:token.create",
            Self::AdminTokenRevoke => "admin:token.revoke",
            Self::AdminAuditArchive => "admin:audit.archive",
        }
    }

    /// Every action, in declaration order.
    pub const ALL: &'static [Self] = &[
        Self::Register,
        Self::Reregister,
        Self::Deregister,
        Self::Resolve,
        Self::Report,
        Self::RemoveTimeout,
        Self::RemoveConnectionLoss,
        Self::RemoveRevoked,
        Self::RemoveUngranted,
        Self::RemoveAdmin,
        Self::RemoveDrained,
        Self::Malformed,
        Self::RemoveExpired,
        Self::RemoveResync,
        Self::PeerUp,
        Self::PeerRefused,
        Self::PeerDead,
        Self::PeerIgnored,
        Self::TakeoverStarted,
        Self::TakeoverAcked,
        Self::TakeoverAbandoned,
        Self::TakeoverCompleted,
        Self::TakeoverApplied,
        Self::PeerUpdate,
        Self::TakeoverRefused,
        Self::MentorDone,
        Self::MentorTimeout,
        Self::Handshake,
        Self::Refusals,
        Self::AuditGap,
        Self::AuditArchive,
        Self::TokenCreate,
        Self::TokenRevoke,
        Self::AdminRequest,
        Self::AdminNamespaceCreate,
        Self::AdminNamespaceDelete,
        Self::AdminPoolDeclare,
        Self::AdminPoolDelete,
        Self::AdminPeDeregister,
        Self::AdminPeDrain,
        Self::AdminPeUndrain,
        Self::AdminGrantCreate,
        Self::AdminGrantDelete,
        Self::AdminDefaultNamespaceCreate,
        Self::AdminDefaultNamespaceDelete,
        Self::AdminTrustDomainAdd,
        Self::AdminTrustDomainRemove,
        Self::AdminRevoke,
        Self::AdminCrlSet,
        Self::AdminTokenCreate,
        Self::AdminTokenRevoke,
        Self::AdminAuditArchive,
    ];

    /// The action stored under `name`, if it is one of [`AuditAction::ALL`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action as its stored name (`store::audit::Record`'s `action` field is one).
impl From<AuditAction> for Cow<'static, str> {
    fn from(action: AuditAction) -> Self {
        Cow::Borrowed(action.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored names are the log's: distinct, and each a valid action column value
    /// (1-64 bytes of `a-z 0-9 . _ : -`, checked again by `store::audit::Record::check`).
    #[test]
    fn every_action_has_one_distinct_stored_name_that_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for &a in AuditAction::ALL {
            let name = a.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(!name.is_empty() && name.len() <= 64, "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b':' | b'-')),
                "{name}"
            );
            assert_eq!(AuditAction::from_name(name), Some(a));
            assert_eq!(Cow::from(a), name);
            assert_eq!(a.to_string(), name);
        }
        assert_eq!(AuditAction::from_name("admin:unknown"), None);
        assert_eq!(AuditAction::ALL.len(), 52);
    }

    #[test]
    fn only_the_registrars_removals_are_removals() {
        let removals: Vec<_> = AuditAction::ALL
            .iter()
            .filter(|a| a.is_removal())
            .map(|a| a.as_str())
            .collect();
        assert_eq!(
            removals,
            [
                "remove:timeout",
                "remove:connection-loss",
                "remove:revoked",
                "remove:ungranted",
                "remove:admin",
                "remove:drained",
                "remove:expired",
                "remove:resync"
            ]
        );
    }
}
