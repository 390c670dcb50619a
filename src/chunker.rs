//! Content-defined chunking: FastCDC (2020) with the repository's seed.
//!
//! Sits between a source and the hasher. Chunk boundaries depend only on the
//! content, the profile's sizes and the repository's secret seed, so an
//! insertion moves only the chunks around it and a re-backup of identical
//! input produces identical chunks. Boundaries never affect whether data can
//! be read back: readers follow stored chunk lists and never re-chunk.
//!
//! The cut points are exactly those of `fastcdc::v2020::StreamCDC` with the
//! same parameters and seed (the same `cut` over at most `max` bytes ahead),
//! but the stream is read in large blocks and chunks are handed out as
//! zero-copy [`Bytes`] slices of those blocks. StreamCDC reads at most one
//! chunk's worth per `read` call and copies every chunk and the buffer tail;
//! on a 1 GB dump that was a third of the reader thread's time
//! (docs/PERFORMANCE.md, "Reader").

use std::io::{self, Read};
use std::sync::Mutex;

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};

use crate::config::ChunkerProfile;

mod parallel;

pub use parallel::{Blocks, Speculative, Stitcher};

/// Bytes read per refill: large enough that syscalls and buffer hand-offs
/// are rare, small enough that a few blocks in flight stay cheap.
const BLOCK_SIZE: usize = 4 << 20;

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

    /// A FastCDC cutter over `data` with this chunker's sizes and seed.
    fn cutter<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        FastCDC::with_level_and_seed(
            data,
            self.min,
            self.avg,
            self.max,
            Normalization::Level1,
            self.seed,
        )
    }

    /// Where the chunk starting at `start` of the cutter's `len` bytes ends,
    /// if those bytes decide it: they do when the cut falls before their
    /// end (FastCDC never looks past its cut), when a whole maximal chunk
    /// is in hand, or when `last` says the stream ends with them.
    fn decided_cut(&self, cutter: &FastCDC, start: usize, len: usize, last: bool) -> Option<usize> {
        let (_, end) = cutter.cut(start, len - start);
        (last || end < len || len - start >= self.max).then_some(end)
    }

    /// Splits `reader` into chunks. Each item is one chunk's bytes, or the
    /// read error that ended the stream. An empty reader yields nothing.
    pub fn chunks<R: Read>(&self, reader: R) -> Chunks<R> {
        self.chunks_with_hint(reader, None)
    }

    /// Like [`Chunker::chunks`], for a reader expected to hold about
    /// `size_hint` bytes (a file's size): small inputs get small buffers.
    pub(crate) fn chunks_with_hint<R: Read>(&self, reader: R, size_hint: Option<u64>) -> Chunks<R> {
        let block_size = match size_hint {
            // One byte more than expected, so the end is seen in one read.
            Some(hint) => usize::try_from(hint.saturating_add(1))
                .unwrap_or(BLOCK_SIZE)
                .clamp(4096, BLOCK_SIZE),
            None => BLOCK_SIZE,
        };
        Chunks {
            chunker: self.clone(),
            reader,
            block: Bytes::new(),
            block_size,
            expected: size_hint.and_then(|hint| usize::try_from(hint).ok()),
            refilled: false,
            eof: false,
            failed: false,
        }
    }
}

/// The chunks of one stream; see [`Chunker::chunks`].
pub struct Chunks<R> {
    chunker: Chunker,
    reader: R,
    // Invariant: `block` holds the unconsumed bytes; it is refilled whenever
    // fewer than `max` bytes remain and the reader is not exhausted, so a
    // cut always sees as much lookahead as StreamCDC would.
    block: Bytes,
    block_size: usize,
    /// The size hint, if any: the length the input is expected to have.
    expected: Option<usize>,
    refilled: bool,
    eof: bool,
    failed: bool,
}

impl<R: Read> Chunks<R> {
    /// Moves the unconsumed tail into a fresh block and reads until the block
    /// is full or the reader is exhausted.
    fn refill(&mut self) -> io::Result<()> {
        // The first refill of a sized input reads just past its expected
        // end (a small file costs a small buffer, not a 4 MiB one). Later
        // refills, of a stream or a file that outgrew its hint, use full
        // blocks with room for the tail plus a whole chunk of lookahead.
        let first = self.block.is_empty() && !self.refilled;
        let capacity = if first {
            self.block_size
        } else {
            BLOCK_SIZE.max(self.block.len() + self.chunker.max)
        };
        self.refilled = true;
        // A first read that stops short at exactly the expected size is the
        // end: asking again would only read nothing (one system call more
        // per file). An input that grew meanwhile is cut at the size it was
        // expected to have, which its caller sees when it compares that
        // size with a fresh `stat` (a file changed while being read).
        let expected = self.expected.filter(|&n| first && n < capacity);
        let enough = match expected {
            Some(n) => n,
            None => (self.block.len() + self.chunker.max).min(capacity),
        };
        let mut block = Block::take(capacity);
        let buf = block.as_mut_slice();
        let kept = self.block.len();
        buf[..kept].copy_from_slice(&self.block);
        let (filled, eof) = fill(&mut self.reader, buf, kept, enough)?;
        self.eof = eof || expected == Some(filled);
        self.block = Bytes::from_owner(Block {
            buf: block,
            len: filled,
        });
        Ok(())
    }
}

