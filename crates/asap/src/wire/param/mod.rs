//! RFC 5354 parameters (spec §4) and the project parameters (spec §12.9).
//!
//! Every parameter is a typed value implementing [`Param`]: a checked constructor, an
//! infallible encoder and a decoder that reports the offending field.

mod address;
mod cookie;
mod error_cause;
mod ids;
mod labels;
mod namespace;
mod pe_identifier;
mod policy;
mod pool_element;
mod pool_handle;
mod server_information;
mod serving;
mod status;
mod transport;

use std::fmt;

pub use address::Address;
pub use cookie::Cookie;
pub use error_cause::{ErrorCause, OperationError};
/// The handlespace's names are `identity`'s (one type per concept, issue 24); re-exported
/// here, beside their wire encodings, so that every user of the codec keeps one path.
pub use identity::{Namespace, PeId, PoolHandle};
pub use ids::ServerId;
pub use labels::{Hints, LabelError, Labels, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS};
pub use namespace::RegistrantIdentity;
pub use pe_identifier::{HandleResolutionOption, PeChecksum};
pub use policy::{Load, MAX_PRIVATE_POLICY_VALUE_LEN, Policy, PolicyType, PrivateValues};
pub use pool_element::PoolElement;
pub use server_information::ServerInformation;
pub use serving::ServingIdentity;
pub use status::{CheckKind, PeStatus};
pub use transport::{SctpAddresses, Transport, TransportUse};

use super::Decoded;
use super::error::{DecodeError, DecodeErrorKind};
use super::reader::{RawParam, Reader};
use super::writer::Writer;

/// A 16-bit Parameter Type (spec §4.1, §12.9). A newtype so that unknown types can be
/// carried, reported and re-sent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamType(pub u16);

impl ParamType {
    /// IPv4 Address (spec §4.2).
    pub const IPV4_ADDRESS: Self = Self(0x0001);
    /// IPv6 Address (spec §4.2).
    pub const IPV6_ADDRESS: Self = Self(0x0002);
    /// DCCP Transport (spec §4.3).
    pub const DCCP_TRANSPORT: Self = Self(0x0003);
    /// SCTP Transport (spec §4.3).
    pub const SCTP_TRANSPORT: Self = Self(0x0004);
    /// TCP Transport (spec §4.3).
    pub const TCP_TRANSPORT: Self = Self(0x0005);
    /// UDP Transport (spec §4.3).
    pub const UDP_TRANSPORT: Self = Self(0x0006);
    /// UDP-Lite Transport (spec §4.3).
    pub const UDP_LITE_TRANSPORT: Self = Self(0x0007);
    /// Pool Member Selection Policy (spec §5.1).
    pub const POLICY: Self = Self(0x0008);
    /// Pool Handle (spec §4.1).
    pub const POOL_HANDLE: Self = Self(0x0009);
    /// Pool Element (spec §4.4).
    pub const POOL_ELEMENT: Self = Self(0x000A);
    /// Server Information (spec §4.5).
    pub const SERVER_INFORMATION: Self = Self(0x000B);
    /// Operation Error (spec §4.7).
    pub const OPERATION_ERROR: Self = Self(0x000C);
    /// Cookie (spec §4.1).
    pub const COOKIE: Self = Self(0x000D);
    /// PE Identifier (spec §4.1).
    pub const PE_IDENTIFIER: Self = Self(0x000E);
    /// PE Checksum (spec §4.6).
    pub const PE_CHECKSUM: Self = Self(0x000F);
    /// Handle Resolution Option (spec §4.8; draft-dreibholz-rserpool-asap-hropt).
    pub const HANDLE_RESOLUTION_OPTION: Self = Self(0x803F);
    /// Namespace (project parameter, spec §12.9).
    pub const NAMESPACE: Self = Self(0x8100);
    /// Registrant Identity (project parameter, spec §12.9).
    pub const REGISTRANT_IDENTITY: Self = Self(0x8101);
    /// PE Labels (project parameter, docs/PROTOCOL-EXTENSIONS.md): inside a Pool Element.
    pub const PE_LABELS: Self = Self(0x8102);
    /// Selection Hints (project parameter, docs/PROTOCOL-EXTENSIONS.md): in a handle
    /// resolution.
    pub const SELECTION_HINTS: Self = Self(0x8103);
    /// PE Status (project parameter, docs/PROTOCOL-EXTENSIONS.md §5): inside a Pool
    /// Element, after its labels: draining, health check.
    pub const PE_STATUS: Self = Self(0x8104);
    /// Serving Identity (project parameter, docs/PROTOCOL-EXTENSIONS.md §6): inside a
    /// Pool Element, after its status: who terminates the PUs' TLS.
    pub const SERVING_IDENTITY: Self = Self(0x8105);

