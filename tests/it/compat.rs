//! Repositories written by earlier releases still open, list, read and check.

use crate::support::*;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn format_v1_fixture_reads_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1"),
        &repo,
    );
    for empty in ["locks", "pending"] {
        std::fs::create_dir_all(repo.join(empty)).unwrap();
    }
    let run_cmd = |args: &[&str]| {
        let mut cmd = larder_cmd();
        cmd.args([
            "--repo",
            repo.to_str().unwrap(),
            "--cache-dir",
            dir.path().join("cache").to_str().unwrap(),
        ])
        .args(args)
        .env("LARDER_PASSWORD", "fixture passphrase v1");
        cmd
    };
    let run = |args: &[&str]| {
        larder_cmd()
            .args([
                "--repo",
                repo.to_str().unwrap(),
                "--cache-dir",
                dir.path().join("cache").to_str().unwrap(),
            ])
            .args(args)
            .env("LARDER_PASSWORD", "fixture passphrase v1")
            .output()
            .unwrap()
    };
    let out = run(&["--json", "snapshots"]);
    assert_success(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["time"], "2026-11-21T00:00:00Z");
    assert_eq!(list[0]["tags"], serde_json::json!(["fixture"]));

    let numbers: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let out = run(&["cat", list[0]["short_id"].as_str().unwrap(), "numbers.txt"]);
    assert_success(&out);
    assert!(out.stdout == numbers.as_bytes());
    let out = run(&["cat", "latest"]);
    assert!(out.stdout == format!("{numbers}extra\n").as_bytes());
    assert_success(&run(&["check", "--read-data"]));

    // A format-1 repository stays format 1: gzip input is stored as it
    // comes (no recipe, which an older larder could not read), and still
    // comes back byte for byte.
    let mut gzip = std::process::Command::new("gzip");
    gzip.arg("-c");
    let gz = run_with_stdin(gzip, numbers.as_bytes()).stdout;
    let out = run_with_stdin(
        run_cmd(&["--json", "backup", "--stdin", "--source", "gz"]),
        &gz,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("gzip-compressed"), "{}", stderr(&out));
    let out = run(&["cat", "latest"]);
    assert!(out.stdout == gz);
    let config = std::fs::read(repo.join("config")).unwrap();
    assert_eq!(
        config[..3],
        [0xa3, 0x00, 0x01],
        "the config still says format 1"
    );
    assert_success(&run(&["check", "--read-data"]));
}
