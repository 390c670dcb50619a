//! What the walk takes in, leaves out and warns about: symlink loops,
//! unreadable entries, FIFOs, files that change or vanish while they are
//! read, excludes and file-system boundaries.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::*;

use super::{
    TreeBuilder, backup, backup_args, backup_clean, chmod, files_rel, is_root, json_of, ls_all, n,
    output_within, p, restore_clean, restored, scan, show, snap_id, warnings_of, write,
};

/// True (after saying why) when the test cannot run because it needs root;
/// CI runs as root, so there it never skips.
fn needs_root_but_is_not(what: &str) -> bool {
    if is_root() {
        return false;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "CI must run as root: {what}"
    );
    eprintln!("not root: cannot {what}; run the suite as root to test it");
    true
}

// ---------------------------------------------------------------------------
// Symlink loops
// ---------------------------------------------------------------------------

#[test]
fn symlink_loops_and_links_to_ancestors_are_stored_as_links_and_never_followed() {
    let r = CliRepo::init();
    let tree = TreeBuilder::new();
    let top = tree.root().to_path_buf();
    let (dir, src) = tree
        .file("real.txt", random_bytes(1000, 1))
        .file("sub/inner.txt", random_bytes(500, 2))
        .symlink("loop-a", "loop-b")
        .symlink("loop-b", "loop-a")
        .symlink("self", "self")
        .symlink("sub/up", "..")
        .symlink("sub/here", ".")
        .symlink("sub/top", &top)
        .symlink("root", "/")
        .build();
    let links: BTreeMap<&str, PathBuf> = [
        ("loop-a", PathBuf::from("loop-b")),
        ("loop-b", PathBuf::from("loop-a")),
        ("self", PathBuf::from("self")),
        ("sub/up", PathBuf::from("..")),
        ("sub/here", PathBuf::from(".")),
        ("sub/top", src.clone()),
        ("root", PathBuf::from("/")),
    ]
    .into_iter()
    .collect();

    let out = output_within(
        r.cmd(&backup_args("loops", &[&src], &[])),
        Duration::from_secs(120),
    );
    assert_success(&out);
    let summary = json_of(&out);
    assert_eq!(n(&summary, "bytes_read"), 1500, "{summary}");
    assert_eq!(n(&summary, "files_new"), 2, "{summary}");
    let id = snap_id(&summary);

    let listed = ls_all(&r, &id);
    let below_src: BTreeSet<&str> = listed
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{}/", p(&src))))
        .collect();
    let mut expected: BTreeSet<&str> = links.keys().copied().collect();
    expected.extend(["real.txt", "sub", "sub/inner.txt"]);
    assert_eq!(below_src, expected);
    for (name, target) in &links {
        let e = &listed[&format!("{}/{name}", p(&src))];
        assert_eq!(e["kind"], "symlink", "{e}");
        assert_eq!(e["target"], p(target), "{e}");
    }
    // ls -l shows each link with its target.
    let out = r.run(&["ls", &id, p(&src), "-l", "-r"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    for (name, target) in &links {
        let line = format!("{}/{name} -> {}", p(&src), p(target));
        assert!(
            text.lines()
                .any(|l| l.starts_with('l') && l.ends_with(&line)),
            "no line ending {line:?} in:\n{text}"
        );
    }

    let target = dir.path().join("restore");
    let out = output_within(
        r.cmd(&["--json", "restore", &id, "--target", p(&target)]),
        Duration::from_secs(120),
    );
    assert_success(&out);
    let back = restored(&target, &src);
    for (name, want) in &links {
        let meta = std::fs::symlink_metadata(back.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name}");
        assert_eq!(&std::fs::read_link(back.join(name)).unwrap(), want);
    }
    let restored_entries: BTreeSet<String> = scan(&back).keys().map(|k| show(k)).collect();
    let mut want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    want.insert(String::new());
    assert_eq!(restored_entries, want);
}

#[test]
fn a_backup_path_that_is_a_symlink_is_stored_as_that_symlink_and_not_descended() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("real/inside.txt", random_bytes(700, 3))
        .symlink("alias", "real")
        .build();
    let alias = src.join("alias");
    let out = output_within(
        r.cmd(&backup_args("alias", &[&alias], &[])),
        Duration::from_secs(120),
    );
    assert_success(&out);
    let summary = json_of(&out);
    assert_eq!(n(&summary, "bytes_read"), 0, "{summary}");
    let listed = ls_all(&r, &snap_id(&summary));
    let e = &listed[p(&alias)];
    assert_eq!(e["kind"], "symlink", "{e}");
    assert_eq!(e["target"], "real", "{e}");
    assert!(
        !listed
            .keys()
            .any(|k| k.starts_with(&format!("{}/", p(&alias)))),
        "entries below the symlink: {listed:?}"
    );
    let target = dir.path().join("restore");
    restore_clean(&r, &snap_id(&summary), &target, &[]);
    let back = restored(&target, &alias);
    assert!(
        std::fs::symlink_metadata(&back)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&back).unwrap(), PathBuf::from("real"));
}