    /// What a receiver that does not recognise this type must do: the top two bits
    /// (spec §3.3).
    pub const fn action(self) -> ParamAction {
        match self.0 >> 14 {
            0 => ParamAction::Stop,
            1 => ParamAction::StopReport,
            2 => ParamAction::Skip,
            _ => ParamAction::SkipReport,
        }
    }

    /// True for the types this codec implements.
    pub const fn is_known(self) -> bool {
        matches!(self.0, 0x0001..=0x000F | 0x803F | 0x8100..=0x8105)
    }

    /// True for the five transport parameter types (0x3–0x7).
    pub const fn is_transport(self) -> bool {
        matches!(self.0, 0x0003..=0x0007)
    }

    /// True for the two address parameter types.
    pub const fn is_address(self) -> bool {
        matches!(self.0, 0x0001 | 0x0002)
    }
}

impl fmt::Debug for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParamType({:#06x})", self.0)
    }
}

/// `parameter 0x000a`, the form used in error messages.
impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter {:#06x}", self.0)
    }
}

/// The action bits of a Parameter Type (spec §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamAction {
    /// `00`: stop processing, discard the message silently.
    Stop,
    /// `01`: stop processing, discard, report with cause 0x1.
    StopReport,
    /// `10`: skip the parameter.
    Skip,
    /// `11`: skip the parameter and report it with cause 0x1.
    SkipReport,
}

/// A parameter the codec skipped and the receiver must report (action bits `11`,
/// spec §3.3), kept whole so it can be quoted in an Unrecognized Parameter cause.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnknownParam {
    /// Parameter Type.
    pub ty: ParamType,
    /// Parameter Value (without padding).
    pub value: Box<[u8]>,
}

impl UnknownParam {
    /// The whole TLV as received (header and value, no padding).
    pub fn tlv(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::new(&mut out).param(self.ty, |w| w.bytes(&self.value));
        // The value came out of a TLV, so its header fits; drop the padding.
        out.truncate(4 + self.value.len());
        out
    }

    /// The Unrecognized Parameter cause (0x1) reporting it.
    pub fn cause(&self) -> ErrorCause {
        ErrorCause::UnrecognizedParameter(self.tlv())
    }
}

/// A parameter type with its codec (spec §3.2, §4). Implemented by every parameter.
///
/// `write_value`/`read_value` handle the value only; the provided methods add the TLV
/// header and padding.
pub trait Param: Sized {
    /// The Parameter Type of this value.
    fn param_type(&self) -> ParamType;

    /// True if a TLV of type `ty` decodes as `Self`.
    fn is_type(ty: ParamType) -> bool;

    /// Writes the value (after the TLV header).
    fn write_value(&self, w: &mut Writer<'_>);

    /// Reads the value of `p` from `r`. Parameters nested inside it go through `r.params()`;
    /// those to be reported (action bits `11`) are added to `unrecognized`.
    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        unrecognized: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError>;

    /// Writes the whole TLV with its padding.
    fn write(&self, w: &mut Writer<'_>) {
        w.param(self.param_type(), |w| self.write_value(w));
    }

    /// Length of the TLV including its trailing padding.
    fn encoded_len(&self) -> usize {
        let mut w = Writer::counter();
        self.write(&mut w);
        w.position()
    }

    /// Appends the TLV with its padding to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut Writer::new(out));
    }

