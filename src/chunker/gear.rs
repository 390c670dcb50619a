//! FastCDC 2020's cut search, four bytes per step.
//!
//! `fastcdc::v2020::cut_gear` rolls the gear hash one byte after another:
//! `h = (h << 1) + gear[b]`, each step waiting for the last. But the gear
//! values of the next bytes do not depend on the hash, so the hashes of
//! four positions can all be formed from the one before them:
//!
//! ```text
//! h[p]   = (h[p-1] << 1) + g[p]
//! h[p+1] = (h[p-1] << 2) + (g[p] << 1) + g[p+1]
//! h[p+2] = (h[p-1] << 3) + (g[p] << 2) + (g[p+1] << 1) + g[p+2]
//! h[p+3] = (h[p-1] << 4) + (g[p] << 3) + (g[p+1] << 2) + (g[p+2] << 1) + g[p+3]
//! ```
//!
//! which leaves one shift and add per four bytes on the dependency chain.
//! The cut points are exactly fastcdc's, the same positions tested with the
//! same masks (tests compare the two on random and repetitive data, every
//! length around the size limits, and several seeds).

use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};

/// One profile's gear table and masks.
#[derive(Clone)]
pub(super) struct Gear {
    gear: [u64; 256],
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Gear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gear")
            .field("min", &self.min)
            .field("avg", &self.avg)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// A mask test that fastcdc makes on the hash shifted left by one (the
/// first byte of each pair it rolls): the top bit of the mask is lost.
fn shifted(mask: u64) -> u64 {
    mask & (u64::MAX >> 1)
}

impl Gear {
    /// The search for sizes `min`, `avg`, `max` (even, as the profile
    /// check demands) with the repository's `seed`.
    pub(super) fn new(min: usize, avg: usize, max: usize, seed: u64) -> Gear {
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        let (table, _) = get_gear_with_seed(seed);
        let mut gear = [0u64; 256];
        gear.copy_from_slice(&table);
        Gear {
            gear,
            min,
            avg,
            max,
            mask_s,
            mask_l,
        }
    }

    /// The length of the chunk starting at `src[0]`, as
    /// `FastCDC::cut(0, src.len())` gives it.
    pub(super) fn cut(&self, src: &[u8]) -> usize {
        let mut remaining = src.len();
        if remaining <= self.min {
            return remaining;
        }
        let mut center = self.avg;
        if remaining > self.max {
            remaining = self.max;
        } else if remaining < center {
            center = remaining;
        }
        // fastcdc tests positions in pairs from `min`: those below the
        // (even) center with the strict mask, the rest up to the last whole
        // pair with the relaxed one.
        let center = center & !1;
        let end = remaining & !1;
        let start = self.min & !1;
        let (hash, found) = self.scan(src, start, center.max(start), 0, self.mask_s);
        if let Some(at) = found {
            return at;
        }
        let (_, found) = self.scan(src, center.max(start), end, hash, self.mask_l);
        found.unwrap_or(remaining)
    }

