//! Chunking one stream on many threads, with the cut points of one.
//!
//! FastCDC's next cut depends only on where the current chunk starts and on
//! the bytes after that. So a block of a stream can be chunked on its own,
//! from its first byte, before anyone knows where the chunk crossing into it
//! from the previous block ends: those are *speculative* cuts. Once the true
//! cut sequence, carried over from the previous block, lands on any of the
//! block's speculative cuts (or on its first byte), the two agree from there
//! on. The [`Stitcher`], in stream order, cuts the few chunks between the
//! carried-over tail and that meeting point itself; on real data they meet
//! within a chunk or two. Where they never meet (a long run of one byte
//! value, cut at every maximum) the stitcher cuts the whole block itself,
//! which costs what sequential chunking would, and the result is still
//! exactly the sequential one.
//!
//! Readers never depend on this: a stream chunked here or by
//! [`super::Chunks`] yields the same chunks, so deduplication across the two
//! is unaffected.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

use super::{BLOCK_SIZE, Block, Chunker, fill};

/// A block's speculative chunks: cut from its first byte, as far as its own
/// bytes decide, each with its identity.
#[derive(Debug)]
pub struct Speculative<T> {
    /// End offsets of the chunks in the block, ascending; chunk `i` starts
    /// where chunk `i - 1` ends (the first at 0).
    ends: Vec<usize>,
    ids: Vec<T>,
}

impl Chunker {
    /// The read block size for speculative chunking: 4 MiB, or two maximal
    /// chunks if that is more, so that most of a block's cuts are decided by
    /// its own bytes (a profile's maximum may be up to 16 MiB).
    pub fn block_size(&self) -> usize {
        BLOCK_SIZE.max(2 * self.max)
    }

    /// Cuts `block` from its first byte and identifies each chunk with `id`.
    /// `last` says the stream ends with this block; otherwise the bytes after
    /// the last cut its own bytes decide are left to the [`Stitcher`].
    pub fn speculate<T>(
        &self,
        block: &[u8],
        last: bool,
        mut id: impl FnMut(&[u8]) -> T,
    ) -> Speculative<T> {
        let cutter = self.cutter(block);
        let mut ends = Vec::with_capacity(block.len() / self.avg + 1);
        let mut ids = Vec::with_capacity(ends.capacity());
        let mut start = 0;
        while start < block.len() {
            let Some(end) = self.decided_cut(&cutter, start, block.len(), last) else {
                break;
            };
            ids.push(id(&block[start..end]));
            ends.push(end);
            start = end;
        }
        Speculative { ends, ids }
    }
}

/// Joins speculatively chunked blocks, in stream order, into the chunks
/// sequential chunking would cut.
#[derive(Debug)]
pub struct Stitcher {
    chunker: Chunker,
    /// The bytes after the last true cut: shorter than a maximal chunk.
    tail: Bytes,
}

impl Stitcher {
    /// A stitcher for blocks speculated by `chunker`.
    pub fn new(chunker: Chunker) -> Stitcher {
        Stitcher {
            chunker,
            tail: Bytes::new(),
        }
    }

    /// Appends to `out` the true chunks that `block` completes, in order;
    /// `spec` is its speculation and `last` says the stream ends with it.
    /// Chunks the speculation did not cut are identified with `id`.
    pub fn push<T>(
        &mut self,
        block: Bytes,
        spec: Speculative<T>,
        last: bool,
        mut id: impl FnMut(&[u8]) -> T,
        out: &mut Vec<(T, Bytes)>,
    ) {
        let c = &self.chunker;
        // Where the true cut sequence enters `block`.
        let mut at = 0;
        if !self.tail.is_empty() {
            // Chunks starting in the tail are cut over the tail and enough
            // of the block's head to decide them (the tail is shorter than
            // one maximal chunk, so one maximal chunk of head is enough).
            let head = block.len().min(c.max);
            let mut joined = BytesMut::with_capacity(self.tail.len() + head);
            joined.extend_from_slice(&self.tail);
            joined.extend_from_slice(&block[..head]);
            let joined = joined.freeze();
            let joined_last = last && head == block.len();
            let cutter = c.cutter(&joined);
            let mut start = 0;
            while start < self.tail.len() {
                let Some(end) = c.decided_cut(&cutter, start, joined.len(), joined_last) else {
                    // Only a block shorter than a chunk leaves it undecided:
                    // all of it joins the tail.
                    self.tail = joined.slice(start..);
                    return;
                };
                out.push((id(&joined[start..end]), joined.slice(start..end)));
                start = end;
            }
            at = start - self.tail.len();
        }
        let cutter = c.cutter(&block);
        let mut next = 0; // the first speculative chunk ending after `at`
        loop {
            while next < spec.ends.len() && spec.ends[next] <= at {
                next += 1;
            }
            let met = at == 0 || (next > 0 && spec.ends[next - 1] == at);
            if met {
                let mut start = at;
                for (end, chunk_id) in spec.ends.into_iter().zip(spec.ids).skip(next) {
                    out.push((chunk_id, block.slice(start..end)));
                    start = end;
                }
                at = start;
                break;
            }
            let Some(end) = c.decided_cut(&cutter, at, block.len(), last) else {
                break;
            };
            out.push((id(&block[at..end]), block.slice(at..end)));
            at = end;
        }
        self.tail = block.slice(at..);
        debug_assert!(!last || self.tail.is_empty());
    }
}

/// Reads a stream in blocks for speculative chunking.
pub struct Blocks<R> {
    reader: R,
    block_size: usize,
    done: bool,
}

