//! `larder ls`, `find`, `diff` and `log`: browsing snapshots without mounting.

use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result, bail};
use clap::Args;
use larder::SnapshotFilter;
use larder::ops::ls::Entry;

use larder::LeaseKind;

use super::{GlobalArgs, Outcome, open_leased, render};

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id prefix, or "latest"
    snapshot: String,
    /// Directory (or file) inside the snapshot [default: the root]
    path: Option<std::ffi::OsString>,
    /// Long listing: mode, owner, size, modification time
    #[arg(long, short = 'l')]
    long: bool,
    /// List everything below the directory
    #[arg(long, short = 'r')]
    recursive: bool,
    /// With "latest": the latest snapshot of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Glob: with '/' it matches whole paths (/opt/kb/**/*.yaml), without a name (*.yaml)
    pattern: String,
    /// Only snapshots of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only snapshots from this host
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Every occurrence, one line per snapshot, instead of one line per version (path, size and time) with the snapshots it was seen in
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot (id prefix or "latest")
    a: String,
    /// The newer snapshot (id prefix or "latest")
    b: String,
    /// Show a unified diff for each changed text file up to 1 MiB
    #[arg(long)]
    content: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Path of the file in the snapshots (such as /opt/kb/a.yaml); a relative one is taken from the current directory
    path: std::ffi::OsString,
    /// Only snapshots of this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// Only snapshots from this host
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
}

fn print_entry(entry: &Entry, long: bool) -> Result<()> {
    if !long {
        return outln!("{}", entry.path);
    }
    let kind = match entry.kind {
        "dir" => 'd',
        "symlink" => 'l',
        _ => '-',
    };
    let owner = entry.user.clone().unwrap_or_else(|| entry.uid.to_string());
    let group = entry.group.clone().unwrap_or_else(|| entry.gid.to_string());
    let target = entry
        .target
        .as_ref()
        .map(|t| format!(" -> {t}"))
        .unwrap_or_default();
    outln!(
        "{kind}{} {owner:>8} {group:>8} {:>10} {} {}{target}",
        mode_string(entry.mode),
        entry.size,
        &entry.mtime[..entry.mtime.len().min(19)],
        entry.path
    )
}

fn mode_string(mode: u32) -> String {
    let mut out = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

pub async fn ls(global: &GlobalArgs, args: LsArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let filter = SnapshotFilter {
        source: args.source,
        ..SnapshotFilter::default()
    };
    let (id, snapshot) = repo.resolve_snapshot(&args.snapshot, &filter)?;
    let summary = larder::ops::ls::ls(
        &repo,
        &id,
        &snapshot,
        args.path.as_deref().map(OsStrExt::as_bytes),
        args.recursive,
    )
    .await?;
    if global.json {
        render::print_json(&summary)?;
    } else {
        for entry in &summary.entries {
            print_entry(entry, args.long)?;
        }
    }
    Ok(Outcome::Success)
}

pub async fn find(global: &GlobalArgs, args: FindArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let filter = SnapshotFilter {
        source: args.source,
        host: args.host,
        tags: vec![],
    };
    let summary = larder::ops::find::find(&repo, &args.pattern, &filter).await?;
    if global.json {
        render::print_json(&summary)?;
    } else if args.all {
        for m in &summary.matches {
            outln!(
                "{}  {}  {:>10}  {}",
                m.snapshot.short(),
                &m.time[..m.time.len().min(19)],
                m.entry.size,
                m.entry.path
            )?;
        }
        if !global.quiet {
            errln!(
                "{} in {}",
                render::count(summary.matches.len() as u64, "match"),
                render::count(summary.snapshots as u64, "snapshot")
            );
        }
    } else {
        for v in &summary.versions {
            let seen = if v.snapshots == 1 {
                format!(
                    "in {} {}",
                    v.last_snapshot.short(),
                    short_time(&v.last_seen)
                )
            } else {
                format!(
                    "in {} snapshots, {} {} .. {} {}",
                    v.snapshots,
                    v.first_snapshot.short(),
                    short_time(&v.first_seen),
                    v.last_snapshot.short(),
                    short_time(&v.last_seen)
                )
            };
            outln!("{}  {:>10}  {seen}", v.entry.path, v.entry.size)?;
        }
        if !global.quiet {
            errln!(
                "{} ({}) in {}; --all lists every occurrence",
                render::count(summary.versions.len() as u64, "version"),
                render::count(summary.matches.len() as u64, "match"),
                render::count(summary.snapshots as u64, "snapshot")
            );
        }
    }
    Ok(Outcome::Success)
}

/// An RFC 3339 time to the minute, for listings.
fn short_time(time: &str) -> &str {
    &time[..time.len().min(16)]
}

pub async fn diff(global: &GlobalArgs, args: DiffArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let all = SnapshotFilter::default();
    let (_, a) = repo.resolve_snapshot(&args.a, &all)?;
    let (_, b) = repo.resolve_snapshot(&args.b, &all)?;
    let summary = larder::ops::diff::diff(&repo, &a, &b, args.content).await?;
    if global.json {
        render::print_json(&summary)?;
    } else {
        for change in &summary.changes {
            match &change.details {
                Some(details) => outln!("{}  {}  ({details})", change.change, change.path)?,
                None => outln!("{}  {}", change.change, change.path)?,
            }
            if let Some(unified) = &change.unified {
                out!("{unified}")?;
            }
        }
        if !global.quiet {
            errln!(
                "{} added, {} removed, {} modified, {} metadata only",
                summary.added,
                summary.removed,
                summary.modified,
                summary.metadata_only
            );
        }
    }
    Ok(Outcome::Success)
}

pub async fn log(global: &GlobalArgs, args: LogArgs) -> Result<Outcome> {
    let repo = open_leased(global, LeaseKind::Read).await?;
    let filter = SnapshotFilter {
        source: args.source,
        host: args.host,
        tags: vec![],
    };
    let path = absolute_lexically(std::path::Path::new(&args.path))?;
    let summary = larder::ops::log::log(&repo, path.as_os_str().as_bytes(), &filter).await?;
    if global.json {
        render::print_json(&summary)?;
    } else {
        for v in &summary.versions {
            outln!(
                "{}  {}  {:<9}  {:>10}  {}",
                v.snapshot.short(),
                &v.time[..v.time.len().min(19)],
                v.change,
                v.size,
                v.source
            )?;
        }
    }
    if summary.versions.is_empty() {
        bail!("{} is in no snapshot", path.display());
    }
    Ok(Outcome::Success)
}

/// `path` made absolute against the current directory, with `.` and `..`
/// resolved by name (the file need not exist here any more).
fn absolute_lexically(path: &std::path::Path) -> Result<std::path::PathBuf> {
    use std::path::Component;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("finding the current directory")?
            .join(path)
    };
    let mut out = std::path::PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}
