//! Pack format: sealed blobs back to back, then a sealed header listing them,
//! then the header's length. Encode and decode only; no I/O.
//!
//! ```text
//! pack   = blob… ‖ sealed header ‖ header length (u32 LE, bytes of the sealed header)
//! header = sealed(kind PackHeader, id = 32 zero bytes) of CBOR PackHeader
//! name   = packs/<first two hex digits>/<BLAKE3 of the whole pack, hex>
//! ```
//!
//! Because the header is at the end, a pack is written in one pass and read
//! back by its tail alone (`catalog rebuild`). Data blobs and tree or list
//! blobs never share a pack, so restoring one file reads tree packs (cached
//! locally) and one range of one data pack.

pub mod writer;

pub(crate) use writer::{FinishedPack, PackWriter};

use crate::error::{Error, Result};
use crate::hash::BlobId;
use crate::seal::{Codec, ObjectKind, Sealer};

/// Largest plaintext pack header accepted (64 MiB).
pub(crate) const MAX_HEADER_SIZE: usize = 64 << 20;

/// The associated-data id of every pack header.
pub(crate) const HEADER_ID: [u8; 32] = [0; 32];

/// Where one blob sits in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(array)]
pub struct PackEntry {
    /// The blob's kind code ([`ObjectKind::code`]).
    #[n(0)]
    pub kind: u8,
    /// The blob's id.
    #[n(1)]
    pub id: BlobId,
    /// Offset of the sealed blob from the start of the pack.
    #[n(2)]
    pub offset: u64,
    /// Length of the sealed blob.
    #[n(3)]
    pub length: u32,
    /// Length of the blob's plaintext.
    #[n(4)]
    pub raw_length: u32,
}

impl PackEntry {
    /// The blob kind, if the code is one larder knows.
    pub(crate) fn object_kind(&self) -> Option<ObjectKind> {
        ObjectKind::from_code(self.kind).filter(|k| k.is_blob())
    }
}

/// Whether a pack holds data blobs or metadata (tree and list) blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackKind {
    /// Content chunks.
    Data,
    /// Directory trees and content lists.
    Tree,
}

impl PackKind {
    /// The pack kind that holds blobs of `kind`.
    pub(crate) fn for_blob(kind: ObjectKind) -> PackKind {
        match kind {
            ObjectKind::DataBlob => PackKind::Data,
            _ => PackKind::Tree,
        }
    }

    /// Numeric code stored in index objects and the catalog.
    pub fn code(self) -> u8 {
        match self {
            PackKind::Data => 0,
            PackKind::Tree => 1,
        }
    }

    /// Parses [`PackKind::code`].
    pub(crate) fn from_code(code: u8) -> Option<PackKind> {
        match code {
            0 => Some(PackKind::Data),
            1 => Some(PackKind::Tree),
            _ => None,
        }
    }
}

/// The plaintext of a pack header.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub(crate) struct PackHeader {
    /// Every blob in the pack, in pack order.
    #[n(0)]
    pub entries: Vec<PackEntry>,
}

/// Given the last bytes of a pack (at least 4) and the pack's total length,
/// returns the byte range of the sealed header within the pack.
pub(crate) fn header_range(
    tail: &[u8],
    pack_len: u64,
    object: &str,
) -> Result<std::ops::Range<u64>> {
    if tail.len() < 4 || pack_len < 4 {
        return Err(Error::corrupt(
            object,
            "pack is shorter than its length field",
        ));
    }
    let n = u32::from_le_bytes(tail[tail.len() - 4..].try_into().expect("4 bytes")) as u64;
    if n > (MAX_HEADER_SIZE + crate::seal::SEAL_OVERHEAD) as u64 {
        return Err(Error::corrupt(
            object,
            format!("header length {n} exceeds the largest header larder writes"),
        ));
    }
    if n + 4 > pack_len {
        return Err(Error::corrupt(
            object,
            format!("header length {n} exceeds the pack's {pack_len} bytes"),
        ));
    }
    Ok(pack_len - 4 - n..pack_len - 4)
}

