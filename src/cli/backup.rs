//! `larder backup`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use larder::ops::backup::{BackupOptions, backup_stream};
use larder::progress::Progress;
use larder::source::{StreamInput, split_command};

use super::{GlobalArgs, Outcome, open, progress_bar::Bar, render};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Name of what is backed up (such as orders-db); snapshots are grouped by source and host
    #[arg(long, value_name = "NAME")]
    source: String,
    /// Back up standard input
    #[arg(long, conflicts_with = "command")]
    stdin: bool,
    /// Back up the standard output of this command, run without a shell; a non-zero exit fails the backup
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    /// File name of the stream inside the snapshot
    #[arg(long, default_value = "stdin", value_name = "FILE")]
    stdin_name: String,
    /// Kind of source: stream, postgres, redis, neo4j
    #[arg(long, default_value = "stream", value_name = "KIND")]
    kind: String,
    /// Label the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Host name to record [default: this machine's]
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Snapshot time, RFC 3339 (to import old dumps) [default: now]
    #[arg(long, value_name = "TIME")]
    time: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: BackupArgs) -> Result<Outcome> {
    let input = match (&args.command, args.stdin) {
        (Some(command), _) => StreamInput::Command {
            argv: split_command(command)?,
        },
        (None, true) => StreamInput::Stdin,
        (None, false) => bail!("say what to back up: --stdin or --command CMD"),
    };
    if !matches!(
        args.kind.as_str(),
        "stream" | "postgres" | "redis" | "neo4j"
    ) {
        bail!(
            "unknown --kind {:?}: use stream, postgres, redis or neo4j",
            args.kind
        );
    }
    let time = args
        .time
        .as_deref()
        .map(|t| {
            t.parse::<jiff::Timestamp>()
                .with_context(|| format!("--time {t:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let repo = open(global).await?;
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(global.shows_progress(), "backing up", Arc::clone(&progress));
    let summary = backup_stream(
        &repo,
        BackupOptions {
            source: args.source.clone(),
            input,
            stream_name: args.stdin_name,
            kind: args.kind,
            tags: args.tags,
            host: args.host.unwrap_or_else(larder::repo::current_host),
            time,
            progress,
        },
    )
    .await
    .with_context(|| format!("backing up source {}", args.source))?;
    drop(bar);
    if global.json {
        render::print_json(&summary)?;
    } else if !global.quiet {
        println!(
            "snapshot {} saved: read {}, added {} ({} new blobs, {} reused) in {:.1} s",
            summary.snapshot_id.short(),
            render::size(summary.bytes_read),
            render::size(summary.bytes_added),
            summary.blobs_new,
            summary.blobs_reused,
            summary.duration_s
        );
    }
    render::warn_all(&summary.warnings);
    Ok(if summary.warnings.is_empty() {
        Outcome::Success
    } else {
        Outcome::Warnings
    })
}
