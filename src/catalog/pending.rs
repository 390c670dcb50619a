//! Pending generations: prune's lists of packs to delete. A pack any
//! absorbed generation names is pending (`packs.state` 1): backups store its
//! blobs again, and reads use it only when no usable copy exists.

use std::collections::HashSet;

use rusqlite::params;

use super::{Catalog, sql_error};
use crate::error::Result;
use crate::hash::{GenerationId, PackId};

/// Marks every pack a pending generation names as pending.
pub(super) const MARK_PENDING: &str = "UPDATE packs SET state = 1
     WHERE state != 1 AND id IN (SELECT pack FROM pending_packs)";

impl Catalog {
    /// Pending generations absorbed, with their storage times.
    pub(crate) fn pending_generations(&self) -> Result<Vec<(GenerationId, i64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, time_ns FROM pending_objects ORDER BY time_ns, id")
            .map_err(self.err("listing pending generations"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.err("listing pending generations"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, time) = row.map_err(self.err("listing pending generations"))?;
            out.push((self.id(&id)?, time));
        }
        Ok(out)
    }

    /// Records a pending generation and marks its packs pending.
    pub(crate) fn absorb_pending(
        &mut self,
        id: &GenerationId,
        time_ns: i64,
        packs: &[PackId],
    ) -> Result<()> {
        let err = sql_error(&self.path, "absorbing a pending generation");
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO pending_packs (pack, gen) VALUES (?1, ?2)")
                .map_err(err)?;
            for pack in packs {
                insert
                    .execute([pack.as_bytes(), id.as_bytes()])
                    .map_err(err)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO pending_objects (id, time_ns) VALUES (?1, ?2)",
                params![id.as_bytes(), time_ns],
            )
            .map_err(err)?;
            tx.execute(MARK_PENDING, []).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Forgets pending generations that left the repository; packs no
    /// remaining generation names become usable again (prune rescued them).
    pub(crate) fn drop_pending(&mut self, ids: &[GenerationId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let err = sql_error(&self.path, "forgetting pending generations");
        let tx = self.conn.transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM pending_objects WHERE id = ?1", [id.as_bytes()])
                .map_err(err)?;
            tx.execute("DELETE FROM pending_packs WHERE gen = ?1", [id.as_bytes()])
                .map_err(err)?;
        }
        tx.execute(
            "UPDATE packs SET state = 0
             WHERE state = 1 AND id NOT IN (SELECT pack FROM pending_packs)",
            [],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The packs a pending generation names.
    pub(crate) fn generation_packs(&self, id: &GenerationId) -> Result<Vec<PackId>> {
        self.ids(
            "SELECT pack FROM pending_packs WHERE gen = ?1 ORDER BY pack",
            [id.as_bytes()],
            "reading a pending generation",
        )
    }

    /// Every pack some pending generation names.
    pub(crate) fn pending_pack_ids(&self) -> Result<HashSet<PackId>> {
        self.ids(
            "SELECT DISTINCT pack FROM pending_packs",
            [],
            "listing pending packs",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::PackState;
    use crate::catalog::test_support::index_with;
    use crate::hash::{BlobId, IndexId};

    #[test]
    fn packs_a_generation_names_are_pending_until_it_is_dropped() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1]))
            .unwrap();
        let generation = GenerationId([5; 32]);
        // Pack 11 is named before any index object: it is pending once one
        // names it.
        cat.absorb_pending(&generation, 42, &[PackId([10; 32]), PackId([11; 32])])
            .unwrap();
        cat.absorb_index(IndexId([2; 32]), &index_with(11, &[2]))
            .unwrap();
        assert_eq!(cat.pending_generations().unwrap(), vec![(generation, 42)]);
        assert_eq!(
            cat.generation_packs(&generation).unwrap(),
            vec![PackId([10; 32]), PackId([11; 32])]
        );
        assert_eq!(cat.pending_pack_ids().unwrap().len(), 2);
        for pack in [10, 11] {
            let state = cat.pack(&PackId([pack; 32])).unwrap().unwrap().state;
            assert_eq!(state, PackState::Pending);
        }
        // Pending copies are not used for dedup, but still read.
        assert!(!cat.has_blob(&BlobId([1; 32])).unwrap());
        assert!(cat.locate(&BlobId([1; 32])).unwrap().is_some());

        cat.drop_pending(&[generation]).unwrap();
        assert!(cat.pending_generations().unwrap().is_empty());
        assert!(cat.pending_pack_ids().unwrap().is_empty());
        assert!(cat.has_blob(&BlobId([1; 32])).unwrap());
        assert!(cat.has_blob(&BlobId([2; 32])).unwrap());
    }
}
