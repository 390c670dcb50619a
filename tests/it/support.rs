//! Builders shared by the integration tests: temporary repositories (through
//! the library or the built binary), seeded data, and the real servers the
//! test command starts.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use larder::backend::{Backend, MemoryBackend};
use larder::key::KdfParams;
use larder::ops::backup::{BackupInput, BackupOptions, BackupSummary, backup};
use larder::repo::{InitOptions, Repo};
use larder::source::StreamInput;
use tempfile::TempDir;

pub const PASSWORD: &str = "correct horse battery staple";

/// KDF parameters that keep tests fast; the defaults are tested in unit tests.
pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 256,
    passes: 1,
    lanes: 1,
};

pub fn init_options() -> InitOptions {
    InitOptions {
        kdf: FAST_KDF,
        profiles: vec![],
        chunker_seed: None,
        compression_level: None,
        data_pack_size: None,
        list_fanout: None,
        host: "test-host".into(),
        user: "tester".into(),
    }
}

/// A repository reached through the library, with its storage and cache.
pub struct LibRepo {
    pub repo: Repo,
    pub backend: Arc<dyn Backend>,
    pub cache: TempDir,
}

impl LibRepo {
    /// A repository on a fresh backend.
    pub async fn init(backend: Arc<dyn Backend>, options: InitOptions) -> LibRepo {
        let cache = TempDir::new().unwrap();
        let repo = Repo::init(
            Arc::clone(&backend),
            PASSWORD.as_bytes(),
            options,
            cache.path(),
        )
        .await
        .unwrap();
        LibRepo {
            repo,
            backend,
            cache,
        }
    }

    /// Opens the same repository again (a new process, as far as state goes).
    pub async fn reopen(&self) -> larder::Result<Repo> {
        Repo::open(
            Arc::clone(&self.backend),
            PASSWORD.as_bytes(),
            self.cache.path(),
        )
        .await
    }

    pub async fn backup(&self, source: &str, data: &[u8]) -> larder::Result<BackupSummary> {
        backup_bytes(&self.repo, source, data).await
    }
}

/// An in-memory repository, and a handle on its storage for fault injection.
pub async fn memory_repo() -> (LibRepo, MemoryBackend) {
    memory_repo_with(init_options()).await
}

pub async fn memory_repo_with(options: InitOptions) -> (LibRepo, MemoryBackend) {
    let memory = MemoryBackend::new();
    let repo = LibRepo::init(Arc::new(memory.clone()), options).await;
    (repo, memory)
}

pub fn stream_options(source: &str, input: StreamInput) -> BackupOptions {
    BackupOptions {
        source: source.into(),
        input: BackupInput::Stream {
            input,
            name: "dump.sql".into(),
        },
        kind: "stream".into(),
        allow_incomplete: false,
        unpack: true,
        tags: vec![],
        host: "test-host".into(),
        time: None,
        parent: None,
        progress: Arc::default(),
    }
}

pub async fn backup_bytes(repo: &Repo, source: &str, data: &[u8]) -> larder::Result<BackupSummary> {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    backup(repo, stream_options(source, StreamInput::Reader(reader))).await
}

/// The plaintext of a snapshot's single stream.
pub async fn cat_bytes(
    repo: &Repo,
    snapshot: &larder::hash::SnapshotId,
) -> larder::Result<Vec<u8>> {
    let s = repo.snapshot(snapshot)?.expect("snapshot in catalog");
    let mut out = Vec::new();
    larder::ops::cat::cat(repo, snapshot, &s, None, &mut out).await?;
    Ok(out)
}

/// Seeded pseudo-random bytes (xorshift64), incompressible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Seeded text that looks like a whole plain SQL dump (it ends with
/// pg_dump's completion comment): compressible, with varied rows.
pub fn dump_text(rows: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * 64);
    let noise = random_bytes(rows * 8, seed);
    out.extend_from_slice(b"--\n-- PostgreSQL database dump\n--\nCOPY public.orders (id, customer, amount, note) FROM stdin;\n");
    for i in 0..rows {
        let n = u64::from_le_bytes(noise[i * 8..i * 8 + 8].try_into().unwrap());
        writeln!(
            out,
            "{i}\tcustomer-{}\t{}.{:02}\tnote {:x}",
            n % 10_000,
            n % 100_000,
            n % 100,
            n >> 40
        )
        .unwrap();
    }
    out.extend_from_slice(b"\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n");
    out
}

/// A repository used through the built `larder` binary.
pub struct CliRepo {
    pub dir: TempDir,
    pub repo: PathBuf,
    pub cache: PathBuf,
}

impl CliRepo {
    /// A fresh directory; not yet initialised.
    pub fn new() -> CliRepo {
        let dir = TempDir::new().unwrap();
        let repo = dir.path().join("repo");
        let cache = dir.path().join("cache");
        CliRepo { dir, repo, cache }
    }

    /// A fresh, initialised repository (fast KDF).
    pub fn init() -> CliRepo {
        CliRepo::init_with(&[])
    }

