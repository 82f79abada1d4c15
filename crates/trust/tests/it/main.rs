//! Integration tests of the trust crate over real TLS handshakes on loopback.

mod admin;
mod crl;
mod harness;
mod matrix;
mod revocation;
mod server_side;
