//! `larder backup`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use larder::Progress;
use larder::SnapshotFilter;
use larder::ops::backup::{BackupInput, BackupOptions, BackupSummary, TreeInput, backup};
use larder::source::command::run_hook;
use larder::source::tree::{Excludes, absolute_path, check_paths};
use larder::source::{StreamInput, split_command};

use larder::LeaseKind;

use super::{GlobalArgs, Outcome, open_leased, progress_bar::Bar, render};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Name of what is backed up (such as orders-db or knowledge); snapshots are grouped by source and host
    #[arg(long, value_name = "NAME")]
    source: String,
    /// Directories or files to back up (recorded as absolute paths)
    #[arg(value_name = "PATH", conflicts_with_all = ["stdin", "command"])]
    paths: Vec<PathBuf>,
    /// Back up standard input
    #[arg(long, conflicts_with = "command")]
    stdin: bool,
    /// Back up the standard output of this command, run without a shell; a non-zero exit fails the backup
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    /// File name of the stream inside the snapshot
    #[arg(long, default_value = "stdin", value_name = "FILE")]
    stdin_name: String,
    /// Kind of source. Streams: auto (the default: PostgreSQL, Redis and Neo4j dumps are told from their first bytes), postgres, redis, neo4j, or stream (no check); a dump of a known kind is checked for completeness as it is read, and an incomplete one is not stored. Paths: files, or postgres (directory-format pg_dump output: toc.dat and every data file it names must be there)
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Run CMD (no shell) before anything else; if it fails, nothing is backed up and larder exits 1. It gets LARDER_SOURCE
    #[arg(long, value_name = "CMD")]
    before: Option<String>,
    /// Run CMD (no shell) after the backup, whatever its outcome (after --before succeeded); it gets LARDER_SOURCE, LARDER_OUTCOME (success, warnings or failure), LARDER_SNAPSHOT or LARDER_ERROR. Its failure is a warning
    #[arg(long, value_name = "CMD")]
    after: Option<String>,
    /// Store a dump that fails its completeness check anyway, tagged "incomplete" (retention never counts it as a good backup)
    #[arg(long)]
    allow_incomplete: bool,
    /// Store gzip input as it comes. By default a gzip stream (pg_dump | gzip, an old .sql.gz) is unpacked so unchanged rows deduplicate across days, with a small recipe that rebuilds the exact compressed bytes on restore and is proven before the snapshot is written
    #[arg(long)]
    no_unpack: bool,
    /// Skip paths matching GLOB: without '/' it matches a name anywhere (*.tmp); starting with '/' the absolute path (/home/*/.cache); with '/' inside, a path ending at any depth (cache/tmp) (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Read exclude patterns from FILE, one per line (repeatable)
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_files: Vec<PathBuf>,
    /// Do not cross into other file systems
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Compare with this snapshot instead of the latest of the same source and host
    #[arg(long, value_name = "SNAP")]
    parent: Option<String>,
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

impl BackupArgs {
    /// The backup a plan's source describes.
    pub fn from_plan(source: &larder::plan::Source) -> BackupArgs {
        BackupArgs {
            source: source.name().to_string(),
            paths: source.paths.clone(),
            stdin: false,
            command: source.command.clone(),
            stdin_name: source.stdin_name.clone().unwrap_or_else(|| "stdin".into()),
            kind: source.kind.clone(),
            before: source.before.clone(),
            after: source.after.clone(),
            allow_incomplete: source.allow_incomplete,
            no_unpack: !source.unpack,
            excludes: source.exclude.clone(),
            exclude_files: Vec::new(),
            one_file_system: source.one_file_system,
            parent: None,
            tags: source.tags.clone(),
            host: None,
            time: None,
        }
    }
}

pub async fn run(global: &GlobalArgs, args: BackupArgs) -> Result<Outcome> {
    let (outcome, summary) = run_hooked(global, args).await?;
    print_summary(global, &summary)?;
    Ok(outcome)
}

