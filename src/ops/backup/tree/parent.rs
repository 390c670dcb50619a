//! The parent snapshot's trees, looked up along the walk so the walker can
//! tell unchanged files and the assembler unchanged directories.
//!
//! The walker is a plain thread and never blocks on the runtime: a tree
//! whose pack is in the local tree-pack cache (as after any earlier backup
//! from this cache) is read and opened on the walker thread itself, found
//! through the cached pack's header ([`CachedTrees`]); any
//! other is asked of an async task through a channel, which loads it with
//! [`Repo::load_tree`] and answers on a oneshot channel.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::hash::BlobId;
use crate::repo::{CachedTrees, Repo};
use crate::snapshot::{NodeKind, Tree};

/// The parent snapshot's trees along the current walk position, loaded on
/// demand (from the local tree-pack cache after the first backup).
pub(super) struct ParentTrees {
    root: Option<BlobId>,
    loader: TreeLoader,
    // Invariant: each entry's path is a prefix of the next one's.
    stack: Vec<(PathBuf, Option<ParentDir>)>,
}

/// A directory of the parent snapshot: its tree and the tree's id.
pub(super) type ParentDir = (BlobId, Arc<Tree>);

impl ParentTrees {
    pub(super) fn new(root: Option<BlobId>, loader: TreeLoader) -> ParentTrees {
        ParentTrees {
            root,
            loader,
            stack: Vec::new(),
        }
    }

    /// The tree `id` of the parent snapshot, if it can be loaded.
    pub(super) fn load(&self, id: &BlobId) -> Option<Tree> {
        self.root?;
        self.loader.load(id)
    }

    /// A loader for other threads, if there is a parent snapshot.
    pub(super) fn loader(&self) -> Option<TreeLoader> {
        self.root.map(|_| self.loader.clone())
    }

    /// The parent snapshot's tree for directory `dir` (absolute), if any.
    pub(super) fn tree_for(&mut self, dir: &Path) -> Option<Arc<Tree>> {
        self.dir_for(dir).map(|(_, tree)| tree)
    }

    /// The parent snapshot's tree (and its id) for directory `dir`.
    pub(super) fn dir_for(&mut self, dir: &Path) -> Option<ParentDir> {
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
            let tree = self.loader.load(&root).map(|t| (root, Arc::new(t)));
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
                    self.loader.load(&subtree).map(|t| (subtree, Arc::new(t)))
                });
            self.stack.push((child_path, child));
        }
    }
}

/// A request to the loading task: a tree id, and where to send the tree
/// (`None` if it could not be loaded).
type Request = (BlobId, oneshot::Sender<Option<Tree>>);

/// Loads the parent snapshot's trees for the walker thread (and the
/// threads scanning ahead of it); see the module docs.
#[derive(Clone)]
pub(super) struct TreeLoader {
    cached: Arc<CachedTrees>,
    requests: mpsc::Sender<Request>,
}

impl TreeLoader {
    /// A loader, and the task answering its requests, which ends once the
    /// loader is dropped. Call from within the runtime.
    pub(super) fn start(
        repo: &Repo,
        cached: Arc<CachedTrees>,
    ) -> (TreeLoader, tokio::task::JoinHandle<()>) {
        // Each asker waits for its answer: the walker and the scanners.
        let (requests, mut incoming) = mpsc::channel::<Request>(4);
        let task = {
            let repo = repo.clone();
            tokio::spawn(async move {
                while let Some((id, answer)) = incoming.recv().await {
                    // A walker that stopped waiting needs no answer.
                    let _ = answer.send(repo.load_tree(&id).await.ok());
                }
            })
        };
        let loader = TreeLoader { cached, requests };
        (loader, task)
    }

    /// The tree `id`, or `None` if it cannot be loaded (nothing below it
    /// then counts as unchanged). Blocks: call from the walker thread, never
    /// from async code.
    pub(super) fn load(&self, id: &BlobId) -> Option<Tree> {
        if let Some(tree) = self.cached.load(id) {
            return Some(tree);
        }
        let (answer, answered) = oneshot::channel();
        self.requests.blocking_send((*id, answer)).ok()?;
        answered.blocking_recv().ok().flatten()
    }
}
