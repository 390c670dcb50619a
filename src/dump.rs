//! What larder knows about dump formats: completeness checks run
//! alongside chunking (a bad dump never counts as a backup), and a warning
//! for input that is already compressed.
//!
//! Compressed input defeats deduplication at every chunk size: one changed
//! row reshuffles every compressed byte after it. larder looks at the first
//! bytes of a stream and warns, naming the flag to change, when the dump is
//! already compressed. larder compresses every chunk itself, so an
//! uncompressed dump costs no extra space in the repository.

use std::io::{self, BufRead, Read};

pub mod neo4j;
pub mod postgres;
pub mod redis;

/// The tag a snapshot of an incomplete dump carries (stored only with
/// `allow_incomplete`); retention never counts it as a good backup.
pub(crate) const INCOMPLETE_TAG: &str = "incomplete";

/// What a stream source is, as `--kind` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Told from the first bytes: a PostgreSQL, Redis or Neo4j dump is
    /// checked as one; anything else is stored as a plain stream.
    Auto,
    /// Any bytes; nothing is checked.
    Stream,
    /// `pg_dump` output: plain SQL or a custom-format archive.
    Postgres,
    /// A Redis RDB file.
    Redis,
    /// A Neo4j 5 dump.
    Neo4j,
}

impl Kind {
    /// The kinds a stream backup accepts, by name.
    pub const NAMES: [&str; 5] = ["auto", "stream", "postgres", "redis", "neo4j"];

    /// Parses a `--kind` name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "auto" => Kind::Auto,
            "stream" => Kind::Stream,
            "postgres" => Kind::Postgres,
            "redis" => Kind::Redis,
            "neo4j" => Kind::Neo4j,
            _ => return None,
        })
    }

    /// The name recorded in a snapshot (`auto` is recorded as what it
    /// found, see [`Verdict::kind`]).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Auto => "auto",
            Kind::Stream => "stream",
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
            Kind::Neo4j => "neo4j",
        }
    }
}

/// What a completeness check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The format checked, such as `postgres-custom` or `redis-rdb`.
    pub format: &'static str,
    /// Whether the dump is whole.
    pub complete: bool,
    /// Whether the format could be checked at all (an archive version
    /// newer than this build knows is stored unchecked, with a warning).
    pub checked: bool,
    /// What was checked, or what is missing.
    pub detail: String,
}

impl Verdict {
    pub(crate) fn complete(format: &'static str, detail: impl Into<String>) -> Verdict {
        Verdict {
            format,
            complete: true,
            checked: true,
            detail: detail.into(),
        }
    }

    pub(crate) fn incomplete(format: &'static str, detail: impl Into<String>) -> Verdict {
        Verdict {
            format,
            complete: false,
            checked: true,
            detail: detail.into(),
        }
    }

    pub(crate) fn unchecked(format: &'static str, detail: impl Into<String>) -> Verdict {
        Verdict {
            format,
            complete: true,
            checked: false,
            detail: detail.into(),
        }
    }

    /// A check that could not run to its end: the dump is not vouched for.
    pub(crate) fn failed_check(why: String) -> Verdict {
        Verdict {
            format: "unknown",
            complete: false,
            checked: true,
            detail: format!("the completeness check failed: {why}"),
        }
    }

    /// The source kind the format belongs to.
    pub fn kind(&self) -> &'static str {
        match self.format.split('-').next() {
            Some("postgres") => "postgres",
            Some("redis") => "redis",
            Some("neo4j") => "neo4j",
            _ => "stream",
        }
    }
}

/// Reads `reader` to its end, handing each buffered block to `each` where
/// it lies (a channel of blocks is read without copying).
fn for_each_block(mut reader: impl BufRead, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    loop {
        let n = match reader.fill_buf() {
            Ok([]) => return Ok(()),
            Ok(block) => {
                each(block);
                block.len()
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        reader.consume(n);
    }
}

/// Bytes looked at to tell formats apart.
const HEAD: usize = 64;

/// Checks a stream of kind `kind` read from `reader` to its end; `None`
/// when nothing is checked (`stream`, or `auto` on an unknown format).
/// Errors are the reader's own.
pub(crate) fn check(kind: Kind, mut reader: impl BufRead) -> io::Result<Option<Verdict>> {
    let mut head = Vec::with_capacity(HEAD);
    (&mut reader).take(HEAD as u64).read_to_end(&mut head)?;
    let custom = head.starts_with(b"PGDMP");
    let plain = postgres::is_plain(&head);
    let rdb = redis::is_rdb(&head);
    let neo4j_dump = head.starts_with(neo4j::MAGIC);
    let mut whole = io::Cursor::new(head).chain(reader);
    let verdict = match kind {
        Kind::Auto | Kind::Postgres if custom => Some(postgres::check_custom(&mut whole)?),
        Kind::Auto | Kind::Postgres if plain => Some(postgres::check_plain(&mut whole)?),
        Kind::Auto | Kind::Redis if rdb || kind == Kind::Redis => Some(redis::check(&mut whole)?),
        Kind::Auto | Kind::Neo4j if neo4j_dump || kind == Kind::Neo4j => {
            Some(neo4j::check(&mut whole)?)
        }
        Kind::Postgres => Some(Verdict::incomplete(
            "postgres",
            "the stream is neither a plain pg_dump script (it starts \"-- PostgreSQL database dump\") nor a custom-format archive (PGDMP)",
        )),
        Kind::Auto | Kind::Stream | Kind::Redis | Kind::Neo4j => None,
    };
    // Read to the end whatever the verdict: whoever feeds the check must
    // never block on one that stopped listening.
    for_each_block(&mut whole, |_| {})?;
    Ok(verdict)
}

/// Returns a warning if `head` (the first bytes of a stream) shows a
/// compressed format.
pub(crate) fn inspect_head(head: &[u8]) -> Option<String> {
    if let Some(warning) = inspect_pg_custom(head) {
        return Some(warning);
    }
    let format = if head.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz"
    } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        "bzip2"
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        "lz4"
    } else {
        return None;
    };
    Some(format!(
        "the input is {format}-compressed, which defeats deduplication: every backup will store \
         nearly all of it again; feed larder the uncompressed dump (drop the compressor from the \
         pipeline) and let larder compress each chunk"
    ))
}