/// The backup with its hooks: its outcome and summary (warnings printed).
pub async fn run_hooked(
    global: &GlobalArgs,
    mut args: BackupArgs,
) -> Result<(Outcome, BackupSummary)> {
    let before = args.before.take().map(|c| split_command(&c)).transpose()?;
    let after = args.after.take().map(|c| split_command(&c)).transpose()?;
    let source = args.source.clone();
    if let Some(before) = before {
        let env = vec![("LARDER_SOURCE", source.clone())];
        tokio::task::spawn_blocking(move || run_hook("before", &before, &env))
            .await?
            .with_context(|| format!("source {source}: no backup was taken"))?;
    }
    let result = take(global, args).await;
    let Some(after) = after else {
        return result;
    };
    let mut env = vec![("LARDER_SOURCE", source.clone())];
    match &result {
        Ok((outcome, id)) => {
            let name = if *outcome == Outcome::Success {
                "success"
            } else {
                "warnings"
            };
            env.push(("LARDER_OUTCOME", name.into()));
            env.push(("LARDER_SNAPSHOT", id.snapshot_id.to_hex()));
        }
        Err(e) => {
            env.push(("LARDER_OUTCOME", "failure".into()));
            env.push(("LARDER_ERROR", format!("{e:#}")));
        }
    }
    let hooked = tokio::task::spawn_blocking(move || run_hook("after", &after, &env)).await?;
    match (result, hooked) {
        (result, Ok(())) => result,
        (Ok((_, mut summary)), Err(e)) => {
            let warning = format!("{e} (the snapshot was saved)");
            render::warn_all(std::slice::from_ref(&warning));
            summary.warnings.push(warning);
            Ok((Outcome::Warnings, summary))
        }
        (Err(e), Err(hook)) => {
            render::warn_all(&[hook.to_string()]);
            Err(e)
        }
    }
}

/// The backup itself: its outcome and summary (warnings printed).
async fn take(global: &GlobalArgs, args: BackupArgs) -> Result<(Outcome, BackupSummary)> {
    let (input, default_kind) = match (&args.command, args.stdin, args.paths.is_empty()) {
        (Some(command), _, _) => (
            BackupInput::Stream {
                input: StreamInput::Command {
                    argv: split_command(command)?,
                },
                name: args.stdin_name.clone(),
            },
            "auto",
        ),
        (None, true, _) => (
            BackupInput::Stream {
                input: StreamInput::Stdin,
                name: args.stdin_name.clone(),
            },
            "auto",
        ),
        (None, false, false) => {
            let mut patterns = args.excludes.clone();
            for file in &args.exclude_files {
                patterns.extend(Excludes::read_file(file)?);
            }
            let paths = args
                .paths
                .iter()
                .map(|p| absolute_path(p))
                .collect::<larder::Result<_>>()?;
            (
                BackupInput::Tree(TreeInput {
                    paths: check_paths(paths)?,
                    excludes: Excludes::new(&patterns)?,
                    one_file_system: args.one_file_system,
                }),
                "files",
            )
        }
        (None, false, true) => bail!("say what to back up: PATH..., --stdin, or --command CMD"),
    };
    let kind = args.kind.clone().unwrap_or_else(|| default_kind.into());
    let valid = match &input {
        BackupInput::Stream { .. } => larder::dump::Kind::from_name(&kind).is_some(),
        BackupInput::Tree(_) => kind == "files" || kind == "postgres",
    };
    if !valid {
        bail!(
            "--kind {kind:?} does not fit this source: streams take {}; paths take files, or postgres for directory-format pg_dump output",
            larder::dump::Kind::NAMES.join(", ")
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
    let repo = open_leased(global, LeaseKind::Backup).await?;
    let parent = match &args.parent {
        Some(spec) => Some(repo.resolve_snapshot(spec, &SnapshotFilter::default())?.0),
        None => None,
    };
    let progress = Arc::new(Progress::default());
    global.watch(&progress);
    let bar = Bar::start(global.shows_progress(), "backing up", Arc::clone(&progress));
    let summary = backup(
        &repo,
        BackupOptions {
            source: args.source.clone(),
            input,
            kind,
            allow_incomplete: args.allow_incomplete,
            unpack: !args.no_unpack,
            tags: args.tags,
            host: args.host.unwrap_or_else(larder::host::current_host),
            time,
            parent,
            progress,
        },
    )
    .await
    .with_context(|| format!("backing up source {}", args.source))?;
    drop(bar);
    render::warn_all(&summary.warnings);
    let outcome = if summary.warnings.is_empty() {
        Outcome::Success
    } else {
        Outcome::Warnings
    };
    Ok((outcome, summary))
}

/// Prints a backup's summary as text or JSON.
pub fn print_summary(global: &GlobalArgs, summary: &BackupSummary) -> Result<()> {
    if global.json {
        render::print_json(summary)?;
    } else if !global.quiet {
        let files = if summary.dirs > 0
            || summary.files_new + summary.files_changed + summary.files_unchanged > 0
        {
            format!(
                "; files: {} new, {} changed, {} unchanged",
                summary.files_new, summary.files_changed, summary.files_unchanged
            )
        } else {
            String::new()
        };
        outln!(
            "snapshot {} saved: read {}, added {} ({}, {} reused){files} in {:.1} s",
            summary.snapshot_id.short(),
            render::size(summary.bytes_read),
            render::size(summary.bytes_added),
            render::count(summary.blobs_new, "new blob"),
            summary.blobs_reused,
            summary.duration_s
        )?;
    }
    Ok(())
}
