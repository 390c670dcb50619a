//! Key material: the master key, its subkeys, and key files.
//!
//! Hierarchy (spec in `docs/FORMAT.md`, "Keys"):
//!
//! ```text
//! passphrase ──Argon2id(salt, m, t, p)──► key-encryption key
//!     key-encryption key ──XChaCha20-Poly1305──► wraps the 32-byte master key   (keys/<id>)
//!     master key ──BLAKE3 derive_key("…sealing key")──► sealing key   (every object's AEAD)
//!     master key ──BLAKE3 derive_key("…blob id key")──► id key        (keyed BLAKE3 blob ids)
//! ```
//!
//! The master key is random, chosen at `init`; passphrases only wrap it, and
//! several key files may wrap the same master key (`key add`). A key file's
//! KDF parameters are bounded before any work is done, so a hostile key file
//! cannot make `open` allocate unbounded memory or spin for hours.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::hash::{KeyId, RepoId, fill_random, random_bytes};

/// Version of the key-file layout this build writes and reads.
pub const KEY_FILE_VERSION: u32 = 1;

const SEALING_CONTEXT: &str = "larder 2026-11-21 v1 sealing key";
const BLOB_ID_CONTEXT: &str = "larder 2026-11-21 v1 blob id key";
const KEY_FILE_AAD_DOMAIN: &[u8] = b"larder key file v1";
const KEY_FILE_CHECKSUM_CONTEXT: &str = "larder 2026-12-02 key file checksum";

/// Largest key file read: one is a few hundred bytes, so anything far
/// larger is not one and is never read into memory.
pub(crate) const MAX_KEY_FILE_SIZE: u64 = 64 << 10;

/// Largest Argon2 memory cost a key file may ask for, in KiB (2 GiB).
pub(crate) const MAX_KDF_MEMORY_KIB: u32 = 2 * 1024 * 1024;
/// Largest Argon2 pass count a key file may ask for.
pub(crate) const MAX_KDF_PASSES: u32 = 16;
/// Largest Argon2 lane count a key file may ask for.
pub(crate) const MAX_KDF_LANES: u32 = 16;
/// Largest total Argon2 work (memory in KiB times passes) a key file may ask
/// for: 8 GiB·passes, tens of seconds on one core.
pub(crate) const MAX_KDF_WORK: u64 = 8 * 1024 * 1024;

/// Argon2id parameters for wrapping a master key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct KdfParams {
    /// Memory cost in KiB.
    #[n(0)]
    pub memory_kib: u32,
    /// Number of passes.
    #[n(1)]
    pub passes: u32,
    /// Degree of parallelism (lanes).
    #[n(2)]
    pub lanes: u32,
}

impl Default for KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes
    /// (about 0.2 s on the reference machine).
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 4,
        }
    }
}

