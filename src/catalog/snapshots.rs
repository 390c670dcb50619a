//! Snapshot rows: recording and forgetting snapshots as the repository
//! gains and loses them, and the listings and lookups run on them.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};

use super::{Catalog, sql_error};
use crate::error::Result;
use crate::hash::SnapshotId;
use crate::snapshot::Snapshot;

/// Which snapshots a listing returns.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    /// Only this source.
    pub source: Option<String>,
    /// Only this host.
    pub host: Option<String>,
    /// Only snapshots carrying every one of these tags.
    pub tags: Vec<String>,
}

impl Catalog {
    /// Snapshots already absorbed.
    pub(crate) fn snapshot_ids(&self) -> Result<HashSet<SnapshotId>> {
        self.ids("SELECT id FROM snapshots", [], "listing snapshots")
    }

    /// Records a snapshot.
    pub(crate) fn insert_snapshot(&self, id: &SnapshotId, snapshot: &Snapshot) -> Result<()> {
        let body = minicbor::to_vec(snapshot).expect("encoding to a Vec cannot fail");
        self.conn
            .execute(
                "INSERT OR REPLACE INTO snapshots (id, time_ns, source, host, kind, root, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id.as_bytes(),
                    snapshot.time_ns,
                    snapshot.source,
                    snapshot.host,
                    snapshot.kind,
                    snapshot.root.as_bytes(),
                    body
                ],
            )
            .map_err(self.err("recording a snapshot"))?;
        Ok(())
    }

    /// Forgets snapshots that left the repository.
    pub(crate) fn remove_snapshots(&mut self, ids: &[SnapshotId]) -> Result<()> {
        let err = sql_error(&self.path, "forgetting snapshots");
        let tx = self.conn.transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [id.as_bytes()])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Snapshots matching `filter`, oldest first.
    pub fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, body FROM snapshots
                 WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR host = ?2)
                 ORDER BY time_ns, id",
            )
            .map_err(self.err("listing snapshots"))?;
        let rows = stmt
            .query_map(params![filter.source, filter.host], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(self.err("listing snapshots"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(self.err("listing snapshots"))?;
            let id: SnapshotId = self.id(&id)?;
            let snapshot: Snapshot =
                minicbor::decode(&body).map_err(|_| self.damaged("snapshot"))?;
            if filter.tags.iter().all(|t| snapshot.tags.contains(t)) {
                out.push((id, snapshot));
            }
        }
        Ok(out)
    }

    /// Snapshot ids whose hex form starts with `prefix`.
    pub(crate) fn snapshots_with_prefix(&self, prefix: &str) -> Result<Vec<SnapshotId>> {
        self.ids(
            "SELECT id FROM snapshots WHERE lower(hex(id)) LIKE ?1 || '%' ORDER BY time_ns",
            [prefix.to_ascii_lowercase()],
            "finding a snapshot",
        )
    }

    /// One snapshot.
    pub fn snapshot(&self, id: &SnapshotId) -> Result<Option<Snapshot>> {
        let body: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT body FROM snapshots WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("reading a snapshot"))?;
        body.map(|b| minicbor::decode(&b).map_err(|_| self.damaged("snapshot")))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::hash::BlobId;
    use crate::snapshot::SnapshotSummary;

    fn snapshot(time_ns: i64, source: &str, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            time_ns,
            source: source.into(),
            host: host.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            kind: "stream".into(),
            root: BlobId([7; 32]),
            parent: None,
            paths: vec![],
            command: None,
            summary: SnapshotSummary::default(),
            program: "larder test".into(),
            user: "tester".into(),
            copied_from: None,
            dump: None,
        }
    }

    #[test]
    fn snapshots_are_listed_oldest_first_and_filtered() {
        let mut cat = Catalog::open_in_memory().unwrap();
        let (a, b, c) = (
            SnapshotId([0xa1; 32]),
            SnapshotId([0xb2; 32]),
            SnapshotId([0xc3; 32]),
        );
        cat.insert_snapshot(&a, &snapshot(30, "db", "h1", &["daily"]))
            .unwrap();
        cat.insert_snapshot(&b, &snapshot(10, "db", "h2", &[]))
            .unwrap();
        cat.insert_snapshot(&c, &snapshot(20, "files", "h1", &["daily", "x"]))
            .unwrap();
        let ids = |filter: SnapshotFilter| -> Vec<SnapshotId> {
            cat.snapshots(&filter)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(ids(SnapshotFilter::default()), vec![b, c, a]);
        let db = SnapshotFilter {
            source: Some("db".into()),
            ..Default::default()
        };
        assert_eq!(ids(db), vec![b, a]);
        let h1_daily = SnapshotFilter {
            host: Some("h1".into()),
            tags: vec!["daily".into()],
            ..Default::default()
        };
        assert_eq!(ids(h1_daily), vec![c, a]);
        assert_eq!(cat.snapshots_with_prefix("B2b2").unwrap(), vec![b]);
        assert_eq!(cat.snapshot(&c).unwrap().unwrap().source, "files");

        cat.remove_snapshots(&[a, b]).unwrap();
        assert_eq!(cat.snapshot_ids().unwrap(), HashSet::from([c]));
        assert!(cat.snapshot(&a).unwrap().is_none());
    }

    #[test]
    fn a_snapshot_row_with_a_bad_id_is_damage_not_omitted() {
        let cat = Catalog::open_in_memory().unwrap();
        cat.conn
            .execute(
                "INSERT INTO snapshots (id, time_ns, source, host, kind, root, body)
                 VALUES (x'abcd', 0, 's', 'h', 'stream', x'00', x'00')",
                [],
            )
            .unwrap();
        assert!(matches!(cat.snapshot_ids(), Err(Error::Corrupt { .. })));
        assert!(matches!(
            cat.snapshots_with_prefix("abcd"),
            Err(Error::Corrupt { .. })
        ));
    }
}
