//! `backup`: the write path wired into a pipeline.
//!
//! ```text
//! reader thread ──► chunk workers ──► coordinator ──► BlobWriter (seal workers ─► packer ─► uploader ─► index)
//! (source, 4 MiB     FastCDC from     in stream order:
//!  blocks)           each block's     stitches blocks,
//!                    start, keyed     dedups, builds
//!                    BLAKE3           content lists
//! ```
//!
//! A stream is chunked on every core with the cut points sequential
//! chunking would give ([`crate::chunker::Stitcher`]); file trees chunk
//! each file on the thread reading it ([`tree`]).
//!
//! Every stage is joined to the next by a bounded channel, so peak memory
//! is flat whatever the input size; CPU stages run one thread per core.
//! Commit order: packs, then the index objects naming them, then the
//! snapshot object (the commit point). A source that fails writes no
//! snapshot, and the first real cause (not a downstream "cancelled") is the
//! error reported. The storing half, from `BlobWriter` on, is
//! [`crate::write`], shared with `copy`.

pub mod tree;

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};

pub use tree::TreeInput;

use crate::backend::RequestCounts;
use crate::catalog::SnapshotFilter;
use crate::chunker::{Blocks, Chunker, Speculative, Stitcher};
use crate::config::STREAM_PROFILE;
use crate::error::{Error, Result};
use crate::hash::{BlobHasher, BlobId, SnapshotId};
use crate::host::{current_user, now_ns};
use crate::lease::LeaseKind;
use crate::progress::Progress;
use crate::recipe::{GZIP, GZIP_MAGIC, Integrity, Recipe, Unpacked};
use crate::repo::Repo;
use crate::seal::ObjectKind;
use crate::snapshot::{
    CommandRecord, Content, ContentBuilder, ContentRef, DumpRecord, Node, Snapshot,
    SnapshotSummary, Tree,
};
use crate::source::{RunningCommand, StreamInput};
use crate::write::{Abort, BlobWriter, spawn_thread};

/// What to back up and how to label it.
#[derive(Debug)]
pub struct BackupOptions {
    /// The `--source` name.
    pub source: String,
    /// What to read.
    pub input: BackupInput,
    /// Source kind: for streams one of [`crate::dump::Kind::NAMES`]
    /// (`auto` records the kind found), `files` for trees. Dumps of a
    /// known kind are checked for completeness as they are read.
    pub kind: String,
    /// Store a dump that fails its completeness check anyway, tagged
    /// [`crate::dump::INCOMPLETE_TAG`], instead of failing the backup.
    pub allow_incomplete: bool,
    /// Unpack gzip streams before chunking and store the recipe that
    /// rebuilds their exact bytes (see [`crate::recipe`]), in repositories
    /// of format 2 on; otherwise compressed input is stored as it comes.
    pub unpack: bool,
    /// Labels.
    pub tags: Vec<String>,
    /// Host recorded with the snapshot.
    pub host: String,
    /// Snapshot time; now if `None` (set it to import old dumps).
    pub time: Option<jiff::Timestamp>,
    /// The snapshot to compare a tree with; by default the latest snapshot
    /// of the same source and host.
    pub parent: Option<SnapshotId>,
    /// Live counters.
    pub progress: Arc<Progress>,
}

/// The data of a backup.
#[derive(Debug)]
pub enum BackupInput {
    /// One stream, stored as one file named `name`.
    Stream {
        /// Where the bytes come from.
        input: StreamInput,
        /// The file name inside the snapshot.
        name: String,
    },
    /// File trees.
    Tree(TreeInput),
}

/// What a backup did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackupSummary {
    /// The new snapshot.
    #[serde(serialize_with = "crate::ops::hex_id")]
    pub snapshot_id: SnapshotId,
    /// The snapshot compared against, if any.
    pub parent: Option<SnapshotId>,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Total size of the snapshot's content (files read or reused).
    pub total_bytes: u64,
    /// Stored bytes this run added (packs, index objects, snapshot object).
    pub bytes_added: u64,
    /// Blobs stored new.
    pub blobs_new: u64,
    /// Blobs already stored.
    pub blobs_reused: u64,
    /// Trees: files not in the parent.
    pub files_new: u64,
    /// Trees: files in the parent but changed, read again.
    pub files_changed: u64,
    /// Trees: files reused from the parent without reading.
    pub files_unchanged: u64,
    /// Trees: directories.
    pub dirs: u64,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made by the whole command.
    pub requests: RequestCounts,
    /// Non-fatal problems: compressed input, unreadable or vanished files,
    /// files that changed while read, skipped special files.
    pub warnings: Vec<String>,
}

/// Backs up a stream or file trees as one snapshot.
pub async fn backup(repo: &Repo, options: BackupOptions) -> Result<BackupSummary> {
    let watched = Arc::clone(&options.progress);
    let result = backup_leased(repo, options).await;
    // Done: an interrupt from now on has nothing to stop cleanly.
    watched.interrupt.clear_hooks();
    result
}

