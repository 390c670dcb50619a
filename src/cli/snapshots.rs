//! `larder snapshots`.

use anyhow::Result;
use clap::Args;
use larder::SnapshotFilter;

use super::{GlobalArgs, Outcome, open, render};

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only snapshots from this host
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only snapshots carrying this tag (repeatable: all must match)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
}

#[derive(serde::Serialize)]
struct SnapshotJson {
    id: String,
    short_id: String,
    time: String,
    source: String,
    host: String,
    tags: Vec<String>,
    kind: String,
    paths: Vec<String>,
    parent: Option<String>,
    size: u64,
    added: u64,
    command: Option<Vec<String>>,
    dumper_version: Option<String>,
    /// The dump format found and its completeness check.
    dump: Option<larder::snapshot::DumpRecord>,
    program: String,
}

pub async fn run(global: &GlobalArgs, args: SnapshotsArgs) -> Result<Outcome> {
    let repo = open(global).await?;
    let filter = SnapshotFilter {
        source: args.source,
        host: args.host,
        tags: args.tags,
    };
    let snapshots = repo.snapshots(&filter)?;
    if global.json {
        let rows: Vec<SnapshotJson> = snapshots
            .iter()
            .map(|(id, s)| SnapshotJson {
                id: id.to_hex(),
                short_id: id.short(),
                time: larder::ops::format_time(s.time_ns),
                source: s.source.clone(),
                host: s.host.clone(),
                tags: s.tags.clone(),
                kind: s.kind.clone(),
                paths: s.paths.clone(),
                parent: s.parent.map(|p| p.to_hex()),
                size: s.summary.total_bytes.max(s.summary.bytes_read),
                added: s.summary.bytes_added,
                command: s.command.as_ref().map(|c| c.argv.clone()),
                dumper_version: s.command.as_ref().and_then(|c| c.version.clone()),
                dump: s.dump.clone(),
                program: s.program.clone(),
            })
            .collect();
        render::print_json(&rows)?;
        return Ok(Outcome::Success);
    }
    if snapshots.is_empty() {
        if !global.quiet {
            outln!("no snapshots")?;
        }
        return Ok(Outcome::Success);
    }
    outln!(
        "{:<8}  {:<19}  {:<16}  {:<12}  {:>10}  {:>10}  tags",
        "id",
        "time",
        "source",
        "host",
        "size",
        "added"
    )?;
    for (id, s) in &snapshots {
        outln!(
            "{:<8}  {:<19}  {:<16}  {:<12}  {:>10}  {:>10}  {}",
            id.short(),
            render::local_time(s.time_ns),
            s.source,
            s.host,
            render::size(s.summary.total_bytes.max(s.summary.bytes_read)),
            render::size(s.summary.bytes_added),
            s.tags.join(",")
        )?;
    }
    if !global.quiet {
        outln!("{}", render::count(snapshots.len() as u64, "snapshot"))?;
    }
    Ok(Outcome::Success)
}