    /// Decodes the parameter `p` found in a message; its type must be one of `Self`'s
    /// and the value must be used up.
    fn from_raw(
        p: &RawParam<'_>,
        unrecognized: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        if !Self::is_type(p.ty) {
            return Err(DecodeError::with_tlv(
                p.offset(),
                DecodeErrorKind::UnexpectedParam { ty: p.ty },
                p.tlv(),
            ));
        }
        p.decode(|r| Self::read_value(p, r, unrecognized))
    }

    /// Decodes one stand-alone TLV (optionally padded); offsets are relative to `tlv`.
    fn decode(tlv: &[u8]) -> Result<Decoded<Self>, DecodeError> {
        let mut r = Reader::new(tlv);
        let mut it = r.params();
        let p = match it.next() {
            Some(p) => p?,
            None => {
                return Err(DecodeError::new(0, DecodeErrorKind::Truncated { need: 4 }));
            }
        };
        let mut unrecognized = Vec::new();
        let msg = Self::from_raw(&p, &mut unrecognized)?;
        if let Some(next) = it.next() {
            let at = next.map_or_else(|e| e.offset, |n| n.offset());
            return Err(DecodeError::new(at, DecodeErrorKind::TrailingBytes));
        }
        Ok(Decoded { msg, unrecognized })
    }
}

/// Handles a parameter the grammar does not expect at this place (spec §3.3):
/// a known mandatory-to-understand type is an error quoting it (cause 0x3); any other type
/// follows its action bits, like an unknown one.
pub(crate) fn other(
    p: &RawParam<'_>,
    unrecognized: &mut Vec<UnknownParam>,
) -> Result<(), DecodeError> {
    let ty = p.ty;
    if ty.is_known() && ty.action() == ParamAction::Stop {
        return Err(DecodeError::with_tlv(
            p.offset(),
            DecodeErrorKind::UnexpectedParam { ty },
            p.tlv(),
        ));
    }
    match ty.action() {
        ParamAction::Stop => Err(DecodeError::silent(
            p.offset(),
            DecodeErrorKind::UnrecognizedParam { ty },
        )),
        ParamAction::StopReport => Err(DecodeError::with_tlv(
            p.offset(),
            DecodeErrorKind::UnrecognizedParam { ty },
            p.tlv(),
        )),
        ParamAction::Skip => Ok(()),
        ParamAction::SkipReport => {
            unrecognized.push(UnknownParam {
                ty,
                value: p.value().into(),
            });
            Ok(())
        }
    }
}

/// Stores a parameter that may occur at most once.
pub(crate) fn once<T>(
    slot: &mut Option<T>,
    p: &RawParam<'_>,
    decode: impl FnOnce() -> Result<T, DecodeError>,
) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::with_tlv(
            p.offset(),
            DecodeErrorKind::DuplicateParam { ty: p.ty },
            p.tlv(),
        ));
    }
    *slot = Some(decode()?);
    Ok(())
}

/// Unwraps a mandatory parameter; `at` is the start of its container.
pub(crate) fn required<T>(slot: Option<T>, at: usize, ty: ParamType) -> Result<T, DecodeError> {
    slot.ok_or_else(|| DecodeError::new(at, DecodeErrorKind::MissingParam { ty }))
}

/// Checks a fixed value length; `why` names the rule (spec §4.1 fixed lengths).
pub(crate) fn fixed_len(
    p: &RawParam<'_>,
    len: usize,
    why: &'static str,
) -> Result<(), DecodeError> {
    if p.value().len() == len {
        Ok(())
    } else {
        Err(p.invalid(p.offset() + 2, why))
    }
}
