//! Pool Element parameter (0x000A). Spec §4.4; RFC 5354 §3.10.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x000A           |           Length              |
//! +-------------------------------+-------------------------------+
//! |                       PE Identifier                           |
//! +---------------------------------------------------------------+
//! |                 Home ENRP Server Identifier                   |
//! +---------------------------------------------------------------+
//! |                Registration Life (signed, ms)                 |
//! +---------------------------------------------------------------+
//! :   User Transport param (0x3/0x4/0x5/0x6/0x7)                  :
//! :   Pool Member Selection Policy param (0x8)                    :
//! :   ASAP Transport param (optional; only in ENRP messages)      :
//! :   PE Labels param (0x8102, optional; project parameter)       :
//! :   PE Status param (0x8104, optional; project parameter)       :
//! :   Serving Identity param (0x8105, optional; project parameter):
//! +---------------------------------------------------------------+
//! ```

use std::ops::RangeInclusive;

use super::{
    Labels, Param, ParamType, PeId, PeStatus, Policy, ServingIdentity, Transport, UnknownParam,
};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// One pool element: who it is, where it serves, how it is selected (spec §4.4).
///
/// The codec accepts any Registration Life so it can decode what others send; the
/// project range ([`PoolElement::REGISTRATION_LIFE_MS`], spec §4.4, project rule) is the
/// registrar's check ([`PoolElement::registration_life_valid`]), answered with Invalid
/// Values (0x3) quoting this parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolElement {
    /// PE Identifier.
    pub pe_id: PeId,
    /// Home ENRP Server Identifier: 0 in a registration (the registrar overwrites it),
    /// the owner registrar elsewhere.
    pub home_server_id: u32,
    /// Registration Life in milliseconds (signed on the wire).
    pub registration_life: i32,
    /// Where pool users reach the PE.
    pub user_transport: Transport,
    /// Selection policy and the PE's policy values.
    pub policy: Policy,
    /// Where registrars reach the PE's ASAP endpoint (ENRP messages only, spec §12.6).
    pub asap_transport: Option<Transport>,
    /// The PE's labels (project parameter 0x8102, docs/PROTOCOL-EXTENSIONS.md); empty
    /// when it registered none (the parameter is then not sent).
    pub labels: Labels,
    /// Draining, health check (project parameter 0x8104, docs/PROTOCOL-EXTENSIONS.md
    /// §5); the default when it said nothing (the parameter is then not sent).
    pub status: PeStatus,
    /// The identity of the server that terminates the PUs' TLS, when it is not the
    /// registrant's (`rsp pe --advertise`; project parameter 0x8105,
    /// docs/PROTOCOL-EXTENSIONS.md §6). Pool users insist on it when present.
    pub serving_identity: Option<ServingIdentity>,
}

impl PoolElement {
    /// Registration Life the project accepts, in milliseconds (spec §4.4, project rule): values
    /// ≤ 0 ("infinite") and above one day are rejected by registrars.
    pub const REGISTRATION_LIFE_MS: RangeInclusive<i32> = 1_000..=86_400_000;

    /// Whether [`Self::registration_life`] is in [`Self::REGISTRATION_LIFE_MS`].
    pub fn registration_life_valid(&self) -> bool {
        Self::REGISTRATION_LIFE_MS.contains(&self.registration_life)
    }
}

impl PoolElement {
    /// The parameter without its Serving Identity (what a legacy client is sent):
    /// [`crate::wire::AsapMsg::encode_found`].
    pub(crate) fn write_plain(&self, w: &mut Writer<'_>) {
        w.param(ParamType::POOL_ELEMENT, |w| self.write_fields(w, false));
    }

    fn write_fields(&self, w: &mut Writer<'_>, serving: bool) {
        w.u32(self.pe_id.get());
        w.u32(self.home_server_id);
        w.i32(self.registration_life);
        self.user_transport.write(w);
        self.policy.write(w);
        if let Some(t) = &self.asap_transport {
            t.write(w);
        }
        if !self.labels.is_empty() {
            self.labels.write(w);
        }
        if !self.status.is_default() {
            self.status.write(w);
        }
        if serving && let Some(s) = &self.serving_identity {
            s.write(w);
        }
    }
}

impl Param for PoolElement {
    fn param_type(&self) -> ParamType {
        ParamType::POOL_ELEMENT
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::POOL_ELEMENT
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        self.write_fields(w, true);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        unrecognized: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let pe_id = PeId::new(r.u32()?).ok_or_else(|| p.invalid(at, "PE identifier 0"))?;
        let home_server_id = r.u32()?;
        let registration_life = r.i32()?;
        let (mut user, mut asap, mut policy, mut labels, mut status) =
            (None, None, None, None, None);
        let mut serving = None;
        for q in r.params() {
            let q = q?;
            if q.ty.is_transport() {
                // The first transport is the user transport, the second the ASAP
                // transport: only their order tells them apart.
                if user.is_none() {
                    user = Some(Transport::from_raw(&q, unrecognized)?);
                } else {
                    super::once(&mut asap, &q, || Transport::from_raw(&q, unrecognized))?;
                }
            } else if q.ty == ParamType::POLICY {
                super::once(&mut policy, &q, || Policy::from_raw(&q, unrecognized))?;
            } else if q.ty == ParamType::PE_LABELS {
                super::once(&mut labels, &q, || Labels::from_raw(&q, unrecognized))?;
            } else if q.ty == ParamType::SERVING_IDENTITY {
                super::once(&mut serving, &q, || {
                    ServingIdentity::from_raw(&q, unrecognized)
                })?;
            } else if q.ty == ParamType::PE_STATUS {
                super::once(&mut status, &q, || PeStatus::from_raw(&q, unrecognized))?;
            } else {
                super::other(&q, unrecognized)?;
            }
        }
        let Some(user_transport) = user else {
            return Err(DecodeError::new(
                p.offset(),
                DecodeErrorKind::InvalidValue {
                    param: ParamType::POOL_ELEMENT,
                    why: "no user transport",
                },
            ));
        };
        Ok(Self {
            pe_id,
            home_server_id,
            registration_life,
            user_transport,
            policy: super::required(policy, p.offset(), ParamType::POLICY)?,
            asap_transport: asap,
            labels: labels.unwrap_or_default(),
            status: status.unwrap_or_default(),
            serving_identity: serving,
        })
    }
}
