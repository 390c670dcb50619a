//! A repository in a local directory.
//!
//! Objects are files under the repository root at their names. A write goes
//! to a temporary file (`.tmp-<random>`) in the destination directory, is
//! fsynced, renamed into place without overwriting (`renameat2` with
//! `RENAME_NOREPLACE`, or `link` + `unlink` where the file system lacks it),
//! and the directory is fsynced. A crash therefore leaves either nothing or
//! the complete object under its name; stray temporary files are skipped by
//! `list` and may be deleted at any time. Objects are created mode 0600 and
//! directories 0700; all 256 pack directories exist from `init` on.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, ObjectInfo, Put, validate_name};
use crate::error::{Error, Result};

/// Prefix of temporary files; never a valid object name component.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A local directory backend.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| panic!("local storage task panicked: {e}"))
}

#[async_trait]
impl Backend for LocalBackend {
    /// File modification times come from the kernel's coarse clock (a few
    /// milliseconds); a network file system adds its server's skew, which
    /// this does not cover (see docs/OPERATIONS.md).
    fn clock_resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }

    fn location(&self) -> String {
        // Canonical, so that every spelling of the same directory names the
        // same catalog; the given path if it does not exist (yet).
        std::fs::canonicalize(&self.root)
            .unwrap_or_else(|_| {
                std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone())
            })
            .display()
            .to_string()
    }

    async fn create_root(&self) -> Result<()> {
        let root = self.root.clone();
        blocking(move || {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| Error::io("creating", &root, e))?;
            let mut entries = fs::read_dir(&root).map_err(|e| Error::io("listing", &root, e))?;
            if entries.next().is_some() {
                return Err(Error::AlreadyInitialised {
                    location: root.display().to_string(),
                });
            }
            for dir in crate::layout::DIRECTORIES {
                let path = root.join(dir);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| Error::io("creating", &path, e))?;
            }
            // All 256 pack directories up front: no writer ever creates one
            // concurrently with another, and each is durable before any
            // pack lands in it.
            let packs = root.join("packs");
            for byte in 0..=255u8 {
                let path = packs.join(format!("{byte:02x}"));
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| Error::io("creating", &path, e))?;
            }
            sync_dir(&packs)?;
            sync_dir(&root)?;
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            Ok(())
        })
        .await
    }

    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Put> {
        let path = self.path(name)?;
        let root = self.root.clone();
        blocking(move || write_new(&root, &path, &data)).await
    }

    async fn get(&self, name: &str, max_size: u64) -> Result<Bytes> {
        let path = self.path(name)?;
        let name = name.to_string();
        blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::NotFound { object: name });
                }
                Err(e) => return Err(Error::io("opening", path, e)),
            };
            let size = file
                .metadata()
                .map_err(|e| Error::io("reading", &path, e))?
                .len();
            if size > max_size {
                return Err(super::too_large(&name, size, max_size));
            }
            // The file may grow after the size was read; never read more
            // than the limit allows.
            let mut bytes = Vec::with_capacity(size as usize);
            file.take(max_size.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("reading", &path, e))?;
            if bytes.len() as u64 > max_size {
                return Err(super::too_large(&name, bytes.len() as u64, max_size));
            }
            Ok(Bytes::from(bytes))
        })
        .await
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(name)?;
        let name = name.to_string();
        blocking(move || {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::NotFound { object: name });
                }
                Err(e) => return Err(Error::io("opening", path, e)),
            };
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .expect("ranges fit in memory");
            let mut buf = vec![0u8; len];
            file.seek(SeekFrom::Start(range.start))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => Error::corrupt(
                        &name,
                        format!(
                            "is shorter than expected: bytes {}..{} not present",
                            range.start, range.end
                        ),
                    ),
                    _ => Error::io("reading", &path, e),
                })?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir_name = prefix.trim_end_matches('/');
        validate_name(dir_name)?;
        let root = self.root.clone();
        let dir = self.root.join(dir_name);
        blocking(move || {
            let mut out = Vec::new();
            walk(&root, &dir, &mut out)?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", path, e)),
        })
        .await
    }
}

/// Lists files under `dir` recursively. A missing directory is an error: a
/// local repository has every top-level directory from `init` on, so its
/// absence means damage, never emptiness.
fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let file_name = entry.file_name();
        if file_name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(|e| Error::io("reading metadata of", &path, e))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("walk stays under root");
            let name = rel
                .to_str()
                .ok_or_else(|| {
                    Error::corrupt(path.display().to_string(), "object name is not UTF-8")
                })?
                .to_string();
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| jiff::Timestamp::try_from(t).ok());
            out.push(ObjectInfo {
                name,
                size: meta.len(),
                modified,
            });
        }
    }
    Ok(())
}

