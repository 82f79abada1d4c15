//! The registrar core driven by hand: inputs in, actions checked, time as a value.
#![allow(clippy::disallowed_methods)] // a test needs some base instant

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use ::asap::addr::TransportAddr;
use ::asap::wire::param::{
    Address, ErrorCause, PeChecksum, Policy, PoolElement, RegistrantIdentity, SctpAddresses,
    ServerInformation, Transport, TransportUse,
};
use ::asap::wire::{EnrpBody, PeEntry, PoolEntries, Resolution, UpdateAction};

use super::*;

const PE_A: &str = "spiffe://acme.test/pe/a";
const PE_B: &str = "spiffe://acme.test/pe/b";
const PU_1: &str = "spiffe://acme.test/pu/1";

fn grant(identity: &str, pools: &str, actions: &[identity::Action]) -> Grant {
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
            &[identity::Action::Register],
        ),
        grant(
            "spiffe://acme.test/pu/*",
            "*",
            &[identity::Action::Resolve, identity::Action::Report],
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
        self.connect_from(
            conn,
            id,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            &[],
        )
    }

    /// A connection from `addr`, with `addrs` as its other addresses (an SCTP
    /// association's peer addresses; none over TCP).
    fn connect_from(
        &mut self,
        conn: u64,
        id: &str,
        addr: SocketAddr,
        addrs: &[std::net::IpAddr],
    ) -> ConnId {
        let client = Client {
            id: SpiffeId::parse(id).expect("SPIFFE ID"),
            serial: Serial::from_bytes(&conn.to_be_bytes()),
            addr,
        };
        let c = ConnId(conn);
        let input = Input::Connected {
            conn: c,
            client,
            addrs: addrs.to_vec(),
        };
        let out = self.core.handle(input, self.now);
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
    let client = Client {
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

// ENRP (spec §9): peers, handle updates, liveness, handle tables.

const PR_B: &str = "spiffe://acme.test/registrar/b";
const SID_B: u32 = 0x5566_7788;

fn peer_grants() -> Vec<Grant> {
    let mut g = grants();
    g.push(grant(
        "spiffe://acme.test/registrar/*",
        "*",
        &[identity::Action::Peer],
    ));
    g
}

fn sid(n: u32) -> ServerId {
    ServerId::new(n).expect("non-zero")
}

impl Harness {
    fn with_peer_grants() -> Self {
        let mut h = Self::new();
        h.core = Core::new(h.core.config().clone(), peer_grants());
        h
    }

    fn peer_up(&mut self, conn: u64, id: &str, server_id: u32) -> Vec<Action> {
        let peer = Client {
            id: SpiffeId::parse(id).expect("SPIFFE ID"),
            serial: Serial::from_bytes(&conn.to_be_bytes()),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9902)),
        };
        self.core.handle(
            Input::PeerUp {
                conn: ConnId(conn),
                peer,
                server_id: sid(server_id),
                outbound: true,
            },
            self.now,
        )
    }

    fn enrp(&mut self, conn: u64, sender: u32, body: EnrpBody) -> Vec<Action> {
        let msg = Decoded {
            msg: EnrpMsg {
                sender: sid(sender),
                receiver: self.core.config().server_id.get(),
                body,
            },
            unrecognized: Vec::new(),
        };
        self.core.handle(
            Input::Enrp {
                conn: ConnId(conn),
                msg,
            },
            self.now,
        )
    }
}

fn enrp_sent(out: &[Action]) -> Vec<EnrpBody> {
    out.iter()
        .filter_map(|a| match a {
            Action::SendEnrp { msg, .. } => Some(msg.body.clone()),
            _ => None,
        })
        .collect()
}

fn closed(out: &[Action]) -> bool {
    out.iter().any(|a| matches!(a, Action::Close { .. }))
}

