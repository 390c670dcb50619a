//! The walker and the file workers of a tree backup.
//!
//! The walker visits each backup path sorted by name (never following
//! symlinks, pruning excluded directories, optionally on one file system,
//! where a mount point is kept as an empty directory), holds one open
//! descriptor per directory level, `lstat`s each entry relative to it, and
//! emits events in walk order, each directory after its contents. A file
//! unchanged since the parent snapshot reuses its chunk list; any other goes
//! to the file workers, which read it whole, chunk and hash it, and store
//! its chunks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use minicbor::bytes::ByteVec;
use rustix::fs::{Dir, Mode, OFlags};

use super::parent::{ParentDir, ParentTrees};
use super::{Event, Slot, TreeInput, Walk};
use crate::chunker::Chunker;
use crate::error::Result;
use crate::progress::Progress;
use crate::seal::ObjectKind;
use crate::snapshot::{ContentBuilder, ContentRef, Node, NodeKind};
use crate::source::tree::{EntryStat, Excludes, is_unchanged, node_from_stat, node_kind};
use crate::write::Batch;

/// A file for the workers to read; its node goes into `slot`.
pub(super) struct FileJob {
    path: PathBuf,
    node: Node,
    slot: Arc<Slot>,
}

/// Walks one backup path, sending jobs and events.
pub(super) fn walk_one(
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
///
/// The walk keeps one open descriptor per directory level and works with
/// names relative to it (`openat`, `statat`, `readlinkat`): no entry's path
/// is resolved from `/` again, and full paths are built in one buffer only
/// for exclude patterns, file jobs and warnings.
fn walk_entries(
    walk: &Walk,
    root: &Path,
    input: &TreeInput,
    parents: &mut ParentTrees,
    jobs: &Sender<FileJob>,
    emit: &mut dyn FnMut(Event) -> bool,
) {
    let stat = match EntryStat::of_path(root) {
        Ok(stat) => stat,
        Err(e) => {
            walk.warn(format!("{}: {e}; not backed up", root.display()));
            return;
        }
    };
    let name = root.file_name().unwrap_or(OsStr::new("/"));
    let Some(kind) = node_kind(&stat) else {
        walk.warn(format!(
            "{}: special file (FIFO, socket or device) skipped",
            root.display()
        ));
        return;
    };
    let mut walker = Walker {
        walk,
        excludes: &input.excludes,
        root_dev: input.one_file_system.then_some(stat.dev),
        parents,
        jobs,
        path: root.as_os_str().as_bytes().to_vec(),
        links: HashMap::new(),
    };
    if kind != NodeKind::Dir {
        let previous = root
            .parent()
            .and_then(|dir| walker.parents.tree_for(dir))
            .and_then(|tree| tree.get(name.as_bytes()).cloned());
        let dir = root.parent().and_then(|dir| {
            rustix::fs::open(
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
        });
        let dir = dir.as_ref().map(AsFd::as_fd);
        if let Some(event) = walker.entry(dir, 0, name, stat, kind, previous) {
            emit(event);
        }
        return;
    }
    walk.counts.dirs.fetch_add(1, Ordering::Relaxed);
    let node = node_from_stat(name, &stat, kind, &walk.names);
    let previous = walker.parents.dir_for(root);
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let mut frames = vec![walker.frame(fd, 0, node, previous, root.as_os_str().len())];
    while let Some(frame) = frames.last_mut() {
        if walk.abort.is_set() {
            return;
        }
        let Some(name) = frame.names.get(frame.next) else {
            let frame = frames.pop().expect("looked at above");
            walker.path.truncate(frame.path_len);
            let event = Event::DirEnd {
                depth: frame.depth,
                node: frame.node,
                previous: frame.previous,
            };
            if !emit(event) {
                return;
            }
            continue;
        };
        frame.next += 1;
        let name = OsStr::from_bytes(name);
        let depth = frame.depth + 1;
        let dir_len = walker.path.len();
        walker.push_name(name);
        let event = walker.visit(frame, depth, name);
        match event {
            Visit::Skip => walker.path.truncate(dir_len),
            Visit::Event(event) => {
                walker.path.truncate(dir_len);
                if !emit(event) {
                    return;
                }
            }
            // The path stays extended: it is the new frame's directory.
            Visit::Enter(fd, node, previous) => {
                let frame = walker.frame(fd, depth, node, previous, dir_len);
                frames.push(frame);
            }
        }
    }
}

/// What the walk does with one directory entry.
enum Visit {
    /// Nothing (excluded, vanished, unreadable, special).
    Skip,
    /// A finished or pending entry of the current directory.
    Event(Event),
    /// A directory to descend into: its descriptor (or why it could not be
    /// opened), its node and its tree in the parent snapshot.
    Enter(rustix::io::Result<OwnedFd>, Node, Option<ParentDir>),
}

/// A directory being walked.
struct Frame {
    /// Open for `statat`, `openat` and `readlinkat`; `None` if it could not
    /// be opened or read (it is then stored empty, with a warning).
    dir: Option<Dir>,
    /// Its entries' names, sorted bytewise.
    names: Vec<Vec<u8>>,
    /// The next name to visit.
    next: usize,
    depth: usize,
    node: Node,
    previous: Option<ParentDir>,
    /// The length of the path buffer without this directory's name.
    path_len: usize,
}

/// The state of one backup path's walk.
struct Walker<'a> {
    walk: &'a Walk,
    excludes: &'a Excludes,
    /// With `--one-file-system`, the root's device.
    root_dev: Option<u64>,
    parents: &'a mut ParentTrees,
    jobs: &'a Sender<FileJob>,
    /// The current entry's absolute path.
    path: Vec<u8>,
    /// Hard-linked files seen so far: (device, inode) -> the first one's slot.
    links: HashMap<(u64, u64), Arc<Slot>>,
}

impl Walker<'_> {
    fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.path))
    }

    fn push_name(&mut self, name: &OsStr) {
        if self.path.last() != Some(&b'/') {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name.as_bytes());
    }

    /// A frame for a directory just opened (or not): reads its names.
    fn frame(
        &self,
        fd: rustix::io::Result<OwnedFd>,
        depth: usize,
        node: Node,
        previous: Option<ParentDir>,
        path_len: usize,
    ) -> Frame {
        let (dir, names) = match fd.and_then(read_names) {
            Ok((dir, names)) => (Some(dir), names),
            Err(e) => {
                let e = std::io::Error::from(e);
                self.walk
                    .warn(format!("{}: {e}; not backed up", self.path().display()));
                (None, Vec::new())
            }
        };
        Frame {
            dir,
            names,
            next: 0,
            depth,
            node,
            previous,
            path_len,
        }
    }

    /// Visits the entry `name` of `frame` (the path buffer holds its path).
    fn visit(&mut self, frame: &Frame, depth: usize, name: &OsStr) -> Visit {
        let walk = self.walk;
        if self.excludes.is_excluded(self.path()) {
            return Visit::Skip;
        }
        let fd = frame
            .dir
            .as_ref()
            .expect("a directory without a descriptor has no names")
            .fd()
            .expect("a directory read has a descriptor");
        let stat = match EntryStat::at(fd, name) {
            Ok(stat) => stat,
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "vanished during the backup".to_string()
                } else {
                    e.to_string()
                };
                walk.warn(format!("{}: {why}; not backed up", self.path().display()));
                return Visit::Skip;
            }
        };
        let Some(kind) = node_kind(&stat) else {
            walk.warn(format!(
                "{}: special file (FIFO, socket or device) skipped",
                self.path().display()
            ));
            return Visit::Skip;
        };
        let previous = frame
            .previous
            .as_ref()
            .and_then(|(_, tree)| tree.get(name.as_bytes()));
        if kind == NodeKind::Dir {
            walk.counts.dirs.fetch_add(1, Ordering::Relaxed);
            let node = node_from_stat(name, &stat, kind, &walk.names);
            let previous = previous
                .and_then(|node| node.subtree.filter(|_| node.kind == NodeKind::Dir))
                .and_then(|id| self.parents.load(&id).map(|tree| (id, Arc::new(tree))));
            // Another file system with --one-file-system: the directory is
            // kept, empty, as a mount point.
            let fd = if self.root_dev.is_some_and(|dev| dev != stat.dev) {
                Ok(None)
            } else {
                rustix::fs::openat(
                    fd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map(Some)
            };
            return match fd {
                Ok(Some(fd)) => Visit::Enter(Ok(fd), node, previous),
                Ok(None) => Visit::Event(Event::DirEnd {
                    depth,
                    node,
                    previous,
                }),
                Err(e) => Visit::Enter(Err(e), node, previous),
            };
        }
        let previous = previous.cloned();
        match self.entry(Some(fd), depth, name, stat, kind, previous) {
            Some(event) => Visit::Event(event),
            None => Visit::Skip,
        }
    }

    /// The event for a file or symlink `name` in the directory `dir`.
    fn entry(
        &mut self,
        dir: Option<BorrowedFd<'_>>,
        depth: usize,
        name: &OsStr,
        stat: EntryStat,
        kind: NodeKind,
        previous: Option<Node>,
    ) -> Option<Event> {
        let walk = self.walk;
        let mut node = node_from_stat(name, &stat, kind, &walk.names);
        if kind == NodeKind::Symlink {
            let target = match dir {
                Some(dir) => rustix::fs::readlinkat(dir, name, Vec::new())
                    .map(|t| t.into_bytes())
                    .map_err(std::io::Error::from),
                None => std::fs::read_link(self.path()).map(|t| t.into_os_string().into_vec()),
            };
            return match target {
                Ok(target) => {
                    node.target = Some(ByteVec::from(target));
                    Some(Event::Ready { depth, node })
                }
                Err(e) => {
                    walk.warn(format!("{}: {e}; not backed up", self.path().display()));
                    None
                }
            };
        }
        if let Some(previous) = &previous
            && is_unchanged(previous, &node)
        {
            node.content = previous.content.clone();
            walk.counts.unchanged.fetch_add(1, Ordering::Relaxed);
            walk.counts.bytes.fetch_add(node.size, Ordering::Relaxed);
            Progress::add(&walk.progress.items_done, 1);
            return Some(Event::Ready { depth, node });
        }
        let changed = previous.is_some();
        let key = (stat.dev, stat.ino);
        if let Some(slot) = self.links.get(&key).filter(|_| stat.nlink > 1) {
            return Some(Event::Link {
                depth,
                node,
                slot: Arc::clone(slot),
                changed,
            });
        }
        let slot = Slot::new();
        if stat.nlink > 1 {
            self.links.insert(key, Arc::clone(&slot));
        }
        let job = FileJob {
            path: self.path().to_path_buf(),
            node,
            slot: Arc::clone(&slot),
        };
        // The workers stopped: the backup is failing, the walk ends.
        self.jobs.send(job).ok()?;
        Some(Event::File {
            depth,
            slot,
            changed,
        })
    }
}

