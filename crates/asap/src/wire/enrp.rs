//! ENRP messages (RFC 5353). Spec §8. The ENRP crate uses this codec; it lives here so
//! both protocols share one implementation of the common encoding (spec §3).
//!
//! ```text
//!  0                   1                   2                   3
//! +---------------+---------------+-------------------------------+
//! | Message Type  | Message Flags |        Message Length         |
//! +---------------+---------------+-------------------------------+
//! |                    Sender Server's ID                         |
//! +---------------------------------------------------------------+
//! |                   Receiver Server's ID                        |
//! +---------------------------------------------------------------+
//! :  fixed fields of the type (Update Action, Target Server's ID) :
//! :  parameters (TLV, spec §3.2)                                  :
//! +---------------------------------------------------------------+
//! ```

use super::asap::{PeEntry, fixed_server_id};
use super::error::{DecodeError, DecodeErrorKind, EncodeError};
use super::param::{
    self, Namespace, OperationError, Param, ParamType, PeChecksum, PoolElement, PoolHandle,
    RegistrantIdentity, ServerId, ServerInformation, UnknownParam,
};
use super::reader::Reader;
use super::writer::Writer;
use super::{Decoded, MsgType, encode_checked, open_message};

/// R flag of PRESENCE (reply required), HANDLE_TABLE_RESPONSE and LIST_RESPONSE (reject).
const FLAG_R: u8 = 0x01;
/// W flag of HANDLE_TABLE_REQUEST: own children only.
const FLAG_W: u8 = 0x01;
/// M flag of HANDLE_TABLE_RESPONSE: more to send.
const FLAG_M: u8 = 0x02;

/// Update Action of ENRP_HANDLE_UPDATE (spec §8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// 0: add or update the PE.
    AddPe,
    /// 1: delete the PE.
    DelPe,
}

/// The PEs of one pool in a Handle Table Response (spec §8.1, §9.7, §12.9).
///
/// `namespace` is the effective namespace: the last Namespace parameter before the Pool
/// Handle, or `default` when none came first. The encoder writes a Namespace parameter
/// only where it changes, so consecutive groups of one namespace share it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolEntries {
    /// Namespace the pool belongs to.
    pub namespace: Namespace,
    /// Pool Handle.
    pub pool_handle: PoolHandle,
    /// At least one PE, each optionally with its registrant.
    pub entries: Vec<PeEntry>,
}

/// An ENRP message: the two fixed Server IDs and the type-specific body (spec §8.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnrpMsg {
    /// Sender Server's ID (never 0).
    pub sender: ServerId,
    /// Receiver Server's ID; 0 = unknown / everybody.
    pub receiver: u32,
    /// What the message says.
    pub body: EnrpBody,
}

/// The type-specific part of an ENRP message (spec §8.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EnrpBody {
    /// 0x01 ENRP_PRESENCE: PE Checksum; Server Information.
    Presence {
        /// R flag: the receiver must answer with a PRESENCE.
        reply_required: bool,
        /// Checksum of the PEs the sender owns (spec §9.6).
        checksum: PeChecksum,
        /// The sender's ENRP endpoint; we always send it, and accept its absence
        /// (spec §15 item 9).
        server_info: Option<ServerInformation>,
    },
    /// 0x02 ENRP_HANDLE_TABLE_REQUEST: no parameters (length 12).
    HandleTableRequest {
        /// W flag: only PEs the receiver owns.
        own_children_only: bool,
    },
    /// 0x03 ENRP_HANDLE_TABLE_RESPONSE: repeated ([Namespace], Pool Handle,
    /// (Pool Element, [Registrant Identity]) × 1..n).
    HandleTableResponse {
        /// R flag: request rejected.
        reject: bool,
        /// M flag: more to send.
        more: bool,
        /// The pools.
        pools: Vec<PoolEntries>,
    },
    /// 0x04 ENRP_HANDLE_UPDATE: Update Action, reserved; [Namespace]; Pool Handle; Pool
    /// Element; [Registrant Identity]. The T flag of Dreibholz's draft is ignored. With a
    /// single Pool Element, the Registrant Identity is accepted in any position; the
    /// Namespace is written only when it is not `default`.
    HandleUpdate {
        /// ADD_PE or DEL_PE.
        action: UpdateAction,
        /// Effective namespace (absent on the wire → `default`, spec §12.9).
        namespace: Namespace,
        /// Pool Handle.
        pool_handle: PoolHandle,
        /// The PE.
        pool_element: PoolElement,
        /// Who registered it.
        registrant: Option<RegistrantIdentity>,
    },
    /// 0x05 ENRP_LIST_REQUEST: no parameters (length 12).
    ListRequest,
    /// 0x06 ENRP_LIST_RESPONSE: Server Information × 0..n. On receipt, entries with
    /// Server ID 0 (rsplib's peers known only by address) are skipped.
    ListResponse {
        /// R flag: request rejected.
        reject: bool,
        /// The known peers.
        servers: Vec<ServerInformation>,
    },
    /// 0x07 ENRP_INIT_TAKEOVER: Target Server's ID (length 16).
    InitTakeover {
        /// The registrar being taken over.
        target: ServerId,
    },
    /// 0x08 ENRP_INIT_TAKEOVER_ACK: Target Server's ID (length 16).
    InitTakeoverAck {
        /// The registrar being taken over.
        target: ServerId,
    },
    /// 0x09 ENRP_TAKEOVER_SERVER: Target Server's ID (length 16).
    TakeoverServer {
        /// The registrar taken over.
        target: ServerId,
    },
    /// 0x0A ENRP_ERROR: Operation Error.
    Error(OperationError),
}

