//! File-tree backups, browsing and restore (issue 3).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder::ops::backup::{Abort, BlobWriter};
use larder::ops::restore::{Overwrite, RestoreOptions, RestoreSummary, restore};
use larder::repo::Repo;
use larder::seal::ObjectKind;
use larder::snapshot::{Content, ContentRef, Node, NodeKind, Snapshot, SnapshotSummary, Tree};
use minicbor::bytes::ByteVec;
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The uid and gid of `nobody`, for tests that need an unprivileged user.
const NOBODY: u32 = 65534;

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

/// True (after saying why) when the test cannot run because it needs root;
/// CI runs as root, so there it never skips.
fn needs_root_but_is_not(what: &str) -> bool {
    if is_root() {
        return false;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "CI must run as root: {what}"
    );
    eprintln!("not root: cannot {what}; run the suite as root to test it");
    true
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

/// Asserts two scans are equal, naming the first difference.
fn assert_same_tree(expected: &BTreeMap<Vec<u8>, Entry>, actual: &BTreeMap<Vec<u8>, Entry>) {
    let want: BTreeSet<_> = expected.keys().map(|k| show(k)).collect();
    let got: BTreeSet<_> = actual.keys().map(|k| show(k)).collect();
    assert_eq!(want, got, "different entries");
    for (rel, e) in expected {
        let a = &actual[rel];
        assert_eq!(e.kind, a.kind, "kind or content of {:?}", show(rel));
        if !matches!(e.kind, Kind::Symlink(_)) {
            assert_eq!(e.mode, a.mode, "mode of {:?}", show(rel));
        }
        assert_eq!(
            e.mtime_ns / 1_000_000_000,
            a.mtime_ns / 1_000_000_000,
            "mtime (seconds) of {:?}",
            show(rel)
        );
        assert_eq!(e.mtime_ns, a.mtime_ns, "mtime (ns) of {:?}", show(rel));
    }
}

/// A temporary directory whose ancestors nothing else changes while the
/// test runs. A snapshot records the metadata of every directory above a
/// backed-up path, and `/tmp`'s mtime changes whenever a concurrent test
/// makes a temporary directory, so a test that expects a re-scan to store
/// nothing at all needs ancestors of its own.
fn stable_tempdir(name: &str) -> TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("larder-trees-{name}"));
    std::fs::create_dir_all(&base).unwrap();
    TempDir::new_in(&base).unwrap()
}

/// Seeded text that looks like a YAML knowledge-base entry of about `len` bytes.
fn yaml_text(len: usize, seed: u64) -> Vec<u8> {
    let noise = random_bytes(len / 4 + 64, seed);
    let mut out = format!("id: entry-{seed}\ntitle: Entry number {seed}\ntags: [ops, kb]\nbody:\n")
        .into_bytes();
    let mut i = 0;
    while out.len() < len {
        let word = u32::from_le_bytes(noise[i % (noise.len() - 4)..][..4].try_into().unwrap());
        writeln!(
            out,
            "  - line {i}: value {word:08x} for item {}",
            word % 977
        )
        .unwrap();
        i += 1;
    }
    out
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

// ---------------------------------------------------------------------------
// 1. Round trip
// ---------------------------------------------------------------------------

#[test]
fn a_tree_round_trips_with_contents_modes_mtimes_and_symlinks() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    write(&outside.path().join("victim.txt"), b"outside, untouched");
    let src = dir.path().join("src");
    write(&src.join("plain.txt"), b"hello\n");
    write(&src.join("empty.txt"), b"");
    write(
        &src.join("nested/deeper/deepest/data.bin"),
        &random_bytes(300_000, 1),
    );
    write(&src.join("nested/big.bin"), &random_bytes(3 << 20, 2));
    write(&src.join("nested/deeper/also-empty"), b"");
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    write(&src.join("private.key"), b"secret\n");
    chmod(&src.join("private.key"), 0o600);
    write(&src.join("run.sh"), b"#!/bin/sh\necho hi\n");
    chmod(&src.join("run.sh"), 0o755);
    write(&src.join("group.conf"), b"x = 1\n");
    chmod(&src.join("group.conf"), 0o640);
    chmod(&src.join("nested/deeper"), 0o750);
    write(&src.join("hard-a"), b"one inode, two names\n");
    std::fs::hard_link(src.join("hard-a"), src.join("nested/hard-b")).unwrap();
    let odd_name = OsStr::from_bytes(b"caf\xe9.yaml");
    write(&src.join(odd_name), b"name: caf\xc3\xa9\n");
    symlink("plain.txt", &src.join("rel-link"));
    symlink("../plain.txt", &src.join("nested/up-link"));
    symlink(outside.path(), &src.join("abs-link"));
    symlink(
        outside.path().join("victim.txt"),
        &src.join("abs-file-link"),
    );
    symlink("/nonexistent/larder/target", &src.join("dangling"));
    symlink("deeper", &src.join("nested/dir-link"));
    // Distinct, sub-second mtimes everywhere, directories last (writing
    // into a directory changes its mtime).
    let mut paths: Vec<PathBuf> = scan(&src)
        .keys()
        .map(|rel| src.join(OsStr::from_bytes(rel)))
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for (i, path) in paths.iter().enumerate() {
        set_mtime(path, 1_500_000_000_000_000_000 + i as i64 * 1_000_777_123);
    }
    let before = scan(&src);
    let outside_before = scan(outside.path());

    let summary = backup_clean(&r, "tree", &[&src], &[]);
    let target = dir.path().join("restore");
    let restored_summary = restore_clean(&r, &snap_id(&summary), &target, &[]);
    assert_eq!(n(&restored_summary, "symlinks"), 6, "{restored_summary}");

    let back = restored(&target, &src);
    assert_same_tree(&before, &scan(&back));
    // Symlinks are links in the restored tree, with the exact targets.
    for (name, want) in [
        ("rel-link", Path::new("plain.txt")),
        ("abs-link", outside.path()),
        ("dangling", Path::new("/nonexistent/larder/target")),
        ("nested/dir-link", Path::new("deeper")),
    ] {
        let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} is not a symlink");
        assert_eq!(std::fs::read_link(back.join(name)).unwrap(), want, "{name}");
    }
    // The hard-linked pair comes back with the same content under both names.
    assert_eq!(
        std::fs::read(back.join("hard-a")).unwrap(),
        std::fs::read(back.join("nested/hard-b")).unwrap()
    );
    // Nothing was followed: the outside directory is as it was.
    assert_eq!(scan(outside.path()), outside_before);
    // And the snapshot holds no entry below any symlink.
    let listed = ls_all(&r, &snap_id(&summary));
    for link in [
        "rel-link",
        "abs-link",
        "abs-file-link",
        "dangling",
        "nested/dir-link",
    ] {
        let path = format!("{}/{link}", p(&src));
        assert_eq!(listed[&path]["kind"], "symlink", "{path}");
        assert!(
            !listed.keys().any(|k| k.starts_with(&format!("{path}/"))),
            "entries below the symlink {path}: {listed:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Re-scans
// ---------------------------------------------------------------------------

/// 40 files in four directories, sizes from 0 to 3 MiB; returns their paths.
fn rescan_tree(src: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for d in 0..4 {
        for f in 0..10 {
            let path = src.join(format!("dir{d}/file{f}.dat"));
            let len = match (d, f) {
                (0, 0) => 0,
                (1, 1) => 3 << 20,
                (2, 2) => 600_000,
                _ => 1000 + 97 * (d * 10 + f),
            };
            write(&path, &random_bytes(len, (d * 10 + f) as u64));
            files.push(path);
        }
    }
    files
}

#[test]
fn an_unchanged_rescan_reads_no_content_and_stores_no_blobs() {
    let r = CliRepo::init();
    let dir = stable_tempdir("unchanged-rescan");
    let src = dir.path().join("src");
    let files = rescan_tree(&src);

    let first = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&first, "files_new"), files.len() as u64, "{first}");
    let second = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    assert_eq!(n(&second, "bytes_read"), 0, "{second}");
    assert_eq!(
        n(&second, "files_unchanged"),
        files.len() as u64,
        "{second}"
    );
    assert_eq!(n(&second, "files_new"), 0, "{second}");
    assert_eq!(n(&second, "files_changed"), 0, "{second}");
    assert_eq!(n(&second, "blobs_new"), 0, "{second}");
    assert_eq!(
        n(&second, "total_bytes"),
        n(&first, "total_bytes"),
        "{second}"
    );
    // Only the snapshot object is written (and the lease: its start and
    // the renewal confirming it before the commit).
    assert_eq!(second["requests"]["put"], 3, "{second}");
    assert_eq!(ls_all(&r, &snap_id(&first)), ls_all(&r, &snap_id(&second)));
}

#[test]
fn a_rescan_reads_only_the_modified_and_the_added_file() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let files = rescan_tree(&src);
    backup_clean(&r, "kb", &[&src], &[]);
    backup_clean(&r, "kb", &[&src], &[]);

    let modified = &files[13];
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(modified)
        .unwrap();
    f.write_all(b"one more line\n").unwrap();
    drop(f);
    let added = src.join("dir3/new.dat");
    write(&added, &random_bytes(5000, 99));
    let third = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&third, "files_changed"), 1, "{third}");
    assert_eq!(n(&third, "files_new"), 1, "{third}");
    assert_eq!(
        n(&third, "files_unchanged"),
        files.len() as u64 - 1,
        "{third}"
    );
    let expected = std::fs::metadata(modified).unwrap().len() + 5000;
    assert_eq!(n(&third, "bytes_read"), expected, "{third}");
    // The new content is what the snapshot holds.
    let out = r.run(&["cat", &snap_id(&third), p(modified)]);
    assert_success(&out);
    assert_eq!(out.stdout, std::fs::read(modified).unwrap());
}

