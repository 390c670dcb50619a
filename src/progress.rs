//! `Progress`: counters that operations increment and a front end polls,
//! and the [`Interrupt`] a front end raises to stop an operation cleanly.
//! No terminal or signal code here; the CLI draws bars from these numbers
//! and turns signals into interrupts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

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
    /// Raised to ask the operation to stop.
    pub interrupt: Interrupt,
    /// Set once the operation passed its commit point (a backup's snapshot
    /// is stored): an interrupt after that stops nothing that matters.
    pub committed: std::sync::atomic::AtomicBool,
}

/// A request from outside an operation that it stop (a signal such as
/// SIGINT): an operation that can stop cleanly (a backup: kill the dump,
/// index what landed, commit nothing) registers a hook.
#[derive(Default)]
pub struct Interrupt {
    /// The signal number raised, or 0.
    signal: AtomicI32,
    hooks: Mutex<Vec<InterruptHook>>,
}

/// Called with the signal number when an interrupt is raised.
type InterruptHook = Box<dyn Fn(i32) + Send + Sync>;

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interrupt({:?})", self.raised())
    }
}

impl Interrupt {
    /// Asks the operation to stop because of `signal`. Returns whether an
    /// operation was listening (else the caller must stop it some other way).
    pub fn raise(&self, signal: i32) -> bool {
        self.signal.store(signal, Ordering::SeqCst);
        let hooks = self.hooks.lock().expect("interrupt lock");
        for hook in hooks.iter() {
            hook(signal);
        }
        !hooks.is_empty()
    }

    /// The signal raised, if any.
    pub fn raised(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// Drops every hook: the operation that registered them has ended, so
    /// a later interrupt finds nobody listening.
    pub(crate) fn clear_hooks(&self) {
        self.hooks.lock().expect("interrupt lock").clear();
    }

    /// Calls `hook` when the interrupt is raised (at once if it was).
    pub(crate) fn on_raise(&self, hook: impl Fn(i32) + Send + Sync + 'static) {
        let mut hooks = self.hooks.lock().expect("interrupt lock");
        if let Some(signal) = self.raised() {
            hook(signal);
        }
        hooks.push(Box::new(hook));
    }
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
