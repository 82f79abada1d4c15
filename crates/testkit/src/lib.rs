//! One test kit (issue 24, item 5), used by tests, benches and fuzz targets alike:
//!
//! - [`sim`]: the deterministic simulation of several registrar cores, PEs and PUs on a
//!   simulated network (`cargo test -p enrp-core --test sim` runs its seeds);
//! - [`invariants`]: what must hold of a core whatever its inputs (handlespace
//!   bookkeeping and checksums, audit before acknowledgement, one owner per PE), checked
//!   by the simulation and by [`drive`];
//! - [`drive`]: one core driven by arbitrary bytes (messages from a few connections and
//!   peers, timer firings, time steps), the body of the `core` fuzz target;
//! - [`msg`]: message and grant builders (a PE's registration);
//! - [`proc`]: a process's CPU time and memory from /proc (benches);
//! - `client` (feature `client`): a PE's side of registrations over `asap::client`;
//!   `child`: the line protocol between a bench and its server child process.
//!
//! Without features the crate depends on no async runtime, TLS, SQL or HTTP crate, like
//! `enrp-core` (`.ci/pure-crates`).

pub mod drive;
pub mod invariants;
pub mod msg;
pub mod proc;
pub mod sim;

#[cfg(feature = "client")]
pub mod child;
#[cfg(feature = "client")]
pub mod client;
