//! `PackWriter`: collects sealed blobs of one pack kind and, when asked,
//! appends the sealed header and hands back the finished pack and its id.

use bytes::Bytes;

use super::{HEADER_ID, PackEntry, PackHeader, PackKind};
use crate::hash::{BlobId, PackId};
use crate::seal::{Codec, ObjectKind, Sealer};

/// A pack being assembled in memory.
#[derive(Debug)]
pub(crate) struct PackWriter {
    kind: PackKind,
    bytes: PageBuf,
    entries: Vec<PackEntry>,
}

/// A complete pack, ready to store under [`super::pack_path`].
#[derive(Debug)]
pub(crate) struct FinishedPack {
    /// BLAKE3 of `bytes`.
    pub id: PackId,
    /// Data or tree pack.
    pub kind: PackKind,
    /// The stored bytes, starting on a page boundary ([`PAGE`]).
    pub bytes: Bytes,
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
            bytes: PageBuf::with_capacity(capacity),
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
        let bytes = Bytes::from_owner(bytes);
        FinishedPack {
            id: PackId::of_pack(&bytes),
            kind: self.kind,
            bytes,
            entries: header.entries,
        }
    }
}

/// The alignment of a pack's bytes in memory: what a local repository's
/// direct I/O asks of a buffer, so that it can write a pack without copying
/// it into the page cache.
pub const PAGE: usize = crate::backend::local::DIRECT_IO_ALIGN;
const _: () = assert!(std::mem::align_of::<Page>() == PAGE);

/// One page of a [`PageBuf`].
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

/// A growable byte buffer that starts on a page boundary.
struct PageBuf {
    // Invariant: every page up to `pages.len()` is initialised, and
    // `pages.len()` is the fewest pages that hold `len` bytes.
    pages: Vec<Page>,
    len: usize,
}

impl PageBuf {
    fn with_capacity(bytes: usize) -> PageBuf {
        PageBuf {
            pages: Vec::with_capacity(bytes.div_ceil(PAGE)),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn extend_from_slice(&mut self, more: &[u8]) {
        let len = self.len + more.len();
        let pages = len.div_ceil(PAGE);
        self.pages.reserve(pages - self.pages.len());
        let base = self.pages.as_mut_ptr().cast::<u8>();
        // SAFETY: the reservation makes `pages` pages writable from `base`;
        // `more` lies outside this buffer (a `&mut self` is held). The
        // bytes after `len` in the last page are zeroed, so every page up
        // to `pages` is initialised before the length says so.
        unsafe {
            std::ptr::copy_nonoverlapping(more.as_ptr(), base.add(self.len), more.len());
            std::ptr::write_bytes(base.add(len), 0, pages * PAGE - len);
            self.pages.set_len(pages);
        }
        self.len = len;
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBuf").field("len", &self.len).finish()
    }
}

impl AsRef<[u8]> for PageBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` bytes of initialised pages (see the invariant).
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_buffer_holds_what_was_appended_and_starts_on_a_page() {
        for capacity in [0, 1, PAGE, 3 * PAGE + 5] {
            let mut buf = PageBuf::with_capacity(capacity);
            let mut expected = Vec::new();
            for (i, n) in [0, 1, PAGE - 1, 2, PAGE, 3 * PAGE + 7, 0, 13]
                .into_iter()
                .enumerate()
            {
                let piece: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
                buf.extend_from_slice(&piece);
                expected.extend_from_slice(&piece);
                assert_eq!(buf.len(), expected.len());
                assert_eq!(buf.as_ref(), &expected[..]);
                assert_eq!(buf.as_ref().as_ptr() as usize % PAGE, 0);
            }
            let bytes = Bytes::from_owner(buf);
            assert_eq!(&bytes[..], &expected[..]);
        }
    }
}
