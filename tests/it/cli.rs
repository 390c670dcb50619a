//! The binary end to end: exit codes, `--json` shapes, and messages.

use crate::support::*;

fn snapshot_count(r: &CliRepo) -> usize {
    let out = r.run(&["--json", "snapshots"]);
    assert_success(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array().unwrap().len()
}

fn assert_one_clean_error(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert!(err.starts_with("larder: error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains("panicked")
            && !err.contains("RUST_BACKTRACE")
            && !err.contains("stack backtrace"),
        "{err}"
    );
}

#[test]
fn backup_json_has_the_documented_fields() {
    let r = CliRepo::init();
    let summary = r.backup_stdin("db", &dump_text(10_000, 1));
    for key in [
        "snapshot_id",
        "bytes_read",
        "bytes_added",
        "blobs_new",
        "blobs_reused",
        "duration_s",
    ] {
        assert!(!summary[key].is_null(), "missing {key}: {summary}");
    }
    for key in ["get", "put", "list", "delete", "bytes_up", "bytes_down"] {
        assert!(
            summary["requests"][key].is_u64(),
            "missing requests.{key}: {summary}"
        );
    }
    assert!(
        summary["requests"]["put"].as_u64().unwrap() >= 3,
        "packs, index, snapshot: {summary}"
    );
    // Opening reads config and the last-used key by name, and lists only
    // snapshots/, pending/ and index/ to sync the catalog; locks/ is listed
    // once to confirm the lease before the commit.
    assert_eq!(summary["requests"]["get"], 2, "{summary}");
    assert_eq!(summary["requests"]["list"], 4, "{summary}");
    assert_eq!(summary["snapshot_id"].as_str().unwrap().len(), 64);
}

#[test]
fn snapshots_json_lists_time_source_host_and_tags() {
    let r = CliRepo::init();
    let out = r.run_with_input(
        &[
            "backup",
            "--source",
            "orders",
            "--stdin",
            "--tag",
            "daily",
            "--tag",
            "pre-upgrade",
            "--host",
            "db1",
            "--time",
            "2026-01-02T03:04:05Z",
        ],
        b"some dump bytes\n",
    );
    assert_success(&out);
    let out = r.run(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &list[0];
    assert_eq!(s["source"], "orders");
    assert_eq!(s["host"], "db1");
    assert_eq!(s["tags"], serde_json::json!(["daily", "pre-upgrade"]));
    assert_eq!(s["time"], "2026-01-02T03:04:05Z");
    assert_eq!(s["id"].as_str().unwrap().len(), 64);
    // Filters narrow the list; a tag filter needs every tag.
    let out = r.run(&["--json", "snapshots", "--source", "other"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = r.run(&["--json", "snapshots", "--tag", "daily"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn empty_stdin_is_an_error_and_writes_no_snapshot() {
    let r = CliRepo::init();
    let out = r.run_with_input(&["backup", "--source", "db", "--stdin"], b"");
    assert_one_clean_error(&out, "produced no data");
    assert_eq!(snapshot_count(&r), 0);
}

#[test]
fn a_failing_command_writes_no_snapshot_and_shows_its_stderr() {
    let r = CliRepo::init();
    let script =
        "echo 'COPY half a dump'; echo 'pg_dump: error: connection to server failed' >&2; exit 2";
    let out = r.run(&[
        "backup",
        "--source",
        "db",
        "--command",
        &format!("sh -c \"{script}\""),
    ]);
    assert_one_clean_error(&out, "exited with status 2");
    assert!(
        stderr(&out).contains("pg_dump: error: connection to server failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot_count(&r), 0);
}

#[test]
fn a_command_killed_midway_writes_no_snapshot() {
    let r = CliRepo::init();
    let script = "head -c 3000000 /dev/urandom; echo dying >&2; kill -9 $$";
    let out = r.run(&[
        "backup",
        "--source",
        "db",
        "--command",
        &format!("sh -c '{script}'"),
    ]);
    assert_one_clean_error(&out, "killed by signal 9");
    assert!(stderr(&out).contains("dying"));
    assert_eq!(snapshot_count(&r), 0);
    // The repository is still sound.
    assert_success(&r.run(&["check", "--read-data"]));
}

#[test]
fn a_command_that_cannot_start_is_a_clear_error() {
    let r = CliRepo::init();
    let out = r.run(&[
        "backup",
        "--source",
        "db",
        "--command",
        "/nonexistent/pg_dump mydb",
    ]);
    assert_one_clean_error(&out, "cannot start");
    assert_eq!(snapshot_count(&r), 0);
}

#[test]
fn a_command_with_empty_output_is_an_error() {
    let r = CliRepo::init();
    let out = r.run(&["backup", "--source", "db", "--command", "true"]);
    assert_one_clean_error(&out, "produced no data");
    assert_eq!(snapshot_count(&r), 0);
}

#[test]
fn compressed_input_warns_with_exit_code_3_and_still_saves() {
    let r = CliRepo::init();
    // zstd input cannot be unpacked for deduplication, and so is gzip with
    // --no-unpack: both are stored as they come, with the warning.
    let zst = zstd::encode_all(&dump_text(20_000, 2)[..], 3).unwrap();
    let out = r.run_with_input(&["backup", "--source", "db", "--stdin"], &zst);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larder: warning: the input is zstd-compressed"),
        "{}",
        stderr(&out)
    );
    let mut gzip = std::process::Command::new("gzip");
    gzip.arg("-c");
    let gz = run_with_stdin(gzip, &dump_text(20_000, 2)).stdout;
    let out = r.run_with_input(&["backup", "--source", "db", "--stdin", "--no-unpack"], &gz);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larder: warning: the input is gzip-compressed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot_count(&r), 2);
}

#[test]
fn unknown_snapshots_and_paths_are_one_line_errors() {
    let r = CliRepo::init();
    r.backup_stdin("db", b"data\n");
    assert_one_clean_error(
        &r.run(&["cat", "deadbeef"]),
        "no snapshot matches \"deadbeef\"",
    );
    assert_one_clean_error(
        &r.run(&["cat", "latest", "--source", "nope"]),
        "no snapshot matches \"latest\" with source nope",
    );
    assert_one_clean_error(
        &r.run(&["cat", "latest", "no/such/file"]),
        "is in the latest snapshot of no source (sources: db)",
    );
    assert_one_clean_error(
        &r.run(&["cat", "latest", "--source", "db", "no/such/file"]),
        "does not exist in snapshot",
    );
    assert_one_clean_error(
        &r.run(&["cat", "xyz"]),
        "neither `latest` nor a snapshot id prefix",
    );
    let out = r.run_with_input(
        &[
            "backup",
            "--source",
            "db",
            "--stdin",
            "--stdin-name",
            "../escape",
        ],
        b"x",
    );
    assert_one_clean_error(&out, "must be a single file name");
    let out = r.run_with_input(
        &["backup", "--source", "db", "--stdin", "--time", "yesterday"],
        b"x",
    );
    assert_one_clean_error(&out, "not an RFC 3339 time");
}

#[test]
fn restore_refuses_to_overwrite_unless_asked() {
    let r = CliRepo::init();
    r.backup_stdin("db", b"version two\n");
    let target = r.dir.path().join("t");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("stdin"), b"version one\n").unwrap();
    let out = r.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_one_clean_error(&out, "refusing to overwrite");
    assert_eq!(
        std::fs::read(target.join("stdin")).unwrap(),
        b"version one\n"
    );
    let out = r.run(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "always",
    ]);
    assert_success(&out);
    assert_eq!(
        std::fs::read(target.join("stdin")).unwrap(),
        b"version two\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

#[test]
fn passphrases_come_from_a_file_or_a_command_and_none_is_an_error() {
    let r = CliRepo::init();
    r.backup_stdin("db", b"x\n");
    let file = r.dir.path().join("pw");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let out = r
        .cmd(&["snapshots"])
        .env_remove("LARDER_PASSWORD")
        .arg("--password-file")
        .arg(&file)
        .output()
        .unwrap();
    assert_success(&out);
    let out = r
        .cmd(&[
            "snapshots",
            "--password-command",
            &format!("cat {}", file.display()),
        ])
        .env_remove("LARDER_PASSWORD")
        .output()
        .unwrap();
    assert_success(&out);
    // Without a terminal (a new session has none) there is nobody to ask.
    let mut cmd = r.cmd(&["snapshots"]);
    cmd.env_remove("LARDER_PASSWORD")
        .stdin(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    assert_one_clean_error(&cmd.output().unwrap(), "no passphrase: set LARDER_PASSWORD");
}

#[test]
fn keys_can_be_added_listed_changed_and_removed() {
    let r = CliRepo::init();
    r.backup_stdin("db", b"x\n");
    let new_pw = r.dir.path().join("new");
    std::fs::write(&new_pw, "second passphrase\n").unwrap();
    let fast = ["--kdf-memory", "1", "--kdf-passes", "1"];

    let mut args = vec![
        "--json",
        "key",
        "add",
        "--new-password-file",
        new_pw.to_str().unwrap(),
    ];
    args.extend(fast);
    let out = r.run(&args);
    assert_success(&out);
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let added = added["key"].as_str().unwrap().to_string();

    let out = r.run(&["--json", "key", "list"]);
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let original = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The key in use cannot be removed; with the other key it can.
    assert_one_clean_error(
        &r.run(&["key", "remove", &original[..8]]),
        "refusing to remove the key",
    );
    let out = r
        .cmd(&["key", "remove", &original[..8]])
        .env("LARDER_PASSWORD", "second passphrase")
        .output()
        .unwrap();
    assert_success(&out);
    assert_one_clean_error(&r.run(&["snapshots"]), "wrong passphrase");

    // passwd swaps the current key for a new one.
    let third = r.dir.path().join("third");
    std::fs::write(&third, "third passphrase\n").unwrap();
    let mut args = vec![
        "key",
        "passwd",
        "--new-password-file",
        third.to_str().unwrap(),
    ];
    args.extend(fast);
    let out = r
        .cmd(&args)
        .env("LARDER_PASSWORD", "second passphrase")
        .output()
        .unwrap();
    assert_success(&out);
    let out = r
        .cmd(&["--json", "key", "list"])
        .env("LARDER_PASSWORD", "third passphrase")
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_ne!(keys[0]["id"].as_str().unwrap(), added);
    // The last key can never be removed.
    let last = keys[0]["id"].as_str().unwrap()[..8].to_string();
    let out = r
        .cmd(&["key", "remove", &last])
        .env("LARDER_PASSWORD", "third passphrase")
        .output()
        .unwrap();
    assert_one_clean_error(&out, "refusing to remove");
}

#[test]
fn help_describes_every_command() {
    let out = larder_cmd().arg("--help").output().unwrap();
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "init",
        "backup",
        "snapshots",
        "cat",
        "restore",
        "check",
        "key",
        "catalog",
    ] {
        assert!(help.contains(command), "{command} missing from --help");
    }
    assert!(help.contains("Exit codes"));
}

#[test]
fn stats_counts_objects_in_storage_and_dedup_from_the_catalog() {
    let r = CliRepo::init();
    let data = random_bytes(3_000_000, 42);
    r.backup_stdin("db", &data);
    r.backup_stdin("db", &data);
    let out = r.run(&["--json", "stats"]);
    assert_success(&out);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["snapshots"], 2, "{s}");
    assert_eq!(s["sources"], 1, "{s}");
    let group = |prefix: &str| {
        s["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["prefix"] == prefix)
            .unwrap()
            .clone()
    };
    // Counts come from the storage itself.
    let packs_on_disk = r
        .files()
        .iter()
        .filter(|(p, _)| p.strip_prefix(&r.repo).unwrap().starts_with("packs"))
        .count();
    assert_eq!(group("packs")["count"], packs_on_disk as u64, "{s}");
    assert_eq!(group("snapshots")["count"], 2, "{s}");
    let on_disk: u64 = r.files().iter().map(|(_, b)| b.len() as u64).sum();
    let config = std::fs::metadata(r.repo.join("config")).unwrap().len();
    assert_eq!(s["total_bytes"].as_u64().unwrap() + config, on_disk, "{s}");
    // Two copies of incompressible data: dedup 2x, compression ~1x.
    let dedup = s["dedup_ratio"].as_f64().unwrap();
    assert!((1.99..2.01).contains(&dedup), "{s}");
    let data_blobs = &s["blobs"].as_array().unwrap()[0];
    assert_eq!(data_blobs["kind"], "data");
    assert_eq!(data_blobs["raw_bytes"], data.len() as u64, "{s}");
    assert!(s["requests"]["list"].as_u64().unwrap() >= 6, "{s}");

    let human = r.run(&["stats"]);
    assert_success(&human);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("dedup 2.0x"), "{text}");
}

#[test]
fn status_max_age_fails_for_a_stale_source_and_passes_once_it_is_backed_up() {
    let r = CliRepo::init();
    let ago = |hours: i64| {
        (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(hours))
            .round(jiff::Unit::Second)
            .unwrap()
            .to_string()
    };
    let backup_at = |source: &str, time: &str| {
        let out = r.run_with_input(
            &["backup", "--stdin", "--source", source, "--time", time],
            format!("{source} at {time}\n").as_bytes(),
        );
        assert_success(&out);
    };
    backup_at("orders", &ago(2));
    let out = r.run(&["status", "--max-age", "1h"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Two hours, give or take the second the backup's time was rounded to.
    assert!(
        stderr(&out).contains("orders: the newest good snapshot is 1h 59m old, older than 1h")
            || stderr(&out)
                .contains("orders: the newest good snapshot is 2h 0m old, older than 1h"),
        "{}",
        stderr(&out)
    );
    // Without a limit, age alone is no failure.
    assert_success(&r.run(&["status"]));
    assert_success(&r.run(&["status", "--max-age", "3h"]));

    let out = r.run_with_input(&["backup", "--stdin", "--source", "orders"], b"now\n");
    assert_success(&out);
    assert_success(&r.run(&["status", "--max-age", "1h"]));

    backup_at("cache", &ago(30));
    let out = r.run(&["--json", "status", "--max-age", "1d"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ok"], false);
    let sources = summary["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0]["source"], "cache");
    assert!(sources[0]["latest"]["age_s"].as_i64().unwrap() >= 30 * 3600 - 5);
    assert!(sources[1]["problems"].as_array().unwrap().is_empty());
    assert_success(&r.run(&["status", "--max-age", "1d", "--source", "orders"]));
    let out = r.run(&["status", "--source", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cache, orders"), "{}", stderr(&out));
}

#[test]
fn status_counts_only_complete_dumps_as_good_backups() {
    let r = CliRepo::init();
    let dump = dump_text(1000, 3);
    let cut = &dump[..dump.len() / 2];
    let out = r.run_with_input(
        &[
            "backup",
            "--stdin",
            "--source",
            "pg",
            "--kind",
            "postgres",
            "--allow-incomplete",
        ],
        cut,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = r.run(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pg: no good snapshot"),
        "{}",
        stderr(&out)
    );
    let out = r.run_with_input(
        &["backup", "--stdin", "--source", "pg", "--kind", "postgres"],
        &dump,
    );
    assert_success(&out);
    assert_success(&r.run(&["status", "--max-age", "1h"]));
}

#[test]
fn cat_latest_with_a_path_reads_the_newest_snapshot_that_holds_it() {
    let r = CliRepo::init();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kb.yaml");
    std::fs::write(&file, "a: 1\n").unwrap();
    assert_success(&r.run(&["backup", "--source", "kb", dir.path().to_str().unwrap()]));
    // A newer snapshot of another source (a stream) does not hide it.
    r.backup_stdin("db", b"dump\n");
    let out = r.run(&["cat", "latest", file.to_str().unwrap()]);
    assert_success(&out);
    assert_eq!(out.stdout, b"a: 1\n");
    // Without a path, latest is the newest snapshot of any source.
    let out = r.run(&["cat", "latest"]);
    assert_success(&out);
    assert_eq!(out.stdout, b"dump\n");
}

#[test]
fn forget_removes_the_named_snapshots_and_nothing_else() {
    let r = CliRepo::init();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            r.backup_stdin("db", format!("day {i}\n").as_bytes())["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let out = r.run(&["--json", "forget", "--dry-run", &ids[0][..8]]);
    assert_success(&out);
    assert_eq!(snapshot_count(&r), 3);
    let out = r.run(&["--json", "forget", &ids[0][..8], &ids[2]]);
    assert_success(&out);
    let removed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removed.as_array().unwrap().len(), 2, "{removed}");
    assert_eq!(snapshot_count(&r), 1);
    let out = r.run(&["cat", "latest"]);
    assert_eq!(out.stdout, b"day 1\n");
    // Named snapshots and rules do not mix; an unknown id is an error.
    let out = r.run(&["forget", &ids[1][..8], "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not both"), "{}", stderr(&out));
    let out = r.run(&["forget", &ids[0][..8]]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(snapshot_count(&r), 1);
}

#[test]
fn an_exported_key_file_opens_the_repository_without_a_passphrase_and_only_that_one() {
    use std::os::unix::fs::PermissionsExt;
    let r = CliRepo::init();
    let data = random_bytes(300_000, 21);
    r.backup_stdin("db", &data);
    let key = r.dir.path().join("repo.key");
    assert_success(&r.run(&["key", "export", key.to_str().unwrap()]));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Never overwritten.
    let out = r.run(&["key", "export", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // No passphrase anywhere: the key file alone opens it.
    let with_key = |key: &std::path::Path, args: &[&str]| {
        larder_cmd()
            .arg("--repo")
            .arg(&r.repo)
            .arg("--cache-dir")
            .arg(&r.cache)
            .arg("--key-file")
            .arg(key)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = with_key(&key, &["cat", "latest"]);
    assert_success(&out);
    assert!(out.stdout == data);
    assert_success(&with_key(
        &key,
        &["backup", "--source", "etc", "--quiet", "/etc/hostname"],
    ));

    // Another repository's key file, a damaged one, and not a key file.
    let other = CliRepo::init();
    let other_key = other.dir.path().join("other.key");
    assert_success(&other.run(&["key", "export", other_key.to_str().unwrap()]));
    let out = with_key(&other_key, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the key file is for repository"),
        "{}",
        stderr(&out)
    );
    let mut bytes = std::fs::read(&key).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let damaged = r.dir.path().join("damaged.key");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = with_key(&damaged, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not open this repository"),
        "{}",
        stderr(&out)
    );
    let garbage = r.dir.path().join("garbage.key");
    std::fs::write(&garbage, b"correct horse battery staple\n").unwrap();
    let out = with_key(&garbage, &["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a larder key file"),
        "{}",
        stderr(&out)
    );

    // key passwd replaces the passphrase in use, and there is none.
    let new = r.dir.path().join("new-pass");
    std::fs::write(&new, "another passphrase\n").unwrap();
    let out = with_key(
        &key,
        &[
            "key",
            "passwd",
            "--new-password-file",
            new.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a key file opened it"),
        "{}",
        stderr(&out)
    );

    // A readable-by-others key file still opens, with a warning.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = with_key(&key, &["snapshots"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn find_prints_one_line_per_version_and_every_occurrence_with_all() {
    let r = CliRepo::init();
    let tree = r.dir.path().join("kb");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("same.yaml"), "a: 1\n").unwrap();
    std::fs::write(tree.join("changing.yaml"), "b: 1\n").unwrap();
    let backup = || {
        assert_success(&r.run(&[
            "backup",
            "--source",
            "kb",
            "--quiet",
            tree.to_str().unwrap(),
        ]))
    };
    backup();
    backup();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(tree.join("changing.yaml"), "b: 2, longer\n").unwrap();
    backup();

    let out = r.run(&["find", "*.yaml"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let same: Vec<&&str> = lines.iter().filter(|l| l.contains("same.yaml")).collect();
    assert_eq!(same.len(), 1, "{text}");
    assert!(same[0].contains("in 3 snapshots"), "{text}");
    let changing: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("changing.yaml"))
        .collect();
    assert_eq!(changing.len(), 2, "{text}");
    assert!(
        changing.iter().any(|l| l.contains("in 2 snapshots")),
        "{text}"
    );
    assert!(
        stderr(&out).contains("3 versions (6 matches) in 3 snapshots"),
        "{}",
        stderr(&out)
    );

    let out = r.run(&["find", "*.yaml", "--all"]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
    let out = r.run(&["--json", "find", "*.yaml"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["versions"].as_array().unwrap().len(), 3);
    assert_eq!(summary["matches"].as_array().unwrap().len(), 6);
}

#[test]
fn a_backup_and_the_snapshot_listing_report_the_same_bytes_added() {
    let r = CliRepo::init();
    for (i, source) in ["db", "db", "other"].iter().enumerate() {
        let summary = r.backup_stdin(source, &random_bytes(200_000 + i * 1000, i as u64));
        let out = r.run(&["--json", "snapshots"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == summary["snapshot_id"])
            .unwrap();
        assert_eq!(
            listed["added"], summary["bytes_added"],
            "{listed:#} {summary:#}"
        );
    }
}
