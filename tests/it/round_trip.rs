//! Backup, then cat and restore, reproduces the input bit for bit.

use std::os::unix::fs::PermissionsExt;

use larder::config::ChunkerProfile;
use larder::ops::check::{CheckOptions, check};

use crate::support::*;

async fn round_trip(repo: &LibRepo, data: &[u8]) {
    let summary = repo.backup("rt", data).await.unwrap();
    assert_eq!(summary.bytes_read, data.len() as u64);
    let back = cat_bytes(&repo.repo, &summary.snapshot_id).await.unwrap();
    assert!(
        back == data,
        "{} bytes came back for {} stored",
        back.len(),
        data.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_of_every_awkward_size_round_trip() {
    let (repo, _) = memory_repo().await;
    let profile = repo.repo.config().profile("stream").unwrap().clone();
    let (min, avg, max) = (
        profile.min as usize,
        profile.avg as usize,
        profile.max as usize,
    );
    for len in [
        1,
        2,
        min - 1,
        min,
        min + 1,
        avg,
        max - 1,
        max,
        max + 1,
        3 * max + 17,
    ] {
        round_trip(&repo, &random_bytes(len, len as u64)).await;
    }
    round_trip(&repo, &vec![0u8; 5 * max]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_text_and_random_streams_round_trip() {
    let (repo, _) = memory_repo().await;
    round_trip(&repo, &dump_text(400_000, 1)).await;
    round_trip(&repo, &random_bytes(24 << 20, 2)).await;
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
    assert!(report.is_ok(), "{report:?}");
    assert!(report.blobs_read > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_content_lists_round_trip_and_check() {
    // Tiny chunks and a fanout of 3 force lists several levels deep.
    let mut options = init_options();
    options.profiles = vec![ChunkerProfile::parse("stream=64:256:1K").unwrap()];
    options.list_fanout = Some(3);
    let (repo, _) = memory_repo_with(options).await;
    let data = random_bytes(600_000, 9);
    round_trip(&repo, &data).await;
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
    assert!(report.is_ok(), "{report:?}");
    // A second, identical backup shares every list blob.
    let again = repo.backup("rt", &data).await.unwrap();
    assert_eq!(again.blobs_new, 1, "only the new tree is stored: {again:?}");
}

#[test]
fn cli_backup_cat_and_restore_reproduce_the_input() {
    let r = CliRepo::init();
    let data = dump_text(200_000, 3);
    let summary = r.backup_stdin("orders", &data);
    let id = summary["snapshot_id"].as_str().unwrap().to_string();

    let out = r.run(&["cat", &id[..8]]);
    assert_success(&out);
    assert!(out.stdout == data);

    let target = r.dir.path().join("restored");
    let out = r.run(&[
        "restore",
        "latest",
        "--source",
        "orders",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_success(&out);
    let restored = target.join("stdin");
    assert!(std::fs::read(&restored).unwrap() == data);
    let meta = std::fs::metadata(&restored).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "dumps are restored private"
    );
}

#[test]
fn a_command_source_round_trips_and_records_its_argv() {
    let r = CliRepo::init();
    let out = r.run(&[
        "backup",
        "--source",
        "gen",
        "--command",
        "seq 1 200000",
        "--stdin-name",
        "numbers.txt",
        "--json",
    ]);
    assert_success(&out);
    let out = r.run(&["cat", "latest"]);
    assert_success(&out);
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(out.stdout == expected.as_bytes());
    let out = r.run(&["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list[0]["command"],
        serde_json::json!(["seq", "1", "200000"])
    );
}
