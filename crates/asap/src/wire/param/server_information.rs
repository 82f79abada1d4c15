//! Server Information parameter (0x000B). Spec §4.5; RFC 5354 §3.11.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |       Type = 0x000B           |           Length              |
//! +-------------------------------+-------------------------------+
//! |                     Server Identifier                         |
//! +---------------------------------------------------------------+
//! :        Transport param (our profile: TCP, port 9902)          :
//! +---------------------------------------------------------------+
//! ```

use super::{Param, ParamType, ServerId, Transport, UnknownParam};
use crate::wire::error::{DecodeError, DecodeErrorKind};
use crate::wire::reader::{RawParam, Reader};
use crate::wire::writer::Writer;

/// A registrar and where its ENRP endpoint is (spec §4.5). Server ID 0 is rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerInformation {
    /// The registrar's Server ID.
    pub server_id: ServerId,
    /// Its ENRP transport.
    pub transport: Transport,
}

impl Param for ServerInformation {
    fn param_type(&self) -> ParamType {
        ParamType::SERVER_INFORMATION
    }

    fn is_type(ty: ParamType) -> bool {
        ty == ParamType::SERVER_INFORMATION
    }

    fn write_value(&self, w: &mut Writer<'_>) {
        w.u32(self.server_id.get());
        self.transport.write(w);
    }

    fn read_value(
        p: &RawParam<'_>,
        r: &mut Reader<'_>,
        unrecognized: &mut Vec<UnknownParam>,
    ) -> Result<Self, DecodeError> {
        let at = r.offset();
        let server_id = ServerId::new(r.u32()?).ok_or_else(|| p.invalid(at, "server ID 0"))?;
        let mut transport = None;
        for q in r.params() {
            let q = q?;
            if q.ty.is_transport() {
                super::once(&mut transport, &q, || Transport::from_raw(&q, unrecognized))?;
            } else {
                super::other(&q, unrecognized)?;
            }
        }
        let Some(transport) = transport else {
            return Err(DecodeError::new(
                p.offset(),
                DecodeErrorKind::InvalidValue {
                    param: ParamType::SERVER_INFORMATION,
                    why: "no transport",
                },
            ));
        };
        Ok(Self {
            server_id,
            transport,
        })
    }
}
