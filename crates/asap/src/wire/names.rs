//! Message names as people (and Wireshark's dissectors) call them, for logs and tools.
//! The tshark oracle test (`tests/it/tshark.rs`) checks them against Wireshark's.

use super::{AsapMsg, EnrpMsg, MsgType};

impl MsgType {
    /// The name of this type as an ASAP message, `None` for unknown types.
    pub const fn asap_name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "Registration",
            0x02 => "Deregistration",
            0x03 => "Registration Response",
            0x04 => "Deregistration Response",
            0x05 => "Handle Resolution",
            0x06 => "Handle Resolution Response",
            0x07 => "Endpoint Keep-Alive",
            0x08 => "Endpoint Keep-Alive Acknowledgement",
            0x09 => "Endpoint Unreachable",
            0x0A => "Server Announce",
            0x0B => "Cookie",
            0x0C => "Cookie Echo",
            0x0D => "Business Card",
            0x0E => "Error",
            _ => return None,
        })
    }

    /// The name of this type as an ENRP message, `None` for unknown types.
    pub const fn enrp_name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "Presence",
            0x02 => "Handle Table Request",
            0x03 => "Handle Table Response",
            0x04 => "Handle Update",
            0x05 => "List Request",
            0x06 => "List Response",
            0x07 => "Init Takeover",
            0x08 => "Init Takeover Ack",
            0x09 => "Takeover Server",
            0x0A => "Error",
            _ => return None,
        })
    }
}

impl AsapMsg {
    /// The message's name, e.g. "Handle Resolution Response".
    pub const fn name(&self) -> &'static str {
        match self.msg_type().asap_name() {
            Some(n) => n,
            None => "Unknown",
        }
    }
}

impl EnrpMsg {
    /// The message's name, e.g. "Handle Table Response".
    pub const fn name(&self) -> &'static str {
        match self.msg_type().enrp_name() {
            Some(n) => n,
            None => "Unknown",
        }
    }
}
