//! ENRP peers (spec §9.1, §9.2, §11.2; `registrar/enrp/peers.rs`): greeting, grants,
//! Sender IDs, peer lists and dialing, advertised addresses, Server ID bindings.

use super::*;

#[test]
fn a_peer_is_greeted_and_asked_for_its_own_pes() {
    // Spec §9.6, for a registrar past start-up: PRESENCE, then HANDLE_TABLE_REQUEST W=1.
    let mut h = Harness::with_peer_grants();
    let out = h.peer_up(10, PR_B, SID_B);
    assert_eq!(audits(&out), vec![(AuditAction::PeerUp, None)]);
    assert!(matches!(
        enrp_sent(&out).as_slice(),
        [
            EnrpBody::Presence { reply_required: false, checksum, .. },
            EnrpBody::HandleTableRequest { own_children_only: true },
            EnrpBody::ListRequest,
        ] if checksum.0 == 0xffff
    ));
    assert_eq!(h.core.peers()[0].state, PeerState::Active);
}

#[test]
fn a_list_request_is_answered_with_the_live_peers_and_their_advertised_addresses() {
    // Spec §9.2: Server Information of every known peer, as each advertised it (§4.5).
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    h.peer_up(11, PR_C, SID_C);
    // Only a peer's own Server Information counts: C cannot speak for B's address.
    h.enrp(11, SID_C, presence_from(SID_B, 6666));
    h.enrp(10, SID_B, presence_from(SID_B, 9902));
    let out = h.enrp(11, SID_C, EnrpBody::ListRequest);
    assert_eq!(
        enrp_sent(&out),
        vec![EnrpBody::ListResponse {
            reject: false,
            servers: vec![server_info(SID_B, 9902)],
        }]
    );
    // B asks: C advertised no address of its own, so there is nothing to list.
    let out = h.enrp(10, SID_B, EnrpBody::ListRequest);
    assert_eq!(
        enrp_sent(&out),
        vec![EnrpBody::ListResponse {
            reject: false,
            servers: Vec::new(),
        }]
    );
}

#[test]
fn a_list_response_dials_only_unknown_registrars_and_at_most_a_bounded_number() {
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    let me = h.core.config().server_id.get();
    let out = h.enrp(
        10,
        SID_B,
        list_response(vec![
            server_info(me, 1000),     // ourselves
            server_info(SID_B, 1001),  // already connected
            server_info(SID_C, 1002),  // new
            server_info(SID_C, 1003),  // listed twice
            server_info(0x0d0d, 1004), // new
        ]),
    );
    assert_eq!(dials(&out), vec![tcp(1002), tcp(1004)]);
    // Only the answer to our request counts (issue 16): another list is ignored, audited.
    let out = h.enrp(
        10,
        SID_B,
        EnrpBody::ListResponse {
            reject: false,
            servers: vec![server_info(0x0e0e, 1005)],
        },
    );
    assert!(dials(&out).is_empty());
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerIgnored,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
    // A rejected list dials nothing.
    h.peer_up(12, PR_B, SID_B); // B reconnects: asked again
    let out = h.enrp(
        12,
        SID_B,
        EnrpBody::ListResponse {
            reject: true,
            servers: vec![server_info(0x0e0e, 1005)],
        },
    );
    assert!(dials(&out).is_empty());
    // One response adds at most MAX_LIST_DIALS peers, and says it ignored the rest.
    let servers = (1..=200u16)
        .map(|n| server_info(0x1000 + u32::from(n), 2000 + n))
        .collect();
    h.peer_up(13, PR_B, SID_B);
    let out = h.enrp(
        13,
        SID_B,
        EnrpBody::ListResponse {
            reject: false,
            servers,
        },
    );
    assert_eq!(dials(&out).len(), MAX_LIST_DIALS);
    assert_eq!(audits(&out), vec![(AuditAction::PeerIgnored, None)]);
    // Dialing proves nothing: no peer is added until one authenticates.
    assert_eq!(h.core.peers().len(), 1);
}

#[test]
fn a_dead_peer_is_dialed_from_a_list_only_at_an_address_it_did_not_advertise() {
    // After a healed partition B lists C, which we declared dead. C advertised that very
    // address: its connection with us is redialed already (by it or by us), so a second
    // dial would only make duplicates. At a new address (C restarted elsewhere) we dial.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    h.peer_up(11, PR_C, SID_C);
    h.enrp(11, SID_C, presence_from(SID_C, 1002));
    h.core.handle(Input::PeerDown { conn: ConnId(11) }, h.now);
    h.advance(250);
    let c = h
        .core
        .peers()
        .into_iter()
        .find(|p| p.server_id == sid(SID_C));
    assert_eq!(c.map(|p| p.state), Some(PeerState::Dead));
    let list = |port| EnrpBody::ListResponse {
        reject: false,
        servers: vec![server_info(SID_C, port)],
    };
    assert!(dials(&h.enrp(10, SID_B, list(1002))).is_empty());
    h.peer_up(12, PR_B, SID_B); // B reconnects: asked again
    assert_eq!(dials(&h.enrp(12, SID_B, list(1009))), vec![tcp(1009)]);
}