async fn backup_leased(repo: &Repo, options: BackupOptions) -> Result<BackupSummary> {
    crate::ops::leased(repo, LeaseKind::Backup, async move |lease| {
    let started = Instant::now();
    if options.source.is_empty() {
        return Err(Error::InvalidArgument(
            "the source name must not be empty".into(),
        ));
    }
    let now = now_ns();
    let time_ns = match options.time {
        Some(t) => i64::try_from(t.as_nanosecond())
            .map_err(|_| Error::InvalidArgument("time out of range".into()))?,
        None => now,
    };
    // A future time would outlive every real snapshot under retention, and
    // make `latest` mean it for as long as it stays.
    let skew = crate::snapshot::CLOCK_SKEW_ALLOWANCE;
    if time_ns > now.saturating_add(skew.as_nanos() as i64) {
        return Err(Error::InvalidArgument(format!(
            "the snapshot time {} is in the future (more than {} s after now); only past times may be given",
            crate::ops::format_time(time_ns),
            skew.as_secs()
        )));
    }
    let parent = match options.parent {
        Some(id) => Some((
            id,
            repo.catalog()
                .snapshot(&id)?
                .ok_or_else(|| Error::SnapshotNotFound(format!("{:?} (--parent)", id.short())))?,
        )),
        None => repo
            .snapshots(&SnapshotFilter {
                source: Some(options.source.clone()),
                host: Some(options.host.clone()),
                tags: vec![],
            })?
            .pop(),
    };

    let abort = Arc::new(Abort::default());
    let progress = Arc::clone(&options.progress);
    // Interrupted (a signal): stop every stage and kill the dump, as any
    // failure does; the packs that landed are indexed, nothing committed.
    {
        let abort = Arc::clone(&abort);
        progress
            .interrupt
            .on_raise(move |signal| abort.fail(Error::Interrupted { signal }));
    }
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(tree::FileCounts::default());
    let (paths, max_blob) = match &options.input {
        BackupInput::Stream { name, .. } => {
            if !crate::ops::is_single_component(name.as_bytes()) {
                return Err(Error::InvalidArgument(format!(
                    "stream name {name:?} must be a single file name (no '/', not '.' or '..')"
                )));
            }
            (vec![], repo.config().profile(STREAM_PROFILE)?.max as usize)
        }
        BackupInput::Tree(input) => (
            input
                .paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            repo.config().profile(crate::config::FILES_PROFILE)?.max as usize,
        ),
    };
    let writer = Arc::new(BlobWriter::start(
        repo,
        Arc::clone(&abort),
        Arc::clone(&progress),
        max_blob,
    )?);

    let run = Run {
        writer: Arc::clone(&writer),
        abort: Arc::clone(&abort),
        progress: Arc::clone(&progress),
        warnings: Arc::clone(&warnings),
        counts: Arc::clone(&counts),
    };
    let outcome = match options.input {
        BackupInput::Stream { input, name } => {
            let kind = crate::dump::Kind::from_name(&options.kind).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{:?} is not a stream kind (one of {})",
                    options.kind,
                    crate::dump::Kind::NAMES.join(", ")
                ))
            })?;
            let check = DumpCheck {
                kind,
                allow_incomplete: options.allow_incomplete,
                unpack: options.unpack && repo.stores_recipes(),
            };
            stream_root(repo, input, &name, time_ns, &options.source, check, &run).await
        }
        BackupInput::Tree(input) => {
            let parent_root = parent
                .as_ref()
                .filter(|(_, s)| !s.paths.is_empty())
                .map(|(_, s)| s.root);
            // Directory-format pg_dump output is checked before it is read.
            let verdict = if options.kind == crate::dump::Kind::Postgres.name() {
                check_dump_directories(&input.paths, &options.source, options.allow_incomplete)?
            } else {
                None
            };
            tree::backup_tree(repo, &input, parent_root, &run)
                .await
                .map(|root| {
                    let end = StreamEnd {
                        command: None,
                        verdict,
                        recipe: None,
                    };
                    (root, end)
                })
        }
    };
    drop(run);
    if let Err(e) = &outcome
        && !matches!(e, Error::Cancelled)
    {
        abort.fail(Error::Cancelled);
    }
    let stats = Arc::clone(writer.stats());
    let writer = Arc::into_inner(writer).expect("every stage holding the writer has finished");
    // After a failure the writer returns the first recorded cause; a stage
    // that failed without recording one is its own cause.
    if let Err(recorded) = writer.finish().await {
        return Err(match (recorded, outcome) {
            (Error::Cancelled, Err(own)) => own,
            (recorded, _) => recorded,
        });
    }
    let (
        root,
        StreamEnd {
            command, verdict, ..
        },
    ) = outcome?;
    let mut kind = options.kind;
    let mut tags = options.tags;
    let dump = verdict.map(|v| {
        if kind == crate::dump::Kind::Auto.name() {
            kind = v.kind().into();
        }
        if !v.complete {
            tags.push(crate::dump::INCOMPLETE_TAG.into());
            warnings.lock().expect("warnings lock").push(format!(
                "the {} dump is incomplete ({}); stored as asked, tagged {}, and never counted by retention as a good backup",
                v.format,
                v.detail,
                crate::dump::INCOMPLETE_TAG
            ));
        } else if !v.checked {
            warnings
                .lock()
                .expect("warnings lock")
                .push(format!("the dump was not checked: {}", v.detail));
        }
        DumpRecord {
            format: v.format.into(),
            complete: v.complete,
            checked: v.checked,
            detail: v.detail,
        }
    });
    if kind == crate::dump::Kind::Auto.name() {
        kind = crate::dump::Kind::Stream.name().into();
    }

    let stat = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let bytes_read = Progress::get(&progress.bytes_processed);
    let warnings = std::mem::take(&mut *warnings.lock().expect("warnings lock"));
    let summary = SnapshotSummary {
        bytes_read,
        bytes_added: stat(&stats.bytes_added),
        blobs_new: stat(&stats.blobs_new),
        blobs_reused: stat(&stats.blobs_reused),
        duration_ms: started.elapsed().as_millis() as u64,
        files_new: stat(&counts.new),
        files_changed: stat(&counts.changed),
        files_unchanged: stat(&counts.unchanged),
        warnings: warnings.len() as u64,
        total_bytes: if paths.is_empty() {
            bytes_read
        } else {
            stat(&counts.bytes)
        },
    };
    let snapshot = Snapshot {
        time_ns,
        source: options.source,
        host: options.host,
        tags,
        kind,
        root,
        parent: parent.as_ref().map(|(id, _)| *id),
        paths,
        command,
        summary: summary.clone(),
        program: crate::ops::program_version(),
        user: current_user(),
        copied_from: None,
        dump,
    };
    // The last moment an interrupt can still stop the commit.
    if let Some(signal) = progress.interrupt.raised() {
        return Err(Error::Interrupted { signal });
    }
    // "Added" is what the backup's new packs and index objects take in
    // storage, the same number the snapshot records (and `snapshots`
    // shows); the snapshot object itself, under a kilobyte, is not counted.
    let (snapshot_id, _) = repo.write_snapshot(&snapshot, lease).await?;
    progress.committed.store(true, Ordering::SeqCst);
    Ok(BackupSummary {
        snapshot_id,
        parent: parent.map(|(id, _)| id),
        bytes_read,
        total_bytes: summary.total_bytes,
        bytes_added: summary.bytes_added,
        blobs_new: summary.blobs_new,
        blobs_reused: summary.blobs_reused,
        files_new: summary.files_new,
        files_changed: summary.files_changed,
        files_unchanged: summary.files_unchanged,
        dirs: stat(&counts.dirs),
        duration_s: started.elapsed().as_secs_f64(),
        requests: repo.counts(),
        warnings,
    })
})
    .await
}

