//! Conformance vectors from RSPLIB 3.4.4 (the RSerPool reference implementation,
//! Debian `rsplib-registrar`/`rsplib-tools`), captured on the wire with dumpcap on `lo`
//! in a qemu guest with kernel SCTP (shared/guides/sctp-lab.md): rspserver ↔
//! rspregistrar, rspterminal ↔ rspregistrar, three peering rspregistrars with a takeover,
//! and rspregistrar's answers to a hand-written SCTP client (PE 0x01020304, peer
//! registrar 0x44444444). Every message is exactly as RSPLIB sent it (one SCTP user
//! message, PPID 11 = ASAP, 12 = ENRP). Registrars 0x11111111, 0x22222222, 0x33333333 and
//! PE 0xDEADBEEF were fixed with `-identifier=`; other IDs are RSPLIB's random ones.
//! 192.0.2.1 is a documentation address put on `lo` because RSPLIB drops loopback
//! addresses from the transport parameters it parses.
//!
//! Each vector must decode with nothing to report and re-encode to the same bytes: our
//! parameter order and padding are RSPLIB's for every message RSPLIB sends. The one
//! exception is a List Response entry with Server ID 0, which is skipped on receipt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use asap::wire::param::{ErrorCause, PeId, Policy, ServerId, Transport, TransportUse};
use asap::wire::{AsapMsg, EnrpBody, EnrpMsg, Resolution, UpdateAction};

/// Which protocol a vector is (the SCTP PPID decided it on the wire).
#[derive(Clone, Copy, Debug)]
enum Proto {
    Asap,
    Enrp,
}