/// Issue 16: without `allow_loopback`, a registrar dials no loopback, unspecified or
/// multicast address a peer gave it (its list, its PRESENCE), and says so in the audit.
#[test]
fn learnt_addresses_pass_the_address_rules_before_they_are_dialed() {
    let mut h = Harness::with_peer_grants();
    let mut config = h.core.config().clone();
    config.allow_loopback = false;
    h.core = Core::new(config, peer_grants());
    h.peer_up(10, PR_B, SID_B);
    let at = |n: u32, ip: Ipv4Addr| ServerInformation {
        server_id: sid(n),
        transport: Transport::Tcp {
            port: NonZeroU16::new(9902).expect("non-zero"),
            transport_use: TransportUse::DataOnly,
            addr: Address::new(ip),
        },
    };
    let out = h.enrp(
        10,
        SID_B,
        list_response(vec![
            at(0x0d01, Ipv4Addr::LOCALHOST),
            at(0x0d02, Ipv4Addr::UNSPECIFIED),
            at(0x0d03, Ipv4Addr::new(224, 0, 0, 1)),
            at(0x0d04, Ipv4Addr::new(192, 0, 2, 7)),
        ]),
    );
    assert_eq!(
        dials(&out),
        vec![TransportAddr::Tcp(SocketAddr::from(([192, 0, 2, 7], 9902)))]
    );
    let refused = audit_details(&out, AuditAction::PeerIgnored);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert!(
        refused[0].1.starts_with("3 listed addresses not dialed"),
        "{out:?}"
    );
    // A loopback address in its PRESENCE is not kept: not dialed when it dies.
    h.enrp(10, SID_B, presence_from(SID_B, 1002));
    h.core.handle(Input::PeerDown { conn: ConnId(10) }, h.now);
    let out = h.advance(250);
    assert!(has_audit(&out, AuditAction::PeerDead), "{out:?}");
    assert!(dials(&out).is_empty(), "{out:?}");
}

#[test]
fn a_peer_without_the_peer_grant_is_refused_and_audited() {
    let mut h = Harness::new(); // grants() has no `peer` action
    let out = h.peer_up(10, PR_B, SID_B);
    assert!(closed(&out));
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerRefused,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
    assert!(h.core.peers().is_empty());
    // What it sends afterwards counts for nothing.
    let out = h.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
    assert!(out.is_empty());
    assert_eq!(h.core.stats().pes, 0);
}

#[test]
fn a_sender_id_not_the_identitys_closes_the_connection_and_changes_nothing() {
    // Spec §11.2: every Sender ID must be the one derived from the TLS identity.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    let out = h.enrp(10, 0x0bad_0bad, add_pe(0x0bad_0bad, "echo", 5, PE_A));
    assert!(closed(&out));
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerRefused,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
    assert_eq!(h.core.stats().pes, 0);
    // A second identity claiming B's live Server ID is refused too (spec §9.1).
    let out = h.peer_up(11, "spiffe://acme.test/registrar/impostor", SID_B);
    assert!(closed(&out));
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerRefused,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
}

#[test]
fn a_peer_advertising_a_multi_homed_sctp_endpoint_is_listed_and_redialed_there() {
    // Spec §4.3, §4.5: an SCTP Server Information lists every address of the endpoint;
    // it is kept whole, passed on in list responses, and dialed when the peer dies.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    h.peer_up(11, PR_C, SID_C);
    let presence = EnrpBody::Presence {
        reply_required: false,
        checksum: PeChecksum(0xffff),
        server_info: Some(sctp_server_info(SID_B, 9902)),
    };
    h.enrp(10, SID_B, presence);
    let out = h.enrp(11, SID_C, EnrpBody::ListRequest);
    assert_eq!(
        enrp_sent(&out),
        vec![EnrpBody::ListResponse {
            reject: false,
            servers: vec![sctp_server_info(SID_B, 9902)],
        }]
    );
    h.core.handle(Input::PeerDown { conn: ConnId(10) }, h.now);
    let out = h.advance(250);
    let endpoint: TransportAddr = "sctp:127.0.0.1:9902+192.0.2.1:9902".parse().expect("sctp");
    assert_eq!(dials(&out), vec![endpoint]);
}

