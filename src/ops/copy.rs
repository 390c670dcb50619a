//! `copy`: replicate snapshots into another repository (local to S3
//! off-site, or S3 to S3 for a second region).
//!
//! Blob ids are keyed per repository and every object is sealed under its
//! repository's keys, so copying means: read each blob from the source,
//! authenticate it, hash it with the destination's id key, and store it
//! there unless the destination already has it. Chunks are copied as they
//! are, never re-chunked; trees and content lists are rewritten to name the
//! destination's ids. When both repositories share chunker parameters
//! (`init --copy-chunker-params-from`), later backups into either one
//! deduplicate against the copied chunks.
//!
//! The destination catalog remembers which source blob became which
//! destination blob (`copied_blobs`), so a later copy skips, without reading
//! it, every chunk and every whole directory it copied before: copying the
//! newest of a series of daily snapshots reads only what changed.
//!
//! Idempotent: a snapshot is skipped when the destination already holds one
//! with the same time, source and host (a copy keeps all three). Resumable:
//! an interrupted copy leaves packs and index objects behind, and the next
//! run finds those blobs in the destination and uploads nothing twice. Each
//! snapshot is committed only after every blob it needs is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::backend::RequestCounts;
use crate::catalog::SnapshotFilter;
use crate::config::MAX_BLOB_SIZE;
use crate::error::{Error, Result};
use crate::hash::{BlobId, SnapshotId};
use crate::lease::LeaseKind;
use crate::progress::Progress;
use crate::read::{ChunkWalker, read_chunks};
use crate::repo::{LeaseGuard, Repo};
use crate::seal::ObjectKind;
use crate::snapshot::{Content, ContentBuilder, ContentRef, Snapshot, Tree};
use crate::write::{Abort, BlobWriter};

/// Plaintext read from the source per batch of chunks (bounds memory).
const BATCH_BYTES: u64 = 32 << 20;

/// One snapshot `copy` considered.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CopiedSnapshot {
    /// Its id in the source repository.
    pub from: String,
    /// Its id in the destination (the existing one when skipped).
    pub to: String,
    /// Snapshot time, RFC 3339.
    pub time: String,
    /// Source name.
    pub source: String,
    /// Host.
    pub host: String,
    /// True when the destination already had it.
    pub skipped: bool,
}

/// What `copy` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopySummary {
    /// Every snapshot considered, oldest first.
    pub snapshots: Vec<CopiedSnapshot>,
    /// Snapshots written to the destination.
    pub copied: u64,
    /// Snapshots the destination already had.
    pub skipped: u64,
    /// Blobs stored new in the destination.
    pub blobs_new: u64,
    /// Blobs the destination already had.
    pub blobs_reused: u64,
    /// Plaintext bytes read from the source.
    pub bytes_read: u64,
    /// Stored bytes added to the destination.
    pub bytes_added: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests to the source repository.
    pub requests_from: RequestCounts,
    /// Storage requests to the destination repository.
    pub requests: RequestCounts,
}

/// Copies the snapshots `ids` of `src` into `dst`, oldest first. Runs on
/// the multi-threaded Tokio runtime and refuses a current-thread one: the
/// copy hashes and re-encodes blobs on its own task, which there would hold
/// up the destination's uploads.
pub async fn copy(
    src: &Repo,
    dst: &Repo,
    ids: &[SnapshotId],
    progress: Arc<Progress>,
) -> Result<CopySummary> {
    crate::ops::leased(src, LeaseKind::Read, async move |_read| {
        crate::ops::leased(dst, LeaseKind::Copy, async move |lease| {
            if tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::CurrentThread
            {
                return Err(Error::InvalidArgument(
                    "copy needs the multi-threaded runtime".into(),
                ));
            }
            if src.id() == dst.id() {
                return Err(Error::InvalidArgument(
                    "the source and destination are the same repository".into(),
                ));
            }
            let started = Instant::now();
            let mut wanted = Vec::new();
            for id in ids {
                let snapshot = src
                    .catalog()
                    .snapshot(id)?
                    .ok_or_else(|| Error::SnapshotNotFound(id.to_hex()))?;
                wanted.push((*id, snapshot));
            }
            wanted.sort_by_key(|(id, s)| (s.time_ns, *id.as_bytes()));
            wanted.dedup_by_key(|(id, _)| *id);

            let mut summary = CopySummary::default();
            for (id, snapshot) in wanted {
                let time = crate::ops::format_time(snapshot.time_ns);
                let existing = counterpart(dst, &snapshot)?;
                let to = match existing {
                    Some(existing) => {
                        summary.skipped += 1;
                        existing
                    }
                    None => {
                        let copied =
                            copy_one(src, dst, lease, id, &snapshot, &progress, &mut summary)
                                .await?;
                        summary.copied += 1;
                        copied
                    }
                };
                summary.snapshots.push(CopiedSnapshot {
                    from: id.to_hex(),
                    to: to.to_hex(),
                    time,
                    source: snapshot.source.clone(),
                    host: snapshot.host.clone(),
                    skipped: existing.is_some(),
                });
            }
            summary.duration_s = started.elapsed().as_secs_f64();
            summary.requests_from = src.counts();
            summary.requests = dst.counts();
            Ok(summary)
        })
        .await
    })
    .await
}