impl KdfParams {
    /// Checks the parameters against larder's bounds and Argon2's own rules.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.memory_kib > MAX_KDF_MEMORY_KIB {
            return Err(format!(
                "memory cost {} KiB exceeds the limit of {} KiB",
                self.memory_kib, MAX_KDF_MEMORY_KIB
            ));
        }
        if self.passes == 0 || self.passes > MAX_KDF_PASSES {
            return Err(format!(
                "pass count {} is outside 1..={MAX_KDF_PASSES}",
                self.passes
            ));
        }
        if self.lanes == 0 || self.lanes > MAX_KDF_LANES {
            return Err(format!(
                "lane count {} is outside 1..={MAX_KDF_LANES}",
                self.lanes
            ));
        }
        if u64::from(self.memory_kib) * u64::from(self.passes) > MAX_KDF_WORK {
            return Err(format!(
                "total work {} KiB x {} passes exceeds the limit",
                self.memory_kib, self.passes
            ));
        }
        if self.memory_kib < 8 * self.lanes {
            return Err(format!(
                "memory cost {} KiB is below Argon2's minimum of 8 KiB per lane",
                self.memory_kib
            ));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let params = Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| Error::InvalidArgument(format!("argon2 parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, out.as_mut())
            .map_err(|e| Error::InvalidArgument(format!("argon2: {e}")))?;
        Ok(out)
    }
}

/// The repository's master key. Never leaves memory unwrapped; zeroed on drop.
#[derive(Clone)]
pub(crate) struct MasterKey {
    bytes: [u8; 32],
}

impl MasterKey {
    /// A fresh random master key, for `init`.
    pub(crate) fn generate() -> Self {
        MasterKey {
            bytes: random_bytes(),
        }
    }

    /// The key as an exported key file holds it.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey { bytes }
    }

    /// The raw key, for an exported key file.
    pub(crate) fn expose(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.bytes)
    }

    /// The key that seals every stored object (XChaCha20-Poly1305).
    pub(crate) fn sealing_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(SEALING_CONTEXT, &self.bytes))
    }

    /// The key of the keyed BLAKE3 that names blobs.
    pub(crate) fn blob_id_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(BLOB_ID_CONTEXT, &self.bytes))
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The authenticated, unencrypted part of a key file.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct KeyFileHeader {
    /// Key-file layout version ([`KEY_FILE_VERSION`]).
    #[n(0)]
    pub version: u32,
    /// The repository this key belongs to.
    #[n(1)]
    pub repo_id: RepoId,
    /// Argon2id parameters.
    #[n(2)]
    pub kdf: KdfParams,
    /// Argon2id salt (32 random bytes).
    #[n(3)]
    #[cbor(with = "minicbor::bytes")]
    pub salt: Vec<u8>,
    /// When the key was made, in nanoseconds since the Unix epoch.
    #[n(4)]
    pub created_ns: i64,
    /// Host name of the machine that made it.
    #[n(5)]
    pub host: String,
    /// User name that made it.
    #[n(6)]
    pub user: String,
}

/// A key file as stored under `keys/<id>`: the header's bytes, a nonce, and
/// the wrapped master key.
#[derive(Clone, Debug, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
struct KeyFileRaw {
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    header: Vec<u8>,
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    nonce: Vec<u8>,
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    wrapped: Vec<u8>,
    /// BLAKE3 (derived-key mode) of the three fields above, so damage is
    /// told apart from a wrong passphrase without any key. Absent in key
    /// files written before it existed.
    #[n(3)]
    checksum: Option<minicbor::bytes::ByteArray<32>>,
}

impl KeyFileRaw {
    fn compute_checksum(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(KEY_FILE_CHECKSUM_CONTEXT);
        for field in [&self.header, &self.nonce, &self.wrapped] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
        *hasher.finalize().as_bytes()
    }
}

/// Whether a key file's bytes are as written, judged without any key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyFileIntegrity {
    /// Its checksum matches.
    Intact,
    /// It predates checksums; only the passphrase can tell.
    Unchecked,
    /// Its checksum does not match: the file was damaged.
    Damaged,
}

/// A parsed key file.
#[derive(Clone, Debug)]
pub(crate) struct KeyFile {
    /// The key file's id (its object name).
    pub id: KeyId,
    /// The authenticated header. Only trust it after [`KeyFile::unwrap`]
    /// succeeded.
    pub header: KeyFileHeader,
    /// Whether its checksum matches.
    pub integrity: KeyFileIntegrity,
    raw: KeyFileRaw,
}

