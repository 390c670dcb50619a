//! `check`: verifies the repository's structure, and with `read_data` every
//! byte of every pack.
//!
//! Structure: every pack an index object names exists with the recorded
//! size; every snapshot's trees and content lists open, and every data blob
//! they name is indexed in a present pack. With `read_data`, each pack is
//! downloaded whole, its bytes are hashed against its name, its header is
//! compared with the index, and every blob is decrypted, decompressed and
//! its id recomputed.
//!
//! Findings name the damaged object and, separately, each snapshot it
//! affects. Damaged blobs and missing packs are recorded in the catalog so
//! that later backups store that content again instead of deduplicating
//! against it, which heals every snapshot that needs it.

use crate::backend::Backend;
use crate::layout::{pack_path, parse_pack_path};
use crate::lease::LeaseKind;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::backend::RequestCounts;
use crate::catalog::{PackState, SnapshotFilter};
use crate::error::{Error, Result};
use crate::hash::{BlobId, IndexId, PackId, SnapshotId};
use crate::index::IndexedPack;
use crate::pack::read_header;
use crate::progress::Progress;
use crate::repo::{BlobOpener, Repo, list_ids};
use crate::seal::Codec;
use crate::snapshot::{Content, NodeKind};

/// Packs verified at once with `read_data`.
const VERIFY_CONCURRENCY: usize = 3;
/// Findings listed per affected snapshot before summarising the rest.
const MAX_REASONS_PER_SNAPSHOT: usize = 5;

/// What to check.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Download and verify every pack (of `subset`, when given).
    pub read_data: bool,
    /// With `read_data`: only the packs in this part.
    pub subset: Option<crate::plan::Subset>,
    /// Live counters.
    pub progress: Arc<Progress>,
}

/// A damaged or missing object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object (`packs/ab/…`, `index/…`, `snapshots/…`, a blob).
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A snapshot that cannot be fully restored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AffectedSnapshot {
    /// Snapshot id.
    pub id: SnapshotId,
    /// Snapshot time, RFC 3339.
    pub time: String,
    /// Source name.
    pub source: String,
    /// Which files or trees are affected and why.
    pub reasons: Vec<String>,
}

/// What `check` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckSummary {
    /// Damaged or missing objects.
    pub problems: Vec<Problem>,
    /// Snapshots those problems affect.
    pub affected_snapshots: Vec<AffectedSnapshot>,
    /// Things that are not damage (such as packs from interrupted backups
    /// that prune will remove).
    pub notes: Vec<String>,
    /// Packs no index object names (left by interrupted backups).
    pub unindexed_packs: u64,
    /// Their bytes.
    pub unindexed_bytes: u64,
    /// Snapshots walked.
    pub snapshots_checked: u64,
    /// Packs listed.
    pub packs: u64,
    /// Packs downloaded and verified.
    pub packs_read: u64,
    /// Blobs opened and verified.
    pub blobs_read: u64,
    /// Bytes downloaded for verification.
    pub bytes_read: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

impl CheckSummary {
    /// True when nothing is damaged or missing.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.affected_snapshots.is_empty()
    }
}

