//! Decode and encode errors (STYLE.md §4): where the input is wrong, which rule it breaks,
//! and what to answer (spec §3.3, §3.4, §4.7, §7.9, §12.2).

use std::fmt;

use super::limits::MAX_UNRECOGNIZED_MESSAGE_INFO;
use super::param::{ErrorCause, ParamType};

/// Why a message (or parameter) could not be decoded, and where.
///
/// `offset` is absolute in the message (0 = the Message Type byte). Display reads
/// `offset 24: parameter 0x000a: invalid value (empty pool handle)`.
///
/// The error keeps what [`DecodeError::cause`] needs to build the spec §4.7 error cause
/// (the offending TLV or the unrecognized message, bounded by the message length), so
/// the caller can answer without keeping the input around.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Absolute offset in the message of the offending field or parameter.
    pub offset: usize,
    /// Which rule the input breaks.
    pub kind: DecodeErrorKind,
    evidence: Evidence,
}

/// What the sender did wrong. Each variant documents the offset it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ends before an item of `need` bytes (offset: where the item starts).
    #[error("truncated (need {need} bytes)")]
    Truncated {
        /// Size of the item that did not fit.
        need: usize,
    },
    /// A length field is impossible: a parameter Length below 4, or a Message Length
    /// below 4 or not a multiple of 4 (offset: the length field).
    #[error("bad length {len}")]
    BadLength {
        /// The length read.
        len: usize,
    },
    /// A parameter's Length runs past its container (offset: the parameter).
    #[error("parameter runs past its container")]
    PastContainer,
    /// Parameters nested deeper than [`MAX_NESTING`](super::limits::MAX_NESTING)
    /// (offset: the parameter).
    #[error("parameters nested too deep")]
    TooDeep,
    /// A message type this protocol does not define (offset 0).
    #[error("unknown message type {0:#04x}")]
    UnknownMessage(u8),
    /// A parameter type this implementation does not know, whose action bits (spec §3.3)
    /// say "stop processing" (offset: the parameter).
    #[error("{ty}: unrecognized")]
    UnrecognizedParam {
        /// The parameter type.
        ty: ParamType,
    },
    /// A known, mandatory-to-understand parameter where the message grammar allows none
    /// (offset: the parameter).
    #[error("{ty}: not allowed here")]
    UnexpectedParam {
        /// The parameter type.
        ty: ParamType,
    },
    /// A mandatory parameter is absent (offset: start of the message or parameter that
    /// should contain it).
    #[error("{ty}: missing")]
    MissingParam {
        /// The missing parameter type.
        ty: ParamType,
    },
    /// A parameter that may occur once occurs again (offset: the second one).
    #[error("{ty}: duplicate")]
    DuplicateParam {
        /// The parameter type.
        ty: ParamType,
    },
    /// A parameter value breaks a rule of spec §4 (offset: the offending field).
    #[error("{param}: invalid value ({why})")]
    InvalidValue {
        /// The parameter holding the value.
        param: ParamType,
        /// The rule broken.
        why: &'static str,
    },
    /// A fixed message field (Server ID, Update Action, ...) is invalid (offset: the field).
    #[error("{field}: invalid value ({why})")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// The rule broken.
        why: &'static str,
    },
    /// A robustness limit of spec §3.5 is exceeded (offset: the first item beyond it).
    #[error("{what} exceeds the limit of {max}")]
    Limit {
        /// What is counted or measured.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Bytes left after a complete message or parameter value (offset: the first one).
    #[error("trailing bytes")]
    TrailingBytes,
}

/// What the error keeps to build the reply. Not public: callers ask [`DecodeError::cause`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Evidence {
    /// Not yet attached to a parameter; at message level it means "no TLV to quote".
    Pending,
    /// A framing fault: close the connection without a reply (spec §7.9, §12.2).
    Framing,
    /// Action bits `00` (spec §3.3): discard the message silently.
    Silent,
    /// The offending (innermost) TLV, without its padding, bounded by the message.
    Tlv(Box<[u8]>),
    /// The unrecognized message, truncated to fit an error reply.
    Message(Box<[u8]>),
}