#[test]
fn a_same_size_rewrite_with_the_old_mtime_is_still_read_again() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let file = src.join("config.yaml");
    write(&file, b"replicas: 3\n");
    let old_mtime = mtime_ns(&std::fs::metadata(&file).unwrap());
    backup_clean(&r, "kb", &[&src], &[]);
    // Same size, same mtime: only the status-change time tells.
    std::fs::write(&file, b"replicas: 9\n").unwrap();
    set_mtime(&file, old_mtime);
    let second = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&second, "files_changed"), 1, "{second}");
    assert_eq!(n(&second, "bytes_read"), 12, "{second}");
    let out = r.run(&["cat", &snap_id(&second), p(&file)]);
    assert_success(&out);
    assert_eq!(out.stdout, b"replicas: 9\n");
}

#[test]
fn backup_counters_count_every_file_name_including_hard_links() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a.txt"), b"shared content\n");
    std::fs::hard_link(src.join("a.txt"), src.join("b.txt")).unwrap();
    write(&src.join("c.txt"), b"own\n");
    let first = backup_clean(&r, "kb", &[&src], &[]);
    let second = backup_clean(&r, "kb", &[&src], &[]);
    // The same tree, counted the same way both times: three files, 34 bytes.
    assert_eq!(n(&second, "files_unchanged"), 3, "{second}");
    assert_eq!(n(&second, "total_bytes"), 34, "{second}");
    assert_eq!(
        n(&first, "files_new"),
        3,
        "first backup of three file names: {first}"
    );
    assert_eq!(n(&first, "total_bytes"), 34, "{first}");
}

// ---------------------------------------------------------------------------
// 3. Per-file chunking and dedup
// ---------------------------------------------------------------------------

/// Tree blobs a snapshot holds: one per directory listed, plus the root.
fn tree_count(listed: &BTreeMap<String, Value>) -> u64 {
    listed.values().filter(|e| e["kind"] == "dir").count() as u64 + 1
}

#[test]
fn small_files_are_never_merged_and_identical_files_are_one_blob() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    // 50 distinct 1 KiB files: 50 data blobs, one per file, however small.
    for i in 0..50 {
        write(
            &src.join(format!("small/{i:02}.txt")),
            &random_bytes(1024, 1000 + i),
        );
    }
    // Two identical 100 KiB files in different directories: one blob.
    let twin = random_bytes(100 << 10, 7);
    write(&src.join("left/copy.bin"), &twin);
    write(&src.join("right/deeper/other-name.bin"), &twin);
    let summary = backup_clean(&r, "kb", &[&src], &[]);
    let listed = ls_all(&r, &snap_id(&summary));
    let trees = tree_count(&listed);
    assert_eq!(
        n(&summary, "blobs_new"),
        50 + 1 + trees,
        "50 small files, one shared blob, {trees} trees: {summary}"
    );
    assert!(n(&summary, "blobs_reused") >= 1, "{summary}");
    // The twin is stored once: well under two copies of it.
    let stored = n(&summary, "bytes_added");
    assert!(
        stored < 50 * 1024 + (150 << 10),
        "stored {stored} bytes: {summary}"
    );

    // A third copy, and a file that is two small files concatenated: only
    // the concatenation is new data (a file never continues another's chunk).
    write(&src.join("third/copy.bin"), &twin);
    let mut joined = random_bytes(1024, 1003);
    joined.extend_from_slice(&random_bytes(1024, 1004));
    write(&src.join("joined.txt"), &joined);
    let second = backup_clean(&r, "kb", &[&src], &[]);
    let listed = ls_all(&r, &snap_id(&second));
    // New: the joined file's blob, the root-to-src trees and the two new
    // directories' trees; every other tree is unchanged.
    let src_depth = src.components().count() as u64; // "/" counts as one
    assert_eq!(
        n(&second, "blobs_new"),
        1 + src_depth + 1,
        "{second} {:?}",
        listed.keys().collect::<Vec<_>>()
    );
    assert_eq!(n(&second, "bytes_read"), (100 << 10) + 2048, "{second}");
}

#[test]
fn appending_to_one_of_many_small_files_stores_about_that_file() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let mut files = Vec::new();
    for d in 0..10 {
        for f in 0..20 {
            let path = src.join(format!("d{d}/f{f}.bin"));
            write(&path, &random_bytes(8 << 10, (d * 100 + f) as u64));
            files.push(path);
        }
    }
    let tree_size = 200 * (8 << 10) as u64;
    let first = backup_clean(&r, "kb", &[&src], &[]);
    assert!(n(&first, "bytes_added") > tree_size, "{first}");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&files[77])
        .unwrap();
    f.write_all(&random_bytes(100, 5)).unwrap();
    drop(f);
    let second = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&second, "bytes_read"), (8 << 10) + 100, "{second}");
    let added = n(&second, "bytes_added");
    // The file itself (8 KiB, incompressible) plus a few trees and the
    // snapshot: far below the tree's 1.6 MB.
    assert!(added < 48 << 10, "added {added} bytes: {second}");
    assert!(added * 30 < tree_size, "added {added} bytes: {second}");
}

#[test]
fn a_one_percent_change_of_a_thousand_yaml_files_stores_a_small_fraction() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("kb");
    let mut files = Vec::new();
    for i in 0..1000u64 {
        let path = src.join(format!("topic-{:02}/entry-{i:04}.yaml", i % 20));
        write(&path, &yaml_text(3000 + (i as usize % 7) * 400, i));
        files.push(path);
    }
    let day1 = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&day1, "files_new"), 1000, "{day1}");
    // Day 2: ten entries get one line edited.
    for i in (0..1000).step_by(100) {
        let text = String::from_utf8(std::fs::read(&files[i]).unwrap()).unwrap();
        let edited = text.replacen("line 3:", "line 3 (edited):", 1);
        assert_ne!(text, edited);
        std::fs::write(&files[i], edited).unwrap();
    }
    let day2 = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&day2, "files_changed"), 10, "{day2}");
    assert_eq!(n(&day2, "files_unchanged"), 990, "{day2}");
    let (a1, a2) = (n(&day1, "bytes_added"), n(&day2, "bytes_added"));
    assert!(a2 * 20 < a1, "day 2 stored {a2} bytes, day 1 {a1}");
}

// ---------------------------------------------------------------------------
// 4. Symlink loops
// ---------------------------------------------------------------------------

#[test]
fn symlink_loops_and_links_to_ancestors_are_stored_as_links_and_never_followed() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("real.txt"), &random_bytes(1000, 1));
    write(&src.join("sub/inner.txt"), &random_bytes(500, 2));
    symlink("loop-b", &src.join("loop-a"));
    symlink("loop-a", &src.join("loop-b"));
    symlink("self", &src.join("self"));
    symlink("..", &src.join("sub/up"));
    symlink(".", &src.join("sub/here"));
    symlink(&src, &src.join("sub/top"));
    symlink("/", &src.join("root"));
    let links: BTreeMap<&str, PathBuf> = [
        ("loop-a", PathBuf::from("loop-b")),
        ("loop-b", PathBuf::from("loop-a")),
        ("self", PathBuf::from("self")),
        ("sub/up", PathBuf::from("..")),
        ("sub/here", PathBuf::from(".")),
        ("sub/top", src.clone()),
        ("root", PathBuf::from("/")),
    ]
    .into_iter()
    .collect();

    let out = output_within(
        r.cmd(&backup_args("loops", &[&src], &[])),
        Duration::from_secs(120),
    );
    assert_success(&out);
    let summary = json_of(&out);
    assert_eq!(n(&summary, "bytes_read"), 1500, "{summary}");
    assert_eq!(n(&summary, "files_new"), 2, "{summary}");
    let id = snap_id(&summary);

    let listed = ls_all(&r, &id);
    let below_src: BTreeSet<&str> = listed
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{}/", p(&src))))
        .collect();
    let mut expected: BTreeSet<&str> = links.keys().copied().collect();
    expected.extend(["real.txt", "sub", "sub/inner.txt"]);
    assert_eq!(below_src, expected);
    for (name, target) in &links {
        let e = &listed[&format!("{}/{name}", p(&src))];
        assert_eq!(e["kind"], "symlink", "{e}");
        assert_eq!(e["target"], p(target), "{e}");
    }
    // ls -l shows each link with its target.
    let out = r.run(&["ls", &id, p(&src), "-l", "-r"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    for (name, target) in &links {
        let line = format!("{}/{name} -> {}", p(&src), p(target));
        assert!(
            text.lines()
                .any(|l| l.starts_with('l') && l.ends_with(&line)),
            "no line ending {line:?} in:\n{text}"
        );
    }

    let target = dir.path().join("restore");
    let out = output_within(
        r.cmd(&["--json", "restore", &id, "--target", p(&target)]),
        Duration::from_secs(120),
    );
    assert_success(&out);
    let back = restored(&target, &src);
    for (name, want) in &links {
        let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name}");
        assert_eq!(&std::fs::read_link(back.join(name)).unwrap(), want);
    }
    let restored_entries: BTreeSet<String> = scan(&back).keys().map(|k| show(k)).collect();
    let mut want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    want.insert(String::new());
    assert_eq!(restored_entries, want);
}