/// Opens a sealed pack header and checks that its entries lie inside the
/// first `blobs_end` bytes of the pack without overlapping.
pub(crate) fn open_header(
    sealer: &Sealer,
    codec: &mut Codec,
    sealed: &[u8],
    blobs_end: u64,
    object: &str,
) -> Result<PackHeader> {
    let plain = sealer
        .open(
            codec,
            ObjectKind::PackHeader,
            &HEADER_ID,
            sealed,
            MAX_HEADER_SIZE,
        )
        .map_err(|e| Error::corrupt(object, format!("pack header: {e}")))?;
    let header: PackHeader = minicbor::decode(&plain)
        .map_err(|e| Error::corrupt(object, format!("pack header does not parse: {e}")))?;
    let mut end = 0u64;
    for entry in &header.entries {
        if entry.object_kind().is_none() {
            return Err(Error::corrupt(
                object,
                format!("pack header names unknown blob kind {}", entry.kind),
            ));
        }
        let entry_end = entry.offset.checked_add(u64::from(entry.length));
        if entry.offset < end || entry_end.is_none_or(|e| e > blobs_end) {
            return Err(Error::corrupt(
                object,
                "pack header entries overlap or run past the blobs",
            ));
        }
        end = entry_end.expect("checked above");
    }
    Ok(header)
}

/// Reads the header of a complete pack held in memory.
pub(crate) fn read_header(
    sealer: &Sealer,
    codec: &mut Codec,
    pack: &[u8],
    object: &str,
) -> Result<PackHeader> {
    let range = header_range(pack, pack.len() as u64, object)?;
    let sealed = &pack[range.start as usize..range.end as usize];
    open_header(sealer, codec, sealed, range.start, object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{PackId, RepoId};

    #[test]
    fn a_written_pack_reads_back() {
        let sealer = Sealer::new(&[1; 32], RepoId([2; 32]), crate::config::FORMAT_VERSION);
        let mut codec = Codec::new(1);
        let mut writer = PackWriter::new(PackKind::Data);
        let mut expected = vec![];
        for i in 0..10u8 {
            let plain = vec![i; 100 * i as usize];
            let id = BlobId([i; 32]);
            let sealed = sealer.seal(&mut codec, ObjectKind::DataBlob, &id.0, &plain, true);
            writer.add(ObjectKind::DataBlob, id, &sealed, plain.len() as u32);
            expected.push((id, plain));
        }
        let pack = writer.finish(&sealer, &mut codec);
        assert_eq!(pack.id, PackId::of_pack(&pack.bytes));
        let header = read_header(&sealer, &mut codec, &pack.bytes, "p").unwrap();
        assert_eq!(header.entries, pack.entries);
        for (entry, (id, plain)) in header.entries.iter().zip(&expected) {
            let at = entry.offset as usize..entry.offset as usize + entry.length as usize;
            let opened = sealer
                .open(
                    &mut codec,
                    ObjectKind::DataBlob,
                    &id.0,
                    &pack.bytes[at],
                    entry.raw_length as usize,
                )
                .unwrap();
            assert_eq!(&opened, plain);
        }
    }

    #[test]
    fn damaged_tails_are_reported_not_trusted() {
        let sealer = Sealer::new(&[1; 32], RepoId([2; 32]), crate::config::FORMAT_VERSION);
        let mut codec = Codec::new(1);
        let mut writer = PackWriter::new(PackKind::Tree);
        let sealed = sealer.seal(&mut codec, ObjectKind::TreeBlob, &[5; 32], b"tree", true);
        writer.add(ObjectKind::TreeBlob, BlobId([5; 32]), &sealed, 4);
        let pack = writer.finish(&sealer, &mut codec).bytes;
        for cut in [0, 3, pack.len() / 2, pack.len() - 1] {
            assert!(read_header(&sealer, &mut codec, &pack[..cut], "p").is_err());
        }
        let mut flipped = pack.to_vec();
        let n = flipped.len();
        flipped[n - 10] ^= 1;
        assert!(read_header(&sealer, &mut codec, &flipped, "p").is_err());
    }
}
