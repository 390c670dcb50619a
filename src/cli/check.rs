//! `larder check`.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use larder::Progress;
use larder::ops::check::{CheckOptions, check};

use larder::LeaseKind;

use super::state::{CheckRecord, State, now_s};
use super::{GlobalArgs, Outcome, open_leased, progress_bar::Bar, render};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Download every pack and verify every blob (decrypt, decompress, recompute its id)
    #[arg(long)]
    read_data: bool,
    /// Read only part of the packs: K/M (part K of M; runs 1/M to M/M together read every pack once), or N% (about N percent, a different part each run on this machine, so every pack is read over 100/N runs)
    #[arg(long, value_name = "K/M|N%", conflicts_with = "read_data")]
    read_data_subset: Option<larder::plan::SubsetSpec>,
}

pub async fn run(global: &GlobalArgs, args: CheckArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let state_path = State::path(&global.cache_root()?, global.repo_url()?)?;
    let mut state = State::load(&state_path);
    let subset = args
        .read_data_subset
        .map(|spec| spec.part(state.check_runs));
    let read_data = args.read_data || subset.is_some();
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(
        global.shows_progress() && read_data,
        "reading packs",
        Arc::clone(&progress),
    );
    let summary = check(
        &repo,
        &CheckOptions {
            read_data,
            subset,
            progress,
        },
    )
    .await?;
    drop(bar);
    if subset.is_some() {
        state.check_runs += 1;
    }
    state.last_check = Some(CheckRecord {
        time: now_s(),
        ok: summary.is_ok(),
        subset: subset.map(|s| format!("{}/{}", s.part, s.of)),
        packs_read: summary.packs_read,
        error: None,
    });
    if let Err(e) = state.save(&state_path) {
        render::warn_all(&[format!("{e:#}")]);
    }
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
                "checked {}, {}{}",
                render::count(summary.snapshots_checked as u64, "snapshot"),
                render::count(summary.packs as u64, "pack"),
                if read_data {
                    format!(
                        "; read {}, {}, {}",
                        render::count(summary.packs_read as u64, "pack"),
                        render::count(summary.blobs_read as u64, "blob"),
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
            "check found {} affecting {}",
            render::count(summary.problems.len() as u64, "damaged or missing object"),
            render::count(summary.affected_snapshots.len() as u64, "snapshot")
        );
    }
    if !global.quiet && !global.json {
        outln!("no problems found")?;
    }
    Ok(Outcome::Success)
}
