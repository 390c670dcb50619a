//! Prune and retention on a damaged or tampered repository: nothing a kept
//! snapshot needs is deleted when metadata cannot be read, when an index
//! object is hidden from a listing, or when snapshots are dated in the
//! future.

use std::path::PathBuf;
use std::sync::Arc;

use larder::Repo;
use larder::SnapshotFilter;
use larder::ops::forget::{ForgetOptions, GroupBy, forget};
use larder::ops::prune::{PruneOptions, prune};
use larder::retention::Policy;

use crate::support::*;

/// A repository with 1 MiB packs where a failed dump command left indexed
/// packs that a later, successful backup of the same data reuses: the
/// latest snapshot's data lives in packs only the failed run's index
/// object names. Returns the repository, the data, and that index object.
fn repo_relying_on_a_failed_runs_index() -> (CliRepo, Vec<u8>, PathBuf) {
    let r = CliRepo::init_with(&["--pack-size", "1"]);
    let data = random_bytes(6 << 20, 7);
    let file = r.dir.path().join("dump.bin");
    std::fs::write(&file, &data).unwrap();
    // The command fails a moment after its output, so what was read
    // before has been stored (a stream is stored as it arrives, in blocks).
    let failing = format!("sh -c 'cat {} && sleep 0.5 && exit 1'", file.display());
    let out = r.run(&["backup", "--source", "db", "--command", &failing]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let failed_index = r.objects("index");
    assert_eq!(failed_index.len(), 1, "the failed run indexes what landed");
    let ok = format!("cat {}", file.display());
    assert_success(&r.run(&["backup", "--source", "db", "--command", &ok]));
    (r, data, failed_index[0].clone())
}

#[test]
fn prune_deletes_nothing_when_an_index_object_is_damaged() {
    let (r, data, index) = repo_relying_on_a_failed_runs_index();
    let packs_before = r.objects("packs");
    flip_byte(&index);
    // Another machine (a fresh cache) cannot read the damaged index object:
    // the packs it names look like leftovers in no index.
    let fresh = r.dir.path().join("fresh-cache");
    let fresh = fresh.as_path();
    let out = r.run_with_cache(fresh, &["prune"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let name = index.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr(&out).contains(&format!("index/{name}")),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--force-damaged"), "{}", stderr(&out));
    assert_eq!(r.objects("packs"), packs_before, "nothing deleted");

    // The data is intact and a rebuild recovers the lost index from pack
    // headers.
    let out = r.run_with_cache(fresh, &["catalog", "rebuild"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = r.run_with_cache(fresh, &["cat", "latest"]);
    assert_eq!(out.status.code(), Some(3), "warns of the damaged index");
    assert!(out.stdout == data);

    // Forced, prune goes on and still deletes nothing a snapshot needs.
    let out = r.run_with_cache(fresh, &["prune", "--force-damaged"]);
    assert!(out.status.code() == Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(name), "names what it goes on despite");
    for cache in [fresh, r.dir.path().join("third").as_path()] {
        let out = r.run_with_cache(cache, &["cat", "latest"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(out.stdout == data);
    }
}

#[test]
fn prune_deletes_nothing_when_a_snapshot_object_is_damaged() {
    let r = CliRepo::init();
    let kept = dump_text(20_000, 1);
    r.backup_stdin("db", &kept);
    // A second source whose snapshot is then damaged, and garbage for prune
    // to want to delete (a forgotten snapshot's data).
    r.backup_stdin("other", &dump_text(20_000, 2));
    r.backup_stdin("gone", &dump_text(20_000, 3));
    let out = r.run(&[
        "forget",
        "--source",
        "gone",
        "--keep-tag",
        "x",
        "--allow-empty",
    ]);
    assert_success(&out);
    let snapshots = r.objects("snapshots");
    assert_eq!(snapshots.len(), 2);
    for snapshot in &snapshots {
        flip_byte(snapshot);
        let fresh = r.dir.path().join(format!(
            "cache-{}",
            snapshot.file_name().unwrap().to_str().unwrap()
        ));
        let packs_before = r.objects("packs");
        let out = r.run_with_cache(&fresh, &["prune"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let name = snapshot.file_name().unwrap().to_str().unwrap();
        assert!(
            stderr(&out).contains(&format!("snapshots/{name}")),
            "{}",
            stderr(&out)
        );
        assert_eq!(r.objects("packs"), packs_before);
        flip_byte(snapshot);
    }
    // Undamaged again, both still restore from a fresh cache.
    let out = r.run_with_cache(
        &r.dir.path().join("last-cache"),
        &["cat", "latest", "--source", "db"],
    );
    assert_success(&out);
    assert!(out.stdout == kept);
}

/// An index object that a listing does not show during prune (an
/// eventually consistent store, or an operator's mistake) and that is back
/// afterwards: prune reads the headers of the packs it no longer sees named,
/// keeps those holding data snapshots need, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_object_hidden_during_prune_loses_nothing() {
    let (lib, memory) = memory_repo().await;
    let data = random_bytes(3 << 20, 11);
    let summary = lib.backup("db", &data).await.unwrap();
    lib.backup("gone", &random_bytes(1 << 20, 12))
        .await
        .unwrap();
    // Forget "gone", so prune has something to delete.
    let mut options = forget_options();
    options.filter.source = Some("gone".into());
    forget(&lib.repo, &options).await.unwrap();

    let index_names = |memory: &larder::backend::MemoryBackend| -> Vec<String> {
        memory
            .snapshot()
            .into_keys()
            .filter(|k| k.starts_with("index/"))
            .collect()
    };
    for fresh_cache in [false, true] {
        for name in index_names(&memory) {
            // An earlier prune may have merged it into another.
            let Some(bytes) = memory.snapshot().get(&name).cloned() else {
                continue;
            };
            memory.remove(&name);
            let cache = tempfile::TempDir::new().unwrap();
            let repo = if fresh_cache {
                Repo::open(Arc::new(memory.clone()), PASSWORD.as_bytes(), cache.path())
                    .await
                    .unwrap()
            } else {
                lib.reopen().await.unwrap()
            };
            if let Err(e) = prune(&repo, &PruneOptions::default()).await {
                panic!("{name} hidden, fresh cache {fresh_cache}: {e}");
            }
            // Back again.
            memory.overwrite(&name, bytes);
            let cache = tempfile::TempDir::new().unwrap();
            let repo = Repo::open(Arc::new(memory.clone()), PASSWORD.as_bytes(), cache.path())
                .await
                .unwrap();
            assert_eq!(
                cat_bytes(&repo, &summary.snapshot_id).await.unwrap(),
                data,
                "{name} hidden, fresh cache {fresh_cache}"
            );
        }
    }
}

fn forget_options() -> ForgetOptions {
    ForgetOptions {
        filter: SnapshotFilter::default(),
        policy: Policy {
            tags: vec!["never".into()],
            ..Policy::default()
        },
        group_by: GroupBy::default(),
        time_zone: jiff::tz::TimeZone::UTC,
        now: jiff::Timestamp::now(),
        dry_run: false,
        allow_empty: true,
        snapshots: Vec::new(),
    }
}

#[test]
fn backup_refuses_a_time_in_the_future() {
    let r = CliRepo::init();
    let out = r.run_with_input(
        &[
            "backup",
            "--source",
            "db",
            "--stdin",
            "--time",
            "2099-01-01T00:00:00Z",
        ],
        b"data",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in the future"), "{}", stderr(&out));
    assert!(r.objects("snapshots").is_empty());
    // A past time (importing old dumps) is fine.
    let out = r.run_with_input(
        &[
            "backup",
            "--source",
            "db",
            "--stdin",
            "--time",
            "2020-01-01T00:00:00Z",
        ],
        b"data",
    );
    assert_success(&out);
}

/// Whoever holds the passphrase can still write snapshot objects dated in
/// the future (an old larder, or by hand). Retention keeps them, reports
/// them, and never lets them take a real snapshot's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_future_snapshots_never_cause_a_real_one_to_be_removed() {
    let (lib, _memory) = memory_repo().await;
    let now = jiff::Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    let mut real = Vec::new();
    for source in ["orders-db", "knowledge"] {
        for d in 1..=10 {
            let mut options = stream_options(
                source,
                larder::source::StreamInput::Reader(Box::new(std::io::Cursor::new(dump_text(
                    100, d as u64,
                )))),
            );
            options.time = Some(now - day * d);
            real.push(
                larder::ops::backup::backup(&lib.repo, options)
                    .await
                    .unwrap()
                    .snapshot_id,
            );
        }
        // Twelve planted snapshots, one a month from 2099 on.
        let (_, template) = lib
            .repo
            .resolve_snapshot(
                "latest",
                &SnapshotFilter {
                    source: Some(source.into()),
                    ..SnapshotFilter::default()
                },
            )
            .unwrap();
        let guard = lib
            .repo
            .hold_lease(larder::lease::LeaseKind::Backup)
            .await
            .unwrap();
        for m in 0..12i64 {
            let mut planted = template.clone();
            planted.time_ns = 4_070_908_800_000_000_000 + m * 31 * 86_400_000_000_000;
            lib.repo.write_snapshot(&planted, &guard).await.unwrap();
        }
        guard.finish().await;
    }
    let options = ForgetOptions {
        policy: Policy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            within: Some("30d".parse().unwrap()),
            ..Policy::default()
        },
        allow_empty: false,
        now,
        ..forget_options()
    };
    let summary = forget(&lib.repo, &options).await.unwrap();
    assert_eq!(summary.removed, 0, "{:#?}", summary.snapshots);
    assert_eq!(
        summary.warnings.len(),
        24,
        "every planted snapshot is reported"
    );
    assert!(
        summary.warnings[0].contains("2099"),
        "{}",
        summary.warnings[0]
    );
    // Without --keep-within, the rules still count real snapshots only.
    let options = ForgetOptions {
        policy: Policy {
            daily: Some(3),
            ..Policy::default()
        },
        ..options
    };
    let summary = forget(&lib.repo, &options).await.unwrap();
    let kept_real: Vec<_> = summary
        .snapshots
        .iter()
        .filter(|e| e.keep && !e.suspicious)
        .collect();
    assert_eq!(kept_real.len(), 6, "three days per source");
    assert!(kept_real.iter().all(|e| e.reasons[0].starts_with("daily")));
    for id in &real[..3] {
        assert!(lib.repo.snapshot(id).unwrap().is_some());
    }
}
