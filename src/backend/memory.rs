//! An in-memory backend for tests, able to inject faults.
//!
//! Every call is numbered from 0 in the order it reaches the backend. A fault
//! plan decides, per call, whether it proceeds, fails, or (for puts) stores
//! a truncated body while reporting success, the way a lying storage would.
//! [`MemoryBackend::crash_after`] models a process or machine that dies after
//! its Nth request: every later call fails and nothing more is stored.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, ObjectInfo, Put, validate_name};
use crate::error::{Error, Result};

/// A request as the fault plan sees it.
#[derive(Clone, Debug)]
pub enum Op {
    /// `put_if_absent` of `len` bytes.
    Put {
        /// Object name.
        name: String,
        /// Body length.
        len: usize,
    },
    /// `get`.
    Get {
        /// Object name.
        name: String,
    },
    /// `get_range`.
    GetRange {
        /// Object name.
        name: String,
    },
    /// `list`.
    List {
        /// Prefix.
        prefix: String,
    },
    /// `delete`.
    Delete {
        /// Object name.
        name: String,
    },
}

impl Op {
    /// The object name or prefix the request is about.
    pub fn name(&self) -> &str {
        match self {
            Op::Put { name, .. }
            | Op::Get { name }
            | Op::GetRange { name }
            | Op::Delete { name } => name,
            Op::List { prefix } => prefix,
        }
    }
}

/// What the fault plan does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Carry out the request.
    Proceed,
    /// Fail it with a storage error, storing nothing.
    Fail,
    /// Fail it as a full disk would (`ENOSPC`).
    NoSpace,
    /// Store only the first `n` bytes of a put but report success.
    Truncate(usize),
}

type Plan = Box<dyn FnMut(u64, &Op) -> Fault + Send>;

/// Objects kept in memory; see the module docs.
#[derive(Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

struct State {
    objects: BTreeMap<String, (Bytes, u64)>,
    calls: u64,
    clock: u64,
    plan: Option<Plan>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock().expect("memory backend lock");
        write!(f, "MemoryBackend({} objects)", state.objects.len())
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty, fault-free backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend {
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                calls: 0,
                // 2026-01-01T00:00:00Z in nanoseconds; every write ticks it.
                clock: 1_767_225_600_000_000_000,
                plan: None,
            })),
        }
    }

    /// Installs a fault plan, called with each request's number and kind.
    /// Numbering restarts at 0.
    pub fn set_faults(&self, plan: impl FnMut(u64, &Op) -> Fault + Send + 'static) {
        let mut state = self.state.lock().expect("memory backend lock");
        state.calls = 0;
        state.plan = Some(Box::new(plan));
    }

    /// Every request after the first `n` (counted from now) fails.
    pub fn crash_after(&self, n: u64) {
        self.set_faults(move |i, _| if i >= n { Fault::Fail } else { Fault::Proceed });
    }

    /// Removes any fault plan.
    pub fn heal(&self) {
        self.state.lock().expect("memory backend lock").plan = None;
    }

    /// Moves the storage clock forward, as if `by` had passed (to expire
    /// leases in tests without waiting).
    pub fn advance_clock(&self, by: std::time::Duration) {
        let mut state = self.state.lock().expect("memory backend lock");
        state.clock += u64::try_from(by.as_nanos()).unwrap_or(u64::MAX / 2);
    }

    /// Requests made since the plan was last set.
    pub fn calls(&self) -> u64 {
        self.state.lock().expect("memory backend lock").calls
    }

    /// A copy of every object, for comparing states in tests.
    pub fn snapshot(&self) -> BTreeMap<String, Bytes> {
        let state = self.state.lock().expect("memory backend lock");
        state
            .objects
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Replaces an object's bytes directly, bypassing the contract (to damage
    /// a repository on purpose).
    pub fn overwrite(&self, name: &str, data: Bytes) {
        let mut state = self.state.lock().expect("memory backend lock");
        state.clock += 1_000;
        let clock = state.clock;
        state.objects.insert(name.to_string(), (data, clock));
    }

    /// Removes an object directly, bypassing faults.
    pub fn remove(&self, name: &str) {
        self.state
            .lock()
            .expect("memory backend lock")
            .objects
            .remove(name);
    }

    fn admit(&self, op: &Op) -> Result<Fault> {
        validate_name(op.name().trim_end_matches('/'))?;
        let mut state = self.state.lock().expect("memory backend lock");
        let n = state.calls;
        state.calls += 1;
        let fault = match state.plan.as_mut() {
            Some(plan) => plan(n, op),
            None => Fault::Proceed,
        };
        let kind = match op {
            Op::Put { .. } => "put",
            Op::Get { .. } | Op::GetRange { .. } => "get",
            Op::List { .. } => "list",
            Op::Delete { .. } => "delete",
        };
        match fault {
            Fault::Fail => Err(Error::Backend {
                op: kind,
                object: op.name().to_string(),
                source: "injected storage failure".into(),
            }),
            Fault::NoSpace => Err(Error::Backend {
                op: kind,
                object: op.name().to_string(),
                source: Box::new(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            }),
            other => Ok(other),
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    async fn create_root(&self) -> Result<()> {
        if self
            .state
            .lock()
            .expect("memory backend lock")
            .objects
            .is_empty()
        {
            Ok(())
        } else {
            Err(Error::AlreadyInitialised {
                location: "memory".into(),
            })
        }
    }

    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Put> {
        let fault = self.admit(&Op::Put {
            name: name.into(),
            len: data.len(),
        })?;
        let data = match fault {
            Fault::Truncate(n) => data.slice(..n.min(data.len())),
            _ => data,
        };
        let mut state = self.state.lock().expect("memory backend lock");
        if state.objects.contains_key(name) {
            return Ok(Put::Existed);
        }
        state.clock += 1_000;
        let clock = state.clock;
        state.objects.insert(name.to_string(), (data, clock));
        Ok(Put::Created)
    }

    async fn get(&self, name: &str, max_size: u64) -> Result<Bytes> {
        self.admit(&Op::Get { name: name.into() })?;
        let state = self.state.lock().expect("memory backend lock");
        let (bytes, _) = state.objects.get(name).ok_or_else(|| Error::NotFound {
            object: name.into(),
        })?;
        if bytes.len() as u64 > max_size {
            return Err(super::too_large(name, bytes.len() as u64, max_size));
        }
        Ok(bytes.clone())
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        self.admit(&Op::GetRange { name: name.into() })?;
        let state = self.state.lock().expect("memory backend lock");
        let (bytes, _) = state.objects.get(name).ok_or_else(|| Error::NotFound {
            object: name.into(),
        })?;
        if range.start > range.end || range.end > bytes.len() as u64 {
            return Err(Error::corrupt(
                name,
                format!(
                    "is shorter than expected: bytes {}..{} not present in {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.slice(range.start as usize..range.end as usize))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.admit(&Op::List {
            prefix: prefix.into(),
        })?;
        let state = self.state.lock().expect("memory backend lock");
        Ok(state
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, clock))| ObjectInfo {
                name: k.clone(),
                size: v.len() as u64,
                modified: jiff::Timestamp::from_nanosecond(i128::from(*clock)).ok(),
            })
            .collect())
    }

    fn clock_resolution(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.admit(&Op::Delete { name: name.into() })?;
        self.state
            .lock()
            .expect("memory backend lock")
            .objects
            .remove(name);
        Ok(())
    }
}
