//! `drill`: restores a snapshot into a private temporary directory, verifies
//! it by kind with the tools that would restore it for real, and records the
//! result (passed or failed) as a `drills/<id>` object and in the catalog.
//!
//! - PostgreSQL custom and directory format: the archive's table of
//!   contents, `pg_restore --list`, and with a database URL a full restore
//!   into a scratch database (`larder_drill_<hex>`, created from
//!   `template0` and always dropped) followed by exact row counts, every
//!   `TABLE DATA` entry of the archive checked to have its table.
//!   Plain format: the trailer, and with a database URL a `psql` run into
//!   the scratch database and the same counts (`drill/postgres.rs`).
//! - Redis RDB: `redis-check-rdb`, and optionally a throwaway
//!   `redis-server` on a free loopback port that loads the file and counts
//!   its keys (`drill/redis.rs`).
//! - File trees: every YAML and JSON file parses (`drill/files.rs`).
//! - Neo4j: the dump's format check (zstd stream read to its end).
//!
//! A drill *fails* (is recorded, and the caller reports it) when the data
//! does not verify, including when the snapshot cannot be read back because
//! repository data is damaged or missing. It is an *error* (nothing is
//! recorded) when it cannot judge the data: a verifier is not installed,
//! the scratch database cannot be created, storage is unreachable.
//!
//! Verifiers run without a shell, with larder's secrets and the AWS
//! credentials removed from their environment (the PostgreSQL tools keep
//! `PGPASSWORD`/`PGPASSFILE`, which they may need to reach the scratch
//! server). An interrupt kills the running verifier; the scratch database,
//! the throwaway server and the temporary directory are removed however
//! the drill ends.

mod files;
mod postgres;
mod redis;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::RequestCounts;
use crate::error::{Error, Result};
use crate::hash::{DrillId, SnapshotId};
use crate::lease::LeaseKind;
use crate::ops::restore::{Overwrite, RestoreOptions};
use crate::progress::Progress;
use crate::read::read_file;
use crate::repo::Repo;
use crate::snapshot::{DrillRecord, Snapshot};
use crate::source::command::{tail_lines, without_secrets};

/// What to drill, and how far.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// Verify the snapshot as this kind ([`DrillKind::NAMES`]) instead of
    /// the kind it records.
    pub kind: Option<String>,
    /// A libpq connection string or URL of a PostgreSQL server where the
    /// user may create databases: PostgreSQL dumps are then restored in
    /// full into a scratch database there.
    pub database: Option<String>,
    /// Load a Redis RDB file into a throwaway `redis-server` and count its
    /// keys.
    pub redis_server: bool,
    /// The directory under which the private temporary directory is made
    /// (such as `/tmp`).
    pub scratch_parent: PathBuf,
    /// Live counters, and the interrupt that stops the drill.
    pub progress: Arc<Progress>,
}

/// What a drill found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DrillSummary {
    /// The snapshot drilled.
    #[serde(serialize_with = "crate::ops::hex_id")]
    pub snapshot_id: SnapshotId,
    /// The drill record written (`drills/<id>`).
    #[serde(serialize_with = "crate::ops::hex_id")]
    pub drill_id: DrillId,
    /// The snapshot's source.
    pub source: String,
    /// What it was verified as ([`DrillKind::name`]).
    pub kind: String,
    /// `passed` or `failed`.
    pub outcome: String,
    /// Wall time of the drill.
    pub duration_s: f64,
    /// What was checked, one line each, in order.
    pub checked: Vec<String>,
    /// Counts found (`tables`, `rows`, `keys`, `yaml_files`, …).
    pub counts: BTreeMap<String, u64>,
    /// Rows per table (`schema.table`) after a full PostgreSQL restore.
    pub tables: BTreeMap<String, u64>,
    /// Why the drill failed, or a summary of what passed.
    pub detail: String,
    /// Problems that did not decide the outcome (a scratch database that
    /// could not be dropped).
    pub warnings: Vec<String>,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
}

impl DrillSummary {
    /// Whether the drill passed.
    pub fn passed(&self) -> bool {
        self.outcome == DrillRecord::PASSED
    }
}

