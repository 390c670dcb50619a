//! `copy`: snapshots replicated into another repository read back bit for
//! bit, a second run copies nothing, later runs read only what changed, an
//! interrupted copy resumes, and damage in the source stops the copy. The
//! writer copy stores through takes blobs from async code without holding
//! a runtime thread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use larder::backend::MemoryBackend;
use larder::backend::memory::{Fault, Op};
use larder::hash::{BlobId, SnapshotId};
use larder::ops::copy::{CopySummary, copy};
use larder::repo::InitOptions;
use larder::seal::ObjectKind;
use larder::write::{Abort, BlobWriter};

use crate::support::*;

async fn copy_all(src: &LibRepo, dst: &LibRepo) -> larder::Result<CopySummary> {
    let ids: Vec<SnapshotId> = src
        .repo
        .snapshots(&Default::default())?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    copy(&src.repo, &dst.repo, &ids, Arc::default()).await
}

/// Reads every snapshot of `repo` back, by source name.
async fn contents(repo: &LibRepo) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (id, s) in repo.repo.snapshots(&Default::default()).unwrap() {
        out.push((s.source.clone(), cat_bytes(&repo.repo, &id).await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copied_snapshots_read_back_bit_exact_and_a_second_copy_stores_nothing() {
    let (src, _) = memory_repo_with(InitOptions {
        list_fanout: Some(4),
        ..init_options()
    })
    .await;
    let (dst, dst_memory) = memory_repo().await;
    let dump = dump_text(60_000, 1);
    let random = random_bytes(3 << 20, 2);
    src.backup("orders", &dump).await.unwrap();
    src.backup("blobs", &random).await.unwrap();
    src.backup("orders", &dump[..1000]).await.unwrap();

    let first = copy_all(&src, &dst).await.unwrap();
    assert_eq!((first.copied, first.skipped), (3, 0), "{first:?}");
    assert_eq!(first.snapshots.len(), 3);
    assert!(first.bytes_read >= (dump.len() + random.len()) as u64);
    assert_eq!(contents(&dst).await, contents(&src).await);
    // The copies are what they claim: same time, source and host, and
    // recorded as copies.
    let src_snaps = src.repo.snapshots(&Default::default()).unwrap();
    let dst_snaps = dst.repo.snapshots(&Default::default()).unwrap();
    for ((sid, s), (_, d)) in src_snaps.iter().zip(&dst_snaps) {
        assert_eq!(
            (s.time_ns, &s.source, &s.host),
            (d.time_ns, &d.source, &d.host)
        );
        assert_eq!(d.copied_from, Some(*sid));
        assert_ne!(s.root, d.root, "ids are keyed per repository");
    }

    // Again: every snapshot is already there; nothing is read or written.
    let before = dst_memory.snapshot().len();
    let second = copy_all(&src, &dst).await.unwrap();
    assert_eq!((second.copied, second.skipped), (0, 3), "{second:?}");
    assert_eq!(second.bytes_read, 0);
    assert_eq!(dst_memory.snapshot().len(), before);

    // The destination checks out and reopens from scratch.
    let reopened = dst.reopen().await.unwrap();
    let options = larder::ops::check::CheckOptions {
        read_data: true,
        subset: None,
        ..Default::default()
    };
    let report = larder::ops::check::check(&reopened, &options)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_copy_reads_only_the_chunks_that_changed() {
    let (src, _) = memory_repo().await;
    let (dst, _) = memory_repo().await;
    let mut day = dump_text(200_000, 3);
    src.backup("db", &day).await.unwrap();
    copy_all(&src, &dst).await.unwrap();

    // Day 2: a few rows change in the middle.
    let middle = day.len() / 2;
    day[middle..middle + 100].copy_from_slice(&[b'x'; 100]);
    src.backup("db", &day).await.unwrap();
    let second = copy_all(&src, &dst).await.unwrap();
    assert_eq!((second.copied, second.skipped), (1, 1), "{second:?}");
    assert!(
        second.bytes_read < day.len() as u64 / 20,
        "read {} of {}",
        second.bytes_read,
        day.len()
    );
    let (latest, _) = dst
        .repo
        .resolve_snapshot("latest", &Default::default())
        .unwrap();
    assert!(cat_bytes(&dst.repo, &latest).await.unwrap() == day);
    // The copy's parent is the copy of the source's parent.
    let snaps = dst.repo.snapshots(&Default::default()).unwrap();
    assert_eq!(snaps[1].1.parent, Some(snaps[0].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_copy_resumes_without_uploading_twice() {
    let (src, _) = memory_repo().await;
    let data = random_bytes(6 << 20, 4);
    src.backup("db", &data).await.unwrap();

    let dst_memory = MemoryBackend::new();
    let dst = LibRepo::init(
        Arc::new(dst_memory.clone()),
        InitOptions {
            data_pack_size: Some(1 << 20),
            ..init_options()
        },
    )
    .await;
    // Fail every upload after the third pack.
    let mut puts = 0;
    dst_memory.set_faults(move |_, op| {
        if matches!(op, Op::Put { name, .. } if name.starts_with("packs/")) {
            puts += 1;
            if puts > 3 {
                return Fault::Fail;
            }
        }
        Fault::Proceed
    });
    let err = copy_all(&src, &dst).await.unwrap_err();
    assert!(matches!(err, larder::Error::Backend { .. }), "{err:?}");
    assert!(dst.repo.snapshots(&Default::default()).unwrap().is_empty());
    dst_memory.heal();

    // A new process resumes: the packs that landed are not uploaded again.
    let resumed = LibRepo {
        repo: dst.reopen().await.unwrap(),
        backend: Arc::clone(&dst.backend),
        cache: dst.cache,
    };
    let summary = copy_all(&src, &resumed).await.unwrap();
    assert_eq!(summary.copied, 1);
    assert!(summary.blobs_reused > 0, "{summary:?}");
    let (id, _) = resumed
        .repo
        .resolve_snapshot("latest", &Default::default())
        .unwrap();
    assert!(cat_bytes(&resumed.repo, &id).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_in_the_source_stops_the_copy_before_any_snapshot_is_written() {
    let (src, src_memory) = memory_repo().await;
    src.backup("db", &random_bytes(1 << 20, 5)).await.unwrap();
    let (dst, _) = memory_repo().await;
    // Flip a byte in the middle of the data pack.
    let (name, bytes) = src_memory
        .snapshot()
        .into_iter()
        .filter(|(n, _)| n.starts_with("packs/"))
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let mut damaged = bytes.to_vec();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    src_memory.overwrite(&name, damaged.into());
    let err = copy_all(&src, &dst).await.unwrap_err();
    assert!(err.is_damage(), "{err:?}");
    assert!(dst.repo.snapshots(&Default::default()).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_cannot_be_copied_into_itself() {
    let (src, _) = memory_repo().await;
    src.backup("db", b"x").await.unwrap();
    let same = LibRepo {
        repo: src.reopen().await.unwrap(),
        backend: Arc::clone(&src.backend),
        cache: tempfile::TempDir::new().unwrap(),
    };
    let err = copy_all(&src, &same).await.unwrap_err();
    assert!(matches!(err, larder::Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn the_binary_copies_trees_and_streams_and_shares_chunker_parameters() {
    let src = CliRepo::init();
    let tree = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(tree.path().join("kb/people")).unwrap();
    std::fs::write(tree.path().join("kb/people/ada.yaml"), b"name: Ada\n").unwrap();
    std::fs::write(tree.path().join("kb/big.bin"), random_bytes(2 << 20, 6)).unwrap();
    let out = src.run(&["backup", "--source", "kb", tree.path().to_str().unwrap()]);
    assert_success(&out);
    let dump = dump_text(50_000, 7);
    src.backup_stdin("db", &dump);

    // The destination shares the source's chunker parameters.
    let dst = CliRepo::new();
    let out = dst
        .cmd(&[
            "init",
            "--kdf-memory",
            "1",
            "--kdf-passes",
            "1",
            "--copy-chunker-params-from",
            src.repo.to_str().unwrap(),
        ])
        .env("LARDER_FROM_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_success(&out);

    let copy = |args: &[&str]| {
        let mut full = vec!["--json", "copy", "--to", dst.repo.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = src
            .cmd(&full)
            .env("LARDER_TO_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert_success(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = copy(&[]);
    assert_eq!(first["copied"], 2, "{first}");
    assert!(first["requests"]["put"].as_u64().unwrap() >= 3, "{first}");
    assert!(
        first["requests_from"]["get"].as_u64().unwrap() >= 1,
        "{first}"
    );
    let again = copy(&["latest"]);
    assert_eq!(
        (again["copied"].clone(), again["skipped"].clone()),
        (0.into(), 1.into())
    );

    // A file restores from the copy.
    let in_snapshot = format!(
        "{}/kb/people/ada.yaml",
        tree.path().to_str().unwrap().trim_start_matches('/')
    );
    let out = dst.run(&["cat", "latest", "--source", "kb", &in_snapshot]);
    assert_success(&out);
    let path_in_snapshot = out.stdout;
    assert_eq!(path_in_snapshot, b"name: Ada\n");
    let out = dst.run(&["cat", "latest", "--source", "db"]);
    assert_success(&out);
    assert!(out.stdout == dump);

    // Same chunker parameters: backing the dump up in the destination
    // finds every chunk the copy brought.
    let summary = dst.backup_stdin("db", &dump);
    assert_eq!(summary["blobs_new"], 1, "only the new root tree: {summary}");
}

#[test]
fn a_wrong_destination_passphrase_is_named() {
    let src = CliRepo::init();
    src.backup_stdin("db", b"data");
    let dst = CliRepo::init();
    let out = src
        .cmd(&["copy", "--to", dst.repo.to_str().unwrap()])
        .env("LARDER_TO_PASSWORD", "not it")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("opening destination repository"), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
}

/// With its pipeline full, `store_async` waits without holding the runtime
/// thread, so the uploader that drains the pipeline keeps running even on a
/// current-thread runtime, whose one thread a blocking wait would stall.
#[test]
fn the_writer_takes_more_blobs_from_async_code_than_its_pipeline_holds() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (repo, _) = memory_repo_with(InitOptions {
            data_pack_size: Some(1 << 20),
            ..init_options()
        })
        .await;
        // 12.5 MiB in 64 KiB blobs: far more than the queues (8 blobs each),
        // the pack being filled and the packs in flight (1 MiB each) hold.
        let blobs: Vec<(BlobId, Vec<u8>)> = (0..200)
            .map(|seed| {
                let data = random_bytes(64 << 10, seed);
                (
                    repo.repo.hasher().blob_id(ObjectKind::DataBlob, &data),
                    data,
                )
            })
            .collect();
        let writer = BlobWriter::start(
            &repo.repo,
            Arc::new(Abort::default()),
            Arc::default(),
            1 << 20,
        )
        .unwrap();
        let stats = Arc::clone(writer.stats());
        tokio::time::timeout(Duration::from_secs(120), async {
            for (id, data) in &blobs {
                let stored = writer
                    .store_async(ObjectKind::DataBlob, *id, Bytes::from(data.clone()))
                    .await
                    .unwrap();
                assert!(stored);
            }
            writer.finish().await.unwrap();
        })
        .await
        .expect("the writer stalled");
        assert_eq!(
            stats.blobs_new.load(std::sync::atomic::Ordering::Relaxed),
            200
        );
        assert!(stats.packs.load(std::sync::atomic::Ordering::Relaxed) > 8);
        for (id, data) in blobs.iter().step_by(37) {
            let back = repo.repo.read_blob(ObjectKind::DataBlob, id).await.unwrap();
            assert_eq!(&back, data);
        }
    });
}
