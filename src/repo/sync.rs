//! Bringing the catalog in step with the repository: what a sync absorbs,
//! forgets, and finds damaged.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::hash::{DrillId, GenerationId, IndexId, SnapshotId};
use crate::layout::{drill_path, index_path, pending_path, snapshot_path};
use crate::snapshot::Snapshot;

use super::objects::{list_ids, list_prefix};
use super::{Repo, SYNC_CONCURRENCY};

/// A pending generation's time in nanoseconds from its storage time.
/// Without one, the generation is taken as the newest possible: every lease
/// then counts as older, which only delays its sweep.
pub(super) fn generation_time(modified: Option<jiff::Timestamp>) -> i64 {
    modified.map_or(i64::MAX, |t| {
        i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
    })
}

/// What [`Repo::sync`] did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// Snapshots absorbed.
    pub snapshots_added: usize,
    /// Snapshots forgotten because they left the repository.
    pub snapshots_removed: usize,
    /// Index objects absorbed.
    pub indexes_added: usize,
    /// Index objects forgotten.
    pub indexes_removed: usize,
    /// Drill records absorbed (only by [`Repo::sync_drills`]).
    pub drills_added: usize,
    /// Drill records forgotten because they left the repository.
    pub drills_removed: usize,
    /// Objects that could not be read, with the reason. They were skipped.
    pub warnings: Vec<String>,
    /// The snapshot, index and pending objects among them that are damaged
    /// (as opposed to deleted between the listing and the read).
    pub damaged: Vec<DamagedObject>,
}

/// A listed object that could not be read or opened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedObject {
    /// Its name, such as `snapshots/<id>`.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
    /// Its storage modification time (nanoseconds since the epoch), if the
    /// listing gave one.
    pub stored_ns: Option<i64>,
}

impl std::fmt::Display for DamagedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

impl SyncReport {
    /// Records `error` about `name` as damage, unless the object merely
    /// vanished between the listing and the read (deleted by another
    /// process, which is no damage).
    fn note_damage(&mut self, name: &str, error: &Error, stored_ns: Option<i64>) {
        if matches!(error, Error::NotFound { .. }) {
            return;
        }
        let reason = match error {
            Error::Corrupt { object, reason } if object == name => reason.clone(),
            e => e.to_string(),
        };
        self.damaged.push(DamagedObject {
            name: name.into(),
            reason,
            stored_ns,
        });
    }
}

