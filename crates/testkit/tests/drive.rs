//! The core-driving fuzz target's body (`testkit::drive`) on pseudo-random and on
//! directed programs, so that every `cargo test` (and CI's nextest) runs it.

use testkit::drive::{self, LIMITS, MAX_STEPS, Report};
use testkit::sim::rng::Rng;

/// Programs per run: a few hundred, about two seconds of a debug build here;
/// `RSP_DRIVE_PROGRAMS=N` runs more.
const PROGRAMS: u64 = 400;

fn programs() -> u64 {
    std::env::var("RSP_DRIVE_PROGRAMS").map_or(PROGRAMS, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("RSP_DRIVE_PROGRAMS={v:?} is not a number"))
    })
}

#[test]
fn random_programs_keep_the_invariants() {
    let mut rng = Rng::new(0x00c0_ffee);
    let mut total = Report::default();
    let programs = programs();
    for i in 0..programs {
        let len = rng.range(0, 3000) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let report = drive::run(&bytes).unwrap_or_else(|e| {
            panic!("program {i} ({len} bytes) broke an invariant: {e}\nprogram: {bytes:02x?}")
        });
        total.steps += report.steps;
        total.actions += report.actions;
        total.accepted += report.accepted;
        total.most_pes = total.most_pes.max(report.most_pes);
    }
    println!("{programs} programs: {total:?}");
    // Not vacuous: the programs register PEs, several at once (closes, removals and time
    // steps churn them; the directed test below fills the handlespace).
    assert!(total.accepted > 100, "too few registrations: {total:?}");
    assert!(total.most_pes >= 2, "never two PEs at once: {total:?}");
}

/// One registration step: client `c` registers PE `pe_id` in pool `pool` (0 or 1) at its
/// own address, round robin, without a Namespace parameter or labels.
fn register(program: &mut Vec<u8>, c: u8, pool: u8, pe_id: u8) {
    // op 2 (ASAP message), client, pool, PE ID - 1, namespace (None), kind (registration),
    // address byte (own), policy (round robin), life, labels (none).
    program.extend([2, c, pool, pe_id - 1, 2, 0, 1, 2, 200, 0]);
}

#[test]
fn the_handlespace_limits_hold_and_an_ungranted_pe_is_refused() {
    let mut program = vec![0]; // the core's RNG seed
    for id in 1..=8 {
        register(&mut program, 0, 0, id); // 6 fit pool-0 (max_pes_per_pool)
    }
    for id in 9..=12 {
        register(&mut program, 0, 1, id); // 2 more: pe/p0 reaches max_pes_per_registrant
    }
    for id in 1..=8 {
        register(&mut program, 3, 0, id); // the ungranted identity: none accepted
        register(&mut program, 1, 1, id); // 4 fit pool-1, then the handlespace is full
    }
    let report = drive::run(&program).expect("invariants hold");
    assert_eq!(report.accepted, LIMITS.max_pes, "{report:?}");
    assert_eq!(report.most_pes, LIMITS.max_pes, "{report:?}");
    // Time passes without keep-alive answers' renewals: every PE's registration ends
    // and the bookkeeping still matches (checked after each timer batch).
    program.extend([10, 255, 10, 255, 10, 255]);
    drive::run(&program).expect("invariants hold as PEs expire");
}

#[test]
fn a_long_program_stops_at_the_step_limit() {
    // Each step "connect client 0" takes two zero bytes.
    let report = drive::run(&vec![0; 4 * MAX_STEPS]).expect("invariants hold");
    assert_eq!(report.steps, MAX_STEPS);
}
