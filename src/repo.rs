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

mod blobs;
mod leases;
mod objects;
mod sync;
mod unlock;

pub(crate) use blobs::{BlobOpener, CachedTrees};
pub use leases::LeaseGuard;
pub(crate) use objects::{list_ids, list_prefix};
pub use sync::{DamagedObject, SyncReport};
pub(crate) use unlock::list_key_ids;

use crate::host::now_ns;
use leases::LeaseSlot;

use unlock::{read_envelope, unlock};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::backend::{Backend, Metered, Put, RequestCounts};
use crate::catalog::Catalog;
use crate::config::{ChunkerProfile, Config, ConfigEnvelope, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::hash::{BlobHasher, DrillId, KeyId, PackId, RepoId, SnapshotId};
use crate::key::{KdfParams, KeyFile, MasterKey};
use crate::lease::LeaseKind;
use crate::pack::PackKind;
use crate::seal::{ObjectKind, Sealer, with_codec};
use crate::snapshot::{DrillRecord, Snapshot};

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

/// An opened repository. Cloning is cheap and shares everything, so
/// pipeline threads and tasks each hold their own handle.
#[derive(Clone, Debug)]
pub struct Repo {
    backend: Metered,
    config: Arc<Config>,
    sealer: Sealer,
    hasher: BlobHasher,
    key_id: KeyId,
    /// Opened with an exported key file, not a passphrase.
    from_key_file: bool,
    master: Arc<MasterKey>,
    catalog: Arc<Mutex<Catalog>>,
    cache_dir: PathBuf,
    /// The repository's format version (from its config).
    format_version: u32,
    sync_report: SyncReport,
    /// What the latest sync found damaged (every sync reads damaged objects
    /// again, since they are never absorbed, so this is the whole set).
    damaged: Arc<Mutex<Vec<DamagedObject>>>,
    lease: Arc<Mutex<LeaseSlot>>,
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
            .put_if_absent(&crate::layout::key_path(&key_id), Bytes::from(key_bytes))
            .await?;

        // The config is written last: until it exists the location is not a
        // repository, so an interrupted init leaves nothing half-usable.
        let sealer = Sealer::new(&master.sealing_key(), repo_id, FORMAT_VERSION);
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
        Repo::assemble(
            backend,
            master,
            key_id,
            config,
            FORMAT_VERSION,
            cache_root,
            None,
        )
        .await
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
        Repo::open_unlocked(backend, envelope, master, key_id, cache_root, lease).await
    }

    /// Opens an existing repository with an exported key file (see
    /// [`Repo::export_key`]) instead of a passphrase: no key derivation.
    pub async fn open_with_key_file(
        backend: Arc<dyn Backend>,
        key_file: &[u8],
        cache_root: &Path,
        lease: Option<LeaseKind>,
    ) -> Result<Repo> {
        let backend = Metered::new(backend);
        let envelope = read_envelope(&backend).await?;
        let exported = ExportedKey::parse(key_file)?;
        if exported.repo_id != envelope.repo_id {
            return Err(Error::InvalidArgument(format!(
                "the key file is for repository {}, not {} ({})",
                exported.repo_id.short(),
                envelope.repo_id.short(),
                backend.location()
            )));
        }
        let master = MasterKey::from_bytes(exported.master);
        let mut repo = Repo::open_unlocked(
            backend,
            envelope,
            master,
            exported.key_id,
            cache_root,
            lease,
        )
        .await
        .map_err(|e| match e {
            Error::Corrupt { ref object, .. } if object == "config" => Error::InvalidArgument(
                "the key file's key does not open this repository (the config does not \
                         authenticate under it)"
                    .into(),
            ),
            e => e,
        })?;
        repo.from_key_file = true;
        Ok(repo)
    }

    /// Whether the repository was opened with an exported key file (so no
    /// passphrase, and no key file of `keys/`, is "the one in use").
    pub fn opened_with_key_file(&self) -> bool {
        self.from_key_file
    }

    /// The repository's key as a key file: whoever holds it can read and
    /// write the repository without a passphrase, and removing passphrases
    /// does not revoke it.
    pub fn export_key(&self) -> Vec<u8> {
        ExportedKey {
            repo_id: self.config.repo_id,
            key_id: self.key_id,
            master: *self.master.expose(),
        }
        .encode()
    }

    async fn open_unlocked(
        backend: Metered,
        envelope: ConfigEnvelope,
        master: MasterKey,
        key_id: KeyId,
        cache_root: &Path,
        lease: Option<LeaseKind>,
    ) -> Result<Repo> {
        let sealer = Sealer::new(&master.sealing_key(), envelope.repo_id, envelope.version);
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
        Repo::assemble(
            backend,
            master,
            key_id,
            config,
            envelope.version,
            cache_root,
            lease,
        )
        .await
    }

    async fn assemble(
        backend: Metered,
        master: MasterKey,
        key_id: KeyId,
        config: Config,
        format_version: u32,
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
            sealer: Sealer::new(&master.sealing_key(), config.repo_id, format_version),
            format_version,
            hasher: BlobHasher::new(*master.blob_id_key()),
            config: Arc::new(config),
            key_id,
            from_key_file: false,
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

    /// The repository's format version (see [`crate::config::FORMAT_VERSION`]).
    pub(crate) fn format_version(&self) -> u32 {
        self.format_version
    }

    /// Whether file nodes rebuilt through a recipe may be written here
    /// (format 2 on; an older repository stores such input as it came).
    pub(crate) fn stores_recipes(&self) -> bool {
        self.format_version >= crate::config::RECIPES_SINCE
    }

    /// The repository id.
    pub fn id(&self) -> RepoId {
        self.config.repo_id
    }

    /// The sealer for this repository's objects.
    pub(crate) fn sealer(&self) -> &Sealer {
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
    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// Replaces the catalog with an empty one (its files are deleted) and
    /// absorbs the whole repository again, drill records included.
    pub(crate) async fn reset_catalog(&self) -> Result<SyncReport> {
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
        let mut report = self.sync().await?;
        let drills = self.sync_drills().await?;
        report.drills_added = drills.drills_added;
        report.warnings.extend(drills.warnings);
        Ok(report)
    }

    /// This repository's cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Locks the catalog. Held only for short, synchronous queries; never
    /// across an await.
    pub(crate) fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog
            .lock()
            .expect("catalog lock poisoned by a panic")
    }

    /// The snapshot with this id, as the catalog knows it (no storage
    /// request); `None` if the catalog has no such snapshot.
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Option<Snapshot>> {
        self.catalog().snapshot(id)
    }

    /// Number of blobs the catalog knows a location for.
    pub fn blob_count(&self) -> Result<u64> {
        self.catalog().blob_count()
    }

    /// The catalogued packs holding blobs of `kind`'s sort, in id order.
    pub fn pack_ids(&self, kind: PackKind) -> Result<Vec<PackId>> {
        Ok(self
            .catalog()
            .packs()?
            .into_iter()
            .filter(|pack| pack.kind == kind)
            .map(|pack| pack.id)
            .collect())
    }

    /// The packs holding at least one intact blob of the live set that the
    /// last prune through this `Repo` marked, in id order.
    pub fn live_pack_ids(&self) -> Result<Vec<PackId>> {
        Ok(self
            .catalog()
            .pack_usage()?
            .into_iter()
            .filter(|usage| usage.live_blobs > 0)
            .map(|usage| usage.pack.id)
            .collect())
    }

    /// The drill records the catalog holds, of one source or of all, oldest
    /// first. Only [`Repo::sync_drills`] brings in records written since.
    pub fn drill_records(&self, source: Option<&str>) -> Result<Vec<(DrillId, DrillRecord)>> {
        self.catalog().drills(source)
    }
}

/// An exported key file: `{0: "larder key", 1: repository id, 2: key id,
/// 3: master key}` in CBOR.
struct ExportedKey {
    repo_id: RepoId,
    key_id: KeyId,
    master: [u8; 32],
}

impl Drop for ExportedKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.master);
    }
}

