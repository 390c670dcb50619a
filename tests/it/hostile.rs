//! Storage that lies: oversized objects of every kind, forged leases, junk
//! and damaged key files. Each fails with a clear error, in bounded memory,
//! and hides nothing real.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::Repo;
use larder::backend::LocalBackend;
use larder::layout::pack_path;
use larder::pack::PackKind;

use crate::support::*;

/// Size of every planted oversized object: far beyond any bound, and sparse,
/// so planting it costs nothing and only reading it would.
const HUGE: u64 = 3 << 30;

/// Peak resident memory a command may reach while meeting a huge object.
const MAX_RSS_KIB: i64 = 200 * 1024;

/// How long a command that meets a huge object may take (it must never read it).
const QUICK: Duration = Duration::from_secs(30);

/// A finished command, with its peak resident memory and wall time.
struct Measured {
    out: Output,
    max_rss_kib: i64,
    elapsed: Duration,
}

impl Measured {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    fn stderr(&self) -> String {
        stderr(&self.out)
    }

    /// Stdout and stderr together, for messages either may carry.
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.out.stdout),
            stderr(&self.out)
        )
    }

    /// Asserts the command stayed in bounded memory and finished quickly.
    fn assert_bounded(&self, what: &str) {
        eprintln!(
            "{what}: peak RSS {} KiB, {:.2} s",
            self.max_rss_kib,
            self.elapsed.as_secs_f64()
        );
        assert!(
            self.max_rss_kib < MAX_RSS_KIB,
            "{what}: peak RSS {} KiB\n{}",
            self.max_rss_kib,
            self.stderr()
        );
        assert!(
            self.elapsed < QUICK,
            "{what}: took {:?}\n{}",
            self.elapsed,
            self.stderr()
        );
    }
}

/// Runs `cmd` to completion and measures the child's peak RSS exactly: the
/// child is reaped with `wait4`, whose resource usage is the child's own.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std's Child cannot do"
)]
fn measured(mut cmd: Command) -> Measured {
    const LIMIT: Duration = Duration::from_secs(120);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: `pid` is our unreaped child; the pointers are to live locals.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        if reaped == -1 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
            continue;
        }
        if !killed && started.elapsed() > LIMIT {
            // SAFETY: the child is not reaped yet, so its pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let out = Output {
        status: ExitStatus::from_raw(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !killed,
        "killed after {LIMIT:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Measured {
        out,
        max_rss_kib: usage.ru_maxrss,
        elapsed,
    }
}

/// `larder ARGS` on `r` with the cache directory `cache`, measured.
fn run_measured(r: &CliRepo, cache: &Path, args: &[&str]) -> Measured {
    let mut cmd = larder_cmd();
    cmd.arg("--repo")
        .arg(&r.repo)
        .arg("--cache-dir")
        .arg(cache)
        .env("LARDER_PASSWORD", PASSWORD)
        .args(args);
    measured(cmd)
}

/// A cache directory no command has used yet, as on another machine.
fn fresh_cache(r: &CliRepo, name: &str) -> PathBuf {
    r.dir.path().join(format!("cache-{name}"))
}

/// Replaces (or creates) `path` with a sparse file of [`HUGE`] bytes that
/// starts with a few junk bytes.
fn plant_huge(path: &Path) {
    let mut file = File::create(path).unwrap();
    file.write_all(&random_bytes(64, 99)).unwrap();
    file.set_len(HUGE).unwrap();
}

/// Grows an existing file sparsely to [`HUGE`] bytes, keeping its contents.
fn grow_huge(path: &Path) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(HUGE).unwrap();
}

/// An object's name in the repository (`snapshots/<id>`).
fn name_of(r: &CliRepo, path: &Path) -> String {
    path.strip_prefix(&r.repo)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// Total bytes of every pack.
fn pack_bytes(r: &CliRepo) -> u64 {
    files_under(&r.repo.join("packs"))
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum()
}

/// The files of the packs of `kind`, as the repository's own index says.
fn packs_of_kind(r: &CliRepo, kind: PackKind) -> Vec<PathBuf> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = tempfile::TempDir::new().unwrap();
        let repo = Repo::open(
            Arc::new(LocalBackend::new(&r.repo)),
            PASSWORD.as_bytes(),
            cache.path(),
        )
        .await
        .unwrap();
        let packs: Vec<PathBuf> = repo
            .pack_ids(kind)
            .unwrap()
            .iter()
            .map(|id| r.repo.join(pack_path(id)))
            .collect();
        assert!(!packs.is_empty(), "no {kind:?} pack");
        packs
    })
}

