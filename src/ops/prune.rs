//! `prune`: garbage collection in two phases that never blocks backups.
//!
//! ```text
//! lease ─► wait for older prunes ─► index packs in no index (from headers)
//!       ─► mark ─► refuse on damage ─► sweep earlier generations
//!       ─► plan ─► repack (new packs + index first) ─► pending/<generation>
//!       ─► sweep it if nothing older is running ─► consolidate index ─► drop dead leases
//! ```
//!
//! **Packs in no index** (an interrupted backup's, or named by an index
//! object that is damaged, missing or hidden from the listing) are read by
//! their headers and named in a new index object first, so that marking
//! sees what they hold and they go only if nothing needs them. One whose
//! header cannot be read is left alone.
//!
//! **Mark.** Every snapshot's trees and content lists are walked and their
//! blob ids put in a temporary table of the catalog, so memory stays flat
//! however large the repository; a subtree already marked is not walked
//! again. A snapshot, index, tree or list object that cannot be read stops
//! prune before it deletes anything, naming it ([`Error::PruneRefused`]):
//! what it references is unknown. With `force_damaged` prune names each
//! and goes on.
//!
//! **Phase one.** Packs no live blob uses and packs whose unused share
//! passes `max_unused` (after their live blobs are copied, verified, into
//! new packs and a new index object is durable) are recorded in
//! `pending/<generation>`, whose storage time dates the decision. From then
//! on backups treat their blobs as absent.
//!
//! **Phase two (sweep).** A generation's packs are deleted only when no live
//! lease began before it (each such operation may have deduplicated against
//! them before the generation existed), and only after a fresh sync and
//! mark show that no snapshot needs a blob found only in them; packs that
//! are needed after all are kept and become usable again. Right before the
//! delete, every live blob must still have a copy outside the packs going.
//! Index objects
//! naming deleted packs are rewritten without them, the new object written
//! before the old ones are deleted, and the generation object goes last, so
//! every intermediate state is one a reader and a later prune handle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;

use crate::backend::{Backend, RequestCounts, delete_all};
use crate::catalog::{PackState, PackUsage, SnapshotFilter};
use crate::error::{Error, Result};
use crate::hash::{BlobId, GenerationId, IndexId, PackId, SnapshotId};
use crate::index::{INDEX_FLUSH_BLOBS, IndexObject, IndexedPack, PendingObject};
use crate::layout::{index_path, pack_path, parse_pack_path, pending_path};
use crate::lease::{self, Lease, LeaseInfo, LeaseKind, LeaseView};
use crate::pack::{PackKind, PackWriter, read_header};
use crate::repo::{DamagedObject, Repo};
use crate::seal::{ObjectKind, with_codec};
use crate::snapshot::{Content, NodeKind};
use crate::write::upload;

/// An index object naming fewer packs than this is merged with others.
const SMALL_INDEX_PACKS: u64 = 16;
/// Default `--max-unused`: repack a pack once more than this share of it
/// is unused.
pub const DEFAULT_MAX_UNUSED_PERCENT: f64 = 10.0;
/// Default bound on waiting for another prune.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30 * 60);

/// Receives messages about waiting, as they happen.
pub type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// What to prune.
#[derive(Clone)]
pub struct PruneOptions {
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    /// Repack packs whose unused share exceeds this percentage.
    pub max_unused_percent: f64,
    /// How long to wait for another prune before giving up.
    pub max_wait: Duration,
    /// Called with each "waiting for …" message, and with each piece of
    /// damage prune goes on despite (with `force_damaged`), before it acts.
    pub notify: Option<Notify>,
    /// Go on when snapshot, index, tree or list objects cannot be read:
    /// whatever only they reference is then deleted. Without it such damage
    /// makes prune delete nothing ([`Error::PruneRefused`]).
    pub force_damaged: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            max_unused_percent: DEFAULT_MAX_UNUSED_PERCENT,
            max_wait: DEFAULT_MAX_WAIT,
            notify: None,
            force_damaged: false,
        }
    }
}

