//! What larder knows about dump formats.
//!
//! Compressed input defeats deduplication at every chunk size: one changed
//! row reshuffles every compressed byte after it. larder looks at the first
//! bytes of a stream and warns, naming the flag to change, when the dump is
//! already compressed. larder compresses every chunk itself, so an
//! uncompressed dump costs no extra space in the repository.

/// Returns a warning if `head` (the first bytes of a stream) shows a
/// compressed format.
pub fn inspect_head(head: &[u8]) -> Option<String> {
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
        "the input is a compressed pg_dump custom-format archive, which defeats deduplication: \
         every backup will store nearly all of it again; run pg_dump with -Z0 (or --compress=0) \
         and let larder compress each chunk"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
