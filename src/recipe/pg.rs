//! Custom-format PostgreSQL archives (`pg_dump -Fc`, compressed with
//! zlib, its default). Each table's data is one zlib stream, cut into
//! chunks of a few kilobytes, each preceded by its length; a new compressed
//! stream every day defeats deduplication as a gzip file does.
//!
//! The archive is walked as [`crate::dump::postgres`] checks it: header and
//! table of contents pass through as they are, and each data stream's
//! chunks are joined and unpacked like a gzip member's DEFLATE data. An
//! [`Op::Chunked`] puts the chunk lengths back on rebuild. Whatever the walk
//! does not understand (a damaged archive, a version it does not know, a
//! chunk longer than any pg_dump writes) is passed through as it came from
//! there on.

use std::io::{self, BufRead, Read};

use bytes::Bytes;
use minicbor::bytes::ByteArray;

use super::{Integrity, Op, PG_CUSTOM, Recipe, Run, STEP, Unpacked, Unpacker, copied};
use crate::dump::postgres::{Archive, Broken, Toc};

/// Data block types (`pg_backup_archiver.h`).
const BLOCK_DATA: u8 = 1;
const BLOCK_BLOBS: u8 = 3;

/// Longest chunk taken apart; pg_dump writes chunks of 4 KiB or so.
const MAX_CHUNK: u64 = 1 << 20;

/// Unpacks the zlib data streams of a custom-format archive from `input`,
/// handing the content to `emit` in order (it returns `false` to stop
/// early, which ends the unpacking with an error) and every byte read to
/// `tee`. An archive that is not compressed with zlib passes through.
pub fn unpack_pg_custom(
    input: &mut dyn Read,
    emit: &mut dyn FnMut(Bytes) -> bool,
    tee: &mut dyn FnMut(&[u8]),
) -> io::Result<Unpacked> {
    let mut walk = Walk {
        archive: Archive::custom(Raw {
            input: io::BufReader::with_capacity(STEP, input),
            tee,
            hasher: blake3::Hasher::new(),
            read: 0,
            kept: Vec::new(),
        }),
        emit,
        ops: Vec::new(),
        streams: 0,
        broken: None,
        unknown: None,
        passed_through: 0,
        corrections: 0,
    };
    walk.run()?;
    let raw = walk.archive.r;
    let integrity = match (walk.broken, walk.unknown) {
        (Some(why), _) => Integrity::Broken(why),
        (None, Some(why)) => Integrity::Unknown(why),
        (None, None) => Integrity::Whole {
            members: walk.streams,
        },
    };
    Ok(Unpacked {
        recipe: Recipe {
            format: PG_CUSTOM.into(),
            size: raw.read,
            hash: ByteArray::from(*raw.hasher.finalize().as_bytes()),
            ops: walk.ops,
        },
        integrity,
        read: raw.read,
        passed_through: walk.passed_through,
    })
}

/// The archive as read: every byte is hashed and handed to the tee, and
/// bytes read while the walk keeps them are stored as they came.
struct Raw<'a> {
    input: io::BufReader<&'a mut dyn Read>,
    tee: &'a mut dyn FnMut(&[u8]),
    hasher: blake3::Hasher,
    read: u64,
    /// Bytes read since the last operation, to pass through.
    kept: Vec<u8>,
}

impl Raw<'_> {
    /// Reads up to `buf.len()` bytes, not keeping them; fewer only at the
    /// end of the input.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.seen(got, n, buf);
            got += n;
        }
        Ok(got)
    }

    fn seen(&mut self, at: usize, n: usize, buf: &[u8]) {
        let bytes = &buf[at..at + n];
        self.hasher.update(bytes);
        (self.tee)(bytes);
        self.read += n as u64;
    }
}

impl Read for Raw<'_> {
    /// Reads and keeps.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.seen(0, n, buf);
        self.kept.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