impl<R: Read> Blocks<R> {
    /// Blocks of `reader`, each `block_size` bytes (see
    /// [`Chunker::block_size`]) unless the stream ends with it.
    pub fn with_block_size(reader: R, block_size: usize) -> Blocks<R> {
        Blocks {
            reader,
            block_size,
            done: false,
        }
    }
}

impl<R: Read> Iterator for Blocks<R> {
    /// A block and whether the stream ends with it. The last block may be
    /// empty (the end was found only after a full block); an empty stream
    /// yields one empty last block.
    type Item = io::Result<(Bytes, bool)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // A block is filled whatever the producer's pace: chunking the
        // earlier ones goes on meanwhile on other threads, and a full block
        // keeps the stitching (a chunk or two per block) rare.
        let mut block = Block::take(self.block_size);
        let (filled, last) = match fill(&mut self.reader, block.as_mut_slice(), 0, self.block_size)
        {
            Ok(read) => read,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        self.done = last;
        let block = Bytes::from_owner(Block {
            buf: block,
            len: filled,
        });
        Some(Ok((block, last)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::tests::{Failing, pseudo_random};
    use crate::config::ChunkerProfile;
    use proptest::prelude::*;

    fn chunker() -> Chunker {
        Chunker::new(
            &ChunkerProfile {
                name: "t".into(),
                min: 256,
                avg: 1024,
                max: 4096,
            },
            0x5eed,
        )
    }

    /// Chunks `data` in blocks of the given sizes (cycled), speculating on
    /// each block and stitching in order, as the stream backup does.
    fn stitched(c: &Chunker, data: &[u8], sizes: &[usize]) -> Vec<(usize, Bytes)> {
        let mut stitcher = Stitcher::new(c.clone());
        let mut out = Vec::new();
        let mut blocks = Vec::new();
        let mut rest = data;
        for size in sizes.iter().cycle() {
            let n = (*size).min(rest.len());
            blocks.push(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
        // The reader may find the end only after a full block.
        blocks.push(Bytes::new());
        let count = blocks.len();
        for (i, block) in blocks.into_iter().enumerate() {
            let last = i + 1 == count;
            let spec = c.speculate(&block, last, <[u8]>::len);
            stitcher.push(block, spec, last, <[u8]>::len, &mut out);
        }
        out
    }

    fn sequential(c: &Chunker, data: &[u8]) -> Vec<Bytes> {
        c.chunks(data).collect::<io::Result<_>>().unwrap()
    }

    fn assert_same_as_sequential(data: &[u8], sizes: &[usize]) {
        let c = chunker();
        let got = stitched(&c, data, sizes);
        for (len, chunk) in &got {
            assert_eq!(*len, chunk.len(), "a chunk's id belongs to another chunk");
        }
        let got: Vec<Bytes> = got.into_iter().map(|(_, b)| b).collect();
        assert_eq!(got, sequential(&c, data), "block sizes {sizes:?}");
    }

    proptest! {
        #[test]
        fn stitched_chunks_equal_sequential_ones(
            len in 0usize..60_000,
            seed: u64,
            sizes in proptest::collection::vec(1usize..20_000, 1..5),
        ) {
            let data = pseudo_random(len, seed | 1);
            assert_same_as_sequential(&data, &sizes);
        }

        #[test]
        fn stitched_chunks_equal_sequential_ones_on_repetitive_data(
            len in 0usize..60_000,
            period in 1usize..3000,
            sizes in proptest::collection::vec(1usize..20_000, 1..5),
        ) {
            // Runs and short periods are where speculative and true cuts
            // may never meet.
            let unit = pseudo_random(period, period as u64 | 1);
            let data: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
            assert_same_as_sequential(&data, &sizes);
        }
    }

    #[test]
    fn blocks_hold_at_least_two_maximal_chunks() {
        assert_eq!(chunker().block_size(), BLOCK_SIZE);
        let huge = Chunker::new(
            &ChunkerProfile {
                name: "t".into(),
                min: 1 << 20,
                avg: 4 << 20,
                max: 16 << 20,
            },
            1,
        );
        assert_eq!(huge.block_size(), 32 << 20);
    }

    #[test]
    fn a_run_of_one_byte_value_is_stitched_whole() {
        // Every cut falls at the maximum, so a block's speculation (from its
        // first byte) never meets the true cuts unless the block starts on one.
        let data = vec![0u8; 100_000];
        assert_same_as_sequential(&data, &[10_001]);
        assert_same_as_sequential(&data, &[4096 * 3]);
        assert_same_as_sequential(&data, &[1]);
    }

    #[test]
    fn blocks_stop_at_the_end_and_carry_read_errors() {
        let data = pseudo_random(10_000, 3);
        let blocks: Vec<(Bytes, bool)> = Blocks::with_block_size(&data[..], 4096)
            .collect::<io::Result<_>>()
            .unwrap();
        let lens: Vec<(usize, bool)> = blocks.iter().map(|(b, l)| (b.len(), *l)).collect();
        assert_eq!(lens, [(4096, false), (4096, false), (1808, true)]);
        assert_eq!(
            blocks
                .iter()
                .map(|(b, _)| &b[..])
                .collect::<Vec<_>>()
                .concat(),
            data
        );
        let exact: Vec<usize> = Blocks::with_block_size(&data[..8192], 4096)
            .map(|b| b.unwrap().0.len())
            .collect();
        assert_eq!(exact, [4096, 4096, 0]);
        let empty: Vec<(usize, bool)> = Blocks::with_block_size(&[][..], BLOCK_SIZE)
            .map(|b| b.map(|(b, l)| (b.len(), l)).unwrap())
            .collect();
        assert_eq!(empty, [(0, true)]);

        let items: Vec<_> = Blocks::with_block_size(Failing(5000), 4096).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(
            items[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("disk on fire")
        );
    }
}
