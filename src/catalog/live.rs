//! Prune's live set: the blobs the snapshots need, marked into a temporary
//! table (so marking costs disk, not memory), and what prune asks of it:
//! how much of each pack is live, which pending packs a snapshot still
//! needs, and the last check before a delete.

use std::collections::HashMap;

use super::{Catalog, PackRecord, PackState, sql_error};
use crate::error::Result;
use crate::hash::{BlobId, GenerationId, PackId};
use crate::pack::PackKind;

/// How much of a pack the live set uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackUsage {
    /// The pack.
    pub pack: PackRecord,
    /// Blobs the catalog knows in it.
    pub blobs: u64,
    /// Their sealed bytes (the pack less its header).
    pub blob_bytes: u64,
    /// Of those, live and intact.
    pub live_blobs: u64,
    /// Sealed bytes of the live blobs.
    pub live_bytes: u64,
}

/// What [`Catalog::verify_live`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LiveCheck {
    /// Live blobs in no pack the catalog knows.
    pub unlocated: u64,
    /// Some of them.
    pub unlocated_sample: Vec<BlobId>,
    /// Live blobs whose only readable copies are in the packs about to be
    /// deleted.
    pub only_in_doomed: u64,
    /// Some of them.
    pub only_in_doomed_sample: Vec<BlobId>,
    /// Live blobs with no readable copy anywhere: every copy is in a pack
    /// or was itself found damaged by `check`. Deleting loses nothing more.
    pub known_damaged: u64,
}

