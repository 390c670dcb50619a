//! The sealed form of every stored blob and metadata object.
//!
//! ```text
//! sealed    = nonce (24 random bytes) ‖ ciphertext ‖ tag (16 bytes)
//! plaintext = mode (1 byte: 0 stored, 1 zstd frame) ‖ payload
//! AAD       = format version (u32 LE) ‖ repository id (32) ‖ object kind (1) ‖ object id (32)
//! ```
//!
//! The cipher is XChaCha20-Poly1305 under the sealing key. Because the kind
//! and id are associated data, a sealed object only opens as what it was
//! sealed as: a data blob never opens as a tree, an index or a snapshot, and
//! a blob copied under another id fails to open (spec: `docs/FORMAT.md`,
//! "Sealed objects"). Decompression is capped by the caller's expected size,
//! so a hostile frame cannot balloon memory.

use std::fmt;
use std::io::Cursor;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::hash::{RepoId, fill_random};

/// Bytes a sealed object adds to its (possibly compressed) payload.
pub(crate) const SEAL_OVERHEAD: usize = 24 + 1 + 16;

const MODE_STORED: u8 = 0;
const MODE_ZSTD: u8 = 1;

pub use crate::object::ObjectKind;

/// Why a sealed object did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than the fixed overhead.
    Truncated(usize),
    /// The tag did not verify: wrong key, wrong kind or id, or damaged bytes.
    Authentication,
    /// The mode byte is unknown.
    UnknownMode(u8),
    /// The payload decompresses to more than the caller allows.
    TooLarge {
        /// The cap the caller set.
        limit: usize,
    },
    /// The zstd frame is damaged (only possible with the key: the tag verified).
    Decompression(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Truncated(n) => write!(f, "sealed object is only {n} bytes long"),
            OpenError::Authentication => f.write_str(
                "authentication failed (damaged bytes, or an object stored under the wrong name or kind)",
            ),
            OpenError::UnknownMode(m) => write!(f, "unknown compression mode {m}"),
            OpenError::TooLarge { limit } => {
                write!(f, "content is larger than the expected {limit} bytes")
            }
            OpenError::Decompression(e) => write!(f, "zstd frame does not decompress: {e}"),
        }
    }
}

/// Seals and opens objects of one repository. Cheap to share between threads;
/// the per-thread zstd state lives in [`Codec`].
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    repo_id: RepoId,
    version: u32,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({:?})", self.repo_id)
    }
}

/// Per-thread compression state, reused across objects to avoid reallocating
/// zstd contexts.
pub struct Codec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// Where [`Sealer::seal_checked`] decompresses what it just compressed.
    scratch: Vec<u8>,
    nonces: Nonces,
}

/// Nonces sealed per batch drawn from the OS generator.
const NONCE_BATCH: usize = 128;

/// Nonces drawn from the operating system's generator a batch at a time:
/// one `getrandom` call per 128 sealed objects instead of one each (a tree
/// of 50,000 small files made 52,000 calls). Every byte is used once.
struct Nonces {
    buf: Box<[u8; 24 * NONCE_BATCH]>,
    used: usize,
}

impl Nonces {
    fn new() -> Nonces {
        Nonces {
            buf: Box::new([0; 24 * NONCE_BATCH]),
            used: 24 * NONCE_BATCH,
        }
    }

    fn next(&mut self) -> [u8; 24] {
        if self.used == self.buf.len() {
            fill_random(&mut self.buf[..]);
            self.used = 0;
        }
        let nonce: [u8; 24] = self.buf[self.used..self.used + 24]
            .try_into()
            .expect("24 bytes");
        self.used += 24;
        nonce
    }
}

impl Codec {
    /// A codec compressing at `level` (zstd levels; 1 is fast and, on dump
    /// text, as small as 3; see `docs/PERFORMANCE.md`).
    pub fn new(level: i32) -> Codec {
        Codec {
            compressor: zstd::bulk::Compressor::new(level).expect("zstd accepts every level"),
            decompressor: zstd::bulk::Decompressor::new().expect("zstd context allocation"),
            scratch: Vec::new(),
            nonces: Nonces::new(),
        }
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Codec(..)")
    }
}

