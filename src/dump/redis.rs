//! Redis RDB files (`redis-cli --rdb`, `BGSAVE`'s dump.rdb): they start
//! with `REDIS` and a four-digit version and end with the EOF opcode and
//! a CRC-64 of everything before it.

use std::io::{self, BufRead};

use super::Verdict;

/// The EOF opcode.
const EOF: u8 = 0xff;

/// Bytes held back from the checksum: the checksum, the end mark, and
/// the EOF opcode before them.
const HELD: usize = 1 + 8 + MARK;

/// Length of the end mark of a diskless transfer.
const MARK: usize = 40;

/// RDB versions from 5 on end with a checksum.
const FIRST_WITH_CHECKSUM: u32 = 5;

/// Whether `head` starts like an RDB file.
pub(crate) fn is_rdb(head: &[u8]) -> bool {
    head.len() >= 9 && head.starts_with(b"REDIS") && head[5..9].iter().all(u8::is_ascii_digit)
}

/// Checks an RDB stream: its header, the EOF opcode as the last byte
/// before the checksum, and the checksum (CRC-64/Jones, as Redis computes
/// it) over everything before the checksum. A checksum of zero means the
/// server has `rdbchecksum no`; then only the opcode is checked.
pub(crate) fn check(mut reader: impl BufRead) -> io::Result<Verdict> {
    let mut header = [0u8; 9];
    if let Err(e) = reader.read_exact(&mut header) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(Verdict::incomplete(
                "redis-rdb",
                "shorter than an RDB header",
            )),
            _ => Err(e),
        };
    }
    if !is_rdb(&header) {
        return Ok(Verdict::incomplete(
            "redis-rdb",
            "it does not start with REDIS and a version",
        ));
    }
    let version: u32 = std::str::from_utf8(&header[5..9])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut crc = Crc64::default();
    crc.update(&header);
    // The last bytes seen are held back: they may be the checksum, and
    // after it the 40-character end mark `redis-cli --rdb -` copies to its
    // output from a diskless transfer.
    let mut held: Vec<u8> = Vec::with_capacity(2 * HELD);
    let mut total = header.len() as u64;
    super::for_each_block(&mut reader, |block| {
        total += block.len() as u64;
        if block.len() >= HELD {
            // A long block replaces what is held rather than pass through it.
            crc.update(&held);
            crc.update(&block[..block.len() - HELD]);
            held.clear();
            held.extend_from_slice(&block[block.len() - HELD..]);
            return;
        }
        held.extend_from_slice(block);
        if held.len() > HELD {
            let release = held.len() - HELD;
            crc.update(&held[..release]);
            held.drain(..release);
        }
    })?;
    let format = "redis-rdb";
    // Without the end mark the checksum is last; with it, 40 bytes earlier.
    let marked = held.len() >= 49 && held[held.len() - MARK..].iter().all(u8::is_ascii_hexdigit);
    let body_end = held.len() - if marked { MARK } else { 0 };
    let note = if marked {
        " (followed by redis-cli's diskless end mark)"
    } else {
        ""
    };
    if version < FIRST_WITH_CHECKSUM {
        return Ok(if body_end > 0 && held[body_end - 1] == EOF {
            Verdict::complete(
                format,
                format!("RDB version {version} (no checksum) ends with its EOF opcode"),
            )
        } else {
            Verdict::incomplete(
                format,
                "the stream does not end with the RDB EOF opcode (cut short)",
            )
        });
    }
    if body_end < 9 || total < 18 || held[body_end - 9] != EOF {
        return Ok(Verdict::incomplete(
            format,
            "the stream does not end with the RDB EOF opcode and checksum (the save was cut short)",
        ));
    }
    crc.update(&held[..body_end - 8]);
    let stored = u64::from_le_bytes(
        held[body_end - 8..body_end]
            .try_into()
            .expect("eight bytes"),
    );
    if stored == 0 {
        return Ok(Verdict::complete(
            format,
            format!(
                "RDB version {version} ends with its EOF opcode{note} (checksum disabled by rdbchecksum no)"
            ),
        ));
    }
    let computed = crc.finish();
    Ok(if computed == stored {
        Verdict::complete(
            format,
            format!("RDB version {version}: EOF opcode and CRC-64 match{note}"),
        )
    } else {
        Verdict::incomplete(
            format,
            format!(
                "its CRC-64 does not match (stored {stored:016x}, computed {computed:016x}): the stream is damaged or cut"
            ),
        )
    })
}

/// CRC-64/Jones as Redis computes it (reflected, initial value and final
/// xor 0), a table of 8 × 256 entries for slicing by 8.
#[derive(Default)]
struct Crc64 {
    value: u64,
}

/// The Jones polynomial, reflected.
const POLY: u64 = 0x95ac_9329_ac4b_c9b5;

static TABLES: std::sync::LazyLock<[[u64; 256]; 8]> = std::sync::LazyLock::new(|| {
    let mut t = [[0u64; 256]; 8];
    for (i, entry) in t[0].iter_mut().enumerate() {
        let mut crc = i as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
        *entry = crc;
    }
    for i in 0..256 {
        for k in 1..8 {
            let prev = t[k - 1][i];
            t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
        }
    }
    t
});

impl Crc64 {
    fn update(&mut self, data: &[u8]) {
        let t = &*TABLES;
        let mut crc = self.value;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let x = crc ^ u64::from_le_bytes(c.try_into().expect("eight bytes"));
            crc = t[7][(x & 0xff) as usize]
                ^ t[6][((x >> 8) & 0xff) as usize]
                ^ t[5][((x >> 16) & 0xff) as usize]
                ^ t[4][((x >> 24) & 0xff) as usize]
                ^ t[3][((x >> 32) & 0xff) as usize]
                ^ t[2][((x >> 40) & 0xff) as usize]
                ^ t[1][((x >> 48) & 0xff) as usize]
                ^ t[0][(x >> 56) as usize];
        }
        for &b in chunks.remainder() {
            crc = t[0][((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.value = crc;
    }

    fn finish(&self) -> u64 {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(data: &[u8]) -> u64 {
        let mut c = Crc64::default();
        c.update(data);
        c.finish()
    }

    #[test]
    fn crc64_matches_redis() {
        // Redis's own test vector (src/crc64.c).
        assert_eq!(crc(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        // Split anywhere, the same.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut c = Crc64::default();
        c.update(&data[..13]);
        c.update(&data[13..]);
        assert_eq!(c.finish(), crc(&data));
    }

    fn rdb(body: &[u8]) -> Vec<u8> {
        let mut out = b"REDIS0011".to_vec();
        out.extend_from_slice(body);
        out.push(EOF);
        let sum = crc(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    #[test]
    fn a_whole_rdb_passes_and_a_cut_or_flipped_one_does_not() {
        let good = rdb(&[0xfa, 3, b'a', b'b', b'c', 0, 0xfe, 0, 0, 1, b'k', 1, b'v']);
        assert!(check(&good[..]).unwrap().complete);
        for cut in [9, 12, good.len() - 9, good.len() - 1] {
            assert!(!check(&good[..cut]).unwrap().complete, "cut at {cut}");
        }
        let mut marked = good.clone();
        marked.extend_from_slice(&[b'a'; 40]);
        let verdict = check(&marked[..]).unwrap();
        assert!(
            verdict.complete && verdict.detail.contains("end mark"),
            "{verdict:?}"
        );
        let mut flipped = good.clone();
        flipped[11] ^= 1;
        assert!(!check(&flipped[..]).unwrap().complete);
        assert!(!check(&b"not an rdb at all"[..]).unwrap().complete);
    }
}