impl KeyFile {
    /// Wraps `master` under `passphrase` with fresh salt and nonce.
    pub fn create(
        master: &MasterKey,
        repo_id: RepoId,
        passphrase: &[u8],
        kdf: KdfParams,
        created_ns: i64,
        host: String,
        user: String,
    ) -> Result<(KeyId, Vec<u8>)> {
        kdf.validate().map_err(Error::InvalidArgument)?;
        let id = KeyId::random();
        let header = KeyFileHeader {
            version: KEY_FILE_VERSION,
            repo_id,
            kdf,
            salt: random_bytes().to_vec(),
            created_ns,
            host,
            user,
        };
        let header_bytes = minicbor::to_vec(&header).expect("encoding to a Vec cannot fail");
        let kek = kdf.derive(passphrase, &header.salt)?;
        let mut nonce = [0u8; 24];
        fill_random(&mut nonce);
        let cipher = XChaCha20Poly1305::new(&(*kek).into());
        let mut wrapped = master.bytes.to_vec();
        let aad = key_file_aad(&id, &header_bytes);
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(nonce), &aad, wrapped.as_mut_slice().into())
            .expect("32 bytes never exceed the AEAD length limit");
        wrapped.extend_from_slice(&tag);
        let mut raw = KeyFileRaw {
            header: header_bytes,
            nonce: nonce.to_vec(),
            wrapped,
            checksum: None,
        };
        raw.checksum = Some(raw.compute_checksum().into());
        Ok((
            id,
            minicbor::to_vec(&raw).expect("encoding to a Vec cannot fail"),
        ))
    }

    /// Parses a stored key file. Does no KDF work.
    pub fn parse(id: KeyId, bytes: &[u8]) -> Result<KeyFile> {
        let object = crate::layout::key_path(&id);
        let raw: KeyFileRaw = minicbor::decode(bytes)
            .map_err(|e| Error::corrupt(&object, format!("key file does not parse: {e}")))?;
        let header: KeyFileHeader = minicbor::decode(&raw.header)
            .map_err(|e| Error::corrupt(&object, format!("key file header does not parse: {e}")))?;
        if header.version != KEY_FILE_VERSION {
            return Err(Error::Unsupported {
                what: object,
                found: header.version,
                supported: KEY_FILE_VERSION.to_string(),
            });
        }
        if raw.nonce.len() != 24 || raw.wrapped.len() != 48 || header.salt.len() < 16 {
            return Err(Error::corrupt(object, "key file fields have wrong lengths"));
        }
        let integrity = match &raw.checksum {
            None => KeyFileIntegrity::Unchecked,
            Some(sum) if **sum == raw.compute_checksum() => KeyFileIntegrity::Intact,
            Some(_) => KeyFileIntegrity::Damaged,
        };
        Ok(KeyFile {
            id,
            header,
            integrity,
            raw,
        })
    }

    /// The Argon2 work this key file asks for, in KiB times passes.
    pub(crate) fn kdf_work(&self) -> u64 {
        u64::from(self.header.kdf.memory_kib) * u64::from(self.header.kdf.passes)
    }

    /// Derives the key-encryption key from `passphrase` and unwraps the
    /// master key. Refuses out-of-bounds KDF parameters before doing any work.
    ///
    /// Returns `Ok(None)` when the passphrase does not open this key file.
    pub fn unwrap(&self, passphrase: &[u8]) -> Result<Option<MasterKey>> {
        self.header
            .kdf
            .validate()
            .map_err(|reason| Error::HostileKeyFile {
                key: self.id.short(),
                reason,
            })?;
        let kek = self.header.kdf.derive(passphrase, &self.header.salt)?;
        let cipher = XChaCha20Poly1305::new(&(*kek).into());
        let nonce = XNonce::try_from(self.raw.nonce.as_slice()).expect("length checked in parse");
        let (ciphertext, tag) = self.raw.wrapped.split_at(32);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(ciphertext);
        let aad = key_file_aad(&self.id, &self.raw.header);
        let tag = chacha20poly1305::Tag::try_from(tag).expect("length checked in parse");
        match cipher.decrypt_inout_detached(&nonce, &aad, bytes.as_mut_slice().into(), &tag) {
            Ok(()) => Ok(Some(MasterKey { bytes })),
            Err(_) => {
                bytes.zeroize();
                Ok(None)
            }
        }
    }
}

