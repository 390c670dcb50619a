//! Backing up file trees.
//!
//! ```text
//! walker thread ──jobs──► file workers (read, chunk, hash, store) ──results──┐
//!   (openat/statat, sorted,                                                 │
//!    post-order, lstat,                                                     ▼
//!    parent reuse) ─────────────────────events (in walk order)──────► assembler ──► one tree blob per directory
//! ```
//!
//! The walker visits each tree sorted by name with a directory's contents
//! before the directory itself, never following symlinks (a backup path that
//! is itself a symlink is stored as that symlink). A file whose size,
//! modification time, status-change time and inode match its node in the
//! parent snapshot reuses that node's chunk list without being opened.
//! Other files go to a pool of workers, each of which reads a whole file
//! (every file starts a new chunk, and no two files share one) and stores its
//! chunks through the shared [`BlobWriter`]. The assembler turns the stream
//! of events into directory trees bottom-up, waiting for a file's result only
//! when its directory is complete. Unreadable entries, files that vanish, and
//! special files are warnings, never an abort.
//!
//! This module wires the stages together and holds what they share: the
//! walker and the file workers are in `walk`, the lookup of the parent
//! snapshot's trees in `parent`, and the assembler in `assemble`.

mod assemble;
mod parent;
mod walk;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::bounded;

use self::assemble::{assemble, build_root};
use self::parent::{ParentDir, ParentTrees, TreeLoader};
use self::walk::{FileJob, file_worker, walk_one};
use crate::chunker::Chunker;
use crate::config::FILES_PROFILE;
use crate::error::{Error, Result};
use crate::hash::BlobId;
use crate::ops::backup::join;
use crate::progress::Progress;
use crate::repo::{CachedTrees, Repo};
use crate::snapshot::Node;
use crate::source::tree::{Excludes, Names};
use crate::write::{Abort, BlobWriter, spawn_thread};

/// What to walk.
#[derive(Clone, Debug, Default)]
pub struct TreeInput {
    /// Absolute, checked paths (see [`crate::source::tree::check_paths`]).
    pub paths: Vec<PathBuf>,
    /// Exclude patterns.
    pub excludes: Excludes,
    /// Stay on the file system each path starts on.
    pub one_file_system: bool,
}

/// Counters of a tree backup.
#[derive(Debug, Default)]
pub struct FileCounts {
    /// Files not in the parent snapshot.
    pub new: AtomicU64,
    /// Files in the parent but changed, so read again.
    pub changed: AtomicU64,
    /// Files reused from the parent without reading.
    pub unchanged: AtomicU64,
    /// Directories.
    pub dirs: AtomicU64,
    /// Total size of the files backed up, read or reused.
    pub bytes: AtomicU64,
}

/// The result of one file: its node, or `None` if it was skipped with a
/// warning (unreadable, vanished).
struct Slot {
    value: Mutex<Option<Option<Node>>>,
    ready: Condvar,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            value: Mutex::new(None),
            ready: Condvar::new(),
        })
    }

    fn set(&self, node: Option<Node>) {
        *self.value.lock().expect("slot lock") = Some(node);
        self.ready.notify_all();
    }

    /// Waits for the result; gives up (with `Cancelled`) once the backup is
    /// aborting, since the worker may then never fill the slot.
    fn wait(&self, abort: &Abort) -> Result<Option<Node>> {
        let mut value = self.value.lock().expect("slot lock");
        loop {
            if let Some(node) = value.as_ref() {
                return Ok(node.clone());
            }
            if abort.is_set() {
                return Err(Error::Cancelled);
            }
            value = self
                .ready
                .wait_timeout(value, Duration::from_millis(50))
                .expect("slot lock")
                .0;
        }
    }
}

/// What the walker tells the assembler, in walk order.
enum Event {
    /// A finished entry of the directory at `depth - 1`.
    Ready { depth: usize, node: Node },
    /// An entry of the directory at `depth - 1` exactly as in the parent
    /// snapshot: entry `index` of the directory's previous tree (an
    /// unchanged file, see [`crate::source::tree::same_as_previous`]).
    Same { depth: usize, index: usize },
    /// A file being read; its node arrives in the slot. `changed`: the
    /// parent snapshot had it (so it counts as changed, not new).
    File {
        depth: usize,
        slot: Arc<Slot>,
        changed: bool,
    },
    /// Another name for a file being read (a hard link): this node's own
    /// name and metadata, the content from the slot.
    Link {
        depth: usize,
        node: Node,
        slot: Arc<Slot>,
        changed: bool,
    },
    /// Every entry of this directory has been sent.
    /// `previous`: the parent snapshot's tree for this directory, so an
    /// unchanged directory keeps its tree id without being encoded again.
    DirEnd {
        depth: usize,
        node: Node,
        previous: Option<ParentDir>,
    },
}

