//! The registrar's pure core (RFC 5353, RFC 5352 server side): the handlespace, the PE
//! checksum of spec §9.6 and the registrar state machine [`registrar::Core`], driven by
//! inputs, the time as a value and timers, returning actions.
//!
//! No I/O: no sockets, no TLS, no SQL, no clock, no tokio (`.ci/run` checks the dependency
//! tree). The `enrp` crate drives it over TLS and SCTP and stores and audits what it
//! decides; its users import these modules from here. Read [`registrar::Core::handle`]
//! first.
#![warn(missing_docs)]

pub mod checksum;
pub mod handlespace;
mod hash;
pub mod registrar;
mod server_id;

pub use server_id::server_id_of;
