//! The read path: from a file's content list to its plaintext, in order.
//!
//! ```text
//! content list ──walk (list blobs on demand)──► chunk refs ──plan──► range reads ──fetch (concurrent)──► open (blocking pool) ──► sink, in order
//! ```
//!
//! Consecutive chunks that sit close together in one pack are fetched with
//! one ranged GET (adjacent ranges coalesced, small gaps read through; one
//! read job may hold a few such ranges, of the same or other packs), up
//! to [`MAX_SPAN`] bytes. Several reads are in flight at once and their blobs
//! are opened on the blocking pool, while the sink receives bytes strictly in
//! file order. Every blob is authenticated and its id recomputed before a
//! byte of it reaches the sink; memory is bounded by the reads in flight.

use crate::backend::Backend;
use crate::layout::pack_path;
use futures::StreamExt;

use crate::catalog::BlobLocation;
use crate::error::{Error, Result};
use crate::hash::{BlobId, PackId};
use crate::recipe::{MAX_RECIPE_SIZE, Rebuilder, Recipe};
use crate::repo::Repo;
use crate::snapshot::{Content, ContentRef, Node};

/// Largest single ranged read.
pub const MAX_SPAN: u64 = 8 << 20;
/// Largest gap between two wanted blobs that is read through rather than
/// split into two requests.
pub const MAX_GAP: u64 = 256 << 10;
/// Most plaintext one read may yield. Dumps compress up to 50x, so the
/// stored span alone would not bound memory: 8 reads in flight hold at most
/// 8 x (8 MiB stored + 4 MiB plain).
pub const MAX_PLAIN_PER_READ: u64 = 4 << 20;
/// Ranged reads in flight.
pub const READ_CONCURRENCY: usize = 8;

/// Walks a content list depth-first, loading list blobs as needed; memory is
/// one list per level.
pub struct ChunkWalker<'a> {
    repo: &'a Repo,
    stack: Vec<(Content, usize)>,
}

impl<'a> ChunkWalker<'a> {
    /// A walker over `content`.
    pub fn new(repo: &'a Repo, content: Content) -> ChunkWalker<'a> {
        ChunkWalker {
            repo,
            stack: vec![(content, 0)],
        }
    }

    /// The next data chunk, in file order.
    pub async fn next(&mut self) -> Result<Option<ContentRef>> {
        loop {
            let Some((content, pos)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(entry) = content.entries.get(*pos).copied() else {
                self.stack.pop();
                continue;
            };
            *pos += 1;
            if content.depth == 0 {
                return Ok(Some(entry));
            }
            let child = self.repo.load_list(&entry.id, content.depth - 1).await?;
            if child.len() != entry.len {
                return Err(Error::corrupt(
                    format!("content list {}", entry.id),
                    format!(
                        "covers {} bytes, its parent says {}",
                        child.len(),
                        entry.len
                    ),
                ));
            }
            self.stack.push((child, 0));
        }
    }
}

/// Separate ranges one read job may fetch. Consecutive chunks of a dump
/// that repeats itself point back into older data, often of another pack:
/// letting one job hold a few ranges keeps such a file from turning into one
/// tiny GET per chunk.
pub const MAX_RANGES_PER_READ: usize = 4;

/// One range of one pack.
struct Range {
    pack: PackId,
    start: u64,
    end: u64,
}

/// Up to [`MAX_RANGES_PER_READ`] ranged reads (fetched together) and the
/// blobs they yield, in file order.
struct ReadJob {
    ranges: Vec<Range>,
    plain: u64,
    /// Each blob, with the index of the range holding it.
    blobs: Vec<(BlobId, BlobLocation, usize)>,
}

impl ReadJob {
    fn new(id: BlobId, location: BlobLocation) -> ReadJob {
        ReadJob {
            ranges: vec![Range {
                pack: location.pack,
                start: location.offset,
                end: location.end(),
            }],
            plain: u64::from(location.raw_length),
            blobs: vec![(id, location, 0)],
        }
    }

    /// Adds the blob if it can share this job: within (or near) one of its
    /// ranges, or as a new range while there is room.
    fn try_extend(&mut self, id: BlobId, location: &BlobLocation) -> bool {
        if self.plain + u64::from(location.raw_length) > MAX_PLAIN_PER_READ {
            return false;
        }
        let (offset, end) = (location.offset, location.end());
        let near = self.ranges.iter().position(|r| {
            r.pack == location.pack
                && offset.saturating_add(MAX_GAP) >= r.start
                && offset <= r.end.saturating_add(MAX_GAP)
                && end.max(r.end) - offset.min(r.start) <= MAX_SPAN
        });
        let index = match near {
            Some(i) => {
                let r = &mut self.ranges[i];
                r.start = r.start.min(offset);
                r.end = r.end.max(end);
                i
            }
            None if self.ranges.len() < MAX_RANGES_PER_READ => {
                self.ranges.push(Range {
                    pack: location.pack,
                    start: offset,
                    end,
                });
                self.ranges.len() - 1
            }
            None => return false,
        };
        self.plain += u64::from(location.raw_length);
        self.blobs.push((id, *location, index));
        true
    }
}

struct Planner<'a> {
    walker: ChunkWalker<'a>,
    carry: Option<(BlobId, BlobLocation)>,
    blobs_per_job: usize,
}

impl Planner<'_> {
    async fn next_job(&mut self) -> Result<Option<ReadJob>> {
        let mut job = match self.carry.take() {
            Some((id, location)) => ReadJob::new(id, location),
            None => match self.walker.next().await? {
                Some(chunk) => ReadJob::new(chunk.id, self.locate(&chunk)?),
                None => return Ok(None),
            },
        };
        while job.blobs.len() < self.blobs_per_job {
            let Some(chunk) = self.walker.next().await? else {
                break;
            };
            let location = self.locate(&chunk)?;
            if !job.try_extend(chunk.id, &location) {
                self.carry = Some((chunk.id, location));
                break;
            }
        }
        Ok(Some(job))
    }

