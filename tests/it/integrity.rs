//! Damaged, missing or hostile objects fail closed: a clear error that names
//! the object, never wrong bytes, and nothing written on a failed open.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// The largest pack file of a repository (the data pack, in these tests).
fn largest_pack(repo: &Path) -> PathBuf {
    files_under(&repo.join("packs"))
        .into_iter()
        .max_by_key(|(_, bytes)| bytes.len())
        .expect("a pack")
        .0
}

fn pack_name(repo: &Path, pack: &Path) -> String {
    pack.strip_prefix(repo)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A repository with one snapshot of `data`; returns it, the data, and the
/// snapshot's short id.
fn repo_with_backup() -> (CliRepo, Vec<u8>, String) {
    let r = CliRepo::init();
    let data = random_bytes(3 << 20, 42);
    let summary = r.backup_stdin("db", &data);
    let id = summary["snapshot_id"].as_str().unwrap()[..8].to_string();
    (r, data, id)
}

#[test]
fn a_wrong_passphrase_is_refused_and_nothing_is_written() {
    let (r, data, _) = repo_with_backup();
    let repo_before = r.files();
    let cache_before = files_under(&r.cache);
    for args in [
        &["snapshots"][..],
        &["backup", "--source", "db", "--stdin"],
        &["check"],
        &["key", "list"],
    ] {
        let out = r
            .cmd(args)
            .env("LARDER_PASSWORD", "not the passphrase")
            .stdin(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("wrong passphrase"), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    assert!(r.files() == repo_before, "the repository changed");
    assert!(files_under(&r.cache) == cache_before, "the cache changed");
    // The right passphrase still works.
    assert_success(&r.run(&["cat", "latest"]));
    let _ = data;
}

#[test]
fn a_flipped_byte_in_a_pack_is_named_by_check_and_cat_fails_loudly() {
    let (r, data, id) = repo_with_backup();
    let pack = largest_pack(&r.repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();

    let out = r.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&pack_name(&r.repo, &pack)),
        "check must name the pack: {err}"
    );
    assert!(
        err.contains(&format!("snapshot {id}")),
        "check must name the snapshot: {err}"
    );

    let out = r.run(&["cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(
        out.stdout.len() < data.len() && data.starts_with(&out.stdout),
        "cat wrote bytes that are not the original's"
    );
}

#[test]
fn a_truncated_pack_is_named_by_check_and_cat_fails_loudly() {
    let (r, data, id) = repo_with_backup();
    let pack = largest_pack(&r.repo);
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() / 3]).unwrap();

    let out = r.run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a size mismatch shows without reading data"
    );
    assert!(
        stderr(&out).contains(&pack_name(&r.repo, &pack)),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("snapshot {id}")),
        "{}",
        stderr(&out)
    );

    let out = r.run(&["cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(data.starts_with(&out.stdout) && out.stdout.len() < data.len());
}

#[test]
fn a_missing_pack_is_named_with_the_snapshots_it_breaks() {
    let (r, _, id) = repo_with_backup();
    let pack = largest_pack(&r.repo);
    std::fs::remove_file(&pack).unwrap();

    let out = r.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&pack_name(&r.repo, &pack)) && err.contains("missing"),
        "{err}"
    );
    assert!(err.contains(&format!("snapshot {id}")), "{err}");

    let out = r.run(&["--json", "check"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["affected_snapshots"][0]["id"].as_str().unwrap()[..8],
        id
    );

    let out = r.run(&["cat", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
}

#[test]
fn a_backup_after_damage_stores_the_lost_content_again_and_heals_old_snapshots() {
    let (r, data, id) = repo_with_backup();
    let pack = largest_pack(&r.repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    assert_eq!(r.run(&["check", "--read-data"]).status.code(), Some(1));

    let again = r.backup_stdin("db", &data);
    assert!(
        again["blobs_new"].as_u64().unwrap() >= 2,
        "the damaged blob is stored again: {again}"
    );
    let out = r.run(&["cat", &id]);
    assert_success(&out);
    assert!(
        out.stdout == data,
        "the old snapshot reads its content from the new copy"
    );
}

fn hostile_key_file(repo: &Path) -> Vec<u8> {
    let envelope =
        larder::config::ConfigEnvelope::parse(&std::fs::read(repo.join("config")).unwrap())
            .unwrap();
    let header = larder::key::KeyFileHeader {
        version: larder::key::KEY_FILE_VERSION,
        repo_id: envelope.repo_id,
        kdf: larder::key::KdfParams {
            memory_kib: u32::MAX,
            passes: 1_000_000,
            lanes: 1,
        },
        salt: vec![1; 32],
        created_ns: 0,
        host: "attacker".into(),
        user: "attacker".into(),
    };
    let mut out = Vec::new();
    let mut e = minicbor::Encoder::new(&mut out);
    e.map(3).unwrap();
    e.u8(0)
        .unwrap()
        .bytes(&minicbor::to_vec(&header).unwrap())
        .unwrap();
    e.u8(1).unwrap().bytes(&[0; 24]).unwrap();
    e.u8(2).unwrap().bytes(&[0; 48]).unwrap();
    out
}

#[test]
fn a_hostile_key_file_cannot_exhaust_memory_or_time() {
    let (r, _, _) = repo_with_backup();
    let hostile = hostile_key_file(&r.repo);
    std::fs::write(r.repo.join("keys").join("f".repeat(64)), &hostile).unwrap();

    // Alongside a good key it is skipped.
    assert_success(&r.run(&["snapshots"]));

    // Alone, it is refused quickly with a clear reason.
    for (path, _) in files_under(&r.repo.join("keys")) {
        if !path.ends_with("f".repeat(64)) {
            std::fs::remove_file(path).unwrap();
        }
    }
    std::fs::remove_dir_all(&r.cache).unwrap();
    let started = Instant::now();
    let out = r.run(&["snapshots"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("out-of-bounds KDF parameters"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_path_that_is_not_a_repository_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").unwrap();
    let other = dir.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.jpg"), b"jpeg").unwrap();
    for path in [
        dir.path().join("absent"),
        file,
        other.clone(),
        dir.path().to_path_buf(),
    ] {
        let out = larder_cmd()
            .args([
                "--repo",
                path.to_str().unwrap(),
                "--cache-dir",
                dir.path().join("c").to_str().unwrap(),
                "snapshots",
            ])
            .env("LARDER_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("is not a larder repository"),
            "{path:?}: {}",
            stderr(&out)
        );
    }
    // init refuses a directory that already holds files.
    let out = larder_cmd()
        .args([
            "--repo",
            other.to_str().unwrap(),
            "init",
            "--kdf-memory",
            "1",
            "--kdf-passes",
            "1",
        ])
        .env("LARDER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing to initialise"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(other.join("a.jpg")).unwrap() == b"jpeg");
}

#[test]
fn a_repository_from_a_newer_format_is_refused_with_advice() {
    let (r, _, _) = repo_with_backup();
    let config_path = r.repo.join("config");
    let mut envelope =
        larder::config::ConfigEnvelope::parse(&std::fs::read(&config_path).unwrap()).unwrap();
    envelope.version += 1;
    std::fs::write(&config_path, minicbor::to_vec(&envelope).unwrap()).unwrap();
    let out = r.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("upgrade larder"), "{}", stderr(&out));
}

#[test]
fn a_lost_or_damaged_catalog_is_rebuilt_from_the_repository() {
    let (r, data, id) = repo_with_backup();
    // Deleted: the next command absorbs everything again.
    std::fs::remove_dir_all(&r.cache).unwrap();
    let out = r.run(&["cat", &id]);
    assert_success(&out);
    assert!(out.stdout == data);
    // Garbage in the database file: set aside with a warning, then rebuilt.
    let catalog = files_under(&r.cache)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| p.file_name().unwrap() == "catalog.sqlite")
        .unwrap();
    std::fs::write(&catalog, vec![0x42; 8192]).unwrap();
    let out = r.run(&["cat", &id]);
    assert_success(&out);
    assert!(out.stdout == data);
    assert!(
        stderr(&out).contains("rebuilt from the repository"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn catalog_rebuild_recovers_lost_index_objects_from_pack_headers() {
    let (r, data, id) = repo_with_backup();
    std::fs::remove_dir_all(r.repo.join("index")).unwrap();
    std::fs::create_dir(r.repo.join("index")).unwrap();
    let out = r.run(&["--json", "catalog", "rebuild"]);
    assert_success(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["packs_from_headers"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert_eq!(summary["repair_indexes"].as_array().unwrap().len(), 1);
    let out = r.run(&["cat", &id]);
    assert_success(&out);
    assert!(out.stdout == data);
    assert_success(&r.run(&["check", "--read-data"]));
}

#[test]
fn a_snapshot_stored_under_another_name_does_not_open() {
    let (r, _, _) = repo_with_backup();
    let snapshots = files_under(&r.repo.join("snapshots"));
    let (path, bytes) = &snapshots[0];
    // Same bytes, new name: the name is bound into the sealed object.
    std::fs::write(path.with_file_name("0".repeat(64)), bytes).unwrap();
    std::fs::remove_dir_all(&r.cache).unwrap();
    let out = r.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    let out = r.run(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only the genuine snapshot is listed"
    );
}
