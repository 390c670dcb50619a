//! `larder forget` and `larder prune`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use larder::LeaseKind;
use larder::SnapshotFilter;
use larder::ops::forget::{ForgetOptions, ForgetSummary, GroupBy};
use larder::ops::prune::{
    DEFAULT_MAX_UNUSED_PERCENT, DEFAULT_MAX_WAIT, PruneOptions, PruneSummary,
};
use larder::retention::{Policy, Within};

use super::{GlobalArgs, Outcome, open, open_leased, render};

#[derive(Args, Debug)]
#[command(
    after_help = "Each --keep-* rule keeps the newest snapshot in each of the last N hours/days/ISO weeks/months/years that have snapshots; \
one snapshot may satisfy several rules. Periods are in local time unless --utc. Groups are source + host unless --group-by says otherwise. \
Snapshots dated more than 5 minutes after now are kept, reported, and counted toward no rule.\n\
Example (grandfather-father-son): larder forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune"
)]
pub struct ForgetArgs {
    /// Remove these snapshots (ids or unique prefixes) instead of applying --keep-* rules
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Only snapshots of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only snapshots from this host
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only snapshots carrying this tag (repeatable: all must match)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep every snapshot within this span of now, or of the newest snapshot if that is older (such as 7d, 2w, 1y6m, 36h)
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<Within>,
    /// Keep every snapshot carrying this tag (repeatable)
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Group by these fields: a comma-separated list of source, host, tags; "" for one group
    #[arg(long, value_name = "LIST", default_value = "source,host")]
    group_by: GroupBy,
    /// Use UTC for periods instead of local time
    #[arg(long)]
    utc: bool,
    /// Show what would be kept and removed; change nothing
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Allow the policy to remove every snapshot of a group
    #[arg(long)]
    allow_empty: bool,
    /// Prune afterwards, in the same run
    #[arg(long)]
    prune: bool,
    /// With --prune: repack packs more than this percent unused
    #[arg(long, value_name = "PCT", default_value_t = DEFAULT_MAX_UNUSED_PERCENT)]
    max_unused: f64,
    /// With --prune: go on although some snapshot, index, tree or list objects cannot be read, deleting what only they reference (it is named first)
    #[arg(long)]
    force_damaged: bool,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Phase one records unused packs in pending/<generation>; phase two deletes them once no operation \
that began before that generation is still running, in this run if nothing else is running, else in a later one."
)]
pub struct PruneArgs {
    /// Show what would be freed and when; change nothing
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Repack packs more than this percent unused (their live blobs are copied into new packs)
    #[arg(long, value_name = "PCT", default_value_t = DEFAULT_MAX_UNUSED_PERCENT)]
    max_unused: f64,
    /// Give up after waiting this many seconds for another prune
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    max_wait: u64,
    /// Go on although some snapshot, index, tree or list objects cannot be read, deleting what only they reference (it is named first)
    #[arg(long)]
    force_damaged: bool,
}

pub async fn forget(global: &GlobalArgs, args: ForgetArgs) -> Result<Outcome> {
    let repo = if args.prune && !args.dry_run {
        open_leased(global, LeaseKind::Prune).await?
    } else {
        open(global).await?
    };
    let options = ForgetOptions {
        filter: SnapshotFilter {
            source: args.source,
            host: args.host,
            tags: args.tags,
        },
        policy: Policy {
            last: args.keep_last,
            hourly: args.keep_hourly,
            daily: args.keep_daily,
            weekly: args.keep_weekly,
            monthly: args.keep_monthly,
            yearly: args.keep_yearly,
            within: args.keep_within,
            tags: args.keep_tags,
        },
        group_by: args.group_by,
        time_zone: if args.utc {
            jiff::tz::TimeZone::UTC
        } else {
            jiff::tz::TimeZone::system()
        },
        now: jiff::Timestamp::now(),
        dry_run: args.dry_run,
        allow_empty: args.allow_empty,
        snapshots: args
            .snapshots
            .iter()
            .map(|s| {
                repo.resolve_snapshot(s, &SnapshotFilter::default())
                    .map(|(id, _)| id)
            })
            .collect::<larder::Result<Vec<_>>>()?,
    };
    let summary = larder::ops::forget::forget(&repo, &options).await?;
    let pruned = if args.prune {
        let options = prune_options(
            global,
            args.dry_run,
            args.max_unused,
            DEFAULT_MAX_WAIT.as_secs(),
            args.force_damaged,
        )?;
        Some(
            larder::ops::prune::prune(&repo, &options)
                .await
                .map_err(with_force_hint)?,
        )
    } else {
        None
    };
    if global.json {
        match &pruned {
            None => render::print_json(&summary.snapshots)?,
            Some(pruned) => render::print_json(&serde_json::json!({
                "snapshots": summary.snapshots,
                "prune": pruned,
            }))?,
        }
    } else if !global.quiet {
        print_forget(&summary)?;
        if let Some(pruned) = &pruned {
            print_prune(pruned)?;
        }
    }
    render::warn_all(&summary.warnings);
    Ok(match outcome(pruned.as_ref()) {
        Outcome::Success if !summary.warnings.is_empty() => Outcome::Warnings,
        outcome => outcome,
    })
}

