//! `cat`: one file of a snapshot (or the stream of a stream snapshot) to a
//! writer. Only the tree blobs on the path and the file's own chunks are
//! read.

use std::io::Write;
use std::time::Instant;

use crate::backend::RequestCounts;
use crate::catalog::SnapshotFilter;
use crate::error::{Error, Result};
use crate::hash::SnapshotId;
use crate::lease::LeaseKind;
use crate::read::read_file;
use crate::repo::Repo;
use crate::snapshot::{Node, NodeKind, Snapshot};

/// What `cat` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CatSummary {
    /// The file written out, as named in the snapshot.
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Finds the file `path` names in `snapshot`; with no path, the single file
/// of a stream snapshot.
pub(crate) async fn find_file(
    repo: &Repo,
    id: &SnapshotId,
    snapshot: &Snapshot,
    path: Option<&[u8]>,
) -> Result<(String, Node)> {
    let (path, node) = match path {
        Some(path) => {
            let shown = String::from_utf8_lossy(path).into_owned();
            let node = repo.lookup(&snapshot.root, path).await?.ok_or_else(|| {
                Error::PathNotInSnapshot {
                    path: shown.clone(),
                    snapshot: id.short(),
                }
            })?;
            (shown, node)
        }
        None => {
            let tree = repo.load_tree(&snapshot.root).await?;
            match &tree.entries[..] {
                [node] if node.kind == NodeKind::File => (node.display_name(), node.clone()),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "snapshot {} holds a file tree, not a single stream; name the file to print",
                        id.short()
                    )));
                }
            }
        }
    };
    if node.kind != NodeKind::File {
        return Err(Error::InvalidArgument(format!(
            "{path} is not a regular file"
        )));
    }
    Ok((path, node))
}

/// The newest snapshot, of any source, that holds `path`: for `latest`
/// without a source, where the newest snapshot overall may be another
/// source's (a stream, say). Looks at the newest snapshot of each source,
/// newest first; when none holds the path, the error names the sources.
pub async fn latest_holding(repo: &Repo, path: &[u8]) -> Result<(SnapshotId, Snapshot)> {
    let mut all = repo.catalog().snapshots(&SnapshotFilter::default())?;
    all.sort_by(|(a_id, a), (b_id, b)| (b.time_ns, b_id).cmp(&(a.time_ns, a_id)));
    let mut seen = std::collections::BTreeSet::new();
    for (id, snapshot) in all {
        if !seen.insert(snapshot.source.clone()) {
            continue;
        }
        match repo.lookup(&snapshot.root, path).await {
            Ok(Some(_)) => return Ok((id, snapshot)),
            Ok(None) => {}
            Err(e) if e.is_damage() => return Err(e),
            Err(_) => {}
        }
    }
    Err(Error::InvalidArgument(format!(
        "{} is in the latest snapshot of no source (sources: {}); name the snapshot or its source",
        String::from_utf8_lossy(path),
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.into_iter().collect::<Vec<_>>().join(", ")
        }
    )))
}

/// Writes one file of a snapshot to `out`. The bytes are verified blob by
/// blob before they are written; on damage the error names the object and
/// nothing unverified has been written.
pub async fn cat(
    repo: &Repo,
    id: &SnapshotId,
    snapshot: &Snapshot,
    path: Option<&[u8]>,
    out: &mut (dyn Write + Send),
) -> Result<CatSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let (path, node) = find_file(repo, id, snapshot, path).await?;
        let bytes = read_file(repo, &node, &mut |piece| {
            out.write_all(piece)
                .map_err(|e| Error::io("writing", "standard output", e))
        })
        .await?;
        out.flush()
            .map_err(|e| Error::io("writing", "standard output", e))?;
        Ok(CatSummary {
            path,
            bytes,
            duration_s: started.elapsed().as_secs_f64(),
            requests: repo.counts(),
        })
    })
    .await
}
