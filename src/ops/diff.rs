//! `diff`: what changed between two snapshots, without reading file
//! contents (and with `content`, unified diffs of small text files).
//!
//! Both trees are walked together; a subtree with the same id on both
//! sides is identical and skipped, so the cost follows the change.

use std::time::Instant;

use crate::backend::RequestCounts;
use crate::error::Result;
use crate::hash::BlobId;
use crate::lease::LeaseKind;
use crate::read::read_content;
use crate::repo::Repo;
use crate::snapshot::{Node, NodeKind, Snapshot, Tree};

/// Largest file shown as a unified diff with `content`.
pub(crate) const MAX_DIFF_SIZE: u64 = 1 << 20;

/// One difference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `M` content changed, `T` type changed,
    /// `U` metadata changed only.
    pub change: &'static str,
    /// Absolute path in the snapshots.
    pub path: String,
    /// What changed, for `M` and `U` (sizes, mode, owner, time).
    pub details: Option<String>,
    /// Unified diff of the content, with `content`, for small text files.
    pub unified: Option<String>,
}

/// What `diff` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DiffSummary {
    /// Differences in path order.
    pub changes: Vec<Change>,
    /// Entries added.
    pub added: u64,
    /// Entries removed.
    pub removed: u64,
    /// Files whose content (or type) changed.
    pub modified: u64,
    /// Entries whose metadata alone changed.
    pub metadata_only: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Compares snapshot `a` (older) with `b` (newer).
pub async fn diff(repo: &Repo, a: &Snapshot, b: &Snapshot, content: bool) -> Result<DiffSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let mut summary = DiffSummary::default();
        compare(
            repo,
            Some(a.root),
            Some(b.root),
            Vec::new(),
            content,
            &mut summary,
        )
        .await?;
        summary.duration_s = started.elapsed().as_secs_f64();
        summary.requests = repo.counts();
        Ok(summary)
    })
    .await
}

