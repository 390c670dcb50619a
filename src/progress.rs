//! `Progress`: counters that operations increment and a front end polls.
//! No terminal code here; the CLI draws bars from these numbers.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a running operation. All relaxed atomics: readers want
/// a recent value, not a consistent cut.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the source (backup) or written out (restore, cat).
    pub bytes_processed: AtomicU64,
    /// Bytes expected in total, when known (0 if not).
    pub bytes_total: AtomicU64,
    /// Stored bytes added to the repository.
    pub bytes_stored: AtomicU64,
    /// Blobs or objects handled so far.
    pub items_done: AtomicU64,
    /// Items expected in total, when known (0 if not).
    pub items_total: AtomicU64,
}

impl Progress {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
