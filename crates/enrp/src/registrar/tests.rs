//! The registrar core driven by hand: inputs in, actions checked, time as a value.
#![allow(clippy::disallowed_methods)] // a test needs some base instant

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use ::asap::wire::Resolution;
use ::asap::wire::param::{Address, ErrorCause, Policy, PoolElement, Transport, TransportUse};

use super::*;

const PE_A: &str = "spiffe://acme.test/pe/a";
const PE_B: &str = "spiffe://acme.test/pe/b";
const PU_1: &str = "spiffe://acme.test/pu/1";

fn grant(identity: &str, pools: &str, actions: &[trust::Action]) -> Grant {
    Grant {
        identity: identity.parse().expect("identity pattern"),
        namespace: "default".parse().expect("namespace pattern"),
        pools: pools.parse().expect("pool pattern"),
        actions: actions.iter().copied().collect(),
    }
}

fn grants() -> Vec<Grant> {
    vec![
        grant(
            "spiffe://acme.test/pe/*",
            "echo",
            &[trust::Action::Register],
        ),
        grant(
            "spiffe://acme.test/pu/*",
            "*",
            &[trust::Action::Resolve, trust::Action::Report],
        ),
    ]
}

struct Harness {
    core: Core,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        let mut config = Config::new(ServerId::new(0x1122_3344).expect("non-zero"));
        config.timing = Timing::fast();
        config.allow_loopback = true;
        Self {
            core: Core::new(config, grants()),
            now: Instant::now(),
        }
    }

    fn connect(&mut self, conn: u64, id: &str) -> ConnId {
        let client = Client {
            id: SpiffeId::parse(id).expect("SPIFFE ID"),
            serial: Serial::from_bytes(&conn.to_be_bytes()),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
        };
        let c = ConnId(conn);
        let out = self
            .core
            .handle(Input::Connected { conn: c, client }, self.now);
        assert!(out.is_empty());
        c
    }

    fn send(&mut self, conn: ConnId, msg: AsapMsg) -> Vec<Action> {
        let msg = Decoded {
            msg,
            unrecognized: Vec::new(),
        };
        self.core.handle(Input::Asap { conn, msg }, self.now)
    }

    fn advance(&mut self, ms: u64) -> Vec<Action> {
        self.now += Duration::from_millis(ms);
        self.core.handle_timeout(self.now)
    }

    fn resolve(&mut self, conn: ConnId, pool: &str) -> Resolution {
        let out = self.send(
            conn,
            AsapMsg::HandleResolution {
                namespace: None,
                pool_handle: handle(pool),
                option: None,
            },
        );
        match sent(&out).as_slice() {
            [AsapMsg::HandleResolutionResponse { result, .. }] => result.clone(),
            other => panic!("expected one resolution response, got {other:?}"),
        }
    }
}

fn handle(s: &str) -> PoolHandle {
    PoolHandle::new(s).expect("pool handle")
}

