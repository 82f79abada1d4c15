//! The project's protocol extensions at the registrar (docs/PROTOCOL-EXTENSIONS.md):
//! private policy types (a selector or the round robin fallback), PE labels and PU hints.

use ::asap::wire::param::{HandleResolutionOption, Labels, PolicyType};

use super::*;

const PRIVATE: PolicyType = PolicyType(0xFF00_0001);

fn labeled(pool: &str, id: u32, policy: Policy, labels: &[&str]) -> AsapMsg {
    let mut pe = pe(id);
    pe.policy = policy;
    pe.labels = Labels::parse(labels).expect("valid labels");
    AsapMsg::Registration {
        namespace: None,
        pool_handle: handle(pool),
        pool_element: pe,
    }
}

fn private(values: &[u8]) -> Policy {
    Policy::private(PRIVATE, values).expect("private")
}

fn details(out: &[Action]) -> Vec<Option<String>> {
    out.iter()
        .filter_map(|a| match a {
            Action::Audit { event, .. } => Some(event.detail.clone()),
            _ => None,
        })
        .collect()
}

/// The PE IDs in the order answered.
fn in_order(r: &Resolution) -> Vec<u32> {
    match r {
        Resolution::Found { pool_elements, .. } => pool_elements
            .iter()
            .map(|e| e.pool_element.pe_id.get())
            .collect(),
        Resolution::Error(e) => panic!("resolution failed: {e:?}"),
    }
}

fn resolve_hinted(
    h: &mut Harness,
    conn: ConnId,
    pool: &str,
    items: u32,
    hints: &[&str],
) -> Resolution {
    let out = h.send(
        conn,
        AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: handle(pool),
            option: Some(HandleResolutionOption { items }),
            hints: Labels::parse(hints).expect("valid hints"),
        },
    );
    match sent(&out).as_slice() {
        [AsapMsg::HandleResolutionResponse { result, .. }] => result.clone(),
        other => panic!("expected one resolution response, got {other:?}"),
    }
}

#[test]
fn a_private_policy_without_a_selector_is_accepted_selected_round_robin_and_audited_once() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    let out = h.send(a, labeled("echo", 7, private(&[1, 2, 3]), &["region=eu"]));
    assert_eq!(reg_cause(&out), None, "accepted");
    let [Some(detail)] = <[Option<String>; 1]>::try_from(details(&out)).expect("one record") else {
        panic!("the fallback is noted in the pool's first record")
    };
    assert!(
        detail.contains("0xff000001") && detail.contains("round robin"),
        "{detail}"
    );
    // Once per pool: the next PEs' records say nothing of it.
    for id in [8, 9] {
        let out = h.send(a, labeled("echo", id, private(&[]), &[]));
        assert_eq!(reg_cause(&out), None);
        assert_eq!(details(&out), [None]);
    }
    // Another type in the same pool is refused as for any policy (0x5).
    let out = h.send(a, labeled("echo", 10, Policy::RoundRobin, &[]));
    assert_eq!(reg_cause(&out), Some(ErrorCause::INCONSISTENT_POLICY));
    // The answer carries the policy and labels as registered, in round robin order.
    let Resolution::Found {
        policy,
        pool_elements,
    } = resolve_hinted(&mut h, pu, "echo", 3, &[])
    else {
        panic!("found")
    };
    assert_eq!(policy, Some(private(&[1, 2, 3])));
    let first = &pool_elements[0].pool_element;
    assert_eq!(first.policy, private(&[1, 2, 3]));
    assert_eq!(first.labels.get("region"), Some("eu"));
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [7, 8]
    );
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [9, 7]
    );
}

#[test]
fn a_registered_selector_sees_the_labels_and_the_pu_hints() {
    let mut config = Config::new(ServerId::new(0x1122_3344).expect("non-zero"));
    config.timing = Timing::fast();
    config.allow_loopback = true;
    // The example's "same zone first" (examples/custom-policy), as a user plugs it in.
    assert_eq!(custom_policy::SAME_ZONE_FIRST, PRIVATE);
    config.policies = custom_policy::registry();
    let mut h = Harness {
        core: Core::new(config, grants()),
        now: Instant::now(),
    };
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    for (id, zone) in [(1, "eu"), (2, "us"), (3, "eu"), (4, "us")] {
        let out = h.send(
            a,
            labeled("echo", id, private(&[]), &[&format!("zone={zone}")]),
        );
        assert_eq!(reg_cause(&out), None);
        assert_eq!(details(&out), [None], "a served type is no fallback");
    }
    let us = resolve_hinted(&mut h, pu, "echo", 2, &["zone=us"]);
    assert_eq!(in_order(&us), [2, 4]);
    let eu = resolve_hinted(&mut h, pu, "echo", 2, &["zone=eu"]);
    assert_eq!(in_order(&eu), [1, 3]);
}

