//! What a snapshot is: the snapshot object, directory trees, nodes, and the
//! content lists that name a file's chunks. Domain types and their CBOR
//! encoding only; no I/O (spec: `docs/FORMAT.md`, "Snapshots" and "Trees").
//!
//! A file's content is a [`Content`]: at depth 0 its entries are data chunks
//! in order; at depth *d* > 0 they are list blobs, each holding a `Content`
//! of depth *d* − 1. Large dumps therefore never need their whole chunk list
//! in memory, and because depth strictly decreases a hostile list cannot
//! loop.

use minicbor::bytes::ByteVec;

/// How far ahead of the local clock a snapshot's time may be: clocks drift
/// and storage clocks differ. `backup --time` refuses later times, and
/// retention treats snapshots beyond it as suspicious.
pub(crate) const CLOCK_SKEW_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(300);

use crate::error::{Error, Result};
use crate::hash::{BlobHasher, BlobId, SnapshotId};

/// Most chunk refs kept inline in a node. Longer lists go into list blobs,
/// so an unchanged large file or stream shares its whole list with earlier
/// snapshots and a re-backup stores only a new tree and snapshot.
pub(crate) const MAX_INLINE_REFS: usize = 64;

/// Deepest content list accepted (a fanout of 2 at depth 64 already covers
/// more than any file).
pub(crate) const MAX_CONTENT_DEPTH: u8 = 64;

/// A snapshot object: the commit record of one backup.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct Snapshot {
    /// When the backup was taken (or `--time`), nanoseconds since the epoch.
    #[n(0)]
    pub time_ns: i64,
    /// The `--source` name.
    #[n(1)]
    pub source: String,
    /// The host it was taken on (or `--host`).
    #[n(2)]
    pub host: String,
    /// `--tag` labels.
    #[n(3)]
    pub tags: Vec<String>,
    /// Source kind: `stream`, `files`, `postgres`, `redis`, `neo4j`.
    #[n(4)]
    pub kind: String,
    /// The root tree.
    #[n(5)]
    pub root: BlobId,
    /// The snapshot this one was compared against, if any.
    #[n(6)]
    pub parent: Option<SnapshotId>,
    /// Absolute paths given to a tree backup; empty for streams.
    #[n(7)]
    pub paths: Vec<String>,
    /// For `--command` backups: what ran and how it ended.
    #[n(8)]
    pub command: Option<CommandRecord>,
    /// Counters from the backup run.
    #[n(9)]
    pub summary: SnapshotSummary,
    /// The program that wrote it, such as `larder 0.1.0`.
    #[n(10)]
    pub program: String,
    /// The user that ran the backup.
    #[n(11)]
    pub user: String,
    /// For snapshots `copy` wrote: the snapshot's id in the repository it
    /// was copied from.
    #[n(12)]
    pub copied_from: Option<SnapshotId>,
    /// For dumps: the format found and what its completeness check said.
    #[n(13)]
    pub dump: Option<DumpRecord>,
}

/// What a dump's completeness check found, recorded with its snapshot.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode, serde::Serialize)]
#[cbor(map)]
pub struct DumpRecord {
    /// The format, such as `postgres-custom`, `postgres-plain`,
    /// `redis-rdb` or `neo4j-dump`.
    #[n(0)]
    pub format: String,
    /// Whether the dump was found whole (false only for snapshots stored
    /// with `allow_incomplete`, which also carry the `incomplete` tag).
    #[n(1)]
    pub complete: bool,
    /// Whether the format could be checked at all.
    #[n(2)]
    pub checked: bool,
    /// What was checked, or what is missing.
    #[n(3)]
    pub detail: String,
}

