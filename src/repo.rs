//! `Repo`: an opened repository, which is a backend, the unwrapped keys, the
//! config, and the catalog. Every operation starts here.
//!
//! Opening reads `config` (refusing unknown formats before any KDF work),
//! tries the passphrase on each key file, opens the sealed config, and then
//! brings the catalog in step with the repository: snapshots are listed
//! before index objects (a snapshot is written after the index naming its
//! packs, so every snapshot seen has its index visible), and pending
//! generations between the two (prune deletes a generation only after the
//! packs and index entries it names, so no deleted pack looks usable). With
//! a lease, the lease is taken before the sync. New objects are
//! absorbed and vanished ones forgotten. A damaged snapshot or index object
//! is reported as a warning and skipped, so one bad object cannot make every
//! command fail.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{Backend, Metered, Put, RequestCounts};
use crate::catalog::{BlobLocation, Catalog, SnapshotFilter};
use crate::config::{ChunkerProfile, Config, ConfigEnvelope, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::hash::{BlobHasher, BlobId, GenerationId, IndexId, KeyId, PackId, RepoId, SnapshotId};
use crate::index::{
    IndexObject, MAX_INDEX_SIZE, MAX_PENDING_SIZE, PendingObject, index_path, pending_path,
    snapshot_path,
};
use crate::key::{KdfParams, KeyFile, MasterKey};
use crate::lease::{Lease, LeaseKind};
use crate::pack::{PackEntry, header_range, open_header, pack_path};
use crate::seal::{ObjectKind, Sealer, with_codec};
use crate::snapshot::{Content, Node, NodeKind, Snapshot, Tree};

/// Largest snapshot object plaintext accepted (16 MiB).
pub const MAX_SNAPSHOT_SIZE: usize = 16 << 20;
/// Concurrent requests when absorbing new objects.
const SYNC_CONCURRENCY: usize = 8;

/// Settings for a new repository.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Argon2id parameters for the first key file.
    pub kdf: KdfParams,
    /// Chunker profiles replacing the defaults of the same name.
    pub profiles: Vec<ChunkerProfile>,
    /// The chunker seed, when it must match another repository's (else
    /// random).
    pub chunker_seed: Option<u64>,
    /// zstd level, if not the default.
    pub compression_level: Option<i32>,
    /// Data pack target size in bytes, if not the default.
    pub data_pack_size: Option<u32>,
    /// Content-list fanout, if not the default (tests use small values to
    /// exercise deep lists on small inputs).
    pub list_fanout: Option<u32>,
    /// Host name recorded in the key file.
    pub host: String,
    /// User name recorded in the key file.
    pub user: String,
}

/// Who is running the operation, recorded in key files and snapshots.
pub fn current_user() -> String {
    // SAFETY: getuid cannot fail; getpwuid returns a pointer into static
    // storage or null, read immediately on this thread.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
        libc::getuid().to_string()
    }
}

/// This machine's host name.
pub fn current_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    jiff::Timestamp::now().as_nanosecond() as i64
}

/// A pending generation's time in nanoseconds from its storage time.
/// Without one, the generation is taken as the newest possible: every lease
/// then counts as older, which only delays its sweep.
fn generation_time(modified: Option<jiff::Timestamp>) -> i64 {
    modified.map_or(i64::MAX, |t| {
        i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
    })
}

/// What [`Repo::sync`] did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// Snapshots absorbed.
    pub snapshots_added: usize,
    /// Snapshots forgotten because they left the repository.
    pub snapshots_removed: usize,
    /// Index objects absorbed.
    pub indexes_added: usize,
    /// Index objects forgotten.
    pub indexes_removed: usize,
    /// Objects that could not be read, with the reason. They were skipped.
    pub warnings: Vec<String>,
    /// The snapshot, index and pending objects among them that are damaged
    /// (as opposed to deleted between the listing and the read).
    pub damaged: Vec<DamagedObject>,
}

/// A listed object that could not be read or opened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedObject {
    /// Its name, such as `snapshots/<id>`.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
    /// Its storage modification time (nanoseconds since the epoch), if the
    /// listing gave one.
    pub stored_ns: Option<i64>,
}

impl std::fmt::Display for DamagedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

impl SyncReport {
    /// Records `error` about `name` as damage, unless the object merely
    /// vanished between the listing and the read (deleted by another
    /// process, which is no damage).
    fn note_damage(&mut self, name: &str, error: &Error, stored_ns: Option<i64>) {
        if matches!(error, Error::NotFound { .. }) {
            return;
        }
        let reason = match error {
            Error::Corrupt { object, reason } if object == name => reason.clone(),
            e => e.to_string(),
        };
        self.damaged.push(DamagedObject {
            name: name.into(),
            reason,
            stored_ns,
        });
    }
}