/// A repository holding one file-tree backup of a small directory (two
/// incompressible files and a text file in a subdirectory).
fn repo_with_tree() -> (CliRepo, PathBuf) {
    let r = CliRepo::init();
    let source = r.dir.path().join("tree");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("a.bin"), random_bytes(300 << 10, 1)).unwrap();
    std::fs::write(source.join("b.bin"), random_bytes(300 << 10, 2)).unwrap();
    std::fs::write(source.join("sub").join("c.txt"), dump_text(500, 3)).unwrap();
    assert_success(&r.run(&["backup", "--source", "files", source.to_str().unwrap()]));
    (r, source)
}

/// A repository with a snapshot to keep and the packs of a forgotten one,
/// which a prune deletes unless some lease makes it wait. Returns the kept
/// data.
fn repo_with_garbage() -> (CliRepo, Vec<u8>) {
    let r = CliRepo::init();
    let kept = random_bytes(1 << 20, 11);
    r.backup_stdin("kept", &kept);
    r.backup_stdin("gone", &random_bytes(3 << 20, 12));
    r.forget_source("gone");
    (r, kept)
}

/// Asserts that a prune deleted the forgotten snapshot's data and kept
/// what the remaining one needs.
fn assert_garbage_deleted(r: &CliRepo, before: u64, kept: &[u8]) {
    let after = pack_bytes(r);
    assert!(
        after + (2 << 20) < before,
        "the forgotten snapshot's packs are deleted: {before} -> {after} bytes"
    );
    let out = r.run_with_cache(&fresh_cache(r, "verify"), &["cat", "latest"]);
    assert_success(&out);
    assert!(out.stdout == kept, "the kept snapshot restores");
}

// ---------------------------------------------------------------------------
// Oversized objects: refused by size before any allocation.

#[test]
fn an_oversized_config_is_refused_by_name_in_bounded_memory() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    plant_huge(&r.repo.join("config"));
    let m = run_measured(&r, &fresh_cache(&r, "fresh"), &["snapshots"]);
    assert_eq!(m.code(), Some(1), "{}", m.stderr());
    assert!(m.stderr().contains("config"), "{}", m.stderr());
    assert!(m.stderr().contains(&HUGE.to_string()), "{}", m.stderr());
    m.assert_bounded("oversized config");
}

#[test]
fn an_oversized_key_file_neither_hides_the_real_key_nor_is_read() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    let real = r.objects("keys");
    assert_eq!(real.len(), 1);
    let huge = r.repo.join("keys").join("0".repeat(64));
    plant_huge(&huge);

    // A fresh cache has no last-used key to go to first: every key file is
    // listed, and the huge one sorts first.
    let m = run_measured(&r, &fresh_cache(&r, "one"), &["snapshots"]);
    assert_eq!(m.code(), Some(0), "{}", m.stderr());
    m.assert_bounded("oversized key file beside the real one");

    // Alone, it is named as damaged, not taken for a wrong passphrase.
    std::fs::remove_file(&real[0]).unwrap();
    let m = run_measured(&r, &fresh_cache(&r, "two"), &["snapshots"]);
    assert_eq!(m.code(), Some(1), "{}", m.stderr());
    assert!(m.stderr().contains(&name_of(&r, &huge)), "{}", m.stderr());
    assert!(m.stderr().contains(&HUGE.to_string()), "{}", m.stderr());
    assert!(!m.stderr().contains("wrong passphrase"), "{}", m.stderr());
    m.assert_bounded("oversized key file alone");
}

#[test]
fn an_oversized_snapshot_is_skipped_with_a_warning_and_stops_prune() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(2000, 1));
    r.backup_stdin("other", &dump_text(2000, 2));
    let snapshots = r.objects("snapshots");
    assert_eq!(snapshots.len(), 2);
    plant_huge(&snapshots[0]);
    let name = name_of(&r, &snapshots[0]);

    let m = run_measured(&r, &fresh_cache(&r, "list"), &["snapshots"]);
    assert_eq!(m.code(), Some(3), "{}", m.stderr());
    assert!(m.stderr().contains(&name), "{}", m.stderr());
    assert!(
        String::from_utf8_lossy(&m.out.stdout).contains("1 snapshot\n"),
        "the readable snapshot is listed"
    );
    m.assert_bounded("oversized snapshot, listing");

    let packs = r.objects("packs");
    let m = run_measured(&r, &fresh_cache(&r, "prune"), &["prune"]);
    assert_eq!(m.code(), Some(1), "{}", m.stderr());
    assert!(m.stderr().contains(&name), "{}", m.stderr());
    assert_eq!(r.objects("packs"), packs, "prune deleted nothing");
    m.assert_bounded("oversized snapshot, prune");
}