impl std::fmt::Debug for PruneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneOptions")
            .field("dry_run", &self.dry_run)
            .field("max_unused_percent", &self.max_unused_percent)
            .field("max_wait", &self.max_wait)
            .field("force_damaged", &self.force_damaged)
            .finish_non_exhaustive()
    }
}

/// One pending generation and what became of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationReport {
    /// Generation id; `None` for the one a dry run would record.
    pub id: Option<GenerationId>,
    /// When the storage recorded it.
    pub time: String,
    /// Packs it names.
    pub packs: u64,
    /// Their stored bytes (as far as the catalog knows them).
    pub bytes: u64,
    /// `deleted`, `waiting`, `would be deleted now`, or `would wait`.
    pub status: String,
    /// The live leases that began before it, when it must wait.
    pub waits_for: Vec<String>,
    /// Packs kept because a snapshot committed since needs them.
    pub packs_rescued: u64,
}

/// What `prune` found and did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneSummary {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Snapshots marked.
    pub snapshots: u64,
    /// Blobs some snapshot uses.
    pub live_blobs: u64,
    /// Packs and stored bytes before pruning.
    pub packs_total: u64,
    /// …
    pub bytes_total: u64,
    /// Packs no snapshot uses at all.
    pub packs_unused: u64,
    /// Their bytes.
    pub bytes_unused: u64,
    /// Packs rewritten because enough of them is unused.
    pub packs_repacked: u64,
    /// Bytes of those packs.
    pub bytes_repacked: u64,
    /// Bytes copied out of them into new packs.
    pub bytes_rewritten: u64,
    /// Packs no index object names (left by interrupted runs).
    pub packs_unindexed: u64,
    /// Their bytes.
    pub bytes_unindexed: u64,
    /// Of those, packs whose headers were read and named in a new index
    /// object, so that they are deleted only if no snapshot needs them.
    pub packs_reindexed: u64,
    /// Their bytes.
    pub bytes_reindexed: u64,
    /// The generation this run recorded (or would record).
    pub new_generation: Option<GenerationId>,
    /// Packs in it and their bytes.
    pub pending_packs: u64,
    /// …
    pub pending_bytes: u64,
    /// Every generation this run looked at.
    pub generations: Vec<GenerationReport>,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Stored bytes freed.
    pub bytes_freed: u64,
    /// Index objects written and deleted by consolidation.
    pub indexes_written: u64,
    /// …
    pub indexes_deleted: u64,
    /// Expired leases removed.
    pub leases_removed: u64,
    /// Seconds spent waiting for another prune.
    pub waited_s: f64,
    /// Damaged data prune left alone, and other things worth knowing.
    pub warnings: Vec<String>,
    /// Wall time.
    pub duration_s: f64,
    /// Storage requests made.
    pub requests: RequestCounts,
}

/// Runs prune; see the module docs. Uses the prune lease `repo` holds, or
/// takes one for the run and releases it at the end.
pub async fn prune(repo: &Repo, options: &PruneOptions) -> Result<PruneSummary> {
    let guard = repo.hold_lease(LeaseKind::Prune).await?;
    let result = prune_leased(repo, guard.lease(), options).await;
    guard.finish().await;
    result
}

