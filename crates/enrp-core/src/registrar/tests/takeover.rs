//! Takeover (spec §9.8; `registrar/enrp/takeover.rs`): acknowledgements, competing
//! takeovers, the PE hand-over and its checks.

use super::*;

#[test]
fn three_registrars_one_takes_over_once_every_live_peer_acknowledged() {
    // Spec §9.8: A detects B dead, C is alive: INIT_TAKEOVER to C, and A completes only
    // with C's acknowledgement; acknowledgements of anyone else count for nothing.
    let mut a = Harness::with_b_and_its_pe(SID_A, &[(11, PR_C, SID_C)]);
    let pu = a.connect(2, PU_1);
    let out = a.b_dies();
    assert!(has_audit(&out, AuditAction::PeerDead));
    assert!(has_audit(&out, AuditAction::TakeoverStarted));
    let init = enrp_on(&out, 11);
    assert!(
        init.iter()
            .any(|m| m.body == EnrpBody::InitTakeover { target: sid(SID_B) }),
        "{init:?}"
    );
    assert_eq!(a.core.stats().owned, 0);
    // An ack on a connection that is no accepted peer's: ignored.
    let ack = EnrpBody::InitTakeoverAck { target: sid(SID_B) };
    assert!(a.enrp(99, 0x0999_0999, ack.clone()).is_empty());
    // A speaker without the `peer` grant is refused; its ack and objection are ignored.
    let out = a.peer_up(98, "spiffe://acme.test/pe/intruder", 0x0000_0001);
    assert!(closed(&out));
    assert!(a.enrp(98, 1, ack.clone()).is_empty());
    let objection = EnrpBody::InitTakeover { target: sid(SID_B) };
    assert!(a.enrp(98, 1, objection).is_empty());
    assert_eq!(a.core.stats().owned, 0);
    // C acknowledges: done. TAKEOVER_SERVER, then ADD_PE with A as the new home.
    let out = a.enrp(11, SID_C, ack);
    assert!(has_audit(&out, AuditAction::TakeoverCompleted));
    let sent = enrp_on(&out, 11);
    assert_eq!(
        sent.first().map(|m| &m.body),
        Some(&EnrpBody::TakeoverServer { target: sid(SID_B) })
    );
    assert!(
        sent.iter()
            .any(|m| matches!(&m.body, EnrpBody::HandleUpdate {
        action: UpdateAction::AddPe, pool_element, ..
    } if pool_element.home_server_id == SID_A))
    );
    assert_eq!(a.core.stats().owned, 1);
    assert_eq!(a.home_of(5), Some(SID_A));
    assert_eq!(found_ids(&a.resolve(pu, "echo")), vec![5]);
    // The PE reconnects here and re-registers with its PE ID (spec §12.6): it stays.
    let pe_conn = a.connect(3, PE_A);
    let out = a.send(pe_conn, registration("echo", 5));
    assert_eq!(reg_cause(&out), None);
    assert!(has_audit(&out, AuditAction::Reregister));
    a.advance(300);
    assert_eq!(found_ids(&a.resolve(pu, "echo")), vec![5]);
}

#[test]
fn a_taken_over_pe_that_does_not_come_back_is_removed_after_the_grace_period() {
    // Two registrars: the survivor completes at once (no other live peer to wait for).
    let mut a = Harness::with_b_and_its_pe(SID_A, &[]);
    let out = a.b_dies();
    assert!(has_audit(&out, AuditAction::TakeoverStarted));
    assert!(has_audit(&out, AuditAction::TakeoverCompleted));
    assert_eq!(a.core.stats().owned, 1);
    assert_eq!(a.home_of(5), Some(SID_A));
    // No connection to send it the H=1 keep-alive on (spec §12.6): it has one grace
    // period to re-register here.
    let out = a.advance(200);
    assert!(has_audit(&out, AuditAction::RemoveConnectionLoss));
    assert_eq!(a.core.stats().pes, 0);
}