fn compare<'a>(
    repo: &'a Repo,
    a: Option<BlobId>,
    b: Option<BlobId>,
    path: Vec<u8>,
    content: bool,
    out: &'a mut DiffSummary,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if a == b {
            return Ok(());
        }
        let (ta, tb) = (tree_or_empty(repo, a).await?, tree_or_empty(repo, b).await?);
        let (mut i, mut j) = (0, 0);
        while i < ta.entries.len() || j < tb.entries.len() {
            let (na, nb) = (ta.entries.get(i), tb.entries.get(j));
            let order = match (na, nb) {
                (Some(x), Some(y)) => x.name.as_slice().cmp(y.name.as_slice()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let name = match order {
                std::cmp::Ordering::Greater => &nb.expect("b has the smaller name").name,
                _ => &na.expect("a has the smaller or equal name").name,
            };
            let mut child = path.clone();
            child.push(b'/');
            child.extend_from_slice(name);
            match order {
                std::cmp::Ordering::Less => {
                    removed_or_added(repo, na.expect("present"), child, "-", out).await?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    removed_or_added(repo, nb.expect("present"), child, "+", out).await?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (na.expect("present"), nb.expect("present"));
                    changed(repo, x, y, child, content, out).await?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    })
}

async fn tree_or_empty(repo: &Repo, id: Option<BlobId>) -> Result<Tree> {
    match id {
        Some(id) => repo.load_tree(&id).await,
        None => Ok(Tree::default()),
    }
}

/// Reports an entry (and everything below it) as added or removed.
async fn removed_or_added(
    repo: &Repo,
    node: &Node,
    path: Vec<u8>,
    change: &'static str,
    out: &mut DiffSummary,
) -> Result<()> {
    let mut stack = vec![(node.clone(), path)];
    while let Some((node, path)) = stack.pop() {
        out.changes.push(Change {
            change,
            path: String::from_utf8_lossy(&path).into_owned(),
            details: None,
            unified: None,
        });
        if change == "+" {
            out.added += 1;
        } else {
            out.removed += 1;
        }
        if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
            let tree = repo.load_tree(&sub).await?;
            for child in tree.entries.into_iter().rev() {
                let mut p = path.clone();
                p.push(b'/');
                p.extend_from_slice(&child.name);
                stack.push((child, p));
            }
        }
    }
    Ok(())
}

async fn changed(
    repo: &Repo,
    a: &Node,
    b: &Node,
    path: Vec<u8>,
    content: bool,
    out: &mut DiffSummary,
) -> Result<()> {
    let display = String::from_utf8_lossy(&path).into_owned();
    if a.kind != b.kind {
        out.changes.push(Change {
            change: "T",
            path: display,
            details: Some(format!(
                "{} -> {}",
                crate::ops::ls::kind_name(a.kind),
                crate::ops::ls::kind_name(b.kind)
            )),
            unified: None,
        });
        out.modified += 1;
        return Ok(());
    }
    let metadata = metadata_changes(a, b);
    match a.kind {
        NodeKind::Dir => {
            if !metadata.is_empty() {
                out.changes.push(Change {
                    change: "U",
                    path: display,
                    details: Some(metadata.join(", ")),
                    unified: None,
                });
                out.metadata_only += 1;
            }
            compare(repo, a.subtree, b.subtree, path, content, out).await
        }
        NodeKind::File | NodeKind::Symlink => {
            let same_content = a.content == b.content && a.target == b.target;
            if same_content {
                if !metadata.is_empty() {
                    out.changes.push(Change {
                        change: "U",
                        path: display,
                        details: Some(metadata.join(", ")),
                        unified: None,
                    });
                    out.metadata_only += 1;
                }
                return Ok(());
            }
            let unified = if content && a.kind == NodeKind::File {
                unified_diff(repo, a, b, &display).await?
            } else {
                None
            };
            let details = if a.kind == NodeKind::File {
                format!("size {} -> {}", a.size, b.size)
            } else {
                format!(
                    "target {} -> {}",
                    String::from_utf8_lossy(a.target.as_ref().map_or(&[][..], |t| &t[..])),
                    String::from_utf8_lossy(b.target.as_ref().map_or(&[][..], |t| &t[..]))
                )
            };
            out.changes.push(Change {
                change: "M",
                path: display,
                details: Some(details),
                unified,
            });
            out.modified += 1;
            Ok(())
        }
    }
}

async fn read_text(repo: &Repo, node: &Node) -> Result<Option<String>> {
    let content = node.content.clone().unwrap_or_default();
    let mut bytes = Vec::new();
    read_content(repo, &content, &mut |piece| {
        bytes.extend_from_slice(piece);
        Ok(())
    })
    .await?;
    Ok(String::from_utf8(bytes).ok())
}

fn metadata_changes(a: &Node, b: &Node) -> Vec<String> {
    let mut out = Vec::new();
    if a.mode != b.mode {
        out.push(format!("mode {:o} -> {:o}", a.mode, b.mode));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        out.push(format!("owner {}:{} -> {}:{}", a.uid, a.gid, b.uid, b.gid));
    }
    if a.mtime_ns != b.mtime_ns {
        out.push(format!(
            "mtime {} -> {}",
            crate::ops::format_time(a.mtime_ns),
            crate::ops::format_time(b.mtime_ns)
        ));
    }
    out
}

/// A unified diff of two versions of a small text file, or `None` if either
/// is large or not UTF-8.
async fn unified_diff(repo: &Repo, a: &Node, b: &Node, path: &str) -> Result<Option<String>> {
    if a.size > MAX_DIFF_SIZE || b.size > MAX_DIFF_SIZE {
        return Ok(None);
    }
    let (Some(old), Some(new)) = (read_text(repo, a).await?, read_text(repo, b).await?) else {
        return Ok(None);
    };
    let diff = similar::TextDiff::from_lines(&old, &new);
    Ok(Some(
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("a{path}"), &format!("b{path}"))
            .to_string(),
    ))
}
