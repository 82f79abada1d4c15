//! Who is who in rsp, as pure values: SPIFFE IDs and trust domains, identity, namespace and
//! pool patterns, grants and their actions, default namespaces and certificate serials.
//!
//! No TLS, no certificates parsing, no I/O: the registrar core (`enrp-core`) decides with
//! these alone; `trust` reads them from certificates and re-exports them.
//!
//! - [`SpiffeId`], [`TrustDomain`]: validated names.
//! - [`IdentityPattern`], [`PoolPattern`], [`Grant`], [`allowed`]: authorization, default deny.
//! - [`RegistrarIds`]: which identities are accepted as a registrar (spec §11.1).
//! - [`Serial`]: a certificate serial number, normalised.
//! - [`Revocation`]: what a revocation names (identity, serial, trust domain).
//! - [`Namespace`], [`PoolHandle`], [`PeId`]: the handlespace's names, validated (the wire
//!   codec `asap::wire::param` encodes them; the core, the audit log and the admin API use
//!   them).
//! - [`audit`]: the audit vocabulary shared by the core and the store ([`audit::AuditEvent`],
//!   [`audit::AuditAction`], [`audit::Durability`]).
//! - [`text`]: which characters stored free text may not carry (controls, bidirectional
//!   overrides and other invisible formatting).
#![warn(missing_docs)]

pub mod audit;
mod error;
mod grant;
mod handlespace;
mod label_rules;
mod pattern;
mod registrar_ids;
mod revocation;
mod serial;
mod spiffe;
pub mod text;

pub use error::Error;
pub use grant::{
    Action, Actions, DefaultNamespace, Grant, NamespacePattern, RegisterRefusal, allowed,
    default_namespace, register_allowed,
};
pub use handlespace::{MAX_NAMESPACE_LEN, Namespace, PeId, PoolHandle};
pub use label_rules::{LabelRule, LabelRules, MAX_LABEL_RULES};
pub use pattern::{IdentityPattern, MAX_POOL_PATTERN_LEN, PoolPattern};
pub use registrar_ids::{DEFAULT_REGISTRAR_ID, RegistrarIds};
pub use revocation::Revocation;
pub use serial::Serial;
pub use spiffe::{
    LEGACY_TRUST_DOMAIN, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, TrustDomain, echo,
};
