//! `restore`: writes a snapshot's files (or a selection) under a target
//! directory.
//!
//! Safety rules, each enforced here:
//! - every stored name must be one normal path component (no `/`, NUL,
//!   empty, `.` or `..`); other entries are skipped and reported;
//! - every file system call is relative to an open directory descriptor
//!   with `O_NOFOLLOW`: a symlink already in the target, or created by this
//!   restore, is never followed, so nothing is written outside the target;
//!   symlinks from the snapshot are created last in their directory;
//! - existing files are never replaced unless `Overwrite::Always`, and then
//!   only after a safety snapshot of the files about to be replaced (source
//!   `NAME.pre-restore`); without it, a restore that would replace anything
//!   writes nothing;
//! - each file is written under a temporary name in its directory and
//!   renamed into place only when complete and verified, so an interrupted
//!   restore never leaves a half-written file under its real name.
//!
//! Hard links are restored as separate files.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::backend::RequestCounts;
use crate::error::{Error, Result};
use crate::hash::SnapshotId;
use crate::lease::LeaseKind;
use crate::ops::backup::{BackupInput, BackupOptions, TreeInput};
use crate::ops::is_single_component;
use crate::progress::Progress;
use crate::read::read_file;
use crate::repo::Repo;
use crate::snapshot::{Node, NodeKind, Snapshot, Tree};
use crate::source::tree::{Excludes, PathGlob};

/// Whether existing files in the target may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse: if anything would be replaced, restore nothing (the default).
    #[default]
    Never,
    /// Replace existing files, after a safety snapshot of them.
    Always,
}

/// Where and how to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The directory to restore into (created if missing).
    pub target: PathBuf,
    /// Whether to replace existing files.
    pub overwrite: Overwrite,
    /// Restore only paths matching one of these (a matching directory brings
    /// everything below it); all if empty.
    pub include: Vec<String>,
    /// Leave out paths matching any of these.
    pub exclude: Vec<String>,
    /// Live counters.
    pub progress: Arc<Progress>,
}

/// What `restore` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created or reused.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Files and symlinks that replaced existing ones.
    pub replaced: u64,
    /// The safety snapshot of replaced files, with `Overwrite::Always`.
    pub safety_snapshot: Option<SnapshotId>,
    /// Entries not restored, each with the reason.
    pub skipped: Vec<String>,
    /// Files not restored because their data is damaged or missing in the
    /// repository (the restore went on with the rest).
    pub damaged: Vec<String>,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

/// Which snapshot paths to restore.
struct Selection {
    include: Vec<PathGlob>,
    exclude: Vec<PathGlob>,
    /// The literal leading directories of each include pattern, when every
    /// include is a path pattern: only directories on the way to (or below)
    /// one of these can hold a match. `None` means any directory can.
    include_prefixes: Option<Vec<Vec<u8>>>,
}

impl Selection {
    fn new(options: &RestoreOptions) -> Result<Selection> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| PathGlob::new(p))
                .collect::<Result<Vec<_>>>()
        };
        let include_prefixes = (!options.include.is_empty()
            && options.include.iter().all(|p| p.starts_with('/')))
        .then(|| {
            options
                .include
                .iter()
                .map(|p| literal_dir_prefix(p.as_bytes()))
                .collect()
        });
        Ok(Selection {
            include: compile(&options.include)?,
            exclude: compile(&options.exclude)?,
            include_prefixes,
        })
    }

    /// Whether a directory that is not itself selected may hold selected
    /// entries below it (so the restore must look inside).
    fn may_contain(&self, dir: &[u8]) -> bool {
        match &self.include_prefixes {
            None => true,
            Some(prefixes) => prefixes.iter().any(|prefix| {
                // On the way to the prefix, or already inside it.
                (prefix.starts_with(dir) && prefix.get(dir.len()) == Some(&b'/'))
                    || dir.starts_with(prefix)
            }),
        }
    }

    fn excluded(&self, path: &[u8]) -> bool {
        self.exclude.iter().any(|g| g.is_match(path))
    }

    /// Whether `path` is selected, given whether its directory was.
    fn included(&self, path: &[u8], parent_included: bool) -> bool {
        parent_included || self.include.is_empty() || self.include.iter().any(|g| g.is_match(path))
    }
}

struct Frame {
    tree: Tree,
    /// Snapshot path of this directory, `""` for the root.
    path: Vec<u8>,
    /// The directory in the target, once created or opened.
    dir: Option<OwnedFd>,
    /// Whether to give the directory its stored owner, mode and time: only
    /// if this restore created it, or when replacing is allowed. An existing
    /// directory (`/srv`, say) keeps its own.
    set_metadata: bool,
    /// This directory's node (`None` for the root).
    node: Option<Node>,
    included: bool,
    /// Whether this directory's files have been restored (they go first,
    /// all at once, then subdirectories, then symlinks).
    files_done: bool,
    pos: usize,
}

