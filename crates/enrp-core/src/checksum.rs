//! The PE checksum of the handlespace audit (spec §9.6, §4.6; RFC 5353).
//!
//! Each ENRP_PRESENCE carries the checksum of the PEs its sender owns; a peer that computes
//! a different value over its copy of those PEs re-synchronises. The algorithm is rsplib's,
//! as RSPLIB 3.4.4 runs it on x86 (docs/RSPLIB.md §5):
//!
//! ```text
//! per-PE sum   s(pe) = Σ 16-bit LITTLE-endian words over  pool_handle_bytes ‖ pad-to-even
//!                     followed by  PE ID as 4 big-endian bytes
//! server sum   S     = Σ s(pe) over PEs with home == server         (32-bit accumulator)
//! fold         while S > 0xFFFF: S = (S & 0xFFFF) + (S >> 16)
//! checksum     C     = (~S) & 0xFFFF, sent LITTLE-endian in the PE Checksum parameter
//! ```
//!
//! Why little-endian: RSPLIB loads the words natively and stores the result without
//! `htons`, so on x86 it sums little-endian words. The ones'-complement sum is
//! byte-order independent (RFC 1071 §2(B)), so this gives the same two bytes as spec
//! §9.6's big-endian description — until the 32-bit accumulator wraps: each wrap drops
//! 2^32 ≡ 1 in the accumulator's own byte order, and the two orders wrap at different
//! moments. Measured against rspregistrar past the wrap (3,800 PEs of 32 × 0xFF: RSPLIB
//! `ce05`, a big-endian accumulator `cd05`), only the little-endian one agrees, and a
//! mismatch there means a W=1 re-sync at every PRESENCE. (RSPLIB on a big-endian host
//! would disagree with this past the wrap; x86 is what is deployed.)
//!
//! Pure data: [`PeChecksum`] is updated as PEs come and go, and read with
//! [`PeChecksum::value`].

use asap::wire::param::{PeId, PoolHandle};

/// The incremental spec §9.6 checksum of one registrar's PEs.
///
/// The sum is kept unfolded in a 32-bit accumulator that wraps, exactly like rsplib's
/// `HandlespaceChecksumAccumulatorType` (spec: "32-bit accumulator"), in rsplib's (x86)
/// little-endian word domain. Wrapping addition and subtraction are exact inverses, so
/// [`PeChecksum::remove`] undoes [`PeChecksum::add`] whatever happened in between, and the
/// fold happens only when the value is read. (A wider accumulator would differ from rsplib
/// once the sum passes 2^32, some 3,700 PEs with long handles, because 2^32 ≡ 1 in the
/// folded sum.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeChecksum {
    sum: u32,
}

impl PeChecksum {
    /// The checksum over no PEs.
    pub const EMPTY: u16 = 0xFFFF;

    /// The checksum of no PEs.
    pub const fn new() -> Self {
        Self { sum: 0 }
    }

