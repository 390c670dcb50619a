//! Restore gives back what was backed up (contents, modes, mtimes, links),
//! refuses to overwrite unless told to and then keeps a safety snapshot of
//! what it replaces, and restores only what `--include`/`--exclude` select.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::*;

use super::{
    Entry, Kind, TreeBuilder, backup_clean, chmod, files_rel, is_root, json_of, ls_all, n, p,
    restore_clean, restore_cli, restored, scan, set_mtime, show, snap_id, write,
};

// ---------------------------------------------------------------------------
// Round trip and restored metadata
// ---------------------------------------------------------------------------

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

#[test]
fn a_tree_round_trips_with_contents_modes_mtimes_and_symlinks() {
    let r = CliRepo::init();
    let outside = TempDir::new().unwrap();
    write(&outside.path().join("victim.txt"), b"outside, untouched");
    let (dir, src) = TreeBuilder::new()
        .file("plain.txt", b"hello\n")
        .file("empty.txt", b"")
        .file("nested/deeper/deepest/data.bin", random_bytes(300_000, 1))
        .file("nested/big.bin", random_bytes(3 << 20, 2))
        .file("nested/deeper/also-empty", b"")
        .dir("empty-dir")
        .file("private.key", b"secret\n")
        .mode("private.key", 0o600)
        .file("run.sh", b"#!/bin/sh\necho hi\n")
        .mode("run.sh", 0o755)
        .file("group.conf", b"x = 1\n")
        .mode("group.conf", 0o640)
        .mode("nested/deeper", 0o750)
        .file("hard-a", b"one inode, two names\n")
        .hard_link("nested/hard-b", "hard-a")
        .file(OsStr::from_bytes(b"caf\xe9.yaml"), b"name: caf\xc3\xa9\n")
        .symlink("rel-link", "plain.txt")
        .symlink("nested/up-link", "../plain.txt")
        .symlink("abs-link", outside.path())
        .symlink("abs-file-link", outside.path().join("victim.txt"))
        .symlink("dangling", "/nonexistent/larder/target")
        .symlink("nested/dir-link", "deeper")
        .build();
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

#[test]
fn a_wide_and_deep_tree_round_trips_in_order_with_excludes_and_rescans_unchanged() {
    // Four levels of five directories (780 in all): the walk scans
    // subdirectories ahead on other threads at every level, and must still
    // put every entry in its own directory, leave out what is excluded and
    // find everything unchanged the next time.
    let r = CliRepo::init();
    let mut tree = TreeBuilder::new();
    let mut dirs = vec![String::new()];
    for _level in 0..4 {
        let mut next = Vec::new();
        for dir in &dirs {
            for i in 0..5 {
                next.push(format!("{dir}d{i}/"));
            }
        }
        dirs = next;
    }
    let mut files = 0;
    for (n, dir) in dirs.iter().enumerate() {
        tree = tree.file(
            format!("{dir}note-{n}.yaml"),
            format!("id: {n}\n").as_bytes(),
        );
        tree = tree.file(format!("{dir}skip.tmp"), b"excluded\n");
        files += 1;
        if n % 7 == 0 {
            tree = tree.symlink(format!("{dir}link"), "note");
        }
    }
    let (dir, src) = tree
        .dir("d1/d2/cache")
        .file("d1/d2/cache/x.yaml", b"x")
        .build();
    let summary = backup_clean(
        &r,
        "wide",
        &[&src],
        &["--exclude", "*.tmp", "--exclude", "cache"],
    );
    assert_eq!(n(&summary, "files_new"), files, "{summary}");
    let id = snap_id(&summary);

    // What a restore must give: the source without what is excluded.
    let expected = || {
        let mut expected = scan(&src);
        expected.retain(|rel, _| {
            let rel = show(rel);
            !rel.ends_with(".tmp") && !rel.contains("cache")
        });
        expected
    };
    let target = dir.path().join("restore");
    restore_clean(&r, &id, &target, &[]);
    assert_same_tree(&expected(), &scan(&restored(&target, &src)));

    let again = backup_clean(
        &r,
        "wide",
        &[&src],
        &["--exclude", "*.tmp", "--exclude", "cache"],
    );
    assert_eq!(n(&again, "files_unchanged"), files, "{again}");
    assert_eq!(n(&again, "bytes_read"), 0, "{again}");

    // Directories are scanned in bundles ahead of the walk: a change deep
    // inside one, and a file added next to it, are still seen, and land in
    // their own directories.
    let deep = dirs.len() / 2 + 3;
    let changed = src.join(format!("{}note-{deep}.yaml", dirs[deep]));
    std::fs::write(&changed, format!("id: {deep}\nchanged: yes\n")).unwrap();
    let added = src.join(format!("{}added.yaml", dirs[deep + 1]));
    std::fs::write(&added, b"added: yes\n").unwrap();
    let third = backup_clean(
        &r,
        "wide",
        &[&src],
        &["--exclude", "*.tmp", "--exclude", "cache"],
    );
    assert_eq!(n(&third, "files_changed"), 1, "{third}");
    assert_eq!(n(&third, "files_new"), 1, "{third}");
    assert_eq!(n(&third, "files_unchanged"), files - 1, "{third}");
    let target = dir.path().join("restore-3");
    restore_clean(&r, &snap_id(&third), &target, &[]);
    assert_same_tree(&expected(), &scan(&restored(&target, &src)));
}

#[test]
fn restored_directories_and_files_get_their_stored_modes_and_mtimes() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("private/key", b"k\n")
        .file("shared/group/notes", b"n\n")
        .file("readonly/frozen.txt", b"f\n")
        .file("open/script", b"#!/bin/sh\n")
        .dir("empty")
        .build();
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
    let (dir, src) = TreeBuilder::new()
        .file("conf/app.yaml", b"a: 1\n")
        .mode("conf", 0o755)
        .build();
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

/// A regression test for a fixed bug (moved here from `regressions`): a
/// directory that already exists in the target keeps its own mode.
#[test]
fn restoring_into_an_existing_directory_keeps_its_metadata() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("shared/f.txt", b"data\n")
        .mode("shared", 0o777)
        .build();
    assert_success(&r.run(&["backup", "--source", "t", p(&src)]));
    let target = dir.path().join("target");
    let existing = restored(&target, &src).join("shared");
    std::fs::create_dir_all(&existing).unwrap();
    chmod(&existing, 0o700);
    assert_success(&r.run(&["restore", "latest", "--target", p(&target)]));
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "an existing directory keeps its own mode");
    assert_eq!(std::fs::read(existing.join("f.txt")).unwrap(), b"data\n");
}