impl Frame {
    /// Next entry after the files: directories, then symlinks last, so no
    /// entry of the snapshot is ever created below a symlink it made.
    fn next_entry(&mut self) -> Option<Node> {
        let n = self.tree.entries.len();
        while self.pos < 2 * n {
            let (pass, i) = (self.pos / n, self.pos % n);
            self.pos += 1;
            let node = &self.tree.entries[i];
            let wanted = match pass {
                0 => node.kind == NodeKind::Dir,
                _ => node.kind == NodeKind::Symlink,
            };
            if wanted {
                return Some(node.clone());
            }
        }
        None
    }
}

/// Restores the selected entries of `snapshot` under `options.target`.
pub async fn restore(
    repo: &Repo,
    snapshot: &Snapshot,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let started = Instant::now();
        let selection = Selection::new(options)?;
        let mut summary = RestoreSummary::default();
        std::fs::create_dir_all(&options.target)
            .map_err(|e| Error::io("creating", &options.target, e))?;
        let target = absolute(&options.target)?;

        // Plan first: find what would be replaced, so that nothing is written
        // when replacing is refused, and so the safety snapshot comes first.
        let existing = existing_files(repo, snapshot, &selection, &target).await?;
        if !existing.is_empty() {
            match options.overwrite {
                Overwrite::Never => {
                    let listed: Vec<String> = existing
                        .iter()
                        .take(5)
                        .map(|p| p.display().to_string())
                        .collect();
                    return Err(Error::TargetFilesExist {
                        count: existing.len(),
                        sample: listed,
                    });
                }
                Overwrite::Always => {
                    let safety = safety_snapshot(repo, snapshot, existing).await?;
                    summary.safety_snapshot = Some(safety);
                }
            }
        }

        let is_root = rustix::process::geteuid().is_root();
        let target_dir = open_dir(rustix::fs::CWD, &target)
            .map_err(|e| Error::io("opening", &target, e.into()))?;
        let mut stack = vec![Frame {
            tree: repo.load_tree(&snapshot.root).await?,
            path: Vec::new(),
            dir: Some(target_dir),
            set_metadata: false,
            node: None,
            included: selection.include.is_empty(),
            files_done: false,
            pos: 0,
        }];
        while !stack.is_empty() {
            let top = stack.len() - 1;
            if !stack[top].files_done {
                stack[top].files_done = true;
                restore_files(repo, &mut stack, &selection, options, is_root, &mut summary).await?;
                continue;
            }
            let Some(node) = stack[top].next_entry() else {
                let frame = stack.pop().expect("not empty");
                if let (Some(dir), Some(node), true) = (&frame.dir, &frame.node, frame.set_metadata)
                {
                    apply_metadata(dir, node, is_root).map_err(|e| {
                        Error::io("setting metadata of", display(&frame.path), e.into())
                    })?;
                }
                continue;
            };
            let mut path = stack[top].path.clone();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            if !is_single_component(&node.name) {
                summary.skipped.push(format!(
                    "{:?}: stored name is not a single path component",
                    display(&path)
                ));
                continue;
            }
            if selection.excluded(&path) {
                continue;
            }
            let included = selection.included(&path, stack[top].included);
            match node.kind {
                NodeKind::Dir if !included && !selection.may_contain(&path) => {}
                NodeKind::Dir => {
                    let Some(subtree) = node.subtree else {
                        summary
                            .skipped
                            .push(format!("{}: directory without a tree", display(&path)));
                        continue;
                    };
                    // One unreadable directory costs that directory, not the
                    // whole restore; being damage, it still fails the restore.
                    let tree = match repo.load_tree(&subtree).await {
                        Ok(tree) => tree,
                        Err(e) if e.is_damage() => {
                            summary
                                .damaged
                                .push(format!("{}: directory not restored: {e}", display(&path)));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    stack.push(Frame {
                        tree,
                        path: path.clone(),
                        dir: None,
                        set_metadata: false,
                        node: Some(node),
                        included,
                        files_done: false,
                        pos: 0,
                    });
                    if included {
                        // An included directory is restored even if empty.
                        if let Err(reason) = ensure_dir(&mut stack, &mut summary, options.overwrite)
                        {
                            summary.skipped.push(reason);
                            stack.pop();
                        }
                    }
                }
                NodeKind::Symlink if included => {
                    if let Err(reason) = ensure_dir(&mut stack, &mut summary, options.overwrite) {
                        summary.skipped.push(reason);
                        continue;
                    }
                    let dir = stack[top].dir.as_ref().expect("ensured above");
                    let replace = options.overwrite == Overwrite::Always;
                    let outcome = restore_symlink(dir, &node, &path, replace, is_root);
                    record(&mut summary, NodeKind::Symlink, outcome)?;
                }
                _ => {}
            }
        }
        if !options.include.is_empty()
            && summary.files + summary.dirs + summary.symlinks == 0
            && summary.damaged.is_empty()
        {
            summary.skipped.push(format!(
                "no path in the snapshot matches the include patterns ({}); nothing was restored",
                options.include.join(", ")
            ));
        }
        summary.duration_s = started.elapsed().as_secs_f64();
        summary.requests = repo.counts();
        Ok(summary)
    })
    .await
}

