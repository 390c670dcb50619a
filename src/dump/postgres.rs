//! PostgreSQL dumps: the plain-SQL trailer and the custom-format archive
//! (`pg_dump -Fc`), whose header and table of contents are parsed and
//! whose every announced data block must be present, whole, to the end.

use std::io::{self, BufRead, Read};

use super::Verdict;

/// The comment `pg_dump` writes last in a plain dump (`pg_dumpall`: the
/// cluster variant).
const TRAILERS: [&[u8]; 2] = [
    b"-- PostgreSQL database dump complete",
    b"-- PostgreSQL database cluster dump complete",
];

/// Whether `head` starts like a plain `pg_dump` or `pg_dumpall` script.
pub(crate) fn is_plain(head: &[u8]) -> bool {
    head.starts_with(b"--\n-- PostgreSQL database dump")
        || head.starts_with(b"--\n-- PostgreSQL database cluster dump")
}

/// How much of a plain dump's start is kept to find `\restrict`.
const START: usize = 4 << 10;

/// How much of a plain dump's end is kept to find the trailer.
const TAIL: usize = 64 << 10;

/// Checks a plain dump: it ends with the "dump complete" comment, followed
/// by nothing but blank lines, comment lines and, when the dump began with
/// `\restrict KEY` (pg_dump from 17.6, 16.10, 15.14 on), the whole line
/// `\unrestrict KEY`.
pub(crate) fn check_plain(reader: impl BufRead) -> io::Result<Verdict> {
    let mut tail: Vec<u8> = Vec::with_capacity(2 * TAIL);
    let mut start: Vec<u8> = Vec::new();
    super::for_each_block(reader, |block| {
        if start.len() < START {
            let more = block.len().min(START - start.len());
            start.extend_from_slice(&block[..more]);
        }
        // Only the last TAIL bytes are ever looked at: a long block
        // replaces the tail rather than passing through it.
        if block.len() >= TAIL {
            tail.clear();
            tail.extend_from_slice(&block[block.len() - TAIL..]);
        } else {
            tail.extend_from_slice(block);
            if tail.len() > 2 * TAIL {
                tail.drain(..tail.len() - TAIL);
            }
        }
    })?;
    // The same window whatever the read sizes were: the last TAIL bytes.
    if tail.len() > TAIL {
        tail.drain(..tail.len() - TAIL);
    }
    let found = TRAILERS
        .iter()
        .filter_map(|t| find_last(&tail, t).map(|at| at + t.len()))
        .max();
    let Some(end) = found else {
        return Ok(Verdict::incomplete(
            "postgres-plain",
            "the dump does not end with pg_dump's \"PostgreSQL database dump complete\" comment (pg_dump stopped early, or its output was cut)",
        ));
    };
    // `\restrict KEY` comes within the first lines; only a whole line counts.
    let mut start_lines: Vec<&[u8]> = start.split(|b| *b == b'\n').collect();
    start_lines.pop();
    let key = start_lines
        .iter()
        .find_map(|line| line.strip_prefix(b"\\restrict "));
    let after = &tail[end..];
    let unrestrict = key.as_ref().map(|k| [&b"\\unrestrict "[..], k].concat());
    let mut unrestricted = false;
    let lines: Vec<&[u8]> = after.split(|b| *b == b'\n').collect();
    let clean = lines.iter().enumerate().all(|(i, line)| {
        let whole = i + 1 < lines.len();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if unrestrict.as_deref() == Some(line) && whole {
            unrestricted = true;
            return true;
        }
        line.iter().all(u8::is_ascii_whitespace) || line.starts_with(b"--")
    });
    if key.is_some() && !unrestricted {
        return Ok(Verdict::incomplete(
            "postgres-plain",
            "the dump began with \\restrict but does not end with its \\unrestrict line (its output was cut)",
        ));
    }
    Ok(if clean {
        Verdict::complete("postgres-plain", "ends with pg_dump's completion comment")
    } else {
        Verdict::incomplete(
            "postgres-plain",
            "more SQL follows pg_dump's completion comment (two dumps concatenated, or a damaged stream)",
        )
    })
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Archive versions this check knows (1.10 is PostgreSQL 9.0's; 1.16 is
/// PostgreSQL 17's).
const OLDEST: (u8, u8) = (1, 10);
const NEWEST: (u8, u8) = (1, 16);

/// Whether `head` (the first 16 bytes or more) starts a custom-format
/// archive whose data blocks are zlib streams.
pub(crate) fn is_custom_zlib(head: &[u8]) -> bool {
    let mut a = Archive::custom(head);
    matches!(a.zlib_header(), Ok(true))
}

/// Archive formats in the header.
const FORMAT_CUSTOM: u8 = 1;
const FORMAT_DIRECTORY: u8 = 5;

/// `ReadOffset` flags.
const OFFSET_NO_DATA: u8 = 3;
/// Data block types.
const BLOCK_DATA: u8 = 1;
const BLOCK_BLOBS: u8 = 3;

/// Longest TOC string read into memory; longer ones (function bodies) are
/// skipped.
const KEEP_STR: usize = 256;

/// Most TOC entries accepted (a database of a few million objects).
const MAX_TOC_ENTRIES: i64 = 50_000_000;

/// Checks a custom-format archive (`pg_dump -Fc`, written to a pipe or a
/// file): header and table of contents parse, and every entry the table
/// announces data for has its data block, ended by its terminating
/// zero-length chunk, before the stream ends.
pub(crate) fn check_custom(reader: impl Read) -> io::Result<Verdict> {
    let mut a = Archive::custom(reader);
    match a.check() {
        Ok(verdict) => Ok(verdict),
        Err(Broken::Io(e)) => Err(e),
        Err(Broken::Incomplete(why)) => Ok(Verdict::incomplete("postgres-custom", why)),
    }
}

pub(crate) enum Broken {
    Io(io::Error),
    Incomplete(String),
}

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Broken::Incomplete("the archive ends before its table of contents does".into())
        } else {
            Broken::Io(e)
        }
    }
}