/// The destination's copy of `snapshot`, if it has one: same time, source
/// and host.
fn counterpart(dst: &Repo, snapshot: &Snapshot) -> Result<Option<SnapshotId>> {
    let filter = SnapshotFilter {
        source: Some(snapshot.source.clone()),
        host: Some(snapshot.host.clone()),
        tags: vec![],
    };
    Ok(dst
        .snapshots(&filter)?
        .into_iter()
        .find(|(_, s)| s.time_ns == snapshot.time_ns)
        .map(|(id, _)| id))
}

async fn copy_one(
    src: &Repo,
    dst: &Repo,
    lease: &LeaseGuard,
    id: SnapshotId,
    snapshot: &Snapshot,
    progress: &Arc<Progress>,
    summary: &mut CopySummary,
) -> Result<SnapshotId> {
    let abort = Arc::new(Abort::default());
    let writer = BlobWriter::start(dst, abort, Arc::clone(progress), MAX_BLOB_SIZE)?;
    let mut copier = Copier {
        src,
        dst,
        writer: Arc::new(writer),
        done: HashMap::new(),
        bytes_read: 0,
        progress: Arc::clone(progress),
    };
    let root = copier.tree(snapshot.root).await;
    let Copier {
        writer,
        done,
        bytes_read,
        ..
    } = copier;
    let writer =
        Arc::try_unwrap(writer).unwrap_or_else(|_| unreachable!("the writer has one owner"));
    let stats = Arc::clone(writer.stats());
    let finished = writer.finish().await;
    let root = match (root, finished) {
        (Ok(root), Ok(())) => root,
        // A storage failure in the writer also cancels the walk: report it.
        (_, Err(e)) | (Err(e), Ok(())) => return Err(e),
    };
    // Only now is every blob durable: remember the mapping, then commit.
    let pairs: Vec<(BlobId, BlobId)> = done.into_iter().collect();
    dst.catalog().record_copied_blobs(&src.id(), &pairs)?;

    let parent = match snapshot.parent {
        Some(parent) => match src.catalog().snapshot(&parent)? {
            Some(p) => counterpart(dst, &p)?,
            None => None,
        },
        None => None,
    };
    let copy = Snapshot {
        root,
        parent,
        copied_from: Some(id),
        ..snapshot.clone()
    };
    let (new_id, _) = dst.write_snapshot(&copy, lease).await?;
    use std::sync::atomic::Ordering::Relaxed;
    summary.blobs_new += stats.blobs_new.load(Relaxed);
    summary.blobs_reused += stats.blobs_reused.load(Relaxed);
    // As for a backup: new packs and index objects, not snapshot objects.
    summary.bytes_added += stats.bytes_added.load(Relaxed);
    summary.bytes_read += bytes_read;
    Ok(new_id)
}

struct Copier<'a> {
    src: &'a Repo,
    dst: &'a Repo,
    writer: Arc<BlobWriter>,
    /// Source id to destination id, for blobs handled in this run.
    done: HashMap<BlobId, BlobId>,
    bytes_read: u64,
    progress: Arc<Progress>,
}