/// What every stage of one backup shares.
pub(crate) struct Run {
    writer: Arc<BlobWriter>,
    abort: Arc<Abort>,
    progress: Arc<Progress>,
    warnings: Arc<Mutex<Vec<String>>>,
    counts: Arc<tree::FileCounts>,
}

/// How a stream's completeness is checked, and whether gzip input is
/// unpacked.
#[derive(Clone, Copy)]
struct DumpCheck {
    kind: crate::dump::Kind,
    allow_incomplete: bool,
    unpack: bool,
}

/// How a stream ended: the dump command's record, what the completeness
/// check found, and for unpacked input the recipe that rebuilds it.
#[derive(Default)]
struct StreamEnd {
    command: Option<CommandRecord>,
    verdict: Option<crate::dump::Verdict>,
    recipe: Option<Recipe>,
}

/// Chunks a stream into the repository and stores its one-file root tree.
async fn stream_root(
    repo: &Repo,
    input: StreamInput,
    name: &str,
    time_ns: i64,
    source: &str,
    check: DumpCheck,
    run: &Run,
) -> Result<(BlobId, StreamEnd)> {
    let (writer, abort, progress, warnings) =
        (&run.writer, &run.abort, &run.progress, &run.warnings);
    let profile = repo.config().profile(STREAM_PROFILE)?.clone();
    let chunker = Chunker::new(&profile, repo.config().chunker_seed);
    let (reader, command): (Box<dyn Read + Send>, Option<RunningCommand>) = match input {
        StreamInput::Stdin => {
            crate::source::enlarge_pipe(std::os::fd::AsFd::as_fd(&std::io::stdin()));
            (Box::new(std::io::stdin()), None)
        }
        StreamInput::Reader(r) => (r, None),
        StreamInput::Command { argv } => {
            let (command, stdout) = RunningCommand::spawn(&argv, source)?;
            (Box::new(stdout), Some(command))
        }
    };
    if let Some(command) = &command {
        let killer = command.killer();
        abort.on_abort(move || killer.kill());
    }
    // Past a few cores, chunking outruns everything after it; more workers
    // would only hold more 4 MiB blocks.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(MAX_CHUNK_WORKERS);
    // Blocks are chunked and hashed on a pool; each block's result comes
    // back through its own slot, and the slots reach the coordinator in
    // stream order through a bounded queue, so nothing needs reordering and
    // at most a few blocks are in flight however unevenly the workers run.
    let (chunk_tx, chunk_rx) = bounded::<(Bytes, bool, Sender<Speculated>)>(workers);
    let (order_tx, order_rx) = bounded::<Receiver<Speculated>>(workers);
    let block_size = chunker.block_size();

    let reader_thread = {
        let abort = Arc::clone(abort);
        let progress = Arc::clone(progress);
        let warnings = Arc::clone(warnings);
        let source = source.to_string();
        spawn_thread("larder-read", move || {
            read_stream(
                reader, block_size, command, check, &chunk_tx, &order_tx, &abort, &progress,
                &warnings, &source,
            )
        })?
    };
    let mut chunkers = Vec::new();
    for i in 0..workers {
        let rx = chunk_rx.clone();
        let hasher = repo.hasher().clone();
        let chunker = chunker.clone();
        chunkers.push(spawn_thread(&format!("larder-chunk-{i}"), move || {
            for (block, last, slot) in rx {
                let spec = chunker.speculate(&block, last, |chunk| {
                    hasher.blob_id(ObjectKind::DataBlob, chunk)
                });
                // A closed slot means the coordinator stopped; keep draining
                // so the reader is never stuck on a full queue.
                let _ = slot.send(Speculated { block, last, spec });
            }
        })?);
    }
    drop(chunk_rx);

    let coordinator = {
        let writer = Arc::clone(writer);
        let abort = Arc::clone(abort);
        let hasher = repo.hasher().clone();
        let fanout = repo.config().list_fanout as usize;
        tokio::task::spawn_blocking(move || {
            let content = coordinate(
                &writer,
                &abort,
                &order_rx,
                Stitcher::new(chunker),
                &hasher,
                ContentBuilder::new(fanout, hasher.clone()),
            )?;
            if abort.is_set() {
                return Err(Error::Cancelled);
            }
            Ok(content)
        })
    };
    let content = coordinator.await.expect("coordinator panicked");
    if let Err(e) = &content
        && !matches!(e, Error::Cancelled)
    {
        abort.fail(Error::Cancelled);
    }
    // After a failure a reader blocked on a silent standard input cannot be
    // interrupted; it is left to finish on its own (it stops at its next
    // read) rather than hold the command's exit. A dump command was killed.
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    let end = join_unless_stuck(reader_thread, abort, deadline)
        .await
        .flatten();
    for h in chunkers {
        join_unless_stuck(h, abort, deadline).await;
    }
    let (content, mut size) = content?;
    let end = end.unwrap_or_default();
    let recipe = match &end.recipe {
        Some(recipe) => {
            size = recipe.size;
            Some(store_recipe(repo, writer, recipe).await?)
        }
        None => None,
    };
    let mut node = Node::stream_file(name.as_bytes(), time_ns, size, content);
    node.recipe = recipe;
    let tree = Tree {
        entries: vec![node],
    }
    .encode();
    let root = repo.hasher().blob_id(ObjectKind::TreeBlob, &tree);
    writer
        .store_async(ObjectKind::TreeBlob, root, Bytes::from(tree))
        .await?;
    Ok((root, end))
}