/// The record of one restore drill of a snapshot (`drills/<id>`; spec:
/// `docs/FORMAT.md`, "Drill records"). Written whether the drill passed or
/// failed.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct DrillRecord {
    /// The snapshot drilled (it may have been forgotten since).
    #[n(0)]
    pub snapshot: SnapshotId,
    /// The snapshot's source name.
    #[n(1)]
    pub source: String,
    /// When the drill started, nanoseconds since the epoch.
    #[n(2)]
    pub time_ns: i64,
    /// `passed` or `failed`.
    #[n(3)]
    pub outcome: String,
    /// How long the drill took, in milliseconds.
    #[n(4)]
    pub duration_ms: u64,
    /// What it was verified as: `files`, `postgres-custom`,
    /// `postgres-directory`, `postgres-plain`, `redis-rdb` or `neo4j-dump`
    /// (`postgres` when a stream could not be read back to tell which).
    #[n(5)]
    pub kind: String,
    /// What was checked, one line each, in order; when the drill failed,
    /// the failing check is among them.
    #[n(6)]
    pub checked: Vec<String>,
    /// Why it failed, or a summary of what passed.
    #[n(7)]
    pub detail: String,
    /// Counts found (`tables`, `rows`, `keys`, `yaml_files`, …).
    #[n(8)]
    pub counts: std::collections::BTreeMap<String, u64>,
    /// The host the drill ran on.
    #[n(9)]
    pub host: String,
    /// The program that ran it, such as `larder 0.1.0`.
    #[n(10)]
    pub program: String,
    /// Rows per table (`schema.table`), for database drills that restored
    /// into a scratch database.
    #[n(11)]
    pub tables: std::collections::BTreeMap<String, u64>,
}

impl DrillRecord {
    /// The `outcome` of a drill that passed.
    pub(crate) const PASSED: &str = "passed";
    /// The `outcome` of a drill that failed.
    pub const FAILED: &str = "failed";

    /// Whether the drill passed.
    pub fn passed(&self) -> bool {
        self.outcome == Self::PASSED
    }
}

/// How a dump command ran.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct CommandRecord {
    /// The argument vector, program first.
    #[n(0)]
    pub argv: Vec<String>,
    /// Its exit code (always 0 in a committed snapshot).
    #[n(1)]
    pub exit_code: i32,
    /// First line of `PROGRAM --version`, for known dumpers.
    #[n(2)]
    pub version: Option<String>,
}

/// Counters recorded with a snapshot.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, minicbor::Encode, minicbor::Decode, serde::Serialize,
)]
#[cbor(map)]
pub struct SnapshotSummary {
    /// Bytes read from the source.
    #[n(0)]
    pub bytes_read: u64,
    /// Stored bytes this run added to the repository.
    #[n(1)]
    pub bytes_added: u64,
    /// Blobs stored new.
    #[n(2)]
    pub blobs_new: u64,
    /// Blobs found already stored.
    #[n(3)]
    pub blobs_reused: u64,
    /// Wall time of the run in milliseconds.
    #[n(4)]
    pub duration_ms: u64,
    /// Files not in the parent.
    #[n(5)]
    pub files_new: u64,
    /// Files whose content was read again because their metadata changed.
    #[n(6)]
    pub files_changed: u64,
    /// Files whose chunk list was reused without reading.
    #[n(7)]
    pub files_unchanged: u64,
    /// Warnings during the run.
    #[n(8)]
    pub warnings: u64,
    /// Total size of the snapshot's files (read or reused); 0 when absent
    /// (snapshots written before this field existed).
    #[n(9)]
    #[cbor(default)]
    pub total_bytes: u64,
}

/// One directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct Tree {
    /// Entries sorted by name bytes, names unique.
    #[n(0)]
    #[cbor(decode_with = "decode_entries")]
    pub entries: Vec<Node>,
}

