//! A wrapper that counts requests and bytes, so every command can report
//! what it cost in storage requests.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, ObjectInfo, Put};
use crate::error::Result;

/// Requests made and bytes moved, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// GET requests, whole or ranged.
    pub get: u64,
    /// PUT requests.
    pub put: u64,
    /// LIST requests (pages, where the storage pages its listings).
    pub list: u64,
    /// DELETE requests.
    pub delete: u64,
    /// Bytes sent in PUT bodies.
    pub bytes_up: u64,
    /// Bytes received in GET bodies.
    pub bytes_down: u64,
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;

    fn sub(self, rhs: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get - rhs.get,
            put: self.put - rhs.put,
            list: self.list - rhs.list,
            delete: self.delete - rhs.delete,
            bytes_up: self.bytes_up - rhs.bytes_up,
            bytes_down: self.bytes_down - rhs.bytes_down,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// Counts every request that passes through to the inner backend, including
/// failed ones.
#[derive(Debug, Clone)]
pub struct Metered {
    inner: Arc<dyn Backend>,
    counters: Arc<Counters>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Metered {
        Metered {
            inner,
            counters: Arc::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counters;
        RequestCounts {
            get: c.get.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }
}

#[async_trait]
impl Backend for Metered {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn create_root(&self) -> Result<()> {
        self.inner.create_root().await
    }

    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Put> {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.inner.put_if_absent(name, data).await
    }

    async fn get(&self, name: &str, max_size: u64) -> Result<Bytes> {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        let bytes = self.inner.get(name, max_size).await?;
        self.counters
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        let bytes = self.inner.get_range(name, range).await?;
        self.counters
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let result = self.inner.list(prefix).await;
        let pages = match &result {
            Ok(objects) => self.inner.list_requests(objects.len()),
            Err(_) => 1,
        };
        self.counters.list.fetch_add(pages, Ordering::Relaxed);
        result
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.counters.delete.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(name).await
    }

    fn list_requests(&self, objects: usize) -> u64 {
        self.inner.list_requests(objects)
    }

    fn upload_concurrency(&self) -> usize {
        self.inner.upload_concurrency()
    }

    fn clock_resolution(&self) -> std::time::Duration {
        self.inner.clock_resolution()
    }
}