#[test]
fn an_oversized_index_object_is_skipped_with_a_warning_and_stops_prune() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(2000, 1));
    r.backup_stdin("other", &dump_text(2000, 2));
    let indexes = r.objects("index");
    assert!(!indexes.is_empty());
    plant_huge(&indexes[0]);
    let name = name_of(&r, &indexes[0]);

    let m = run_measured(&r, &fresh_cache(&r, "list"), &["snapshots"]);
    assert_eq!(m.code(), Some(3), "{}", m.stderr());
    assert!(m.stderr().contains(&name), "{}", m.stderr());
    m.assert_bounded("oversized index object, listing");

    let packs = r.objects("packs");
    let m = run_measured(&r, &fresh_cache(&r, "prune"), &["prune"]);
    assert_eq!(m.code(), Some(1), "{}", m.stderr());
    assert!(m.stderr().contains(&name), "{}", m.stderr());
    assert_eq!(r.objects("packs"), packs, "prune deleted nothing");
    m.assert_bounded("oversized index object, prune");
}

#[test]
fn an_oversized_pending_generation_is_reported_and_ignored() {
    let r = CliRepo::init();
    let data = dump_text(2000, 1);
    r.backup_stdin("db", &data);
    let pending = r.repo.join("pending").join("ab".repeat(32));
    plant_huge(&pending);
    let name = name_of(&r, &pending);

    let m = run_measured(&r, &fresh_cache(&r, "list"), &["snapshots"]);
    assert_eq!(m.code(), Some(3), "{}", m.stderr());
    assert!(m.stderr().contains(&name), "{}", m.stderr());
    assert!(String::from_utf8_lossy(&m.out.stdout).contains("1 snapshot\n"));
    m.assert_bounded("oversized pending generation, listing");

    let m = run_measured(&r, &fresh_cache(&r, "cat"), &["cat", "latest"]);
    assert!(matches!(m.code(), Some(0 | 3)), "{}", m.stderr());
    assert!(m.out.stdout == data, "the snapshot still restores");
    m.assert_bounded("oversized pending generation, cat");

    // An unreadable generation protects and deletes nothing: prune goes on.
    let m = run_measured(&r, &fresh_cache(&r, "prune"), &["prune"]);
    assert_eq!(m.code(), Some(3), "{}", m.stderr());
    assert!(m.stderr().contains(&name), "{}", m.stderr());
    m.assert_bounded("oversized pending generation, prune");
}

#[test]
fn an_oversized_lease_object_is_ignored_by_prune_in_bounded_memory() {
    let (r, kept) = repo_with_garbage();
    let lease = r
        .repo
        .join("locks")
        .join(format!("{}.backup.600.0", "c".repeat(32)));
    plant_huge(&lease);
    let name = name_of(&r, &lease);
    let before = pack_bytes(&r);

    let m = run_measured(
        &r,
        &fresh_cache(&r, "prune"),
        &["prune", "--max-wait", "20"],
    );
    assert!(matches!(m.code(), Some(0 | 3)), "{}", m.stderr());
    if m.code() == Some(3) {
        assert!(m.stderr().contains(&name), "{}", m.stderr());
    }
    assert!(
        m.elapsed < Duration::from_secs(10),
        "prune waited: {:?}",
        m.elapsed
    );
    m.assert_bounded("oversized lease object, prune");
    // Not honoured as a backup that began before the deletion was decided:
    // the forgotten snapshot's packs are deleted now.
    assert_garbage_deleted(&r, before, &kept);
}