/// Stores a recipe as data blobs (fixed 1 MiB pieces: a recipe is small
/// and mostly new each time) and returns its content list.
async fn store_recipe(repo: &Repo, writer: &BlobWriter, recipe: &Recipe) -> Result<Content> {
    let bytes = Bytes::from(recipe.encode());
    // Never store a recipe a restore would refuse (the unpacking keeps
    // within a budget well below this; this is the last guard).
    if bytes.len() as u64 > crate::recipe::MAX_RECIPE_SIZE {
        return Err(Error::InvalidArgument(format!(
            "the recipe that rebuilds this input would be {} bytes, more than a restore reads \
             ({}); back it up with --no-unpack",
            bytes.len(),
            crate::recipe::MAX_RECIPE_SIZE
        )));
    }
    let mut builder =
        ContentBuilder::new(repo.config().list_fanout as usize, repo.hasher().clone());
    let mut lists = Vec::new();
    for start in (0..bytes.len()).step_by(1 << 20) {
        let piece = bytes.slice(start..bytes.len().min(start + (1 << 20)));
        let id = repo.hasher().blob_id(ObjectKind::DataBlob, &piece);
        let len = piece.len() as u64;
        writer.store_async(ObjectKind::DataBlob, id, piece).await?;
        builder.push(ContentRef { id, len }, &mut lists);
        for (list_id, list) in lists.drain(..) {
            writer
                .store_async(ObjectKind::ListBlob, list_id, Bytes::from(list))
                .await?;
        }
    }
    let content = builder.finish(&mut lists);
    for (list_id, list) in lists {
        writer
            .store_async(ObjectKind::ListBlob, list_id, Bytes::from(list))
            .await?;
    }
    Ok(content)
}