pub(crate) struct Entry {
    pub dump_id: i64,
    pub desc: String,
    pub tag: String,
    namespace: String,
    /// Directory format: the file holding its data.
    file: Option<String>,
}

pub(crate) struct Archive<R> {
    pub r: R,
    /// The archive format expected: [`FORMAT_CUSTOM`] or [`FORMAT_DIRECTORY`].
    format: u8,
    pub int_size: usize,
    off_size: usize,
    version: (u8, u8),
    /// Whether the header says data blocks are zlib streams.
    pub zlib: bool,
}

/// What reading the header and table of contents gave.
pub(crate) enum Toc {
    /// A version this build cannot check.
    Unchecked(Verdict),
    /// The number of entries, and those that announce data.
    Entries(i64, Vec<Entry>),
}

impl<R: Read> Archive<R> {
    /// A reader of a custom-format archive.
    pub fn custom(r: R) -> Archive<R> {
        Archive {
            r,
            format: FORMAT_CUSTOM,
            int_size: 4,
            off_size: 8,
            version: (0, 0),
            zlib: false,
        }
    }

    fn check(&mut self) -> Result<Verdict, Broken> {
        let (count, with_data) = match self.toc()? {
            Toc::Unchecked(verdict) => return Ok(verdict),
            Toc::Entries(count, with_data) => (count, with_data),
        };
        let by_id: std::collections::HashMap<i64, &Entry> =
            with_data.iter().map(|e| (e.dump_id, e)).collect();
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut kind = [0u8; 1];
            match self.r.read(&mut kind) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Broken::Io(e)),
            }
            let dump_id = self.int().map_err(|_| self.cut(None))?;
            let entry = by_id.get(&dump_id).copied();
            match kind[0] {
                BLOCK_DATA => self.chunks().map_err(|_| self.cut(entry))?,
                BLOCK_BLOBS => loop {
                    let oid = self.int().map_err(|_| self.cut(entry))?;
                    if oid == 0 {
                        break;
                    }
                    self.chunks().map_err(|_| self.cut(entry))?;
                },
                other => {
                    return Err(Broken::Incomplete(format!(
                        "a data block has unknown type {other} (damaged archive)"
                    )));
                }
            }
            seen.insert(dump_id);
        }
        let missing: Vec<&Entry> = with_data
            .iter()
            .filter(|e| !seen.contains(&e.dump_id))
            .collect();
        if let Some(first) = missing.first() {
            return Err(Broken::Incomplete(format!(
                "{} of the {} data blocks its table of contents announces are missing, the first being {} {} (pg_dump stopped early, or its output was cut)",
                missing.len(),
                with_data.len(),
                first.desc,
                first.tag
            )));
        }
        Ok(Verdict::complete(
            "postgres-custom",
            format!(
                "archive {}.{}: {count} table of contents entries, all {} data blocks present",
                self.version.0,
                self.version.1,
                with_data.len()
            ),
        ))
    }

    /// Reads the header up to its compression field; whether the data
    /// blocks are zlib streams.
    fn zlib_header(&mut self) -> io::Result<bool> {
        let mut magic = [0u8; 5];
        self.r.read_exact(&mut magic)?;
        let (major, minor, _rev) = (self.byte()?, self.byte()?, self.byte()?);
        self.version = (major, minor);
        self.int_size = usize::from(self.byte()?);
        let _off_size = self.byte()?;
        let format = self.byte()?;
        if &magic != b"PGDMP"
            || self.version < OLDEST
            || self.version > NEWEST
            || !(1..=8).contains(&self.int_size)
            || format != FORMAT_CUSTOM
        {
            return Ok(false);
        }
        Ok(if self.version >= (1, 15) {
            self.byte()? == 1
        } else {
            self.int()? != 0
        })
    }

    /// Reads the header and the table of contents.
    pub fn toc(&mut self) -> Result<Toc, Broken> {
        let mut magic = [0u8; 5];
        self.r.read_exact(&mut magic)?;
        if &magic != b"PGDMP" {
            return Err(Broken::Incomplete("it does not start with PGDMP".into()));
        }
        let (major, minor, _rev) = (self.byte()?, self.byte()?, self.byte()?);
        self.version = (major, minor);
        if self.version < OLDEST || self.version > NEWEST {
            return Ok(Toc::Unchecked(Verdict::unchecked(
                self.name(),
                format!(
                    "archive version {major}.{minor} is not one this larder can check (it knows {}.{} to {}.{})",
                    OLDEST.0, OLDEST.1, NEWEST.0, NEWEST.1
                ),
            )));
        }
        self.int_size = usize::from(self.byte()?);
        self.off_size = usize::from(self.byte()?);
        if !(1..=8).contains(&self.int_size) || !(1..=8).contains(&self.off_size) {
            return Err(Broken::Incomplete(format!(
                "its header gives impossible integer sizes ({} and {})",
                self.int_size, self.off_size
            )));
        }
        let format = self.byte()?;
        // A directory dump's toc.dat says 3 (pg_dump writes it through the
        // tar format's header code), 5 in some versions.
        let expected = if self.format == FORMAT_DIRECTORY {
            format == 3 || format == FORMAT_DIRECTORY
        } else {
            format == self.format
        };
        if !expected {
            return Err(Broken::Incomplete(format!(
                "its header names archive format {format}, not the {} format ({})",
                self.name().trim_start_matches("postgres-"),
                self.format
            )));
        }
        // The compression: an algorithm from 1.15 on (1 is gzip), a zlib
        // level before (0 is none, -1 the default).
        self.zlib = if self.version >= (1, 15) {
            self.byte()? == 1
        } else {
            self.int()? != 0
        };
        for _ in 0..7 {
            self.int()?; // creation time
        }
        self.string()?; // database name
        self.string()?; // server version
        self.string()?; // pg_dump version

        let count = self.int()?;
        if !(0..=MAX_TOC_ENTRIES).contains(&count) {
            return Err(Broken::Incomplete(format!(
                "its table of contents claims {count} entries"
            )));
        }
        let mut with_data: Vec<Entry> = Vec::new();
        for _ in 0..count {
            if let Some(entry) = self.toc_entry()? {
                with_data.push(entry);
            }
        }
        Ok(Toc::Entries(count, with_data))
    }

    /// One table of contents entry; `Some` if it announces data.
    fn toc_entry(&mut self) -> Result<Option<Entry>, Broken> {
        let v = self.version;
        let dump_id = self.int()?;
        let _had_dumper = self.int()?;
        self.string()?; // table oid
        self.string()?; // oid
        let tag = self.string()?.unwrap_or_default();
        let desc = self.string()?.unwrap_or_default();
        if v >= (1, 11) {
            self.int()?; // section
        }
        self.string()?; // definition
        self.string()?; // drop statement
        self.string()?; // copy statement
        let namespace = self.string()?.unwrap_or_default();
        self.string()?; // tablespace
        if v >= (1, 14) {
            self.string()?; // table access method
        }
        if v >= (1, 16) {
            self.int()?; // relkind
        }
        self.string()?; // owner
        self.string()?; // "with oids"
        while self.string()?.is_some() {} // dependencies
        if self.format == FORMAT_DIRECTORY {
            // The data file's name; empty for entries without data.
            let file = self.string()?.filter(|f| !f.is_empty());
            return Ok(file.map(|file| Entry {
                dump_id,
                desc,
                tag,
                namespace,
                file: Some(file),
            }));
        }
        let flag = self.byte()?;
        let mut offset = [0u8; 8];
        self.r.read_exact(&mut offset[..self.off_size])?;
        Ok((flag != OFFSET_NO_DATA).then_some(Entry {
            dump_id,
            desc,
            tag,
            namespace,
            file: None,
        }))
    }

    /// Data chunks up to the zero-length one that ends them.
    fn chunks(&mut self) -> io::Result<()> {
        loop {
            let len = self.int()?;
            if len == 0 {
                return Ok(());
            }
            let len = u64::try_from(len).map_err(|_| io::Error::other("negative chunk length"))?;
            let skipped = io::copy(&mut (&mut self.r).take(len), &mut io::sink())?;
            if skipped != len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn name(&self) -> &'static str {
        if self.format == FORMAT_DIRECTORY {
            "postgres-directory"
        } else {
            "postgres-custom"
        }
    }

    fn cut(&self, entry: Option<&Entry>) -> Broken {
        Broken::Incomplete(match entry {
            Some(e) => format!(
                "the archive ends inside the data of {} {} (pg_dump stopped early, or its output was cut)",
                e.desc, e.tag
            ),
            None => "the archive ends inside a data block (pg_dump stopped early, or its output was cut)".into(),
        })
    }

    pub fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.r.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    pub fn int(&mut self) -> io::Result<i64> {
        let sign = self.byte()?;
        let mut bytes = [0u8; 8];
        self.r.read_exact(&mut bytes[..self.int_size])?;
        let magnitude = i64::try_from(u64::from_le_bytes(bytes))
            .map_err(|_| io::Error::other("integer out of range"))?;
        Ok(if sign == 0 { magnitude } else { -magnitude })
    }

    /// `ReadStr`: a length (negative for NULL), then the bytes. Only the
    /// first [`KEEP_STR`] bytes are kept.
    fn string(&mut self) -> io::Result<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as u64;
        let keep = len.min(KEEP_STR as u64) as usize;
        let mut kept = vec![0u8; keep];
        self.r.read_exact(&mut kept)?;
        let rest = len - keep as u64;
        if rest > 0 && io::copy(&mut (&mut self.r).take(rest), &mut io::sink())? != rest {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some(String::from_utf8_lossy(&kept).into_owned()))
    }
}