impl EnrpMsg {
    /// The Message Type.
    pub const fn msg_type(&self) -> MsgType {
        match self.body {
            EnrpBody::Presence { .. } => MsgType::ENRP_PRESENCE,
            EnrpBody::HandleTableRequest { .. } => MsgType::ENRP_HANDLE_TABLE_REQUEST,
            EnrpBody::HandleTableResponse { .. } => MsgType::ENRP_HANDLE_TABLE_RESPONSE,
            EnrpBody::HandleUpdate { .. } => MsgType::ENRP_HANDLE_UPDATE,
            EnrpBody::ListRequest => MsgType::ENRP_LIST_REQUEST,
            EnrpBody::ListResponse { .. } => MsgType::ENRP_LIST_RESPONSE,
            EnrpBody::InitTakeover { .. } => MsgType::ENRP_INIT_TAKEOVER,
            EnrpBody::InitTakeoverAck { .. } => MsgType::ENRP_INIT_TAKEOVER_ACK,
            EnrpBody::TakeoverServer { .. } => MsgType::ENRP_TAKEOVER_SERVER,
            EnrpBody::Error(_) => MsgType::ENRP_ERROR,
        }
    }

    /// Length of the fixed part of an ENRP message of type `ty` (spec §8.1): a frame
    /// shorter than this is a framing fault (spec §12.2). Unknown types: the header only,
    /// so that they can be answered with Unrecognized Message (spec §3.4).
    pub const fn fixed_len(ty: MsgType) -> usize {
        match ty {
            MsgType::ENRP_HANDLE_UPDATE
            | MsgType::ENRP_INIT_TAKEOVER
            | MsgType::ENRP_INIT_TAKEOVER_ACK
            | MsgType::ENRP_TAKEOVER_SERVER => 16,
            MsgType(1..=0x0A) => 12,
            _ => 4,
        }
    }

    /// True for the types whose length is fixed (spec §8.1): any other length is
    /// discarded with Invalid Values.
    const fn is_fixed_size(ty: MsgType) -> bool {
        matches!(
            ty,
            MsgType::ENRP_HANDLE_TABLE_REQUEST
                | MsgType::ENRP_LIST_REQUEST
                | MsgType::ENRP_INIT_TAKEOVER
                | MsgType::ENRP_INIT_TAKEOVER_ACK
                | MsgType::ENRP_TAKEOVER_SERVER
        )
    }

    fn flags(&self) -> u8 {
        match &self.body {
            EnrpBody::Presence { reply_required, .. } => u8::from(*reply_required) * FLAG_R,
            EnrpBody::HandleTableRequest { own_children_only } => {
                u8::from(*own_children_only) * FLAG_W
            }
            EnrpBody::HandleTableResponse { reject, more, .. } => {
                (u8::from(*reject) * FLAG_R) | (u8::from(*more) * FLAG_M)
            }
            EnrpBody::ListResponse { reject, .. } => u8::from(*reject) * FLAG_R,
            _ => 0,
        }
    }

