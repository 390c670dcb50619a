//! Blob reads: locating a blob, fetching and opening it, and the local
//! cache of tree packs that keeps browsing and re-scans off the network.

use std::collections::HashSet;
use std::path::PathBuf;

use bytes::Bytes;

use crate::backend::Backend;
use crate::catalog::BlobLocation;
use crate::error::{Error, Result};
use crate::hash::{BlobHasher, BlobId, PackId};
use crate::layout::pack_path;
use crate::pack::{PackEntry, header_range, open_header};
use crate::seal::{ObjectKind, Sealer, with_codec};
use crate::snapshot::{Content, Node, NodeKind, Tree};

use super::Repo;

/// Opens blobs fetched from packs; see [`Repo::blob_opener`].
#[derive(Clone, Debug)]
pub(crate) struct BlobOpener {
    sealer: Sealer,
    hasher: BlobHasher,
    level: i32,
}

impl BlobOpener {
    /// Opens `sealed` as the blob `id` found at `location` in pack `pack_name`,
    /// and checks its plaintext length and recomputed id.
    pub fn open(
        &self,
        pack_name: &str,
        location: &BlobLocation,
        id: &BlobId,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let object = || format!("{pack_name} (blob {})", id.short());
        let plain = with_codec(self.level, |codec| {
            self.sealer.open(
                codec,
                location.kind,
                id.as_bytes(),
                sealed,
                location.raw_length as usize,
            )
        })
        .map_err(|e| Error::corrupt(object(), e.to_string()))?;
        if plain.len() != location.raw_length as usize {
            return Err(Error::corrupt(
                object(),
                format!(
                    "holds {} bytes, the index says {}",
                    plain.len(),
                    location.raw_length
                ),
            ));
        }
        if self.hasher.blob_id(location.kind, &plain) != *id {
            return Err(Error::corrupt(object(), "content does not match its id"));
        }
        Ok(plain)
    }
}

impl Repo {
    /// Where a usable copy of a blob is stored.
    pub fn locate(&self, id: &BlobId) -> Result<BlobLocation> {
        let catalog = self.catalog();
        if let Some(location) = catalog.locate(id)? {
            return Ok(location);
        }
        Err(match catalog.unusable_copy(id)? {
            Some(pack) => Error::corrupt(
                format!("{} (blob {})", pack_path(&pack), id.short()),
                "was found damaged or missing by `larder check`, and no intact copy is left",
            ),
            None => Error::NotFound {
                object: format!("blob {id}"),
            },
        })
    }

    /// Fetches one blob, opens it, and checks its length and id. Tree and
    /// list blobs come from the local tree-pack cache when it has their pack,
    /// and their pack is cached whole on first use, so browsing, restore and
    /// re-scans read metadata locally.
    pub async fn read_blob(&self, kind: ObjectKind, id: &BlobId) -> Result<Vec<u8>> {
        let location = self.locate(id)?;
        if location.kind != kind {
            return Err(Error::corrupt(
                format!("blob {id}"),
                format!(
                    "is indexed as {:?}, but {:?} was expected",
                    location.kind, kind
                ),
            ));
        }
        let name = pack_path(&location.pack);
        let range = location.offset..location.end();
        let opener = self.blob_opener();
        let id = *id;
        let open = |sealed: Bytes| {
            let opener = opener.clone();
            let name = name.clone();
            async move {
                tokio::task::spawn_blocking(move || opener.open(&name, &location, &id, &sealed))
                    .await
                    .expect("opening task panicked")
            }
        };
        if kind == ObjectKind::DataBlob {
            return open(self.backend.get_range(&name, range).await?).await;
        }
        if let Some(sealed) = self.cached_range(&location.pack, &range) {
            match open(sealed).await {
                Ok(plain) => return Ok(plain),
                // A damaged cache file is dropped and the pack fetched again.
                Err(_) => self.uncache_pack(&location.pack),
            }
        }
        let sealed = match self.fetch_tree_pack(&location.pack).await? {
            Some(pack) => pack.slice(range.start as usize..range.end as usize),
            None => self.backend.get_range(&name, range).await?,
        };
        open(sealed).await
    }

    /// Reads a pack's header from its tail, for a pack no index object
    /// names; `size` is its size from a listing. Bounded: the header length
    /// field is checked against the largest header larder writes before
    /// anything more is read.
    pub(crate) async fn read_pack_header(&self, name: &str, size: u64) -> Result<Vec<PackEntry>> {
        // Bytes read from a pack's end in the first request; most headers fit.
        const TAIL_GUESS: u64 = 256 << 10;
        let guess = size.min(TAIL_GUESS);
        let tail = self.backend.get_range(name, size - guess..size).await?;
        let range = header_range(&tail, size, name)?;
        let sealed = if range.start >= size - guess {
            let at = (range.start - (size - guess)) as usize;
            tail.slice(at..at + (range.end - range.start) as usize)
        } else {
            self.backend.get_range(name, range.clone()).await?
        };
        let header = with_codec(1, |codec| {
            open_header(&self.sealer, codec, &sealed, range.start, name)
        })?;
        if header.entries.is_empty() {
            return Err(Error::corrupt(name, "pack header lists no blobs"));
        }
        Ok(header.entries)
    }

