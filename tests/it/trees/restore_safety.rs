//! A restore never writes outside its target: crafted entry names in a
//! snapshot and symlinks planted in the target are skipped or replaced,
//! never followed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use larder::ops::restore::{Overwrite, RestoreOptions, RestoreSummary, restore};
use larder::repo::Repo;
use larder::seal::ObjectKind;
use larder::snapshot::{Content, ContentRef, Node, NodeKind, Snapshot, SnapshotSummary, Tree};
use larder::write::{Abort, BlobWriter};
use minicbor::bytes::ByteVec;
use tempfile::TempDir;

use crate::support::*;

use super::{TreeBuilder, backup_clean, json_of, n, restore_cli, scan, show, snap_id, symlink};

// ---------------------------------------------------------------------------
// Snapshots crafted through the library
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
            dump: None,
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
        self.repo.write_snapshot(&snapshot, &lease).await.unwrap();
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

// ---------------------------------------------------------------------------
// Crafted names
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Symlinks planted in the target
// ---------------------------------------------------------------------------

#[test]
fn a_symlink_in_the_target_is_never_followed() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("a.txt", b"a\n")
        .file("sub/b.txt", b"b\n")
        .build();
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
