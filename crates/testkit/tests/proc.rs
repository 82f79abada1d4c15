//! The /proc readings the benches use see this very process.

use std::time::Duration;

use testkit::proc::{Proc, clock_ticks};

#[test]
fn this_process_has_cpu_time_and_memory() {
    // Burn a little CPU so that at least one clock tick is counted.
    let mut x = 0u64;
    #[allow(clippy::disallowed_methods)] // a busy loop bounded by wall time
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(100) {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    let me = Proc::this();
    assert!(me.cpu() > Duration::ZERO, "no CPU time read ({x})");
    let (rss, peak) = me.rss_kib();
    assert!(rss > 0 && peak >= rss, "RSS {rss} KiB, peak {peak} KiB");
    assert!(clock_ticks() > 0);
    // A process that does not exist reads as zero, not a panic.
    assert_eq!(Proc(u32::MAX).rss_kib(), (0, 0));
}
