//! The answer to a registration or deregistration that fails validation (spec §7.1 step 2,
//! §7.9): its own response message (REGISTRATION_RESPONSE with the R flag set, or
//! DEREGISTRATION_RESPONSE) carrying the error cause, not ASAP_ERROR, which is only for
//! messages that have no response.
//!
//! The response echoes the request's Pool Handle and PE Identifier as they were sent, so
//! that the PE can match it to its request even when they are the invalid values (a
//! 33-byte pool handle, PE ID 0), which the typed [`AsapMsg`](super::AsapMsg) cannot
//! hold: hence bytes, built here from the request's bytes.

use super::MsgType;
use super::limits::MAX_MESSAGE_LEN;
use super::param::{ErrorCause, OperationError, Param, ParamType};
use super::writer::Writer;

/// R flag of ASAP_REGISTRATION_RESPONSE (spec §6.1).
const FLAG_REJECT: u8 = 0x01;

/// The encoded response refusing `request` with `cause`, or `None` when `request` is
/// not a registration or deregistration, when its Pool Handle or PE Identifier cannot be
/// found (a missing parameter: then ASAP_ERROR is all there is), or when the answer would
/// exceed the message limit. `request` is one whole message (the framer's output).
pub fn rejection(request: &[u8], cause: &ErrorCause) -> Option<Vec<u8>> {
    let response = match MsgType(*request.first()?) {
        MsgType::ASAP_REGISTRATION => (MsgType::ASAP_REGISTRATION_RESPONSE, FLAG_REJECT),
        MsgType::ASAP_DEREGISTRATION => (MsgType::ASAP_DEREGISTRATION_RESPONSE, 0),
        _ => return None,
    };
    let mut handle = None;
    let mut pe_id = None;
    for (ty, value) in top_level_params(request)? {
        match ty {
            ParamType::POOL_HANDLE if handle.is_none() => handle = Some(value),
            // Registration: the PE ID is the Pool Element's first field (spec §4.5).
            ParamType::POOL_ELEMENT | ParamType::PE_IDENTIFIER if pe_id.is_none() => {
                pe_id = Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?));
            }
            _ => {}
        }
    }
    let (handle, pe_id) = (handle?, pe_id?);
    let error = OperationError::single(cause.clone());
    let write = |w: &mut Writer<'_>| {
        w.message(response.0.0, response.1, |w| {
            w.param(ParamType::POOL_HANDLE, |w| w.bytes(handle));
            w.param(ParamType::PE_IDENTIFIER, |w| w.u32(pe_id));
            w.param(error.param_type(), |w| error.write_value(w));
        });
    };
    let mut count = Writer::counter();
    write(&mut count);
    if count.position() > MAX_MESSAGE_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(count.position());
    write(&mut Writer::new(&mut out));
    Some(out)
}

/// The message's top-level parameters (type and value), or `None` when its header or a
/// parameter's length is out of bounds.
fn top_level_params(msg: &[u8]) -> Option<Vec<(ParamType, &[u8])>> {
    let len = usize::from(u16::from_be_bytes([*msg.get(2)?, *msg.get(3)?]));
    let body = msg.get(4..len.min(msg.len()))?;
    let mut params = Vec::new();
    let mut at = 0;
    while at + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[at], body[at + 1]]);
        let plen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at.checked_add(plen)?)?;
        params.push((ParamType(ty), value));
        at += plen.max(4).next_multiple_of(4);
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AsapMsg, DecodeError};

    fn hex(s: &str) -> Vec<u8> {
        ::hex::decode(s).expect("hex")
    }

    /// Spec §13.6's registration with PE ID `id` and pool handle param `handle`.
    fn registration(handle: &str, id: &str) -> Vec<u8> {
        let pe =
            format!("000a0028{id}00000000000493e0000500101e610000000100087f0000010008000800000001");
        let body = format!("{handle}{pe}");
        let len = 4 + body.len() / 2;
        hex(&format!("0100{len:04x}{body}"))
    }

    fn cause(err: &DecodeError) -> ErrorCause {
        err.cause().expect("a cause to report")
    }

    #[test]
    fn pe_id_zero_gets_a_registration_response_with_r_and_0x3() {
        let request = registration("0009000c4563686f506f6f6c", "00000000");
        let err = AsapMsg::decode(&request).expect_err("PE ID 0 is invalid");
        let bytes = rejection(&request, &cause(&err)).expect("a response");
        assert_eq!(bytes[0], 0x03, "REGISTRATION_RESPONSE");
        assert_eq!(bytes[1], FLAG_REJECT);
        let params = top_level_params(&bytes).expect("params");
        assert_eq!(params[0], (ParamType::POOL_HANDLE, &b"EchoPool"[..]));
        assert_eq!(params[1], (ParamType::PE_IDENTIFIER, &[0u8; 4][..]));
        // Operation Error: one cause 0x3 quoting the offending Pool Element TLV.
        let (ty, error) = params[2];
        assert_eq!(ty, ParamType::OPERATION_ERROR);
        assert_eq!(&error[..2], &[0, 3]);
        assert_eq!(
            &error[4..6],
            &[0x00, 0x0a],
            "the offending TLV: the Pool Element"
        );
    }

    #[test]
    fn an_overlong_pool_handle_is_echoed_as_sent() {
        let long = format!("00090025{}000000", "61".repeat(33));
        let request = registration(&long, "deadbeef");
        let err = AsapMsg::decode(&request).expect_err("a 33-byte handle is invalid");
        let bytes = rejection(&request, &cause(&err)).expect("a response");
        let params = top_level_params(&bytes).expect("params");
        assert_eq!(params[0], (ParamType::POOL_HANDLE, &[b'a'; 33][..]));
        assert_eq!(
            params[1],
            (ParamType::PE_IDENTIFIER, &[0xde, 0xad, 0xbe, 0xef][..])
        );
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            bytes.len()
        );
    }

    #[test]
    fn a_valid_answer_decodes_as_the_typed_response() {
        // An unknown policy type inside a valid handle and PE ID: the PE library reads it.
        let request = registration("0009000c4563686f506f6f6c", "00000007");
        let bytes =
            rejection(&request, &ErrorCause::InvalidValues(vec![0, 8, 0, 4])).expect("a response");
        match AsapMsg::decode(&bytes).expect("decodes").msg {
            AsapMsg::RegistrationResponse {
                reject: true,
                pe_id,
                error: Some(e),
                ..
            } => {
                assert_eq!(pe_id.get(), 7);
                assert_eq!(e.causes()[0].code(), 0x3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deregistration_gets_its_response_and_others_none() {
        let request = hex("020000180009000c4563686f506f6f6c000e000800000000");
        let bytes = rejection(&request, &ErrorCause::InvalidValues(Vec::new())).expect("some");
        assert_eq!(&bytes[..2], &[0x04, 0x00]);
        // A handle resolution has its own response too, but is not a registration.
        assert_eq!(
            rejection(&hex("05000004"), &ErrorCause::LackOfResources),
            None
        );
        // Without a PE ID there is nothing to echo.
        assert_eq!(
            rejection(
                &hex("010000100009000c4563686f506f6f6c"),
                &ErrorCause::LackOfResources
            ),
            None
        );
    }
}
