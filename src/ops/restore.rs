//! `restore`: writes a snapshot's files under a target directory.
//!
//! Safety rules, each enforced here:
//! - every stored name must be one normal path component (no `/`, NUL,
//!   empty, `.` or `..`); other entries are skipped and reported;
//! - nothing is created through a symlink: a path component that exists in
//!   the target must be a real directory, and symlinks from the snapshot are
//!   created last in their directory, after every file of it;
//! - existing files are never replaced unless `Overwrite::Always`;
//! - each file is written under a temporary name in its directory and
//!   renamed into place only when complete and verified, so an interrupted
//!   restore never leaves a half-written file under its real name.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::RequestCounts;
use crate::error::{Error, Result};
use crate::ops::is_single_component;
use crate::progress::Progress;
use crate::read::read_content;
use crate::repo::Repo;
use crate::snapshot::{Node, NodeKind, Snapshot, Tree};

/// Whether existing files in the target may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse (the default).
    #[default]
    Never,
    /// Replace existing files.
    Always,
}

/// Where and how to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The directory to restore into (created if missing).
    pub target: PathBuf,
    /// Whether to replace existing files.
    pub overwrite: Overwrite,
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
    /// Entries not restored, each with the reason.
    pub skipped: Vec<String>,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

struct Frame {
    tree: Tree,
    dir: PathBuf,
    display: String,
    pos: usize,
}

/// Restores every entry of `snapshot` under `options.target`.
pub async fn restore(
    repo: &Repo,
    snapshot: &Snapshot,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let mut summary = RestoreSummary::default();
    fs::create_dir_all(&options.target).map_err(|e| Error::io("creating", &options.target, e))?;
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut stack = vec![Frame {
        tree: repo.load_tree(&snapshot.root).await?,
        dir: options.target.clone(),
        display: String::new(),
        pos: 0,
    }];
    // Directory metadata is applied after their contents, deepest first.
    let mut finished_dirs: Vec<(PathBuf, Node)> = Vec::new();
    while let Some(frame) = stack.last_mut() {
        let Some(node) = next_entry(frame) else {
            stack.pop();
            continue;
        };
        let display = format!("{}/{}", frame.display, node.display_name());
        if !is_single_component(&node.name) {
            summary.skipped.push(format!(
                "{display:?}: stored name is not a single path component"
            ));
            continue;
        }
        let dest = frame
            .dir
            .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&node.name));
        match node.kind {
            NodeKind::Dir => {
                let Some(subtree) = node.subtree else {
                    summary
                        .skipped
                        .push(format!("{display}: directory without a tree"));
                    continue;
                };
                match fs::symlink_metadata(&dest) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        summary.skipped.push(format!(
                            "{display}: exists in the target and is not a directory"
                        ));
                        continue;
                    }
                    Err(_) => fs::create_dir(&dest).map_err(|e| Error::io("creating", &dest, e))?,
                }
                summary.dirs += 1;
                let tree = repo.load_tree(&subtree).await?;
                finished_dirs.push((dest.clone(), node.clone()));
                stack.push(Frame {
                    tree,
                    dir: dest,
                    display,
                    pos: 0,
                });
            }
            NodeKind::File => {
                let dir = frame.dir.clone();
                summary.bytes += restore_file(repo, &node, &dir, &dest, options, is_root).await?;
                summary.files += 1;
                Progress::add(&options.progress.items_done, 1);
            }
            NodeKind::Symlink => {
                let Some(target) = &node.target else {
                    summary
                        .skipped
                        .push(format!("{display}: symlink without a target"));
                    continue;
                };
                if fs::symlink_metadata(&dest).is_ok() {
                    if options.overwrite == Overwrite::Never {
                        return Err(exists_error(&dest));
                    }
                    fs::remove_file(&dest).map_err(|e| Error::io("replacing", &dest, e))?;
                }
                std::os::unix::fs::symlink(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(target),
                    &dest,
                )
                .map_err(|e| Error::io("creating symlink", &dest, e))?;
                if is_root {
                    let _ = std::os::unix::fs::lchown(&dest, Some(node.uid), Some(node.gid));
                }
                summary.symlinks += 1;
            }
        }
    }
    for (dir, node) in finished_dirs.iter().rev() {
        apply_metadata(dir, node, is_root)?;
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    summary.requests = repo.counts();
    Ok(summary)
}

