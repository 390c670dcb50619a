//! Copy bookkeeping: which blobs `copy` brought here from another
//! repository, by their id there and here, so a later copy skips them (and
//! whole directories) without reading them again.

use rusqlite::OptionalExtension;

use super::{Catalog, sql_error};
use crate::error::Result;
use crate::hash::{BlobId, RepoId};

impl Catalog {
    /// The id here of a blob `copy` brought from repository `src_repo`,
    /// if it is still stored here.
    pub(crate) fn copied_blob(&self, src_repo: &RepoId, src_id: &BlobId) -> Result<Option<BlobId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT dst_id FROM copied_blobs WHERE src_repo = ?1 AND src_id = ?2")
            .map_err(self.err("looking up a copied blob"))?;
        let found: Option<Vec<u8>> = stmt
            .query_row([src_repo.as_bytes(), src_id.as_bytes()], |r| r.get(0))
            .optional()
            .map_err(self.err("looking up a copied blob"))?;
        let Some(dst) = found.as_deref().and_then(BlobId::from_slice) else {
            return Ok(None);
        };
        Ok(self.has_blob(&dst)?.then_some(dst))
    }

    /// Records blobs `copy` stored here, as (id there, id here) pairs.
    pub(crate) fn record_copied_blobs(
        &mut self,
        src_repo: &RepoId,
        pairs: &[(BlobId, BlobId)],
    ) -> Result<()> {
        let err = sql_error(&self.path, "recording copied blobs");
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO copied_blobs VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for (src, dst) in pairs {
                stmt.execute([src_repo.as_bytes(), src.as_bytes(), dst.as_bytes()])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_support::index_with;
    use crate::hash::IndexId;

    #[test]
    fn a_copied_blob_is_known_per_source_and_only_while_stored_here() {
        let mut cat = Catalog::open_in_memory().unwrap();
        let index = IndexId([1; 32]);
        cat.absorb_index(index, &index_with(10, &[1])).unwrap();
        let (src, other) = (RepoId([3; 32]), RepoId([4; 32]));
        cat.record_copied_blobs(&src, &[(BlobId([9; 32]), BlobId([1; 32]))])
            .unwrap();
        assert_eq!(
            cat.copied_blob(&src, &BlobId([9; 32])).unwrap(),
            Some(BlobId([1; 32]))
        );
        assert_eq!(cat.copied_blob(&other, &BlobId([9; 32])).unwrap(), None);
        cat.drop_indexes(&[index]).unwrap();
        assert_eq!(cat.copied_blob(&src, &BlobId([9; 32])).unwrap(), None);
    }
}
