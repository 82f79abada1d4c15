//! The ASAP server procedures (spec §7, `registrar/asap.rs`): registration, deregistration,
//! resolution, keep-alives, unreachability reports, default namespaces, multi-homed PEs.

use super::*;

#[test]
fn registration_is_audited_before_it_is_acknowledged_and_resolvable() {
    let mut h = Harness::new();
    let pe_conn = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    let out = h.send(pe_conn, registration("echo", 7));
    // STYLE.md §2: the durable audit record comes before the response.
    assert!(matches!(
        out.as_slice(),
        [
            Action::Audit { durability: Durability::BeforeReply, event },
            Action::Send { msg: AsapMsg::RegistrationResponse { reject: false, .. }, .. },
        ] if event.action == AuditAction::Register && event.outcome.is_none()
            && event.actor.as_ref().is_some_and(|(id, _)| id.as_str() == PE_A)
    ));
    match h.resolve(pu, "echo") {
        Resolution::Found {
            pool_elements,
            policy,
        } => {
            assert_eq!(policy, Some(Policy::RoundRobin));
            assert_eq!(pool_elements.len(), 1);
            let e = &pool_elements[0];
            assert_eq!(
                e.pool_element.home_server_id, 0x1122_3344,
                "home := this PR"
            );
            assert_eq!(e.registrant.as_ref().map(|r| r.as_str()), Some(PE_A));
        }
        Resolution::Error(e) => panic!("{e:?}"),
    }
}

#[test]
fn unauthorized_registration_and_resolution_are_refused_and_audited() {
    let mut h = Harness::new();
    let pe_conn = h.connect(1, PE_A);
    let out = h.send(pe_conn, registration("secret", 7));
    assert_eq!(reg_cause(&out), Some(ErrorCause::SECURITY_REJECTION));
    assert_eq!(
        audits(&out),
        [(AuditAction::Register, Some(ErrorCause::SECURITY_REJECTION))]
    );
    // A PE identity may resolve the pool it may register in (issue 25: its business
    // card names the pool's other PEs), and no other: that one looks like it does not
    // exist.
    let mut with_secret = grants();
    with_secret.push(grant(PE_B, "secret", &[identity::Action::Register]));
    assert!(h.core.handle(Input::Grants(with_secret), h.now).is_empty());
    let b_conn = h.connect(2, PE_B);
    assert_eq!(reg_cause(&h.send(b_conn, registration("secret", 8))), None);
    h.send(pe_conn, registration("echo", 7));
    assert_eq!(found_ids(&h.resolve(pe_conn, "echo")), [7]);
    assert_eq!(found_ids(&h.resolve(b_conn, "secret")), [8]);
    let out = h.send(
        pe_conn,
        AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: handle("secret"),
            option: None,
            hints: Default::default(),
        },
    );
    assert_eq!(
        audits(&out),
        [(AuditAction::Resolve, Some(ErrorCause::UNKNOWN_POOL_HANDLE))]
    );
    assert!(matches!(
        sent(&out).as_slice(),
        [AsapMsg::HandleResolutionResponse { result: Resolution::Error(e), .. }]
            if e.causes() == [ErrorCause::UnknownPoolHandle]
    ));
}

#[test]
fn only_the_registrant_may_reregister_or_deregister() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let b = h.connect(2, PE_B);
    let pu = h.connect(3, PU_1);
    h.send(a, registration("echo", 7));
    assert_eq!(
        reg_cause(&h.send(b, registration("echo", 7))),
        Some(ErrorCause::NON_UNIQUE_PE_ID)
    );
    let out = h.send(
        b,
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: handle("echo"),
            pe_id: PeId::new(7).expect("non-zero"),
        },
    );
    assert!(matches!(
        sent(&out).as_slice(),
        [AsapMsg::DeregistrationResponse { error: Some(e), .. }] if e.causes()[0].code() == ErrorCause::SECURITY_REJECTION
    ));
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [7]);
    // The registrant itself re-registers (an update) and deregisters.
    assert_eq!(reg_cause(&h.send(a, registration("echo", 7))), None);
    let out = h.send(
        a,
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: handle("echo"),
            pe_id: PeId::new(7).expect("non-zero"),
        },
    );
    assert_eq!(audits(&out), [(AuditAction::Deregister, None)]);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
    assert_eq!(h.core.stats().timers, 0, "no timer outlives its PE");
}

