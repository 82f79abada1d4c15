use std::net::Ipv4Addr;
use std::num::NonZeroU16;

use asap::wire::param::{Address, Policy, Transport, TransportUse};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::*;

fn ns(s: &str) -> Namespace {
    Namespace::new(s).expect("valid namespace")
}

fn handle(s: &str) -> PoolHandle {
    PoolHandle::new(s).expect("valid handle")
}

fn who(s: &str) -> Option<RegistrantIdentity> {
    RegistrantIdentity::new(&format!("spiffe://acme.test/pe/{s}"))
}

fn tcp(port: u16, transport_use: TransportUse) -> Transport {
    Transport::Tcp {
        port: NonZeroU16::new(port).expect("non-zero port"),
        transport_use,
        addr: Address::new(Ipv4Addr::LOCALHOST),
    }
}

fn pe(id: u32, home: u32, policy: Policy) -> PoolElement {
    PoolElement {
        pe_id: PeId::new(id).expect("non-zero PE ID"),
        home_server_id: home,
        registration_life: 300_000,
        user_transport: tcp(7000 + (id % 1000) as u16, TransportUse::DataOnly),
        policy,
        asap_transport: None,
        labels: Default::default(),
        status: Default::default(),
        serving_identity: None,
    }
}

fn id(n: u32) -> PeId {
    PeId::new(n).expect("non-zero")
}

const HOME: u32 = 0x1122_3344;

#[test]
fn register_then_resolve_round_robin() {
    let mut hs = Handlespace::new(Limits::default());
    let (d, h) = (ns("default"), handle("echo"));
    for i in 1..=3 {
        assert_eq!(
            hs.register(&d, &h, pe(i, HOME, Policy::RoundRobin), who("a")),
            Ok(Registered::New)
        );
    }
    let mut rng = StdRng::seed_from_u64(1);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let got = hs.resolve(&d, &h, 1, &mut rng).expect("pool exists");
        seen.push(got[0].pool_element.pe_id.get());
    }
    // Spec §5.2: RR cycles in a fixed order.
    assert_eq!(seen[..3], seen[3..]);
    let mut first = seen[..3].to_vec();
    first.sort_unstable();
    assert_eq!(first, [1, 2, 3]);
    assert_eq!(hs.pe_count(), 3);
}

#[test]
fn namespaces_are_independent() {
    // D-7: the same pool handle in two namespaces names two pools.
    let mut hs = Handlespace::new(Limits::default());
    let h = handle("echo");
    hs.register(&ns("a"), &h, pe(1, HOME, Policy::RoundRobin), who("a"))
        .expect("registers");
    hs.register(&ns("b"), &h, pe(1, HOME, Policy::Random), who("b"))
        .expect("another namespace may use another policy and the same PE ID");
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(
        hs.resolve(&ns("a"), &h, 3, &mut rng).expect("pool").len(),
        1
    );
    assert_eq!(
        hs.resolve(&ns("c"), &h, 3, &mut rng).map(|v| v.len()),
        Err(Reject::UnknownPool)
    );
}

#[test]
fn mixed_policy_types_are_rejected_with_cause_5() {
    // Spec §5.3.
    let mut hs = Handlespace::new(Limits::default());
    let (d, h) = (ns("default"), handle("p"));
    hs.register(&d, &h, pe(1, HOME, Policy::RoundRobin), who("a"))
        .expect("first fixes the policy");
    let err = hs
        .register(&d, &h, pe(2, HOME, Policy::Random), who("a"))
        .expect_err("another policy type");
    assert_eq!(err, Reject::InconsistentPolicy);
    assert_eq!(err.cause_code(), ErrorCause::INCONSISTENT_POLICY);
    assert_eq!(hs.pe_count(), 1);
    // Different values of the same type are fine.
    hs.register(
        &d,
        &h,
        pe(3, HOME, Policy::WeightedRoundRobin { weight: 2 }),
        who("a"),
    )
    .expect_err("WRR is another type than RR");
}

#[test]
fn inconsistent_transport_and_data_control_are_rejected() {
    let mut hs = Handlespace::new(Limits::default());
    let (d, h) = (ns("default"), handle("p"));
    hs.register(&d, &h, pe(1, HOME, Policy::RoundRobin), who("a"))
        .expect("registers");
    let mut udp = pe(2, HOME, Policy::RoundRobin);
    udp.user_transport = Transport::Udp {
        port: NonZeroU16::new(9).expect("non-zero"),
        addr: Address::new(Ipv4Addr::LOCALHOST),
    };
    let err = hs
        .register(&d, &h, udp, who("a"))
        .expect_err("UDP in a TCP pool");
    assert_eq!(err.cause_code(), ErrorCause::INCONSISTENT_TRANSPORT);
    let mut control = pe(3, HOME, Policy::RoundRobin);
    control.user_transport = tcp(9, TransportUse::DataPlusControl);
    let err = hs
        .register(&d, &h, control, who("a"))
        .expect_err("data+control");
    assert_eq!(err.cause_code(), ErrorCause::INCONSISTENT_DATA_CONTROL);
    assert_eq!(hs.pe_count(), 1);
}

