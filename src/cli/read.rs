//! `larder cat` and `larder restore`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use larder::Progress;
use larder::SnapshotFilter;
use larder::ops::restore::{Overwrite, RestoreOptions};

use larder::LeaseKind;

use super::{GlobalArgs, Outcome, open_leased, progress_bar::Bar, render};

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Snapshot id prefix, or "latest"
    snapshot: String,
    /// File inside the snapshot; omit for a stream snapshot
    path: Option<std::ffi::OsString>,
    /// With "latest": the latest snapshot of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id prefix, or "latest"
    snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(long, value_name = "DIR")]
    target: PathBuf,
    /// Whether existing files may be replaced (always: after a safety snapshot of them)
    #[arg(long, value_enum, default_value_t = OverwriteArg::Never)]
    overwrite: OverwriteArg,
    /// Restore only paths matching GLOB (starting with '/': the whole snapshot path; with '/' inside: a path ending at any depth, such as */knowledge/*; without: a name); a matching directory brings its contents; nothing matching is a warning (exit 3) (repeatable)
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Leave out paths matching GLOB (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// With "latest": the latest snapshot of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OverwriteArg {
    Never,
    Always,
}

fn filter(source: Option<String>) -> SnapshotFilter {
    SnapshotFilter {
        source,
        ..SnapshotFilter::default()
    }
}

pub async fn cat(global: &GlobalArgs, args: CatArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let (id, snapshot) = match (&args.path, &args.source) {
        // `latest` with a path and no source: the newest snapshot that
        // holds the path, not the newest of any source.
        (Some(path), None) if args.snapshot == "latest" => {
            larder::ops::cat::latest_holding(
                &repo,
                std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()),
            )
            .await?
        }
        _ => repo.resolve_snapshot(&args.snapshot, &filter(args.source))?,
    };
    // Chunks are written whole; a large buffer keeps syscalls few on pipes.
    let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    let summary = larder::ops::cat::cat(
        &repo,
        &id,
        &snapshot,
        args.path
            .as_deref()
            .map(std::os::unix::ffi::OsStrExt::as_bytes),
        &mut stdout,
    )
    .await
    .with_context(|| format!("reading snapshot {}", id.short()))?;
    if global.json {
        render::eprint_json(&summary)?;
    }
    Ok(Outcome::Success)
}

pub async fn restore(global: &GlobalArgs, args: RestoreArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let (id, snapshot) = repo.resolve_snapshot(&args.snapshot, &filter(args.source))?;
    let progress = Arc::new(Progress::default());
    progress.bytes_total.store(
        snapshot.summary.bytes_read,
        std::sync::atomic::Ordering::Relaxed,
    );
    let bar = Bar::start(global.shows_progress(), "restoring", Arc::clone(&progress));
    let options = RestoreOptions {
        target: args.target.clone(),
        overwrite: match args.overwrite {
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::Always => Overwrite::Always,
        },
        include: args.include,
        exclude: args.exclude,
        progress,
    };
    let summary = larder::ops::restore::restore(&repo, &snapshot, &options)
        .await
        .with_context(|| {
            format!(
                "restoring snapshot {} to {}",
                id.short(),
                args.target.display()
            )
        })?;
    drop(bar);
    if let Some(safety) = &summary.safety_snapshot {
        errln!(
            "larder: saved the files about to be replaced as snapshot {} (source {}.pre-restore)",
            safety.short(),
            snapshot.source
        );
    }
    if global.json {
        render::print_json(&summary)?;
    } else if !global.quiet {
        outln!(
            "restored snapshot {} to {}: {}, {}, {}, {} in {:.1} s",
            id.short(),
            args.target.display(),
            render::count(summary.files, "file"),
            render::count(summary.dirs, "directory"),
            render::count(summary.symlinks, "symlink"),
            render::size(summary.bytes),
            summary.duration_s
        )?;
    }
    render::warn_all(&summary.skipped);
    for damaged in &summary.damaged {
        errln!("larder: damaged: {damaged}");
    }
    if !summary.damaged.is_empty() {
        anyhow::bail!(
            "{} file(s) or directories could not be restored because their data is damaged or missing (run `larder check --read-data`)",
            summary.damaged.len()
        );
    }
    Ok(if summary.skipped.is_empty() {
        Outcome::Success
    } else {
        Outcome::Warnings
    })
}