/// A tree's entries, decoded into a vector sized once from the array's
/// length (minicbor's own grows it one push at a time, moving every node
/// already decoded), but never sized beyond what the input could hold.
fn decode_entries<Ctx>(
    d: &mut minicbor::Decoder<'_>,
    ctx: &mut Ctx,
) -> Result<Vec<Node>, minicbor::decode::Error> {
    // The smallest encoded node is well over 8 bytes.
    let room = (d.input().len() - d.position()) / 8;
    let len = d
        .probe()
        .array()?
        .map_or(0, |n| n.min(room as u64) as usize);
    let mut entries = Vec::with_capacity(len);
    for node in d.array_iter_with::<Ctx, Node>(ctx)? {
        entries.push(node?);
    }
    Ok(entries)
}

impl Tree {
    /// Encodes the tree; identical trees encode to identical bytes.
    pub fn encode(&self) -> Vec<u8> {
        minicbor::to_vec(self).expect("encoding to a Vec cannot fail")
    }

    /// Decodes a tree blob's plaintext and checks that its names are
    /// sorted and unique (lookups rely on it; larder never writes otherwise).
    pub(crate) fn decode(bytes: &[u8], object: &str) -> Result<Tree> {
        let tree: Tree = minicbor::decode(bytes)
            .map_err(|e| Error::corrupt(object, format!("tree does not parse: {e}")))?;
        if tree
            .entries
            .windows(2)
            .any(|pair| pair[0].name.as_slice() >= pair[1].name.as_slice())
        {
            return Err(Error::corrupt(
                object,
                "tree entries are not sorted and unique",
            ));
        }
        Ok(tree)
    }

    /// The entry named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.entries
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(index_only)]
pub enum NodeKind {
    /// A regular file.
    #[n(0)]
    File,
    /// A directory.
    #[n(1)]
    Dir,
    /// A symbolic link (stored, never followed).
    #[n(2)]
    Symlink,
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct Node {
    /// The name: one path component, raw bytes (names need not be UTF-8).
    #[n(0)]
    pub name: ByteVec,
    /// File, directory or symlink.
    #[n(1)]
    pub kind: NodeKind,
    /// Permission bits (`st_mode & 0o7777`).
    #[n(2)]
    pub mode: u32,
    /// Owner uid.
    #[n(3)]
    pub uid: u32,
    /// Owner gid.
    #[n(4)]
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    #[n(5)]
    pub mtime_ns: i64,
    /// Size in bytes (files: content length).
    #[n(6)]
    pub size: u64,
    /// Files: the content.
    #[n(7)]
    pub content: Option<Content>,
    /// Directories: the subtree.
    #[n(8)]
    pub subtree: Option<BlobId>,
    /// Symlinks: the target, raw bytes.
    #[n(9)]
    pub target: Option<ByteVec>,
    /// Status change time, nanoseconds (change detection).
    #[n(10)]
    pub ctime_ns: Option<i64>,
    /// Inode number (change detection, hard links).
    #[n(11)]
    pub inode: Option<u64>,
    /// Device id (change detection, hard links).
    #[n(12)]
    pub device: Option<u64>,
    /// Link count when greater than one.
    #[n(13)]
    pub links: Option<u64>,
    /// Owner name, if it resolved.
    #[n(14)]
    pub user: Option<String>,
    /// Group name, if it resolved.
    #[n(15)]
    pub group: Option<String>,
    /// The file changed while it was being read.
    #[n(16)]
    pub changed_while_reading: Option<bool>,
    /// Files stored through a recipe (format 2 on): the recipe's bytes
    /// (see [`crate::recipe`]). `content` then holds what the recipe draws
    /// from (a compressed stream's contents), `size` the rebuilt length.
    #[n(17)]
    pub recipe: Option<Content>,
}

impl Node {
    /// A regular-file node with the given content and no filesystem identity
    /// (used for stream sources).
    pub fn stream_file(name: &[u8], time_ns: i64, size: u64, content: Content) -> Node {
        Node {
            name: ByteVec::from(name.to_vec()),
            kind: NodeKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime_ns: time_ns,
            size,
            content: Some(content),
            subtree: None,
            target: None,
            ctime_ns: None,
            inode: None,
            device: None,
            links: None,
            user: None,
            group: None,
            changed_while_reading: None,
            recipe: None,
        }
    }

