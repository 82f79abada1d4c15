//! Shows the "same zone first" policy selecting: four PEs in zones a and b, a pool user
//! hinting each zone, and one hinting none. `cargo run -p custom-policy`.

use asap::policy::PoolSelection;
use asap::wire::param::{Labels, PeId, Policy};
use custom_policy::{SAME_ZONE_FIRST, registry};

/// The policy draws no random numbers; any source does.
struct Counter(u64);

impl rand_core::TryRng for Counter {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.0 += 1;
        Ok(self.0 as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 += 1;
        Ok(self.0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.fill(0);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = registry();
    let policy = Policy::private(SAME_ZONE_FIRST, &[]).ok_or("not a private type")?;
    let mut pool = PoolSelection::new();
    for (id, zone) in [(1, "a"), (2, "b"), (3, "a"), (4, "b")] {
        let labels = Labels::parse([format!("zone={zone}")])?;
        let pe = PeId::new(id).ok_or("PE ID 0")?;
        pool.insert_or_update_labeled(&registry, pe, &policy, &labels)?;
        println!("PE {id}: zone={zone}");
    }
    let mut rng = Counter(0);
    for hint in [&["zone=a"][..], &["zone=b"], &[]] {
        let hints = Labels::parse(hint)?;
        let mut out = Vec::new();
        pool.select_hinted(2, &hints, &mut rng, &mut out);
        let ids: Vec<u32> = out.iter().map(|pe| pe.get()).collect();
        println!("hints [{hints}]: {ids:?}");
    }
    Ok(())
}
