//! Project parameter Serving Identity (0x8105), docs/PROTOCOL-EXTENSIONS.md §6.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x8105           |         Length = 4 + n        |
//! +-------------------------------+-------------------------------+
//! :  SPIFFE ID of the server that terminates the PUs' TLS (UTF-8)  :
//! +---------------------------------------------------------------+
//! ```
//! Action bits `10` (skip if unknown). Inside the Pool Element parameter, after PE Status:
//! a PE registered with `rsp pe --advertise` names the identity its server's certificate
//! carries; the registrar checks that the PE's own identity may vouch for it, and pool
//! users insist on it instead of the registrant (0x8101) when they connect.

use super::namespace::identity_param;

identity_param!(
    /// The identity a PE's server presents to pool users, when it is not the PE's own (a
    /// server that terminates TLS itself): 1 to 2048 bytes, as a registrant identity.
    ServingIdentity,
    SERVING_IDENTITY,
    "serving identity"
);
