//! Backing up file trees.
//!
//! ```text
//! walker thread ──jobs──► file workers (read, chunk, hash, store) ──results──┐
//!   (walkdir, sorted,                                                       │
//!    post-order, lstat,                                                     ▼
//!    parent reuse) ─────────────────────events (in walk order)──────► assembler ──► one tree blob per directory
//! ```
//!
//! The walker visits each tree sorted by name with a directory's contents
//! before the directory itself, never following symlinks. A file whose size,
//! modification time, status-change time and inode match its node in the
//! parent snapshot reuses that node's chunk list without being opened.
//! Other files go to a pool of workers, each of which reads a whole file
//! (every file starts a new chunk, and no two files share one) and stores its
//! chunks through the shared [`BlobWriter`]. The assembler turns the stream
//! of events into directory trees bottom-up, waiting for a file's result only
//! when its directory is complete. Unreadable entries, files that vanish, and
//! special files are warnings, never an abort.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use minicbor::bytes::ByteVec;

use crate::chunker::Chunker;
use crate::config::FILES_PROFILE;
use crate::error::{Error, Result};
use crate::hash::BlobId;
use crate::ops::backup::join;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::seal::ObjectKind;
use crate::snapshot::{ContentBuilder, ContentRef, Node, NodeKind, Tree};
use crate::source::tree::{EntryStat, Excludes, Names, is_unchanged, node_from_stat, node_kind};
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

struct FileJob {
    path: PathBuf,
    node: Node,
    slot: Arc<Slot>,
}

