//! Who may do what in rsp: SPIFFE identities, trust domains, the rustls configurations that
//! authenticate every ASAP and ENRP connection, revocation, and grants.
#![warn(missing_docs)]