impl Repo {
    /// Brings the catalog in step with the repository.
    pub async fn sync(&self) -> Result<SyncReport> {
        let mut report = SyncReport::default();

        // What the catalog knows is read before listing: anything another
        // process absorbs in between is then neither "gone" nor lost.
        let known = self.catalog().snapshot_ids()?;
        let listed: HashMap<SnapshotId, Option<i64>> =
            list_ids::<SnapshotId>(&self.backend, "snapshots/")
                .await?
                .into_iter()
                .map(|(id, o)| (id, o.modified.map(|t| generation_time(Some(t)))))
                .collect();
        let gone: Vec<SnapshotId> = known
            .iter()
            .filter(|id| !listed.contains_key(id))
            .copied()
            .collect();
        report.snapshots_removed = gone.len();
        self.catalog
            .lock()
            .expect("catalog lock")
            .remove_snapshots(&gone)?;
        let new: Vec<SnapshotId> = listed
            .keys()
            .filter(|id| !known.contains(id))
            .copied()
            .collect();
        let loaded: Vec<(SnapshotId, Result<Snapshot>)> = futures::stream::iter(new)
            .map(|id| async move { (id, self.load_snapshot(&id).await) })
            .buffer_unordered(SYNC_CONCURRENCY)
            .collect()
            .await;
        for (id, snapshot) in loaded {
            match snapshot {
                Ok(snapshot) => {
                    self.catalog().insert_snapshot(&id, &snapshot)?;
                    report.snapshots_added += 1;
                }
                Err(e) if e.is_damage() => {
                    report
                        .warnings
                        .push(format!("skipped snapshot {}: {e}", id.short()));
                    report.note_damage(&snapshot_path(&id), &e, listed[&id]);
                }
                Err(e) => return Err(e),
            }
        }

        // Pending generations before index objects: a sweep deletes packs,
        // then rewrites the index objects naming them, then deletes the
        // generation, so reading in this order never shows a deleted pack
        // as usable.
        let known: HashMap<GenerationId, i64> =
            self.catalog().pending_generations()?.into_iter().collect();
        let listed: HashMap<GenerationId, i64> =
            list_ids::<GenerationId>(&self.backend, "pending/")
                .await?
                .into_iter()
                .map(|(id, o)| (id, generation_time(o.modified)))
                .collect();
        let gone: Vec<GenerationId> = known
            .keys()
            .filter(|id| !listed.contains_key(id))
            .copied()
            .collect();
        self.catalog
            .lock()
            .expect("catalog lock")
            .drop_pending(&gone)?;
        for (id, time) in &listed {
            if known.contains_key(id) {
                continue;
            }
            match self.load_pending(id).await {
                Ok(pending) => self.catalog.lock().expect("catalog lock").absorb_pending(
                    id,
                    *time,
                    &pending.packs,
                )?,
                // A pending generation that cannot be read protects
                // nothing and deletes nothing: prune will not sweep it.
                Err(e) if e.is_damage() => {
                    report
                        .warnings
                        .push(format!("skipped pending generation {}: {e}", id.short()));
                    report.note_damage(&pending_path(id), &e, Some(*time));
                }
                Err(e) => return Err(e),
            }
        }

        let known = self.catalog().index_ids()?;
        let listed: HashSet<IndexId> = list_ids::<IndexId>(&self.backend, "index/")
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let gone: Vec<IndexId> = known.difference(&listed).copied().collect();
        report.indexes_removed = gone.len();
        let dropped_packs = self
            .catalog
            .lock()
            .expect("catalog lock")
            .drop_indexes(&gone)?;
        if dropped_packs > 0 {
            self.prune_pack_cache()?;
        }
        let new: Vec<IndexId> = listed.difference(&known).copied().collect();
        let mut loads = futures::stream::iter(new)
            .map(|id| async move { (id, self.load_index(&id).await) })
            .buffer_unordered(SYNC_CONCURRENCY);
        while let Some((id, index)) = loads.next().await {
            match index {
                Ok(index) => {
                    self.catalog
                        .lock()
                        .expect("catalog lock")
                        .absorb_index(id, &index)?;
                    report.indexes_added += 1;
                }
                Err(e) if e.is_damage() => {
                    report
                        .warnings
                        .push(format!("skipped index object {}: {e}", id.short()));
                    report.note_damage(&index_path(&id), &e, None);
                }
                Err(e) => return Err(e),
            }
        }
        *self.damaged.lock().expect("damage lock") = report.damaged.clone();
        Ok(report)
    }

    /// Brings the catalog's drill records in step with `drills/`. Not part
    /// of [`Repo::sync`]: only the commands that report on drills need
    /// them, so opening a repository does not pay a listing for them.
    /// A drill record that cannot be read is a warning (it protects and
    /// references nothing) and is tried again by the next call.
    pub(crate) async fn sync_drills(&self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let known = self.catalog().drill_ids()?;
        let listed: HashSet<DrillId> = list_prefix(&self.backend, "drills/")
            .await?
            .into_iter()
            .filter_map(|o| o.name.strip_prefix("drills/")?.parse().ok())
            .collect();
        let gone: Vec<DrillId> = known.difference(&listed).copied().collect();
        report.drills_removed = gone.len();
        self.catalog
            .lock()
            .expect("catalog lock")
            .remove_drills(&gone)?;
        let new: Vec<DrillId> = listed.difference(&known).copied().collect();
        let mut loads = futures::stream::iter(new)
            .map(|id| async move { (id, self.load_drill(&id).await) })
            .buffer_unordered(SYNC_CONCURRENCY);
        while let Some((id, drill)) = loads.next().await {
            match drill {
                Ok(drill) => {
                    self.catalog().insert_drill(&id, &drill)?;
                    report.drills_added += 1;
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) if e.is_damage() => report
                    .warnings
                    .push(format!("skipped drill record {}: {e}", drill_path(&id))),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Snapshot, index and pending objects the latest sync could not read
    /// or open. Every sync reads them again, so this is the current set.
    pub fn damaged_objects(&self) -> Vec<DamagedObject> {
        self.damaged.lock().expect("damage lock").clone()
    }

    /// What the sync at open found (warnings about unreadable objects).
    pub fn open_report(&self) -> &SyncReport {
        &self.sync_report
    }
}
