//! Encoding and decoding cost of the message a registrar sends most: the handle
//! resolution response (spec §6.1, §7.3), with 3 PEs (the default) and 128 (the cap).
//!
//! Run: `cargo bench -p asap --bench codec`. Prints median nanoseconds per message
//! (median over batches) and the message size.
#![allow(clippy::disallowed_methods)] // A benchmark reads the clock.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::num::NonZeroU16;
use std::time::Instant;

use asap::wire::param::{
    Address, PeId, Policy, PoolElement, PoolHandle, RegistrantIdentity, Transport, TransportUse,
};
use asap::wire::{AsapMsg, PeEntry, Resolution};

const BATCHES: usize = 101;
const BATCH: usize = 2_000;

fn response(n: u32) -> AsapMsg {
    let pool_elements = (1..=n)
        .map(|i| PeEntry {
            pool_element: PoolElement {
                pe_id: PeId::new(i).expect("non-zero"),
                home_server_id: 0x1122_3344,
                registration_life: 300_000,
                user_transport: Transport::Tcp {
                    port: NonZeroU16::new(7000 + (i as u16 % 1000)).expect("non-zero"),
                    transport_use: TransportUse::DataOnly,
                    addr: Address::new(Ipv4Addr::from(0x0a00_0000 + i)),
                },
                policy: Policy::RoundRobin,
                asap_transport: None,
                labels: Default::default(),
                status: Default::default(),
                serving_identity: None,
            },
            registrant: RegistrantIdentity::new(&format!("spiffe://acme.test/pe/echo-{i}")),
        })
        .collect();
    AsapMsg::HandleResolutionResponse {
        pool_handle: PoolHandle::new("EchoPool").expect("pool handle"),
        result: Resolution::Found {
            policy: Some(Policy::RoundRobin),
            pool_elements,
        },
    }
}

fn median_ns(mut op: impl FnMut()) -> f64 {
    for _ in 0..BATCH {
        op();
    }
    let mut per_op: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                op();
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op[BATCHES / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!("| message | bytes | encode (ns) | decode (ns) |");
    println!("|---|---:|---:|---:|");
    for n in [3, 128] {
        let msg = response(n);
        let bytes = msg.to_bytes().expect("encodes");
        assert_eq!(AsapMsg::decode(&bytes).expect("decodes").msg, msg);
        if quick {
            continue;
        }
        let mut buf = Vec::with_capacity(bytes.len());
        let enc = median_ns(|| {
            buf.clear();
            black_box(&msg).encode(&mut buf).expect("encodes");
            black_box(&buf);
        });
        let dec = median_ns(|| {
            black_box(AsapMsg::decode(black_box(&bytes)).expect("decodes"));
        });
        println!(
            "| handle resolution response, {n} PEs | {} | {enc:.0} | {dec:.0} |",
            bytes.len()
        );
    }
}
