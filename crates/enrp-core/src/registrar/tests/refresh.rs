//! Unchanged re-registrations (`registrar/refresh.rs`): the read view says a connection
//! may acknowledge one itself only when the core would store the same entry again for the
//! same connection; the core applies what was acknowledged, and registers again a PE that
//! left meanwhile.

use super::*;

fn ns() -> Namespace {
    Namespace::default_namespace()
}

/// What the view says of `pe` re-registered on `conn` in `pool` (no Namespace parameter).
fn refresh(h: &Harness, conn: ConnId, pool: &str, pe: &PoolElement) -> Option<Namespace> {
    let view = h.core.read_view();
    let client = view.client(conn)?;
    view.refresh(&client, None, &handle(pool), pe)
}

fn refreshed(h: &mut Harness, conn: ConnId, pool: &str, pe: PoolElement) -> Vec<Action> {
    let refreshed = vec![Refresh {
        namespace: ns(),
        pool_handle: handle(pool),
        pool_element: pe,
    }];
    h.core.handle(Input::Refreshed { conn, refreshed }, h.now)
}

fn present(h: &Harness, pool: &str, id: u32) -> bool {
    h.core
        .handlespace()
        .pool(&ns(), &handle(pool))
        .and_then(|p| p.entry(PeId::new(id).expect("non-zero")))
        .is_some()
}

#[test]
fn only_the_same_pe_again_on_its_own_connection_is_acknowledged_by_the_view() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None, "not registered yet");
    assert_eq!(reg_cause(&h.send(a, registration("echo", 7))), None);
    assert_eq!(refresh(&h, a, "echo", &pe(7)), Some(ns()));
    // What the PE sends as its home server ID does not matter: the core sets its own.
    let mut homed = pe(7);
    homed.home_server_id = 0x5566;
    assert_eq!(refresh(&h, a, "echo", &homed), Some(ns()));

    // The same identity on another connection: the core judges it (and moves the PE).
    let a2 = h.connect(2, PE_A);
    assert_eq!(refresh(&h, a2, "echo", &pe(7)), None);
    // Another PE identity, granted the pool, re-sending the same PE: the core refuses it.
    let b = h.connect(3, PE_B);
    assert_eq!(refresh(&h, b, "echo", &pe(7)), None);
    let out = h.send(b, registration("echo", 7));
    assert!(reg_cause(&out).is_some(), "{out:?}");
    assert!(
        audits(&out)
            .iter()
            .any(|(a, o)| *a == AuditAction::Register && o.is_some())
    );
    // A PU (no register grant) sending it: not here either.
    let pu = h.connect(4, PU_1);
    assert_eq!(refresh(&h, pu, "echo", &pe(7)), None);
    // Still the owner's, on its connection.
    assert_eq!(refresh(&h, a, "echo", &pe(7)), Some(ns()));

    // Anything changed: the core's.
    let mut life = pe(7);
    life.registration_life = 60_000;
    assert_eq!(refresh(&h, a, "echo", &life), None);
    let mut policy = pe(7);
    policy.policy = Policy::Random;
    assert_eq!(refresh(&h, a, "echo", &policy), None);
    assert_eq!(refresh(&h, a, "other", &pe(7)), None, "another pool");
    assert_eq!(refresh(&h, a, "echo", &pe(8)), None, "another PE");
    // The change stored by the core is the one bound now.
    assert_eq!(
        reg_cause(&h.send(
            a,
            AsapMsg::Registration {
                namespace: None,
                pool_handle: handle("echo"),
                pool_element: life.clone(),
            }
        )),
        None
    );
    assert_eq!(refresh(&h, a, "echo", &life), Some(ns()));
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None);

    // Registered on the other connection of the same identity: bound there, not here.
    assert_eq!(
        reg_cause(&h.send(
            a2,
            AsapMsg::Registration {
                namespace: None,
                pool_handle: handle("echo"),
                pool_element: life.clone(),
            }
        )),
        None
    );
    assert_eq!(refresh(&h, a, "echo", &life), None);
    assert_eq!(refresh(&h, a2, "echo", &life), Some(ns()));
}

