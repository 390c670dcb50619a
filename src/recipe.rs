//! Compressed input stored by its contents. A gzip stream (`pg_dump |
//! gzip`, a directory of dated `.sql.gz` files) is unpacked before
//! chunking, so two days of dumps share their unchanged rows, and a small
//! recipe rebuilds the exact compressed bytes on restore.
//!
//! DEFLATE is not one function of its input: the bytes depend on the
//! compressor and its settings. The `preflate-rs` analysis predicts them
//! from the contents and records only where the prediction goes wrong
//! (for `gzip -6` output of pg_dump, measured at 0.2% to 5% of the
//! compressed size, depending on the data). Every segment's prediction is replayed at backup time and must
//! reproduce the compressed bytes exactly before its contents are used;
//! whatever cannot be reproduced (another compressor, a corrupt stream, a
//! stream too large for the analysis) is stored as it came, from that
//! point on, so the transform can cost deduplication but never bytes.
//!
//! The recipe (`docs/FORMAT.md`, "Recipes") is a list of operations that
//! rebuild the original from the stored content in order:
//!
//! - `Literal(bytes)`: bytes kept in the recipe (gzip headers, trailers);
//! - `Copy(n)`: the next `n` content bytes as they are;
//! - `Deflate(n, corrections)`: the next `n` content bytes compressed
//!   again as one analysis segment. Consecutive `Deflate` operations
//!   continue one DEFLATE stream; any other operation ends it.
//!
//! The recipe also holds the original's length and BLAKE3 hash, which a
//! rebuild checks at its end.

use std::io::{self, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// Set while the DEFLATE analysis runs under [`contained`].
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (the `preflate-rs` analysis or replay), turning a panic into an
/// `Err`: the caller then stores the input as it came, or fails the
/// rebuild, so such a panic loses nothing and is not a bug of larder's to
/// report.
fn contained<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    CONTAINED.with(|c| c.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(false));
    outcome
}

/// Whether the current thread is inside [`contained`], where a panic is
/// handled (a panic hook stays quiet about it).
pub fn panic_is_contained() -> bool {
    CONTAINED.with(std::cell::Cell::get)
}

use bytes::Bytes;
use minicbor::bytes::{ByteArray, ByteVec};
use preflate_rs::{ExitCode, PreflateConfig, PreflateStreamProcessor, RecreateStreamProcessor};

/// The first bytes of a gzip member using DEFLATE (RFC 1952).
pub const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 8];

/// The recipe format name for gzip input.
pub const GZIP: &str = "gzip";

/// The recipe format name for custom-format PostgreSQL archives whose data
/// blocks are zlib streams (`pg_dump -Fc`).
pub const PG_CUSTOM: &str = "pg_dump-custom";

/// The recipe format name for Neo4j dumps (`DZV1` and a zstd frame).
pub const NEO4J: &str = "neo4j-dump";

mod pg;
mod zstd;
pub use pg::unpack_pg_custom;
pub(crate) use zstd::is_neo4j_zstd;
pub use zstd::unpack_neo4j;

/// Input read at a time.
const STEP: usize = 256 << 10;

/// Segment sizes tried in turn on one DEFLATE stream: compressed bytes
/// per analysis step, and most contents per segment.
const ATTEMPTS: [(usize, u64); 3] = [
    (1 << 20, MAX_SEGMENT),
    (3 << 20, MAX_SEGMENT),
    (256 << 10, 24 << 20),
];

/// Most compressed bytes of one member kept for a second attempt.
const MAX_RETAINED: usize = 64 << 20;

/// How one attempt at a DEFLATE stream ended.
enum Attempt {
    /// The stream ended; its contents' CRC-32 and length.
    Done((u32, u64)),
    /// The analysis lost track after consuming this much of the input.
    Lost { consumed: usize, why: Integrity },
    /// Nothing more can be unpacked, whatever the segment sizes.
    Final(Integrity),
}

/// Largest piece of contents handed on at once.
const EMIT_PIECE: usize = 1 << 20;

/// Compressed bytes gathered before the first analysis of a stream, which
/// estimates the compressor's settings and needs whole blocks to do it.
const FIRST_STEP: usize = 512 << 10;

/// Most contents one segment may unpack to (the analysis refuses more, and
/// the stream is stored as it came from there); a rebuild refuses segments
/// longer than twice this.
pub const MAX_SEGMENT: u64 = 64 << 20;

/// Most contents unpacked from one gzip member. The analysis counts
/// positions in 32 bits; past this, the rest of the member is stored as it
/// came.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Largest recipe a rebuild reads.
pub const MAX_RECIPE_SIZE: u64 = 256 << 20;

/// Most correction bytes one recipe gathers; past this, the rest of the
/// input is stored as it came, so a recipe always stays readable.
const CORRECTIONS_BUDGET: u64 = MAX_RECIPE_SIZE / 2;

/// Longest gzip header accepted (file name and comment included).
const MAX_HEADER: usize = 64 << 10;

/// Compressed input gathered without a block completing before the
/// analysis gives up on the stream.
const MAX_PENDING: usize = 16 << 20;

/// How to rebuild a file from its stored content.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct Recipe {
    /// What the original was (`gzip`).
    #[n(0)]
    pub format: String,
    /// The original's length.
    #[n(1)]
    pub size: u64,
    /// BLAKE3 (unkeyed) of the original.
    #[n(2)]
    pub hash: ByteArray<32>,
    /// The operations, in order.
    #[n(3)]
    pub ops: Vec<Op>,
}