/// Waits for a pipeline thread without blocking the runtime.
pub(crate) async fn join<T: Send + 'static>(handle: std::thread::JoinHandle<T>) -> T {
    tokio::task::spawn_blocking(move || {
        handle
            .join()
            .unwrap_or_else(|_| panic!("a backup thread panicked"))
    })
    .await
    .expect("joining a backup thread")
}

/// Joins a pipeline thread; after an abort, gives it until `deadline` and
/// then lets it go (returning `None`) instead of waiting on a read that may
/// never end.
async fn join_unless_stuck<T: Send + 'static>(
    handle: std::thread::JoinHandle<T>,
    abort: &Abort,
    deadline: Instant,
) -> Option<T> {
    if abort.is_set() {
        while !handle.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if !handle.is_finished() {
            return None;
        }
    }
    Some(join(handle).await)
}

/// Counts bytes as they are read, for progress and the summary.
struct CountingReader<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        Progress::add(&self.progress.bytes_processed, n as u64);
        Ok(n)
    }
}

/// The reader thread: chunks the stream (feeding the completeness check on
/// its own thread as it goes), then checks how the source ended and what
/// the check found. `None` when the backup failed.
#[allow(clippy::too_many_arguments)]
fn read_stream(
    reader: Box<dyn Read + Send>,
    block_size: usize,
    command: Option<RunningCommand>,
    check: DumpCheck,
    chunk_tx: &Sender<(Bytes, bool, Sender<Speculated>)>,
    order_tx: &Sender<Receiver<Speculated>>,
    abort: &Abort,
    progress: &Arc<Progress>,
    warnings: &Mutex<Vec<String>>,
    source: &str,
) -> Option<StreamEnd> {
    let reader = CountingReader {
        inner: reader,
        progress: Arc::clone(progress),
    };
    let (mut check_tx, checker) = if check.kind == crate::dump::Kind::Stream {
        (None, None)
    } else {
        let (tx, rx) = bounded::<Bytes>(4);
        let kind = check.kind;
        let thread = spawn_thread("larder-check", move || {
            crate::dump::check(kind, ChannelReader::new(rx))
        });
        match thread {
            Ok(thread) => (Some(tx), Some(thread)),
            Err(e) => {
                abort.fail(e);
                return None;
            }
        }
    };
    // Gzip input is unpacked for storage, and inflated again on the side
    // for the checks (see `start_unpacking`), which then see the whole
    // contents even where the unpacking had to stop.
    let (reader, unpacking) = if check.unpack {
        match start_unpacking(reader, check_tx.clone()) {
            Ok(started) => started,
            Err(e) => {
                abort.fail(read_failed(command, source, e));
                return None;
            }
        }
    } else {
        (Box::new(reader) as Box<dyn Read + Send>, None)
    };
    // The unpacking hands the checks what they need, and warns itself
    // where compression defeats deduplication.
    let unpacking_active = unpacking.is_some();
    if unpacking_active {
        check_tx = None;
    }
    let mut read = 0u64;
    for block in Blocks::with_block_size(reader, block_size) {
        if abort.is_set() {
            return None;
        }
        let (block, last) = match block {
            Ok(block) => block,
            Err(e) => {
                abort.fail(read_failed(command, source, e));
                return None;
            }
        };
        if read == 0 {
            if block.is_empty() {
                break;
            }
            if !unpacking_active && let Some(warning) = crate::dump::inspect_head(&block) {
                warnings.lock().expect("warnings lock").push(warning);
            }
        }
        if let Some(tx) = &check_tx
            && !block.is_empty()
        {
            // A check that has stopped listening has its verdict already.
            let _ = tx.send(block.clone());
        }
        read += block.len() as u64;
        let (slot_tx, slot_rx) = bounded(1);
        if chunk_tx.send((block, last, slot_tx)).is_err() || order_tx.send(slot_rx).is_err() {
            return None;
        }
    }
    // The unpacker ends when the source does; a read error it met ends the
    // backup as one met by the chunker would.
    let unpacked = match unpacking.map(Unpacking::join) {
        None => None,
        Some(Ok(unpacked)) => Some(unpacked),
        Some(Err(e)) => {
            abort.fail(read_failed(command, source, e));
            return None;
        }
    };
    let record = match command {
        Some(command) => match command.wait() {
            Ok(record) => Some(record),
            Err(e) => {
                abort.fail(e);
                return None;
            }
        },
        None => None,
    };
    if read == 0 {
        abort.fail(Error::SourceFailed {
            source_name: source.into(),
            reason: "produced no data; an empty dump is never a valid backup".into(),
            stderr_tail: String::new(),
        });
        return None;
    }
    drop(check_tx);
    let verdict = match checker.map(std::thread::JoinHandle::join) {
        None => None,
        Some(Ok(Ok(verdict))) => verdict,
        // The channel reader never fails; a panicking check is a bug, and
        // the dump is not vouched for.
        Some(Ok(Err(e))) => Some(crate::dump::Verdict::failed_check(e.to_string())),
        Some(Err(_)) => Some(crate::dump::Verdict::failed_check(
            "the check panicked".into(),
        )),
    };
    let (verdict, recipe) = match unpacked {
        Some((unpacked, inflated)) => {
            judge_unpacked(unpacked, inflated, verdict, check.kind, warnings)
        }
        None => (verdict, None),
    };
    if let Some(v) = &verdict
        && !v.complete
        && !check.allow_incomplete
    {
        abort.fail(Error::IncompleteDump {
            source_name: source.into(),
            format: v.format.into(),
            detail: v.detail.clone(),
        });
        return None;
    }
    Some(StreamEnd {
        command: record,
        verdict,
        recipe,
    })
}