#[test]
fn labels_travel_to_peers_in_handle_updates() {
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    let a = h.connect(1, PE_A);
    let out = h.send(
        a,
        labeled("echo", 7, private(&[5]), &["region=eu", "zone=a"]),
    );
    let updates = enrp_sent(&out);
    assert!(
        matches!(updates.as_slice(), [EnrpBody::HandleUpdate { pool_element, .. }]
        if pool_element.labels.to_string() == "region=eu,zone=a"
            && pool_element.policy == private(&[5]))
    );
}

/// Labels at their bounds make 128 PEs more than one message: the answer holds the PEs
/// that fit, in the policy's order, and encodes (without the cap it would not).
#[test]
fn a_resolution_of_many_labeled_pes_fits_one_message() {
    use ::asap::wire::param::{MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS};

    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    let full: Vec<(String, String)> = (0..MAX_LABELS)
        .map(|i| {
            (
                format!("{i:0>MAX_LABEL_KEY_LEN$}"),
                "v".repeat(MAX_LABEL_VALUE_LEN),
            )
        })
        .collect();
    for id in 1..=128 {
        let mut pe = pe(id);
        pe.labels = Labels::new(full.clone()).expect("at the bounds");
        let out = h.send(
            a,
            AsapMsg::Registration {
                namespace: None,
                pool_handle: handle("echo"),
                pool_element: pe,
            },
        );
        assert_eq!(reg_cause(&out), None);
    }
    let out = h.send(
        pu,
        AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: handle("echo"),
            option: Some(HandleResolutionOption { items: 128 }),
            hints: Labels::default(),
        },
    );
    let [answer] = sent(&out).try_into().expect("one answer");
    let bytes = answer.to_bytes().expect("fits one message");
    assert!(bytes.len() <= ::asap::wire::limits::MAX_MESSAGE_LEN);
    let n = in_order(&match answer {
        AsapMsg::HandleResolutionResponse { result, .. } => result,
        other => panic!("{other:?}"),
    })
    .len();
    assert!((12..128).contains(&n), "{n} PEs");
    // The usual answer (3 PEs) is whole.
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 3, &[])).len(),
        3
    );
}

/// Grants with label rules (issue 23): the register grant for `spiffe://acme.test/pe/*`
/// in "echo" admits `region=eu-*` only.
fn eu_only(rules: &[&str]) -> Vec<Grant> {
    let mut g = peer_grants();
    g[0].labels = Some(identity::LabelRules::parse(rules).expect("valid rules"));
    g
}

/// Issue 23: a PE certificate allowed to register in a pool cannot claim a label its
/// grants do not admit (another region's, say): refused as a security rejection, audited
/// with the label; what the grants admit registers; a grant narrowed later removes the PE
/// it no longer admits.
#[test]
fn grants_restrict_the_labels_a_pe_may_set() {
    let mut h = Harness::new();
    h.core
        .handle(Input::Grants(eu_only(&["region=eu-*"])), h.now);
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    for labels in [&["region=us-east"][..], &["region=eu-west", "owner=b"]] {
        let out = h.send(a, labeled("echo", 7, Policy::RoundRobin, labels));
        assert_eq!(
            reg_cause(&out),
            Some(ErrorCause::SECURITY_REJECTION),
            "{labels:?}"
        );
        assert_eq!(
            audits(&out),
            [(AuditAction::Register, Some(ErrorCause::SECURITY_REJECTION))]
        );
        let detail = details(&out).remove(0).unwrap_or_default();
        assert!(
            detail.contains("is not allowed by a register grant"),
            "{detail}"
        );
        assert!(
            detail.contains("region=us-east") || detail.contains("owner=b"),
            "{detail}"
        );
    }
    assert_eq!(h.core.stats().pes, 0, "nothing refused is kept");
    // What the rules admit, and no label at all, registers.
    let out = h.send(
        a,
        labeled("echo", 7, Policy::RoundRobin, &["region=eu-west"]),
    );
    assert_eq!(reg_cause(&out), None);
    let out = h.send(a, labeled("echo", 8, Policy::RoundRobin, &[]));
    assert_eq!(reg_cause(&out), None);
    assert_eq!(in_order(&h.resolve(pu, "echo")).len(), 2);
    // A re-registration cannot swap in a label the rules refuse; the PE keeps its entry.
    let out = h.send(
        a,
        labeled("echo", 7, Policy::RoundRobin, &["region=us-east"]),
    );
    assert_eq!(reg_cause(&out), Some(ErrorCause::SECURITY_REJECTION));
    // Narrowed to eu-north: PE 7 (eu-west) goes, audited; PE 8 (no label) stays.
    let out = h
        .core
        .handle(Input::Grants(eu_only(&["region=eu-north"])), h.now);
    assert_eq!(audits(&out), [(AuditAction::RemoveUngranted, None)]);
    assert_eq!(in_order(&h.resolve(pu, "echo")), [8]);
}