enum Event {
    /// A finished entry of the directory at `depth - 1`.
    Ready { depth: usize, node: Node },
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
    });
    let profile = repo.config().profile(FILES_PROFILE)?.clone();
    let chunker = Chunker::new(&profile, repo.config().chunker_seed);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Reading many small files is as much waiting on the disk as work, so
    // more readers than cores.
    let readers = (2 * cores).max(4);
    let (job_tx, job_rx) = bounded::<FileJob>(4 * readers);
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

    let walker = {
        let walk = Arc::clone(&walk);
        let input = input.clone();
        let handle = tokio::runtime::Handle::current();
        spawn_thread("larder-walk", move || {
            let mut parents = ParentTrees::new(parent_root, handle);
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

/// The parent snapshot's trees along the current walk position, loaded on
/// demand (from the local tree-pack cache after the first backup).
struct ParentTrees {
    root: Option<BlobId>,
    handle: tokio::runtime::Handle,
    // Invariant: each entry's path is a prefix of the next one's.
    stack: Vec<(PathBuf, Option<ParentDir>)>,
}

/// A directory of the parent snapshot: its tree and the tree's id.
type ParentDir = (BlobId, Arc<Tree>);

impl ParentTrees {
    fn new(root: Option<BlobId>, handle: tokio::runtime::Handle) -> ParentTrees {
        ParentTrees {
            root,
            handle,
            stack: Vec::new(),
        }
    }

    /// The parent snapshot's tree for directory `dir` (absolute), if any.
    fn tree_for(&mut self, repo: &Repo, dir: &Path) -> Option<Arc<Tree>> {
        self.dir_for(repo, dir).map(|(_, tree)| tree)
    }

    /// The parent snapshot's tree (and its id) for directory `dir`.
    fn dir_for(&mut self, repo: &Repo, dir: &Path) -> Option<ParentDir> {
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

/// Walks one backup path, sending jobs and events.
fn walk_one(
    walk: &Walk,
    root: &Path,
    input: &TreeInput,
    parents: &mut ParentTrees,
    jobs: &Sender<FileJob>,
    events: &Sender<Vec<Event>>,
) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    walk_entries(walk, root, input, parents, jobs, &mut |event| {
        batch.push(event);
        if batch.len() < EVENT_BATCH {
            return true;
        }
        events
            .send(std::mem::replace(
                &mut batch,
                Vec::with_capacity(EVENT_BATCH),
            ))
            .is_ok()
    });
    if !batch.is_empty() {
        let _ = events.send(batch);
    }
}

/// Events per batch sent from the walker to the assembler.
const EVENT_BATCH: usize = 256;

/// Walks one backup path, sending jobs, and handing each event to `emit`
/// (which returns false once nobody listens).
fn walk_entries(
    walk: &Walk,
    root: &Path,
    input: &TreeInput,
    parents: &mut ParentTrees,
    jobs: &Sender<FileJob>,
    emit: &mut dyn FnMut(Event) -> bool,
) {
    let excludes = input.excludes.clone();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .same_file_system(input.one_file_system)
        .sort_by_file_name()
        // Pre-order: `filter_entry` prunes an excluded directory before its
        // contents are visited. (With walkdir's post-order it sees the
        // directory only after its contents, and skipping it then skips the
        // rest of the parent.) Directory ends are emitted below instead.
        .into_iter()
        .filter_entry(move |e| e.depth() == 0 || !excludes.is_excluded(e.path()));
    // Directories entered but not yet complete, innermost last: a directory
    // is complete once the walk reaches an entry no deeper than itself.
    let mut open: Vec<(usize, Node, PathBuf)> = Vec::new();
    // Hard-linked files seen so far: (device, inode) -> the first one's slot.
    let mut links: HashMap<(u64, u64), Arc<Slot>> = HashMap::new();
    // The directory the current entries live in, open for `statat`.
    let mut dir_fd: Option<(PathBuf, std::os::fd::OwnedFd)> = None;
    for entry in walker {
        if walk.abort.is_set() {
            return;
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let reason = e
                    .io_error()
                    .map_or_else(|| e.to_string(), ToString::to_string);
                walk.warn(format!("{path}: {reason}; not backed up"));
                continue;
            }
        };
        let path = entry.path();
        let depth = entry.depth();
        while open.last().is_some_and(|(d, _, _)| *d >= depth) {
            let (d, node, dir) = open.pop().expect("checked");
            let previous = parents.dir_for(&walk.repo, &dir);
            if !emit(Event::DirEnd {
                depth: d,
                node,
                previous,
            }) {
                return;
            }
        }
        let stat = match stat_entry(&mut dir_fd, path, depth) {
            Ok(stat) => stat,
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "vanished during the backup".to_string()
                } else {
                    e.to_string()
                };
                walk.warn(format!("{}: {why}; not backed up", path.display()));
                continue;
            }
        };
        let name = if depth == 0 {
            root.file_name().unwrap_or(OsStr::new("/"))
        } else {
            entry.file_name()
        };
        let Some(kind) = node_kind(&stat) else {
            walk.warn(format!(
                "{}: special file (FIFO, socket or device) skipped",
                path.display()
            ));
            continue;
        };
        let mut node = node_from_stat(name, &stat, kind, &walk.names);
        let event = match kind {
            NodeKind::Dir => {
                walk.counts.dirs.fetch_add(1, Ordering::Relaxed);
                open.push((depth, node, path.to_path_buf()));
                continue;
            }
            NodeKind::Symlink => match std::fs::read_link(path) {
                Ok(target) => {
                    node.target = Some(ByteVec::from(target.as_os_str().as_bytes().to_vec()));
                    Event::Ready { depth, node }
                }
                Err(e) => {
                    walk.warn(format!("{}: {e}; not backed up", path.display()));
                    continue;
                }
            },
            NodeKind::File => {
                let previous = path
                    .parent()
                    .and_then(|dir| parents.tree_for(&walk.repo, dir))
                    .and_then(|tree| tree.get(name.as_bytes()).cloned());
                match &previous {
                    Some(previous) if is_unchanged(previous, &node) => {
                        node.content = previous.content.clone();
                        walk.counts.unchanged.fetch_add(1, Ordering::Relaxed);
                        walk.counts.bytes.fetch_add(node.size, Ordering::Relaxed);
                        Progress::add(&walk.progress.items_done, 1);
                        Event::Ready { depth, node }
                    }
                    _ => {
                        let changed = previous.is_some();
                        let key = (stat.dev, stat.ino);
                        match links.get(&key).filter(|_| stat.nlink > 1) {
                            Some(slot) => Event::Link {
                                depth,
                                node,
                                slot: Arc::clone(slot),
                                changed,
                            },
                            None => {
                                let slot = Slot::new();
                                if stat.nlink > 1 {
                                    links.insert(key, Arc::clone(&slot));
                                }
                                let job = FileJob {
                                    path: path.to_path_buf(),
                                    node,
                                    slot: Arc::clone(&slot),
                                };
                                if jobs.send(job).is_err() {
                                    return;
                                }
                                Event::File {
                                    depth,
                                    slot,
                                    changed,
                                }
                            }
                        }
                    }
                }
            }
        };
        if !emit(event) {
            return;
        }
    }
    while let Some((depth, node, dir)) = open.pop() {
        let previous = parents.dir_for(&walk.repo, &dir);
        if !emit(Event::DirEnd {
            depth,
            node,
            previous,
        }) {
            return;
        }
    }
}

/// `lstat`s a walked entry relative to its directory's descriptor (opened
/// once per directory), falling back to the full path for the walk's root.
fn stat_entry(
    dir_fd: &mut Option<(PathBuf, std::os::fd::OwnedFd)>,
    path: &Path,
    depth: usize,
) -> std::io::Result<EntryStat> {
    let (Some(parent), Some(name), true) = (path.parent(), path.file_name(), depth > 0) else {
        return EntryStat::of_path(path);
    };
    if dir_fd
        .as_ref()
        .is_none_or(|(dir, _)| dir.as_os_str() != parent.as_os_str())
    {
        let fd = rustix::fs::open(
            parent,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        *dir_fd = Some((parent.to_path_buf(), fd));
    }
    EntryStat::at(&dir_fd.as_ref().expect("set above").1, name)
}

/// Reads whole files and stores their chunks.
fn file_worker(walk: &Walk, jobs: &Receiver<FileJob>, chunker: &Chunker, fanout: usize) {
    for job in jobs {
        if walk.abort.is_set() {
            job.slot.set(None);
            continue;
        }
        match read_file(walk, &job.path, job.node, chunker, fanout) {
            Ok(node) => job.slot.set(node),
            Err(e) => {
                job.slot.set(None);
                walk.abort.fail(e);
            }
        }
    }
}

/// Reads one file into the repository. `Ok(None)` means it was skipped with
/// a warning; `Err` is fatal to the backup (storage failed).
fn read_file(
    walk: &Walk,
    path: &Path,
    mut node: Node,
    chunker: &Chunker,
    fanout: usize,
) -> Result<Option<Node>> {
    // O_NOFOLLOW: if the file was swapped for a symlink since it was listed,
    // refuse rather than read whatever it points to.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "vanished during the backup".to_string(),
                _ => e.to_string(),
            };
            walk.warn(format!("{}: {why}; not backed up", path.display()));
            return Ok(None);
        }
    };
    let before = match file.metadata() {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => {
            walk.warn(format!(
                "{}: no longer a regular file; not backed up",
                path.display()
            ));
            return Ok(None);
        }
        Err(e) => {
            walk.warn(format!("{}: {e}; not backed up", path.display()));
            return Ok(None);
        }
    };
    let mut builder = ContentBuilder::new(fanout, walk.repo.hasher().clone());
    let mut lists = Vec::new();
    let mut size = 0u64;
    for chunk in chunker.chunks_with_hint(&file, Some(before.size())) {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                walk.warn(format!(
                    "{}: reading failed: {e}; not backed up",
                    path.display()
                ));
                return Ok(None);
            }
        };
        let len = chunk.len() as u64;
        size += len;
        Progress::add(&walk.progress.bytes_processed, len);
        let id = walk.repo.hasher().blob_id(ObjectKind::DataBlob, &chunk);
        walk.writer.store(ObjectKind::DataBlob, id, chunk)?;
        builder.push(ContentRef { id, len }, &mut lists);
        for (list_id, bytes) in lists.drain(..) {
            walk.writer
                .store(ObjectKind::ListBlob, list_id, Bytes::from(bytes))?;
        }
    }
    let content = builder.finish(&mut lists);
    for (list_id, bytes) in lists {
        walk.writer
            .store(ObjectKind::ListBlob, list_id, Bytes::from(bytes))?;
    }
    let after = file.metadata().ok();
    // Deleted while open: its content stays readable and was read whole,
    // but unlinking changed its status time, which is not a content change.
    let deleted = after.as_ref().is_some_and(|a| a.nlink() == 0);
    let changed = match &after {
        Some(after) => {
            after.size() != before.size()
                || after.mtime() != before.mtime()
                || after.mtime_nsec() != before.mtime_nsec()
                || (!deleted
                    && (after.ctime() != before.ctime()
                        || after.ctime_nsec() != before.ctime_nsec()))
                || size != before.size()
        }
        None => true,
    };
    // Record what was read: the size of the content, the metadata from
    // before the read (so a change after it is seen next time).
    let fresh = node_from_stat(
        OsStr::from_bytes(&node.name),
        &EntryStat::from(&before),
        NodeKind::File,
        &walk.names,
    );
    node = Node {
        size,
        content: Some(content),
        changed_while_reading: changed.then_some(true),
        ..fresh
    };
    if changed {
        walk.warn(format!(
            "{}: changed while it was being read; the stored copy may be inconsistent",
            path.display()
        ));
    } else if deleted {
        walk.warn(format!(
            "{}: vanished (was deleted) while it was being read; stored as it was",
            path.display()
        ));
    }
    Progress::add(&walk.progress.items_done, 1);
    Ok(Some(node))
}