// ---------------------------------------------------------------------------
// Unreadable entries
// ---------------------------------------------------------------------------

/// The uid and gid of `nobody`, for tests that need an unprivileged user.
const NOBODY: u32 = 65534;

/// Gives `path` and everything below it (symlinks themselves) to nobody.
fn chown_tree_to_nobody(path: &Path) {
    std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree_to_nobody(&entry.unwrap().path());
        }
    }
}

/// Makes `cmd` run as nobody (no supplementary groups).
fn as_nobody(cmd: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn unreadable_files_and_directories_are_warnings_and_the_rest_is_backed_up() {
    if needs_root_but_is_not("switch to an unprivileged user to make chmod 000 unreadable") {
        return;
    }
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let readable = [
        "ok.txt",
        "sub/ok2.txt",
        "sub/deeper/ok3.txt",
        "locked-parent-sibling.txt",
    ];
    for (i, name) in readable.iter().enumerate() {
        write(&src.join(name), format!("readable {i}\n").as_bytes());
    }
    write(&src.join("secret.txt"), b"no one may read this\n");
    write(&src.join("sub/also-secret.txt"), b"nor this\n");
    write(&src.join("locked/hidden.txt"), b"behind a locked door\n");
    write(&src.join("sub/locked2/hidden2.txt"), b"behind another\n");
    chown_tree_to_nobody(dir.path());
    chown_tree_to_nobody(r.dir.path());
    let unreadable = ["secret.txt", "sub/also-secret.txt", "locked", "sub/locked2"];
    for name in unreadable {
        chmod(&src.join(name), 0o000);
    }

    let mut cmd = r.cmd(&backup_args("secrets", &[&src], &[]));
    as_nobody(&mut cmd);
    let out = output_within(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    let err = stderr(&out);
    for name in unreadable {
        let path = format!("{}/{name}", p(&src));
        assert!(
            warnings.iter().any(|w| w.contains(&path)),
            "no warning names {path}: {warnings:?}"
        );
        assert!(
            err.contains(&format!("larder: warning: {path}")),
            "no warning on stderr for {path}: {err}"
        );
    }
    let listed = ls_all(&r, &snap_id(&summary));
    for name in readable {
        let path = format!("{}/{name}", p(&src));
        assert_eq!(
            listed.get(&path).map(|e| &e["kind"]),
            Some(&Value::from("file")),
            "{path} missing: {listed:?}"
        );
    }
    for hidden in [
        "locked/hidden.txt",
        "sub/locked2/hidden2.txt",
        "secret.txt",
        "sub/also-secret.txt",
    ] {
        let path = format!("{}/{hidden}", p(&src));
        assert!(!listed.contains_key(&path), "{path} listed");
    }
    // What was read restores.
    let target = dir.path().join("restore");
    restore_clean(&r, &snap_id(&summary), &target, &[]);
    let back = restored(&target, &src);
    for (i, name) in readable.iter().enumerate() {
        assert_eq!(
            std::fs::read(back.join(name)).unwrap(),
            format!("readable {i}\n").as_bytes()
        );
    }
}

#[test]
fn files_that_could_not_be_read_are_not_counted_as_backed_up() {
    if needs_root_but_is_not("switch to an unprivileged user to make chmod 000 unreadable") {
        return;
    }
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("ok.txt", b"fine\n")
        .file("secret.txt", b"unreadable\n")
        .build();
    chown_tree_to_nobody(dir.path());
    chown_tree_to_nobody(r.dir.path());
    chmod(&src.join("secret.txt"), 0o000);
    let mut cmd = r.cmd(&backup_args("secrets", &[&src], &[]));
    as_nobody(&mut cmd);
    let out = output_within(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let files_listed = ls_all(&r, &snap_id(&summary))
        .values()
        .filter(|e| e["kind"] == "file")
        .count() as u64;
    assert_eq!(files_listed, 1);
    assert_eq!(
        n(&summary, "files_new"),
        files_listed,
        "files_new counts a file that is not in the snapshot: {summary}"
    );
}

// ---------------------------------------------------------------------------
// Special and shifting files
// ---------------------------------------------------------------------------

#[test]
fn a_fifo_is_skipped_with_a_warning_naming_it() {
    let r = CliRepo::init();
    let (_dir, src) = TreeBuilder::new()
        .file("before.txt", b"a\n")
        .file("zafter.txt", b"z\n")
        .build();
    let fifo = src.join("pipe");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A FIFO nobody writes to would block a reader forever: the bound
    // catches a backup that opens it.
    let out = output_within(
        r.cmd(&backup_args("fifo", &[&src], &[])),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(p(&fifo)), "{warnings:?}");
    assert!(
        stderr(&out).contains(&format!("larder: warning: {}", p(&fifo))),
        "{}",
        stderr(&out)
    );
    let listed = ls_all(&r, &snap_id(&summary));
    assert!(!listed.contains_key(p(&fifo)));
    assert!(listed.contains_key(p(&src.join("before.txt"))));
    assert!(listed.contains_key(p(&src.join("zafter.txt"))));
}

#[test]
fn a_file_whose_size_differs_from_what_is_read_is_flagged_as_changed() {
    let uptime = Path::new("/proc/uptime");
    assert_eq!(
        std::fs::metadata(uptime).unwrap().len(),
        0,
        "procfs reports size 0"
    );
    let r = CliRepo::init();
    let (code, summary, err) = backup(&r, "proc", &[uptime], &[]);
    assert_eq!(code, 3, "{err}");
    let warnings = warnings_of(&summary);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("/proc/uptime") && w.contains("changed while it was being read")),
        "{warnings:?}"
    );
    assert!(err.contains("larder: warning: /proc/uptime"), "{err}");
    // What was read is stored, and its size is the size read.
    let out = r.run(&["cat", &snap_id(&summary), "/proc/uptime"]);
    assert_success(&out);
    assert!(!out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(' ')
            .count()
            == 2,
        "{:?}",
        out.stdout
    );
    let listed = ls_all(&r, &snap_id(&summary));
    assert_eq!(
        listed["/proc/uptime"]["size"],
        out.stdout.len() as u64,
        "{listed:?}"
    );
}

// ---------------------------------------------------------------------------
// Files deleted during the walk
// ---------------------------------------------------------------------------

fn vanishing_content(i: usize) -> Vec<u8> {
    let mut data = format!("file {i}\n").into_bytes();
    data.extend_from_slice(&random_bytes(8 << 10, i as u64));
    data
}

#[test]
fn files_deleted_during_the_backup_are_warnings_never_errors() {
    const COUNT: usize = 4000;
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    for i in 0..COUNT {
        write(
            &src.join(format!("d{}/f{i:05}", i % 8)),
            &vanishing_content(i),
        );
    }
    let child = r
        .cmd(&backup_args("vanish", &[&src], &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Delete every other file, in walk order, while the backup runs.
    let deleter = {
        let src = src.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let mut deleted = BTreeSet::new();
            for d in 0..8 {
                for i in (0..COUNT).filter(|i| i % 8 == d && i % 2 == 0) {
                    std::fs::remove_file(src.join(format!("d{d}/f{i:05}"))).unwrap();
                    deleted.insert(i);
                    if i % 64 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            deleted
        })
    };
    let out = child.wait_with_output().unwrap();
    let deleted = deleter.join().unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "exit {code:?}: {}",
        stderr(&out)
    );
    let summary = json_of(&out);
    let warnings = warnings_of(&summary);
    let target = dir.path().join("restore");
    restore_clean(&r, &snap_id(&summary), &target, &[]);
    let back = restored(&target, &src);
    let got = files_rel(&back);
    for (rel, bytes) in &got {
        let i: usize = rel.rsplit('f').next().unwrap().parse().unwrap();
        assert_eq!(bytes, &vanishing_content(i), "{rel}");
    }
    for i in (0..COUNT).filter(|i| !deleted.contains(i)) {
        let rel = format!("d{}/f{i:05}", i % 8);
        assert!(got.contains_key(&rel), "{rel}, never deleted, is missing");
    }
    // Each warning names a file that was deleted, and says it vanished.
    for w in &warnings {
        assert!(
            deleted
                .iter()
                .any(|i| w.contains(&format!("/d{}/f{i:05}", i % 8))),
            "{w}"
        );
    }
    if code == Some(3) {
        assert!(!warnings.is_empty());
        for w in &warnings {
            assert!(w.contains("vanished"), "{w}");
        }
    } else {
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

/// Waits until process `pid` has `path` open; false if it exits first.
fn wait_until_open(pid: u32, path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // An exited child stays a zombie until it is waited for: its
        // descriptor table is gone then, and so is any chance to see it.
        let exited = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if exited {
            return false;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

#[test]
fn a_file_deleted_while_it_is_being_read_is_reported_as_vanished() {
    // A large sparse file: long enough to read that it is usually still
    // open when it is deleted. A backup that finished before it was seen
    // open proves nothing; it is tried again with a file twice as large.
    for attempt in 0..4 {
        if deleted_while_read(256 << (20 + attempt)) {
            return;
        }
    }
    panic!("every backup finished before the file was seen open");
}

/// Deletes a `size`-byte file while a backup reads it and checks the
/// outcome; false if the backup never had it open.
fn deleted_while_read(size: u64) -> bool {
    let r = CliRepo::init();
    let header = random_bytes(1 << 20, 3);
    let (_dir, src) = TreeBuilder::new()
        .file("stays.txt", b"still here\n")
        .file("big.bin", &header)
        .build();
    let big = src.join("big.bin");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(size)
        .unwrap();
    let child = r
        .cmd(&backup_args("vanish", &[&src], &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = wait_until_open(child.id(), &big, Duration::from_secs(60));
    if seen {
        std::fs::remove_file(&big).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    if !seen {
        assert_success(&out);
        return false;
    }
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "exit {code:?}: {}",
        stderr(&out)
    );
    let summary = json_of(&out);
    let id = snap_id(&summary);
    // Whatever the snapshot holds is right.
    let listed = ls_all(&r, &id);
    assert!(listed.contains_key(p(&src.join("stays.txt"))));
    if listed.contains_key(p(&big)) {
        let out = r.run(&["cat", &id, p(&big)]);
        assert_success(&out);
        assert_eq!(out.stdout.len() as u64, size);
        assert_eq!(&out.stdout[..1 << 20], &header[..]);
        assert!(out.stdout[1 << 20..].iter().all(|b| *b == 0));
    }
    let warnings = warnings_of(&summary);
    if code == Some(3) {
        assert!(
            warnings
                .iter()
                .all(|w| w.contains(p(&big)) && w.contains("vanished")),
            "{warnings:?}"
        );
    }
    true
}

// ---------------------------------------------------------------------------
// Excludes and file-system boundaries
// ---------------------------------------------------------------------------

#[test]
fn excludes_by_name_by_path_and_from_a_file_leave_out_matches_and_their_contents() {
    let r = CliRepo::init();
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    let kept = [
        "app/main.yaml",
        "app/cache-notes.txt",
        "app/sub/cache/keep.txt",
        "docs/readme.md",
        "docs/build.log.txt",
        "tmpfile",
    ];
    let dropped = [
        "scratch.tmp",
        "app/deep/more/other.tmp",
        "node_modules/pkg/index.js",
        "app/node_modules/pkg/index.js",
        "app/node_modules/.bin/tool",
        "app/cache/blob.bin",
        "app/cache/nested/deeper.bin",
        "docs/build.log",
        "docs/old/very.log",
        "secrets/key.pem",
        "secrets/inner/more.pem",
    ];
    for name in kept.iter().chain(&dropped) {
        write(&src.join(name), name.as_bytes());
    }
    let exclude_file = dir.path().join("excludes.txt");
    std::fs::write(
        &exclude_file,
        format!(
            "# logs are noise\n\n*.log\n   \n  # {0}/app is needed\n{0}/secrets/\n# *.yaml\n",
            p(&src)
        ),
    )
    .unwrap();
    let cache = format!("{}/app/cache", p(&src));
    let summary = backup_clean(
        &r,
        "ex",
        &[&src],
        &[
            "--exclude",
            "*.tmp",
            "--exclude",
            "node_modules",
            "--exclude",
            &cache,
            "--exclude-file",
            p(&exclude_file),
        ],
    );
    let listed = ls_all(&r, &snap_id(&summary));
    let files: BTreeSet<String> = listed
        .iter()
        .filter(|(_, e)| e["kind"] == "file")
        .map(|(k, _)| {
            k.strip_prefix(&format!("{}/", p(&src)))
                .unwrap()
                .to_string()
        })
        .collect();
    let want: BTreeSet<String> = kept.iter().map(|s| s.to_string()).collect();
    assert_eq!(files, want);
    // Excluded directories are not in the snapshot at all.
    for gone in ["node_modules", "app/node_modules", "app/cache", "secrets"] {
        let path = format!("{}/{gone}", p(&src));
        assert!(
            !listed
                .keys()
                .any(|k| k == &path || k.starts_with(&format!("{path}/"))),
            "{path} is in the snapshot"
        );
    }
    assert_eq!(n(&summary, "files_new"), kept.len() as u64, "{summary}");
    // Excluded files are not even read.
    let kept_bytes: usize = kept.iter().map(|k| k.len()).sum();
    assert_eq!(n(&summary, "bytes_read"), kept_bytes as u64, "{summary}");
}

#[test]
fn entries_after_an_excluded_directory_are_still_backed_up() {
    let r = CliRepo::init();
    let (_dir, src) = TreeBuilder::new()
        .file("a-before.txt", b"before\n")
        .file("b-excluded/inside.txt", b"excluded\n")
        .file("c-after.txt", b"after\n")
        .file("d-dir/e.txt", b"later\n")
        .build();
    let summary = backup_clean(&r, "ex", &[&src], &["--exclude", "b-excluded"]);
    let listed = ls_all(&r, &snap_id(&summary));
    let below: BTreeSet<&str> = listed
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{}/", p(&src))))
        .collect();
    assert_eq!(
        below,
        ["a-before.txt", "c-after.txt", "d-dir", "d-dir/e.txt"]
            .into_iter()
            .collect(),
        "{summary}"
    );
    assert_eq!(n(&summary, "bytes_read"), 19, "{summary}");
}

#[test]
fn excluded_directories_are_not_descended_into() {
    // An unreadable directory below an excluded one gives no warning: the
    // walk never goes there.
    if needs_root_but_is_not("switch to an unprivileged user to make a directory unreadable") {
        return;
    }
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new()
        .file("keep.txt", b"keep\n")
        .file("skip/locked/secret.txt", b"locked\n")
        .build();
    chown_tree_to_nobody(dir.path());
    chown_tree_to_nobody(r.dir.path());
    chmod(&src.join("skip/locked"), 0o000);
    let mut cmd = r.cmd(&backup_args("ex", &[&src], &["--exclude", "skip"]));
    as_nobody(&mut cmd);
    let out = output_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(warnings_of(&json_of(&out)).is_empty());
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_leaves_out_a_mounted_tmpfs_and_without_it_the_mount_is_included() {
    if needs_root_but_is_not("mount a tmpfs") {
        return;
    }
    let r = CliRepo::init();
    let (_dir, src) = TreeBuilder::new()
        .file("local.txt", b"on the root file system\n")
        .dir("mnt")
        .build();
    let mnt = src.join("mnt");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs", p(&mnt)])
        .status()
        .unwrap();
    assert!(status.success(), "mount failed");
    let _mounted = Mounted(mnt.clone());
    write(&mnt.join("on-tmpfs.txt"), b"on the tmpfs\n");
    write(&mnt.join("sub/deeper.txt"), b"also on the tmpfs\n");

    for flag in ["--one-file-system", "-x"] {
        let summary = backup_clean(&r, "fs", &[&src], &[flag]);
        let listed = ls_all(&r, &snap_id(&summary));
        assert!(listed.contains_key(p(&src.join("local.txt"))));
        assert!(
            !listed
                .keys()
                .any(|k| k.starts_with(&format!("{}/", p(&mnt)))),
            "{flag}: {listed:?}"
        );
        assert_eq!(n(&summary, "total_bytes"), 24, "{flag}: {summary}");
        // The mount point itself is kept, empty, as restic does.
        assert_eq!(listed[p(&mnt)]["kind"], "dir", "{flag}: {listed:?}");
    }
    let summary = backup_clean(&r, "fs", &[&src], &[]);
    let listed = ls_all(&r, &snap_id(&summary));
    for name in ["on-tmpfs.txt", "sub/deeper.txt"] {
        assert_eq!(listed[p(&mnt.join(name))]["kind"], "file", "{name}");
    }
}
