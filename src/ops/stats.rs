//! `stats`: what the repository holds and what it costs to store.
//!
//! Object counts and sizes come from listing the storage itself (one LIST
//! per prefix, paged), so they are the truth even where the catalog is
//! behind; blob counts, compression and deduplication come from the
//! catalog.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::backend::{Backend, RequestCounts};
use crate::catalog::SnapshotFilter;
use crate::error::Result;
use crate::layout::DIRECTORIES;
use crate::repo::Repo;
use crate::seal::ObjectKind;

/// Objects under one top-level prefix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObjectGroup {
    /// The prefix: `packs`, `index`, `snapshots`, `keys`, `locks`, `pending`.
    pub prefix: &'static str,
    /// How many objects.
    pub count: u64,
    /// Their total size.
    pub bytes: u64,
}

/// Distinct blobs of one kind.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BlobGroup {
    /// `data`, `tree` or `list`.
    pub kind: &'static str,
    /// How many distinct blobs.
    pub count: u64,
    /// Their plaintext size.
    pub raw_bytes: u64,
    /// Their size as stored (compressed and sealed).
    pub stored_bytes: u64,
}

/// What `stats` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatsSummary {
    /// The repository's location.
    pub location: String,
    /// Snapshots.
    pub snapshots: u64,
    /// Distinct sources among them.
    pub sources: u64,
    /// Everything stored, by prefix, from listing the storage.
    pub objects: Vec<ObjectGroup>,
    /// Total objects under those prefixes (the small `config` object aside).
    pub total_objects: u64,
    /// Total stored bytes under them: what the storage bills for.
    pub total_bytes: u64,
    /// Distinct blobs by kind, from the catalog.
    pub blobs: Vec<BlobGroup>,
    /// Sum of the sizes of every snapshot's input: what full copies would
    /// have taken.
    pub logical_bytes: u64,
    /// `logical_bytes` over the plaintext of the distinct data blobs.
    pub dedup_ratio: f64,
    /// Plaintext over stored size of the distinct blobs.
    pub compression_ratio: f64,
    /// `logical_bytes` over `total_bytes`: the saving of everything together.
    pub overall_ratio: f64,
    /// Blob copies `check --read-data` found damaged.
    pub damaged_blobs: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Gathers the statistics.
pub async fn stats(repo: &Repo) -> Result<StatsSummary> {
    let started = Instant::now();
    let mut objects = Vec::new();
    for prefix in DIRECTORIES {
        let listed = crate::repo::list_prefix(repo.backend(), &format!("{prefix}/")).await?;
        objects.push(ObjectGroup {
            prefix,
            count: listed.len() as u64,
            bytes: listed.iter().map(|o| o.size).sum(),
        });
    }
    let total_objects = objects.iter().map(|g| g.count).sum::<u64>();
    let total_bytes = objects.iter().map(|g| g.bytes).sum::<u64>();

    let snapshots = repo.snapshots(&SnapshotFilter::default())?;
    let sources: BTreeSet<&str> = snapshots.iter().map(|(_, s)| s.source.as_str()).collect();
    let logical_bytes = snapshots
        .iter()
        .map(|(_, s)| s.summary.total_bytes.max(s.summary.bytes_read))
        .sum::<u64>();

    let (totals, damaged_blobs) = {
        let catalog = repo.catalog();
        (catalog.blob_totals()?, catalog.damaged_blob_count()?)
    };
    let blobs: Vec<BlobGroup> = totals
        .iter()
        .filter_map(|&(code, count, stored, raw)| {
            let kind = match ObjectKind::from_code(code)? {
                ObjectKind::DataBlob => "data",
                ObjectKind::TreeBlob => "tree",
                ObjectKind::ListBlob => "list",
                _ => return None,
            };
            Some(BlobGroup {
                kind,
                count,
                raw_bytes: raw,
                stored_bytes: stored,
            })
        })
        .collect();
    let data_raw: u64 = blobs
        .iter()
        .filter(|b| b.kind == "data")
        .map(|b| b.raw_bytes)
        .sum();
    let raw: u64 = blobs.iter().map(|b| b.raw_bytes).sum();
    let stored: u64 = blobs.iter().map(|b| b.stored_bytes).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };

    Ok(StatsSummary {
        location: repo.backend().location(),
        snapshots: snapshots.len() as u64,
        sources: sources.len() as u64,
        objects,
        total_objects,
        total_bytes,
        blobs,
        logical_bytes,
        dedup_ratio: ratio(logical_bytes, data_raw),
        compression_ratio: ratio(raw, stored),
        overall_ratio: ratio(logical_bytes, total_bytes),
        damaged_blobs,
        duration_s: started.elapsed().as_secs_f64(),
        requests: repo.counts(),
    })
}