/// What an archive's table of contents lists, for a restore drill to
/// compare with what a restore produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableOfContents {
    /// Entries in the table of contents.
    pub entries: u64,
    /// The tables it holds rows for (its `TABLE DATA` entries), as
    /// `schema.table`, in archive order.
    pub table_data: Vec<String>,
}

/// Reads the header and table of contents of a custom-format archive, or
/// with `directory` of a directory dump's `toc.dat`. The outer error is the
/// reader's; the inner one says why the archive cannot be read (cut,
/// damaged, or a version this build does not know).
pub(crate) fn read_toc(
    reader: impl Read,
    directory: bool,
) -> io::Result<std::result::Result<TableOfContents, String>> {
    let mut a = Archive {
        r: reader,
        format: if directory {
            FORMAT_DIRECTORY
        } else {
            FORMAT_CUSTOM
        },
        int_size: 4,
        off_size: 8,
        version: (0, 0),
        zlib: false,
    };
    match a.toc() {
        Ok(Toc::Entries(count, with_data)) => Ok(Ok(TableOfContents {
            entries: count as u64,
            table_data: with_data
                .into_iter()
                .filter(|e| e.desc == "TABLE DATA")
                .map(|e| format!("{}.{}", e.namespace, e.tag))
                .collect(),
        })),
        Ok(Toc::Unchecked(verdict)) => Ok(Err(verdict.detail)),
        Err(Broken::Io(e)) => Err(e),
        Err(Broken::Incomplete(why)) => Ok(Err(why)),
    }
}