// ---------------------------------------------------------------------------
// Overwriting
// ---------------------------------------------------------------------------

/// A snapshot of src/{a.txt, b.txt, sub/c.txt} and a target where b.txt
/// already exists (changed locally) next to a file of the target's own.
fn overwrite_setup() -> (CliRepo, TempDir, PathBuf, String, PathBuf) {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("a.txt", b"a from the snapshot\n")
        .file("b.txt", b"b from the snapshot\n")
        .file("sub/c.txt", b"c from the snapshot\n")
        .build();
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
// Selective restore
// ---------------------------------------------------------------------------

#[test]
fn restore_include_and_exclude_select_files_and_an_included_directory_brings_its_contents() {
    let r = CliRepo::init();
    let all = [
        "docs/a.md",
        "docs/b.md",
        "docs/img/logo.png",
        "conf/x.yaml",
        "conf/deep/y.yaml",
        "conf/deep/z.txt",
        "top.txt",
    ];
    let (dir, src) = all
        .iter()
        .fold(TreeBuilder::new(), |t, name| t.file(name, name))
        .build();
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
        // Relative patterns with a '/' match at any depth.
        (vec!["--include", "conf/*.yaml"], vec!["conf/x.yaml"]),
        (
            vec!["--include", "*/deep/*"],
            vec!["conf/deep/y.yaml", "conf/deep/z.txt"],
        ),
        (
            vec!["--exclude", "docs/img", "--include", "docs/*"],
            vec!["docs/a.md", "docs/b.md"],
        ),
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

#[test]
fn a_restore_whose_includes_match_nothing_warns_and_exits_3() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new().file("kb/a.yaml", "a: 1\n").build();
    let id = snap_id(&backup_clean(&r, "none", &[&src], &[]));
    let target = dir.path().join("restore");
    let out = r.run(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--include",
        "nowhere/*.yaml",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no path in the snapshot matches"),
        "{}",
        stderr(&out)
    );
    assert!(files_rel(&target).is_empty());
}