    /// Encoded length in bytes (a multiple of 4).
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::counter();
        self.write(&mut w);
        w.position()
    }

    /// Appends the message to `out`. Fails, writing nothing, when it would exceed 65532
    /// bytes or a Handle Table Response holds a pool without PEs.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if let EnrpBody::HandleTableResponse { pools, .. } = &self.body
            && pools.iter().any(|p| p.entries.is_empty())
        {
            return Err(EncodeError::Invalid {
                why: "pool without pool element in a handle table response",
            });
        }
        encode_checked(out, |w| self.write(w))
    }

    /// The message as a new buffer; see [`Self::encode`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.message(self.msg_type().0, self.flags(), |w| {
            w.u32(self.sender.get());
            w.u32(self.receiver);
            match &self.body {
                EnrpBody::Presence {
                    checksum,
                    server_info,
                    ..
                } => {
                    checksum.write(w);
                    if let Some(s) = server_info {
                        s.write(w);
                    }
                }
                EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
                EnrpBody::HandleTableResponse { pools, .. } => {
                    let mut current = Namespace::default_namespace();
                    for p in pools {
                        if p.namespace != current {
                            p.namespace.write(w);
                            current = p.namespace.clone();
                        }
                        p.pool_handle.write(w);
                        for e in &p.entries {
                            e.pool_element.write(w);
                            if let Some(r) = &e.registrant {
                                r.write(w);
                            }
                        }
                    }
                }
                EnrpBody::HandleUpdate {
                    action,
                    namespace,
                    pool_handle,
                    pool_element,
                    registrant,
                } => {
                    w.u16(match action {
                        UpdateAction::AddPe => 0,
                        UpdateAction::DelPe => 1,
                    });
                    w.u16(0);
                    if !namespace.is_default() {
                        namespace.write(w);
                    }
                    pool_handle.write(w);
                    pool_element.write(w);
                    if let Some(r) = registrant {
                        r.write(w);
                    }
                }
                EnrpBody::ListResponse { servers, .. } => {
                    for s in servers {
                        s.write(w);
                    }
                }
                EnrpBody::InitTakeover { target }
                | EnrpBody::InitTakeoverAck { target }
                | EnrpBody::TakeoverServer { target } => w.u32(target.get()),
                EnrpBody::Error(e) => e.write(w),
            }
        });
    }

    /// Decodes one whole message (exactly one frame). Offsets in errors are relative to
    /// `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, DecodeError> {
        let (ty, flags, mut r) = open_message(buf)?;
        if !matches!(ty, MsgType(1..=0x0A)) {
            return Err(DecodeError::unknown_message(ty.0, buf));
        }
        if buf.len() < Self::fixed_len(ty) {
            return Err(DecodeError::framing(
                0,
                DecodeErrorKind::Truncated {
                    need: Self::fixed_len(ty),
                },
            ));
        }
        if Self::is_fixed_size(ty) && buf.len() > Self::fixed_len(ty) {
            // Spec §8.1 [P]: discard and answer Invalid Values.
            return Err(DecodeError::new(
                Self::fixed_len(ty),
                DecodeErrorKind::TrailingBytes,
            ));
        }
        let sender = fixed_server_id(&mut r, "sender server ID")?;
        let receiver = r.u32()?;
        let mut unrecognized = Vec::new();
        let body = read_body(ty, flags, &mut r, &mut unrecognized)?;
        Ok(Decoded {
            msg: Self {
                sender,
                receiver,
                body,
            },
            unrecognized,
        })
    }
}

fn target(r: &mut Reader<'_>) -> Result<ServerId, DecodeError> {
    fixed_server_id(r, "target server ID")
}