/// What a snapshot is verified as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrillKind {
    /// A file tree: YAML and JSON files must parse.
    Files,
    /// A PostgreSQL dump stream, custom or plain format told from its
    /// first bytes.
    Postgres,
    /// A `pg_dump -Fc` archive.
    PostgresCustom,
    /// A `pg_dump -Fd` directory, backed up as a tree.
    PostgresDirectory,
    /// A plain `pg_dump` SQL script.
    PostgresPlain,
    /// A Redis RDB file.
    RedisRdb,
    /// A Neo4j 5 dump.
    Neo4jDump,
}

impl DrillKind {
    /// The names [`DrillKind::from_name`] accepts (`redis` and `neo4j` are
    /// accepted too, for `redis-rdb` and `neo4j-dump`).
    pub const NAMES: [&str; 7] = [
        "files",
        "postgres",
        "postgres-custom",
        "postgres-directory",
        "postgres-plain",
        "redis-rdb",
        "neo4j-dump",
    ];

    /// Parses a kind name: a drill kind, a dump format (as snapshots
    /// record it) or a source kind.
    pub fn from_name(name: &str) -> Option<DrillKind> {
        Some(match name {
            "files" => DrillKind::Files,
            "postgres" => DrillKind::Postgres,
            "postgres-custom" => DrillKind::PostgresCustom,
            "postgres-directory" => DrillKind::PostgresDirectory,
            "postgres-plain" => DrillKind::PostgresPlain,
            "redis" | "redis-rdb" => DrillKind::RedisRdb,
            "neo4j" | "neo4j-dump" => DrillKind::Neo4jDump,
            _ => return None,
        })
    }

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            DrillKind::Files => "files",
            DrillKind::Postgres => "postgres",
            DrillKind::PostgresCustom => "postgres-custom",
            DrillKind::PostgresDirectory => "postgres-directory",
            DrillKind::PostgresPlain => "postgres-plain",
            DrillKind::RedisRdb => "redis-rdb",
            DrillKind::Neo4jDump => "neo4j-dump",
        }
    }

    /// What `snapshot` records itself to be: its dump format if it has
    /// one, else its source kind.
    pub(crate) fn of_snapshot(id: &SnapshotId, snapshot: &Snapshot) -> Result<DrillKind> {
        let format = snapshot
            .dump
            .as_ref()
            .map(|d| d.format.as_str())
            .filter(|f| *f != "unknown");
        format
            .and_then(DrillKind::from_name)
            .or_else(|| match snapshot.kind.as_str() {
                "stream" => None,
                kind => DrillKind::from_name(kind),
            })
            .ok_or_else(|| Error::DrillKindUnknown {
                snapshot: id.short(),
                kind: match format {
                    Some(format) => format!("{} ({format})", snapshot.kind),
                    None => snapshot.kind.clone(),
                },
            })
    }

    /// Whether the snapshot is restored as a tree (else its one stream is
    /// written to a file).
    fn is_tree(self) -> bool {
        matches!(self, DrillKind::Files | DrillKind::PostgresDirectory)
    }

    /// The programs the drill will run, each with the Debian package that
    /// has it.
    fn programs(self, options: &DrillOptions) -> Vec<(&'static str, &'static str)> {
        const PG_RESTORE: (&str, &str) = ("pg_restore", "postgresql-client");
        const PSQL: (&str, &str) = ("psql", "postgresql-client");
        let full = options.database.is_some();
        match self {
            DrillKind::Files | DrillKind::Neo4jDump => vec![],
            // Custom or plain is told once the stream is read; what that
            // needs beyond psql is looked for then.
            DrillKind::Postgres if full => vec![PSQL],
            DrillKind::Postgres => vec![],
            DrillKind::PostgresCustom | DrillKind::PostgresDirectory if full => {
                vec![PG_RESTORE, PSQL]
            }
            DrillKind::PostgresCustom | DrillKind::PostgresDirectory => vec![PG_RESTORE],
            DrillKind::PostgresPlain if full => vec![PSQL],
            DrillKind::PostgresPlain => vec![],
            DrillKind::RedisRdb if options.redis_server => vec![
                ("redis-check-rdb", "redis-tools"),
                ("redis-server", "redis-server"),
                ("redis-cli", "redis-tools"),
            ],
            DrillKind::RedisRdb => vec![("redis-check-rdb", "redis-tools")],
        }
    }
}

