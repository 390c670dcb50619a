//! Index objects: which blobs live where, for a set of packs.
//!
//! ```text
//! index/<random id> = sealed(kind Index, id) of CBOR IndexObject
//! ```
//!
//! An index object is written only after every pack it names is durable, and
//! before any snapshot that needs those packs. The catalog absorbs index
//! objects; `catalog rebuild` falls back to pack headers for packs no index
//! names.

use crate::error::{Error, Result};
use crate::hash::{IndexId, PackId};
use crate::pack::{PackEntry, PackKind};
use crate::seal::ObjectKind;

/// Largest index object plaintext accepted (80 MiB). Writers start a new
/// index object once it holds [`INDEX_FLUSH_BLOBS`] blobs (about 6 MiB of
/// CBOR), so this leaves room for one more pack whose header is as large
/// as [`crate::pack::MAX_HEADER_SIZE`] allows.
pub(crate) const MAX_INDEX_SIZE: usize = crate::pack::MAX_HEADER_SIZE + (16 << 20);

/// Blobs per index object before a writer starts another one.
pub(crate) const INDEX_FLUSH_BLOBS: usize = 65_536;

/// One pack and its blobs.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct IndexedPack {
    /// The pack.
    #[n(0)]
    pub id: PackId,
    /// [`PackKind::code`].
    #[n(1)]
    pub kind: u8,
    /// The pack's stored size in bytes.
    #[n(2)]
    pub size: u64,
    /// Its blobs, as in its header.
    #[n(3)]
    pub blobs: Vec<PackEntry>,
}

impl IndexedPack {
    /// The pack kind, if known.
    pub(crate) fn pack_kind(&self) -> Option<PackKind> {
        PackKind::from_code(self.kind)
    }
}

/// The plaintext of an index object.
#[derive(Clone, Debug, Default, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct IndexObject {
    /// Packs described.
    #[n(0)]
    pub packs: Vec<IndexedPack>,
    /// Index objects this one replaces (written by prune's consolidation;
    /// they are deleted only after this one is durable).
    #[n(1)]
    pub supersedes: Vec<IndexId>,
}

impl IndexObject {
    /// Number of blobs described.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    /// Checks every entry before anything trusts it: known kinds, blobs of
    /// the right kind for their pack, ranges inside the pack, and plaintext
    /// lengths within what larder writes. (The object is authenticated, so
    /// only a key holder or a writer bug can produce a bad one; either way
    /// it must be an error, never a panic or a wrong read.)
    pub(crate) fn validate(&self, object: &str) -> Result<()> {
        for pack in &self.packs {
            let Some(kind) = pack.pack_kind() else {
                return Err(Error::corrupt(
                    object,
                    format!("pack {} has unknown kind {}", pack.id, pack.kind),
                ));
            };
            for blob in &pack.blobs {
                let bad = |why: &str| {
                    Error::corrupt(
                        object,
                        format!("entry for blob {} in pack {}: {why}", blob.id, pack.id),
                    )
                };
                let Some(blob_kind) = blob.object_kind() else {
                    return Err(bad("unknown blob kind"));
                };
                if PackKind::for_blob(blob_kind) != kind {
                    return Err(bad("blob kind does not belong in this pack"));
                }
                let end = blob.offset.checked_add(u64::from(blob.length));
                if end.is_none_or(|end| end > pack.size)
                    || (blob.length as usize) < crate::seal::SEAL_OVERHEAD
                {
                    return Err(bad("range lies outside the pack"));
                }
                let limit = match blob_kind {
                    ObjectKind::DataBlob => crate::config::MAX_BLOB_SIZE,
                    _ => MAX_METADATA_BLOB,
                };
                if blob.raw_length as usize > limit {
                    return Err(bad("plaintext length exceeds what larder writes"));
                }
            }
        }
        Ok(())
    }
}

/// The plaintext of a pending generation: packs prune found unreferenced
/// and will delete once no operation that began before it is still running.
///
/// ```text
/// pending/<random id> = sealed(kind Pending, id) of CBOR PendingObject
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub(crate) struct PendingObject {
    /// The packs to delete.
    #[n(0)]
    pub packs: Vec<PackId>,
}

/// Largest pending object plaintext accepted (64 MiB: two million packs).
pub(crate) const MAX_PENDING_SIZE: usize = 64 << 20;

/// Largest tree or list blob accepted (a directory of about a million
/// entries).
pub(crate) const MAX_METADATA_BLOB: usize = 256 << 20;