/// An opened repository. Cloning is cheap and shares everything, so
/// pipeline threads and tasks each hold their own handle.
#[derive(Clone, Debug)]
pub struct Repo {
    backend: Metered,
    config: Arc<Config>,
    sealer: Sealer,
    hasher: BlobHasher,
    key_id: KeyId,
    master: Arc<MasterKey>,
    catalog: Arc<Mutex<Catalog>>,
    cache_dir: PathBuf,
    sync_report: SyncReport,
    /// What the latest sync found damaged (every sync reads damaged objects
    /// again, since they are never absorbed, so this is the whole set).
    damaged: Arc<Mutex<Vec<DamagedObject>>>,
    lease: Arc<Mutex<LeaseSlot>>,
}

/// The lease a handle (and its clones) holds, and how many holds are on it.
#[derive(Debug, Default)]
struct LeaseSlot {
    lease: Option<Arc<Lease>>,
    /// Open holds: one for a lease taken at open (ended by
    /// [`Repo::release_lease`]), one per live [`LeaseGuard`].
    holds: usize,
}

/// One operation's hold on the handle's lease, from [`Repo::hold_lease`].
/// The lease is released when the last hold ends; end a hold with
/// [`LeaseGuard::finish`] (a guard dropped without it releases the lease in
/// the background, or leaves it to expire when no runtime is left).
#[derive(Debug)]
#[must_use = "the lease is held until the guard is finished or dropped"]
pub struct LeaseGuard {
    slot: Arc<Mutex<LeaseSlot>>,
    lease: Arc<Lease>,
    finished: bool,
}

impl LeaseGuard {
    /// The lease held.
    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Ends this hold, releasing the lease if it was the last one.
    pub async fn finish(mut self) {
        self.finished = true;
        if let Some(lease) = unhold(&self.slot) {
            lease.release().await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(lease) = unhold(&self.slot)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { lease.release().await });
        }
    }
}

/// Ends one hold; returns the lease when that was the last.
fn unhold(slot: &Mutex<LeaseSlot>) -> Option<Arc<Lease>> {
    let mut slot = slot.lock().expect("lease lock");
    slot.holds = slot.holds.saturating_sub(1);
    if slot.holds == 0 {
        slot.lease.take()
    } else {
        None
    }
}

impl Repo {
    /// Creates a repository on empty storage and opens it.
    pub async fn init(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        options: InitOptions,
        cache_root: &Path,
    ) -> Result<Repo> {
        let repo_id = RepoId::random();
        let seed = options.chunker_seed.unwrap_or_else(|| {
            let mut seed = [0u8; 8];
            crate::hash::fill_random(&mut seed);
            u64::from_le_bytes(seed)
        });
        let mut config = Config::new(repo_id, seed, now_ns());
        for profile in &options.profiles {
            config.set_profile(profile.clone());
        }
        if let Some(level) = options.compression_level {
            config.compression_level = level;
        }
        if let Some(size) = options.data_pack_size {
            config.data_pack_size = size;
        }
        if let Some(fanout) = options.list_fanout {
            config.list_fanout = fanout;
        }
        // Settings come from the caller here, so a bad one is a bad
        // argument, not a damaged repository.
        config.validate().map_err(|e| match e {
            Error::Corrupt { reason, .. } => {
                Error::InvalidArgument(format!("invalid repository settings: {reason}"))
            }
            e => e,
        })?;
        options.kdf.validate().map_err(Error::InvalidArgument)?;

        let backend = Metered::new(backend);
        backend.create_root().await?;
        let master = MasterKey::generate();
        let (key_id, key_bytes) = KeyFile::create(
            &master,
            repo_id,
            passphrase,
            options.kdf,
            now_ns(),
            options.host,
            options.user,
        )?;
        backend
            .put_if_absent(&format!("keys/{key_id}"), Bytes::from(key_bytes))
            .await?;

        // The config is written last: until it exists the location is not a
        // repository, so an interrupted init leaves nothing half-usable.
        let sealer = Sealer::new(&master.sealing_key(), repo_id);
        let body = minicbor::to_vec(&config).expect("encoding to a Vec cannot fail");
        let sealed = with_codec(config.compression_level, |codec| {
            sealer.seal(codec, ObjectKind::Config, repo_id.as_bytes(), &body, true)
        });
        let envelope = ConfigEnvelope {
            version: FORMAT_VERSION,
            repo_id,
            sealed,
        };
        let bytes = minicbor::to_vec(&envelope).expect("encoding to a Vec cannot fail");
        if backend.put_if_absent("config", Bytes::from(bytes)).await? == Put::Existed {
            return Err(Error::AlreadyInitialised {
                location: backend.location(),
            });
        }
        Repo::assemble(backend, master, key_id, config, cache_root, None).await
    }

    /// Opens an existing repository with `passphrase`.
    pub async fn open(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        cache_root: &Path,
    ) -> Result<Repo> {
        Repo::open_with(backend, passphrase, cache_root, None).await
    }