/// One step of a rebuild.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
pub enum Op {
    /// Bytes held in the recipe.
    #[n(0)]
    Literal(#[n(0)] ByteVec),
    /// The next `n` content bytes, as they are.
    #[n(1)]
    Copy(#[n(0)] u64),
    /// The next `n` content bytes, compressed again with these corrections.
    #[n(2)]
    Deflate(#[n(0)] u64, #[n(1)] ByteVec),
    /// The bytes the following operations produce are cut into chunks of
    /// these lengths, each preceded by its length as `pg_dump` writes an
    /// integer (a zero sign byte, then `int_size` bytes, least significant
    /// first). The chunks end when their lengths are used up.
    #[n(3)]
    Chunked {
        /// Bytes of each length after its sign byte.
        #[n(0)]
        int_size: u8,
        /// The chunk lengths, run-length encoded.
        #[n(1)]
        runs: Vec<Run>,
    },
    /// The next `len` content bytes compressed as one zstd frame by this
    /// build's zstd at `level`, with a content checksum when `checksum`,
    /// and the content size in the frame header when `pledged`.
    #[n(4)]
    Zstd {
        /// Compression level.
        #[n(0)]
        level: i32,
        /// Content checksum flag.
        #[n(1)]
        checksum: bool,
        /// The content size is stated in the frame header.
        #[n(2)]
        pledged: bool,
        /// Content bytes in the frame.
        #[n(3)]
        len: u64,
        /// The zstd library that reproduced the frame (`ZSTD_versionNumber`:
        /// 10507 is 1.5.7), named when a rebuild by another one differs.
        #[n(4)]
        zstd: u32,
    },
}

/// `ZSTD_versionNumber` as `major.minor.patch`.
fn zstd_version_text(n: u32) -> String {
    format!("{}.{}.{}", n / 10000, n / 100 % 100, n % 100)
}

/// `count` chunks of `len` bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(array)]
pub struct Run {
    /// Length of each chunk.
    #[n(0)]
    pub len: u64,
    /// Chunks of this length in a row.
    #[n(1)]
    pub count: u64,
}

impl Recipe {
    /// The recipe's bytes as stored.
    pub fn encode(&self) -> Vec<u8> {
        minicbor::to_vec(self).expect("encoding to a Vec cannot fail")
    }

    /// Parses a stored recipe.
    pub fn decode(bytes: &[u8]) -> Result<Recipe, String> {
        minicbor::decode(bytes).map_err(|e| format!("recipe does not parse: {e}"))
    }

    /// Content bytes the operations draw on.
    pub fn content_len(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Literal(_) | Op::Chunked { .. } => 0,
                Op::Copy(n) | Op::Deflate(n, _) | Op::Zstd { len: n, .. } => *n,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Whether any operation unpacked anything (a recipe that only copies
    /// is not worth storing).
    pub fn unpacks(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Op::Deflate(..) | Op::Zstd { .. }))
    }
}

/// Whether the gzip members were whole (the `gzip -t` verdict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// Every member ended with its trailer, and the CRC-32 and length in it
    /// match the contents.
    Whole {
        /// Members found.
        members: u64,
    },
    /// A member is cut short or its trailer does not match.
    Broken(String),
    /// Part of the stream could not be analysed, so it was not unpacked and
    /// not checked.
    Unknown(String),
}

/// What unpacking a stream found.
#[derive(Debug)]
pub struct Unpacked {
    /// How to rebuild the original.
    pub recipe: Recipe,
    /// Whether the compressed stream was whole.
    pub integrity: Integrity,
    /// Original bytes read.
    pub read: u64,
    /// Input bytes passed through as they came (not unpacked).
    pub passed_through: u64,
}

/// Unpacks a gzip stream from `input`, handing the content to `emit` in
/// order (it returns `false` to stop early, which ends the unpacking with
/// an error) and every byte read to `tee`. Bytes that are not gzip, or that
/// the analysis cannot reproduce, pass through as they are.
pub fn unpack_gzip(
    input: &mut dyn Read,
    emit: &mut dyn FnMut(Bytes) -> bool,
    tee: &mut dyn FnMut(&[u8]),
) -> io::Result<Unpacked> {
    unpack_gzip_with(input, emit, tee, Replays::default())
}

fn unpack_gzip_with(
    input: &mut dyn Read,
    emit: &mut dyn FnMut(Bytes) -> bool,
    tee: &mut dyn FnMut(&[u8]),
    replays: Replays,
) -> io::Result<Unpacked> {
    let mut u = Unpacker {
        input,
        emit,
        tee,
        buf: Vec::new(),
        eof: false,
        hasher: Some(blake3::Hasher::new()),
        read: 0,
        ops: Vec::new(),
        corrections: 0,
        replays,
    };
    let integrity = u.run()?;
    let passed_through = copied(&u.ops);
    let hasher = u.hasher.take().expect("the outer unpacker hashes");
    Ok(Unpacked {
        recipe: Recipe {
            format: GZIP.into(),
            size: u.read,
            hash: ByteArray::from(*hasher.finalize().as_bytes()),
            ops: u.ops,
        },
        integrity,
        read: u.read,
        passed_through,
    })
}

/// The error that ends an unpacking whose reader stopped listening.
fn stopped() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the reader of the contents stopped",
    )
}

/// Hands copies of `bytes` on in pieces of at most [`EMIT_PIECE`], so the
/// queue to the chunker holds little.
fn hand_on(emit: &mut dyn FnMut(Bytes) -> bool, bytes: &[u8]) -> io::Result<()> {
    for piece in bytes.chunks(EMIT_PIECE) {
        if !emit(Bytes::copy_from_slice(piece)) {
            return Err(stopped());
        }
    }
    Ok(())
}

/// Content bytes the operations pass through as they came.
fn copied(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|op| match op {
            Op::Copy(n) => *n,
            _ => 0,
        })
        .sum()
}

struct Unpacker<'a> {
    input: &'a mut dyn Read,
    emit: &'a mut dyn FnMut(Bytes) -> bool,
    tee: &'a mut dyn FnMut(&[u8]),
    /// Input read and not yet accounted for by an operation.
    buf: Vec<u8>,
    eof: bool,
    /// The original's hash, when the input is the original.
    hasher: Option<blake3::Hasher>,
    read: u64,
    ops: Vec<Op>,
    /// Correction bytes gathered so far (for one recipe, across streams).
    corrections: u64,
    replays: Replays,
}

/// The checksum a compressed stream's trailer holds.
#[derive(Clone, Copy)]
enum Sum {
    /// gzip: CRC-32, stored least significant byte first.
    Crc32,
    /// zlib: Adler-32, stored most significant byte first.
    Adler32,
}

enum Summing {
    Crc32(crc32fast::Hasher),
    Adler32(adler2::Adler32),
}

impl Summing {
    fn new(sum: Sum) -> Summing {
        match sum {
            Sum::Crc32 => Summing::Crc32(crc32fast::Hasher::new()),
            Sum::Adler32 => Summing::Adler32(adler2::Adler32::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Summing::Crc32(h) => h.update(bytes),
            Summing::Adler32(h) => h.write_slice(bytes),
        }
    }

    fn finish(self) -> u32 {
        match self {
            Summing::Crc32(h) => h.finalize(),
            Summing::Adler32(h) => h.checksum(),
        }
    }
}

/// Most contents a segment may have to be replayed beside the analysis of
/// the next one. A segment replayed beside is copied and held until its
/// replay is done, so two segments' worth is alive at once; a larger one
/// (highly compressible input: pgbench's blank padding gzips 35 to 1) is
/// replayed in place, before the analysis goes on, as it always was.
const REPLAY_BESIDE: usize = 16 << 20;

/// Where and how segments are replayed.
#[derive(Clone, Copy)]
struct Replays {
    /// Most contents of a segment replayed beside the analysis.
    beside: usize,
    /// A content byte whose segment's replay fails, as if its corrections
    /// did not reproduce it.
    #[cfg(test)]
    fail_at: Option<u64>,
}

impl Default for Replays {
    fn default() -> Replays {
        Replays {
            beside: REPLAY_BESIDE,
            #[cfg(test)]
            fail_at: None,
        }
    }
}

/// Replays a stream's analysed segments in order, as a rebuild will,
/// proving each segment's corrections before its contents are used.
struct Replay {
    processor: RecreateStreamProcessor,
    #[cfg(test)]
    fail_at: Option<u64>,
}

impl Replay {
    fn new(_replays: Replays) -> Replay {
        Replay {
            processor: RecreateStreamProcessor::new(),
            #[cfg(test)]
            fail_at: _replays.fail_at,
        }
    }