#[test]
fn presence_advertises_the_tls_sctp_endpoint_with_the_tcp_address_first() {
    // A peer without SCTP dials the first address over TCP (daemon/peer.rs): it must be
    // the one the TLS/TCP listener serves.
    let mut config = Config::new(sid(0x0a0a));
    config.enrp_addr = Some(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9902)));
    config.enrp_sctp_addrs = vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9902)),
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9902)),
    ];
    let mut h = Harness::new();
    h.core = Core::new(config, peer_grants());
    let out = h.peer_up(10, PR_B, SID_B);
    let advertised = enrp_sent(&out).into_iter().find_map(|b| match b {
        EnrpBody::Presence { server_info, .. } => server_info,
        _ => None,
    });
    let Some(ServerInformation {
        transport: Transport::Sctp { port, addrs, .. },
        ..
    }) = advertised
    else {
        panic!("no SCTP Server Information in {out:?}");
    };
    assert_eq!(port.get(), 9902);
    let ips: Vec<_> = addrs.as_slice().iter().map(|a| a.ip()).collect();
    assert_eq!(
        ips,
        vec![
            std::net::IpAddr::from(Ipv4Addr::new(192, 0, 2, 1)),
            std::net::IpAddr::from(Ipv4Addr::LOCALHOST)
        ]
    );
}

/// Issue 16, docs/ENRP-TRUST.md §4: a Server ID stays bound to the first identity that
/// proved it, also while that peer is dead: another identity claiming it is refused and
/// audited, and the conflict shows in the peer's status. The owner comes back.
#[test]
fn a_server_id_stays_bound_to_its_first_identity_even_while_it_is_dead() {
    const EVIL: &str = "spiffe://acme.test/registrar/evil";
    let mut a = Harness::with_b_and_its_pe(SID_A, &[]);
    a.b_dies();
    let b = |a: &Harness| {
        a.core
            .peers()
            .into_iter()
            .find(|p| p.server_id == sid(SID_B))
            .expect("B is known")
    };
    assert_eq!(b(&a).state, PeerState::Dead);
    let out = a.peer_up(20, EVIL, SID_B);
    assert!(closed(&out), "{out:?}");
    let refused = audit_details(&out, AuditAction::PeerRefused);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(refused[0].0, EVIL);
    assert!(
        refused[0]
            .1
            .contains("is bound to spiffe://acme.test/registrar/b (dead)"),
        "{out:?}"
    );
    assert_eq!(b(&a).identity.as_str(), PR_B);
    assert_eq!(b(&a).conflict.map(|c| c.to_string()), Some(EVIL.to_owned()));
    // What it sends counts for nothing.
    assert!(a.enrp(20, SID_B, add_pe(SID_B, "echo", 9, PE_A)).is_empty());
    // B itself is welcome back.
    let out = a.peer_up(21, PR_B, SID_B);
    assert!(!closed(&out), "{out:?}");
    assert_eq!(b(&a).state, PeerState::Active);
}

/// Issue 16, docs/ENRP-TRUST.md §4: the first identity to prove a Server ID binds it, and
/// the driver is asked to store that; a stored binding refuses another identity before the
/// first ever connects.
#[test]
fn a_server_id_binding_is_stored_and_holds_after_a_restart() {
    let mut a = Harness::registrar(SID_A);
    let out = a.peer_up(10, PR_B, SID_B);
    let binds: Vec<_> = out
        .iter()
        .filter_map(|x| match x {
            Action::BindServerId {
                server_id,
                identity,
            } => Some((server_id.get(), identity.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(binds, vec![(SID_B, PR_B.to_owned())]);
    // Again on a later connection: nothing more to store.
    let out = a.peer_up(11, PR_B, SID_B);
    assert!(!out.iter().any(|x| matches!(x, Action::BindServerId { .. })));
    // A restarted registrar with the stored binding: the impostor is refused at once.
    let mut r = Harness::registrar(SID_A);
    r.core.set_server_id_bindings(vec![(
        sid(SID_B),
        SpiffeId::parse(PR_B).expect("SPIFFE ID"),
    )]);
    let out = r.peer_up(20, "spiffe://acme.test/registrar/evil", SID_B);
    assert!(closed(&out), "{out:?}");
    assert!(
        audit_details(&out, AuditAction::PeerRefused)[0]
            .1
            .contains("is bound to spiffe://acme.test/registrar/b (not connected since the start)"),
        "{out:?}"
    );
    assert!(r.core.peers().is_empty());
    assert!(!closed(&r.peer_up(21, PR_B, SID_B)));
}