/// Drills snapshot `id`, records the result and returns it. `Ok` whether
/// the drill passed or failed ([`DrillSummary::passed`]); `Err` when it
/// could not judge the data (then nothing is recorded).
pub async fn drill(
    repo: &Repo,
    id: &SnapshotId,
    snapshot: &Snapshot,
    options: &DrillOptions,
) -> Result<DrillSummary> {
    let kind = match &options.kind {
        Some(name) => DrillKind::from_name(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown drill kind {name:?}; known kinds: {}",
                DrillKind::NAMES.join(", ")
            ))
        })?,
        None => DrillKind::of_snapshot(id, snapshot)?,
    };
    // Every verifier is looked for before anything is read: a missing one
    // is an error to fix, never a failed drill.
    for (program, package) in kind.programs(options) {
        require(program, package)?;
    }
    let time_ns = crate::host::now_ns();
    let started = Instant::now();
    let children = Children::default();
    {
        let children = children.clone();
        options
            .progress
            .interrupt
            .on_raise(move |_| children.kill_all());
    }
    let result = crate::ops::leased(repo, LeaseKind::Read, async move |_lease| {
        let scratch = ScratchDir::create(&options.scratch_parent)?;
        let mut findings = Findings::default();
        let outcome =
            match materialise(repo, id, snapshot, kind, &scratch, options, &mut findings).await? {
                Some((found, path)) => {
                    if found != kind {
                        for (program, package) in found.programs(options) {
                            require(program, package)?;
                        }
                    }
                    let kind = found;
                    let context = Context {
                        children: children.clone(),
                        scratch: scratch.path().to_path_buf(),
                        database: options.database.clone(),
                        redis_server: options.redis_server,
                    };
                    tokio::task::spawn_blocking(move || {
                        verify(&context, kind, &path, &mut findings).map(|()| findings)
                    })
                    .await
                    .expect("the drill's verifying task panicked")
                    .map(|found| (kind, found))?
                }
                None => (kind, findings),
            };
        drop(scratch);
        Ok(outcome)
    })
    .await;
    options.progress.interrupt.clear_hooks();
    if let Some(signal) = options.progress.interrupt.raised() {
        // An interrupted drill is no verdict on the data.
        return Err(Error::Interrupted { signal });
    }
    let (kind, findings) = result?;
    let passed = findings.failure.is_none();
    let record = DrillRecord {
        snapshot: *id,
        source: snapshot.source.clone(),
        time_ns,
        outcome: if passed {
            DrillRecord::PASSED
        } else {
            DrillRecord::FAILED
        }
        .into(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        kind: kind.name().into(),
        checked: findings.checked,
        detail: findings
            .failure
            .or(findings.summary)
            .unwrap_or_else(|| "every check passed".into()),
        counts: findings.counts,
        host: crate::host::current_host(),
        program: crate::ops::program_version(),
        tables: findings.tables,
    };
    let drill_id = repo.write_drill(&record).await?;
    // Drills other machines recorded, so this catalog answers "the last
    // drill of each source" for the whole repository.
    let mut warnings = findings.warnings;
    warnings.extend(repo.sync_drills().await?.warnings);
    Ok(DrillSummary {
        snapshot_id: *id,
        drill_id,
        source: record.source,
        kind: record.kind,
        outcome: record.outcome,
        duration_s: started.elapsed().as_secs_f64(),
        checked: record.checked,
        counts: record.counts,
        tables: record.tables,
        detail: record.detail,
        warnings,
        requests: repo.counts(),
    })
}

/// What the checks found so far. A check that fails sets `failure`; the
/// drill then stops (a tree drill still names every file that fails).
#[derive(Debug, Default)]
struct Findings {
    checked: Vec<String>,
    counts: BTreeMap<String, u64>,
    tables: BTreeMap<String, u64>,
    /// Why the drill failed.
    failure: Option<String>,
    /// A one-line summary of a drill that passed.
    summary: Option<String>,
    warnings: Vec<String>,
}

impl Findings {
    fn passed(&mut self, check: impl Into<String>) {
        self.checked.push(check.into());
    }

    /// Records a failed check; the first failure is the drill's detail.
    fn failed(&mut self, check: impl Into<String>, why: impl Into<String>) {
        let check = check.into();
        let why = why.into();
        self.checked.push(format!("{check}: FAILED"));
        if self.failure.is_none() {
            self.failure = Some(format!("{check}: {why}"));
        }
    }

    fn count(&mut self, name: &str, n: u64) {
        self.counts.insert(name.into(), n);
    }
}