async fn prune_leased(repo: &Repo, lease: &Lease, options: &PruneOptions) -> Result<PruneSummary> {
    let started = Instant::now();
    let mut run = Run {
        repo,
        lease,
        options,
        summary: PruneSummary {
            dry_run: options.dry_run,
            ..PruneSummary::default()
        },
        marked: HashSet::new(),
        mark_damage: Vec::new(),
        told: HashSet::new(),
        unreadable: Vec::new(),
        damaged: Vec::new(),
    };
    let waited = run.wait_for_older_prunes().await?;
    run.summary.waited_s = waited.as_secs_f64();
    // A sync of prune's own, after the lease is listed and any older prune
    // has finished: its report, not whatever an earlier sync of this
    // repository handle saw, says what cannot be read.
    run.damaged = repo.sync().await?.damaged;
    run.reindex_unindexed().await?;
    repo.catalog().live_reset()?;
    run.mark().await?;
    // Before anything is deleted: what cannot be read makes what the
    // snapshots need unknown.
    run.check_damage(Vec::new())?;

    // Generations recorded earlier: sweep what may be swept.
    let earlier = repo.catalog().pending_generations()?;
    for (generation, time) in earlier {
        run.sweep(generation, time).await?;
    }

    run.plan_and_record().await?;
    if options.dry_run {
        let view = lease.refresh().await?;
        run.report_ignored(&view.ignored);
    } else {
        run.consolidate_small_indexes().await?;
        run.remove_expired_leases().await?;
    }
    let mut summary = run.summary;
    summary.live_blobs = repo.catalog().live_count()?;
    summary.duration_s = started.elapsed().as_secs_f64();
    summary.requests = repo.counts();
    Ok(summary)
}

struct Run<'a> {
    repo: &'a Repo,
    lease: &'a Lease,
    options: &'a PruneOptions,
    summary: PruneSummary,
    marked: HashSet<SnapshotId>,
    /// Trees and lists marking could not read.
    mark_damage: Vec<String>,
    /// Damage already reported, so each piece is told once.
    told: HashSet<String>,
    /// Packs in no index object whose header cannot be read.
    unreadable: Vec<(PackId, u64)>,
    /// What prune's latest sync could not read.
    damaged: Vec<DamagedObject>,
}

