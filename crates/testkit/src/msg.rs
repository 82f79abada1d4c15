//! Message and grant builders shared by tests, benches and the simulation.

use std::net::IpAddr;
use std::num::NonZeroU16;

use asap::wire::AsapMsg;
use asap::wire::param::{Address, PeId, Policy, PoolElement, PoolHandle, Transport, TransportUse};
use identity::{Action, Grant};

/// The pool handle `name`; panics on an invalid one (a test's own constant).
pub fn pool(name: &str) -> PoolHandle {
    PoolHandle::new(name).expect("pool handle")
}

/// A registration of PE `pe_id` (from 1) in `pool_handle`, round robin, for 300 s,
/// reachable over TCP at `ip` port 7777: `ip` is the connection's own address, which the
/// registrar's address check wants (spec §7.1 step 3).
pub fn registration(pool_handle: &PoolHandle, pe_id: u32, ip: IpAddr) -> AsapMsg {
    AsapMsg::Registration {
        namespace: None,
        pool_handle: pool_handle.clone(),
        pool_element: PoolElement {
            pe_id: PeId::new(pe_id).expect("PE IDs start at 1"),
            home_server_id: 0,
            registration_life: 300_000,
            user_transport: Transport::Tcp {
                port: NonZeroU16::new(7777).expect("non-zero"),
                transport_use: TransportUse::DataOnly,
                addr: Address::new(ip),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
            labels: Default::default(),
            status: Default::default(),
            serving_identity: None,
        },
    }
}

/// A grant in namespace `default` of `actions` on the pools matching `pools` to the
/// identities matching `identity`; panics on an invalid pattern (a test's own constant).
pub fn grant(identity: &str, pools: &str, actions: &[Action]) -> Grant {
    Grant {
        identity: identity.parse().expect("identity pattern"),
        namespace: "default".parse().expect("namespace pattern"),
        pools: pools.parse().expect("pool pattern"),
        actions: actions.iter().copied().collect(),
        labels: None,
    }
}
