//! File trees as a backup source: paths, excludes, and what larder records
//! about each entry.
//!
//! The walk itself (sorted by name, contents before their directory,
//! symlinks never followed, optionally one file system) is in
//! `ops/backup/tree/walk.rs`; see
//! `ops/backup/tree.rs` for how entries become tree blobs. This module holds
//! the parts that are plain functions of the file system: turning command
//! line paths into absolute ones, exclude patterns, and reading an entry's
//! metadata into a [`Node`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use minicbor::bytes::ByteVec;

use crate::error::{Error, Result};
use crate::snapshot::{Node, NodeKind};

/// Makes `path` absolute (against the current directory) and removes `.`
/// and `..` components lexically, as restic does; symlinks are not resolved.
pub fn absolute_path(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("reading", "the current directory", e))?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Ok(out)
}

/// Checks a set of backup paths: absolute, none inside another, no
/// duplicates (duplicates are dropped). Returns them sorted.
pub fn check_paths(paths: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::InvalidArgument("no paths to back up".into()));
    }
    let mut paths = paths;
    paths.sort();
    paths.dedup();
    for pair in paths.windows(2) {
        if pair[1].starts_with(&pair[0]) {
            return Err(Error::InvalidArgument(format!(
                "{} is inside {}; give each tree once",
                pair[1].display(),
                pair[0].display()
            )));
        }
    }
    if paths.iter().any(|p| p == Path::new("/")) && paths.len() > 1 {
        return Err(Error::InvalidArgument(
            "/ contains every other path; give it alone".into(),
        ));
    }
    Ok(paths)
}

/// Exclude patterns, restic style: a pattern without `/` matches a name at
/// any depth (`*.tmp`, `node_modules`); a pattern with `/` matches the whole
/// absolute path (`/opt/data/cache`, `/home/*/.cache`). An excluded
/// directory is not descended into.
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    patterns: Vec<String>,
}

impl Excludes {
    /// Compiles `patterns` (blank lines and `#` comments ignored).
    pub fn new(patterns: &[String]) -> Result<Excludes> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for pattern in patterns {
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.starts_with('#') {
                continue;
            }
            let glob = |p: &str| {
                GlobBuilder::new(p)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("exclude pattern {p:?}: {e}")))
            };
            if pattern.contains('/') {
                let pattern = pattern.trim_end_matches('/');
                paths.add(glob(&anchored(pattern))?);
            } else {
                names.add(glob(pattern)?);
            }
            kept.push(pattern.to_string());
        }
        Ok(Excludes {
            names: names
                .build()
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            paths: paths
                .build()
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            patterns: kept,
        })
    }

    /// Reads patterns from `file`, one per line.
    pub fn read_file(file: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::io("reading exclude file", file, e))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// True if `path` (absolute) is excluded.
    pub(crate) fn is_excluded(&self, path: &Path) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        path.file_name()
            .is_some_and(|name| self.names.is_match(name))
            || self.paths.is_match(path)
    }

    /// The patterns in effect.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// A path pattern as matched against absolute paths: one with a `/` that
/// does not start with `/` (or `**`) matches at any depth, as if it began
/// with `**/` (restic's rule: `*/knowledge/*` finds
/// `/opt/data/knowledge/a.yaml`).
pub fn anchored(pattern: &str) -> std::borrow::Cow<'_, str> {
    if pattern.contains('/') && !pattern.starts_with('/') && !pattern.starts_with("**") {
        format!("**/{pattern}").into()
    } else {
        pattern.into()
    }
}

/// A glob over snapshot paths, for `find` and `restore --include`: with a
/// `/` it matches the whole path (a relative one at any depth, see
/// [`anchored`]), without one the last component.
#[derive(Clone, Debug)]
pub(crate) struct PathGlob {
    matcher: globset::GlobMatcher,
    whole_path: bool,
}

