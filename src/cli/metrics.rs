//! The Prometheus text file a plan's `metrics_file` names, for
//! node_exporter's textfile collector: per source the last attempt and
//! success, sizes, snapshot counts and drills; per repository its size,
//! packs, last check and this process's requests. Rewritten whole, through
//! a temporary file and a rename, after every `run` and every command given
//! `--config`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use larder::Repo;
use larder::ops::status::{StatusOptions, status};
use larder::plan::Plan;

use super::state::{State, write_atomically};

/// A metric's samples, with its help text.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Option<String>, f64)>,
}

/// Writes the metrics for `repo` (and `plan`'s sources) to `path`.
pub async fn write(repo: &Repo, plan: &Plan, state: &State, path: &Path) -> Result<()> {
    let text = render(repo, plan, state).await?;
    // node_exporter runs as a user of its own: the file is world-readable
    // (it holds source names, times, sizes and outcomes; SECURITY.md).
    write_atomically(path, text.as_bytes(), 0o644)
}

async fn render(repo: &Repo, plan: &Plan, state: &State) -> Result<String> {
    let status = status(
        repo,
        &StatusOptions {
            max_age: None,
            source: None,
            now: None,
        },
    )
    .await?;
    let stats = larder::ops::stats::stats(repo).await?;
    let mut names: Vec<String> = plan.sources.iter().map(|s| s.name().to_string()).collect();
    for s in &status.sources {
        if !names.contains(&s.source) {
            names.push(s.source.clone());
        }
    }
    let family = |name, help| Family {
        name,
        help,
        samples: Vec::new(),
    };
    let mut last_success = family(
        "larder_last_success_timestamp_seconds",
        "Time of the source's newest good (complete) snapshot.",
    );
    let mut last_attempt = family(
        "larder_last_attempt_timestamp_seconds",
        "When this machine last tried to back up the source.",
    );
    let mut run_success = family(
        "larder_last_run_success",
        "Whether the source's last backup attempt saved a snapshot (1) or failed (0).",
    );
    let mut duration = family(
        "larder_backup_duration_seconds",
        "How long the source's last backup attempt took.",
    );
    let mut bytes_read = family(
        "larder_bytes_read",
        "Bytes read from the source by its last backup.",
    );
    let mut bytes_added = family(
        "larder_bytes_added",
        "Bytes its last backup added to the repository (after deduplication and compression).",
    );
    let mut snapshots = family(
        "larder_snapshots",
        "Snapshots of the source in the repository.",
    );
    let mut drill_time = family(
        "larder_last_drill_timestamp_seconds",
        "When the source was last drilled (restored and verified).",
    );
    let mut drill_success = family(
        "larder_last_drill_success",
        "Whether the source's last drill passed (1) or failed (0).",
    );
    for name in &names {
        let label = Some(name.clone());
        let seen = status.sources.iter().find(|s| &s.source == name);
        if let Some(latest) = seen.and_then(|s| s.latest.as_ref()) {
            last_success
                .samples
                .push((label.clone(), latest.time.as_second() as f64));
        }
        snapshots
            .samples
            .push((label.clone(), seen.map_or(0, |s| s.snapshots) as f64));
        if let Some(drill) = seen.and_then(|s| s.last_drill.as_ref()) {
            drill_time
                .samples
                .push((label.clone(), drill.time.as_second() as f64));
            drill_success
                .samples
                .push((label.clone(), f64::from(u8::from(drill.passed))));
        }
        if let Some(attempt) = state.sources.get(name) {
            last_attempt
                .samples
                .push((label.clone(), attempt.time as f64));
            run_success
                .samples
                .push((label.clone(), f64::from(u8::from(attempt.ok))));
            duration.samples.push((label.clone(), attempt.duration_s));
            bytes_read
                .samples
                .push((label.clone(), attempt.bytes_read as f64));
            bytes_added
                .samples
                .push((label.clone(), attempt.bytes_added as f64));
        }
    }
    let mut size = family(
        "larder_repository_size_bytes",
        "Bytes the repository's objects take in storage.",
    );
    size.samples.push((None, stats.total_bytes as f64));
    let mut packs = family("larder_repository_packs", "Pack objects in the repository.");
    let pack_count = stats
        .objects
        .iter()
        .find(|g| g.prefix == "packs")
        .map_or(0, |g| g.count);
    packs.samples.push((None, pack_count as f64));
    let mut check_time = family(
        "larder_last_check_timestamp_seconds",
        "When this machine last checked the repository.",
    );
    let mut check_success = family(
        "larder_last_check_success",
        "Whether the last check found no problem (1) or found some (0).",
    );
    if let Some(check) = &state.last_check {
        check_time.samples.push((None, check.time as f64));
        check_success
            .samples
            .push((None, f64::from(u8::from(check.ok))));
    }
    let counts = repo.counts();
    let mut requests = family(
        "larder_requests",
        "Storage requests made by the command that wrote this file, by kind.",
    );
    for (kind, n) in [
        ("get", counts.get),
        ("put", counts.put),
        ("list", counts.list),
        ("delete", counts.delete),
    ] {
        requests.samples.push((Some(kind.to_string()), n as f64));
    }
    let families = [
        last_success,
        last_attempt,
        run_success,
        duration,
        bytes_read,
        bytes_added,
        snapshots,
        drill_time,
        drill_success,
        size,
        packs,
        check_time,
        check_success,
        requests,
    ];
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        let key = if f.name == "larder_requests" {
            "kind"
        } else {
            "source"
        };
        for (label, value) in f.samples {
            match label {
                Some(label) => {
                    let _ = writeln!(out, "{}{{{key}=\"{}\"}} {value}", f.name, escape(&label));
                }
                None => {
                    let _ = writeln!(out, "{} {value}", f.name);
                }
            }
        }
    }
    Ok(out)
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