#[test]
fn a_peer_back_from_the_dead_takes_back_its_listed_pes_and_the_rest_are_removed() {
    // A healed partition: A took over B's PEs 5, 6 and 7; PE 7 re-registered here. B comes
    // back listing only PE 5 (6 was deregistered while apart): 5 goes home to B, 6 is
    // removed at once with DEL_PE (not after its grace period), 7 stays ours.
    let mut a = Harness::with_b_and_its_pe(SID_A, &[]);
    a.enrp(10, SID_B, add_pe(SID_B, "echo", 6, PE_A));
    a.enrp(10, SID_B, add_pe(SID_B, "echo", 7, PE_A));
    let out = a.b_dies();
    assert!(has_audit(&out, AuditAction::TakeoverCompleted));
    assert_eq!(a.core.stats().owned, 3);
    let pe_conn = a.connect(3, PE_A);
    assert_eq!(reg_cause(&a.send(pe_conn, registration("echo", 7))), None);
    let out = a.peer_up(12, PR_B, SID_B);
    assert!(
        enrp_sent(&out).contains(&EnrpBody::HandleTableRequest {
            own_children_only: true
        }),
        "{out:?}"
    );
    let out = a.enrp(12, SID_B, table_page(vec![peer_entry(SID_B, 5)], false));
    assert!(has_audit(&out, AuditAction::RemoveResync), "{out:?}");
    assert!(
        enrp_on(&out, 12).iter().any(|m| matches!(&m.body,
            EnrpBody::HandleUpdate { action: UpdateAction::DelPe, pool_element, .. }
                if pool_element.pe_id.get() == 6 && pool_element.home_server_id == SID_A)),
        "{out:?}"
    );
    assert_eq!(a.home_of(5), Some(SID_B));
    assert_eq!(a.home_of(6), None);
    assert_eq!(a.home_of(7), Some(SID_A));
    assert_eq!(a.core.stats().owned, 1);
    // Past the grace period nothing else goes: 5 is B's, 7 is connected here.
    let out = a.advance(300);
    assert!(
        !has_audit(&out, AuditAction::RemoveConnectionLoss),
        "{out:?}"
    );
    assert_eq!(a.core.stats().pes, 2);
}

#[test]
fn competing_takeovers_are_resolved_by_the_lower_server_id() {
    // Spec §9.8 step 2: A and C both declare B dead and start a takeover; C has the
    // lower Server ID, so A acknowledges C and cancels; exactly one owns B's PE.
    let mut a = Harness::with_b_and_its_pe(SID_A, &[(11, PR_C, SID_C)]);
    let mut c = Harness::with_b_and_its_pe(SID_C, &[(21, PR_A, SID_A)]);
    let (mut log_a, mut log_c) = (a.b_dies(), c.b_dies());
    assert!(has_audit(&log_a, AuditAction::TakeoverStarted));
    assert!(has_audit(&log_c, AuditAction::TakeoverStarted));
    let (mut to_c, mut to_a) = (enrp_on(&log_a, 11), enrp_on(&log_c, 21));
    for _ in 0..10 {
        if to_a.is_empty() && to_c.is_empty() {
            break;
        }
        let (mut next_a, mut next_c) = (Vec::new(), Vec::new());
        for m in to_c.drain(..) {
            let out = deliver(&mut c, 21, m);
            next_a.extend(enrp_on(&out, 21));
            log_c.extend(out);
        }
        for m in to_a.drain(..) {
            let out = deliver(&mut a, 11, m);
            next_c.extend(enrp_on(&out, 11));
            log_a.extend(out);
        }
        (to_a, to_c) = (next_a, next_c);
    }
    assert!(has_audit(&log_a, AuditAction::TakeoverAbandoned));
    assert!(has_audit(&log_a, AuditAction::TakeoverAcked));
    assert!(has_audit(&log_a, AuditAction::TakeoverApplied));
    assert!(!has_audit(&log_a, AuditAction::TakeoverCompleted));
    assert!(has_audit(&log_c, AuditAction::TakeoverCompleted));
    assert_eq!((a.core.stats().owned, c.core.stats().owned), (0, 1));
    assert_eq!((a.home_of(5), c.home_of(5)), (Some(SID_C), Some(SID_C)));
    // Checksums agree: A's copy of C's PEs is what C announces.
    assert_eq!(
        a.core.handlespace().checksum(sid(SID_C)),
        c.core.handlespace().checksum(sid(SID_C))
    );
}