thread_local! {
    static THREAD_CODEC: std::cell::RefCell<Option<(i32, Codec)>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's codec for `level`, creating it on first use.
/// For occasional objects (metadata) sealed outside the worker pools, which
/// own their codecs.
pub(crate) fn with_codec<T>(level: i32, f: impl FnOnce(&mut Codec) -> T) -> T {
    THREAD_CODEC.with(|cell| {
        let mut slot = cell.borrow_mut();
        if !matches!(&*slot, Some((l, _)) if *l == level) {
            *slot = Some((level, Codec::new(level)));
        }
        let (_, codec) = slot.as_mut().expect("set above");
        f(codec)
    })
}

impl Sealer {
    /// A sealer for `repo_id`, a repository of format `version`, under
    /// `sealing_key`.
    pub fn new(sealing_key: &[u8; 32], repo_id: RepoId, version: u32) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(&(*sealing_key).into()),
            repo_id,
            version,
        }
    }

    /// The repository id bound into every object.
    pub fn repo_id(&self) -> RepoId {
        self.repo_id
    }

    fn aad(&self, kind: ObjectKind, id: &[u8; 32]) -> [u8; 69] {
        let mut aad = [0u8; 69];
        aad[..4].copy_from_slice(&self.version.to_le_bytes());
        aad[4..36].copy_from_slice(self.repo_id.as_bytes());
        aad[36] = kind.code();
        aad[37..].copy_from_slice(id);
        aad
    }

    /// Seals `plaintext` as an object of `kind` named `id`. With `compress`,
    /// the payload is a zstd frame when that is smaller than the plaintext.
    pub fn seal(
        &self,
        codec: &mut Codec,
        kind: ObjectKind,
        id: &[u8; 32],
        plaintext: &[u8],
        compress: bool,
    ) -> Vec<u8> {
        let mut out = Self::payload(codec, plaintext, compress);
        self.encrypt(&mut out, kind, id);
        out
    }

    /// Seals like [`Sealer::seal`] (compressing), proving the result before
    /// it can reach storage: a zstd frame is decompressed again, into a
    /// buffer the codec keeps, and compared with `plaintext`, so an encoder
    /// fault fails here rather than storing a blob that never opens. With
    /// `open_too` the sealed object is also opened whole (tag, decryption,
    /// decompression) and compared; the write path does that for a sample of
    /// its blobs, which proves the key, nonce and associated data in use
    /// without paying a second pass of the cipher on every blob.
    pub fn seal_checked(
        &self,
        codec: &mut Codec,
        kind: ObjectKind,
        id: &[u8; 32],
        plaintext: &[u8],
        open_too: bool,
    ) -> Result<Vec<u8>, String> {
        let mut out = Self::payload(codec, plaintext, true);
        if out[24] == MODE_ZSTD {
            check_frame(codec, &out[25..], plaintext)?;
        }
        self.encrypt(&mut out, kind, id);
        if open_too {
            match self.open(codec, kind, id, &out, plaintext.len()) {
                Ok(back) if back == plaintext => {}
                Ok(_) => return Err("it opens to different content".to_string()),
                Err(e) => return Err(format!("it does not open: {e}")),
            }
        }
        Ok(out)
    }

    /// Nonce, mode and payload (zstd frame or stored bytes), unencrypted,
    /// with room for the tag.
    fn payload(codec: &mut Codec, plaintext: &[u8], compress: bool) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(SEAL_OVERHEAD + zstd::zstd_safe::compress_bound(plaintext.len()));
        out.extend_from_slice(&codec.nonces.next());
        out.push(MODE_ZSTD);
        let compressed = compress
            && {
                let mut cursor = Cursor::new(&mut out);
                cursor.set_position(25);
                matches!(codec.compressor.compress_to_buffer(plaintext, &mut cursor), Ok(n) if n < plaintext.len())
            };
        if !compressed {
            out.truncate(24);
            out.push(MODE_STORED);
            out.extend_from_slice(plaintext);
        }
        out
    }

    /// Encrypts `out` (nonce ‖ mode ‖ payload) in place and appends the tag.
    fn encrypt(&self, out: &mut Vec<u8>, kind: ObjectKind, id: &[u8; 32]) {
        let nonce = XNonce::try_from(&out[..24]).expect("24 bytes");
        let aad = self.aad(kind, id);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, &aad, (&mut out[24..]).into())
            .expect("objects are far below the AEAD length limit");
        out.extend_from_slice(&tag);
    }

    /// Opens a sealed object of `kind` named `id`, refusing content longer
    /// than `max_len` bytes.
    pub fn open(
        &self,
        codec: &mut Codec,
        kind: ObjectKind,
        id: &[u8; 32],
        sealed: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError::Truncated(sealed.len()));
        }
        let nonce = XNonce::try_from(&sealed[..24]).expect("24 bytes");
        let tag = Tag::try_from(&sealed[sealed.len() - 16..]).expect("16 bytes");
        let mut body = sealed[24..sealed.len() - 16].to_vec();
        let aad = self.aad(kind, id);
        self.cipher
            .decrypt_inout_detached(&nonce, &aad, body.as_mut_slice().into(), &tag)
            .map_err(|_| OpenError::Authentication)?;
        match body[0] {
            MODE_STORED => {
                if body.len() - 1 > max_len {
                    return Err(OpenError::TooLarge { limit: max_len });
                }
                body.remove(0);
                Ok(body)
            }
            MODE_ZSTD => codec
                .decompressor
                .decompress(&body[1..], max_len)
                .map_err(|e| {
                    if e.to_string().contains("too small") {
                        OpenError::TooLarge { limit: max_len }
                    } else {
                        OpenError::Decompression(e.to_string())
                    }
                }),
            mode => Err(OpenError::UnknownMode(mode)),
        }
    }
}

