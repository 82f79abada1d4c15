//! An operator's drain (`registrar/drain.rs`, issue 21): out of resolutions, kept across
//! re-registrations, deregistered at the deadline, told to peers, lifted only by the
//! operator.

use super::*;

fn key(id: u32) -> PeKey {
    (
        Namespace::default_namespace(),
        handle("echo"),
        PeId::new(id).expect("non-zero"),
    )
}

fn detail(out: &[Action], action: AuditAction) -> String {
    out.iter()
        .find_map(|a| match a {
            Action::Audit { event, .. } if event.action == action => event.detail.clone(),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_drained_pe_leaves_resolutions_keeps_its_drain_and_goes_at_the_deadline() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    h.send(a, registration("echo", 7));
    h.send(a, registration("echo", 8));
    let deadline = h.now + Duration::from_millis(150);
    h.core
        .drain(&key(7), deadline, 1_700_000_000_000)
        .expect("drained");
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [8]);
    assert_eq!(h.core.drain_of(&key(7)), Some((1_700_000_000_000, false)));
    // The PE registers again, saying nothing of a drain (or trying D=0): it stays
    // draining, and the audit says so.
    let out = h.send(a, registration("echo", 7));
    assert_eq!(reg_cause(&out), None);
    assert!(
        detail(&out, AuditAction::Reregister).contains("draining"),
        "{out:?}"
    );
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [8]);
    // Still registered until the deadline, then deregistered by its home.
    let out = h.advance(150);
    assert_eq!(audits(&out), [(AuditAction::RemoveDrained, None)]);
    assert!(
        h.core
            .handlespace()
            .pool(&key(7).0, &key(7).1)
            .and_then(|p| p.entry(key(7).2))
            .is_none()
    );
    // Drained: its registrations are refused until the operator lifts the drain.
    let out = h.send(a, registration("echo", 7));
    assert_eq!(reg_cause(&out), Some(ErrorCause::SECURITY_REJECTION));
    h.core.undrain(&key(7)).expect("lifted");
    assert_eq!(reg_cause(&h.send(a, registration("echo", 7))), None);
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [7, 8]);
}

#[test]
fn lifting_a_drain_returns_the_pe_and_a_pool_of_draining_pes_is_unknown() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    h.send(a, registration("echo", 7));
    h.core
        .drain(&key(7), h.now + Duration::from_secs(60), 1)
        .expect("drained");
    assert_eq!(
        resolution_cause(&h.resolve(pu, "echo")),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    h.core.undrain(&key(7)).expect("lifted");
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [7]);
    assert_eq!(h.core.drain_of(&key(7)), None);
    // Its deadline timer went with the drain.
    assert!(audits(&h.advance(150)).is_empty());
    // Nothing to lift, nothing to drain: refused, nothing changes.
    assert_eq!(h.core.undrain(&key(7)), Err(DrainRefusal::NoSuchPe));
    assert!(matches!(
        h.core.drain(&key(9), h.now, 1),
        Err(DrainRefusal::NoSuchPe)
    ));
}

