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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use minicbor::bytes::ByteVec;
use rustix::fs::{Mode, OFlags, RawDir};

use super::parent::{ParentDir, ParentTrees};
use super::{Event, Slot, TreeInput, Walk};
use crate::chunker::Chunker;
use crate::error::Result;
use crate::hash::BlobId;
use crate::progress::Progress;
use crate::seal::ObjectKind;
use crate::snapshot::{ContentBuilder, ContentRef, Node, NodeKind, Tree};
use crate::source::tree::{
    EntryStat, Excludes, is_unchanged, node_from_stat, node_kind, same_as_previous,
};
use crate::write::Batch;

/// A file for the workers to read; its node goes into `slot`.
pub(super) struct FileJob {
    /// The directory holding it, open, if the walk has it: the file is
    /// opened relative to it (no path lookup from `/` per file).
    dir: Option<Arc<OwnedFd>>,
    /// Its absolute path (opened by this if there is no `dir`).
    path: PathBuf,
    node: Node,
    slot: Arc<Slot>,
}

/// Events per batch sent from the walker to the assembler.
const EVENT_BATCH: usize = 256;

/// File jobs per batch sent from the walker to the file workers: one
/// hand-off per file kept the walker and the workers waking each other
/// (tens of thousands of `sched_yield`s and futex calls on a tree backup).
pub(super) const JOB_BATCH: usize = 8;

/// Walks one backup path, sending jobs and events, each in batches.
///
/// The walk keeps one open descriptor per directory level and works with
/// names relative to it (`openat`, `statat`, `readlinkat`): no entry's path
/// is resolved from `/` again, and full paths are built in one buffer only
/// for exclude patterns, file jobs and warnings. Reading and `lstat`ing a
/// directory's entries (most of a re-scan's time) is done by scanner
/// threads, one per core, for the subdirectories ahead of the walk, each
/// job a bundle of a directory and its first few subdirectories; the walker
/// itself only compares with the parent snapshot and emits events, in
/// order.
pub(super) fn walk_one(
    walk: &Walk,
    root: &Path,
    input: &TreeInput,
    parents: &mut ParentTrees,
    jobs: &Sender<Vec<FileJob>>,
    events: &Sender<Vec<Event>>,
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
    // A single file or symlink needs no scanners.
    let scanners = match kind {
        NodeKind::Dir => std::thread::available_parallelism().map_or(2, |n| n.get()),
        _ => 0,
    };
    let root_dev = input.one_file_system.then_some(stat.dev);
    std::thread::scope(|scope| {
        let (scan_tx, scan_rx) = crossbeam_channel::unbounded::<ScanJob>();
        for i in 0..scanners {
            let scan_rx = scan_rx.clone();
            let excludes = &input.excludes;
            let loader = parents.loader();
            // A scanner that cannot be started is not needed: with none
            // running, sending a scan fails and the walker scans in place.
            let _ = std::thread::Builder::new()
                .name(format!("larder-scan-{i}"))
                .spawn_scoped(scope, move || {
                    let load = |id: BlobId| loader.as_ref().and_then(|l| l.load(&id));
                    let scanner = Scanner {
                        excludes,
                        root_dev,
                        load: &load,
                    };
                    for job in scan_rx {
                        let mut budget = Budget::default();
                        let ahead = scanner.scan(job.fd, job.path, job.subtree, &mut budget);
                        // The walk may have ended (aborted): nobody waits.
                        let _ = job.reply.send(ahead);
                    }
                });
        }
        drop(scan_rx);
        let mut walker = Walker {
            walk,
            root_dev,
            parents,
            jobs,
            job_batch: Vec::with_capacity(JOB_BATCH),
            events,
            event_batch: Vec::with_capacity(EVENT_BATCH),
            path: root.as_os_str().as_bytes().to_vec(),
            links: HashMap::new(),
            scan_tx,
        };
        walker.run(root, name, stat, kind, &input.excludes);
        walker.flush();
    });
}

/// Subdirectories of one directory scanned ahead of the walk, at most. The
/// walk goes depth first, so each level keeps a few ahead rather than the
/// top level taking them all; the descriptors held open and the scanned
/// entries waiting in memory stay bounded by this times the depth times a
/// scan job's [`Budget`].
const SCAN_AHEAD: usize = 4;

