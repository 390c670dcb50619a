//! The catalog's schema: creating it in a new database, upgrading a catalog
//! an older larder made through the [`MIGRATIONS`] table, and refusing one a
//! newer larder made.

use super::{Catalog, sql_error};
use crate::error::{Error, Result};

/// The schema version this build creates and reads.
pub(crate) const SCHEMA_VERSION: i64 = 4;

/// The whole schema, as a new catalog gets it.
const SCHEMA: &str = include_str!("schema.sql");

/// The upgrades, oldest first: `(version, SQL)`, where the SQL brings a
/// catalog at `version - 1` to `version`. The last one arrives at
/// [`SCHEMA_VERSION`]. A schema change appends an entry (and changes
/// `schema.sql` to match); released entries are never edited.
const MIGRATIONS: &[(i64, &str)] = &[
    // Adds `copied_blobs`.
    (
        2,
        "CREATE TABLE copied_blobs (
    src_repo BLOB NOT NULL,
    src_id   BLOB NOT NULL,
    dst_id   BLOB NOT NULL,
    PRIMARY KEY (src_repo, src_id)
) WITHOUT ROWID;",
    ),
    // Adds pending generations.
    (
        3,
        "CREATE TABLE pending_objects (
    id      BLOB PRIMARY KEY,
    time_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE pending_packs (
    pack BLOB NOT NULL,
    gen  BLOB NOT NULL,
    PRIMARY KEY (pack, gen)
) WITHOUT ROWID;",
    ),
    // Adds drill records.
    (
        4,
        "CREATE TABLE drills (
    id       BLOB PRIMARY KEY,
    snapshot BLOB NOT NULL,
    source   TEXT NOT NULL,
    time_ns  INTEGER NOT NULL,
    passed   INTEGER NOT NULL,
    body     BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX drills_by_source ON drills (source, time_ns);",
    ),
];

impl Catalog {
    /// Brings the database to [`SCHEMA_VERSION`]: creates the schema in a
    /// new one, applies the migrations an older one lacks (all in one
    /// transaction), and refuses one a newer larder made.
    pub(super) fn ensure_schema(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version"))?;
        match version {
            SCHEMA_VERSION => Ok(()),
            0 => self.apply("creating the schema", [SCHEMA]),
            1..SCHEMA_VERSION => self.apply(
                "upgrading the schema",
                MIGRATIONS
                    .iter()
                    .filter(|(to, _)| *to > version)
                    .map(|(_, sql)| *sql),
            ),
            newer => Err(Error::Unsupported {
                what: format!(
                    "catalog {} (made by a newer larder; delete it or run `larder catalog rebuild`)",
                    self.path.display()
                ),
                found: u32::try_from(newer).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION.to_string(),
            }),
        }
    }

    /// Runs `steps` and sets the version to [`SCHEMA_VERSION`], in one
    /// transaction: a failure leaves the database as it was.
    fn apply<'a>(
        &mut self,
        op: &'static str,
        steps: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let err = sql_error(&self.path, op);
        let tx = self.conn.transaction().map_err(err)?;
        for sql in steps {
            tx.execute_batch(sql).map_err(err)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::catalog::test_support::index_with;
    use crate::hash::{BlobId, IndexId, RepoId};

    /// Every table and index, and each table's columns with their type,
    /// nullability and primary-key position: what the schema is, however
    /// its SQL was spelt.
    fn shape(path: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT m.type || ' ' || m.name || coalesce(
                     ': ' || c.name || ' ' || c.type || ' notnull=' || c.\"notnull\" || ' pk=' || c.pk,
                     '')
                 FROM sqlite_master m LEFT JOIN pragma_table_info(m.name) c
                 ORDER BY m.type, m.name, c.cid",
            )
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn migrations_step_one_version_at_a_time_up_to_the_current_one() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|(to, _)| *to).collect();
        let expected: Vec<i64> = (2..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn every_older_version_upgrades_to_the_schema_a_new_catalog_gets() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.sqlite");
        drop(Catalog::open(&fresh).unwrap());
        // What each older version lacked, undone from a fresh catalog.
        let older = [
            (
                1,
                "DROP TABLE copied_blobs; DROP TABLE pending_objects; DROP TABLE pending_packs; DROP TABLE drills;",
            ),
            (
                2,
                "DROP TABLE pending_objects; DROP TABLE pending_packs; DROP TABLE drills;",
            ),
            (3, "DROP TABLE drills;"),
        ];
        for (version, undo) in older {
            let path = dir.path().join(format!("v{version}.sqlite"));
            drop(Catalog::open(&path).unwrap());
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(undo).unwrap();
            conn.pragma_update(None, "user_version", version).unwrap();
            drop(conn);
            drop(Catalog::open(&path).unwrap());
            assert_eq!(shape(&path), shape(&fresh), "from version {version}");
            let conn = Connection::open(&path).unwrap();
            let upgraded: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(upgraded, SCHEMA_VERSION);
        }
    }

    #[test]
    fn a_version_1_catalog_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut cat = Catalog::open(&path).unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1]))
            .unwrap();
        drop(cat);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE copied_blobs; DROP TABLE pending_objects; DROP TABLE pending_packs; DROP TABLE drills; PRAGMA user_version = 1;")
            .unwrap();
        drop(conn);
        let mut cat = Catalog::open(&path).unwrap();
        assert!(cat.has_blob(&BlobId([1; 32])).unwrap(), "data survives");
        let src = RepoId::random();
        cat.record_copied_blobs(&src, &[(BlobId([9; 32]), BlobId([1; 32]))])
            .unwrap();
        assert_eq!(
            cat.copied_blob(&src, &BlobId([9; 32])).unwrap(),
            Some(BlobId([1; 32]))
        );
        // A mapping to a blob no longer stored here is no mapping.
        cat.record_copied_blobs(&src, &[(BlobId([8; 32]), BlobId([7; 32]))])
            .unwrap();
        assert_eq!(cat.copied_blob(&src, &BlobId([8; 32])).unwrap(), None);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        drop(Catalog::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            Catalog::open(&path).unwrap_err(),
            Error::Unsupported { .. }
        ));
    }
}
