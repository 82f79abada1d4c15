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

mod asap;
mod drain;
mod extensions;
mod legacy;
mod liveness;
mod peers;
mod read_view;
mod refresh;
mod removals;
mod tables;
mod takeover;
mod updates;

const PE_A: &str = "spiffe://acme.test/pe/a";
const PE_B: &str = "spiffe://acme.test/pe/b";
const PU_1: &str = "spiffe://acme.test/pu/1";

fn grant(identity: &str, pools: &str, actions: &[identity::Action]) -> Grant {
    Grant {
        identity: identity.parse().expect("identity pattern"),
        namespace: "default".parse().expect("namespace pattern"),
        pools: pools.parse().expect("pool pattern"),
        actions: actions.iter().copied().collect(),
        labels: None,
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
        let client = Remote {
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
                hints: Default::default(),
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
        labels: Default::default(),
        status: Default::default(),
        serving_identity: None,
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
        let peer = Remote {
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

fn list_response(servers: Vec<ServerInformation>) -> EnrpBody {
    EnrpBody::ListResponse {
        reject: false,
        servers,
    }
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
