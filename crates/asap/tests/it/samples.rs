//! One message of every ASAP and ENRP type, built from typed values, with some variety
//! in what they carry (both address families, SCTP multi-homing, every policy, the
//! project parameters 0x8100/0x8101).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU16;

use asap::wire::param::{
    Address, Cookie, ErrorCause, HandleResolutionOption, Namespace, OperationError, PeChecksum,
    PeId, Policy, PoolElement, PoolHandle, RegistrantIdentity, SctpAddresses, ServerId,
    ServerInformation, Transport, TransportUse,
};
use asap::wire::{AsapMsg, EnrpBody, EnrpMsg, PeEntry, PoolEntries, Resolution, UpdateAction};

fn port(p: u16) -> NonZeroU16 {
    NonZeroU16::new(p).expect("non-zero port")
}

fn handle(s: &str) -> PoolHandle {
    PoolHandle::new(s).expect("pool handle")
}

fn sid(n: u32) -> ServerId {
    ServerId::new(n).expect("non-zero server id")
}

fn tcp4(p: u16) -> Transport {
    Transport::Tcp {
        port: port(p),
        transport_use: TransportUse::DataOnly,
        addr: Address::new(Ipv4Addr::new(192, 0, 2, 7)),
    }
}

/// The nine RFC 5356 policies.
pub(crate) fn policies() -> [Policy; 9] {
    [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin { weight: 3 },
        Policy::Random,
        Policy::WeightedRandom { weight: 7 },
        Policy::Priority { priority: 2 },
        Policy::LeastUsed { load: 0x4000_0000 },
        Policy::LeastUsedDegradation {
            load: 0x1000_0000,
            degradation: 0x0100_0000,
        },
        Policy::PriorityLeastUsed {
            load: 0x2000_0000,
            degradation: 0x0200_0000,
        },
        Policy::RandomizedLeastUsed { load: 0x8000_0000 },
    ]
}

fn pe(id: u32, home: u32, policy: Policy, transport: Transport) -> PoolElement {
    PoolElement {
        pe_id: PeId::new(id).expect("non-zero PE ID"),
        home_server_id: home,
        registration_life: 300_000,
        user_transport: transport,
        policy,
        asap_transport: None,
        labels: Default::default(),
        status: Default::default(),
        serving_identity: None,
    }
}

fn sctp_multihomed() -> Transport {
    Transport::Sctp {
        port: port(3863),
        transport_use: TransportUse::DataPlusControl,
        addrs: SctpAddresses::new([
            Address::new(Ipv4Addr::new(192, 0, 2, 1)),
            Address::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ])
        .expect("1..16 addresses"),
    }
}

/// One (or more) ASAP message of each of the 14 types.
pub(crate) fn asap_messages() -> Vec<AsapMsg> {
    let h = handle("EchoPool");
    let id = PeId::new(0xDEAD_BEEF).expect("non-zero");
    let registrant = RegistrantIdentity::new("spiffe://acme.test/pe/echo-1");
    let mut v: Vec<AsapMsg> = policies()
        .into_iter()
        .enumerate()
        .map(|(i, policy)| AsapMsg::Registration {
            namespace: (i == 0).then(|| Namespace::new("prod").expect("namespace")),
            pool_handle: h.clone(),
            pool_element: pe(i as u32 + 1, 0, policy, tcp4(7000 + i as u16)),
        })
        .collect();
    v.extend([
        AsapMsg::Registration {
            namespace: None,
            pool_handle: h.clone(),
            pool_element: pe(0x77, 0, Policy::RoundRobin, sctp_multihomed()),
        },
        AsapMsg::Deregistration {
            namespace: None,
            pool_handle: h.clone(),
            pe_id: id,
        },
        AsapMsg::RegistrationResponse {
            reject: false,
            pool_handle: h.clone(),
            pe_id: id,
            error: None,
        },
        AsapMsg::RegistrationResponse {
            reject: true,
            pool_handle: h.clone(),
            pe_id: id,
            error: Some(OperationError::single(ErrorCause::NonUniquePeId)),
        },
        AsapMsg::DeregistrationResponse {
            pool_handle: h.clone(),
            pe_id: id,
            error: None,
        },
        AsapMsg::HandleResolution {
            namespace: None,
            pool_handle: h.clone(),
            option: Some(HandleResolutionOption { items: 5 }),
            hints: Default::default(),
        },
        AsapMsg::HandleResolutionResponse {
            pool_handle: h.clone(),
            result: Resolution::Found {
                policy: Some(Policy::RoundRobin),
                pool_elements: vec![
                    PeEntry {
                        pool_element: pe(1, 0x1122_3344, Policy::RoundRobin, tcp4(7777)),
                        registrant: registrant.clone(),
                    },
                    PeEntry {
                        pool_element: pe(2, 0x1122_3344, Policy::RoundRobin, tcp4(7778)),
                        registrant: None,
                    },
                ],
            },
        },
        AsapMsg::HandleResolutionResponse {
            pool_handle: h.clone(),
            result: Resolution::Error(OperationError::single(ErrorCause::UnknownPoolHandle)),
        },
        AsapMsg::EndpointKeepAlive {
            home: true,
            server_id: sid(0x1122_3344),
            pool_handle: h.clone(),
            pe_id: Some(id),
        },
        AsapMsg::EndpointKeepAliveAck {
            pool_handle: h.clone(),
            pe_id: id,
        },
        AsapMsg::EndpointUnreachable {
            namespace: None,
            pool_handle: h.clone(),
            pe_id: id,
        },
        AsapMsg::ServerAnnounce {
            server_id: sid(0x1122_3344),
            transports: vec![tcp4(3864)],
        },
        AsapMsg::Cookie(Cookie::new(b"opaque-state").expect("small cookie")),
        AsapMsg::CookieEcho(Cookie::new(b"opaque-state!").expect("small cookie")),
        AsapMsg::BusinessCard {
            pool_handle: h.clone(),
            policy: None,
            pool_elements: vec![pe(3, 0x1122_3344, Policy::Random, tcp4(9))],
        },
        AsapMsg::Error(OperationError::single(ErrorCause::UnrecognizedParameter(
            vec![0x4a, 0xbc, 0x00, 0x08, 1, 2, 3, 4],
        ))),
    ]);
    v
}