fn read_body(
    ty: MsgType,
    flags: u8,
    r: &mut Reader<'_>,
    u: &mut Vec<UnknownParam>,
) -> Result<EnrpBody, DecodeError> {
    Ok(match ty {
        MsgType::ENRP_PRESENCE => {
            let (mut checksum, mut server_info) = (None, None);
            for q in r.params() {
                let q = q?;
                match q.ty {
                    ParamType::PE_CHECKSUM => {
                        param::once(&mut checksum, &q, || PeChecksum::from_raw(&q, u))?;
                    }
                    ParamType::SERVER_INFORMATION => {
                        param::once(&mut server_info, &q, || ServerInformation::from_raw(&q, u))?
                    }
                    _ => param::other(&q, u)?,
                }
            }
            EnrpBody::Presence {
                reply_required: flags & FLAG_R != 0,
                checksum: param::required(checksum, 0, ParamType::PE_CHECKSUM)?,
                server_info,
            }
        }
        MsgType::ENRP_HANDLE_TABLE_REQUEST => EnrpBody::HandleTableRequest {
            own_children_only: flags & FLAG_W != 0,
        },
        MsgType::ENRP_HANDLE_TABLE_RESPONSE => EnrpBody::HandleTableResponse {
            reject: flags & FLAG_R != 0,
            more: flags & FLAG_M != 0,
            pools: read_pools(r, u)?,
        },
        MsgType::ENRP_HANDLE_UPDATE => {
            let at = r.offset();
            let action = match r.u16()? {
                0 => UpdateAction::AddPe,
                1 => UpdateAction::DelPe,
                _ => {
                    return Err(DecodeError::new(
                        at,
                        DecodeErrorKind::InvalidField {
                            field: "update action",
                            why: "neither ADD_PE (0) nor DEL_PE (1)",
                        },
                    ));
                }
            };
            r.u16()?; // Reserved: sent as 0, ignored on receipt.
            let (mut ns, mut handle, mut pe, mut registrant) = (None, None, None, None);
            for q in r.params() {
                let q = q?;
                match q.ty {
                    ParamType::NAMESPACE => {
                        param::once(&mut ns, &q, || Namespace::from_raw(&q, u))?;
                    }
                    ParamType::POOL_HANDLE => {
                        param::once(&mut handle, &q, || PoolHandle::from_raw(&q, u))?;
                    }
                    ParamType::POOL_ELEMENT => {
                        param::once(&mut pe, &q, || PoolElement::from_raw(&q, u))?;
                    }
                    ParamType::REGISTRANT_IDENTITY => {
                        param::once(&mut registrant, &q, || RegistrantIdentity::from_raw(&q, u))?
                    }
                    _ => param::other(&q, u)?,
                }
            }
            EnrpBody::HandleUpdate {
                action,
                namespace: ns.unwrap_or_else(Namespace::default_namespace),
                pool_handle: param::required(handle, 0, ParamType::POOL_HANDLE)?,
                pool_element: param::required(pe, 0, ParamType::POOL_ELEMENT)?,
                registrant,
            }
        }
        MsgType::ENRP_LIST_REQUEST => EnrpBody::ListRequest,
        MsgType::ENRP_LIST_RESPONSE => {
            let mut servers = Vec::new();
            for q in r.params() {
                let q = q?;
                if q.ty == ParamType::SERVER_INFORMATION {
                    // rsplib lists peers it knows only by a configured address with
                    // Server ID 0 (not yet identified). Such an entry names nobody, and
                    // our peers are configured and authenticated anyway: skip it rather
                    // than reject the whole list.
                    if q.value().get(..4) == Some(&[0; 4]) {
                        continue;
                    }
                    servers.push(ServerInformation::from_raw(&q, u)?);
                } else {
                    param::other(&q, u)?;
                }
            }
            EnrpBody::ListResponse {
                reject: flags & FLAG_R != 0,
                servers,
            }
        }
        MsgType::ENRP_INIT_TAKEOVER => EnrpBody::InitTakeover { target: target(r)? },
        MsgType::ENRP_INIT_TAKEOVER_ACK => EnrpBody::InitTakeoverAck { target: target(r)? },
        MsgType::ENRP_TAKEOVER_SERVER => EnrpBody::TakeoverServer { target: target(r)? },
        _ => {
            let mut error = None;
            for q in r.params() {
                let q = q?;
                if q.ty == ParamType::OPERATION_ERROR {
                    param::once(&mut error, &q, || OperationError::from_raw(&q, u))?;
                } else {
                    param::other(&q, u)?;
                }
            }
            EnrpBody::Error(param::required(error, 0, ParamType::OPERATION_ERROR)?)
        }
    })
}

/// The groups of a Handle Table Response (spec §8.1, §9.7, §12.9): a Namespace applies
/// to the groups after it; a Registrant Identity belongs to the Pool Element just before.
fn read_pools(
    r: &mut Reader<'_>,
    u: &mut Vec<UnknownParam>,
) -> Result<Vec<PoolEntries>, DecodeError> {
    let mut namespace = Namespace::default_namespace();
    let mut pools: Vec<PoolEntries> = Vec::new();
    let mut group_at = 0;
    let mut after_pe = false;
    let empty_group = |at| {
        DecodeError::new(
            at,
            DecodeErrorKind::MissingParam {
                ty: ParamType::POOL_ELEMENT,
            },
        )
    };
    for q in r.params() {
        let q = q?;
        let was_after_pe = std::mem::take(&mut after_pe);
        match q.ty {
            ParamType::NAMESPACE => namespace = Namespace::from_raw(&q, u)?,
            ParamType::POOL_HANDLE => {
                if pools.last().is_some_and(|p| p.entries.is_empty()) {
                    return Err(empty_group(group_at));
                }
                group_at = q.offset();
                pools.push(PoolEntries {
                    namespace: namespace.clone(),
                    pool_handle: PoolHandle::from_raw(&q, u)?,
                    entries: Vec::new(),
                });
            }
            ParamType::POOL_ELEMENT => {
                let Some(pool) = pools.last_mut() else {
                    return Err(DecodeError::new(
                        q.offset(),
                        DecodeErrorKind::MissingParam {
                            ty: ParamType::POOL_HANDLE,
                        },
                    ));
                };
                pool.entries.push(PeEntry {
                    pool_element: PoolElement::from_raw(&q, u)?,
                    registrant: None,
                });
                after_pe = true;
            }
            ParamType::REGISTRANT_IDENTITY if was_after_pe => {
                let id = RegistrantIdentity::from_raw(&q, u)?;
                if let Some(e) = pools.last_mut().and_then(|p| p.entries.last_mut()) {
                    e.registrant = Some(id);
                }
            }
            _ => param::other(&q, u)?,
        }
    }
    if pools.last().is_some_and(|p| p.entries.is_empty()) {
        return Err(empty_group(group_at));
    }
    Ok(pools)
}
