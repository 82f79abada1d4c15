//! End-to-end tests: the real `rsp-pki`, `enrpd` and `rsp` binaries on loopback, with real
//! TLS handshakes and real SQLite files. One test binary (STYLE.md §6).
#![allow(clippy::disallowed_methods)] // end-to-end tests measure real time

mod abuse;
mod admin;
#[path = "../common/binaries.rs"]
mod binaries;
mod cli;
mod dashboard;
mod discovery;
mod drain;
mod endpoints;
mod fleet;
mod fleet_audit;
mod fleet_sync;
mod labels;
mod latency;
mod metrics;
mod partition;
mod peering;
mod refresh;
mod registrar;
mod restart;
mod retention;
mod sidecar;
mod sidecar_session;
mod store_copy;
mod store_tls;
mod support;
mod systemd;
mod trust_edges;
mod watch;