/// Checks the repository.
pub async fn check(repo: &Repo, options: &CheckOptions) -> Result<CheckSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
    let started = Instant::now();
    let mut summary = CheckSummary::default();
    let sync = repo.sync().await?;
    for warning in sync.warnings.iter().chain(&repo.open_report().warnings) {
        summary.problems.push(Problem {
            object: "repository".into(),
            problem: warning.clone(),
        });
    }

    let mut listed: HashMap<PackId, u64> = HashMap::new();
    for object in repo.backend().list("packs/").await? {
        match parse_pack_path(&object.name) {
            Some(id) => {
                listed.insert(id, object.size);
            }
            None => summary
                .notes
                .push(format!("{}: not a pack name; ignored", object.name)),
        }
    }
    summary.packs = listed.len() as u64;
    let in_subset = |id: &PackId| options.subset.is_none_or(|s| s.holds(id.as_bytes()));
    if options.read_data {
        let total = listed.keys().filter(|id| in_subset(id)).count();
        options
            .progress
            .items_total
            .store(total as u64, std::sync::atomic::Ordering::Relaxed);
    }

    let mut indexed: HashSet<PackId> = HashSet::new();
    let index_ids: Vec<IndexId> = list_ids::<IndexId>(repo.backend(), "index/")
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for index_id in index_ids {
        let index = match repo.load_index(&index_id).await {
            Ok(index) => index,
            Err(e) if e.is_damage() => {
                summary.problems.push(Problem {
                    object: crate::layout::index_path(&index_id),
                    problem: e.to_string(),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut to_read = Vec::new();
        for pack in index.packs {
            if !indexed.insert(pack.id) {
                continue;
            }
            let name = pack_path(&pack.id);
            let pending = repo
                .catalog()
                .pack(&pack.id)?
                .is_some_and(|p| p.state == PackState::Pending);
            match listed.get(&pack.id) {
                // Prune deletes a pending generation's packs before it
                // rewrites the index objects naming them.
                None if pending => summary.notes.push(format!(
                    "{name} is pending deletion and already deleted (a prune will finish rewriting index {})",
                    index_id.short()
                )),
                None => {
                    summary.problems.push(Problem {
                        object: name,
                        problem: format!("is missing (index {} names it)", index_id.short()),
                    });
                    repo.catalog()
                        .set_pack_state(&pack.id, PackState::Damaged)?;
                }
                Some(&size) if size != pack.size => {
                    summary.problems.push(Problem {
                        object: name,
                        problem: format!("is {size} bytes, the index says {}", pack.size),
                    });
                    if options.read_data && in_subset(&pack.id) {
                        to_read.push(pack);
                    } else {
                        repo.catalog()
                            .set_pack_state(&pack.id, PackState::Damaged)?;
                    }
                }
                Some(_) if options.read_data && in_subset(&pack.id) => to_read.push(pack),
                // Present with the indexed size: whatever an earlier check
                // found missing is back. (Damage inside it is tracked per
                // blob and cleared only by reading it.)
                Some(_) => repo.catalog().set_pack_state(&pack.id, PackState::Usable)?,
            }
        }
        if options.read_data {
            verify_packs(repo, to_read, options, &mut summary).await?;
        }
    }
    let unindexed: Vec<u64> = listed
        .iter()
        .filter(|(id, _)| !indexed.contains(id))
        .map(|(_, size)| *size)
        .collect();
    summary.unindexed_packs = unindexed.len() as u64;
    summary.unindexed_bytes = unindexed.iter().sum();
    if !unindexed.is_empty() {
        summary.notes.push(format!(
            "{} pack(s), {} bytes, are named by no index object (left by interrupted backups); prune indexes them and removes what no snapshot needs",
            summary.unindexed_packs, summary.unindexed_bytes
        ));
    }

    if !options.read_data {
        let known_damaged = repo.catalog().damaged_blob_count()?;
        if known_damaged > 0 {
            summary.problems.push(Problem {
                object: "repository".into(),
                problem: format!(
                    "{known_damaged} blob(s) found damaged by an earlier `check --read-data` and not stored again since"
                ),
            });
        }
    }
    check_snapshots(repo, &mut summary).await?;

    // Leases nobody holds any more (expired, or their process on this
    // machine is gone) would only make a prune wait: remove them.
    if let Some(lease) = repo.lease() {
        let cleanup = lease.remove_dead().await?;
        for removed in cleanup.removed {
            summary.notes.push(format!("removed the {removed}"));
        }
        for stranger in cleanup.ignored {
            summary.notes.push(format!(
                "ignored {stranger} (not a lease of this repository; safe to delete)"
            ));
        }
    }

    let complaints = repo.catalog().integrity_check()?;
    for complaint in complaints {
        summary.problems.push(Problem {
            object: repo.catalog().path().display().to_string(),
            problem: format!("catalog: {complaint} (run `larder catalog rebuild`)"),
        });
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    summary.requests = repo.counts();
    Ok(summary)
})
    .await
}

async fn verify_packs(
    repo: &Repo,
    packs: Vec<IndexedPack>,
    options: &CheckOptions,
    summary: &mut CheckSummary,
) -> Result<()> {
    let mut results = futures::stream::iter(packs)
        .map(|pack| async move {
            let name = pack_path(&pack.id);
            let bytes = match repo.backend().get(&name, pack.size).await {
                Ok(bytes) => bytes,
                Err(e) if e.is_damage() => {
                    let damaged: Vec<BlobId> = pack.blobs.iter().map(|b| b.id).collect();
                    let problem = match e {
                        Error::NotFound { .. } => "is missing".into(),
                        e => format!("cannot be read whole: {e}"),
                    };
                    return Ok((
                        pack.id,
                        0,
                        0,
                        vec![Problem {
                            object: name,
                            problem,
                        }],
                        damaged,
                    ));
                }
                Err(e) => return Err(e),
            };
            let opener = repo.blob_opener();
            let sealer = repo.sealer().clone();
            let len = bytes.len() as u64;
            tokio::task::spawn_blocking(move || {
                let (problems, damaged, blobs) = verify_pack(&opener, &sealer, &pack, &bytes);
                Ok((pack.id, len, blobs, problems, damaged))
            })
            .await
            .expect("verification task panicked")
        })
        .buffer_unordered(VERIFY_CONCURRENCY);
    while let Some(result) = results.next().await {
        let (pack, len, blobs, problems, damaged) = result?;
        summary.packs_read += 1;
        summary.bytes_read += len;
        summary.blobs_read += blobs;
        Progress::add(&options.progress.items_done, 1);
        Progress::add(&options.progress.bytes_processed, len);
        summary.problems.extend(problems);
        let mut catalog = repo.catalog();
        catalog.set_damaged_blobs(&pack, &damaged)?;
        catalog.set_pack_state(
            &pack,
            if len == 0 {
                PackState::Damaged
            } else {
                PackState::Usable
            },
        )?;
    }
    Ok(())
}

/// Verifies one downloaded pack against its name and index entries.
/// Returns the problems, the damaged blobs, and the number of blobs opened.
fn verify_pack(
    opener: &BlobOpener,
    sealer: &crate::seal::Sealer,
    pack: &IndexedPack,
    bytes: &[u8],
) -> (Vec<Problem>, Vec<BlobId>, u64) {
    let name = pack_path(&pack.id);
    let mut problems = Vec::new();
    if PackId::of_pack(bytes) != pack.id {
        problems.push(Problem {
            object: name.clone(),
            problem: format!(
                "content does not match its name ({} bytes read; damaged or truncated)",
                bytes.len()
            ),
        });
    }
    let mut codec = Codec::new(1);
    match read_header(sealer, &mut codec, bytes, &name) {
        Ok(header) if header.entries == pack.blobs => {}
        Ok(_) => problems.push(Problem {
            object: name.clone(),
            problem: "header differs from the index".into(),
        }),
        Err(e) => problems.push(Problem {
            object: name.clone(),
            problem: format!("header unreadable: {e}"),
        }),
    }
    let mut damaged = Vec::new();
    let mut opened = 0;
    for entry in &pack.blobs {
        let Some(kind) = entry.object_kind() else {
            damaged.push(entry.id);
            continue;
        };
        let location = crate::catalog::BlobLocation {
            pack: pack.id,
            offset: entry.offset,
            length: entry.length,
            raw_length: entry.raw_length,
            kind,
        };
        let end = entry.offset.saturating_add(u64::from(entry.length));
        let result = if end > bytes.len() as u64 {
            Err(Error::corrupt(
                format!("{name} (blob {})", entry.id.short()),
                "lies beyond the end of the pack",
            ))
        } else {
            opener.open(
                &name,
                &location,
                &entry.id,
                &bytes[entry.offset as usize..end as usize],
            )
        };
        opened += 1;
        if let Err(e) = result {
            problems.push(Problem {
                object: format!("blob {}", entry.id),
                problem: e.to_string(),
            });
            damaged.push(entry.id);
        }
    }
    (problems, damaged, opened)
}

/// Findings below each tree or list, so shared subtrees are walked once,
/// and the trees being walked, so a cycle is reported instead of followed.
#[derive(Default)]
struct Walk {
    memo: HashMap<BlobId, Vec<String>>,
    visiting: HashSet<BlobId>,
}

/// Walks every snapshot, noting each one that names an unreadable tree or
/// list, or a data blob with no usable copy.
async fn check_snapshots(repo: &Repo, summary: &mut CheckSummary) -> Result<()> {
    let mut walk = Walk::default();
    for (id, snapshot) in repo.snapshots(&SnapshotFilter::default())? {
        summary.snapshots_checked += 1;
        let reasons = check_tree(repo, snapshot.root, 0, &mut walk).await?;
        if !reasons.is_empty() {
            let mut listed: Vec<String> = reasons
                .iter()
                .take(MAX_REASONS_PER_SNAPSHOT)
                .cloned()
                .collect();
            if reasons.len() > MAX_REASONS_PER_SNAPSHOT {
                listed.push(format!(
                    "and {} more",
                    reasons.len() - MAX_REASONS_PER_SNAPSHOT
                ));
            }
            summary.affected_snapshots.push(AffectedSnapshot {
                id,
                time: crate::ops::format_time(snapshot.time_ns),
                source: snapshot.source.clone(),
                reasons: listed,
            });
        }
    }
    Ok(())
}

/// Problems below one tree, as `/path: reason` relative to it.
fn check_tree<'a>(
    repo: &'a Repo,
    tree_id: BlobId,
    depth: usize,
    walk: &'a mut Walk,
) -> futures::future::BoxFuture<'a, Result<Vec<String>>> {
    Box::pin(async move {
        const MAX_DEPTH: usize = 4096;
        if let Some(found) = walk.memo.get(&tree_id) {
            return Ok(found.clone());
        }
        if depth > MAX_DEPTH || !walk.visiting.insert(tree_id) {
            return Ok(vec![format!(
                ": tree {} contains itself or nests too deep",
                tree_id.short()
            )]);
        }
        let mut found = Vec::new();
        match repo.load_tree(&tree_id).await {
            Ok(tree) => {
                for node in &tree.entries {
                    let name = format!("/{}", node.display_name());
                    match node.kind {
                        NodeKind::Dir => match node.subtree {
                            Some(sub) => {
                                let below = check_tree(repo, sub, depth + 1, walk).await?;
                                found.extend(below.into_iter().map(|r| format!("{name}{r}")));
                            }
                            None => found.push(format!("{name}: directory without a tree")),
                        },
                        NodeKind::File => {
                            for content in node.contents() {
                                if let Some(reason) = check_content(repo, content, walk).await? {
                                    found.push(format!("{name}: {reason}"));
                                    break;
                                }
                            }
                        }
                        NodeKind::Symlink => {}
                    }
                }
            }
            Err(e) if e.is_damage() => {
                found.push(format!("/: tree {} unreadable: {e}", tree_id.short()))
            }
            Err(e) => return Err(e),
        }
        walk.visiting.remove(&tree_id);
        walk.memo.insert(tree_id, found.clone());
        Ok(found)
    })
}

