//! `forget`: applies a retention policy and deletes the snapshot objects it
//! does not keep. The data they alone used stays until `prune`.
//!
//! Snapshots are grouped (by source and host unless told otherwise) and
//! [`crate::retention::apply`] decides per group. A policy that would
//! remove every snapshot of a group is refused unless `allow_empty`, and so
//! are selectors that match nothing: both are far more often a typo than a
//! wish.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::backend::{RequestCounts, delete_all};
use crate::catalog::SnapshotFilter;
use crate::error::{Error, Result};
use crate::hash::SnapshotId;
use crate::layout::snapshot_path;
use crate::repo::Repo;
use crate::retention::{self, Item, Policy};

/// Which fields group snapshots for retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// By source name.
    pub source: bool,
    /// By host.
    pub host: bool,
    /// By the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            source: true,
            host: true,
            tags: false,
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = Error;

    /// Parses a comma-separated list of `source`, `host`, `tags`; empty
    /// means one group for everything selected.
    fn from_str(s: &str) -> Result<GroupBy> {
        let mut by = GroupBy {
            source: false,
            host: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "source" => by.source = true,
                "host" => by.host = true,
                "tags" | "tag" => by.tags = true,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot group by {other:?}: use a comma-separated list of source, host, tags"
                    )));
                }
            }
        }
        Ok(by)
    }
}

/// What to forget.
#[derive(Clone, Debug)]
pub struct ForgetOptions {
    /// Only snapshots matching this take part.
    pub filter: SnapshotFilter,
    /// The policy.
    pub policy: Policy,
    /// How to group.
    pub group_by: GroupBy,
    /// Time zone for periods (the system's, or UTC).
    pub time_zone: TimeZone,
    /// The time to judge "newer than now" against.
    pub now: Timestamp,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// Allow a policy to remove every snapshot of a group.
    pub allow_empty: bool,
    /// Remove exactly these snapshots instead of applying a policy (which
    /// must then be empty).
    pub snapshots: Vec<SnapshotId>,
}

/// One snapshot and the decision about it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ForgetEntry {
    /// Snapshot id.
    pub id: SnapshotId,
    /// RFC 3339 time.
    pub time: String,
    /// Source name.
    pub source: String,
    /// Host.
    pub host: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Kept or removed.
    pub keep: bool,
    /// The rules that kept it.
    pub reasons: Vec<String>,
    /// Dated after now by more than the clock-skew allowance: kept, but
    /// counted toward no rule.
    pub suspicious: bool,
    /// An incomplete dump stored on request: counted toward no rule.
    pub incomplete: bool,
    /// Its group, as `source=… host=…`.
    #[serde(skip)]
    pub group: String,
}

/// What `forget` decided and did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ForgetSummary {
    /// Every selected snapshot, grouped, newest first within a group.
    pub snapshots: Vec<ForgetEntry>,
    /// Snapshots kept.
    pub kept: u64,
    /// Snapshots removed (or that would be).
    pub removed: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Snapshots dated in the future, and other things worth knowing.
    pub warnings: Vec<String>,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made.
    pub requests: RequestCounts,
}