impl PathGlob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<PathGlob> {
        let whole_path = pattern.contains('/');
        let glob: Glob = GlobBuilder::new(&anchored(pattern))
            .literal_separator(whole_path)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("pattern {pattern:?}: {e}")))?;
        Ok(PathGlob {
            matcher: glob.compile_matcher(),
            whole_path,
        })
    }

    /// True if the snapshot path (absolute, such as `/opt/data/a.yaml`) matches.
    pub(crate) fn is_match(&self, path: &[u8]) -> bool {
        let path = Path::new(OsStr::from_bytes(path));
        if self.whole_path {
            self.matcher.is_match(path)
        } else {
            path.file_name()
                .is_some_and(|name| self.matcher.is_match(name))
        }
    }
}

/// Owner and group names, resolved once per id.
#[derive(Default, Debug)]
pub struct Names {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
}

impl Names {
    /// The user name of `uid`, if it resolves.
    pub fn user(&self, uid: u32) -> Option<String> {
        resolved(&self.users, uid, crate::host::user_name, Option::clone)
    }

    /// The group name of `gid`, if it resolves.
    pub fn group(&self, gid: u32) -> Option<String> {
        resolved(&self.groups, gid, crate::host::group_name, Option::clone)
    }

    /// True if [`Names::user`] of `uid` is `name` (nothing copied).
    fn user_is(&self, uid: u32, name: Option<&str>) -> bool {
        resolved(&self.users, uid, crate::host::user_name, |n| {
            n.as_deref() == name
        })
    }

    /// True if [`Names::group`] of `gid` is `name` (nothing copied).
    fn group_is(&self, gid: u32, name: Option<&str>) -> bool {
        resolved(&self.groups, gid, crate::host::group_name, |n| {
            n.as_deref() == name
        })
    }
}

/// `f` of the name of `id` in `names`, resolved with `lookup` the first
/// time `id` is asked for.
fn resolved<T>(
    names: &Mutex<HashMap<u32, Option<String>>>,
    id: u32,
    lookup: fn(u32) -> Option<String>,
    f: impl FnOnce(&Option<String>) -> T,
) -> T {
    f(names
        .lock()
        .expect("names lock")
        .entry(id)
        .or_insert_with(|| lookup(id)))
}

/// What larder records of an entry's `lstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryStat {
    /// `st_mode`, file type bits included.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device id.
    pub dev: u64,
    /// Link count.
    pub nlink: u64,
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

impl From<&std::fs::Metadata> for EntryStat {
    fn from(meta: &std::fs::Metadata) -> EntryStat {
        EntryStat {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            nlink: meta.nlink(),
        }
    }
}

impl From<&rustix::fs::Stat> for EntryStat {
    fn from(st: &rustix::fs::Stat) -> EntryStat {
        EntryStat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime_ns: nanos(st.st_mtime, st.st_mtime_nsec as i64),
            ctime_ns: nanos(st.st_ctime, st.st_ctime_nsec as i64),
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
        }
    }
}

impl EntryStat {
    /// `lstat` of `name` in the directory open as `dir`: no path walk from
    /// the root for every entry (a quarter of a re-scan's time otherwise).
    pub fn at(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> std::io::Result<EntryStat> {
        rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| EntryStat::from(&st))
            .map_err(std::io::Error::from)
    }

    /// `lstat` by path.
    pub(crate) fn of_path(path: &Path) -> std::io::Result<EntryStat> {
        std::fs::symlink_metadata(path).map(|m| EntryStat::from(&m))
    }
}

/// What kind of entry the metadata describes, for the entries larder keeps.
pub(crate) fn node_kind(stat: &EntryStat) -> Option<NodeKind> {
    match stat.mode & libc::S_IFMT {
        libc::S_IFREG => Some(NodeKind::File),
        libc::S_IFDIR => Some(NodeKind::Dir),
        libc::S_IFLNK => Some(NodeKind::Symlink),
        _ => None,
    }
}

/// A node with `stat`'s metadata and no content, subtree or target yet.
pub(crate) fn node_from_stat(
    name: &OsStr,
    stat: &EntryStat,
    kind: NodeKind,
    names: &Names,
) -> Node {
    Node {
        name: ByteVec::from(name.as_bytes().to_vec()),
        kind,
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        mtime_ns: stat.mtime_ns,
        size: if kind == NodeKind::Dir { 0 } else { stat.size },
        content: None,
        subtree: None,
        target: None,
        ctime_ns: (kind != NodeKind::Dir).then_some(stat.ctime_ns),
        inode: (kind == NodeKind::File).then_some(stat.ino),
        device: (kind == NodeKind::File).then_some(stat.dev),
        links: (kind == NodeKind::File && stat.nlink > 1).then_some(stat.nlink),
        user: names.user(stat.uid),
        group: names.group(stat.gid),
        changed_while_reading: None,
        recipe: None,
    }
}