    /// Every content list the node's bytes are read from: its content and,
    /// for a file stored through a recipe, the recipe. Whatever keeps a
    /// node's blobs (prune's marking, check, copy) walks all of them.
    pub fn contents(&self) -> impl Iterator<Item = &Content> {
        self.content.iter().chain(self.recipe.iter())
    }

    /// The name as text, with invalid UTF-8 replaced, for display.
    pub(crate) fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// One entry of a content list: a data chunk (depth 0) or a list blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(array)]
pub struct ContentRef {
    /// The blob.
    #[n(0)]
    pub id: BlobId,
    /// Plaintext bytes under this entry.
    #[n(1)]
    pub len: u64,
}

/// A file's chunk list, possibly through list blobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct Content {
    /// 0: entries are data chunks; d > 0: entries are list blobs of depth d − 1.
    #[n(0)]
    pub depth: u8,
    /// Entries in file order.
    #[n(1)]
    pub entries: Vec<ContentRef>,
}

impl Content {
    /// Total plaintext length.
    pub fn len(&self) -> u64 {
        // Saturating: a hostile list's lengths may not add up, and then the
        // total must mismatch (an error), not overflow (a panic).
        self.entries
            .iter()
            .fold(0u64, |total, e| total.saturating_add(e.len))
    }

    /// True for empty content.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decodes a list blob that should hold content of `expected_depth`.
    pub(crate) fn decode_list(bytes: &[u8], expected_depth: u8, object: &str) -> Result<Content> {
        let content: Content = minicbor::decode(bytes)
            .map_err(|e| Error::corrupt(object, format!("content list does not parse: {e}")))?;
        if content.depth != expected_depth {
            return Err(Error::corrupt(
                object,
                format!(
                    "content list has depth {}, expected {expected_depth}",
                    content.depth
                ),
            ));
        }
        Ok(content)
    }
}

/// Builds a [`Content`] from chunk ids in file order, emitting a list blob
/// whenever a level fills up, so memory stays at one level's worth per depth.
pub(crate) struct ContentBuilder {
    fanout: usize,
    hasher: BlobHasher,
    levels: Vec<Vec<ContentRef>>,
}

/// A list blob the builder made: store it as an [`crate::seal::ObjectKind::ListBlob`].
pub(crate) type ListBlob = (BlobId, Vec<u8>);

impl ContentBuilder {
    /// A builder making list blobs of at most `fanout` entries.
    pub fn new(fanout: usize, hasher: BlobHasher) -> ContentBuilder {
        assert!(fanout >= 2, "a fanout below 2 cannot shrink a list");
        ContentBuilder {
            fanout,
            hasher,
            levels: vec![Vec::new()],
        }
    }

    /// Appends a data chunk; list blobs that fill up are pushed to `out`.
    pub fn push(&mut self, chunk: ContentRef, out: &mut Vec<ListBlob>) {
        self.push_at(0, chunk, out);
    }

    fn push_at(&mut self, level: usize, entry: ContentRef, out: &mut Vec<ListBlob>) {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(entry);
        if self.levels[level].len() == self.fanout && level + 1 < MAX_CONTENT_DEPTH as usize {
            let sealed = self.seal_level(level, out);
            self.push_at(level + 1, sealed, out);
        }
    }

    fn seal_level(&mut self, level: usize, out: &mut Vec<ListBlob>) -> ContentRef {
        let content = Content {
            depth: level as u8,
            entries: std::mem::take(&mut self.levels[level]),
        };
        let len = content.len();
        let bytes = minicbor::to_vec(&content).expect("encoding to a Vec cannot fail");
        let id = self
            .hasher
            .blob_id(crate::seal::ObjectKind::ListBlob, &bytes);
        out.push((id, bytes));
        ContentRef { id, len }
    }

