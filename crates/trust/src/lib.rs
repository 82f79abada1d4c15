//! Who may do what in rsp: SPIFFE identities, trust domains, the rustls configurations that
//! authenticate every ASAP and ENRP connection, revocation, and grants.
//!
//! The identity types it checks certificates against (`SpiffeId`, `TrustDomain`, `Serial`,
//! `RegistrarIds`, grants) are the pure `identity` crate's; import them from there.
//! - [`TrustStore`]: trust domains, CRLs and a deny-list; builds TLS 1.3 rustls
//!   configurations (ring, client certificates required; optional on the admin listener)
//!   and swaps them on every change; each writes the NSS key log when `SSLKEYLOGFILE` is
//!   set ([`key_log_warning`]).
//! - [`Peer`]: what a finished handshake proves; [`ConnectionRegistry`]: live connections,
//!   closed on revocation.
#![warn(missing_docs)]

mod cert;
mod crl;
mod error;
mod keylog;
mod registry;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod verify;

pub use cert::Peer;
pub use error::Error;
pub use keylog::{KEY_LOG_ENV, key_log_warning};
pub use registry::{CloseReason, ConnectionRegistry, LiveConnection};
pub use store::{
    DomainBundle, LocalIdentity, Protocol, TrustStore, certs_from_pem, crl_serials, crls_from_pem,
    provider,
};
pub use verify::Rejection;

/// ALPN protocol identifier of ASAP over TLS.
pub const ALPN_ASAP: &[u8] = b"rserpool-asap/1";
/// ALPN protocol identifier of ENRP over TLS.
pub const ALPN_ENRP: &[u8] = b"rserpool-enrp/1";