/// PostgreSQL custom-format archives (`pg_dump -Fc`) start with `PGDMP`, the
/// archive version, int and offset sizes, the format byte, and then the
/// compression setting: before archive version 1.15 an integer level
/// (sign byte plus `int_size` little-endian bytes; -1 means the zlib
/// default), from 1.15 on one byte naming the algorithm (0 none).
fn inspect_pg_custom(head: &[u8]) -> Option<String> {
    let rest = head.strip_prefix(b"PGDMP")?;
    let (&major, &minor) = (rest.first()?, rest.get(1)?);
    let int_size = *rest.get(3)? as usize;
    let compressed = if (major, minor) >= (1, 15) {
        *rest.get(6)? != 0
    } else {
        let sign = *rest.get(6)?;
        let bytes = rest.get(7..7 + int_size)?;
        let magnitude = bytes
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        sign != 0 || magnitude != 0
    };
    compressed.then(|| {
        "the input is a compressed pg_dump custom-format archive that is not unpacked (larder \
         unpacks zlib-compressed archives, pg_dump's default, unless --no-unpack is given or the \
         repository is of format 1), which defeats deduplication: every backup will store \
         nearly all of it again; run pg_dump with -Z0 (or --compress=0) and let larder compress \
         each chunk"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_from_the_first_bytes() {
        let plain = b"--\n-- PostgreSQL database dump\n--\n\n--\n-- PostgreSQL database dump complete\n--\n\n";
        let v = check(Kind::Auto, &plain[..]).unwrap().unwrap();
        assert_eq!(
            (v.format, v.complete, v.kind()),
            ("postgres-plain", true, "postgres")
        );
        assert_eq!(check(Kind::Auto, &b"just bytes"[..]).unwrap(), None);
        assert_eq!(check(Kind::Stream, &plain[..]).unwrap(), None);
        let v = check(Kind::Postgres, &b"just bytes"[..]).unwrap().unwrap();
        assert!(!v.complete);
        let v = check(Kind::Redis, &b"just bytes"[..]).unwrap().unwrap();
        assert!(!v.complete);
        let v = check(Kind::Auto, &b"REDIS0011\xff"[..]).unwrap().unwrap();
        assert_eq!((v.format, v.complete), ("redis-rdb", false));
    }

    fn pg_header(major: u8, minor: u8, compression: &[u8]) -> Vec<u8> {
        let mut h = b"PGDMP".to_vec();
        h.extend_from_slice(&[major, minor, 0, 4, 8, 1]);
        h.extend_from_slice(compression);
        h
    }

    #[test]
    fn compressed_pg_dump_archives_are_flagged() {
        // PostgreSQL 15 (archive 1.14): default compression -1.
        assert!(
            inspect_head(&pg_header(1, 14, &[1, 1, 0, 0, 0]))
                .unwrap()
                .contains("-Z0")
        );
        // Level 6.
        assert!(inspect_head(&pg_header(1, 14, &[0, 6, 0, 0, 0])).is_some());
        // -Z0.
        assert!(inspect_head(&pg_header(1, 14, &[0, 0, 0, 0, 0])).is_none());
        // PostgreSQL 16+ (archive 1.15): algorithm byte.
        assert!(inspect_head(&pg_header(1, 15, &[1])).is_some());
        assert!(inspect_head(&pg_header(1, 16, &[0])).is_none());
    }

    #[test]
    fn generic_compressors_are_flagged_and_text_is_not() {
        assert!(inspect_head(&[0x1f, 0x8b, 8, 0]).unwrap().contains("gzip"));
        assert!(
            inspect_head(&[0x28, 0xb5, 0x2f, 0xfd, 0])
                .unwrap()
                .contains("zstd")
        );
        assert!(inspect_head(b"--\n-- PostgreSQL database dump\n").is_none());
        assert!(inspect_head(b"REDIS0011").is_none());
        assert!(inspect_head(b"").is_none());
    }
}