impl Catalog {
    /// Empties the live-blob set prune marks into (a temporary table, so
    /// marking costs disk, not memory).
    pub(crate) fn live_reset(&self) -> Result<()> {
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS live (id BLOB PRIMARY KEY) WITHOUT ROWID;
                 DELETE FROM temp.live;",
            )
            .map_err(self.err("preparing the live set"))
    }

    /// Adds blobs to the live set; returns, per blob, whether it was new.
    pub(crate) fn live_insert(&mut self, ids: &[BlobId]) -> Result<Vec<bool>> {
        let err = sql_error(&self.path, "marking live blobs");
        let tx = self.conn.transaction().map_err(err)?;
        let mut out = Vec::with_capacity(ids.len());
        {
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO temp.live (id) VALUES (?1)")
                .map_err(err)?;
            for id in ids {
                out.push(insert.execute([id.as_bytes()]).map_err(err)? > 0);
            }
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Whether a blob is in the live set.
    pub(crate) fn is_live(&self, id: &BlobId) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM temp.live WHERE id = ?1")
            .map_err(self.err("reading the live set"))?;
        stmt.exists([id.as_bytes()])
            .map_err(self.err("reading the live set"))
    }

    /// Number of blobs in the live set.
    pub(crate) fn live_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM temp.live", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err("counting live blobs"))
    }

    /// Per pack: blobs, and live blobs with their sealed bytes, from one
    /// pass over the blob table. Damaged copies count as unused.
    pub(crate) fn pack_usage(&self) -> Result<Vec<PackUsage>> {
        let mut stats: HashMap<i64, (u64, u64, u64, u64)> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT b.pack, b.length,
                        EXISTS (SELECT 1 FROM temp.live l WHERE l.id = b.id)
                        AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b.id AND d.pack = b.pack)
                     FROM blobs b",
                )
                .map_err(self.err("measuring pack usage"))?;
            let mut rows = stmt.query([]).map_err(self.err("measuring pack usage"))?;
            while let Some(row) = rows.next().map_err(self.err("measuring pack usage"))? {
                let pack: i64 = row.get(0).map_err(self.err("measuring pack usage"))?;
                let length: i64 = row.get(1).map_err(self.err("measuring pack usage"))?;
                let live: bool = row.get(2).map_err(self.err("measuring pack usage"))?;
                let entry = stats.entry(pack).or_default();
                entry.0 += 1;
                entry.3 += length as u64;
                if live {
                    entry.1 += 1;
                    entry.2 += length as u64;
                }
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT rowid, id, kind, size, state FROM packs ORDER BY id")
            .map_err(self.err("measuring pack usage"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.err("measuring pack usage"))?;
        let mut out = Vec::new();
        for row in rows {
            let (rowid, id, kind, size, state) = row.map_err(self.err("measuring pack usage"))?;
            let (blobs, live_blobs, live_bytes, blob_bytes) =
                stats.get(&rowid).copied().unwrap_or_default();
            out.push(PackUsage {
                pack: PackRecord {
                    id: self.id(&id)?,
                    kind: PackKind::from_code(kind as u8)
                        .ok_or_else(|| self.damaged("pack kind"))?,
                    size: size as u64,
                    state: PackState::from_code(state),
                },
                blobs,
                blob_bytes,
                live_blobs,
                live_bytes,
            });
        }
        Ok(out)
    }

    /// Packs of a pending generation that prune must not delete after all:
    /// they hold a live blob that no usable pack holds (a snapshot committed
    /// since the generation was recorded uses it).
    pub(crate) fn needed_packs(&self, generation: &GenerationId) -> Result<Vec<PackId>> {
        // Driven from the live set (CROSS JOIN fixes the order): one B-tree
        // descent per live blob, instead of a scan of the blob table per pack.
        self.ids(
            "SELECT DISTINCT p.id
             FROM temp.live l
             CROSS JOIN blobs b ON b.id = l.id
             CROSS JOIN packs p ON p.rowid = b.pack
             WHERE p.id IN (SELECT pack FROM pending_packs WHERE gen = ?1)
               AND NOT EXISTS (
                 SELECT 1 FROM blobs b2 JOIN packs p2 ON p2.rowid = b2.pack
                 WHERE b2.id = l.id AND p2.state = 0
                   AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b2.id AND d.pack = b2.pack))",
            [generation.as_bytes()],
            "re-checking a pending generation",
        )
    }

    /// Prune's last check before it deletes `doomed`: the live blobs no
    /// pack outside `doomed` holds, split into those in no pack at all (no
    /// absorbed index object locates them: damage, or an index object
    /// missing) and those only in `doomed` (deleting would lose them).
    pub(crate) fn verify_live(&mut self, doomed: &[PackId], sample: usize) -> Result<LiveCheck> {
        let err = sql_error(&self.path, "verifying live blobs");
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS doomed (pack INTEGER PRIMARY KEY);
             DELETE FROM temp.doomed;",
        )
        .map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO temp.doomed (pack) SELECT rowid FROM packs WHERE id = ?1",
                )
                .map_err(err)?;
            for pack in doomed {
                insert.execute([pack.as_bytes()]).map_err(err)?;
            }
        }
        let mut check = LiveCheck::default();
        let mut raw: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        {
            let mut stmt = tx
                .prepare(
                    // A copy counts only in a readable pack (usable or
                    // pending, not found damaged) and not itself found
                    // damaged by `check --read-data`. For each live blob
                    // with no such copy outside `doomed`: whether `doomed`
                    // holds one, and whether the catalog knows it at all.
                    "WITH readable AS (
                       SELECT b.id, b.pack FROM blobs b JOIN packs p ON p.rowid = b.pack
                       WHERE p.state IN (0, 1)
                         AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b.id AND d.pack = b.pack))
                     SELECT l.id,
                       EXISTS (SELECT 1 FROM readable r WHERE r.id = l.id),
                       EXISTS (SELECT 1 FROM blobs b WHERE b.id = l.id)
                     FROM temp.live l
                     WHERE NOT EXISTS (
                       SELECT 1 FROM readable r
                       WHERE r.id = l.id AND r.pack NOT IN (SELECT pack FROM temp.doomed))",
                )
                .map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let in_doomed: bool = row.get(1).map_err(err)?;
                let known: bool = row.get(2).map_err(err)?;
                let (count, ids) = if in_doomed {
                    (&mut check.only_in_doomed, &mut raw[1])
                } else if known {
                    check.known_damaged += 1;
                    continue;
                } else {
                    (&mut check.unlocated, &mut raw[0])
                };
                *count += 1;
                if ids.len() < sample {
                    ids.push(row.get(0).map_err(err)?);
                }
            }
        }
        tx.execute("DELETE FROM temp.doomed", []).map_err(err)?;
        tx.commit().map_err(err)?;
        let to_ids =
            |raw: &[Vec<u8>]| -> Result<Vec<BlobId>> { raw.iter().map(|id| self.id(id)).collect() };
        check.unlocated_sample = to_ids(&raw[0])?;
        check.only_in_doomed_sample = to_ids(&raw[1])?;
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::index_with;
    use crate::hash::IndexId;

    #[test]
    fn verify_live_finds_blobs_in_no_pack_and_blobs_only_in_doomed_packs() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1, 2]))
            .unwrap();
        cat.absorb_index(IndexId([2; 32]), &index_with(11, &[2, 3]))
            .unwrap();
        cat.live_reset().unwrap();
        cat.live_insert(&[BlobId([1; 32]), BlobId([2; 32]), BlobId([9; 32])])
            .unwrap();
        // Nothing doomed: only blob 9 (in no pack) is missing.
        let check = cat.verify_live(&[], 10).unwrap();
        assert_eq!((check.unlocated, check.only_in_doomed), (1, 0));
        assert_eq!(check.unlocated_sample, vec![BlobId([9; 32])]);
        // Pack 10 doomed: blob 1 would be lost, blob 2 has a copy in 11.
        let check = cat.verify_live(&[PackId([10; 32])], 10).unwrap();
        assert_eq!((check.unlocated, check.only_in_doomed), (1, 1));
        assert_eq!(check.only_in_doomed_sample, vec![BlobId([1; 32])]);
        // Both doomed: blobs 1 and 2 would be lost; the sample is bounded.
        let check = cat
            .verify_live(&[PackId([10; 32]), PackId([11; 32])], 1)
            .unwrap();
        assert_eq!(check.only_in_doomed, 2);
        assert_eq!(check.only_in_doomed_sample.len(), 1);
    }

    #[test]
    fn verify_live_counts_no_copy_in_a_damaged_pack_or_a_damaged_blob() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1, 2]))
            .unwrap();
        cat.absorb_index(IndexId([2; 32]), &index_with(11, &[1]))
            .unwrap();
        cat.absorb_index(IndexId([3; 32]), &index_with(12, &[2]))
            .unwrap();
        cat.absorb_index(IndexId([4; 32]), &index_with(13, &[3]))
            .unwrap();
        // Blob 1's other copy is in a pack check found damaged; blob 2's
        // other copy was itself found damaged; blob 3 has no intact copy.
        cat.set_pack_state(&PackId([11; 32]), PackState::Damaged)
            .unwrap();
        cat.set_damaged_blobs(&PackId([12; 32]), &[BlobId([2; 32])])
            .unwrap();
        cat.set_pack_state(&PackId([13; 32]), PackState::Damaged)
            .unwrap();
        cat.live_reset().unwrap();
        cat.live_insert(&[BlobId([1; 32]), BlobId([2; 32]), BlobId([3; 32])])
            .unwrap();
        let check = cat.verify_live(&[PackId([10; 32])], 10).unwrap();
        assert_eq!(check.only_in_doomed, 2, "{check:?}");
        assert_eq!(check.unlocated, 0);
        assert_eq!(check.known_damaged, 1);
        let check = cat.verify_live(&[], 10).unwrap();
        assert_eq!((check.only_in_doomed, check.unlocated), (0, 0));
        assert_eq!(check.known_damaged, 1);
    }

    #[test]
    fn a_pending_pack_is_needed_when_it_holds_the_only_usable_copy_of_a_live_blob() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1, 2]))
            .unwrap();
        cat.absorb_index(IndexId([2; 32]), &index_with(11, &[2]))
            .unwrap();
        cat.absorb_index(IndexId([3; 32]), &index_with(12, &[3]))
            .unwrap();
        let generation = GenerationId([5; 32]);
        cat.absorb_pending(&generation, 0, &[PackId([10; 32]), PackId([12; 32])])
            .unwrap();
        cat.live_reset().unwrap();
        // Blob 1 is only in pending pack 10; blob 2 also in usable pack 11;
        // pending pack 12 holds nothing live.
        assert_eq!(
            cat.live_insert(&[BlobId([1; 32]), BlobId([2; 32]), BlobId([1; 32])])
                .unwrap(),
            vec![true, true, false]
        );
        assert_eq!(cat.live_count().unwrap(), 2);
        assert!(cat.is_live(&BlobId([2; 32])).unwrap());
        assert!(!cat.is_live(&BlobId([3; 32])).unwrap());
        assert_eq!(
            cat.needed_packs(&generation).unwrap(),
            vec![PackId([10; 32])]
        );

        let usage = cat.pack_usage().unwrap();
        let live: Vec<(PackId, u64, u64)> = usage
            .iter()
            .map(|u| (u.pack.id, u.blobs, u.live_blobs))
            .collect();
        assert_eq!(
            live,
            vec![
                (PackId([10; 32]), 2, 2),
                (PackId([11; 32]), 1, 1),
                (PackId([12; 32]), 1, 0)
            ]
        );
    }
}