pub async fn prune(global: &GlobalArgs, args: PruneArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Prune).await?;
    let options = prune_options(
        global,
        args.dry_run,
        args.max_unused,
        args.max_wait,
        args.force_damaged,
    )?;
    let summary = larder::ops::prune::prune(&repo, &options)
        .await
        .map_err(with_force_hint)?;
    if global.json {
        render::print_json(&summary)?;
    } else if !global.quiet {
        print_prune(&summary)?;
    }
    Ok(outcome(Some(&summary)))
}

/// Names the flag that overrides a refusal to prune a damaged repository.
fn with_force_hint(error: larder::Error) -> anyhow::Error {
    let refused = matches!(error, larder::Error::PruneRefused { .. });
    let error = anyhow::Error::new(error);
    if refused {
        error.context(
            "pruning (after repairing what can be repaired, --force-damaged deletes what only the damaged objects reference)",
        )
    } else {
        error
    }
}

fn prune_options(
    global: &GlobalArgs,
    dry_run: bool,
    max_unused: f64,
    max_wait: u64,
    force_damaged: bool,
) -> Result<PruneOptions> {
    if !(0.0..=100.0).contains(&max_unused) {
        anyhow::bail!("--max-unused {max_unused}: give a percentage from 0 to 100");
    }
    let quiet = global.quiet;
    Ok(PruneOptions {
        dry_run,
        max_unused_percent: max_unused,
        max_wait: Duration::from_secs(max_wait),
        notify: Some(Arc::new(move |message: &str| {
            if !quiet {
                errln!("{message}");
            }
        })),
        force_damaged,
    })
}

fn outcome(pruned: Option<&PruneSummary>) -> Outcome {
    match pruned {
        Some(p) if !p.warnings.is_empty() => Outcome::Warnings,
        _ => Outcome::Success,
    }
}

fn print_forget(summary: &ForgetSummary) -> Result<()> {
    let mut group = None;
    for entry in &summary.snapshots {
        if group != Some(&entry.group) {
            outln!("{}:", entry.group)?;
            group = Some(&entry.group);
        }
        outln!(
            "  {:<6}  {}  {}  {}",
            if entry.keep { "keep" } else { "remove" },
            entry.id.short(),
            entry.time,
            entry.reasons.join(", ")
        )?;
    }
    outln!(
        "{} {}, keeping {}",
        if summary.dry_run {
            "would remove"
        } else {
            "removed"
        },
        render::count(summary.removed, "snapshot"),
        summary.kept
    )
}

fn print_prune(summary: &PruneSummary) -> Result<()> {
    let size = render::size;
    outln!(
        "marked {}: {}; {}, {}",
        render::count(summary.snapshots, "snapshot"),
        render::count(summary.live_blobs, "live blob"),
        render::count(summary.packs_total, "pack"),
        size(summary.bytes_total)
    )?;
    outln!(
        "unused packs {} ({}), packs to repack {} ({}, {} of it live), packs in no index {} ({})",
        summary.packs_unused,
        size(summary.bytes_unused),
        summary.packs_repacked,
        size(summary.bytes_repacked),
        size(summary.bytes_rewritten),
        summary.packs_unindexed,
        size(summary.bytes_unindexed)
    )?;
    if let Some(id) = &summary.new_generation {
        outln!(
            "recorded pending generation {}: {} packs, {}",
            id.short(),
            summary.pending_packs,
            size(summary.pending_bytes)
        )?;
    }
    for g in &summary.generations {
        let id = g.id.map_or_else(|| "(new)".to_string(), |id| id.short());
        outln!(
            "generation {id} ({}): {} packs, {}: {}{}",
            g.time,
            g.packs,
            size(g.bytes),
            g.status,
            if g.packs_rescued > 0 {
                format!(
                    " ({} packs kept: a newer snapshot uses them)",
                    g.packs_rescued
                )
            } else {
                String::new()
            }
        )?;
        for w in &g.waits_for {
            outln!("  waits for {w}")?;
        }
    }
    if summary.dry_run {
        outln!("dry run: nothing changed")?;
    } else {
        outln!(
            "deleted {}, freed {}; index objects {} written, {} replaced; {} removed",
            render::count(summary.packs_deleted, "pack"),
            size(summary.bytes_freed),
            summary.indexes_written,
            summary.indexes_deleted,
            render::count(summary.leases_removed, "expired lease")
        )?;
    }
    render::warn_all(&summary.warnings);
    Ok(())
}