/// The directories before a pattern's first wildcard: `/opt/kb/*.yaml` ->
/// `/opt/kb`, `/opt/**/a` -> `/opt`, `/a/b` -> `/a`.
fn literal_dir_prefix(pattern: &[u8]) -> Vec<u8> {
    let literal_end = pattern
        .iter()
        .position(|b| b"*?[{\\".contains(b))
        .unwrap_or(pattern.len());
    let cut = pattern[..literal_end]
        .iter()
        .rposition(|b| *b == b'/')
        .unwrap_or(0);
    pattern[..cut].to_vec()
}

/// Files restored at once within one directory: small files are mostly
/// waiting (a ranged read, a rename), so running several overlaps that.
const FILES_IN_FLIGHT: usize = 16;

/// Restores the selected regular files of the directory on top of the
/// stack, several at a time.
async fn restore_files(
    repo: &Repo,
    stack: &mut [Frame],
    selection: &Selection,
    options: &RestoreOptions,
    is_root: bool,
    summary: &mut RestoreSummary,
) -> Result<()> {
    let top = stack.len() - 1;
    let mut files = Vec::new();
    for node in &stack[top].tree.entries {
        if node.kind != NodeKind::File {
            continue;
        }
        let mut path = stack[top].path.clone();
        path.push(b'/');
        path.extend_from_slice(&node.name);
        if !is_single_component(&node.name) {
            summary.skipped.push(format!(
                "{:?}: stored name is not a single path component",
                display(&path)
            ));
            continue;
        }
        if selection.excluded(&path) || !selection.included(&path, stack[top].included) {
            continue;
        }
        files.push((node.clone(), path));
    }
    if files.is_empty() {
        return Ok(());
    }
    if let Err(reason) = ensure_dir(stack, summary, options.overwrite) {
        summary.skipped.push(reason);
        return Ok(());
    }
    let dir = stack[top].dir.as_ref().expect("ensured above");
    let replace = options.overwrite == Overwrite::Always;
    let mut outcomes = futures::stream::iter(files)
        .map(|(node, path)| async move {
            restore_file(repo, dir, &node, &path, replace, is_root, &options.progress).await
        })
        .buffer_unordered(FILES_IN_FLIGHT);
    while let Some(outcome) = outcomes.next().await {
        record(summary, NodeKind::File, outcome)?;
    }
    Ok(())
}

/// Adds one entry's outcome to the summary; a fatal failure ends the restore.
fn record(
    summary: &mut RestoreSummary,
    kind: NodeKind,
    outcome: std::result::Result<Placed, Failure>,
) -> Result<()> {
    match outcome {
        Ok(Placed { bytes, replaced }) => {
            summary.replaced += u64::from(replaced);
            if kind == NodeKind::File {
                summary.files += 1;
                summary.bytes += bytes;
            } else {
                summary.symlinks += 1;
            }
        }
        Err(Failure::Skip(reason)) => summary.skipped.push(reason),
        Err(Failure::Damaged(reason)) => summary.damaged.push(reason),
        Err(Failure::Fatal(e)) => return Err(e),
    }
    Ok(())
}

fn display(path: &[u8]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io("resolving", path, e))
}

