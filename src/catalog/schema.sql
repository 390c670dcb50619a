-- The catalog: derived data about one repository, rebuilt from the
-- repository alone by `larder catalog rebuild`. Schema version 3.

-- Every pack some absorbed index object names.
CREATE TABLE packs (
    rowid INTEGER PRIMARY KEY,
    id    BLOB NOT NULL UNIQUE,   -- PackId, 32 bytes
    kind  INTEGER NOT NULL,       -- 0 data, 1 tree
    size  INTEGER NOT NULL,       -- stored bytes
    state INTEGER NOT NULL DEFAULT 0  -- 0 usable, 1 pending deletion, 2 found damaged or missing by check
);

-- Where each blob is stored. A blob may sit in more than one pack (two
-- writers racing, or a re-store after damage); readers take any usable one.
-- Keyed by the blob id first so dedup lookups are one B-tree descent, and
-- WITHOUT ROWID so the 32-byte id is stored once.
CREATE TABLE blobs (
    id         BLOB NOT NULL,     -- BlobId, 32 bytes
    pack       INTEGER NOT NULL,  -- packs.rowid
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL,  -- sealed bytes
    raw_length INTEGER NOT NULL,  -- plaintext bytes
    kind       INTEGER NOT NULL,  -- ObjectKind code
    PRIMARY KEY (id, pack)
) WITHOUT ROWID;

-- Blob copies that `check --read-data` found damaged. They are never used
-- for reads or dedup, so the next backup of the same content stores the
-- blob again and every snapshot needing it heals.
CREATE TABLE damaged_blobs (
    id   BLOB NOT NULL,
    pack INTEGER NOT NULL,
    PRIMARY KEY (id, pack)
) WITHOUT ROWID;

-- Index objects absorbed, and the packs each names. A pack leaves the
-- catalog when no absorbed index object names it any more.
CREATE TABLE index_objects (
    id BLOB PRIMARY KEY           -- IndexId
) WITHOUT ROWID;

CREATE TABLE index_packs (
    index_id BLOB NOT NULL,
    pack     INTEGER NOT NULL,
    PRIMARY KEY (index_id, pack)
) WITHOUT ROWID;

-- Snapshots, with the fields listings filter on, and the whole decoded
-- object for everything else.
CREATE TABLE snapshots (
    id      BLOB PRIMARY KEY,     -- SnapshotId
    time_ns INTEGER NOT NULL,
    source  TEXT NOT NULL,
    host    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    root    BLOB NOT NULL,
    body    BLOB NOT NULL         -- CBOR Snapshot
) WITHOUT ROWID;

CREATE INDEX snapshots_by_source ON snapshots (source, host, time_ns);

-- Blobs `copy` brought here from another repository: their id there and
-- here (ids are keyed per repository). Lets a later copy skip, without
-- reading them, blobs and whole directories it copied before. A cache: when
-- lost, copy reads and re-hashes, and still uploads nothing twice.
CREATE TABLE copied_blobs (
    src_repo BLOB NOT NULL,       -- RepoId of the source repository
    src_id   BLOB NOT NULL,       -- BlobId there
    dst_id   BLOB NOT NULL,       -- BlobId here
    PRIMARY KEY (src_repo, src_id)
) WITHOUT ROWID;

-- Pending generations absorbed (prune's lists of packs to delete), with
-- the storage's time for each, and the packs each names. A pack named by
-- any absorbed generation has packs.state 1: backups store its blobs
-- again, reads use it only when no other copy exists.
CREATE TABLE pending_objects (
    id      BLOB PRIMARY KEY,     -- GenerationId
    time_ns INTEGER NOT NULL      -- storage modification time
) WITHOUT ROWID;

CREATE TABLE pending_packs (
    pack BLOB NOT NULL,           -- PackId (the pack may be in no index)
    gen  BLOB NOT NULL,           -- GenerationId
    PRIMARY KEY (pack, gen)
) WITHOUT ROWID;

-- Restore drills absorbed from `drills/` objects, whatever their outcome.
-- Not tied to snapshot rows: the record of a drill outlives the snapshot it
-- drilled, so "when did this source last pass a drill" survives retention.
CREATE TABLE drills (
    id       BLOB PRIMARY KEY,    -- DrillId
    snapshot BLOB NOT NULL,       -- SnapshotId drilled
    source   TEXT NOT NULL,
    time_ns  INTEGER NOT NULL,    -- when the drill started
    passed   INTEGER NOT NULL,    -- 1 passed, 0 failed
    body     BLOB NOT NULL        -- CBOR DrillRecord
) WITHOUT ROWID;

CREATE INDEX drills_by_source ON drills (source, time_ns);
