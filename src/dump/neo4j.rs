//! Neo4j dumps (`neo4j-admin database dump`, Neo4j 5): the magic `DZV1`,
//! then a zstd stream that must decode to its end.

use std::io::{self, Read};

use super::Verdict;

/// The magic of a zstd-compressed Neo4j dump.
pub(crate) const MAGIC: &[u8; 4] = b"DZV1";

/// Checks a Neo4j dump: the magic, then zstd frames that decode cleanly to
/// the end of the stream (a cut or damaged stream fails to decode).
pub(crate) fn check(mut reader: impl Read) -> io::Result<Verdict> {
    let format = "neo4j-dump";
    let mut magic = [0u8; 4];
    if let Err(e) = reader.read_exact(&mut magic) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                Ok(Verdict::incomplete(format, "shorter than a dump header"))
            }
            _ => Err(e),
        };
    }
    if &magic != MAGIC {
        return Ok(Verdict::incomplete(
            format,
            "it does not start with DZV1 (not a Neo4j 5 dump, or an older gzip one)",
        ));
    }
    let mut decoder = zstd::stream::read::Decoder::new(reader)?;
    // Neo4j may write long windows; the default limit is 2^27.
    decoder.window_log_max(31)?;
    match io::copy(&mut decoder, &mut io::sink()) {
        Ok(0) => Ok(Verdict::incomplete(
            format,
            "no compressed data follows the DZV1 header",
        )),
        Ok(n) => Ok(Verdict::complete(
            format,
            format!("DZV1 and a zstd stream decoding to {n} bytes"),
        )),
        Err(e) if is_read_error(&e) => Err(e),
        Err(e) => Ok(Verdict::incomplete(
            format,
            format!(
                "its zstd stream does not decode to the end ({e}): the dump was cut short or damaged"
            ),
        )),
    }
}

/// Errors of the reader underneath (not of decoding) are passed on.
fn is_read_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_dump_passes_and_a_cut_one_does_not() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut dump = MAGIC.to_vec();
        dump.extend(zstd::encode_all(&payload[..], 3).unwrap());
        let verdict = check(&dump[..]).unwrap();
        assert!(verdict.complete, "{}", verdict.detail);
        for cut in [4, 6, dump.len() / 2, dump.len() - 1] {
            assert!(!check(&dump[..cut]).unwrap().complete, "cut at {cut}");
        }
        assert!(!check(&b"DGV1xxxx"[..]).unwrap().complete);
    }
}
