//! Errors of the identity crate: names, patterns, actions and serials that do not parse.

/// A SPIFFE ID, trust domain, pattern, action or serial number that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not a valid SPIFFE ID.
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    InvalidSpiffeId {
        /// The input, shortened if long.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A string is not a valid trust domain name.
    #[error("invalid trust domain {input:?}: {reason}")]
    InvalidTrustDomain {
        /// The input, shortened if long.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An identity, namespace or pool pattern is malformed.
    #[error("invalid pattern {input:?}: {reason}")]
    InvalidPattern {
        /// The input, shortened if long.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An action name is not one of `register`, `resolve`, `report`, `peer`,
    /// `admin:read`, `admin:write`.
    #[error("unknown action {input:?}")]
    InvalidAction {
        /// The input, shortened if long.
        input: String,
    },
    /// A serial number is not hexadecimal or is too long.
    #[error("invalid serial number {input:?}: {reason}")]
    InvalidSerial {
        /// The input, shortened if long.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A string is not a valid namespace name.
    #[error("invalid namespace {input:?}: {reason}")]
    InvalidNamespace {
        /// The input, shortened if long.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A pool handle is empty or longer than 32 bytes.
    #[error("invalid pool handle: {len} bytes, a pool handle is 1 to 32 bytes")]
    InvalidPoolHandle {
        /// Its length.
        len: usize,
    },
}
