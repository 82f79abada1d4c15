//! Handle tables and start-up (spec §9.3, §9.6, §9.7; `registrar/enrp/tables.rs`): paging,
//! downloads that purge, the mentor.

use super::*;

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
