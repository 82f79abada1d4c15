//! ASAP, the Aggregate Server Access Protocol of Reliable Server Pooling (RFC 5352).
//!
//! - [`wire`]: the codec for every ASAP and ENRP message and every RFC 5354 parameter
//!   (spec §3, §4, §6, §8, §12). Pure: no I/O, no clock, never panics on input.
//! - [`policy`]: the nine RFC 5356 pool member selection policies behind one
//!   [`policy::Selector`] interface, used by registrars (choose *n* PEs for a handle
//!   resolution response) and pool users (choose one PE from a cache).
//! - [`addr`]: transport addresses and SCTP endpoints (pure, no feature needed).
//! - [`discovery`]: registrars learnt from multicast announces (pure; off unless asked).
//! - `client` (feature `client`): pool elements and pool users over mutual TLS.
//! - `transport` (feature `transport`): messages over any async byte stream (spec §12.2).
//!
//! Read [`wire::AsapMsg`] first. The `rsp` command (feature `cli`) is a thin front end.
#![warn(missing_docs)]

pub mod addr;
#[cfg(feature = "client")]
pub mod client;
pub mod discovery;
pub mod policy;
#[cfg(feature = "transport")]
pub mod transport;
pub mod wire;