fn add_pe(home: u32, pool: &str, id: u32, registrant: &str) -> EnrpBody {
    let mut pool_element = pe(id);
    pool_element.home_server_id = home;
    EnrpBody::HandleUpdate {
        action: UpdateAction::AddPe,
        namespace: Namespace::default_namespace(),
        pool_handle: handle(pool),
        pool_element,
        registrant: RegistrantIdentity::new(registrant),
    }
}

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

fn server_info(server_id: u32, port: u16) -> ServerInformation {
    ServerInformation {
        server_id: sid(server_id),
        transport: Transport::Tcp {
            port: NonZeroU16::new(port).expect("non-zero"),
            transport_use: TransportUse::DataOnly,
            addr: Address::new(Ipv4Addr::LOCALHOST),
        },
    }
}

fn presence_from(server_id: u32, port: u16) -> EnrpBody {
    EnrpBody::Presence {
        reply_required: false,
        checksum: PeChecksum(0xffff),
        server_info: Some(server_info(server_id, port)),
    }
}

fn dials(out: &[Action]) -> Vec<TransportAddr> {
    out.iter()
        .filter_map(|a| match a {
            Action::DialPeer { addr } => Some(addr.clone()),
            _ => None,
        })
        .collect()
}

/// A TLS/TCP ENRP address on loopback.
fn tcp(port: u16) -> TransportAddr {
    TransportAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
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

fn list_response(servers: Vec<ServerInformation>) -> EnrpBody {
    EnrpBody::ListResponse {
        reject: false,
        servers,
    }
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
    assert_eq!(audits(&out), vec![(AuditAction::PeerIgnored, Some(0xA))]);
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
    assert_eq!(audits(&out), vec![(AuditAction::PeerRefused, Some(0xA))]);
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
    assert_eq!(audits(&out), vec![(AuditAction::PeerRefused, Some(0xA))]);
    assert_eq!(h.core.stats().pes, 0);
    // A second identity claiming B's live Server ID is refused too (spec §9.1).
    let out = h.peer_up(11, "spiffe://acme.test/registrar/impostor", SID_B);
    assert!(closed(&out));
    assert_eq!(audits(&out), vec![(AuditAction::PeerRefused, Some(0xA))]);
}

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
    assert_eq!(audits(&out), vec![(AuditAction::PeerIgnored, Some(0xA))]);
    // C tries to delete B's PE: ignored and audited.
    let mut del = add_pe(c, "echo", 5, PE_A);
    if let EnrpBody::HandleUpdate { action, .. } = &mut del {
        *action = UpdateAction::DelPe;
    }
    let out = h.enrp(11, c, del);
    assert_eq!(audits(&out), vec![(AuditAction::PeerIgnored, Some(0xA))]);
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

#[test]
fn handle_tables_page_with_the_m_bit_and_a_download_purges_what_is_gone() {
    // Spec §9.7: at most `handle_table_pes` per response, M=1 while more remain.
    let mut h = Harness::with_peer_grants();
    let mut config = h.core.config().clone();
    config.handle_table_pes = 2;
    h.core = Core::new(config, peer_grants());
    let pe_conn = h.connect(1, PE_A);
    for id in 1..=5 {
        h.send(pe_conn, registration("echo", id));
    }
    h.peer_up(10, PR_B, SID_B);
    let mut got = Vec::new();
    for page in 0..3 {
        let out = h.enrp(
            10,
            SID_B,
            EnrpBody::HandleTableRequest {
                own_children_only: true,
            },
        );
        match enrp_sent(&out).as_slice() {
            [
                EnrpBody::HandleTableResponse {
                    reject: false,
                    more,
                    pools,
                },
            ] => {
                assert_eq!(*more, page < 2, "page {page}");
                got.extend(
                    pools
                        .iter()
                        .flat_map(|p| p.entries.iter().map(|e| e.pool_element.pe_id.get())),
                );
            }
            other => panic!("expected one response, got {other:?}"),
        }
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);

    // The other side: B's table lists PE 1 and 3 (in two pages); PE 2, which we had from
    // B, is gone after the last page.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    for id in [1, 2] {
        h.enrp(10, SID_B, add_pe(SID_B, "echo", id, PE_A));
    }
    let entry = |id: u32| {
        let mut pool_element = pe(id);
        pool_element.home_server_id = SID_B;
        PeEntry {
            pool_element,
            registrant: RegistrantIdentity::new(PE_A),
        }
    };
    let page = |id: u32, more: bool| EnrpBody::HandleTableResponse {
        reject: false,
        more,
        pools: vec![PoolEntries {
            namespace: Namespace::default_namespace(),
            pool_handle: handle("echo"),
            entries: vec![entry(id)],
        }],
    };
    let out = h.enrp(10, SID_B, page(1, true));
    assert!(matches!(
        enrp_sent(&out).as_slice(),
        [EnrpBody::HandleTableRequest {
            own_children_only: true
        }]
    ));
    let out = h.enrp(10, SID_B, page(3, false));
    assert_eq!(
        audits(&out),
        vec![
            (AuditAction::PeerUpdate, None),
            (AuditAction::RemoveResync, None)
        ]
    );
    let ids: Vec<u32> = h
        .core
        .handlespace()
        .iter()
        .map(|(_, _, e)| e.pool_element.pe_id.get())
        .collect();
    assert_eq!(ids, vec![1, 3]);
}