/// The first problem in a content list, if any.
fn check_content<'a>(
    repo: &'a Repo,
    content: &'a Content,
    walk: &'a mut Walk,
) -> futures::future::BoxFuture<'a, Result<Option<String>>> {
    Box::pin(async move {
        for entry in &content.entries {
            if content.depth == 0 {
                match repo.catalog().locate(&entry.id)? {
                    None => {
                        return Ok(Some(format!(
                            "data blob {} is missing or damaged",
                            entry.id.short()
                        )));
                    }
                    Some(location) if u64::from(location.raw_length) != entry.len => {
                        return Ok(Some(format!(
                            "data blob {} is {} bytes, its content list says {}",
                            entry.id.short(),
                            location.raw_length,
                            entry.len
                        )));
                    }
                    Some(_) => {}
                }
                continue;
            }
            if let Some(found) = walk.memo.get(&entry.id) {
                if let Some(first) = found.first() {
                    return Ok(Some(first.clone()));
                }
                continue;
            }
            let reason = match repo.load_list(&entry.id, content.depth - 1).await {
                Ok(list) if list.len() != entry.len => Some(format!(
                    "content list {} covers {} bytes, its parent says {}",
                    entry.id.short(),
                    list.len(),
                    entry.len
                )),
                Ok(list) => check_content(repo, &list, walk).await?,
                Err(e) if e.is_damage() => {
                    Some(format!("content list {} unreadable: {e}", entry.id.short()))
                }
                Err(e) => return Err(e),
            };
            walk.memo.insert(entry.id, reason.iter().cloned().collect());
            if reason.is_some() {
                return Ok(reason);
            }
        }
        Ok(None)
    })
}