/// A directory for a scanner to read and `lstat`, and its tree in the
/// parent snapshot to load.
struct ScanJob {
    fd: OwnedFd,
    /// Its absolute path (for exclude patterns).
    path: Vec<u8>,
    subtree: Option<BlobId>,
    reply: Sender<Ahead>,
}

/// A directory scanned ahead of the walk, its parent-snapshot tree, and
/// the first of its subdirectories scanned with it (see [`Budget`]).
struct Ahead {
    scanned: rustix::io::Result<Scanned>,
    parent: Option<Tree>,
    /// Scanned subdirectories: (entry index, scan), in entry order.
    inner: Inner,
}

type Inner = std::collections::VecDeque<(usize, Ahead)>;

/// How much one scan job reads beyond its own directory: its
/// subdirectories, depth first, in walk order, while fewer than these
/// directories and entries have been read. One hand-off between the walker
/// and a scanner per small directory cost about a tenth of a re-scan's CPU
/// in waking and waiting; a bundle of a few directories costs one. Each
/// bundled directory stays open until the walk reaches it, so the
/// directories bound the descriptors a job holds.
#[derive(Default)]
struct Budget {
    dirs: usize,
    entries: usize,
}

impl Budget {
    const DIRS: usize = 16;
    const ENTRIES: usize = 512;

    fn spent(&self) -> bool {
        self.dirs >= Self::DIRS || self.entries >= Self::ENTRIES
    }
}

/// What a scanner thread needs to scan directories and load their trees in
/// the parent snapshot.
struct Scanner<'a> {
    excludes: &'a Excludes,
    root_dev: Option<u64>,
    load: &'a dyn Fn(BlobId) -> Option<Tree>,
}

impl Scanner<'_> {
    /// Scans directory `fd` at `path` and loads `subtree`, then its
    /// subdirectories while `budget` lasts.
    fn scan(
        &self,
        fd: OwnedFd,
        path: Vec<u8>,
        subtree: Option<BlobId>,
        budget: &mut Budget,
    ) -> Ahead {
        let scanned = scan_dir(fd, &path, self.excludes);
        let parent = subtree.and_then(self.load);
        let mut inner = Inner::new();
        budget.dirs += 1;
        if let Ok(scanned) = &scanned {
            budget.entries += scanned.entries.len();
            let dir = scanned.dir.as_fd();
            for (index, entry) in scanned.entries.iter().enumerate() {
                if budget.spent() {
                    break;
                }
                let Ok(stat) = &entry.stat else { continue };
                if stat.mode & libc::S_IFMT != libc::S_IFDIR
                    || self.root_dev.is_some_and(|dev| dev != stat.dev)
                {
                    continue;
                }
                // Not bundled: the walk opens it again and reports why.
                let Ok(fd) = open_subdir(dir, OsStr::from_bytes(&entry.name)) else {
                    continue;
                };
                let sub = parent
                    .as_ref()
                    .and_then(|tree| tree.get(&entry.name))
                    .and_then(subtree_of);
                let ahead = self.scan(fd, child_path(&path, &entry.name), sub, budget);
                inner.push_back((index, ahead));
            }
        }
        Ahead {
            scanned,
            parent,
            inner,
        }
    }
}

/// `path` joined with `name`.
fn child_path(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut child = Vec::with_capacity(path.len() + 1 + name.len());
    child.extend_from_slice(path);
    if child.last() != Some(&b'/') {
        child.push(b'/');
    }
    child.extend_from_slice(name);
    child
}

/// A directory read: kept open for `openat` of its subdirectories, and its
/// entries, sorted bytewise, excluded ones left out.
struct Scanned {
    dir: OwnedFd,
    entries: Vec<ScanEntry>,
}

/// One entry of a scanned directory.
struct ScanEntry {
    name: Vec<u8>,
    stat: std::io::Result<EntryStat>,
    /// A symlink's target.
    target: Option<std::io::Result<Vec<u8>>>,
}

