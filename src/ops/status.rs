//! `status`: is every source backed up recently, and did its last drill
//! pass? The one question monitoring asks, answered from the catalog (and
//! the `drills/` objects) without reading any pack.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::backend::RequestCounts;
use crate::catalog::SnapshotFilter;
use crate::error::{Error, Result};
use crate::hash::SnapshotId;
use crate::repo::Repo;
use crate::retention::Within;
use crate::snapshot::Snapshot;

/// Sources whose names end with this are the safety snapshots `restore`
/// takes before replacing files; they are listed but never stale.
const SAFETY_SUFFIX: &str = ".pre-restore";

/// What to report on.
#[derive(Clone, Debug, Default)]
pub struct StatusOptions {
    /// A source whose newest good snapshot is older than this is stale.
    pub max_age: Option<Within>,
    /// Only this source.
    pub source: Option<String>,
    /// The time to measure ages from (now when `None`).
    pub now: Option<Timestamp>,
}

/// One source's state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceStatus {
    /// The source name.
    pub source: String,
    /// Snapshots of the source.
    pub snapshots: u64,
    /// Of those, dumps stored incomplete on request (never good backups).
    pub incomplete: u64,
    /// The newest good snapshot: complete, and not from the future.
    pub latest: Option<LatestGood>,
    /// The newest drill of the source, if any.
    pub last_drill: Option<LastDrill>,
    /// Why the source needs attention (empty when it is fine).
    pub problems: Vec<String>,
}

/// The newest good snapshot of a source.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatestGood {
    /// Its id.
    #[serde(serialize_with = "crate::ops::hex_id")]
    pub id: SnapshotId,
    /// When it was taken.
    #[serde(serialize_with = "crate::ops::as_text")]
    pub time: Timestamp,
    /// Seconds from then to the status's time.
    pub age_s: i64,
}

/// The newest drill of a source.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LastDrill {
    /// The snapshot drilled.
    #[serde(serialize_with = "crate::ops::hex_id")]
    pub snapshot: SnapshotId,
    /// When the drill ran.
    #[serde(serialize_with = "crate::ops::as_text")]
    pub time: Timestamp,
    /// `passed` or `failed`.
    pub outcome: String,
    /// Whether it passed.
    #[serde(skip)]
    pub passed: bool,
    /// What failed, or what was checked.
    pub detail: String,
}

/// What `status` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusSummary {
    /// The time ages are measured from.
    #[serde(serialize_with = "crate::ops::as_text")]
    pub time: Timestamp,
    /// The age limit applied, as given.
    pub max_age: Option<String>,
    /// Every source, by name.
    pub sources: Vec<SourceStatus>,
    /// Whether no source has a problem.
    pub ok: bool,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Reports each source's newest good snapshot and last drill; a source is a
/// problem when it has no good snapshot, its newest is older than
/// `max_age`, or its last drill failed.
pub async fn status(repo: &Repo, options: &StatusOptions) -> Result<StatusSummary> {
    repo.sync_drills().await?;
    let now = options.now.unwrap_or_else(Timestamp::now);
    let cutoff = options.max_age.as_ref().map(|w| w.before(now));
    let limit = now
        .checked_add(
            jiff::SignedDuration::try_from(crate::snapshot::CLOCK_SKEW_ALLOWANCE).expect("small"),
        )
        .unwrap_or(Timestamp::MAX);
    let snapshots = repo.catalog().snapshots(&SnapshotFilter {
        source: options.source.clone(),
        ..SnapshotFilter::default()
    })?;
    let drills = repo.catalog().last_drill_per_source()?;
    if let Some(source) = &options.source
        && snapshots.is_empty()
        && !drills.iter().any(|(_, d)| &d.source == source)
    {
        let mut known: Vec<String> = repo
            .catalog()
            .snapshots(&SnapshotFilter::default())?
            .into_iter()
            .map(|(_, s)| s.source)
            .collect();
        known.sort();
        known.dedup();
        return Err(Error::InvalidArgument(format!(
            "no snapshot of source {source:?}; sources here: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }

    let mut by_source: BTreeMap<String, SourceStatus> = BTreeMap::new();
    for (id, snapshot) in &snapshots {
        let status = entry(&mut by_source, &snapshot.source);
        status.snapshots += 1;
        if !is_good(snapshot) {
            status.incomplete += 1;
            continue;
        }
        let Ok(time) = Timestamp::from_nanosecond(snapshot.time_ns as i128) else {
            continue;
        };
        if time > limit || status.latest.as_ref().is_some_and(|l| l.time >= time) {
            continue;
        }
        status.latest = Some(LatestGood {
            id: *id,
            time,
            age_s: now.duration_since(time).as_secs(),
        });
    }
    for (_, drill) in drills {
        if options.source.as_ref().is_some_and(|s| s != &drill.source) {
            continue;
        }
        let status = entry(&mut by_source, &drill.source);
        status.last_drill = Some(LastDrill {
            snapshot: drill.snapshot,
            time: Timestamp::from_nanosecond(drill.time_ns as i128)
                .unwrap_or(Timestamp::UNIX_EPOCH),
            passed: drill.passed(),
            outcome: drill.outcome.clone(),
            detail: drill.detail.clone(),
        });
    }
    for status in by_source.values_mut() {
        let safety = status.source.ends_with(SAFETY_SUFFIX);
        match (&status.latest, cutoff) {
            (None, _) if !safety => status
                .problems
                .push("no good snapshot: every one is an incomplete dump".into()),
            (Some(latest), Some(cutoff)) if latest.time < cutoff && !safety => {
                status.problems.push(format!(
                    "the newest good snapshot is {} old, older than {}",
                    age_text(latest.age_s),
                    options.max_age.as_ref().expect("cutoff comes from it")
                ))
            }
            _ => {}
        }
        if let Some(drill) = &status.last_drill
            && !drill.passed
        {
            status
                .problems
                .push(format!("the last drill failed: {}", drill.detail));
        }
    }
    let sources: Vec<SourceStatus> = by_source.into_values().collect();
    Ok(StatusSummary {
        time: now,
        max_age: options.max_age.as_ref().map(ToString::to_string),
        ok: sources.iter().all(|s| s.problems.is_empty()),
        sources,
        requests: repo.counts(),
    })
}

/// The status of `source`, added empty on first sight.
fn entry<'a>(map: &'a mut BTreeMap<String, SourceStatus>, source: &str) -> &'a mut SourceStatus {
    map.entry(source.to_string())
        .or_insert_with(|| SourceStatus {
            source: source.to_string(),
            snapshots: 0,
            incomplete: 0,
            latest: None,
            last_drill: None,
            problems: Vec::new(),
        })
}

/// A snapshot retention may count as a good backup.
fn is_good(snapshot: &Snapshot) -> bool {
    snapshot.dump.as_ref().is_none_or(|d| d.complete)
        && !snapshot
            .tags
            .iter()
            .any(|t| t == crate::dump::INCOMPLETE_TAG)
}

/// An age in the largest whole unit that fits: `3d 4h`, `5h 12m`, `40s`.
pub fn age_text(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_their_largest_unit() {
        assert_eq!(age_text(40), "40s");
        assert_eq!(age_text(3 * 60 + 5), "3m");
        assert_eq!(age_text(5 * 3600 + 12 * 60), "5h 12m");
        assert_eq!(age_text(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(age_text(-5), "0s");
    }
}
