//! Legacy (RSPLIB) peers (`registrar/enrp/legacy.rs`): confinement to the legacy
//! namespace, PEs moving between RSPLIB's registrars and this one.

use super::*;

/// A legacy peer (RSPLIB) hears of the legacy namespace only, without the project's
/// parameters; what it says lands there, without registrants; its Presence carries the
/// legacy namespace's checksum and an SCTP Server Information, non-loopback first.
#[test]
fn a_legacy_peer_is_confined_to_the_legacy_namespace() {
    const SID_R: u32 = 0x1111_1111;
    let legacy_ns = Namespace::new("rsplib").expect("namespace");
    let mut h = Harness::with_peer_grants();
    let mut config = h.core.config().clone();
    config.legacy_namespace = Some(legacy_ns.clone());
    config.legacy_enrp_addrs = vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9901)),
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9901)),
    ];
    h.core = Core::new(config, peer_grants());
    h.peer_up(10, PR_B, SID_B);
    // A legacy client's identity is not a peer's: refused.
    let out = h.core.handle(
        Input::PeerUp {
            conn: ConnId(19),
            peer: Remote {
                id: legacy_identity(Ipv4Addr::new(192, 0, 2, 9).into()),
                serial: Serial::from_bytes(&[]),
                addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 9), 9911)),
            },
            server_id: sid(SID_R),
            outbound: false,
        },
        h.now,
    );
    assert!(closed(&out), "{out:?}");
    let rsplib = Remote {
        id: legacy_peer_identity(Ipv4Addr::new(192, 0, 2, 9).into(), sid(SID_R)),
        serial: Serial::from_bytes(&[]),
        addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 9), 9911)),
    };
    let out = h.core.handle(
        Input::PeerUp {
            conn: ConnId(20),
            peer: rsplib,
            server_id: sid(SID_R),
            outbound: false,
        },
        h.now,
    );
    assert!(!closed(&out), "{out:?}");
    let up = out.iter().find_map(|a| match a {
        Action::Audit { event, .. } if event.action == AuditAction::PeerUp => event.detail.clone(),
        _ => None,
    });
    assert!(up.is_some_and(|d| d.contains("unauthenticated")));
    match enrp_sent(&out).first() {
        Some(EnrpBody::Presence {
            checksum,
            server_info: Some(info),
            ..
        }) => {
            assert_eq!(checksum.0, 0xffff);
            let Transport::Sctp { port, addrs, .. } = &info.transport else {
                panic!("an SCTP Server Information: {info:?}");
            };
            assert_eq!(port.get(), 9901);
            let ips: Vec<std::net::IpAddr> = addrs.as_slice().iter().map(|a| a.ip()).collect();
            assert_eq!(
                ips,
                [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::LOCALHOST].map(std::net::IpAddr::from)
            );
        }
        other => panic!("a Presence first: {other:?}"),
    }
    // A PE of the default namespace: B hears of it, the legacy peer does not.
    let tls = h.connect(1, PE_A);
    let out = h.send(tls, registration("echo", 7));
    assert_eq!(enrp_on(&out, 10).len(), 1);
    assert!(enrp_on(&out, 20).is_empty(), "{out:?}");
    // A legacy client's PE: both hear of it; the legacy peer without 0x8100/0x8101.
    let legacy_client = legacy_identity(Ipv4Addr::LOCALHOST.into());
    let lc = h.connect(2, legacy_client.as_str());
    let out = h.send(lc, registration("echo", 8));
    let to_b = enrp_on(&out, 10);
    assert!(
        matches!(to_b.as_slice(), [EnrpMsg { body: EnrpBody::HandleUpdate {
        namespace, registrant: Some(_), .. }, .. }] if *namespace == legacy_ns)
    );
    let to_r = enrp_on(&out, 20);
    assert_eq!(to_r.len(), 1, "{out:?}");
    let no_project_params = |msg: &EnrpMsg| {
        // What RSPLIB would parse: the message as encoded.
        let bytes = msg.to_bytes().expect("encodes");
        let back = EnrpMsg::decode(&bytes).expect("decodes").msg;
        match back.body {
            EnrpBody::HandleUpdate {
                namespace,
                registrant,
                ..
            } => namespace.is_default() && registrant.is_none(),
            EnrpBody::HandleTableResponse { pools, .. } => pools.iter().all(|g| {
                g.namespace.is_default() && g.entries.iter().all(|e| e.registrant.is_none())
            }),
            _ => true,
        }
    };
    assert!(no_project_params(&to_r[0]), "{to_r:?}");
    // With the ASAP transport RSPLIB's parser reads whether or not it is there: the PE's
    // association as seen here.
    assert!(
        matches!(&to_r[0].body, EnrpBody::HandleUpdate { pool_element, .. }
        if matches!(&pool_element.asap_transport, Some(Transport::Sctp { port, .. })
            if port.get() == 40000))
    );
    // Its handle table (W=0): the legacy namespace's PEs only, bare.
    let out = h.enrp(
        20,
        SID_R,
        EnrpBody::HandleTableRequest {
            own_children_only: false,
        },
    );
    let table = enrp_on(&out, 20);
    match table.as_slice() {
        [
            msg @ EnrpMsg {
                body: EnrpBody::HandleTableResponse { pools, .. },
                ..
            },
        ] => {
            let ids: Vec<u32> = pools
                .iter()
                .flat_map(|g| g.entries.iter().map(|e| e.pool_element.pe_id.get()))
                .collect();
            assert_eq!(ids, [8]);
            assert!(no_project_params(msg));
        }
        other => panic!("one handle table response: {other:?}"),
    }
    // Its Presence checksum covers the legacy namespace's PEs of ours; B's covers all.
    let out = h.advance(200);
    let checksum_to = |conn| {
        enrp_on(&out, conn).iter().find_map(|m| match &m.body {
            EnrpBody::Presence { checksum, .. } => Some(checksum.0),
            _ => None,
        })
    };
    let echo = handle("echo");
    let p = |id| PeId::new(id).expect("non-zero");
    assert_eq!(
        checksum_to(20),
        Some(crate::checksum::PeChecksum::of([(&echo, p(8))]).value())
    );
    assert_eq!(
        checksum_to(10),
        Some(crate::checksum::PeChecksum::of([(&echo, p(7)), (&echo, p(8))]).value())
    );
    // What it sends lands in the legacy namespace, whatever namespace it names, with its
    // address as its registrant, whatever registrant it names.
    let mut body = add_pe(SID_R, "echo", 9, "spiffe://acme.test/pe/a");
    if let EnrpBody::HandleUpdate { namespace, .. } = &mut body {
        *namespace = Namespace::new("prod").expect("namespace");
    }
    h.enrp(20, SID_R, body);
    let where_is_9: Vec<(Namespace, Option<String>)> = h
        .core
        .handlespace()
        .iter()
        .filter(|(_, _, e)| e.pool_element.pe_id.get() == 9)
        .map(|(ns, _, e)| {
            (
                ns.clone(),
                e.registrant.as_ref().map(|r| r.as_str().to_owned()),
            )
        })
        .collect();
    let by_address = legacy_identity(Ipv4Addr::LOCALHOST.into())
        .as_str()
        .to_owned();
    assert_eq!(where_is_9, [(legacy_ns, Some(by_address))]);
}

