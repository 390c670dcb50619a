//! The assembler of a tree backup, and the trees above the backup paths.
//!
//! The assembler turns the walker's events into one tree blob per
//! directory, bottom-up, waiting for a file's result only when its
//! directory is complete. A directory whose entries equal its tree in the
//! parent snapshot keeps that tree's id instead of being encoded again;
//! that the id is still stored is checked when its parent completes, for
//! all of the parent's unchanged subdirectories in one catalog read.
//! Last, the trees from `/` down to the backup paths are built and stored.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::Receiver;

use super::{Event, ParentDir, Slot, Walk};
use crate::error::{Error, Result};
use crate::hash::BlobId;
use crate::seal::ObjectKind;
use crate::snapshot::{Node, NodeKind, Tree};
use crate::source::tree::{EntryStat, node_from_stat};

/// An entry of a directory still open in the assembler: ready, or waiting
/// on a file worker's slot (`bool`: the file counts as changed, not new).
enum Pending {
    Ready(Node),
    /// Entry `.0` of the directory's tree in the parent snapshot.
    Same(usize),
    File(Arc<Slot>, bool),
    Link(Node, Arc<Slot>, bool),
    /// A directory equal to its tree in the parent snapshot: the node
    /// names that tree's id, stored again from the tree if no usable copy
    /// is left.
    Unchanged(Node, Arc<Tree>),
}

/// Counts a file once its outcome is known: only files in the snapshot
/// count, and every name of a hard-linked file counts.
fn count_file(walk: &Walk, node: &Node, changed: bool) {
    let counter = if changed {
        &walk.counts.changed
    } else {
        &walk.counts.new
    };
    counter.fetch_add(1, Ordering::Relaxed);
    walk.counts.bytes.fetch_add(node.size, Ordering::Relaxed);
}

/// Resolves a pending entry to the node the tree gets, if any; an
/// unchanged directory's tree is stored again if it is in `missing`.
/// `previous`: the tree in the parent snapshot of the directory holding it.
fn resolve(
    walk: &Walk,
    pending: Pending,
    missing: &HashSet<BlobId>,
    previous: Option<&Tree>,
) -> Result<Option<Node>> {
    Ok(match pending {
        Pending::Ready(node) => Some(node),
        Pending::Same(index) => Some(
            previous
                .and_then(|tree| tree.entries.get(index))
                .cloned()
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "internal error: entry {index} of a previous tree is not there"
                    ))
                })?,
        ),
        Pending::Unchanged(mut node, tree) => {
            if node.subtree.is_some_and(|id| missing.contains(&id)) {
                // Trees encode canonically, so this is the same id; should
                // it not be (a tree written otherwise), the parent then
                // differs from its previous tree and is stored too.
                node.subtree = Some(store_tree(walk, Tree::clone(&tree))?);
            }
            Some(node)
        }
        Pending::File(slot, changed) => slot
            .wait(&walk.abort)?
            .inspect(|node| count_file(walk, node, changed)),
        Pending::Link(mut node, slot, changed) => slot.wait(&walk.abort)?.map(|first| {
            node.content = first.content;
            node.size = first.size;
            count_file(walk, &node, changed);
            node
        }),
    })
}

/// Turns walk events into tree blobs; returns each backup path's node.
pub(super) fn assemble(
    walk: &Walk,
    batches: &Receiver<Vec<Event>>,
    roots: usize,
) -> Result<Vec<Node>> {
    let mut out = Vec::with_capacity(roots);
    // frames[d] collects the entries of the open directory at depth d.
    let mut frames: Vec<Vec<Pending>> = Vec::new();
    let push = |frames: &mut Vec<Vec<Pending>>, depth: usize, pending: Pending| {
        if frames.len() < depth {
            frames.resize_with(depth, Vec::new);
        }
        frames[depth - 1].push(pending);
    };
    for event in batches.iter().flatten() {
        let (depth, pending) = match event {
            Event::Ready { depth, node } => (depth, Pending::Ready(node)),
            Event::Same { depth, index } => (depth, Pending::Same(index)),
            Event::File {
                depth,
                slot,
                changed,
            } => (depth, Pending::File(slot, changed)),
            Event::Link {
                depth,
                node,
                slot,
                changed,
            } => (depth, Pending::Link(node, slot, changed)),
            Event::DirEnd {
                depth,
                node,
                previous,
            } => {
                let children = if frames.len() > depth {
                    std::mem::take(&mut frames[depth])
                } else {
                    Vec::new()
                };
                frames.truncate(depth);
                (depth, complete_dir(walk, node, children, previous)?)
            }
        };
        if depth > 0 {
            push(&mut frames, depth, pending);
            continue;
        }
        // A backup path itself: a directory, a file, or a symlink.
        let missing = missing_trees(walk, std::slice::from_ref(&pending))?;
        match resolve(walk, pending, &missing, None)? {
            Some(node) => out.push(node),
            None => {
                return Err(Error::InvalidArgument(
                    "a path given to back up could not be read (see the warnings)".into(),
                ));
            }
        }
    }
    if walk.abort.is_set() || out.len() != roots {
        return Err(Error::Cancelled);
    }
    Ok(out)
}