    /// The checksum of `pes` computed from scratch.
    pub fn of<'a>(pes: impl IntoIterator<Item = (&'a PoolHandle, PeId)>) -> Self {
        let mut checksum = Self::new();
        for (pool_handle, pe_id) in pes {
            checksum.add(pool_handle, pe_id);
        }
        checksum
    }

    /// s(pe): the 16-bit little-endian words of the pool handle (a last odd byte padded
    /// with a zero byte after it) and of the PE ID's big-endian bytes, summed without
    /// folding.
    pub fn pe_sum(pool_handle: &PoolHandle, pe_id: PeId) -> u32 {
        let words = pool_handle.as_bytes().chunks(2).map(|w| match *w {
            [lo, hi] => u16::from_le_bytes([lo, hi]),
            [lo] => u16::from(lo),
            _ => 0,
        });
        let [a, b, c, d] = pe_id.get().to_be_bytes();
        let id = u32::from(u16::from_le_bytes([a, b])) + u32::from(u16::from_le_bytes([c, d]));
        // At most 16 + 2 words of 0xFFFF: no overflow.
        words.map(u32::from).sum::<u32>() + id
    }

    /// Counts a PE the registrar now owns.
    pub fn add(&mut self, pool_handle: &PoolHandle, pe_id: PeId) {
        self.sum = self.sum.wrapping_add(Self::pe_sum(pool_handle, pe_id));
    }

    /// Stops counting a PE added before (removal, or a change of home registrar).
    pub fn remove(&mut self, pool_handle: &PoolHandle, pe_id: PeId) {
        self.sum = self.sum.wrapping_sub(Self::pe_sum(pool_handle, pe_id));
    }

    /// The checksum as the PE Checksum parameter carries it (spec §4.6): the codec writes
    /// this value big-endian, so it is the little-endian result byte-swapped, and the
    /// bytes on the wire are RSPLIB's.
    pub fn value(&self) -> u16 {
        let mut s = self.sum;
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        // The loop leaves s ≤ 0xFFFF, so the cast keeps every bit.
        (!(s as u16)).swap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn handle(bytes: &[u8]) -> PoolHandle {
        PoolHandle::new(bytes).expect("valid test handle")
    }

    fn pe(id: u32) -> PeId {
        PeId::new(id).expect("non-zero test PE ID")
    }

    #[test]
    fn spec_9_6_test_vectors() {
        // Spec §9.6 table: owned PEs → checksum on the wire.
        let echo = handle(b"EchoPool");
        let odd = handle(b"Odd");
        type Owned<'a> = &'a [(&'a PoolHandle, PeId)];
        let vectors: [(Owned<'_>, [u8; 2]); 4] = [
            (&[], [0xff, 0xff]),
            (&[(&echo, pe(0xDEAD_BEEF))], [0xf4, 0xb3]),
            (
                &[(&echo, pe(0xDEAD_BEEF)), (&echo, pe(0x0000_0001))],
                [0x87, 0x04],
            ),
            (&[(&odd, pe(0x1234_5678))], [0xe3, 0xee]),
        ];
        for (pes, wire) in vectors {
            let value = PeChecksum::of(pes.iter().copied()).value();
            assert_eq!(value.to_be_bytes(), wire, "{pes:?}");
        }
        assert_eq!(PeChecksum::new().value(), PeChecksum::EMPTY);
    }

    #[test]
    fn insert_then_remove_returns_to_empty() {
        let echo = handle(b"EchoPool");
        let mut c = PeChecksum::new();
        c.add(&echo, pe(0xDEAD_BEEF));
        c.add(&handle(b"Odd"), pe(7));
        assert_ne!(c.value(), PeChecksum::EMPTY);
        c.remove(&echo, pe(0xDEAD_BEEF));
        c.remove(&handle(b"Odd"), pe(7));
        assert_eq!(c, PeChecksum::new());
        assert_eq!(c.value(), 0xFFFF);
    }

    #[test]
    fn odd_handle_is_padded_with_a_zero_byte() {
        // Little-endian words: the zero pad after an odd last byte is its high byte.
        assert_eq!(PeChecksum::pe_sum(&handle(b"a"), pe(1)), 0x61 + 0x0100);
        assert_eq!(
            PeChecksum::pe_sum(&handle(b"ab"), pe(0x0001_0002)),
            0x6261 + 0x0100 + 0x0200
        );
    }

    #[test]
    fn past_the_wrap_the_bytes_are_rsplibs() {
        // Measured on the wire (docs/RSPLIB.md §5, rsplib-lab/s7.sh + bigcsum.py):
        // one rspregistrar owning N PEs "32 × 0xFF" / 0xFFFF0000|i, i = 1..=N. From
        // N = 3,800 on, a big-endian accumulator would give cd05, ece6, e5b6, 395e, 4ab6.
        let h = handle(&[0xFF; 32]);
        let measured: [(u32, [u8; 2]); 9] = [
            (1, [0xff, 0xfe]),
            (2, [0xff, 0xfc]),
            (1000, [0x5c, 0xe4]),
            (3700, [0x86, 0x15]),
            (3800, [0xce, 0x05]),
            (3900, [0xed, 0xe5]),
            (4000, [0xe6, 0xb5]),
            (5000, [0x3a, 0x5d]),
            (6000, [0x4b, 0xb5]),
        ];
        let mut c = PeChecksum::new();
        let mut added = 0;
        for (n, wire) in measured {
            while added < n {
                added += 1;
                c.add(&h, pe(0xFFFF_0000 | added));
            }
            assert_eq!(c.value().to_be_bytes(), wire, "N = {n}");
        }
    }

    #[test]
    fn accumulator_wraps_like_rsplib_and_removal_still_undoes() {
        // 5,000 PEs of maximal sum (32 × 0xFF, ID 0xFFFFxxxx) pass 2^32.
        let h = handle(&[0xFF; 32]);
        let ids: Vec<PeId> = (0..5000).map(|i| pe(0xFFFF_0000 | i)).collect();
        let mut c = PeChecksum::new();
        let mut wide = 0u64;
        for &id in &ids {
            c.add(&h, id);
            wide += u64::from(PeChecksum::pe_sum(&h, id));
        }
        assert!(
            wide > u64::from(u32::MAX),
            "the test must wrap the accumulator"
        );
        assert_eq!(u64::from(c.sum), wide % (1 << 32));
        for &id in ids.iter().rev() {
            c.remove(&h, id);
        }
        assert_eq!(c.value(), PeChecksum::EMPTY);
    }

    fn handle_strategy() -> impl Strategy<Value = PoolHandle> {
        proptest::collection::vec(any::<u8>(), 1..=PoolHandle::MAX_LEN)
            .prop_map(|b| PoolHandle::new(b).expect("1..=32 bytes"))
    }

    proptest! {
        #[test]
        fn incremental_equals_recomputed(
            pes in proptest::collection::vec((handle_strategy(), 1..=u32::MAX), 0..40),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            // Add every PE, remove some in another order; after each step the running
            // value equals the value computed from scratch over the PEs still counted.
            let mut owned: Vec<(PoolHandle, PeId)> =
                pes.into_iter().map(|(h, id)| (h, pe(id))).collect();
            let mut c = PeChecksum::new();
            for (h, id) in &owned {
                c.add(h, *id);
            }
            prop_assert_eq!(c, PeChecksum::of(owned.iter().map(|(h, id)| (h, *id))));
            for index in removals {
                if owned.is_empty() {
                    break;
                }
                let (h, id) = owned.swap_remove(index.index(owned.len()));
                c.remove(&h, id);
                let scratch = PeChecksum::of(owned.iter().map(|(h, id)| (h, *id)));
                prop_assert_eq!(c.value(), scratch.value());
            }
        }
    }
}
