//! Leases: who is using the repository, so prune knows what it must not
//! pull out from under a running operation.
//!
//! ```text
//! locks/<lease id>.<kind>.<lifetime s>.<seq> = sealed(kind Lease) of CBOR LeaseBody
//! ```
//!
//! A lease is a series of objects. Sequence 0 is written when the operation
//! starts and stays until it ends: its storage modification time is the
//! lease's start. Every refresh writes the next sequence number and deletes
//! the one before, so the newest object's modification time is when the
//! lease was last renewed. Nothing is ever overwritten, so this works on any
//! store with read-after-write listings and needs no conditional writes.
//!
//! All times are the storage's own (modification times in listings); no
//! client clock is compared with another. A lease is live until its newest
//! object is older than its lifetime, widened by the storage's clock
//! resolution in the safe direction: others treat it as live a little
//! longer, its holder treats a refresh gap as a lapse a little sooner. A
//! holder whose gap between two refreshes exceeded the lifetime (it was
//! suspended, or could not reach storage) learns so at its next refresh,
//! and [`Lease::confirm`] refuses to let it commit. An expired lease is
//! ignored by everyone and removed by prune, so no state ever needs a
//! manual unlock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;

use crate::backend::{Backend, Metered, Put};
use crate::error::{Error, Result};
use crate::seal::{ObjectKind, Sealer, with_codec};

/// Lifetime of a lease unless `LARDER_LEASE_SECONDS` says otherwise. It
/// must comfortably exceed the slowest storage request, since a refresh is
/// one PUT, one LIST and one DELETE.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// Environment variable overriding the lease lifetime, in seconds.
pub const TTL_ENV: &str = "LARDER_LEASE_SECONDS";

/// Largest lease object accepted.
const MAX_LEASE_SIZE: usize = 64 << 10;

/// What an operation holding a lease does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// Writes packs and commits a snapshot.
    Backup,
    /// Reads packs (restore, cat, diff, check).
    Read,
    /// Copies snapshots into or out of the repository.
    Copy,
    /// Removes data: at most one runs at a time.
    Prune,
}

impl LeaseKind {
    /// The word used in object names and messages.
    pub fn name(self) -> &'static str {
        match self {
            LeaseKind::Backup => "backup",
            LeaseKind::Read => "read",
            LeaseKind::Copy => "copy",
            LeaseKind::Prune => "prune",
        }
    }
}

/// Who holds a lease, for messages about waiting.
#[derive(Clone, Debug, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
struct LeaseBody {
    #[n(0)]
    user: String,
    #[n(1)]
    host: String,
    #[n(2)]
    pid: u32,
    #[n(3)]
    kind: String,
}

/// One lease as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease id (hex).
    pub id: String,
    /// Its kind's name.
    pub kind: String,
    /// Its lifetime.
    pub ttl: Duration,
    /// When it began (storage time of sequence 0, or of its oldest object
    /// if that is gone).
    pub start: Timestamp,
    /// When it was last refreshed (storage time of its newest object).
    pub refreshed: Timestamp,
    /// Its objects, oldest first, with their storage times.
    pub objects: Vec<(u64, String, Timestamp)>,
}

impl LeaseInfo {
    /// When it expires unless refreshed.
    pub fn expires(&self) -> Timestamp {
        add(self.refreshed, self.ttl)
    }

    /// Whether it is live at storage time `now`: it is, until its expiry
    /// plus the storage's clock resolution has passed.
    pub fn is_live(&self, now: Timestamp, resolution: Duration) -> bool {
        now <= add(self.expires(), resolution)
    }
}

/// What a refresh saw: the storage's time and every lease.
#[derive(Clone, Debug)]
pub struct LeaseView {
    /// The storage's time of this refresh.
    pub now: Timestamp,
    /// The refreshing lease's id.
    pub mine: String,
    /// Every lease in the repository, the refreshing one included.
    pub leases: Vec<LeaseInfo>,
}

impl LeaseView {
    /// The refreshing lease.
    pub fn me(&self) -> Option<&LeaseInfo> {
        self.leases.iter().find(|l| l.id == self.mine)
    }

    /// Other leases still live.
    pub fn others_live(&self, resolution: Duration) -> impl Iterator<Item = &LeaseInfo> {
        self.leases
            .iter()
            .filter(move |l| l.id != self.mine && l.is_live(self.now, resolution))
    }
}

/// `t + d`, saturating.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    let d = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// `t - d`, saturating.
pub fn sub(t: Timestamp, d: Duration) -> Timestamp {
    let d = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.checked_sub(d).unwrap_or(Timestamp::MIN)
}

/// A storage time for messages, in the same form as snapshot times.
pub fn format_storage_time(t: Timestamp) -> String {
    crate::ops::format_time(i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX))
}

/// The associated-data id of a lease's objects: its 16-byte id, then 16
/// zero bytes. `None` for an id that is not 32 hex digits.
fn aad_id(lease: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(lease).ok().filter(|b| b.len() == 16)?;
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&bytes);
    Some(id)
}

