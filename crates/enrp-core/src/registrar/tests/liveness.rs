//! Peer liveness (spec §9.5; `registrar/enrp/liveness.rs`): probes, dead peers, reconnects.

use super::*;

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
            peer: Remote {
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
            peer: Remote {
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