#[test]
fn a_silent_peer_is_probed_then_declared_dead() {
    // Spec §9.5: MAX-TIME-LAST-HEARD → PRESENCE R=1; MAX-TIME-NO-RESPONSE → dead.
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    h.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
    let out = h.advance(200); // heartbeat
    assert!(matches!(
        enrp_sent(&out).as_slice(),
        [EnrpBody::Presence {
            reply_required: false,
            ..
        }]
    ));
    let out = h.advance(200); // 400 ms of silence: probe (and the next heartbeat)
    assert!(enrp_sent(&out).iter().any(|b| matches!(
        b,
        EnrpBody::Presence {
            reply_required: true,
            ..
        }
    )));
    assert_eq!(h.core.peers()[0].state, PeerState::Probing);
    let out = h.advance(200);
    assert_eq!(h.core.peers()[0].state, PeerState::Dead);
    assert!(closed(&out));
    assert!(audits(&out).contains(&(AuditAction::PeerDead, None)));
    // The only other registrar is dead: the takeover completes at once (spec §9.8).
    assert_eq!(h.core.stats().pes, 1);
    assert_eq!(h.core.stats().owned, 1);
}

#[test]
fn a_dead_peer_is_dialed_at_its_advertised_address() {
    // Found by the simulation (tests/sim, seed 642): B had dialed us, and B restarted
    // with no peer configured that would find us; a list naming B reached us while we
    // still thought B alive. Declared dead, B is dialed where it said it serves.
    let mut h = Harness::with_peer_grants();
    h.core.handle(
        Input::PeerUp {
            conn: ConnId(10),
            peer: Client {
                id: SpiffeId::parse(PR_B).expect("SPIFFE ID"),
                serial: Serial::from_bytes(&[1]),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            },
            server_id: sid(SID_B),
            outbound: false,
        },
        h.now,
    );
    assert!(dials(&h.enrp(10, SID_B, presence_from(SID_B, 9902))).is_empty());
    h.core.handle(Input::PeerDown { conn: ConnId(10) }, h.now);
    let out = h.advance(200);
    assert_eq!(h.core.peers()[0].state, PeerState::Dead);
    assert_eq!(dials(&out), vec![tcp(9902)]);
}