fn object_name(id: &str, kind: &str, ttl: Duration, seq: u64) -> String {
    format!("locks/{id}.{kind}.{}.{seq}", ttl.as_secs())
}

/// Parses `locks/<id>.<kind>.<ttl>.<seq>`.
fn parse_name(name: &str) -> Option<(String, String, Duration, u64)> {
    let rest = name.strip_prefix("locks/")?;
    let mut parts = rest.split('.');
    let id = parts.next()?;
    let kind = parts.next()?;
    let ttl: u64 = parts.next()?.parse().ok()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((id.into(), kind.into(), Duration::from_secs(ttl), seq))
}

/// Every lease in the repository, from one listing of `locks/`. Objects
/// that are not lease objects, or carry no modification time, are ignored.
pub async fn list_leases(backend: &dyn Backend) -> Result<Vec<LeaseInfo>> {
    let mut by_id: BTreeMap<String, LeaseInfo> = BTreeMap::new();
    for object in backend.list("locks/").await? {
        let (Some((id, kind, ttl, seq)), Some(time)) = (parse_name(&object.name), object.modified)
        else {
            continue;
        };
        let info = by_id.entry(id.clone()).or_insert_with(|| LeaseInfo {
            id,
            kind,
            ttl,
            start: time,
            refreshed: time,
            objects: Vec::new(),
        });
        info.objects.push((seq, object.name, time));
    }
    let mut leases: Vec<LeaseInfo> = by_id.into_values().collect();
    for lease in &mut leases {
        lease.objects.sort_by_key(|(seq, _, _)| *seq);
        lease.start = lease.objects.iter().map(|o| o.2).min().expect("non-empty");
        lease.refreshed = lease.objects.iter().map(|o| o.2).max().expect("non-empty");
    }
    Ok(leases)
}

/// The lease lifetime: `LARDER_LEASE_SECONDS` or [`DEFAULT_TTL`].
pub fn configured_ttl() -> Result<Duration> {
    match std::env::var(TTL_ENV) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s >= 1 => Ok(Duration::from_secs(s)),
            _ => Err(Error::InvalidArgument(format!(
                "{TTL_ENV}={v:?} is not a whole number of seconds of at least 1"
            ))),
        },
        Err(_) => Ok(DEFAULT_TTL),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Sequence number of the newest object written.
    seq: u64,
    /// Storage time of the newest object, once a listing has shown it.
    last: Option<Timestamp>,
    /// The longest gap between refreshes seen, when it exceeded the lifetime.
    lapsed: Option<Duration>,
    /// Objects a failed delete left behind.
    leftover: Vec<String>,
    released: bool,
}

#[derive(Debug)]
struct Inner {
    backend: Metered,
    sealer: Sealer,
    level: i32,
    id: String,
    kind: LeaseKind,
    ttl: Duration,
    resolution: Duration,
    body: Vec<u8>,
    state: tokio::sync::Mutex<State>,
}

/// A held lease; see the module docs. Refreshed in the background every
/// fifth of its lifetime until [`Lease::release`] (or drop, which stops
/// refreshing and leaves the objects to expire).
#[derive(Debug)]
pub struct Lease {
    inner: Arc<Inner>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Lease {
    /// Takes a lease of `kind`: writes its first object and starts
    /// refreshing it.
    pub async fn acquire(
        backend: &Metered,
        sealer: &Sealer,
        level: i32,
        kind: LeaseKind,
    ) -> Result<Lease> {
        let ttl = configured_ttl()?;
        let body = LeaseBody {
            user: crate::repo::current_user(),
            host: crate::repo::current_host(),
            pid: std::process::id(),
            kind: kind.name().into(),
        };
        let inner = Arc::new(Inner {
            backend: backend.clone(),
            sealer: sealer.clone(),
            level,
            id: hex::encode(&crate::hash::random_bytes()[..16]),
            kind,
            ttl,
            resolution: backend.clock_resolution(),
            body: minicbor::to_vec(&body).expect("encoding to a Vec cannot fail"),
            state: tokio::sync::Mutex::new(State::default()),
        });
        inner.put(0).await?;
        let refresher = tokio::spawn(refresh_loop(Arc::clone(&inner)));
        Ok(Lease { inner, refresher })
    }

    /// The lease id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Its kind.
    pub fn kind(&self) -> LeaseKind {
        self.inner.kind
    }

    /// Its lifetime.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The storage's clock resolution this lease allows for.
    pub fn resolution(&self) -> Duration {
        self.inner.resolution
    }

    /// Renews the lease now and returns what the storage showed: its time
    /// and every lease.
    pub async fn refresh(&self) -> Result<LeaseView> {
        self.inner.refresh().await
    }

    /// Renews the lease and fails with [`Error::LeaseLapsed`] if it ever
    /// went unrenewed for longer than its lifetime. Called just before a
    /// commit.
    pub async fn confirm(&self) -> Result<LeaseView> {
        let view = self.inner.refresh().await?;
        match self.inner.state.lock().await.lapsed {
            Some(gap) => Err(Error::LeaseLapsed {
                gap_s: gap.as_secs(),
                ttl_s: self.inner.ttl.as_secs(),
            }),
            None => Ok(view),
        }
    }

    /// Describes another lease for a message: its kind, holder and expiry.
    pub async fn describe(&self, other: &LeaseInfo) -> String {
        let holder = match self.inner.read_body(other).await {
            Some(body) => format!(" by {}@{} (pid {})", body.user, body.host, body.pid),
            None => String::new(),
        };
        format!(
            "{} lease {}{holder}, started {}, expires {} unless renewed",
            other.kind,
            &other.id[..8],
            format_storage_time(other.start),
            format_storage_time(other.expires()),
        )
    }

    /// Ends the lease: stops refreshing and deletes its objects. Failures
    /// are left to expiry.
    pub async fn release(&self) {
        self.refresher.abort();
        let mut state = self.inner.state.lock().await;
        if state.released {
            return;
        }
        state.released = true;
        let mut names: Vec<String> = std::mem::take(&mut state.leftover);
        if state.seq > 0 {
            names.push(self.inner.name(state.seq));
        }
        // Sequence 0 last: while any object remains, the start stays known.
        names.push(self.inner.name(0));
        for name in names {
            let _ = self.inner.backend.delete(&name).await;
        }
    }
}

async fn refresh_loop(inner: Arc<Inner>) {
    let period = inner.ttl / 5;
    loop {
        tokio::time::sleep(period).await;
        // A failed refresh is retried at the next tick; if storage stays
        // unreachable past the lifetime, the gap marks the lease lapsed.
        let _ = inner.refresh().await;
    }
}

impl Inner {
    fn name(&self, seq: u64) -> String {
        object_name(&self.id, self.kind.name(), self.ttl, seq)
    }