/// Shared state of one tree backup.
struct Walk {
    repo: Repo,
    writer: Arc<BlobWriter>,
    abort: Arc<Abort>,
    progress: Arc<Progress>,
    warnings: Arc<Mutex<Vec<String>>>,
    counts: Arc<FileCounts>,
    names: Names,
    /// The parent snapshot's trees found in the tree-pack cache.
    cached: Arc<CachedTrees>,
}

impl Walk {
    fn warn(&self, message: String) {
        self.warnings.lock().expect("warnings lock").push(message);
    }
}

/// Backs up `input`; returns the root tree id.
pub(super) async fn backup_tree(
    repo: &Repo,
    input: &TreeInput,
    parent_root: Option<BlobId>,
    run: &super::Run,
) -> Result<BlobId> {
    let (writer, abort, progress, warnings, counts) = (
        &run.writer,
        &run.abort,
        &run.progress,
        &run.warnings,
        &run.counts,
    );
    for path in &input.paths {
        std::fs::symlink_metadata(path).map_err(|e| Error::io("reading", path, e))?;
    }
    let walk = Arc::new(Walk {
        repo: repo.clone(),
        writer: Arc::clone(writer),
        abort: Arc::clone(abort),
        progress: Arc::clone(progress),
        warnings: Arc::clone(warnings),
        counts: Arc::clone(counts),
        names: Names::default(),
        cached: Arc::new(CachedTrees::new(repo)),
    });
    let profile = repo.config().profile(FILES_PROFILE)?.clone();
    let chunker = Chunker::new(&profile, repo.config().chunker_seed);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Reading many small files is as much waiting on the disk as work, so
    // more readers than cores.
    let readers = (2 * cores).max(4);
    // Jobs travel in batches (`JOB_BATCH` files); enough queued to keep
    // every reader busy while the walker waits for a scan.
    let (job_tx, job_rx) = bounded::<Vec<FileJob>>(readers);
    // Events travel in batches: one hand-off per entry cost more than the
    // re-scan's real work (a stat and a lookup per file).
    let (event_tx, event_rx) = bounded::<Vec<Event>>(64);

    let mut workers = Vec::new();
    for i in 0..readers {
        let walk = Arc::clone(&walk);
        let rx = job_rx.clone();
        let chunker = chunker.clone();
        let fanout = repo.config().list_fanout as usize;
        workers.push(spawn_thread(&format!("larder-file-{i}"), move || {
            file_worker(&walk, &rx, &chunker, fanout)
        })?);
    }
    drop(job_rx);

    let (loader, parent_loads) = TreeLoader::start(repo, Arc::clone(&walk.cached));
    let walker = {
        let walk = Arc::clone(&walk);
        let input = input.clone();
        spawn_thread("larder-walk", move || {
            let mut parents = ParentTrees::new(parent_root, loader);
            for path in &input.paths {
                if walk.abort.is_set() {
                    break;
                }
                walk_one(&walk, path, &input, &mut parents, &job_tx, &event_tx);
            }
        })?
    };
    let assembler = {
        let walk = Arc::clone(&walk);
        let count = input.paths.len();
        // A failure is recorded as the root cause; the caller reports it.
        tokio::task::spawn_blocking(move || {
            assemble(&walk, &event_rx, count).map_err(|e| walk.abort.fail(e))
        })
    };
    let roots = assembler.await.expect("assembler panicked");
    join(walker).await;
    // Done once the walker has dropped its loader; a panic there is the
    // walker's, as it was when the walker loaded trees itself.
    if let Err(e) = parent_loads.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    for w in workers {
        join(w).await;
    }
    let Ok(roots) = roots else {
        return Err(Error::Cancelled);
    };
    let paths: Vec<(PathBuf, Node)> = input.paths.iter().cloned().zip(roots).collect();
    let walk = Arc::clone(&walk);
    tokio::task::spawn_blocking(move || build_root(&walk, paths))
        .await
        .expect("building the root panicked")
}