#[test]
fn re_registration_by_the_registrant_updates() {
    let mut hs = Handlespace::new(Limits::default());
    let (d, h) = (ns("default"), handle("p"));
    hs.register(&d, &h, pe(1, HOME, Policy::LeastUsed { load: 5 }), who("a"))
        .expect("registers");
    let r = hs.register(&d, &h, pe(1, HOME, Policy::LeastUsed { load: 9 }), who("a"));
    assert_eq!(
        r,
        Ok(Registered::Updated {
            previous_home: HOME
        })
    );
    let e = hs.pool(&d, &h).and_then(|p| p.entry(id(1))).expect("entry");
    assert_eq!(e.pool_element.policy, Policy::LeastUsed { load: 9 });
    assert_eq!(hs.pe_count(), 1);
}

#[test]
fn another_registrant_cannot_take_a_pe_id() {
    // Spec §7.1 step 5, threat T-3.
    let mut hs = Handlespace::new(Limits::default());
    let (d, h) = (ns("default"), handle("p"));
    hs.register(&d, &h, pe(1, HOME, Policy::RoundRobin), who("a"))
        .expect("registers");
    assert_eq!(
        hs.register(&d, &h, pe(1, HOME, Policy::RoundRobin), who("mallory")),
        Err(Reject::NonUniquePeId)
    );
    let mut moved = pe(1, HOME, Policy::RoundRobin);
    moved.user_transport = tcp(1, TransportUse::DataOnly);
    assert_eq!(
        hs.register(&d, &h, moved, who("a")),
        Err(Reject::NonUniquePeId),
        "a different user transport is a different PE"
    );
    assert_eq!(
        hs.deregister(&d, &h, id(1), who("mallory").as_ref()),
        Err(Reject::NotRegistrant)
    );
    assert!(hs.pool(&d, &h).and_then(|p| p.entry(id(1))).is_some());
    // Deregistration by the registrant works and is idempotent (spec §7.2).
    assert!(
        hs.deregister(&d, &h, id(1), who("a").as_ref())
            .expect("ok")
            .is_some()
    );
    assert_eq!(hs.deregister(&d, &h, id(1), who("a").as_ref()), Ok(None));
    assert!(
        hs.pool(&d, &h).is_none(),
        "the last PE takes the pool with it"
    );
    assert_eq!(hs.namespaces().count(), 0);
}

#[test]
fn limits_answer_lack_of_resources() {
    let limits = Limits {
        max_pools_per_namespace: 2,
        max_pes_per_pool: 2,
        max_pes: 5,
        max_pes_per_registrant: 4,
    };
    let mut hs = Handlespace::new(limits);
    let d = ns("default");
    let rr = Policy::RoundRobin;
    hs.register(&d, &handle("a"), pe(1, HOME, rr), who("x"))
        .expect("1");
    hs.register(&d, &handle("a"), pe(2, HOME, rr), who("x"))
        .expect("2");
    let e = hs.register(&d, &handle("a"), pe(3, HOME, rr), who("x"));
    assert_eq!(e, Err(Reject::LackOfResources("PEs in the pool")));
    hs.register(&d, &handle("b"), pe(3, HOME, rr), who("x"))
        .expect("3");
    let e = hs.register(&d, &handle("c"), pe(4, HOME, rr), who("y"));
    assert_eq!(e, Err(Reject::LackOfResources("pools in the namespace")));
    hs.register(&d, &handle("b"), pe(4, HOME, rr), who("x"))
        .expect("4");
    let e = hs.register(&ns("other"), &handle("a"), pe(5, HOME, rr), who("x"));
    assert_eq!(e, Err(Reject::LackOfResources("PEs of this registrant")));
    hs.register(&ns("other"), &handle("a"), pe(5, HOME, rr), who("y"))
        .expect("5");
    let e = hs.register(&ns("other"), &handle("a"), pe(6, HOME, rr), who("z"));
    assert_eq!(e, Err(Reject::LackOfResources("PEs in the handlespace")));
    assert_eq!(
        e.map_err(|r| r.cause_code()),
        Err(ErrorCause::LACK_OF_RESOURCES)
    );
    // A re-registration is not a new PE: allowed at the limit.
    hs.register(&d, &handle("a"), pe(1, HOME, rr), who("x"))
        .expect("update");
}