#[test]
fn grants_declarations_drains_start_up_and_revocation_end_what_the_view_acknowledges() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    assert!(refresh(&h, a, "echo", &pe(7)).is_some());

    // An operator declares the pool: the core judges the next re-registration.
    let declare = Input::DeclarePool {
        namespace: ns(),
        pool_handle: handle("echo"),
        declared: Some(Declared {
            policy: Some(Policy::Random.policy_type()),
            max_pes: None,
        }),
    };
    h.core.handle(declare, h.now);
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None);
    let out = h.send(a, registration("echo", 7));
    assert_eq!(reg_cause(&out), Some(ErrorCause::INCONSISTENT_POLICY));
    let lift = Input::DeclarePool {
        namespace: ns(),
        pool_handle: handle("echo"),
        declared: None,
    };
    h.core.handle(lift, h.now);
    h.send(a, registration("echo", 7));
    assert!(refresh(&h, a, "echo", &pe(7)).is_some());

    // A drain: the core keeps it, so the core answers.
    let key = (ns(), handle("echo"), PeId::new(7).expect("non-zero"));
    h.core
        .drain(&key, h.now + Duration::from_secs(60), 60_000)
        .expect("drained");
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None);
    h.core.undrain(&key).expect("undrained");
    h.send(a, registration("echo", 7));
    assert!(refresh(&h, a, "echo", &pe(7)).is_some());

    // A label the grants stop allowing (issue 23): the PE goes, nothing is acknowledged.
    let mut labeled = pe(9);
    labeled.labels = ::asap::wire::param::Labels::parse(["zone=a"]).expect("labels");
    let zone = |z: &str| {
        let mut g = grants();
        g[0].labels = Some(identity::LabelRules::parse([format!("zone={z}")]).expect("rules"));
        g
    };
    h.core.handle(Input::Grants(zone("a")), h.now);
    let out = h.send(
        a,
        AsapMsg::Registration {
            namespace: None,
            pool_handle: handle("echo"),
            pool_element: labeled.clone(),
        },
    );
    assert_eq!(reg_cause(&out), None);
    assert!(refresh(&h, a, "echo", &labeled).is_some());
    h.core.handle(Input::Grants(zone("b")), h.now);
    assert_eq!(refresh(&h, a, "echo", &labeled), None);
    assert!(!present(&h, "echo", 9));

    // The register grant withdrawn: the PE is removed, and nothing is acknowledged.
    h.core.handle(Input::Grants(grants()), h.now);
    h.send(a, registration("echo", 7));
    assert!(refresh(&h, a, "echo", &pe(7)).is_some());
    let pu_only = vec![grant(
        "spiffe://acme.test/pu/*",
        "*",
        &[identity::Action::Resolve],
    )];
    h.core.handle(Input::Grants(pu_only), h.now);
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None);
    assert!(!present(&h, "echo", 7));

    // Starting (spec §9.3): the core answers (lack of resources).
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    h.core.begin_startup(h.now);
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None);

    // Revoked: nothing it sends counts.
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    let id = SpiffeId::parse(PE_A).expect("SPIFFE ID");
    h.core
        .handle(Input::Revoked(Revocation::Identity(id)), h.now);
    assert_eq!(refresh(&h, a, "echo", &pe(7)), None);
}

#[test]
fn a_refresh_restarts_the_keep_alive_and_forgets_an_unanswered_one() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    // The keep-alive goes out after its interval and waits for its answer...
    let out = h.advance(250);
    assert!(
        sent(&out)
            .iter()
            .any(|m| matches!(m, AsapMsg::EndpointKeepAlive { .. })),
        "{out:?}"
    );
    // ...which the re-registration stands for, as one through the core does.
    let out = refreshed(&mut h, a, "echo", pe(7));
    assert!(
        audits(&out).is_empty(),
        "audited by the connection's tally: {out:?}"
    );
    assert!(sent(&out).is_empty(), "acknowledged already: {out:?}");
    let out = h.advance(150);
    assert!(audits(&out).is_empty(), "not removed: {out:?}");
    assert!(present(&h, "echo", 7));
    // Unanswered keep-alives after that still remove it.
    h.advance(250);
    h.advance(250);
    h.advance(250);
    assert!(!present(&h, "echo", 7));
}

#[test]
fn an_acknowledged_pe_gone_meanwhile_is_registered_again_and_audited() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    // The connection acknowledged it; before the core heard, its keep-alive timed out.
    h.advance(250);
    h.advance(250);
    assert!(!present(&h, "echo", 7));
    let out = refreshed(&mut h, a, "echo", pe(7));
    assert!(present(&h, "echo", 7), "nothing acknowledged is lost");
    assert!(sent(&out).is_empty(), "no second answer: {out:?}");
    let event = out
        .iter()
        .find_map(|x| match x {
            Action::Audit { event, durability } => Some((event, durability)),
            _ => None,
        })
        .expect("audited");
    assert_eq!(event.0.action, AuditAction::Register);
    assert_eq!(*event.1, Durability::BeforeReply);
    assert!(
        event
            .0
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("registered again")),
        "{event:?}"
    );
    assert!(refresh(&h, a, "echo", &pe(7)).is_some(), "bound again");

    // Gone because the grant went: refused again, audited, still no answer.
    let pu_only = vec![grant(
        "spiffe://acme.test/pu/*",
        "*",
        &[identity::Action::Resolve],
    )];
    h.core.handle(Input::Grants(pu_only), h.now);
    let out = refreshed(&mut h, a, "echo", pe(7));
    assert!(!present(&h, "echo", 7));
    assert!(sent(&out).is_empty(), "{out:?}");
    assert_eq!(
        audits(&out),
        [(AuditAction::Register, Some(ErrorCause::SECURITY_REJECTION))]
    );
}

#[test]
fn refreshes_within_half_an_interval_leave_the_keep_alive_where_it_is() {
    let keep_alive = |out: &[Action]| {
        sent(out)
            .iter()
            .any(|m| matches!(m, AsapMsg::EndpointKeepAlive { .. }))
    };
    let mut h = Harness::new(); // keep-alives every 200 ms
    let a = h.connect(1, PE_A);
    h.send(a, registration("echo", 7));
    // 50 ms after the registration: the timer stays (due at 200 ms).
    h.advance(50);
    refreshed(&mut h, a, "echo", pe(7));
    assert!(!keep_alive(&h.advance(100)), "150 ms");
    assert!(keep_alive(&h.advance(60)), "due at 200 ms, as registered");
    // Answered by a refresh (outstanding): restarted at once, due 200 ms later.
    refreshed(&mut h, a, "echo", pe(7));
    assert!(!keep_alive(&h.advance(150)));
    // More than half an interval after that restart: restarted again.
    refreshed(&mut h, a, "echo", pe(7));
    assert!(!keep_alive(&h.advance(150)), "moved on by the refresh");
    assert!(keep_alive(&h.advance(60)));
    assert!(present(&h, "echo", 7));
}