/// One (or more) ENRP message of each of the 10 types.
pub(crate) fn enrp_messages() -> Vec<EnrpMsg> {
    let (a, b) = (sid(0x1122_3344), sid(0x5566_7788));
    let info = ServerInformation {
        server_id: a,
        transport: tcp4(9902),
    };
    let h = handle("EchoPool");
    let mut with_asap = pe(0xDEAD_BEEF, a.get(), Policy::RoundRobin, tcp4(7777));
    with_asap.asap_transport = Some(tcp4(41000));
    let msg = |body| EnrpMsg {
        sender: a,
        receiver: b.get(),
        body,
    };
    vec![
        msg(EnrpBody::Presence {
            reply_required: true,
            checksum: PeChecksum(0xABCD),
            server_info: Some(info.clone()),
        }),
        msg(EnrpBody::HandleTableRequest {
            own_children_only: true,
        }),
        msg(EnrpBody::HandleTableResponse {
            reject: false,
            more: true,
            pools: vec![
                PoolEntries {
                    namespace: Namespace::default_namespace(),
                    pool_handle: h.clone(),
                    entries: vec![PeEntry {
                        pool_element: with_asap.clone(),
                        registrant: RegistrantIdentity::new("spiffe://acme.test/pe/echo-1"),
                    }],
                },
                PoolEntries {
                    namespace: Namespace::new("prod").expect("namespace"),
                    pool_handle: handle("Odd"),
                    entries: vec![PeEntry {
                        pool_element: pe(5, a.get(), Policy::Priority { priority: 9 }, tcp4(1)),
                        registrant: None,
                    }],
                },
            ],
        }),
        msg(EnrpBody::HandleUpdate {
            action: UpdateAction::AddPe,
            namespace: Namespace::default_namespace(),
            pool_handle: h.clone(),
            pool_element: with_asap.clone(),
            registrant: None,
        }),
        msg(EnrpBody::HandleUpdate {
            action: UpdateAction::DelPe,
            namespace: Namespace::new("prod").expect("namespace"),
            pool_handle: h,
            pool_element: with_asap,
            registrant: RegistrantIdentity::new("spiffe://acme.test/pe/echo-1"),
        }),
        msg(EnrpBody::ListRequest),
        msg(EnrpBody::ListResponse {
            reject: false,
            servers: vec![info],
        }),
        msg(EnrpBody::InitTakeover {
            target: sid(0x99AA_BBCC),
        }),
        msg(EnrpBody::InitTakeoverAck {
            target: sid(0x99AA_BBCC),
        }),
        msg(EnrpBody::TakeoverServer {
            target: sid(0x99AA_BBCC),
        }),
        msg(EnrpBody::Error(OperationError::single(
            ErrorCause::UnrecognizedMessage(vec![0x7f, 0, 0, 4]),
        ))),
    ]
}