    /// Whether `text`, the contents from byte `start` on, with its
    /// `corrections` compresses again to exactly `compressed`. After a
    /// failure the replay is no longer usable.
    fn check(
        &mut self,
        start: u64,
        text: &[u8],
        corrections: &[u8],
        compressed: &[u8],
    ) -> Result<(), String> {
        #[cfg(test)]
        if self
            .fail_at
            .is_some_and(|at| (start..start + text.len() as u64).contains(&at))
        {
            return Err("a replay failure injected by a test".into());
        }
        #[cfg(not(test))]
        let _ = start;
        let processor = &mut self.processor;
        let outcome = contained(|| processor.recompress(&mut io::Cursor::new(text), corrections));
        match outcome {
            Ok(Ok((again, _))) if again == compressed => Ok(()),
            Ok(Ok(_)) => Err("its corrections do not reproduce the compressed bytes".into()),
            Ok(Err(e)) => Err(format!(
                "{:?}: {}",
                e.exit_code(),
                e.message().lines().next().unwrap_or_default()
            )),
            Err(_) => Err("its replay failed".into()),
        }
    }
}

/// An analysed segment on its way through a replay on another thread.
struct Segment {
    /// Where its contents start within the stream's contents.
    start: u64,
    text: Vec<u8>,
    corrections: Vec<u8>,
    /// The input it was analysed from, which its replay must reproduce.
    compressed: Vec<u8>,
}

/// A segment back from its replay, with the replay and what it found.
type Replayed = (Replay, Segment, Result<(), String>);

/// The thread replaying segments beside the analysis, one at a time. The
/// replay's state travels with each segment, so that the next may as well
/// be replayed in place.
struct Beside<'scope> {
    segments: std::sync::mpsc::SyncSender<(Replay, Segment)>,
    replayed: std::sync::mpsc::Receiver<Replayed>,
    _thread: std::thread::ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Beside<'scope> {
    fn spawn(scope: &'scope std::thread::Scope<'scope, '_>) -> Option<Beside<'scope>> {
        let (segments, queue) = std::sync::mpsc::sync_channel::<(Replay, Segment)>(1);
        let (done, replayed) = std::sync::mpsc::sync_channel::<Replayed>(1);
        let thread = std::thread::Builder::new()
            .name("larder-replay".into())
            .spawn_scoped(scope, move || {
                for (mut replay, segment) in queue {
                    let found = replay.check(
                        segment.start,
                        &segment.text,
                        &segment.corrections,
                        &segment.compressed,
                    );
                    if done.send((replay, segment, found)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Beside {
            segments,
            replayed,
            _thread: thread,
        })
    }
}

/// One attempt at a DEFLATE stream: what its segments' replays change.
struct Once<'a, 'scope> {
    what: &'a str,
    /// Contents handed on so far, by this attempt or an earlier one.
    emitted: &'a mut u64,
    /// The member's input from its first compressed byte, while it is kept.
    retained: &'a mut Option<Vec<u8>>,
    /// Input of this attempt's settled segments.
    consumed: usize,
    /// The replay, unless it is away with a segment.
    replay: Option<Replay>,
    /// The thread replaying beside the analysis, once there is one (`None`
    /// inside when it could not be started).
    beside: Option<Option<Beside<'scope>>>,
}

impl<'scope> Once<'_, 'scope> {
    /// Sends `segment` to be replayed beside the analysis; gives it back
    /// when no thread can be had.
    fn send(
        &mut self,
        segment: Segment,
        scope: &'scope std::thread::Scope<'scope, '_>,
    ) -> Result<(), Segment> {
        let Some(beside) = self.beside.get_or_insert_with(|| Beside::spawn(scope)) else {
            return Err(segment);
        };
        let replay = self.replay.take().expect("one segment away at a time");
        beside
            .segments
            .send((replay, segment))
            .expect("the replay thread takes segments until its queue closes");
        Ok(())
    }

    /// The attempt lost, for `why`, after what its settled segments consumed.
    fn lost(&self, why: String) -> Attempt {
        Attempt::Lost {
            consumed: self.consumed,
            why: Integrity::Unknown(why),
        }
    }

    /// The segment away being replayed, and what its replay found, once it
    /// is done; `None` when none is away.
    fn collect(&mut self) -> Option<(Segment, Result<(), String>)> {
        if self.replay.is_some() {
            return None;
        }
        let Some(Some(beside)) = &self.beside else {
            unreachable!("a segment is away only with a thread to replay it");
        };
        let (replay, segment, found) = beside
            .replayed
            .recv()
            .expect("the replay thread answers every segment it takes");
        self.replay = Some(replay);
        Some((segment, found))
    }
}

impl Unpacker<'_> {
    fn run(&mut self) -> io::Result<Integrity> {
        let mut members = 0u64;
        loop {
            self.fill(GZIP_MAGIC.len())?;
            if self.buf.is_empty() && self.eof {
                return Ok(Integrity::Whole { members });
            }
            if !self.buf.starts_with(&GZIP_MAGIC) {
                // Trailing bytes after the last member (gzip itself warns
                // and ignores them; they are kept, as everything is).
                self.copy_rest()?;
                return Ok(if members == 0 {
                    Integrity::Unknown("the stream is not gzip".into())
                } else {
                    Integrity::Broken(format!(
                        "{} bytes that are not gzip follow member {members}",
                        self.read_after_members()
                    ))
                });
            }
            let header = loop {
                match header_len(&self.buf) {
                    Ok(Some(n)) => break n,
                    Ok(None) if !self.eof && self.buf.len() < MAX_HEADER => {
                        self.fill(self.buf.len() + 1)?
                    }
                    Ok(None) => {
                        self.copy_rest()?;
                        return Ok(Integrity::Broken(format!(
                            "member {} ends inside its header",
                            members + 1
                        )));
                    }
                    Err(reason) => {
                        self.copy_rest()?;
                        return Ok(Integrity::Unknown(format!(
                            "member {}: {reason}",
                            members + 1
                        )));
                    }
                }
            };
            let bytes = self.buf.drain(..header).collect::<Vec<u8>>();
            self.ops.push(Op::Literal(ByteVec::from(bytes)));
            members += 1;
            let (crc, len) = match self.deflate(&format!("member {members}"), Sum::Crc32)? {
                Ok(sums) => sums,
                Err(integrity) => {
                    self.copy_rest()?;
                    return Ok(integrity);
                }
            };
            self.fill(8)?;
            if self.buf.len() < 8 {
                self.copy_rest()?;
                return Ok(Integrity::Broken(format!(
                    "member {members} ends before its trailer"
                )));
            }
            let trailer: Vec<u8> = self.buf.drain(..8).collect();
            let want_crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
            let want_len = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
            self.ops.push(Op::Literal(ByteVec::from(trailer)));
            if want_crc != crc || want_len != len as u32 {
                self.copy_rest()?;
                return Ok(Integrity::Broken(format!(
                    "member {members}: the trailer's CRC-32 or length does not match the contents"
                )));
            }
        }
    }

    /// Unpacks one zlib stream (RFC 1950) making up the whole input:
    /// header, DEFLATE data, Adler-32. What cannot be unpacked, and
    /// anything after the stream, passes through.
    fn zlib(&mut self, what: &str) -> io::Result<Integrity> {
        self.fill(2)?;
        if self.buf.is_empty() && self.eof {
            return Ok(Integrity::Whole { members: 0 });
        }
        let header_ok = self.buf.len() >= 2 && {
            let (cmf, flg) = (self.buf[0], self.buf[1]);
            // DEFLATE, a window it defines, no preset dictionary.
            cmf & 0x0f == 8
                && cmf >> 4 <= 7
                && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
                && flg & 0x20 == 0
        };
        if !header_ok {
            self.copy_rest()?;
            return Ok(Integrity::Unknown(format!("{what} is not a zlib stream")));
        }
        let header: Vec<u8> = self.buf.drain(..2).collect();
        self.ops.push(Op::Literal(ByteVec::from(header)));
        let (sum, _) = match self.deflate(what, Sum::Adler32)? {
            Ok(sums) => sums,
            Err(integrity) => {
                self.copy_rest()?;
                return Ok(integrity);
            }
        };
        self.fill(4)?;
        if self.buf.len() < 4 {
            self.copy_rest()?;
            return Ok(Integrity::Broken(format!(
                "{what} ends before its checksum"
            )));
        }
        let trailer: Vec<u8> = self.buf.drain(..4).collect();
        let want = u32::from_be_bytes(trailer[..].try_into().expect("4 bytes"));
        self.ops.push(Op::Literal(ByteVec::from(trailer)));
        self.copy_rest()?;
        Ok(if want == sum {
            Integrity::Whole { members: 1 }
        } else {
            Integrity::Broken(format!(
                "{what}: the Adler-32 checksum does not match the contents"
            ))
        })
    }

    /// Unpacks one DEFLATE stream; returns the contents' CRC-32 and length,
    /// or why the rest of the input is stored as it came.
    ///
    /// The analysis sometimes loses track of the compressor at a segment
    /// boundary. The member's compressed bytes are kept (up to
    /// [`MAX_RETAINED`]), and on such a failure the analysis starts over
    /// with other segment sizes, handing on only contents not handed on
    /// before (unpacking is deterministic, so they are the same bytes).
    /// When every attempt fails, the one that got furthest stands, and the
    /// input from where it stopped is stored as it came.
    fn deflate(&mut self, what: &str, sum: Sum) -> io::Result<Result<(u32, u64), Integrity>> {
        let ops_start = self.ops.len();
        let mut emitted = 0u64;
        let mut retained = Some(Vec::new());
        // The furthest failed attempt: its operations, and how much of the
        // member's input it had consumed.
        let mut best: Option<(Vec<Op>, usize, Integrity)> = None;
        for (attempt, &(step, limit)) in ATTEMPTS.iter().enumerate() {
            let outcome = self.deflate_once(what, sum, step, limit, &mut emitted, &mut retained)?;
            let (consumed, why) = match outcome {
                Attempt::Done(sums) => return Ok(Ok(sums)),
                Attempt::Final(integrity) => return Ok(Err(integrity)),
                Attempt::Lost { consumed, why } => (consumed, why),
            };
            let ops = self.ops.split_off(ops_start);
            if best.as_ref().is_none_or(|(_, c, _)| consumed > *c) {
                best = Some((ops, consumed, why));
            }
            match &mut retained {
                // Start over from the member's first compressed byte.
                Some(input) if attempt + 1 < ATTEMPTS.len() => {
                    input.append(&mut self.buf);
                    self.buf = std::mem::take(input);
                }
                _ => break,
            }
        }
        let (ops, consumed, why) = best.expect("at least one attempt ran");
        self.ops.extend(ops);
        if let Some(mut input) = retained {
            // The input the best attempt had not consumed goes back first.
            input.append(&mut self.buf);
            input.drain(..consumed);
            self.buf = input;
        }
        Ok(Err(why))
    }

    /// One attempt at unpacking a DEFLATE stream from the member's start
    /// (or, when the input was not retained, from where `buf` stands).
    ///
    /// Each segment's analysis is replayed (see [`Replay`]) before its
    /// contents are used: up to [`REPLAY_BESIDE`] on a thread of its own
    /// while the next segment is analysed, which puts the two halves of the
    /// work on two cores. A segment counts, and its contents are handed on,
    /// only once its replay has reproduced its compressed bytes; where a
    /// replay fails, the attempt is lost at that segment's first byte, as
    /// where the analysis fails.
    fn deflate_once(
        &mut self,
        what: &str,
        sum: Sum,
        step: usize,
        limit: u64,
        emitted: &mut u64,
        retained: &mut Option<Vec<u8>>,
    ) -> io::Result<Attempt> {
        std::thread::scope(|scope| {
            let mut once = Once {
                what,
                emitted,
                retained,
                consumed: 0,
                replay: Some(Replay::new(self.replays)),
                beside: None,
            };
            // Dropping `once` on the way out closes the replay thread's
            // queue; the scope waits for the thread.
            self.analyse(&mut once, scope, sum, step, limit)
        })
    }

    /// The analysis side of [`Unpacker::deflate_once`].
    fn analyse<'scope>(
        &mut self,
        once: &mut Once<'_, 'scope>,
        scope: &'scope std::thread::Scope<'scope, '_>,
        sum: Sum,
        step: usize,
        limit: u64,
    ) -> io::Result<Attempt> {
        let what = once.what;
        let config = PreflateConfig {
            max_chain_length: 4096,
            plain_text_limit: limit as usize,
            // Each segment is replayed, and compared with the input, by a
            // `Replay` of larder's before its contents are used.
            verify_compression: false,
        };
        let mut processor = PreflateStreamProcessor::new(&config);
        let mut crc = Summing::new(sum);
        let mut len = 0u64;
        let mut want = step.max(FIRST_STEP);
        loop {
            self.fill(want)?;
            let outcome = contained(|| processor.decompress(&self.buf));
            // The segment before this one has been replaying meanwhile.
            if let Err(why) = self.settle(once)? {
                return Ok(once.lost(why));
            }
            let result = match outcome {
                Ok(Ok(result)) => Some(result),
                // Not one whole block in the buffer: the parser has rewound,
                // and tries again with more.
                Ok(Err(e)) if e.exit_code() == ExitCode::ShortRead => None,
                Ok(Err(e)) => {
                    let why = format!(
                        "{what} could not be unpacked at content byte {len}: {:?}: {}",
                        e.exit_code(),
                        e.message().lines().next().unwrap_or_default()
                    );
                    return Ok(once.lost(why));
                }
                Err(_) => {
                    let why = format!("{what} could not be unpacked at content byte {len}");
                    return Ok(once.lost(why));
                }
            };
            let text = processor.plain_text().text();
            let result = match result {
                Some(result) if result.compressed_size > 0 || !text.is_empty() => result,
                _ => {
                    if self.eof {
                        return Ok(Attempt::Final(Integrity::Broken(format!(
                            "{what} is cut short: its DEFLATE stream ends after \
                             {len} bytes of contents, before its last block"
                        ))));
                    }
                    if self.buf.len() >= MAX_PENDING {
                        let why = format!("{what} has a block longer than {MAX_PENDING} bytes");
                        return Ok(once.lost(why));
                    }
                    want = self.buf.len() + step;
                    continue;
                }
            };
            if self.corrections + result.corrections.len() as u64 > CORRECTIONS_BUDGET {
                return Ok(Attempt::Final(Integrity::Unknown(format!(
                    "{what}: the recipe would outgrow {CORRECTIONS_BUDGET} bytes of \
                     corrections; the rest is stored as it came"
                ))));
            }
            self.corrections += result.corrections.len() as u64;
            crc.update(text);
            let start = len;
            len += text.len() as u64;
            let done = processor.is_done();
            let last = done || len >= MAX_UNPACKED;
            let mut corrections = Some(result.corrections);
            let mut here = last || text.len() > self.replays.beside;
            if !here {
                let away = Segment {
                    start,
                    text: text.to_vec(),
                    corrections: corrections.take().expect("not sent yet"),
                    compressed: self.buf.drain(..result.compressed_size).collect(),
                };
                if let Err(back) = once.send(away, scope) {
                    self.put_back(back.compressed);
                    corrections = Some(back.corrections);
                    here = true;
                }
            }
            // A segment not sent away is replayed here and now.
            if here {
                let corrections = corrections.expect("not sent away");
                let replay = once.replay.as_mut().expect("nothing is away");
                let compressed = &self.buf[..result.compressed_size];
                if let Err(detail) = replay.check(start, text, &corrections, compressed) {
                    let why =
                        format!("{what} could not be unpacked at content byte {start}: {detail}");
                    return Ok(once.lost(why));
                }
                let compressed: Vec<u8> = self.buf.drain(..result.compressed_size).collect();
                self.record(once, start, text, corrections, compressed)?;
            }
            processor.shrink_to_dictionary();
            if done {
                return Ok(Attempt::Done((crc.finish(), len)));
            }
            if last {
                return Ok(Attempt::Final(Integrity::Unknown(format!(
                    "{what} unpacks to more than {MAX_UNPACKED} bytes; the rest is \
                     stored as it came"
                ))));
            }
            want = step;
        }
    }

    /// Waits for the segment away being replayed, if any, and records it
    /// when its replay reproduced its compressed bytes. Otherwise its
    /// compressed bytes go back in front of `buf`, and why is returned.
    fn settle(&mut self, once: &mut Once<'_, '_>) -> io::Result<Result<(), String>> {
        let Some((segment, found)) = once.collect() else {
            return Ok(Ok(()));
        };
        let Segment {
            start,
            text,
            corrections,
            compressed,
        } = segment;
        if let Err(detail) = found {
            self.put_back(compressed);
            return Ok(Err(format!(
                "{} could not be unpacked at content byte {start}: {detail}",
                once.what
            )));
        }
        self.record(once, start, &text, corrections, compressed)?;
        Ok(Ok(()))
    }

    /// Records a segment whose replay reproduced its `compressed` bytes:
    /// its operation, its contents handed on, its input consumed.
    fn record(
        &mut self,
        once: &mut Once<'_, '_>,
        start: u64,
        text: &[u8],
        corrections: Vec<u8>,
        compressed: Vec<u8>,
    ) -> io::Result<()> {
        self.ops
            .push(Op::Deflate(text.len() as u64, ByteVec::from(corrections)));
        // Only contents not handed on by an earlier attempt.
        let fresh = &text[(once.emitted.saturating_sub(start) as usize).min(text.len())..];
        *once.emitted = (*once.emitted).max(start + text.len() as u64);
        hand_on(self.emit, fresh)?;
        once.consumed += compressed.len();
        match once.retained.as_mut() {
            Some(input) if input.len() + compressed.len() <= MAX_RETAINED => {
                input.extend_from_slice(&compressed)
            }
            _ => *once.retained = None,
        }
        Ok(())
    }

    /// Puts `compressed`, input taken from the front of `buf` and not
    /// consumed after all, back where it was.
    fn put_back(&mut self, mut compressed: Vec<u8>) {
        compressed.append(&mut self.buf);
        self.buf = compressed;
    }

    /// Reads until `buf` holds `want` bytes or the input ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        let mut chunk = vec![0u8; STEP];
        while self.buf.len() < want && !self.eof {
            let n = match self.input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.eof = true;
            }
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&chunk[..n]);
            }
            (self.tee)(&chunk[..n]);
            self.read += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Passes everything left through as it is.
    fn copy_rest(&mut self) -> io::Result<()> {
        loop {
            if !self.buf.is_empty() {
                let piece = std::mem::take(&mut self.buf);
                match self.ops.last_mut() {
                    Some(Op::Copy(n)) => *n += piece.len() as u64,
                    _ => self.ops.push(Op::Copy(piece.len() as u64)),
                }
                hand_on(self.emit, &piece)?;
            }
            if self.eof {
                return Ok(());
            }
            self.fill(STEP)?;
        }
    }

    /// Bytes passed through after the last member, for a message.
    fn read_after_members(&self) -> u64 {
        match self.ops.last() {
            Some(Op::Copy(n)) => *n,
            _ => 0,
        }
    }
}

