//! The catalog: a per-repository SQLite database in the cache directory,
//! holding snapshots, every blob's location, packs, and which index objects
//! have been absorbed. The only module that speaks SQL.
//!
//! It is derived data: [`crate::repo::Repo`] keeps it in step with the
//! repository on every open, and `larder catalog rebuild` recreates it from
//! the repository alone. Dedup lookups, snapshot listings and blob locations
//! are queries, so memory does not grow with the repository. Schema and the
//! reasons for its shape: `catalog/schema.sql`.
//!
//! This file holds the [`Catalog`] handle (opening, error mapping, the id
//! parsing every query shares) and the pack types several jobs use. The
//! methods are split by job, each file one `impl Catalog`:
//!
//! - `schema.rs`: creating the schema, and upgrading older catalogs;
//! - `snapshots.rs`: snapshot rows and listings;
//! - `blobs.rs`: absorbing index objects; locating blobs; pack states and
//!   damaged blobs;
//! - `pending.rs`: prune's pending generations;
//! - `live.rs`: prune's live set, pack usage and last checks;
//! - `copied.rs`: which blobs `copy` brought from another repository;
//! - `drills.rs`: restore drill records.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::hash::{BlobId, DrillId, GenerationId, IndexId, PackId, SnapshotId};
use crate::pack::PackKind;

mod blobs;
mod copied;
mod drills;
mod live;
mod pending;
mod schema;
mod snapshots;

pub use blobs::BlobLocation;
pub(crate) use live::PackUsage;
pub use snapshots::SnapshotFilter;

/// Creates `dir` (and missing parents) readable by its owner only, and
/// narrows it to that if it exists: the catalog and tree cache hold
/// decrypted snapshot metadata (source names, hosts, commands, file names).
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating cache directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("restricting cache directory", dir, e))
}

/// A failure of the catalog's database: the cause inside
/// [`Error::Catalog`]. Opaque, so that the SQLite binding appears in no
/// public type; it prints, and chains its own cause, as the underlying
/// failure does.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CatalogError(rusqlite::Error);

impl CatalogError {
    /// True when the database file itself is damaged, or is no database.
    pub(crate) fn is_corrupt(&self) -> bool {
        matches!(
            &self.0,
            rusqlite::Error::SqliteFailure(e, _)
                if matches!(e.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    }
}

/// Maps a SQLite failure while doing `op` on the catalog at `path` to
/// [`Error::Catalog`]. A free function, so that a method holding a
/// transaction (a mutable borrow of the connection) can still use it.
fn sql_error<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl Fn(rusqlite::Error) -> Error + Copy + 'a {
    move |source| Error::Catalog {
        op,
        path: path.to_path_buf(),
        source: CatalogError(source),
    }
}

/// An id stored as a 32-byte BLOB column.
trait IdColumn: Sized {
    /// What a damage report calls a bad value ("pack id").
    const WHAT: &'static str;

    /// Parses the column's bytes; `None` when they are not an id.
    fn from_column(bytes: &[u8]) -> Option<Self>;
}

macro_rules! id_column {
    ($($id:ident => $what:literal),* $(,)?) => {$(
        impl IdColumn for $id {
            const WHAT: &'static str = $what;

            fn from_column(bytes: &[u8]) -> Option<Self> {
                $id::from_slice(bytes)
            }
        }
    )*};
}

id_column!(
    BlobId => "blob id",
    PackId => "pack id",
    IndexId => "index id",
    SnapshotId => "snapshot id",
    GenerationId => "generation id",
    DrillId => "drill id",
);

/// Whether a pack's blobs may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PackState {
    /// Normal.
    Usable,
    /// Listed by prune for deletion: backups store its blobs again.
    Pending,
    /// Found damaged or missing by `check`: backups store its blobs again.
    Damaged,
}

impl PackState {
    fn code(self) -> i64 {
        match self {
            PackState::Usable => 0,
            PackState::Pending => 1,
            PackState::Damaged => 2,
        }
    }

    fn from_code(code: i64) -> PackState {
        match code {
            1 => PackState::Pending,
            2 => PackState::Damaged,
            _ => PackState::Usable,
        }
    }
}

/// A pack as the catalog knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackRecord {
    /// The pack.
    pub id: PackId,
    /// Data or tree.
    pub kind: PackKind,
    /// Stored size.
    pub size: u64,
    /// Usable, pending or damaged.
    pub state: PackState,
}