/// What the verifiers need, moved onto the blocking thread they run on.
struct Context {
    children: Children,
    scratch: PathBuf,
    database: Option<String>,
    redis_server: bool,
}

/// Writes the snapshot into the scratch directory: a tree restored under
/// `tree/`, or a stream's one file as `dump`. Returns the kind to verify
/// as (a PostgreSQL stream's format told from its first bytes) and the
/// path to verify, or `None` when the snapshot could not be read back
/// (damaged or missing data: a failed drill, recorded in `findings`).
async fn materialise(
    repo: &Repo,
    id: &SnapshotId,
    snapshot: &Snapshot,
    kind: DrillKind,
    scratch: &ScratchDir,
    options: &DrillOptions,
    findings: &mut Findings,
) -> Result<Option<(DrillKind, PathBuf)>> {
    if kind.is_tree() {
        let target = scratch.path().join("tree");
        let restored = crate::ops::restore::restore(
            repo,
            snapshot,
            &RestoreOptions {
                target: target.clone(),
                overwrite: Overwrite::Never,
                include: Vec::new(),
                exclude: Vec::new(),
                progress: Arc::clone(&options.progress),
            },
        )
        .await;
        let restored = match restored {
            Ok(restored) => restored,
            Err(e) if e.is_damage() => {
                findings.failed("restore the snapshot", e.to_string());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !restored.damaged.is_empty() {
            findings.failed(
                "restore the snapshot",
                format!(
                    "{} file(s) could not be restored because their data is damaged or missing: {}",
                    restored.damaged.len(),
                    restored.damaged.join("; ")
                ),
            );
            return Ok(None);
        }
        findings.passed(format!(
            "restored {} files, {} directories, {} bytes",
            restored.files, restored.dirs, restored.bytes
        ));
        return Ok(Some((kind, target)));
    }

    let (name, node) = crate::ops::cat::find_file(repo, id, snapshot, None).await?;
    let path = scratch.path().join("dump");
    let file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("creating", &path, e))?,
    );
    // A gzip dump stored through a recipe is rebuilt to its exact bytes
    // (proving the recipe) and inflated on the way to the file, which the
    // verifiers read as the dump itself.
    let unpacked = node.recipe.is_some();
    let mut out = if unpacked {
        DumpFile::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Head::new(
            file,
        ))))
    } else {
        DumpFile::Plain(Head::new(file))
    };
    let progress = Arc::clone(&options.progress);
    let read = read_file(repo, &node, &mut |piece| {
        if let Some(signal) = progress.interrupt.raised() {
            return Err(Error::Interrupted { signal });
        }
        Progress::add(&progress.bytes_processed, piece.len() as u64);
        out.write_all(piece)
            .map_err(|e| Error::io("writing", &path, e))
    })
    .await;
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) if e.is_damage() => {
            findings.failed(format!("read {name} back"), e.to_string());
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let written = match out {
        DumpFile::Plain(head) => Ok(head),
        DumpFile::Gzip(decoder) => decoder.finish(),
    };
    let Head { inner: file, head } = match written {
        Ok(written) => written,
        Err(e) if unpacked && e.kind() != std::io::ErrorKind::StorageFull => {
            findings.failed(format!("inflate {name}"), e.to_string());
            return Ok(None);
        }
        Err(e) => return Err(Error::io("writing", &path, e)),
    };
    file.into_inner()
        .map_err(|e| Error::io("writing", &path, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io("writing", &path, e))?;
    if unpacked {
        findings.passed(format!(
            "rebuilt {name} from its recipe: the exact gzip bytes, and they inflate whole"
        ));
    }
    findings.passed(format!(
        "read {name} back: {bytes} bytes, every chunk verified"
    ));
    findings.count("bytes", bytes);
    let kind = match kind {
        DrillKind::Postgres if head.starts_with(b"PGDMP") => DrillKind::PostgresCustom,
        DrillKind::Postgres => DrillKind::PostgresPlain,
        kind => kind,
    };
    Ok(Some((kind, path)))
}

/// Where a drill writes a stream dump: as read, or inflated.
enum DumpFile {
    Plain(Head<std::io::BufWriter<std::fs::File>>),
    // Boxed: the decoder's state is several times the size of the plain
    // writer, and one value lives per drill.
    Gzip(Box<flate2::write::MultiGzDecoder<Head<std::io::BufWriter<std::fs::File>>>>),
}

impl DumpFile {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            DumpFile::Plain(w) => w.write_all(bytes),
            DumpFile::Gzip(w) => w.write_all(bytes),
        }
    }
}

