//! A repository in an S3 bucket (or any S3-compatible store), through the
//! `object_store` crate's S3 client.
//!
//! `s3://bucket/prefix` names the repository; every object lives at
//! `prefix/<name>`. Credentials, region and endpoint come from the standard
//! `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …). Plain HTTP is
//! allowed only when the endpoint itself starts with `http://`. Requests are
//! path-style (`endpoint/bucket/key`) unless
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true` asks for `bucket.endpoint/key`.
//!
//! # Requests and failures
//!
//! - Every upload carries an `x-amz-checksum-sha256` and a signed payload
//!   hash, so a body damaged on the way is refused by the server rather than
//!   stored.
//! - The client retries 5xx, 429/SlowDown, timeouts and connection resets
//!   with exponential backoff and jitter, for at most
//!   [`S3Settings::retry_timeout`] per request. Nothing above it retries an
//!   integrity failure: bytes are authenticated after the GET, and a damaged
//!   object stays an error.
//! - [`Backend::put_if_absent`] is a conditional PUT (`If-None-Match: *`).
//!   A conditional PUT that failed in transit (a reset or timeout after the
//!   body was sent) may or may not have been stored, so it is retried here,
//!   and an "already exists" is resolved by reading the object back: if it
//!   holds exactly our bytes (an earlier attempt of ours landed before its
//!   answer was lost) the call reports [`Put::Created`]. Packs skip the
//!   read: their names are the hash of their bytes.
//! - Packs larger than [`S3Settings::multipart_threshold`] go up as a
//!   multipart upload, which S3 cannot make conditional. Pack names are the
//!   BLAKE3 hash of their bytes, so a racing writer can only ever store the
//!   same bytes; larder checks with a HEAD first and never multipart-uploads
//!   any other kind of object.

use std::ops::Range;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::try_join_all;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use super::{Backend, ObjectInfo, Put, validate_name};
use crate::error::{Error, Result};

/// Objects S3 returns per LIST page.
pub(crate) const LIST_PAGE: usize = 1000;

/// Tunables of the S3 client; [`S3Settings::from_env`] reads the `LARDER_S3_*`
/// overrides, and explicit values win over the `AWS_*` environment.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// Endpoint URL (`AWS_ENDPOINT_URL` when `None`).
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Access key id (`AWS_ACCESS_KEY_ID` when `None`).
    pub access_key_id: Option<String>,
    /// Secret access key (`AWS_SECRET_ACCESS_KEY` when `None`).
    pub secret_access_key: Option<String>,
    /// How long one request may keep being retried before it fails
    /// (`LARDER_S3_RETRY_SECONDS`, default 120).
    pub retry_timeout: Duration,
    /// How long one attempt may take from connect to the end of the body
    /// (`LARDER_S3_TIMEOUT_SECONDS`, default 300). A response that stops
    /// sending for a quarter of this (at most 60 s) is abandoned sooner.
    pub request_timeout: Duration,
    /// Packs above this size are uploaded in parts (default 32 MiB).
    pub multipart_threshold: usize,
    /// Size of each part (default 16 MiB; S3's minimum is 5 MiB).
    pub part_size: usize,
    /// Parts of one pack uploaded at once (default 4).
    pub part_concurrency: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(300),
            multipart_threshold: 32 << 20,
            part_size: 16 << 20,
            part_concurrency: 4,
        }
    }
}

impl S3Settings {
    /// Defaults with the `LARDER_S3_RETRY_SECONDS` and
    /// `LARDER_S3_TIMEOUT_SECONDS` overrides applied.
    pub(crate) fn from_env() -> Result<S3Settings> {
        let mut settings = S3Settings::default();
        if let Some(secs) = env_seconds("LARDER_S3_RETRY_SECONDS")? {
            settings.retry_timeout = secs;
        }
        if let Some(secs) = env_seconds("LARDER_S3_TIMEOUT_SECONDS")? {
            settings.request_timeout = secs;
        }
        Ok(settings)
    }
}

fn env_seconds(var: &str) -> Result<Option<Duration>> {
    match std::env::var(var) {
        Ok(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Some(Duration::from_secs_f64(s)))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{var}={value:?} is not a positive number of seconds"
                ))
            }),
        Err(_) => Ok(None),
    }
}

/// An S3 bucket (and prefix) backend.
#[derive(Debug)]
pub struct S3Backend {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    settings: S3Settings,
}

impl S3Backend {
    /// A backend for `url` (`s3://bucket[/prefix]`), configured from the
    /// environment.
    pub(crate) fn from_url(url: &str) -> Result<S3Backend> {
        S3Backend::new(url, S3Settings::from_env()?)
    }

    /// A backend for `url` with explicit settings (unset fields fall back to
    /// the `AWS_*` environment).
    pub fn new(url: &str, settings: S3Settings) -> Result<S3Backend> {
        let (bucket, prefix) = parse_url(url)?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .filter(|e| !e.is_empty());
        // HTTP only where the endpoint itself says so.
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
        let read_timeout = (settings.request_timeout / 4).min(Duration::from_secs(60));
        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(10).min(settings.request_timeout))
            .with_timeout(settings.request_timeout)
            .with_read_timeout(read_timeout)
            .with_user_agent(http_header(concat!("larder/", env!("CARGO_PKG_VERSION"))));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: 10,
            retry_timeout: settings.retry_timeout,
        };
        let store = builder
            .with_client_options(client)
            .with_retry(retry)
            .with_checksum_algorithm(Checksum::SHA256)
            .build()
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot set up S3 access for {url}: {e}"))
            })?;
        Ok(S3Backend {
            store,
            bucket,
            prefix,
            endpoint,
            settings,
        })
    }

    fn path(&self, name: &str) -> Result<StorePath> {
        validate_name(name)?;
        self.full(name)
    }

    fn full(&self, name: &str) -> Result<StorePath> {
        let key = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        };
        StorePath::parse(&key)
            .map_err(|e| Error::InvalidArgument(format!("{key:?} is not a valid S3 key: {e}")))
    }

    /// `name` relative to the repository prefix.
    fn relative<'a>(&self, key: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    async fn conditional_put(&self, name: &str, path: &StorePath, data: Bytes) -> Result<Put> {
        let started = Instant::now();
        let mut ambiguous = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(path, PutPayload::from_bytes(data.clone()), options)
                .await
            {
                Ok(_) => return Ok(Put::Created),
                Err(object_store::Error::AlreadyExists { .. })
                    if name.starts_with("packs/") && !ambiguous =>
                {
                    // Named by the hash of its bytes: whoever stored it
                    // stored these bytes.
                    return Ok(Put::Existed);
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    // An earlier attempt, ours or the client's own retry
                    // after a 5xx, may have landed: the object is ours if it
                    // holds exactly our bytes.
                    return match self.get(name, data.len() as u64).await {
                        Ok(stored) if stored == data => Ok(Put::Created),
                        Ok(_) | Err(Error::Corrupt { .. }) => Ok(Put::Existed),
                        Err(e) => Err(e),
                    };
                }
                Err(e)
                    if in_transit(&e)
                        && attempt < 5
                        && started.elapsed() < self.settings.retry_timeout =>
                {
                    ambiguous = true;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(storage_error("put", name, e)),
            }
        }
    }

    async fn multipart_put(&self, name: &str, path: &StorePath, data: Bytes) -> Result<Put> {
        match self.store.head(path).await {
            Ok(_) => return Ok(Put::Existed),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage_error("head", name, e)),
        }
        let mut upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| storage_error("put", name, e))?;
        let part_size = self.settings.part_size.max(5 << 20);
        let mut parts = (0..data.len())
            .step_by(part_size)
            .map(|start| data.slice(start..(start + part_size).min(data.len())));
        let result: std::result::Result<(), object_store::Error> = async {
            loop {
                let batch: Vec<_> = parts
                    .by_ref()
                    .take(self.settings.part_concurrency.max(1))
                    .map(|part| upload.put_part(PutPayload::from_bytes(part)))
                    .collect();
                if batch.is_empty() {
                    break;
                }
                try_join_all(batch).await?;
            }
            upload.complete().await.map(drop)
        }
        .await;
        match result {
            Ok(()) => Ok(Put::Created),
            Err(e) => {
                // Best effort: an abandoned upload costs storage until the
                // bucket's lifecycle rule removes it.
                let _ = upload.abort().await;
                Err(storage_error("put", name, e))
            }
        }
    }
}