fn key_file_aad(id: &KeyId, header_bytes: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(KEY_FILE_AAD_DOMAIN.len() + 32 + header_bytes.len());
    aad.extend_from_slice(KEY_FILE_AAD_DOMAIN);
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(header_bytes);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    fn make(pass: &[u8]) -> (KeyFile, MasterKey) {
        let master = MasterKey::generate();
        let (id, bytes) = KeyFile::create(
            &master,
            RepoId([9; 32]),
            pass,
            FAST,
            0,
            "host".into(),
            "user".into(),
        )
        .unwrap();
        (KeyFile::parse(id, &bytes).unwrap(), master)
    }

    #[test]
    fn right_passphrase_unwraps_the_master_key() {
        let (file, master) = make(b"correct horse");
        let opened = file.unwrap(b"correct horse").unwrap().unwrap();
        assert_eq!(opened.bytes, master.bytes);
        assert_eq!(*opened.sealing_key(), *master.sealing_key());
        assert_ne!(*opened.sealing_key(), *opened.blob_id_key());
    }

    #[test]
    fn damage_is_told_apart_from_a_wrong_passphrase() {
        let master = MasterKey::generate();
        let (id, bytes) = KeyFile::create(
            &master,
            RepoId([9; 32]),
            b"pw",
            FAST,
            0,
            "h".into(),
            "u".into(),
        )
        .unwrap();
        assert_eq!(
            KeyFile::parse(id, &bytes).unwrap().integrity,
            KeyFileIntegrity::Intact
        );
        // Flip each byte of the wrapped key in turn: parsing still works,
        // the checksum says damaged, and the passphrase no longer opens it.
        let raw: KeyFileRaw = minicbor::decode(&bytes).unwrap();
        for i in 0..raw.wrapped.len() {
            let mut bad = raw.clone();
            bad.wrapped[i] ^= 1;
            let file = KeyFile::parse(id, &minicbor::to_vec(&bad).unwrap()).unwrap();
            assert_eq!(file.integrity, KeyFileIntegrity::Damaged);
            assert!(file.unwrap(b"pw").unwrap().is_none());
        }
        // A key file from before checksums parses as unchecked and opens.
        let mut old = raw.clone();
        old.checksum = None;
        let file = KeyFile::parse(id, &minicbor::to_vec(&old).unwrap()).unwrap();
        assert_eq!(file.integrity, KeyFileIntegrity::Unchecked);
        assert!(file.unwrap(b"pw").unwrap().is_some());
    }

    #[test]
    fn wrong_passphrase_is_none() {
        let (file, _) = make(b"correct horse");
        assert!(file.unwrap(b"battery staple").unwrap().is_none());
    }

    #[test]
    fn tampered_header_fails_to_unwrap() {
        let (mut file, _) = make(b"pw");
        file.header.host = "evil".into();
        file.raw.header = minicbor::to_vec(&file.header).unwrap();
        assert!(file.unwrap(b"pw").unwrap().is_none());
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_any_work() {
        let (mut file, _) = make(b"pw");
        for kdf in [
            KdfParams {
                memory_kib: u32::MAX,
                passes: 1,
                lanes: 1,
            },
            KdfParams {
                memory_kib: 1024,
                passes: 1_000_000,
                lanes: 1,
            },
            KdfParams {
                memory_kib: 1024,
                passes: 1,
                lanes: 0,
            },
            KdfParams {
                memory_kib: MAX_KDF_MEMORY_KIB,
                passes: MAX_KDF_PASSES,
                lanes: 1,
            },
        ] {
            file.header.kdf = kdf;
            let started = std::time::Instant::now();
            let err = file.unwrap(b"pw").unwrap_err();
            assert!(matches!(err, Error::HostileKeyFile { .. }), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn default_parameters_meet_the_documented_floor() {
        let kdf = KdfParams::default();
        assert!(kdf.memory_kib >= 64 * 1024 && kdf.passes >= 3);
        kdf.validate().unwrap();
    }
}