    /// Opens an existing repository holding a lease of `kind` (taken before
    /// the catalog is brought in step, as prune's protocol needs). Release
    /// it with [`Repo::release_lease`] when done; a process that dies
    /// leaves it to expire.
    pub async fn open_with(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        cache_root: &Path,
        lease: Option<LeaseKind>,
    ) -> Result<Repo> {
        // Count from the first request: opening's GETs are part of what a
        // command costs.
        let backend = Metered::new(backend);
        let envelope = read_envelope(&backend).await?;
        let cache_dir = cache_dir_for(cache_root, envelope.repo_id, &backend.location());
        let (master, key_id) = unlock(&backend, &envelope, passphrase, &cache_dir).await?;
        let sealer = Sealer::new(&master.sealing_key(), envelope.repo_id);
        let body = with_codec(1, |codec| {
            sealer.open(
                codec,
                ObjectKind::Config,
                envelope.repo_id.as_bytes(),
                &envelope.sealed,
                1 << 20,
            )
        })
        .map_err(|e| Error::corrupt("config", e.to_string()))?;
        let config: Config = minicbor::decode(&body)
            .map_err(|e| Error::corrupt("config", format!("does not parse: {e}")))?;
        if config.repo_id != envelope.repo_id {
            return Err(Error::corrupt(
                "config",
                "sealed repository id differs from the outer one",
            ));
        }
        config.validate()?;
        Repo::assemble(backend, master, key_id, config, cache_root, lease).await
    }

    async fn assemble(
        backend: Metered,
        master: MasterKey,
        key_id: KeyId,
        config: Config,
        cache_root: &Path,
        lease: Option<LeaseKind>,
    ) -> Result<Repo> {
        let cache_dir = cache_dir_for(cache_root, config.repo_id, &backend.location());
        let (catalog, set_aside) = open_or_replace_catalog(&cache_dir.join("catalog.sqlite"))?;
        // Remember which key opened the repository so the next open tries it
        // first; losing this file only costs KDF time.
        let _ = std::fs::write(cache_dir.join("last-key"), key_id.to_hex());
        let mut repo = Repo {
            backend,
            sealer: Sealer::new(&master.sealing_key(), config.repo_id),
            hasher: BlobHasher::new(*master.blob_id_key()),
            config: Arc::new(config),
            key_id,
            master: Arc::new(master),
            catalog: Arc::new(Mutex::new(catalog)),
            cache_dir,
            sync_report: SyncReport::default(),
            damaged: Arc::default(),
            lease: Arc::default(),
        };
        // The lease comes before the sync: everything a pending generation
        // older than the lease says is then seen, and prune waits for this
        // lease before deleting anything newer.
        if let Some(kind) = lease {
            repo.acquire_lease(kind).await?;
        }
        let mut warnings: Vec<String> = set_aside.into_iter().collect();
        repo.sync_report = match repo.sync().await {
            Ok(report) => report,
            // Damage deeper than the header shows only once the catalog is
            // used; it is derived data, so set it aside and start again.
            Err(e) if e.is_catalog_corrupt() => {
                warnings.push(repo.replace_catalog(&e)?);
                repo.sync().await?
            }
            Err(e) => return Err(e),
        };
        repo.sync_report.warnings.extend(warnings);
        Ok(repo)
    }

    /// Sets a damaged catalog aside and opens an empty one in its place.
    fn replace_catalog(&self, error: &Error) -> Result<String> {
        let mut catalog = self.catalog();
        let path = catalog.path().to_path_buf();
        *catalog = Catalog::open_in_memory()?;
        let (fresh, _) = set_aside_and_open(&path)?;
        *catalog = fresh;
        Ok(format!(
            "the catalog could not be used ({error}); it was set aside and rebuilt from the repository"
        ))
    }

    /// The storage, metered.
    pub fn backend(&self) -> &Metered {
        &self.backend
    }

