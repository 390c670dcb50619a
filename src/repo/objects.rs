//! Metadata objects: sealing and storing, reading and opening snapshots,
//! index objects, pending generations and drill records; listing and
//! resolving snapshots.

use bytes::Bytes;

use crate::backend::{Backend, ObjectInfo, Put};
use crate::catalog::SnapshotFilter;
use crate::error::{Error, Result};
use crate::hash::{DrillId, GenerationId, IndexId, SnapshotId};
use crate::index::{IndexObject, MAX_INDEX_SIZE, MAX_PENDING_SIZE, PendingObject};
use crate::layout::{drill_path, index_path, pending_path, snapshot_path};
use crate::seal::{ObjectKind, with_codec};
use crate::snapshot::{DrillRecord, Snapshot};

use super::sync::generation_time;
use super::{LeaseGuard, Repo};

/// Largest snapshot object plaintext accepted (16 MiB).
pub(crate) const MAX_SNAPSHOT_SIZE: usize = 16 << 20;

/// Largest drill record plaintext accepted (1 MiB: a list of checks, a
/// detail and per-table counts).
pub(crate) const MAX_DRILL_SIZE: usize = 1 << 20;

fn filter_matches(filter: &SnapshotFilter, snapshot: &Snapshot) -> bool {
    filter.source.as_ref().is_none_or(|s| *s == snapshot.source)
        && filter.host.as_ref().is_none_or(|h| *h == snapshot.host)
        && filter.tags.iter().all(|t| snapshot.tags.contains(t))
}

fn describe_filter(spec: &str, filter: &SnapshotFilter) -> String {
    let mut out = format!("{spec:?}");
    if let Some(source) = &filter.source {
        out.push_str(&format!(" with source {source}"));
    }
    if let Some(host) = &filter.host {
        out.push_str(&format!(" on host {host}"));
    }
    out
}

/// Lists the objects under `prefix` (such as `"index/"`) whose names, past
/// the prefix, parse as ids of type `T`, each with its listing entry.
/// Other names are not larder's and are skipped.
pub(crate) async fn list_ids<T: std::str::FromStr>(
    backend: &dyn Backend,
    prefix: &str,
) -> Result<Vec<(T, ObjectInfo)>> {
    Ok(backend
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| Some((o.name.strip_prefix(prefix)?.parse().ok()?, o)))
        .collect())
}

