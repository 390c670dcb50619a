//! The walker and the file workers of a tree backup.
//!
//! The walker visits each backup path sorted by name (walkdir, never
//! following symlinks, pruning excluded directories, optionally on one file
//! system), `lstat`s each entry relative to its directory, and emits events
//! in walk order, each directory after its contents. A file unchanged since
//! the parent snapshot reuses its chunk list; any other goes to the file
//! workers, which read it whole, chunk and hash it, and store its chunks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use minicbor::bytes::ByteVec;

use super::parent::ParentTrees;
use super::{Event, Slot, TreeInput, Walk};
use crate::chunker::Chunker;
use crate::error::Result;
use crate::progress::Progress;
use crate::seal::ObjectKind;
use crate::snapshot::{ContentBuilder, ContentRef, Node, NodeKind};
use crate::source::tree::{EntryStat, is_unchanged, node_from_stat, node_kind};

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
            let previous = parents.dir_for(&dir);
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
                    .and_then(|dir| parents.tree_for(dir))
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
        let previous = parents.dir_for(&dir);
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
pub(super) fn file_worker(walk: &Walk, jobs: &Receiver<FileJob>, chunker: &Chunker, fanout: usize) {
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