/// The length of the gzip header at the start of `buf`: `None` when more
/// bytes are needed, an error when the header is not one gzip defines.
fn header_len(buf: &[u8]) -> Result<Option<usize>, String> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if buf.len() < 10 {
        return Ok(None);
    }
    let flags = buf[3];
    if flags & 0xe0 != 0 {
        return Err("reserved header flags are set".into());
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = buf.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + u16::from_le_bytes([len[0], len[1]]) as usize;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match buf
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((buf.len() >= at).then_some(at))
}

/// Rebuilds an original from its content, fed in order.
pub struct Rebuilder {
    ops: std::vec::IntoIter<Op>,
    current: Current,
    chunking: Option<Chunking>,
    /// The zstd version a zstd operation was written with.
    zstd_written: Option<u32>,
    recreate: Option<RecreateStreamProcessor>,
    pending: Vec<u8>,
    hasher: blake3::Hasher,
    written: u64,
    size: u64,
    hash: [u8; 32],
}

enum Current {
    Idle,
    Copy(u64),
    Deflate(u64, ByteVec),
    /// Content bytes left for the frame, and its compressor.
    Zstd(u64, Box<::zstd::stream::raw::Encoder<'static>>),
}

/// An [`Op::Chunked`] in progress.
struct Chunking {
    int_size: usize,
    runs: std::vec::IntoIter<Run>,
    /// The current run's length, and chunks of it still to start.
    run: Run,
    /// Bytes left in the current chunk.
    left: u64,
}

impl Chunking {
    /// Starts the next chunk: its length prefix, or `None` when there are
    /// no more.
    fn next(&mut self) -> Option<Vec<u8>> {
        while self.run.count == 0 {
            self.run = self.runs.next()?;
        }
        self.run.count -= 1;
        self.left = self.run.len;
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&self.run.len.to_le_bytes()[..self.int_size]);
        Some(prefix)
    }

