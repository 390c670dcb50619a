//! Browsing snapshots: `cat` of one file, `ls`, `find`, `diff` and `log`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::support::*;

use super::{
    Kind, TreeBuilder, backup_clean, chmod, json_of, ls_all, n, p, scan, show, snap_id, write,
};

// ---------------------------------------------------------------------------
// Reading one file touches one data blob
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
    let (_dir, src) = (0..50)
        .flat_map(|d| (0..100).map(move |f| (d, f)))
        .fold(TreeBuilder::new(), |t, (d, f)| {
            let path = format!("dir{d:02}/file{f:03}.yaml");
            t.file(path, format!("dir: {d}\nfile: {f}\n"))
        })
        .build();
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
// ls, find, diff, log
// ---------------------------------------------------------------------------

#[test]
fn ls_lists_every_entry_with_its_kind_and_size() {
    let r = CliRepo::init();
    let (_dir, src) = TreeBuilder::new()
        .file("one.txt", random_bytes(1234, 1))
        .file("empty", b"")
        .file("sub/two.bin", random_bytes(70_000, 2))
        .file("sub/deeper/three", b"3")
        .dir("void")
        .symlink("link", "sub/two.bin")
        .mode("one.txt", 0o640)
        .build();
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
    let (_dir, src) = TreeBuilder::new()
        .file("a.yaml", b"a: 1\n")
        .file("sub/b.yaml", b"b: 1\n")
        .file("c.txt", b"c\n")
        .build();
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
    // Text output with --all: one line per match, newest snapshot first.
    let out = r.run(&["find", "*.yaml", "--all"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with(&s2[..8]) && lines[3].starts_with(&s1[..8]),
        "{text}"
    );
    // Without it, one line per version: sub/b.yaml is unchanged in both.
    let out = r.run(&["find", "*.yaml"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("sub/b.yaml") && l.contains("in 2 snapshots")),
        "{text}"
    );
}

#[test]
fn diff_shows_added_removed_modified_and_metadata_only_changes() {
    let r = CliRepo::init();
    let (_dir, src) = TreeBuilder::new()
        .file("keep.txt", b"unchanged\n")
        .file("remove.txt", b"going away\n")
        .file("modify.txt", b"line 1\nline 2\nline 3\n")
        .file("chmod.txt", b"same bytes\n")
        .mode("chmod.txt", 0o644)
        .build();
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
    let (_dir, src) = TreeBuilder::new()
        .file("tracked.yaml", b"version: 1\n")
        .file("other.txt", b"x\n")
        .build();
    let file = src.join("tracked.yaml");
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

    // A relative path is taken from the current directory; a path in no
    // snapshot is an error.
    let out = r
        .cmd(&["--json", "log", "./sub/../tracked.yaml"])
        .current_dir(&src)
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(json_of(&out)["versions"], log["versions"]);
    let out = r
        .cmd(&["log", "nosuch.yaml"])
        .current_dir(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nosuch.yaml is in no snapshot"),
        "{}",
        stderr(&out)
    );
}
