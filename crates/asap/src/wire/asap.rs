//! ASAP messages (RFC 5352). Spec §6.
//!
//! ```text
//!  0                   1                   2                   3
//! +---------------+---------------+-------------------------------+
//! | Message Type  | Message Flags |        Message Length         |
//! +---------------+---------------+-------------------------------+
//! |  Server ID (Keep-Alive and Server Announce only)              |
//! +---------------------------------------------------------------+
//! :  parameters (TLV, spec §3.2)                                  :
//! +---------------------------------------------------------------+
//! ```
//!
//! Receivers accept parameters in any order but enforce presence and multiplicity
//! (spec §6.1); only where order carries meaning (a Registrant Identity follows its Pool
//! Element) is it enforced. Senders use the order of the spec §6.1 table, with a
//! Namespace parameter first. Undefined flag bits are ignored on receipt and sent as 0.
//!
//! A parameter the message grammar does not expect: a mandatory-to-understand type
//! (0x0001–0x000F) is an error quoting it ([`DecodeErrorKind::UnexpectedParam`], cause
//! 0x3); any other type follows its action bits like an unknown one (spec §3.3), so a
//! Namespace on a response is skipped.

use super::error::{DecodeError, DecodeErrorKind, EncodeError};
use super::limits::MAX_RESOLUTION_PES;
use super::param::{
    self, Cookie, HandleResolutionOption, Hints, Labels, Namespace, OperationError, Param,
    ParamType, PeId, Policy, PoolElement, PoolHandle, RegistrantIdentity, ServerId, Transport,
    UnknownParam,
};
use super::reader::{RawParam, Reader};
use super::writer::Writer;
use super::{Decoded, MsgType, encode_checked, open_message};

/// R flag of ASAP_REGISTRATION_RESPONSE: registration rejected (spec §6.2).
const FLAG_REJECT: u8 = 0x01;
/// H flag of ASAP_ENDPOINT_KEEP_ALIVE: the sender is now the PE's home PR (spec §6.2).
const FLAG_HOME: u8 = 0x01;

/// A Pool Element as a registrar vouches for it: with the identity that registered it,
/// when known (project parameter 0x8101, spec §12.9).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeEntry {
    /// The Pool Element parameter.
    pub pool_element: PoolElement,
    /// The Registrant Identity parameter that follows it, if any.
    pub registrant: Option<RegistrantIdentity>,
}

impl PeEntry {
    fn write(&self, w: &mut Writer<'_>) {
        self.pool_element.write(w);
        if let Some(r) = &self.registrant {
            r.write(w);
        }
    }

    /// As [`Self::write`]; `plain`: without the registrant and serving identities.
    fn write_as(&self, w: &mut Writer<'_>, plain: bool) {
        if plain {
            self.pool_element.write_plain(w);
        } else {
            self.write(w);
        }
    }

    /// The entry as a resolution response carries it; `plain`: without its registrant
    /// and serving identities (what a legacy client is sent).
    pub fn as_sent(&self, plain: bool) -> Self {
        let mut e = self.clone();
        if plain {
            e.registrant = None;
            e.pool_element.serving_identity = None;
        }
        e
    }

    /// The entry's parameters exactly as [`AsapMsg::encode_found`] writes them (`plain`
    /// as there), for [`AsapMsg::encode_found_encoded`]: a registrar answering many
    /// resolutions encodes each entry once, not once per answer (issue 20).
    pub fn encoded_as(&self, plain: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_as(&mut Writer::new(&mut out), plain);
        out
    }

    /// Bytes the entry takes in a resolution response ([`AsapMsg::encode_found`]).
    pub fn encoded_len_as(&self, plain: bool) -> usize {
        let mut w = Writer::counter();
        self.write_as(&mut w, plain);
        w.position()
    }
}

/// The body of an ASAP_HANDLE_RESOLUTION_RESPONSE after its Pool Handle (spec §6.1, §7.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// The pool's PEs chosen by its policy.
    Found {
        /// Overall PE selection policy (the pool's policy, spec §5.3).
        policy: Option<Policy>,
        /// At most [`MAX_RESOLUTION_PES`] PEs, each optionally with its registrant.
        pool_elements: Vec<PeEntry>,
    },
    /// The resolution failed (cause 0x9 for an unknown or hidden pool, spec §7.3).
    Error(OperationError),
}

