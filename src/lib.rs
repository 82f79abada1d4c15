//! End-to-end tests of rsp live in `tests/`; they start the real binaries (`rsp`, and as
//! the other issues land `rsp-pki` and `enrpd`) on loopback. This library is empty on
//! purpose: the package exists so that `cargo test --workspace` builds and runs them.
