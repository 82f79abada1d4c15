//! Handle updates (spec §9.4; `registrar/enrp/updates.rs`): owned PEs announced, peers
//! PEs applied under the grants, claims and each peer's share.

use super::*;

#[test]
fn handle_updates_of_owned_pes_go_to_every_peer() {
    // Spec §9.4: ADD_PE on registration and re-registration, DEL_PE on removal.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    h.peer_up(11, "spiffe://acme.test/registrar/c", 0x0c0c_0c0c);
    let pe_conn = h.connect(1, PE_A);
    let out = h.send(pe_conn, registration("echo", 7));
    let updates = enrp_sent(&out);
    assert_eq!(updates.len(), 2, "{updates:?}");
    for u in &updates {
        assert!(matches!(u, EnrpBody::HandleUpdate {
            action: UpdateAction::AddPe, pool_element, registrant, ..
        } if pool_element.home_server_id == 0x1122_3344
            && registrant.as_ref().map(RegistrantIdentity::as_str) == Some(PE_A)));
    }
    // The audit record (the barrier) comes before the updates.
    let first_update = out
        .iter()
        .position(|a| matches!(a, Action::SendEnrp { .. }));
    let audit = out.iter().position(|a| matches!(a, Action::Audit { .. }));
    assert!(audit < first_update);
    let out = h.send(
        pe_conn,
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: handle("echo"),
            pe_id: PeId::new(7).expect("non-zero"),
        },
    );
    assert!(matches!(
        enrp_sent(&out).as_slice(),
        [
            EnrpBody::HandleUpdate {
                action: UpdateAction::DelPe,
                ..
            },
            EnrpBody::HandleUpdate {
                action: UpdateAction::DelPe,
                ..
            },
        ]
    ));
}

#[test]
fn a_peers_pe_is_served_but_only_its_home_may_change_it() {
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    let c = 0x0c0c_0c0c;
    h.peer_up(11, "spiffe://acme.test/registrar/c", c);
    let pu = h.connect(2, PU_1);
    // B speaks for its own PE: stored with home B, resolvable, not probed here.
    let out = h.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
    assert!(enrp_sent(&out).is_empty(), "{out:?}");
    // Audited here, naming B (issue 16); a refresh is no change and is not audited.
    assert!(matches!(out.as_slice(), [Action::Audit { event, .. }]
        if event.action == AuditAction::PeerUpdate
            && event.actor.as_ref().is_some_and(|(id, _)| id.as_str() == PR_B)
            && event.pe_id.map(PeId::get) == Some(5)
            && event.detail.as_deref() == Some("ADD_PE: 1 added, 0 re-homed, 0 removed")));
    assert!(h.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A)).is_empty());
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![5]);
    assert_eq!(h.core.stats().owned, 0);
    assert_eq!(h.core.peers()[0].checksum_match, None);
    // C claims a PE whose home is B: ignored and audited (spec §9.4 [P]).
    let out = h.enrp(11, c, add_pe(SID_B, "echo", 6, PE_A));
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerIgnored,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
    // C tries to delete B's PE: ignored and audited.
    let mut del = add_pe(c, "echo", 5, PE_A);
    if let EnrpBody::HandleUpdate { action, .. } = &mut del {
        *action = UpdateAction::DelPe;
    }
    let out = h.enrp(11, c, del);
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerIgnored,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![5]);
    // B deletes its own.
    let mut del = add_pe(SID_B, "echo", 5, PE_A);
    if let EnrpBody::HandleUpdate { action, .. } = &mut del {
        *action = UpdateAction::DelPe;
    }
    h.enrp(10, SID_B, del);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
}

#[test]
fn a_peers_pe_expires_at_its_registration_life_unless_refreshed() {
    // Spec §9.4: the receiver (re)starts an expiry of Registration Life per ADD_PE.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    let mut add = add_pe(SID_B, "echo", 5, PE_A);
    if let EnrpBody::HandleUpdate { pool_element, .. } = &mut add {
        pool_element.registration_life = 1_000;
    }
    h.enrp(10, SID_B, add.clone());
    h.advance(300);
    h.enrp(10, SID_B, add); // refreshed: another full life
    h.advance(900);
    assert_eq!(h.core.stats().pes, 1);
    // Heartbeats from B keep the peer alive, but not its PE.
    let presence = EnrpBody::Presence {
        reply_required: false,
        checksum: PeChecksum(0),
        server_info: None,
    };
    h.enrp(10, SID_B, presence);
    let out = h.advance(200);
    assert_eq!(h.core.stats().pes, 0);
    assert!(audits(&out).contains(&(AuditAction::RemoveExpired, None)));
}