/// Why reading a source failed, as the error that ends its backup (a dump
/// command still running is stopped).
fn read_failed(command: Option<RunningCommand>, source: &str, e: std::io::Error) -> Error {
    let reason = format!("reading its output failed: {e}");
    match command {
        Some(command) => command.abandon(reason),
        None => Error::SourceFailed {
            source_name: source.into(),
            reason,
            stderr_tail: String::new(),
        },
    }
}

/// The threads unpacking compressed input: one unpacks it for storage;
/// for gzip, the other inflates a copy of the input with a standard decoder
/// and hands the contents to the completeness check (the `gzip -t` of the
/// old scripts). A `pg_dump -Fc` archive is checked as it came, and its
/// data streams' checksums by the unpacking.
struct Unpacking {
    unpacker: std::thread::JoinHandle<std::io::Result<Unpacked>>,
    inflater: Option<std::thread::JoinHandle<std::result::Result<(), String>>>,
}

impl Unpacking {
    /// Waits for both; the unpacking's result and whether the inflater
    /// found the gzip stream whole (or why not).
    fn join(self) -> std::io::Result<(Unpacked, std::result::Result<(), String>)> {
        let unpacked = self
            .unpacker
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("unpacking its output panicked")));
        let inflated = match self.inflater {
            Some(inflater) => inflater
                .join()
                .unwrap_or_else(|_| Err("the gzip decoder panicked".into())),
            None => Ok(()),
        };
        Ok((unpacked?, inflated))
    }
}

/// Bytes looked at to tell compressed input.
const HEAD: u64 = 24;

/// Looks at a stream's first bytes; gzip input and zlib-compressed
/// `pg_dump -Fc` archives are unpacked on a thread of their own, and the
/// chunker reads the contents it hands on. For gzip, a second thread
/// inflates the input for `check_tx`; an archive goes to `check_tx` as it
/// came.
fn start_unpacking(
    mut reader: impl Read + Send + 'static,
    check_tx: Option<Sender<Bytes>>,
) -> std::io::Result<(Box<dyn Read + Send>, Option<Unpacking>)> {
    let mut head = Vec::with_capacity(HEAD as usize);
    (&mut reader).take(HEAD).read_to_end(&mut head)?;
    let is_gzip = head.starts_with(&GZIP_MAGIC);
    type Unpack = fn(
        &mut dyn Read,
        &mut dyn FnMut(Bytes) -> bool,
        &mut dyn FnMut(&[u8]),
    ) -> std::io::Result<Unpacked>;
    let checked_as_it_came: Option<Unpack> = if crate::dump::postgres::is_custom_zlib(&head) {
        Some(crate::recipe::unpack_pg_custom)
    } else if crate::recipe::is_neo4j_zstd(&head) {
        Some(crate::recipe::unpack_neo4j)
    } else {
        None
    };
    let mut reader = std::io::Cursor::new(head).chain(reader);
    if let Some(unpack) = checked_as_it_came {
        let (tx, rx) = bounded::<Bytes>(2);
        let unpacker = std::thread::Builder::new()
            .name("larder-unpack".into())
            .spawn(move || {
                unpack(
                    &mut reader,
                    &mut |piece| tx.send(piece).is_ok(),
                    // A check that stopped has its verdict already.
                    &mut |read| {
                        if let Some(check_tx) = &check_tx {
                            let _ = check_tx.send(Bytes::copy_from_slice(read));
                        }
                    },
                )
            })?;
        return Ok((
            Box::new(ChannelReader::new(rx)),
            Some(Unpacking {
                unpacker,
                inflater: None,
            }),
        ));
    }
    if !is_gzip {
        return Ok((Box::new(reader), None));
    }
    let (tee_tx, tee_rx) = bounded::<Bytes>(16);
    let inflater = std::thread::Builder::new()
        .name("larder-inflate".into())
        .spawn(move || inflate(tee_rx, check_tx))?;
    let (tx, rx) = bounded::<Bytes>(2);
    let unpacker = std::thread::Builder::new()
        .name("larder-unpack".into())
        .spawn(move || {
            crate::recipe::unpack_gzip(
                &mut reader,
                &mut |piece| tx.send(piece).is_ok(),
                // An inflater that stopped has its verdict already.
                &mut |read| drop(tee_tx.send(Bytes::copy_from_slice(read))),
            )
        })?;
    Ok((
        Box::new(ChannelReader::new(rx)),
        Some(Unpacking {
            unpacker,
            inflater: Some(inflater),
        }),
    ))
}