#[test]
fn a_tree_pack_grown_huge_fails_restore_clearly_in_bounded_memory() {
    let (r, _) = repo_with_tree();
    let tree_packs = packs_of_kind(&r, PackKind::Tree);
    for pack in &tree_packs {
        grow_huge(pack);
    }
    let target = r.dir.path().join("restored");
    let m = run_measured(
        &r,
        &fresh_cache(&r, "restore"),
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert!(matches!(m.code(), Some(1 | 3)), "{}", m.stderr());
    assert!(
        tree_packs
            .iter()
            .any(|p| m.stderr().contains(&name_of(&r, p))),
        "names the pack: {}",
        m.stderr()
    );
    m.assert_bounded("tree pack grown huge, restore");
}

#[test]
fn a_pack_header_length_claiming_gigabytes_is_refused_by_catalog_rebuild() {
    let (r, _) = repo_with_tree();
    let data_packs = packs_of_kind(&r, PackKind::Data);
    let pack = &data_packs[0];
    // A length field that fits the (sparsely grown) pack, so only the bound
    // on header sizes can refuse it.
    let file = std::fs::OpenOptions::new().write(true).open(pack).unwrap();
    file.set_len(HUGE + 4).unwrap();
    file.write_all_at(&0xC000_0000u32.to_le_bytes(), HUGE)
        .unwrap();
    drop(file);
    for index in r.objects("index") {
        std::fs::remove_file(index).unwrap();
    }

    let m = run_measured(&r, &fresh_cache(&r, "rebuild"), &["catalog", "rebuild"]);
    assert_eq!(m.code(), Some(3), "{}", m.stderr());
    assert!(m.stderr().contains(&name_of(&r, pack)), "{}", m.stderr());
    assert!(
        m.stderr().contains(&0xC000_0000u32.to_string()),
        "{}",
        m.stderr()
    );
    m.assert_bounded("pack header length of 3 GiB, catalog rebuild");
}

#[test]
fn check_read_data_names_a_data_pack_grown_huge_in_bounded_memory() {
    let (r, _) = repo_with_tree();
    let data_packs = packs_of_kind(&r, PackKind::Data);
    let pack = &data_packs[0];
    grow_huge(pack);
    let m = run_measured(&r, &fresh_cache(&r, "check"), &["check", "--read-data"]);
    assert_eq!(m.code(), Some(1), "{}", m.text());
    assert!(m.text().contains(&name_of(&r, pack)), "{}", m.text());
    m.assert_bounded("data pack grown huge, check --read-data");
}

// ---------------------------------------------------------------------------
// Forged leases: never waited for, always reported.

/// Plants a lease whose lifetime is too long to be a lease name, and a
/// prune lease that does not open with the repository key. Returns the
/// name of each.
fn plant_forged_leases(r: &CliRepo) -> (String, String) {
    let locks = r.repo.join("locks");
    let forever = locks.join(format!("{}.backup.99999999999.0", "a".repeat(32)));
    std::fs::write(&forever, b"anything").unwrap();
    let prune = locks.join(format!("{}.prune.600.0", "0".repeat(32)));
    std::fs::write(&prune, random_bytes(200, 5)).unwrap();
    (name_of(r, &forever), name_of(r, &prune))
}

fn assert_forged_leases_reported(m: &Measured, forever: &str, prune: &str) {
    let stderr = m.stderr();
    assert!(
        m.elapsed < Duration::from_secs(10),
        "prune waited {:?}: {stderr}",
        m.elapsed
    );
    assert_eq!(m.code(), Some(3), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ignored") && l.contains(prune)),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ignored") && l.contains(forever)),
        "{stderr}"
    );
}

#[test]
fn prune_neither_waits_for_nor_honours_forged_leases_and_reports_them() {
    let (r, kept) = repo_with_garbage();
    let (forever, prune) = plant_forged_leases(&r);
    let before = pack_bytes(&r);
    let m = run_measured(&r, &r.cache, &["prune", "--max-wait", "20"]);
    assert_forged_leases_reported(&m, &forever, &prune);
    assert_garbage_deleted(&r, before, &kept);
}

#[test]
fn prune_with_nothing_to_delete_still_reports_forged_leases() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    let (forever, prune) = plant_forged_leases(&r);
    // Nothing is garbage, and no pack is repacked, so no generation is
    // recorded or swept: the forged objects are still reported.
    let packs = r.objects("packs");
    let m = run_measured(
        &r,
        &r.cache,
        &["prune", "--max-wait", "20", "--max-unused", "100"],
    );
    assert_eq!(r.objects("packs"), packs, "nothing to delete");
    assert_forged_leases_reported(&m, &forever, &prune);
}

// ---------------------------------------------------------------------------
// Key files: junk cannot hide the real key; damage is told from a wrong
// passphrase.

/// The fields of a key file (a CBOR map of small integers to byte strings).
fn key_fields(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut d = minicbor::Decoder::new(bytes);
    let n = d.map().unwrap().unwrap();
    (0..n)
        .map(|_| (d.u8().unwrap(), d.bytes().unwrap().to_vec()))
        .collect()
}

