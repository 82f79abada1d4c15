//! Removals without a deregistration (`registrar/removals.rs`): revocations, withdrawn
//! grants, operator removals.

use super::*;

#[test]
fn revocation_closes_connections_and_removes_pes() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let b = h.connect(2, PE_B);
    let pu = h.connect(3, PU_1);
    h.send(a, registration("echo", 7));
    h.send(b, registration("echo", 8));
    let id = SpiffeId::parse(PE_A).expect("SPIFFE ID");
    let out = h
        .core
        .handle(Input::Revoked(Revocation::Identity(id)), h.now);
    assert_eq!(audits(&out), [(AuditAction::RemoveRevoked, None)]);
    assert!(out.contains(&Action::Close {
        conn: a,
        reason: "certificate revoked"
    }));
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [8]);
}

#[test]
fn a_federated_serial_equal_to_a_local_one_revokes_nothing_local() {
    // Serials are unique per CA only (RFC 5280 §4.1.2.2): partner.test's CA revoking its
    // serial 1 says nothing about acme.test's certificate with serial 1.
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(3, PU_1);
    h.send(a, registration("echo", 7));
    let serial = Serial::from_bytes(&1u64.to_be_bytes());
    let federated = Revocation::Serial {
        domain: TrustDomain::new("partner.test").expect("domain"),
        serial: serial.clone(),
    };
    let out = h.core.handle(Input::Revoked(federated), h.now);
    assert!(audits(&out).is_empty(), "{out:?}");
    assert!(
        !out.iter().any(|a| matches!(a, Action::Close { .. })),
        "{out:?}"
    );
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [7]);
    // The same serial of the local domain is the local certificate.
    let local = Revocation::Serial {
        domain: TrustDomain::new("acme.test").expect("domain"),
        serial,
    };
    let out = h.core.handle(Input::Revoked(local), h.now);
    assert_eq!(audits(&out), [(AuditAction::RemoveRevoked, None)]);
    assert!(out.contains(&Action::Close {
        conn: a,
        reason: "certificate revoked"
    }));
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
}

#[test]
fn revoking_a_serial_removes_its_pes_even_after_their_connection_closed() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(3, PU_1);
    h.send(a, registration("echo", 7));
    // The TLS layer closes the revoked connection first; the core hears of it after.
    h.core.handle(Input::Closed { conn: a }, h.now);
    let revocation = Revocation::Serial {
        domain: TrustDomain::new("acme.test").expect("domain"),
        serial: Serial::from_bytes(&1u64.to_be_bytes()),
    };
    let out = h.core.handle(Input::Revoked(revocation), h.now);
    assert_eq!(audits(&out), [(AuditAction::RemoveRevoked, None)]);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
    assert_eq!(h.core.stats().timers, 0);
    // A connection with that certificate that finished its handshake before the TLS
    // layer knew is closed at once, and what it sends is ignored.
    let client = Remote {
        id: SpiffeId::parse(PE_A).expect("SPIFFE ID"),
        serial: Serial::from_bytes(&1u64.to_be_bytes()),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 40001)),
    };
    let late = ConnId(9);
    let input = Input::Connected {
        conn: late,
        client,
        addrs: Vec::new(),
    };
    let out = h.core.handle(input, h.now);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Close { conn, .. } if *conn == late))
    );
    assert!(h.send(late, registration("echo", 7)).is_empty());
}

#[test]
fn a_withdrawn_grant_removes_the_pes_it_allowed_and_only_those() {
    let mut h = Harness::new();
    let pe_a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    h.send(pe_a, registration("echo", 1));
    // Still allowed by a narrower grant: the PE stays, nothing is audited.
    let narrower = vec![
        grant(PE_A, "echo", &[identity::Action::Register]),
        grant("spiffe://acme.test/pu/*", "*", &[identity::Action::Resolve]),
    ];
    assert!(h.core.handle(Input::Grants(narrower), h.now).is_empty());
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![1]);
    // Withdrawn: the PE goes, with its own audit record, and cannot come back.
    let without = vec![grant(
        "spiffe://acme.test/pu/*",
        "*",
        &[identity::Action::Resolve],
    )];
    let out = h.core.handle(Input::Grants(without), h.now);
    assert_eq!(audits(&out), vec![(AuditAction::RemoveUngranted, None)]);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
    assert_eq!(
        reg_cause(&h.send(pe_a, registration("echo", 1))),
        Some(ErrorCause::SECURITY_REJECTION)
    );
    // Its keep-alive timers went with it.
    assert!(audits(&h.advance(1_000)).is_empty());
}

