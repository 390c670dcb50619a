//! `larder check`.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use larder::Progress;
use larder::ops::check::{CheckOptions, check};

use larder::LeaseKind;

use super::{GlobalArgs, Outcome, open_leased, progress_bar::Bar, render};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Download every pack and verify every blob (decrypt, decompress, recompute its id)
    #[arg(long)]
    read_data: bool,
}

pub async fn run(global: &GlobalArgs, args: CheckArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(
        global.shows_progress() && args.read_data,
        "reading packs",
        Arc::clone(&progress),
    );
    let summary = check(
        &repo,
        &CheckOptions {
            read_data: args.read_data,
            progress,
        },
    )
    .await?;
    drop(bar);
    if global.json {
        render::print_json(&summary)?;
    } else {
        for p in &summary.problems {
            errln!("damaged: {}: {}", p.object, p.problem);
        }
        for s in &summary.affected_snapshots {
            errln!(
                "affected: snapshot {} ({} {}):",
                s.id.short(),
                s.source,
                s.time
            );
            for r in &s.reasons {
                errln!("  {r}");
            }
        }
        if !global.quiet {
            for n in &summary.notes {
                outln!("note: {n}")?;
            }
            outln!(
                "checked {} snapshots, {} packs{}",
                summary.snapshots_checked,
                summary.packs,
                if args.read_data {
                    format!(
                        "; read {} packs, {} blobs, {}",
                        summary.packs_read,
                        summary.blobs_read,
                        render::size(summary.bytes_read)
                    )
                } else {
                    String::new()
                }
            )?;
        }
    }
    if !summary.is_ok() {
        bail!(
            "check found {} damaged or missing objects affecting {} snapshots",
            summary.problems.len(),
            summary.affected_snapshots.len()
        );
    }
    if !global.quiet && !global.json {
        outln!("no problems found")?;
    }
    Ok(Outcome::Success)
}
