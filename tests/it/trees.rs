//! File-tree backups, browsing and restore (issue 3), one module per
//! behaviour:
//!
//! - `backup`: re-scans read only what changed since the parent; counters;
//!   per-file chunking and dedup.
//! - `walk`: symlink loops, unreadable, special, shifting and vanishing
//!   files, excludes and file-system boundaries.
//! - `limits`: names that are not UTF-8, paths near and beyond PATH_MAX, a
//!   directory of 100,000 files.
//! - `restore`: the round trip of contents, modes, mtimes and links;
//!   overwriting and safety snapshots; selective restore.
//! - `restore_safety`: crafted names and symlinks planted in the target
//!   never make a restore write outside it.
//! - `browse`: `cat` of one file, `ls`, `find`, `diff` and `log`.
//!
//! This root holds what they share: [`TreeBuilder`] for source trees, the
//! `larder --json` wrappers, and [`scan`], which reads a tree back for
//! comparison.

mod backup;
mod browse;
mod limits;
mod restore;
mod restore_safety;
mod walk;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Timespec, Timestamps};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::*;

// ---------------------------------------------------------------------------
// Source trees
// ---------------------------------------------------------------------------

/// Builds a source tree at `src` inside a fresh temporary directory, the
/// layout the tests here back up. `build` returns that directory (restore
/// targets and exclude files go next to the tree) and the tree's root.
/// Paths are relative to the root; missing parent directories are made.
#[must_use]
struct TreeBuilder {
    dir: TempDir,
    root: PathBuf,
}

impl TreeBuilder {
    fn new() -> TreeBuilder {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("src");
        std::fs::create_dir_all(&root).unwrap();
        TreeBuilder { dir, root }
    }

    /// The tree's root, for links that must name it by its absolute path.
    fn root(&self) -> &Path {
        &self.root
    }

    /// A regular file holding `bytes`.
    fn file(self, path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Self {
        write(&self.root.join(path), bytes.as_ref());
        self
    }

    /// An empty directory.
    fn dir(self, path: impl AsRef<Path>) -> Self {
        std::fs::create_dir_all(self.root.join(path)).unwrap();
        self
    }

    /// A symlink at `path` whose target is `target`, stored as given.
    fn symlink(self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> Self {
        symlink(target, &self.new_entry(path));
        self
    }

    /// A second name at `path` for the file at `existing`.
    fn hard_link(self, path: impl AsRef<Path>, existing: impl AsRef<Path>) -> Self {
        std::fs::hard_link(self.root.join(existing), self.new_entry(path)).unwrap();
        self
    }

    /// Sets the permission bits of what is at `path`.
    fn mode(self, path: impl AsRef<Path>, mode: u32) -> Self {
        chmod(&self.root.join(path), mode);
        self
    }

    /// Where a new entry at `path` goes, its parent directories made.
    fn new_entry(&self, path: impl AsRef<Path>) -> PathBuf {
        let full = self.root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        full
    }

    /// The temporary directory (removed on drop) and the tree's root in it.
    fn build(self) -> (TempDir, PathBuf) {
        (self.dir, self.root)
    }
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn warnings_of(v: &Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings array in {v}"))
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

fn backup_args<'a>(source: &'a str, paths: &'a [&'a Path], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--json", "backup", "--source", source];
    args.extend(paths.iter().map(|x| p(x)));
    args.extend_from_slice(extra);
    args
}

/// `larder --json backup --source SOURCE PATHS... EXTRA...`: the exit code
/// (0 or 3; anything else fails the test), the summary, and stderr.
fn backup(r: &CliRepo, source: &str, paths: &[&Path], extra: &[&str]) -> (i32, Value, String) {
    let out = r.run(&backup_args(source, paths, extra));
    let code = out.status.code().expect("larder exited");
    assert!(
        code == 0 || code == 3,
        "backup exited with {code}: {}",
        stderr(&out)
    );
    (code, json_of(&out), stderr(&out))
}

/// A backup that must succeed without warnings.
fn backup_clean(r: &CliRepo, source: &str, paths: &[&Path], extra: &[&str]) -> Value {
    let (code, summary, err) = backup(r, source, paths, extra);
    assert_eq!(code, 0, "warnings: {err}");
    assert!(warnings_of(&summary).is_empty(), "{summary}");
    summary
}

fn snap_id(summary: &Value) -> String {
    summary["snapshot_id"].as_str().unwrap().to_string()
}

/// `ls -r --json` of a snapshot: path -> entry.
fn ls_all(r: &CliRepo, snap: &str) -> BTreeMap<String, Value> {
    let out = r.run(&["--json", "ls", snap, "-r"]);
    assert_success(&out);
    json_of(&out)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// `larder --json restore SNAP --target TARGET EXTRA...`.
fn restore_cli(r: &CliRepo, snap: &str, target: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--json", "restore", snap, "--target", p(target)];
    args.extend_from_slice(extra);
    r.run(&args)
}

/// A restore that must succeed without skipping anything.
fn restore_clean(r: &CliRepo, snap: &str, target: &Path, extra: &[&str]) -> Value {
    let out = restore_cli(r, snap, target, extra);
    assert_success(&out);
    let summary = json_of(&out);
    assert_eq!(summary["skipped"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["damaged"], serde_json::json!([]), "{summary}");
    summary
}

/// Where the backed-up absolute `path` lands under a restore `target`.
fn restored(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").unwrap())
}

/// Runs a command with a generous bound on its wall time: a command that
/// has not finished by then is killed and the test fails.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("larder did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the modification (and access) time without following a symlink.
fn set_mtime(path: &Path, ns: i64) {
    let spec = Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: spec,
            last_modification: spec,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// What the file system holds at a path, without following symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    mode: u32,
    mtime_ns: i64,
}

/// Everything below `root` (and `root` itself, under the empty path), by
/// path bytes relative to `root`; symlinks are never followed.
fn scan(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((path, rel)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let kind = if meta.file_type().is_symlink() {
            Kind::Symlink(
                std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                let entry = entry.unwrap();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(entry.file_name().as_bytes());
                stack.push((entry.path(), child));
            }
            Kind::Dir
        } else {
            Kind::File(std::fs::read(&path).unwrap())
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                mtime_ns: mtime_ns(&meta),
            },
        );
    }
    out
}

fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

/// Every regular file below `root` (symlinks not followed), relative path
/// -> content.
fn files_rel(root: &Path) -> BTreeMap<String, Vec<u8>> {
    scan(root)
        .into_iter()
        .filter_map(|(rel, e)| match e.kind {
            Kind::File(bytes) => Some((show(&rel), bytes)),
            _ => None,
        })
        .collect()
}