/// A writer that keeps the first bytes written, to tell the format by.
struct Head<W> {
    inner: W,
    head: Vec<u8>,
}

impl<W> Head<W> {
    fn new(inner: W) -> Head<W> {
        Head {
            inner,
            head: Vec::with_capacity(16),
        }
    }
}

impl<W: Write> Write for Head<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let keep = (16 - self.head.len().min(16)).min(n);
        self.head.extend_from_slice(&buf[..keep]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs the kind's checks on what [`materialise`] wrote (blocking).
fn verify(context: &Context, kind: DrillKind, path: &Path, findings: &mut Findings) -> Result<()> {
    match kind {
        DrillKind::Files => files::verify(path, findings),
        DrillKind::Postgres | DrillKind::PostgresCustom => {
            postgres::verify_archive(context, path, false, findings)
        }
        DrillKind::PostgresDirectory => match postgres::find_directory_dump(path) {
            Some(dir) => postgres::verify_archive(context, &dir, true, findings),
            None => {
                findings.failed(
                    "find the directory-format dump",
                    "no toc.dat anywhere in the snapshot",
                );
                Ok(())
            }
        },
        DrillKind::PostgresPlain => postgres::verify_plain(context, path, findings),
        DrillKind::RedisRdb => redis::verify(context, path, findings),
        DrillKind::Neo4jDump => {
            let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
            let verdict = crate::dump::neo4j::check(std::io::BufReader::new(file))
                .map_err(|e| Error::io("reading", path, e))?;
            if verdict.complete {
                findings.passed(format!("neo4j dump format: {}", verdict.detail));
                findings.summary = Some(format!(
                    "the dump decodes to its end ({}); a load into Neo4j was not tried",
                    verdict.detail
                ));
            } else {
                findings.failed("neo4j dump format", verdict.detail);
            }
            Ok(())
        }
    }
}

/// Checks that `program` can be run, by running `program --version`.
fn require(program: &str, package: &str) -> Result<()> {
    let status = verifier_command(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| spawn_error(program, package, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::DrillSetup {
            what: format!("run {program}"),
            reason: crate::source::command::describe_status(
                &format!("{program} --version"),
                status,
            ),
            output_tail: String::new(),
        })
    }
}

/// The Debian package of each verifier, for the message when it is missing.
fn package_of(program: &str) -> &'static str {
    match program {
        "pg_restore" | "psql" => "postgresql-client",
        "redis-server" => "redis-server",
        "redis-check-rdb" | "redis-cli" => "redis-tools",
        _ => "that provides it",
    }
}

fn spawn_error(program: &str, package: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::VerifierMissing {
            program: program.into(),
            package: package.into(),
        }
    } else {
        Error::DrillSetup {
            what: format!("run {program}"),
            reason: e.to_string(),
            output_tail: String::new(),
        }
    }
}

/// A command for a verifier: no shell, and none of larder's secrets or
/// the storage credentials in its environment. (libpq's own variables,
/// such as `PGPASSWORD` and `PGPASSFILE`, stay: the PostgreSQL tools may
/// need them to reach the server named for the drill.)
fn verifier_command(program: &str) -> Command {
    let mut command = without_secrets(program);
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
    ] {
        command.env_remove(name);
    }
    command
}

/// The verifier processes running now, killed when the drill is
/// interrupted. Each child is held, unreaped, until it has been waited for
/// under the lock, so a kill never reaches a reused pid.
#[derive(Clone, Default)]
struct Children(Arc<Mutex<Vec<Arc<Mutex<Child>>>>>);

impl Children {
    fn add(&self, child: &Arc<Mutex<Child>>) {
        self.0
            .lock()
            .expect("children lock")
            .push(Arc::clone(child));
    }

    fn remove(&self, child: &Arc<Mutex<Child>>) {
        self.0
            .lock()
            .expect("children lock")
            .retain(|c| !Arc::ptr_eq(c, child));
    }

    fn kill_all(&self) {
        for child in self.0.lock().expect("children lock").iter() {
            // std refuses to signal a child it has already reaped.
            let _ = child.lock().expect("child lock").kill();
        }
    }
}