/// Inflates the gzip members arriving on `input`, handing the contents to
/// `check_tx`; an error says why the stream is not whole.
fn inflate(
    input: Receiver<Bytes>,
    check_tx: Option<Sender<Bytes>>,
) -> std::result::Result<(), String> {
    let mut decoder = flate2::read::MultiGzDecoder::new(ChannelReader::new(input));
    let mut buf = vec![0u8; 256 << 10];
    let outcome = loop {
        match decoder.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Some(tx) = &check_tx {
                    let _ = tx.send(Bytes::copy_from_slice(&buf[..n]));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break Err("the gzip stream is cut short".to_string());
            }
            Err(e) => break Err(format!("the gzip stream is damaged: {e}")),
        }
    };
    // Whatever is left is read to its end, so the unpacker never waits on
    // a full queue.
    let mut rest = decoder.into_inner();
    let _ = std::io::copy(&mut rest, &mut std::io::sink());
    outcome
}

/// Folds what unpacking found into the dump verdict, and keeps the recipe
/// when anything was unpacked.
fn judge_unpacked(
    unpacked: Unpacked,
    inflated: std::result::Result<(), String>,
    verdict: Option<crate::dump::Verdict>,
    kind: crate::dump::Kind,
    warnings: &Mutex<Vec<String>>,
) -> (Option<crate::dump::Verdict>, Option<Recipe>) {
    use crate::dump::Verdict;
    if unpacked.recipe.format != GZIP {
        return judge_unpacked_archive(unpacked, verdict, kind, warnings);
    }
    let unpacks = unpacked.recipe.unpacks();
    // The analysis cannot follow every compressor to the end of every
    // stream; where it stops, the rest is stored as it came. Worth a
    // warning when that costs much deduplication, a note otherwise.
    let mut note = None;
    if let Integrity::Unknown(why) = &unpacked.integrity
        && inflated.is_ok()
    {
        let message = format!(
            "{} of {} gzip bytes could not be unpacked for deduplication ({why}) and are \
             stored as they came",
            unpacked.passed_through, unpacked.read
        );
        if unpacked.passed_through > unpacked.read / 10 {
            warnings.lock().expect("warnings lock").push(message);
        } else {
            note = Some(message);
        }
    }
    let verdict = match inflated {
        Ok(()) => {
            let mut whole = "gzip: whole, CRC-32 and length match".to_string();
            if let Some(note) = note {
                whole = format!("{whole}; {note}");
            }
            Some(match verdict {
                Some(mut v) => {
                    v.detail = format!("{}; {whole}", v.detail);
                    v
                }
                None => Verdict::complete("gzip", whole),
            })
        }
        Err(why) if kind == crate::dump::Kind::Stream => {
            warnings
                .lock()
                .expect("warnings lock")
                .push(format!("{why}; stored as it came"));
            verdict
        }
        Err(why) => Some(Verdict::incomplete("gzip", why)),
    };
    (verdict, unpacks.then_some(unpacked.recipe))
}

/// Folds what unpacking a `pg_dump -Fc` archive found into the verdict of
/// its check; keeps the recipe when anything was unpacked.
fn judge_unpacked_archive(
    unpacked: Unpacked,
    verdict: Option<crate::dump::Verdict>,
    kind: crate::dump::Kind,
    warnings: &Mutex<Vec<String>>,
) -> (Option<crate::dump::Verdict>, Option<Recipe>) {
    use crate::dump::Verdict;
    let unpacks = unpacked.recipe.unpacks();
    let mut verdict = verdict;
    match &unpacked.integrity {
        Integrity::Whole { members } => {
            if let Some(v) = &mut verdict
                && v.complete
            {
                let level = unpacked.recipe.ops.iter().find_map(|op| match op {
                    crate::recipe::Op::Zstd { level, .. } => Some(*level),
                    _ => None,
                });
                v.detail = match level {
                    Some(level) => format!(
                        "{}; stored decompressed: zstd level {level} here rebuilds the frame byte for byte",
                        v.detail
                    ),
                    None => format!(
                        "{}; {members} zlib data streams unpacked, their checksums match",
                        v.detail
                    ),
                };
            }
        }
        Integrity::Unknown(why) => {
            let message = format!(
                "{} of {} bytes could not be unpacked for deduplication ({why}) and are stored \
                 as they came",
                unpacked.passed_through, unpacked.read
            );
            let complete = verdict.as_ref().is_none_or(|v| v.complete);
            if complete && unpacked.passed_through > unpacked.read / 10 {
                warnings.lock().expect("warnings lock").push(message);
            } else if let Some(v) = &mut verdict
                && v.complete
            {
                v.detail = format!("{}; {message}", v.detail);
            }
        }
        Integrity::Broken(why) => {
            if kind == crate::dump::Kind::Stream {
                warnings
                    .lock()
                    .expect("warnings lock")
                    .push(format!("{why}; stored as it came"));
            } else if verdict.as_ref().is_none_or(|v| v.complete) {
                let format = if unpacked.recipe.format == crate::recipe::NEO4J {
                    "neo4j-dump"
                } else {
                    "postgres-custom"
                };
                verdict = Some(Verdict::incomplete(format, why.clone()));
            }
        }
    }
    (verdict, unpacks.then_some(unpacked.recipe))
}

