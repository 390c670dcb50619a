//! `larder status`: the monitoring question, one line per source.

use anyhow::{Result, bail};
use clap::Args;
use larder::ops::status::{StatusOptions, age_text, status};
use larder::retention::Within;

use super::state::State;
use super::{GlobalArgs, Outcome, open, render};

/// Arguments of `larder status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A source whose newest good (complete) snapshot is older than this is a failure (exit 1): numbers with units y, m, w, d, h, such as 26h or 2d
    #[arg(long, value_name = "DURATION")]
    max_age: Option<Within>,
    /// Only this source
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> Result<Outcome> {
    let repo = open(global).await?;
    let summary = status(
        &repo,
        &StatusOptions {
            max_age: args.max_age,
            source: args.source,
            now: None,
        },
    )
    .await?;
    // The last check is remembered by the machine that ran it.
    let state = State::load(&State::path(&global.cache_root()?, global.repo_url()?)?);
    let last_check = state.last_check;
    if global.json {
        let mut value = serde_json::to_value(&summary)?;
        value["last_check"] = serde_json::to_value(&last_check)?;
        render::print_json(&value)?;
    } else if !global.quiet {
        outln!(
            "{:<24} {:<9} {:<19} {:>9} {:>9}  last drill",
            "source",
            "latest",
            "time",
            "age",
            "snapshots"
        )?;
        for s in &summary.sources {
            let (id, time, age) = match &s.latest {
                Some(l) => (
                    l.id.short(),
                    render::local_time(l.time.as_nanosecond() as i64),
                    age_text(l.age_s),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let drill = match &s.last_drill {
                Some(d) => format!(
                    "{} {}",
                    d.outcome,
                    render::local_time(d.time.as_nanosecond() as i64)
                ),
                None => "never".into(),
            };
            outln!(
                "{:<24} {:<9} {:<19} {:>9} {:>9}  {drill}",
                s.source,
                id,
                time,
                age,
                s.snapshots
            )?;
        }
        match &last_check {
            Some(c) => outln!(
                "last check: {} {}{}",
                match (&c.error, c.ok) {
                    (Some(why), _) => format!("could not run ({why})"),
                    (None, true) => "passed".into(),
                    (None, false) => "FAILED".into(),
                },
                render::local_time(c.time.saturating_mul(1_000_000_000)),
                c.subset.as_ref().map_or(String::new(), |part| format!(
                    " (read part {part}: {})",
                    render::count(c.packs_read, "pack")
                ))
            )?,
            None => outln!("last check: none from this machine")?,
        }
    }
    let mut problems: Vec<String> = summary
        .sources
        .iter()
        .flat_map(|s| s.problems.iter().map(move |p| format!("{}: {p}", s.source)))
        .collect();
    let check_failed = last_check.as_ref().is_some_and(|c| !c.ok);
    if let Some(c) = last_check.as_ref().filter(|_| check_failed) {
        problems.push(match &c.error {
            Some(why) => format!("repository: the last check could not run: {why}"),
            None => "repository: the last check found damaged or missing objects (larder check --read-data)"
                .into(),
        });
    }
    if !problems.is_empty() {
        for p in &problems {
            errln!("larder: {p}");
        }
        if check_failed && summary.sources.iter().all(|s| s.problems.is_empty()) {
            bail!("the repository needs attention");
        }
        bail!(
            "{} of {} source{} need{} attention",
            summary
                .sources
                .iter()
                .filter(|s| !s.problems.is_empty())
                .count(),
            summary.sources.len(),
            if summary.sources.len() == 1 { "" } else { "s" },
            if problems.len() == 1 { "s" } else { "" }
        );
    }
    Ok(Outcome::Success)
}
