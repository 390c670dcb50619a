//! The storage interface: one narrow trait in repository terms.
//!
//! Every repository, local or remote, is a flat namespace of write-once
//! objects named by `/`-separated ASCII paths (`config`, `keys/<id>`,
//! `packs/ab/<id>`, `index/<id>`, `snapshots/<id>`, `locks/<id>`,
//! `pending/<id>`). The backend never sees plaintext or key material; names
//! are keyed hashes or random ids.
//!
//! # Contract
//!
//! Implementations must uphold all of the following; `tests/it/backend_contract.rs`
//! checks them against every implementation.
//!
//! - **`put_if_absent`** stores `data` under `name` only if no object of that
//!   name exists, atomically: two racing writers produce exactly one
//!   [`Put::Created`]; the other sees [`Put::Existed`] and the stored bytes
//!   are the winner's, untouched. When it returns `Created`, the object is
//!   durable (fsynced, or acknowledged by the store). A reader never sees a
//!   partial object under `name`, even after a crash mid-write. A backend
//!   that cannot tell its own lost-answer retry from a racer (S3) may report
//!   `Created` when the stored bytes equal `data`; and packs, whose names
//!   are the hash of their bytes, may be written without the atomic check
//!   (S3 multipart), since any racer stores the same bytes.
//! - **`get`** returns the whole object or [`Error::NotFound`]. An object
//!   larger than the caller's `max_size` is [`Error::Corrupt`], found from
//!   the object's metadata (file size, `Content-Length`) before its body is
//!   read: hostile storage cannot make a reader allocate at will.
//! - **`get_range`** returns exactly the bytes of `range`; a range that runs
//!   past the end of the object is an error, never a short read.
//! - **`list`** returns every object whose name starts with `prefix`, across
//!   all pages. A failure on any page fails the whole call: a listing is
//!   never silently partial, and an error is never reported as emptiness.
//! - **`delete`** removes the object; deleting a missing object succeeds.
//!
//! Nothing here retries integrity failures: bytes are authenticated above
//! this layer, and a damaged object stays an error.

pub mod local;
pub mod memory;
pub(crate) mod metered;
pub mod s3;

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalBackend;
pub use memory::MemoryBackend;
pub use metered::{Metered, RequestCounts};
pub use s3::{S3Backend, S3Settings};

use crate::error::{Error, Result};

/// Outcome of [`Backend::put_if_absent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The object was created with the given bytes.
    Created,
    /// An object of that name already existed and was left untouched.
    Existed,
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's full name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the storage last modified it, by the storage's clock.
    pub modified: Option<jiff::Timestamp>,
}

/// A repository's storage. See the module docs for the contract.
#[async_trait]
pub trait Backend: Send + Sync + Debug {
    /// Where the repository lives, for messages (a path or URL).
    fn location(&self) -> String;

    /// Prepares empty storage for `init` (see the contract).
    async fn create_root(&self) -> Result<()>;

    /// Creates `name` with `data` unless it exists.
    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Put>;

    /// Reads a whole object of at most `max_size` bytes (see the contract).
    async fn get(&self, name: &str, max_size: u64) -> Result<Bytes>;

    /// Reads `range` of an object.
    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes>;

    /// Lists every object under `prefix` (such as `"snapshots/"`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Removes an object; a missing object is not an error.
    async fn delete(&self, name: &str) -> Result<()>;

    /// How many requests a listing of `objects` entries took (S3 pages hold
    /// 1000), for the request counts every command reports.
    fn list_requests(&self, objects: usize) -> u64 {
        let _ = objects;
        1
    }

    /// How many pack uploads a backup keeps in flight: enough to hide the
    /// storage's latency, few enough to bound memory (each holds one pack).
    fn upload_concurrency(&self) -> usize {
        2
    }

    /// How far apart two of the storage's modification times must be to be
    /// ordered with confidence: its timestamp precision plus any skew
    /// between its nodes. Lease and prune decisions widen every comparison
    /// of storage times by this much, in the safe direction.
    fn clock_resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
}

/// Deletes every named object, a few at a time; the first failure is
/// returned (objects already deleted stay deleted).
pub(crate) async fn delete_all(
    backend: &dyn Backend,
    names: impl IntoIterator<Item = String>,
) -> Result<()> {
    use futures::StreamExt;
    const DELETE_CONCURRENCY: usize = 8;
    let mut deletes = futures::stream::iter(names)
        .map(|name| async move { backend.delete(&name).await })
        .buffer_unordered(DELETE_CONCURRENCY);
    while let Some(result) = deletes.next().await {
        result?;
    }
    Ok(())
}

/// The error for an object larger than its kind allows.
pub(crate) fn too_large(name: &str, size: u64, max_size: u64) -> Error {
    Error::corrupt(
        name,
        format!(
            "is {size} bytes, more than the {max_size} an object of its kind may have; not read"
        ),
    )
}

/// Opens the backend a `--repo` value names: a path, `file:///path`, or
/// `s3://bucket/prefix`.
pub fn open(url: &str) -> Result<Arc<dyn Backend>> {
    if url.is_empty() {
        return Err(Error::InvalidArgument(
            "no repository location given".into(),
        ));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Arc::new(LocalBackend::new(path)));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(S3Backend::from_url(url)?));
    }
    if let Some(scheme_end) = url.find("://") {
        return Err(Error::InvalidArgument(format!(
            "repository URL scheme {:?} is not supported by this build; use a local path, file:///path or s3://bucket/prefix",
            &url[..scheme_end]
        )));
    }
    Ok(Arc::new(LocalBackend::new(url)))
}

/// Checks that `name` is a well-formed object name: non-empty `/`-separated
/// components of `[a-z0-9._-]`, none of them `.` or `..`.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name:?} is not a valid object name"
        )))
    }
}
