//! The shared invariants catch what they are for: each check is fed real cores' output,
//! once as the core produced it (it passes) and once broken (it fails).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use asap::wire::AsapMsg;
use enrp_core::registrar::{Action, Config, ConnId, Core, Input, Remote};
use enrp_core::server_id_of;
use identity::{Action as Grantable, Serial, SpiffeId};
use testkit::invariants::{
    DurableBeforeReply, handlespace_consistent, handlespaces_agree, one_owner_each,
};
use testkit::msg;

fn spiffe(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://kit.test/{path}")).expect("SPIFFE ID")
}

/// A registrar `name` to which PE `pe/p0` at 10.1.0.1 has registered PE 1 in `pool-0`:
/// the core and the actions of that registration.
fn registered(name: &str) -> (Core, Vec<Action>) {
    let grants = vec![msg::grant(
        "spiffe://kit.test/pe/*",
        "pool-*",
        &[Grantable::Register],
    )];
    let mut core = Core::new(Config::new(server_id_of(&spiffe(name))), grants);
    #[allow(clippy::disallowed_methods)] // an origin only
    let now = Instant::now();
    let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    let conn = ConnId(1);
    core.handle(
        Input::Connected {
            conn,
            client: Remote {
                id: spiffe("pe/p0"),
                serial: Serial::from_bytes(&[1]),
                addr: SocketAddr::new(ip, 40_000),
            },
            addrs: Vec::new(),
        },
        now,
    );
    let bytes = msg::registration(&msg::pool("pool-0"), 1, ip)
        .to_bytes()
        .expect("encodes");
    let msg = AsapMsg::decode(&bytes).expect("decodes");
    let actions = core.handle(Input::Asap { conn, msg }, now);
    (core, actions)
}

fn check<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Result<(), u32> {
    let mut durable = DurableBeforeReply::new();
    for a in actions {
        durable.observe(a).map_err(|pe| pe.get())?;
    }
    Ok(())
}

fn is_audit(a: &Action) -> bool {
    matches!(a, Action::Audit { .. })
}

#[test]
fn an_acknowledgement_before_its_audit_record_is_caught() {
    let (_, actions) = registered("registrar/r0");
    let acked = actions.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                msg: AsapMsg::RegistrationResponse { reject: false, .. },
                ..
            }
        )
    });
    assert!(acked, "the registration was not accepted: {actions:?}");
    assert_eq!(check(&actions), Ok(()));
    // The acknowledgement moved before the record, or the record lost.
    let others = || actions.iter().filter(|a| !is_audit(a));
    let reordered = others().chain(actions.iter().filter(|a| is_audit(a)));
    assert_eq!(check(reordered), Err(1));
    assert_eq!(check(others()), Err(1));
}

#[test]
fn one_pe_owned_by_two_registrars_is_caught() {
    let (a, _) = registered("registrar/r0");
    let (b, _) = registered("registrar/r1");
    let (sa, sb) = (
        server_id_of(&spiffe("registrar/r0")),
        server_id_of(&spiffe("registrar/r1")),
    );
    // Each handlespace alone is consistent, for both registrars as homes.
    handlespace_consistent(a.handlespace(), [sa, sb]).expect("consistent");
    handlespace_consistent(b.handlespace(), [sa, sb]).expect("consistent");
    // One registrar alone owns its PE; two that both own PE 1 break invariant 2 and
    // disagree (invariant 1).
    one_owner_each([(0, sa, a.handlespace())]).expect("one owner");
    let two = one_owner_each([(0, sa, a.handlespace()), (1, sb, b.handlespace())]);
    assert_eq!(two, Err("PE 1 is owned by registrars [0, 1]".to_owned()));
    handlespaces_agree(&[(sa, a.handlespace())]).expect("alone, it agrees");
    let differ = handlespaces_agree(&[(sa, a.handlespace()), (sb, b.handlespace())]);
    assert!(
        differ
            .as_ref()
            .is_err_and(|e| e.starts_with("r1's handlespace differs")),
        "{differ:?}"
    );
}
