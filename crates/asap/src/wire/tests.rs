//! Codec tests: the spec §13.6 vectors both ways, one negative vector per error kind,
//! and property tests (round trip, no panic on any input, framing under any split).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU16;

use super::param::{
    Address, Cookie, ErrorCause, HandleResolutionOption, Labels, MAX_LABELS,
    MAX_PRIVATE_POLICY_VALUE_LEN, Namespace, OperationError, Param, ParamAction, ParamType,
    PeChecksum, PeId, Policy, PolicyType, PoolElement, PoolHandle, RegistrantIdentity,
    SctpAddresses, ServerId, ServerInformation, Transport, TransportUse, UnknownParam,
};
use super::{
    AsapMsg, DecodeError, DecodeErrorKind, EncodeError, EnrpBody, EnrpMsg, Framer, PeEntry,
    PoolEntries, Reader, Resolution, UpdateAction, limits,
};

fn hex(s: &str) -> Vec<u8> {
    ::hex::decode(s).expect("test hex")
}

fn to_hex(b: &[u8]) -> String {
    ::hex::encode(b)
}

// The §13.6 values: pool handle "EchoPool", PE ID 0xDEADBEEF, PR IDs 0x11223344 /
// 0x55667788, TCP user transport 127.0.0.1:7777.

fn echo() -> PoolHandle {
    PoolHandle::new("EchoPool").expect("valid handle")
}

fn pe_id() -> PeId {
    PeId::new(0xDEAD_BEEF).expect("non-zero")
}

fn sid(v: u32) -> ServerId {
    ServerId::new(v).expect("non-zero")
}

fn port(p: u16) -> NonZeroU16 {
    NonZeroU16::new(p).expect("non-zero")
}

fn tcp(p: u16) -> Transport {
    Transport::Tcp {
        port: port(p),
        transport_use: TransportUse::DataOnly,
        addr: Address::new(Ipv4Addr::LOCALHOST),
    }
}

fn pe(home: u32, asap: Option<Transport>) -> PoolElement {
    PoolElement {
        pe_id: pe_id(),
        home_server_id: home,
        registration_life: 300_000,
        user_transport: tcp(7777),
        policy: Policy::RoundRobin,
        asap_transport: asap,
        labels: Default::default(),
        status: Default::default(),
        serving_identity: None,
    }
}

fn enrp(sender: u32, receiver: u32, body: EnrpBody) -> EnrpMsg {
    EnrpMsg {
        sender: sid(sender),
        receiver,
        body,
    }
}

#[derive(Debug)]
enum Expect {
    Asap(AsapMsg),
    Enrp(EnrpMsg),
}

/// Spec §13.6, one row per vector: name, bytes, typed value.
fn vectors() -> Vec<(&'static str, &'static str, Expect)> {
    use Expect::{Asap, Enrp};
    const A: u32 = 0x1122_3344;
    const B: u32 = 0x5566_7788;
    const T: u32 = 0x99AA_BBCC;
    vec![
        (
            "ASAP REGISTRATION",
            "010000380009000c4563686f506f6f6c000a0028deadbeef00000000000493e0000500101e610000000100087f0000010008000800000001",
            Asap(AsapMsg::Registration {
                namespace: None,
                pool_handle: echo(),
                pool_element: pe(0, None),
            }),
        ),
        (
            "ASAP DEREGISTRATION",
            "020000180009000c4563686f506f6f6c000e0008deadbeef",
            Asap(AsapMsg::Deregistration {
                namespace: None,
                pool_handle: echo(),
                pe_id: pe_id(),
            }),
        ),
        (
            "ASAP REGISTRATION_RESPONSE accept",
            "030000180009000c4563686f506f6f6c000e0008deadbeef",
            Asap(AsapMsg::RegistrationResponse {
                reject: false,
                pool_handle: echo(),
                pe_id: pe_id(),
                error: None,
            }),
        ),
        (
            "ASAP REGISTRATION_RESPONSE reject",
            "030100200009000c4563686f506f6f6c000e0008deadbeef000c000800040004",
            Asap(AsapMsg::RegistrationResponse {
                reject: true,
                pool_handle: echo(),
                pe_id: pe_id(),
                error: Some(ErrorCause::NonUniquePeId.into()),
            }),
        ),
        (
            "ASAP DEREGISTRATION_RESPONSE",
            "040000180009000c4563686f506f6f6c000e0008deadbeef",
            Asap(AsapMsg::DeregistrationResponse {
                pool_handle: echo(),
                pe_id: pe_id(),
                error: None,
            }),
        ),
        (
            "ASAP HANDLE_RESOLUTION",
            "050000100009000c4563686f506f6f6c",
            Asap(AsapMsg::HandleResolution {
                namespace: None,
                pool_handle: echo(),
                option: None,
                hints: Default::default(),
            }),
        ),
        (
            "ASAP HANDLE_RESOLUTION_RESPONSE (1 PE)",
            "060000400009000c4563686f506f6f6c0008000800000001000a0028deadbeef11223344000493e0000500101e610000000100087f0000010008000800000001",
            Asap(AsapMsg::HandleResolutionResponse {
                pool_handle: echo(),
                result: Resolution::Found {
                    policy: Some(Policy::RoundRobin),
                    pool_elements: vec![PeEntry {
                        pool_element: pe(A, None),
                        registrant: None,
                    }],
                },
            }),
        ),
        (
            "ASAP HANDLE_RESOLUTION_RESPONSE unknown pool",
            "060000180009000c4563686f506f6f6c000c000800090004",
            Asap(AsapMsg::HandleResolutionResponse {
                pool_handle: echo(),
                result: Resolution::Error(ErrorCause::UnknownPoolHandle.into()),
            }),
        ),
        (
            "ASAP ENDPOINT_KEEP_ALIVE H=1",
            "07010014112233440009000c4563686f506f6f6c",
            Asap(AsapMsg::EndpointKeepAlive {
                home: true,
                server_id: sid(A),
                pool_handle: echo(),
                pe_id: None,
            }),
        ),
        (
            "ASAP ENDPOINT_KEEP_ALIVE_ACK",
            "080000180009000c4563686f506f6f6c000e0008deadbeef",
            Asap(AsapMsg::EndpointKeepAliveAck {
                pool_handle: echo(),
                pe_id: pe_id(),
            }),
        ),
        (
            "ASAP ENDPOINT_UNREACHABLE",
            "090000180009000c4563686f506f6f6c000e0008deadbeef",
            Asap(AsapMsg::EndpointUnreachable {
                namespace: None,
                pool_handle: echo(),
                pe_id: pe_id(),
            }),
        ),
        (
            "ASAP SERVER_ANNOUNCE",
            "0a00001811223344000500100f180000000100087f000001",
            Asap(AsapMsg::ServerAnnounce {
                server_id: sid(A),
                transports: vec![tcp(3864)],
            }),
        ),
        (
            "ASAP COOKIE",
            "0b000014000d00106f70617175652d7374617465",
            Asap(AsapMsg::Cookie(Cookie::new("opaque-state").expect("small"))),
        ),
        (
            "ASAP COOKIE_ECHO",
            "0c000014000d00106f70617175652d7374617465",
            Asap(AsapMsg::CookieEcho(
                Cookie::new("opaque-state").expect("small"),
            )),
        ),
        (
            "ASAP BUSINESS_CARD",
            "0d0000380009000c4563686f506f6f6c000a0028deadbeef11223344000493e0000500101e610000000100087f0000010008000800000001",
            Asap(AsapMsg::BusinessCard {
                pool_handle: echo(),
                policy: None,
                pool_elements: vec![pe(A, None)],
            }),
        ),
        (
            "ASAP ERROR unrecognised param 0x4ABC",
            "0e000014000c00100001000c4abc000801020304",
            Asap(AsapMsg::Error(
                ErrorCause::UnrecognizedParameter(hex("4abc000801020304")).into(),
            )),
        ),
        (
            "ENRP PRESENCE R=1",
            "0101002c1122334455667788000f0006abcd0000000b0018112233440005001026ae0000000100087f000001",
            Enrp(enrp(
                A,
                B,
                EnrpBody::Presence {
                    reply_required: true,
                    checksum: PeChecksum(0xABCD),
                    server_info: Some(ServerInformation {
                        server_id: sid(A),
                        transport: tcp(9902),
                    }),
                },
            )),
        ),
        (
            "ENRP HANDLE_TABLE_REQUEST W=1",
            "0201000c1122334455667788",
            Enrp(enrp(
                A,
                B,
                EnrpBody::HandleTableRequest {
                    own_children_only: true,
                },
            )),
        ),
        (
            "ENRP HANDLE_TABLE_RESPONSE M=1",
            "0302005055667788112233440009000c4563686f506f6f6c000a0038deadbeef11223344000493e0000500101e610000000100087f000001000800080000000100050010a0280000000100087f000001",
            Enrp(enrp(
                B,
                A,
                EnrpBody::HandleTableResponse {
                    reject: false,
                    more: true,
                    pools: vec![PoolEntries {
                        namespace: Namespace::default_namespace(),
                        pool_handle: echo(),
                        entries: vec![PeEntry {
                            pool_element: pe(A, Some(tcp(41000))),
                            registrant: None,
                        }],
                    }],
                },
            )),
        ),
        (
            "ENRP HANDLE_UPDATE ADD_PE",
            "040000541122334455667788000000000009000c4563686f506f6f6c000a0038deadbeef11223344000493e0000500101e610000000100087f000001000800080000000100050010a0280000000100087f000001",
            Enrp(enrp(
                A,
                B,
                EnrpBody::HandleUpdate {
                    action: UpdateAction::AddPe,
                    namespace: Namespace::default_namespace(),
                    pool_handle: echo(),
                    pool_element: pe(A, Some(tcp(41000))),
                    registrant: None,
                },
            )),
        ),
        (
            "ENRP LIST_REQUEST",
            "0500000c1122334455667788",
            Enrp(enrp(A, B, EnrpBody::ListRequest)),
        ),
        (
            "ENRP LIST_RESPONSE",
            "060000245566778811223344000b001899aabbcc0005001026ae0000000100087f000001",
            Enrp(enrp(
                B,
                A,
                EnrpBody::ListResponse {
                    reject: false,
                    servers: vec![ServerInformation {
                        server_id: sid(T),
                        transport: tcp(9902),
                    }],
                },
            )),
        ),
        (
            "ENRP INIT_TAKEOVER",
            "07000010112233445566778899aabbcc",
            Enrp(enrp(A, B, EnrpBody::InitTakeover { target: sid(T) })),
        ),
        (
            "ENRP INIT_TAKEOVER_ACK",
            "08000010556677881122334499aabbcc",
            Enrp(enrp(B, A, EnrpBody::InitTakeoverAck { target: sid(T) })),
        ),
        (
            "ENRP TAKEOVER_SERVER",
            "09000010112233445566778899aabbcc",
            Enrp(enrp(A, B, EnrpBody::TakeoverServer { target: sid(T) })),
        ),
        (
            "ENRP ERROR unrecognised message",
            "0a0000181122334455667788000c000c000200087f000004",
            Enrp(enrp(
                A,
                B,
                EnrpBody::Error(ErrorCause::UnrecognizedMessage(hex("7f000004")).into()),
            )),
        ),
    ]
}