// ---------------------------------------------------------------------------
// 5. Unreadable entries
// ---------------------------------------------------------------------------

/// Gives `path` and everything below it (symlinks themselves) to nobody.
fn chown_tree_to_nobody(path: &Path) {
    std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree_to_nobody(&entry.unwrap().path());
        }
    }
}

/// Makes `cmd` run as nobody (no supplementary groups).
fn as_nobody(cmd: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn unreadable_files_and_directories_are_warnings_and_the_rest_is_backed_up() {
    if needs_root_but_is_not("switch to an unprivileged user to make chmod 000 unreadable") {
        return;
    }
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let readable = [
        "ok.txt",
        "sub/ok2.txt",
        "sub/deeper/ok3.txt",
        "locked-parent-sibling.txt",
    ];
    for (i, name) in readable.iter().enumerate() {
        write(&src.join(name), format!("readable {i}\n").as_bytes());
    }
    write(&src.join("secret.txt"), b"no one may read this\n");
    write(&src.join("sub/also-secret.txt"), b"nor this\n");
    write(&src.join("locked/hidden.txt"), b"behind a locked door\n");
    write(&src.join("sub/locked2/hidden2.txt"), b"behind another\n");
    chown_tree_to_nobody(dir.path());
    chown_tree_to_nobody(r.dir.path());
    let unreadable = ["secret.txt", "sub/also-secret.txt", "locked", "sub/locked2"];
    for name in unreadable {
        chmod(&src.join(name), 0o000);
    }

    let mut cmd = r.cmd(&backup_args("secrets", &[&src], &[]));
    as_nobody(&mut cmd);
    let out = output_within(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    let err = stderr(&out);
    for name in unreadable {
        let path = format!("{}/{name}", p(&src));
        assert!(
            warnings.iter().any(|w| w.contains(&path)),
            "no warning names {path}: {warnings:?}"
        );
        assert!(
            err.contains(&format!("larder: warning: {path}")),
            "no warning on stderr for {path}: {err}"
        );
    }
    let listed = ls_all(&r, &snap_id(&summary));
    for name in readable {
        let path = format!("{}/{name}", p(&src));
        assert_eq!(
            listed.get(&path).map(|e| &e["kind"]),
            Some(&Value::from("file")),
            "{path} missing: {listed:?}"
        );
    }
    for hidden in [
        "locked/hidden.txt",
        "sub/locked2/hidden2.txt",
        "secret.txt",
        "sub/also-secret.txt",
    ] {
        let path = format!("{}/{hidden}", p(&src));
        assert!(!listed.contains_key(&path), "{path} listed");
    }
    // What was read restores.
    let target = dir.path().join("restore");
    restore_clean(&r, &snap_id(&summary), &target, &[]);
    let back = restored(&target, &src);
    for (i, name) in readable.iter().enumerate() {
        assert_eq!(
            std::fs::read(back.join(name)).unwrap(),
            format!("readable {i}\n").as_bytes()
        );
    }
}

// ---------------------------------------------------------------------------
// 6. Special and shifting files
// ---------------------------------------------------------------------------

#[test]
fn a_fifo_is_skipped_with_a_warning_naming_it() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("before.txt"), b"a\n");
    write(&src.join("zafter.txt"), b"z\n");
    let fifo = src.join("pipe");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A FIFO nobody writes to would block a reader forever: the bound
    // catches a backup that opens it.
    let out = output_within(
        r.cmd(&backup_args("fifo", &[&src], &[])),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(p(&fifo)), "{warnings:?}");
    assert!(
        stderr(&out).contains(&format!("larder: warning: {}", p(&fifo))),
        "{}",
        stderr(&out)
    );
    let listed = ls_all(&r, &snap_id(&summary));
    assert!(!listed.contains_key(p(&fifo)));
    assert!(listed.contains_key(p(&src.join("before.txt"))));
    assert!(listed.contains_key(p(&src.join("zafter.txt"))));
}

#[test]
fn a_file_whose_size_differs_from_what_is_read_is_flagged_as_changed() {
    let uptime = Path::new("/proc/uptime");
    assert_eq!(
        std::fs::metadata(uptime).unwrap().len(),
        0,
        "procfs reports size 0"
    );
    let r = CliRepo::init();
    let (code, summary, err) = backup(&r, "proc", &[uptime], &[]);
    assert_eq!(code, 3, "{err}");
    let warnings = warnings_of(&summary);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("/proc/uptime") && w.contains("changed while it was being read")),
        "{warnings:?}"
    );
    assert!(err.contains("larder: warning: /proc/uptime"), "{err}");
    // What was read is stored, and its size is the size read.
    let out = r.run(&["cat", &snap_id(&summary), "/proc/uptime"]);
    assert_success(&out);
    assert!(!out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(' ')
            .count()
            == 2,
        "{:?}",
        out.stdout
    );
    let listed = ls_all(&r, &snap_id(&summary));
    assert_eq!(
        listed["/proc/uptime"]["size"],
        out.stdout.len() as u64,
        "{listed:?}"
    );
}

#[test]
fn files_that_could_not_be_read_are_not_counted_as_backed_up() {
    if needs_root_but_is_not("switch to an unprivileged user to make chmod 000 unreadable") {
        return;
    }
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("ok.txt"), b"fine\n");
    write(&src.join("secret.txt"), b"unreadable\n");
    chown_tree_to_nobody(dir.path());
    chown_tree_to_nobody(r.dir.path());
    chmod(&src.join("secret.txt"), 0o000);
    let mut cmd = r.cmd(&backup_args("secrets", &[&src], &[]));
    as_nobody(&mut cmd);
    let out = output_within(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let files_listed = ls_all(&r, &snap_id(&summary))
        .values()
        .filter(|e| e["kind"] == "file")
        .count() as u64;
    assert_eq!(files_listed, 1);
    assert_eq!(
        n(&summary, "files_new"),
        files_listed,
        "files_new counts a file that is not in the snapshot: {summary}"
    );
}

// ---------------------------------------------------------------------------
// 7. Names that are not UTF-8
// ---------------------------------------------------------------------------

#[test]
fn non_utf8_names_are_listed_lossily_and_restored_with_their_exact_bytes() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let file_name = OsStr::from_bytes(b"caf\xe9.yaml");
    let dir_name = OsStr::from_bytes(b"d\xff\xfeir");
    write(&src.join(file_name), b"latin-1 name\n");
    write(&src.join(dir_name).join("inner.txt"), b"inside\n");
    write(
        &src.join(dir_name).join(OsStr::from_bytes(b"\x80\x81")),
        b"both odd\n",
    );
    let summary = backup_clean(&r, "odd", &[&src], &[]);
    let id = snap_id(&summary);

    let lossy_file = format!("{}/caf\u{fffd}.yaml", p(&src));
    let lossy_dir = format!("{}/d\u{fffd}\u{fffd}ir", p(&src));
    let listed = ls_all(&r, &id);
    assert_eq!(listed[&lossy_file]["kind"], "file", "{listed:?}");
    assert_eq!(listed[&lossy_file]["size"], 13);
    assert_eq!(listed[&lossy_dir]["kind"], "dir");
    assert_eq!(listed[&format!("{lossy_dir}/inner.txt")]["kind"], "file");
    assert_eq!(
        listed[&format!("{lossy_dir}/\u{fffd}\u{fffd}")]["kind"],
        "file"
    );
    let out = r.run(&["ls", &id, "-r"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).expect("ls prints UTF-8");
    assert!(text.lines().any(|l| l == lossy_file), "{text}");

    let target = dir.path().join("restore");
    restore_clean(&r, &id, &target, &[]);
    let back = restored(&target, &src);
    let names: BTreeSet<Vec<u8>> = std::fs::read_dir(&back)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(
        names,
        [b"caf\xe9.yaml".to_vec(), b"d\xff\xfeir".to_vec()]
            .into_iter()
            .collect()
    );
    assert_eq!(
        std::fs::read(back.join(file_name)).unwrap(),
        b"latin-1 name\n"
    );
    assert_eq!(
        std::fs::read(back.join(dir_name).join("inner.txt")).unwrap(),
        b"inside\n"
    );
    assert_eq!(
        std::fs::read(back.join(dir_name).join(OsStr::from_bytes(b"\x80\x81"))).unwrap(),
        b"both odd\n"
    );
}

// ---------------------------------------------------------------------------
// 8. Long paths
// ---------------------------------------------------------------------------

