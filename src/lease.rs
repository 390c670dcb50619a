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
//!
//! Storage is not trusted to say who holds a lease: every object's body is
//! opened with the repository key and must repeat the kind, lifetime and
//! sequence number its name claims, so an object planted without the key
//! (`locks/<id>.backup.99999999999.0`) is ignored and reported, never
//! waited for; this build refuses to take lifetimes above [`MAX_TTL`]. A lease
//! whose holder is a process of this machine that no longer runs (same host
//! name, boot and pid namespace; its pid gone or reused) is dead at once,
//! whatever its expiry says.

use std::collections::{BTreeMap, HashMap};
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
pub(crate) const TTL_ENV: &str = "LARDER_LEASE_SECONDS";

/// The longest lease lifetime this build takes (from `LARDER_LEASE_SECONDS`).
/// A longer one in another process's lease name is honoured only if its
/// body opens with the repository key, like every lease.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

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

/// Who holds a lease, and what its object's name must say. The optional
/// fields are absent in leases written before they existed; such a lease
/// is honoured (its body still opens with the key), just never found dead.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub(crate) struct LeaseBody {
    /// User name of the holder.
    #[n(0)]
    pub user: String,
    /// Host name of the holder.
    #[n(1)]
    pub host: String,
    /// Process id of the holder.
    #[n(2)]
    pub pid: u32,
    /// Lease kind, as in the object's name.
    #[n(3)]
    pub kind: String,
    /// Lifetime in seconds, as in the object's name.
    #[n(4)]
    pub ttl_s: Option<u64>,
    /// Sequence number, as in the object's name.
    #[n(5)]
    pub seq: Option<u64>,
    /// The holder's kernel boot id (`/proc/sys/kernel/random/boot_id`).
    #[n(6)]
    pub boot_id: Option<String>,
    /// The holder's pid namespace (inode of `/proc/self/ns/pid`).
    #[n(7)]
    pub pid_ns: Option<u64>,
    /// The holder's start time in clock ticks after boot (`/proc/PID/stat`),
    /// so a reused pid is not taken for the holder.
    #[n(8)]
    pub start_ticks: Option<u64>,
}

impl LeaseBody {
    /// Whether the holder is a process of this machine (same host name,
    /// boot and pid namespace) that no longer runs. `false` whenever that
    /// cannot be told for sure.
    pub(crate) fn is_dead_here(&self) -> bool {
        let here = Holder::current();
        let (Some(boot_id), Some(pid_ns), Some(start)) =
            (&self.boot_id, self.pid_ns, self.start_ticks)
        else {
            return false;
        };
        if self.host != here.host
            || here.boot_id.as_ref() != Some(boot_id)
            || here.pid_ns != Some(pid_ns)
        {
            return false;
        }
        // The pid now belongs to a process started at another time, or no
        // process has it. `/proc` may hide other users' processes
        // (`hidepid`, `ProtectProc=`): unreadable is alive unless the
        // kernel says no such process exists.
        match process_start_ticks(self.pid) {
            Some(ticks) => ticks != start,
            None => process_is_gone(self.pid),
        }
    }
}

/// This process as a lease records it.
struct Holder {
    host: String,
    boot_id: Option<String>,
    pid_ns: Option<u64>,
}

