//! Neo4j dumps (`DZV1` and a zstd frame): stored decompressed when a zstd
//! compressor here reproduces the frame byte for byte, so that two days
//! of a graph share their unchanged store files.
//!
//! zstd's output depends on the library's version and the compressor's
//! settings, and the frame header names neither the level nor the
//! compressor. So the input is first read to its end into a spool file
//! (deleted as soon as it is opened; it holds the compressed dump, in the
//! temporary directory), while a decoder and compressors at the likely
//! levels (3, zstd's default, first) run beside it and compare what they
//! produce with the frame, byte by byte. Only when one of them reproduces
//! the whole frame is the dump handed on decompressed, with an
//! [`Op::Zstd`] that compresses it again on restore; otherwise it is
//! handed on as it came, and the caller warns.

use std::io::{self, Read, Seek, Write};

use bytes::Bytes;
use minicbor::bytes::{ByteArray, ByteVec};
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

use super::{EMIT_PIECE, Integrity, NEO4J, Op, Recipe, STEP, Unpacked};

/// The magic of a zstd-compressed Neo4j dump, then zstd's own.
const MAGIC: &[u8; 4] = b"DZV1";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Levels tried, most likely first (3 is zstd's default, and zstd-jni's).
const LEVELS: [i32; 9] = [3, 1, 2, 4, 5, 6, 7, 8, 9];

/// Contents compared before the first level that still matches is kept.
const CHOOSE_AFTER: u64 = 4 << 20;

/// Most compressed bytes held while a compressor catches up with them.
const MAX_LAG: usize = 64 << 20;

/// Whether `head` starts a zstd-compressed Neo4j dump.
pub(crate) fn is_neo4j_zstd(head: &[u8]) -> bool {
    head.starts_with(MAGIC) && head[MAGIC.len()..].starts_with(&ZSTD_MAGIC)
}

/// One compressor being compared with the frame.
struct Candidate {
    level: i32,
    encoder: Encoder<'static>,
    /// Frame bytes it has reproduced so far.
    matched: u64,
}

/// The frame's settings that a compressor must share.
#[derive(Clone, Copy)]
struct Header {
    checksum: bool,
    /// The content size the header states, if it states one.
    size: Option<u64>,
}

/// Parses a zstd frame header (RFC 8878, 3.1.1.1); `None` when it is not
/// one a compressor here could write (a dictionary) or too short.
fn header(frame: &[u8]) -> Option<Header> {
    if !frame.starts_with(&ZSTD_MAGIC) {
        return None;
    }
    let fhd = *frame.get(4)?;
    let fcs_flag = fhd >> 6;
    let single = fhd & 0x20 != 0;
    let checksum = fhd & 0x04 != 0;
    if fhd & 0x03 != 0 || fhd & 0x08 != 0 {
        return None; // a dictionary id, or the reserved bit
    }
    let at = 5 + usize::from(!single);
    let fcs_len = match (fcs_flag, single) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let field = frame.get(at..at + fcs_len)?;
    let mut bytes = [0u8; 8];
    bytes[..fcs_len].copy_from_slice(field);
    let mut size = u64::from_le_bytes(bytes);
    if fcs_len == 2 {
        size += 256;
    }
    Some(Header {
        checksum,
        size: (fcs_len > 0).then_some(size),
    })
}

/// A compressor with the frame's settings, as a rebuild makes it.
fn encoder(level: i32, header: Header) -> io::Result<Encoder<'static>> {
    super::zstd_encoder(level, header.checksum, header.size).map_err(io::Error::other)
}

