//! The storing half of the write path: dedup → seal → pack → upload → index,
//! shared by `backup`, `copy` and `prune` (which uploads its repacked packs
//! with `upload`).
//!
//! ```text
//! store() ──dedup──► seal workers (one per core) ──► packer ──► uploader ──► index ──► catalog
//!          (claimed set + catalog)  zstd, re-check, AEAD       (async, bounded)   every 64Ki blobs
//! ```
//!
//! Blobs are handed over in content order from one caller at a time: a
//! pipeline thread calls [`BlobWriter::store`], which blocks when the
//! pipeline is full, or stores many through a [`Batch`] (one dedup pass and
//! one hand-off per batch); async code calls [`BlobWriter::store_async`],
//! which waits for room without holding a runtime thread. Either way memory stays
//! bounded by the channel capacities and the packs in flight, whatever the
//! input size. A blob is "claimed" by the run the moment it is sent to
//! sealing, so the same new blob is stored once per run; once the index
//! object naming it is written and absorbed into the catalog the claim is
//! dropped, keeping the claimed set small.
//!
//! Invariants:
//! - every compressed blob is decompressed again and compared with its
//!   plaintext before it is encrypted, and a sample of sealed blobs (each
//!   worker's first, then one in 64) is opened whole and compared, before
//!   anything goes into a pack (guards against encoder and keying bugs);
//! - an index object is written only after every pack it names is durable;
//! - after a failure nothing new is uploaded and no index is written: the
//!   packs already stored are unreferenced garbage that prune removes.

mod pipeline;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tokio::task::JoinSet;

pub use pipeline::Abort;
pub(crate) use pipeline::queue_depth;
pub(crate) use pipeline::spawn_thread;

use crate::backend::{Backend, Put};
use crate::error::{Error, Result};
use crate::hash::BlobId;
use crate::index::{INDEX_FLUSH_BLOBS, IndexObject, IndexedPack};
use crate::layout::pack_path;
use crate::pack::{FinishedPack, PackKind, PackWriter};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::seal::{Codec, ObjectKind};

struct SealJob {
    kind: ObjectKind,
    id: BlobId,
    data: Bytes,
}

struct SealedBlob {
    kind: ObjectKind,
    id: BlobId,
    bytes: Vec<u8>,
    raw_len: u32,
}

/// Counters of a writer, readable while it runs.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Blobs sent to storage.
    pub blobs_new: AtomicU64,
    /// Blobs found already stored.
    pub blobs_reused: AtomicU64,
    /// Plaintext bytes of new blobs.
    pub bytes_new_plain: AtomicU64,
    /// Stored bytes this writer added (packs and index objects).
    pub bytes_added: AtomicU64,
    /// Packs written.
    pub packs: AtomicU64,
    /// Index objects written.
    pub indexes: AtomicU64,
}

/// The storing half of the write path; see the module docs.
pub struct BlobWriter {
    repo: Repo,
    claimed: Arc<Mutex<HashSet<BlobId>>>,
    seal_tx: Option<Sender<Vec<SealJob>>>,
    threads: Vec<JoinHandle<()>>,
    uploader: tokio::task::JoinHandle<()>,
    abort: Arc<Abort>,
    stats: Arc<WriteStats>,
}

impl BlobWriter {
    /// Starts the seal workers, the packer and the uploader.
    pub fn start(
        repo: &Repo,
        abort: Arc<Abort>,
        progress: Arc<Progress>,
        max_blob: usize,
    ) -> Result<BlobWriter> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Queues hold batches: bounded by the largest batch's bytes.
        let depth = queue_depth(max_blob + BATCH_BYTES);
        let (seal_tx, seal_rx) = bounded::<Vec<SealJob>>(depth);
        let (sealed_tx, sealed_rx) = bounded::<Vec<SealedBlob>>(depth);
        let (pack_tx, pack_rx) = tokio::sync::mpsc::channel::<FinishedPack>(1);
        let stats = Arc::new(WriteStats::default());

        let mut threads = Vec::new();
        for i in 0..workers {
            let rx = seal_rx.clone();
            let tx = sealed_tx.clone();
            let repo = repo.clone();
            let abort = Arc::clone(&abort);
            threads.push(spawn_thread(&format!("larder-seal-{i}"), move || {
                seal_worker(&repo, &rx, &tx, &abort)
            })?);
        }
        drop((seal_rx, sealed_tx));
        {
            let repo = repo.clone();
            let abort = Arc::clone(&abort);
            threads.push(spawn_thread("larder-pack", move || {
                packer(&repo, &sealed_rx, &pack_tx, &abort)
            })?);
        }
        let claimed = Arc::new(Mutex::new(HashSet::new()));
        let uploader = tokio::spawn(uploader(
            repo.clone(),
            pack_rx,
            Arc::clone(&claimed),
            Arc::clone(&abort),
            Arc::clone(&stats),
            progress,
        ));
        Ok(BlobWriter {
            repo: repo.clone(),
            claimed,
            seal_tx: Some(seal_tx),
            threads,
            uploader,
            abort,
            stats,
        })
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<WriteStats> {
        &self.stats
    }

