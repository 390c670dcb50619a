//! `catalog rebuild`: recreates the catalog from the repository alone.
//!
//! The catalog is emptied and every snapshot, index object and drill
//! record absorbed again. Packs that no index object names (index objects lost, or a backup
//! interrupted between its packs and its index) are read by their tails:
//! their headers are opened and written into a new index object, so every
//! machine's catalog agrees on what exists and prune treats those packs like
//! any other.

use crate::backend::Backend;
use crate::layout::parse_pack_path;
use crate::lease::LeaseKind;
use std::time::Instant;

use crate::backend::RequestCounts;
use crate::error::Result;
use crate::hash::IndexId;
use crate::index::{INDEX_FLUSH_BLOBS, IndexObject, IndexedPack};
use crate::pack::PackKind;
use crate::repo::Repo;
use crate::seal::ObjectKind;

/// What the rebuild did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RebuildSummary {
    /// Snapshots absorbed.
    pub snapshots: usize,
    /// Index objects absorbed.
    pub index_objects: usize,
    /// Drill records absorbed.
    pub drills: usize,
    /// Packs no index object named, read from their headers.
    pub packs_from_headers: usize,
    /// The index objects written for them (one per
    /// [`INDEX_FLUSH_BLOBS`] blobs).
    pub repair_indexes: Vec<IndexId>,
    /// Objects that could not be read.
    pub warnings: Vec<String>,
    /// Blob locations in the new catalog.
    pub blobs: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Rebuilds the catalog of `repo`.
pub async fn rebuild_catalog(repo: &Repo) -> Result<RebuildSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let sync = repo.reset_catalog().await?;
        let mut summary = RebuildSummary {
            snapshots: sync.snapshots_added,
            index_objects: sync.indexes_added,
            drills: sync.drills_added,
            warnings: sync.warnings,
            ..RebuildSummary::default()
        };
        let known: std::collections::HashSet<_> =
            repo.catalog().packs()?.into_iter().map(|p| p.id).collect();
        let mut repair = IndexObject::default();
        for object in repo.backend().list("packs/").await? {
            let Some(id) = parse_pack_path(&object.name) else {
                continue;
            };
            if known.contains(&id) {
                continue;
            }
            match repo.read_pack_header(&object.name, object.size).await {
                Ok(entries) => {
                    let kind = match entries.first().and_then(|e| e.object_kind()) {
                        Some(ObjectKind::DataBlob) | None => PackKind::Data,
                        Some(_) => PackKind::Tree,
                    };
                    summary.packs_from_headers += 1;
                    repair.packs.push(IndexedPack {
                        id,
                        kind: kind.code(),
                        size: object.size,
                        blobs: entries,
                    });
                    if repair.blob_count() >= INDEX_FLUSH_BLOBS {
                        let (id, _) = repo.write_index(&std::mem::take(&mut repair)).await?;
                        summary.repair_indexes.push(id);
                    }
                }
                Err(e) if e.is_damage() => summary
                    .warnings
                    .push(format!("skipped {}: {e}", object.name)),
                Err(e) => return Err(e),
            }
        }
        if !repair.packs.is_empty() {
            let (id, _) = repo.write_index(&repair).await?;
            summary.repair_indexes.push(id);
        }
        summary.blobs = repo.catalog().blob_count()?;
        summary.duration_s = started.elapsed().as_secs_f64();
        summary.requests = repo.counts();
        Ok(summary)
    })
    .await
}