impl Run<'_> {
    fn notify(&self, message: &str) {
        if let Some(notify) = &self.options.notify {
            notify(message);
        }
    }

    /// Waits until no live prune lease is older than ours. Ties within the
    /// storage's clock resolution go to the smaller lease id, and the first
    /// look is taken only after that resolution has passed, so two prunes
    /// starting together both see each other and agree which goes first.
    async fn wait_for_older_prunes(&self) -> Result<Duration> {
        let waited = Instant::now();
        let resolution = self.lease.resolution();
        tokio::time::sleep(resolution).await;
        let poll = (self.lease.ttl() / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let view = self.lease.refresh().await?;
            let Some(me) = view.me().cloned() else {
                return Err(Error::corrupt(
                    "locks/",
                    "this prune's own lease is not listed",
                ));
            };
            let older: Vec<LeaseInfo> = view
                .others_live(resolution)
                .filter(|l| l.kind == LeaseKind::Prune.name() && goes_first(l, &me, resolution))
                .cloned()
                .collect();
            let Some(first) = older.first() else {
                return Ok(waited.elapsed());
            };
            let what = format!("another prune: {}", self.lease.describe(first));
            if waited.elapsed() >= self.options.max_wait {
                return Err(Error::Busy {
                    waited_s: waited.elapsed().as_secs(),
                    what,
                });
            }
            self.notify(&format!("waiting for {what}"));
            tokio::time::sleep(poll).await;
        }
    }

    /// Marks every snapshot not marked yet. Trees and lists that cannot be
    /// read are recorded as damage, and marking goes on past them.
    async fn mark(&mut self) -> Result<()> {
        for (id, snapshot) in self.repo.snapshots(&SnapshotFilter::default())? {
            if !self.marked.insert(id) {
                continue;
            }
            for e in mark_tree(self.repo, snapshot.root).await? {
                self.mark_damage
                    .push(format!("snapshot {}: {e}", id.short()));
            }
        }
        self.summary.snapshots = self.marked.len() as u64;
        Ok(())
    }

    /// Refuses to go on while some snapshot, index, tree or list object
    /// cannot be read (what it references is then unknown), or while `more`
    /// holds other reasons; with `force_damaged`, reports each piece once,
    /// before acting, and goes on.
    fn check_damage(&mut self, more: Vec<String>) -> Result<()> {
        let mut damage = Vec::new();
        for object in &self.damaged {
            if object.name.starts_with("pending/") {
                // An unreadable generation protects and deletes nothing.
                let warning = format!("{object}; it is ignored");
                if self.told.insert(warning.clone()) {
                    self.summary.warnings.push(warning);
                }
            } else {
                damage.push(object.to_string());
            }
        }
        damage.extend(self.mark_damage.iter().cloned());
        damage.extend(more);
        if damage.is_empty() {
            return Ok(());
        }
        if !self.options.force_damaged {
            return Err(Error::PruneRefused { damage });
        }
        for piece in damage {
            if self.told.insert(piece.clone()) {
                let warning =
                    format!("going on despite damage: {piece}; data only it references is deleted");
                self.notify(&warning);
                self.summary.warnings.push(warning);
            }
        }
        Ok(())
    }

    /// Decides what is garbage, repacks, records a generation and sweeps it
    /// if nothing older is running.
    async fn plan_and_record(&mut self) -> Result<()> {
        let usage = self.repo.catalog().pack_usage()?;
        let max_unused = self.options.max_unused_percent / 100.0;

        let mut unused: Vec<&PackUsage> = Vec::new();
        let mut repack: Vec<&PackUsage> = Vec::new();
        for u in &usage {
            self.summary.packs_total += 1;
            self.summary.bytes_total += u.pack.size;
            match u.pack.state {
                PackState::Pending => continue,
                _ if u.live_blobs == 0 => unused.push(u),
                PackState::Damaged => self.summary.warnings.push(format!(
                    "{} is damaged or missing and still holds live blobs; left alone (see `larder check`)",
                    pack_path(&u.pack.id)
                )),
                PackState::Usable => {
                    // Measured against the blobs, not the pack: a small
                    // pack's header alone would otherwise count as unused,
                    // and it would be repacked on every run.
                    let share = 1.0 - u.live_bytes as f64 / u.blob_bytes.max(1) as f64;
                    if share > max_unused {
                        repack.push(u);
                    }
                }
            }
        }
        // Packs in no index whose header cannot be read: what they hold is
        // unknown, so they stay unless prune was told to go on despite damage.
        let unindexed: Vec<(PackId, u64)> = if self.options.force_damaged {
            std::mem::take(&mut self.unreadable)
        } else {
            Vec::new()
        };
        self.summary.packs_unused = unused.len() as u64;
        self.summary.bytes_unused = unused.iter().map(|u| u.pack.size).sum();

        let mut doomed: Vec<PackId> = unused.iter().map(|u| u.pack.id).collect();
        doomed.extend(unindexed.iter().map(|p| p.0));
        if !self.options.dry_run && !repack.is_empty() {
            // Only the packs actually repacked count: one that could not be
            // read stays where it is.
            let repacked: HashSet<PackId> = self.repack(&repack).await?.into_iter().collect();
            repack.retain(|u| repacked.contains(&u.pack.id));
        }
        self.summary.packs_repacked = repack.len() as u64;
        self.summary.bytes_repacked = repack.iter().map(|u| u.pack.size).sum();
        self.summary.bytes_rewritten = repack.iter().map(|u| u.live_bytes).sum();
        doomed.extend(repack.iter().map(|u| u.pack.id));
        if doomed.is_empty() {
            return Ok(());
        }
        doomed.sort();
        doomed.dedup();
        let sizes: HashMap<PackId, u64> = usage
            .iter()
            .map(|u| (u.pack.id, u.pack.size))
            .chain(unindexed.iter().copied())
            .collect();
        self.summary.pending_packs = doomed.len() as u64;
        self.summary.pending_bytes = doomed.iter().filter_map(|p| sizes.get(p)).sum();
        if self.options.dry_run {
            let view = self.lease.refresh().await?;
            let waits = self.blockers(&view, view.now);
            self.summary.generations.push(GenerationReport {
                id: None,
                time: lease::format_storage_time(view.now),
                packs: doomed.len() as u64,
                bytes: self.summary.pending_bytes,
                status: if waits.is_empty() {
                    "would be deleted now".into()
                } else {
                    "would wait".into()
                },
                waits_for: waits,
                packs_rescued: 0,
            });
            return Ok(());
        }
        let (generation, time) = self
            .repo
            .write_pending(&PendingObject { packs: doomed })
            .await?;
        self.summary.new_generation = Some(generation);
        self.sweep(generation, time).await
    }

    /// Reads the headers of the packs no index object names (left by
    /// interrupted backups, or named by an index object that is damaged or
    /// hidden from the listing) and names them in a new index object, so
    /// that marking finds what they hold and they are deleted only if no
    /// snapshot needs it. In a dry run they are only absorbed into the
    /// catalog, which the next sync corrects. A pack whose header cannot be
    /// read is left alone (and remembered for a forced run).
    async fn reindex_unindexed(&mut self) -> Result<()> {
        let known: HashSet<PackId> = self.repo.catalog().packs()?.iter().map(|p| p.id).collect();
        let pending = self.repo.catalog().pending_pack_ids()?;
        let mut unindexed: Vec<(PackId, u64)> = Vec::new();
        for object in self.repo.backend().list("packs/").await? {
            if let Some(id) = parse_pack_path(&object.name)
                && !known.contains(&id)
                && !pending.contains(&id)
            {
                unindexed.push((id, object.size));
            }
        }
        self.summary.packs_unindexed = unindexed.len() as u64;
        self.summary.bytes_unindexed = unindexed.iter().map(|p| p.1).sum();
        let repo = self.repo;
        let mut headers = futures::stream::iter(unindexed)
            .map(|(id, size)| async move {
                (id, size, repo.read_pack_header(&pack_path(&id), size).await)
            })
            .buffer_unordered(8);
        let mut repair = IndexObject::default();
        while let Some((id, size, header)) = headers.next().await {
            let entries = match header {
                Ok(entries) => entries,
                Err(e) if e.is_damage() => {
                    self.summary.warnings.push(format!(
                        "{e}; it is in no index object and what it holds cannot be read, so it is left alone"
                    ));
                    self.unreadable.push((id, size));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let kind = match entries.first().and_then(|e| e.object_kind()) {
                Some(ObjectKind::DataBlob) | None => PackKind::Data,
                Some(_) => PackKind::Tree,
            };
            self.summary.packs_reindexed += 1;
            self.summary.bytes_reindexed += size;
            repair.packs.push(IndexedPack {
                id,
                kind: kind.code(),
                size,
                blobs: entries,
            });
            if repair.blob_count() >= INDEX_FLUSH_BLOBS {
                self.store_repair_index(std::mem::take(&mut repair)).await?;
            }
        }
        if !repair.packs.is_empty() {
            self.store_repair_index(repair).await?;
        }
        Ok(())
    }

    async fn store_repair_index(&mut self, index: IndexObject) -> Result<()> {
        if self.options.dry_run {
            self.repo.catalog().absorb_index(IndexId::random(), &index)
        } else {
            self.repo.write_index(&index).await.map(|_| ())
        }
    }

    /// The last check before packs are deleted: every blob a snapshot needs
    /// must be stored in a pack that stays. Blobs in no pack at all are
    /// damage (prune refuses unless forced); blobs only in `doomed` are
    /// never deleted, forced or not.
    fn verify_before_delete(&mut self, doomed: &[PackId]) -> Result<()> {
        let check = self.repo.catalog().verify_live(doomed, 3)?;
        let ids = |sample: &[BlobId]| {
            sample
                .iter()
                .map(BlobId::short)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if check.only_in_doomed > 0 {
            return Err(Error::PruneRefused {
                damage: vec![format!(
                    "{} blob(s) snapshots need are stored only in packs about to be deleted (such as {}); this is a bug in prune's plan, please report it",
                    check.only_in_doomed,
                    ids(&check.only_in_doomed_sample)
                )],
            });
        }
        if check.known_damaged > 0 {
            let warning = format!(
                "{} blob(s) snapshots need have no intact copy (found damaged by `larder check`); back up their data again",
                check.known_damaged
            );
            if self.told.insert(warning.clone()) {
                self.summary.warnings.push(warning);
            }
        }
        if check.unlocated > 0 {
            self.check_damage(vec![format!(
                "{} blob(s) snapshots need are in no pack any index object names (such as {}); an index object may be missing, damaged or hidden",
                check.unlocated,
                ids(&check.unlocated_sample)
            )])?;
        }
        Ok(())
    }

    /// Copies the live blobs of `packs` into new packs, verified, and writes
    /// the index naming them. Returns the packs whose live blobs are now
    /// stored elsewhere (a pack that cannot be read whole is left alone).
    async fn repack(&mut self, packs: &[&PackUsage]) -> Result<Vec<PackId>> {
        let config = self.repo.config();
        let level = config.compression_level;
        let mut done = Vec::new();
        let mut written: HashSet<BlobId> = HashSet::new();
        let mut writers: HashMap<PackKind, PackWriter> = HashMap::new();
        let mut index = IndexObject::default();
        for usage in packs {
            let id = usage.pack.id;
            let name = pack_path(&id);
            let bytes = match self.repo.backend().get(&name, usage.pack.size).await {
                Ok(bytes) => bytes,
                // Left where it is (not deleted): `check` reports it.
                Err(e) if e.is_damage() => {
                    self.summary.warnings.push(format!("{e}; not repacked"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if crate::hash::PackId::of_pack(&bytes) != id {
                self.summary.warnings.push(format!(
                    "{name} does not match its name; not repacked (see `larder check --read-data`)"
                ));
                continue;
            }
            let sealer = self.repo.sealer().clone();
            let header = match with_codec(level, |codec| read_header(&sealer, codec, &bytes, &name))
            {
                Ok(header) => header,
                Err(e) => {
                    self.summary.warnings.push(format!("{e}; not repacked"));
                    continue;
                }
            };
            for entry in header.entries {
                let Some(kind) = entry.object_kind() else {
                    continue;
                };
                if written.contains(&entry.id) || !self.repo.catalog().is_live(&entry.id)? {
                    continue;
                }
                let at = entry.offset as usize..entry.offset as usize + entry.length as usize;
                let sealed = &bytes[at];
                // Copied sealed, but only after it opens: damage is never
                // carried into a new pack.
                let opened = with_codec(level, |codec| {
                    sealer.open(
                        codec,
                        kind,
                        entry.id.as_bytes(),
                        sealed,
                        entry.raw_length as usize,
                    )
                });
                if let Err(e) = opened {
                    self.summary.warnings.push(format!(
                        "blob {} in {name} is damaged ({e}); not copied, so the next backup of that content stores it again",
                        entry.id.short()
                    ));
                    continue;
                }
                let pack_kind = PackKind::for_blob(kind);
                let target = match pack_kind {
                    PackKind::Data => config.data_pack_size,
                    PackKind::Tree => config.tree_pack_size,
                } as usize;
                let writer = writers
                    .entry(pack_kind)
                    .or_insert_with(|| PackWriter::new(pack_kind));
                writer.add(kind, entry.id, sealed, entry.raw_length);
                written.insert(entry.id);
                if writer.len() >= target {
                    let full = std::mem::replace(writer, PackWriter::new(pack_kind));
                    self.store_pack(full, &mut index).await?;
                }
            }
            done.push(id);
        }
        for (_, writer) in writers {
            if !writer.is_empty() {
                self.store_pack(writer, &mut index).await?;
            }
        }
        if !index.packs.is_empty() {
            self.repo.write_index(&index).await?;
        }
        Ok(done)
    }

    async fn store_pack(&mut self, writer: PackWriter, index: &mut IndexObject) -> Result<()> {
        let level = self.repo.config().compression_level;
        let sealer = self.repo.sealer().clone();
        let finished = with_codec(level, |codec| writer.finish(&sealer, codec));
        let (indexed, _) = upload(self.repo, finished).await?;
        index.packs.push(indexed);
        if index.blob_count() >= INDEX_FLUSH_BLOBS {
            self.repo.write_index(&std::mem::take(index)).await?;
        }
        Ok(())
    }

    /// The live leases, other than ours, that began before `time` (within
    /// the clock resolution), described.
    /// Objects under `locks/` that are not leases of this repository are
    /// reported (once) and never waited for.
    fn blockers(&mut self, view: &LeaseView, time: Timestamp) -> Vec<String> {
        self.report_ignored(&view.ignored);
        let resolution = self.lease.resolution();
        let mut out = Vec::new();
        for other in view.others_live(resolution) {
            if other.start <= lease::add(time, resolution) {
                out.push(self.lease.describe(other));
            }
        }
        out
    }

    /// Phase two for one generation (see the module docs).
    async fn sweep(&mut self, generation: GenerationId, time_ns: i64) -> Result<()> {
        let time = Timestamp::from_nanosecond(i128::from(time_ns)).unwrap_or(Timestamp::MAX);
        let packs = self.repo.catalog().generation_packs(&generation)?;
        let sizes: HashMap<PackId, u64> = self
            .repo
            .catalog()
            .packs()?
            .into_iter()
            .map(|p| (p.id, p.size))
            .collect();
        let bytes: u64 = packs.iter().filter_map(|p| sizes.get(p)).sum();
        let view = self.lease.refresh().await?;
        let waits = self.blockers(&view, time);
        let mut report = GenerationReport {
            id: Some(generation),
            time: lease::format_storage_time(time),
            packs: packs.len() as u64,
            bytes,
            status: String::new(),
            waits_for: waits.clone(),
            packs_rescued: 0,
        };
        if !waits.is_empty() {
            report.status = if self.options.dry_run {
                "would wait"
            } else {
                "waiting"
            }
            .into();
            self.summary.generations.push(report);
            return Ok(());
        }
        if self.options.dry_run {
            report.status = "would be deleted now".into();
            self.summary.generations.push(report);
            return Ok(());
        }

        // The re-check: everything committed up to now is marked, and
        // nothing that cannot be read has appeared since.
        self.damaged = self.repo.sync().await?.damaged;
        self.mark().await?;
        self.check_damage(Vec::new())?;
        let needed: HashSet<PackId> = self
            .repo
            .catalog()
            .needed_packs(&generation)?
            .into_iter()
            .collect();
        let doomed: Vec<PackId> = packs
            .iter()
            .filter(|p| !needed.contains(p))
            .copied()
            .collect();
        report.packs_rescued = needed.len() as u64;
        self.verify_before_delete(&doomed)?;

        delete_all(self.repo.backend(), doomed.iter().map(pack_path)).await?;
        self.summary.packs_deleted += doomed.len() as u64;
        self.summary.bytes_freed += doomed.iter().filter_map(|p| sizes.get(p)).sum::<u64>();

        let gone: HashSet<PackId> = doomed.iter().copied().collect();
        let naming = self.repo.catalog().indexes_naming(&doomed)?;
        self.rewrite_indexes(naming, &gone).await?;
        self.repo
            .backend()
            .delete(&pending_path(&generation))
            .await?;
        self.repo.catalog().drop_pending(&[generation])?;
        report.status = "deleted".into();
        self.summary.generations.push(report);
        Ok(())
    }

    /// Rewrites `victims` into as few index objects as fit, leaving out
    /// `gone` packs: new objects first, then the old ones are deleted.
    async fn rewrite_indexes(
        &mut self,
        victims: HashSet<IndexId>,
        gone: &HashSet<PackId>,
    ) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        let mut victims: Vec<IndexId> = victims.into_iter().collect();
        victims.sort();
        let mut seen: HashSet<PackId> = HashSet::new();
        let mut next = IndexObject::default();
        let mut replaced = Vec::new();
        for id in &victims {
            let old = match self.repo.load_index(id).await {
                Ok(old) => old,
                // Gone already (a crashed earlier sweep got this far).
                Err(Error::NotFound { .. }) => {
                    replaced.push(*id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for pack in old.packs {
                if !gone.contains(&pack.id) && seen.insert(pack.id) {
                    next.packs.push(pack);
                }
            }
            next.supersedes.push(*id);
            replaced.push(*id);
            if next.blob_count() >= INDEX_FLUSH_BLOBS {
                self.repo.write_index(&std::mem::take(&mut next)).await?;
                self.summary.indexes_written += 1;
            }
        }
        if !next.packs.is_empty() {
            self.repo.write_index(&next).await?;
            self.summary.indexes_written += 1;
        }
        delete_all(self.repo.backend(), replaced.iter().map(index_path)).await?;
        self.summary.indexes_deleted += replaced.len() as u64;
        self.repo.catalog().drop_indexes(&replaced)?;
        Ok(())
    }

    /// Merges index objects that name only a few packs each (every backup
    /// writes at least one), so opening a fresh cache reads fewer objects.
    async fn consolidate_small_indexes(&mut self) -> Result<()> {
        let small: HashSet<IndexId> = self
            .repo
            .catalog()
            .index_sizes()?
            .into_iter()
            .filter(|(_, packs)| *packs < SMALL_INDEX_PACKS)
            .map(|(id, _)| id)
            .collect();
        if small.len() < 2 {
            return Ok(());
        }
        self.rewrite_indexes(small, &HashSet::new()).await
    }

    /// Deletes the objects of leases that expired, or whose holder is a
    /// process of this machine that no longer runs.
    async fn remove_expired_leases(&mut self) -> Result<()> {
        let cleanup = self.lease.remove_dead().await?;
        self.summary.leases_removed = cleanup.removed.len() as u64;
        self.report_ignored(&cleanup.ignored);
        Ok(())
    }

    /// Reports, once each, objects under `locks/` that are not leases of
    /// this repository.
    fn report_ignored(&mut self, ignored: &[String]) {
        for stranger in ignored {
            let warning = format!("ignored {stranger}");
            if self.told.insert(warning.clone()) {
                self.summary.warnings.push(warning);
            }
        }
    }
}

/// Whether prune lease `other` goes before `me`: it began earlier by more
/// than the clock resolution, or within it and has the smaller id.
fn goes_first(other: &LeaseInfo, me: &LeaseInfo, resolution: Duration) -> bool {
    if lease::add(other.start, resolution) < me.start {
        true
    } else if lease::add(me.start, resolution) < other.start {
        false
    } else {
        other.id < me.id
    }
}

/// Marks a tree and everything below it live. A tree or list that cannot
/// be read is returned as damage, and marking goes on with the rest.
async fn mark_tree(repo: &Repo, root: BlobId) -> Result<Vec<Error>> {
    let mut damage = Vec::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !repo.catalog().live_insert(&[id])?[0] {
            continue;
        }
        let tree = match repo.load_tree(&id).await {
            Ok(tree) => tree,
            Err(e) if e.is_damage() => {
                damage.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        for node in &tree.entries {
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        stack.push(sub);
                    }
                }
                NodeKind::File => {
                    for content in node.contents() {
                        mark_content(repo, content, &mut damage).await?;
                    }
                }
                NodeKind::Symlink => {}
            }
        }
    }
    Ok(damage)
}

/// Marks a content list's chunks, and its list blobs and what they name.
async fn mark_content(repo: &Repo, content: &Content, damage: &mut Vec<Error>) -> Result<()> {
    // List blobs newly marked, still to be read.
    let mut stack: Vec<(BlobId, u8)> = Vec::new();
    mark_entries(repo, content, &mut stack)?;
    while let Some((id, depth)) = stack.pop() {
        match repo.load_list(&id, depth).await {
            Ok(list) => mark_entries(repo, &list, &mut stack)?,
            Err(e) if e.is_damage() => damage.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn mark_entries(repo: &Repo, content: &Content, stack: &mut Vec<(BlobId, u8)>) -> Result<()> {
    let ids: Vec<BlobId> = content.entries.iter().map(|e| e.id).collect();
    let fresh = repo.catalog().live_insert(&ids)?;
    if content.depth > 0 {
        for (id, fresh) in ids.into_iter().zip(fresh) {
            if fresh {
                stack.push((id, content.depth - 1));
            }
        }
    }
    Ok(())
}
