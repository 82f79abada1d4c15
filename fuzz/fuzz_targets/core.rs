//! Drive one registrar core (`enrp_core::registrar::Core`) with arbitrary bytes read as a
//! program: connections and ENRP peers that come and go, well-formed and raw messages,
//! timer firings, time steps, operator changes (`testkit::drive`). After every step the
//! test kit's invariants must hold (handlespace bookkeeping and checksums, audit before
//! acknowledgement, everything sent encodes); a panic in the core is a finding too.
//! `cargo test -p testkit --test drive` runs the same driver on pseudo-random programs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = testkit::drive::run(data) {
        panic!("{broken}");
    }
});