struct Walk<'a> {
    archive: Archive<Raw<'a>>,
    emit: &'a mut dyn FnMut(Bytes) -> bool,
    ops: Vec<Op>,
    streams: u64,
    /// The first damage found in a data stream.
    broken: Option<String>,
    /// The first part that could not be unpacked.
    unknown: Option<String>,
    passed_through: u64,
    /// Correction bytes gathered so far, across streams.
    corrections: u64,
}

impl Walk<'_> {
    fn run(&mut self) -> io::Result<()> {
        let names = match self.archive.toc() {
            Ok(Toc::Entries(_, with_data)) if self.archive.zlib => with_data
                .into_iter()
                .map(|e| (e.dump_id, format!("the data of {} {}", e.desc, e.tag)))
                .collect::<std::collections::HashMap<_, _>>(),
            Ok(Toc::Entries(..)) => return self.pass_rest("the archive is not compressed"),
            Ok(Toc::Unchecked(verdict)) => return self.pass_rest(&verdict.detail),
            Err(Broken::Io(e)) if e.kind() != io::ErrorKind::UnexpectedEof => return Err(e),
            Err(_) => return self.pass_rest("its table of contents does not parse"),
        };
        loop {
            let mut kind = [0u8; 1];
            if self.archive.r.read(&mut kind)? == 0 {
                self.keep_kept()?;
                return Ok(());
            }
            let Ok(dump_id) = self.archive.int() else {
                return self.pass_rest("it ends inside a data block's header");
            };
            let what = names
                .get(&dump_id)
                .cloned()
                .unwrap_or_else(|| format!("data block {dump_id}"));
            match kind[0] {
                BLOCK_DATA => {
                    if !self.stream(&what)? {
                        return Ok(());
                    }
                }
                BLOCK_BLOBS => loop {
                    let Ok(oid) = self.archive.int() else {
                        return self.pass_rest("it ends inside a large object's header");
                    };
                    if oid == 0 {
                        break;
                    }
                    if !self.stream(&format!("large object {oid}"))? {
                        return Ok(());
                    }
                },
                other => return self.pass_rest(&format!("a data block has unknown type {other}")),
            }
        }
    }

    /// Unpacks one data stream, from its first chunk's length to the
    /// zero-length chunk that ends it. `false` when the walk cannot go on
    /// (the rest has been passed through).
    fn stream(&mut self, what: &str) -> io::Result<bool> {
        self.keep_kept()?;
        let mut chunks = Chunks {
            raw: &mut self.archive.r,
            int_size: self.archive.int_size,
            runs: Vec::new(),
            chunk: Vec::new(),
            at: 0,
            end: None,
        };
        let mut inner = Unpacker {
            input: &mut chunks,
            emit: &mut *self.emit,
            tee: &mut |_| {},
            buf: Vec::new(),
            eof: false,
            hasher: None,
            read: 0,
            ops: Vec::new(),
            corrections: self.corrections,
            replays: super::Replays::default(),
        };
        let integrity = if inner.corrections < super::CORRECTIONS_BUDGET {
            inner.zlib(what)?
        } else {
            Integrity::Unknown(format!(
                "{what} and what follows: the recipe is as large as it may grow"
            ))
        };
        // Chunks after the stream's end are passed through too.
        inner.copy_rest()?;
        let ops = std::mem::take(&mut inner.ops);
        self.corrections = inner.corrections;
        drop(inner);
        self.streams += 1;
        self.passed_through += copied(&ops);
        match integrity {
            Integrity::Whole { .. } => {}
            Integrity::Broken(why) => {
                self.broken.get_or_insert(why);
            }
            Integrity::Unknown(why) => {
                self.unknown.get_or_insert(why);
            }
        }
        let runs = std::mem::take(&mut chunks.runs);
        let end = chunks.end.take();
        if !runs.is_empty() {
            self.ops.push(Op::Chunked {
                int_size: self.archive.int_size as u8,
                runs,
            });
        }
        self.ops.extend(ops);
        match end {
            Some(End::Last(prefix)) => {
                self.archive.r.kept = prefix;
                Ok(true)
            }
            Some(End::Stopped(rest)) => {
                self.archive.r.kept = rest;
                self.pass_rest(&format!("{what} ends before its last chunk"))?;
                Ok(false)
            }
            None => {
                self.pass_rest(&format!("{what} ends before its last chunk"))?;
                Ok(false)
            }
        }
    }

    /// Hands the kept bytes on as they came.
    fn keep_kept(&mut self) -> io::Result<()> {
        let kept = std::mem::take(&mut self.archive.r.kept);
        if kept.is_empty() {
            return Ok(());
        }
        match self.ops.last_mut() {
            Some(Op::Copy(n)) => *n += kept.len() as u64,
            _ => self.ops.push(Op::Copy(kept.len() as u64)),
        }
        super::hand_on(self.emit, &kept)
    }

    /// Passes everything from here on through as it came.
    fn pass_rest(&mut self, why: &str) -> io::Result<()> {
        let before = self.archive.r.read - self.archive.r.kept.len() as u64;
        loop {
            self.keep_kept()?;
            let raw = &mut self.archive.r;
            let available = raw.input.fill_buf()?.len();
            if available == 0 {
                break;
            }
            let mut buf = vec![0u8; available.min(STEP)];
            raw.read_exact(&mut buf)?;
        }
        let passed = self.archive.r.read - before;
        self.passed_through += passed;
        if passed > 0 {
            self.unknown.get_or_insert_with(|| {
                format!("the archive's last {passed} bytes were not taken apart: {why}")
            });
        }
        Ok(())
    }
}