/// The first field of an exported key file.
const EXPORTED_KEY_MAGIC: &str = "larder key";

impl ExportedKey {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = minicbor::Encoder::new(&mut out);
        e.map(4)
            .and_then(|e| {
                e.u8(0)?
                    .str(EXPORTED_KEY_MAGIC)?
                    .u8(1)?
                    .bytes(self.repo_id.as_bytes())
            })
            .and_then(|e| {
                e.u8(2)?
                    .bytes(self.key_id.as_bytes())?
                    .u8(3)?
                    .bytes(&self.master)
            })
            .expect("encoding to a Vec cannot fail");
        out
    }

    fn parse(bytes: &[u8]) -> Result<ExportedKey> {
        if bytes.len() > 4096 {
            return Err(Error::InvalidArgument(
                "not a larder key file: it is too large".into(),
            ));
        }
        let mut d = minicbor::Decoder::new(bytes);
        let mut parse = || -> Option<ExportedKey> {
            if d.map().ok()?? != 4 || d.u8().ok()? != 0 || d.str().ok()? != EXPORTED_KEY_MAGIC {
                return None;
            }
            if d.u8().ok()? != 1 {
                return None;
            }
            let repo_id = RepoId::from_slice(d.bytes().ok()?)?;
            if d.u8().ok()? != 2 {
                return None;
            }
            let key_id = KeyId::from_slice(d.bytes().ok()?)?;
            if d.u8().ok()? != 3 {
                return None;
            }
            let master: [u8; 32] = d.bytes().ok()?.try_into().ok()?;
            Some(ExportedKey {
                repo_id,
                key_id,
                master,
            })
        };
        let parsed = parse();
        match parsed {
            Some(key) if d.position() == bytes.len() => Ok(key),
            _ => Err(Error::InvalidArgument(
                "not a larder key file (it does not parse)".into(),
            )),
        }
    }
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
