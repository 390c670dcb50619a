//! `find`: paths matching a glob across snapshots, newest first.
//!
//! Each distinct (tree, path) pair is searched once, so an unchanged
//! directory shared by many snapshots costs one walk.

use std::collections::HashMap;
use std::time::Instant;

use crate::backend::RequestCounts;
use crate::catalog::SnapshotFilter;
use crate::error::Result;
use crate::hash::{BlobId, SnapshotId};
use crate::lease::LeaseKind;
use crate::ops::ls::Entry;
use crate::repo::Repo;
use crate::snapshot::NodeKind;
use crate::source::tree::PathGlob;

/// One match.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Match {
    /// Snapshot id.
    pub snapshot: SnapshotId,
    /// Snapshot time, RFC 3339.
    pub time: String,
    /// Snapshot source.
    pub source: String,
    /// The matching entry.
    #[serde(flatten)]
    pub entry: Entry,
}

/// One version of a matching path: the same kind, size and modification
/// time in every snapshot that holds it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FoundVersion {
    /// The entry, as the newest snapshot holding this version has it.
    #[serde(flatten)]
    pub entry: Entry,
    /// Snapshots holding this version.
    pub snapshots: u64,
    /// The oldest of them: id and time (RFC 3339).
    pub first_snapshot: SnapshotId,
    /// When this version was first seen.
    pub first_seen: String,
    /// The newest of them.
    pub last_snapshot: SnapshotId,
    /// When it was last seen.
    pub last_seen: String,
}

/// What `find` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FindSummary {
    /// Matches, newest snapshot first, then by path.
    pub matches: Vec<Match>,
    /// The matches grouped into versions: by path, then newest version
    /// first.
    pub versions: Vec<FoundVersion>,
    /// Snapshots searched.
    pub snapshots: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Finds entries whose path (pattern with `/`) or name (without) matches
/// `pattern` in every snapshot matching `filter`.
pub async fn find(repo: &Repo, pattern: &str, filter: &SnapshotFilter) -> Result<FindSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let glob = PathGlob::new(pattern)?;
        let mut snapshots = repo.snapshots(filter)?;
        snapshots.reverse();
        let mut memo: HashMap<(BlobId, Vec<u8>), Vec<Entry>> = HashMap::new();
        let mut matches = Vec::new();
        for (id, snapshot) in &snapshots {
            for entry in search(repo, &glob, snapshot.root, Vec::new(), &mut memo).await? {
                matches.push(Match {
                    snapshot: *id,
                    time: crate::ops::format_time(snapshot.time_ns),
                    source: snapshot.source.clone(),
                    entry,
                });
            }
        }
        let versions = group(&matches);
        Ok(FindSummary {
            versions,
            matches,
            snapshots: snapshots.len() as u64,
            duration_s: started.elapsed().as_secs_f64(),
            requests: repo.counts(),
        })
    })
    .await
}

/// Groups matches (newest snapshot first) into versions.
fn group(matches: &[Match]) -> Vec<FoundVersion> {
    let mut versions: Vec<FoundVersion> = Vec::new();
    let mut at: HashMap<(&str, &str, u64, &str), usize> = HashMap::new();
    for m in matches {
        let key = (
            m.entry.path.as_str(),
            m.entry.kind,
            m.entry.size,
            m.entry.mtime.as_str(),
        );
        match at.get(&key) {
            Some(&i) => {
                let v = &mut versions[i];
                v.snapshots += 1;
                v.first_snapshot = m.snapshot;
                v.first_seen.clone_from(&m.time);
            }
            None => {
                at.insert(key, versions.len());
                versions.push(FoundVersion {
                    entry: m.entry.clone(),
                    snapshots: 1,
                    first_snapshot: m.snapshot,
                    first_seen: m.time.clone(),
                    last_snapshot: m.snapshot,
                    last_seen: m.time.clone(),
                });
            }
        }
    }
    // By path; for one path, the newest version first (the order found).
    versions.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    versions
}

fn search<'a>(
    repo: &'a Repo,
    glob: &'a PathGlob,
    tree_id: BlobId,
    path: Vec<u8>,
    memo: &'a mut HashMap<(BlobId, Vec<u8>), Vec<Entry>>,
) -> futures::future::BoxFuture<'a, Result<Vec<Entry>>> {
    Box::pin(async move {
        let key = (tree_id, path.clone());
        if let Some(found) = memo.get(&key) {
            return Ok(found.clone());
        }
        let tree = repo.load_tree(&tree_id).await?;
        let mut found = Vec::new();
        for node in &tree.entries {
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(&node.name);
            if glob.is_match(&child) {
                found.push(Entry::new(&child, node));
            }
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                found.extend(search(repo, glob, sub, child, memo).await?);
            }
        }
        memo.insert(key, found.clone());
        Ok(found)
    })
}
