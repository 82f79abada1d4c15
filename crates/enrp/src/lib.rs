//! ENRP, the Endpoint haNdlespace Redundancy Protocol (RFC 5353): registrars that keep the
//! handlespace, replicate it among themselves and take over a dead peer's pool elements.
//!
//! The ENRP message codec lives with ASAP's in [`asap::wire`] (both share the encoding of
//! spec §3); the registrar's pure core (handlespace, checksum, `Core`) is the `enrp-core`
//! crate. This crate drives it: listeners, TLS, peers, the store and the audit log.
#![warn(missing_docs)]

pub mod admin;
pub mod announce;
pub mod checkpoint;
pub mod config;
pub mod control_plane;
pub mod daemon;
pub mod fleet;
pub mod running;
pub mod setup;

pub use running::{RunError, Running, run, run_with};