fn pe(id: u32) -> PoolElement {
    PoolElement {
        pe_id: PeId::new(id).expect("non-zero"),
        home_server_id: 0,
        registration_life: 300_000,
        user_transport: Transport::Tcp {
            port: NonZeroU16::new(7777).expect("non-zero"),
            transport_use: TransportUse::DataOnly,
            addr: Address::new(Ipv4Addr::LOCALHOST),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

fn registration(pool: &str, id: u32) -> AsapMsg {
    AsapMsg::Registration {
        namespace: None,
        pool_handle: handle(pool),
        pool_element: pe(id),
    }
}

fn sent(out: &[Action]) -> Vec<AsapMsg> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn audits(out: &[Action]) -> Vec<(AuditAction, Option<u16>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Audit { event, .. } => Some((event.action, event.outcome)),
            _ => None,
        })
        .collect()
}

fn reg_cause(out: &[Action]) -> Option<u16> {
    match sent(out).as_slice() {
        [AsapMsg::RegistrationResponse { reject, error, .. }] => {
            assert_eq!(*reject, error.is_some());
            error.as_ref().map(|e| e.causes()[0].code())
        }
        other => panic!("expected one registration response, got {other:?}"),
    }
}

fn found_ids(r: &Resolution) -> Vec<u32> {
    match r {
        Resolution::Found { pool_elements, .. } => {
            let mut v: Vec<u32> = pool_elements
                .iter()
                .map(|e| e.pool_element.pe_id.get())
                .collect();
            v.sort_unstable();
            v
        }
        Resolution::Error(e) => panic!("resolution failed: {e:?}"),
    }
}

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
    assert_eq!(reg_cause(&out), Some(0xA));
    assert_eq!(audits(&out), [(AuditAction::Register, Some(0xA))]);
    // A PE identity has no resolve grant: the pool looks like it does not exist.
    h.send(pe_conn, registration("echo", 7));
    let out = h.send(
        pe_conn,
        AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: handle("echo"),
            option: None,
        },
    );
    assert_eq!(audits(&out), [(AuditAction::Resolve, Some(0x9))]);
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
    assert_eq!(reg_cause(&h.send(b, registration("echo", 7))), Some(0x4));
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
        [AsapMsg::DeregistrationResponse { error: Some(e), .. }] if e.causes()[0].code() == 0xA
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
    assert_eq!(outcomes.iter().filter(|(_, o)| *o == Some(0x6)).count(), 2);
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
    assert_eq!(audits(&out), [(AuditAction::Report, Some(0xA))]);
}

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
fn revoking_a_serial_removes_its_pes_even_after_their_connection_closed() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(3, PU_1);
    h.send(a, registration("echo", 7));
    // The TLS layer closes the revoked connection first; the core hears of it after.
    h.core.handle(Input::Closed { conn: a }, h.now);
    let serial = Serial::from_bytes(&1u64.to_be_bytes());
    let out = h
        .core
        .handle(Input::Revoked(Revocation::Serial(serial)), h.now);
    assert_eq!(audits(&out), [(AuditAction::RemoveRevoked, None)]);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
    assert_eq!(h.core.stats().timers, 0);
    // A connection with that certificate that finished its handshake before the TLS
    // layer knew is closed at once, and what it sends is ignored.
    let client = Client {
        id: SpiffeId::parse(PE_A).expect("SPIFFE ID"),
        serial: Serial::from_bytes(&1u64.to_be_bytes()),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 40001)),
    };
    let late = ConnId(9);
    let out = h
        .core
        .handle(Input::Connected { conn: late, client }, h.now);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Close { conn, .. } if *conn == late))
    );
    assert!(h.send(late, registration("echo", 7)).is_empty());
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
    assert_eq!(reg_cause(&out), Some(0xA));
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
    assert_eq!(reg_cause(&out), Some(0x3));
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
        [AsapMsg::Error(e)] if e.causes()[0].code() == 0x2
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
fn a_withdrawn_grant_removes_the_pes_it_allowed_and_only_those() {
    let mut h = Harness::new();
    let pe_a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    h.send(pe_a, registration("echo", 1));
    // Still allowed by a narrower grant: the PE stays, nothing is audited.
    let narrower = vec![
        grant(PE_A, "echo", &[trust::Action::Register]),
        grant("spiffe://acme.test/pu/*", "*", &[trust::Action::Resolve]),
    ];
    assert!(h.core.handle(Input::Grants(narrower), h.now).is_empty());
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![1]);
    // Withdrawn: the PE goes, with its own audit record, and cannot come back.
    let without = vec![grant(
        "spiffe://acme.test/pu/*",
        "*",
        &[trust::Action::Resolve],
    )];
    let out = h.core.handle(Input::Grants(without), h.now);
    assert_eq!(audits(&out), vec![(AuditAction::RemoveUngranted, None)]);
    assert!(matches!(h.resolve(pu, "echo"), Resolution::Error(_)));
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 1))), Some(0xA));
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
    assert_eq!(reg_cause(&out), Some(0x6));
    assert_eq!(audits(&out), [(AuditAction::Register, Some(0x6))]);
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
    assert_eq!(reg_cause(&h.send(pe_a, weighted)), Some(0x5));
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 4))), None);
    // Undeclared: only the registrar-wide limits apply.
    declare(&mut h, None);
    assert_eq!(reg_cause(&h.send(pe_a, registration("echo", 5))), None);
}