    /// Rolls the hash from `h` over `src[from..to]` (`from` and `to` even)
    /// and returns it with the first position whose hash passes `mask`
    /// (the even positions being tested as fastcdc does, shifted).
    #[inline(always)]
    fn scan(
        &self,
        src: &[u8],
        from: usize,
        to: usize,
        mut h: u64,
        mask: u64,
    ) -> (u64, Option<usize>) {
        let g = &self.gear;
        let (even, odd) = (shifted(mask), mask);
        let src = &src[..to];
        let mut p = from;
        while p + 4 <= to {
            let quad: &[u8; 4] = src[p..p + 4].try_into().expect("four bytes");
            let g0 = g[quad[0] as usize];
            let g1 = g[quad[1] as usize];
            let g2 = g[quad[2] as usize];
            let g3 = g[quad[3] as usize];
            let s1 = (g0 << 1).wrapping_add(g1);
            let s2 = (s1 << 1).wrapping_add(g2);
            let s3 = (s2 << 1).wrapping_add(g3);
            let h0 = (h << 1).wrapping_add(g0);
            let h1 = (h << 2).wrapping_add(s1);
            let h2 = (h << 3).wrapping_add(s2);
            let h3 = (h << 4).wrapping_add(s3);
            let hit = (h0 & even == 0) | (h1 & odd == 0) | (h2 & even == 0) | (h3 & odd == 0);
            if hit {
                let at = if h0 & even == 0 {
                    p
                } else if h1 & odd == 0 {
                    p + 1
                } else if h2 & even == 0 {
                    p + 2
                } else {
                    p + 3
                };
                return (h, Some(at));
            }
            h = h3;
            p += 4;
        }
        if p < to {
            // One pair left (both ends are even).
            let h0 = (h << 1).wrapping_add(g[src[p] as usize]);
            if h0 & even == 0 {
                return (h0, Some(p));
            }
            let h1 = (h0 << 1).wrapping_add(g[src[p + 1] as usize]);
            if h1 & odd == 0 {
                return (h1, Some(p + 1));
            }
            h = h1;
        }
        (h, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::FastCDC;
    use proptest::prelude::*;

    fn pseudo_random(n: usize, mut state: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn reference(src: &[u8], min: usize, avg: usize, max: usize, seed: u64) -> usize {
        let cdc = FastCDC::with_level_and_seed(src, min, avg, max, Normalization::Level1, seed);
        cdc.cut(0, src.len()).1
    }

    /// Compares every cut of a sequential walk over `data`, and the cut of
    /// every prefix length near the size limits.
    fn assert_same_cuts(data: &[u8], min: usize, avg: usize, max: usize, seed: u64) {
        let gear = Gear::new(min, avg, max, seed);
        let mut at = 0;
        while at < data.len() {
            let want = reference(&data[at..], min, avg, max, seed);
            assert_eq!(gear.cut(&data[at..]), want, "at {at} of {}", data.len());
            at += want;
        }
        for len in [
            min - 1,
            min,
            min + 1,
            min + 2,
            min + 3,
            min + 5,
            avg - 1,
            avg,
            avg + 1,
            avg + 3,
            max - 1,
            max,
            max + 1,
        ] {
            let src = &data[..len.min(data.len())];
            assert_eq!(
                gear.cut(src),
                reference(src, min, avg, max, seed),
                "len {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn cuts_equal_fastcdc_on_random_data(len in 0usize..300_000, seed: u64, state: u64) {
            let data = pseudo_random(len, state | 1);
            assert_same_cuts(&data, 4096, 16384, 65536, seed);
            assert_same_cuts(&data, 256, 1024, 4096, seed);
        }

        #[test]
        fn cuts_equal_fastcdc_on_repetitive_data(len in 0usize..200_000, period in 1usize..5000, seed: u64) {
            let unit = pseudo_random(period, period as u64 | 1);
            let data: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
            assert_same_cuts(&data, 4096, 16384, 65536, seed);
        }
    }

    #[test]
    fn cuts_equal_fastcdc_for_the_default_profiles_and_odd_lengths() {
        let data = pseudo_random(3 << 20, 77);
        for (min, avg, max) in [
            (4096, 16384, 65536),
            (65536, 1 << 20, 4 << 20),
            (64, 256, 1024),
        ] {
            for seed in [0, 1, 0x8000_0000_0000_0000, u64::MAX] {
                assert_same_cuts(&data, min, avg, max, seed);
                let zeros = vec![0u8; 200_001];
                assert_same_cuts(&zeros, min, avg, max, seed);
            }
        }
        // Every length from nothing to past the maximum, odd ones included.
        let gear = Gear::new(64, 256, 1024, 9);
        for len in 0..1200 {
            assert_eq!(
                gear.cut(&data[..len]),
                reference(&data[..len], 64, 256, 1024, 9)
            );
        }
    }
}
