//! What a backup reads and stores: a re-scan reads only what changed since
//! the parent snapshot, counters count every file name, and content is
//! chunked per file so identical files are one blob and a small edit stores
//! about that much.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::*;

use super::{
    TreeBuilder, backup_clean, files_rel, ls_all, mtime_ns, n, p, restore_clean, restored,
    set_mtime, snap_id, write,
};

// ---------------------------------------------------------------------------
// Re-scans against the parent
// ---------------------------------------------------------------------------

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
fn a_rescan_stores_again_the_unchanged_trees_whose_stored_copy_was_found_damaged() {
    let r = CliRepo::init();
    let dir = stable_tempdir("damaged-trees-rescan");
    let src = dir.path().join("src");
    rescan_tree(&src);
    let first = backup_clean(&r, "kb", &[&src], &[]);

    // The tree pack is the one the local cache holds a copy of.
    let caches = tree_pack_caches(&r.cache);
    let cached: Vec<PathBuf> = caches
        .iter()
        .flat_map(|packs| files_under(packs).into_iter().map(|(path, _)| path))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let name = cached[0].file_name().unwrap().to_str().unwrap().to_string();
    let stored = r.repo.join("packs").join(&name[..2]).join(&name);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    // check finds the damaged tree; the catalog remembers it.
    assert_eq!(r.run(&["check", "--read-data"]).status.code(), Some(1));

    // The files are unchanged; the walk reads the parent's trees from the
    // intact cached copy, and every tree without a usable stored copy is
    // stored again rather than named by id.
    let second = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(n(&second, "bytes_read"), 0, "{second}");
    assert!(n(&second, "blobs_new") >= 1, "{second}");

    // Both snapshots restore whole from storage alone.
    for packs in &caches {
        std::fs::remove_dir_all(packs).unwrap();
    }
    for (i, summary) in [&first, &second].into_iter().enumerate() {
        let target = dir.path().join(format!("restore-{i}"));
        restore_clean(&r, &snap_id(summary), &target, &[]);
        assert_eq!(
            files_rel(&restored(&target, &src)),
            files_rel(&src),
            "snapshot {i}"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }
}

/// The local tree-pack caches under `cache`: each repository's `packs`.
fn tree_pack_caches(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![cache.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "packs") {
                    found.push(path);
                } else {
                    dirs.push(path);
                }
            }
        }
    }
    found
}

#[test]
fn a_rescan_with_the_tree_pack_cache_emptied_still_reads_no_content() {
    let r = CliRepo::init();
    let dir = stable_tempdir("uncached-rescan");
    let src = dir.path().join("src");
    let files = rescan_tree(&src);

    let first = backup_clean(&r, "kb", &[&src], &[]);
    // As on another machine: the parent's trees must come from storage.
    let caches = tree_pack_caches(&r.cache);
    assert!(!caches.is_empty());
    for packs in &caches {
        std::fs::remove_dir_all(packs).unwrap();
    }
    let second = backup_clean(&r, "kb", &[&src], &[]);
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");
    assert_eq!(n(&second, "bytes_read"), 0, "{second}");
    assert_eq!(
        n(&second, "files_unchanged"),
        files.len() as u64,
        "{second}"
    );
    assert_eq!(n(&second, "blobs_new"), 0, "{second}");
    // The fetched tree packs are cached again.
    assert!(
        caches
            .iter()
            .any(|p| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())),
        "no tree pack was cached again"
    );
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
    let (_dir, src) = TreeBuilder::new()
        .file("config.yaml", b"replicas: 3\n")
        .build();
    let file = src.join("config.yaml");
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
    let (_dir, src) = TreeBuilder::new()
        .file("a.txt", b"shared content\n")
        .hard_link("b.txt", "a.txt")
        .file("c.txt", b"own\n")
        .build();
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
// Per-file chunking and dedup
// ---------------------------------------------------------------------------

/// Tree blobs a snapshot holds: one per directory listed, plus the root.
fn tree_count(listed: &BTreeMap<String, Value>) -> u64 {
    listed.values().filter(|e| e["kind"] == "dir").count() as u64 + 1
}

#[test]
fn small_files_are_never_merged_and_identical_files_are_one_blob() {
    let r = CliRepo::init();
    // 50 distinct 1 KiB files: 50 data blobs, one per file, however small.
    let tree = (0..50).fold(TreeBuilder::new(), |t, i| {
        t.file(format!("small/{i:02}.txt"), random_bytes(1024, 1000 + i))
    });
    // Two identical 100 KiB files in different directories: one blob.
    let twin = random_bytes(100 << 10, 7);
    let (_dir, src) = tree
        .file("left/copy.bin", &twin)
        .file("right/deeper/other-name.bin", &twin)
        .build();
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