/// Applies the policy; see the module docs.
pub async fn forget(repo: &Repo, options: &ForgetOptions) -> Result<ForgetSummary> {
    let started = Instant::now();
    if !options.snapshots.is_empty() {
        return forget_named(repo, options, started).await;
    }
    if options.policy.is_empty() {
        return Err(Error::NoRetentionRule);
    }
    repo.sync().await?;
    let selected = repo.snapshots(&options.filter)?;
    if selected.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no snapshots match {}",
            describe(&options.filter)
        )));
    }

    let mut groups: BTreeMap<String, Vec<(SnapshotId, crate::snapshot::Snapshot)>> =
        BTreeMap::new();
    for (id, snapshot) in selected {
        groups
            .entry(group_key(&options.group_by, &snapshot))
            .or_default()
            .push((id, snapshot));
    }

    let mut summary = ForgetSummary {
        dry_run: options.dry_run,
        ..ForgetSummary::default()
    };
    let mut doomed: Vec<SnapshotId> = Vec::new();
    for (group, mut members) in groups {
        members.sort_by(|a, b| b.1.time_ns.cmp(&a.1.time_ns).then(a.0.cmp(&b.0)));
        let items: Vec<Item> = members
            .iter()
            .map(|(_, s)| Item {
                time: Timestamp::from_nanosecond(i128::from(s.time_ns)).unwrap_or(Timestamp::MIN),
                tags: &s.tags,
            })
            .collect();
        let decisions = retention::apply(&items, &options.policy, options.now, &options.time_zone);
        // Suspicious (future-dated) snapshots are kept but do not count:
        // a group whose real snapshots would all go is refused, planted
        // ones or not.
        // Incomplete dumps are not good backups: they neither count as
        // the group's real snapshots nor keep it from being emptied.
        let good = |d: &retention::Decision| !d.suspicious && !d.incomplete;
        let real = decisions.iter().filter(|d| good(d)).count();
        if !options.allow_empty && real > 0 && decisions.iter().all(|d| !d.keep || !good(d)) {
            return Err(Error::WouldEmptyGroup {
                group: group.to_string(),
                count: real,
            });
        }
        for ((id, snapshot), decision) in members.iter().zip(decisions) {
            if !decision.keep {
                doomed.push(*id);
            }
            if decision.suspicious {
                summary.warnings.push(format!(
                    "snapshot {} ({group}) is dated {}, after now: kept, but counted toward no rule (a clock far ahead, or a snapshot planted by someone holding the passphrase)",
                    id.short(),
                    crate::ops::format_time(snapshot.time_ns)
                ));
            }
            summary.snapshots.push(ForgetEntry {
                id: *id,
                time: crate::ops::format_time(snapshot.time_ns),
                source: snapshot.source.clone(),
                host: snapshot.host.clone(),
                tags: snapshot.tags.clone(),
                keep: decision.keep,
                reasons: decision.reasons,
                suspicious: decision.suspicious,
                incomplete: decision.incomplete,
                group: group.clone(),
            });
        }
    }
    summary.kept = summary.snapshots.iter().filter(|e| e.keep).count() as u64;
    remove(repo, options, summary, &doomed, started).await
}

/// Deletes the `doomed` snapshots (unless a dry run) and completes the
/// summary.
async fn remove(
    repo: &Repo,
    options: &ForgetOptions,
    mut summary: ForgetSummary,
    doomed: &[SnapshotId],
    started: Instant,
) -> Result<ForgetSummary> {
    summary.removed = doomed.len() as u64;
    if !options.dry_run {
        delete_all(repo.backend(), doomed.iter().map(snapshot_path)).await?;
        repo.catalog().remove_snapshots(doomed)?;
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    summary.requests = repo.counts();
    Ok(summary)
}

/// Removes the snapshots named in `options`, as restic's `forget ID…`.
async fn forget_named(
    repo: &Repo,
    options: &ForgetOptions,
    started: Instant,
) -> Result<ForgetSummary> {
    if !options.policy.is_empty() {
        return Err(Error::InvalidArgument(
            "name snapshots to remove, or give retention rules, not both".into(),
        ));
    }
    repo.sync().await?;
    let mut summary = ForgetSummary {
        dry_run: options.dry_run,
        ..ForgetSummary::default()
    };
    let mut doomed: Vec<SnapshotId> = Vec::new();
    for id in &options.snapshots {
        if doomed.contains(id) {
            continue;
        }
        let snapshot = repo.snapshot(id)?.ok_or_else(|| {
            Error::InvalidArgument(format!("no snapshot {} in this repository", id.short()))
        })?;
        doomed.push(*id);
        summary.snapshots.push(ForgetEntry {
            id: *id,
            time: crate::ops::format_time(snapshot.time_ns),
            source: snapshot.source.clone(),
            host: snapshot.host.clone(),
            tags: snapshot.tags.clone(),
            keep: false,
            reasons: vec!["named".into()],
            suspicious: false,
            incomplete: snapshot.dump.as_ref().is_some_and(|d| !d.complete),
            group: group_key(&options.group_by, &snapshot),
        });
    }
    remove(repo, options, summary, &doomed, started).await
}

fn group_key(by: &GroupBy, snapshot: &crate::snapshot::Snapshot) -> String {
    let mut parts = Vec::new();
    if by.source {
        parts.push(format!("source={}", snapshot.source));
    }
    if by.host {
        parts.push(format!("host={}", snapshot.host));
    }
    if by.tags {
        let mut tags = snapshot.tags.clone();
        tags.sort();
        parts.push(format!("tags={}", tags.join(",")));
    }
    if parts.is_empty() {
        "(all)".into()
    } else {
        parts.join(" ")
    }
}

fn describe(filter: &SnapshotFilter) -> String {
    let mut parts = Vec::new();
    if let Some(source) = &filter.source {
        parts.push(format!("source {source}"));
    }
    if let Some(host) = &filter.host {
        parts.push(format!("host {host}"));
    }
    for tag in &filter.tags {
        parts.push(format!("tag {tag}"));
    }
    if parts.is_empty() {
        "(the repository has no snapshots)".into()
    } else {
        parts.join(" ")
    }
}