impl Holder {
    fn current() -> Holder {
        Holder {
            host: crate::host::current_host(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            pid_ns: std::fs::read_link("/proc/self/ns/pid").ok().and_then(|l| {
                l.to_str()?
                    .strip_prefix("pid:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            }),
        }
    }
}

/// Whether no process has `pid` (signal 0 fails with ESRCH; a process
/// this user may not signal still exists).
fn process_is_gone(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

/// A process's start time in clock ticks after boot, or `None` if it does
/// not exist (or `/proc` cannot tell).
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields after its closing parenthesis start with field 3 (state);
    // the start time is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One lease as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseInfo {
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
    /// Who holds it, from its newest object that opened (`None` when that
    /// could not be read just now; the lease is then honoured as live).
    pub holder: Option<LeaseBody>,
}

impl LeaseInfo {
    /// When it expires unless refreshed.
    pub fn expires(&self) -> Timestamp {
        add(self.refreshed, self.ttl)
    }

    /// Whether it is live at storage time `now`: it is, until its expiry
    /// plus the storage's clock resolution has passed, unless its holder is
    /// a process of this machine that no longer runs.
    pub(crate) fn is_live(&self, now: Timestamp, resolution: Duration) -> bool {
        now <= add(self.expires(), resolution) && !self.is_dead_here()
    }

    /// Whether its holder is a process of this machine that no longer runs.
    pub(crate) fn is_dead_here(&self) -> bool {
        self.holder.as_ref().is_some_and(LeaseBody::is_dead_here)
    }
}

/// What a refresh saw: the storage's time and every lease.
#[derive(Clone, Debug)]
pub(crate) struct LeaseView {
    /// The storage's time of this refresh.
    pub now: Timestamp,
    /// The refreshing lease's id.
    pub mine: String,
    /// Every lease in the repository, the refreshing one included, whose
    /// objects opened with the repository key (or could not be read just
    /// now, and are honoured).
    pub leases: Vec<LeaseInfo>,
    /// Objects under `locks/` that are not leases of this repository: they
    /// do not open with its key, or their body contradicts their name.
    /// Ignored, never waited for.
    pub ignored: Vec<String>,
}

impl LeaseView {
    /// The refreshing lease.
    pub(crate) fn me(&self) -> Option<&LeaseInfo> {
        self.leases.iter().find(|l| l.id == self.mine)
    }

    /// Other leases still live.
    pub(crate) fn others_live(&self, resolution: Duration) -> impl Iterator<Item = &LeaseInfo> {
        self.leases
            .iter()
            .filter(move |l| l.id != self.mine && l.is_live(self.now, resolution))
    }
}

/// What [`Lease::remove_dead`] did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cleanup {
    /// Each lease removed, described, with why.
    pub removed: Vec<String>,
    /// Objects under `locks/` that are not leases of this repository.
    pub ignored: Vec<String>,
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
pub(crate) fn format_storage_time(t: Timestamp) -> String {
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
    if parts.next().is_some()
        || id.len() != 32
        || !id.bytes().all(|b| b.is_ascii_hexdigit())
        || ttl == 0
    {
        return None;
    }
    Some((id.into(), kind.into(), Duration::from_secs(ttl), seq))
}

/// One object under `locks/` as a listing shows it.
#[derive(Clone, Debug)]
struct LeaseObject {
    id: String,
    kind: String,
    ttl: Duration,
    seq: u64,
    name: String,
    time: Timestamp,
}

/// The lease objects of one listing of `locks/`, and the names of objects
/// there that are not lease objects (or carry no modification time).
fn parse_listing(listing: Vec<crate::backend::ObjectInfo>) -> (Vec<LeaseObject>, Vec<String>) {
    let mut objects = Vec::new();
    let mut strangers = Vec::new();
    for object in listing {
        match (parse_name(&object.name), object.modified) {
            (Some((id, kind, ttl, seq)), Some(time)) => objects.push(LeaseObject {
                id,
                kind,
                ttl,
                seq,
                name: object.name,
                time,
            }),
            _ => strangers.push(object.name),
        }
    }
    (objects, strangers)
}

/// Groups lease objects into leases. Kind and lifetime come from the
/// newest object; the start is the oldest object's time.
fn group(objects: Vec<(LeaseObject, Option<LeaseBody>)>) -> Vec<LeaseInfo> {
    let mut by_id: BTreeMap<String, Vec<(LeaseObject, Option<LeaseBody>)>> = BTreeMap::new();
    for (object, body) in objects {
        by_id
            .entry(object.id.clone())
            .or_default()
            .push((object, body));
    }
    by_id
        .into_values()
        .map(|mut objects| {
            objects.sort_by_key(|(o, _)| o.seq);
            let (newest, _) = objects.last().expect("non-empty");
            LeaseInfo {
                id: newest.id.clone(),
                kind: newest.kind.clone(),
                ttl: newest.ttl,
                start: objects
                    .iter()
                    .map(|(o, _)| o.time)
                    .min()
                    .expect("non-empty"),
                refreshed: objects
                    .iter()
                    .map(|(o, _)| o.time)
                    .max()
                    .expect("non-empty"),
                holder: objects.iter().rev().find_map(|(_, b)| b.clone()),
                objects: objects
                    .into_iter()
                    .map(|(o, _)| (o.seq, o.name, o.time))
                    .collect(),
            }
        })
        .collect()
}

/// What reading one lease object showed.
#[derive(Clone, Debug)]
enum Verdict {
    /// It opened with the repository key and agrees with its name.
    Valid(LeaseBody),
    /// It is no lease of this repository: why.
    Forged(String),
    /// Deleted since the listing (its holder renewed or released it).
    Gone,
    /// It could not be read just now: honoured, asked again next time.
    Unknown,
}

/// The lease lifetime: `LARDER_LEASE_SECONDS` or [`DEFAULT_TTL`].
pub(crate) fn configured_ttl() -> Result<Duration> {
    match std::env::var(TTL_ENV) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if (1..=MAX_TTL.as_secs()).contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(Error::InvalidArgument(format!(
                "{TTL_ENV}={v:?} is not a whole number of seconds from 1 to {}",
                MAX_TTL.as_secs()
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
    body: LeaseBody,
    /// What reading each other lease object showed, by name; forgotten
    /// once the object leaves the listing.
    verdicts: std::sync::Mutex<HashMap<String, Verdict>>,
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
    pub(crate) async fn acquire(
        backend: &Metered,
        sealer: &Sealer,
        level: i32,
        kind: LeaseKind,
    ) -> Result<Lease> {
        let ttl = configured_ttl()?;
        let here = Holder::current();
        let body = LeaseBody {
            user: crate::host::current_user(),
            host: here.host,
            pid: std::process::id(),
            kind: kind.name().into(),
            ttl_s: Some(ttl.as_secs()),
            seq: None,
            boot_id: here.boot_id,
            pid_ns: here.pid_ns,
            start_ticks: process_start_ticks(std::process::id()),
        };
        let inner = Arc::new(Inner {
            backend: backend.clone(),
            sealer: sealer.clone(),
            level,
            id: hex::encode(&crate::hash::random_bytes()[..16]),
            kind,
            ttl,
            resolution: backend.clock_resolution(),
            body,
            verdicts: std::sync::Mutex::default(),
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
    pub(crate) fn resolution(&self) -> Duration {
        self.inner.resolution
    }

    /// Renews the lease now and returns what the storage showed: its time
    /// and every lease.
    pub(crate) async fn refresh(&self) -> Result<LeaseView> {
        self.inner.refresh().await
    }

    /// Renews the lease and fails with [`Error::LeaseLapsed`] if it ever
    /// went unrenewed for longer than its lifetime. Called just before a
    /// commit.
    pub(crate) async fn confirm(&self) -> Result<LeaseView> {
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
    pub(crate) fn describe(&self, other: &LeaseInfo) -> String {
        let holder = match &other.holder {
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

    /// Renews the lease and deletes the objects of every other lease that
    /// is no longer live: expired, or held by a process of this machine
    /// that no longer runs. Says what it removed and what it ignored.
    pub(crate) async fn remove_dead(&self) -> Result<Cleanup> {
        let view = self.refresh().await?;
        let mut removed = Vec::new();
        for other in &view.leases {
            if other.id == view.mine || other.is_live(view.now, self.inner.resolution) {
                continue;
            }
            for (_, name, _) in &other.objects {
                self.inner.backend.delete(name).await?;
            }
            let why = if other.is_dead_here() {
                "its process no longer runs"
            } else {
                "expired"
            };
            removed.push(format!("{} ({why})", self.describe(other)));
        }
        Ok(Cleanup {
            removed,
            ignored: view.ignored,
        })
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
        let body = LeaseBody {
            seq: Some(seq),
            ..self.body.clone()
        };
        let plain = minicbor::to_vec(&body).expect("encoding to a Vec cannot fail");
        let sealed = with_codec(self.level, |codec| {
            self.sealer
                .seal(codec, ObjectKind::Lease, &id, &plain, true)
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

    /// Reads and judges another lease's object (see [`Verdict`]).
    async fn verify(&self, object: &LeaseObject) -> Verdict {
        if let Some(verdict) = self
            .verdicts
            .lock()
            .expect("verdict lock")
            .get(&object.name)
        {
            return verdict.clone();
        }
        let verdict = match self.backend.get(&object.name, MAX_LEASE_SIZE as u64).await {
            Ok(sealed) => self.judge(object, &sealed),
            Err(Error::NotFound { .. }) => Verdict::Gone,
            Err(e @ Error::Corrupt { .. }) => Verdict::Forged(e.to_string()),
            Err(_) => return Verdict::Unknown,
        };
        self.verdicts
            .lock()
            .expect("verdict lock")
            .insert(object.name.clone(), verdict.clone());
        verdict
    }

    fn judge(&self, object: &LeaseObject, sealed: &[u8]) -> Verdict {
        let Some(id) = aad_id(&object.id) else {
            return Verdict::Forged("not a lease id".into());
        };
        let opened = with_codec(self.level, |codec| {
            self.sealer
                .open(codec, ObjectKind::Lease, &id, sealed, MAX_LEASE_SIZE)
        });
        let Ok(plain) = opened else {
            return Verdict::Forged("does not open with the repository key".into());
        };
        let Ok(body) = minicbor::decode::<LeaseBody>(&plain) else {
            return Verdict::Forged("its body does not parse".into());
        };
        if body.kind != object.kind
            || body.ttl_s.is_some_and(|t| t != object.ttl.as_secs())
            || body.seq.is_some_and(|s| s != object.seq)
        {
            return Verdict::Forged("its body contradicts its name".into());
        }
        // No larder that records the lifetime in the body takes one above
        // the maximum; only a lease from before that (no field) may have one.
        if object.ttl > MAX_TTL && body.ttl_s.is_some() {
            return Verdict::Forged(format!(
                "its lifetime of {} s exceeds the largest larder takes ({} s)",
                object.ttl.as_secs(),
                MAX_TTL.as_secs()
            ));
        }
        Verdict::Valid(body)
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
        let (objects, strangers) = parse_listing(self.backend.list("locks/").await?);
        let listed: std::collections::HashSet<String> =
            objects.iter().map(|o| o.name.clone()).collect();
        let mut ignored: Vec<String> = strangers
            .into_iter()
            .map(|name| format!("{name}: not a lease object name"))
            .collect();
        let mut checked = Vec::with_capacity(objects.len());
        for object in objects {
            if object.id == self.id {
                checked.push((object, Some(self.body.clone())));
                continue;
            }
            match self.verify(&object).await {
                Verdict::Valid(body) => checked.push((object, Some(body))),
                Verdict::Unknown => checked.push((object, None)),
                Verdict::Gone => {}
                Verdict::Forged(why) => ignored.push(format!("{}: {why}", object.name)),
            }
        }
        self.verdicts
            .lock()
            .expect("verdict lock")
            .retain(|name, _| listed.contains(name));
        let leases = group(checked);
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
            ignored,
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