/// Checks each path of a tree backup of kind `postgres` as a
/// directory-format dump; the first incomplete one fails the backup unless
/// `allow_incomplete`. Returns the verdict to record (the first incomplete
/// one, or the last complete one).
fn check_dump_directories(
    paths: &[std::path::PathBuf],
    source: &str,
    allow_incomplete: bool,
) -> Result<Option<crate::dump::Verdict>> {
    let mut last = None;
    for path in paths {
        let verdict = crate::dump::postgres::check_directory(path)
            .map_err(|e| Error::io("checking the dump directory", path, e))?;
        if !verdict.complete {
            if !allow_incomplete {
                return Err(Error::IncompleteDump {
                    source_name: source.into(),
                    format: verdict.format.into(),
                    detail: verdict.detail,
                });
            }
            return Ok(Some(verdict));
        }
        last = Some(verdict);
    }
    Ok(last)
}

/// Reads the chunks a channel delivers, in order, as one stream; the end
/// of the stream is the sender hanging up.
struct ChannelReader {
    rx: Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(std::io::BufRead::fill_buf(self)?.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// The blocks themselves are the buffer: a reader that takes them through
/// `fill_buf` (the dump checks) copies nothing.
impl std::io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(next) => self.current = next,
                Err(_) => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.current, n);
    }
}

/// Chunk workers at most for one stream.
const MAX_CHUNK_WORKERS: usize = 8;

/// A block of a stream with its speculative chunks, from a chunk worker.
struct Speculated {
    block: Bytes,
    /// The stream ends with this block.
    last: bool,
    spec: Speculative<BlobId>,
}

/// Takes speculatively chunked blocks in stream order, stitches them into
/// the stream's chunks, dedups and stores each, and builds the content list.
fn coordinate(
    writer: &BlobWriter,
    abort: &Abort,
    order: &Receiver<Receiver<Speculated>>,
    mut stitcher: Stitcher,
    hasher: &BlobHasher,
    mut builder: ContentBuilder,
) -> Result<(Content, u64)> {
    let mut size = 0u64;
    let mut lists = Vec::new();
    let mut chunks = Vec::new();
    let mut ended = false;
    let mut batch = writer.batch();
    loop {
        // Chunks go to sealing in batches; one that waits for its input
        // hands on what it holds first.
        if order.is_empty() {
            batch.flush()?;
        }
        // Woken now and then to notice an abort: a reader blocked on a
        // silent standard input never sends or hangs up.
        let slot = match order.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(slot) => slot,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if abort.is_set() => {
                return Err(Error::Cancelled);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let Ok(speculated) = slot.recv() else {
            // A chunk worker is gone without an answer: stop the others
            // (the reader may be blocked on a silent input).
            abort.fail(Error::Cancelled);
            return Err(Error::Cancelled);
        };
        if abort.is_set() {
            return Err(Error::Cancelled);
        }
        let Speculated { block, last, spec } = speculated;
        stitcher.push(
            block,
            spec,
            last,
            |chunk| hasher.blob_id(ObjectKind::DataBlob, chunk),
            &mut chunks,
        );
        ended |= last;
        for (id, data) in chunks.drain(..) {
            let len = data.len() as u64;
            size += len;
            batch.store(ObjectKind::DataBlob, id, data)?;
            builder.push(ContentRef { id, len }, &mut lists);
            for (list_id, bytes) in lists.drain(..) {
                batch.store(ObjectKind::ListBlob, list_id, Bytes::from(bytes))?;
            }
        }
    }
    // A reader that stopped before the end has failed, and said why.
    if !ended {
        return Err(Error::Cancelled);
    }
    let content = builder.finish(&mut lists);
    for (list_id, bytes) in lists {
        batch.store(ObjectKind::ListBlob, list_id, Bytes::from(bytes))?;
    }
    batch.flush()?;
    Ok((content, size))
}