/// Splits `s3://bucket/prefix/` into the bucket and `prefix` (no slashes at
/// either end).
fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        Error::InvalidArgument(format!("{url:?} is not an s3://bucket/prefix URL"))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(Error::InvalidArgument(format!(
            "{url:?}: {bucket:?} is not a valid S3 bucket name"
        )));
    }
    if prefix.split('/').any(|c| c == "." || c == "..")
        || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
    {
        return Err(Error::InvalidArgument(format!(
            "{url:?}: the prefix {prefix:?} has empty, `.` or `..` components"
        )));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

fn http_header(value: &str) -> object_store::HeaderValue {
    object_store::HeaderValue::from_str(value).expect("ASCII header value")
}

/// True when the request failed on the wire (reset, timeout, interrupted
/// body) rather than with an answer from the server.
fn in_transit(error: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
                    | HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Unknown
            );
        }
        source = e.source();
    }
    false
}

fn storage_error(op: &'static str, name: &str, error: object_store::Error) -> Error {
    match error {
        object_store::Error::NotFound { .. } => Error::NotFound {
            object: name.to_owned(),
        },
        other => Error::Backend {
            op,
            object: name.to_owned(),
            source: Box::new(other),
        },
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        let mut location = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            location.push('/');
            location.push_str(&self.prefix);
        }
        if let Some(endpoint) = &self.endpoint {
            location.push_str(" at ");
            location.push_str(endpoint.trim_end_matches('/'));
        }
        location
    }

    async fn create_root(&self) -> Result<()> {
        // There are no directories to make; the prefix must be empty.
        let prefix = (!self.prefix.is_empty())
            .then(|| StorePath::parse(&self.prefix))
            .transpose()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut listing = self.store.list(prefix.as_ref());
        match listing.try_next().await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(Error::AlreadyInitialised {
                location: self.location(),
            }),
            Err(e) => Err(storage_error("list", &self.prefix, e)),
        }
    }

    async fn put_if_absent(&self, name: &str, data: Bytes) -> Result<Put> {
        let path = self.path(name)?;
        if name.starts_with("packs/") && data.len() > self.settings.multipart_threshold {
            self.multipart_put(name, &path, data).await
        } else {
            self.conditional_put(name, &path, data).await
        }
    }

    async fn get(&self, name: &str, max_size: u64) -> Result<Bytes> {
        let path = self.path(name)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| storage_error("get", name, e))?;
        // The size comes from the response headers, before any of the body
        // is read; dropping the stream closes the connection.
        if result.meta.size > max_size {
            return Err(super::too_large(name, result.meta.size, max_size));
        }
        let mut bytes = Vec::with_capacity(result.meta.size as usize);
        let mut body = result.into_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| storage_error("get", name, e))?;
            if (bytes.len() + piece.len()) as u64 > max_size {
                return Err(super::too_large(
                    name,
                    (bytes.len() + piece.len()) as u64,
                    max_size,
                ));
            }
            bytes.extend_from_slice(&piece);
        }
        Ok(Bytes::from(bytes))
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(name)?;
        let want = range.end.saturating_sub(range.start);
        let bytes = self
            .store
            .get_range(&path, range.clone())
            .await
            .map_err(|e| storage_error("get", name, e))?;
        if bytes.len() as u64 != want {
            return Err(Error::Backend {
                op: "get",
                object: name.to_owned(),
                source: format!(
                    "asked for bytes {}..{} and got {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                )
                .into(),
            });
        }
        Ok(bytes)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = prefix.trim_end_matches('/');
        validate_name(dir)?;
        let path = self.full(dir)?;
        // object_store retries a failed request, but not a page whose body
        // broke off mid-way; a listing is idempotent, so start it again.
        let started = Instant::now();
        let mut attempt = 0;
        let metas: Vec<_> = loop {
            match self.store.list(Some(&path)).try_collect().await {
                Ok(metas) => break metas,
                Err(e)
                    if in_transit(&e)
                        && attempt < 5
                        && started.elapsed() < self.settings.retry_timeout =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(storage_error("list", prefix, e)),
            }
        };
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let key = meta.location.as_ref();
            let Some(name) = self.relative(key).filter(|n| validate_name(n).is_ok()) else {
                // Not ours (an odd key someone put under the prefix).
                continue;
            };
            out.push(ObjectInfo {
                name: name.to_owned(),
                size: meta.size,
                modified: jiff::Timestamp::new(
                    meta.last_modified.timestamp(),
                    meta.last_modified.timestamp_subsec_nanos() as i32,
                )
                .ok(),
            });
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error("delete", name, e)),
        }
    }

    fn list_requests(&self, objects: usize) -> u64 {
        objects.div_ceil(LIST_PAGE).max(1) as u64
    }

    fn upload_concurrency(&self) -> usize {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        let ok = |url: &str| parse_url(url).unwrap();
        assert_eq!(ok("s3://bucket"), ("bucket".into(), "".into()));
        assert_eq!(ok("s3://bucket/"), ("bucket".into(), "".into()));
        assert_eq!(
            ok("s3://my.bucket/a/b/"),
            ("my.bucket".into(), "a/b".into())
        );
        for bad in [
            "s3://",
            "s3://B",
            "s3://ab",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "http://bucket",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_map_to_names_under_the_prefix() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: Some("a".into()),
            secret_access_key: Some("b".into()),
            ..S3Settings::default()
        };
        let b = S3Backend::new("s3://bucket/repo/one", settings.clone()).unwrap();
        assert_eq!(b.path("keys/ab").unwrap().as_ref(), "repo/one/keys/ab");
        assert_eq!(b.relative("repo/one/keys/ab"), Some("keys/ab"));
        assert_eq!(b.relative("repo/oneother/x"), None);
        assert!(b.path("../x").is_err());
        assert_eq!(b.location(), "s3://bucket/repo/one at http://127.0.0.1:1");
        let root = S3Backend::new("s3://bucket", settings).unwrap();
        assert_eq!(root.path("config").unwrap().as_ref(), "config");
    }

    #[test]
    fn list_requests_count_pages() {
        let settings = S3Settings {
            endpoint: Some("https://s3.example".into()),
            access_key_id: Some("a".into()),
            secret_access_key: Some("b".into()),
            ..S3Settings::default()
        };
        let b = S3Backend::new("s3://bucket", settings).unwrap();
        assert_eq!(b.list_requests(0), 1);
        assert_eq!(b.list_requests(1000), 1);
        assert_eq!(b.list_requests(1001), 2);
    }
}