/// Reads directory `fd` at `path`: its names sorted (`.` and `..` and
/// excluded entries left out), each `lstat`ed, each symlink read.
fn scan_dir(fd: OwnedFd, path: &[u8], excludes: &Excludes) -> rustix::io::Result<Scanned> {
    let (dir, names) = read_names(fd)?;
    let fd = dir.as_fd();
    let mut full = path.to_vec();
    if full.last() != Some(&b'/') {
        full.push(b'/');
    }
    let base = full.len();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        full.truncate(base);
        full.extend_from_slice(&name);
        if excludes.is_excluded(Path::new(OsStr::from_bytes(&full))) {
            continue;
        }
        let stat = EntryStat::at(fd, OsStr::from_bytes(&name));
        let target = match &stat {
            Ok(stat) if stat.mode & libc::S_IFMT == libc::S_IFLNK => Some(
                rustix::fs::readlinkat(fd, OsStr::from_bytes(&name), Vec::new())
                    .map(|t| t.into_bytes())
                    .map_err(std::io::Error::from),
            ),
            _ => None,
        };
        entries.push(ScanEntry { name, stat, target });
    }
    Ok(Scanned { dir, entries })
}

/// What the walk does with one directory entry.
enum Visit {
    /// Nothing (vanished, unreadable, special).
    Skip,
    /// A finished or pending entry of the current directory.
    Event(Event),
    /// A directory to descend into: its scan (or why it could not be
    /// opened or read), its node, its tree in the parent snapshot and its
    /// subdirectories scanned with it.
    Enter(rustix::io::Result<Scanned>, Node, Option<ParentDir>, Inner),
}

/// A directory being walked.
struct Frame {
    /// Open for `openat`; `None` if it could not be opened or read (it is
    /// then stored empty, with a warning). Shared with the file jobs of
    /// its entries.
    dir: Option<Arc<OwnedFd>>,
    entries: Vec<ScanEntry>,
    /// The next entry to visit.
    next: usize,
    /// Entries up to here were considered for scanning ahead.
    ahead: usize,
    /// Subdirectories being scanned ahead: (entry index, reply), in order.
    pending: std::collections::VecDeque<(usize, Receiver<Ahead>)>,
    /// Subdirectories scanned with this directory, in order.
    inner: Inner,
    depth: usize,
    node: Node,
    previous: Option<ParentDir>,
    /// Entries of `previous` before this are named before the next entry
    /// (both lists are sorted bytewise: they are walked side by side).
    previous_next: usize,
    /// The length of the path buffer without this directory's name.
    path_len: usize,
}

impl Frame {
    /// The index of the entry named `name` in the directory's previous
    /// tree. Names are asked for in ascending order, so the lookup walks
    /// the previous tree alongside the scan rather than searching it.
    fn previous_position(&mut self, name: &[u8]) -> Option<usize> {
        let (_, tree) = self.previous.as_ref()?;
        let rest = &tree.entries[self.previous_next..];
        let skip = rest
            .iter()
            .position(|e| e.name.as_slice() >= name)
            .unwrap_or(rest.len());
        self.previous_next += skip;
        (rest.get(skip)?.name.as_slice() == name).then_some(self.previous_next)
    }
}