/// A peer's PE obeys this registrar's label rules for its registrant, as its pool and
/// namespace do (issue 16): a label the grants here do not admit keeps it out, audited.
#[test]
fn a_peers_pe_with_a_label_not_admitted_here_is_ignored() {
    let mut h = Harness::registrar(SID_A);
    h.core
        .handle(Input::Grants(eu_only(&["region=eu-*"])), h.now);
    h.peer_up(10, PR_B, SID_B);
    let with_labels = |id: u32, labels: &[&str]| {
        let mut body = add_pe(SID_B, "echo", id, PE_A);
        if let EnrpBody::HandleUpdate { pool_element, .. } = &mut body {
            pool_element.labels = Labels::parse(labels).expect("valid labels");
        }
        body
    };
    let out = h.enrp(10, SID_B, with_labels(5, &["region=us-east"]));
    let refused = audit_details(&out, AuditAction::PeerIgnored);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert!(refused[0].1.contains("label region=us-east"), "{refused:?}");
    assert_eq!(h.home_of(5), None);
    h.enrp(10, SID_B, with_labels(6, &["region=eu-west"]));
    assert_eq!(h.home_of(6), Some(SID_B));
}

/// Least Used with Distance Penalty at the registrar (docs/PROTOCOL-EXTENSIONS.md §3): the
/// core measures each home PE's keep-alive round trip from its own clock input and the
/// policy sends PUs to the nearest PE; an ack from another PE's connection (a valid but
/// wrong identity) gives no sample, and a re-registration keeps the measured figure.
#[test]
fn keep_alive_round_trips_steer_least_used_distance() {
    use ::asap::policy::{DistanceValues, LeastUsedDistance};
    let ld = |load| {
        LeastUsedDistance::policy(DistanceValues {
            load,
            penalty: u32::MAX / 100, // 1 % per ms
        })
    };
    let mut h = Harness::new();
    let far = h.connect(1, PE_A);
    let near = h.connect(2, PE_B);
    let pu = h.connect(3, PU_1);
    for (conn, id) in [(far, 1), (near, 2)] {
        let out = h.send(conn, labeled("echo", id, ld(0), &[]));
        assert_eq!(reg_cause(&out), None, "accepted");
    }
    let ns = Namespace::default_namespace();
    let rtt = |h: &Harness, id| {
        h.core
            .home_round_trip(&ns, &handle("echo"), PeId::new(id).expect("non-zero"))
    };
    let ack = |id| AsapMsg::EndpointKeepAliveAck {
        pool_handle: handle("echo"),
        pe_id: PeId::new(id).expect("non-zero"),
    };
    // Unmeasured, equal loads: they take turns (1 registered first).
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [1, 2]
    );
    let out = h.advance(200); // the keep-alives go out
    assert_eq!(sent(&out).len(), 2);
    h.now += Duration::from_millis(2);
    // PE A's connection acks PE B's keep-alive: not its PE, no sample.
    h.send(far, ack(2));
    assert_eq!(rtt(&h, 2), None);
    h.send(near, ack(2));
    h.now += Duration::from_millis(58);
    h.send(far, ack(1));
    assert_eq!(rtt(&h, 2), Some(Duration::from_millis(2)));
    assert_eq!(rtt(&h, 1), Some(Duration::from_millis(60)));
    for _ in 0..3 {
        assert_eq!(
            in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
            [2, 1]
        );
    }
    // The near PE reports 70 % load (a re-registration): 70 + 2 > 0 + 60, the far wins;
    // and its round trip is kept.
    h.send(near, labeled("echo", 2, ld(70 * (u32::MAX / 100)), &[]));
    assert_eq!(rtt(&h, 2), Some(Duration::from_millis(2)));
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [1, 2]
    );
    // Full: last.
    h.send(near, labeled("echo", 2, ld(0), &[]));
    assert_eq!(in_order(&resolve_hinted(&mut h, pu, "echo", 1, &[])), [2]);
    h.send(near, labeled("echo", 2, ld(u32::MAX), &[]));
    h.send(far, labeled("echo", 1, ld(90 * (u32::MAX / 100)), &[]));
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [1, 2]
    );
}