/// Opens a directory without following a symlink in its last component.
fn open_dir<Fd: AsFd>(parent: Fd, name: impl rustix::path::Arg) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates (or opens) every directory on the stack that does not have a
/// descriptor yet. An existing entry that is not a real directory (such as
/// a symlink planted in the target) is refused, never followed.
fn ensure_dir(
    stack: &mut [Frame],
    summary: &mut RestoreSummary,
    overwrite: Overwrite,
) -> std::result::Result<(), String> {
    let first_missing = match stack.iter().rposition(|f| f.dir.is_some()) {
        Some(i) if i + 1 == stack.len() => return Ok(()),
        Some(i) => i + 1,
        None => unreachable!("the root frame always has the target directory"),
    };
    for i in first_missing..stack.len() {
        let (done, rest) = stack.split_at_mut(i);
        let parent = done[i - 1].dir.as_ref().expect("created in order");
        let frame = &mut rest[0];
        let name = OsStr::from_bytes(
            &frame
                .node
                .as_ref()
                .expect("only the root lacks a node")
                .name,
        );
        let created = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => {
                return Err(format!(
                    "{}: cannot create directory: {e}",
                    display(&frame.path)
                ));
            }
        };
        frame.set_metadata = created || overwrite == Overwrite::Always;
        let dir = open_dir(parent, name).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => format!(
                "{}: exists in the target and is not a directory (a symlink is never followed); its contents were not restored",
                display(&frame.path)
            ),
            e => format!("{}: cannot open directory: {e}", display(&frame.path)),
        })?;
        frame.dir = Some(dir);
        summary.dirs += 1;
    }
    Ok(())
}

struct Placed {
    bytes: u64,
    replaced: bool,
}

enum Failure {
    /// Not restored, with the reason; the restore goes on.
    Skip(String),
    /// Not restored because its data is damaged; the restore goes on.
    Damaged(String),
    /// The restore cannot go on (storage failed, data damaged, disk full).
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Fatal(e)
    }
}

/// What is at `name` in `dir` now, without following a symlink.
fn existing(dir: &OwnedFd, name: &OsStr) -> Option<rustix::fs::FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
}

async fn restore_file(
    repo: &Repo,
    dir: &OwnedFd,
    node: &Node,
    path: &[u8],
    replace: bool,
    is_root: bool,
    progress: &Arc<Progress>,
) -> std::result::Result<Placed, Failure> {
    let name = OsStr::from_bytes(&node.name);
    let before = existing(dir, name);
    if before == Some(rustix::fs::FileType::Directory) {
        return Err(Failure::Skip(format!(
            "{}: is a directory in the target; not replaced by a file",
            display(path)
        )));
    }
    if before.is_some() && !replace {
        return Err(Failure::Skip(format!(
            "{}: appeared in the target during the restore; not replaced",
            display(path)
        )));
    }
    let tmp = format!(
        ".larder-restore-{}",
        hex::encode(&crate::hash::random_bytes()[..8])
    );
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| Error::io("creating a file in", display(path), e.into()))?;
    let mut file = File::from(fd);
    let result: Result<u64> = async {
        let written = read_file(repo, node, &mut |piece| {
            Progress::add(&progress.bytes_processed, piece.len() as u64);
            file.write_all(piece)
                .map_err(|e| Error::io("writing", display(path), e))
        })
        .await?;
        apply_metadata(&file, node, is_root)
            .map_err(|e| Error::io("setting metadata of", display(path), e.into()))?;
        let flags = if replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(dir, tmp.as_str(), dir, name, flags)
            .map_err(|e| Error::io("renaming into", display(path), e.into()))?;
        Ok(written)
    }
    .await;
    match result {
        Ok(bytes) => {
            Progress::add(&progress.items_done, 1);
            Ok(Placed {
                bytes,
                replaced: before.is_some(),
            })
        }
        Err(e) => {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
            if e.is_damage() {
                Err(Failure::Damaged(format!("{}: {e}", display(path))))
            } else {
                Err(Failure::Fatal(e))
            }
        }
    }
}

fn restore_symlink(
    dir: &OwnedFd,
    node: &Node,
    path: &[u8],
    replace: bool,
    is_root: bool,
) -> std::result::Result<Placed, Failure> {
    let name = OsStr::from_bytes(&node.name);
    let Some(target) = &node.target else {
        return Err(Failure::Skip(format!(
            "{}: symlink without a target",
            display(path)
        )));
    };
    let before = existing(dir, name);
    match before {
        Some(rustix::fs::FileType::Directory) => {
            return Err(Failure::Skip(format!(
                "{}: is a directory in the target; not replaced by a symlink",
                display(path)
            )));
        }
        Some(_) if !replace => {
            return Err(Failure::Skip(format!(
                "{}: appeared in the target during the restore; not replaced",
                display(path)
            )));
        }
        Some(_) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| Error::io("replacing", display(path), e.into()))?;
        }
        None => {}
    }
    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)
        .map_err(|e| Error::io("creating symlink", display(path), e.into()))?;
    if is_root {
        let _ = rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(node.uid)),
            Some(rustix::fs::Gid::from_raw(node.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
    }
    let _ = rustix::fs::utimensat(
        dir,
        name,
        &timestamps(node.mtime_ns),
        AtFlags::SYMLINK_NOFOLLOW,
    );
    Ok(Placed {
        bytes: 0,
        replaced: before.is_some(),
    })
}

