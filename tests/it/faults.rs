//! Storage that fails, lies or dies mid-backup loses nothing: no partial
//! snapshot is ever visible, earlier snapshots stay intact, `check` passes,
//! and the next run succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::SnapshotFilter;
use larder::backend::memory::{Fault, Op};
use larder::ops::backup::backup;
use larder::ops::check::{CheckOptions, check};
use larder::source::StreamInput;

use crate::support::*;

fn small_packs() -> larder::repo::InitOptions {
    let mut options = init_options();
    options.data_pack_size = Some(1 << 20);
    options
}

async fn assert_healthy(repo: &LibRepo, expect: &[(&str, &[u8])]) {
    let fresh = repo.reopen().await.unwrap();
    let report = check(
        &fresh,
        &CheckOptions {
            read_data: true,
            subset: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:#?}");
    let snapshots = fresh.snapshots(&SnapshotFilter::default()).unwrap();
    assert_eq!(snapshots.len(), expect.len(), "{snapshots:#?}");
    for ((id, snapshot), (source, data)) in snapshots.iter().zip(expect) {
        assert_eq!(&snapshot.source, source);
        assert!(cat_bytes(&fresh, id).await.unwrap() == *data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_any_request_of_a_backup_leaves_no_partial_snapshot() {
    let first = dump_text(50_000, 1);
    let second = random_bytes(5 << 20, 2);

    // How many requests a clean second backup makes.
    // Requests after the snapshot object (releasing the lease) may fail
    // without harm: count up to the commit.
    let (repo, memory) = memory_repo_with(small_packs()).await;
    repo.backup("a", &first).await.unwrap();
    let commit = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&commit);
    memory.set_faults(move |n, op| {
        if matches!(op, Op::Put { name, .. } if name.starts_with("snapshots/")) {
            seen.store(n + 1, std::sync::atomic::Ordering::SeqCst);
        }
        Fault::Proceed
    });
    repo.backup("b", &second).await.unwrap();
    let requests = commit.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        requests >= 8,
        "expected several packs, got {requests} requests"
    );

    for crash_at in 0..requests {
        let (repo, memory) = memory_repo_with(small_packs()).await;
        repo.backup("a", &first).await.unwrap();
        memory.crash_after(crash_at);
        let result = repo.backup("b", &second).await;
        memory.heal();
        match result {
            Err(e) => assert!(
                matches!(e, larder::Error::Backend { .. }),
                "crash at {crash_at}: {e}"
            ),
            Ok(_) => panic!("crash at request {crash_at} of {requests} went unnoticed"),
        }
        // The process "restarts": a fresh open sees only the first snapshot,
        // everything checks out, and the backup then succeeds.
        assert_healthy(&repo, &[("a", &first)]).await;
        let reopened = LibRepo {
            repo: repo.reopen().await.unwrap(),
            backend: Arc::clone(&repo.backend),
            cache: repo.cache,
        };
        reopened.backup("b", &second).await.unwrap();
        assert_healthy(&reopened, &[("a", &first), ("b", &second)]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_uploads_fail_the_backup_with_the_storage_error() {
    let (repo, memory) = memory_repo().await;
    memory.set_faults(|_, op| match op {
        Op::Put { name, .. } if name.starts_with("packs/") => Fault::Fail,
        _ => Fault::Proceed,
    });
    let err = repo
        .backup("db", &random_bytes(1 << 20, 3))
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("storage request put packs/"), "{message}");
    memory.heal();
    assert_healthy(&repo, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_backup_and_the_next_run_succeeds() {
    let (repo, memory) = memory_repo().await;
    let data = random_bytes(2 << 20, 4);
    memory.set_faults(|_, op| match op {
        Op::Put { .. } => Fault::NoSpace,
        _ => Fault::Proceed,
    });
    let err = repo.backup("db", &data).await.unwrap_err();
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("No space left on device"),
        "{err:#?}"
    );
    memory.heal();
    assert_healthy(&repo, &[]).await;
    repo.backup("db", &data).await.unwrap();
    assert_healthy(&repo, &[("db", &data)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_that_truncates_uploads_is_caught_by_check() {
    let (repo, memory) = memory_repo().await;
    memory.set_faults(|_, op| match op {
        Op::Put { name, len } if name.starts_with("packs/") => Fault::Truncate(len / 2),
        _ => Fault::Proceed,
    });
    let summary = repo.backup("db", &random_bytes(1 << 20, 5)).await.unwrap();
    memory.heal();
    let report = check(
        &repo.repo,
        &CheckOptions {
            read_data: true,
            subset: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!report.is_ok());
    assert!(
        report
            .affected_snapshots
            .iter()
            .any(|s| s.id == summary.snapshot_id)
    );
    assert!(cat_bytes(&repo.repo, &summary.snapshot_id).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dump_command_is_killed_when_storage_fails() {
    let (repo, memory) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // An endless dump: it would never finish on its own.
    let script = format!("echo $$ > {}; exec cat /dev/urandom", pid_file.display());
    memory.set_faults(|_, op| match op {
        Op::Put { name, .. } if name.starts_with("packs/") => Fault::Fail,
        _ => Fault::Proceed,
    });
    let started = Instant::now();
    let err = backup(
        &repo.repo,
        stream_options(
            "endless",
            StreamInput::Command {
                argv: vec!["sh".into(), "-c".into(), script],
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, larder::Error::Backend { .. }), "{err:#}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    assert!(
        !std::path::Path::new(&proc_dir).exists(),
        "the dump command still runs as pid {pid}"
    );
    memory.heal();
    assert_healthy(&repo, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_reads_fail_cat_with_the_storage_error() {
    let (repo, memory) = memory_repo().await;
    let summary = repo.backup("db", &random_bytes(1 << 20, 6)).await.unwrap();
    memory.set_faults(|_, op| match op {
        Op::GetRange { name } if name.starts_with("packs/") => Fault::Fail,
        _ => Fault::Proceed,
    });
    let err = cat_bytes(&repo.repo, &summary.snapshot_id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, larder::Error::Backend { op: "get", .. }),
        "{err:#}"
    );
}

/// A real full file system: a 4 MiB tmpfs. Needs root to mount; CI runs as
/// root, so there it always runs.
#[test]
fn a_backup_onto_a_full_file_system_fails_cleanly() {
    if unsafe { libc::geteuid() } != 0 {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must run as root to mount a tmpfs"
        );
        eprintln!(
            "not root: cannot mount a small tmpfs; run the suite as root to test a real full disk"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            mount.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "mount failed");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());

    let repo_path = mount.join("repo");
    let cache = dir.path().join("cache");
    let run = |args: &[&str], input: Option<&[u8]>| {
        let mut cmd = larder_cmd();
        cmd.args([
            "--repo",
            repo_path.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .args(args)
        .env("LARDER_PASSWORD", PASSWORD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.unwrap_or_default().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    };
    assert_success(&run(
        &["init", "--kdf-memory", "1", "--kdf-passes", "1"],
        None,
    ));
    let small = random_bytes(256 << 10, 7);
    assert_success(&run(&["backup", "--source", "db", "--stdin"], Some(&small)));

    let big = random_bytes(12 << 20, 8);
    let out = run(&["backup", "--source", "db", "--stdin"], Some(&big));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    let snapshots = std::fs::read_dir(repo_path.join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snapshots, 1, "no snapshot for the failed backup");
    let leftovers: Vec<_> = files_under(&repo_path)
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert_success(&run(&["check", "--read-data"], None));
    let out = run(&["cat", "latest"], None);
    assert_success(&out);
    assert!(out.stdout == small);
}