// Spec §13.6: every known-good vector decodes to its value and re-encodes byte for byte.
#[test]
fn spec_13_6_vectors_both_ways() {
    let rows = vectors();
    assert_eq!(rows.len(), 26);
    for (name, h, expect) in rows {
        let bytes = hex(h);
        match expect {
            Expect::Asap(m) => {
                let d = AsapMsg::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(d.msg, m, "{name}: decode");
                assert!(d.unrecognized.is_empty(), "{name}");
                let enc = m.to_bytes().unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(to_hex(&enc), h, "{name}: encode");
                assert_eq!(m.encoded_len(), bytes.len(), "{name}: encoded_len");
            }
            Expect::Enrp(m) => {
                let d = EnrpMsg::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(d.msg, m, "{name}: decode");
                assert!(d.unrecognized.is_empty(), "{name}");
                let enc = m.to_bytes().unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(to_hex(&enc), h, "{name}: encode");
                assert_eq!(m.encoded_len(), bytes.len(), "{name}: encoded_len");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Negative vectors: one (at least) per DecodeErrorKind, checking kind, offset and reply.

/// ASAP_HANDLE_RESOLUTION for "EchoPool" followed by `extra` parameter bytes.
fn resolution_with(extra: &str) -> Vec<u8> {
    let mut b = hex(&format!("05000000 0009000c 4563686f506f6f6c {extra}").replace(' ', ""));
    let len = u16::try_from(b.len()).expect("small");
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b
}

fn asap_err(bytes: &[u8]) -> DecodeError {
    match AsapMsg::decode(bytes) {
        Ok(d) => panic!("decoded {:?}", d.msg),
        Err(e) => e,
    }
}

fn enrp_err(bytes: &[u8]) -> DecodeError {
    match EnrpMsg::decode(bytes) {
        Ok(d) => panic!("decoded {:?}", d.msg),
        Err(e) => e,
    }
}

#[test]
fn truncated_header_is_a_framing_fault() {
    let e = asap_err(&hex("010000"));
    assert_eq!(e.kind, DecodeErrorKind::Truncated { need: 4 });
    assert_eq!(e.offset, 0);
    assert!(e.is_framing());
    assert_eq!(e.cause(), None);
}

#[test]
fn truncated_frame_shorter_than_its_length() {
    let e = asap_err(&hex("050000100009000c4563686f"));
    assert_eq!(e.kind, DecodeErrorKind::Truncated { need: 16 });
    assert!(e.is_framing());
}

// Spec §12.2: a Keep-Alive of length 4 has no room for its Server ID: framing fault.
#[test]
fn truncated_fixed_part_is_a_framing_fault() {
    let e = asap_err(&hex("07000004"));
    assert_eq!(e.kind, DecodeErrorKind::Truncated { need: 4 });
    assert_eq!(e.offset, 4);
    assert!(e.is_framing());
    let e = enrp_err(&hex("070000101122334455667788"));
    assert!(e.is_framing(), "{e}");
}

// A Pool Element too short for its fixed fields: Invalid Values quoting it.
#[test]
fn truncated_inside_a_parameter_is_invalid_values() {
    let b = hex("01000018 0009000c 4563686f506f6f6c 000a0008 deadbeef"
        .replace(' ', "")
        .as_str());
    let e = asap_err(&b);
    assert_eq!(e.kind, DecodeErrorKind::Truncated { need: 4 });
    assert_eq!(e.offset, 24);
    assert_eq!(
        e.cause(),
        Some(ErrorCause::InvalidValues(hex("000a0008deadbeef")))
    );
}

// Spec §3.1: Message Length below 4 or not a multiple of 4.
#[test]
fn bad_message_length() {
    for l in ["0500 0002", "0500 0006"] {
        let b = hex(&format!("{l}00000000").replace(' ', ""));
        let e = asap_err(&b);
        assert!(matches!(e.kind, DecodeErrorKind::BadLength { .. }), "{e}");
        assert_eq!(e.offset, 2);
        assert_eq!(e.cause(), None);
    }
}

// Spec §3.2: Parameter Length below 4.
#[test]
fn bad_parameter_length() {
    let e = asap_err(&resolution_with("00010002"));
    assert_eq!(e.kind, DecodeErrorKind::BadLength { len: 2 });
    assert_eq!(e.offset, 18);
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(hex("00010002"))));
}

// Spec §3.2: a parameter running past the message.
#[test]
fn parameter_past_container() {
    let b = hex("050000100009001c4563686f506f6f6c");
    let e = asap_err(&b);
    assert_eq!(e.kind, DecodeErrorKind::PastContainer);
    assert_eq!(e.offset, 4);
    // The quoted bytes stop at the message end.
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(b[4..].to_vec())));
}

// An address running past its transport (inner container).
#[test]
fn parameter_past_inner_container() {
    let b = hex("0a00001811223344000500100f180000000100107f000001");
    let e = asap_err(&b);
    assert_eq!(e.kind, DecodeErrorKind::PastContainer);
    assert_eq!(e.offset, 16);
}

// Spec §3.5: nesting deeper than 4. No message grammar nests that deep, so the Reader
// is checked directly.
#[test]
fn too_deep() {
    let mut tlv = hex("80010004");
    for _ in 0..4 {
        let len = u16::try_from(tlv.len() + 4).expect("small");
        let mut outer = vec![0x80, 0x01];
        outer.extend_from_slice(&len.to_be_bytes());
        outer.extend_from_slice(&tlv);
        tlv = outer;
    }
    fn descend(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
        let mut n = 0;
        for p in r.params() {
            let p = p?;
            n = 1 + descend(&mut p.reader())?;
        }
        Ok(n)
    }
    let e = descend(&mut Reader::new(&tlv)).expect_err("5 levels");
    assert_eq!(e.kind, DecodeErrorKind::TooDeep);
    assert_eq!(e.offset, 16);
    // Four levels are fine.
    assert_eq!(descend(&mut Reader::new(&tlv[4..])), Ok(4));
}

// Spec §3.4: unknown message type → Unrecognized Message carrying the message.
#[test]
fn unknown_message() {
    let b = hex("7f000008aabbccdd");
    let e = asap_err(&b);
    assert_eq!(e.kind, DecodeErrorKind::UnknownMessage(0x7f));
    assert_eq!(e.offset, 0);
    assert_eq!(e.cause(), Some(ErrorCause::UnrecognizedMessage(b.clone())));
    let e = enrp_err(&hex("0b00000c1122334455667788"));
    assert_eq!(e.kind, DecodeErrorKind::UnknownMessage(0x0b));
}