/// The entry a completed directory gives its parent: `node` naming its
/// tree, built from `children` unless they are its tree in the parent
/// snapshot, `previous`. Unchanged since then: same tree, same id, no need
/// to encode and hash it. (Its blob must still be usable: one lost or found
/// damaged is stored again, see `missing_trees`.)
fn complete_dir(
    walk: &Walk,
    mut node: Node,
    children: Vec<Pending>,
    previous: Option<ParentDir>,
) -> Result<Pending> {
    let missing = missing_trees(walk, &children)?;
    if let Some((id, tree)) = &previous
        && same_entries(&children, tree, &missing)
    {
        node.subtree = Some(*id);
        return Ok(Pending::Unchanged(node, Arc::clone(tree)));
    }
    let mut entries = Vec::with_capacity(children.len());
    let tree = previous.as_ref().map(|(_, tree)| tree.as_ref());
    for child in children {
        entries.extend(resolve(walk, child, &missing, tree)?);
    }
    Ok(match previous {
        Some((id, tree)) if tree.entries == entries => {
            node.subtree = Some(id);
            Pending::Unchanged(node, tree)
        }
        _ => {
            node.subtree = Some(store_tree(walk, Tree { entries })?);
            Pending::Ready(node)
        }
    })
}

/// True if `children`, resolved, would be exactly the entries of
/// `previous`, told without building them: every file the same as its
/// previous entry, in place, and every other entry equal to it. An
/// unchanged subdirectory whose tree must be stored again is left to the
/// full comparison.
fn same_entries(children: &[Pending], previous: &Tree, missing: &HashSet<BlobId>) -> bool {
    children.len() == previous.entries.len()
        && children
            .iter()
            .zip(&previous.entries)
            .enumerate()
            .all(|(i, (child, entry))| match child {
                Pending::Same(index) => *index == i,
                Pending::Ready(node) => node == entry,
                Pending::Unchanged(node, _) => {
                    node.subtree.is_some_and(|id| !missing.contains(&id)) && node == entry
                }
                Pending::File(..) | Pending::Link(..) => false,
            })
}

/// The trees of the unchanged directories among `children` that have no
/// usable stored copy (lost with its pack, or found damaged). A tree read
/// from a cached pack the catalog listed as usable needs no lookup (see
/// [`crate::repo::CachedTrees::stored_usably`]); the others are looked up
/// in one catalog read.
fn missing_trees(walk: &Walk, children: &[Pending]) -> Result<HashSet<BlobId>> {
    let mut ids = children.iter().filter_map(|child| match child {
        Pending::Unchanged(node, _) => node.subtree.filter(|id| !walk.cached.stored_usably(id)),
        _ => None,
    });
    let Some(first) = ids.next() else {
        return Ok(HashSet::new());
    };
    walk.repo.catalog().reading(|catalog| {
        let mut missing = HashSet::new();
        for id in std::iter::once(first).chain(ids) {
            if !catalog.has_blob(&id)? {
                missing.insert(id);
            }
        }
        Ok(missing)
    })
}

fn store_tree(walk: &Walk, tree: Tree) -> Result<BlobId> {
    let bytes = tree.encode();
    let id = walk.repo.hasher().blob_id(ObjectKind::TreeBlob, &bytes);
    walk.writer
        .store(ObjectKind::TreeBlob, id, Bytes::from(bytes))?;
    Ok(id)
}

/// A directory on the way from `/` to the backup paths.
#[derive(Default)]
struct Intermediate {
    children: BTreeMap<Vec<u8>, Child>,
}

enum Child {
    Leaf(Box<Node>),
    Dir(Intermediate),
}

/// Places each path's node under its absolute path and stores the trees
/// from `/` down to them; returns the root tree id.
pub(super) fn build_root(walk: &Walk, paths: Vec<(PathBuf, Node)>) -> Result<BlobId> {
    let mut root = Intermediate::default();
    for (path, node) in paths {
        if path == Path::new("/") {
            // Backing up `/`: its own tree is the snapshot's root.
            return node
                .subtree
                .ok_or_else(|| Error::InvalidArgument("/ is not a directory".into()));
        }
        let mut dir = &mut root;
        let components: Vec<&OsStr> = path.iter().skip(1).collect();
        let (_, parents) = components
            .split_last()
            .expect("an absolute path other than / has a name");
        for name in parents {
            let child = dir
                .children
                .entry(name.as_bytes().to_vec())
                .or_insert_with(|| Child::Dir(Intermediate::default()));
            dir = match child {
                Child::Dir(d) => d,
                Child::Leaf(_) => unreachable!("check_paths refuses nested paths"),
            };
        }
        dir.children
            .insert(node.name.to_vec(), Child::Leaf(Box::new(node)));
    }
    store_intermediate(walk, Path::new("/"), root)
}

fn store_intermediate(walk: &Walk, path: &Path, dir: Intermediate) -> Result<BlobId> {
    let mut entries = Vec::with_capacity(dir.children.len());
    for (name, child) in dir.children {
        match child {
            Child::Leaf(node) => entries.push(*node),
            Child::Dir(sub) => {
                let sub_path = path.join(OsStr::from_bytes(&name));
                let meta =
                    std::fs::metadata(&sub_path).map_err(|e| Error::io("reading", &sub_path, e))?;
                let mut node = node_from_stat(
                    OsStr::from_bytes(&name),
                    &EntryStat::from(&meta),
                    NodeKind::Dir,
                    &walk.names,
                );
                node.subtree = Some(store_intermediate(walk, &sub_path, sub)?);
                entries.push(node);
            }
        }
    }
    store_tree(walk, Tree { entries })
}