/// Unpacks a Neo4j dump from `input`, handing the content to `emit` in
/// order (it returns `false` to stop early, which ends the unpacking with
/// an error) and every byte read to `tee`.
pub fn unpack_neo4j(
    input: &mut dyn Read,
    emit: &mut dyn FnMut(Bytes) -> bool,
    tee: &mut dyn FnMut(&[u8]),
) -> io::Result<Unpacked> {
    let dir = std::env::temp_dir();
    // The spool, while the frame may still be reproduced; once it cannot
    // be, what was spooled is handed on and the rest streams through.
    let mut spool = Some(spool_file(&dir)?);
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    let mut head: Vec<u8> = Vec::new();
    let mut verifier: Option<Verifier> = None;
    let mut why_not = None;
    let mut emitter = Emitter {
        emit,
        hasher: blake3::Hasher::new(),
    };
    let mut buf = vec![0u8; STEP];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        tee(chunk);
        read += n as u64;
        let Some(file) = spool.as_mut() else {
            emitter.pass(&mut &chunk[..])?;
            continue;
        };
        file.write_all(chunk).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the Neo4j dump could not be spooled to {} for verification ({e}); free \
                     space there, point TMPDIR elsewhere, or back it up with --no-unpack",
                    dir.display()
                ),
            )
        })?;
        if why_not.is_none() {
            let mut frame_bytes = chunk;
            if verifier.is_none() {
                head.extend_from_slice(chunk);
                // Magic, then a frame header of at most 14 bytes.
                if head.len() < MAGIC.len() + 18 {
                    continue;
                }
                match head.strip_prefix(MAGIC).and_then(header).map(Verifier::new) {
                    Some(Ok(v)) => verifier = Some(v),
                    Some(Err(e)) => return Err(e),
                    None => {
                        why_not = Some(Integrity::Unknown(
                            "its zstd frame header names a dictionary or is damaged".into(),
                        ));
                    }
                }
                frame_bytes = &head[MAGIC.len()..];
            }
            if let Some(v) = verifier.as_mut()
                && why_not.is_none()
                && let Err(why) = v.feed(frame_bytes)
            {
                why_not = Some(why);
            }
            head = Vec::new();
        }
        if why_not.is_some() {
            // Hand on what was spooled, as it came; stream the rest.
            let mut file = spool.take().expect("spooling");
            file.seek(io::SeekFrom::Start(0))?;
            emitter.pass(&mut file)?;
        }
    }
    if why_not.is_none() {
        why_not = match verifier.as_mut() {
            None => Some(Integrity::Unknown("it is too short to take apart".into())),
            Some(v) => v.finish().err(),
        };
    }
    let hash = ByteArray::from(*hasher.finalize().as_bytes());
    let verified = match (why_not, verifier) {
        (None, Some(v)) => v.chosen().map(|(level, header, frame_len)| {
            (level, header, frame_len, v.plain, v.plain_hash.finalize())
        }),
        (why, _) => {
            if let Some(mut file) = spool.take() {
                file.seek(io::SeekFrom::Start(0))?;
                emitter.pass(&mut file)?;
            }
            return Ok(Unpacked {
                recipe: Recipe {
                    format: NEO4J.into(),
                    size: read,
                    hash,
                    ops: vec![Op::Copy(read)],
                },
                integrity: why.unwrap_or_else(|| {
                    Integrity::Unknown("no compressor here reproduces its zstd frame".into())
                }),
                read,
                passed_through: read,
            });
        }
    };
    let mut spool = spool.expect("a verified dump is spooled");
    spool.seek(io::SeekFrom::Start(0))?;
    let (level, header, frame_len, plain, plain_hash) =
        verified.expect("a verified frame has a level");
    // The frame, decompressed again from the spool, then what follows it.
    let mut magic = [0u8; 4];
    spool.read_exact(&mut magic)?;
    let mut decoder =
        zstd::stream::read::Decoder::new((&mut spool).take(frame_len))?.single_frame();
    decoder.window_log_max(31)?;
    emitter.hasher = blake3::Hasher::new();
    let decompressed = emitter.pass(&mut decoder)?;
    drop(decoder);
    if decompressed != plain || emitter.hasher.finalize() != plain_hash {
        return Err(io::Error::other(
            "the spooled dump decompressed differently the second time (the temporary \
             directory's storage is unreliable)",
        ));
    }
    spool.seek(io::SeekFrom::Start(MAGIC.len() as u64 + frame_len))?;
    let trailing = emitter.pass(&mut spool)?;
    let mut ops = vec![
        Op::Literal(ByteVec::from(MAGIC.to_vec())),
        Op::Zstd {
            level,
            checksum: header.checksum,
            pledged: header.size.is_some(),
            len: plain,
            zstd: zstd::zstd_safe::version_number(),
        },
    ];
    if trailing > 0 {
        ops.push(Op::Copy(trailing));
    }
    Ok(Unpacked {
        recipe: Recipe {
            format: NEO4J.into(),
            size: read,
            hash,
            ops,
        },
        integrity: Integrity::Whole { members: 1 },
        read,
        passed_through: trailing,
    })
}