    /// Requests made through this repository so far.
    pub fn counts(&self) -> RequestCounts {
        self.backend.counts()
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The repository id.
    pub fn id(&self) -> RepoId {
        self.config.repo_id
    }

    /// The sealer for this repository's objects.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The blob id hasher.
    pub fn hasher(&self) -> &BlobHasher {
        &self.hasher
    }

    /// The key file that opened the repository.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The master key, for wrapping it under another passphrase.
    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// Replaces the catalog with an empty one (its files are deleted) and
    /// absorbs the whole repository again.
    pub async fn reset_catalog(&self) -> Result<SyncReport> {
        {
            let mut catalog = self.catalog();
            let path = catalog.path().to_path_buf();
            *catalog = Catalog::open_in_memory()?;
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("deleting", PathBuf::from(file), e)),
                }
            }
            *catalog = Catalog::open(&path)?;
        }
        self.sync().await
    }

    /// This repository's cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    async fn acquire_lease(&self, kind: LeaseKind) -> Result<Arc<Lease>> {
        let lease = Arc::new(
            Lease::acquire(
                &self.backend,
                &self.sealer,
                self.config.compression_level,
                kind,
            )
            .await?,
        );
        let joined = {
            let mut slot = self.lease.lock().expect("lease lock");
            match &slot.lease {
                // Another task took one meanwhile: join it, drop ours.
                Some(held) => {
                    let held = Arc::clone(held);
                    slot.holds += 1;
                    Some(held)
                }
                None => {
                    slot.lease = Some(Arc::clone(&lease));
                    slot.holds = 1;
                    None
                }
            }
        };
        match joined {
            Some(held) => {
                lease.release().await;
                Ok(held)
            }
            None => Ok(lease),
        }
    }

    /// Holds a lease for one operation that reads or writes packs, so that
    /// no prune sweeps what it relies on: the handle's lease if it has one
    /// (taken at open, or by another operation still running), else a new
    /// lease of `kind`, after which the catalog is brought in step again
    /// (what it absorbed before the lease is not covered). Prune needs a
    /// prune lease; every other operation takes any.
    pub async fn hold_lease(&self, kind: LeaseKind) -> Result<LeaseGuard> {
        let held = {
            let mut slot = self.lease.lock().expect("lease lock");
            match &slot.lease {
                Some(lease) => {
                    let lease = Arc::clone(lease);
                    slot.holds += 1;
                    Some(lease)
                }
                None => None,
            }
        };
        let lease = match held {
            Some(lease) => lease,
            None => {
                let lease = self.acquire_lease(kind).await?;
                let guard = LeaseGuard {
                    slot: Arc::clone(&self.lease),
                    lease,
                    finished: false,
                };
                if let Err(e) = self.sync().await {
                    guard.finish().await;
                    return Err(e);
                }
                return Ok(guard);
            }
        };
        let guard = LeaseGuard {
            slot: Arc::clone(&self.lease),
            lease,
            finished: false,
        };
        if kind == LeaseKind::Prune && guard.lease.kind() != LeaseKind::Prune {
            let held = guard.lease.kind();
            guard.finish().await;
            return Err(Error::InvalidArgument(format!(
                "prune needs a prune lease, but this handle holds a {} lease",
                held.name()
            )));
        }
        Ok(guard)
    }

    /// The lease this handle holds, if any.
    pub fn lease(&self) -> Option<Arc<Lease>> {
        self.lease.lock().expect("lease lock").lease.clone()
    }

    /// Ends the lease, if one is held, whatever holds remain (the end of a
    /// process that opened the repository with one).
    pub async fn release_lease(&self) {
        let lease = {
            let mut slot = self.lease.lock().expect("lease lock");
            slot.holds = 0;
            slot.lease.take()
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
    }

    /// Before a commit: fails if this handle's lease ever lapsed (see
    /// [`Lease::confirm`]), or if it holds none (a commit without a lease
    /// could rely on packs a prune is sweeping).
    pub async fn confirm_lease(&self) -> Result<()> {
        match self.lease() {
            Some(lease) => lease.confirm().await.map(|_| ()),
            None => Err(Error::InvalidArgument(
                "a snapshot is committed only under a lease (see Repo::hold_lease)".into(),
            )),
        }
    }

    /// Snapshot, index and pending objects the latest sync could not read
    /// or open. Every sync reads them again, so this is the current set.
    pub fn damaged_objects(&self) -> Vec<DamagedObject> {
        self.damaged.lock().expect("damage lock").clone()
    }

    /// What the sync at open found (warnings about unreadable objects).
    pub fn open_report(&self) -> &SyncReport {
        &self.sync_report
    }

    /// Locks the catalog. Held only for short, synchronous queries; never
    /// across an await.
    pub fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog
            .lock()
            .expect("catalog lock poisoned by a panic")
    }

    /// Brings the catalog in step with the repository.
    pub async fn sync(&self) -> Result<SyncReport> {
        let mut report = SyncReport::default();

        // What the catalog knows is read before listing: anything another
        // process absorbs in between is then neither "gone" nor lost.
        let known = self.catalog().snapshot_ids()?;
        let listed: HashMap<SnapshotId, Option<i64>> = self
            .backend
            .list("snapshots/")
            .await?
            .iter()
            .filter_map(|o| {
                let id = o.name.strip_prefix("snapshots/")?.parse().ok()?;
                Some((id, o.modified.map(|t| generation_time(Some(t)))))
            })
            .collect();
        let gone: Vec<SnapshotId> = known
            .iter()
            .filter(|id| !listed.contains_key(id))
            .copied()
            .collect();
        report.snapshots_removed = gone.len();
        self.catalog
            .lock()
            .expect("catalog lock")
            .remove_snapshots(&gone)?;
        let new: Vec<SnapshotId> = listed
            .keys()
            .filter(|id| !known.contains(id))
            .copied()
            .collect();
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> = futures::stream::iter(new)
            .map(|id| async move { (id, self.load_snapshot(&id).await) })
            .buffer_unordered(SYNC_CONCURRENCY)
            .collect()
            .await;
        for (id, snapshot) in loaded {
            match snapshot {
                Ok(snapshot) => {
                    self.catalog().insert_snapshot(&id, &snapshot)?;
                    report.snapshots_added += 1;
                }
                Err(e) if e.is_damage() => {
                    report
                        .warnings
                        .push(format!("skipped snapshot {}: {e}", id.short()));
                    report.note_damage(&snapshot_path(&id), &e, listed[&id]);
                }
                Err(e) => return Err(e),
            }
        }

        // Pending generations before index objects: a sweep deletes packs,
        // then rewrites the index objects naming them, then deletes the
        // generation, so reading in this order never shows a deleted pack
        // as usable.
        let known: HashMap<GenerationId, i64> =
            self.catalog().pending_generations()?.into_iter().collect();
        let listed: HashMap<GenerationId, i64> = self
            .backend
            .list("pending/")
            .await?
            .iter()
            .filter_map(|o| {
                let id: GenerationId = o.name.strip_prefix("pending/")?.parse().ok()?;
                Some((id, generation_time(o.modified)))
            })
            .collect();
        let gone: Vec<GenerationId> = known
            .keys()
            .filter(|id| !listed.contains_key(id))
            .copied()
            .collect();
        self.catalog
            .lock()
            .expect("catalog lock")
            .drop_pending(&gone)?;
        for (id, time) in &listed {
            if known.contains_key(id) {
                continue;
            }
            match self.load_pending(id).await {
                Ok(pending) => self.catalog.lock().expect("catalog lock").absorb_pending(
                    id,
                    *time,
                    &pending.packs,
                )?,
                // A pending generation that cannot be read protects
                // nothing and deletes nothing: prune will not sweep it.
                Err(e) if e.is_damage() => {
                    report
                        .warnings
                        .push(format!("skipped pending generation {}: {e}", id.short()));
                    report.note_damage(&pending_path(id), &e, Some(*time));
                }
                Err(e) => return Err(e),
            }
        }

        let known = self.catalog().index_ids()?;
        let listed: HashSet<IndexId> = self
            .backend
            .list("index/")
            .await?
            .iter()
            .filter_map(|o| o.name.strip_prefix("index/")?.parse().ok())
            .collect();
        let gone: Vec<IndexId> = known.difference(&listed).copied().collect();
        report.indexes_removed = gone.len();
        let dropped_packs = self
            .catalog
            .lock()
            .expect("catalog lock")
            .drop_indexes(&gone)?;
        if dropped_packs > 0 {
            self.prune_pack_cache()?;
        }
        let new: Vec<IndexId> = listed.difference(&known).copied().collect();
        let mut loads = futures::stream::iter(new)
            .map(|id| async move { (id, self.load_index(&id).await) })
            .buffer_unordered(SYNC_CONCURRENCY);
        while let Some((id, index)) = loads.next().await {
            match index {
                Ok(index) => {
                    self.catalog
                        .lock()
                        .expect("catalog lock")
                        .absorb_index(id, &index)?;
                    report.indexes_added += 1;
                }
                Err(e) if e.is_damage() => {
                    report
                        .warnings
                        .push(format!("skipped index object {}: {e}", id.short()));
                    report.note_damage(&index_path(&id), &e, None);
                }
                Err(e) => return Err(e),
            }
        }
        *self.damaged.lock().expect("damage lock") = report.damaged.clone();
        Ok(report)
    }

    /// Seals and stores a metadata object under `name`; returns the stored
    /// size if it was created.
    pub async fn put_object(
        &self,
        kind: ObjectKind,
        name: &str,
        id: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<u64> {
        let sealed = with_codec(self.config.compression_level, |codec| {
            self.sealer.seal(codec, kind, id, plaintext, true)
        });
        let len = sealed.len() as u64;
        match self
            .backend
            .put_if_absent(name, Bytes::from(sealed))
            .await?
        {
            Put::Created => Ok(len),
            Put::Existed => Err(Error::corrupt(
                name,
                "an object of this random name already exists",
            )),
        }
    }

    /// Reads and opens a metadata object.
    pub async fn get_object(
        &self,
        kind: ObjectKind,
        name: &str,
        id: &[u8; 32],
        max_len: usize,
    ) -> Result<Vec<u8>> {
        let sealed = self
            .backend
            .get(name, (max_len + crate::seal::SEAL_OVERHEAD) as u64)
            .await?;
        let sealer = self.sealer.clone();
        let level = self.config.compression_level;
        let id = *id;
        tokio::task::spawn_blocking(move || {
            with_codec(level, |codec| {
                sealer.open(codec, kind, &id, &sealed, max_len)
            })
        })
        .await
        .expect("opening task panicked")
        .map_err(|e| Error::corrupt(name, e.to_string()))
    }

    /// Reads a snapshot object from the repository.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let name = snapshot_path(id);
        let plain = self
            .get_object(
                ObjectKind::Snapshot,
                &name,
                id.as_bytes(),
                MAX_SNAPSHOT_SIZE,
            )
            .await?;
        minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(name, format!("snapshot does not parse: {e}")))
    }

    /// Reads an index object from the repository.
    pub async fn load_index(&self, id: &IndexId) -> Result<IndexObject> {
        let name = index_path(id);
        let plain = self
            .get_object(ObjectKind::Index, &name, id.as_bytes(), MAX_INDEX_SIZE)
            .await?;
        let index: IndexObject = minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(&name, format!("index object does not parse: {e}")))?;
        index.validate(&name)?;
        Ok(index)
    }

    /// Reads a pending generation from the repository.
    pub async fn load_pending(&self, id: &GenerationId) -> Result<PendingObject> {
        let name = pending_path(id);
        let plain = self
            .get_object(ObjectKind::Pending, &name, id.as_bytes(), MAX_PENDING_SIZE)
            .await?;
        minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(name, format!("pending generation does not parse: {e}")))
    }

    /// Stores a new pending generation and absorbs it into the catalog,
    /// with the storage's time from a listing.
    pub async fn write_pending(&self, pending: &PendingObject) -> Result<(GenerationId, i64)> {
        let id = GenerationId::random();
        let name = pending_path(&id);
        let plain = minicbor::to_vec(pending).expect("encoding to a Vec cannot fail");
        self.put_object(ObjectKind::Pending, &name, id.as_bytes(), &plain)
            .await?;
        let time = self
            .backend
            .list("pending/")
            .await?
            .into_iter()
            .find(|o| o.name == name)
            .and_then(|o| o.modified);
        let time = generation_time(time);
        self.catalog
            .lock()
            .expect("catalog lock")
            .absorb_pending(&id, time, &pending.packs)?;
        Ok((id, time))
    }

    /// Stores a new index object and absorbs it into the catalog.
    pub async fn write_index(&self, index: &IndexObject) -> Result<(IndexId, u64)> {
        let id = IndexId::random();
        index.validate(&index_path(&id))?;
        let plain = minicbor::to_vec(index).expect("encoding to a Vec cannot fail");
        let stored = self
            .put_object(ObjectKind::Index, &index_path(&id), id.as_bytes(), &plain)
            .await?;
        self.catalog
            .lock()
            .expect("catalog lock")
            .absorb_index(id, index)?;
        Ok((id, stored))
    }

    /// Stores a new snapshot object (the commit point of a backup) and records
    /// it in the catalog. With a lease held, first confirms it never lapsed:
    /// a run that was suspended past its lease may rely on packs a prune has
    /// since deleted, so it must not commit.
    pub async fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(SnapshotId, u64)> {
        self.confirm_lease().await?;
        let id = SnapshotId::random();
        let plain = minicbor::to_vec(snapshot).expect("encoding to a Vec cannot fail");
        let stored = self
            .put_object(
                ObjectKind::Snapshot,
                &snapshot_path(&id),
                id.as_bytes(),
                &plain,
            )
            .await?;
        self.catalog().insert_snapshot(&id, snapshot)?;
        Ok((id, stored))
    }

    /// Snapshots matching `filter`, oldest first.
    pub fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<(SnapshotId, Snapshot)>> {
        self.catalog().snapshots(filter)
    }

    /// Resolves `latest` or an id prefix (at least 4 hex digits) among the
    /// snapshots matching `filter`.
    pub fn resolve_snapshot(
        &self,
        spec: &str,
        filter: &SnapshotFilter,
    ) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            let newest = self.snapshots(filter)?.pop();
            // A damaged snapshot's source and time are unknown: if it may be
            // newer than the newest readable one, `latest` must not quietly
            // mean an older snapshot. Its storage time bounds its own time
            // (backup refuses times more than the allowed skew ahead).
            let skew = crate::snapshot::CLOCK_SKEW_ALLOWANCE.as_nanos() as i64;
            for damaged in self.damaged_objects() {
                if !damaged.name.starts_with("snapshots/") {
                    continue;
                }
                let may_be_newer = match (&newest, damaged.stored_ns) {
                    (Some((_, snapshot)), Some(stored)) => {
                        stored.saturating_add(skew) >= snapshot.time_ns
                    }
                    _ => true,
                };
                if may_be_newer {
                    return Err(Error::corrupt(
                        damaged.name,
                        format!(
                            "{}; it may be the latest snapshot, so `latest` does not fall back to an older one: name a snapshot by id, or remove the damaged object",
                            damaged.reason
                        ),
                    ));
                }
            }
            return newest.ok_or_else(|| Error::SnapshotNotFound(describe_filter(spec, filter)));
        }
        if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{spec:?} is neither `latest` nor a snapshot id prefix of at least 4 hex digits"
            )));
        }
        let catalog = self.catalog();
        let ids = catalog.snapshots_with_prefix(spec)?;
        let mut matching: Vec<(SnapshotId, Snapshot)> = Vec::new();
        for id in ids {
            if let Some(snapshot) = catalog.snapshot(&id)?
                && filter_matches(filter, &snapshot)
            {
                matching.push((id, snapshot));
            }
        }
        match matching.len() {
            0 => Err(Error::SnapshotNotFound(describe_filter(spec, filter))),
            1 => Ok(matching.into_iter().next().expect("one element")),
            _ => Err(Error::AmbiguousSnapshot {
                prefix: spec.into(),
                matches: matching.iter().map(|(id, _)| id.short()).collect(),
            }),
        }
    }

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
    pub async fn read_pack_header(&self, name: &str, size: u64) -> Result<Vec<PackEntry>> {
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
    pub fn cache_tree_pack(&self, pack: &PackId, bytes: &[u8]) {
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
    fn prune_pack_cache(&self) -> Result<()> {
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
    pub fn blob_opener(&self) -> BlobOpener {
        BlobOpener {
            sealer: self.sealer.clone(),
            hasher: self.hasher.clone(),
            level: self.config.compression_level,
        }
    }

    /// Reads and decodes a tree blob.
    pub async fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        let plain = self.read_blob(ObjectKind::TreeBlob, id).await?;
        Tree::decode(&plain, &format!("tree {id}"))
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
    pub async fn load_list(&self, id: &BlobId, depth: u8) -> Result<Content> {
        let plain = self.read_blob(ObjectKind::ListBlob, id).await?;
        Content::decode_list(&plain, depth, &format!("content list {id}"))
    }
}

/// Opens blobs fetched from packs; see [`Repo::blob_opener`].
#[derive(Clone, Debug)]
pub struct BlobOpener {
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

fn filter_matches(filter: &SnapshotFilter, snapshot: &Snapshot) -> bool {
    filter.source.as_ref().is_none_or(|s| *s == snapshot.source)
        && filter.host.as_ref().is_none_or(|h| *h == snapshot.host)
        && filter.tags.iter().all(|t| snapshot.tags.contains(t))
}

fn describe_filter(spec: &str, filter: &SnapshotFilter) -> String {
    let mut out = format!("{spec:?}");
    if let Some(source) = &filter.source {
        out.push_str(&format!(" with source {source}"));
    }
    if let Some(host) = &filter.host {
        out.push_str(&format!(" on host {host}"));
    }
    out
}

/// The cache directory of one repository at one location. The location is
/// part of the name because a copied repository (rsync to a second disk)
/// keeps its id: two copies sharing a catalog would let a backup into one
/// deduplicate against blobs that exist only in the other.
fn cache_dir_for(cache_root: &Path, repo_id: RepoId, location: &str) -> PathBuf {
    cache_root.join(format!(
        "{}-{}",
        repo_id.to_hex(),
        crate::hash::location_tag(location)
    ))
}

/// Opens the catalog; if it cannot be opened (damaged, or from a newer
/// larder), sets the file aside and starts an empty one, which the sync that
/// follows fills from the repository. Returns a warning when it did so.
fn open_or_replace_catalog(path: &Path) -> Result<(Catalog, Option<String>)> {
    let error = match Catalog::open(path) {
        Ok(catalog) => return Ok((catalog, None)),
        Err(e @ (Error::Catalog { .. } | Error::Unsupported { .. })) => e,
        Err(e) => return Err(e),
    };
    let (catalog, aside) = set_aside_and_open(path)?;
    Ok((
        catalog,
        Some(format!(
            "the catalog could not be used ({error}); it was moved to {} and rebuilt from the repository",
            aside.display()
        )),
    ))
}

/// Renames the catalog at `path` (and drops its WAL files), then opens a
/// fresh one there. Returns it and where the old one went.
fn set_aside_and_open(path: &Path) -> Result<(Catalog, PathBuf)> {
    let aside = path.with_extension(format!("sqlite.unusable-{}", now_ns()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("setting aside", path, e)),
    }
    for suffix in ["-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    Ok((Catalog::open(path)?, aside))
}

async fn read_envelope(backend: &dyn Backend) -> Result<ConfigEnvelope> {
    match backend.get("config", crate::config::MAX_CONFIG_SIZE).await {
        Ok(bytes) => ConfigEnvelope::parse(&bytes),
        Err(Error::NotFound { .. }) => Err(Error::NotARepository {
            location: backend.location(),
        }),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotADirectory => {
            Err(Error::NotARepository {
                location: backend.location(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Lists the key files of a repository (ids only).
pub async fn list_key_ids(backend: &dyn Backend) -> Result<Vec<KeyId>> {
    Ok(backend
        .list("keys/")
        .await?
        .iter()
        .filter_map(|o| o.name.strip_prefix("keys/")?.parse().ok())
        .collect())
}

/// Most key files `open` fetches; beyond this the repository is refused
/// rather than read at a cost hostile storage chooses.
pub const MAX_KEY_FILES: usize = 1000;

/// Most Argon2 work (KiB times passes) one open spends trying key files:
/// twice the most one key file may ask for, or about 85 key files at the
/// default parameters.
pub const MAX_OPEN_KDF_WORK: u64 = 2 * crate::key::MAX_KDF_WORK;

/// Tries the passphrase on the key files: the one that opened the
/// repository last time first (fetched by name, sparing a listing), then
/// every other, cheapest first, until the KDF work budget is spent. Damaged
/// key files are named in the error, so a damaged key is not mistaken for a
/// wrong passphrase, and junk files cannot hide the real key.
async fn unlock(
    backend: &dyn Backend,
    envelope: &ConfigEnvelope,
    passphrase: &[u8],
    cache_dir: &Path,
) -> Result<(MasterKey, KeyId)> {
    use crate::key::{KeyFileIntegrity, MAX_KEY_FILE_SIZE};
    let try_key = |file: KeyFile| {
        let passphrase = zeroize::Zeroizing::new(passphrase.to_vec());
        async move {
            tokio::task::spawn_blocking(move || file.unwrap(&passphrase))
                .await
                .expect("key derivation task panicked")
        }
    };
    let last = std::fs::read_to_string(cache_dir.join("last-key"))
        .ok()
        .and_then(|s| s.trim().parse::<KeyId>().ok());
    let mut spent = 0u64;
    // Whether the last key was tried, so the full pass skips it.
    let mut last_tried = false;
    if let Some(last) = last {
        match backend.get(&key_path(&last), MAX_KEY_FILE_SIZE).await {
            Ok(bytes) => {
                if let Ok(file) = KeyFile::parse(last, &bytes)
                    && file.header.repo_id == envelope.repo_id
                    && file.integrity != KeyFileIntegrity::Damaged
                {
                    spent += file.kdf_work();
                    last_tried = true;
                    if let Ok(Some(master)) = try_key(file).await {
                        return Ok((master, last));
                    }
                }
            }
            // Whatever is wrong with it is found and named below.
            Err(e) if e.is_damage() => {}
            Err(e) => return Err(e),
        }
    }

    let listed = backend.list("keys/").await?;
    if listed.len() > MAX_KEY_FILES {
        return Err(Error::corrupt(
            "keys/",
            format!(
                "holds {} objects; larder reads at most {MAX_KEY_FILES} key files",
                listed.len()
            ),
        ));
    }
    let mut damaged: Vec<String> = Vec::new();
    let mut refusal = None;
    let mut ids = Vec::new();
    for object in &listed {
        match object.name.strip_prefix("keys/").map(str::parse::<KeyId>) {
            Some(Ok(id)) if last_tried && Some(id) == last => {}
            Some(Ok(id)) => ids.push(id),
            _ => damaged.push(format!("{}: not a key file name", object.name)),
        }
    }
    let fetched: Vec<(KeyId, Result<Bytes>)> = futures::stream::iter(ids)
        .map(|id| async move { (id, backend.get(&key_path(&id), MAX_KEY_FILE_SIZE).await) })
        .buffer_unordered(SYNC_CONCURRENCY)
        .collect()
        .await;
    // Intact (or unchecked) key files first, then damaged ones as a last
    // resort (only the checksum may be damaged); cheapest first within
    // each, so expensive junk cannot use up the budget before the real key.
    let mut candidates: Vec<KeyFile> = Vec::new();
    for (id, bytes) in fetched {
        let name = key_path(&id);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            // Deleted since the listing (`key remove`).
            Err(Error::NotFound { .. }) => continue,
            Err(e @ Error::Corrupt { .. }) => {
                damaged.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        match KeyFile::parse(id, &bytes) {
            Ok(file) if file.header.repo_id != envelope.repo_id => {
                damaged.push(format!("{name}: belongs to another repository"));
            }
            Ok(file) if file.header.kdf.validate().is_err() => {
                let reason = file.header.kdf.validate().unwrap_err();
                damaged.push(
                    Error::HostileKeyFile {
                        key: id.short(),
                        reason,
                    }
                    .to_string(),
                );
            }
            Ok(file) => {
                if file.integrity == KeyFileIntegrity::Damaged {
                    damaged.push(format!("{name}: checksum does not match"));
                }
                candidates.push(file);
            }
            Err(e @ Error::Unsupported { .. }) => refusal = Some(e),
            Err(e) => damaged.push(e.to_string()),
        }
    }
    candidates.sort_by_key(|f| (f.integrity == KeyFileIntegrity::Damaged, f.kdf_work(), f.id));
    let total = candidates.len();
    let mut tried = 0;
    for file in candidates {
        if spent + file.kdf_work() > MAX_OPEN_KDF_WORK {
            return Err(Error::TooManyKeyFiles {
                location: backend.location(),
                tried,
                untried: total - tried,
            });
        }
        spent += file.kdf_work();
        tried += 1;
        let id = file.id;
        match try_key(file).await {
            Ok(Some(master)) => return Ok((master, id)),
            Ok(None) => {}
            Err(e @ Error::HostileKeyFile { .. }) => damaged.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = refusal {
        return Err(e);
    }
    if !damaged.is_empty() {
        return Err(Error::KeyFilesDamaged {
            location: backend.location(),
            damaged,
        });
    }
    if tried == 0 && !last_tried {
        return Err(Error::corrupt(
            backend.location(),
            "repository has no key files",
        ));
    }
    Err(Error::WrongPassphrase {
        location: backend.location(),
    })
}

/// The object name of a key file.
pub fn key_path(id: &KeyId) -> String {
    format!("keys/{id}")
}