    /// Whether every chunk is complete.
    fn done(&self) -> bool {
        self.left == 0 && self.run.count == 0 && self.runs.as_slice().iter().all(|r| r.count == 0)
    }
}
impl Rebuilder {
    /// A rebuild of `recipe` from `content_len` bytes of content; refuses a
    /// recipe that does not fit them.
    pub fn new(recipe: Recipe, content_len: u64) -> Result<Rebuilder, String> {
        Rebuilder::check(&recipe, content_len)?;
        Ok(Rebuilder {
            ops: recipe.ops.into_iter(),
            current: Current::Idle,
            chunking: None,
            zstd_written: None,
            recreate: None,
            pending: Vec::new(),
            hasher: blake3::Hasher::new(),
            written: 0,
            size: recipe.size,
            hash: *recipe.hash,
        })
    }

    /// Whether `recipe` can rebuild a file from `content_len` bytes of
    /// content, as far as can be told before running it.
    pub fn check(recipe: &Recipe, content_len: u64) -> Result<(), String> {
        if recipe.format != GZIP && recipe.format != PG_CUSTOM && recipe.format != NEO4J {
            return Err(format!(
                "the recipe rebuilds {:?}, which this build does not know",
                recipe.format
            ));
        }
        if recipe.content_len() != content_len {
            return Err(format!(
                "the recipe draws on {} content bytes, but the content holds {content_len}",
                recipe.content_len()
            ));
        }
        if recipe
            .ops
            .iter()
            .any(|op| matches!(op, Op::Deflate(n, _) if *n > 2 * MAX_SEGMENT))
        {
            return Err("the recipe has a segment longer than any larder writes".into());
        }
        if recipe
            .ops
            .iter()
            .any(|op| matches!(op, Op::Zstd { level, .. } if !(-7..=22).contains(level)))
        {
            return Err("the recipe has a zstd level no compressor has".into());
        }
        // Chunks must be able to have their lengths written, and together
        // must fit the original.
        let mut chunked = 0u64;
        for op in &recipe.ops {
            let Op::Chunked { int_size, runs } = op else {
                continue;
            };
            if !(1..=8).contains(int_size) {
                return Err(format!("the recipe has chunk lengths of {int_size} bytes"));
            }
            for run in runs {
                let fits = *int_size == 8 || run.len >> (8 * u32::from(*int_size)) == 0;
                if run.len == 0 || !fits {
                    return Err("the recipe has a chunk length it cannot write".into());
                }
                let per = run.len.saturating_add(1 + u64::from(*int_size));
                chunked = chunked.saturating_add(per.saturating_mul(run.count));
            }
        }
        if chunked > recipe.size {
            return Err("the recipe's chunks are longer than the original".into());
        }
        Ok(())
    }

