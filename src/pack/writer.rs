//! `PackWriter`: collects sealed blobs of one pack kind and, when asked,
//! appends the sealed header and hands back the finished pack and its id.

use super::{HEADER_ID, PackEntry, PackHeader, PackKind};
use crate::hash::{BlobId, PackId};
use crate::seal::{Codec, ObjectKind, Sealer};

/// A pack being assembled in memory.
#[derive(Debug)]
pub(crate) struct PackWriter {
    kind: PackKind,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A complete pack, ready to store under [`super::pack_path`].
#[derive(Debug)]
pub(crate) struct FinishedPack {
    /// BLAKE3 of `bytes`.
    pub id: PackId,
    /// Data or tree pack.
    pub kind: PackKind,
    /// The stored bytes.
    pub bytes: Vec<u8>,
    /// Where each blob sits, in pack order.
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// An empty pack of `kind`.
    pub fn new(kind: PackKind) -> PackWriter {
        PackWriter::with_capacity(kind, 0)
    }

    /// An empty pack of `kind` that will hold about `capacity` bytes: one
    /// allocation up front instead of doubling (which copied a full pack and
    /// left a 32 MiB buffer for a 16 MiB pack).
    pub fn with_capacity(kind: PackKind, capacity: usize) -> PackWriter {
        PackWriter {
            kind,
            bytes: Vec::with_capacity(capacity),
            entries: Vec::new(),
        }
    }

    /// Appends one sealed blob.
    pub fn add(&mut self, kind: ObjectKind, id: BlobId, sealed: &[u8], raw_length: u32) {
        debug_assert_eq!(PackKind::for_blob(kind), self.kind);
        self.entries.push(PackEntry {
            kind: kind.code(),
            id,
            offset: self.bytes.len() as u64,
            length: u32::try_from(sealed.len()).expect("sealed blobs are at most a few MiB"),
            raw_length,
        });
        self.bytes.extend_from_slice(sealed);
    }

    /// Bytes of sealed blobs so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no blob has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the header, appends it and its length, and names the pack.
    pub fn finish(self, sealer: &Sealer, codec: &mut Codec) -> FinishedPack {
        let header = PackHeader {
            entries: self.entries,
        };
        let plain = minicbor::to_vec(&header).expect("encoding to a Vec cannot fail");
        let sealed = sealer.seal(codec, ObjectKind::PackHeader, &HEADER_ID, &plain, true);
        let mut bytes = self.bytes;
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        FinishedPack {
            id: PackId::of_pack(&bytes),
            kind: self.kind,
            bytes,
            entries: header.entries,
        }
    }
}
