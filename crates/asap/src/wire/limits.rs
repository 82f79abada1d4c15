//! Robustness limits of the decoder (spec §3.5), and where each is enforced. The codec
//! enforces the fixed ones; the per-connection maximum message size is a [`Framer`]
//! setting.
//!
//! [`Framer`]: super::Framer

/// Largest message: Message Length is a u16 and a multiple of 4 (spec §3.1, §3.5).
/// Enforced by the header check of every `decode` and by `encode`
/// ([`EncodeError::TooLong`](super::EncodeError::TooLong)).
pub const MAX_MESSAGE_LEN: usize = 65532;

/// Default per-connection maximum for incoming messages (spec §3.5: "64 KiB incoming",
/// which the u16 Message Length caps at [`MAX_MESSAGE_LEN`]). Passed to
/// [`Framer::asap`](super::Framer::asap) / [`Framer::enrp`](super::Framer::enrp).
pub const DEFAULT_MAX_INCOMING: usize = MAX_MESSAGE_LEN;

/// Maximum a registrar may set for pool user connections (spec §3.5: 16 KiB); a
/// [`Framer`](super::Framer) setting.
pub const PU_MAX_INCOMING: usize = 16 * 1024;

/// Deepest parameter nesting accepted (spec §3.2, §3.5): Pool Element → transport →
/// address is 3; Operation Error → cause → quoted TLV is the other deep path. Enforced by
/// the TLV iterator ([`Reader::params`](super::Reader::params)).
pub const MAX_NESTING: usize = 4;

/// Addresses in one SCTP transport parameter (spec §3.5, §4.3; rsplib allows 64).
/// Enforced by [`SctpAddresses::new`](super::param::SctpAddresses::new) and the transport
/// decoder.
pub const MAX_SCTP_ADDRESSES: usize = 16;

/// Pool Element parameters in one Handle Resolution Response (spec §3.5; rsplib's limit).
/// Enforced by `AsapMsg::decode` and `AsapMsg::encode`.
pub const MAX_RESOLUTION_PES: usize = 128;

/// Largest Cookie value (spec §3.5, threat T-16). Enforced by
/// [`Cookie::new`](super::param::Cookie::new) and the cookie decoder.
pub const MAX_COOKIE_LEN: usize = 4096;

/// Largest pool handle (spec §3.5; rsplib `MAX_POOLHANDLESIZE`). Enforced by
/// [`PoolHandle::new`](super::param::PoolHandle::new) and the pool handle decoder.
pub const MAX_POOL_HANDLE_LEN: usize = super::param::PoolHandle::MAX_LEN;

/// Namespace name length (spec §12.9). Enforced by
/// [`Namespace::new`](super::param::Namespace::new) and the namespace decoder.
pub const MAX_NAMESPACE_LEN: usize = identity::MAX_NAMESPACE_LEN;

/// Registrant Identity length (spec §12.9). Enforced by
/// [`RegistrantIdentity::new`](super::param::RegistrantIdentity::new) and its decoder.
pub const MAX_REGISTRANT_IDENTITY_LEN: usize = 2048;

/// Largest Unrecognized Message cause info (spec §3.4): an ENRP_ERROR reply is 12 bytes
/// of header, 4 of Operation Error and 4 of cause, and must stay within
/// [`MAX_MESSAGE_LEN`]. ASAP replies have 8 bytes less overhead; one bound serves both.
/// Applied by [`DecodeError::cause`](super::DecodeError::cause).
pub const MAX_UNRECOGNIZED_MESSAGE_INFO: usize = MAX_MESSAGE_LEN - 20;