#[test]
fn a_takeover_stops_when_the_target_speaks_and_expires_without_acknowledgements() {
    // Spec §9.8 steps 5 and 6.
    let mut a = Harness::with_b_and_its_pe(SID_A, &[(11, PR_C, SID_C)]);
    a.b_dies();
    let out = a.peer_up(12, PR_B, SID_B);
    assert!(has_audit(&out, AuditAction::TakeoverAbandoned));
    assert_eq!(a.core.stats().owned, 0);
    // B dies again; C keeps answering heartbeats but never acknowledges.
    let out = a.b_dies_on(12);
    assert!(has_audit(&out, AuditAction::TakeoverStarted));
    let presence = EnrpBody::Presence {
        reply_required: false,
        checksum: PeChecksum(0xffff),
        server_info: None,
    };
    let mut expired = false;
    for _ in 0..6 {
        a.enrp(11, SID_C, presence.clone());
        expired |= has_audit(&a.advance(200), AuditAction::TakeoverAbandoned);
    }
    assert!(expired);
    assert_eq!(a.core.stats().owned, 0);
    assert_eq!(a.home_of(5), Some(SID_B));
}

/// Issue 16: a peer holding a valid registrar identity cannot take over a registrar that
/// is alive here, with or without an INIT_TAKEOVER round: nothing moves, the refusals are
/// audited. Once C is dead here, B's takeover (announced while C lived) is acknowledged
/// and applied; B missed an update of C's, and the table asked of B at once removes PE 2
/// instead of leaving it under B's name (spec §9.8 step 4, §9.6).
#[test]
fn a_takeover_by_a_peer_is_checked_against_the_takers_own_table() {
    // A higher Server ID than B's, so that B wins the tie-break of §9.8 step 2.
    const SID_H: u32 = 0x7777_7777;
    let mut h = Harness::registrar(SID_H);
    let empty = || EnrpBody::HandleTableResponse {
        reject: false,
        more: false,
        pools: Vec::new(),
    };
    h.peer_up(10, PR_B, SID_B);
    h.enrp(10, SID_B, empty());
    h.peer_up(11, PR_C, SID_C);
    h.enrp(11, SID_C, empty());
    h.enrp(11, SID_C, add_pe(SID_C, "echo", 1, PE_A));
    h.enrp(11, SID_C, add_pe(SID_C, "echo", 2, PE_A));
    let pu = h.connect(3, PU_1);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1, 2]);
    let refused = |out: &[Action], what: &str| {
        out.iter().any(|a| {
            matches!(a, Action::Audit { event, .. }
                if event.action == AuditAction::TakeoverRefused
                    && event.outcome == Some(ErrorCause::SECURITY_REJECTION)
                    && event.actor.as_ref().is_some_and(|(id, _)| id.as_str() == PR_B)
                    && event.detail.as_deref().is_some_and(|d| d.contains(what)))
        })
    };

    // The forged takeover of live C, without an INIT_TAKEOVER round: refused.
    let out = h.enrp(10, SID_B, EnrpBody::TakeoverServer { target: sid(SID_C) });
    assert!(refused(&out, "the target is active here"), "{out:?}");
    assert!(!has_audit(&out, AuditAction::TakeoverApplied), "{out:?}");
    assert!(enrp_on(&out, 10).is_empty(), "{out:?}");
    // With the round: no acknowledgement while C lives here, and still no takeover.
    let out = h.enrp(10, SID_B, EnrpBody::InitTakeover { target: sid(SID_C) });
    assert!(
        refused(&out, "not acknowledged, it is active here"),
        "{out:?}"
    );
    assert!(enrp_on(&out, 10).is_empty(), "{out:?}");
    let out = h.enrp(10, SID_B, EnrpBody::TakeoverServer { target: sid(SID_C) });
    assert!(refused(&out, "the target is active here"), "{out:?}");
    // An empty table of B's changes nothing of C's; unasked for, it is not even read.
    let out = h.enrp(10, SID_B, empty());
    assert_eq!(
        audit_details(&out, AuditAction::PeerIgnored),
        vec![(
            PR_B.to_owned(),
            "ENRP_HANDLE_TABLE_RESPONSE we did not ask for".to_owned()
        )]
    );
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1, 2]);
    assert_eq!((h.home_of(1), h.home_of(2)), (Some(SID_C), Some(SID_C)));

    // C dies here: B's pending INIT_TAKEOVER is acknowledged now, ours does not start.
    let out = h.b_dies_on(11);
    assert!(has_audit(&out, AuditAction::PeerDead), "{out:?}");
    assert!(has_audit(&out, AuditAction::TakeoverAcked), "{out:?}");
    assert!(!has_audit(&out, AuditAction::TakeoverStarted), "{out:?}");
    assert!(
        enrp_on(&out, 10)
            .iter()
            .any(|m| m.body == EnrpBody::InitTakeoverAck { target: sid(SID_C) }),
        "{out:?}"
    );
    // A takeover of dead C by anyone but B is still refused.
    h.peer_up(12, PR_A, SID_A);
    let out = h.enrp(12, SID_A, EnrpBody::TakeoverServer { target: sid(SID_C) });
    assert!(has_audit(&out, AuditAction::TakeoverRefused), "{out:?}");
    assert_eq!(h.home_of(1), Some(SID_C));

    let out = h.enrp(10, SID_B, EnrpBody::TakeoverServer { target: sid(SID_C) });
    assert!(has_audit(&out, AuditAction::TakeoverApplied), "{out:?}");
    assert!(
        enrp_on(&out, 10).iter().any(|m| m.body
            == EnrpBody::HandleTableRequest {
                own_children_only: true
            }),
        "{out:?}"
    );
    h.enrp(10, SID_B, table_page(vec![peer_entry(SID_B, 1)], false));
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1]);
    assert_eq!(h.home_of(1), Some(SID_B));
}

