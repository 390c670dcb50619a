//! Plumbing shared by the stages of a multi-threaded operation: the
//! [`Abort`] every stage watches, named thread spawning, and queue sizing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// The first failure of a multi-threaded operation, shared by its stages.
///
/// Stages call [`Abort::fail`] with real errors; a stage that stops only
/// because another one did returns [`Error::Cancelled`], which is never
/// recorded, so the error finally reported is the root cause.
#[derive(Default)]
pub struct Abort {
    set: AtomicBool,
    error: Mutex<Option<Error>>,
    hooks: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Abort({})", self.is_set())
    }
}

impl Abort {
    /// Records `error` (if it is the first real one), stops every stage, and
    /// runs the abort hooks (such as killing a dump command).
    pub fn fail(&self, error: Error) {
        if !matches!(error, Error::Cancelled) {
            let mut slot = self.error.lock().expect("abort lock");
            if slot.is_none() {
                *slot = Some(error);
            }
        }
        let hooks: Vec<_> = {
            let mut hooks = self.hooks.lock().expect("abort lock");
            if self.set.swap(true, Ordering::SeqCst) {
                return;
            }
            hooks.drain(..).collect()
        };
        for hook in hooks {
            hook();
        }
    }

    /// True once any stage failed.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Runs `hook` when the operation aborts (immediately if it already has).
    pub(crate) fn on_abort(&self, hook: impl FnOnce() + Send + 'static) {
        // Checked under the lock `fail` drains the hooks with, so a hook is
        // either queued before the drain or run here, never lost.
        let mut hooks = self.hooks.lock().expect("abort lock");
        if self.is_set() {
            drop(hooks);
            hook();
        } else {
            hooks.push(Box::new(hook));
        }
    }

    /// The recorded root cause, or `Cancelled` if aborted without one.
    pub fn error(&self) -> Option<Error> {
        if !self.is_set() {
            return None;
        }
        Some(
            self.error
                .lock()
                .expect("abort lock")
                .take()
                .unwrap_or(Error::Cancelled),
        )
    }
}

/// Items per queue between pipeline stages: enough to smooth out uneven
/// stages, bounded by bytes (8 MiB of the largest chunks) rather than count,
/// so peak memory does not depend on the chunk profile.
pub(crate) fn queue_depth(max_chunk: usize) -> usize {
    (8usize << 20).div_ceil(max_chunk.max(1)).clamp(4, 256)
}

/// Starts a named pipeline thread.
pub(crate) fn spawn_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io("starting thread", name, e))
}