/// A spool file in `dir`, readable by its owner only, deleted once open.
fn spool_file(dir: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..16 {
        let name = dir.join(format!(
            ".larder-spool-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(
                crate::hash::random_bytes()[..8]
                    .try_into()
                    .expect("8 bytes")
            )
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&name)
        {
            Ok(file) => {
                std::fs::remove_file(&name)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("cannot create a spool file"))
}

/// Hands a reader's bytes on, in pieces, hashing them.
struct Emitter<'a> {
    emit: &'a mut dyn FnMut(Bytes) -> bool,
    hasher: blake3::Hasher,
}

impl Emitter<'_> {
    /// Hands on everything `reader` gives; how much.
    fn pass(&mut self, reader: &mut dyn Read) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let mut piece = vec![0u8; EMIT_PIECE];
            let mut got = 0;
            while got < piece.len() {
                match reader.read(&mut piece[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if got == 0 {
                return Ok(total);
            }
            piece.truncate(got);
            total += got as u64;
            self.hasher.update(&piece);
            if !(self.emit)(Bytes::from(piece)) {
                return Err(super::stopped());
            }
        }
    }
}

/// Decodes the frame as it arrives and compares compressors' output with
/// it.
struct Verifier {
    header: Header,
    decoder: Decoder<'static>,
    candidates: Vec<Candidate>,
    /// Frame bytes not yet reproduced by every candidate, from `base`.
    window: Vec<u8>,
    base: u64,
    /// Frame bytes the decoder consumed; the frame's length once `done`.
    consumed: u64,
    done: bool,
    /// Contents decoded, and their hash.
    plain: u64,
    plain_hash: blake3::Hasher,
}

impl Verifier {
    fn new(header: Header) -> io::Result<Verifier> {
        let candidates = LEVELS
            .iter()
            .map(|&level| {
                Ok(Candidate {
                    level,
                    encoder: encoder(level, header)?,
                    matched: 0,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Verifier {
            header,
            decoder: {
                let mut decoder = Decoder::new()?;
                // Neo4j may write long windows; the default limit is 2^27.
                decoder.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(31))?;
                decoder
            },
            candidates,
            window: Vec::new(),
            base: 0,
            consumed: 0,
            done: false,
            plain: 0,
            plain_hash: blake3::Hasher::new(),
        })
    }

    /// Takes the next frame bytes.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), Integrity> {
        if self.done {
            return Ok(()); // bytes after the frame are passed through
        }
        self.window.extend_from_slice(bytes);
        let mut input = InBuffer::around(bytes);
        let mut out = vec![0u8; 256 << 10];
        while input.pos < bytes.len() && !self.done {
            let mut output = OutBuffer::around(&mut out[..]);
            let hint = self
                .decoder
                .run(&mut input, &mut output)
                .map_err(|e| Integrity::Broken(format!("its zstd stream does not decode: {e}")))?;
            let produced = output.pos();
            if hint == 0 {
                self.done = true;
            }
            self.compress(&out[..produced])?;
            if produced == 0 && hint != 0 && input.pos == bytes.len() {
                break;
            }
        }
        // Decoded output still buffered in the decoder.
        loop {
            let mut output = OutBuffer::around(&mut out[..]);
            let mut empty = InBuffer::around(&[][..]);
            let hint = self
                .decoder
                .run(&mut empty, &mut output)
                .map_err(|e| Integrity::Broken(format!("its zstd stream does not decode: {e}")))?;
            let produced = output.pos();
            if hint == 0 {
                self.done = true;
            }
            if produced == 0 {
                break;
            }
            self.compress(&out[..produced])?;
        }
        self.consumed += input.pos as u64;
        if self.done {
            // What came after the frame is not the frame's.
            let extra = bytes.len() - input.pos;
            self.window.truncate(self.window.len() - extra);
        }
        self.trim()
    }

    /// Compresses decoded contents with every candidate, comparing.
    fn compress(&mut self, plain: &[u8]) -> Result<(), Integrity> {
        self.plain += plain.len() as u64;
        self.plain_hash.update(plain);
        let mut out = vec![0u8; plain.len() + (64 << 10)];
        let (window, base) = (&self.window, self.base);
        self.candidates.retain_mut(|c| {
            let mut input = InBuffer::around(plain);
            let mut ok = true;
            while input.pos < plain.len() {
                let mut output = OutBuffer::around(&mut out[..]);
                if c.encoder.run(&mut input, &mut output).is_err() {
                    return false;
                }
                let produced = output.pos();
                ok &= matches(window, base, &mut c.matched, &out[..produced]);
            }
            ok
        });
        if self.plain >= CHOOSE_AFTER {
            self.candidates.truncate(1);
        }
        if self.candidates.is_empty() {
            return Err(Integrity::Unknown(format!(
                "no zstd level from {} to {} here reproduces its frame",
                LEVELS.iter().min().expect("levels"),
                LEVELS.iter().max().expect("levels")
            )));
        }
        Ok(())
    }

    /// Drops the frame bytes every candidate has reproduced.
    fn trim(&mut self) -> Result<(), Integrity> {
        let low = self
            .candidates
            .iter()
            .map(|c| c.matched)
            .min()
            .unwrap_or(self.base);
        let drop = (low - self.base) as usize;
        self.window.drain(..drop);
        self.base = low;
        if self.window.len() > MAX_LAG {
            return Err(Integrity::Unknown(
                "the compressors here fall too far behind its frame".into(),
            ));
        }
        Ok(())
    }

    /// Ends the frame: every candidate's last bytes compared.
    fn finish(&mut self) -> Result<(), Integrity> {
        if !self.done {
            return Err(Integrity::Broken(
                "its zstd stream is cut short (the frame does not end)".into(),
            ));
        }
        let mut out = vec![0u8; 1 << 20];
        let (window, base, frame_len) = (&self.window, self.base, self.consumed);
        self.candidates.retain_mut(|c| {
            loop {
                let mut output = OutBuffer::around(&mut out[..]);
                let Ok(left) = c.encoder.finish(&mut output, true) else {
                    return false;
                };
                let produced = output.pos();
                if !matches(window, base, &mut c.matched, &out[..produced]) {
                    return false;
                }
                if left == 0 {
                    break;
                }
            }
            c.matched == frame_len
        });
        if self.candidates.is_empty() {
            return Err(Integrity::Unknown(
                "no zstd level here reproduces the end of its frame".into(),
            ));
        }
        Ok(())
    }

    /// The level that reproduced the frame, the header and the frame's length.
    fn chosen(&self) -> Option<(i32, Header, u64)> {
        self.candidates
            .first()
            .map(|c| (c.level, self.header, self.consumed))
    }
}

/// Whether `produced` continues the frame at `*matched`; advances it.
fn matches(window: &[u8], base: u64, matched: &mut u64, produced: &[u8]) -> bool {
    let at = (*matched - base) as usize;
    let ok = window
        .get(at..at + produced.len())
        .is_some_and(|w| w == produced);
    if ok {
        *matched += produced.len() as u64;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Rebuilder;
    use crate::recipe::tests::rebuild;

    fn graph(n: u32, seed: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let v = (i.wrapping_mul(2654435761) ^ seed) % 1000;
            out.extend_from_slice(format!("node {i} label Person score {v}\n").as_bytes());
        }
        out
    }

    /// A DZV1 dump as a streaming zstd compressor writes it.
    fn dump(plain: &[u8], level: i32) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut encoder = zstd::stream::write::Encoder::new(&mut out, level).unwrap();
        encoder.include_checksum(true).unwrap();
        for piece in plain.chunks(8192) {
            encoder.write_all(piece).unwrap();
        }
        encoder.finish().unwrap();
        out
    }

    fn unpack(input: &[u8]) -> (Unpacked, Vec<u8>) {
        let mut content = Vec::new();
        let unpacked = unpack_neo4j(
            &mut io::Cursor::new(input),
            &mut |piece| {
                content.extend_from_slice(&piece);
                true
            },
            &mut |_| {},
        )
        .unwrap();
        (unpacked, content)
    }

    #[test]
    fn a_reproducible_dump_is_stored_decompressed_and_rebuilt_exactly() {
        let plain = graph(300_000, 1);
        for level in [3, 1, 6] {
            let input = dump(&plain, level);
            let (unpacked, content) = unpack(&input);
            assert_eq!(
                unpacked.integrity,
                Integrity::Whole { members: 1 },
                "level {level}"
            );
            assert!(unpacked.recipe.unpacks());
            assert!(content == plain, "level {level}: the content is the graph");
            assert!(rebuild(&unpacked.recipe, &content, 100_003).unwrap() == input);
        }
        // With bytes after the frame.
        let mut input = dump(&plain[..50_000], 3);
        input.extend_from_slice(b"trailing");
        let (unpacked, content) = unpack(&input);
        assert!(unpacked.recipe.unpacks());
        assert!(rebuild(&unpacked.recipe, &content, 100_003).unwrap() == input);
    }

    #[test]
    fn a_dump_no_level_reproduces_is_stored_as_it_came() {
        let plain = graph(100_000, 2);
        // Level 15 is not among those tried; a cut and a damaged frame
        // cannot be reproduced either.
        let input = dump(&plain, 15);
        let mut cut = dump(&plain, 3);
        cut.truncate(cut.len() / 2);
        let mut damaged = dump(&plain, 3);
        let at = damaged.len() / 2;
        damaged[at] ^= 0x40;
        for (name, input) in [("level 15", input), ("cut", cut), ("damaged", damaged)] {
            let (unpacked, content) = unpack(&input);
            assert!(!unpacked.recipe.unpacks(), "{name}");
            assert!(
                !matches!(unpacked.integrity, Integrity::Whole { .. }),
                "{name}"
            );
            assert!(content == input, "{name}: stored as it came");
        }
    }

    #[test]
    fn hostile_zstd_ops_are_refused() {
        let plain = graph(20_000, 3);
        let input = dump(&plain, 3);
        let (unpacked, content) = unpack(&input);
        let mut recipe = unpacked.recipe.clone();
        for op in &mut recipe.ops {
            if let Op::Zstd { level, .. } = op {
                *level = 99;
            }
        }
        assert!(Rebuilder::new(recipe, content.len() as u64).is_err());
        let mut recipe = unpacked.recipe.clone();
        for op in &mut recipe.ops {
            if let Op::Zstd { level, .. } = op {
                *level = 4;
            }
        }
        assert!(rebuild(&recipe, &content, 100_003).is_err());
        // Written by another zstd release, rebuilt differently: named.
        for op in &mut recipe.ops {
            if let Op::Zstd { zstd, .. } = op {
                *zstd = 10405;
            }
        }
        let err = rebuild(&recipe, &content, 100_003).unwrap_err();
        assert!(err.contains("written with zstd 1.4.5"), "{err}");
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// What this build's zstd writes for a fixed input at each level tried.
    /// Snapshots stored with an [`Op::Zstd`] are rebuilt by compressing
    /// again, so an upgrade of the zstd library that changes its output
    /// would make them unrestorable: this test fails first. (Such an
    /// upgrade must keep the old compressor for old recipes.)
    #[test]
    fn this_builds_zstd_output_is_what_stored_recipes_expect() {
        let mut input = Vec::new();
        for i in 0..200_000u32 {
            let v = i.wrapping_mul(2654435761) % 9973;
            input.extend_from_slice(format!("{i},{v},node-{}\n", v % 97).as_bytes());
        }
        let header = Header {
            checksum: true,
            size: None,
        };
        let mut hashes = Vec::new();
        for level in LEVELS {
            let mut encoder = encoder(level, header).unwrap();
            let mut out = crate::recipe::compress_zstd(&mut encoder, &input).unwrap();
            let mut tail = vec![0u8; 1 << 20];
            let mut output = OutBuffer::around(&mut tail[..]);
            assert_eq!(encoder.finish(&mut output, true).unwrap(), 0);
            let n = output.pos();
            out.extend_from_slice(&tail[..n]);
            hashes.push(format!("{level}:{}", &blake3::hash(&out).to_hex()[..16]));
        }
        assert_eq!(hashes.join(" "), PINNED, "zstd's output changed");
    }

    const PINNED: &str = "3:830ef96690198b04 1:bb4428465932d320 2:479533023b165754 4:05b95c84057dd18e \
                           5:eccb9458da886fc5 6:bf234f1ad70009db 7:30b5abe277b593a0 \
                           8:641095f8ffeec789 9:c707d3bb98cad208";
}