/// An SCTP Server Information on `port` listing 127.0.0.1 and 192.0.2.1.
fn sctp_server_info(server_id: u32, port: u16) -> ServerInformation {
    ServerInformation {
        server_id: sid(server_id),
        transport: Transport::Sctp {
            port: NonZeroU16::new(port).expect("non-zero"),
            transport_use: TransportUse::DataOnly,
            addrs: SctpAddresses::new([
                Address::new(Ipv4Addr::LOCALHOST),
                Address::new(Ipv4Addr::new(192, 0, 2, 1)),
            ])
            .expect("two addresses"),
        },
    }
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

#[test]
fn a_lost_connection_is_probed_and_a_reconnect_revives_the_peer() {
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    h.core.handle(Input::PeerDown { conn: ConnId(10) }, h.now);
    assert_eq!(h.core.peers()[0].state, PeerState::Probing);
    assert!(!h.core.peers()[0].connected);
    h.advance(100);
    h.peer_up(11, PR_B, SID_B);
    h.advance(150);
    assert_eq!(h.core.peers()[0].state, PeerState::Active);
    // Both dialed each other: the connection dialed by the lower Server ID stays.
    let out = h.core.handle(
        Input::PeerUp {
            conn: ConnId(12),
            peer: Client {
                id: SpiffeId::parse(PR_B).expect("SPIFFE ID"),
                serial: Serial::from_bytes(&[1]),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9902)),
            },
            server_id: sid(SID_B),
            outbound: false, // B (higher ID) dialed it: ours (11) wins
        },
        h.now,
    );
    assert!(matches!(
        out.as_slice(),
        [Action::Close {
            conn: ConnId(12),
            ..
        }]
    ));
    assert!(h.core.peers()[0].connected);
}

const SID_A: u32 = 0x1122_3344;
const SID_C: u32 = 0x0c0c_0c0c; // lower than A's: C wins a tie-break with A
const PR_A: &str = "spiffe://acme.test/registrar/a";
const PR_C: &str = "spiffe://acme.test/registrar/c";

impl Harness {
    /// A registrar with this Server ID and the peer grants.
    fn registrar(server_id: u32) -> Self {
        let mut h = Self::with_peer_grants();
        let mut config = h.core.config().clone();
        config.server_id = sid(server_id);
        h.core = Core::new(config, peer_grants());
        h
    }

    /// Peered with B (connection 10), which owns PE 5 of "echo", and with `others`.
    fn with_b_and_its_pe(server_id: u32, others: &[(u64, &str, u32)]) -> Self {
        let mut h = Self::registrar(server_id);
        h.peer_up(10, PR_B, SID_B);
        for (conn, id, sid) in others {
            h.peer_up(*conn, id, *sid);
        }
        h.enrp(10, SID_B, add_pe(SID_B, "echo", 5, PE_A));
        h
    }

    /// B's connection drops and B says nothing for MAX-TIME-NO-RESPONSE: dead.
    fn b_dies(&mut self) -> Vec<Action> {
        self.b_dies_on(10)
    }

    fn b_dies_on(&mut self, conn: u64) -> Vec<Action> {
        self.core
            .handle(Input::PeerDown { conn: ConnId(conn) }, self.now);
        self.advance(200)
    }

    fn home_of(&self, id: u32) -> Option<u32> {
        self.core
            .handlespace()
            .iter()
            .find(|(_, _, e)| e.pool_element.pe_id.get() == id)
            .map(|(_, _, e)| e.pool_element.home_server_id)
    }
}