/// RSPLIB's PEs move between its registrars and this one (docs/RSPLIB.md §0.7): a PE
/// learnt from a legacy peer re-registers through the legacy listener as the same
/// registrant (its address), and when the legacy peer dies, the takeover dials the PE's
/// SCTP ASAP transport, at all its addresses, over plain SCTP, for the H=1 keep-alive.
#[test]
fn a_legacy_peers_pe_re_registers_here_and_is_dialed_over_sctp_on_a_takeover() {
    const SID_R: u32 = 0x1111_1111;
    let legacy_ns = Namespace::new("rsplib").expect("namespace");
    let mut config = Harness::new().core.config().clone();
    config.legacy_namespace = Some(legacy_ns.clone());
    let mut h = Harness::new();
    h.core = Core::new(config, peer_grants());
    let rsplib = Remote {
        id: legacy_peer_identity(Ipv4Addr::new(192, 0, 2, 9).into(), sid(SID_R)),
        serial: Serial::from_bytes(&[]),
        addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 9), 9911)),
    };
    let up = Input::PeerUp {
        conn: ConnId(20),
        peer: rsplib,
        server_id: sid(SID_R),
        outbound: false,
    };
    h.core.handle(up, h.now);
    // Its PEs 9 and 10 (RSPLIB sends no registrant), with SCTP ASAP transports.
    let asap_transport = Transport::Sctp {
        port: NonZeroU16::new(40000).expect("non-zero"),
        transport_use: TransportUse::DataOnly,
        addrs: SctpAddresses::new([
            Address::new(Ipv4Addr::LOCALHOST),
            Address::new(Ipv4Addr::new(192, 0, 2, 1)),
        ])
        .expect("two addresses"),
    };
    for id in [9, 10] {
        let mut body = add_pe(SID_R, "echo", id, "spiffe://acme.test/pe/a");
        if let EnrpBody::HandleUpdate {
            pool_element,
            registrant,
            ..
        } = &mut body
        {
            pool_element.asap_transport = Some(asap_transport.clone());
            *registrant = None;
        }
        h.enrp(20, SID_R, body);
    }
    assert_eq!(h.core.stats().pes, 2);
    // PE 9 comes to the legacy listener from its address: the same registrant.
    let lc = h.connect(2, legacy_identity(Ipv4Addr::LOCALHOST.into()).as_str());
    let out = h.send(lc, registration("echo", 9));
    assert!(
        matches!(
            sent(&out).as_slice(),
            [AsapMsg::RegistrationResponse { error: None, .. }]
        ),
        "{out:?}"
    );
    // From another address it would be someone else: refused, nothing changes.
    let elsewhere = Ipv4Addr::new(192, 0, 2, 7);
    let client = Remote {
        id: legacy_identity(elsewhere.into()),
        serial: Serial::from_bytes(&[]),
        addr: SocketAddr::from((elsewhere, 40000)),
    };
    let other = ConnId(3);
    h.core.handle(
        Input::Connected {
            conn: other,
            client,
            addrs: Vec::new(),
        },
        h.now,
    );
    let out = h.send(
        other,
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: handle("echo"),
            pe_id: PeId::new(10).expect("non-zero"),
        },
    );
    assert!(
        matches!(
            sent(&out).as_slice(),
            [AsapMsg::DeregistrationResponse { error: Some(_), .. }]
        ),
        "{out:?}"
    );
    assert_eq!(h.core.stats().pes, 2);
    // R dies; the takeover (no other peer to wait for) dials PE 10 over SCTP.
    h.core.handle(Input::PeerDown { conn: ConnId(20) }, h.now);
    let out = h.advance(250);
    let dials: Vec<(TransportAddr, SpiffeId)> = out
        .iter()
        .filter_map(|a| match a {
            Action::DialPe {
                addr, registrant, ..
            } => Some((addr.clone(), registrant.clone())),
            _ => None,
        })
        .collect();
    let endpoint: TransportAddr = "sctp:127.0.0.1:40000+192.0.2.1:40000"
        .parse()
        .expect("sctp");
    assert_eq!(
        dials,
        [(endpoint, legacy_identity(Ipv4Addr::LOCALHOST.into()))],
        "{out:?}"
    );
}