/// True if `current` (just stat'ed) may reuse the content recorded in
/// `previous` without being read: same size, modification time, status
/// change time and inode, and the earlier read was clean.
pub(crate) fn is_unchanged(previous: &Node, current: &Node) -> bool {
    previous.kind == NodeKind::File
        && previous.content.is_some()
        && previous.changed_while_reading != Some(true)
        && previous.size == current.size
        && previous.mtime_ns == current.mtime_ns
        && previous.ctime_ns.is_some()
        && previous.ctime_ns == current.ctime_ns
        && previous.inode.is_some()
        && previous.inode == current.inode
}

/// True if a regular file just `lstat`ed as `stat` gets exactly its node
/// in the parent snapshot, `previous`: its content is reused
/// ([`is_unchanged`]) and [`node_from_stat`] with that content would equal
/// `previous` field for field. An unchanged file is then taken as it was,
/// without a node being built or compared. `previous` is the entry of the
/// same name.
pub(crate) fn same_as_previous(previous: &Node, stat: &EntryStat, names: &Names) -> bool {
    stat.mode & libc::S_IFMT == libc::S_IFREG
        && previous.kind == NodeKind::File
        && previous.content.is_some()
        && previous.changed_while_reading.is_none()
        && previous.recipe.is_none()
        && previous.subtree.is_none()
        && previous.target.is_none()
        && previous.mode == stat.mode & 0o7777
        && previous.uid == stat.uid
        && previous.gid == stat.gid
        && previous.mtime_ns == stat.mtime_ns
        && previous.size == stat.size
        && previous.ctime_ns == Some(stat.ctime_ns)
        && previous.inode == Some(stat.ino)
        && previous.device == Some(stat.dev)
        && previous.links == (stat.nlink > 1).then_some(stat.nlink)
        && names.user_is(stat.uid, previous.user.as_deref())
        && names.group_is(stat.gid, previous.group.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::BlobId;
    use crate::snapshot::{Content, ContentRef};
    use proptest::prelude::*;

    /// A stat from small ranges, so that two of them often agree.
    fn small_stat() -> impl Strategy<Value = EntryStat> {
        (
            prop_oneof![
                6 => Just(libc::S_IFREG),
                1 => Just(libc::S_IFLNK),
                1 => Just(libc::S_IFDIR)
            ],
            0u32..2,
            prop_oneof![Just(0u32), Just(4_000_000u32)],
            prop_oneof![Just(0u32), Just(4_000_000u32)],
            0u64..2,
            (0i64..2, 0i64..2),
            (0u64..2, 0u64..2, 1u64..3),
        )
            .prop_map(
                |(kind, perm, uid, gid, size, (mtime, ctime), (ino, dev, nlink))| EntryStat {
                    mode: kind | if perm == 0 { 0o644 } else { 0o600 },
                    uid,
                    gid,
                    size,
                    mtime_ns: mtime,
                    ctime_ns: ctime,
                    ino,
                    dev,
                    nlink,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The shortcut agrees with building the node, reusing the content,
        /// and comparing: whatever differs between the two stats, and
        /// whatever else the previous node records.
        #[test]
        fn same_as_previous_agrees_with_building_and_comparing_the_node(
            was in small_stat(),
            other in small_stat(),
            change in 0u8..12,
            content in prop::bool::weighted(0.9),
            changed_while_reading in prop_oneof![8 => Just(None), 1 => Just(Some(false)), 1 => Just(Some(true))],
            extra in prop_oneof![6 => Just(0u8), 1 => 1u8..5],
        ) {
            // Mostly the same stat, or one field changed, or another stat.
            let mut now = was;
            match change {
                1 => now.mode = other.mode,
                2 => now.uid = other.uid,
                3 => now.gid = other.gid,
                4 => now.size = other.size,
                5 => now.mtime_ns = other.mtime_ns,
                6 => now.ctime_ns = other.ctime_ns,
                7 => now.ino = other.ino,
                8 => now.dev = other.dev,
                9 => now.nlink = other.nlink,
                10 => now = other,
                _ => {}
            }
            let names = Names::default();
            let name = OsStr::new("note.yaml");
            let Some(was_kind) = node_kind(&was) else { unreachable!() };
            let mut previous = node_from_stat(name, &was, was_kind, &names);
            if content {
                previous.content = Some(Content {
                    depth: 0,
                    entries: vec![ContentRef { id: BlobId([7; 32]), len: was.size }],
                });
            }
            previous.changed_while_reading = changed_while_reading;
            match extra {
                1 => previous.recipe = Some(Content::default()),
                2 => previous.target = Some(b"elsewhere".to_vec().into()),
                3 => previous.subtree = Some(BlobId([9; 32])),
                4 => previous.user = Some("someone-else".into()),
                _ => {}
            }
            let expected = node_kind(&now) == Some(NodeKind::File) && {
                let mut node = node_from_stat(name, &now, NodeKind::File, &names);
                is_unchanged(&previous, &node) && {
                    node.content = previous.content.clone();
                    node == previous
                }
            };
            prop_assert_eq!(same_as_previous(&previous, &now, &names), expected);
            // Each case is also seen the other way round, often enough.
            if was.mode & libc::S_IFMT == libc::S_IFREG && content && change == 0 && extra == 0
                && changed_while_reading.is_none()
            {
                prop_assert!(expected);
            }
        }
    }

    #[test]
    fn paths_become_absolute_and_clean() {
        assert_eq!(
            absolute_path(Path::new("/a/./b/../c/")).unwrap(),
            Path::new("/a/c")
        );
        assert_eq!(absolute_path(Path::new("/../..")).unwrap(), Path::new("/"));
        let here = std::env::current_dir().unwrap();
        assert_eq!(absolute_path(Path::new("x")).unwrap(), here.join("x"));
    }

    #[test]
    fn nested_paths_are_refused_and_duplicates_dropped() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            check_paths(vec![p("/b"), p("/a"), p("/a")]).unwrap(),
            vec![p("/a"), p("/b")]
        );
        assert!(check_paths(vec![p("/opt"), p("/opt/data")]).is_err());
        assert!(check_paths(vec![p("/opt/data"), p("/opt/database")]).is_ok());
        assert!(check_paths(vec![]).is_err());
    }

    #[test]
    fn excludes_match_names_anywhere_and_paths_exactly() {
        let e = Excludes::new(&[
            "*.tmp".into(),
            "node_modules".into(),
            "/opt/data/cache".into(),
            "# comment".into(),
            "".into(),
        ])
        .unwrap();
        assert!(e.is_excluded(Path::new("/opt/data/x.tmp")));
        assert!(e.is_excluded(Path::new("/a/b/node_modules")));
        assert!(e.is_excluded(Path::new("/opt/data/cache")));
        assert!(!e.is_excluded(Path::new("/opt/data/cache2")));
        assert!(!e.is_excluded(Path::new("/opt/data/x.yaml")));
        let star = Excludes::new(&["/home/*/.cache".into()]).unwrap();
        assert!(star.is_excluded(Path::new("/home/ann/.cache")));
        assert!(!star.is_excluded(Path::new("/home/ann/work/.cache")));
    }

    #[test]
    fn path_globs_match_names_or_whole_paths() {
        let by_name = PathGlob::new("*.yaml").unwrap();
        assert!(by_name.is_match(b"/opt/kb/a.yaml"));
        assert!(!by_name.is_match(b"/opt/kb/a.yml"));
        let by_path = PathGlob::new("/opt/kb/*.yaml").unwrap();
        assert!(by_path.is_match(b"/opt/kb/a.yaml"));
        assert!(!by_path.is_match(b"/opt/kb/sub/a.yaml"));
        let deep = PathGlob::new("/opt/**/a.yaml").unwrap();
        assert!(deep.is_match(b"/opt/kb/sub/a.yaml"));
    }
}