/// The state of one backup path's walk.
struct Walker<'a> {
    walk: &'a Walk,
    /// With `--one-file-system`, the root's device.
    root_dev: Option<u64>,
    parents: &'a mut ParentTrees,
    jobs: &'a Sender<Vec<FileJob>>,
    /// Jobs not sent yet; always sent before the events that wait for
    /// them, so the assembler never waits for a job the walker holds.
    job_batch: Vec<FileJob>,
    events: &'a Sender<Vec<Event>>,
    event_batch: Vec<Event>,
    /// The current entry's absolute path.
    path: Vec<u8>,
    /// Hard-linked files seen so far: (device, inode) -> the first one's slot.
    links: HashMap<(u64, u64), Arc<Slot>>,
    scan_tx: Sender<ScanJob>,
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

    /// Walks the backup path `root` (`lstat`ed as `stat`, of `kind`).
    fn run(
        &mut self,
        root: &Path,
        name: &OsStr,
        stat: EntryStat,
        kind: NodeKind,
        excludes: &Excludes,
    ) {
        let walk = self.walk;
        if kind != NodeKind::Dir {
            let parent = root.parent().and_then(|dir| self.parents.tree_for(dir));
            let previous = parent.as_ref().and_then(|tree| tree.get(name.as_bytes()));
            let target = (kind == NodeKind::Symlink)
                .then(|| std::fs::read_link(root).map(|t| t.into_os_string().into_vec()));
            if let Some(event) = self.entry(None, 0, name, stat, kind, target, previous) {
                self.emit(event);
            }
            return;
        }
        walk.counts.dirs.fetch_add(1, Ordering::Relaxed);
        let node = node_from_stat(name, &stat, kind, &walk.names);
        let previous = self.parents.dir_for(root);
        let scanned = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|fd| scan_dir(fd, root.as_os_str().as_bytes(), excludes));
        let frame = self.frame(
            scanned,
            0,
            node,
            previous,
            root.as_os_str().len(),
            Inner::new(),
        );
        let mut frames = vec![frame];
        while let Some(frame) = frames.last_mut() {
            if walk.abort.is_set() {
                return;
            }
            if frame.next == frame.entries.len() {
                let frame = frames.pop().expect("looked at above");
                self.path.truncate(frame.path_len);
                let event = Event::DirEnd {
                    depth: frame.depth,
                    node: frame.node,
                    previous: frame.previous,
                };
                if !self.emit(event) {
                    return;
                }
                continue;
            }
            let index = frame.next;
            frame.next += 1;
            let depth = frame.depth + 1;
            let dir_len = self.path.len();
            let name = std::mem::take(&mut frame.entries[index].name);
            self.push_name(OsStr::from_bytes(&name));
            let visit = self.visit(frame, index, depth, OsStr::from_bytes(&name), excludes);
            match visit {
                Visit::Skip => self.path.truncate(dir_len),
                Visit::Event(event) => {
                    self.path.truncate(dir_len);
                    if !self.emit(event) {
                        return;
                    }
                }
                // The path stays extended: it is the new frame's directory.
                Visit::Enter(scanned, node, previous, inner) => {
                    let frame = self.frame(scanned, depth, node, previous, dir_len, inner);
                    frames.push(frame);
                }
            }
        }
    }

    /// Adds a file job; false once the workers are gone.
    fn queue(&mut self, job: FileJob) -> bool {
        self.job_batch.push(job);
        self.job_batch.len() < JOB_BATCH || self.send_jobs()
    }

    /// Sends the jobs held; false once the workers are gone (their files
    /// are then given up, so nobody waits for them).
    fn send_jobs(&mut self) -> bool {
        if self.job_batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.job_batch, Vec::with_capacity(JOB_BATCH));
        match self.jobs.send(batch) {
            Ok(()) => true,
            Err(crossbeam_channel::SendError(batch)) => {
                for job in batch {
                    job.slot.set(None);
                }
                false
            }
        }
    }

    /// Adds an event; false once nobody listens.
    fn emit(&mut self, event: Event) -> bool {
        self.event_batch.push(event);
        self.event_batch.len() < EVENT_BATCH || self.flush()
    }

    /// Sends the jobs, then the events held; false once either side is
    /// gone.
    fn flush(&mut self) -> bool {
        let jobs = self.send_jobs();
        if self.event_batch.is_empty() {
            return jobs;
        }
        let batch = std::mem::replace(&mut self.event_batch, Vec::with_capacity(EVENT_BATCH));
        self.events.send(batch).is_ok() && jobs
    }

    /// A frame for a directory just scanned (or not), with its first
    /// subdirectories sent to be scanned ahead.
    fn frame(
        &mut self,
        scanned: rustix::io::Result<Scanned>,
        depth: usize,
        node: Node,
        previous: Option<ParentDir>,
        path_len: usize,
        inner: Inner,
    ) -> Frame {
        let (dir, entries) = match scanned {
            Ok(Scanned { dir, entries }) => (Some(Arc::new(dir)), entries),
            Err(e) => {
                let e = std::io::Error::from(e);
                self.walk
                    .warn(format!("{}: {e}; not backed up", self.path().display()));
                (None, Vec::new())
            }
        };
        let mut frame = Frame {
            dir,
            entries,
            next: 0,
            ahead: 0,
            pending: std::collections::VecDeque::new(),
            inner,
            depth,
            previous_next: 0,
            node,
            previous,
            path_len,
        };
        self.scan_ahead(&mut frame);
        frame
    }

    /// Sends the frame's next subdirectories to the scanners, while fewer
    /// than [`SCAN_AHEAD`] of its scans are outstanding.
    fn scan_ahead(&mut self, frame: &mut Frame) {
        let Some(dir) = frame.dir.as_ref().map(|d| d.as_fd()) else {
            return;
        };
        frame.ahead = frame.ahead.max(frame.next);
        while frame.pending.len() < SCAN_AHEAD && frame.ahead < frame.entries.len() {
            let index = frame.ahead;
            frame.ahead += 1;
            let entry = &frame.entries[index];
            let Ok(stat) = &entry.stat else { continue };
            if stat.mode & libc::S_IFMT != libc::S_IFDIR
                || self.root_dev.is_some_and(|dev| dev != stat.dev)
                || frame.inner.iter().any(|(i, _)| *i == index)
            {
                continue;
            }
            // Failures are reported when the walk reaches the entry.
            let Ok(fd) = open_subdir(dir, OsStr::from_bytes(&entry.name)) else {
                continue;
            };
            let path = child_path(&self.path, &entry.name);
            let subtree = frame
                .previous
                .as_ref()
                .and_then(|(_, tree)| tree.get(&entry.name))
                .and_then(subtree_of);
            let (reply, rx) = crossbeam_channel::bounded(1);
            let job = ScanJob {
                fd,
                path,
                subtree,
                reply,
            };
            if self.scan_tx.send(job).is_ok() {
                frame.pending.push_back((index, rx));
            }
        }
    }

    /// Visits entry `index` of `frame`, named `name` (the path buffer holds
    /// its path).
    fn visit(
        &mut self,
        frame: &mut Frame,
        index: usize,
        depth: usize,
        name: &OsStr,
        excludes: &Excludes,
    ) -> Visit {
        let walk = self.walk;
        let entry = &mut frame.entries[index];
        let stat = match std::mem::replace(&mut entry.stat, Err(std::io::Error::other("taken"))) {
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
        let target = entry.target.take();
        let Some(kind) = node_kind(&stat) else {
            walk.warn(format!(
                "{}: special file (FIFO, socket or device) skipped",
                self.path().display()
            ));
            return Visit::Skip;
        };
        let position = frame.previous_position(name.as_bytes());
        let previous = frame
            .previous
            .as_ref()
            .zip(position)
            .map(|((_, tree), i)| &tree.entries[i]);
        if let (Some(previous), Some(index)) = (previous, position)
            && same_as_previous(previous, &stat, &walk.names)
        {
            walk.counts.unchanged.fetch_add(1, Ordering::Relaxed);
            walk.counts.bytes.fetch_add(stat.size, Ordering::Relaxed);
            Progress::add(&walk.progress.items_done, 1);
            return Visit::Event(Event::Same { depth, index });
        }
        if kind != NodeKind::Dir {
            let dir = frame.dir.clone();
            return match self.entry(dir, depth, name, stat, kind, target, previous) {
                Some(event) => Visit::Event(event),
                None => Visit::Skip,
            };
        }
        walk.counts.dirs.fetch_add(1, Ordering::Relaxed);
        let node = node_from_stat(name, &stat, kind, &walk.names);
        let subtree = previous.and_then(subtree_of);
        let load = |parents: &ParentTrees| {
            subtree.and_then(|id| parents.load(&id).map(|tree| (id, Arc::new(tree))))
        };
        // Another file system with --one-file-system: the directory is
        // kept, empty, as a mount point.
        if self.root_dev.is_some_and(|dev| dev != stat.dev) {
            return Visit::Event(Event::DirEnd {
                depth,
                node,
                previous: load(self.parents),
            });
        }
        while frame.inner.front().is_some_and(|(i, _)| *i < index) {
            frame.inner.pop_front();
        }
        while frame.pending.front().is_some_and(|(i, _)| *i < index) {
            frame.pending.pop_front();
        }
        let ahead = match frame.inner.front() {
            Some((i, _)) if *i == index => frame.inner.pop_front().map(|(_, ahead)| ahead),
            _ => {
                let rx = match frame.pending.front() {
                    Some((i, _)) if *i == index => frame.pending.pop_front().map(|(_, rx)| rx),
                    _ => None,
                };
                // Waiting for the scan, or scanning, may take a while: let
                // the workers have what is queued meanwhile.
                self.send_jobs();
                rx.and_then(|rx| rx.recv().ok())
            }
        };
        let (scanned, previous, inner) = match ahead {
            Some(Ahead {
                scanned,
                parent,
                inner,
            }) => (scanned, subtree.zip(parent.map(Arc::new)), inner),
            // Not scanned ahead (opening failed, or the directory changed
            // since it was read): here and now.
            None => {
                let dir = frame
                    .dir
                    .as_ref()
                    .expect("a directory without a descriptor has no entries")
                    .as_fd();
                let scanned =
                    open_subdir(dir, name).and_then(|fd| scan_dir(fd, &self.path, excludes));
                (scanned, load(self.parents), Inner::new())
            }
        };
        self.scan_ahead(frame);
        Visit::Enter(scanned, node, previous, inner)
    }

    /// The event for a file or symlink `name` (a symlink's `target` read).
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        dir: Option<Arc<OwnedFd>>,
        depth: usize,
        name: &OsStr,
        stat: EntryStat,
        kind: NodeKind,
        target: Option<std::io::Result<Vec<u8>>>,
        previous: Option<&Node>,
    ) -> Option<Event> {
        let walk = self.walk;
        let mut node = node_from_stat(name, &stat, kind, &walk.names);
        if kind == NodeKind::Symlink {
            return match target.expect("a symlink's target is read with its stat") {
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
        if let Some(previous) = previous
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
            dir,
            path: self.path().to_path_buf(),
            node,
            slot: Arc::clone(&slot),
        };
        // The workers stopped: the backup is failing, the walk ends.
        if !self.queue(job) {
            return None;
        }
        Some(Event::File {
            depth,
            slot,
            changed,
        })
    }
}

