//! `ls`: a directory (or one entry) of a snapshot, without mounting.

use std::time::Instant;

use crate::backend::RequestCounts;
use crate::error::{Error, Result};
use crate::hash::SnapshotId;
use crate::lease::LeaseKind;
use crate::repo::Repo;
use crate::snapshot::{Node, NodeKind, Snapshot};

/// One listed entry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Entry {
    /// Absolute path in the snapshot.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// Size in bytes (files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name, if recorded.
    pub user: Option<String>,
    /// Group name, if recorded.
    pub group: Option<String>,
    /// Symlink target.
    pub target: Option<String>,
}

impl Entry {
    /// Describes `node` at `path`.
    pub fn new(path: &[u8], node: &Node) -> Entry {
        Entry {
            path: String::from_utf8_lossy(path).into_owned(),
            kind: kind_name(node.kind),
            size: node.size,
            mode: node.mode,
            mtime: crate::ops::format_time(node.mtime_ns),
            uid: node.uid,
            gid: node.gid,
            user: node.user.clone(),
            group: node.group.clone(),
            target: node
                .target
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
        }
    }
}

/// `file`, `dir` or `symlink`.
pub(crate) fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
    }
}

/// What `ls` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LsSummary {
    /// The entries, in path order.
    pub entries: Vec<Entry>,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Lists `path` (the root if `None`): a directory's entries, everything
/// below it with `recursive`, or the entry itself if it is not a directory.
pub async fn ls(
    repo: &Repo,
    id: &SnapshotId,
    snapshot: &Snapshot,
    path: Option<&[u8]>,
    recursive: bool,
) -> Result<LsSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let mut base: Vec<u8> = path.map(<[u8]>::to_vec).unwrap_or_default();
        while base.last() == Some(&b'/') {
            base.pop();
        }
        let tree_id = if base.is_empty() {
            snapshot.root
        } else {
            let node = repo.lookup(&snapshot.root, &base).await?.ok_or_else(|| {
                Error::PathNotInSnapshot {
                    path: String::from_utf8_lossy(path.unwrap_or(b"/")).into_owned(),
                    snapshot: id.short(),
                }
            })?;
            match (node.kind, node.subtree) {
                (NodeKind::Dir, Some(subtree)) => subtree,
                _ => {
                    return Ok(LsSummary {
                        entries: vec![Entry::new(&base, &node)],
                        duration_s: started.elapsed().as_secs_f64(),
                        requests: repo.counts(),
                    });
                }
            }
        };
        let mut entries = Vec::new();
        let mut stack = vec![(tree_id, base)];
        while let Some((tree_id, dir)) = stack.pop() {
            let tree = repo.load_tree(&tree_id).await?;
            let mut subdirs = Vec::new();
            for node in &tree.entries {
                let mut child = dir.clone();
                child.push(b'/');
                child.extend_from_slice(&node.name);
                entries.push(Entry::new(&child, node));
                if recursive && let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                    subdirs.push((sub, child));
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(LsSummary {
            entries,
            duration_s: started.elapsed().as_secs_f64(),
            requests: repo.counts(),
        })
    })
    .await
}
