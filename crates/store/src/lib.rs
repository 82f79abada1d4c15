//! The registrar's state on disk: the SQLite store ([`db`], one module per table, with the
//! migrations of the repository's `migrations/`) and the hash-chained audit log ([`audit`],
//! its group-commit writer and archives).
//!
//! Below the daemon and beside `trust`: it names identities, trust domains and serials
//! (`identity`), never a TLS type, so it depends on no TLS crate.
#![warn(missing_docs)]

pub mod audit;
pub mod db;
