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
//! it (`snapshot`, `index`, `catalog`, `repo`), the read path (`read`), the
//! storing pipeline that dedups, seals, packs and uploads blobs (`write`),
//! and one module per user-visible verb under `ops`.
//!
//! ```no_run
//! # async fn demo() -> larder::Result<()> {
//! use std::sync::Arc;
//! use larder::{backend, ops, repo::Repo};
//!
//! let storage = backend::open("/srv/backups/larder")?;
//! let repo = Repo::open(storage, b"passphrase", "/var/cache/larder".as_ref()).await?;
//! let summary = ops::backup::backup(&repo, ops::backup::BackupOptions {
//!     source: "orders-db".into(),
//!     input: ops::backup::BackupInput::Stream {
//!         input: larder::source::StreamInput::Command {
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

pub mod error;
pub mod host;
pub mod layout;
pub mod object;

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
pub mod progress;
pub mod read;
pub mod recipe;
pub mod retention;
pub mod write;

pub use error::{Error, Result};
pub use repo::Repo;