/// Reads directory `fd`: its names, sorted bytewise (`.` and `..` left
/// out), and the directory, kept open for the entries' `statat`.
fn read_names(fd: OwnedFd) -> rustix::io::Result<(Dir, Vec<Vec<u8>>)> {
    let mut dir = Dir::new(fd)?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort_unstable();
    Ok((dir, names))
}

/// Reads whole files and stores their chunks.
pub(super) fn file_worker(walk: &Walk, jobs: &Receiver<FileJob>, chunker: &Chunker, fanout: usize) {
    // Small files are one blob each: they go to sealing in batches.
    let mut batch = walk.writer.batch();
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                // About to wait: what this worker holds goes on first.
                if let Err(e) = batch.flush() {
                    walk.abort.fail(e);
                }
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
        };
        if walk.abort.is_set() {
            job.slot.set(None);
            continue;
        }
        match read_file(walk, &mut batch, &job.path, job.node, chunker, fanout) {
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
    batch: &mut Batch<'_>,
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
        batch.store(ObjectKind::DataBlob, id, chunk)?;
        builder.push(ContentRef { id, len }, &mut lists);
        for (list_id, bytes) in lists.drain(..) {
            batch.store(ObjectKind::ListBlob, list_id, Bytes::from(bytes))?;
        }
    }
    let content = builder.finish(&mut lists);
    for (list_id, bytes) in lists {
        batch.store(ObjectKind::ListBlob, list_id, Bytes::from(bytes))?;
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
        recipe: None,
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