// The Unrecognized Message cause is truncated so the reply fits (spec §3.4).
#[test]
fn unknown_message_cause_is_truncated() {
    let mut b = vec![0u8; limits::MAX_MESSAGE_LEN];
    b[0] = 0x7f;
    b[2..4].copy_from_slice(&65532u16.to_be_bytes());
    let Some(ErrorCause::UnrecognizedMessage(m)) = asap_err(&b).cause() else {
        panic!("cause 0x2 expected");
    };
    assert_eq!(m.len(), limits::MAX_UNRECOGNIZED_MESSAGE_INFO);
    let reply = EnrpMsg {
        sender: sid(1),
        receiver: 2,
        body: EnrpBody::Error(ErrorCause::UnrecognizedMessage(m).into()),
    };
    assert!(reply.to_bytes().is_ok());
}

// Spec §3.3: action bits 01 → stop and report with cause 0x1 carrying the TLV.
#[test]
fn unrecognized_param_stop_and_report() {
    let e = asap_err(&resolution_with("4abc000801020304"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::UnrecognizedParam {
            ty: ParamType(0x4abc)
        }
    );
    assert_eq!(e.offset, 16);
    assert_eq!(
        e.cause(),
        Some(ErrorCause::UnrecognizedParameter(hex("4abc000801020304")))
    );
}

// Spec §3.3: action bits 00 → stop, discard silently (no reply, connection kept).
#[test]
fn unrecognized_param_stop_silently() {
    let e = asap_err(&resolution_with("00100005aa000000"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::UnrecognizedParam {
            ty: ParamType(0x0010)
        }
    );
    assert_eq!(e.offset, 16);
    assert_eq!(e.cause(), None);
    assert!(!e.is_framing());
}

// Spec §3.3: nested unknown parameters follow the same rule (inside a transport).
#[test]
fn unrecognized_param_nested() {
    let b = hex("0a00002011223344000500180f180000000100087f0000014abc0008aabbccdd");
    let e = asap_err(&b);
    assert_eq!(e.offset, 24);
    assert_eq!(
        e.cause(),
        Some(ErrorCause::UnrecognizedParameter(hex("4abc0008aabbccdd")))
    );
}

// Spec §3.3: action bits 10 skip silently, 11 skip and report.
#[test]
fn unrecognized_params_skipped() {
    let d = AsapMsg::decode(&resolution_with("81230005aa000000c1230006bbcc0000")).expect("skipped");
    assert_eq!(
        d.unrecognized,
        vec![UnknownParam {
            ty: ParamType(0xc123),
            value: hex("bbcc").into()
        }]
    );
    assert_eq!(
        d.unrecognized[0].cause(),
        ErrorCause::UnrecognizedParameter(hex("c1230006bbcc"))
    );
    assert!(matches!(d.msg, AsapMsg::HandleResolution { .. }));
}

#[test]
fn param_action_bits() {
    assert_eq!(ParamType(0x0001).action(), ParamAction::Stop);
    assert_eq!(ParamType(0x4abc).action(), ParamAction::StopReport);
    assert_eq!(
        ParamType::HANDLE_RESOLUTION_OPTION.action(),
        ParamAction::Skip
    );
    assert_eq!(ParamType::NAMESPACE.action(), ParamAction::Skip);
    assert_eq!(ParamType(0xc000).action(), ParamAction::SkipReport);
}

// A known parameter the message does not allow: Invalid Values quoting it.
#[test]
fn unexpected_param() {
    let e = asap_err(&resolution_with("000d0005ff000000"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::UnexpectedParam {
            ty: ParamType::COOKIE
        }
    );
    assert_eq!(e.offset, 16);
    assert_eq!(
        e.cause(),
        Some(ErrorCause::InvalidValues(hex("000d0005ff")))
    );
}

// A known extension parameter where it is not expected is skipped like an unknown one.
#[test]
fn namespace_in_a_response_is_skipped() {
    let b = hex("040000200009000c4563686f506f6f6c000e0008deadbeef81000007616263ff");
    let d = AsapMsg::decode(&b).expect("skipped");
    assert!(matches!(d.msg, AsapMsg::DeregistrationResponse { .. }));
    assert!(d.unrecognized.is_empty());
}

// A resolution response with both PEs and an error.
#[test]
fn resolution_response_with_pes_and_error() {
    let b = hex("060000200009000c4563686f506f6f6c0008000800000001000c000800090004");
    let e = asap_err(&b);
    assert_eq!(
        e.kind,
        DecodeErrorKind::UnexpectedParam {
            ty: ParamType::OPERATION_ERROR
        }
    );
    assert_eq!(e.offset, 24);
}

#[test]
fn missing_param() {
    let e = asap_err(&hex("05000004"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::MissingParam {
            ty: ParamType::POOL_HANDLE
        }
    );
    assert_eq!(e.offset, 0);
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(Vec::new())));
    // Missing inside a parameter: the enclosing parameter is quoted.
    let pe = "000a0020deadbeef00000000000493e0000500101e610000000100087f000001";
    let b = hex(&format!("010000300009000c4563686f506f6f6c{pe}"));
    let e = asap_err(&b);
    assert_eq!(
        e.kind,
        DecodeErrorKind::MissingParam {
            ty: ParamType::POLICY
        }
    );
    assert_eq!(e.offset, 16);
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(hex(pe))));
    // ENRP Presence without its checksum.
    let e = enrp_err(&hex("0100000c1122334455667788"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::MissingParam {
            ty: ParamType::PE_CHECKSUM
        }
    );
}

#[test]
fn duplicate_param() {
    let e = asap_err(&resolution_with("0009000c4563686f506f6f6c"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::DuplicateParam {
            ty: ParamType::POOL_HANDLE
        }
    );
    assert_eq!(e.offset, 16);
    // A third transport in a Pool Element.
    let t = "000500101e610000000100087f000001";
    let b = hex(&format!(
        "01000058 0009000c 4563686f506f6f6c 000a0048 deadbeef 00000000 000493e0 {t} 0008000800000001 {t} {t}"
    )
    .replace(' ', ""));
    let e = asap_err(&b);
    assert_eq!(
        e.kind,
        DecodeErrorKind::DuplicateParam {
            ty: ParamType::TCP_TRANSPORT
        }
    );
    assert_eq!(e.offset, 72);
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(hex(t))));
}

fn registration_with_pe(pe_value: &str) -> Vec<u8> {
    let pe_len = 4 + pe_value.len() / 2;
    let mut b = hex(
        &format!("01000000 0009000c 4563686f506f6f6c 000a{pe_len:04x} {pe_value}").replace(' ', ""),
    );
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    let len = u16::try_from(b.len()).expect("small");
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b
}

#[test]
fn invalid_values() {
    use DecodeErrorKind::InvalidValue;
    // Display format of STYLE.md §3.
    let e = asap_err(&hex("0500000800090004"));
    assert_eq!(
        e.to_string(),
        "offset 8: parameter 0x0009: invalid value (empty pool handle)"
    );
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(hex("00090004"))));

    let tcp = |p: &str, u: &str| format!("00050010{p}{u}000100087f000001");
    let cases: Vec<(String, usize, ParamType, &str)> = vec![
        (
            format!(
                "00000000 00000000 000493e0 {} 0008000800000001",
                tcp("1e61", "0000")
            ),
            20,
            ParamType::POOL_ELEMENT,
            "PE identifier 0",
        ),
        (
            format!(
                "deadbeef 00000000 000493e0 {} 0008000800000001",
                tcp("0000", "0000")
            ),
            36,
            ParamType::TCP_TRANSPORT,
            "port 0",
        ),
        (
            format!(
                "deadbeef 00000000 000493e0 {} 0008000800000001",
                tcp("1e61", "0002")
            ),
            38,
            ParamType::TCP_TRANSPORT,
            "transport use must be 0 or 1",
        ),
        (
            format!(
                "deadbeef 00000000 000493e0 {} 0008000800000009",
                tcp("1e61", "0000")
            ),
            52,
            ParamType::POLICY,
            "unknown policy type",
        ),
        (
            format!(
                "deadbeef 00000000 000493e0 {} 000800080000000 2",
                tcp("1e61", "0000")
            ),
            50,
            ParamType::POLICY,
            "length does not match the policy type",
        ),
        (
            "deadbeef 00000000 000493e0 00050014 1e610000 0001000c 7f00000100000000 0008000800000001"
                .to_string(),
            42,
            ParamType::IPV4_ADDRESS,
            "IPv4 address length must be 8",
        ),
    ];
    for (value, offset, param, why) in cases {
        let b = registration_with_pe(&value.replace(' ', ""));
        let e = asap_err(&b);
        assert_eq!(e.kind, InvalidValue { param, why }, "{value}");
        assert_eq!(e.offset, offset, "{value}");
        let Some(ErrorCause::InvalidValues(tlv)) = e.cause() else {
            panic!("cause 0x3 expected")
        };
        // The innermost offending parameter is quoted (spec §4.7, §5.1).
        assert_eq!(ParamType(u16::from_be_bytes([tlv[0], tlv[1]])), param);
    }
}