/// The tree of `node` in the parent snapshot, if it was a directory.
fn subtree_of(node: &Node) -> Option<BlobId> {
    node.subtree.filter(|_| node.kind == NodeKind::Dir)
}

/// Opens subdirectory `name` of `dir` for reading, never through a symlink.
fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Bytes of directory entries read per `getdents` call. Most directories
/// fit in one call (and one more that finds the end); rustix's `Dir` starts
/// at 768 bytes and grows, so a directory of a few dozen notes took three,
/// each also zeroing and reallocating its buffer.
const DIRENT_BUF: usize = 32 << 10;

thread_local! {
    /// Each scanning thread's buffer for [`read_names`].
    static DIRENTS: std::cell::RefCell<Vec<std::mem::MaybeUninit<u8>>> =
        std::cell::RefCell::new(vec![std::mem::MaybeUninit::uninit(); DIRENT_BUF]);
}

/// Reads directory `fd`: its names, sorted bytewise (`.` and `..` left
/// out), and the directory, kept open for the entries' `statat`. A
/// directory removed while it is read ends there (`ENOENT`), as `readdir`
/// does.
fn read_names(fd: OwnedFd) -> rustix::io::Result<(OwnedFd, Vec<Vec<u8>>)> {
    let mut names = Vec::new();
    DIRENTS.with_borrow_mut(|buf| {
        let mut dir = RawDir::new(&fd, buf.as_mut_slice());
        while let Some(entry) = dir.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(rustix::io::Errno::NOENT) => break,
                Err(e) => return Err(e),
            };
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        Ok(())
    })?;
    names.sort_unstable();
    Ok((fd, names))
}