/// The ENRP messages of `out` sent on connection `conn`.
fn enrp_on(out: &[Action], conn: u64) -> Vec<EnrpMsg> {
    out.iter()
        .filter_map(|a| match a {
            Action::SendEnrp { conn: c, msg } if *c == ConnId(conn) => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn deliver(h: &mut Harness, conn: u64, msg: EnrpMsg) -> Vec<Action> {
    let msg = Decoded {
        msg,
        unrecognized: Vec::new(),
    };
    h.core.handle(
        Input::Enrp {
            conn: ConnId(conn),
            msg,
        },
        h.now,
    )
}

fn has_audit(out: &[Action], action: AuditAction) -> bool {
    audits(out).iter().any(|(a, _)| *a == action)
}

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
    assert_eq!(audits(&out), vec![(AuditAction::PeerIgnored, Some(0xA))]);
    assert_eq!(a.home_of(5), None);
}

fn peer_entry(home: u32, id: u32) -> PeEntry {
    let mut pool_element = pe(id);
    pool_element.home_server_id = home;
    PeEntry {
        pool_element,
        registrant: RegistrantIdentity::new(PE_A),
    }
}

fn table_page(entries: Vec<PeEntry>, more: bool) -> EnrpBody {
    EnrpBody::HandleTableResponse {
        reject: false,
        more,
        pools: vec![PoolEntries {
            namespace: Namespace::default_namespace(),
            pool_handle: handle("echo"),
            entries,
        }],
    }
}

fn resolution_cause(r: &Resolution) -> Option<u16> {
    match r {
        Resolution::Error(e) => Some(e.causes()[0].code()),
        Resolution::Found { .. } => None,
    }
}

#[test]
fn while_starting_registrations_and_resolutions_are_refused_with_lack_of_resources() {
    // Spec §9.3 step 5 [P]: cause 0x6 until the mentor's table is downloaded.
    let mut h = Harness::with_peer_grants();
    h.core.begin_startup(h.now);
    assert!(h.core.starting());
    let pe_conn = h.connect(1, PE_A);
    let out = h.send(pe_conn, registration("echo", 1));
    assert_eq!(reg_cause(&out), Some(ErrorCause::LackOfResources.code()));
    assert_eq!(
        audits(&out),
        vec![(
            AuditAction::Register,
            Some(ErrorCause::LackOfResources.code())
        )]
    );
    assert_eq!(h.core.stats().pes, 0);
    let pu = h.connect(2, PU_1);
    assert_eq!(
        resolution_cause(&h.resolve(pu, "echo")),
        Some(ErrorCause::LackOfResources.code())
    );
}

#[test]
fn the_mentor_download_pages_with_w0_and_its_last_page_ends_the_startup() {
    // Spec §9.3 steps 2-3: the first peer up is the mentor, asked for W=0; M=1 pages on.
    let mut h = Harness::with_peer_grants();
    h.core.begin_startup(h.now);
    let out = h.peer_up(10, PR_B, SID_B);
    assert!(enrp_sent(&out).contains(&EnrpBody::HandleTableRequest {
        own_children_only: false
    }));
    // A second peer is only asked for its own PEs.
    let out = h.peer_up(11, PR_C, SID_C);
    assert!(enrp_sent(&out).contains(&EnrpBody::HandleTableRequest {
        own_children_only: true
    }));
    // A page with a PE of another home: not the mentor's to speak for, skipped quietly.
    let out = h.enrp(
        10,
        SID_B,
        table_page(vec![peer_entry(SID_B, 1), peer_entry(SID_C, 9)], true),
    );
    assert_eq!(
        enrp_sent(&out),
        vec![EnrpBody::HandleTableRequest {
            own_children_only: false
        }]
    );
    assert_eq!(audits(&out), vec![(AuditAction::PeerUpdate, None)]);
    assert!(h.core.starting());
    let out = h.enrp(10, SID_B, table_page(vec![peer_entry(SID_B, 2)], false));
    assert_eq!(
        audits(&out),
        vec![
            (AuditAction::PeerUpdate, None),
            (AuditAction::MentorDone, None)
        ]
    );
    assert!(!h.core.starting());
    let pu = h.connect(2, PU_1);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![1, 2]);
    let pe_conn = h.connect(1, PE_A);
    assert_eq!(reg_cause(&h.send(pe_conn, registration("echo", 3))), None);
    // No timeout fires later.
    assert!(!has_audit(&h.advance(2_000), AuditAction::MentorTimeout));
}

#[test]
fn without_a_mentor_the_startup_ends_at_the_mentor_timeout() {
    // Spec §9.3 step 4: serve alone after the mentor discovery timeout.
    let mut h = Harness::with_peer_grants();
    h.core.begin_startup(h.now);
    let out = h.advance(999);
    assert!(out.is_empty());
    assert!(h.core.starting());
    let out = h.advance(1);
    assert_eq!(audits(&out), vec![(AuditAction::MentorTimeout, None)]);
    assert!(!h.core.starting());
    let pe_conn = h.connect(1, PE_A);
    assert_eq!(reg_cause(&h.send(pe_conn, registration("echo", 1))), None);
    let pu = h.connect(2, PU_1);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), vec![1]);
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