/// Issue 16: a taken-over PE's ASAP transport, which came from its (now dead) home, is
/// dialed only if it passes the PE address rules here: a loopback listener is not dialed
/// without `allow_loopback`; a routable one is.
#[test]
fn a_taken_over_pe_is_dialed_only_at_an_address_the_rules_allow() {
    let mut a = Harness::registrar(SID_A);
    let mut config = a.core.config().clone();
    config.allow_loopback = false;
    a.core = Core::new(config, peer_grants());
    a.peer_up(10, PR_B, SID_B);
    for (id, ip) in [(5, Ipv4Addr::LOCALHOST), (6, Ipv4Addr::new(192, 0, 2, 6))] {
        let mut body = add_pe(SID_B, "echo", id, PE_A);
        if let EnrpBody::HandleUpdate { pool_element, .. } = &mut body {
            pool_element.asap_transport = Some(Transport::Tcp {
                port: NonZeroU16::new(3863).expect("non-zero"),
                transport_use: TransportUse::DataOnly,
                addr: Address::new(ip),
            });
        }
        a.enrp(10, SID_B, body);
    }
    let out = a.b_dies();
    assert!(has_audit(&out, AuditAction::TakeoverCompleted), "{out:?}");
    let dialed: Vec<(u32, TransportAddr)> = out
        .iter()
        .filter_map(|x| match x {
            Action::DialPe { pe, addr, .. } => Some((pe.2.get(), addr.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        dialed,
        vec![(
            6,
            TransportAddr::Tcp(SocketAddr::from(([192, 0, 2, 6], 3863)))
        )]
    );
}