    fn locate(&self, chunk: &ContentRef) -> Result<BlobLocation> {
        let location = self.walker.repo.locate(&chunk.id)?;
        if location.kind != crate::seal::ObjectKind::DataBlob {
            return Err(Error::corrupt(
                format!("blob {}", chunk.id),
                format!(
                    "is indexed as {:?}, but a content list names it as data",
                    location.kind
                ),
            ));
        }
        if u64::from(location.raw_length) != chunk.len {
            return Err(Error::corrupt(
                format!("blob {}", chunk.id),
                format!(
                    "is {} bytes, the content list says {}",
                    location.raw_length, chunk.len
                ),
            ));
        }
        Ok(location)
    }
}

/// Streams the plaintext of `content` to `sink` in order; returns the number
/// of bytes written. Fails on the first damaged or missing blob, before any
/// of its bytes reach the sink.
pub async fn read_content(
    repo: &Repo,
    content: &Content,
    sink: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
) -> Result<u64> {
    read_chunks(repo, content, &mut |_, plain| sink(&plain)).await
}

/// Streams a file node's bytes to `sink` in order: its content, or for a
/// file stored through a recipe, the original rebuilt from the content
/// (checked against the recipe's length and hash at the end, so a damaged
/// or mismatched rebuild fails, after what was rebuilt has reached the
/// sink). Returns the number of bytes written.
pub async fn read_file(
    repo: &Repo,
    node: &Node,
    sink: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
) -> Result<u64> {
    let content = node.content.clone().unwrap_or_default();
    let Some(recipe_content) = &node.recipe else {
        return read_content(repo, &content, sink).await;
    };
    let object = format!("recipe of {}", node.display_name());
    if recipe_content.len() > MAX_RECIPE_SIZE {
        return Err(Error::corrupt(
            object,
            format!(
                "is {} bytes, more than any larder writes",
                recipe_content.len()
            ),
        ));
    }
    let mut bytes = Vec::new();
    read_content(repo, recipe_content, &mut |piece| {
        bytes.extend_from_slice(piece);
        Ok(())
    })
    .await?;
    let recipe = Recipe::decode(&bytes).map_err(|e| Error::corrupt(&object, e))?;
    drop(bytes);
    Rebuilder::check(&recipe, content.len()).map_err(|e| Error::corrupt(&object, e))?;
    // The rebuild runs on a thread of its own, off the async runtime; it
    // takes the content a piece at a time and hands rebuilt bytes back,
    // which reach the sink here, in order.
    let (piece_tx, piece_rx) = crossbeam_channel::bounded::<Vec<u8>>(2);
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Rebuilt>();
    let content_len = content.len();
    let rebuild = std::thread::Builder::new()
        .name("larder-rebuild".into())
        .spawn(move || {
            let mut emit = |bytes: &[u8]| -> std::result::Result<(), ()> {
                out_tx.send(Rebuilt::Bytes(bytes.to_vec())).map_err(|_| ())
            };
            let mut rebuilder = match Rebuilder::new(recipe, content_len) {
                Ok(rebuilder) => rebuilder,
                Err(e) => return drop(out_tx.send(Rebuilt::Failed(e))),
            };
            for piece in piece_rx {
                match rebuilder.feed(&piece, &mut emit) {
                    Ok(Ok(())) => {}
                    Ok(Err(())) => return,
                    Err(e) => return drop(out_tx.send(Rebuilt::Failed(e))),
                }
            }
            let _ = out_tx.send(match rebuilder.finish(&mut emit) {
                Ok(Ok(n)) => Rebuilt::Done(n),
                Ok(Err(())) => return,
                Err(e) => Rebuilt::Failed(e),
            });
        })
        .map_err(|e| Error::io("starting a thread for", &object, e))?;
    let mut done = None;
    let mut pass_on =
        |msg: Rebuilt, sink: &mut (dyn FnMut(&[u8]) -> Result<()> + Send)| -> Result<()> {
            match msg {
                Rebuilt::Bytes(bytes) => sink(&bytes),
                Rebuilt::Failed(e) => Err(Error::corrupt(&object, e)),
                Rebuilt::Done(n) => {
                    done = Some(n);
                    Ok(())
                }
            }
        };
    let read = read_content(repo, &content, &mut |piece| {
        // A closed channel means the rebuild stopped; why arrives below.
        let _ = piece_tx.send(piece.to_vec());
        while let Ok(msg) = out_rx.try_recv() {
            pass_on(msg, sink)?;
        }
        Ok(())
    })
    .await;
    drop(piece_tx);
    let rest = read.and_then(|_| {
        for msg in out_rx.iter() {
            pass_on(msg, sink)?;
        }
        Ok(())
    });
    drop(out_rx);
    let _ = rebuild.join();
    rest?;
    done.ok_or_else(|| Error::corrupt(&object, "the rebuild stopped before its end"))
}

