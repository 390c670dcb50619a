//! Content-defined chunking: FastCDC (2020) with the repository's seed.
//!
//! Sits between a source and the hasher. Chunk boundaries depend only on the
//! content, the profile's sizes and the repository's secret seed, so an
//! insertion moves only the chunks around it and a re-backup of identical
//! input produces identical chunks. Boundaries never affect whether data can
//! be read back: readers follow stored chunk lists and never re-chunk.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, StreamCDC};

use crate::config::ChunkerProfile;

/// Splits readers into chunks with one profile's sizes.
#[derive(Clone, Debug)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    seed: u64,
}

impl Chunker {
    /// A chunker for `profile` (already validated by the config) and the
    /// repository's `seed`.
    pub fn new(profile: &ChunkerProfile, seed: u64) -> Chunker {
        Chunker {
            min: profile.min as usize,
            avg: profile.avg as usize,
            max: profile.max as usize,
            seed,
        }
    }

    /// The largest chunk this chunker yields.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Splits `reader` into chunks. Each item is one chunk's bytes, or the
    /// read error that ended the stream. An empty reader yields nothing.
    pub fn chunks<R: Read>(&self, reader: R) -> impl Iterator<Item = io::Result<Vec<u8>>> {
        StreamCDC::with_level_and_seed(
            reader,
            self.min,
            self.avg,
            self.max,
            Normalization::Level1,
            self.seed,
        )
        .map(|chunk| chunk.map(|c| c.data).map_err(io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunker(seed: u64) -> Chunker {
        Chunker::new(
            &ChunkerProfile {
                name: "t".into(),
                min: 256,
                avg: 1024,
                max: 4096,
            },
            seed,
        )
    }

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

    fn split(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        c.chunks(data).collect::<io::Result<_>>().unwrap()
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input(len in 0usize..50_000, seed: u64) {
            let data = pseudo_random(len, seed | 1);
            let chunks = split(&chunker(seed), &data);
            prop_assert_eq!(chunks.concat(), data);
            for c in &chunks[..chunks.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 256 && c.len() <= 4096);
            }
        }

        #[test]
        fn boundaries_resynchronise_after_an_insertion(at in 0usize..60_000, insert in proptest::collection::vec(any::<u8>(), 1..100)) {
            let data = pseudo_random(64_000, 99);
            let mut changed = data.clone();
            changed.splice(at..at, insert);
            let c = chunker(5);
            let before: std::collections::HashSet<_> = split(&c, &data).into_iter().collect();
            let after = split(&c, &changed);
            let fresh = after.iter().filter(|x| !before.contains(*x)).count();
            // Normalised chunking can need a few cuts to fall back into step.
            prop_assert!(fresh <= 8, "{fresh} new chunks after one insertion");
        }
    }

    #[test]
    fn an_insertion_usually_changes_one_chunk() {
        let c = chunker(5);
        let data = pseudo_random(64_000, 99);
        let before: std::collections::HashSet<_> = split(&c, &data).into_iter().collect();
        let (mut trials, mut fresh) = (0, 0);
        for at in (0..60_000).step_by(37) {
            let mut changed = data.clone();
            changed.splice(at..at, [1u8, 2, 3, 4, 5, 6, 7]);
            fresh += split(&c, &changed)
                .iter()
                .filter(|x| !before.contains(*x))
                .count();
            trials += 1;
        }
        let mean = fresh as f64 / trials as f64;
        assert!(mean < 1.5, "mean of {mean} new chunks per insertion");
    }

    #[test]
    fn the_seed_moves_boundaries() {
        let data = pseudo_random(100_000, 7);
        let a: Vec<usize> = split(&chunker(1), &data).iter().map(Vec::len).collect();
        let b: Vec<usize> = split(&chunker(2), &data).iter().map(Vec::len).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_input_yields_no_chunks() {
        assert!(split(&chunker(0), &[]).is_empty());
    }
}