/// An ASAP message (spec §6.1). Request messages (registration, deregistration, handle
/// resolution, endpoint unreachable) may name a namespace (project parameter 0x8100,
/// spec §12.9); `None` means the identity's default namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsapMsg {
    /// 0x01 ASAP_REGISTRATION: Pool Handle; Pool Element. PE → home PR.
    Registration {
        /// Namespace (0x8100).
        namespace: Option<Namespace>,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// Pool Element (Home ENRP Server ID 0, the registrar overwrites it).
        pool_element: PoolElement,
    },
    /// 0x02 ASAP_DEREGISTRATION: Pool Handle; PE Identifier. PE → home PR.
    Deregistration {
        /// Namespace (0x8100).
        namespace: Option<Namespace>,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// PE Identifier.
        pe_id: PeId,
    },
    /// 0x03 ASAP_REGISTRATION_RESPONSE: Pool Handle; PE Identifier; [Operation Error].
    RegistrationResponse {
        /// R flag: registration rejected.
        reject: bool,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// PE Identifier.
        pe_id: PeId,
        /// Why it was rejected.
        error: Option<OperationError>,
    },
    /// 0x04 ASAP_DEREGISTRATION_RESPONSE: Pool Handle; PE Identifier; [Operation Error].
    DeregistrationResponse {
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// PE Identifier.
        pe_id: PeId,
        /// Why it failed.
        error: Option<OperationError>,
    },
    /// 0x05 ASAP_HANDLE_RESOLUTION: Pool Handle; [Handle Resolution Option]; [Selection
    /// Hints]. PU → PR. Flag bit 0x01 (S bit of old drafts) is ignored and sent as 0
    /// (spec §6.2).
    HandleResolution {
        /// Namespace (0x8100).
        namespace: Option<Namespace>,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// How many PEs the PU wants (0x803F).
        option: Option<HandleResolutionOption>,
        /// The PU's hints for the pool's policy (0x8103, docs/PROTOCOL-EXTENSIONS.md);
        /// empty: none (the parameter is then not sent).
        hints: Labels,
    },
    /// 0x06 ASAP_HANDLE_RESOLUTION_RESPONSE: Pool Handle; then [Policy] and Pool Element ×
    /// n (each optionally followed by a Registrant Identity), or an Operation Error.
    HandleResolutionResponse {
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// PEs or error.
        result: Resolution,
    },
    /// 0x07 ASAP_ENDPOINT_KEEP_ALIVE: Server ID (fixed field); Pool Handle; [PE Identifier].
    EndpointKeepAlive {
        /// H flag: the sender is now the PE's home PR.
        home: bool,
        /// The sending registrar (fixed u32 field before the parameters).
        server_id: ServerId,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// The PE addressed (rsplib extension); absent means every PE under the handle
        /// on this connection.
        pe_id: Option<PeId>,
    },
    /// 0x08 ASAP_ENDPOINT_KEEP_ALIVE_ACK: Pool Handle; PE Identifier. PE → PR.
    EndpointKeepAliveAck {
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// PE Identifier.
        pe_id: PeId,
    },
    /// 0x09 ASAP_ENDPOINT_UNREACHABLE: Pool Handle; PE Identifier. PU → its PR.
    EndpointUnreachable {
        /// Namespace (0x8100).
        namespace: Option<Namespace>,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// The unreachable PE.
        pe_id: PeId,
    },
    /// 0x0A ASAP_SERVER_ANNOUNCE: Server ID (fixed field); transport × 0..n.
    ServerAnnounce {
        /// The announcing registrar.
        server_id: ServerId,
        /// Where it accepts ASAP; empty means the source address and default port.
        transports: Vec<Transport>,
    },
    /// 0x0B ASAP_COOKIE: Cookie. PE → PU.
    Cookie(Cookie),
    /// 0x0C ASAP_COOKIE_ECHO: Cookie. PU → new PE.
    CookieEcho(Cookie),
    /// 0x0D ASAP_BUSINESS_CARD: Pool Handle; [Policy] (rsplib); Pool Element × 1..n.
    BusinessCard {
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// Policy parameter as rsplib sends it; accepted, not required (spec §6.1).
        policy: Option<Policy>,
        /// At least one PE.
        pool_elements: Vec<PoolElement>,
    },
    /// 0x0E ASAP_ERROR: Operation Error.
    Error(OperationError),
}