/// Reads whole files and stores their chunks.
pub(super) fn file_worker(
    walk: &Walk,
    jobs: &Receiver<Vec<FileJob>>,
    chunker: &Chunker,
    fanout: usize,
) {
    // Small files are one blob each: they go to sealing in batches.
    let mut batch = walk.writer.batch();
    loop {
        let jobs = match jobs.try_recv() {
            Ok(jobs) => jobs,
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                // About to wait: what this worker holds goes on first.
                if let Err(e) = batch.flush() {
                    walk.abort.fail(e);
                }
                match jobs.recv() {
                    Ok(jobs) => jobs,
                    Err(_) => break,
                }
            }
        };
        for job in jobs {
            let FileJob {
                dir,
                path,
                node,
                slot,
            } = job;
            if walk.abort.is_set() {
                slot.set(None);
                continue;
            }
            let dir = dir.as_deref();
            match read_file(walk, &mut batch, dir, &path, node, chunker, fanout) {
                Ok(node) => slot.set(node),
                Err(e) => {
                    slot.set(None);
                    walk.abort.fail(e);
                }
            }
        }
    }
}

/// Reads one file into the repository. `Ok(None)` means it was skipped with
/// a warning; `Err` is fatal to the backup (storage failed).
fn read_file(
    walk: &Walk,
    batch: &mut Batch<'_>,
    dir: Option<&OwnedFd>,
    path: &Path,
    mut node: Node,
    chunker: &Chunker,
    fanout: usize,
) -> Result<Option<Node>> {
    // O_NOFOLLOW: if the file was swapped for a symlink since it was listed,
    // refuse rather than read whatever it points to.
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let opened = match dir {
        Some(dir) => rustix::fs::openat(dir, OsStr::from_bytes(&node.name), flags, Mode::empty()),
        None => rustix::fs::open(path, flags, Mode::empty()),
    };
    let file = match opened
        .map(std::fs::File::from)
        .map_err(std::io::Error::from)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    /// Every directory of a bundle, depth first: (path, entries).
    fn flatten(ahead: &Ahead, path: &str, out: &mut Vec<(String, usize)>) {
        let scanned = ahead.scanned.as_ref().expect("scanned");
        out.push((path.to_string(), scanned.entries.len()));
        let mut last = None;
        for (index, inner) in &ahead.inner {
            assert!(last < Some(*index), "bundled subdirectories out of order");
            last = Some(*index);
            let entry = &scanned.entries[*index];
            let name = String::from_utf8(entry.name.clone()).unwrap();
            flatten(inner, &format!("{path}/{name}"), out);
        }
    }

    #[test]
    fn names_are_read_whole_past_one_buffer_and_a_removed_directory_reads_empty() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut expected = Vec::new();
        // About 150 KB of entries: several buffers' worth.
        for i in 0..3000 {
            let name = format!("note-{i:05}-with-a-longer-name.yaml");
            std::fs::write(dir.path().join(&name), b"").unwrap();
            expected.push(name.into_bytes());
        }
        expected.sort();
        let (_, names) = read_names(open_dir(dir.path())).unwrap();
        assert_eq!(names, expected);

        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let fd = open_dir(&gone);
        std::fs::remove_dir(&gone).unwrap();
        let (_, names) = read_names(fd).unwrap();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_scan_bundles_subdirectories_in_walk_order_within_its_budget() {
        let dir = tempfile::TempDir::new().unwrap();
        // Three levels of six directories, three files in each.
        let mut all = vec![String::new()];
        let mut level = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for parent in &level {
                for i in 0..6 {
                    next.push(format!("{parent}/d{i}"));
                }
            }
            all.extend(next.iter().cloned());
            level = next;
        }
        for d in &all {
            let path = format!("{}{d}", dir.path().display());
            std::fs::create_dir_all(&path).unwrap();
            for f in 0..3 {
                std::fs::write(format!("{path}/f{f}"), b"x").unwrap();
            }
        }
        let excludes = Excludes::new(&[]).unwrap();
        let load = |_: BlobId| None;
        let scanner = Scanner {
            excludes: &excludes,
            root_dev: None,
            load: &load,
        };
        let root = dir.path().as_os_str().as_bytes().to_vec();
        let mut budget = Budget::default();
        let ahead = scanner.scan(open_dir(dir.path()), root, None, &mut budget);
        let mut got = Vec::new();
        flatten(&ahead, "", &mut got);
        // The walk's own order: depth first, names sorted.
        let mut expected = all.clone();
        expected.sort();
        assert_eq!(got.len(), Budget::DIRS, "{got:?}");
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, expected[..Budget::DIRS].to_vec());
        // Each directory was read whole: its files and subdirectories.
        for (path, entries) in &got {
            let depth = path.matches('/').count();
            assert_eq!(*entries, if depth < 3 { 9 } else { 3 }, "{path}");
        }

        // A bundle also stops at its entry budget.
        let wide = tempfile::TempDir::new().unwrap();
        for d in 0..3 {
            let sub = wide.path().join(format!("d{d}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..Budget::ENTRIES / 2 {
                std::fs::write(sub.join(format!("f{f}")), b"").unwrap();
            }
        }
        let mut budget = Budget::default();
        let root = wide.path().as_os_str().as_bytes().to_vec();
        let ahead = scanner.scan(open_dir(wide.path()), root, None, &mut budget);
        let mut got = Vec::new();
        flatten(&ahead, "", &mut got);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["", "/d0", "/d1"]);
    }
}