fn write_new(root: &Path, path: &Path, data: &[u8]) -> Result<Put> {
    let dir = path.parent().expect("object paths have a parent");
    if fs::symlink_metadata(path).is_ok() {
        // Another writer may have renamed it in without syncing yet.
        sync_dir(dir)?;
        return Ok(Put::Existed);
    }
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("creating directory", dir, e))?;
        // Make the new directory entry durable, up to the repository root.
        let mut d = dir;
        while let Some(parent) = d.parent() {
            sync_dir(parent)?;
            if parent == root {
                break;
            }
            d = parent;
        }
    }
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}",
        hex::encode(&crate::hash::random_bytes()[..8])
    ));
    let result = (|| {
        // Objects are private to the repository's owner: key files invite
        // offline guessing, and everything else is of no use to others.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("creating", &tmp, e))?;
        write_data(&file, data).map_err(|e| Error::io("writing", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
        drop(file);
        let created =
            rename_noreplace(&tmp, path).map_err(|e| Error::io("renaming into", path, e))?;
        sync_dir(dir)?;
        Ok(if created { Put::Created } else { Put::Existed })
    })();
    // The temporary name is gone after a successful rename; after any other
    // outcome remove it so a failed write leaves nothing behind.
    let _ = fs::remove_file(&tmp);
    result
}

/// What direct I/O asks of the buffer's address, the file offset and the
/// length: a page, enough for every common device and file system. Pack
/// buffers are built aligned to it (`pack::PAGE`).
pub const DIRECT_IO_ALIGN: usize = 4096;

/// Objects of at least this many bytes are written with direct I/O.
const DIRECT_MIN: usize = 1 << 20;

/// Writes `data` to the new, empty `file`.
///
/// An object of a megabyte or more (a pack) whose bytes start on a page
/// boundary, as packs built by this crate do, goes to the disk with direct
/// I/O (`O_DIRECT`), except its last partial page: the kernel neither copies
/// it into the page cache (a tenth of a file tree backup's CPU time went to
/// that copy) nor keeps it there, so a backup does not push a database's
/// working set out of memory. Where the file system or device refuses
/// direct I/O, everything goes through the page cache as before. Either way
/// the caller's `fsync` makes it durable; direct I/O alone does not.
fn write_data(file: &File, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let page = DIRECT_IO_ALIGN;
    let direct = data.len() / page * page;
    if direct >= DIRECT_MIN
        && (data.as_ptr() as usize).is_multiple_of(page)
        && set_direct(file, true).is_ok()
    {
        let written = file.write_all_at(&data[..direct], 0);
        set_direct(file, false)?;
        match written {
            Ok(()) => return file.write_all_at(&data[direct..], direct as u64),
            // Accepted when asked but refused when written (a device with
            // larger sectors, say): all again, through the page cache.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    file.write_all_at(data, 0)
}

/// Turns direct I/O on or off for `file`.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    Ok(fcntl_setfl(file, flags)?)
}

/// Renames `from` to `to` unless `to` exists. Returns false if it existed.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        // File systems without RENAME_NOREPLACE: link fails if `to` exists.
        Err(Errno::INVAL | Errno::NOSYS) => match fs::hard_link(from, to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of a pattern, starting on a page boundary when `aligned`.
    fn object(len: usize, aligned: bool) -> Bytes {
        #[repr(C, align(4096))]
        struct Page([u8; DIRECT_IO_ALIGN]);
        struct Pages(Vec<Page>, usize);
        impl AsRef<[u8]> for Pages {
            fn as_ref(&self) -> &[u8] {
                // SAFETY: `self.1` bytes of initialised pages.
                unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.1) }
            }
        }
        let total = len + usize::from(!aligned);
        let mut pages = Pages(
            (0..total.div_ceil(DIRECT_IO_ALIGN))
                .map(|_| Page([0; DIRECT_IO_ALIGN]))
                .collect(),
            total,
        );
        // SAFETY: as in `as_ref`, mutably.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(pages.0.as_mut_ptr().cast(), total) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7 + i / 4096) as u8;
        }
        let bytes = Bytes::from_owner(pages);
        if aligned { bytes } else { bytes.slice(1..) }
    }

    /// Pages of `path` in the page cache, and all its pages.
    fn cached_pages(path: &Path) -> (usize, usize) {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let pages = len.div_ceil(DIRECT_IO_ALIGN);
        // SAFETY: a fresh shared read-only mapping of the whole file, only
        // passed to mincore and unmapped before returning.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; pages];
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
            (resident.iter().filter(|r| *r & 1 == 1).count(), pages)
        }
    }

    #[test]
    fn objects_of_every_size_and_alignment_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            4096,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            (3 << 20) + 4095,
        ] {
            for aligned in [true, false] {
                let data = object(len, aligned);
                let path = dir.path().join(format!("o-{len}-{aligned}"));
                assert_eq!(write_new(dir.path(), &path, &data).unwrap(), Put::Created);
                assert_eq!(
                    fs::read(&path).unwrap(),
                    data,
                    "{len} bytes, aligned {aligned}"
                );
                // The file was not left in direct mode for its tail or for
                // the next writer: a plain append works.
                fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| io::Write::write_all(&mut f, b"x"))
                    .unwrap();
            }
        }
    }

    /// A pack goes to the disk without passing through the page cache, so a
    /// backup leaves the memory of the database it copies alone. Where the
    /// directory refuses direct I/O, or lives in memory anyway (tmpfs),
    /// there is nothing to see.
    #[test]
    fn large_aligned_objects_bypass_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        let refuses = File::create(&probe)
            .and_then(|f| set_direct(&f, true))
            .is_err();
        let in_memory = rustix::fs::statfs(dir.path())
            .map(|s| s.f_type == libc::TMPFS_MAGIC)
            .unwrap_or(true);
        if refuses || in_memory {
            eprintln!("{}: no direct I/O to observe here", dir.path().display());
            return;
        }
        let len = (8 << 20) + 100;
        let path = dir.path().join("pack");
        write_new(dir.path(), &path, &object(len, true)).unwrap();
        let (cached, pages) = cached_pages(&path);
        // Only the partial last page went through the cache.
        assert!(cached <= 1, "{cached} of {pages} pages cached");
        // The same object, not page-aligned, is written through the cache.
        let path = dir.path().join("unaligned");
        write_new(dir.path(), &path, &object(len, false)).unwrap();
        let (cached, pages) = cached_pages(&path);
        assert!(cached > pages / 2, "{cached} of {pages} pages cached");
    }
}