/// Issue 16, docs/ENRP-TRUST.md §2: C (a valid registrar identity) names itself home of
/// live B's PE 5. Refused and audited; its claim waits, and applies only once B lets the
/// PE go (DEL_PE). A claim with another user transport is refused outright.
#[test]
fn a_peer_cannot_re_home_a_live_peers_pe_until_its_home_lets_it_go() {
    let mut a = Harness::with_b_and_its_pe(SID_A, &[(11, PR_C, SID_C)]);
    let pu = a.connect(2, PU_1);
    let out = a.enrp(11, SID_C, add_pe(SID_C, "echo", 5, PE_A));
    let refused = audit_details(&out, AuditAction::PeerIgnored);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(refused[0].0, PR_C);
    assert!(
        refused[0]
            .1
            .contains("re-home from 0x55667788, active here"),
        "{out:?}"
    );
    assert_eq!(a.home_of(5), Some(SID_B));
    // Its DEL_PE of B's PE changes nothing either.
    let out = a.enrp(11, SID_C, del_pe(SID_C, "echo", 5, PE_A));
    assert!(has_audit(&out, AuditAction::PeerIgnored));
    assert_eq!(found_ids(&a.resolve(pu, "echo")), vec![5]);
    assert_eq!(a.home_of(5), Some(SID_B));
    // A re-home that another user transport refutes does not even wait.
    let mut other = add_pe(SID_C, "echo", 5, PE_A);
    if let EnrpBody::HandleUpdate { pool_element, .. } = &mut other {
        pool_element.user_transport = match pool_element.user_transport.clone() {
            Transport::Tcp {
                transport_use,
                addr,
                ..
            } => Transport::Tcp {
                port: NonZeroU16::new(4444).expect("non-zero"),
                transport_use,
                addr,
            },
            t => t,
        };
    }
    let out = a.enrp(11, SID_C, other);
    assert!(
        audit_details(&out, AuditAction::PeerIgnored)[0]
            .1
            .contains("non-unique"),
        "{out:?}"
    );
    // The real re-registration at C: C's claim waits for B.
    a.enrp(11, SID_C, add_pe(SID_C, "echo", 5, PE_A));
    assert_eq!(a.home_of(5), Some(SID_B));
    // B lets it go: removed (audited, naming B), and C's claim applies (naming C).
    let out = a.enrp(10, SID_B, del_pe(SID_B, "echo", 5, PE_A));
    let changes = audit_details(&out, AuditAction::PeerUpdate);
    assert_eq!(
        changes,
        vec![
            (
                PR_B.to_owned(),
                "DEL_PE: 0 added, 0 re-homed, 1 removed".to_owned()
            ),
            (
                PR_C.to_owned(),
                "re-home once the old home let the PE go: 1 added, 0 re-homed, 0 removed"
                    .to_owned()
            ),
        ],
        "{out:?}"
    );
    assert_eq!(a.home_of(5), Some(SID_C));
    assert_eq!(found_ids(&a.resolve(pu, "echo")), vec![5]);
}

/// docs/ENRP-TRUST.md §2: the re-home of a PE whose home dies here applies at its death,
/// before a takeover would claim it; a PE re-homed from a dead home moves at once.
#[test]
fn a_re_home_applies_when_the_old_home_dies_here() {
    let mut a = Harness::with_b_and_its_pe(SID_A, &[(11, PR_C, SID_C)]);
    a.enrp(10, SID_B, add_pe(SID_B, "echo", 6, PE_A));
    a.enrp(11, SID_C, add_pe(SID_C, "echo", 5, PE_A));
    assert_eq!(a.home_of(5), Some(SID_B));
    let out = a.b_dies();
    assert!(has_audit(&out, AuditAction::PeerDead), "{out:?}");
    assert_eq!(a.home_of(5), Some(SID_C));
    // PE 6 had no claim: B's takeover starts for it alone.
    assert!(has_audit(&out, AuditAction::TakeoverStarted), "{out:?}");
    assert_eq!(a.home_of(6), Some(SID_B));
    // B is dead here: C's re-registration of PE 6 moves it at once.
    let out = a.enrp(11, SID_C, add_pe(SID_C, "echo", 6, PE_A));
    assert_eq!(
        audit_details(&out, AuditAction::PeerUpdate)[0].1,
        "ADD_PE: 0 added, 1 re-homed, 0 removed"
    );
    assert_eq!(a.home_of(6), Some(SID_C));
}

