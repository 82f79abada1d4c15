//! `rsp-pki`: bootstrap a PKI for a trust domain and issue certificates.

fn main() {}