/// A peer's PE (learnt by ENRP) has no round trip here: it counts as unmeasured (5 s
/// away), so a measured home PE at 50 % load comes before the peer's idle one; and a
/// peer cannot make its PE look near (docs/PROTOCOL-EXTENSIONS.md §3).
#[test]
fn a_peers_pe_counts_as_unmeasured() {
    use ::asap::policy::{DistanceValues, LeastUsedDistance};
    let ld = |load| {
        LeastUsedDistance::policy(DistanceValues {
            load,
            penalty: u32::MAX / 100,
        })
    };
    let mut h = Harness::with_peer_grants();
    h.peer_up(10, PR_B, SID_B);
    let home = h.connect(1, PE_A);
    let pu = h.connect(3, PU_1);
    assert_eq!(
        reg_cause(&h.send(home, labeled("echo", 1, ld(u32::MAX / 2), &[]))),
        None
    );
    let mut peers = add_pe(SID_B, "echo", 5, PE_B);
    if let EnrpBody::HandleUpdate { pool_element, .. } = &mut peers {
        pool_element.policy = ld(0);
    }
    h.enrp(10, SID_B, peers);
    // Both unmeasured: Least Used, the peer's idle PE first.
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [5, 1]
    );
    h.advance(200); // keep-alive to the home PE only
    h.now += Duration::from_millis(10);
    h.send(
        home,
        AsapMsg::EndpointKeepAliveAck {
            pool_handle: handle("echo"),
            pe_id: PeId::new(1).expect("non-zero"),
        },
    );
    let ns = Namespace::default_namespace();
    let id = |n| PeId::new(n).expect("non-zero");
    assert_eq!(
        h.core.home_round_trip(&ns, &handle("echo"), id(1)),
        Some(Duration::from_millis(10))
    );
    assert_eq!(h.core.home_round_trip(&ns, &handle("echo"), id(5)), None);
    // 50 % + 10 ms × 1 % = 60 % < 0 % + 5 s × 1 %.
    assert_eq!(
        in_order(&resolve_hinted(&mut h, pu, "echo", 2, &[])),
        [1, 5]
    );
}

/// A PE's age in the admin API (issue 22): the time of its first registration here, kept
/// across re-registrations; none for a peer's PE, which registered elsewhere.
#[test]
fn a_home_pe_keeps_its_first_registration_time_and_a_peers_has_none() {
    let mut h = Harness::registrar(SID_A);
    h.peer_up(10, PR_B, SID_B);
    let a = h.connect(1, PE_A);
    let first = h.now;
    assert_eq!(reg_cause(&h.send(a, registration("echo", 7))), None);
    h.advance(3_000);
    assert_eq!(
        reg_cause(&h.send(a, registration("echo", 7))),
        None,
        "again"
    );
    let ns = Namespace::default_namespace();
    let id = |n| PeId::new(n).expect("non-zero");
    assert_eq!(
        h.core.home_registered(&ns, &handle("echo"), id(7)),
        Some(first)
    );
    h.enrp(10, SID_B, add_pe(SID_B, "echo", 8, PE_A));
    assert_eq!(h.home_of(8), Some(SID_B));
    assert_eq!(h.core.home_registered(&ns, &handle("echo"), id(8)), None);
}