#[test]
fn unanswered_keep_alive_removes_the_pe() {
    // Spec §7.5, with 200 ms + 200 ms timers.
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    h.send(a, registration("echo", 7));
    h.send(a, registration("echo", 8));
    let out = h.advance(200);
    assert_eq!(
        sent(&out)
            .iter()
            .filter(|m| matches!(m, AsapMsg::EndpointKeepAlive { home: false, .. }))
            .count(),
        2
    );
    // PE 8 answers, PE 7 does not.
    h.send(
        a,
        AsapMsg::EndpointKeepAliveAck {
            pool_handle: handle("echo"),
            pe_id: PeId::new(8).expect("non-zero"),
        },
    );
    let out = h.advance(200);
    assert_eq!(audits(&out), [(AuditAction::RemoveTimeout, None)]);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [8]);
    // PE 8 got its next keep-alive one interval after its ACK.
    assert!(
        sent(&out).iter().any(
            |m| matches!(m, AsapMsg::EndpointKeepAlive { pe_id: Some(id), .. } if id.get() == 8)
        )
    );
}

#[test]
fn keep_alive_ack_counts_only_on_the_connection_of_the_last_registration() {
    // Spec §7.5: the ACK must come from the PE's connection; a PE that re-registered on
    // another connection (spec §12.6) is no longer kept alive by the old one.
    let mut h = Harness::new();
    let old = h.connect(1, PE_A);
    let new = h.connect(3, PE_A);
    let pu = h.connect(2, PU_1);
    for id in [7, 8] {
        h.send(old, registration("echo", id));
        h.send(new, registration("echo", id));
    }
    let out = h.advance(200);
    let keep_alives: Vec<ConnId> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: AsapMsg::EndpointKeepAlive { .. },
            } => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(keep_alives, [new, new]);
    let ack = |id| AsapMsg::EndpointKeepAliveAck {
        pool_handle: handle("echo"),
        pe_id: PeId::new(id).expect("non-zero"),
    };
    h.send(old, ack(7)); // not PE 7's connection any more: ignored
    h.send(new, ack(8));
    let out = h.advance(200);
    assert_eq!(audits(&out), [(AuditAction::RemoveTimeout, None)]);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [8]);
}

#[test]
fn a_lost_connection_removes_its_pes_after_the_grace_period_unless_they_return() {
    // Spec §12.6.
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    h.send(a, registration("echo", 7));
    h.send(a, registration("echo", 8));
    h.core.handle(Input::Closed { conn: a }, h.now);
    assert_eq!(
        found_ids(&h.resolve(pu, "echo")),
        [7, 8],
        "still there in grace"
    );
    let a2 = h.connect(3, PE_A);
    h.advance(100);
    assert_eq!(reg_cause(&h.send(a2, registration("echo", 8))), None);
    let out = h.advance(100);
    assert_eq!(audits(&out), [(AuditAction::RemoveConnectionLoss, None)]);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [8]);
}

#[test]
fn unreachable_reports_need_distinct_reporters_and_a_failed_probe() {
    // Spec §7.6 [P], threat T-13.
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    let report = || AsapMsg::EndpointUnreachable {
        namespace: None,
        pool_handle: handle("echo"),
        pe_id: PeId::new(7).expect("non-zero"),
    };
    // One PU reporting many times is one reporter, and is rate-limited.
    let pu1 = h.connect(2, PU_1);
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        let out = h.send(pu1, report());
        assert!(sent(&out).is_empty(), "no probe from a single reporter");
        outcomes.extend(audits(&out));
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|(_, o)| *o == Some(ErrorCause::LACK_OF_RESOURCES))
            .count(),
        2
    );
    let pu2 = h.connect(3, "spiffe://acme.test/pu/2");
    assert!(sent(&h.send(pu2, report())).is_empty());
    let pu3 = h.connect(4, "spiffe://acme.test/pu/3");
    let out = h.send(pu3, report());
    assert!(matches!(
        sent(&out).as_slice(),
        [AsapMsg::EndpointKeepAlive { .. }]
    ));
    // The PE answers the probe: it stays.
    h.send(
        a,
        AsapMsg::EndpointKeepAliveAck {
            pool_handle: handle("echo"),
            pe_id: PeId::new(7).expect("non-zero"),
        },
    );
    assert!(audits(&h.advance(150)).is_empty());
    assert_eq!(found_ids(&h.resolve(pu1, "echo")), [7]);
    // A PE identity may not report at all.
    let out = h.send(a, report());
    assert_eq!(
        audits(&out),
        [(AuditAction::Report, Some(ErrorCause::SECURITY_REJECTION))]
    );
}

