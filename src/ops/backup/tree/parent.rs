//! The parent snapshot's trees, looked up along the walk so the walker can
//! tell unchanged files and the assembler unchanged directories.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hash::BlobId;
use crate::repo::Repo;
use crate::snapshot::{NodeKind, Tree};

/// The parent snapshot's trees along the current walk position, loaded on
/// demand (from the local tree-pack cache after the first backup).
pub(super) struct ParentTrees {
    root: Option<BlobId>,
    handle: tokio::runtime::Handle,
    // Invariant: each entry's path is a prefix of the next one's.
    stack: Vec<(PathBuf, Option<ParentDir>)>,
}

/// A directory of the parent snapshot: its tree and the tree's id.
pub(super) type ParentDir = (BlobId, Arc<Tree>);

impl ParentTrees {
    pub(super) fn new(root: Option<BlobId>, handle: tokio::runtime::Handle) -> ParentTrees {
        ParentTrees {
            root,
            handle,
            stack: Vec::new(),
        }
    }

    /// The parent snapshot's tree for directory `dir` (absolute), if any.
    pub(super) fn tree_for(&mut self, repo: &Repo, dir: &Path) -> Option<Arc<Tree>> {
        self.dir_for(repo, dir).map(|(_, tree)| tree)
    }

    /// The parent snapshot's tree (and its id) for directory `dir`.
    pub(super) fn dir_for(&mut self, repo: &Repo, dir: &Path) -> Option<ParentDir> {
        let root = self.root?;
        // Fast path: most lookups are for the directory just looked up.
        if let Some((top, found)) = self.stack.last()
            && top.as_os_str() == dir.as_os_str()
        {
            return found.clone();
        }
        while let Some((top, _)) = self.stack.last() {
            if dir.starts_with(top) {
                break;
            }
            self.stack.pop();
        }
        if self.stack.is_empty() {
            let tree = self
                .handle
                .block_on(repo.load_tree(&root))
                .ok()
                .map(|t| (root, Arc::new(t)));
            self.stack.push((PathBuf::from("/"), tree));
        }
        loop {
            let (top, found) = self.stack.last().expect("root pushed above");
            if top == dir {
                return found.clone();
            }
            let rest = dir.strip_prefix(top).expect("stack holds ancestors of dir");
            let name = rest
                .components()
                .next()
                .expect("dir is below top")
                .as_os_str();
            let child_path = top.join(name);
            let child = found
                .as_ref()
                .and_then(|(_, t)| t.get(name.as_bytes()))
                .and_then(|node| {
                    let subtree = node.subtree.filter(|_| node.kind == NodeKind::Dir)?;
                    self.handle
                        .block_on(repo.load_tree(&subtree))
                        .ok()
                        .map(|t| (subtree, Arc::new(t)))
                });
            self.stack.push((child_path, child));
        }
    }
}