/// How a data stream's chunks ended.
enum End {
    /// With the zero-length chunk (its length bytes).
    Last(Vec<u8>),
    /// Otherwise: the input ended, or a chunk's length is not one pg_dump
    /// writes. The bytes read of that chunk.
    Stopped(Vec<u8>),
}

/// A data stream's chunks, joined: reads give the chunks' bytes without
/// their lengths, which are recorded. A chunk is handed on only once it is
/// whole, so every recorded length is one the stream really has.
struct Chunks<'r, 'a> {
    raw: &'r mut Raw<'a>,
    int_size: usize,
    /// The chunk lengths so far, run-length encoded as they come.
    runs: Vec<Run>,
    chunk: Vec<u8>,
    at: usize,
    end: Option<End>,
}

impl Read for Chunks<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.at);
                buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.end.is_some() {
                return Ok(0);
            }
            let want = 1 + self.int_size;
            let mut prefix = vec![0u8; want];
            let got = self.raw.read_full(&mut prefix)?;
            prefix.truncate(got);
            if got < want || prefix[0] != 0 {
                self.end = Some(End::Stopped(prefix));
                continue;
            }
            let mut len = [0u8; 8];
            len[..self.int_size].copy_from_slice(&prefix[1..]);
            let len = u64::from_le_bytes(len);
            if len == 0 {
                self.end = Some(End::Last(prefix));
                continue;
            }
            if len > MAX_CHUNK {
                self.end = Some(End::Stopped(prefix));
                continue;
            }
            self.chunk.resize(len as usize, 0);
            let got = self.raw.read_full(&mut self.chunk)?;
            if got < self.chunk.len() {
                prefix.extend_from_slice(&self.chunk[..got]);
                self.chunk.clear();
                self.end = Some(End::Stopped(prefix));
                continue;
            }
            match self.runs.last_mut() {
                Some(run) if run.len == len => run.count += 1,
                _ => self.runs.push(Run { len, count: 1 }),
            }
            self.at = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::recipe::Rebuilder;
    use crate::recipe::tests::rebuild;

    /// `WriteInt` with 4-byte integers.
    fn int(out: &mut Vec<u8>, v: i64) {
        out.push(u8::from(v < 0));
        out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
    }

    fn string(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => int(out, -1),
            Some(s) => {
                int(out, s.len() as i64);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }

    fn rows(table: usize, n: u32, seed: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let v = (i.wrapping_mul(2654435761) ^ seed) % 100_000;
            writeln!(out, "{i}\t{table}\t{v}\t{:08x}", i.wrapping_mul(40503)).unwrap();
        }
        out.extend_from_slice(b"\\.\n\n");
        out
    }

    /// A custom-format archive (version 1.14, as pg_dump 15 writes) with
    /// one table per entry of `tables`, its data compressed with zlib at
    /// `level` (0: not compressed) and cut into chunks of `chunk` bytes.
    fn archive(tables: &[Vec<u8>], level: i64, chunk: usize) -> Vec<u8> {
        let mut a = b"PGDMP".to_vec();
        a.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        int(&mut a, level);
        for v in [0, 30, 12, 2, 11, 126, 0] {
            int(&mut a, v);
        }
        for s in ["shop", "15.8", "15.8"] {
            string(&mut a, Some(s));
        }
        int(&mut a, tables.len() as i64);
        for (i, _) in tables.iter().enumerate() {
            int(&mut a, i as i64 + 1);
            int(&mut a, 1);
            string(&mut a, Some("0"));
            string(&mut a, Some("0"));
            string(&mut a, Some(&format!("table{i}")));
            string(&mut a, Some("TABLE DATA"));
            int(&mut a, 2);
            string(&mut a, Some(""));
            string(&mut a, Some(""));
            string(&mut a, Some(&format!("COPY public.table{i} FROM stdin;\n")));
            string(&mut a, Some("public"));
            string(&mut a, Some(""));
            string(&mut a, Some(""));
            string(&mut a, Some("postgres"));
            string(&mut a, Some("false"));
            string(&mut a, None);
            a.push(1); // offset not set (written to a pipe)
            a.extend_from_slice(&[0; 8]);
        }
        for (i, data) in tables.iter().enumerate() {
            a.push(BLOCK_DATA);
            int(&mut a, i as i64 + 1);
            let compressed = if level == 0 {
                data.clone()
            } else {
                let mut z = flate2::write::ZlibEncoder::new(
                    Vec::new(),
                    flate2::Compression::new(level as u32),
                );
                z.write_all(data).unwrap();
                z.finish().unwrap()
            };
            for piece in compressed.chunks(chunk) {
                int(&mut a, piece.len() as i64);
                a.extend_from_slice(piece);
            }
            int(&mut a, 0);
        }
        a
    }

    fn unpack(input: &[u8]) -> (Unpacked, Vec<u8>, Vec<u8>) {
        let mut content = Vec::new();
        let mut teed = Vec::new();
        let unpacked = unpack_pg_custom(
            &mut io::Cursor::new(input),
            &mut |piece| {
                content.extend_from_slice(&piece);
                true
            },
            &mut |read| teed.extend_from_slice(read),
        )
        .unwrap();
        (unpacked, content, teed)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn zlib_data_blocks_unpack_and_rebuild_exactly() {
        let tables = vec![
            rows(0, 60_000, 1),
            rows(1, 10, 2),
            Vec::new(),
            rows(3, 5_000, 3),
        ];
        for (level, chunk) in [(-1, 4096), (6, 4096), (1, 1000), (9, 65536)] {
            let level = if level < 0 { 6 } else { level };
            let input = archive(&tables, level, chunk);
            let (unpacked, content, teed) = unpack(&input);
            assert_eq!(teed, input, "every byte read goes to the tee");
            assert_eq!(
                unpacked.integrity,
                Integrity::Whole { members: 4 },
                "level {level}"
            );
            assert!(unpacked.recipe.unpacks());
            assert_eq!(unpacked.passed_through, 0);
            // The table data is in the content as it is, to be deduplicated.
            for table in tables.iter().filter(|t| !t.is_empty()) {
                assert!(contains(&content, &table[..table.len().min(4000)]));
            }
            assert!(content.len() < input.len() + tables.iter().map(Vec::len).sum::<usize>());
            for piece in [1, 4093, 1 << 20] {
                assert!(
                    rebuild(&unpacked.recipe, &content, piece).unwrap() == input,
                    "level {level}, chunk {chunk}, piece {piece}"
                );
            }
        }
    }

    #[test]
    fn an_archive_that_is_not_compressed_passes_through() {
        let input = archive(&[rows(0, 1000, 1)], 0, 4096);
        let (unpacked, content, _) = unpack(&input);
        assert!(!unpacked.recipe.unpacks());
        assert_eq!(content, input);
    }

    #[test]
    fn cut_and_damaged_archives_are_stored_exactly_and_not_called_whole() {
        let input = archive(&[rows(0, 30_000, 4), rows(1, 30_000, 5)], 6, 4096);
        for cut in [
            3,
            40,
            300,
            input.len() / 3,
            input.len() / 2 + 1,
            input.len() - 3,
        ] {
            let part = &input[..cut];
            let (unpacked, content, _) = unpack(part);
            assert!(
                !matches!(unpacked.integrity, Integrity::Whole { .. }),
                "cut at {cut}"
            );
            assert!(rebuild(&unpacked.recipe, &content, 777).unwrap() == part);
        }
        // A flipped bit inside each table's compressed data, and one in the
        // last table's checksum.
        for at in [700, input.len() / 2 + 1000, input.len() - 7] {
            let mut bad = input.clone();
            bad[at] ^= 0x10;
            let (unpacked, content, _) = unpack(&bad);
            assert!(
                !matches!(unpacked.integrity, Integrity::Whole { .. }),
                "flipped at {at}"
            );
            assert!(rebuild(&unpacked.recipe, &content, 4096).unwrap() == bad);
        }
        // A chunk length pg_dump never writes stops the walk; the rest is
        // stored as it came.
        let mut odd = input.clone();
        let pos = odd
            .windows(5)
            .position(|w| w == [0, 0, 16, 0, 0])
            .expect("a 4096-byte chunk length");
        odd[pos + 4] = 0x40; // 1 GiB
        let (unpacked, content, _) = unpack(&odd);
        assert!(matches!(
            unpacked.integrity,
            Integrity::Unknown(_) | Integrity::Broken(_)
        ));
        assert!(rebuild(&unpacked.recipe, &content, 4096).unwrap() == odd);
    }

    #[test]
    fn hostile_chunking_is_refused() {
        let input = archive(&[rows(0, 20_000, 6)], 6, 4096);
        let (unpacked, content, _) = unpack(&input);
        let mut recipe = unpacked.recipe.clone();
        // Chunks longer than the original.
        for op in &mut recipe.ops {
            if let Op::Chunked { runs, .. } = op {
                runs.push(super::super::Run {
                    len: 4096,
                    count: u64::MAX,
                });
            }
        }
        assert!(Rebuilder::new(recipe, content.len() as u64).is_err());
        // A chunk length that cannot be written in its integer size.
        let mut recipe = unpacked.recipe.clone();
        for op in &mut recipe.ops {
            if let Op::Chunked { int_size, .. } = op {
                *int_size = 1;
            }
        }
        assert!(Rebuilder::new(recipe, content.len() as u64).is_err());
        // Fewer chunks than the bytes they must hold.
        let mut recipe = unpacked.recipe.clone();
        for op in &mut recipe.ops {
            if let Op::Chunked { runs, .. } = op {
                runs.pop();
            }
        }
        assert!(rebuild(&recipe, &content, 4096).is_err());
        // Chunks inside chunks.
        let mut recipe = unpacked.recipe.clone();
        let at = recipe
            .ops
            .iter()
            .position(|op| matches!(op, Op::Chunked { .. }))
            .unwrap();
        let chunked = recipe.ops[at].clone();
        recipe.ops.insert(at + 1, chunked);
        assert!(rebuild(&recipe, &content, 4096).is_err());
    }

    #[test]
    fn a_stopped_reader_ends_the_unpacking() {
        let input = archive(&[rows(0, 50_000, 7)], 6, 4096);
        let err = unpack_pg_custom(&mut io::Cursor::new(&input), &mut |_| false, &mut |_| {})
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