impl DecodeError {
    /// An error at `offset`; the caller's parameter is attached later (see `in_param`).
    pub(crate) const fn new(offset: usize, kind: DecodeErrorKind) -> Self {
        Self {
            offset,
            kind,
            evidence: Evidence::Pending,
        }
    }

    /// A framing fault: the connection is closed without reply.
    pub(crate) const fn framing(offset: usize, kind: DecodeErrorKind) -> Self {
        Self {
            offset,
            kind,
            evidence: Evidence::Framing,
        }
    }

    /// An unknown parameter with action bits `00`: discarded silently.
    pub(crate) const fn silent(offset: usize, kind: DecodeErrorKind) -> Self {
        Self {
            offset,
            kind,
            evidence: Evidence::Silent,
        }
    }

    /// An error quoting `tlv` in its reply.
    pub(crate) fn with_tlv(offset: usize, kind: DecodeErrorKind, tlv: &[u8]) -> Self {
        Self {
            offset,
            kind,
            evidence: Evidence::Tlv(tlv.into()),
        }
    }

    /// An unknown message type; `msg` is kept (truncated) for the Unrecognized Message cause.
    pub(crate) fn unknown_message(ty: u8, msg: &[u8]) -> Self {
        let keep = msg.len().min(MAX_UNRECOGNIZED_MESSAGE_INFO);
        Self {
            offset: 0,
            kind: DecodeErrorKind::UnknownMessage(ty),
            evidence: Evidence::Message(msg[..keep].into()),
        }
    }

    /// Attaches the enclosing TLV unless an inner one is already attached, so the reply
    /// quotes the innermost offending parameter (spec §4.7, §5.1).
    pub(crate) fn in_param(mut self, tlv: &[u8]) -> Self {
        if self.evidence == Evidence::Pending {
            self.evidence = Evidence::Tlv(tlv.into());
        }
        self
    }

    /// Turns a fault in the fixed part of a message into a framing fault (spec §12.2:
    /// "L smaller than the fixed part of that message type").
    pub(crate) fn into_framing(mut self) -> Self {
        self.evidence = Evidence::Framing;
        self
    }

    /// True for framing faults (spec §12.2): the connection must be closed without reply.
    pub fn is_framing(&self) -> bool {
        self.evidence == Evidence::Framing
    }

    /// The spec §4.7 error cause to send back, or `None` when nothing is sent: a framing
    /// fault (close the connection, spec §7.9, §12.2) or an unrecognized parameter whose
    /// action bits are `00` (discard silently, spec §3.3).
    ///
    /// - 0x1 Unrecognized Parameter carrying the whole offending TLV (action bits `01`);
    /// - 0x2 Unrecognized Message carrying the message, truncated to fit a reply;
    /// - 0x3 Invalid Values carrying the offending (innermost) TLV, or nothing when the
    ///   fault is not inside a parameter (missing parameter, bad fixed field).
    pub fn cause(&self) -> Option<ErrorCause> {
        match &self.evidence {
            Evidence::Framing | Evidence::Silent => None,
            Evidence::Message(m) => Some(ErrorCause::UnrecognizedMessage(m.to_vec())),
            Evidence::Tlv(t) if matches!(self.kind, DecodeErrorKind::UnrecognizedParam { .. }) => {
                Some(ErrorCause::UnrecognizedParameter(t.to_vec()))
            }
            Evidence::Tlv(t) => Some(ErrorCause::InvalidValues(t.to_vec())),
            Evidence::Pending => Some(ErrorCause::InvalidValues(Vec::new())),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for DecodeError {}

/// Why a message cannot be encoded. Parameters built through their checked constructors
/// always encode; only message-level rules can fail (size, counts the types cannot
/// express), and they are checked before a single byte is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message would be longer than [`MAX_MESSAGE_LEN`](super::limits::MAX_MESSAGE_LEN).
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Encoded length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A count limit of spec §3.5 is exceeded.
    #[error("{what} exceeds the limit of {max}")]
    Limit {
        /// What is counted.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The message breaks a presence rule that its type cannot express.
    #[error("invalid message ({why})")]
    Invalid {
        /// The rule broken.
        why: &'static str,
    },
}