impl AsapMsg {
    /// The Message Type.
    pub const fn msg_type(&self) -> MsgType {
        match self {
            Self::Registration { .. } => MsgType::ASAP_REGISTRATION,
            Self::Deregistration { .. } => MsgType::ASAP_DEREGISTRATION,
            Self::RegistrationResponse { .. } => MsgType::ASAP_REGISTRATION_RESPONSE,
            Self::DeregistrationResponse { .. } => MsgType::ASAP_DEREGISTRATION_RESPONSE,
            Self::HandleResolution { .. } => MsgType::ASAP_HANDLE_RESOLUTION,
            Self::HandleResolutionResponse { .. } => MsgType::ASAP_HANDLE_RESOLUTION_RESPONSE,
            Self::EndpointKeepAlive { .. } => MsgType::ASAP_ENDPOINT_KEEP_ALIVE,
            Self::EndpointKeepAliveAck { .. } => MsgType::ASAP_ENDPOINT_KEEP_ALIVE_ACK,
            Self::EndpointUnreachable { .. } => MsgType::ASAP_ENDPOINT_UNREACHABLE,
            Self::ServerAnnounce { .. } => MsgType::ASAP_SERVER_ANNOUNCE,
            Self::Cookie(_) => MsgType::ASAP_COOKIE,
            Self::CookieEcho(_) => MsgType::ASAP_COOKIE_ECHO,
            Self::BusinessCard { .. } => MsgType::ASAP_BUSINESS_CARD,
            Self::Error(_) => MsgType::ASAP_ERROR,
        }
    }

    /// Length of the fixed part of an ASAP message of type `ty`: a frame shorter than
    /// this is a framing fault (spec §12.2). Unknown types: the header only.
    pub const fn fixed_len(ty: MsgType) -> usize {
        match ty {
            MsgType::ASAP_ENDPOINT_KEEP_ALIVE | MsgType::ASAP_SERVER_ANNOUNCE => 8,
            _ => 4,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::RegistrationResponse { reject: true, .. } => FLAG_REJECT,
            Self::EndpointKeepAlive { home: true, .. } => FLAG_HOME,
            _ => 0,
        }
    }

