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

    /// The cached tree pack `pack`, open, and its header's entries. `None`
    /// when it is not cached or its header does not open.
    fn open_cached_pack(&self, pack: &PackId) -> Option<(std::fs::File, Vec<PackEntry>)> {
        use std::os::unix::fs::FileExt;
        let name = pack_path(pack);
        let file = std::fs::File::open(self.cached_pack_path(pack)).ok()?;
        let size = file.metadata().ok()?.len();
        let mut tail = [0u8; 4];
        file.read_exact_at(&mut tail, size.checked_sub(4)?).ok()?;
        let range = header_range(&tail, size, &name).ok()?;
        let mut sealed = vec![0u8; usize::try_from(range.end - range.start).ok()?];
        file.read_exact_at(&mut sealed, range.start).ok()?;
        let header = with_codec(self.config.compression_level, |codec| {
            open_header(&self.sealer, codec, &sealed, range.start, &name)
        })
        .ok()?;
        Some((file, header.entries))
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

/// Trees read from the local tree-pack cache during one walk (a backup's
/// re-scan of its parent snapshot), found through the headers of the
/// cached packs they sit in: one catalog lookup and one header read per
/// tree pack, then one read per tree from a pack kept open (the last
/// [`OPEN_PACKS`] used). Looking up and opening every tree on its own took a
/// tenth of a re-scan's CPU time. Shared by the threads of the walk.
pub(crate) struct CachedTrees {
    repo: Repo,
    opener: BlobOpener,
    known: std::sync::Mutex<KnownTrees>,
}

/// Cached packs kept open at most: a parent snapshot's trees may be spread
/// over thousands of packs after many backups, and descriptors are limited.
const OPEN_PACKS: usize = 16;

#[derive(Default)]
struct KnownTrees {
    /// Packs looked at: true if cached and their header opened.
    packs: std::collections::HashMap<PackId, bool>,
    /// The trees in those packs.
    trees: std::collections::HashMap<BlobId, (PackId, PackEntry)>,
    /// Packs open, the most recently used last.
    open: Vec<(PackId, std::sync::Arc<std::fs::File>)>,
    /// Packs looked at that the catalog listed as usable when they were,
    /// and the blobs `check` had found damaged in them.
    usable: std::collections::HashMap<PackId, std::collections::HashSet<BlobId>>,
}

impl KnownTrees {
    /// The cached pack `pack`, open; reopened if it was closed.
    fn file(&mut self, repo: &Repo, pack: &PackId) -> Option<std::sync::Arc<std::fs::File>> {
        if let Some(at) = self.open.iter().position(|(p, _)| p == pack) {
            let entry = self.open.remove(at);
            let file = std::sync::Arc::clone(&entry.1);
            self.open.push(entry);
            return Some(file);
        }
        let file = std::sync::Arc::new(std::fs::File::open(repo.cached_pack_path(pack)).ok()?);
        self.keep_open(*pack, std::sync::Arc::clone(&file));
        Some(file)
    }

    fn keep_open(&mut self, pack: PackId, file: std::sync::Arc<std::fs::File>) {
        if self.open.len() >= OPEN_PACKS {
            self.open.remove(0);
        }
        self.open.push((pack, file));
    }
}

impl CachedTrees {
    /// An empty index over `repo`'s tree-pack cache.
    pub(crate) fn new(repo: &Repo) -> CachedTrees {
        CachedTrees {
            repo: repo.clone(),
            opener: repo.blob_opener(),
            known: std::sync::Mutex::new(KnownTrees::default()),
        }
    }

    /// The tree `id`, read on the calling thread without the runtime, for
    /// a thread that must not wait on it. `None` whenever the cache cannot
    /// answer (the pack is not cached, the blob is not indexed as a tree,
    /// the cached copy does not open or decode): [`Repo::load_tree`] then
    /// gives the answer, and handles a damaged cache file as it always
    /// does.
    pub(crate) fn load(&self, id: &BlobId) -> Option<Tree> {
        use std::os::unix::fs::FileExt;
        let (file, location) = self.find(id)?;
        let mut sealed = vec![0u8; location.length as usize];
        file.read_exact_at(&mut sealed, location.offset).ok()?;
        // Failures only mean `None`: no object names are formatted.
        let plain = self
            .opener
            .open("a cached tree pack", &location, id, &sealed)
            .ok()?;
        Tree::decode(&plain, "a cached tree").ok()
    }

    /// True if the tree `id` was found in a cached pack that the catalog
    /// listed as usable, without it among the pack's damaged blobs, when
    /// the pack was first looked at: what [`Catalog::has_blob`] would have
    /// answered then, without asking it per tree. False means unknown.
    ///
    /// [`Catalog::has_blob`]: crate::catalog::Catalog::has_blob
    pub(crate) fn stored_usably(&self, id: &BlobId) -> bool {
        let known = self.known.lock().expect("cached trees lock");
        known
            .trees
            .get(id)
            .and_then(|(pack, _)| known.usable.get(pack))
            .is_some_and(|damaged| !damaged.contains(id))
    }

    /// Where the tree `id` is in an open cached pack.
    fn find(&self, id: &BlobId) -> Option<(std::sync::Arc<std::fs::File>, BlobLocation)> {
        {
            let mut known = self.known.lock().expect("cached trees lock");
            if let Some(&(pack, entry)) = known.trees.get(id) {
                let file = known.file(&self.repo, &pack)?;
                let location = BlobLocation {
                    pack,
                    offset: entry.offset,
                    length: entry.length,
                    raw_length: entry.raw_length,
                    kind: ObjectKind::TreeBlob,
                };
                return Some((file, location));
            }
        }
        // In a pack not looked at yet (or not a tree the cache holds).
        let location = self.repo.locate(id).ok()?;
        if location.kind != ObjectKind::TreeBlob {
            return None;
        }
        // Asked before taking the lock: the catalog has its own.
        let fresh = !self
            .known
            .lock()
            .expect("cached trees lock")
            .packs
            .contains_key(&location.pack);
        let usable = fresh
            .then(|| {
                self.repo
                    .catalog()
                    .usable_pack(&location.pack)
                    .ok()
                    .flatten()
            })
            .flatten();
        let mut known = self.known.lock().expect("cached trees lock");
        if let std::collections::hash_map::Entry::Vacant(looked) = known.packs.entry(location.pack)
        {
            let opened = self.repo.open_cached_pack(&location.pack);
            looked.insert(opened.is_some());
            if let Some((file, entries)) = opened {
                for entry in entries {
                    if entry.object_kind() == Some(ObjectKind::TreeBlob) {
                        known.trees.insert(entry.id, (location.pack, entry));
                    }
                }
                known.keep_open(location.pack, std::sync::Arc::new(file));
                if let Some(damaged) = usable {
                    known.usable.insert(location.pack, damaged);
                }
            }
        }
        if !known.packs[&location.pack] {
            return None;
        }
        let file = known.file(&self.repo, &location.pack)?;
        Some((file, location))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::key::KdfParams;
    use crate::ops::backup::{BackupInput, BackupOptions, TreeInput, backup};
    use crate::repo::InitOptions;

    /// Every tree of a snapshot, found from its root.
    async fn all_trees(repo: &Repo, root: BlobId) -> Vec<(BlobId, Tree)> {
        let mut out = Vec::new();
        let mut todo = vec![root];
        while let Some(id) = todo.pop() {
            let tree = repo.load_tree(&id).await.unwrap();
            todo.extend(tree.entries.iter().filter_map(|n| n.subtree));
            out.push((id, tree));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_trees_come_from_the_cached_pack_and_never_wrong() {
        let cache = tempfile::tempdir().unwrap();
        let repo = Repo::init(
            Arc::new(MemoryBackend::new()),
            b"pw",
            InitOptions {
                kdf: KdfParams {
                    memory_kib: 64,
                    passes: 1,
                    lanes: 1,
                },
                profiles: vec![],
                chunker_seed: None,
                compression_level: None,
                data_pack_size: None,
                list_fanout: None,
                host: "h".into(),
                user: "u".into(),
            },
            cache.path(),
        )
        .await
        .unwrap();
        let source = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let dir = source.path().join(format!("d{i:02}/e"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f.yaml"), format!("note {i}\n")).unwrap();
        }
        let summary = backup(
            &repo,
            BackupOptions {
                source: "kb".into(),
                input: BackupInput::Tree(TreeInput {
                    paths: vec![source.path().to_path_buf()],
                    excludes: crate::source::tree::Excludes::new(&[]).unwrap(),
                    one_file_system: false,
                }),
                kind: "files".into(),
                allow_incomplete: false,
                unpack: true,
                tags: vec![],
                host: "h".into(),
                time: None,
                parent: None,
                progress: Arc::default(),
            },
        )
        .await
        .unwrap();
        let root = repo.snapshot(&summary.snapshot_id).unwrap().unwrap().root;
        let trees = all_trees(&repo, root).await;
        assert!(trees.len() > 80, "{} trees", trees.len());

        let cached = CachedTrees::new(&repo);
        for (id, tree) in &trees {
            assert_eq!(cached.load(id).as_ref(), Some(tree));
        }
        // One tree pack, located once: every other tree came from its header.
        let known = cached.known.lock().unwrap();
        assert_eq!(known.packs.len(), 1);
        assert!(known.open.len() <= OPEN_PACKS);
        assert!(known.trees.len() >= trees.len());
        drop(known);

        // A damaged cached copy answers nothing for what it damaged (the
        // caller then reads the repository), never a wrong tree.
        let (pack, _) = {
            let known = cached.known.lock().unwrap();
            *known.trees.get(&trees[5].0).unwrap()
        };
        let path = repo.cached_pack_path(&pack);
        let mut bytes = std::fs::read(&path).unwrap();
        let entry = cached.known.lock().unwrap().trees[&trees[5].0].1;
        bytes[entry.offset as usize + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let fresh = CachedTrees::new(&repo);
        for (id, tree) in &trees {
            match fresh.load(id) {
                Some(found) => assert_eq!(&found, tree),
                None => assert_eq!(*id, trees[5].0),
            }
        }
        assert!(fresh.load(&trees[5].0).is_none());
        // Not a tree: not answered from the cache.
        assert!(fresh.load(&BlobId([7; 32])).is_none());

        // Trees read from a pack the catalog lists as usable are known to
        // be stored, as has_blob says; the others are left to the catalog.
        for (id, _) in &trees {
            assert!(cached.stored_usably(id));
            assert!(repo.catalog().has_blob(id).unwrap());
        }
        assert!(!cached.stored_usably(&BlobId([7; 32])));
        // A blob check found damaged, or a pack pending deletion: not known,
        // as has_blob would not count on them either.
        repo.catalog()
            .set_damaged_blobs(&pack, &[trees[3].0])
            .unwrap();
        let damaged = CachedTrees::new(&repo);
        for (id, tree) in &trees {
            if let Some(found) = damaged.load(id) {
                assert_eq!(&found, tree);
            }
            // (Tree 5's cached copy is damaged, its stored one is not.)
            assert_eq!(damaged.stored_usably(id), *id != trees[3].0, "{id}");
            assert_eq!(repo.catalog().has_blob(id).unwrap(), *id != trees[3].0);
        }
        repo.catalog()
            .set_pack_state(&pack, crate::catalog::PackState::Pending)
            .unwrap();
        let pending = CachedTrees::new(&repo);
        for (id, _) in &trees {
            pending.load(id);
            assert!(!pending.stored_usably(id));
        }
    }
}