/// The PE IDs of a handle table response, and its M bit.
fn page_ids(out: &[Action]) -> (Vec<u32>, bool) {
    match enrp_sent(out).as_slice() {
        [
            EnrpBody::HandleTableResponse {
                reject: false,
                more,
                pools,
            },
        ] => (
            pools
                .iter()
                .flat_map(|p| p.entries.iter().map(|e| e.pool_element.pe_id.get()))
                .collect(),
            *more,
        ),
        other => panic!("expected one handle table response, got {other:?}"),
    }
}

#[test]
fn w1_pages_list_only_own_pes_once_while_pes_come_and_go() {
    // Spec §9.7 with W=1: only the PEs this registrar owns, after the continuation point;
    // a PE removed before it is reached is not listed, one added after the point is.
    let mut a = Harness::registrar(SID_A);
    let mut config = a.core.config().clone();
    config.handle_table_pes = 3;
    a.core = Core::new(config, peer_grants());
    let pe_conn = a.connect(1, PE_A);
    for id in (1..=19).step_by(2) {
        assert_eq!(reg_cause(&a.send(pe_conn, registration("echo", id))), None);
    }
    // C's PEs sit between ours in the same pool.
    a.peer_up(11, PR_C, SID_C);
    for id in (2..=20).step_by(2) {
        a.enrp(11, SID_C, add_pe(SID_C, "echo", id, PE_B));
    }
    assert_eq!(a.core.stats().pes, 20);
    a.peer_up(10, PR_B, SID_B);
    let w1 = || EnrpBody::HandleTableRequest {
        own_children_only: true,
    };
    assert_eq!(page_ids(&a.enrp(10, SID_B, w1())), (vec![1, 3, 5], true));
    // Between pages: the continuation point (5) and a PE not yet sent (7) go; 21 comes.
    let dereg = |id: u32| AsapMsg::Deregistration {
        namespace: None,
        pool_handle: handle("echo"),
        pe_id: PeId::new(id).expect("non-zero"),
    };
    a.send(pe_conn, dereg(5));
    a.send(pe_conn, dereg(7));
    assert_eq!(reg_cause(&a.send(pe_conn, registration("echo", 21))), None);
    assert_eq!(page_ids(&a.enrp(10, SID_B, w1())), (vec![9, 11, 13], true));
    assert_eq!(page_ids(&a.enrp(10, SID_B, w1())), (vec![15, 17, 19], true));
    assert_eq!(page_ids(&a.enrp(10, SID_B, w1())), (vec![21], false));
    // The download is over: the next request starts again from the top.
    assert_eq!(page_ids(&a.enrp(10, SID_B, w1())), (vec![1, 3, 9], true));
    // W=0 lists C's PEs too, with its own continuation point.
    let w0 = EnrpBody::HandleTableRequest {
        own_children_only: false,
    };
    assert_eq!(page_ids(&a.enrp(10, SID_B, w0)), (vec![1, 2, 3], true));
}