    /// Encoded length in bytes (a multiple of 4).
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::counter();
        self.write(&mut w);
        w.position()
    }

    /// Appends the message to `out`. Fails, writing nothing, when the message breaks a
    /// rule its types cannot express: longer than 65532 bytes, more than
    /// [`MAX_RESOLUTION_PES`] PEs in a resolution response, a business card without PEs.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Self::HandleResolutionResponse {
                result: Resolution::Found { pool_elements, .. },
                ..
            } if pool_elements.len() > MAX_RESOLUTION_PES => {
                return Err(EncodeError::Limit {
                    what: "pool elements in a handle resolution response",
                    max: MAX_RESOLUTION_PES,
                });
            }
            Self::BusinessCard { pool_elements, .. } if pool_elements.is_empty() => {
                return Err(EncodeError::Invalid {
                    why: "business card without pool element",
                });
            }
            _ => {}
        }
        encode_checked(out, |w| self.write(w))
    }

    /// Appends the HANDLE_RESOLUTION_RESPONSE that
    /// `HandleResolutionResponse { pool_handle, result: Found { policy, pool_elements } }`
    /// encodes to, from borrowed entries: a registrar answering a resolution copies no
    /// PE (issue 20). `plain`: every entry without its Registrant Identity and its
    /// Serving Identity, as they would be with those set to `None` (a legacy client is
    /// sent neither). Fails, writing nothing, as [`Self::encode`] does.
    pub fn encode_found<E: std::borrow::Borrow<PeEntry>>(
        out: &mut Vec<u8>,
        pool_handle: &PoolHandle,
        policy: Option<&Policy>,
        entries: &[E],
        plain: bool,
    ) -> Result<(), EncodeError> {
        if entries.len() > MAX_RESOLUTION_PES {
            return Err(EncodeError::Limit {
                what: "pool elements in a handle resolution response",
                max: MAX_RESOLUTION_PES,
            });
        }
        encode_checked(out, |w| {
            let ty = MsgType::ASAP_HANDLE_RESOLUTION_RESPONSE.0;
            w.message(ty, 0, |w| {
                pool_handle.write(w);
                write_opt(w, policy);
                for e in entries {
                    e.borrow().write_as(w, plain);
                }
            });
        })
    }

    /// [`Self::encode_found`] from entries already encoded by [`PeEntry::encoded_as`],
    /// taken in order while they fit one message ([`MAX_MESSAGE_LEN`]) and at most
    /// [`MAX_RESOLUTION_PES`] of them: how many it took. The same bytes as
    /// `encode_found` of those entries.
    ///
    /// [`MAX_MESSAGE_LEN`]: super::limits::MAX_MESSAGE_LEN
    pub fn encode_found_encoded<'a>(
        out: &mut Vec<u8>,
        pool_handle: &PoolHandle,
        policy: Option<&Policy>,
        entries: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, EncodeError> {
        let mut taken = 0;
        encode_checked(out, |w| {
            let ty = MsgType::ASAP_HANDLE_RESOLUTION_RESPONSE.0;
            let start = w.position();
            w.message(ty, 0, |w| {
                pool_handle.write(w);
                write_opt(w, policy);
                let mut room = super::limits::MAX_MESSAGE_LEN - (w.position() - start);
                for e in entries.into_iter().take(MAX_RESOLUTION_PES) {
                    // Each entry ends padded to 4, so the message needs no padding after.
                    let Some(left) = room.checked_sub(e.len()) else {
                        break;
                    };
                    room = left;
                    w.bytes(e);
                    taken += 1;
                }
            });
        })?;
        Ok(taken)
    }

    /// The message as a new buffer; see [`Self::encode`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.message(self.msg_type().0, self.flags(), |w| match self {
            Self::Registration {
                namespace,
                pool_handle,
                pool_element,
            } => {
                write_opt(w, namespace.as_ref());
                pool_handle.write(w);
                pool_element.write(w);
            }
            Self::Deregistration {
                namespace,
                pool_handle,
                pe_id,
            }
            | Self::EndpointUnreachable {
                namespace,
                pool_handle,
                pe_id,
            } => {
                write_opt(w, namespace.as_ref());
                pool_handle.write(w);
                pe_id.write(w);
            }
            Self::RegistrationResponse {
                pool_handle,
                pe_id,
                error,
                ..
            }
            | Self::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            } => {
                pool_handle.write(w);
                pe_id.write(w);
                write_opt(w, error.as_ref());
            }
            Self::HandleResolution {
                namespace,
                pool_handle,
                option,
                hints,
            } => {
                write_opt(w, namespace.as_ref());
                pool_handle.write(w);
                write_opt(w, option.as_ref());
                if !hints.is_empty() {
                    w.param(ParamType::SELECTION_HINTS, |w| hints.write_pairs(w));
                }
            }
            Self::HandleResolutionResponse {
                pool_handle,
                result,
            } => {
                pool_handle.write(w);
                match result {
                    Resolution::Found {
                        policy,
                        pool_elements,
                    } => {
                        write_opt(w, policy.as_ref());
                        for e in pool_elements {
                            e.write(w);
                        }
                    }
                    Resolution::Error(e) => e.write(w),
                }
            }
            Self::EndpointKeepAlive {
                server_id,
                pool_handle,
                pe_id,
                ..
            } => {
                w.u32(server_id.get());
                pool_handle.write(w);
                write_opt(w, pe_id.as_ref());
            }
            Self::EndpointKeepAliveAck { pool_handle, pe_id } => {
                pool_handle.write(w);
                pe_id.write(w);
            }
            Self::ServerAnnounce {
                server_id,
                transports,
            } => {
                w.u32(server_id.get());
                for t in transports {
                    t.write(w);
                }
            }
            Self::Cookie(c) | Self::CookieEcho(c) => c.write(w),
            Self::BusinessCard {
                pool_handle,
                policy,
                pool_elements,
            } => {
                pool_handle.write(w);
                write_opt(w, policy.as_ref());
                for pe in pool_elements {
                    pe.write(w);
                }
            }
            Self::Error(e) => e.write(w),
        });
    }

    /// Decodes one whole message (exactly one frame, as cut by the
    /// [`Framer`](super::Framer)). Offsets in errors are relative to `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, DecodeError> {
        let (ty, flags, mut r) = open_message(buf)?;
        let server_id = match ty {
            MsgType::ASAP_ENDPOINT_KEEP_ALIVE | MsgType::ASAP_SERVER_ANNOUNCE => {
                Some(fixed_server_id(&mut r, "server ID")?)
            }
            MsgType(1..=0x0E) => None,
            MsgType(t) => return Err(DecodeError::unknown_message(t, buf)),
        };
        let mut b = Body::default();
        let mut unrecognized = Vec::new();
        b.read(ty, &mut r, &mut unrecognized)?;
        let msg = b.build(ty, flags, server_id)?;
        Ok(Decoded { msg, unrecognized })
    }
}

