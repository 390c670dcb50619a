//! `log`: the versions of one file across snapshots.

use std::collections::HashMap;
use std::time::Instant;

use crate::backend::RequestCounts;
use crate::catalog::SnapshotFilter;
use crate::error::Result;
use crate::hash::SnapshotId;
use crate::lease::LeaseKind;
use crate::repo::Repo;
use crate::snapshot::Content;

/// One snapshot's view of the file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Version {
    /// Snapshot id.
    pub snapshot: SnapshotId,
    /// Snapshot time, RFC 3339.
    pub time: String,
    /// Snapshot source.
    pub source: String,
    /// `added`, `modified`, `unchanged` or `removed`, against the previous
    /// snapshot of the same source and host.
    pub change: &'static str,
    /// Size in that snapshot (0 when removed).
    pub size: u64,
    /// Modification time in that snapshot.
    pub mtime: Option<String>,
}

/// What `log` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogSummary {
    /// The file's versions, oldest first; a snapshot without the file is
    /// listed only where it disappeared since its source's previous one.
    pub versions: Vec<Version>,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// The history of `path` in the snapshots matching `filter`.
pub async fn log(repo: &Repo, path: &[u8], filter: &SnapshotFilter) -> Result<LogSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let mut versions = Vec::new();
        // Per source and host: the content last seen, if the file was present.
        let mut last: HashMap<(String, String), Option<Content>> = HashMap::new();
        for (id, snapshot) in repo.snapshots(filter)? {
            let group = last
                .entry((snapshot.source.clone(), snapshot.host.clone()))
                .or_default();
            let node = repo.lookup(&snapshot.root, path).await?;
            let version = |change, size, mtime| Version {
                snapshot: id,
                time: crate::ops::format_time(snapshot.time_ns),
                source: snapshot.source.clone(),
                change,
                size,
                mtime,
            };
            match (node, group.take()) {
                (Some(node), before) => {
                    let content = node.content.clone().unwrap_or_default();
                    let change = match before {
                        Some(before) if before == content => "unchanged",
                        Some(_) => "modified",
                        None => "added",
                    };
                    versions.push(version(
                        change,
                        node.size,
                        Some(crate::ops::format_time(node.mtime_ns)),
                    ));
                    *group = Some(content);
                }
                (None, Some(_)) => versions.push(version("removed", 0, None)),
                (None, None) => {}
            }
        }
        Ok(LogSummary {
            versions,
            duration_s: started.elapsed().as_secs_f64(),
            requests: repo.counts(),
        })
    })
    .await
}