/// (what RSPLIB sent, protocol, bytes as hex).
const VECTORS: &[(&str, Proto, &str)] = &[
    // --- rspserver (PE) → rspregistrar ---
    (
        "registration, first (home 0, life 3 × 2500 ms)",
        Proto::Asap,
        "010000380009000c4563686f506f6f6c000a0028379f4b0a0000000000001d4c000400108c9f000100010008c00002010008000800000001",
    ),
    (
        "re-registration naming the home registrar",
        Proto::Asap,
        "010000380009000c4563686f506f6f6c000a0028379f4b0abb261f5100001d4c000400108c9f000100010008c00002010008000800000001",
    ),
    (
        "endpoint keep-alive ack",
        Proto::Asap,
        "080000180009000c4563686f506f6f6c000e0008379f4b0a",
    ),
    (
        "deregistration (SIGINT)",
        Proto::Asap,
        "020000180009000c4563686f506f6f6c000e0008379f4b0a",
    ),
    // --- rspregistrar → PE ---
    (
        "registration response, accepted",
        Proto::Asap,
        "030000180009000c4563686f506f6f6c000e0008379f4b0a",
    ),
    (
        "registration response, rejected with rsplib's cause 0x100a (wrong protocol)",
        Proto::Asap,
        "030100200009000c4563686f506f6f6c000e000801020309000c0008100a0004",
    ),
    (
        "endpoint keep-alive (H=0, PE Identifier present)",
        Proto::Asap,
        "0700001cbb261f510009000c4563686f506f6f6c000e0008379f4b0a",
    ),
    (
        "deregistration response",
        Proto::Asap,
        "040000180009000c4563686f506f6f6c000e0008379f4b0a",
    ),
    (
        "ASAP error, rsplib's cause 0x10 (invalid message: trailing parameter)",
        Proto::Asap,
        "0e00000c000c000800100004",
    ),
    // --- rspterminal (PU) → rspregistrar, and the answers ---
    (
        "handle resolution with option 0x803F items=1",
        Proto::Asap,
        "050000180009000c4563686f506f6f6c803f000800000001",
    ),
    (
        "handle resolution response, one PE",
        Proto::Asap,
        "060000400009000c4563686f506f6f6c0008000800000001000a0028e83045022e9ad32400015f9000040010cf6a000100010008c00002010008000800000001",
    ),
    (
        "handle resolution response, three PEs of two homes",
        Proto::Asap,
        "060000900009000c4563686f506f6f6c0008000800000001000a00280a0b0c0d444444440000ea60000400101e61000000010008c00002010008000800000001000a0028010203041111111100007530000400101e61000000010008c00002010008000800000001000a00280a0b0c0e444444440000ea60000400101e61000000010008c00002010008000800000001",
    ),
    (
        "handle resolution response, unknown pool (cause 0x9)",
        Proto::Asap,
        "060000180009000c4563686f506f6f6c000c000800090004",
    ),
    (
        "handle resolution response, odd-length handle",
        Proto::Asap,
        "06000040000900094f746865720000000008000800000001000a00280a0b0c10444444440000ea60000400101e61000000010008c00002010008000800000001",
    ),
    // --- rspregistrar ↔ rspregistrar (ENRP) ---
    (
        "presence R=0, owner of EchoPool/0xDEADBEEF (checksum f4b3)",
        Proto::Enrp,
        "0100002c1111111100000000000f0006f4b30000000b0018111111110004001026ad000000010008c0000201",
    ),
    (
        "presence R=1 to a known peer, no PEs (checksum ffff)",
        Proto::Enrp,
        "0101002c2222222211111111000f0006ffff0000000b0018222222220004001026ae000000010008c0000201",
    ),
    (
        "presence, owner of EchoPool/0x01020304 (checksum 8e4b)",
        Proto::Enrp,
        "0100002c1111111144444444000f00068e4b0000000b0018111111110004001026ad000000010008c0000201",
    ),
    ("list request", Proto::Enrp, "0500000c1111111122222222"),
    (
        "list response: a peer known only by address (Server ID 0) and one known peer",
        Proto::Enrp,
        "0600003c1111111122222222000b0018000000000004001026af000000010008c0000201000b0018222222220004001026ae000000010008c0000201",
    ),
    (
        "handle table request W=0 (mentor download)",
        Proto::Enrp,
        "0200000c2222222211111111",
    ),
    (
        "handle table request W=1 (audit after a checksum mismatch)",
        Proto::Enrp,
        "0201000c2222222233333333",
    ),
    (
        "handle table response: ASAP transport with 127.0.0.1, ::1 and 192.0.2.1",
        Proto::Enrp,
        "0300006c11111111222222220009000c4563686f506f6f6c000a0054deadbeef1111111100002ee0000400108ed6000100010008c000020100080008000000010004002cd3140000000100087f000001000200140000000000000000000000000000000100010008c0000201",
    ),
    (
        "handle table response after the takeover (new home 0x33333333)",
        Proto::Enrp,
        "0300005033333333222222220009000c4563686f506f6f6c000a0038deadbeef3333333300002ee0000400108ed6000100010008c0000201000800080000000100040010d314000000010008c0000201",
    ),
    (
        "handle update ADD_PE",
        Proto::Enrp,
        "040000701111111122222222000000000009000c4563686f506f6f6c000a0054deadbeef1111111100002ee0000400108ed6000100010008c000020100080008000000010004002cd3140000000100087f000001000200140000000000000000000000000000000100010008c0000201",
    ),
    (
        "handle update DEL_PE (keep-alive timeout after the takeover)",
        Proto::Enrp,
        "040000543333333322222222000100000009000c4563686f506f6f6c000a0038deadbeef3333333300002ee0000400108ed6000100010008c0000201000800080000000100040010d314000000010008c0000201",
    ),
    (
        "init takeover of 0x11111111",
        Proto::Enrp,
        "07000010333333332222222211111111",
    ),
    (
        "init takeover ack",
        Proto::Enrp,
        "08000010222222223333333311111111",
    ),
    (
        "ENRP error, rsplib's cause 0x11 (invalid value), IDs copied from the offending presence",
        Proto::Enrp,
        "0a0000141111111100000000000c000800110004",
    ),
];

fn hex(s: &str) -> Vec<u8> {
    ::hex::decode(s).expect("hex digit")
}

fn vector(name: &str) -> Vec<u8> {
    let (_, _, h) = VECTORS
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("vector exists");
    hex(h)
}