    /// Takes the next piece of content, handing rebuilt bytes to `sink`.
    pub fn feed<E>(
        &mut self,
        mut piece: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, String> {
        loop {
            if let Err(e) = self.advance(sink)? {
                return Ok(Err(e));
            }
            if piece.is_empty() {
                return Ok(Ok(()));
            }
            match &mut self.current {
                Current::Idle => return Err("the content is longer than the recipe".into()),
                Current::Copy(left) => {
                    let n = (*left).min(piece.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.current = Current::Idle;
                    }
                    if let Err(e) = self.out(&piece[..n], sink)? {
                        return Ok(Err(e));
                    }
                    piece = &piece[n..];
                }
                Current::Zstd(left, encoder) => {
                    let n = (*left).min(piece.len() as u64) as usize;
                    *left -= n as u64;
                    let compressed = compress_zstd(encoder, &piece[..n])?;
                    piece = &piece[n..];
                    if let Err(e) = self.out(&compressed, sink)? {
                        return Ok(Err(e));
                    }
                    if let Current::Zstd(0, _) = self.current
                        && let Err(e) = self.end_zstd(sink)?
                    {
                        return Ok(Err(e));
                    }
                }
                Current::Deflate(len, _) => {
                    let n = (*len as usize - self.pending.len()).min(piece.len());
                    self.pending.extend_from_slice(&piece[..n]);
                    piece = &piece[n..];
                    if self.pending.len() as u64 == *len {
                        let Current::Deflate(_, corrections) =
                            std::mem::replace(&mut self.current, Current::Idle)
                        else {
                            unreachable!("matched above")
                        };
                        if let Err(e) = self.recompress(&corrections, sink)? {
                            return Ok(Err(e));
                        }
                    }
                }
            }
        }
    }

    /// Ends the rebuild: every operation done, and the result is the
    /// original. Returns the bytes written.
    pub fn finish<E>(
        &mut self,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<u64, E>, String> {
        if let Err(e) = self.advance(sink)? {
            return Ok(Err(e));
        }
        if !matches!(self.current, Current::Idle) || self.chunking.is_some() {
            return Err("the content ends before the recipe".into());
        }
        let differs = if self.written != self.size {
            format!(
                "rebuilt {} bytes, but the original had {}",
                self.written, self.size
            )
        } else if *self.hasher.finalize().as_bytes() != self.hash {
            "the rebuilt bytes differ from the original".to_string()
        } else {
            return Ok(Ok(self.written));
        };
        let running = ::zstd::zstd_safe::version_number();
        Err(match self.zstd_written {
            Some(written) if written != running => format!(
                "{differs}: its zstd frame was written with zstd {}, and this larder's zstd {} \
                 compresses differently (restore it with a larder built with zstd {0})",
                zstd_version_text(written),
                zstd_version_text(running)
            ),
            _ => differs,
        })
    }

    /// Runs operations that need no content until one does.
    fn advance<E>(
        &mut self,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, String> {
        while matches!(self.current, Current::Idle) {
            let Some(op) = self.ops.next() else {
                break;
            };
            match op {
                Op::Literal(bytes) => {
                    self.recreate = None;
                    if let Err(e) = self.out(&bytes, sink)? {
                        return Ok(Err(e));
                    }
                }
                Op::Chunked { int_size, runs } => {
                    self.recreate = None;
                    if self.chunking.is_some() {
                        return Err("the recipe starts chunks inside chunks".into());
                    }
                    let chunking = Chunking {
                        int_size: usize::from(int_size),
                        runs: runs.into_iter(),
                        run: Run { len: 0, count: 0 },
                        left: 0,
                    };
                    if !chunking.done() {
                        self.chunking = Some(chunking);
                    }
                }
                Op::Copy(0) => self.recreate = None,
                Op::Copy(n) => {
                    self.recreate = None;
                    self.current = Current::Copy(n);
                }
                Op::Deflate(0, corrections) => {
                    if let Err(e) = self.recompress(&corrections, sink)? {
                        return Ok(Err(e));
                    }
                }
                Op::Deflate(n, corrections) => self.current = Current::Deflate(n, corrections),
                Op::Zstd {
                    level,
                    checksum,
                    pledged,
                    len,
                    zstd,
                } => {
                    self.recreate = None;
                    self.zstd_written = Some(zstd);
                    let encoder = zstd_encoder(level, checksum, pledged.then_some(len))?;
                    self.current = Current::Zstd(len, Box::new(encoder));
                    if len == 0
                        && let Err(e) = self.end_zstd(sink)?
                    {
                        return Ok(Err(e));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    /// Ends the zstd frame in progress.
    fn end_zstd<E>(
        &mut self,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, String> {
        let Current::Zstd(_, mut encoder) = std::mem::replace(&mut self.current, Current::Idle)
        else {
            return Ok(Ok(()));
        };
        let mut out = vec![0u8; 1 << 16];
        loop {
            let mut output = ::zstd::stream::raw::OutBuffer::around(&mut out[..]);
            let left = ::zstd::stream::raw::Operation::finish(&mut *encoder, &mut output, true)
                .map_err(|e| format!("a zstd frame does not end: {e}"))?;
            let produced = output.pos();
            if let Err(e) = self.out(&out[..produced], sink)? {
                return Ok(Err(e));
            }
            if left == 0 {
                return Ok(Ok(()));
            }
        }
    }

    fn recompress<E>(
        &mut self,
        corrections: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, String> {
        let processor = self
            .recreate
            .get_or_insert_with(RecreateStreamProcessor::new);
        let plain = std::mem::take(&mut self.pending);
        let outcome = contained(|| processor.recompress(&mut io::Cursor::new(&plain), corrections));
        let compressed = match outcome {
            Ok(Ok((compressed, _))) => compressed,
            Ok(Err(e)) => {
                return Err(format!(
                    "a segment does not compress again: {:?}: {}",
                    e.exit_code(),
                    e.message().lines().next().unwrap_or_default()
                ));
            }
            Err(_) => return Err("a segment does not compress again".into()),
        };
        self.pending = plain;
        self.pending.clear();
        self.out(&compressed, sink)
    }

    /// Writes rebuilt bytes, cut into chunks while an [`Op::Chunked`] is in
    /// progress.
    fn out<E>(
        &mut self,
        mut bytes: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, String> {
        let Some(chunking) = &mut self.chunking else {
            return Ok(self.write(bytes, sink));
        };
        let mut framed = Vec::with_capacity(bytes.len() + bytes.len() / 512 + 16);
        while !bytes.is_empty() {
            if chunking.left == 0 {
                let prefix = chunking
                    .next()
                    .ok_or("the recipe produces more bytes than its chunks hold")?;
                framed.extend_from_slice(&prefix);
            }
            let n = chunking.left.min(bytes.len() as u64) as usize;
            chunking.left -= n as u64;
            framed.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if chunking.done() {
                self.chunking = None;
                framed.extend_from_slice(bytes);
                break;
            }
        }
        Ok(self.write(&framed, sink))
    }

    fn write<E>(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        sink(bytes)
    }
}

/// A zstd compressor with a frame's settings.
fn zstd_encoder(
    level: i32,
    checksum: bool,
    size: Option<u64>,
) -> Result<::zstd::stream::raw::Encoder<'static>, String> {
    let setup = || -> io::Result<::zstd::stream::raw::Encoder<'static>> {
        let mut encoder = ::zstd::stream::raw::Encoder::new(level)?;
        encoder.set_parameter(::zstd::stream::raw::CParameter::ChecksumFlag(checksum))?;
        encoder.set_pledged_src_size(size)?;
        Ok(encoder)
    };
    setup().map_err(|e| format!("cannot set up a zstd compressor: {e}"))
}

/// Compresses `plain` into the frame in progress.
fn compress_zstd(
    encoder: &mut ::zstd::stream::raw::Encoder<'static>,
    plain: &[u8],
) -> Result<Vec<u8>, String> {
    use ::zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let mut compressed = Vec::new();
    let mut input = InBuffer::around(plain);
    let mut out = vec![0u8; (plain.len() / 2).max(1 << 16)];
    while input.pos < plain.len() {
        let mut output = OutBuffer::around(&mut out[..]);
        encoder
            .run(&mut input, &mut output)
            .map_err(|e| format!("zstd compression failed: {e}"))?;
        let produced = output.pos();
        compressed.extend_from_slice(&out[..produced]);
    }
    Ok(compressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gzip -c` of `data` at `level` through the system's gzip.
    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("gzip")
            .arg(format!("-{level}"))
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip runs");
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn sql(rows: u32, seed: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"COPY public.accounts (aid, bid, abalance, filler) FROM stdin;\n");
        for i in 0..rows {
            let balance = (i.wrapping_mul(2654435761) ^ seed) % 100_000;
            out.extend_from_slice(
                format!("{i}\t{}\t{balance}\tfiller {}\n", i / 1000, i % 97).as_bytes(),
            );
        }
        out.extend_from_slice(b"\\.\n");
        out
    }

    fn unpack(input: &[u8]) -> (Unpacked, Vec<u8>) {
        unpack_replaying(input, Replays::default())
    }

    fn unpack_replaying(input: &[u8], replays: Replays) -> (Unpacked, Vec<u8>) {
        let mut content = Vec::new();
        let unpacked = unpack_gzip_with(
            &mut io::Cursor::new(input),
            &mut |piece| {
                content.extend_from_slice(&piece);
                true
            },
            &mut |_| {},
            replays,
        )
        .unwrap();
        (unpacked, content)
    }

    /// Rebuilds `recipe` from `content` fed in pieces of `piece` bytes.
    pub(super) fn rebuild(
        recipe: &Recipe,
        content: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, String> {
        let mut rebuilder = Rebuilder::new(recipe.clone(), content.len() as u64)?;
        let mut out = Vec::new();
        let mut sink = |bytes: &[u8]| -> Result<(), ()> {
            out.extend_from_slice(bytes);
            Ok(())
        };
        for chunk in content.chunks(piece.max(1)) {
            rebuilder.feed(chunk, &mut sink)?.unwrap();
        }
        rebuilder.finish(&mut sink)?.unwrap();
        Ok(out)
    }

    #[test]
    fn gzip_output_unpacks_and_rebuilds_exactly() {
        let data = sql(200_000, 7);
        for level in [1, 6, 9] {
            let gz = gzip(&data, level);
            let (unpacked, content) = unpack(&gz);
            assert_eq!(
                unpacked.integrity,
                Integrity::Whole { members: 1 },
                "level {level}"
            );
            assert_eq!(
                content, data,
                "level {level}: the content is the uncompressed data"
            );
            assert!(unpacked.recipe.unpacks());
            let corrections: usize = unpacked.recipe.encode().len();
            // Measured: 166 bytes at level 1, about a tenth of the input at
            // levels 6 and 9 on this synthetic data (real pg_dump output
            // needs far less; docs/PERFORMANCE.md).
            assert!(
                corrections < gz.len() / 5,
                "level {level}: recipe {corrections} bytes for {}",
                gz.len()
            );
            for piece in [1 << 20, 4093, 65536] {
                assert_eq!(
                    rebuild(&unpacked.recipe, &content, piece).unwrap(),
                    gz,
                    "level {level}"
                );
            }
        }
    }

    #[test]
    fn replays_beside_the_analysis_give_the_recipe_of_replays_in_place() {
        // About 9.5 MB of contents: 4 or more segments.
        let data = sql(500_000, 11);
        for level in [1, 6] {
            let gz = gzip(&data, level);
            let (beside, content) = unpack(&gz);
            let in_place = Replays {
                beside: 0,
                ..Replays::default()
            };
            let (here, here_content) = unpack_replaying(&gz, in_place);
            assert_eq!(beside.integrity, Integrity::Whole { members: 1 });
            let segments = beside
                .recipe
                .ops
                .iter()
                .filter(|op| matches!(op, Op::Deflate(..)))
                .count();
            assert!(segments > 3, "level {level}: {segments} segments");
            assert_eq!(content, data, "level {level}");
            assert_eq!(here_content, data, "level {level}");
            assert_eq!(
                beside.recipe.encode(),
                here.recipe.encode(),
                "level {level}"
            );
        }
    }

    #[test]
    fn a_segment_whose_replay_fails_is_stored_as_it_came_from_there() {
        let data = sql(200_000, 5);
        let gz = gzip(&data, 6);
        let len = data.len() as u64;
        // In the first segment, in one replayed beside the analysis, in the
        // last (replayed in place), and at the last content byte.
        for fail_at in [0, len / 2, len - 1000, len - 1] {
            let replays = Replays {
                fail_at: Some(fail_at),
                ..Replays::default()
            };
            let (unpacked, content) = unpack_replaying(&gz, replays);
            let why = match &unpacked.integrity {
                Integrity::Unknown(why) => why,
                other => panic!("failing at {fail_at}: {other:?}"),
            };
            assert!(
                why.contains("could not be unpacked at content byte"),
                "{why}"
            );
            assert!(why.contains("injected"), "{why}");
            assert!(unpacked.passed_through > 0, "failing at {fail_at}");
            // The contents are the data up to a segment boundary before the
            // failure, then the compressed bytes from where that segment began.
            let unpacked_len = content.len() - unpacked.passed_through as usize;
            assert!(unpacked_len as u64 <= fail_at, "failing at {fail_at}");
            assert_eq!(content[..unpacked_len], data[..unpacked_len]);
            assert_eq!(
                content[unpacked_len..],
                gz[gz.len() - unpacked.passed_through as usize..],
                "failing at {fail_at}"
            );
            assert_eq!(rebuild(&unpacked.recipe, &content, 4096).unwrap(), gz);
        }
    }

    #[test]
    fn concatenated_members_and_trailing_bytes_rebuild_exactly() {
        let mut gz = gzip(&sql(5_000, 1), 6);
        gz.extend_from_slice(&gzip(&sql(7_000, 2), 6));
        let (unpacked, content) = unpack(&gz);
        assert_eq!(unpacked.integrity, Integrity::Whole { members: 2 });
        assert_eq!(rebuild(&unpacked.recipe, &content, 1000).unwrap(), gz);

        gz.extend_from_slice(b"trailing garbage");
        let (unpacked, content) = unpack(&gz);
        assert!(matches!(unpacked.integrity, Integrity::Broken(ref m) if m.contains("not gzip")));
        assert_eq!(rebuild(&unpacked.recipe, &content, 1000).unwrap(), gz);
    }

    #[test]
    fn cut_and_corrupt_streams_are_broken_and_still_stored_exactly() {
        let gz = gzip(&sql(100_000, 3), 6);
        for cut in [5, 11, 100, gz.len() / 2, gz.len() - 9, gz.len() - 3] {
            let input = &gz[..cut];
            let (unpacked, content) = unpack(input);
            assert!(
                matches!(unpacked.integrity, Integrity::Broken(_)),
                "cut at {cut}: {:?}",
                unpacked.integrity
            );
            assert_eq!(rebuild(&unpacked.recipe, &content, 777).unwrap(), input);
        }
        // A flipped CRC byte in the trailer.
        let mut bad = gz.clone();
        let at = bad.len() - 6;
        bad[at] ^= 1;
        let (unpacked, content) = unpack(&bad);
        assert!(matches!(unpacked.integrity, Integrity::Broken(ref m) if m.contains("CRC")));
        assert_eq!(rebuild(&unpacked.recipe, &content, 777).unwrap(), bad);
        // A flipped bit inside the compressed data.
        let mut bad = gz.clone();
        let at = bad.len() / 3;
        bad[at] ^= 0x10;
        let (unpacked, content) = unpack(&bad);
        assert!(!matches!(unpacked.integrity, Integrity::Whole { .. }));
        assert_eq!(rebuild(&unpacked.recipe, &content, 777).unwrap(), bad);
    }

    #[test]
    fn input_that_is_not_gzip_passes_through() {
        let data = b"\x1f\x8b\x08 but not really a gzip header at all".repeat(100);
        let (unpacked, content) = unpack(&data);
        assert!(!unpacked.recipe.unpacks());
        assert_eq!(content, data);
        assert_eq!(rebuild(&unpacked.recipe, &content, 10).unwrap(), data);
    }

    #[test]
    fn hostile_recipes_are_refused_not_obeyed() {
        let gz = gzip(&sql(20_000, 4), 6);
        let (unpacked, content) = unpack(&gz);
        // Lengths that do not fit the content.
        let mut longer = unpacked.recipe.clone();
        longer.ops.push(Op::Copy(1));
        assert!(Rebuilder::new(longer, content.len() as u64).is_err());
        // A wrong hash is caught at the end.
        let mut wrong = unpacked.recipe.clone();
        wrong.hash = ByteArray::from([0u8; 32]);
        assert!(
            rebuild(&wrong, &content, 4096)
                .unwrap_err()
                .contains("differ")
        );
        // Corrections that are noise.
        let mut noise = unpacked.recipe.clone();
        for op in &mut noise.ops {
            if let Op::Deflate(_, corrections) = op {
                for b in corrections.iter_mut() {
                    *b = b.wrapping_mul(31).wrapping_add(7);
                }
            }
        }
        assert!(rebuild(&noise, &content, 4096).is_err());
        // Changed content under an intact recipe.
        let mut changed = content.clone();
        changed[1000] ^= 1;
        assert!(rebuild(&unpacked.recipe, &changed, 4096).is_err());
    }

    #[test]
    fn a_stopped_reader_ends_the_unpacking() {
        let gz = gzip(&sql(100_000, 5), 6);
        let err = unpack_gzip(&mut io::Cursor::new(&gz), &mut |_| false, &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
