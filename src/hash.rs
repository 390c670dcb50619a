//! Identifiers: keyed BLAKE3 blob ids, BLAKE3 pack ids, and random object ids.
//!
//! Every kind of id is its own 32-byte newtype so that a pack id can never be
//! passed where a blob id is meant. All of them print as 64 lowercase hex
//! digits and parse from the same.
//!
//! - [`BlobId`]: keyed BLAKE3 of a blob's plaintext under the repository's id
//!   key, so the storage cannot confirm that it holds known content.
//! - [`PackId`]: plain BLAKE3 of the pack's stored bytes, so anyone can check a
//!   pack against its name without keys.
//! - [`SnapshotId`], [`IndexId`], [`KeyId`], [`GenerationId`], [`DrillId`]: 32 random bytes,
//!   chosen when the object is written.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Full lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Parses from a 32-byte slice.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "{s:?} is not a {}: expected 64 hex digits",
                        stringify!($name)
                    ))
                })?;
                Ok(Self(bytes))
            }
        }

        /// Serialized as its full hex, as listings and `--json` show it.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<C> minicbor::Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                _: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.bytes(&self.0)?;
                Ok(())
            }
        }

        impl<'b, C> minicbor::Decode<'b, C> for $name {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                let bytes = d.bytes()?;
                Self::from_slice(bytes).ok_or_else(|| {
                    minicbor::decode::Error::message(concat!(
                        stringify!($name),
                        " must be 32 bytes"
                    ))
                })
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext: the blob's name everywhere.
    BlobId
);
id_type!(
    /// BLAKE3 of a pack's stored bytes: the pack's object name.
    PackId
);
id_type!(
    /// Random id of a snapshot object.
    SnapshotId
);
id_type!(
    /// Random id of an index object.
    IndexId
);
id_type!(
    /// Random id of a key file.
    KeyId
);
id_type!(
    /// Random id of a pending generation (prune's list of packs to delete).
    GenerationId
);
id_type!(
    /// Random id of a drill record (the result of one restore drill).
    DrillId
);
id_type!(
    /// Random id of the repository, chosen at `init`.
    RepoId
);

/// Returns 32 bytes from the operating system's random number generator.
///
/// A failing generator aborts the process: continuing without randomness
/// would mean reusing nonces or predictable keys.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    bytes
}

/// Fills `buf` from the operating system's random number generator, aborting
/// on failure (see [`random_bytes`]).
pub(crate) fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        // Invariant: no key, nonce or id is ever made from anything but the
        // OS generator; without it nothing can be written safely.
        panic!("the operating system's random number generator failed: {e}");
    }
}

macro_rules! random_id {
    ($($name:ident),*) => {$(
        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(random_bytes())
            }
        }
    )*};
}
random_id!(SnapshotId, IndexId, KeyId, RepoId, GenerationId, DrillId);

impl PackId {
    /// Computes a pack's id from its complete stored bytes.
    pub(crate) fn of_pack(bytes: &[u8]) -> Self {
        PackId(*blake3::hash(bytes).as_bytes())
    }
}

/// A short, stable tag for a repository location (16 hex digits of its
/// BLAKE3), used to name its cache directory.
pub(crate) fn location_tag(location: &str) -> String {
    blake3::hash(location.as_bytes()).to_hex()[..16].to_string()
}

/// Computes blob ids: keyed BLAKE3 under the repository's id key.
#[derive(Clone)]
pub struct BlobHasher {
    key: [u8; 32],
}

impl BlobHasher {
    /// A hasher for the given id key (derived by [`crate::key::MasterKey`]).
    pub fn new(key: [u8; 32]) -> Self {
        BlobHasher { key }
    }

    /// The id of a blob of `kind` with this plaintext: keyed BLAKE3 over
    /// the kind's one-byte code followed by the plaintext. The kind is part
    /// of the id so that a data chunk with a tree's bytes never shares its
    /// id (and so never stands in for it in dedup).
    pub fn blob_id(&self, kind: crate::object::ObjectKind, plaintext: &[u8]) -> BlobId {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&[kind.code()]);
        hasher.update(plaintext);
        BlobId(*hasher.finalize().as_bytes())
    }
}

impl Drop for BlobHasher {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl fmt::Debug for BlobHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobHasher(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex() {
        let id = SnapshotId::random();
        let parsed: SnapshotId = id.to_hex().parse().unwrap();
        assert_eq!(id, parsed);
        assert_eq!(id.short().len(), 8);
        assert!("xyz".parse::<SnapshotId>().is_err());
    }

    #[test]
    fn blob_ids_depend_on_the_key_and_the_kind() {
        use crate::object::ObjectKind::{DataBlob, ListBlob, TreeBlob};
        let a = BlobHasher::new([1; 32]).blob_id(DataBlob, b"hello");
        let b = BlobHasher::new([2; 32]).blob_id(DataBlob, b"hello");
        assert_ne!(a, b);
        assert_eq!(a, BlobHasher::new([1; 32]).blob_id(DataBlob, b"hello"));
        let tree = BlobHasher::new([1; 32]).blob_id(TreeBlob, b"hello");
        let list = BlobHasher::new([1; 32]).blob_id(ListBlob, b"hello");
        assert!(a != tree && tree != list && a != list);
    }

    #[test]
    fn ids_encode_as_cbor_byte_strings() {
        let id = PackId([7; 32]);
        let bytes = minicbor::to_vec(id).unwrap();
        assert_eq!(bytes[0], 0x58); // byte string, one-byte length
        assert_eq!(bytes[1], 32);
        let back: PackId = minicbor::decode(&bytes).unwrap();
        assert_eq!(back, id);
        let short = minicbor::to_vec(minicbor::bytes::ByteVec::from(vec![1u8; 31])).unwrap();
        assert!(minicbor::decode::<PackId>(&short).is_err());
    }
}