/// Runs a verifier to its end, capturing its output; it is killed if the
/// drill is interrupted meanwhile.
fn run(children: &Children, mut command: Command) -> Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(&program, package_of(&program), e))?;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let child = Arc::new(Mutex::new(child));
    children.add(&child);
    let status = wait(&child);
    children.remove(&child);
    let status = status.map_err(|e| Error::DrillSetup {
        what: format!("wait for {program}"),
        reason: e.to_string(),
        output_tail: String::new(),
    })?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Waits for `child` without holding its lock across the wait, so that an
/// interrupt can kill it meanwhile.
fn wait(child: &Mutex<Child>) -> std::io::Result<ExitStatus> {
    loop {
        if let Some(status) = child.lock().expect("child lock").try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of a verifier's output (standard error, then standard output),
/// for a failure's detail.
fn output_tail(output: &Output) -> String {
    let mut bytes = output.stderr.clone();
    if bytes.is_empty() {
        bytes.extend_from_slice(&output.stdout);
    }
    tail_lines(&bytes)
}

/// How a verifier ended and what it said last, for a failure's detail.
fn describe_failure(program: &str, output: &Output) -> String {
    let tail = output_tail(output);
    let status = crate::source::command::describe_status(program, output.status);
    if tail.trim().is_empty() {
        status
    } else {
        format!("{status}: {}", tail.trim_end())
    }
}

/// A private directory (mode 0700) for the restored data, removed with
/// everything in it when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create(parent: &Path) -> Result<ScratchDir> {
        let name = format!(
            "larder-drill-{}",
            hex::encode(&crate::hash::random_bytes()[..8])
        );
        let path = parent.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io("creating", &path, e))?;
        // The umask may have narrowed the mode further, never widened it;
        // set it exactly so tools run as this user can use it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("restricting", &path, e))?;
        Ok(ScratchDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.path).is_ok() {
            return;
        }
        // A restored directory may be read-only (its stored mode): open
        // every directory up to its owner, then try again.
        for entry in walkdir::WalkDir::new(&self.path)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if entry.file_type().is_dir() {
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::BlobId;
    use crate::snapshot::DumpRecord;

    fn snapshot(kind: &str, format: Option<&str>) -> Snapshot {
        Snapshot {
            time_ns: 0,
            source: "s".into(),
            host: "h".into(),
            tags: vec![],
            kind: kind.into(),
            root: BlobId([0; 32]),
            parent: None,
            paths: vec![],
            command: None,
            summary: Default::default(),
            program: String::new(),
            user: String::new(),
            copied_from: None,
            dump: format.map(|f| DumpRecord {
                format: f.into(),
                complete: true,
                checked: true,
                detail: String::new(),
            }),
        }
    }

    #[test]
    fn the_kind_comes_from_the_dump_format_then_the_source_kind() {
        let id = SnapshotId([7; 32]);
        let of = |kind, format| DrillKind::of_snapshot(&id, &snapshot(kind, format));
        assert_eq!(
            of("postgres", Some("postgres-plain")).unwrap(),
            DrillKind::PostgresPlain
        );
        assert_eq!(
            of("postgres", Some("postgres-directory")).unwrap(),
            DrillKind::PostgresDirectory
        );
        assert_eq!(of("postgres", None).unwrap(), DrillKind::Postgres);
        assert_eq!(of("redis", Some("redis-rdb")).unwrap(), DrillKind::RedisRdb);
        assert_eq!(of("files", None).unwrap(), DrillKind::Files);
        assert_eq!(of("neo4j", Some("unknown")).unwrap(), DrillKind::Neo4jDump);
        assert!(matches!(
            of("stream", None).unwrap_err(),
            Error::DrillKindUnknown { .. }
        ));
        for name in DrillKind::NAMES {
            assert_eq!(DrillKind::from_name(name).unwrap().name(), name);
        }
    }

    #[test]
    fn a_scratch_directory_is_private_and_removed_even_when_read_only_inside() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = ScratchDir::create(parent.path()).unwrap();
        let path = scratch.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let locked = path.join("a/b");
        std::fs::create_dir_all(&locked).unwrap();
        std::fs::write(locked.join("f"), b"x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        drop(scratch);
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        let e = require("larder-no-such-verifier", "some-package").unwrap_err();
        assert!(
            matches!(&e, Error::VerifierMissing { program, package }
                if program == "larder-no-such-verifier" && package == "some-package"),
            "{e}"
        );
    }
}