    /// Directory of locally cached tree packs.
    fn pack_cache_dir(&self) -> PathBuf {
        self.cache_dir.join("packs")
    }

    fn cached_pack_path(&self, pack: &PackId) -> PathBuf {
        self.pack_cache_dir().join(pack.to_hex())
    }

    fn cached_range(&self, pack: &PackId, range: &std::ops::Range<u64>) -> Option<Bytes> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(self.cached_pack_path(pack)).ok()?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start).ok()?;
        Some(Bytes::from(buf))
    }

    fn uncache_pack(&self, pack: &PackId) {
        let _ = std::fs::remove_file(self.cached_pack_path(pack));
    }

    /// Fetches a whole tree pack and caches it, if it is small enough to be
    /// worth it and its bytes match its name. `None` means: read the range.
    async fn fetch_tree_pack(&self, pack: &PackId) -> Result<Option<Bytes>> {
        const MAX_CACHED_PACK: u64 = 64 << 20;
        let Some(record) = self.catalog().pack(pack)? else {
            return Ok(None);
        };
        if record.kind != crate::pack::PackKind::Tree || record.size > MAX_CACHED_PACK {
            return Ok(None);
        }
        let bytes = self.backend.get(&pack_path(pack), record.size).await?;
        if PackId::of_pack(&bytes) != *pack {
            // Damaged in storage: do not cache it; the blob itself may
            // still open from its range, and check will name the pack.
            return Ok(None);
        }
        self.cache_tree_pack(pack, &bytes);
        Ok(Some(bytes))
    }

    /// Keeps a copy of a tree pack in the local cache (best effort: a cache
    /// that cannot be written only costs requests later).
    pub(crate) fn cache_tree_pack(&self, pack: &PackId, bytes: &[u8]) {
        let dir = self.pack_cache_dir();
        let target = self.cached_pack_path(pack);
        if target.exists() || crate::catalog::create_private_dir(&dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(
            ".tmp-{}",
            hex::encode(&crate::hash::random_bytes()[..8])
        ));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &target).is_ok() {
            return;
        }
        let _ = std::fs::remove_file(&tmp);
    }

    /// Deletes cached packs the catalog no longer knows (after prune).
    pub(super) fn prune_pack_cache(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(self.pack_cache_dir()) else {
            return Ok(());
        };
        let known: HashSet<PackId> = self.catalog().packs()?.into_iter().map(|p| p.id).collect();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse().ok())
                .is_some_and(|id| known.contains(&id));
            if !keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// A cheap, thread-safe handle for opening blobs on worker threads.
    pub(crate) fn blob_opener(&self) -> BlobOpener {
        BlobOpener {
            sealer: self.sealer.clone(),
            hasher: self.hasher.clone(),
            level: self.config.compression_level,
        }
    }

    /// Reads and decodes a tree blob.
    pub(crate) async fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        let plain = self.read_blob(ObjectKind::TreeBlob, id).await?;
        Tree::decode(&plain, &format!("tree {id}"))
    }

    /// Reads and decodes a tree blob from the local tree-pack cache on the
    /// calling thread, without the runtime, for a thread that must not wait
    /// on it. `None` whenever the cache cannot answer (the pack is not
    /// cached, the blob is not indexed as a tree, the cached copy does not
    /// open or decode): [`Repo::load_tree`] then gives the answer, and
    /// handles a damaged cache file as it always does.
    pub(crate) fn load_cached_tree(&self, id: &BlobId) -> Option<Tree> {
        let location = self.locate(id).ok()?;
        if location.kind != ObjectKind::TreeBlob {
            return None;
        }
        let range = location.offset..location.end();
        let sealed = self.cached_range(&location.pack, &range)?;
        let plain = self
            .blob_opener()
            .open(&pack_path(&location.pack), &location, id, &sealed)
            .ok()?;
        Tree::decode(&plain, &format!("tree {id}")).ok()
    }

    /// Finds the node at `path` (components separated by `/`; leading and
    /// repeated separators ignored) below the tree `root`. `None` if absent.
    pub async fn lookup(&self, root: &BlobId, path: &[u8]) -> Result<Option<Node>> {
        let components: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let Some((last, dirs)) = components.split_last() else {
            return Err(Error::InvalidArgument("an empty path names no file".into()));
        };
        let mut tree = self.load_tree(root).await?;
        for dir in dirs {
            match tree.get(dir) {
                Some(Node {
                    kind: NodeKind::Dir,
                    subtree: Some(subtree),
                    ..
                }) => tree = self.load_tree(subtree).await?,
                _ => return Ok(None),
            }
        }
        Ok(tree.get(last).cloned())
    }

    /// Reads and decodes a list blob expected at `depth`.
    pub(crate) async fn load_list(&self, id: &BlobId, depth: u8) -> Result<Content> {
        let plain = self.read_blob(ObjectKind::ListBlob, id).await?;
        Content::decode_list(&plain, depth, &format!("content list {id}"))
    }
}