#[test]
fn the_user_address_must_be_the_connections() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let mut m = pe(7);
    m.user_transport = Transport::Tcp {
        port: NonZeroU16::new(7777).expect("non-zero"),
        transport_use: TransportUse::DataOnly,
        addr: Address::new(Ipv4Addr::new(127, 0, 0, 2)),
    };
    let out = h.send(
        a,
        AsapMsg::Registration {
            namespace: None,
            pool_handle: handle("echo"),
            pool_element: m,
        },
    );
    assert_eq!(reg_cause(&out), Some(ErrorCause::SECURITY_REJECTION));
    let mut m = pe(7);
    m.registration_life = 0;
    let out = h.send(
        a,
        AsapMsg::Registration {
            namespace: None,
            pool_handle: handle("echo"),
            pool_element: m,
        },
    );
    assert_eq!(reg_cause(&out), Some(ErrorCause::INVALID_VALUES));
}

#[test]
fn malformed_input_gets_the_spec_answer() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    // Unknown message type 0x42: ASAP_ERROR with cause 0x2 (spec §3.4).
    let bytes = [0x42, 0, 0, 8, 0, 0, 0, 0];
    let error = AsapMsg::decode(&bytes).expect_err("unknown type");
    let out = h.core.handle(Input::Malformed { conn: a, error }, h.now);
    assert!(matches!(
        sent(&out).as_slice(),
        [AsapMsg::Error(e)] if e.causes()[0].code() == ErrorCause::UNRECOGNIZED_MESSAGE
    ));
    // A framing fault (length not a multiple of 4) closes without reply (spec §12.2).
    let error = AsapMsg::decode(&[1, 0, 0, 5, 0]).expect_err("bad length");
    let out = h.core.handle(Input::Malformed { conn: a, error }, h.now);
    assert!(out.iter().any(|x| matches!(x, Action::Close { .. })));
    assert!(sent(&out).is_empty());
    // An unknown parameter with action bits 00 (spec §3.3): dropped silently, the
    // connection stays.
    let mut bytes = registration("echo", 7).to_bytes().expect("encodes");
    bytes.extend_from_slice(&[0x0a, 0xbc, 0, 8, 1, 2, 3, 4]);
    let len = u16::try_from(bytes.len()).expect("small");
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let error = AsapMsg::decode(&bytes).expect_err("unknown mandatory parameter");
    let out = h.core.handle(Input::Malformed { conn: a, error }, h.now);
    assert_eq!(audits(&out), [(AuditAction::Malformed, None)]);
    assert!(
        !out.iter()
            .any(|x| matches!(x, Action::Close { .. } | Action::Send { .. }))
    );
}