fn open_dir_at(parent: &OwnedFd, name: &[u8]) -> Option<OwnedFd> {
    rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

fn open_dir(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Makes the chain of directories `names` below `base`, descriptor by
/// descriptor (so its full path may exceed PATH_MAX); returns each level's
/// descriptor.
fn mkdir_chain(base: &Path, names: &[Vec<u8>]) -> Vec<OwnedFd> {
    let mut fds = vec![open_dir(base)];
    for name in names {
        let parent = fds.last().unwrap();
        rustix::fs::mkdirat(parent, OsStr::from_bytes(name), Mode::from_raw_mode(0o755)).unwrap();
        let fd = open_dir_at(parent, name).unwrap();
        fds.push(fd);
    }
    fds
}

fn write_at(dir: &OwnedFd, name: &str, data: &[u8]) {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    std::fs::File::from(fd).write_all(data).unwrap();
}

/// The content of `file` below the chain `names` from `base`, if it is there.
fn read_below(base: &Path, names: &[Vec<u8>], file: &str) -> Option<Vec<u8>> {
    let mut fd = open_dir(base);
    for name in names {
        fd = open_dir_at(&fd, name)?;
    }
    let file = rustix::fs::openat(
        &fd,
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut out = Vec::new();
    std::fs::File::from(file).read_to_end(&mut out).unwrap();
    Some(out)
}

/// Components of an absolute path, as bytes.
fn components(path: &Path) -> Vec<Vec<u8>> {
    path.iter().skip(1).map(|c| c.as_bytes().to_vec()).collect()
}

fn long_name(level: usize) -> Vec<u8> {
    let mut name = format!("level-{level:03}-").into_bytes();
    name.resize(200, b'a' + (level % 26) as u8);
    name
}

#[test]
fn a_path_of_about_four_thousand_bytes_backs_up_and_restores() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let base_len = p(&src).len();
    let mut names = Vec::new();
    while base_len + (names.len() + 1) * 201 + "/leaf.txt".len() <= 4000 {
        names.push(long_name(names.len()));
    }
    let fds = mkdir_chain(&src, &names);
    write_at(fds.last().unwrap(), "leaf.txt", b"at the bottom\n");
    write_at(&fds[names.len() / 2], "middle.txt", b"half way\n");
    let mut deep = src.clone();
    for name in &names {
        deep.push(OsStr::from_bytes(name));
    }
    let leaf = deep.join("leaf.txt");
    assert!(
        p(&leaf).len() > 3800 && p(&leaf).len() <= 4000,
        "{}",
        p(&leaf).len()
    );

    let summary = backup_clean(&r, "long", &[&src], &[]);
    assert_eq!(n(&summary, "files_new"), 2, "{summary}");
    let id = snap_id(&summary);
    assert!(ls_all(&r, &id).contains_key(p(&leaf)));
    let out = r.run(&["cat", &id, p(&leaf)]);
    assert_success(&out);
    assert_eq!(out.stdout, b"at the bottom\n");

    // The restored path is longer than PATH_MAX; read it descriptor by descriptor.
    let target = dir.path().join("restore");
    let summary = restore_clean(&r, &id, &target, &[]);
    assert_eq!(n(&summary, "files"), 2, "{summary}");
    let mut chain = components(&src);
    chain.extend(names.iter().cloned());
    assert_eq!(
        read_below(&target, &chain, "leaf.txt").as_deref(),
        Some(&b"at the bottom\n"[..])
    );
    let half = components(&src).len() + names.len() / 2;
    assert_eq!(
        read_below(&target, &chain[..half], "middle.txt").as_deref(),
        Some(&b"half way\n"[..])
    );
}

#[test]
fn a_tree_beyond_path_max_warns_for_the_unreachable_part_and_backs_up_the_rest() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 26 levels of 200-byte names: the deepest directories are ~5,300 bytes
    // from the root.
    let names: Vec<Vec<u8>> = (0..26).map(long_name).collect();
    let fds = mkdir_chain(&src, &names);
    // A file at every level; the path of level i's file is its length.
    let mut reachable = Vec::new();
    let mut unreachable = Vec::new();
    let mut path = p(&src).as_bytes().to_vec();
    for (level, fd) in fds.iter().enumerate() {
        if level > 0 {
            path.push(b'/');
            path.extend_from_slice(&names[level - 1]);
        }
        let file = format!("file-{level:02}.txt");
        write_at(fd, &file, format!("level {level}\n").as_bytes());
        let full = format!("{}/{file}", String::from_utf8(path.clone()).unwrap());
        // PATH_MAX counts the terminating NUL.
        if full.len() < 4096 {
            reachable.push((level, full));
        } else {
            unreachable.push((level, full));
        }
    }
    assert!(reachable.len() >= 15 && unreachable.len() >= 5);

    let out = output_within(
        r.cmd(&backup_args("too-long", &[&src], &[])),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("too long") || w.contains("os error 36")),
        "{warnings:?}"
    );
    // The first file out of reach is named by a warning (itself or a
    // directory above it).
    let (_, first_out) = &unreachable[0];
    assert!(
        warnings
            .iter()
            .any(|w| first_out.starts_with(w.split(": ").next().unwrap())),
        "{warnings:?}"
    );
    let listed = ls_all(&r, &snap_id(&summary));
    for (level, full) in &reachable {
        assert_eq!(
            listed.get(full).map(|e| e["kind"].clone()),
            Some(Value::from("file")),
            "level {level} missing"
        );
    }
    for (_, full) in &unreachable {
        assert!(!listed.contains_key(full));
    }
    assert_eq!(
        n(&summary, "files_new") as usize,
        reachable.len(),
        "{summary}"
    );

    // The reachable part restores.
    let target = dir.path().join("restore");
    let summary = restore_clean(&r, &snap_id(&summary), &target, &[]);
    assert_eq!(n(&summary, "files") as usize, reachable.len());
    let base = components(&src);
    for (level, _) in &reachable {
        let mut chain = base.clone();
        chain.extend(names[..*level].iter().cloned());
        assert_eq!(
            read_below(&target, &chain, &format!("file-{level:02}.txt")),
            Some(format!("level {level}\n").into_bytes()),
            "level {level}"
        );
    }
}

// ---------------------------------------------------------------------------
// 9. Large directories
// ---------------------------------------------------------------------------

#[test]
fn a_directory_of_100000_files_backs_up_restores_and_rescans_unchanged() {
    const COUNT: usize = 100_000;
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let big = src.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..COUNT {
        std::fs::write(big.join(format!("f{i:06}")), format!("{i}\n")).unwrap();
    }
    let first = backup_clean(&r, "big", &[&src], &[]);
    assert_eq!(n(&first, "files_new"), COUNT as u64, "{first}");
    let second = backup_clean(&r, "big", &[&src], &[]);
    assert_eq!(n(&second, "files_unchanged"), COUNT as u64, "{second}");
    assert_eq!(n(&second, "bytes_read"), 0, "{second}");
    assert_eq!(n(&second, "files_new") + n(&second, "files_changed"), 0);

    let target = dir.path().join("restore");
    let summary = restore_clean(&r, &snap_id(&second), &target, &[]);
    assert_eq!(n(&summary, "files"), COUNT as u64, "{summary}");
    let back = restored(&target, &big);
    let mut count = 0;
    for entry in std::fs::read_dir(&back).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            std::fs::read(entry.path()).unwrap(),
            format!("{i}\n").as_bytes()
        );
        count += 1;
    }
    assert_eq!(count, COUNT);
}

// ---------------------------------------------------------------------------
// 10. Files deleted during the walk
// ---------------------------------------------------------------------------

fn vanishing_content(i: usize) -> Vec<u8> {
    let mut data = format!("file {i}\n").into_bytes();
    data.extend_from_slice(&random_bytes(8 << 10, i as u64));
    data
}