/// Checks a directory-format dump (`pg_dump -Fd`): `toc.dat`, which
/// pg_dump writes last, exists and parses, and every data file its table
/// of contents names is present (compressed or not).
pub(crate) fn check_directory(dir: &std::path::Path) -> io::Result<Verdict> {
    let name = "postgres-directory";
    let toc = match std::fs::File::open(dir.join("toc.dat")) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Verdict::incomplete(
                name,
                format!(
                    "{} has no toc.dat (pg_dump writes it last: it stopped early, or this is not a directory-format dump)",
                    dir.display()
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let mut a = Archive {
        r: io::BufReader::new(toc),
        format: FORMAT_DIRECTORY,
        int_size: 4,
        off_size: 8,
        version: (0, 0),
        zlib: false,
    };
    let (count, with_data) = match a.toc() {
        Ok(Toc::Unchecked(verdict)) => return Ok(verdict),
        Ok(Toc::Entries(count, with_data)) => (count, with_data),
        Err(Broken::Io(e)) => return Err(e),
        Err(Broken::Incomplete(why)) => {
            return Ok(Verdict::incomplete(name, format!("toc.dat: {why}")));
        }
    };
    let present = |file: &str| {
        ["", ".gz", ".lz4", ".zst"]
            .iter()
            .any(|suffix| dir.join(format!("{file}{suffix}")).is_file())
    };
    let missing: Vec<&Entry> = with_data
        .iter()
        .filter(|e| !e.file.as_deref().is_some_and(present))
        .collect();
    if let Some(first) = missing.first() {
        return Ok(Verdict::incomplete(
            name,
            format!(
                "{} of the {} data files toc.dat names are missing, the first being {} for {} {}",
                missing.len(),
                with_data.len(),
                first.file.as_deref().unwrap_or("?"),
                first.desc,
                first.tag
            ),
        ));
    }
    Ok(Verdict::complete(
        name,
        format!(
            "archive {}.{}: {count} table of contents entries, all {} data files present",
            a.version.0,
            a.version.1,
            with_data.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_dump_is_complete_only_with_its_trailer() {
        let good = b"--\n-- PostgreSQL database dump\n--\n\nCREATE TABLE t ();\n\n--\n-- PostgreSQL database dump complete\n--\n\n";
        assert!(check_plain(&good[..]).unwrap().complete);
        let mut restricted = b"\\restrict abc123\n".to_vec();
        restricted.extend_from_slice(good);
        restricted.extend_from_slice(b"\\unrestrict abc123\n\n");
        assert!(check_plain(&restricted[..]).unwrap().complete);
        for cut in [3, 12, 19] {
            let cut = &restricted[..restricted.len() - cut];
            assert!(!check_plain(cut).unwrap().complete, "cut {cut:?}");
        }
        let cut = &good[..good.len() - 30];
        let verdict = check_plain(cut).unwrap();
        assert!(!verdict.complete);
        assert!(
            verdict.detail.contains("dump complete"),
            "{}",
            verdict.detail
        );
        let mut doubled = good.to_vec();
        doubled.extend_from_slice(b"CREATE TABLE u ();\n");
        assert!(!check_plain(&doubled[..]).unwrap().complete);
    }

    #[test]
    fn a_long_plain_dump_is_judged_by_its_end_whatever_the_read_sizes() {
        let trailer = b"\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict k1\n";
        let mut dump = b"\\restrict k1\n--\n-- PostgreSQL database dump\n--\n".to_vec();
        while dump.len() < 700 << 10 {
            dump.extend_from_slice(b"COPY t (a) FROM stdin;\n1\n\\.\n");
        }
        dump.extend_from_slice(trailer);
        // Whole, and in reads shorter and longer than the tail kept.
        assert!(check_plain(&dump[..]).unwrap().complete);
        for piece in [TAIL - 1, TAIL, TAIL + 7, 3 * TAIL + 1] {
            let reads = io::BufReader::with_capacity(piece, Pieces(&dump, piece));
            assert!(check_plain(reads).unwrap().complete, "reads of {piece}");
        }
        let cut = &dump[..dump.len() - trailer.len() + 5];
        assert!(!check_plain(cut).unwrap().complete);
        // Text after the trailer that is not a comment makes it incomplete,
        // however long.
        let mut more = dump.clone();
        more.extend(std::iter::repeat_n(b'x', 3 * TAIL));
        assert!(!check_plain(&more[..]).unwrap().complete);
        // The trailer is looked for in the last TAIL bytes, whatever the
        // read sizes: one followed by more comment lines than that is not
        // seen, however the dump is read.
        let mut commented = dump.clone();
        while commented.len() < dump.len() + TAIL + 100 {
            commented.extend_from_slice(b"-- a comment\n");
        }
        for piece in [TAIL / 2, TAIL - 1, TAIL + 7, 3 * TAIL + 1] {
            let reads = io::BufReader::with_capacity(piece, Pieces(&commented, piece));
            assert!(!check_plain(reads).unwrap().complete, "reads of {piece}");
        }
    }

    /// Reads `.0` in pieces of `.1` bytes.
    struct Pieces<'a>(&'a [u8], usize);

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
}
