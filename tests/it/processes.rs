//! The process around an operation: signals, closed pipes, the dump
//! command's environment, leases of dead processes, and exit codes.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Waits for `child` to exit, at most `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("larder did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `ready` holds, at most `limit`.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose process group is `group`, other than zombies.
fn members_of_group(group: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the command name: state, ppid, pgrp, ...
        if fields.first() != Some(&"Z") && fields.get(2) == Some(&group.to_string().as_str()) {
            out.push(pid);
        }
    }
    out
}

/// The status as a shell's `$?` shows it: the exit code, or 128 + N for a
/// process that died of signal N (larder cleans up, then dies of the
/// signal it was sent, so loops in scripts stop on Ctrl-C).
fn shell_status(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .expect("exited or was killed")
}

fn send(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0);
}

fn error_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("larder: ")).collect()
}

/// A repository with 1 MiB packs, so a few MiB of dump upload packs.
fn small_pack_repo() -> CliRepo {
    CliRepo::init_with(&["--pack-size", "1"])
}

#[test]
fn a_signal_stops_a_backup_cleanly_and_kills_the_dump() {
    for (signal, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let r = small_pack_repo();
        let pid_file = r.dir.path().join("pid");
        // A dump that writes 4 MiB, then hangs in a grandchild (as a
        // pg_dump waiting on a lock would).
        let script = format!(
            "echo $$ > {}; head -c 4194304 /dev/urandom; sleep 600",
            pid_file.display()
        );
        let mut child = r
            .cmd(&[
                "backup",
                "--source",
                "db",
                "--command",
                &format!("sh -c '{script}'"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the dump is running and packs have landed.
        wait_until(Duration::from_secs(30), "packs to land", || {
            pid_file.exists() && r.objects("packs").len() >= 2
        });
        let group: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!members_of_group(group).is_empty());
        send(&child, signal);
        let status = wait_bounded(&mut child, Duration::from_secs(20));
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(shell_status(status), code, "{err}");
        let lines = error_lines(&err);
        assert_eq!(lines.len(), 1, "one line says what was interrupted: {err}");
        assert!(lines[0].contains("interrupted by"), "{err}");
        assert!(lines[0].contains("nothing was committed"), "{err}");
        // The whole dump is gone, the lease with it; no snapshot; the packs
        // that landed are indexed, so a retry uploads them not again.
        wait_until(
            Duration::from_secs(5),
            "the dump's process group to die",
            || members_of_group(group).is_empty(),
        );
        assert!(r.objects("snapshots").is_empty());
        assert!(r.objects("locks").is_empty(), "lease released");
        assert!(!r.objects("index").is_empty(), "landed packs indexed");
    }
}

#[test]
fn a_signal_stops_a_backup_reading_an_idle_stdin() {
    let r = CliRepo::init();
    let mut child = r.spawn(&["backup", "--source", "db", "--stdin"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(100_000, 1)).unwrap();
    wait_until(Duration::from_secs(10), "the lease", || {
        !r.objects("locks").is_empty()
    });
    send(&child, libc::SIGINT);
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(shell_status(status), 130, "{}", stderr(&out));
    assert!(r.objects("snapshots").is_empty());
    assert!(r.objects("locks").is_empty());
}

#[test]
fn a_signal_ends_a_command_stuck_writing_to_a_full_pipe_and_releases_its_lease() {
    let r = CliRepo::init();
    r.backup_stdin("db", &random_bytes(4 << 20, 2));
    // Standard output is a pipe nobody reads: `cat` blocks once it is full.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = r
        .cmd(&["cat", "latest"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the lease", || {
        !r.objects("locks").is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    send(&child, libc::SIGTERM);
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    drop(reader);
    let out = child.wait_with_output().unwrap();
    assert_eq!(shell_status(status), 143, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted by SIGTERM: cat stopped"),
        "{}",
        stderr(&out)
    );
    assert!(r.objects("locks").is_empty(), "lease released");
}

/// Runs `args` with standard output a pipe whose reader is already gone.
fn run_into_closed_pipe(r: &CliRepo, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    r.cmd(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn every_listing_into_a_closed_pipe_ends_quietly_and_releases_its_lease() {
    let r = CliRepo::init();
    let tree = r.dir.path().join("kb");
    std::fs::create_dir_all(tree.join("teams")).unwrap();
    for i in 0..50 {
        std::fs::write(
            tree.join(format!("teams/t{i}.yaml")),
            format!("team: {i}\n"),
        )
        .unwrap();
    }
    let tree_arg = tree.to_str().unwrap();
    assert_success(&r.run(&["backup", "--source", "kb", tree_arg]));
    std::fs::write(tree.join("teams/t1.yaml"), "team: one\n").unwrap();
    assert_success(&r.run(&["backup", "--source", "kb", tree_arg]));
    r.backup_stdin("db", &dump_text(1000, 1));
    let ids: Vec<String> =
        serde_json::from_slice::<serde_json::Value>(&r.run(&["snapshots", "--json"]).stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
    let file = format!("{tree_arg}/teams/t1.yaml");
    let listings: Vec<Vec<&str>> = vec![
        vec!["snapshots"],
        vec!["snapshots", "--json"],
        vec!["ls", &ids[1], "--recursive"],
        vec!["ls", &ids[1], "--long", "--recursive"],
        vec!["find", "*.yaml"],
        vec!["diff", &ids[0], &ids[1]],
        vec!["diff", &ids[0], &ids[1], "--content"],
        vec!["log", &file],
        vec!["stats"],
        vec!["check"],
        vec!["key", "list"],
        vec!["forget", "--keep-last", "1", "--dry-run"],
        vec!["prune", "--dry-run"],
    ];
    for args in &listings {
        let out = run_into_closed_pipe(&r, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{args:?}: {err}"
        );
        assert!(r.objects("locks").is_empty(), "{args:?} left its lease");
    }
    // `cat` promises bytes: a reader that went away is its failure.
    let out = run_into_closed_pipe(&r, &["cat", "latest", "--source", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("standard output"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
    assert!(r.objects("locks").is_empty());
}

#[test]
fn the_dump_command_gets_none_of_larders_secrets() {
    let r = CliRepo::init();
    let out = r
        .cmd(&["backup", "--source", "env", "--command", "env"])
        .env("LARDER_TO_PASSWORD", "offsite-secret")
        .env("LARDER_NEW_PASSWORD", "new-secret")
        .env("PGPASSFILE", "/etc/pgpass")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out);
    let out = r.run(&["cat", "latest"]);
    assert_success(&out);
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.contains("PGPASSFILE=/etc/pgpass"),
        "the dump's own settings pass"
    );
    for secret in [PASSWORD, "offsite-secret", "new-secret", "LARDER_PASSWORD"] {
        assert!(!env.contains(secret), "{secret} reached the dump:\n{env}");
    }
}

/// Starts a backup that holds its lease (reading an idle stdin) and kills
/// it with SIGKILL, leaving the lease of a process that no longer runs.
fn leave_a_dead_backup_lease(r: &CliRepo) {
    let before = r.objects("locks").len();
    let mut child = r
        .cmd(&["backup", "--source", "stuck", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the lease", || {
        r.objects("locks").len() > before
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn leases_of_dead_processes_on_this_host_block_nothing_and_are_removed() {
    let r = CliRepo::init();
    r.backup_stdin("kept", &dump_text(5000, 1));
    r.backup_stdin("gone", &random_bytes(2 << 20, 2));
    leave_a_dead_backup_lease(&r);
    assert_eq!(r.objects("locks").len(), 1);
    // Forget "gone": prune's generation began after the dead backup's
    // lease, which would hold the sweep for ten minutes were it alive.
    r.forget_source("gone");
    let started = Instant::now();
    let out = r.run(&["prune", "--json"]);
    assert_success(&out);
    assert!(started.elapsed() < Duration::from_secs(30));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["generations"][0]["status"], "deleted",
        "{summary:#}"
    );
    assert!(summary["packs_deleted"].as_u64().unwrap() > 0);
    assert_eq!(summary["leases_removed"], 1);
    assert!(r.objects("locks").is_empty());

    // check removes one too, and says why.
    leave_a_dead_backup_lease(&r);
    let out = r.run(&["check"]);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no longer runs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(r.objects("locks").is_empty());
}

#[test]
fn latest_fails_when_the_newest_snapshot_is_damaged() {
    let r = CliRepo::init();
    let old = dump_text(2000, 1);
    r.backup_stdin("db", &old);
    std::thread::sleep(Duration::from_millis(20));
    let newest = r.backup_stdin("db", &dump_text(2000, 2));
    let id = newest["snapshot_id"].as_str().unwrap();
    flip_byte(&r.repo.join("snapshots").join(id));
    let fresh = r.dir.path().join("fresh");
    for args in [
        vec!["cat", "latest"],
        vec!["cat", "latest", "--source", "db"],
        vec![
            "restore",
            "latest",
            "--target",
            r.dir.path().join("out").to_str().unwrap(),
        ],
    ] {
        let out = r.run_with_cache(&fresh, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("snapshots/{id}")),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "nothing from an older snapshot");
    }
    // Named by id, the older snapshot is still there.
    let snapshots: serde_json::Value =
        serde_json::from_slice(&r.run_with_cache(&fresh, &["snapshots", "--json"]).stdout).unwrap();
    let older = snapshots[0]["id"].as_str().unwrap();
    let out = r.run_with_cache(&fresh, &["cat", &older[..8]]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "warns of the damaged one: {}",
        stderr(&out)
    );
    assert!(out.stdout == old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_directory_fails_the_restore_and_the_rest_is_restored() {
    use larder::ops::restore::{Overwrite, RestoreOptions, restore};
    let (lib, memory) = memory_repo().await;
    let source = tempfile::tempdir().unwrap();
    for dir in ["a", "b"] {
        std::fs::create_dir_all(source.path().join(dir)).unwrap();
        std::fs::write(source.path().join(dir).join("f.yaml"), dir).unwrap();
    }
    let summary = larder::ops::backup::backup(
        &lib.repo,
        larder::ops::backup::BackupOptions {
            input: larder::ops::backup::BackupInput::Tree(larder::ops::backup::TreeInput {
                paths: vec![source.path().to_path_buf()],
                excludes: larder::source::tree::Excludes::new(&[]).unwrap(),
                one_file_system: false,
            }),
            kind: "files".into(),
            ..stream_options("kb", larder::source::StreamInput::Stdin)
        },
    )
    .await
    .unwrap();
    // Damage the tree blob of directory "b" only.
    let snapshot = lib.repo.snapshot(&summary.snapshot_id).unwrap().unwrap();
    let node = lib
        .repo
        .lookup(
            &snapshot.root,
            format!("{}/b", source.path().display()).as_bytes(),
        )
        .await
        .unwrap()
        .unwrap();
    let location = lib.repo.locate(&node.subtree.unwrap()).unwrap();
    let name = larder::layout::pack_path(&location.pack);
    let mut bytes = memory.snapshot()[&name].to_vec();
    bytes[location.offset as usize + 30] ^= 1;
    memory.overwrite(&name, bytes.into());
    // A fresh cache: tree packs are otherwise read from the local copy.
    let repo = larder::Repo::open(
        std::sync::Arc::new(memory.clone()),
        PASSWORD.as_bytes(),
        tempfile::tempdir().unwrap().path(),
    )
    .await
    .unwrap();
    let target = tempfile::tempdir().unwrap();
    let restored = restore(
        &repo,
        &snapshot,
        &RestoreOptions {
            target: target.path().to_path_buf(),
            overwrite: Overwrite::Never,
            include: vec![],
            exclude: vec![],
            progress: Default::default(),
        },
    )
    .await
    .unwrap();
    assert_eq!(restored.damaged.len(), 1, "{restored:#?}");
    assert!(restored.damaged[0].contains("/b"), "{restored:#?}");
    assert!(
        restored.skipped.is_empty(),
        "damage is not a skip: {restored:#?}"
    );
    let a = target
        .path()
        .join(source.path().strip_prefix("/").unwrap())
        .join("a/f.yaml");
    assert_eq!(std::fs::read(a).unwrap(), b"a");
}

#[test]
fn check_sums_up_packs_left_by_interrupted_backups_in_one_line() {
    let r = small_pack_repo();
    // A backup killed outright (no chance to index what landed).
    let mut child = r
        .cmd(&["backup", "--source", "db", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(6 << 20, 3)).unwrap();
    wait_until(Duration::from_secs(20), "packs to land", || {
        r.objects("packs").len() >= 3
    });
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let out = r.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let notes: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("no index object"))
        .collect();
    assert_eq!(notes.len(), 1, "{text}");
    assert!(notes[0].contains("pack(s)"), "{text}");
}

/// Not a test of larder: the helpers above must see a process group.
#[test]
fn members_of_group_sees_a_running_group() {
    let mut child = Command::new("sleep")
        .arg("5")
        .process_group(0)
        .spawn()
        .unwrap();
    assert_eq!(members_of_group(child.id()), vec![child.id()]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !Path::new(&format!("/proc/{}/cmdline", child.id())).exists()
            || members_of_group(child.id()).is_empty()
    );
}

#[test]
fn before_and_after_hooks_run_in_order_and_a_failing_before_leaves_no_snapshot() {
    let r = CliRepo::init();
    let log = r.dir.path().join("hooks.log");
    let log_s = log.display().to_string();
    let before = format!("sh -c 'echo before $LARDER_SOURCE >> {log_s}'");
    let dump = format!("sh -c 'echo dump >> {log_s}; echo some data'");
    let after =
        format!("sh -c 'echo after $LARDER_OUTCOME $LARDER_SNAPSHOT $LARDER_PASSWORD >> {log_s}'");
    let out = r.run(&[
        "--json",
        "backup",
        "--source",
        "db",
        "--command",
        &dump,
        "--before",
        &before,
        "--after",
        &after,
    ]);
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = summary["snapshot_id"].as_str().unwrap();
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines,
        format!("before db\ndump\nafter success {id}\n"),
        "hooks run in order, the after hook learns the outcome and never sees the passphrase"
    );

    // A failing dump: the after hook still runs and is told so.
    std::fs::remove_file(&log).unwrap();
    let after = format!("sh -c 'echo after $LARDER_OUTCOME >> {log_s}'");
    let out = r.run(&[
        "backup",
        "--source",
        "db",
        "--command",
        "false",
        "--after",
        &after,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "after failure\n");

    // A failing before hook: no backup, no snapshot, exit 1, its output shown.
    let out = r.run(&[
        "backup",
        "--source",
        "other",
        "--command",
        &dump,
        "--before",
        "sh -c 'echo cannot stop the container >&2; exit 4'",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot stop the container"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no backup was taken"),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["--json", "snapshots", "--source", "other"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    // A failing after hook after a good backup: saved, with a warning.
    let out = r.run(&[
        "backup",
        "--source",
        "db",
        "--command",
        &dump,
        "--after",
        "false",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("after hook failed"),
        "{}",
        stderr(&out)
    );
}
