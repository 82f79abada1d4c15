//! The read view (`registrar/read_view.rs`) follows the core in the same step: what a
//! connection task answers from it after a step is what the core would answer.

use super::*;

/// What the view answers `conn` for `pool` (its own stream, as a connection task). Both
/// ways of the view answer it: `resolve_into` (the connection tasks') must write the bytes
/// of `resolve`'s response and make its audit event.
fn from_view(h: &Harness, conn: ConnId, pool: &str) -> Option<Resolution> {
    let view = h.core.read_view();
    let client = view.client(conn)?;
    let mut out = vec![0xAB];
    let answered = view.resolve_into(
        &client,
        None,
        handle(pool),
        None,
        &Default::default(),
        view.rng_for(conn).rng(),
        &mut Vec::new(),
        &mut out,
    );
    let resolved = view.resolve(
        &client,
        None,
        handle(pool),
        None,
        &Default::default(),
        view.rng_for(conn).rng(),
    );
    let Some(resolved) = resolved else {
        assert!(answered.is_none(), "answered one way only");
        assert_eq!(out, [0xAB], "nothing written");
        return None;
    };
    let answered = answered.expect("answered both ways");
    assert!(answered.error.is_none());
    assert_eq!(out[1..], resolved.response.to_bytes().expect("encodes")[..]);
    assert_eq!(answered.event(&client), resolved.event);
    match resolved.response {
        AsapMsg::HandleResolutionResponse { result, .. } => Some(result),
        other => panic!("not a resolution response: {other:?}"),
    }
}

fn cause_of(r: Option<Resolution>) -> Option<u16> {
    match r {
        Some(Resolution::Error(e)) => e.causes().first().map(ErrorCause::code),
        _ => None,
    }
}

#[test]
fn the_view_changes_in_the_step_that_changes_the_core() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    assert_eq!(
        cause_of(from_view(&h, pu, "echo")),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    h.send(a, registration("echo", 7));
    h.send(a, registration("echo", 8));
    assert_eq!(
        found_ids(&from_view(&h, pu, "echo").expect("answered")),
        [7, 8]
    );
    // A deregistration: gone from the view before its response leaves.
    h.send(
        a,
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: handle("echo"),
            pe_id: PeId::new(7).expect("non-zero"),
        },
    );
    assert_eq!(
        found_ids(&from_view(&h, pu, "echo").expect("answered")),
        [8]
    );
    // The PU's grant withdrawn: refused as if the pool did not exist.
    let pe_only = vec![grant(
        "spiffe://acme.test/pe/*",
        "echo",
        &[identity::Action::Register],
    )];
    h.core.handle(Input::Grants(pe_only), h.now);
    assert_eq!(
        cause_of(from_view(&h, pu, "echo")),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
    // The PE still resolves its own pool (a register grant is membership).
    assert_eq!(found_ids(&from_view(&h, a, "echo").expect("answered")), [8]);
    // Revoked: nothing it sends is answered, from the view either.
    let id = SpiffeId::parse(PE_A).expect("SPIFFE ID");
    h.core
        .handle(Input::Revoked(Revocation::Identity(id)), h.now);
    assert!(from_view(&h, a, "echo").is_none());
    // Closed: the view forgets the connection (its resolutions would go to the core).
    h.core.handle(Input::Closed { conn: pu }, h.now);
    assert!(h.core.read_view().client(pu).is_none());
}

#[test]
fn a_starting_registrar_answers_lack_of_resources_from_the_view() {
    let mut h = Harness::new();
    let pu = h.connect(2, PU_1);
    h.core.begin_startup(h.now);
    assert_eq!(
        cause_of(from_view(&h, pu, "echo")),
        Some(ErrorCause::LACK_OF_RESOURCES)
    );
    // The mentor timeout ends it: served again (an unknown pool now).
    h.advance(60_000);
    assert_eq!(
        cause_of(from_view(&h, pu, "echo")),
        Some(ErrorCause::UNKNOWN_POOL_HANDLE)
    );
}

/// The view answers from each PE's encoding made at its first resolution; a PE changed
/// since is answered as it is now, not as it was encoded.
#[test]
fn a_changed_pe_is_answered_as_it_is_now() {
    let mut h = Harness::new();
    let a = h.connect(1, PE_A);
    let pu = h.connect(2, PU_1);
    let life = |r: &Resolution| match r {
        Resolution::Found { pool_elements, .. } => pool_elements
            .iter()
            .map(|e| e.pool_element.registration_life)
            .collect::<Vec<_>>(),
        Resolution::Error(e) => panic!("resolution failed: {e:?}"),
    };
    h.send(a, registration("echo", 7));
    let first = from_view(&h, pu, "echo").expect("answered");
    let before = life(&first);
    // Again: from the encoding the first made.
    assert_eq!(life(&from_view(&h, pu, "echo").expect("answered")), before);
    let mut changed = pe(7);
    changed.registration_life += 1000;
    h.send(
        a,
        AsapMsg::Registration {
            namespace: None,
            pool_handle: handle("echo"),
            pool_element: changed,
        },
    );
    let after = life(&from_view(&h, pu, "echo").expect("answered"));
    assert_eq!(after, before.iter().map(|l| l + 1000).collect::<Vec<_>>());
}
