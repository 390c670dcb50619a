//! Restore drills: one row per `drills/` object absorbed, so "when did this
//! source last pass a drill" is a query. Rows are kept when the snapshot
//! they drilled is forgotten; they leave only with their object.

use std::collections::HashSet;

use rusqlite::params;

use super::{Catalog, sql_error};
use crate::error::Result;
use crate::hash::DrillId;
use crate::snapshot::DrillRecord;

impl Catalog {
    /// The drill records absorbed.
    pub(crate) fn drill_ids(&self) -> Result<HashSet<DrillId>> {
        self.ids("SELECT id FROM drills", [], "listing drills")
    }

    /// Records a drill.
    pub(crate) fn insert_drill(&self, id: &DrillId, drill: &DrillRecord) -> Result<()> {
        let body = minicbor::to_vec(drill).expect("encoding to a Vec cannot fail");
        self.conn
            .execute(
                "INSERT OR REPLACE INTO drills (id, snapshot, source, time_ns, passed, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id.as_bytes(),
                    drill.snapshot.as_bytes(),
                    drill.source,
                    drill.time_ns,
                    drill.passed(),
                    body
                ],
            )
            .map_err(self.err("recording a drill"))?;
        Ok(())
    }

    /// Forgets drill records that left the repository.
    pub(crate) fn remove_drills(&mut self, ids: &[DrillId]) -> Result<()> {
        let err = sql_error(&self.path, "forgetting drills");
        let tx = self.conn.transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM drills WHERE id = ?1", [id.as_bytes()])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Drill records, oldest first; only those of `source` if given.
    pub fn drills(&self, source: Option<&str>) -> Result<Vec<(DrillId, DrillRecord)>> {
        self.drill_rows(
            "SELECT id, body FROM drills WHERE (?1 IS NULL OR source = ?1)
             ORDER BY time_ns, id",
            params![source],
        )
    }

    /// The newest drill record of each source, by source name.
    pub(crate) fn last_drill_per_source(&self) -> Result<Vec<(DrillId, DrillRecord)>> {
        // SQLite takes the bare columns of a MAX() aggregate from the row
        // holding the maximum.
        self.drill_rows(
            "SELECT id, body, max(time_ns) FROM drills GROUP BY source ORDER BY source",
            [],
        )
    }

    fn drill_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<(DrillId, DrillRecord)>> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(self.err("listing drills"))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(self.err("listing drills"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(self.err("listing drills"))?;
            let drill: DrillRecord =
                minicbor::decode(&body).map_err(|_| self.damaged("drill record"))?;
            out.push((self.id(&id)?, drill));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::SnapshotId;

    fn drill(source: &str, time_ns: i64, passed: bool) -> DrillRecord {
        DrillRecord {
            snapshot: SnapshotId([time_ns as u8; 32]),
            source: source.into(),
            time_ns,
            outcome: if passed {
                DrillRecord::PASSED
            } else {
                DrillRecord::FAILED
            }
            .into(),
            duration_ms: 5,
            kind: "files".into(),
            checked: vec!["restored 1 file".into()],
            detail: String::new(),
            counts: [("files".to_string(), 1)].into(),
            host: "h".into(),
            program: "larder test".into(),
            tables: Default::default(),
        }
    }

    #[test]
    fn the_last_drill_of_each_source_is_the_newest_whatever_its_outcome() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.insert_drill(&DrillId([1; 32]), &drill("db", 10, true))
            .unwrap();
        cat.insert_drill(&DrillId([2; 32]), &drill("db", 30, false))
            .unwrap();
        cat.insert_drill(&DrillId([3; 32]), &drill("db", 20, true))
            .unwrap();
        cat.insert_drill(&DrillId([4; 32]), &drill("kb", 5, true))
            .unwrap();
        let last = cat.last_drill_per_source().unwrap();
        let got: Vec<(DrillId, &str, bool)> = last
            .iter()
            .map(|(id, d)| (*id, d.source.as_str(), d.passed()))
            .collect();
        assert_eq!(
            got,
            [
                (DrillId([2; 32]), "db", false),
                (DrillId([4; 32]), "kb", true)
            ]
        );
        assert_eq!(cat.drills(Some("db")).unwrap().len(), 3);
        assert_eq!(cat.drills(None).unwrap()[0].1, drill("kb", 5, true));

        cat.remove_drills(&[DrillId([2; 32])]).unwrap();
        assert_eq!(cat.last_drill_per_source().unwrap()[0].0, DrillId([3; 32]));
        assert_eq!(cat.drill_ids().unwrap().len(), 3);
    }
}