/// An open catalog.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let conn = Connection::open(path).map_err(sql_error(path, "opening"))?;
        let mut catalog = Catalog {
            conn,
            path: path.into(),
        };
        catalog.configure()?;
        Ok(catalog)
    }

    /// A catalog held in memory (tests, and one-off inspection).
    pub(crate) fn open_in_memory() -> Result<Catalog> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(sql_error(path, "opening"))?;
        let mut catalog = Catalog {
            conn,
            path: path.into(),
        };
        catalog.configure()?;
        Ok(catalog)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure(&mut self) -> Result<()> {
        // WAL with NORMAL sync: the catalog is derived data, so a lost last
        // transaction after a power cut costs a re-sync, never correctness.
        // The page cache is bounded so peak memory stays flat.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA cache_size = -16384;
                 PRAGMA busy_timeout = 60000;
                 PRAGMA temp_store = FILE;",
            )
            .map_err(self.err("configuring"))?;
        // Without the query-planner stability guarantee SQLite (built with
        // STAT4) re-prepares a statement whenever the value bound to an
        // indexed column changes: every dedup lookup paid a re-parse.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )
            .map_err(self.err("configuring"))?;
        self.ensure_schema()
    }

    /// Maps a SQLite failure while doing `op` to [`Error::Catalog`].
    fn err(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> Error + Copy + '_ {
        sql_error(&self.path, op)
    }

    /// The error for a value in the catalog that larder never writes.
    fn damaged(&self, what: &str) -> Error {
        Error::corrupt(
            self.path.display().to_string(),
            format!("catalog holds an invalid {what}; run `larder catalog rebuild`"),
        )
    }

    /// Parses an id column's bytes; a bad value is damage.
    fn id<T: IdColumn>(&self, bytes: &[u8]) -> Result<T> {
        T::from_column(bytes).ok_or_else(|| self.damaged(T::WHAT))
    }

    /// Runs `sql`, whose first column is an id, and collects the ids. A row
    /// that cannot be read, or holds no valid id, is an error (never a
    /// silently shorter list).
    fn ids<T: IdColumn, C: FromIterator<T>>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        op: &'static str,
    ) -> Result<C> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err(op))?;
        let rows = stmt
            .query_map(params, |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err(op))?;
        rows.map(|row| self.id(&row.map_err(self.err(op))?))
            .collect()
    }

    /// Runs SQLite's own consistency check; returns its complaints.
    pub(crate) fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check")
            .map_err(self.err("checking integrity"))?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err("checking integrity"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.err("checking integrity"))?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// Moves the write-ahead log into the database and truncates it, so the
    /// catalog does not keep a large WAL after a big backup.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(self.err("checkpointing"))
    }
}

/// Builders the catalog's unit tests share.
#[cfg(test)]
mod test_support {
    use crate::hash::{BlobId, PackId};
    use crate::index::{IndexObject, IndexedPack};
    use crate::pack::{PackEntry, PackKind};
    use crate::seal::ObjectKind;

    /// An index object naming one data pack, `[pack; 32]`, that holds the
    /// data blobs `[b; 32]` for each of `blobs`.
    pub(super) fn index_with(pack: u8, blobs: &[u8]) -> IndexObject {
        IndexObject {
            packs: vec![IndexedPack {
                id: PackId([pack; 32]),
                kind: PackKind::Data.code(),
                size: 1000,
                blobs: blobs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| PackEntry {
                        kind: ObjectKind::DataBlob.code(),
                        id: BlobId([*b; 32]),
                        offset: i as u64 * 10,
                        length: 10,
                        raw_length: 20,
                    })
                    .collect(),
            }],
            supersedes: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_id_in_a_listing_is_reported_as_damage() {
        let cat = Catalog::open_in_memory().unwrap();
        cat.conn
            .execute("INSERT INTO index_objects (id) VALUES (x'0102')", [])
            .unwrap();
        let err = cat
            .ids::<IndexId, Vec<_>>("SELECT id FROM index_objects", [], "listing index objects")
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("invalid index id"), "{err}");
    }

    #[test]
    fn a_catalog_error_prints_and_chains_like_the_sqlite_error() {
        let cat = Catalog::open_in_memory().unwrap();
        let sqlite = cat.conn.execute("SELECT nonsense FROM", []).unwrap_err();
        let expected = sqlite.to_string();
        let err = cat.err("testing")(sqlite);
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(source.to_string(), expected);
        assert!(!err.is_catalog_corrupt());
    }

    #[test]
    fn a_file_that_is_no_database_is_reported_as_a_corrupt_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = Catalog::open(&path).unwrap_err();
        assert!(err.is_catalog_corrupt(), "{err:#}");
    }
}