impl Copier<'_> {
    /// The destination id of a source blob copied before, if still stored.
    fn mapped(&self, src_id: &BlobId) -> Result<Option<BlobId>> {
        if let Some(dst_id) = self.done.get(src_id) {
            return Ok(Some(*dst_id));
        }
        self.dst.catalog().copied_blob(&self.src.id(), src_id)
    }

    async fn store(&self, kind: ObjectKind, id: BlobId, data: Vec<u8>) -> Result<()> {
        // Waits, without holding a runtime thread, while the pipeline is full.
        self.writer.store_async(kind, id, Bytes::from(data)).await?;
        Ok(())
    }

    /// Copies a tree and everything under it; returns its destination id.
    async fn tree(&mut self, src_id: BlobId) -> Result<BlobId> {
        if let Some(dst_id) = self.mapped(&src_id)? {
            // Copied before, with everything under it.
            return Ok(dst_id);
        }
        let tree = self.src.load_tree(&src_id).await?;
        let mut out = Tree {
            entries: Vec::with_capacity(tree.entries.len()),
        };
        for mut node in tree.entries {
            if let Some(subtree) = node.subtree {
                node.subtree = Some(Box::pin(self.tree(subtree)).await?);
            }
            if let Some(content) = &node.content {
                node.content = Some(self.content(content).await?);
            }
            if let Some(recipe) = &node.recipe {
                if !self.dst.stores_recipes() {
                    return Err(Error::InvalidArgument(format!(
                        "{} is stored as its contents plus a recipe, which the destination \
                         (a format-{} repository) cannot hold; copy into a repository \
                         created with format {} or later",
                        node.display_name(),
                        self.dst.format_version(),
                        crate::config::RECIPES_SINCE
                    )));
                }
                node.recipe = Some(self.content(recipe).await?);
            }
            out.entries.push(node);
        }
        let bytes = out.encode();
        let dst_id = self.dst.hasher().blob_id(ObjectKind::TreeBlob, &bytes);
        self.store(ObjectKind::TreeBlob, dst_id, bytes).await?;
        self.done.insert(src_id, dst_id);
        Ok(dst_id)
    }

    /// Copies a file's chunks; returns its content list in destination ids.
    async fn content(&mut self, content: &Content) -> Result<Content> {
        let fanout = self.dst.config().list_fanout as usize;
        let mut builder = ContentBuilder::new(fanout, self.dst.hasher().clone());
        let mut lists = Vec::new();
        let mut walker = ChunkWalker::new(self.src, content.clone());
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        loop {
            let next = walker.next().await?;
            if let Some(chunk) = next {
                batch_bytes += chunk.len;
                batch.push(chunk);
            }
            if !batch.is_empty() && (next.is_none() || batch_bytes >= BATCH_BYTES) {
                for chunk in self.chunks(&batch).await? {
                    builder.push(chunk, &mut lists);
                }
                batch.clear();
                batch_bytes = 0;
            }
            if next.is_none() {
                break;
            }
        }
        let content = builder.finish(&mut lists);
        for (id, bytes) in lists {
            self.store(ObjectKind::ListBlob, id, bytes).await?;
        }
        Ok(content)
    }

    /// Copies the chunks of `batch` the destination lacks (reading them with
    /// coalesced ranged reads); returns the batch in destination ids.
    async fn chunks(&mut self, batch: &[ContentRef]) -> Result<Vec<ContentRef>> {
        let mut ids = Vec::with_capacity(batch.len());
        let mut missing = Vec::new();
        for chunk in batch {
            let id = self.mapped(&chunk.id)?;
            if id.is_none() {
                missing.push(*chunk);
            }
            ids.push(id);
        }
        if !missing.is_empty() {
            let mut plains = Vec::with_capacity(missing.len());
            let wanted = Content {
                depth: 0,
                entries: missing,
            };
            self.bytes_read += read_chunks(self.src, &wanted, &mut |id, plain| {
                plains.push((id, plain));
                Ok(())
            })
            .await?;
            let hasher = self.dst.hasher().clone();
            for (src_id, plain) in plains {
                let dst_id = hasher.blob_id(ObjectKind::DataBlob, &plain);
                Progress::add(&self.progress.bytes_processed, plain.len() as u64);
                self.store(ObjectKind::DataBlob, dst_id, plain).await?;
                self.done.insert(src_id, dst_id);
            }
        }
        batch
            .iter()
            .zip(ids)
            .map(|(chunk, id)| {
                // Chunks read just now are in `done`.
                let id = id
                    .or_else(|| self.done.get(&chunk.id).copied())
                    .ok_or_else(|| {
                        Error::corrupt(format!("blob {}", chunk.id), "was read but not copied")
                    })?;
                Ok(ContentRef { id, len: chunk.len })
            })
            .collect()
    }
}