    async fn put(&self, seq: u64) -> Result<()> {
        let name = self.name(seq);
        let id = aad_id(&self.id).expect("this lease's id is 16 random bytes in hex");
        let sealed = with_codec(self.level, |codec| {
            self.sealer
                .seal(codec, ObjectKind::Lease, &id, &self.body, true)
        });
        match self
            .backend
            .put_if_absent(&name, Bytes::from(sealed))
            .await?
        {
            Put::Created => Ok(()),
            Put::Existed => Err(Error::corrupt(
                name,
                "a lease object of this random name already exists",
            )),
        }
    }

    async fn read_body(&self, other: &LeaseInfo) -> Option<LeaseBody> {
        let (_, name, _) = other.objects.last()?;
        let sealed = self.backend.get(name, MAX_LEASE_SIZE as u64).await.ok()?;
        let id = aad_id(&other.id)?;
        let plain = with_codec(self.level, |codec| {
            self.sealer
                .open(codec, ObjectKind::Lease, &id, &sealed, MAX_LEASE_SIZE)
        })
        .ok()?;
        minicbor::decode(&plain).ok()
    }

    async fn refresh(&self) -> Result<LeaseView> {
        let mut state = self.state.lock().await;
        if state.released {
            return Err(Error::InvalidArgument(
                "the lease was already released".into(),
            ));
        }
        let seq = state.seq + 1;
        self.put(seq).await?;
        let previous = state.seq;
        state.seq = seq;
        let leases = list_leases(&self.backend).await?;
        let mine = leases.iter().find(|l| l.id == self.id);
        let time_of = |s: u64| {
            mine.and_then(|l| l.objects.iter().find(|o| o.0 == s))
                .map(|o| o.2)
        };
        let Some(now) = time_of(seq) else {
            return Err(Error::corrupt(
                self.name(seq),
                "was written but the listing of locks/ does not show it",
            ));
        };
        // The gap since the last renewal the storage recorded. Sequence 0
        // missing means someone removed this lease as expired.
        let before = state.last.or(time_of(0));
        let limit = self.ttl.saturating_sub(self.resolution);
        let gap = match before {
            Some(before) => {
                Duration::try_from(now.duration_since(before)).unwrap_or(Duration::ZERO)
            }
            None => Duration::MAX,
        };
        let gap = if time_of(0).is_none() {
            gap.max(self.ttl + Duration::from_secs(1))
        } else {
            gap
        };
        if gap > limit {
            state.lapsed = Some(state.lapsed.map_or(gap, |g| g.max(gap)));
        }
        state.last = Some(now);
        if previous > 0 {
            let old = self.name(previous);
            if self.backend.delete(&old).await.is_err() {
                state.leftover.push(old);
            }
        }
        Ok(LeaseView {
            now,
            mine: self.id.clone(),
            leases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_strangers() {
        let id = "0123456789abcdef0123456789abcdef";
        let name = object_name(id, "backup", Duration::from_secs(600), 7);
        assert_eq!(
            parse_name(&name),
            Some((id.into(), "backup".into(), Duration::from_secs(600), 7))
        );
        for bad in [
            "locks/x.backup.600.1",
            "locks/0123456789abcdef0123456789abcdef.backup.600",
            "locks/0123456789abcdef0123456789abcdef.backup.600.1.2",
            "pending/0123456789abcdef0123456789abcdef.backup.600.1",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