enum Pending {
    Ready(Node),
    File(Arc<Slot>, bool),
    Link(Node, Arc<Slot>, bool),
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

/// Resolves a pending entry to the node the tree gets, if any.
fn resolve(walk: &Walk, pending: Pending) -> Result<Option<Node>> {
    Ok(match pending {
        Pending::Ready(node) => Some(node),
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
fn assemble(walk: &Walk, batches: &Receiver<Vec<Event>>, roots: usize) -> Result<Vec<Node>> {
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
                mut node,
                previous,
            } => {
                let children = if frames.len() > depth {
                    std::mem::take(&mut frames[depth])
                } else {
                    Vec::new()
                };
                frames.truncate(depth);
                let mut entries = Vec::with_capacity(children.len());
                for child in children {
                    entries.extend(resolve(walk, child)?);
                }
                // Unchanged since the parent snapshot: same tree, same id,
                // already stored; no need to encode, hash and look it up.
                // (Its blob must still be usable: one found damaged is
                // stored again through the normal path.)
                node.subtree = Some(match previous {
                    Some((id, tree))
                        if tree.entries == entries && walk.repo.catalog().has_blob(&id)? =>
                    {
                        id
                    }
                    _ => store_tree(walk, Tree { entries })?,
                });
                (depth, Pending::Ready(node))
            }
        };
        if depth > 0 {
            push(&mut frames, depth, pending);
            continue;
        }
        // A backup path itself: a directory, a file, or a symlink.
        match resolve(walk, pending)? {
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
fn build_root(walk: &Walk, paths: Vec<(PathBuf, Node)>) -> Result<BlobId> {
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