    /// Finishes the list: lower levels are sealed into list blobs until one
    /// level of at most `fanout` entries remains. If that level has more than
    /// [`MAX_INLINE_REFS`] entries it is sealed too, so the returned content
    /// is always small enough to sit in a tree node.
    pub fn finish(mut self, out: &mut Vec<ListBlob>) -> Content {
        let mut level = 0;
        loop {
            let has_higher = self.levels[level + 1..].iter().any(|l| !l.is_empty());
            if !has_higher {
                if self.levels[level].len() > MAX_INLINE_REFS {
                    let sealed = self.seal_level(level, out);
                    return Content {
                        depth: level as u8 + 1,
                        entries: vec![sealed],
                    };
                }
                return Content {
                    depth: level as u8,
                    entries: std::mem::take(&mut self.levels[level]),
                };
            }
            if !self.levels[level].is_empty() {
                let sealed = self.seal_level(level, out);
                self.push_at(level + 1, sealed, out);
            }
            level += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn a_tree_claiming_more_entries_than_its_bytes_hold_is_refused_without_reserving_them() {
        // {0: [<2^62 entries>]} in a dozen bytes.
        let mut bytes = vec![0xa1, 0x00, 0x9b];
        bytes.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert!(Tree::decode(&bytes, "tree").is_err());
        // And a well-formed tree still decodes, sized exactly.
        let tree = Tree {
            entries: vec![
                Node::stream_file(b"a", 1, 0, Content::default()),
                Node::stream_file(b"b", 2, 0, Content::default()),
            ],
        };
        let decoded = Tree::decode(&tree.encode(), "tree").unwrap();
        assert_eq!(decoded, tree);
        assert_eq!(decoded.entries.capacity(), 2);
    }

    fn expand(content: &Content, lists: &HashMap<BlobId, Vec<u8>>, out: &mut Vec<ContentRef>) {
        if content.depth == 0 {
            out.extend_from_slice(&content.entries);
            return;
        }
        for entry in &content.entries {
            let child = Content::decode_list(&lists[&entry.id], content.depth - 1, "list").unwrap();
            assert_eq!(child.len(), entry.len);
            expand(&child, lists, out);
        }
    }

    proptest! {
        #[test]
        fn content_lists_expand_to_the_chunks_pushed(n in 0usize..2000, fanout in 2usize..40) {
            let hasher = BlobHasher::new([1; 32]);
            let mut builder = ContentBuilder::new(fanout, hasher.clone());
            let mut lists = Vec::new();
            let chunks: Vec<ContentRef> = (0..n)
                .map(|i| ContentRef { id: hasher.blob_id(crate::seal::ObjectKind::DataBlob, &i.to_le_bytes()), len: i as u64 % 7 + 1 })
                .collect();
            for c in &chunks {
                builder.push(*c, &mut lists);
            }
            let content = builder.finish(&mut lists);
            prop_assert!(content.entries.len() <= fanout.min(MAX_INLINE_REFS));
            let lists: HashMap<_, _> = lists.into_iter().collect();
            let mut expanded = Vec::new();
            expand(&content, &lists, &mut expanded);
            prop_assert_eq!(expanded, chunks);
        }
    }

    #[test]
    fn a_list_of_the_wrong_depth_is_refused() {
        let content = Content {
            depth: 2,
            entries: vec![],
        };
        let bytes = minicbor::to_vec(&content).unwrap();
        assert!(Content::decode_list(&bytes, 1, "x").is_err());
    }

    #[test]
    fn identical_trees_encode_identically() {
        let node = Node::stream_file(b"dump.sql", 5, 3, Content::default());
        let a = Tree {
            entries: vec![node.clone()],
        };
        let b = Tree {
            entries: vec![node],
        };
        assert_eq!(a.encode(), b.encode());
        assert_eq!(Tree::decode(&a.encode(), "t").unwrap(), a);
    }
}