#[test]
fn a_declared_pool_refuses_other_policies_and_more_pes_than_declared() {
    let mut h = Harness::new();
    let pe_a = h.connect(1, PE_A);
    let declare = |h: &mut Harness, declared| {
        let out = h.core.handle(
            Input::DeclarePool {
                namespace: Namespace::default_namespace(),
                pool_handle: handle("echo"),
                declared,
            },
            h.now,
        );
        assert!(out.is_empty());
    };
    declare(
        &mut h,
        Some(Declared {
            policy: Some(PolicyType::ROUND_ROBIN),
            max_pes: Some(2),
        }),
    );
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 1))), None);
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 2))), None);
    // Full: a third PE is refused; a re-registration of one inside is not.
    let out = h.send(pe_a, registration("echo", 3));
    assert_eq!(reg_cause(&out), Some(ErrorCause::LACK_OF_RESOURCES));
    assert_eq!(
        audits(&out),
        [(AuditAction::Register, Some(ErrorCause::LACK_OF_RESOURCES))]
    );
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 2))), None);
    // Another policy type is refused even with room.
    declare(
        &mut h,
        Some(Declared {
            policy: Some(PolicyType::ROUND_ROBIN),
            max_pes: Some(5),
        }),
    );
    let mut weighted = registration("echo", 4);
    if let AsapMsg::Registration { pool_element, .. } = &mut weighted {
        pool_element.policy = Policy::WeightedRoundRobin { weight: 2 };
    }
    assert_eq!(
        reg_cause(&h.send(pe_a, weighted)),
        Some(ErrorCause::INCONSISTENT_POLICY)
    );
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 4))), None);
    // Undeclared: only the registrar-wide limits apply.
    declare(&mut h, None);
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 5))), None);
}

/// ARCHITECTURE.md §3: a request without 0x8100 goes to its identity's default namespace;
/// an explicit Namespace parameter still wins, and the grants still decide.
#[test]
fn requests_without_a_namespace_go_to_the_identitys_default_namespace() {
    let mut h = Harness::new();
    let mut all = grants();
    for (identity, actions) in [
        (PE_A, &[identity::Action::Register][..]),
        (PU_1, &[identity::Action::Resolve][..]),
    ] {
        all.push(Grant {
            identity: identity.parse().expect("identity pattern"),
            namespace: "lab".parse().expect("namespace pattern"),
            pools: "echo".parse().expect("pool pattern"),
            actions: actions.iter().copied().collect(),
            labels: None,
        });
    }
    h.core.handle(Input::Grants(all), h.now);
    let rule = |identity: &str, namespace: &str| DefaultNamespace {
        identity: identity.parse().expect("identity pattern"),
        namespace: namespace.to_owned(),
    };
    h.core.handle(
        Input::DefaultNamespaces(vec![rule(PE_A, "lab"), rule(PU_1, "lab")]),
        h.now,
    );
    let (a, b) = (h.connect(1, PE_A), h.connect(2, PE_B));
    assert_eq!(reg_cause(&h.send(a, registration("echo", 1))), None);
    assert_eq!(reg_cause(&h.send(b, registration("echo", 2))), None);
    let pu_1 = h.connect(3, PU_1);
    let pu_2 = h.connect(4, "spiffe://acme.test/pu/2");
    assert_eq!(found_ids(&h.resolve(pu_1, "echo")), [1], "PU 1 sees lab");
    assert_eq!(
        found_ids(&h.resolve(pu_2, "echo")),
        [2],
        "PU 2 sees default"
    );
    let explicit = h.send(
        pu_1,
        AsapMsg::HandleResolution {
            namespace: Namespace::new("default"),
            pool_handle: handle("echo"),
            option: None,
            hints: Default::default(),
        },
    );
    match sent(&explicit).as_slice() {
        [AsapMsg::HandleResolutionResponse { result, .. }] => assert_eq!(found_ids(result), [2]),
        other => panic!("expected one resolution response, got {other:?}"),
    }
    // Without the rule, PE A's next registration goes to `default`, where it may register
    // too; its PE in lab stays.
    h.core.handle(Input::DefaultNamespaces(Vec::new()), h.now);
    assert_eq!(reg_cause(&h.send(a, registration("echo", 3))), None);
    assert_eq!(found_ids(&h.resolve(pu_2, "echo")), [2, 3]);
    assert_eq!(found_ids(&h.resolve(pu_1, "echo")), [2, 3]);
}

/// Spec §7.1 PR step 3 [P]: a multi-homed PE over SCTP may register any of its
/// association's peer addresses, not only the primary one (compared in canonical form).
#[test]
fn a_multi_homed_pe_registers_its_association_addresses() {
    let mut h = Harness::new();
    let mapped = std::net::IpAddr::from(DOC_2.to_ipv6_mapped());
    let c = h.connect_from(1, PE_A, SocketAddr::from((DOC_1, 40000)), &[mapped]);
    let out = h.send(c, sctp_registration(1, &[DOC_1, DOC_2]));
    assert_eq!(reg_cause(&out), None, "{out:?}");
    // Without the primary address too.
    let out = h.send(c, sctp_registration(2, &[DOC_2]));
    assert_eq!(reg_cause(&out), None, "{out:?}");
    let pu = h.connect(2, PU_1);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1, 2]);
}