    /// Stores `data` as a blob of `kind` named `id` unless the repository or
    /// this run already has it. Returns whether it was new. Blocks while the
    /// pipeline is full; call from a blocking thread (from async code, use
    /// [`BlobWriter::store_async`]).
    pub fn store(&self, kind: ObjectKind, id: BlobId, data: Bytes) -> Result<bool> {
        let Some(job) = self.claim(kind, id, data)? else {
            return Ok(false);
        };
        self.seal_tx()
            .send(vec![job])
            .map_err(|_| Error::Cancelled)?;
        Ok(true)
    }

    /// A batch to store many blobs through, from one blocking thread.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            writer: self,
            jobs: Vec::new(),
            bytes: 0,
        }
    }

    /// [`BlobWriter::store`] for async callers. The dedup check runs at
    /// once; while the pipeline is full the hand-over waits on the blocking
    /// pool, so no runtime thread is held and the uploader keeps running.
    /// A blob is claimed before any wait: once the future is first polled,
    /// a new blob reaches sealing even if the future is then dropped.
    pub async fn store_async(&self, kind: ObjectKind, id: BlobId, data: Bytes) -> Result<bool> {
        let Some(job) = self.claim(kind, id, data)? else {
            return Ok(false);
        };
        let tx = self.seal_tx();
        match tx.try_send(vec![job]) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(_)) => return Err(Error::Cancelled),
            Err(TrySendError::Full(job)) => {
                let tx = tx.clone();
                // Fails only when the seal workers stopped (the run failed)
                // or the runtime is shutting down: cancelled either way.
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|_| Error::Cancelled)?
                    .map_err(|_| Error::Cancelled)?;
            }
        }
        Ok(true)
    }

    /// Dedups a blob against this run and the catalog; returns the job to
    /// send to sealing if it is new, and counts it either way.
    fn claim(&self, kind: ObjectKind, id: BlobId, data: Bytes) -> Result<Option<SealJob>> {
        Ok(self.claim_batch(vec![SealJob { kind, id, data }])?.pop())
    }

    /// Dedups `jobs` against this run and the catalog under one lock of the
    /// claimed set and one catalog read transaction; returns the new ones,
    /// claimed, and counts them all.
    fn claim_batch(&self, jobs: Vec<SealJob>) -> Result<Vec<SealJob>> {
        if self.abort.is_set() {
            return Err(Error::Cancelled);
        }
        let total = jobs.len();
        let new = {
            let mut claimed = self.claimed.lock().expect("claimed lock");
            let catalog = self.repo.catalog();
            catalog.reading(|catalog| {
                let mut new = Vec::with_capacity(jobs.len());
                for job in jobs {
                    if !claimed.contains(&job.id) && !catalog.has_blob(&job.id)? {
                        claimed.insert(job.id);
                        new.push(job);
                    }
                }
                Ok(new)
            })?
        };
        let bytes: usize = new.iter().map(|job| job.data.len()).sum();
        self.stats
            .blobs_reused
            .fetch_add((total - new.len()) as u64, Ordering::Relaxed);
        self.stats
            .blobs_new
            .fetch_add(new.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes_new_plain
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(new)
    }

    /// The queue to the seal workers. Invariant: it is taken only by
    /// [`BlobWriter::finish`], which consumes the writer, so it is always
    /// there while the writer can be called.
    fn seal_tx(&self) -> &Sender<Vec<SealJob>> {
        self.seal_tx.as_ref().expect("store after finish")
    }

    /// Waits until every blob handed to the writer is in a durable
    /// pack named by a durable index object (or the run failed).
    pub async fn finish(mut self) -> Result<()> {
        drop(self.seal_tx.take());
        let threads = std::mem::take(&mut self.threads);
        tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    panic!("a write-path thread panicked");
                }
            }
        })
        .await
        .expect("joining write-path threads");
        (&mut self.uploader).await.expect("uploader task panicked");
        match self.abort.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Plaintext bytes a [`Batch`] gathers before it goes to sealing.
