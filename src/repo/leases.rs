//! The lease a handle holds, shared by its clones, and the guards through
//! which operations hold it.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKind};

use super::Repo;

/// The lease a handle (and its clones) holds, and how many holds are on it.
#[derive(Debug, Default)]
pub(super) struct LeaseSlot {
    lease: Option<Arc<Lease>>,
    /// Open holds: one for a lease taken at open (ended by
    /// [`Repo::release_lease`]), one per live [`LeaseGuard`].
    holds: usize,
}

/// One operation's hold on the handle's lease, from [`Repo::hold_lease`].
/// The lease is released when the last hold ends; end a hold with
/// [`LeaseGuard::finish`] (a guard dropped without it releases the lease in
/// the background, or leaves it to expire when no runtime is left).
#[derive(Debug)]
#[must_use = "the lease is held until the guard is finished or dropped"]
pub struct LeaseGuard {
    slot: Arc<Mutex<LeaseSlot>>,
    lease: Arc<Lease>,
    finished: bool,
}

impl LeaseGuard {
    /// The lease held.
    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Ends this hold, releasing the lease if it was the last one.
    pub async fn finish(mut self) {
        self.finished = true;
        if let Some(lease) = unhold(&self.slot, &self.lease) {
            lease.release().await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(lease) = unhold(&self.slot, &self.lease)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { lease.release().await });
        }
    }
}

/// Ends one hold on `lease`; returns it when that was the last. A guard
/// that outlived its lease (released at the end of the process, or after a
/// lapse) does nothing to a newer lease in the slot.
fn unhold(slot: &Mutex<LeaseSlot>, lease: &Arc<Lease>) -> Option<Arc<Lease>> {
    let mut slot = slot.lock().expect("lease lock");
    if !slot
        .lease
        .as_ref()
        .is_some_and(|held| Arc::ptr_eq(held, lease))
    {
        return None;
    }
    slot.holds = slot.holds.saturating_sub(1);
    if slot.holds == 0 {
        slot.lease.take()
    } else {
        None
    }
}

impl Repo {
    pub(super) async fn acquire_lease(&self, kind: LeaseKind) -> Result<Arc<Lease>> {
        let lease = Arc::new(
            Lease::acquire(
                &self.backend,
                &self.sealer,
                self.config.compression_level,
                kind,
            )
            .await?,
        );
        let joined = {
            let mut slot = self.lease.lock().expect("lease lock");
            match &slot.lease {
                // Another task took one meanwhile: join it, drop ours.
                Some(held) => {
                    let held = Arc::clone(held);
                    slot.holds += 1;
                    Some(held)
                }
                None => {
                    slot.lease = Some(Arc::clone(&lease));
                    slot.holds = 1;
                    None
                }
            }
        };
        match joined {
            Some(held) => {
                lease.release().await;
                Ok(held)
            }
            None => Ok(lease),
        }
    }

    /// Holds a lease for one operation that reads or writes packs, so that
    /// no prune sweeps what it relies on: the handle's lease if it has one
    /// (taken at open, or by another operation still running), else a new
    /// lease of `kind`, after which the catalog is brought in step again
    /// (what it absorbed before the lease is not covered). Prune needs a
    /// prune lease; every other operation takes any.
    pub async fn hold_lease(&self, kind: LeaseKind) -> Result<LeaseGuard> {
        let held = {
            let mut slot = self.lease.lock().expect("lease lock");
            match &slot.lease {
                Some(lease) => {
                    let lease = Arc::clone(lease);
                    slot.holds += 1;
                    Some(lease)
                }
                None => None,
            }
        };
        let (lease, fresh) = match held {
            Some(lease) => (lease, false),
            None => (self.acquire_lease(kind).await?, true),
        };
        let guard = LeaseGuard {
            slot: Arc::clone(&self.lease),
            lease,
            finished: false,
        };
        // Whichever way it came (another task may have taken one while
        // this one acquired), prune must hold a prune lease: other prunes
        // wait only for those.
        if kind == LeaseKind::Prune && guard.lease.kind() != LeaseKind::Prune {
            let held = guard.lease.kind();
            guard.finish().await;
            return Err(Error::InvalidArgument(format!(
                "prune needs a prune lease, but this handle holds a {} lease",
                held.name()
            )));
        }
        if fresh && let Err(e) = self.sync().await {
            guard.finish().await;
            return Err(e);
        }
        Ok(guard)
    }

    /// The lease this handle holds, if any.
    pub fn lease(&self) -> Option<Arc<Lease>> {
        self.lease.lock().expect("lease lock").lease.clone()
    }

    /// Ends the lease, if one is held, whatever holds remain (the end of a
    /// process that opened the repository with one).
    pub async fn release_lease(&self) {
        let lease = {
            let mut slot = self.lease.lock().expect("lease lock");
            slot.holds = 0;
            slot.lease.take()
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
    }

    /// Before a commit: fails if the lease `guard` holds ever lapsed (see
    /// [`Lease::confirm`]), or is no longer this handle's (it was released:
    /// whatever the run decided under it is no longer protected).
    pub(crate) async fn confirm_lease(&self, guard: &LeaseGuard) -> Result<()> {
        let current = self.lease();
        if !current.is_some_and(|held| Arc::ptr_eq(&held, &guard.lease)) {
            return Err(Error::InvalidArgument(
                "the lease this run began under was released; nothing was committed".into(),
            ));
        }
        guard.lease.confirm().await.map(|_| ())
    }
}
