//! The catalog: a per-repository SQLite database in the cache directory,
//! holding snapshots, every blob's location, packs, and which index objects
//! have been absorbed. The only module that speaks SQL.
//!
//! It is derived data: [`crate::repo::Repo`] keeps it in step with the
//! repository on every open, and `larder catalog rebuild` recreates it from
//! the repository alone. Dedup lookups, snapshot listings and blob locations
//! are queries, so memory does not grow with the repository. Schema and the
//! reasons for its shape: `catalog/schema.sql`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::hash::{BlobId, GenerationId, IndexId, PackId, RepoId, SnapshotId};
use crate::index::IndexObject;
use crate::pack::PackKind;
use crate::seal::ObjectKind;
use crate::snapshot::Snapshot;

/// Creates `dir` (and missing parents) readable by its owner only, and
/// narrows it to that if it exists: the catalog and tree cache hold
/// decrypted snapshot metadata (source names, hosts, commands, file names).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating cache directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("restricting cache directory", dir, e))
}

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = include_str!("catalog/schema.sql");

/// Brings a version 1 catalog to version 2 (adds `copied_blobs`).
const MIGRATE_1_TO_2: &str = "CREATE TABLE copied_blobs (
    src_repo BLOB NOT NULL,
    src_id   BLOB NOT NULL,
    dst_id   BLOB NOT NULL,
    PRIMARY KEY (src_repo, src_id)
) WITHOUT ROWID;";

/// Brings a version 2 catalog to version 3 (adds pending generations).
const MIGRATE_2_TO_3: &str = "CREATE TABLE pending_objects (
    id      BLOB PRIMARY KEY,
    time_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE pending_packs (
    pack BLOB NOT NULL,
    gen  BLOB NOT NULL,
    PRIMARY KEY (pack, gen)
) WITHOUT ROWID;";

/// Marks every pack a pending generation names as pending.
const MARK_PENDING: &str = "UPDATE packs SET state = 1
     WHERE state != 1 AND id IN (SELECT pack FROM pending_packs)";

/// Where one blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Offset of the sealed blob in the pack.
    pub offset: u64,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
    /// Blob kind.
    pub kind: ObjectKind,
}

impl BlobLocation {
    /// The offset just past the sealed blob. Index entries are validated on
    /// absorption (`IndexObject::validate`), so this cannot overflow for a
    /// catalog larder wrote; it saturates rather than panic on one it did not.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(u64::from(self.length))
    }
}

/// Whether a pack's blobs may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackState {
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
pub struct PackRecord {
    /// The pack.
    pub id: PackId,
    /// Data or tree.
    pub kind: PackKind,
    /// Stored size.
    pub size: u64,
    /// Usable, pending or damaged.
    pub state: PackState,
}

