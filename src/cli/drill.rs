//! `larder drill`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use larder::LeaseKind;
use larder::Progress;
use larder::SnapshotFilter;
use larder::ops::drill::{DrillOptions, drill};

use super::{GlobalArgs, Outcome, open_leased, render};

#[derive(Args, Debug)]
#[command(after_help = "\
Kinds: files (every YAML and JSON file must parse), postgres-custom and postgres-directory \
(table of contents, pg_restore --list; with --database a full restore into a scratch \
database larder_drill_<hex>, always dropped, and exact row counts), postgres-plain \
(trailer; with --database a psql run into the scratch database), redis-rdb (redis-check-rdb; \
with --redis-server a throwaway server on a free loopback port counts the keys), neo4j-dump \
(the dump decodes to its end). The default is what the snapshot records.

Every drill, passed or failed, is recorded in the repository (drills/) and the catalog. \
Exit codes: 0 passed, 1 failed (the result is recorded) or could not run (nothing recorded), \
3 passed with a warning (a scratch database that could not be dropped).")]
pub struct DrillArgs {
    /// Snapshot id prefix, or "latest"
    #[arg(default_value = "latest")]
    snapshot: String,
    /// With "latest": the latest snapshot of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Verify as this kind instead of the one the snapshot records
    #[arg(long, value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(
        ["files", "postgres", "postgres-custom", "postgres-directory", "postgres-plain", "redis", "redis-rdb", "neo4j", "neo4j-dump"]
    ))]
    kind: Option<String>,
    /// PostgreSQL server (libpq URL or "host=… user=…") where larder may CREATE DATABASE: restore in full into a scratch database there
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Load a Redis RDB file into a throwaway redis-server on loopback and count its keys
    #[arg(long)]
    redis_server: bool,
}

pub async fn run(global: &GlobalArgs, args: DrillArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let (id, snapshot) = repo.resolve_snapshot(
        &args.snapshot,
        &SnapshotFilter {
            source: args.source,
            ..SnapshotFilter::default()
        },
    )?;
    let progress = Arc::new(Progress::default());
    global.watch(&progress);
    let is_postgres = args
        .kind
        .as_deref()
        .unwrap_or(snapshot.kind.as_str())
        .starts_with("postgres");
    let options = DrillOptions {
        kind: args.kind,
        database: args.database,
        redis_server: args.redis_server,
        scratch_parent: std::env::temp_dir(),
        progress,
    };
    let summary = drill(&repo, &id, &snapshot, &options)
        .await
        .with_context(|| format!("drilling snapshot {}", id.short()))?;
    if global.json {
        render::print_json(&summary)?;
    } else if !global.quiet {
        outln!(
            "drill of snapshot {} (source {}, {}): {} in {:.1} s",
            id.short(),
            summary.source,
            summary.kind,
            summary.outcome,
            summary.duration_s
        )?;
        for check in &summary.checked {
            outln!("  {check}")?;
        }
        for (table, rows) in &summary.tables {
            outln!("  {rows:>12}  {table}")?;
        }
        if summary.passed() {
            outln!("{}", summary.detail)?;
        }
        if summary.passed() && is_postgres && options.database.is_none() {
            outln!("note: pass --database URL for a full restore into a scratch database")?;
        }
    }
    render::warn_all(&summary.warnings);
    if !summary.passed() {
        bail!(
            "the drill of snapshot {} failed (recorded as drill {}): {}",
            id.short(),
            summary.drill_id.short(),
            summary.detail
        );
    }
    Ok(if summary.warnings.is_empty() {
        Outcome::Success
    } else {
        Outcome::Warnings
    })
}