    /// A fresh repository initialised with `extra` flags (fast KDF).
    pub fn init_with(extra: &[&str]) -> CliRepo {
        let r = CliRepo::new();
        let mut args = vec!["init", "--kdf-memory", "1", "--kdf-passes", "1"];
        args.extend_from_slice(extra);
        assert_success(&r.run(&args));
        r
    }

    /// Forgets every snapshot of `source`.
    pub fn forget_source(&self, source: &str) {
        assert_success(&self.run(&[
            "forget",
            "--source",
            source,
            "--keep-tag",
            "no-snapshot-has-this-tag",
            "--allow-empty",
        ]));
    }

    /// Starts a command with every standard stream piped.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The objects under one prefix of the repository (`packs`, `locks`, …),
    /// sorted.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        // Temporary files of writes in flight are not objects yet.
        let mut out: Vec<PathBuf> = files_under(&self.repo.join(prefix))
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(larder::backend::local::TEMP_PREFIX))
            })
            .collect();
        out.sort();
        out
    }

    /// A `larder` command on this repository, with the test passphrase.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = larder_cmd();
        cmd.arg("--repo")
            .arg(&self.repo)
            .arg("--cache-dir")
            .arg(&self.cache)
            .env("LARDER_PASSWORD", PASSWORD)
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs with another cache directory, as another machine would.
    pub fn run_with_cache(&self, cache: &Path, args: &[&str]) -> Output {
        let mut cmd = larder_cmd();
        cmd.arg("--repo")
            .arg(&self.repo)
            .arg("--cache-dir")
            .arg(cache)
            .env("LARDER_PASSWORD", PASSWORD)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), input)
    }

    /// Backs up `input` from stdin with `--json` and returns the summary.
    pub fn backup_stdin(&self, source: &str, input: &[u8]) -> serde_json::Value {
        let out = self.run_with_input(&["backup", "--source", source, "--stdin", "--json"], input);
        assert_success(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every file under the repository directory, with its bytes.
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        files_under(&self.repo)
    }
}

/// Runs `cmd` with `input` on its standard input, collecting its output.
pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The built binary, isolated from the caller's environment.
pub fn larder_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    for var in [
        "LARDER_REPO",
        "LARDER_PASSWORD",
        "LARDER_PASSWORD_FILE",
        "LARDER_PASSWORD_COMMAND",
        "LARDER_CACHE_DIR",
        "LARDER_NEW_PASSWORD",
        "LARDER_TO_PASSWORD",
        "LARDER_FROM_PASSWORD",
        "LARDER_CONFIG",
        "LARDER_KEY_FILE",
        "LARDER_LEASE_SECONDS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Flips one byte in the middle of a file (damage made on purpose).
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

pub fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "larder failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Connection settings of the PostgreSQL server the test command started,
/// or `None` outside CI; with `CI=true` its absence fails the test.
pub fn postgres() -> Option<String> {
    server_env("LARDER_TEST_PG")
}

/// `host:port` of the Redis server the test command started (see [`postgres`]).
pub fn redis() -> Option<String> {
    server_env("LARDER_TEST_REDIS")
}

fn server_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{var} is not set but CI=true: the test command must start this server (scripts/test.sh)"
            )
        }
        _ => {
            eprintln!("{var} not set: run through scripts/test.sh to test against the real server");
            None
        }
    }
}

/// The S3 server the test command started (SeaweedFS on loopback).
#[derive(Clone, Debug)]
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The S3 server's settings, or `None` outside CI; with `CI=true` its
/// absence fails the test.
pub fn s3() -> Option<S3Server> {
    Some(S3Server {
        endpoint: server_env("LARDER_TEST_S3_ENDPOINT")?,
        bucket: std::env::var("LARDER_TEST_S3_BUCKET").unwrap(),
        access_key: std::env::var("LARDER_TEST_S3_ACCESS_KEY").unwrap(),
        secret_key: std::env::var("LARDER_TEST_S3_SECRET_KEY").unwrap(),
    })
}

impl S3Server {
    /// A repository URL under a prefix no other test uses.
    pub fn fresh_url(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let seed = nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hex: String = random_bytes(8, seed)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("s3://{}/test-{hex}", self.bucket)
    }

    /// Client settings for this server (short retry budget, so failures
    /// surface in seconds).
    pub fn settings(&self) -> larder::backend::S3Settings {
        self.settings_via(&self.endpoint)
    }

    /// Client settings for reaching this server through `endpoint` (a proxy).
    pub fn settings_via(&self, endpoint: &str) -> larder::backend::S3Settings {
        larder::backend::S3Settings {
            endpoint: Some(endpoint.to_owned()),
            region: Some("us-east-1".into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            retry_timeout: std::time::Duration::from_secs(20),
            ..larder::backend::S3Settings::default()
        }
    }

    /// A backend on a fresh prefix.
    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(larder::backend::S3Backend::new(&self.fresh_url(), self.settings()).unwrap())
    }

    /// Sets the `AWS_*` variables the binary reads for this server.
    pub fn env(&self, cmd: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT",
            "AWS_ENDPOINT_URL_S3",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_REGION", "us-east-1")
            .env("LARDER_S3_RETRY_SECONDS", "20");
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