/// How much of a pack the live set uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackUsage {
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
pub struct LiveCheck {
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
        let conn = Connection::open(path).map_err(|e| Error::Catalog {
            op: "opening",
            path: path.into(),
            source: e,
        })?;
        let mut catalog = Catalog {
            conn,
            path: path.into(),
        };
        catalog.configure()?;
        Ok(catalog)
    }

    /// A catalog held in memory (tests, and one-off inspection).
    pub fn open_in_memory() -> Result<Catalog> {
        let conn = Connection::open_in_memory().map_err(|e| Error::Catalog {
            op: "opening",
            path: ":memory:".into(),
            source: e,
        })?;
        let mut catalog = Catalog {
            conn,
            path: ":memory:".into(),
        };
        catalog.configure()?;
        Ok(catalog)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Catalog {
            op,
            path: self.path.clone(),
            source,
        }
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
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version"))?;
        match version {
            0 => {
                let tx = self.conn.transaction().map_err(|source| Error::Catalog {
                    op: "creating the schema",
                    path: self.path.clone(),
                    source,
                })?;
                tx.execute_batch(SCHEMA)
                    .and_then(|_| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
                    .and_then(|_| tx.commit())
                    .map_err(|source| Error::Catalog {
                        op: "creating the schema",
                        path: self.path.clone(),
                        source,
                    })?;
                Ok(())
            }
            1 | 2 => {
                let tx = self.conn.transaction().map_err(|source| Error::Catalog {
                    op: "upgrading the schema",
                    path: self.path.clone(),
                    source,
                })?;
                let steps = if version == 1 {
                    format!("{MIGRATE_1_TO_2}\n{MIGRATE_2_TO_3}")
                } else {
                    MIGRATE_2_TO_3.to_string()
                };
                tx.execute_batch(&steps)
                    .and_then(|_| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
                    .and_then(|_| tx.commit())
                    .map_err(|source| Error::Catalog {
                        op: "upgrading the schema",
                        path: self.path.clone(),
                        source,
                    })?;
                Ok(())
            }
            SCHEMA_VERSION => Ok(()),
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

    /// True if a usable pack holds the blob.
    pub fn has_blob(&self, id: &BlobId) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM blobs b JOIN packs p ON p.rowid = b.pack
                 WHERE b.id = ?1 AND p.state = 0
                   AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b.id AND d.pack = b.pack)
                 LIMIT 1",
            )
            .map_err(self.err("looking up a blob"))?;
        stmt.exists([id.as_bytes()])
            .map_err(self.err("looking up a blob"))
    }

    /// Where a usable copy of the blob is stored.
    pub fn locate(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        Ok(self.locate_all(id)?.into_iter().next())
    }

    /// Every readable stored copy of the blob: usable packs first, then
    /// packs pending deletion (still present until prune sweeps them, and
    /// needed by a snapshot that prune's re-check will rescue them for).
    pub fn locate_all(&self, id: &BlobId) -> Result<Vec<BlobLocation>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT p.id, b.offset, b.length, b.raw_length, b.kind
                 FROM blobs b JOIN packs p ON p.rowid = b.pack
                 WHERE b.id = ?1 AND p.state IN (0, 1)
                   AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b.id AND d.pack = b.pack)
                 ORDER BY p.state",
            )
            .map_err(self.err("locating a blob"))?;
        let rows = stmt
            .query_map([id.as_bytes()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.err("locating a blob"))?;
        let mut out = Vec::new();
        for row in rows {
            let (pack, offset, length, raw_length, kind) =
                row.map_err(self.err("locating a blob"))?;
            out.push(BlobLocation {
                pack: PackId::from_slice(&pack).ok_or_else(|| self.damaged("pack id"))?,
                offset: offset as u64,
                length: length as u32,
                raw_length: raw_length as u32,
                kind: ObjectKind::from_code(kind as u8).ok_or_else(|| self.damaged("blob kind"))?,
            });
        }
        Ok(out)
    }

    /// A pack holding an unusable copy of the blob (damaged, or in a damaged
    /// or pending pack), to explain why [`Catalog::locate`] found none.
    pub fn unusable_copy(&self, id: &BlobId) -> Result<Option<PackId>> {
        let pack: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT p.id FROM blobs b JOIN packs p ON p.rowid = b.pack WHERE b.id = ?1 LIMIT 1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("locating a blob"))?;
        Ok(pack.and_then(|p| PackId::from_slice(&p)))
    }

    fn damaged(&self, what: &str) -> Error {
        Error::corrupt(
            self.path.display().to_string(),
            format!("catalog holds an invalid {what}; run `larder catalog rebuild`"),
        )
    }

    /// Index objects already absorbed.
    pub fn index_ids(&self) -> Result<HashSet<IndexId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM index_objects")
            .map_err(self.err("listing index objects"))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err("listing index objects"))?
            .filter_map(|r| r.ok().and_then(|b| IndexId::from_slice(&b)))
            .collect();
        Ok(ids)
    }

    /// Records an index object's packs and blobs, in one transaction.
    pub fn absorb_index(&mut self, id: IndexId, index: &IndexObject) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "absorbing an index object",
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert_pack = tx
                .prepare_cached("INSERT OR IGNORE INTO packs (id, kind, size) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            let mut pack_rowid = tx
                .prepare_cached("SELECT rowid FROM packs WHERE id = ?1")
                .map_err(err)?;
            let mut insert_blob = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO blobs (id, pack, offset, length, raw_length, kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            let mut link = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO index_packs (index_id, pack) VALUES (?1, ?2)",
                )
                .map_err(err)?;
            let mut rows = Vec::with_capacity(index.blob_count());
            for pack in &index.packs {
                insert_pack
                    .execute(params![pack.id.as_bytes(), pack.kind, pack.size as i64])
                    .map_err(err)?;
                let rowid: i64 = pack_rowid
                    .query_row([pack.id.as_bytes()], |r| r.get(0))
                    .map_err(err)?;
                link.execute(params![id.as_bytes(), rowid]).map_err(err)?;
                rows.extend(pack.blobs.iter().map(|blob| (blob, rowid)));
            }
            // Inserting in key order walks the B-tree once, left to right,
            // instead of touching a random page per row, which matters once
            // the table outgrows the page cache: 27% faster at 10^7 blobs.
            rows.sort_unstable_by_key(|(blob, rowid)| (blob.id, *rowid));
            for (blob, rowid) in rows {
                insert_blob
                    .execute(params![
                        blob.id.as_bytes(),
                        rowid,
                        blob.offset as i64,
                        blob.length,
                        blob.raw_length,
                        blob.kind
                    ])
                    .map_err(err)?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO index_objects (id) VALUES (?1)",
                [id.as_bytes()],
            )
            .map_err(err)?;
            tx.execute(MARK_PENDING, []).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Forgets index objects that left the repository, and every pack (with
    /// its blobs) that no remaining index object names. Returns the number of
    /// packs forgotten.
    pub fn drop_indexes(&mut self, ids: &[IndexId]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "forgetting index objects",
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM index_objects WHERE id = ?1", [id.as_bytes()])
                .map_err(err)?;
            tx.execute(
                "DELETE FROM index_packs WHERE index_id = ?1",
                [id.as_bytes()],
            )
            .map_err(err)?;
        }
        let removed = tx
            .execute(
                "DELETE FROM packs WHERE rowid NOT IN (SELECT pack FROM index_packs)",
                [],
            )
            .map_err(err)?;
        if removed > 0 {
            tx.execute(
                "DELETE FROM blobs WHERE pack NOT IN (SELECT rowid FROM packs)",
                [],
            )
            .map_err(err)?;
            tx.execute(
                "DELETE FROM damaged_blobs WHERE pack NOT IN (SELECT rowid FROM packs)",
                [],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(removed)
    }

    /// Every pack, in id order.
    pub fn packs(&self) -> Result<Vec<PackRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, kind, size, state FROM packs ORDER BY id")
            .map_err(self.err("listing packs"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(self.err("listing packs"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, size, state) = row.map_err(self.err("listing packs"))?;
            out.push(PackRecord {
                id: PackId::from_slice(&id).ok_or_else(|| self.damaged("pack id"))?,
                kind: PackKind::from_code(kind as u8).ok_or_else(|| self.damaged("pack kind"))?,
                size: size as u64,
                state: PackState::from_code(state),
            });
        }
        Ok(out)
    }

    /// One pack, if an absorbed index object names it.
    pub fn pack(&self, id: &PackId) -> Result<Option<PackRecord>> {
        let row: Option<(i64, i64, i64)> = self
            .conn
            .query_row(
                "SELECT kind, size, state FROM packs WHERE id = ?1",
                [id.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.err("reading a pack"))?;
        row.map(|(kind, size, state)| {
            Ok(PackRecord {
                id: *id,
                kind: PackKind::from_code(kind as u8).ok_or_else(|| self.damaged("pack kind"))?,
                size: size as u64,
                state: PackState::from_code(state),
            })
        })
        .transpose()
    }

    /// Marks a pack's state (check marks damaged packs so backups store their
    /// blobs again; a later clean check marks them usable). Pending packs
    /// are left as they are.
    pub fn set_pack_state(&self, id: &PackId, state: PackState) -> Result<()> {
        self.conn
            .execute(
                // A pending pack stays pending whatever check finds: it is
                // on its way out, and prune decides its fate.
                "UPDATE packs SET state = ?2 WHERE id = ?1 AND state != 1",
                params![id.as_bytes(), state.code()],
            )
            .map_err(self.err("updating a pack"))?;
        Ok(())
    }

    /// Records which blobs of a pack `check --read-data` found damaged,
    /// replacing what an earlier check recorded for that pack.
    pub fn set_damaged_blobs(&mut self, pack: &PackId, blobs: &[BlobId]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "recording damaged blobs",
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let rowid: Option<i64> = tx
            .query_row(
                "SELECT rowid FROM packs WHERE id = ?1",
                [pack.as_bytes()],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if let Some(rowid) = rowid {
            tx.execute("DELETE FROM damaged_blobs WHERE pack = ?1", [rowid])
                .map_err(err)?;
            for blob in blobs {
                tx.execute(
                    "INSERT OR IGNORE INTO damaged_blobs (id, pack) VALUES (?1, ?2)",
                    params![blob.as_bytes(), rowid],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Blob copies recorded as damaged.
    pub fn damaged_blob_count(&self) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM damaged_blobs d WHERE NOT EXISTS (
                     SELECT 1 FROM blobs b JOIN packs p ON p.rowid = b.pack
                     WHERE b.id = d.id AND p.state = 0
                       AND NOT EXISTS (SELECT 1 FROM damaged_blobs e WHERE e.id = b.id AND e.pack = b.pack))",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err("counting damaged blobs"))
    }

    /// Number of blob locations recorded.
    pub fn blob_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err("counting blobs"))
    }

    /// Distinct blobs by kind code: `(kind, count, sealed bytes, plaintext
    /// bytes)`, each blob counted once however many packs hold a copy.
    pub fn blob_totals(&self) -> Result<Vec<(u8, u64, u64, u64)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, count(*), sum(length), sum(raw_length) FROM \
                 (SELECT kind, min(length) AS length, min(raw_length) AS raw_length \
                  FROM blobs GROUP BY id) GROUP BY kind ORDER BY kind",
            )
            .map_err(self.err("summing blobs"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u8,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(self.err("summing blobs"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(self.err("summing blobs"))
    }

    /// The id here of a blob `copy` brought from repository `src_repo`,
    /// if it is still stored here.
    pub fn copied_blob(&self, src_repo: &RepoId, src_id: &BlobId) -> Result<Option<BlobId>> {
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
    pub fn record_copied_blobs(
        &mut self,
        src_repo: &RepoId,
        pairs: &[(BlobId, BlobId)],
    ) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "recording copied blobs",
            path: path.clone(),
            source,
        };
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

    /// Pending generations absorbed, with their storage times.
    pub fn pending_generations(&self) -> Result<Vec<(GenerationId, i64)>> {
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
            out.push((
                GenerationId::from_slice(&id).ok_or_else(|| self.damaged("generation id"))?,
                time,
            ));
        }
        Ok(out)
    }

    /// Records a pending generation and marks its packs pending.
    pub fn absorb_pending(
        &mut self,
        id: &GenerationId,
        time_ns: i64,
        packs: &[PackId],
    ) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "absorbing a pending generation",
            path: path.clone(),
            source,
        };
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
    pub fn drop_pending(&mut self, ids: &[GenerationId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "forgetting pending generations",
            path: path.clone(),
            source,
        };
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
    pub fn generation_packs(&self, id: &GenerationId) -> Result<Vec<PackId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pack FROM pending_packs WHERE gen = ?1 ORDER BY pack")
            .map_err(self.err("reading a pending generation"))?;
        let rows = stmt
            .query_map([id.as_bytes()], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err("reading a pending generation"))?;
        let mut out = Vec::new();
        for row in rows {
            let id = row.map_err(self.err("reading a pending generation"))?;
            out.push(PackId::from_slice(&id).ok_or_else(|| self.damaged("pack id"))?);
        }
        Ok(out)
    }

    /// Every pack some pending generation names.
    pub fn pending_pack_ids(&self) -> Result<HashSet<PackId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT pack FROM pending_packs")
            .map_err(self.err("listing pending packs"))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err("listing pending packs"))?
            .filter_map(|r| r.ok().and_then(|b| PackId::from_slice(&b)))
            .collect();
        Ok(ids)
    }

    /// Empties the live-blob set prune marks into (a temporary table, so
    /// marking costs disk, not memory).
    pub fn live_reset(&self) -> Result<()> {
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS live (id BLOB PRIMARY KEY) WITHOUT ROWID;
                 DELETE FROM temp.live;",
            )
            .map_err(self.err("preparing the live set"))
    }

    /// Adds blobs to the live set; returns, per blob, whether it was new.
    pub fn live_insert(&mut self, ids: &[BlobId]) -> Result<Vec<bool>> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "marking live blobs",
            path: path.clone(),
            source,
        };
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
    pub fn is_live(&self, id: &BlobId) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM temp.live WHERE id = ?1")
            .map_err(self.err("reading the live set"))?;
        stmt.exists([id.as_bytes()])
            .map_err(self.err("reading the live set"))
    }

    /// Number of blobs in the live set.
    pub fn live_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM temp.live", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err("counting live blobs"))
    }

    /// Per pack: blobs, and live blobs with their sealed bytes, from one
    /// pass over the blob table. Damaged copies count as unused.
    pub fn pack_usage(&self) -> Result<Vec<PackUsage>> {
        let mut stats: std::collections::HashMap<i64, (u64, u64, u64, u64)> =
            std::collections::HashMap::new();
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
                    id: PackId::from_slice(&id).ok_or_else(|| self.damaged("pack id"))?,
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
    pub fn needed_packs(&self, generation: &GenerationId) -> Result<Vec<PackId>> {
        // Driven from the live set (CROSS JOIN fixes the order): one B-tree
        // descent per live blob, instead of a scan of the blob table per pack.
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT p.id
                 FROM temp.live l
                 CROSS JOIN blobs b ON b.id = l.id
                 CROSS JOIN packs p ON p.rowid = b.pack
                 WHERE p.id IN (SELECT pack FROM pending_packs WHERE gen = ?1)
                   AND NOT EXISTS (
                     SELECT 1 FROM blobs b2 JOIN packs p2 ON p2.rowid = b2.pack
                     WHERE b2.id = l.id AND p2.state = 0
                       AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b2.id AND d.pack = b2.pack))",
            )
            .map_err(self.err("re-checking a pending generation"))?;
        let rows = stmt
            .query_map([generation.as_bytes()], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err("re-checking a pending generation"))?;
        let mut out = Vec::new();
        for row in rows {
            let id = row.map_err(self.err("re-checking a pending generation"))?;
            out.push(PackId::from_slice(&id).ok_or_else(|| self.damaged("pack id"))?);
        }
        Ok(out)
    }

    /// Prune's last check before it deletes `doomed`: the live blobs no
    /// pack outside `doomed` holds, split into those in no pack at all (no
    /// absorbed index object locates them: damage, or an index object
    /// missing) and those only in `doomed` (deleting would lose them).
    pub fn verify_live(&mut self, doomed: &[PackId], sample: usize) -> Result<LiveCheck> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "verifying live blobs",
            path: path.clone(),
            source,
        };
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
        let to_ids = |raw: &[Vec<u8>]| -> Result<Vec<BlobId>> {
            raw.iter()
                .map(|id| BlobId::from_slice(id).ok_or_else(|| self.damaged("blob id")))
                .collect()
        };
        check.unlocated_sample = to_ids(&raw[0])?;
        check.only_in_doomed_sample = to_ids(&raw[1])?;
        Ok(check)
    }

    /// Whether a usable pack other than `except` holds an intact copy of the blob.
    pub fn has_copy_elsewhere(&self, id: &BlobId, except: &PackId) -> Result<bool> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM blobs b JOIN packs p ON p.rowid = b.pack
                 WHERE b.id = ?1 AND p.state = 0 AND p.id != ?2
                   AND NOT EXISTS (SELECT 1 FROM damaged_blobs d WHERE d.id = b.id AND d.pack = b.pack)
                 LIMIT 1",
            )
            .map_err(self.err("looking up a blob"))?;
        stmt.exists([id.as_bytes(), except.as_bytes()])
            .map_err(self.err("looking up a blob"))
    }

    /// Index objects that name any of `packs`.
    pub fn indexes_naming(&self, packs: &[PackId]) -> Result<HashSet<IndexId>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ip.index_id FROM index_packs ip JOIN packs p ON p.rowid = ip.pack
                 WHERE p.id = ?1",
            )
            .map_err(self.err("finding index objects"))?;
        let mut out = HashSet::new();
        for pack in packs {
            let rows = stmt
                .query_map([pack.as_bytes()], |r| r.get::<_, Vec<u8>>(0))
                .map_err(self.err("finding index objects"))?;
            for row in rows {
                let id = row.map_err(self.err("finding index objects"))?;
                out.insert(IndexId::from_slice(&id).ok_or_else(|| self.damaged("index id"))?);
            }
        }
        Ok(out)
    }

    /// Index objects with how many packs each names.
    pub fn index_sizes(&self) -> Result<Vec<(IndexId, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT i.id, (SELECT COUNT(*) FROM index_packs ip WHERE ip.index_id = i.id)
                 FROM index_objects i ORDER BY i.id",
            )
            .map_err(self.err("listing index objects"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
            .map_err(self.err("listing index objects"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, n) = row.map_err(self.err("listing index objects"))?;
            out.push((
                IndexId::from_slice(&id).ok_or_else(|| self.damaged("index id"))?,
                n as u64,
            ));
        }
        Ok(out)
    }

    /// Snapshots already absorbed.
    pub fn snapshot_ids(&self) -> Result<HashSet<SnapshotId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM snapshots")
            .map_err(self.err("listing snapshots"))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err("listing snapshots"))?
            .filter_map(|r| r.ok().and_then(|b| SnapshotId::from_slice(&b)))
            .collect();
        Ok(ids)
    }

    /// Records a snapshot.
    pub fn insert_snapshot(&self, id: &SnapshotId, snapshot: &Snapshot) -> Result<()> {
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
    pub fn remove_snapshots(&mut self, ids: &[SnapshotId]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Catalog {
            op: "forgetting snapshots",
            path: path.clone(),
            source,
        };
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
            let id = SnapshotId::from_slice(&id).ok_or_else(|| self.damaged("snapshot id"))?;
            let snapshot: Snapshot =
                minicbor::decode(&body).map_err(|_| self.damaged("snapshot"))?;
            if filter.tags.iter().all(|t| snapshot.tags.contains(t)) {
                out.push((id, snapshot));
            }
        }
        Ok(out)
    }

    /// Snapshot ids whose hex form starts with `prefix`.
    pub fn snapshots_with_prefix(&self, prefix: &str) -> Result<Vec<SnapshotId>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id FROM snapshots WHERE lower(hex(id)) LIKE ?1 || '%' ORDER BY time_ns",
            )
            .map_err(self.err("finding a snapshot"))?;
        let ids = stmt
            .query_map([prefix.to_ascii_lowercase()], |r| r.get::<_, Vec<u8>>(0))
            .map_err(self.err("finding a snapshot"))?
            .filter_map(|r| r.ok().and_then(|b| SnapshotId::from_slice(&b)))
            .collect();
        Ok(ids)
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

    /// Runs SQLite's own consistency check; returns its complaints.
    pub fn integrity_check(&self) -> Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexedPack;
    use crate::pack::PackEntry;

    fn index_with(pack: u8, blobs: &[u8]) -> IndexObject {
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

    #[test]
    fn absorbed_blobs_are_found_and_dropped_with_their_index() {
        let mut cat = Catalog::open_in_memory().unwrap();
        let a = IndexId([1; 32]);
        let b = IndexId([2; 32]);
        cat.absorb_index(a, &index_with(10, &[1, 2, 3])).unwrap();
        cat.absorb_index(b, &index_with(11, &[3, 4])).unwrap();
        assert!(cat.has_blob(&BlobId([1; 32])).unwrap());
        assert_eq!(cat.locate_all(&BlobId([3; 32])).unwrap().len(), 2);
        assert_eq!(cat.index_ids().unwrap().len(), 2);

        assert_eq!(cat.drop_indexes(&[a]).unwrap(), 1);
        assert!(!cat.has_blob(&BlobId([1; 32])).unwrap());
        let loc = cat.locate(&BlobId([3; 32])).unwrap().unwrap();
        assert_eq!(loc.pack, PackId([11; 32]));
        assert_eq!(cat.blob_count().unwrap(), 2);
    }

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
    fn damaged_packs_do_not_count_for_dedup() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1]))
            .unwrap();
        cat.set_pack_state(&PackId([10; 32]), PackState::Damaged)
            .unwrap();
        assert!(!cat.has_blob(&BlobId([1; 32])).unwrap());
        assert!(cat.locate(&BlobId([1; 32])).unwrap().is_none());
        cat.set_pack_state(&PackId([10; 32]), PackState::Usable)
            .unwrap();
        assert!(cat.has_blob(&BlobId([1; 32])).unwrap());
    }

    #[test]
    fn damaged_blobs_are_not_used_but_other_copies_are() {
        let mut cat = Catalog::open_in_memory().unwrap();
        cat.absorb_index(IndexId([1; 32]), &index_with(10, &[1, 2]))
            .unwrap();
        cat.set_damaged_blobs(&PackId([10; 32]), &[BlobId([1; 32])])
            .unwrap();
        assert!(!cat.has_blob(&BlobId([1; 32])).unwrap());
        assert!(cat.has_blob(&BlobId([2; 32])).unwrap());
        cat.absorb_index(IndexId([2; 32]), &index_with(11, &[1]))
            .unwrap();
        assert_eq!(
            cat.locate(&BlobId([1; 32])).unwrap().unwrap().pack,
            PackId([11; 32])
        );
        cat.set_damaged_blobs(&PackId([10; 32]), &[]).unwrap();
        assert_eq!(cat.locate_all(&BlobId([1; 32])).unwrap().len(), 2);
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
        conn.execute_batch("DROP TABLE copied_blobs; DROP TABLE pending_objects; DROP TABLE pending_packs; PRAGMA user_version = 1;")
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