#[test]
fn files_deleted_during_the_backup_are_warnings_never_errors() {
    const COUNT: usize = 4000;
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    for i in 0..COUNT {
        write(
            &src.join(format!("d{}/f{i:05}", i % 8)),
            &vanishing_content(i),
        );
    }
    let child = r
        .cmd(&backup_args("vanish", &[&src], &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Delete every other file, in walk order, while the backup runs.
    let deleter = {
        let src = src.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let mut deleted = BTreeSet::new();
            for d in 0..8 {
                for i in (0..COUNT).filter(|i| i % 8 == d && i % 2 == 0) {
                    std::fs::remove_file(src.join(format!("d{d}/f{i:05}"))).unwrap();
                    deleted.insert(i);
                    if i % 64 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            deleted
        })
    };
    let out = child.wait_with_output().unwrap();
    let deleted = deleter.join().unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "exit {code:?}: {}",
        stderr(&out)
    );
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    let target = dir.path().join("restore");
    restore_clean(&r, &snap_id(&summary), &target, &[]);
    let back = restored(&target, &src);
    let got = files_rel(&back);
    for (rel, bytes) in &got {
        let i: usize = rel.rsplit('f').next().unwrap().parse().unwrap();
        assert_eq!(bytes, &vanishing_content(i), "{rel}");
    }
    for i in (0..COUNT).filter(|i| !deleted.contains(i)) {
        let rel = format!("d{}/f{i:05}", i % 8);
        assert!(got.contains_key(&rel), "{rel}, never deleted, is missing");
    }
    // Each warning names a file that was deleted, and says it vanished.
    for w in &warnings {
        assert!(
            deleted
                .iter()
                .any(|i| w.contains(&format!("/d{}/f{i:05}", i % 8))),
            "{w}"
        );
    }
    if code == Some(3) {
        assert!(!warnings.is_empty());
        for w in &warnings {
            assert!(w.contains("vanished"), "{w}");
        }
    } else {
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

/// Waits until process `pid` has `path` open; false if it exits first.
fn wait_until_open(pid: u32, path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

#[test]
fn a_file_deleted_while_it_is_being_read_is_reported_as_vanished() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("stays.txt"), b"still here\n");
    // A large sparse file: long enough to read that it is surely open when
    // it is deleted.
    let big = src.join("big.bin");
    let header = random_bytes(1 << 20, 3);
    write(&big, &header);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let child = r
        .cmd(&backup_args("vanish", &[&src], &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until_open(child.id(), &big, Duration::from_secs(60)),
        "larder never opened {}",
        big.display()
    );
    std::fs::remove_file(&big).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "exit {code:?}: {}",
        stderr(&out)
    );
    let summary = json_of(&out);
    let id = snap_id(&summary);
    // Whatever the snapshot holds is right.
    let listed = ls_all(&r, &id);
    assert!(listed.contains_key(p(&src.join("stays.txt"))));
    if listed.contains_key(p(&big)) {
        let out = r.run(&["cat", &id, p(&big)]);
        assert_success(&out);
        assert_eq!(out.stdout.len(), 256 << 20);
        assert_eq!(&out.stdout[..1 << 20], &header[..]);
        assert!(out.stdout[1 << 20..].iter().all(|b| *b == 0));
    }
    let warnings = warnings_of(&summary);
    if code == Some(3) {
        assert!(
            warnings
                .iter()
                .all(|w| w.contains(p(&big)) && w.contains("vanished")),
            "{warnings:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 11. Excludes and file-system boundaries
// ---------------------------------------------------------------------------

#[test]
fn excludes_by_name_by_path_and_from_a_file_leave_out_matches_and_their_contents() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let kept = [
        "app/main.yaml",
        "app/cache-notes.txt",
        "app/sub/cache/keep.txt",
        "docs/readme.md",
        "docs/build.log.txt",
        "tmpfile",
    ];
    let dropped = [
        "scratch.tmp",
        "app/deep/more/other.tmp",
        "node_modules/pkg/index.js",
        "app/node_modules/pkg/index.js",
        "app/node_modules/.bin/tool",
        "app/cache/blob.bin",
        "app/cache/nested/deeper.bin",
        "docs/build.log",
        "docs/old/very.log",
        "secrets/key.pem",
        "secrets/inner/more.pem",
    ];
    for name in kept.iter().chain(&dropped) {
        write(&src.join(name), name.as_bytes());
    }
    let exclude_file = dir.path().join("excludes.txt");
    std::fs::write(
        &exclude_file,
        format!(
            "# logs are noise\n\n*.log\n   \n  # {0}/app is needed\n{0}/secrets/\n# *.yaml\n",
            p(&src)
        ),
    )
    .unwrap();
    let cache = format!("{}/app/cache", p(&src));
    let summary = backup_clean(
        &r,
        "ex",
        &[&src],
        &[
            "--exclude",
            "*.tmp",
            "--exclude",
            "node_modules",
            "--exclude",
            &cache,
            "--exclude-file",
            p(&exclude_file),
        ],
    );
    let listed = ls_all(&r, &snap_id(&summary));
    let files: BTreeSet<String> = listed
        .iter()
        .filter(|(_, e)| e["kind"] == "file")
        .map(|(k, _)| {
            k.strip_prefix(&format!("{}/", p(&src)))
                .unwrap()
                .to_string()
        })
        .collect();
    let want: BTreeSet<String> = kept.iter().map(|s| s.to_string()).collect();
    assert_eq!(files, want);
    // Excluded directories are not in the snapshot at all.
    for gone in ["node_modules", "app/node_modules", "app/cache", "secrets"] {
        let path = format!("{}/{gone}", p(&src));
        assert!(
            !listed
                .keys()
                .any(|k| k == &path || k.starts_with(&format!("{path}/"))),
            "{path} is in the snapshot"
        );
    }
    assert_eq!(n(&summary, "files_new"), kept.len() as u64, "{summary}");
    // Excluded files are not even read.
    let kept_bytes: usize = kept.iter().map(|k| k.len()).sum();
    assert_eq!(n(&summary, "bytes_read"), kept_bytes as u64, "{summary}");
}

#[test]
fn entries_after_an_excluded_directory_are_still_backed_up() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a-before.txt"), b"before\n");
    write(&src.join("b-excluded/inside.txt"), b"excluded\n");
    write(&src.join("c-after.txt"), b"after\n");
    write(&src.join("d-dir/e.txt"), b"later\n");
    let summary = backup_clean(&r, "ex", &[&src], &["--exclude", "b-excluded"]);
    let listed = ls_all(&r, &snap_id(&summary));
    let below: BTreeSet<&str> = listed
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{}/", p(&src))))
        .collect();
    assert_eq!(
        below,
        ["a-before.txt", "c-after.txt", "d-dir", "d-dir/e.txt"]
            .into_iter()
            .collect(),
        "{summary}"
    );
    assert_eq!(n(&summary, "bytes_read"), 19, "{summary}");
}

#[test]
fn excluded_directories_are_not_descended_into() {
    // An unreadable directory below an excluded one gives no warning: the
    // walk never goes there.
    if needs_root_but_is_not("switch to an unprivileged user to make a directory unreadable") {
        return;
    }
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("keep.txt"), b"keep\n");
    write(&src.join("skip/locked/secret.txt"), b"locked\n");
    chown_tree_to_nobody(dir.path());
    chown_tree_to_nobody(r.dir.path());
    chmod(&src.join("skip/locked"), 0o000);
    let mut cmd = r.cmd(&backup_args("ex", &[&src], &["--exclude", "skip"]));
    as_nobody(&mut cmd);
    let out = output_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(warnings_of(&json_of(&out)).is_empty());
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_leaves_out_a_mounted_tmpfs_and_without_it_the_mount_is_included() {
    if needs_root_but_is_not("mount a tmpfs") {
        return;
    }
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("local.txt"), b"on the root file system\n");
    let mnt = src.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs", p(&mnt)])
        .status()
        .unwrap();
    assert!(status.success(), "mount failed");
    let _mounted = Mounted(mnt.clone());
    write(&mnt.join("on-tmpfs.txt"), b"on the tmpfs\n");
    write(&mnt.join("sub/deeper.txt"), b"also on the tmpfs\n");

    for flag in ["--one-file-system", "-x"] {
        let summary = backup_clean(&r, "fs", &[&src], &[flag]);
        let listed = ls_all(&r, &snap_id(&summary));
        assert!(listed.contains_key(p(&src.join("local.txt"))));
        assert!(
            !listed
                .keys()
                .any(|k| k.starts_with(&format!("{}/", p(&mnt)))),
            "{flag}: {listed:?}"
        );
        assert_eq!(n(&summary, "total_bytes"), 24, "{flag}: {summary}");
    }
    let summary = backup_clean(&r, "fs", &[&src], &[]);
    let listed = ls_all(&r, &snap_id(&summary));
    for name in ["on-tmpfs.txt", "sub/deeper.txt"] {
        assert_eq!(listed[p(&mnt.join(name))]["kind"], "file", "{name}");
    }
}

// ---------------------------------------------------------------------------
// 12. Restore safety against crafted snapshots
// ---------------------------------------------------------------------------

/// Builds trees through the library, bypassing every check a backup makes.
struct Crafter {
    repo: Repo,
    blobs: Vec<(ObjectKind, larder::hash::BlobId, Vec<u8>)>,
}

const CRAFTED_MTIME: i64 = 1_600_000_000_123_456_789;

impl Crafter {
    fn new(repo: &Repo) -> Crafter {
        Crafter {
            repo: repo.clone(),
            blobs: Vec::new(),
        }
    }

    fn blob(&mut self, kind: ObjectKind, bytes: Vec<u8>) -> larder::hash::BlobId {
        let id = self.repo.hasher().blob_id(kind, &bytes);
        self.blobs.push((kind, id, bytes));
        id
    }

    fn base(name: &[u8], kind: NodeKind, mode: u32) -> Node {
        let mut node = Node::stream_file(name, CRAFTED_MTIME, 0, Content::default());
        node.kind = kind;
        node.mode = mode;
        node.content = None;
        node.uid = rustix::process::geteuid().as_raw();
        node.gid = rustix::process::getegid().as_raw();
        node
    }

    fn file(&mut self, name: &[u8], data: &[u8]) -> Node {
        let id = self.blob(ObjectKind::DataBlob, data.to_vec());
        let mut node = Crafter::base(name, NodeKind::File, 0o644);
        node.size = data.len() as u64;
        node.content = Some(Content {
            depth: 0,
            entries: vec![ContentRef {
                id,
                len: data.len() as u64,
            }],
        });
        node
    }

    fn dir(&mut self, name: &[u8], entries: Vec<Node>) -> Node {
        let id = self.tree(entries);
        let mut node = Crafter::base(name, NodeKind::Dir, 0o755);
        node.subtree = Some(id);
        node
    }

    fn symlink(&mut self, name: &[u8], target: &[u8]) -> Node {
        let mut node = Crafter::base(name, NodeKind::Symlink, 0o777);
        node.target = Some(ByteVec::from(target.to_vec()));
        node
    }

    fn tree(&mut self, mut entries: Vec<Node>) -> larder::hash::BlobId {
        entries.sort_by(|a, b| a.name.as_slice().cmp(b.name.as_slice()));
        let bytes = Tree { entries }.encode();
        self.blob(ObjectKind::TreeBlob, bytes)
    }

    /// Stores every blob and a snapshot whose root holds `entries`.
    async fn snapshot(mut self, entries: Vec<Node>) -> Snapshot {
        let root = self.tree(entries);
        let writer = BlobWriter::start(
            &self.repo,
            Arc::new(Abort::default()),
            Arc::default(),
            1 << 20,
        )
        .unwrap();
        let blobs = std::mem::take(&mut self.blobs);
        let writer = tokio::task::spawn_blocking(move || {
            for (kind, id, bytes) in blobs {
                writer.store(kind, id, Bytes::from(bytes)).unwrap();
            }
            writer
        })
        .await
        .unwrap();
        writer.finish().await.unwrap();
        let snapshot = Snapshot {
            time_ns: CRAFTED_MTIME,
            source: "crafted".into(),
            host: "test-host".into(),
            tags: vec![],
            kind: "files".into(),
            root,
            parent: None,
            paths: vec!["/".into()],
            command: None,
            summary: SnapshotSummary::default(),
            program: "test".into(),
            user: "test".into(),
            copied_from: None,
        };
        let lease = self
            .repo
            .hold_lease(larder::lease::LeaseKind::Backup)
            .await
            .unwrap();
        self.repo.write_snapshot(&snapshot).await.unwrap();
        lease.finish().await;
        snapshot
    }
}

fn restore_options(target: &Path, overwrite: Overwrite) -> RestoreOptions {
    RestoreOptions {
        target: target.to_path_buf(),
        overwrite,
        include: vec![],
        exclude: vec![],
        progress: Arc::default(),
    }
}

/// Every path below `root` (names only, symlinks not followed).
fn names_under(root: &Path) -> BTreeSet<String> {
    scan(root).keys().map(|k| show(k)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crafted_names_are_skipped_and_nothing_is_written_outside_the_target() {
    let (lib, _) = memory_repo().await;
    assert!(!Path::new("/etc/larder-test").exists());
    let mut c = Crafter::new(&lib.repo);
    let bad = |name: &str| format!("BAD CONTENT {name}").into_bytes();
    let dotdot_dir_file = c.file(b"larder-test", &bad("../larder-test"));
    let dot_dir_file = c.file(b"larder-test", &bad("./larder-test"));
    let sub_dotdot = c.file(b"..", &bad("sub/.."));
    let sub_ok = c.file(b"ok.txt", b"good, in sub\n");
    let entries = vec![
        c.file(b"", &bad("empty")),
        c.dir(b".", vec![dot_dir_file]),
        c.dir(b"..", vec![dotdot_dir_file]),
        c.file(b"/etc/larder-test", &bad("/etc/larder-test")),
        c.file(b"a/b", &bad("a/b")),
        c.file(b"good.txt", b"good\n"),
        c.dir(b"sub", vec![sub_dotdot, sub_ok]),
        c.file(b"x\0y", &bad("x\\0y")),
        c.symlink(b"../escape", b"/etc"),
        c.symlink(b"good-link", b"/etc/passwd"),
    ];
    let snapshot = c.snapshot(entries).await;

    // outer/middle/target: a write through ".." would land in middle.
    let outer = TempDir::new().unwrap();
    let middle = outer.path().join("middle");
    let target = middle.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let before = names_under(outer.path());
    let summary: RestoreSummary = restore(
        &lib.repo,
        &snapshot,
        &restore_options(&target, Overwrite::Never),
    )
    .await
    .unwrap();

    assert_eq!(
        names_under(&middle),
        [
            "",
            "target",
            "target/good-link",
            "target/good.txt",
            "target/sub",
            "target/sub/ok.txt"
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    let after = names_under(outer.path());
    assert!(after.is_superset(&before));
    assert!(!Path::new("/etc/larder-test").exists());
    assert!(
        !files_under(outer.path())
            .iter()
            .any(|(path, bytes)| bytes.starts_with(b"BAD CONTENT")
                || path.file_name() == Some(OsStr::new("larder-test"))),
        "a bad entry was written"
    );
    assert_eq!(std::fs::read(target.join("good.txt")).unwrap(), b"good\n");
    assert_eq!(
        std::fs::read(target.join("sub/ok.txt")).unwrap(),
        b"good, in sub\n"
    );
    assert_eq!(summary.files, 2, "{summary:?}");
    assert_eq!(summary.symlinks, 1, "{summary:?}");
    assert_eq!(
        std::fs::read_link(target.join("good-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    // One report per bad entry: "", ".", "..", "../escape",
    // "/etc/larder-test", "a/b", "x\0y" at the root, ".." in sub.
    assert_eq!(summary.skipped.len(), 8, "{:#?}", summary.skipped);
    for reason in &summary.skipped {
        assert!(reason.contains("not a single path component"), "{reason}");
    }
    assert!(
        summary.skipped.iter().any(|s| s.contains("/sub/..")),
        "{:#?}",
        summary.skipped
    );
}

#[test]
fn a_symlink_in_the_target_is_never_followed() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a.txt"), b"a\n");
    write(&src.join("sub/b.txt"), b"b\n");
    let id = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    assert!(src.starts_with("/tmp"), "the source is below /tmp");

    for overwrite in ["never", "always"] {
        let outside = TempDir::new().unwrap();
        let target = dir.path().join(format!("restore-{overwrite}"));
        std::fs::create_dir(&target).unwrap();
        symlink(outside.path(), &target.join("tmp"));
        let out = restore_cli(&r, &id, &target, &["--overwrite", overwrite]);
        assert_eq!(out.status.code(), Some(3), "{overwrite}: {}", stderr(&out));
        let summary = json_of(&out);
        assert_eq!(
            names_under(outside.path()),
            [String::new()].into_iter().collect(),
            "{overwrite}: something was written through the symlink"
        );
        let skipped: Vec<&str> = summary["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("/tmp:") && s.contains("symlink")),
            "{overwrite}: {skipped:?}"
        );
        assert!(
            stderr(&out).contains("larder: warning: /tmp:"),
            "{}",
            stderr(&out)
        );
        assert!(
            std::fs::symlink_metadata(target.join("tmp"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(n(&summary, "files"), 0, "{summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crafted_directory_that_is_a_symlink_in_the_target_is_not_followed() {
    let (lib, _) = memory_repo().await;
    let mut c = Crafter::new(&lib.repo);
    let inner = c.file(b"planted.txt", b"must not leave the target\n");
    let nested = c.file(b"deeper.txt", b"nor this\n");
    let nested_dir = c.dir(b"nested", vec![nested]);
    let entries = vec![
        c.dir(b"d", vec![inner, nested_dir]),
        c.file(b"e.txt", b"fine\n"),
    ];
    let snapshot = c.snapshot(entries).await;

    for overwrite in [Overwrite::Never, Overwrite::Always] {
        let outside = TempDir::new().unwrap();
        let dir = TempDir::new().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        symlink(outside.path(), &target.join("d"));
        let summary = restore(&lib.repo, &snapshot, &restore_options(&target, overwrite))
            .await
            .unwrap();
        assert_eq!(
            names_under(outside.path()),
            [String::new()].into_iter().collect(),
            "{overwrite:?}: written through the symlink"
        );
        assert!(
            summary.skipped.iter().any(|s| s.starts_with("/d:")),
            "{overwrite:?}: {:#?}",
            summary.skipped
        );
        assert_eq!(std::fs::read(target.join("e.txt")).unwrap(), b"fine\n");
        assert_eq!(
            std::fs::read_link(target.join("d")).unwrap(),
            outside.path(),
            "{overwrite:?}: the planted link was replaced"
        );
        assert_eq!(summary.files, 1, "{overwrite:?}: {summary:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_that_is_a_symlink_in_the_target_is_replaced_as_a_link_never_written_through() {
    let (lib, _) = memory_repo().await;
    let mut c = Crafter::new(&lib.repo);
    let entries = vec![c.file(b"f.txt", b"from the snapshot\n")];
    let snapshot = c.snapshot(entries).await;
    let outside = TempDir::new().unwrap();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, b"outside content\n").unwrap();
    let dir = TempDir::new().unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    symlink(&victim, &target.join("f.txt"));

    // Never: refused, nothing written anywhere.
    let err = restore(
        &lib.repo,
        &snapshot,
        &restore_options(&target, Overwrite::Never),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already exist"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside content\n");
    assert_eq!(std::fs::read_link(target.join("f.txt")).unwrap(), victim);

    // Always: the link itself is replaced; its target is untouched.
    let summary = restore(
        &lib.repo,
        &snapshot,
        &restore_options(&target, Overwrite::Always),
    )
    .await
    .unwrap();
    assert_eq!(summary.replaced, 1, "{summary:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"outside content\n");
    let meta = std::fs::symlink_metadata(target.join("f.txt")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        std::fs::read(target.join("f.txt")).unwrap(),
        b"from the snapshot\n"
    );
}

// ---------------------------------------------------------------------------
// 13. Overwriting
// ---------------------------------------------------------------------------

/// A snapshot of src/{a.txt, b.txt, sub/c.txt} and a target where b.txt
/// already exists (changed locally) next to a file of the target's own.
fn overwrite_setup() -> (CliRepo, TempDir, PathBuf, String, PathBuf) {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a.txt"), b"a from the snapshot\n");
    write(&src.join("b.txt"), b"b from the snapshot\n");
    write(&src.join("sub/c.txt"), b"c from the snapshot\n");
    let id = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    let target = dir.path().join("restore");
    write(
        &restored(&target, &src).join("b.txt"),
        b"b, edited locally\n",
    );
    write(&target.join("mine.txt"), b"the target's own file\n");
    (r, dir, src, id, target)
}

#[test]
fn restore_refuses_to_overwrite_an_existing_file_and_then_writes_nothing() {
    let (r, _dir, src, id, target) = overwrite_setup();
    let before = scan(&target);
    let snapshots_before = r.run(&["--json", "snapshots"]).stdout;
    let out = restore_cli(&r, &id, &target, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("already exist"), "{err}");
    assert!(
        err.contains(p(&restored(&target, &src).join("b.txt"))),
        "{err}"
    );
    assert!(err.contains("--overwrite always"), "{err}");
    // Not one file, directory or time changed; no safety snapshot either.
    assert_eq!(scan(&target), before);
    assert_eq!(r.run(&["--json", "snapshots"]).stdout, snapshots_before);
    // The same with --overwrite never spelled out.
    let out = restore_cli(&r, &id, &target, &["--overwrite", "never"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(scan(&target), before);
}

#[test]
fn overwrite_always_replaces_after_a_safety_snapshot_that_holds_the_old_contents() {
    let (r, dir, src, id, target) = overwrite_setup();
    let b = restored(&target, &src).join("b.txt");
    let out = restore_cli(&r, &id, &target, &["--overwrite", "always"]);
    assert_success(&out);
    let summary = json_of(&out);
    assert_eq!(n(&summary, "replaced"), 1, "{summary}");
    assert_eq!(n(&summary, "files"), 3, "{summary}");
    let safety = summary["safety_snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no safety snapshot: {summary}"))
        .to_string();
    assert!(
        stderr(&out).contains(&format!(
            "saved the files about to be replaced as snapshot {}",
            &safety[..8]
        )),
        "{}",
        stderr(&out)
    );
    let back = restored(&target, &src);
    assert_eq!(std::fs::read(&b).unwrap(), b"b from the snapshot\n");
    assert_eq!(
        std::fs::read(back.join("a.txt")).unwrap(),
        b"a from the snapshot\n"
    );
    assert_eq!(
        std::fs::read(back.join("sub/c.txt")).unwrap(),
        b"c from the snapshot\n"
    );
    assert_eq!(
        std::fs::read(target.join("mine.txt")).unwrap(),
        b"the target's own file\n"
    );

    let list: Value = json_of(&r.run(&["--json", "snapshots"]));
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == safety.as_str())
        .unwrap_or_else(|| panic!("{safety} not listed: {list}"));
    assert_eq!(entry["source"], "kb.pre-restore", "{entry}");
    assert_eq!(entry["tags"], serde_json::json!(["pre-restore"]), "{entry}");
    let tagged = json_of(&r.run(&["--json", "snapshots", "--tag", "pre-restore"]));
    assert_eq!(tagged.as_array().unwrap().len(), 1, "{tagged}");

    // The safety snapshot holds exactly the replaced file, as it was.
    let undo = dir.path().join("undo");
    restore_clean(&r, &safety, &undo, &[]);
    let files = files_rel(&undo);
    let rel = p(&b).trim_start_matches('/').to_string();
    assert_eq!(
        files,
        [(rel, b"b, edited locally\n".to_vec())]
            .into_iter()
            .collect()
    );
}

// ---------------------------------------------------------------------------
// 14. Selective restore
// ---------------------------------------------------------------------------

#[test]
fn restore_include_and_exclude_select_files_and_an_included_directory_brings_its_contents() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let all = [
        "docs/a.md",
        "docs/b.md",
        "docs/img/logo.png",
        "conf/x.yaml",
        "conf/deep/y.yaml",
        "conf/deep/z.txt",
        "top.txt",
    ];
    for name in all {
        write(&src.join(name), name.as_bytes());
    }
    let id = snap_id(&backup_clean(&r, "sel", &[&src], &[]));
    let docs = format!("{}/docs", p(&src));
    let deep = format!("{}/conf/deep", p(&src));
    let yaml_path = format!("{}/conf/*.yaml", p(&src));
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--include", "*.yaml"],
            vec!["conf/x.yaml", "conf/deep/y.yaml"],
        ),
        (vec!["--include", &yaml_path], vec!["conf/x.yaml"]),
        (
            vec!["--include", &docs],
            vec!["docs/a.md", "docs/b.md", "docs/img/logo.png"],
        ),
        (
            vec!["--include", &docs, "--exclude", "b.md"],
            vec!["docs/a.md", "docs/img/logo.png"],
        ),
        (
            vec!["--include", "top.txt", "--include", &deep],
            vec!["top.txt", "conf/deep/y.yaml", "conf/deep/z.txt"],
        ),
        (
            vec!["--exclude", "*.yaml", "--exclude", &docs],
            vec!["conf/deep/z.txt", "top.txt"],
        ),
        (
            vec!["--exclude", "img"],
            vec![
                "docs/a.md",
                "docs/b.md",
                "conf/x.yaml",
                "conf/deep/y.yaml",
                "conf/deep/z.txt",
                "top.txt",
            ],
        ),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let target = dir.path().join(format!("restore-{i}"));
        let summary = restore_clean(&r, &id, &target, args);
        let got: BTreeSet<String> = files_rel(&target).into_keys().collect();
        let want: BTreeSet<String> = want
            .iter()
            .map(|w| format!("{}/{w}", p(&src).trim_start_matches('/')))
            .collect();
        assert_eq!(got, want, "{args:?}");
        assert_eq!(
            n(&summary, "files") as usize,
            want.len(),
            "{args:?}: {summary}"
        );
        for w in &want {
            let name = w.rsplit_once("/src/").unwrap().1;
            assert_eq!(std::fs::read(target.join(w)).unwrap(), name.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// 15. Reading one file touches one data blob
// ---------------------------------------------------------------------------

/// `larder --json cat SNAP PATH`: the bytes and the summary's requests.
fn cat_json(r: &CliRepo, snap: &str, path: &str) -> (Vec<u8>, Value) {
    let out = r.run(&["--json", "cat", snap, path]);
    assert_success(&out);
    let err = stderr(&out);
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary on stderr: {err}"));
    let summary: Value = serde_json::from_str(line).unwrap();
    (out.stdout, summary["requests"].clone())
}

#[test]
fn cat_of_one_file_reads_one_data_blob_once_the_tree_packs_are_cached() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    for d in 0..50 {
        for f in 0..100 {
            write(
                &src.join(format!("dir{d:02}/file{f:03}.yaml")),
                format!("dir: {d}\nfile: {f}\n").as_bytes(),
            );
        }
    }
    let id = snap_id(&backup_clean(&r, "many", &[&src], &[]));
    let path = format!("{}/dir37/file042.yaml", p(&src));
    let want = b"dir: 37\nfile: 42\n";

    let (bytes, requests) = cat_json(&r, &id, &path);
    assert_eq!(bytes, want);
    assert_eq!(
        requests["get"], 3,
        "config, key file, one data read: {requests}"
    );
    assert!(n(&requests, "bytes_down") < 4096, "{requests}");

    // Without the tree-pack cache the trees are fetched again.
    let packs: Vec<PathBuf> = std::fs::read_dir(&r.cache)
        .unwrap()
        .map(|e| e.unwrap().path().join("packs"))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    std::fs::remove_dir_all(&packs[0]).unwrap();
    let (bytes, requests) = cat_json(&r, &id, &path);
    assert_eq!(bytes, want);
    assert!(n(&requests, "get") > 3, "{requests}");
    assert!(packs[0].is_dir(), "the tree packs were cached again");

    let (bytes, requests) = cat_json(&r, &id, &path);
    assert_eq!(bytes, want);
    assert_eq!(requests["get"], 3, "{requests}");
}

// ---------------------------------------------------------------------------
// 16. ls, find, diff, log
// ---------------------------------------------------------------------------

#[test]
fn ls_lists_every_entry_with_its_kind_and_size() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("one.txt"), &random_bytes(1234, 1));
    write(&src.join("empty"), b"");
    write(&src.join("sub/two.bin"), &random_bytes(70_000, 2));
    write(&src.join("sub/deeper/three"), b"3");
    std::fs::create_dir_all(src.join("void")).unwrap();
    symlink("sub/two.bin", &src.join("link"));
    chmod(&src.join("one.txt"), 0o640);
    let id = snap_id(&backup_clean(&r, "ls", &[&src], &[]));

    let listed = ls_all(&r, &id);
    let fs = scan(&src);
    let below: BTreeMap<String, &Value> = listed
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{}/", p(&src)))?.to_string(), v)))
        .collect();
    assert_eq!(
        below.keys().cloned().collect::<BTreeSet<_>>(),
        fs.keys()
            .filter(|k| !k.is_empty())
            .map(|k| show(k))
            .collect::<BTreeSet<_>>()
    );
    for (rel, entry) in &fs {
        if rel.is_empty() {
            continue;
        }
        let e = below[&show(rel)];
        let meta = std::fs::symlink_metadata(src.join(OsStr::from_bytes(rel))).unwrap();
        match &entry.kind {
            Kind::File(bytes) => {
                assert_eq!(e["kind"], "file", "{e}");
                assert_eq!(e["size"], bytes.len() as u64, "{e}");
                assert_eq!(e["mode"], entry.mode, "{e}");
            }
            Kind::Dir => assert_eq!(e["kind"], "dir", "{e}"),
            Kind::Symlink(target) => {
                assert_eq!(e["kind"], "symlink", "{e}");
                assert_eq!(e["target"], show(target), "{e}");
            }
        }
        assert_eq!(e["uid"], meta.uid(), "{e}");
        assert_eq!(e["gid"], meta.gid(), "{e}");
    }
    // The ancestors of the backed-up path are listed as directories.
    assert_eq!(listed["/tmp"]["kind"], "dir");
    assert_eq!(listed[p(&src)]["kind"], "dir");

    // Without -r: only the directory's own entries; a file path: itself.
    let out = r.run(&["--json", "ls", &id, &format!("{}/sub", p(&src))]);
    assert_success(&out);
    let paths: Vec<String> = json_of(&out)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        vec![
            format!("{}/sub/deeper", p(&src)),
            format!("{}/sub/two.bin", p(&src))
        ]
    );
    let out = r.run(&["--json", "ls", &id, p(&src.join("one.txt"))]);
    assert_success(&out);
    let entries = json_of(&out)["entries"].clone();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["size"], 1234);
    // Text: -l shows mode, size and name.
    let out = r.run(&["ls", &id, p(&src), "-l"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("-rw-r-----")
            && l.contains(" 1234 ")
            && l.ends_with(&format!("{}/one.txt", p(&src)))),
        "{text}"
    );
    // A path that is not there is an error naming it.
    let out = r.run(&["ls", &id, &format!("{}/nope", p(&src))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}

#[test]
fn find_returns_matches_from_every_snapshot_newest_first() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a.yaml"), b"a: 1\n");
    write(&src.join("sub/b.yaml"), b"b: 1\n");
    write(&src.join("c.txt"), b"c\n");
    let s1 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    write(&src.join("sub/d.yaml"), b"d: 1\n");
    std::fs::remove_file(src.join("a.yaml")).unwrap();
    let s2 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));

    let out = r.run(&["--json", "find", "*.yaml"]);
    assert_success(&out);
    let found = json_of(&out);
    assert_eq!(found["snapshots"], 2, "{found}");
    let matches: Vec<(String, String)> = found["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["kind"], "file", "{m}");
            assert_eq!(m["source"], "kb", "{m}");
            (
                m["snapshot"].as_str().unwrap().to_string(),
                m["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let at = |name: &str| format!("{}/{name}", p(&src));
    assert_eq!(
        matches,
        vec![
            (s2.clone(), at("sub/b.yaml")),
            (s2.clone(), at("sub/d.yaml")),
            (s1.clone(), at("a.yaml")),
            (s1.clone(), at("sub/b.yaml")),
        ]
    );
    // A pattern with '/' matches whole paths.
    let out = r.run(&["--json", "find", &format!("{}/sub/*.yaml", p(&src))]);
    assert_success(&out);
    assert_eq!(json_of(&out)["matches"].as_array().unwrap().len(), 3);
    // Text output: one line per match, newest snapshot first.
    let out = r.run(&["find", "*.yaml"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with(&s2[..8]) && lines[3].starts_with(&s1[..8]),
        "{text}"
    );
}

#[test]
fn diff_shows_added_removed_modified_and_metadata_only_changes() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("keep.txt"), b"unchanged\n");
    write(&src.join("remove.txt"), b"going away\n");
    write(&src.join("modify.txt"), b"line 1\nline 2\nline 3\n");
    write(&src.join("chmod.txt"), b"same bytes\n");
    chmod(&src.join("chmod.txt"), 0o644);
    let s1 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    write(&src.join("added.txt"), b"brand new\n");
    std::fs::remove_file(src.join("remove.txt")).unwrap();
    std::fs::write(src.join("modify.txt"), b"line 1\nline two\nline 3\n").unwrap();
    chmod(&src.join("chmod.txt"), 0o600);
    let s2 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));

    let at = |name: &str| format!("{}/{name}", p(&src));
    for content in [false, true] {
        let mut args = vec!["--json", "diff", &s1[..8], &s2[..8]];
        if content {
            args.push("--content");
        }
        let out = r.run(&args);
        assert_success(&out);
        let diff = json_of(&out);
        let changes: BTreeMap<String, &Value> = diff["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["path"].as_str().unwrap().to_string(), c))
            .collect();
        assert_eq!(changes[&at("added.txt")]["change"], "+", "{diff}");
        assert_eq!(changes[&at("remove.txt")]["change"], "-", "{diff}");
        assert_eq!(changes[&at("modify.txt")]["change"], "M", "{diff}");
        assert_eq!(changes[&at("chmod.txt")]["change"], "U", "{diff}");
        assert!(
            changes[&at("chmod.txt")]["details"]
                .as_str()
                .unwrap()
                .contains("mode 644 -> 600"),
            "{diff}"
        );
        assert!(!changes.contains_key(&at("keep.txt")), "{diff}");
        assert_eq!(diff["added"], 1, "{diff}");
        assert_eq!(diff["removed"], 1, "{diff}");
        assert_eq!(diff["modified"], 1, "{diff}");
        let unified = &changes[&at("modify.txt")]["unified"];
        if content {
            let text = unified.as_str().unwrap_or_else(|| panic!("{diff}"));
            assert!(text.contains("-line 2\n"), "{text}");
            assert!(text.contains("+line two\n"), "{text}");
            assert!(!text.contains("-line 1\n"), "{text}");
        } else {
            assert!(unified.is_null(), "{diff}");
        }
    }
    // The text form: one line per change.
    let out = r.run(&["diff", &s1[..8], &s2[..8], "--content"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        format!("+  {}", at("added.txt")),
        format!("-  {}", at("remove.txt")),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }
    assert!(text.contains("+line two"), "{text}");
}

#[test]
fn log_shows_a_files_versions_added_unchanged_modified() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let file = src.join("tracked.yaml");
    write(&file, b"version: 1\n");
    write(&src.join("other.txt"), b"x\n");
    let s1 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    write(&src.join("other.txt"), b"xx\n");
    let s2 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    write(&file, b"version: 22\n");
    let s3 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));

    let out = r.run(&["--json", "log", p(&file)]);
    assert_success(&out);
    let log = json_of(&out);
    let versions: Vec<(String, String, u64)> = log["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["snapshot"].as_str().unwrap().to_string(),
                v["change"].as_str().unwrap().to_string(),
                v["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (s1, "added".to_string(), 11),
            (s2, "unchanged".to_string(), 11),
            (s3, "modified".to_string(), 12),
        ]
    );
    // A removed file shows as removed in the snapshot that lost it.
    std::fs::remove_file(&file).unwrap();
    let s4 = snap_id(&backup_clean(&r, "kb", &[&src], &[]));
    let log = json_of(&r.run(&["--json", "log", p(&file)]));
    let last = log["versions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["snapshot"], s4.as_str(), "{log}");
    assert_eq!(last["change"], "removed", "{log}");
}

// ---------------------------------------------------------------------------
// 17. Restored metadata
// ---------------------------------------------------------------------------

#[test]
fn restored_directories_and_files_get_their_stored_modes_and_mtimes() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("private/key"), b"k\n");
    write(&src.join("shared/group/notes"), b"n\n");
    write(&src.join("readonly/frozen.txt"), b"f\n");
    write(&src.join("open/script"), b"#!/bin/sh\n");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let modes = [
        ("private/key", 0o600),
        ("private", 0o700),
        ("shared/group/notes", 0o640),
        ("shared/group", 0o750),
        ("shared", 0o755),
        ("readonly/frozen.txt", 0o444),
        // A directory its own contents could not be written into.
        ("readonly", 0o555),
        ("open/script", 0o755),
        ("open", 0o777),
        ("empty", 0o711),
    ];
    for (i, (name, mode)) in modes.iter().enumerate() {
        let path = src.join(name);
        chmod(&path, *mode);
        set_mtime(
            &path,
            1_400_000_000_000_000_000 + i as i64 * 86_400_000_000_123,
        );
    }
    set_mtime(&src, 1_300_000_000_500_000_000);
    let before = scan(&src);
    let id = snap_id(&backup_clean(&r, "meta", &[&src], &[]));
    let target = dir.path().join("restore");
    restore_clean(&r, &id, &target, &[]);
    let back = restored(&target, &src);
    assert_same_tree(&before, &scan(&back));
    for (name, mode) in modes {
        let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{name}");
    }
    // Restore as root gives back the owners too.
    if is_root() {
        for (name, _) in modes {
            let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
            let orig = std::fs::symlink_metadata(src.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (orig.uid(), orig.gid()), "{name}");
        }
    }
    // Make the read-only directory removable for the TempDir.
    chmod(&back.join("readonly"), 0o755);
}

#[test]
fn an_existing_target_directory_keeps_its_own_mode_unless_overwrite_is_always() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    write(&src.join("conf/app.yaml"), b"a: 1\n");
    chmod(&src.join("conf"), 0o755);
    let id = snap_id(&backup_clean(&r, "kb", &[&src], &[]));

    let never = dir.path().join("never");
    let conf = restored(&never, &src).join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    chmod(&conf, 0o700);
    restore_clean(&r, &id, &never, &[]);
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(std::fs::read(conf.join("app.yaml")).unwrap(), b"a: 1\n");

    let always = dir.path().join("always");
    let conf = restored(&always, &src).join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    chmod(&conf, 0o700);
    restore_clean(&r, &id, &always, &["--overwrite", "always"]);
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o7777, 0o755);
}