fn asap(name: &str) -> AsapMsg {
    let d = AsapMsg::decode(&vector(name)).expect("rsplib message decodes");
    assert!(d.unrecognized.is_empty(), "{name}: {:?}", d.unrecognized);
    d.msg
}

fn enrp(name: &str) -> EnrpMsg {
    let d = EnrpMsg::decode(&vector(name)).expect("rsplib message decodes");
    assert!(d.unrecognized.is_empty(), "{name}: {:?}", d.unrecognized);
    d.msg
}

fn sid(n: u32) -> ServerId {
    ServerId::new(n).expect("non-zero")
}

fn pe_id(n: u32) -> PeId {
    PeId::new(n).expect("non-zero")
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// (port, transport use, addresses) of an SCTP transport; panics on any other kind.
fn sctp(t: &Transport) -> (u16, TransportUse, Vec<IpAddr>) {
    match t {
        Transport::Sctp {
            port,
            transport_use,
            addrs,
        } => (
            port.get(),
            *transport_use,
            addrs.as_slice().iter().map(|a| a.ip()).collect(),
        ),
        other => panic!("expected an SCTP transport, got {other:?}"),
    }
}

/// The one vector that does not re-encode to itself: the entry with Server ID 0 is
/// skipped on receipt (it names no peer), so the list re-encodes without it.
const LIST_WITH_ID_0: &str =
    "list response: a peer known only by address (Server ID 0) and one known peer";
const LIST_WITH_ID_0_REENCODED: &str =
    "060000241111111122222222000b0018222222220004001026ae000000010008c0000201";

#[test]
fn every_rsplib_message_decodes_and_reencodes_to_the_same_bytes() {
    for (name, proto, h) in VECTORS {
        let bytes = hex(h);
        let again = match proto {
            Proto::Asap => {
                let d = AsapMsg::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(d.unrecognized.is_empty(), "{name}: {:?}", d.unrecognized);
                d.msg.to_bytes()
            }
            Proto::Enrp => {
                let d = EnrpMsg::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(d.unrecognized.is_empty(), "{name}: {:?}", d.unrecognized);
                d.msg.to_bytes()
            }
        }
        .unwrap_or_else(|e| panic!("{name}: re-encode: {e}"));
        let want = if *name == LIST_WITH_ID_0 {
            hex(LIST_WITH_ID_0_REENCODED)
        } else {
            bytes
        };
        assert_eq!(again, want, "{name}: re-encoding differs");
    }
}

#[test]
fn registration_carries_rsplibs_pe() {
    let AsapMsg::Registration {
        namespace,
        pool_handle,
        pool_element: pe,
    } = asap("registration, first (home 0, life 3 × 2500 ms)")
    else {
        panic!("not a registration");
    };
    assert!(namespace.is_none());
    assert_eq!(pool_handle.as_bytes(), b"EchoPool");
    assert_eq!(pe.pe_id, pe_id(0x379F_4B0A));
    assert_eq!(pe.home_server_id, 0);
    // rsplib: registration life = 3 × the re-registration interval (-rereginterval=2500).
    assert_eq!(pe.registration_life, 7_500);
    assert_eq!(pe.policy, Policy::RoundRobin);
    assert!(pe.asap_transport.is_none());
    // Only the non-loopback address is advertised; data plus control.
    assert_eq!(
        sctp(&pe.user_transport),
        (35999, TransportUse::DataPlusControl, vec![v4(192, 0, 2, 1)])
    );

    let AsapMsg::Registration { pool_element, .. } =
        asap("re-registration naming the home registrar")
    else {
        panic!("not a registration");
    };
    assert_eq!(pool_element.home_server_id, 0xBB26_1F51);
}

#[test]
fn keep_alive_names_registrar_and_pe() {
    assert_eq!(
        asap("endpoint keep-alive (H=0, PE Identifier present)"),
        AsapMsg::EndpointKeepAlive {
            home: false,
            server_id: sid(0xBB26_1F51),
            pool_handle: asap::wire::param::PoolHandle::new("EchoPool").expect("handle"),
            pe_id: Some(pe_id(0x379F_4B0A)),
        }
    );
    assert!(matches!(
        asap("endpoint keep-alive ack"),
        AsapMsg::EndpointKeepAliveAck { pe_id: id, .. } if id == pe_id(0x379F_4B0A)
    ));
}

#[test]
fn rsplib_error_causes_outside_rfc_range_are_kept() {
    let AsapMsg::RegistrationResponse {
        reject: true,
        error: Some(e),
        ..
    } = asap("registration response, rejected with rsplib's cause 0x100a (wrong protocol)")
    else {
        panic!("not a rejection");
    };
    assert_eq!(e.causes()[0].code(), 0x100A);
    let AsapMsg::Error(e) =
        asap("ASAP error, rsplib's cause 0x10 (invalid message: trailing parameter)")
    else {
        panic!("not an ASAP error");
    };
    assert_eq!(e.causes()[0].code(), 0x10);
    let EnrpBody::Error(e) = enrp(
        "ENRP error, rsplib's cause 0x11 (invalid value), IDs copied from the offending presence",
    )
    .body
    else {
        panic!("not an ENRP error");
    };
    assert_eq!(e.causes()[0].code(), 0x11);
}

#[test]
fn resolution_request_and_responses() {
    let AsapMsg::HandleResolution {
        namespace: None,
        option: Some(o),
        ..
    } = asap("handle resolution with option 0x803F items=1")
    else {
        panic!("not a plain resolution with option");
    };
    assert_eq!(o.items, 1);

    let AsapMsg::HandleResolutionResponse {
        result: Resolution::Found {
            policy,
            pool_elements,
        },
        ..
    } = asap("handle resolution response, three PEs of two homes")
    else {
        panic!("not a found response");
    };
    assert_eq!(policy, Some(Policy::RoundRobin));
    let ids: Vec<(u32, u32)> = pool_elements
        .iter()
        .map(|e| (e.pool_element.pe_id.get(), e.pool_element.home_server_id))
        .collect();
    assert_eq!(
        ids,
        [
            (0x0A0B_0C0D, 0x4444_4444),
            (0x0102_0304, 0x1111_1111),
            (0x0A0B_0C0E, 0x4444_4444)
        ]
    );
    // PE parameters in a resolution response carry no ASAP transport (spec §7.3).
    assert!(
        pool_elements
            .iter()
            .all(|e| e.pool_element.asap_transport.is_none() && e.registrant.is_none())
    );

    let AsapMsg::HandleResolutionResponse {
        result: Resolution::Error(e),
        ..
    } = asap("handle resolution response, unknown pool (cause 0x9)")
    else {
        panic!("not an error response");
    };
    assert_eq!(e.causes(), [ErrorCause::UnknownPoolHandle]);
}

#[test]
fn presence_checksums_match_spec_9_6() {
    // The spec §9.6 sum over the owned PEs (pool handle words, then the PE ID's two
    // words), folded and complemented; computed here independently of any crate code.
    /// Owned PEs: (pool handle, PE ID).
    type Owned<'a> = &'a [(&'a [u8], u32)];
    fn spec_checksum(pes: Owned<'_>) -> u16 {
        let mut sum: u32 = 0;
        for (handle, id) in pes {
            for w in handle.chunks(2) {
                sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            sum += (id >> 16) + (id & 0xFFFF);
        }
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !(sum as u16)
    }
    let cases: [(&str, Owned<'_>); 3] = [
        (
            "presence R=0, owner of EchoPool/0xDEADBEEF (checksum f4b3)",
            &[(b"EchoPool", 0xDEAD_BEEF)],
        ),
        ("presence R=1 to a known peer, no PEs (checksum ffff)", &[]),
        (
            "presence, owner of EchoPool/0x01020304 (checksum 8e4b)",
            &[(b"EchoPool", 0x0102_0304)],
        ),
    ];
    for (name, owned) in cases {
        let EnrpBody::Presence { checksum, .. } = enrp(name).body else {
            panic!("{name}: not a presence");
        };
        assert_eq!(checksum.0, spec_checksum(owned), "{name}");
    }
    assert_eq!(spec_checksum(&[(b"EchoPool", 0xDEAD_BEEF)]), 0xF4B3);
}

#[test]
fn presence_fields() {
    let m = enrp("presence R=1 to a known peer, no PEs (checksum ffff)");
    assert_eq!((m.sender, m.receiver), (sid(0x2222_2222), 0x1111_1111));
    let EnrpBody::Presence {
        reply_required: true,
        server_info: Some(info),
        ..
    } = m.body
    else {
        panic!("not a presence R=1 with server information");
    };
    assert_eq!(info.server_id, sid(0x2222_2222));
    // The ENRP endpoint as an SCTP transport, transport use 0 (data only).
    assert_eq!(
        sctp(&info.transport),
        (9902, TransportUse::DataOnly, vec![v4(192, 0, 2, 1)])
    );
    // First contact: receiver ID 0.
    assert_eq!(
        enrp("presence R=0, owner of EchoPool/0xDEADBEEF (checksum f4b3)").receiver,
        0
    );
}

#[test]
fn handle_update_and_table_carry_asap_transport() {
    let m = enrp("handle update ADD_PE");
    let EnrpBody::HandleUpdate {
        action: UpdateAction::AddPe,
        namespace,
        pool_handle,
        pool_element: pe,
        registrant: None,
    } = m.body
    else {
        panic!("not an ADD_PE");
    };
    assert!(namespace.is_default());
    assert_eq!(pool_handle.as_bytes(), b"EchoPool");
    assert_eq!(
        (pe.pe_id, pe.home_server_id),
        (pe_id(0xDEAD_BEEF), 0x1111_1111)
    );
    assert_eq!(pe.registration_life, 12_000);
    // The ASAP transport: the PE's association addresses as the home registrar sees
    // them, loopback ones included (rsplib filters them only when it parses).
    let asap_t = pe.asap_transport.as_ref().expect("ASAP transport");
    assert_eq!(
        sctp(asap_t),
        (
            54036,
            TransportUse::DataOnly,
            vec![
                v4(127, 0, 0, 1),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                v4(192, 0, 2, 1)
            ]
        )
    );

    let EnrpBody::HandleUpdate {
        action: UpdateAction::DelPe,
        ..
    } = enrp("handle update DEL_PE (keep-alive timeout after the takeover)").body
    else {
        panic!("not a DEL_PE");
    };

    let EnrpBody::HandleTableResponse {
        reject: false,
        more: false,
        pools,
    } = enrp("handle table response after the takeover (new home 0x33333333)").body
    else {
        panic!("not a complete handle table response");
    };
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].entries[0].pool_element.home_server_id, 0x3333_3333);

    let EnrpBody::HandleTableRequest {
        own_children_only: true,
    } = enrp("handle table request W=1 (audit after a checksum mismatch)").body
    else {
        panic!("not W=1");
    };
}

#[test]
fn list_response_keeps_identified_peers() {
    let m = enrp(LIST_WITH_ID_0);
    let EnrpBody::ListResponse {
        reject: false,
        servers,
    } = m.body
    else {
        panic!("not an accepted list response");
    };
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].server_id, sid(0x2222_2222));
    assert_eq!(
        sctp(&servers[0].transport),
        (9902, TransportUse::DataOnly, vec![v4(192, 0, 2, 1)])
    );
}

#[test]
fn takeover_messages() {
    let m = enrp("init takeover of 0x11111111");
    assert_eq!((m.sender, m.receiver), (sid(0x3333_3333), 0x2222_2222));
    assert_eq!(
        m.body,
        EnrpBody::InitTakeover {
            target: sid(0x1111_1111)
        }
    );
    assert_eq!(
        enrp("init takeover ack").body,
        EnrpBody::InitTakeoverAck {
            target: sid(0x1111_1111)
        }
    );
}