fn write_opt<P: Param>(w: &mut Writer<'_>, p: Option<&P>) {
    if let Some(p) = p {
        p.write(w);
    }
}

/// Reads a fixed Server ID field: too short is a framing fault (spec §12.2), 0 is invalid.
pub(crate) fn fixed_server_id(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<ServerId, DecodeError> {
    let at = r.offset();
    let v = r.u32().map_err(DecodeError::into_framing)?;
    ServerId::new(v).ok_or_else(|| {
        DecodeError::new(
            at,
            DecodeErrorKind::InvalidField {
                field,
                why: "server ID 0",
            },
        )
    })
}

/// Parameters of an ASAP message as collected; `build` checks presence per type.
#[derive(Default)]
struct Body {
    namespace: Option<Namespace>,
    pool_handle: Option<PoolHandle>,
    pe_id: Option<PeId>,
    error: Option<OperationError>,
    policy: Option<Policy>,
    option: Option<HandleResolutionOption>,
    hints: Option<Hints>,
    cookie: Option<Cookie>,
    pool_elements: Vec<PeEntry>,
    transports: Vec<Transport>,
}

/// Which parameters each ASAP message allows (spec §6.1).
fn allows(ty: MsgType, p: ParamType) -> bool {
    use MsgType as M;
    use ParamType as P;
    match p {
        P::NAMESPACE => matches!(
            ty,
            M::ASAP_REGISTRATION
                | M::ASAP_DEREGISTRATION
                | M::ASAP_HANDLE_RESOLUTION
                | M::ASAP_ENDPOINT_UNREACHABLE
        ),
        P::POOL_HANDLE => !matches!(
            ty,
            M::ASAP_SERVER_ANNOUNCE | M::ASAP_COOKIE | M::ASAP_COOKIE_ECHO | M::ASAP_ERROR
        ),
        P::PE_IDENTIFIER => matches!(
            ty,
            M::ASAP_DEREGISTRATION
                | M::ASAP_REGISTRATION_RESPONSE
                | M::ASAP_DEREGISTRATION_RESPONSE
                | M::ASAP_ENDPOINT_KEEP_ALIVE
                | M::ASAP_ENDPOINT_KEEP_ALIVE_ACK
                | M::ASAP_ENDPOINT_UNREACHABLE
        ),
        P::OPERATION_ERROR => matches!(
            ty,
            M::ASAP_REGISTRATION_RESPONSE
                | M::ASAP_DEREGISTRATION_RESPONSE
                | M::ASAP_HANDLE_RESOLUTION_RESPONSE
                | M::ASAP_ERROR
        ),
        P::POLICY => matches!(
            ty,
            M::ASAP_HANDLE_RESOLUTION_RESPONSE | M::ASAP_BUSINESS_CARD
        ),
        P::HANDLE_RESOLUTION_OPTION | P::SELECTION_HINTS => ty == M::ASAP_HANDLE_RESOLUTION,
        P::COOKIE => matches!(ty, M::ASAP_COOKIE | M::ASAP_COOKIE_ECHO),
        P::POOL_ELEMENT => matches!(
            ty,
            M::ASAP_REGISTRATION | M::ASAP_HANDLE_RESOLUTION_RESPONSE | M::ASAP_BUSINESS_CARD
        ),
        _ if p.is_transport() => ty == M::ASAP_SERVER_ANNOUNCE,
        _ => false,
    }
}

fn unexpected(q: &RawParam<'_>) -> DecodeError {
    DecodeError::with_tlv(
        q.offset(),
        DecodeErrorKind::UnexpectedParam { ty: q.ty },
        q.tlv(),
    )
}

impl Body {
    fn read(
        &mut self,
        ty: MsgType,
        r: &mut Reader<'_>,
        unrecognized: &mut Vec<UnknownParam>,
    ) -> Result<(), DecodeError> {
        let resolution = ty == MsgType::ASAP_HANDLE_RESOLUTION_RESPONSE;
        let mut after_pe = false;
        for q in r.params() {
            let q = q?;
            let was_after_pe = std::mem::take(&mut after_pe);
            if resolution && was_after_pe && q.ty == ParamType::REGISTRANT_IDENTITY {
                let id = RegistrantIdentity::from_raw(&q, unrecognized)?;
                if let Some(last) = self.pool_elements.last_mut() {
                    last.registrant = Some(id);
                }
                continue;
            }
            if !allows(ty, q.ty) {
                param::other(&q, unrecognized)?;
                continue;
            }
            let u = &mut *unrecognized;
            match q.ty {
                ParamType::NAMESPACE => {
                    param::once(&mut self.namespace, &q, || Namespace::from_raw(&q, u))?;
                }
                ParamType::POOL_HANDLE => {
                    param::once(&mut self.pool_handle, &q, || PoolHandle::from_raw(&q, u))?;
                }
                ParamType::PE_IDENTIFIER => {
                    param::once(&mut self.pe_id, &q, || PeId::from_raw(&q, u))?;
                }
                ParamType::OPERATION_ERROR => {
                    // A resolution response carries PEs or an error, not both (spec §6.1).
                    if resolution && (self.policy.is_some() || !self.pool_elements.is_empty()) {
                        return Err(unexpected(&q));
                    }
                    param::once(&mut self.error, &q, || OperationError::from_raw(&q, u))?;
                }
                ParamType::POLICY => {
                    if self.error.is_some() {
                        return Err(unexpected(&q));
                    }
                    param::once(&mut self.policy, &q, || Policy::from_raw(&q, u))?;
                }
                ParamType::HANDLE_RESOLUTION_OPTION => {
                    param::once(&mut self.option, &q, || {
                        HandleResolutionOption::from_raw(&q, u)
                    })?;
                }
                ParamType::SELECTION_HINTS => {
                    param::once(&mut self.hints, &q, || Hints::from_raw(&q, u))?;
                }
                ParamType::COOKIE => {
                    param::once(&mut self.cookie, &q, || Cookie::from_raw(&q, u))?;
                }
                ParamType::POOL_ELEMENT => {
                    if self.error.is_some() {
                        return Err(unexpected(&q));
                    }
                    if ty == MsgType::ASAP_REGISTRATION && !self.pool_elements.is_empty() {
                        return Err(DecodeError::with_tlv(
                            q.offset(),
                            DecodeErrorKind::DuplicateParam { ty: q.ty },
                            q.tlv(),
                        ));
                    }
                    if resolution && self.pool_elements.len() == MAX_RESOLUTION_PES {
                        return Err(DecodeError::with_tlv(
                            q.offset(),
                            DecodeErrorKind::Limit {
                                what: "pool elements in a handle resolution response",
                                max: MAX_RESOLUTION_PES,
                            },
                            q.tlv(),
                        ));
                    }
                    self.pool_elements.push(PeEntry {
                        pool_element: PoolElement::from_raw(&q, u)?,
                        registrant: None,
                    });
                    after_pe = true;
                }
                _ => self.transports.push(Transport::from_raw(&q, u)?),
            }
        }
        Ok(())
    }

    fn build(
        self,
        ty: MsgType,
        flags: u8,
        server_id: Option<ServerId>,
    ) -> Result<AsapMsg, DecodeError> {
        use param::required;
        let handle = |h: Option<PoolHandle>| required(h, 0, ParamType::POOL_HANDLE);
        let pe_id = |p: Option<PeId>| required(p, 0, ParamType::PE_IDENTIFIER);
        let cookie = |c: Option<Cookie>| required(c, 0, ParamType::COOKIE);
        let error = |e: Option<OperationError>| required(e, 0, ParamType::OPERATION_ERROR);
        let server_id = || {
            server_id.ok_or_else(|| {
                DecodeError::new(
                    4,
                    DecodeErrorKind::InvalidField {
                        field: "server ID",
                        why: "missing",
                    },
                )
            })
        };
        let mut pes = self.pool_elements;
        Ok(match ty {
            MsgType::ASAP_REGISTRATION => {
                let pool_handle = handle(self.pool_handle)?;
                let Some(e) = pes.pop() else {
                    return Err(DecodeError::new(
                        0,
                        DecodeErrorKind::MissingParam {
                            ty: ParamType::POOL_ELEMENT,
                        },
                    ));
                };
                AsapMsg::Registration {
                    namespace: self.namespace,
                    pool_handle,
                    pool_element: e.pool_element,
                }
            }
            MsgType::ASAP_DEREGISTRATION => AsapMsg::Deregistration {
                namespace: self.namespace,
                pool_handle: handle(self.pool_handle)?,
                pe_id: pe_id(self.pe_id)?,
            },
            MsgType::ASAP_REGISTRATION_RESPONSE => AsapMsg::RegistrationResponse {
                reject: flags & FLAG_REJECT != 0,
                pool_handle: handle(self.pool_handle)?,
                pe_id: pe_id(self.pe_id)?,
                error: self.error,
            },
            MsgType::ASAP_DEREGISTRATION_RESPONSE => AsapMsg::DeregistrationResponse {
                pool_handle: handle(self.pool_handle)?,
                pe_id: pe_id(self.pe_id)?,
                error: self.error,
            },
            MsgType::ASAP_HANDLE_RESOLUTION => AsapMsg::HandleResolution {
                namespace: self.namespace,
                pool_handle: handle(self.pool_handle)?,
                option: self.option,
                hints: self.hints.map(|h| h.0).unwrap_or_default(),
            },
            MsgType::ASAP_HANDLE_RESOLUTION_RESPONSE => AsapMsg::HandleResolutionResponse {
                pool_handle: handle(self.pool_handle)?,
                result: match self.error {
                    Some(e) => Resolution::Error(e),
                    None => Resolution::Found {
                        policy: self.policy,
                        pool_elements: pes,
                    },
                },
            },
            MsgType::ASAP_ENDPOINT_KEEP_ALIVE => AsapMsg::EndpointKeepAlive {
                home: flags & FLAG_HOME != 0,
                server_id: server_id()?,
                pool_handle: handle(self.pool_handle)?,
                pe_id: self.pe_id,
            },
            MsgType::ASAP_ENDPOINT_KEEP_ALIVE_ACK => AsapMsg::EndpointKeepAliveAck {
                pool_handle: handle(self.pool_handle)?,
                pe_id: pe_id(self.pe_id)?,
            },
            MsgType::ASAP_ENDPOINT_UNREACHABLE => AsapMsg::EndpointUnreachable {
                namespace: self.namespace,
                pool_handle: handle(self.pool_handle)?,
                pe_id: pe_id(self.pe_id)?,
            },
            MsgType::ASAP_SERVER_ANNOUNCE => AsapMsg::ServerAnnounce {
                server_id: server_id()?,
                transports: self.transports,
            },
            MsgType::ASAP_COOKIE => AsapMsg::Cookie(cookie(self.cookie)?),
            MsgType::ASAP_COOKIE_ECHO => AsapMsg::CookieEcho(cookie(self.cookie)?),
            MsgType::ASAP_BUSINESS_CARD => {
                let pool_handle = handle(self.pool_handle)?;
                if pes.is_empty() {
                    return Err(DecodeError::new(
                        0,
                        DecodeErrorKind::MissingParam {
                            ty: ParamType::POOL_ELEMENT,
                        },
                    ));
                }
                AsapMsg::BusinessCard {
                    pool_handle,
                    policy: self.policy,
                    pool_elements: pes.into_iter().map(|e| e.pool_element).collect(),
                }
            }
            _ => AsapMsg::Error(error(self.error)?),
        })
    }
}
