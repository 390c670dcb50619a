//! Trees at the edges: names that are not UTF-8, paths near and beyond
//! PATH_MAX, and a directory of 100,000 files all back up, list and restore.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use serde_json::Value;

use crate::support::*;

use super::{
    TreeBuilder, backup_args, backup_clean, json_of, ls_all, n, output_within, p, restore_clean,
    restored, snap_id, warnings_of,
};

// ---------------------------------------------------------------------------
// Names that are not UTF-8
// ---------------------------------------------------------------------------

#[test]
fn non_utf8_names_are_listed_lossily_and_restored_with_their_exact_bytes() {
    let r = CliRepo::init();
    let file_name = OsStr::from_bytes(b"caf\xe9.yaml");
    let dir_name = Path::new(OsStr::from_bytes(b"d\xff\xfeir"));
    let (dir, src) = TreeBuilder::new()
        .file(file_name, b"latin-1 name\n")
        .file(dir_name.join("inner.txt"), b"inside\n")
        .file(dir_name.join(OsStr::from_bytes(b"\x80\x81")), b"both odd\n")
        .build();
    let summary = backup_clean(&r, "odd", &[&src], &[]);
    let id = snap_id(&summary);

    let lossy_file = format!("{}/caf\u{fffd}.yaml", p(&src));
    let lossy_dir = format!("{}/d\u{fffd}\u{fffd}ir", p(&src));
    let listed = ls_all(&r, &id);
    assert_eq!(listed[&lossy_file]["kind"], "file", "{listed:?}");
    assert_eq!(listed[&lossy_file]["size"], 13);
    assert_eq!(listed[&lossy_dir]["kind"], "dir");
    assert_eq!(listed[&format!("{lossy_dir}/inner.txt")]["kind"], "file");
    assert_eq!(
        listed[&format!("{lossy_dir}/\u{fffd}\u{fffd}")]["kind"],
        "file"
    );
    let out = r.run(&["ls", &id, "-r"]);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).expect("ls prints UTF-8");
    assert!(text.lines().any(|l| l == lossy_file), "{text}");

    let target = dir.path().join("restore");
    restore_clean(&r, &id, &target, &[]);
    let back = restored(&target, &src);
    let names: BTreeSet<Vec<u8>> = std::fs::read_dir(&back)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(
        names,
        [b"caf\xe9.yaml".to_vec(), b"d\xff\xfeir".to_vec()]
            .into_iter()
            .collect()
    );
    assert_eq!(
        std::fs::read(back.join(file_name)).unwrap(),
        b"latin-1 name\n"
    );
    assert_eq!(
        std::fs::read(back.join(dir_name).join("inner.txt")).unwrap(),
        b"inside\n"
    );
    assert_eq!(
        std::fs::read(back.join(dir_name).join(OsStr::from_bytes(b"\x80\x81"))).unwrap(),
        b"both odd\n"
    );
}

// ---------------------------------------------------------------------------
// Long paths
// ---------------------------------------------------------------------------