/// Decompresses the zstd `frame` into the codec's scratch buffer and
/// compares it with `plaintext`, the content it was made from.
fn check_frame(codec: &mut Codec, frame: &[u8], plaintext: &[u8]) -> Result<(), String> {
    codec.scratch.clear();
    codec.scratch.reserve(plaintext.len());
    match codec
        .decompressor
        .decompress_to_buffer(frame, &mut codec.scratch)
    {
        Ok(_) if codec.scratch[..] == *plaintext => Ok(()),
        Ok(n) => Err(format!(
            "its zstd frame decompresses to {n} bytes that differ from the {} compressed",
            plaintext.len()
        )),
        Err(e) => Err(format!("its zstd frame does not decompress: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealer() -> Sealer {
        Sealer::new(&[3; 32], RepoId([4; 32]), 2)
    }

    proptest! {
        #[test]
        fn open_inverts_seal(data in proptest::collection::vec(any::<u8>(), 0..5000), compress: bool) {
            let s = sealer();
            let mut codec = Codec::new(1);
            let sealed = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], &data, compress);
            let opened = s.open(&mut codec, ObjectKind::DataBlob, &[1; 32], &sealed, data.len()).unwrap();
            prop_assert_eq!(opened, data);
        }
    }

    proptest! {
        #[test]
        fn checked_seals_open_to_their_content(data in proptest::collection::vec(0u8..4, 0..5000), open_too: bool) {
            let s = sealer();
            let mut codec = Codec::new(1);
            let sealed = s.seal_checked(&mut codec, ObjectKind::DataBlob, &[1; 32], &data, open_too).unwrap();
            let opened = s.open(&mut codec, ObjectKind::DataBlob, &[1; 32], &sealed, data.len()).unwrap();
            prop_assert_eq!(opened, data);
        }
    }

    #[test]
    fn a_frame_that_does_not_give_back_its_plaintext_is_refused() {
        let mut codec = Codec::new(1);
        let text = b"INSERT INTO t VALUES (1, 'abc');\n".repeat(100);
        let frame = zstd::bulk::compress(&text, 1).unwrap();
        assert_eq!(check_frame(&mut codec, &frame, &text), Ok(()));
        // Another content's frame, one byte short, or damaged: each refused.
        let other = zstd::bulk::compress(&text[1..], 1).unwrap();
        let err = check_frame(&mut codec, &other, &text).unwrap_err();
        assert!(err.contains("differ"), "{err}");
        let err = check_frame(&mut codec, &frame[..frame.len() - 1], &text).unwrap_err();
        assert!(err.contains("does not decompress"), "{err}");
        let mut damaged = frame.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x55;
        assert!(check_frame(&mut codec, &damaged, &text).is_err());
        // A frame longer than its plaintext does not fit the buffer.
        let longer = zstd::bulk::compress(&[&text[..], b"x"].concat(), 1).unwrap();
        assert!(check_frame(&mut codec, &longer, &text).is_err());
    }

    #[test]
    fn compressible_content_is_stored_compressed() {
        let s = sealer();
        let mut codec = Codec::new(1);
        let text = b"INSERT INTO t VALUES (1, 'abc');\n".repeat(1000);
        let sealed = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], &text, true);
        assert!(sealed.len() < text.len() / 10);
        let raw = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], &text, false);
        assert_eq!(raw.len(), text.len() + SEAL_OVERHEAD);
    }

    #[test]
    fn an_object_opens_only_as_its_own_kind_id_and_repository() {
        let s = sealer();
        let mut codec = Codec::new(1);
        let sealed = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], b"payload", true);
        for (kind, id) in [
            (ObjectKind::TreeBlob, [1; 32]),
            (ObjectKind::Snapshot, [1; 32]),
            (ObjectKind::Index, [1; 32]),
            (ObjectKind::DataBlob, [2; 32]),
        ] {
            assert_eq!(
                s.open(&mut codec, kind, &id, &sealed, 100),
                Err(OpenError::Authentication)
            );
        }
        let other_repo = Sealer::new(&[3; 32], RepoId([5; 32]), 2);
        assert_eq!(
            other_repo.open(&mut codec, ObjectKind::DataBlob, &[1; 32], &sealed, 100),
            Err(OpenError::Authentication)
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let s = sealer();
        let mut codec = Codec::new(1);
        let sealed = s.seal(
            &mut codec,
            ObjectKind::TreeBlob,
            &[1; 32],
            b"some tree bytes",
            true,
        );
        for i in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                s.open(&mut codec, ObjectKind::TreeBlob, &[1; 32], &bad, 100)
                    .is_err()
            );
        }
        for len in 0..sealed.len() {
            assert!(
                s.open(
                    &mut codec,
                    ObjectKind::TreeBlob,
                    &[1; 32],
                    &sealed[..len],
                    100
                )
                .is_err()
            );
        }
    }

    #[test]
    fn content_over_the_cap_is_refused() {
        let s = sealer();
        let mut codec = Codec::new(1);
        let zeros = vec![0u8; 1 << 20];
        let sealed = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], &zeros, true);
        assert!(sealed.len() < 1000);
        assert_eq!(
            s.open(&mut codec, ObjectKind::DataBlob, &[1; 32], &sealed, 4096),
            Err(OpenError::TooLarge { limit: 4096 })
        );
        let stored = s.seal(
            &mut codec,
            ObjectKind::DataBlob,
            &[1; 32],
            &zeros[..5000],
            false,
        );
        assert_eq!(
            s.open(&mut codec, ObjectKind::DataBlob, &[1; 32], &stored, 4096),
            Err(OpenError::TooLarge { limit: 4096 })
        );
    }

    #[test]
    fn nonces_are_fresh_for_every_seal() {
        let s = sealer();
        let mut codec = Codec::new(1);
        let a = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], b"same", true);
        let b = s.seal(&mut codec, ObjectKind::DataBlob, &[1; 32], b"same", true);
        assert_ne!(a[..24], b[..24]);
        // Across batches and codecs too: no nonce is ever seen twice.
        let mut other = Codec::new(1);
        let mut seen = std::collections::HashSet::new();
        for i in 0..3 * NONCE_BATCH {
            let codec = if i % 3 == 0 { &mut other } else { &mut codec };
            let sealed = s.seal(codec, ObjectKind::DataBlob, &[1; 32], b"same", true);
            assert!(seen.insert(sealed[..24].to_vec()), "nonce {i} repeated");
            assert_ne!(sealed[..24], [0; 24]);
        }
    }
}