#[test]
fn the_home_tells_its_peers_and_a_peer_does_not_drain_what_it_does_not_own() {
    let mut a = Harness::with_b_and_its_pe(SID_A, &[]);
    let pe_a = a.connect(1, PE_A);
    let pu = a.connect(2, PU_1);
    a.send(pe_a, registration("echo", 7));
    // B's PE 5: only B may drain it.
    assert_eq!(
        a.core
            .drain(&key(5), a.now + Duration::from_secs(1), 1)
            .err(),
        Some(DrainRefusal::NotHome(SID_B))
    );
    let out = a
        .core
        .drain(&key(7), a.now + Duration::from_secs(1), 42)
        .expect("drained");
    match enrp_sent(&out).as_slice() {
        [
            EnrpBody::HandleUpdate {
                action: UpdateAction::AddPe,
                pool_element,
                ..
            },
        ] => assert_eq!(pool_element.status.drain_deadline_ms, Some(42)),
        other => panic!("{other:?}"),
    }
    assert_eq!(found_ids(&a.resolve(pu, "echo")), [5]);
    // B drains its PE 5: A stops returning it too.
    let EnrpBody::HandleUpdate {
        action,
        namespace,
        pool_handle,
        mut pool_element,
        registrant,
    } = add_pe(SID_B, "echo", 5, PE_A)
    else {
        unreachable!()
    };
    pool_element.status.drain_deadline_ms = Some(43);
    a.enrp(
        10,
        SID_B,
        EnrpBody::HandleUpdate {
            action,
            namespace,
            pool_handle,
            pool_element,
            registrant,
        },
    );
    assert_eq!(
        resolution_cause(&a.resolve(pu, "echo")),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
}

/// `rsp pe --advertise` (issue 21): a PE may register a server whose certificate carries
/// its own identity or one below its path, never another workload's; the same holds for
/// a peer's PE.
#[test]
fn a_pe_vouches_only_for_a_serving_identity_of_its_own() {
    use ::asap::wire::param::ServingIdentity;
    let advertising = |id: u32, serving: &str| {
        let mut e = pe(id);
        e.serving_identity = ServingIdentity::new(serving);
        AsapMsg::Registration {
            namespace: None,
            pool_handle: handle("echo"),
            pool_element: e,
        }
    };
    let mut h = Harness::with_b_and_its_pe(SID_A, &[]);
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    let out = h.send(a, advertising(7, "spiffe://acme.test/pe/a/nginx"));
    assert_eq!(reg_cause(&out), None);
    let out = h.send(a, advertising(8, PE_B));
    assert_eq!(reg_cause(&out), Some(ErrorCause::SECURITY_REJECTION));
    assert!(
        detail(&out, AuditAction::Register).contains("may not vouch"),
        "{out:?}"
    );
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [5, 7]);
    // B announces a PE of registrant A serving as B: not stored here.
    let EnrpBody::HandleUpdate {
        action,
        namespace,
        pool_handle,
        mut pool_element,
        registrant,
    } = add_pe(SID_B, "echo", 9, PE_A)
    else {
        unreachable!()
    };
    pool_element.serving_identity = ServingIdentity::new(PE_B);
    h.enrp(
        10,
        SID_B,
        EnrpBody::HandleUpdate {
            action,
            namespace,
            pool_handle,
            pool_element,
            registrant,
        },
    );
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [5, 7]);
}

/// The drains a registrar remembers are bounded ([`MAX_DRAINS`]): one more is refused and
/// changes nothing; a PE already draining may still get a new deadline, and a lifted drain
/// makes room again.
#[test]
fn drains_beyond_the_limit_are_refused_and_change_nothing() {
    use crate::registrar::drain::{DrainRefusal, MAX_DRAINS};
    let mut h = Harness::new();
    // Two registrants: one identity holds at most 10,000 PEs here.
    let (a, b) = (h.connect(1, PE_A), h.connect(3, PE_B));
    let pu = h.connect(2, PU_1);
    let last = u32::try_from(MAX_DRAINS).expect("fits") + 1;
    for id in 1..=last {
        let conn = if id % 2 == 0 { a } else { b };
        assert_eq!(
            reg_cause(&h.send(conn, registration("echo", id))),
            None,
            "PE {id}"
        );
    }
    let deadline = h.now + Duration::from_secs(3600);
    for id in 1..last {
        h.core
            .drain(&key(id), deadline, 1_700_000_000_000)
            .expect("within the limit");
    }
    assert_eq!(
        h.core.drain(&key(last), deadline, 1_700_000_000_000),
        Err(DrainRefusal::TooMany)
    );
    assert_eq!(h.core.drain_of(&key(last)), None, "nothing remembered");
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [last], "still returned");
    // A new deadline for one already draining is no new drain.
    h.core
        .drain(
            &key(1),
            deadline + Duration::from_secs(1),
            1_700_000_001_000,
        )
        .expect("a new deadline");
    // Lifted, one makes room for another.
    h.core.undrain(&key(1)).expect("lifted");
    h.core
        .drain(&key(last), deadline, 1_700_000_000_000)
        .expect("room again");
    assert_eq!(found_ids(&h.resolve(pu, "echo")), [1]);
}
