//! `larder copy`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use larder::Progress;
use larder::SnapshotFilter;
use larder::repo::Repo;

use larder::LeaseKind;

use super::{GlobalArgs, Outcome, open_leased, passphrase, progress_bar::Bar, render};

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The destination repository: a path, file:///path or s3://bucket/prefix
    #[arg(long, value_name = "URL")]
    to: String,
    /// Read the destination's passphrase from this file (else LARDER_TO_PASSWORD, else a prompt)
    #[arg(long, value_name = "FILE")]
    to_password_file: Option<PathBuf>,
    /// Only snapshots of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only snapshots from this host
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only snapshots carrying this tag (repeatable: all must match)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Snapshots to copy (ids, unique id prefixes, or "latest"); every
    /// snapshot matching the filters when none is given
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
}

pub async fn run(global: &GlobalArgs, args: CopyArgs) -> Result<Outcome> {
    let src = open_leased(global, LeaseKind::Read).await?;
    let dst = open_other(
        global,
        &args.to,
        args.to_password_file.as_deref(),
        "LARDER_TO_PASSWORD",
        "destination",
        Some(LeaseKind::Copy),
    )
    .await?;
    let filter = SnapshotFilter {
        source: args.source,
        host: args.host,
        tags: args.tags,
    };
    let ids: Vec<_> = if args.snapshots.is_empty() {
        src.snapshots(&filter)?
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    } else {
        args.snapshots
            .iter()
            .map(|spec| src.resolve_snapshot(spec, &filter).map(|(id, _)| id))
            .collect::<larder::Result<_>>()?
    };
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(global.shows_progress(), "copying", Arc::clone(&progress));
    let summary = larder::ops::copy::copy(&src, &dst, &ids, progress)
        .await
        .with_context(|| format!("copying to {}", args.to))?;
    drop(bar);
    if global.json {
        render::print_json(&summary)?;
        return Ok(Outcome::Success);
    }
    if !global.quiet {
        for s in &summary.snapshots {
            let verb = if s.skipped { "already there" } else { "copied" };
            outln!(
                "{} {}  {:<16} {}  -> {}  {verb}",
                &s.from[..8],
                s.time,
                s.source,
                s.host,
                &s.to[..8]
            )?;
        }
        outln!(
            "{} copied, {} already there; {} read, {} added ({}, {} reused) in {:.1}s",
            summary.copied,
            summary.skipped,
            render::size(summary.bytes_read),
            render::size(summary.bytes_added),
            render::count(summary.blobs_new, "new blob"),
            summary.blobs_reused,
            summary.duration_s
        )?;
    }
    Ok(Outcome::Success)
}

/// Opens a second repository (the other end of `copy`, or the one `init`
/// takes chunker parameters from), sharing the cache root.
pub async fn open_other(
    global: &GlobalArgs,
    url: &str,
    password_file: Option<&std::path::Path>,
    env: &str,
    what: &str,
    lease: Option<LeaseKind>,
) -> Result<Repo> {
    let backend = larder::backend::open(url)?;
    let passphrase = passphrase::other(password_file, env, what)?;
    let repo = Repo::open_with(backend, passphrase.as_bytes(), &global.cache_root()?, lease)
        .await
        .with_context(|| format!("opening {what} repository {url}"))?;
    global.remember_lease(&repo);
    global.warn_opened(&repo);
    Ok(repo)
}