#[test]
fn refused_first_registration_leaves_no_empty_pool() {
    let mut hs = Handlespace::with_registry(Limits::default(), PolicyRegistry::empty());
    let d = ns("default");
    let e = hs.register(&d, &handle("a"), pe(1, HOME, Policy::RoundRobin), who("x"));
    assert_eq!(e, Err(Reject::UnsupportedPolicy));
    assert!(hs.pool(&d, &handle("a")).is_none());
    assert_eq!(hs.namespaces().count(), 0);
}

#[test]
fn checksums_follow_ownership() {
    // Spec §9.6 vectors: nothing owned → ffff; "EchoPool"/0xDEADBEEF → f4b3.
    let mut hs = Handlespace::new(Limits::default());
    let home = ServerId::new(HOME).expect("non-zero");
    let other = ServerId::new(0x5566_7788).expect("non-zero");
    assert_eq!(hs.checksum(home), 0xffff);
    let (d, h) = (ns("default"), handle("EchoPool"));
    hs.register(&d, &h, pe(0xDEAD_BEEF, HOME, Policy::RoundRobin), who("a"))
        .expect("registers");
    assert_eq!(hs.checksum(home), 0xf4b3);
    assert_eq!(hs.checksum(other), 0xffff);
    // The PE moves to another registrar keeping its ID (spec §12.6).
    hs.register(
        &d,
        &h,
        pe(0xDEAD_BEEF, other.get(), Policy::RoundRobin),
        who("a"),
    )
    .expect("same registrant");
    assert_eq!(hs.checksum(home), 0xffff);
    assert_eq!(hs.checksum(other), 0xf4b3);
    hs.remove(&d, &h, id(0xDEAD_BEEF)).expect("present");
    assert_eq!(hs.checksum(other), 0xffff);
}

#[test]
fn lone_pe_may_change_the_pools_policy() {
    let mut hs = Handlespace::new(Limits::default());
    let (d, h) = (ns("default"), handle("p"));
    hs.register(&d, &h, pe(1, HOME, Policy::RoundRobin), who("a"))
        .expect("rr");
    hs.register(&d, &h, pe(1, HOME, Policy::Random), who("a"))
        .expect("the only PE redefines its pool");
    hs.register(&d, &h, pe(2, HOME, Policy::Random), who("a"))
        .expect("now the pool is RAND");
    let mut rng = StdRng::seed_from_u64(3);
    assert_eq!(hs.resolve(&d, &h, 5, &mut rng).expect("pool").len(), 2);
}

#[test]
fn iteration_is_ordered_and_pages_continue() {
    let mut hs = Handlespace::new(Limits::default());
    let d = ns("default");
    for (h, i) in [("b", 3), ("a", 2), ("a", 1), ("b", 1)] {
        hs.register(&d, &handle(h), pe(i, HOME, Policy::RoundRobin), who("x"))
            .expect("registers");
    }
    let order: Vec<_> = hs
        .iter()
        .map(|(_, h, e)| (h.as_bytes().to_vec(), e.pool_element.pe_id.get()))
        .collect();
    assert_eq!(
        order,
        [
            (b"a".to_vec(), 1),
            (b"a".to_vec(), 2),
            (b"b".to_vec(), 1),
            (b"b".to_vec(), 3)
        ]
    );
    let after: Vec<_> = hs
        .pool(&d, &handle("b"))
        .expect("pool")
        .entries_after(Some(id(1)))
        .map(|e| e.pool_element.pe_id.get())
        .collect();
    assert_eq!(after, [3]);
}

type Key = (Namespace, PoolHandle, PeId);

fn keys_after(hs: &Handlespace, after: Option<&Key>, n: usize) -> Vec<Key> {
    hs.iter_after(after.map(|(ns, h, pe)| (ns, h, *pe)))
        .take(n)
        .map(|(ns, h, e)| (ns.clone(), h.clone(), e.pool_element.pe_id))
        .collect()
}