/// docs/ENRP-TRUST.md §2: a PE of ours whose connection is lost re-registers at B. B's
/// word alone does not take it from us (a Byzantine peer could say so of any PE of ours in
/// its grace period): at the end of the grace period we let it go, tell every peer
/// (DEL_PE), and B's re-home applies.
#[test]
fn a_pe_that_moved_away_is_let_go_at_the_end_of_its_grace_period() {
    let mut a = Harness::registrar(SID_A);
    a.peer_up(10, PR_B, SID_B);
    a.peer_up(11, PR_C, SID_C);
    let pe_conn = a.connect(3, PE_A);
    assert_eq!(reg_cause(&a.send(pe_conn, registration("echo", 5))), None);
    a.core.handle(Input::Closed { conn: pe_conn }, a.now);
    let out = a.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
    let refused = audit_details(&out, AuditAction::PeerIgnored);
    assert!(
        refused[0]
            .1
            .starts_with("re-home of our PE, its connection lost"),
        "{out:?}"
    );
    assert_eq!(a.home_of(5), Some(SID_A));
    assert!(enrp_sent(&out).is_empty(), "{out:?}");
    let out = a.advance(250);
    assert!(
        has_audit(&out, AuditAction::RemoveConnectionLoss),
        "{out:?}"
    );
    for conn in [10, 11] {
        assert!(
            enrp_on(&out, conn).iter().any(|m| matches!(&m.body,
                EnrpBody::HandleUpdate { action: UpdateAction::DelPe, pool_element, .. }
                    if pool_element.pe_id.get() == 5 && pool_element.home_server_id == SID_A)),
            "{out:?}"
        );
    }
    assert_eq!(
        audit_details(&out, AuditAction::PeerUpdate),
        vec![(
            PR_B.to_owned(),
            "re-home once the old home let the PE go: 1 added, 0 re-homed, 0 removed".to_owned()
        )]
    );
    assert_eq!(a.home_of(5), Some(SID_B));
    assert_eq!(a.core.stats().owned, 0);
}

#[test]
fn a_peers_pe_needs_a_registrant_granted_here() {
    let mut a = Harness::registrar(SID_A);
    a.peer_up(10, PR_B, SID_B);
    // PE_A may register in "echo" only; a PU may register nowhere.
    let out = a.enrp(10, SID_B, add_pe(SID_B, "other", 5, PE_A));
    let refused = audit_details(&out, AuditAction::PeerIgnored);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(refused[0].0, PR_B);
    assert!(
        refused[0].1.contains("no register grant for this pool"),
        "{out:?}"
    );
    let out = a.enrp(10, SID_B, add_pe(SID_B, "echo", 6, PU_1));
    assert!(has_audit(&out, AuditAction::PeerIgnored), "{out:?}");
    let mut anonymous = add_pe(SID_B, "echo", 7, PE_A);
    if let EnrpBody::HandleUpdate { registrant, .. } = &mut anonymous {
        *registrant = None;
    }
    let out = a.enrp(10, SID_B, anonymous);
    assert_eq!(
        audit_details(&out, AuditAction::PeerIgnored)[0].1,
        "no registrant identity"
    );
    assert_eq!(a.core.stats().pes, 0);
    // The granted one is taken.
    a.enrp(10, SID_B, add_pe(SID_B, "echo", 8, PE_A));
    assert_eq!(a.home_of(8), Some(SID_B));
    // ...until the grant is withdrawn here: it goes from this handlespace (not B's: no
    // DEL_PE is ours to send), audited.
    let out = a
        .core
        .handle(Input::Grants(peer_grants()[1..].to_vec()), a.now);
    assert_eq!(audits(&out), vec![(AuditAction::RemoveUngranted, None)]);
    assert!(enrp_sent(&out).is_empty(), "{out:?}");
    assert_eq!(a.home_of(8), None);
}

/// Issue 16: one peer holds at most `max_pes_per_peer` PEs here, and the per-registrant
/// limit counts peers' PEs: a page beyond them is refused in part, audited as one record
/// with the count; refreshes of what it holds still pass.
#[test]
fn a_peer_has_a_bounded_share_of_the_handlespace() {
    let mut a = Harness::registrar(SID_A);
    let mut config = a.core.config().clone();
    config.max_pes_per_peer = 2;
    a.core = Core::new(config, peer_grants());
    a.peer_up(10, PR_B, SID_B);
    let page = table_page((1..=4).map(|id| peer_entry(SID_B, id)).collect(), false);
    let out = a.enrp(10, SID_B, page);
    assert_eq!(
        audit_details(&out, AuditAction::PeerUpdate),
        vec![(
            PR_B.to_owned(),
            "handle table page: 2 added, 0 re-homed, 0 removed".to_owned()
        )]
    );
    let refused = audit_details(&out, AuditAction::PeerIgnored);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(
        refused[0].1,
        "handle table page: 2 PEs refused; the first: the peer holds its share of the \
         handlespace here (2 PEs)"
    );
    assert_eq!(a.core.stats().pes, 2);
    assert!(a.enrp(10, SID_B, add_pe(SID_B, "echo", 1, PE_A)).is_empty());
    // The per-registrant limit counts PEs learnt from peers.
    let mut b = Harness::registrar(SID_A);
    let mut config = b.core.config().clone();
    config.limits.max_pes_per_registrant = 1;
    b.core = Core::new(config, peer_grants());
    b.peer_up(10, PR_B, SID_B);
    b.enrp(10, SID_B, add_pe(SID_B, "echo", 1, PE_A));
    let out = b.enrp(10, SID_B, add_pe(SID_B, "echo", 2, PE_A));
    assert!(
        audit_details(&out, AuditAction::PeerIgnored)[0]
            .1
            .contains("PEs of this registrant"),
        "{out:?}"
    );
    let pe_conn = b.connect(3, PE_A);
    assert_eq!(
        reg_cause(&b.send(pe_conn, registration("echo", 9))),
        Some(ErrorCause::LACK_OF_RESOURCES)
    );
}