#[test]
fn invalid_field() {
    let e = asap_err(&hex("07010014000000000009000c4563686f506f6f6c"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::InvalidField {
            field: "server ID",
            why: "server ID 0"
        }
    );
    assert_eq!(e.offset, 4);
    let b = hex(
        "040000541122334455667788000700000009000c4563686f506f6f6c000a0038deadbeef11223344000493e0000500101e610000000100087f000001000800080000000100050010a0280000000100087f000001",
    );
    let e = enrp_err(&b);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::InvalidField {
            field: "update action",
            ..
        }
    ));
    assert_eq!(e.offset, 12);
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(Vec::new())));
}

#[test]
fn list_response_skips_server_id_0_and_presence_still_rejects_it() {
    // rsplib 3.4.4 lists a peer it knows only by its configured address with Server ID
    // 0 (captured, crates/asap/tests/it/rsplib.rs): that entry is skipped, the rest kept.
    let unidentified = "000b0018000000000004001026af000000010008c0000201";
    let known = "000b0018222222220004001026ae000000010008c0000201";
    let b = hex(&format!(
        "0600003c11111111{}{unidentified}{known}",
        "22222222"
    ));
    let d = EnrpMsg::decode(&b).expect("decodes");
    assert!(d.unrecognized.is_empty());
    let EnrpBody::ListResponse { reject, servers } = d.msg.body else {
        panic!("not a list response")
    };
    assert!(!reject);
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].server_id, sid(0x2222_2222));
    // Only the list skips: a Presence naming Server ID 0 as its sender is still invalid.
    let e = enrp_err(&hex(&format!(
        "0100002c1111111100000000000f0006ffff0000{unidentified}"
    )));
    assert!(
        matches!(e.kind, DecodeErrorKind::InvalidValue { .. }),
        "{e:?}"
    );
}

#[test]
fn limits_enforced() {
    // Pool handle of 33 bytes.
    let e = asap_err(&hex(&format!("0500002c00090025{}000000", "41".repeat(33))));
    assert_eq!(
        e.kind,
        DecodeErrorKind::Limit {
            what: "pool handle length",
            max: 32
        }
    );
    assert_eq!(e.offset, 8);

    // Cookie of 4097 bytes.
    let mut b = hex("0b000000000d1005");
    b.extend(std::iter::repeat_n(0xaa, 4097));
    b.extend([0; 3]);
    let len = u16::try_from(b.len()).expect("small");
    b[2..4].copy_from_slice(&len.to_be_bytes());
    let e = asap_err(&b);
    assert_eq!(
        e.kind,
        DecodeErrorKind::Limit {
            what: "cookie length",
            max: 4096
        }
    );
    assert_eq!(e.offset, 8);

    // SCTP transport with 17 addresses.
    let mut t = hex("0004000027100000");
    for i in 0..17u8 {
        t.extend(hex("00010008"));
        t.extend([10, 0, 0, i]);
    }
    let tl = u16::try_from(t.len()).expect("small");
    t[2..4].copy_from_slice(&tl.to_be_bytes());
    let mut b = hex("0a00000011223344");
    b.extend(&t);
    let len = u16::try_from(b.len()).expect("small");
    b[2..4].copy_from_slice(&len.to_be_bytes());
    let e = asap_err(&b);
    assert!(
        matches!(e.kind, DecodeErrorKind::Limit { max: 16, .. }),
        "{e}"
    );
    assert_eq!(e.offset, 8 + 8 + 16 * 8);

    // 129 PEs in a handle resolution response.
    let mut pes = Vec::new();
    for _ in 0..=limits::MAX_RESOLUTION_PES {
        pe(1, None).encode(&mut pes);
    }
    let mut b = hex("060000000009000c4563686f506f6f6c");
    b.extend(&pes);
    let len = u16::try_from(b.len()).expect("small");
    b[2..4].copy_from_slice(&len.to_be_bytes());
    let e = asap_err(&b);
    assert!(
        matches!(e.kind, DecodeErrorKind::Limit { max: 128, .. }),
        "{e}"
    );
    assert_eq!(e.offset, 16 + 128 * pe(1, None).encoded_len());
}

#[test]
fn trailing_bytes() {
    // Spec §8.1: fixed-size ENRP message with another length → Invalid Values.
    let e = enrp_err(&hex("05000010112233445566778800000000"));
    assert_eq!(e.kind, DecodeErrorKind::TrailingBytes);
    assert_eq!(e.offset, 12);
    assert!(!e.is_framing());
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(Vec::new())));
    // A buffer longer than its Message Length: the caller did not frame it.
    let e = asap_err(&hex("05000004 00000000".replace(' ', "").as_str()));
    assert_eq!(e.kind, DecodeErrorKind::TrailingBytes);
    assert_eq!(e.offset, 4);
    assert!(e.is_framing());
    // A stand-alone parameter followed by more bytes.
    let e = PeId::decode(&hex("000e0008deadbeef000e0008deadbeef")).expect_err("two TLVs");
    assert_eq!(e.kind, DecodeErrorKind::TrailingBytes);
    assert_eq!(e.offset, 8);
}

// ---------------------------------------------------------------------------------------
// Other rules.

// Spec §4.6: PE Checksum has Length 6 and 2 bytes of padding.
#[test]
fn pe_checksum_length_6() {
    let mut out = Vec::new();
    PeChecksum(0xABCD).encode(&mut out);
    assert_eq!(out, hex("000f0006abcd0000"));
    let e = PeChecksum::decode(&hex("000f0008abcd0000")).expect_err("length 8");
    assert!(matches!(e.kind, DecodeErrorKind::InvalidValue { .. }));
}

// Spec §4.2: IPv4-mapped IPv6 addresses are sent as IPv4.
#[test]
fn ipv4_mapped_sent_as_ipv4() {
    let a = Address::new(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
    assert_eq!(a.ip(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut out = Vec::new();
    a.encode(&mut out);
    assert_eq!(out, hex("00010008c0000201"));
    let d = Address::decode(&hex("0002001400000000000000000000ffffc0000201")).expect("mapped");
    assert_eq!(d.msg, a);
    assert!(!Address::new(Ipv4Addr::UNSPECIFIED).is_acceptable_user_address(true));
    assert!(!Address::new(Ipv6Addr::LOCALHOST).is_acceptable_user_address(false));
    assert!(Address::new(Ipv6Addr::LOCALHOST).is_acceptable_user_address(true));
}

// Spec §6.2: undefined flag bits are ignored on receipt and sent as 0.
#[test]
fn unknown_flags_ignored() {
    let d = AsapMsg::decode(&hex("05ff00100009000c4563686f506f6f6c")).expect("flags ignored");
    assert_eq!(
        hex("050000100009000c4563686f506f6f6c"),
        d.msg.to_bytes().expect("ok")
    );
    let d = AsapMsg::decode(&hex("03fe00180009000c4563686f506f6f6c000e0008deadbeef")).expect("ok");
    assert!(matches!(
        d.msg,
        AsapMsg::RegistrationResponse { reject: false, .. }
    ));
}

// Spec §6.1: parameters in any order are accepted.
#[test]
fn any_parameter_order() {
    let d = AsapMsg::decode(&hex("02000018000e0008deadbeef0009000c4563686f506f6f6c")).expect("ok");
    assert_eq!(
        d.msg,
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: echo(),
            pe_id: pe_id()
        }
    );
}

// Spec §12.9: namespaces and registrant identities.
#[test]
fn namespace_and_registrant_identity() {
    assert!(Namespace::new("prod.eu-1").is_some());
    let long = "a".repeat(64);
    for bad in ["", "Prod", "a b", "ä", long.as_str()] {
        assert!(Namespace::new(bad).is_none(), "{bad:?}");
    }
    let e = Namespace::decode(&hex("81000007416263ff")).expect_err("upper case");
    assert!(matches!(e.kind, DecodeErrorKind::InvalidValue { .. }));
    let e = RegistrantIdentity::decode(&hex("81010006fffe0000")).expect_err("not UTF-8");
    assert!(matches!(e.kind, DecodeErrorKind::InvalidValue { .. }));

    let ri = RegistrantIdentity::new("spiffe://acme.test/pe/echo-1").expect("ok");
    let ns = Namespace::new("prod").expect("ok");
    let m = AsapMsg::HandleResolutionResponse {
        pool_handle: echo(),
        result: Resolution::Found {
            policy: None,
            pool_elements: vec![
                PeEntry {
                    pool_element: pe(1, None),
                    registrant: Some(ri.clone()),
                },
                PeEntry {
                    pool_element: pe(2, None),
                    registrant: None,
                },
            ],
        },
    };
    assert_eq!(
        AsapMsg::decode(&m.to_bytes().expect("ok")).expect("ok").msg,
        m
    );

    // Namespace applies to the groups after it, until the next one.
    let group = |ns: &Namespace, h: &str| PoolEntries {
        namespace: ns.clone(),
        pool_handle: PoolHandle::new(h).expect("ok"),
        entries: vec![PeEntry {
            pool_element: pe(1, None),
            registrant: Some(ri.clone()),
        }],
    };
    let m = enrp(
        1,
        2,
        EnrpBody::HandleTableResponse {
            reject: false,
            more: false,
            pools: vec![
                group(&Namespace::default_namespace(), "a"),
                group(&ns, "b"),
                group(&ns, "c"),
                group(&Namespace::default_namespace(), "d"),
            ],
        },
    );
    let bytes = m.to_bytes().expect("ok");
    let count = bytes.windows(2).filter(|w| w == &[0x81, 0x00]).count();
    assert_eq!(count, 2, "namespace written where it changes only");
    assert_eq!(EnrpMsg::decode(&bytes).expect("ok").msg, m);
}

#[test]
fn handle_table_response_pool_without_pe() {
    let b = hex("0300001855667788112233440009000c4563686f506f6f6c");
    let e = enrp_err(&b);
    assert_eq!(
        e.kind,
        DecodeErrorKind::MissingParam {
            ty: ParamType::POOL_ELEMENT
        }
    );
    assert_eq!(e.offset, 12);
}

#[test]
fn encode_refuses_what_decode_refuses() {
    let m = AsapMsg::BusinessCard {
        pool_handle: echo(),
        policy: None,
        pool_elements: vec![],
    };
    assert!(matches!(m.to_bytes(), Err(EncodeError::Invalid { .. })));
    let m = AsapMsg::HandleResolutionResponse {
        pool_handle: echo(),
        result: Resolution::Found {
            policy: None,
            pool_elements: vec![
                PeEntry {
                    pool_element: pe(1, None),
                    registrant: None
                };
                129
            ],
        },
    };
    assert!(matches!(
        m.to_bytes(),
        Err(EncodeError::Limit { max: 128, .. })
    ));
    let big = ErrorCause::UnrecognizedMessage(vec![0; 40_000]);
    let m = AsapMsg::Error(OperationError::new(vec![big.clone(), big]).expect("non-empty"));
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        m.encode(&mut out),
        Err(EncodeError::TooLong { .. })
    ));
    assert_eq!(out, [1, 2, 3], "nothing written");
}

