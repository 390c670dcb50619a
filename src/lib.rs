//! larder: deduplicating, encrypted backups of database dumps and file trees.
//!
//! Dump streams and files are split with FastCDC, named by keyed BLAKE3,
//! compressed with zstd, sealed with XChaCha20-Poly1305, and packed into
//! write-once objects in a local directory or an S3 bucket. A local SQLite
//! catalog, rebuilt from the repository at will, drives deduplication,
//! listing, restore and verification.
//!
//! Modules follow the data flow: the write path (`source` → `chunker` →
//! `hash` → `seal` → `pack` → `backend`), what is stored and where to find
//! it (`snapshot`, `index`, `catalog`, `repo`), the read path (`read`,
//! crate-private), the storing pipeline that dedups, seals, packs and
//! uploads blobs (`write`), and one module per user-visible verb under
//! `ops`. The types most callers name are re-exported here at the root.
//!
//! ```no_run
//! # async fn demo() -> larder::Result<()> {
//! use std::sync::Arc;
//! use larder::{Repo, backend, ops};
//!
//! let storage = backend::open("/srv/backups/larder")?;
//! let repo = Repo::open(storage, b"passphrase", "/var/cache/larder".as_ref()).await?;
//! let summary = ops::backup::backup(&repo, ops::backup::BackupOptions {
//!     source: "orders-db".into(),
//!     input: ops::backup::BackupInput::Stream {
//!         input: larder::StreamInput::Command {
//!             argv: vec!["pg_dump".into(), "--format=custom".into(), "-Z0".into(), "orders".into()],
//!         },
//!         name: "orders.dump".into(),
//!     },
//!     kind: "postgres".into(),
//!     allow_incomplete: false,
//!     unpack: true,
//!     tags: vec![],
//!     host: larder::host::current_host(),
//!     time: None,
//!     parent: None,
//!     progress: Arc::default(),
//! }).await?;
//! println!("snapshot {} added {} bytes", summary.snapshot_id, summary.bytes_added);
//! # Ok(()) }
//! ```

// Leaves used throughout.
pub mod error;
pub mod host;
pub mod layout;
pub(crate) mod object;

// Write path, in order.
pub mod backend;
pub mod chunker;
pub mod dump;
pub mod hash;
pub mod key;
pub mod lease;
pub mod pack;
pub mod seal;
pub mod source;

// What is stored, and where to find it.
pub mod catalog;
pub mod config;
pub mod index;
pub mod repo;
pub mod snapshot;

// Read and write pipelines, and operations.
pub mod ops;
pub mod plan;
pub mod progress;
pub(crate) mod read;
pub(crate) mod recipe;
pub mod retention;
pub mod write;

// The vocabulary a program driving larder names most: open a backend and a
// repository, pick snapshots, run a verb from `ops` under a lease, watch its
// progress. Everything else is reached through its module; the format-level
// modules (`pack`, `index`, `layout`, `write`, …) stay public for the
// integration tests and benches that build damaged repositories by hand,
// with only what those use exported.
pub use backend::{Backend, LocalBackend, MemoryBackend, S3Backend};
pub use catalog::SnapshotFilter;
pub use error::{Error, Result};
pub use hash::{BlobId, PackId, SnapshotId};
pub use lease::LeaseKind;
pub use progress::Progress;
pub use recipe::panic_is_contained;
pub use repo::{InitOptions, Repo};
pub use retention::Policy;
pub use snapshot::Snapshot;
pub use source::StreamInput;