#[test]
fn pages_after_a_point_list_every_pe_once_in_order() {
    // Spec §9.7: pages continue after the last (namespace, pool handle, PE ID) sent.
    let mut hs = Handlespace::new(Limits::default());
    for (n, h, i) in [("b", "x", 2), ("a", "y", 1), ("a", "x", 7), ("b", "x", 1)] {
        hs.register(
            &ns(n),
            &handle(h),
            pe(i, HOME, Policy::RoundRobin),
            who("p"),
        )
        .expect("registers");
    }
    let all = keys_after(&hs, None, usize::MAX);
    let expected: Vec<Key> = hs
        .iter()
        .map(|(n, h, e)| (n.clone(), h.clone(), e.pool_element.pe_id))
        .collect();
    assert_eq!(all, expected);
    for page in 1..=4 {
        let mut got = Vec::new();
        let mut at: Option<Key> = None;
        loop {
            let keys = keys_after(&hs, at.as_ref(), page);
            let Some(last) = keys.last().cloned() else {
                break;
            };
            got.extend(keys);
            at = Some(last);
        }
        assert_eq!(got, expected, "pages of {page}");
    }
    // A point that is not (or no longer) in the handlespace: the next PE after it.
    let gone = (ns("a"), handle("xx"), id(1));
    assert_eq!(keys_after(&hs, Some(&gone), 1), [expected[1].clone()]);
    let past = (ns("c"), handle("a"), id(1));
    assert!(keys_after(&hs, Some(&past), 1).is_empty());
}

#[test]
fn pages_list_each_pe_once_while_pes_come_and_go_between_pages() {
    // Spec §9.7 during a download: a PE present from the first page to the last is
    // listed exactly once; none twice; removing the continuation point, its pool or its
    // namespace does not lose the place.
    let (namespaces, pools) = (["a", "b", "c"], ["p", "q", "r", "s"]);
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pick = |n: usize| rng.next_u32() as usize % n;
        let mut hs = Handlespace::new(Limits::default());
        let random_key = |pick: &mut dyn FnMut(usize) -> usize| -> Key {
            (
                ns(namespaces[pick(namespaces.len())]),
                handle(pools[pick(pools.len())]),
                id(1 + pick(12) as u32),
            )
        };
        for _ in 0..40 {
            let (n, h, i) = random_key(&mut pick);
            hs.register(&n, &h, pe(i.get(), HOME, Policy::RoundRobin), who("p"))
                .expect("registers or updates");
        }
        let initial: Vec<Key> = keys_after(&hs, None, usize::MAX);
        let mut removed = std::collections::BTreeSet::new();
        let mut sent: Vec<Key> = Vec::new();
        let mut at: Option<Key> = None;
        let page = 1 + pick(5);
        loop {
            let keys = keys_after(&hs, at.as_ref(), page);
            let Some(last) = keys.last().cloned() else {
                break;
            };
            sent.extend(keys);
            at = Some(last.clone());
            // Between pages: the point itself may go, with its pool; others come and go.
            if pick(3) == 0 {
                hs.remove(&last.0, &last.1, last.2);
                removed.insert(last);
            }
            for _ in 0..3 {
                let (n, h, i) = random_key(&mut pick);
                if pick(2) == 0 {
                    if hs.remove(&n, &h, i).is_some() {
                        removed.insert((n, h, i));
                    }
                } else {
                    hs.register(&n, &h, pe(i.get(), HOME, Policy::RoundRobin), who("p"))
                        .expect("registers or updates");
                }
            }
        }
        assert!(
            sent.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: listed in order, none twice: {sent:?}"
        );
        for k in initial.iter().filter(|k| !removed.contains(*k)) {
            assert!(sent.contains(k), "seed {seed}: {k:?} never listed");
        }
    }
}

#[test]
fn the_journal_records_adds_real_updates_and_removals_in_order_only_when_on() {
    let (d, h) = (ns("default"), handle("echo"));
    let mut off = Handlespace::new(Limits::default());
    off.register(&d, &h, pe(1, HOME, Policy::RoundRobin), who("a"))
        .expect("registered");
    assert!(off.take_changes().is_empty());

    let mut hs = Handlespace::new(Limits::default());
    hs.journal_changes();
    let weighted = |w| Policy::WeightedRoundRobin { weight: w };
    hs.register(&d, &h, pe(1, HOME, weighted(1)), who("a"))
        .expect("new");
    // The same registration again (a refresh) changes nothing and is not recorded.
    hs.register(&d, &h, pe(1, HOME, weighted(1)), who("a"))
        .expect("refreshed");
    hs.register(&d, &h, pe(1, HOME, weighted(2)), who("a"))
        .expect("updated");
    // A refused registration is not recorded either.
    assert!(
        hs.register(&d, &h, pe(1, HOME, weighted(3)), who("b"))
            .is_err()
    );
    hs.remove(&d, &h, id(1)).expect("removed");
    let kinds: Vec<(u32, ChangeKind)> = hs
        .take_changes()
        .iter()
        .map(|c| (c.pe_id.get(), c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, ChangeKind::Added),
            (1, ChangeKind::Updated),
            (1, ChangeKind::Removed)
        ]
    );
    assert!(hs.take_changes().is_empty(), "taken");
}