/// Reads into `buf` from `filled` on until it is full or the reader is
/// exhausted; returns how far it is filled and whether the end was seen.
/// A short read once `enough` bytes are in hand stops early: the producer
/// (a pipe) has nothing more right now, and what is there can be cut
/// rather than wait for it.
fn fill(
    reader: &mut impl Read,
    buf: &mut [u8],
    mut filled: usize,
    enough: usize,
) -> io::Result<(usize, bool)> {
    while filled < buf.len() {
        let want = (buf.len() - filled).min(1 << 20);
        match reader.read(&mut buf[filled..filled + want]) {
            Ok(0) => return Ok((filled, true)),
            Ok(n) => {
                filled += n;
                if n < want && filled >= enough {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}

/// Full-size blocks whose chunks are all gone, kept for the next refill:
/// a stream reads hundreds of 4 MiB blocks, and a fresh one each time cost
/// the reader thread more in page faults and zeroing than chunking did.
static SPARE_BLOCKS: Mutex<Vec<Mapped>> = Mutex::new(Vec::new());

/// Spare blocks kept at most (32 MiB): about as many as a stream backup
/// has in flight on a few cores (queued for chunking, being stitched, and
/// held by chunks waiting to be sealed), so that its reader rarely maps a
/// fresh one.
const SPARE_MAX: usize = 8;

/// A read block that chunks share (as `Bytes` slices of it); once the last
/// is dropped, a full-size block goes back to [`SPARE_BLOCKS`].
struct Block {
    buf: BlockBuf,
    len: usize,
}

/// A full-size block is mapped from the kernel, so that keeping it for
/// reuse pins nothing inside malloc's arenas (kept there, spare blocks
/// interleaved with short-lived allocations and a 4 GiB stream grew to
/// 169 MiB); a smaller one (a small file's) comes from the heap.
enum BlockBuf {
    Heap(Vec<u8>),
    Mapped(Mapped),
}

impl BlockBuf {
    fn as_slice(&self) -> &[u8] {
        match self {
            BlockBuf::Heap(v) => v,
            BlockBuf::Mapped(m) => m.as_slice(),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            BlockBuf::Heap(v) => v,
            BlockBuf::Mapped(m) => m.as_mut_slice(),
        }
    }
}

impl Block {
    /// An initialised buffer of `capacity` bytes: a spare one when it is
    /// the full block size, else a fresh one (zeroed pages, touched only as
    /// far as reads fill them).
    fn take(capacity: usize) -> BlockBuf {
        if capacity == BLOCK_SIZE {
            if let Some(buf) = SPARE_BLOCKS.lock().expect("spare blocks lock").pop() {
                return BlockBuf::Mapped(buf);
            }
            if let Some(buf) = Mapped::new(BLOCK_SIZE) {
                return BlockBuf::Mapped(buf);
            }
        }
        BlockBuf::Heap(vec![0; capacity])
    }
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let BlockBuf::Mapped(buf) = std::mem::replace(&mut self.buf, BlockBuf::Heap(Vec::new()))
        {
            let mut spare = SPARE_BLOCKS.lock().expect("spare blocks lock");
            if spare.len() < SPARE_MAX {
                spare.push(buf);
            }
        }
    }
}

/// Anonymous private memory from `mmap`, zeroed by the kernel.
struct Mapped {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone, like a `Vec<u8>`.
unsafe impl Send for Mapped {}
// SAFETY: shared access is read-only (`as_slice`), like a `Vec<u8>`.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// `len` bytes, or `None` if the kernel refuses (the heap is used then).
    fn new(len: usize) -> Option<Mapped> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        std::ptr::NonNull::new(ptr.cast()).map(|ptr| Mapped { ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes (zero-filled by the
        // kernel, so initialised) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference to the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which no slice
        // outlives (they borrow `self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.failed {
            return None;
        }
        if self.block.len() < self.chunker.max
            && !self.eof
            && let Err(e) = self.refill()
        {
            self.failed = true;
            return Some(Err(e));
        }
        if self.block.is_empty() {
            return None;
        }
        let (_, end) = self.chunker.cutter(&self.block).cut(0, self.block.len());
        Some(Ok(self.block.split_to(end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::StreamCDC;
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

    pub(super) fn pseudo_random(n: usize, mut state: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn split(c: &Chunker, data: &[u8]) -> Vec<Bytes> {
        c.chunks(data).collect::<io::Result<_>>().unwrap()
    }

    /// Reads in small, uneven pieces, as a pipe does.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1 % 7919 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
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
        fn boundaries_resynchronise_shortly_after_an_insertion(at in 0usize..400_000, insert in proptest::collection::vec(any::<u8>(), 1..100)) {
            let data = pseudo_random(512 << 10, 99);
            let mut changed = data.clone();
            changed.splice(at..at, insert.iter().copied());
            let c = chunker(5);
            let cuts = |d: &[u8]| -> Vec<usize> {
                split(&c, d).iter().scan(0, |end, chunk| { *end += chunk.len(); Some(*end) }).collect()
            };
            // Past a 64 KiB window (16 maximal chunks) every cut is back in
            // step with the original's, shifted by the insertion.
            let window = at + 64 * 1024;
            let before: Vec<usize> = cuts(&data).into_iter().filter(|p| *p >= window).collect();
            let after: Vec<usize> = cuts(&changed)
                .into_iter()
                .filter(|p| *p >= window + insert.len())
                .map(|p| p - insert.len())
                .collect();
            prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn cut_points_equal_fastcdc_stream_cdc_for_any_read_pattern() {
        // Larger than one block, so refills with a carried-over tail happen.
        let data = pseudo_random(9 << 20, 3);
        let profile = ChunkerProfile {
            name: "t".into(),
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let seed = 0x1234_5678_9abc_def0;
        let reference: Vec<usize> = StreamCDC::with_level_and_seed(
            &data[..],
            4096,
            16384,
            65536,
            Normalization::Level1,
            seed,
        )
        .map(|c| c.unwrap().length)
        .collect();
        let c = Chunker::new(&profile, seed);
        let ours: Vec<usize> = c.chunks(&data[..]).map(|c| c.unwrap().len()).collect();
        assert_eq!(ours, reference);
        let trickled: Vec<usize> = c
            .chunks(Trickle(&data, 0))
            .map(|c| c.unwrap().len())
            .collect();
        assert_eq!(trickled, reference);
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
        let a: Vec<usize> = split(&chunker(1), &data).iter().map(Bytes::len).collect();
        let b: Vec<usize> = split(&chunker(2), &data).iter().map(Bytes::len).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_input_yields_no_chunks() {
        assert!(split(&chunker(0), &[]).is_empty());
    }

    /// Counts the reads made of it.
    struct Counted<R>(R, usize);

    impl<R: Read> Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            self.0.read(buf)
        }
    }

    #[test]
    fn an_input_of_its_expected_size_is_read_without_a_read_past_its_end() {
        let c = chunker(3);
        for len in [0, 1, 4095, 4096, 20_000, 70_000] {
            let data = pseudo_random(len, 11);
            let mut reader = Counted(&data[..], 0);
            let chunks = c.chunks_with_hint(&mut reader, Some(len as u64));
            let got: Vec<Bytes> = chunks.collect::<io::Result<_>>().unwrap();
            assert_eq!(got.concat(), data);
            assert_eq!(reader.1, 1, "{len} bytes");
        }
        // In pieces, as a network file system may return them: still all of
        // it, and no read past the end.
        let data = pseudo_random(30_000, 12);
        let mut reader = Counted(Trickle(&data, 0), 0);
        let got: Vec<Bytes> = c
            .chunks_with_hint(&mut reader, Some(30_000))
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(got.concat(), data);
    }

    #[test]
    fn an_input_longer_or_shorter_than_expected_is_read_to_its_end() {
        let c = chunker(3);
        let data = pseudo_random(50_000, 13);
        for expected in [0, 1, 100, 4095, 4096, 30_000, 49_999, 50_001, 1 << 20] {
            for trickle in [false, true] {
                let chunks = if trickle {
                    c.chunks_with_hint(Box::new(Trickle(&data, 0)) as Box<dyn Read>, Some(expected))
                } else {
                    c.chunks_with_hint(Box::new(&data[..]) as Box<dyn Read>, Some(expected))
                };
                let got: Vec<Bytes> = chunks.collect::<io::Result<_>>().unwrap();
                // A trickled input that happens to pause exactly at the
                // expected size ends there; its caller's second look at
                // the file's size tells that it changed.
                if !(trickle && got.concat().len() == expected as usize) {
                    assert_eq!(got.concat(), data, "expected {expected}, trickle {trickle}");
                }
            }
        }
    }

    /// Yields `.0` bytes, then fails.
    pub(super) struct Failing(pub(super) usize);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = self.0.min(buf.len());
            self.0 -= n;
            buf[..n].fill(7);
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_ends_the_stream_with_that_error() {
        let items: Vec<_> = chunker(0).chunks(Failing(10_000)).collect();
        assert!(
            items
                .last()
                .unwrap()
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("disk on fire")
        );
    }
}