/// Spec §7.1 PR step 3 [P]: one address that is not the association's (someone else's,
/// where PUs would be sent) rejects the whole registration, new or re-registration, with
/// Security Rejection, audited, and leaves the handlespace as it was.
#[test]
fn a_registration_with_a_foreign_address_is_rejected() {
    let mut h = Harness::new();
    let c = h.connect_from(
        1,
        PE_A,
        SocketAddr::from((DOC_1, 40000)),
        &[DOC_1.into(), DOC_2.into()],
    );
    let out = h.send(c, sctp_registration(1, &[DOC_1]));
    assert_eq!(reg_cause(&out), None, "{out:?}");
    let pu = h.connect(2, PU_1);
    let before = h.resolve(pu, "echo");
    for id in [1, 2] {
        let out = h.send(c, sctp_registration(id, &[DOC_1, DOC_2, FOREIGN]));
        assert_eq!(
            reg_cause(&out),
            Some(ErrorCause::SECURITY_REJECTION),
            "PE {id}"
        );
        assert_eq!(
            audits(&out),
            [(AuditAction::Register, Some(ErrorCause::SECURITY_REJECTION))],
            "PE {id}"
        );
        assert_eq!(
            h.resolve(pu, "echo"),
            before,
            "PE {id}: the handlespace changed"
        );
    }
    // Over TCP the one remote address is all a PE may register: its own next to
    // another is refused as well.
    let tcp = h.connect_from(3, PE_B, SocketAddr::from((DOC_1, 40001)), &[]);
    let out = h.send(tcp, sctp_registration(3, &[DOC_1, DOC_2]));
    assert_eq!(reg_cause(&out), Some(ErrorCause::SECURITY_REJECTION));
    assert_eq!(h.resolve(pu, "echo"), before);
    // Unless the check is off (--no-address-check: behind NAT or a proxy).
    h.core.config.check_user_address = false;
    let out = h.send(c, sctp_registration(2, &[DOC_1, FOREIGN]));
    assert_eq!(reg_cause(&out), None, "{out:?}");
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1, 2]);
}

/// Issue 24: the core's one RNG is a ChaCha8 stream seeded from `Config::rng_seed`, whose
/// values its crate keeps from release to release (`rand`'s StdRng does not promise that).
/// The picks of a random pool are fixed by the seed: pinned here for seed 7, so that a
/// change of generator or of how the core draws from it shows.
#[test]
fn random_policy_picks_are_fixed_by_the_seed() {
    let picks = |seed: u64| {
        let mut config = Config::new(ServerId::new(0x1122_3344).expect("non-zero"));
        config.timing = Timing::fast();
        config.allow_loopback = true;
        config.rng_seed = seed;
        let mut h = Harness {
            core: Core::new(config, grants()),
            now: Instant::now(),
        };
        let a = h.connect(1, PE_A);
        for id in 1..=8 {
            let pool_element = PoolElement {
                policy: Policy::Random,
                ..pe(id)
            };
            let msg = AsapMsg::Registration {
                namespace: None,
                pool_handle: handle("echo"),
                pool_element,
            };
            assert_eq!(reg_cause(&h.send(a, msg)), None);
        }
        let u = h.connect(2, PU_1);
        (0..6)
            .map(|_| found_ids(&h.resolve(u, "echo")))
            .collect::<Vec<_>>()
    };
    let seven = picks(7);
    assert_eq!(seven, picks(7), "one seed, one sequence of picks");
    assert_ne!(seven, picks(8), "another seed, other picks");
    let pinned: [[u32; 3]; 6] = [
        [2, 3, 7],
        [3, 5, 6],
        [1, 4, 7],
        [2, 4, 8],
        [2, 4, 5],
        [1, 3, 5],
    ];
    assert_eq!(seven, pinned.map(Vec::from), "the picks of seed 7");
}
