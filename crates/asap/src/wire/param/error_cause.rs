//! Operation Error parameter (0x000C) and its error causes. Spec §4.7; RFC 5354 §3.12.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x000C           |           Length              |
//! +-------------------------------+-------------------------------+
//! :                   one or more error causes                    :
//! +---------------------------------------------------------------+
//!
//! Error cause:
//! +-------------------------------+-------------------------------+
//! |          Cause Code           |         Cause Length          |
//! +-------------------------------+-------------------------------+
//! :         Cause-specific information (padded to 4)              :
//! +---------------------------------------------------------------+
//! ```
//! Cause Length covers code, length and info, not the padding: the same layout as a
//! parameter TLV, so causes are read with the same iterator.

use super::{Param, ParamType, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// One error cause (spec §4.7). Cause-specific information is kept as received: the
/// quoted TLV or message is the peer's bytes, not something to trust or re-parse.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCause {
    /// 0x0 Unspecified error (spec §15 item 4).
    Unspecified,
    /// 0x1 Unrecognized Parameter: the whole offending TLV.
    UnrecognizedParameter(Vec<u8>),
    /// 0x2 Unrecognized Message: the message, possibly truncated.
    UnrecognizedMessage(Vec<u8>),
    /// 0x3 Invalid Values: the offending parameter TLV (empty when the fault was not
    /// inside a parameter).
    InvalidValues(Vec<u8>),
    /// 0x4 Non-unique PE Identifier.
    NonUniquePeId,
    /// 0x5 Inconsistent Pooling Policy: the offending Policy parameter.
    InconsistentPolicy(Vec<u8>),
    /// 0x6 Lack of Resources.
    LackOfResources,
    /// 0x7 Inconsistent Transport Type: the offending transport parameter.
    InconsistentTransport(Vec<u8>),
    /// 0x8 Inconsistent Data/Control Configuration.
    InconsistentDataControl,
    /// 0x9 Unknown Pool Handle.
    UnknownPoolHandle,
    /// 0xA Rejection due to security considerations.
    SecurityRejection,
    /// A code above 0xA, kept so it can be logged or relayed. The decoder never produces
    /// this for codes 0x0–0xA.
    Other {
        /// Cause Code.
        code: u16,
        /// Cause-specific information.
        info: Vec<u8>,
    },
}

/// The Cause Codes of spec §4.7 (RFC 5352 §3.12) by name, for where a code stands without
/// its cause (an audit record's outcome, a handlespace refusal): no bare `0x6` in the code.
impl ErrorCause {
    /// 0x0, [`Self::Unspecified`].
    pub const UNSPECIFIED: u16 = 0x0;
    /// 0x1, [`Self::UnrecognizedParameter`].
    pub const UNRECOGNIZED_PARAMETER: u16 = 0x1;
    /// 0x2, [`Self::UnrecognizedMessage`].
    pub const UNRECOGNIZED_MESSAGE: u16 = 0x2;
    /// 0x3, [`Self::InvalidValues`].
    pub const INVALID_VALUES: u16 = 0x3;
    /// 0x4, [`Self::NonUniquePeId`].
    pub const NON_UNIQUE_PE_ID: u16 = 0x4;
    /// 0x5, [`Self::InconsistentPolicy`].
    pub const INCONSISTENT_POLICY: u16 = 0x5;
    /// 0x6, [`Self::LackOfResources`].
    pub const LACK_OF_RESOURCES: u16 = 0x6;
    /// 0x7, [`Self::InconsistentTransport`].
    pub const INCONSISTENT_TRANSPORT: u16 = 0x7;
    /// 0x8, [`Self::InconsistentDataControl`].
    pub const INCONSISTENT_DATA_CONTROL: u16 = 0x8;
    /// 0x9, [`Self::UnknownPoolHandle`].
    pub const UNKNOWN_POOL_HANDLE: u16 = 0x9;
    /// 0xA, [`Self::SecurityRejection`].
    pub const SECURITY_REJECTION: u16 = 0xA;
}

impl ErrorCause {
    /// The Cause Code.
    pub const fn code(&self) -> u16 {
        match self {
            Self::Unspecified => Self::UNSPECIFIED,
            Self::UnrecognizedParameter(_) => Self::UNRECOGNIZED_PARAMETER,
            Self::UnrecognizedMessage(_) => Self::UNRECOGNIZED_MESSAGE,
            Self::InvalidValues(_) => Self::INVALID_VALUES,
            Self::NonUniquePeId => Self::NON_UNIQUE_PE_ID,
            Self::InconsistentPolicy(_) => Self::INCONSISTENT_POLICY,
            Self::LackOfResources => Self::LACK_OF_RESOURCES,
            Self::InconsistentTransport(_) => Self::INCONSISTENT_TRANSPORT,
            Self::InconsistentDataControl => Self::INCONSISTENT_DATA_CONTROL,
            Self::UnknownPoolHandle => Self::UNKNOWN_POOL_HANDLE,
            Self::SecurityRejection => Self::SECURITY_REJECTION,
            Self::Other { code, .. } => *code,
        }
    }