const BATCH_BYTES: usize = 256 << 10;
/// Blobs a [`Batch`] gathers before it goes to sealing.
const BATCH_BLOBS: usize = 64;

/// Blobs on their way into a [`BlobWriter`] together: one dedup pass (one
/// catalog read transaction) and one hand-off to the seal workers per
/// [`BATCH_BLOBS`] blobs or [`BATCH_BYTES`] bytes, where a tree of small
/// files or a stream of small chunks would otherwise pay both per blob.
///
/// Blobs go on when the batch is full, on [`Batch::flush`], or when it is
/// dropped; like [`BlobWriter::store`], they are durable only once
/// [`BlobWriter::finish`] returns. A failure to hand them on when dropped
/// fails the run, so a blob is never silently left out.
pub struct Batch<'w> {
    writer: &'w BlobWriter,
    jobs: Vec<SealJob>,
    bytes: usize,
}

impl Batch<'_> {
    /// Adds `data` as a blob of `kind` named `id`, stored unless the
    /// repository or this run already has it. Blocks while the pipeline is
    /// full.
    pub fn store(&mut self, kind: ObjectKind, id: BlobId, data: Bytes) -> Result<()> {
        self.bytes += data.len();
        self.jobs.push(SealJob { kind, id, data });
        if self.bytes >= BATCH_BYTES || self.jobs.len() >= BATCH_BLOBS {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands what the batch holds on to sealing (a thread about to wait
    /// calls this first, so the seal workers are not left idle).
    pub fn flush(&mut self) -> Result<()> {
        if self.jobs.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let jobs = std::mem::take(&mut self.jobs);
        let new = self.writer.claim_batch(jobs)?;
        if !new.is_empty() {
            self.writer
                .seal_tx()
                .send(new)
                .map_err(|_| Error::Cancelled)?;
        }
        Ok(())
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            self.writer.abort.fail(e);
        }
    }
}

/// Each seal worker opens its first blob and one in this many whole again
/// (decryption included) before passing them on; every compressed blob is
/// decompressed and compared (`Sealer::seal_checked`).
const OPEN_SAMPLE: usize = 64;

fn seal_worker(
    repo: &Repo,
    rx: &Receiver<Vec<SealJob>>,
    tx: &Sender<Vec<SealedBlob>>,
    abort: &Abort,
) {
    let mut codec = Codec::new(repo.config().compression_level);
    let sealer = repo.sealer();
    let mut sealed = 0usize;
    for jobs in rx {
        let mut blobs = Vec::with_capacity(jobs.len());
        for job in jobs {
            if abort.is_set() {
                return;
            }
            // Prove what was just sealed before it can reach storage: an
            // encoder bug must fail the backup, never store an unreadable
            // blob.
            let open_too = sealed.is_multiple_of(OPEN_SAMPLE);
            sealed += 1;
            let bytes = match sealer.seal_checked(
                &mut codec,
                job.kind,
                job.id.as_bytes(),
                &job.data,
                open_too,
            ) {
                Ok(bytes) => bytes,
                Err(why) => {
                    abort.fail(Error::corrupt(
                        format!("blob {} (just sealed)", job.id),
                        why,
                    ));
                    return;
                }
            };
            blobs.push(SealedBlob {
                kind: job.kind,
                id: job.id,
                bytes,
                raw_len: job.data.len() as u32,
            });
        }
        if tx.send(blobs).is_err() {
            return;
        }
    }
}

fn packer(
    repo: &Repo,
    rx: &Receiver<Vec<SealedBlob>>,
    tx: &tokio::sync::mpsc::Sender<FinishedPack>,
    abort: &Abort,
) {
    let mut codec = Codec::new(repo.config().compression_level);
    let config = repo.config();
    // A pack ends with the blob that reaches its target, so it holds at most
    // target + one sealed blob + the header.
    let capacity = |target: u32| target as usize + crate::config::MAX_BLOB_SIZE / 4;
    let mut data = PackWriter::new(PackKind::Data);
    let mut tree = PackWriter::new(PackKind::Tree);
    for blob in rx.iter().flatten() {
        if abort.is_set() {
            return;
        }
        let kind = PackKind::for_blob(blob.kind);
        let (writer, target) = match kind {
            PackKind::Data => (&mut data, config.data_pack_size),
            PackKind::Tree => (&mut tree, config.tree_pack_size),
        };
        if writer.is_empty() {
            *writer = PackWriter::with_capacity(kind, capacity(target));
        }
        writer.add(blob.kind, blob.id, &blob.bytes, blob.raw_len);
        if writer.len() >= target as usize {
            let full = std::mem::replace(writer, PackWriter::new(kind));
            if tx
                .blocking_send(full.finish(repo.sealer(), &mut codec))
                .is_err()
            {
                return;
            }
        }
    }
    for writer in [data, tree] {
        if !writer.is_empty()
            && !abort.is_set()
            && tx
                .blocking_send(writer.finish(repo.sealer(), &mut codec))
                .is_err()
        {
            return;
        }
    }
}

async fn uploader(
    repo: Repo,
    mut rx: tokio::sync::mpsc::Receiver<FinishedPack>,
    claimed: Arc<Mutex<HashSet<BlobId>>>,
    abort: Arc<Abort>,
    stats: Arc<WriteStats>,
    progress: Arc<Progress>,
) {
    let mut uploads: JoinSet<Result<(IndexedPack, u64)>> = JoinSet::new();
    let mut pending = IndexObject::default();
    // Packs uploaded at once, as the storage asks (2 local, 4 on S3). Each
    // holds one pack in memory, next to the one being filled and the one
    // queued.
    let concurrency = repo.backend().upload_concurrency();
    let mut input_open = true;
    while input_open || !uploads.is_empty() {
        tokio::select! {
            pack = rx.recv(), if input_open && uploads.len() < concurrency => match pack {
                Some(pack) if !abort.is_set() => {
                    let repo = repo.clone();
                    uploads.spawn(async move { upload(&repo, pack).await });
                }
                Some(_) => {}
                None => input_open = false,
            },
            Some(done) = uploads.join_next() => match done.expect("upload task panicked") {
                Ok((indexed, stored)) => {
                    stats.packs.fetch_add(1, Ordering::Relaxed);
                    stats.bytes_added.fetch_add(stored, Ordering::Relaxed);
                    Progress::add(&progress.bytes_stored, stored);
                    pending.packs.push(indexed);
                    if pending.blob_count() >= INDEX_FLUSH_BLOBS && !abort.is_set() {
                        flush_index(&repo, &mut pending, &claimed, &abort, &stats).await;
                    }
                }
                Err(e) => {
                    abort.fail(e);
                    // Stop taking packs: the packer sees the closed channel.
                    rx.close();
                }
            },
        }
        if abort.is_set() && input_open {
            rx.close();
            while rx.recv().await.is_some() {}
            input_open = false;
        }
    }
    // Index every pack that landed, even when the run failed: the packs are
    // durable, and the next run (or `copy` resuming) then finds their blobs
    // instead of uploading them again. Without a snapshot naming them they
    // are garbage only until a later snapshot does. A failure here changes
    // nothing (the first error stands).
    if !pending.packs.is_empty() {
        flush_index(&repo, &mut pending, &claimed, &abort, &stats).await;
    }
}

/// Uploads one finished pack (create-if-absent), caching a tree pack
/// locally; returns its index entry and the bytes it added to storage.
pub(crate) async fn upload(repo: &Repo, pack: FinishedPack) -> Result<(IndexedPack, u64)> {
    let size = pack.bytes.len() as u64;
    let bytes = pack.bytes;
    let put = repo
        .backend()
        .put_if_absent(&pack_path(&pack.id), bytes.clone())
        .await?;
    if pack.kind == PackKind::Tree {
        // The next backup's re-scan and every browse reads these trees;
        // keeping them saves a GET each.
        let repo = repo.clone();
        let id = pack.id;
        tokio::task::spawn_blocking(move || repo.cache_tree_pack(&id, &bytes))
            .await
            .expect("caching task panicked");
    }
    let stored = if put == Put::Created { size } else { 0 };
    Ok((
        IndexedPack {
            id: pack.id,
            kind: pack.kind.code(),
            size,
            blobs: pack.entries,
        },
        stored,
    ))
}

async fn flush_index(
    repo: &Repo,
    pending: &mut IndexObject,
    claimed: &Mutex<HashSet<BlobId>>,
    abort: &Abort,
    stats: &WriteStats,
) {
    let index = std::mem::take(pending);
    match repo.write_index(&index).await {
        Ok((_, stored)) => {
            stats.indexes.fetch_add(1, Ordering::Relaxed);
            stats.bytes_added.fetch_add(stored, Ordering::Relaxed);
            // The catalog now answers for these blobs; drop their claims.
            let mut claimed = claimed.lock().expect("claimed lock");
            for pack in &index.packs {
                for blob in &pack.blobs {
                    claimed.remove(&blob.id);
                }
            }
        }
        Err(e) => abort.fail(e),
    }
}