/// Next entry of a directory: files and directories first, symlinks last,
/// so no entry of the snapshot is ever created below a symlink it made.
fn next_entry(frame: &mut Frame) -> Option<Node> {
    let n = frame.tree.entries.len();
    while frame.pos < 2 * n {
        let (pass, i) = (frame.pos / n, frame.pos % n);
        frame.pos += 1;
        let node = &frame.tree.entries[i];
        if (node.kind == NodeKind::Symlink) == (pass == 1) {
            return Some(node.clone());
        }
    }
    None
}

fn exists_error(dest: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{} already exists; refusing to overwrite it (pass --overwrite always to replace existing files)",
        dest.display()
    ))
}

async fn restore_file(
    repo: &Repo,
    node: &Node,
    dir: &Path,
    dest: &Path,
    options: &RestoreOptions,
    is_root: bool,
) -> Result<u64> {
    match fs::symlink_metadata(dest) {
        Ok(_) if options.overwrite == Overwrite::Never => return Err(exists_error(dest)),
        Ok(meta) if meta.is_dir() => {
            return Err(Error::InvalidArgument(format!(
                "{} is a directory in the target; not replacing it with a file",
                dest.display()
            )));
        }
        _ => {}
    }
    let tmp = dir.join(format!(
        ".larder-restore-{}",
        hex::encode(&crate::hash::random_bytes()[..8])
    ));
    let result = async {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| Error::io("creating", &tmp, e))?;
        let content = node.content.clone().unwrap_or_default();
        let progress = Arc::clone(&options.progress);
        let written = read_content(repo, &content, &mut |piece| {
            Progress::add(&progress.bytes_processed, piece.len() as u64);
            file.write_all(piece)
                .map_err(|e| Error::io("writing", &tmp, e))
        })
        .await?;
        apply_file_metadata(&file, &tmp, node, is_root)?;
        drop(file);
        let placed = if options.overwrite == Overwrite::Always {
            fs::rename(&tmp, dest).map(|()| true)
        } else {
            crate::backend::local::rename_noreplace(&tmp, dest)
        };
        match placed {
            Ok(true) => Ok(written),
            Ok(false) => Err(exists_error(dest)),
            Err(e) => Err(Error::io("renaming into", dest, e)),
        }
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn apply_file_metadata(file: &File, path: &Path, node: &Node, is_root: bool) -> Result<()> {
    if is_root {
        std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid))
            .map_err(|e| Error::io("setting owner of", path, e))?;
    }
    file.set_permissions(fs::Permissions::from_mode(node.mode & 0o7777))
        .map_err(|e| Error::io("setting permissions of", path, e))?;
    file.set_modified(system_time(node.mtime_ns))
        .map_err(|e| Error::io("setting modification time of", path, e))
}

fn apply_metadata(dir: &Path, node: &Node, is_root: bool) -> Result<()> {
    if is_root {
        std::os::unix::fs::lchown(dir, Some(node.uid), Some(node.gid))
            .map_err(|e| Error::io("setting owner of", dir, e))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(node.mode & 0o7777))
        .map_err(|e| Error::io("setting permissions of", dir, e))?;
    let file = File::open(dir).map_err(|e| Error::io("opening", dir, e))?;
    file.set_modified(system_time(node.mtime_ns))
        .map_err(|e| Error::io("setting modification time of", dir, e))
}

fn system_time(ns: i64) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if ns >= 0 {
        epoch + std::time::Duration::from_nanos(ns as u64)
    } else {
        epoch - std::time::Duration::from_nanos(ns.unsigned_abs())
    }
}