    /// The cause's name as spec §4.7 (RFC 5352 §3.12) gives it, for logs and errors;
    /// "unknown cause" for codes above 0xA.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Unspecified => "Unspecified Error",
            Self::UnrecognizedParameter(_) => "Unrecognized Parameter",
            Self::UnrecognizedMessage(_) => "Unrecognized Message",
            Self::InvalidValues(_) => "Invalid Values",
            Self::NonUniquePeId => "Non-unique PE Identifier",
            Self::InconsistentPolicy(_) => "Inconsistent Pooling Policy",
            Self::LackOfResources => "Lack of Resources",
            Self::InconsistentTransport(_) => "Inconsistent Transport Type",
            Self::InconsistentDataControl => "Inconsistent Data/Control Configuration",
            Self::UnknownPoolHandle => "Unknown Pool Handle",
            Self::SecurityRejection => "Rejection due to security considerations",
            Self::Other { .. } => "unknown cause",
        }
    }

    /// The cause-specific information (empty for causes without any).
    pub fn info(&self) -> &[u8] {
        match self {
            Self::UnrecognizedParameter(b)
            | Self::UnrecognizedMessage(b)
            | Self::InvalidValues(b)
            | Self::InconsistentPolicy(b)
            | Self::InconsistentTransport(b)
            | Self::Other { info: b, .. } => b,
            _ => &[],
        }
    }

    /// Whether a registrar's refusal with this cause may succeed if asked again later:
    /// only 0x6 Lack of Resources (a registrar still synchronising after its start, spec
    /// §9.3, or at a limit). Every other cause gets the same answer for the same request
    /// (spec §7.1 step 5: do not retry blindly). Pure, so that the PE and PU library
    /// (`client::Error::is_transient`) and the registrar simulation decide alike.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::LackOfResources)
    }

    /// Builds a cause from its code and info. Info of causes that carry none is
    /// ignored (spec §4.7 defines none for them).
    pub fn from_parts(code: u16, info: &[u8]) -> Self {
        match code {
            Self::UNSPECIFIED => Self::Unspecified,
            Self::UNRECOGNIZED_PARAMETER => Self::UnrecognizedParameter(info.to_vec()),
            Self::UNRECOGNIZED_MESSAGE => Self::UnrecognizedMessage(info.to_vec()),
            Self::INVALID_VALUES => Self::InvalidValues(info.to_vec()),
            Self::NON_UNIQUE_PE_ID => Self::NonUniquePeId,
            Self::INCONSISTENT_POLICY => Self::InconsistentPolicy(info.to_vec()),
            Self::LACK_OF_RESOURCES => Self::LackOfResources,
            Self::INCONSISTENT_TRANSPORT => Self::InconsistentTransport(info.to_vec()),
            Self::INCONSISTENT_DATA_CONTROL => Self::InconsistentDataControl,
            Self::UNKNOWN_POOL_HANDLE => Self::UnknownPoolHandle,
            Self::SECURITY_REJECTION => Self::SecurityRejection,
            code => Self::Other {
                code,
                info: info.to_vec(),
            },
        }
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.param(ParamType(self.code()), |w| w.bytes(self.info()));
    }
}

/// Operation Error: one or more error causes (spec §4.7).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OperationError(Vec<ErrorCause>);

impl OperationError {
    /// `None` when `causes` is empty.
    pub fn new(causes: Vec<ErrorCause>) -> Option<Self> {
        (!causes.is_empty()).then_some(Self(causes))
    }

    /// An Operation Error with one cause.
    pub fn single(cause: ErrorCause) -> Self {
        Self(vec![cause])
    }

    /// The causes, at least one.
    pub fn causes(&self) -> &[ErrorCause] {
        &self.0
    }
}

impl From<ErrorCause> for OperationError {
    fn from(c: ErrorCause) -> Self {
        Self::single(c)
    }
}

impl Param for OperationError {
    fn param_type(&self) -> ParamType {
        ParamType::OPERATION_ERROR
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::OPERATION_ERROR
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        for c in &self.0 {
            c.write(w);
        }
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        _: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let mut causes = Vec::new();
        for c in r.params() {
            let c = c?;
            causes.push(ErrorCause::from_parts(c.ty.0, c.value()));
        }
        if causes.is_empty() {
            return Err(DecodeError::new(
                p.offset(),
                DecodeErrorKind::InvalidValue {
                    param: ParamType::OPERATION_ERROR,
                    why: "no error cause",
                },
            ));
        }
        Ok(Self(causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lack_of_resources_is_transient() {
        for code in 0..=0xFFu16 {
            let cause = ErrorCause::from_parts(code, &[1, 2]);
            assert_eq!(cause.is_transient(), code == 0x6, "cause {code:#x}");
        }
        assert!(!ErrorCause::from_parts(0x106, &[]).is_transient());
    }
}