fn timestamps(ns: i64) -> Timestamps {
    let spec = Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    Timestamps {
        last_access: spec,
        last_modification: spec,
    }
}

/// Owner (when running as root), permissions and modification time.
fn apply_metadata<Fd: AsFd>(fd: Fd, node: &Node, is_root: bool) -> rustix::io::Result<()> {
    if is_root {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(node.uid)),
            Some(rustix::fs::Gid::from_raw(node.gid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(node.mode & 0o7777))?;
    rustix::fs::futimens(&fd, &timestamps(node.mtime_ns))
}

/// Files and symlinks of the selection that already exist in the target
/// (absolute paths). Reads only trees, from the local cache once warm.
async fn existing_files(
    repo: &Repo,
    snapshot: &Snapshot,
    selection: &Selection,
    target: &Path,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![(
        repo.load_tree(&snapshot.root).await?,
        Vec::<u8>::new(),
        selection.include.is_empty(),
    )];
    while let Some((tree, dir, dir_included)) = stack.pop() {
        for node in &tree.entries {
            if !is_single_component(&node.name) {
                continue;
            }
            let mut path = dir.clone();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            if selection.excluded(&path) {
                continue;
            }
            let included = selection.included(&path, dir_included);
            let on_disk = target.join(OsStr::from_bytes(&path[1..]));
            match node.kind {
                NodeKind::Dir => {
                    // Only an existing real directory can hold files that
                    // would be replaced; below anything else nothing is.
                    let is_dir = std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.is_dir());
                    let worth_a_look = included || selection.may_contain(&path);
                    if let (Some(subtree), true, true) = (node.subtree, is_dir, worth_a_look) {
                        stack.push((repo.load_tree(&subtree).await?, path, included));
                    }
                }
                _ if included => {
                    if let Ok(meta) = std::fs::symlink_metadata(&on_disk)
                        && !meta.is_dir()
                    {
                        out.push(on_disk);
                    }
                }
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Backs up the files about to be replaced, as source `NAME.pre-restore`.
async fn safety_snapshot(
    repo: &Repo,
    restoring: &Snapshot,
    files: Vec<PathBuf>,
) -> Result<SnapshotId> {
    let summary = crate::ops::backup::backup(
        repo,
        BackupOptions {
            source: format!("{}.pre-restore", restoring.source),
            input: BackupInput::Tree(TreeInput {
                paths: crate::source::tree::check_paths(files)?,
                excludes: Excludes::default(),
                one_file_system: false,
            }),
            kind: "files".into(),
            allow_incomplete: false,
            unpack: true,
            tags: vec!["pre-restore".into()],
            host: crate::host::current_host(),
            time: None,
            parent: None,
            progress: Arc::default(),
        },
    )
    .await?;
    Ok(summary.snapshot_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes_stop_at_the_first_wildcard() {
        assert_eq!(literal_dir_prefix(b"/opt/kb/*.yaml"), b"/opt/kb");
        assert_eq!(literal_dir_prefix(b"/opt/**/a.yaml"), b"/opt");
        assert_eq!(literal_dir_prefix(b"/opt/kb/a.yaml"), b"/opt/kb");
        assert_eq!(literal_dir_prefix(b"/*"), b"");
    }

    #[test]
    fn only_directories_on_the_way_to_an_include_are_searched() {
        let options = RestoreOptions {
            target: "/t".into(),
            overwrite: Overwrite::Never,
            include: vec!["/opt/kb/teams/**".into()],
            exclude: vec![],
            progress: Arc::default(),
        };
        let s = Selection::new(&options).unwrap();
        assert!(s.may_contain(b"/opt"));
        assert!(s.may_contain(b"/opt/kb"));
        assert!(s.may_contain(b"/opt/kb/teams"));
        assert!(s.may_contain(b"/opt/kb/teams/x"));
        assert!(!s.may_contain(b"/opt/kb/other"));
        assert!(!s.may_contain(b"/opt/kbx"));
        assert!(!s.may_contain(b"/srv"));
        let by_name = RestoreOptions {
            include: vec!["*.yaml".into()],
            ..options
        };
        assert!(Selection::new(&by_name).unwrap().may_contain(b"/srv"));
    }
}