fn encode_key_fields(fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = minicbor::Encoder::new(&mut out);
    e.map(fields.len() as u64).unwrap();
    for (k, v) in fields {
        e.u8(*k).unwrap().bytes(v).unwrap();
    }
    out
}

/// The name of the `i`th junk key file: 64 hex digits sorting before any
/// real key id (`00…00`, `00…01`, …).
fn junk_key_name(i: usize) -> String {
    format!("{i:064x}")
}

#[test]
fn junk_key_files_sorting_first_do_not_hide_the_real_key() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    let keys = r.repo.join("keys");
    for i in 0..20 {
        std::fs::write(
            keys.join(junk_key_name(i)),
            random_bytes(100 + i * 7, i as u64),
        )
        .unwrap();
    }
    let m = run_measured(&r, &fresh_cache(&r, "fresh"), &["snapshots"]);
    assert_eq!(m.code(), Some(0), "{}", m.stderr());
    assert!(String::from_utf8_lossy(&m.out.stdout).contains("1 snapshot\n"));
    m.assert_bounded("20 junk key files");
}

#[test]
fn plausible_key_files_that_do_not_open_do_not_hide_the_real_key() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    let keys = r.repo.join("keys");
    let real = r.objects("keys");
    assert_eq!(real.len(), 1);
    let real_bytes = std::fs::read(&real[0]).unwrap();

    // A second, genuine key of this repository under another passphrase.
    let out = r
        .cmd(&["key", "add", "--kdf-memory", "1", "--kdf-passes", "1"])
        .env("LARDER_NEW_PASSWORD", "another passphrase entirely")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out);
    let added: Vec<PathBuf> = r
        .objects("keys")
        .into_iter()
        .filter(|p| *p != real[0])
        .collect();
    assert_eq!(added.len(), 1);
    let added_bytes = std::fs::read(&added[0]).unwrap();

    // The key file of another repository (same passphrase).
    let other = CliRepo::init();
    let other_bytes = std::fs::read(&other.objects("keys")[0]).unwrap();

    // This repository's key header with a random nonce and wrapped key (no
    // checksum, as in key files that predate it).
    let header = key_fields(&real_bytes)
        .into_iter()
        .find(|(k, _)| *k == 0)
        .unwrap()
        .1;

    let mut plausible: Vec<Vec<u8>> = Vec::new();
    // Copies under other names: the name is bound into the wrapping, so
    // even the real passphrase does not open them.
    plausible.extend(std::iter::repeat_n(real_bytes.clone(), 5));
    plausible.extend(std::iter::repeat_n(added_bytes, 5));
    plausible.extend(std::iter::repeat_n(other_bytes, 5));
    for i in 0..5 {
        plausible.push(encode_key_fields(&[
            (0, header.clone()),
            (1, random_bytes(24, 100 + i)),
            (2, random_bytes(48, 200 + i)),
        ]));
    }
    assert_eq!(plausible.len(), 20);
    for (i, bytes) in plausible.iter().enumerate() {
        std::fs::write(keys.join(junk_key_name(i)), bytes).unwrap();
    }

    let m = run_measured(&r, &fresh_cache(&r, "fresh"), &["snapshots"]);
    assert_eq!(m.code(), Some(0), "{}", m.stderr());
    assert!(String::from_utf8_lossy(&m.out.stdout).contains("1 snapshot\n"));
    m.assert_bounded("20 plausible key files");
}

#[test]
fn a_damaged_only_key_file_is_named_and_not_taken_for_a_wrong_passphrase() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    let key = r.objects("keys").remove(0);
    let mut bytes = std::fs::read(&key).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&key, bytes).unwrap();

    let out = r.run_with_cache(&fresh_cache(&r, "fresh"), &["snapshots"]);
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&name_of(&r, &key)), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(!stderr.contains("wrong passphrase"), "{stderr}");
}

#[test]
fn a_wrong_passphrase_on_an_intact_key_is_called_so() {
    let r = CliRepo::init();
    r.backup_stdin("db", &dump_text(1000, 1));
    let out = larder_cmd()
        .arg("--repo")
        .arg(&r.repo)
        .arg("--cache-dir")
        .arg(fresh_cache(&r, "fresh"))
        .env("LARDER_PASSWORD", "not the passphrase")
        .arg("snapshots")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert!(!stderr.contains("damaged"), "{stderr}");
}