/// What the rebuild thread hands back.
enum Rebuilt {
    Bytes(Vec<u8>),
    Failed(String),
    Done(u64),
}

/// Like [`read_content`], but hands `sink` each chunk whole, with its id.
pub async fn read_chunks(
    repo: &Repo,
    content: &Content,
    sink: &mut (dyn FnMut(BlobId, Vec<u8>) -> Result<()> + Send),
) -> Result<u64> {
    let expected = content.len();
    let mut planner = Planner {
        walker: ChunkWalker::new(repo, content.clone()),
        carry: None,
        blobs_per_job: 1024,
    };
    // Reads run as tasks so they progress while the planner waits for list
    // blobs; the queue keeps their results in file order.
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut planned_all = false;
    let mut written = 0u64;
    loop {
        while !planned_all && in_flight.len() < READ_CONCURRENCY {
            match planner.next_job().await? {
                Some(job) => in_flight.push_back(tokio::spawn(fetch_and_open(repo.clone(), job))),
                None => planned_all = true,
            }
        }
        let Some(done) = in_flight.next().await else {
            break;
        };
        for (id, plain) in done.expect("read task panicked")? {
            // The sink may block briefly (a file or a pipe); the runtime has
            // other workers and the blocking pool for the reads in flight.
            written += plain.len() as u64;
            sink(id, plain)?;
        }
    }
    if written != expected {
        return Err(Error::corrupt(
            "content list",
            format!("yielded {written} bytes, but it records {expected}"),
        ));
    }
    Ok(written)
}

/// Fetches one range and opens its blobs on the blocking pool.
async fn fetch_and_open(repo: Repo, job: ReadJob) -> Result<Vec<(BlobId, Vec<u8>)>> {
    let reads = job.ranges.iter().map(|r| {
        let repo = &repo;
        async move {
            let name = pack_path(&r.pack);
            let bytes = repo.backend().get_range(&name, r.start..r.end).await?;
            Ok::<_, Error>((name, bytes))
        }
    });
    let fetched = futures::future::try_join_all(reads).await?;
    let opener = repo.blob_opener();
    tokio::task::spawn_blocking(move || {
        job.blobs
            .iter()
            .map(|(id, location, index)| {
                let (name, bytes) = &fetched[*index];
                let at = (location.offset - job.ranges[*index].start) as usize;
                let sealed = &bytes[at..at + location.length as usize];
                Ok((*id, opener.open(name, location, id, sealed)?))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .expect("opening task panicked")
}
