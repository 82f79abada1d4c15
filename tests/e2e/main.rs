//! End-to-end tests: the real `rsp-pki`, `enrpd` and `rsp` binaries on loopback, with real
//! TLS handshakes and real SQLite files. One test binary (STYLE.md §6).

mod cli;
mod registrar;
mod support;