/// Lists the objects under `prefix`, where a missing top-level directory
/// of a prefix [`crate::layout::may_be_absent`] allows (a repository made
/// before drills existed has no `drills/`) lists as empty. For every other
/// prefix a listing error stays an error: never emptiness.
pub(crate) async fn list_prefix(backend: &dyn Backend, prefix: &str) -> Result<Vec<ObjectInfo>> {
    match backend.list(prefix).await {
        Err(Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && crate::layout::may_be_absent(prefix) =>
        {
            Ok(Vec::new())
        }
        listed => listed,
    }
}

impl Repo {
    /// Seals and stores a metadata object under `name`; returns the stored
    /// size if it was created.
    pub async fn put_object(
        &self,
        kind: ObjectKind,
        name: &str,
        id: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<u64> {
        let sealed = with_codec(self.config.compression_level, |codec| {
            self.sealer.seal(codec, kind, id, plaintext, true)
        });
        let len = sealed.len() as u64;
        match self
            .backend
            .put_if_absent(name, Bytes::from(sealed))
            .await?
        {
            Put::Created => Ok(len),
            Put::Existed => Err(Error::corrupt(
                name,
                "an object of this random name already exists",
            )),
        }
    }

    /// Reads and opens a metadata object.
    pub(crate) async fn get_object(
        &self,
        kind: ObjectKind,
        name: &str,
        id: &[u8; 32],
        max_len: usize,
    ) -> Result<Vec<u8>> {
        let sealed = self
            .backend
            .get(name, (max_len + crate::seal::SEAL_OVERHEAD) as u64)
            .await?;
        let sealer = self.sealer.clone();
        let level = self.config.compression_level;
        let id = *id;
        tokio::task::spawn_blocking(move || {
            with_codec(level, |codec| {
                sealer.open(codec, kind, &id, &sealed, max_len)
            })
        })
        .await
        .expect("opening task panicked")
        .map_err(|e| Error::corrupt(name, e.to_string()))
    }

    /// Reads a snapshot object from the repository.
    pub(crate) async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let name = snapshot_path(id);
        let plain = self
            .get_object(
                ObjectKind::Snapshot,
                &name,
                id.as_bytes(),
                MAX_SNAPSHOT_SIZE,
            )
            .await?;
        minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(name, format!("snapshot does not parse: {e}")))
    }

    /// Reads an index object from the repository.
    pub(crate) async fn load_index(&self, id: &IndexId) -> Result<IndexObject> {
        let name = index_path(id);
        let plain = self
            .get_object(ObjectKind::Index, &name, id.as_bytes(), MAX_INDEX_SIZE)
            .await?;
        let index: IndexObject = minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(&name, format!("index object does not parse: {e}")))?;
        index.validate(&name)?;
        Ok(index)
    }

    /// Reads a pending generation from the repository.
    pub(crate) async fn load_pending(&self, id: &GenerationId) -> Result<PendingObject> {
        let name = pending_path(id);
        let plain = self
            .get_object(ObjectKind::Pending, &name, id.as_bytes(), MAX_PENDING_SIZE)
            .await?;
        minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(name, format!("pending generation does not parse: {e}")))
    }

    /// Reads a drill record from the repository.
    pub(crate) async fn load_drill(&self, id: &DrillId) -> Result<DrillRecord> {
        let name = drill_path(id);
        let plain = self
            .get_object(ObjectKind::Drill, &name, id.as_bytes(), MAX_DRILL_SIZE)
            .await?;
        minicbor::decode(&plain)
            .map_err(|e| Error::corrupt(name, format!("drill record does not parse: {e}")))
    }

    /// Stores a drill record and absorbs it into the catalog.
    pub(crate) async fn write_drill(&self, drill: &DrillRecord) -> Result<DrillId> {
        let id = DrillId::random();
        let plain = minicbor::to_vec(drill).expect("encoding to a Vec cannot fail");
        self.put_object(ObjectKind::Drill, &drill_path(&id), id.as_bytes(), &plain)
            .await?;
        self.catalog().insert_drill(&id, drill)?;
        Ok(id)
    }

    /// Stores a new pending generation and absorbs it into the catalog,
    /// with the storage's time from a listing.
    pub(crate) async fn write_pending(
        &self,
        pending: &PendingObject,
    ) -> Result<(GenerationId, i64)> {
        let id = GenerationId::random();
        let name = pending_path(&id);
        let plain = minicbor::to_vec(pending).expect("encoding to a Vec cannot fail");
        self.put_object(ObjectKind::Pending, &name, id.as_bytes(), &plain)
            .await?;
        let time = self
            .backend
            .list("pending/")
            .await?
            .into_iter()
            .find(|o| o.name == name)
            .and_then(|o| o.modified);
        let time = generation_time(time);
        self.catalog
            .lock()
            .expect("catalog lock")
            .absorb_pending(&id, time, &pending.packs)?;
        Ok((id, time))
    }

    /// Stores a new index object and absorbs it into the catalog.
    pub(crate) async fn write_index(&self, index: &IndexObject) -> Result<(IndexId, u64)> {
        let id = IndexId::random();
        index.validate(&index_path(&id))?;
        let plain = minicbor::to_vec(index).expect("encoding to a Vec cannot fail");
        let stored = self
            .put_object(ObjectKind::Index, &index_path(&id), id.as_bytes(), &plain)
            .await?;
        self.catalog
            .lock()
            .expect("catalog lock")
            .absorb_index(id, index)?;
        Ok((id, stored))
    }

    /// Stores a new snapshot object (the commit point of a backup) and records
    /// it in the catalog, under the lease the run held from its start
    /// (`lease`), which is first confirmed never to have lapsed: a run that
    /// was suspended past its lease may rely on packs a prune has since
    /// deleted, so it must not commit.
    pub async fn write_snapshot(
        &self,
        snapshot: &Snapshot,
        lease: &LeaseGuard,
    ) -> Result<(SnapshotId, u64)> {
        self.confirm_lease(lease).await?;
        let id = SnapshotId::random();
        let plain = minicbor::to_vec(snapshot).expect("encoding to a Vec cannot fail");
        let stored = self
            .put_object(
                ObjectKind::Snapshot,
                &snapshot_path(&id),
                id.as_bytes(),
                &plain,
            )
            .await?;
        self.catalog().insert_snapshot(&id, snapshot)?;
        Ok((id, stored))
    }

    /// Snapshots matching `filter`, oldest first.
    pub fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<(SnapshotId, Snapshot)>> {
        self.catalog().snapshots(filter)
    }

    /// Resolves `latest` or an id prefix (at least 4 hex digits) among the
    /// snapshots matching `filter`.
    pub fn resolve_snapshot(
        &self,
        spec: &str,
        filter: &SnapshotFilter,
    ) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            let newest = self.snapshots(filter)?.pop();
            // A damaged snapshot's source and time are unknown: if it may be
            // newer than the newest readable one, `latest` must not quietly
            // mean an older snapshot. Its storage time bounds its own time
            // (backup refuses times more than the allowed skew ahead).
            let skew = crate::snapshot::CLOCK_SKEW_ALLOWANCE.as_nanos() as i64;
            for damaged in self.damaged_objects() {
                if !damaged.name.starts_with("snapshots/") {
                    continue;
                }
                let may_be_newer = match (&newest, damaged.stored_ns) {
                    (Some((_, snapshot)), Some(stored)) => {
                        stored.saturating_add(skew) >= snapshot.time_ns
                    }
                    _ => true,
                };
                if may_be_newer {
                    return Err(Error::corrupt(
                        damaged.name,
                        format!(
                            "{}; it may be the latest snapshot, so `latest` does not fall back to an older one: name a snapshot by id, or remove the damaged object",
                            damaged.reason
                        ),
                    ));
                }
            }
            return newest.ok_or_else(|| Error::SnapshotNotFound(describe_filter(spec, filter)));
        }
        if spec.len() < 4 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{spec:?} is neither `latest` nor a snapshot id prefix of at least 4 hex digits"
            )));
        }
        let catalog = self.catalog();
        let ids = catalog.snapshots_with_prefix(spec)?;
        let mut matching: Vec<(SnapshotId, Snapshot)> = Vec::new();
        for id in ids {
            if let Some(snapshot) = catalog.snapshot(&id)?
                && filter_matches(filter, &snapshot)
            {
                matching.push((id, snapshot));
            }
        }
        match matching.len() {
            0 => Err(Error::SnapshotNotFound(describe_filter(spec, filter))),
            1 => Ok(matching.into_iter().next().expect("one element")),
            _ => Err(Error::AmbiguousSnapshot {
                prefix: spec.into(),
                matches: matching.iter().map(|(id, _)| id.short()).collect(),
            }),
        }
    }
}