#[test]
fn an_operator_removes_a_pe_a_pool_or_a_namespace_and_is_named_in_the_audit() {
    let mut h = Harness::new();
    let pe_a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    for id in 1..=3 {
        h.send(pe_a, registration("echo", id));
    }
    let ns = Namespace::default_namespace();
    let pe2 = (ns.clone(), handle("echo"), PeId::new(2).expect("non-zero"));
    let out = h.core.handle(
        Input::Remove {
            scope: Scope::Pe(pe2),
            actor: "token:abc".into(),
        },
        h.now,
    );
    assert_eq!(audits(&out), vec![(AuditAction::RemoveAdmin, None)]);
    match &out[..] {
        [Action::Audit { event, .. }] => {
            let detail = event.detail.as_deref().unwrap_or_default();
            assert!(detail.starts_with("by token:abc"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![1, 3]);
    // Removing it again changes nothing.
    let again = Scope::Pe((ns.clone(), handle("echo"), PeId::new(2).expect("non-zero")));
    let out = h.core.handle(
        Input::Remove {
            scope: again,
            actor: "token:abc".into(),
        },
        h.now,
    );
    assert!(out.is_empty());
    let out = h.core.handle(
        Input::Remove {
            scope: Scope::Namespace(ns),
            actor: "token:abc".into(),
        },
        h.now,
    );
    assert_eq!(audits(&out).len(), 2);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
    assert!(audits(&h.advance(1_000)).is_empty(), "timers stopped");
}

#[test]
fn a_removed_trust_domain_is_not_remembered_like_a_revocation() {
    let mut h = Harness::new();
    let pe_a = h.connect(1, PE_A);
    h.send(pe_a, registration("echo", 1));
    let out = h
        .core
        .handle(Input::DomainRemoved("acme.test".into()), h.now);
    assert_eq!(audits(&out), vec![(AuditAction::RemoveRevoked, None)]);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Close { conn, .. } if *conn == pe_a))
    );
    // Added again later: its identities connect normally.
    h.connect(3, PE_B);
}

#[test]
fn a_revocation_removes_the_revoked_registrants_pes_learnt_from_peers() {
    // Issue 7: each registrar enforces its revocations on every PE it knows.
    let mut a = Harness::with_b_and_its_pe(SID_A, &[]);
    a.enrp(10, SID_B, add_pe(SID_B, "echo", 6, PE_B));
    let out = a.core.handle(
        Input::Revoked(Revocation::Identity(
            SpiffeId::parse(PE_A).expect("SPIFFE ID"),
        )),
        a.now,
    );
    assert_eq!(audits(&out), vec![(AuditAction::RemoveRevoked, None)]);
    // Not ours: no DEL_PE (B, its home, judges by its own revocations).
    assert!(enrp_sent(&out).is_empty());
    assert_eq!(a.home_of(5), None);
    assert_eq!(a.home_of(6), Some(SID_B));
    // B announcing it again changes nothing.
    let out = a.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::PeerIgnored,
            Some(ErrorCause::SECURITY_REJECTION)
        )]
    );
    assert_eq!(a.home_of(5), None);
}

/// Issue 16: the revocations stored before a restart are in force in the core from the
/// start: a peer cannot bring back a revoked registrant's PEs.
#[test]
fn stored_revocations_hold_for_peers_pes_from_the_start() {
    let mut a = Harness::registrar(SID_A);
    a.core.set_revocations(vec![Revocation::Identity(
        SpiffeId::parse(PE_A).expect("SPIFFE ID"),
    )]);
    a.peer_up(10, PR_B, SID_B);
    let out = a.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
    assert_eq!(
        audit_details(&out, AuditAction::PeerIgnored)[0].1,
        "registrant revoked here"
    );
    assert_eq!(a.core.stats().pes, 0);
    a.enrp(10, SID_B, add_pe(SID_B, "echo", 6, PE_B));
    assert_eq!(a.home_of(6), Some(SID_B));
}
