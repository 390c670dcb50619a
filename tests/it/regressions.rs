//! Regression tests for fixed bugs, each named after the behaviour it
//! guards. The test for a fixed restore bug lives with the restore tests, in
//! `trees::restore`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use larder::backend::memory::{Fault, Op};
use larder::config::ChunkerProfile;
use larder::hash::IndexId;
use larder::index::{IndexObject, IndexedPack};
use larder::layout::index_path;
use larder::ops::backup::backup;
use larder::ops::check::{CheckOptions, check};
use larder::pack::{PackEntry, PackKind};
use larder::seal::ObjectKind;
use larder::snapshot::{Content, ContentRef, Node, Snapshot, SnapshotSummary, Tree};
use larder::source::StreamInput;
use larder::write::{Abort, BlobWriter};

use larder::LeaseKind;

use crate::support::*;

#[test]
fn a_data_chunk_equal_to_a_tree_blob_does_not_stand_in_for_it() {
    let r = CliRepo::init();
    // The exact bytes of an empty directory's tree blob, backed up as data.
    let empty_tree = Tree::default().encode();
    r.backup_stdin("sneaky", &empty_tree);
    let src = r.dir.path().join("src");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello\n").unwrap();
    let out = r.run(&["backup", "--source", "tree", src.to_str().unwrap()]);
    assert_success(&out);
    let target = r.dir.path().join("restored");
    let out = r.run(&[
        "restore",
        "latest",
        "--source",
        "tree",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert!(
        target
            .join(src.strip_prefix("/").unwrap())
            .join("empty")
            .is_dir()
    );
    assert_success(&r.run(&["check", "--read-data"]));
}

#[test]
fn a_copied_repository_keeps_its_own_catalog() {
    let r = CliRepo::init();
    r.backup_stdin("seed", b"before the copy\n");
    let copy = r.dir.path().join("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&r.repo)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    // The original learns new blobs; the copy must not dedup against them.
    let data = random_bytes(2 << 20, 31);
    r.backup_stdin("db", &data);
    let run_copy = |args: &[&str], input: Option<&[u8]>| {
        let mut child = larder_cmd()
            .args([
                "--repo",
                copy.to_str().unwrap(),
                "--cache-dir",
                r.cache.to_str().unwrap(),
            ])
            .args(args)
            .env("LARDER_PASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input).unwrap();
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let out = run_copy(
        &["--json", "backup", "--source", "db", "--stdin"],
        Some(&data),
    );
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["blobs_new"].as_u64().unwrap() > 1,
        "the copy must store the data itself: {summary}"
    );
    let out = run_copy(&["cat", "latest", "--source", "db"], None);
    assert_success(&out);
    assert!(out.stdout == data);
    assert_success(&run_copy(&["check", "--read-data"], None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_index_entry_is_reported_not_a_panic() {
    let (repo, _) = memory_repo().await;
    repo.backup("db", &random_bytes(100_000, 1)).await.unwrap();
    let hostile = IndexObject {
        packs: vec![IndexedPack {
            id: larder::hash::PackId([7; 32]),
            kind: PackKind::Data.code(),
            size: 1000,
            blobs: vec![PackEntry {
                kind: ObjectKind::DataBlob.code(),
                id: larder::hash::BlobId([8; 32]),
                offset: u64::MAX - 5,
                length: 100,
                raw_length: 10,
            }],
        }],
        supersedes: vec![],
    };
    let id = IndexId::random();
    let plain = minicbor::to_vec(&hostile).unwrap();
    repo.repo
        .put_object(ObjectKind::Index, &index_path(&id), id.as_bytes(), &plain)
        .await
        .unwrap();
    let reopened = repo.reopen().await.unwrap();
    let warnings = &reopened.open_report().warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("skipped index object") && w.contains("outside the pack")),
        "{warnings:?}"
    );
    let report = check(&reopened, &CheckOptions::default()).await.unwrap();
    assert!(
        report.problems.iter().any(|p| p.object == index_path(&id)),
        "{report:?}"
    );
}

/// Stores a snapshot whose one file has the given content list.
async fn snapshot_with_content(
    repo: &LibRepo,
    content: Content,
    size: u64,
) -> larder::hash::SnapshotId {
    let abort = Arc::new(Abort::default());
    let writer = BlobWriter::start(&repo.repo, abort, Arc::default(), 1 << 20).unwrap();
    let tree = Tree {
        entries: vec![Node::stream_file(b"crafted", 0, size, content)],
    }
    .encode();
    let root = repo.repo.hasher().blob_id(ObjectKind::TreeBlob, &tree);
    let writer = tokio::task::spawn_blocking(move || {
        writer
            .store(ObjectKind::TreeBlob, root, Bytes::from(tree))
            .unwrap();
        writer
    })
    .await
    .unwrap();
    writer.finish().await.unwrap();
    let snapshot = Snapshot {
        time_ns: 0,
        source: "crafted".into(),
        host: "h".into(),
        tags: vec![],
        kind: "stream".into(),
        root,
        parent: None,
        paths: vec![],
        command: None,
        summary: SnapshotSummary::default(),
        program: "test".into(),
        user: "test".into(),
        copied_from: None,
        dump: None,
    };
    let lease = repo.repo.hold_lease(LeaseKind::Backup).await.unwrap();
    let id = repo.repo.write_snapshot(&snapshot, &lease).await.unwrap().0;
    lease.finish().await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_lengths_that_overflow_are_damage_not_a_panic() {
    let (repo, _) = memory_repo().await;
    let data = b"twelve bytes";
    let id = repo.repo.hasher().blob_id(ObjectKind::DataBlob, data);
    // Store the data blob for real, then point a list at it with lengths
    // that do not add up (and overflow).
    repo.backup("real", data).await.unwrap();
    let content = Content {
        depth: 0,
        entries: vec![ContentRef { id, len: u64::MAX }, ContentRef { id, len: 12 }],
    };
    let snapshot = snapshot_with_content(&repo, content, 12).await;
    let err = cat_bytes(&repo.repo, &snapshot).await.unwrap_err();
    assert!(err.is_damage(), "{err:#}");
    let report = check(&repo.repo, &CheckOptions::default()).await.unwrap();
    assert!(
        report.affected_snapshots.iter().any(|s| s.id == snapshot),
        "{report:#?}"
    );
}

#[test]
fn a_catalog_damaged_past_its_header_is_rebuilt() {
    let r = CliRepo::init();
    let data = random_bytes(1 << 20, 5);
    let summary = r.backup_stdin("db", &data);
    let catalog = files_under(&r.cache)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| p.file_name().unwrap() == "catalog.sqlite")
        .unwrap();
    // Keep the header page, ruin everything after it.
    let mut bytes = std::fs::read(&catalog).unwrap();
    for b in bytes.iter_mut().skip(4096) {
        *b = 0x5a;
    }
    std::fs::write(&catalog, &bytes).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", catalog.display()));
    }
    let out = r.run(&["cat", &summary["snapshot_id"].as_str().unwrap()[..8]]);
    assert_success(&out);
    assert!(out.stdout == data);
    assert!(
        stderr(&out).contains("rebuilt from the repository"),
        "{}",
        stderr(&out)
    );
    assert_success(&r.run(&["catalog", "rebuild"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helpers_started_by_a_failed_dump_are_killed_too() {
    let (repo, memory) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "sleep 600 & echo $! > {}; exec cat /dev/urandom",
        pid_file.display()
    );
    memory.set_faults(|_, op| match op {
        Op::Put { name, .. } if name.starts_with("packs/") => Fault::Fail,
        _ => Fault::Proceed,
    });
    let err = backup(
        &repo.repo,
        stream_options(
            "helpers",
            StreamInput::Command {
                argv: vec!["sh".into(), "-c".into(), script],
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, larder::Error::Backend { .. }), "{err:#}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let status = Path::new("/proc").join(pid.trim()).join("status");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(&status).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it: either way dead.
        if state.is_empty() || state.contains("State:\tZ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dump's helper (pid {pid}) still runs: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pack_that_is_back_is_usable_after_a_structural_check() {
    let r = CliRepo::init();
    let data = random_bytes(3 << 20, 9);
    r.backup_stdin("db", &data);
    let pack = files_under(&r.repo.join("packs"))
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap()
        .0;
    let aside = r.dir.path().join("aside");
    std::fs::rename(&pack, &aside).unwrap();
    assert_eq!(r.run(&["check"]).status.code(), Some(1));
    std::fs::rename(&aside, &pack).unwrap();
    assert_success(&r.run(&["check"]));
    let out = r.run(&["cat", "latest"]);
    assert_success(&out);
    assert!(out.stdout == data);
}

#[test]
fn a_failed_backup_from_a_silent_stdin_exits_promptly() {
    let r = CliRepo::init();
    // Break storage: every pack directory becomes a file.
    let packs = r.repo.join("packs");
    std::fs::remove_dir_all(&packs).unwrap();
    std::fs::create_dir(&packs).unwrap();
    for byte in 0..=255u8 {
        std::fs::write(packs.join(format!("{byte:02x}")), b"").unwrap();
    }
    // A producer that sends plenty, then goes quiet without closing.
    let mut producer = Command::new("sh")
        .args(["-c", "head -c 40000000 /dev/urandom; sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let out = r
        .cmd(&["backup", "--source", "db", "--stdin"])
        .stdin(producer.stdout.take().unwrap())
        .output()
        .unwrap();
    let took = started.elapsed();
    let _ = producer.kill();
    let _ = producer.wait();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(30),
        "larder waited {took:?} for a silent stdin after failing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_an_intermediate_index_flush_loses_nothing() {
    // Tiny chunks so one backup crosses the 65,536-blob index flush.
    let mut options = init_options();
    options.profiles = vec![ChunkerProfile::parse("stream=64:256:1K").unwrap()];
    options.data_pack_size = Some(1 << 20);
    let (repo, memory) = memory_repo_with(options).await;
    let data = random_bytes(24 << 20, 17);
    // Let the first index object through, then fail every later write.
    let mut indexes = 0;
    memory.set_faults(move |_, op| match op {
        Op::Put { name, .. } if name.starts_with("index/") => {
            indexes += 1;
            if indexes > 1 {
                Fault::Fail
            } else {
                Fault::Proceed
            }
        }
        Op::Put { .. } if indexes > 1 => Fault::Fail,
        _ => Fault::Proceed,
    });
    assert!(repo.backup("db", &data).await.is_err());
    memory.heal();
    let reopened = repo.reopen().await.unwrap();
    assert!(
        reopened.blob_count().unwrap() >= 65_536,
        "the flushed index survives"
    );
    let report = check(
        &reopened,
        &CheckOptions {
            read_data: true,
            subset: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:#?}");
    let again = crate::support::backup_bytes(&reopened, "db", &data)
        .await
        .unwrap();
    assert!(again.blobs_reused >= 65_536, "{again:?}");
    assert!(cat_bytes(&reopened, &again.snapshot_id).await.unwrap() == data);
}

#[test]
fn killing_larder_mid_backup_leaves_a_sound_repository() {
    let r = CliRepo::init();
    let mut child = r
        .cmd(&["backup", "--source", "db", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..400u64 {
            if stdin.write_all(&random_bytes(256 << 10, i)).is_err() {
                return;
            }
        }
    });
    // Kill it once some packs are on disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    while files_under(&r.repo.join("packs")).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    writer.join().unwrap();

    assert_success(&r.run(&["check", "--read-data"]));
    let out = r.run(&["--json", "snapshots"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let data = random_bytes(4 << 20, 1);
    r.backup_stdin("db", &data);
    let out = r.run(&["cat", "latest"]);
    assert!(out.stdout == data);
}