fn open_dir_at(parent: &OwnedFd, name: &[u8]) -> Option<OwnedFd> {
    rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

fn open_dir(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// Makes the chain of directories `names` below `base`, descriptor by
/// descriptor (so its full path may exceed PATH_MAX); returns each level's
/// descriptor.
fn mkdir_chain(base: &Path, names: &[Vec<u8>]) -> Vec<OwnedFd> {
    let mut fds = vec![open_dir(base)];
    for name in names {
        let parent = fds.last().unwrap();
        rustix::fs::mkdirat(parent, OsStr::from_bytes(name), Mode::from_raw_mode(0o755)).unwrap();
        let fd = open_dir_at(parent, name).unwrap();
        fds.push(fd);
    }
    fds
}

fn write_at(dir: &OwnedFd, name: &str, data: &[u8]) {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    std::fs::File::from(fd).write_all(data).unwrap();
}

/// The content of `file` below the chain `names` from `base`, if it is there.
fn read_below(base: &Path, names: &[Vec<u8>], file: &str) -> Option<Vec<u8>> {
    let mut fd = open_dir(base);
    for name in names {
        fd = open_dir_at(&fd, name)?;
    }
    let file = rustix::fs::openat(
        &fd,
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut out = Vec::new();
    std::fs::File::from(file).read_to_end(&mut out).unwrap();
    Some(out)
}

/// Components of an absolute path, as bytes.
fn components(path: &Path) -> Vec<Vec<u8>> {
    path.iter().skip(1).map(|c| c.as_bytes().to_vec()).collect()
}

fn long_name(level: usize) -> Vec<u8> {
    let mut name = format!("level-{level:03}-").into_bytes();
    name.resize(200, b'a' + (level % 26) as u8);
    name
}

#[test]
fn a_path_of_about_four_thousand_bytes_backs_up_and_restores() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new().build();
    let base_len = p(&src).len();
    let mut names = Vec::new();
    while base_len + (names.len() + 1) * 201 + "/leaf.txt".len() <= 4000 {
        names.push(long_name(names.len()));
    }
    let fds = mkdir_chain(&src, &names);
    write_at(fds.last().unwrap(), "leaf.txt", b"at the bottom\n");
    write_at(&fds[names.len() / 2], "middle.txt", b"half way\n");
    let mut deep = src.clone();
    for name in &names {
        deep.push(OsStr::from_bytes(name));
    }
    let leaf = deep.join("leaf.txt");
    assert!(
        p(&leaf).len() > 3800 && p(&leaf).len() <= 4000,
        "{}",
        p(&leaf).len()
    );

    let summary = backup_clean(&r, "long", &[&src], &[]);
    assert_eq!(n(&summary, "files_new"), 2, "{summary}");
    let id = snap_id(&summary);
    assert!(ls_all(&r, &id).contains_key(p(&leaf)));
    let out = r.run(&["cat", &id, p(&leaf)]);
    assert_success(&out);
    assert_eq!(out.stdout, b"at the bottom\n");

    // The restored path is longer than PATH_MAX; read it descriptor by descriptor.
    let target = dir.path().join("restore");
    let summary = restore_clean(&r, &id, &target, &[]);
    assert_eq!(n(&summary, "files"), 2, "{summary}");
    let mut chain = components(&src);
    chain.extend(names.iter().cloned());
    assert_eq!(
        read_below(&target, &chain, "leaf.txt").as_deref(),
        Some(&b"at the bottom\n"[..])
    );
    let half = components(&src).len() + names.len() / 2;
    assert_eq!(
        read_below(&target, &chain[..half], "middle.txt").as_deref(),
        Some(&b"half way\n"[..])
    );
}

#[test]
fn a_tree_beyond_path_max_is_backed_up_and_restored_whole() {
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new().build();
    // 26 levels of 200-byte names: the deepest directories are ~5,300 bytes
    // from the root.
    let names: Vec<Vec<u8>> = (0..26).map(long_name).collect();
    let fds = mkdir_chain(&src, &names);
    // A file at every level; those deeper than PATH_MAX (which counts the
    // terminating NUL) cannot be opened by their absolute path. Files are
    // opened relative to their directory, so they are backed up all the
    // same (they used to be skipped with a warning).
    let mut files = Vec::new();
    let mut beyond = 0;
    let mut path = p(&src).as_bytes().to_vec();
    for (level, fd) in fds.iter().enumerate() {
        if level > 0 {
            path.push(b'/');
            path.extend_from_slice(&names[level - 1]);
        }
        let file = format!("file-{level:02}.txt");
        write_at(fd, &file, format!("level {level}\n").as_bytes());
        let full = format!("{}/{file}", String::from_utf8(path.clone()).unwrap());
        beyond += usize::from(full.len() >= 4096);
        files.push((level, full));
    }
    assert!(beyond >= 5, "{beyond} files beyond PATH_MAX");

    let out = output_within(
        r.cmd(&backup_args("too-long", &[&src], &[])),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary = json_of(&out);
    assert!(warnings_of(&summary).is_empty(), "{summary}");
    let listed = ls_all(&r, &snap_id(&summary));
    for (level, full) in &files {
        assert_eq!(
            listed.get(full).map(|e| e["kind"].clone()),
            Some(Value::from("file")),
            "level {level} missing"
        );
    }
    assert_eq!(n(&summary, "files_new") as usize, files.len(), "{summary}");

    // All of it restores, the deep part descriptor by descriptor.
    let target = dir.path().join("restore");
    let summary = restore_clean(&r, &snap_id(&summary), &target, &[]);
    assert_eq!(n(&summary, "files") as usize, files.len());
    let base = components(&src);
    for (level, _) in &files {
        let mut chain = base.clone();
        chain.extend(names[..*level].iter().cloned());
        assert_eq!(
            read_below(&target, &chain, &format!("file-{level:02}.txt")),
            Some(format!("level {level}\n").into_bytes()),
            "level {level}"
        );
    }
}

// ---------------------------------------------------------------------------
// Large directories
// ---------------------------------------------------------------------------

#[test]
fn a_directory_of_100000_files_backs_up_restores_and_rescans_unchanged() {
    const COUNT: usize = 100_000;
    let r = CliRepo::init();
    let (dir, src) = TreeBuilder::new().dir("big").build();
    let big = src.join("big");
    for i in 0..COUNT {
        std::fs::write(big.join(format!("f{i:06}")), format!("{i}\n")).unwrap();
    }
    let first = backup_clean(&r, "big", &[&src], &[]);
    assert_eq!(n(&first, "files_new"), COUNT as u64, "{first}");
    let second = backup_clean(&r, "big", &[&src], &[]);
    assert_eq!(n(&second, "files_unchanged"), COUNT as u64, "{second}");
    assert_eq!(n(&second, "bytes_read"), 0, "{second}");
    assert_eq!(n(&second, "files_new") + n(&second, "files_changed"), 0);

    let target = dir.path().join("restore");
    let summary = restore_clean(&r, &snap_id(&second), &target, &[]);
    assert_eq!(n(&summary, "files"), COUNT as u64, "{summary}");
    let back = restored(&target, &big);
    let mut count = 0;
    for entry in std::fs::read_dir(&back).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(
            std::fs::read(entry.path()).unwrap(),
            format!("{i}\n").as_bytes()
        );
        count += 1;
    }
    assert_eq!(count, COUNT);
}