#[test]
fn registration_life_range_is_the_registrars_check() {
    let mut p = pe(0, None);
    p.registration_life = -1;
    let m = AsapMsg::Registration {
        namespace: None,
        pool_handle: echo(),
        pool_element: p.clone(),
    };
    let d = AsapMsg::decode(&m.to_bytes().expect("ok")).expect("codec accepts any i32");
    assert_eq!(d.msg, m);
    assert!(!p.registration_life_valid());
    assert!(pe(0, None).registration_life_valid());
}

// ---------------------------------------------------------------------------------------
// Framer (spec §12.2).

fn frames_of(framer: &mut Framer, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, DecodeError> {
    let mut out = Vec::new();
    for c in chunks {
        framer.push(c)?;
        while let Some(f) = framer.pop()? {
            out.push(f);
        }
    }
    Ok(out)
}

#[test]
fn framer_splits_and_joins() {
    let a = hex("050000100009000c4563686f506f6f6c");
    let b = hex("020000180009000c4563686f506f6f6c000e0008deadbeef");
    let mut all = a.clone();
    all.extend(&b);
    let mut f = Framer::asap(limits::DEFAULT_MAX_INCOMING);
    let got = frames_of(&mut f, &[&all[..3], &all[3..17], &all[17..]]).expect("ok");
    assert_eq!(got, vec![a.clone(), b.clone()]);
    assert_eq!(f.buffered(), 0);
    let mut f = Framer::asap(limits::DEFAULT_MAX_INCOMING);
    assert_eq!(frames_of(&mut f, &[&all]).expect("ok"), vec![a, b]);
}

#[test]
fn framer_rejects_bad_lengths() {
    let cases: [(&str, DecodeErrorKind); 4] = [
        ("05000002", DecodeErrorKind::BadLength { len: 2 }),
        ("05000011", DecodeErrorKind::BadLength { len: 17 }),
        (
            "05004004",
            DecodeErrorKind::Limit {
                what: "message length",
                max: 1024,
            },
        ),
        ("07000004", DecodeErrorKind::Truncated { need: 8 }),
    ];
    for (h, kind) in cases {
        let mut f = Framer::asap(1024);
        f.push(&hex(h)).expect("push");
        let e = f.pop().expect_err(h);
        assert_eq!(e.kind, kind, "{h}");
        assert_eq!(e.offset, 2);
        assert!(e.is_framing());
        assert_eq!(e.cause(), None);
        // The framer stays failed.
        assert!(f.pop().is_err());
        assert!(f.push(&[0]).is_err());
    }
    // ENRP: a Takeover message needs 16 bytes.
    let mut f = Framer::enrp(1024);
    f.push(&hex("0700000c1122334455667788")).expect("push");
    assert_eq!(
        f.pop().expect_err("short").kind,
        DecodeErrorKind::Truncated { need: 16 }
    );
}

#[test]
fn framer_is_bounded() {
    let mut f = Framer::asap(64);
    assert_eq!(f.capacity(), 128);
    f.push(&[0x05, 0, 0, 64]).expect("header");
    assert!(f.push(&[0; 200]).is_err());
}

// ---------------------------------------------------------------------------------------
// Property tests.

mod props {
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    use super::*;

    fn address() -> impl Strategy<Value = Address> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| Address::new(Ipv4Addr::from(a))),
            any::<[u8; 16]>().prop_map(|a| Address::new(Ipv6Addr::from(a))),
        ]
    }

    fn nz_port() -> impl Strategy<Value = NonZeroU16> {
        (1..=u16::MAX).prop_map(|p| NonZeroU16::new(p).expect("1.."))
    }

    fn transport_use() -> impl Strategy<Value = TransportUse> {
        prop_oneof![
            Just(TransportUse::DataOnly),
            Just(TransportUse::DataPlusControl)
        ]
    }

    pub(super) fn transport() -> impl Strategy<Value = Transport> {
        prop_oneof![
            (nz_port(), any::<u32>(), address()).prop_map(|(port, service_code, addr)| {
                Transport::Dccp {
                    port,
                    service_code,
                    addr,
                }
            }),
            (nz_port(), transport_use(), vec(address(), 1..=16)).prop_map(
                |(port, transport_use, a)| Transport::Sctp {
                    port,
                    transport_use,
                    addrs: SctpAddresses::new(a).expect("1..=16"),
                }
            ),
            (nz_port(), transport_use(), address()).prop_map(|(port, transport_use, addr)| {
                Transport::Tcp {
                    port,
                    transport_use,
                    addr,
                }
            }),
            (nz_port(), address()).prop_map(|(port, addr)| Transport::Udp { port, addr }),
            (nz_port(), address()).prop_map(|(port, addr)| Transport::UdpLite { port, addr }),
        ]
    }

    fn policy() -> impl Strategy<Value = Policy> {
        let u = any::<u32>;
        prop_oneof![
            Just(Policy::RoundRobin),
            u().prop_map(|weight| Policy::WeightedRoundRobin { weight }),
            Just(Policy::Random),
            u().prop_map(|weight| Policy::WeightedRandom { weight }),
            u().prop_map(|priority| Policy::Priority { priority }),
            u().prop_map(|load| Policy::LeastUsed { load }),
            (u(), u())
                .prop_map(|(load, degradation)| Policy::LeastUsedDegradation { load, degradation }),
            (u(), u())
                .prop_map(|(load, degradation)| Policy::PriorityLeastUsed { load, degradation }),
            u().prop_map(|load| Policy::RandomizedLeastUsed { load }),
            // The private range (docs/PROTOCOL-EXTENSIONS.md): opaque values of any length
            // up to the bound, not only whole u32s.
            (
                PolicyType::PRIVATE,
                vec(any::<u8>(), 0..=MAX_PRIVATE_POLICY_VALUE_LEN)
            )
                .prop_map(
                    |(ty, values)| Policy::private(PolicyType(ty), &values).expect("in range")
                ),
        ]
    }

    /// Labels or hints within their bounds (0..=16 pairs, unique keys).
    pub(super) fn labels() -> impl Strategy<Value = Labels> {
        proptest::collection::btree_map("[a-zA-Z0-9._/-]{1,32}", "[ -~]{0,64}", 0..=MAX_LABELS)
            .prop_map(|m| Labels::new(m).expect("within the bounds"))
    }

    fn pool_handle() -> impl Strategy<Value = PoolHandle> {
        vec(any::<u8>(), 1..=32).prop_map(|b| PoolHandle::new(b).expect("1..=32"))
    }

    fn pe_id() -> impl Strategy<Value = PeId> {
        (1..=u32::MAX).prop_map(|v| PeId::new(v).expect("non-zero"))
    }

    fn server_id() -> impl Strategy<Value = ServerId> {
        (1..=u32::MAX).prop_map(|v| ServerId::new(v).expect("non-zero"))
    }

    fn pool_element() -> impl Strategy<Value = PoolElement> {
        (
            pe_id(),
            any::<u32>(),
            any::<i32>(),
            transport(),
            policy(),
            option::of(transport()),
            labels(),
        )
            .prop_map(
                |(
                    pe_id,
                    home_server_id,
                    registration_life,
                    user_transport,
                    policy,
                    asap,
                    labels,
                )| {
                    PoolElement {
                        pe_id,
                        home_server_id,
                        registration_life,
                        user_transport,
                        policy,
                        asap_transport: asap,
                        labels,
                        status: Default::default(),
                        serving_identity: None,
                    }
                },
            )
    }

    fn namespace() -> impl Strategy<Value = Namespace> {
        "[a-z0-9.-]{1,63}".prop_map(|s| Namespace::new(&s).expect("valid"))
    }

    fn registrant() -> impl Strategy<Value = RegistrantIdentity> {
        "spiffe://[a-z.]{1,20}/[a-zA-Z0-9/ä_-]{0,40}"
            .prop_map(|s| RegistrantIdentity::new(&s).expect("valid"))
    }

    fn entry() -> impl Strategy<Value = PeEntry> {
        (pool_element(), option::of(registrant())).prop_map(|(pool_element, registrant)| PeEntry {
            pool_element,
            registrant,
        })
    }

    fn cause() -> impl Strategy<Value = ErrorCause> {
        prop_oneof![
            (0u16..=0xA, vec(any::<u8>(), 0..24))
                .prop_map(|(c, info)| ErrorCause::from_parts(c, &info)),
            (0xBu16..=u16::MAX, vec(any::<u8>(), 0..24))
                .prop_map(|(code, info)| ErrorCause::Other { code, info }),
        ]
    }

    fn operation_error() -> impl Strategy<Value = OperationError> {
        vec(cause(), 1..4).prop_map(|c| OperationError::new(c).expect("non-empty"))
    }

    fn cookie() -> impl Strategy<Value = Cookie> {
        vec(any::<u8>(), 0..64).prop_map(|b| Cookie::new(b).expect("small"))
    }

    pub(super) fn asap_msg() -> impl Strategy<Value = AsapMsg> {
        let ns = || option::of(namespace());
        prop_oneof![
            (ns(), pool_handle(), pool_element()).prop_map(|(namespace, pool_handle, pe)| {
                AsapMsg::Registration {
                    namespace,
                    pool_handle,
                    pool_element: pe,
                }
            }),
            (ns(), pool_handle(), pe_id()).prop_map(|(namespace, pool_handle, pe_id)| {
                AsapMsg::Deregistration {
                    namespace,
                    pool_handle,
                    pe_id,
                }
            }),
            (
                any::<bool>(),
                pool_handle(),
                pe_id(),
                option::of(operation_error())
            )
                .prop_map(|(reject, pool_handle, pe_id, error)| {
                    AsapMsg::RegistrationResponse {
                        reject,
                        pool_handle,
                        pe_id,
                        error,
                    }
                }),
            (pool_handle(), pe_id(), option::of(operation_error())).prop_map(
                |(pool_handle, pe_id, error)| AsapMsg::DeregistrationResponse {
                    pool_handle,
                    pe_id,
                    error
                }
            ),
            (ns(), pool_handle(), option::of(any::<u32>()), labels()).prop_map(
                |(namespace, pool_handle, items, hints)| AsapMsg::HandleResolution {
                    namespace,
                    pool_handle,
                    option: items.map(|items| HandleResolutionOption { items }),
                    hints,
                }
            ),
            (pool_handle(), option::of(policy()), vec(entry(), 0..4)).prop_map(
                |(pool_handle, policy, pool_elements)| AsapMsg::HandleResolutionResponse {
                    pool_handle,
                    result: Resolution::Found {
                        policy,
                        pool_elements
                    },
                }
            ),
            (pool_handle(), operation_error()).prop_map(|(pool_handle, e)| {
                AsapMsg::HandleResolutionResponse {
                    pool_handle,
                    result: Resolution::Error(e),
                }
            }),
            (
                any::<bool>(),
                server_id(),
                pool_handle(),
                option::of(pe_id())
            )
                .prop_map(|(home, server_id, pool_handle, pe_id)| {
                    AsapMsg::EndpointKeepAlive {
                        home,
                        server_id,
                        pool_handle,
                        pe_id,
                    }
                }),
            (pool_handle(), pe_id()).prop_map(|(pool_handle, pe_id)| {
                AsapMsg::EndpointKeepAliveAck { pool_handle, pe_id }
            }),
            (ns(), pool_handle(), pe_id()).prop_map(|(namespace, pool_handle, pe_id)| {
                AsapMsg::EndpointUnreachable {
                    namespace,
                    pool_handle,
                    pe_id,
                }
            }),
            (server_id(), vec(transport(), 0..4)).prop_map(|(server_id, transports)| {
                AsapMsg::ServerAnnounce {
                    server_id,
                    transports,
                }
            }),
            cookie().prop_map(AsapMsg::Cookie),
            cookie().prop_map(AsapMsg::CookieEcho),
            (
                pool_handle(),
                option::of(policy()),
                vec(pool_element(), 1..4)
            )
                .prop_map(|(pool_handle, policy, pool_elements)| {
                    AsapMsg::BusinessCard {
                        pool_handle,
                        policy,
                        pool_elements,
                    }
                }),
            operation_error().prop_map(AsapMsg::Error),
        ]
    }

    fn pool_entries() -> impl Strategy<Value = PoolEntries> {
        (
            prop_oneof![Just(Namespace::default_namespace()), namespace()],
            pool_handle(),
            vec(entry(), 1..3),
        )
            .prop_map(|(namespace, pool_handle, entries)| PoolEntries {
                namespace,
                pool_handle,
                entries,
            })
    }

    fn server_information() -> impl Strategy<Value = ServerInformation> {
        (server_id(), transport()).prop_map(|(server_id, transport)| ServerInformation {
            server_id,
            transport,
        })
    }

    fn enrp_body() -> impl Strategy<Value = EnrpBody> {
        prop_oneof![
            (
                any::<bool>(),
                any::<u16>(),
                option::of(server_information())
            )
                .prop_map(|(reply_required, c, server_info)| EnrpBody::Presence {
                    reply_required,
                    checksum: PeChecksum(c),
                    server_info
                }),
            any::<bool>()
                .prop_map(|own_children_only| EnrpBody::HandleTableRequest { own_children_only }),
            (any::<bool>(), any::<bool>(), vec(pool_entries(), 0..4)).prop_map(
                |(reject, more, pools)| EnrpBody::HandleTableResponse {
                    reject,
                    more,
                    pools
                }
            ),
            (
                prop_oneof![Just(UpdateAction::AddPe), Just(UpdateAction::DelPe)],
                prop_oneof![Just(Namespace::default_namespace()), namespace()],
                pool_handle(),
                pool_element(),
                option::of(registrant())
            )
                .prop_map(
                    |(action, namespace, pool_handle, pool_element, registrant)| {
                        EnrpBody::HandleUpdate {
                            action,
                            namespace,
                            pool_handle,
                            pool_element,
                            registrant,
                        }
                    }
                ),
            Just(EnrpBody::ListRequest),
            (any::<bool>(), vec(server_information(), 0..4))
                .prop_map(|(reject, servers)| EnrpBody::ListResponse { reject, servers }),
            server_id().prop_map(|target| EnrpBody::InitTakeover { target }),
            server_id().prop_map(|target| EnrpBody::InitTakeoverAck { target }),
            server_id().prop_map(|target| EnrpBody::TakeoverServer { target }),
            operation_error().prop_map(EnrpBody::Error),
        ]
    }

    pub(super) fn enrp_msg() -> impl Strategy<Value = EnrpMsg> {
        (server_id(), any::<u32>(), enrp_body()).prop_map(|(sender, receiver, body)| EnrpMsg {
            sender,
            receiver,
            body,
        })
    }

    /// What the fuzz targets check: whatever decodes re-encodes to something that decodes
    /// to the same value; every error has an offset inside the input and a reply decision.
    fn check_any(b: &[u8]) -> Result<(), TestCaseError> {
        fn err(e: &DecodeError, b: &[u8]) -> Result<(), TestCaseError> {
            prop_assert!(e.offset <= b.len(), "{}", e);
            let _ = e.cause();
            Ok(())
        }
        match AsapMsg::decode(b) {
            Ok(d) => {
                let again = d
                    .msg
                    .to_bytes()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(again.len() <= b.len());
                prop_assert_eq!(AsapMsg::decode(&again).map(|a| a.msg), Ok(d.msg));
            }
            Err(e) => err(&e, b)?,
        }
        match EnrpMsg::decode(b) {
            Ok(d) => {
                let again = d
                    .msg
                    .to_bytes()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(again.len() <= b.len());
                prop_assert_eq!(EnrpMsg::decode(&again).map(|a| a.msg), Ok(d.msg));
            }
            Err(e) => err(&e, b)?,
        }
        Ok(())
    }

    proptest! {
        /// The borrowing encoder of a resolution's answer writes the bytes of the owned
        /// message, with the identities taken out when `plain` (issue 20).
        #[test]
        fn encode_found_writes_what_encode_writes(
            handle in pool_handle(),
            policy in option::of(policy()),
            entries in vec((entry(), option::of("spiffe://[a-z.]{1,20}/[a-z/]{0,30}")), 0..6),
            plain in any::<bool>(),
        ) {
            let entries: Vec<std::sync::Arc<PeEntry>> = entries
                .into_iter()
                .map(|(mut e, serving)| {
                    e.pool_element.serving_identity =
                        serving.and_then(|s| crate::wire::param::ServingIdentity::new(&s));
                    std::sync::Arc::new(e)
                })
                .collect();
            let sent: Vec<PeEntry> = entries
                .iter()
                .map(|e| {
                    let mut e = (**e).clone();
                    if plain {
                        e.registrant = None;
                        e.pool_element.serving_identity = None;
                    }
                    e
                })
                .collect();
            for (e, s) in entries.iter().zip(&sent) {
                prop_assert_eq!(
                    e.encoded_len_as(plain),
                    s.pool_element.encoded_len() + s.registrant.as_ref().map_or(0, |r| r.encoded_len())
                );
            }
            let mut got = vec![7];
            AsapMsg::encode_found(&mut got, &handle, policy.as_ref(), &entries, plain)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want = AsapMsg::HandleResolutionResponse {
                pool_handle: handle.clone(),
                result: Resolution::Found { policy, pool_elements: sent },
            }
            .to_bytes()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&got[1..], &want[..]);
            // From entries encoded once: the same bytes, all of them taken.
            let encoded: Vec<Vec<u8>> = entries.iter().map(|e| e.encoded_as(plain)).collect();
            let mut again = vec![7];
            let taken = AsapMsg::encode_found_encoded(
                &mut again,
                &handle,
                policy.as_ref(),
                encoded.iter().map(Vec::as_slice),
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(taken, entries.len());
            prop_assert_eq!(&again[1..], &want[..]);
        }

        /// Entries encoded once are taken while they fit one message, as
        /// `fit_in_one_message` takes them for `encode_found`.
        #[test]
        fn encode_found_encoded_stops_at_the_message_limit(
            handle in pool_handle(),
            sizes in vec(1usize..4000, 1..40),
        ) {
            use crate::wire::limits::{MAX_MESSAGE_LEN, MAX_RESOLUTION_PES};
            let entries: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0xAB; n * 4]).collect();
            let mut out = Vec::new();
            let taken = AsapMsg::encode_found_encoded(
                &mut out,
                &handle,
                None,
                entries.iter().map(Vec::as_slice),
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(out.len() <= MAX_MESSAGE_LEN);
            let header = 4 + handle.encoded_len();
            let want = entries
                .iter()
                .take(MAX_RESOLUTION_PES)
                .scan(header, |len, e| {
                    *len += e.len();
                    (*len <= MAX_MESSAGE_LEN).then_some(())
                })
                .count();
            prop_assert_eq!(taken, want);
            prop_assert_eq!(out.len(), header + entries[..taken].iter().map(Vec::len).sum::<usize>());
            prop_assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])), out.len());
        }

        #[test]
        fn asap_round_trip(m in asap_msg()) {
            let b = m.to_bytes().expect("generated messages are small");
            prop_assert_eq!(b.len(), m.encoded_len());
            prop_assert!(b.len().is_multiple_of(4));
            let d = AsapMsg::decode(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(d.unrecognized.is_empty());
            prop_assert_eq!(d.msg, m);
        }

        #[test]
        fn enrp_round_trip(m in enrp_msg()) {
            let b = m.to_bytes().expect("generated messages are small");
            prop_assert_eq!(b.len(), m.encoded_len());
            prop_assert!(b.len().is_multiple_of(4));
            let d = EnrpMsg::decode(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(d.unrecognized.is_empty());
            prop_assert_eq!(d.msg, m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in vec(any::<u8>(), 0..256)) {
            check_any(&b)?;
            let _ = PoolElement::decode(&b);
            let _ = OperationError::decode(&b);
            let mut f = Framer::asap(1024);
            if f.push(&b).is_ok() {
                while let Ok(Some(_)) = f.pop() {}
            }
        }

        // Valid messages with some bytes changed reach deep into the decoder; any error
        // must still give a reply decision without panicking.
        #[test]
        fn mutated_messages_never_panic(
            m in asap_msg(),
            e in enrp_msg(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            for mut b in [m.to_bytes().expect("small"), e.to_bytes().expect("small")] {
                for (i, v) in &edits {
                    let i = i.index(b.len());
                    // Keep the frame length valid most of the time so content is parsed.
                    if i >= 4 { b[i] = *v; }
                }
                check_any(&b)?;
            }
        }

        #[test]
        fn framer_any_split(
            msgs in vec(asap_msg(), 1..5),
            cuts in vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let frames: Vec<Vec<u8>> = msgs.iter().map(|m| m.to_bytes().expect("small")).collect();
            let stream = frames.concat();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            at.push(0);
            at.push(stream.len());
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let mut f = Framer::asap(limits::MAX_MESSAGE_LEN);
            let got = frames_of(&mut f, &chunks).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, frames);
            prop_assert_eq!(f.buffered(), 0);
        }
    }
}

// Bytes after the last parameter of a Pool Element that cannot hold a TLV header: the
// reply quotes the Pool Element.
#[test]
fn truncated_tlv_header_quotes_the_enclosing_parameter() {
    let pe = "000a0029deadbeef00000000000493e0000500101e610000000100087f0000010008000800000001ff";
    let b = hex(&format!("0100003c0009000c4563686f506f6f6c{pe}000000"));
    let e = asap_err(&b);
    assert_eq!(e.kind, DecodeErrorKind::Truncated { need: 4 });
    assert_eq!(e.offset, 56);
    assert_eq!(e.cause(), Some(ErrorCause::InvalidValues(hex(pe))));
}

/// The project's extensions (docs/PROTOCOL-EXTENSIONS.md): private policy types, PE labels
/// and selection hints.
mod extensions {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::wire::param::{Hints, LabelError, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN};

    /// A Policy TLV with `ty` and `values`, padded, as another implementation would send.
    fn policy_tlv(ty: u32, values: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0008u16.to_be_bytes());
        b.extend_from_slice(
            &u16::try_from(8 + values.len())
                .expect("short")
                .to_be_bytes(),
        );
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(values);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    /// A registration whose PE carries `policy` (a whole TLV), as bytes.
    fn registration_with_policy(policy: &[u8]) -> Vec<u8> {
        let mut pe = hex("deadbeef00000000000493e0");
        pe.extend_from_slice(&hex("000500101e61000000010008 7f000001"
            .replace(' ', "")
            .as_str()));
        pe.extend_from_slice(policy);
        let mut body = hex("0009000c4563686f506f6f6c");
        body.extend_from_slice(&0x000Au16.to_be_bytes());
        body.extend_from_slice(&u16::try_from(4 + pe.len()).expect("short").to_be_bytes());
        body.extend_from_slice(&pe);
        let mut msg = vec![0x01, 0x00];
        msg.extend_from_slice(&u16::try_from(4 + body.len()).expect("short").to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    proptest! {
        /// A private type's bytes come back exactly as sent, alone and inside a
        /// registration (whatever their length, padding included).
        #[test]
        fn private_policies_round_trip_byte_for_byte(
            ty in PolicyType::PRIVATE,
            values in vec(any::<u8>(), 0..=MAX_PRIVATE_POLICY_VALUE_LEN),
        ) {
            let tlv = policy_tlv(ty, &values);
            let p = Policy::decode(&tlv).map_err(|e| TestCaseError::fail(e.to_string()))?.msg;
            prop_assert_eq!(p.policy_type(), PolicyType(ty));
            let Policy::Private { values: got, .. } = p else {
                return Err(TestCaseError::fail("not a private policy"));
            };
            prop_assert_eq!(got.as_bytes(), &values[..]);
            let mut again = Vec::new();
            p.encode(&mut again);
            prop_assert_eq!(&again, &tlv);
            let msg = registration_with_policy(&tlv);
            let d = AsapMsg::decode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(d.msg.to_bytes().expect("small"), msg);
        }

        /// Any other unknown type is still Invalid Values (0x3) quoting the parameter.
        #[test]
        fn other_unknown_policy_types_are_refused_with_0x3(
            ty in any::<u32>().prop_filter("not RFC, not private", |t| {
                !PolicyType(*t).is_private() && PolicyType(*t).name().is_none()
            }),
            values in vec(any::<u8>(), 0..=8),
        ) {
            let tlv = policy_tlv(ty, &values);
            let e = AsapMsg::decode(&registration_with_policy(&tlv)).expect_err("refused");
            prop_assert_eq!(e.cause().map(|c| c.code()), Some(0x3));
        }
    }

    #[test]
    fn a_private_value_longer_than_the_bound_is_invalid() {
        let tlv = policy_tlv(0xFF00_0001, &[7; MAX_PRIVATE_POLICY_VALUE_LEN + 1]);
        let e = AsapMsg::decode(&registration_with_policy(&tlv)).expect_err("refused");
        assert_eq!(e.cause().map(|c| c.code()), Some(0x3));
        // 0xFFFFFFFF stays reserved, outside the range.
        let e = AsapMsg::decode(&registration_with_policy(&policy_tlv(u32::MAX, &[])))
            .expect_err("refused");
        assert_eq!(e.cause().map(|c| c.code()), Some(0x3));
    }

    /// The wire vectors of both parameters (docs/PROTOCOL-EXTENSIONS.md).
    #[test]
    fn label_and_hint_vectors() {
        let labels = Labels::parse(["region=eu", "zone=a1"]).expect("valid");
        let body = "06726567696f6e 026575 047a6f6e65 026131 0000";
        let want = hex(&format!("81020016{body}").replace(' ', ""));
        let mut b = Vec::new();
        labels.encode(&mut b);
        assert_eq!(to_hex(&b), to_hex(&want));
        assert_eq!(Labels::decode(&want).expect("decodes").msg, labels);
        let want = hex(&format!("81030016{body}").replace(' ', ""));
        let mut b = Vec::new();
        Hints(labels.clone()).encode(&mut b);
        assert_eq!(to_hex(&b), to_hex(&want));
        assert_eq!(Hints::decode(&want).expect("decodes").msg.0, labels);
        assert_eq!(labels.get("zone"), Some("a1"));
        assert_eq!(labels.to_string(), "region=eu,zone=a1");
        // Both skip (action bits 10): a decoder that does not know them goes on.
        assert_eq!(ParamType::PE_LABELS.action(), ParamAction::Skip);
        assert_eq!(ParamType::SELECTION_HINTS.action(), ParamAction::Skip);
    }

    /// PE Status (0x8104, docs/PROTOCOL-EXTENSIONS.md §5): its vector, inside a Pool
    /// Element, and what a decoder refuses.
    #[test]
    fn pe_status_vector_and_bounds() {
        use crate::wire::param::{CheckKind, PeStatus};
        let status = PeStatus {
            drain_deadline_ms: Some(0x0000_018b_cfe5_6800),
            check: CheckKind::HTTP,
        };
        let want = hex("81040010 01020000 0000018b cfe56800"
            .replace(' ', "")
            .as_str());
        let mut b = Vec::new();
        status.encode(&mut b);
        assert_eq!(to_hex(&b), to_hex(&want));
        assert_eq!(PeStatus::decode(&want).expect("decodes").msg, status);
        assert_eq!(ParamType::PE_STATUS.action(), ParamAction::Skip);
        // Draining without a deadline, or a value of another length: Invalid Values.
        for bad in [
            "81040010 01020000 00000000 00000000",
            "8104000c 01020000 00000000",
        ] {
            let e = PeStatus::decode(&hex(&bad.replace(' ', ""))).expect_err("refused");
            assert_eq!(e.cause().map(|c| c.code()), Some(0x3), "{bad}");
        }
        // Inside a Pool Element, after the labels; the default is not sent.
        let mut e = pe(0, None);
        let mut plain = Vec::new();
        e.encode(&mut plain);
        assert!(!to_hex(&plain).contains("8104"));
        e.status.check = CheckKind::TCP;
        let mut b = Vec::new();
        e.encode(&mut b);
        assert!(to_hex(&b).ends_with("81040010000100000000000000000000"));
        assert_eq!(PoolElement::decode(&b).expect("decodes").msg, e);
    }

    /// Serving Identity (0x8105, docs/PROTOCOL-EXTENSIONS.md §6) inside a Pool Element.
    #[test]
    fn a_serving_identity_rides_in_the_pool_element() {
        use crate::wire::param::ServingIdentity;
        let mut e = pe(0, None);
        e.serving_identity = ServingIdentity::new("spiffe://a.test/pe/w");
        let mut b = Vec::new();
        e.encode(&mut b);
        // "spiffe://a.test/pe/w" is 20 bytes: length 24, no padding.
        assert!(to_hex(&b).ends_with(&format!("81050018{}", to_hex(b"spiffe://a.test/pe/w"))));
        assert_eq!(PoolElement::decode(&b).expect("decodes").msg, e);
        assert_eq!(ParamType::SERVING_IDENTITY.action(), ParamAction::Skip);
        assert!(ServingIdentity::new("").is_none());
        assert!(ServingIdentity::new(&"x".repeat(2049)).is_none());
    }

    #[test]
    fn labels_inside_a_pool_element_and_hints_in_a_resolution_round_trip() {
        let mut e = pe(0, None);
        e.labels = Labels::parse(["region=eu"]).expect("valid");
        let mut b = Vec::new();
        e.encode(&mut b);
        assert!(to_hex(&b).ends_with(&"8102000e 06726567696f6e026575 0000".replace(' ', "")));
        assert_eq!(PoolElement::decode(&b).expect("decodes").msg, e);
        let m = AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: echo(),
            option: None,
            hints: Labels::parse(["region=eu"]).expect("valid"),
        };
        let b = m.to_bytes().expect("encodes");
        assert_eq!(
            to_hex(&b),
            "05000020 0009000c4563686f506f6f6c 8103000e 06726567696f6e026575 0000".replace(' ', "")
        );
        assert_eq!(AsapMsg::decode(&b).expect("decodes").msg, m);
    }

    #[test]
    fn labels_beyond_their_bounds_are_refused() {
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}=v")).collect();
        assert_eq!(Labels::parse(&many), Err(LabelError::TooMany));
        let long_key = "k".repeat(MAX_LABEL_KEY_LEN + 1);
        assert!(matches!(
            Labels::parse([format!("{long_key}=v")]),
            Err(LabelError::Key(_))
        ));
        let long_value = "v".repeat(MAX_LABEL_VALUE_LEN + 1);
        assert!(matches!(
            Labels::parse([format!("k={long_value}")]),
            Err(LabelError::Value(_))
        ));
        assert!(matches!(
            Labels::parse(["k=a\u{7}"]),
            Err(LabelError::Value(_))
        ));
        assert!(matches!(Labels::parse(["k é=a"]), Err(LabelError::Key(_))));
        assert!(matches!(Labels::parse(["=a"]), Err(LabelError::Key(_))));
        assert!(matches!(
            Labels::parse(["k=1", "k=2"]),
            Err(LabelError::DuplicateKey(_))
        ));
        assert!(matches!(
            Labels::parse(["novalue"]),
            Err(LabelError::NotKeyValue(_))
        ));
        // At the bounds: accepted.
        let full: Vec<(String, String)> = (0..MAX_LABELS)
            .map(|i| (format!("{i:0>32}"), "v".repeat(MAX_LABEL_VALUE_LEN)))
            .collect();
        assert_eq!(Labels::new(full).expect("at the bounds").len(), MAX_LABELS);
    }

    /// What a registrar receives from a PE that bypasses the checks: each broken bound is
    /// Invalid Values (0x3), answered with a refused registration response.
    #[test]
    fn over_limit_labels_in_a_registration_are_refused_with_0x3() {
        let pair = |k: &str, v: &str| {
            let mut b = vec![u8::try_from(k.len()).expect("short")];
            b.extend_from_slice(k.as_bytes());
            b.push(u8::try_from(v.len()).expect("short"));
            b.extend_from_slice(v.as_bytes());
            b
        };
        let seventeen: Vec<u8> = (0..=MAX_LABELS)
            .flat_map(|i| pair(&format!("k{i}"), "v"))
            .collect();
        let cases: Vec<Vec<u8>> = vec![
            seventeen,
            pair(&"k".repeat(MAX_LABEL_KEY_LEN + 1), "v"),
            pair("k", &"v".repeat(MAX_LABEL_VALUE_LEN + 1)),
            pair("k", "\n"),
            [pair("k", "1"), pair("k", "2")].concat(),
            vec![5, b'k'],
        ];
        for value in cases {
            let mut labels = Vec::new();
            labels.extend_from_slice(&0x8102u16.to_be_bytes());
            labels.extend_from_slice(&u16::try_from(4 + value.len()).expect("short").to_be_bytes());
            labels.extend_from_slice(&value);
            labels.resize(labels.len().next_multiple_of(4), 0);
            let mut with = policy_tlv(1, &[]);
            with.extend_from_slice(&labels);
            let msg = registration_with_policy(&with);
            let e = AsapMsg::decode(&msg).expect_err("refused");
            let cause = e.cause().expect("answered");
            assert_eq!(cause.code(), 0x3, "{e}");
            let answer = crate::wire::rejection(&msg, &cause).expect("a registration response");
            let AsapMsg::RegistrationResponse { reject, error, .. } =
                AsapMsg::decode(&answer).expect("decodes").msg
            else {
                panic!("a registration response")
            };
            assert!(reject);
            assert_eq!(error.expect("a cause").causes()[0].code(), 0x3);
        }
    }
}