#[test]
fn a_registrar_started_later_learns_every_pe_of_its_mentor_over_many_pages() {
    // Spec §9.3, §9.7: B starts, A is its mentor; A's whole table arrives 128 PEs a page
    // (the default) and B serves once it has every PE, in every pool.
    let grants = vec![
        grant(
            "spiffe://acme.test/pe/*",
            "*",
            &[identity::Action::Register],
        ),
        grant("spiffe://acme.test/pu/*", "*", &[identity::Action::Resolve]),
        grant(
            "spiffe://acme.test/registrar/*",
            "*",
            &[identity::Action::Peer],
        ),
    ];
    let mut a = Harness::registrar(SID_A);
    a.core = Core::new(a.core.config().clone(), grants.clone());
    let pe_conn = a.connect(1, PE_A);
    for id in 1..=1_000 {
        let pool = format!("pool-{}", id % 97);
        assert_eq!(reg_cause(&a.send(pe_conn, registration(&pool, id))), None);
    }
    let mut b = Harness::registrar(SID_B);
    b.core = Core::new(b.core.config().clone(), grants);
    b.core.begin_startup(b.now);
    // A knows B on connection 20, B knows A on connection 10.
    let mut to_b = enrp_on(&a.peer_up(20, PR_B, SID_B), 20);
    let mut to_a = enrp_on(&b.peer_up(10, PR_A, SID_A), 10);
    let mut pages = 0;
    for _ in 0..100 {
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        for m in std::mem::take(&mut to_a) {
            to_b.extend(enrp_on(&deliver(&mut a, 20, m), 20));
        }
        for m in std::mem::take(&mut to_b) {
            if matches!(m.body, EnrpBody::HandleTableResponse { .. }) {
                pages += 1;
            }
            to_a.extend(enrp_on(&deliver(&mut b, 10, m), 10));
        }
    }
    assert!(!b.core.starting(), "the mentor download ended the start-up");
    assert!(pages >= 1_000_usize.div_ceil(128), "{pages} pages");
    let table = |h: &Harness| -> Vec<(String, Vec<u8>, u32, u32)> {
        h.core
            .handlespace()
            .iter()
            .map(|(n, p, e)| {
                let pe = &e.pool_element;
                (
                    n.as_str().to_owned(),
                    p.as_bytes().to_vec(),
                    pe.pe_id.get(),
                    pe.home_server_id,
                )
            })
            .collect()
    };
    assert_eq!(table(&b).len(), 1_000);
    assert_eq!(table(&b), table(&a));
    let pu = b.connect(2, PU_1);
    assert_eq!(found_ids(&b.resolve(pu, "pool-5")).len(), 3);
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
                    && event.outcome == Some(0xA)
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

fn del_pe(home: u32, pool: &str, id: u32, registrant: &str) -> EnrpBody {
    let mut body = add_pe(home, pool, id, registrant);
    if let EnrpBody::HandleUpdate { action, .. } = &mut body {
        *action = UpdateAction::DelPe;
    }
    body
}

/// The audit records of `out` with this action: (actor, detail).
fn audit_details(out: &[Action], action: AuditAction) -> Vec<(String, String)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Audit { event, .. } if event.action == action => Some((
                event
                    .actor
                    .as_ref()
                    .map(|(id, _)| id.to_string())
                    .unwrap_or_default(),
                event.detail.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
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
    assert!(refused[0].1.contains("holds no register grant"), "{out:?}");
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
        Some(0x6)
    );
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
            peer: Client {
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
    let rsplib = Client {
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
    let rsplib = Client {
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
    let client = Client {
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

/// A registration of PE `id` in "echo" with an SCTP user transport on `addrs`.
fn sctp_registration(id: u32, addrs: &[Ipv4Addr]) -> AsapMsg {
    let mut pool_element = pe(id);
    pool_element.user_transport = Transport::Sctp {
        port: NonZeroU16::new(7777).expect("non-zero"),
        transport_use: TransportUse::DataOnly,
        addrs: SctpAddresses::new(addrs.iter().map(|a| Address::new(*a))).expect("addresses"),
    };
    AsapMsg::Registration {
        namespace: None,
        pool_handle: handle("echo"),
        pool_element,
    }
}

const DOC_1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DOC_2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const FOREIGN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

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
        assert_eq!(reg_cause(&out), Some(0xA), "PE {id}");
        assert_eq!(
            audits(&out),
            [(AuditAction::Register, Some(0xA))],
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
    assert_eq!(reg_cause(&out), Some(0xA));
    assert_eq!(h.resolve(pu, "echo"), before);
    // Unless the check is off (--no-address-check: behind NAT or a proxy).
    h.core.config.check_user_address = false;
    let out = h.send(c, sctp_registration(2, &[DOC_1, FOREIGN]));
    assert_eq!(reg_cause(&out), None, "{out:?}");
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1, 2]);
}
