//! `larder run`: the backup plan, step by step. Each source backs up on
//! its own (one failing never stops the others), then retention per
//! source, prune, the off-site copy, the (rotating) check, drills that are
//! due, the state and metrics files, and `on_failure` when anything
//! failed. One run per repository at a time on a machine: a second one
//! waits for the first, bounded, then gives up with a clear message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use larder::plan::{Plan, Source, SubsetSpec};
use larder::retention::Within;
use larder::{LeaseKind, Progress, Repo, SnapshotFilter};
use serde::Serialize;

use super::backup::{BackupArgs, run_hooked};
use super::state::{Attempt, CheckRecord, State, now_s};
use super::{GlobalArgs, Outcome, open, open_leased, render};

#[derive(Args, Debug)]
#[command(after_help = "\
The plan is the --config file (default: $XDG_CONFIG_HOME/larder/larder.toml, then \
/etc/larder/larder.toml); docs/OPERATIONS.md describes its keys. With --json the run's \
summary is printed as JSON; on_failure receives the same JSON on its standard input.\n\
Exit codes: 0 every step succeeded, 1 a step failed (each is named) or the run could not \
start, 3 finished with warnings.")]
pub struct RunArgs {
    /// Sources to back up [default: every source of the plan]
    #[arg(value_name = "SOURCE")]
    sources: Vec<String>,
    /// Print the steps the plan would take, and take none
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// How long to wait, in seconds, for another run of the same repository on this machine to end
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wait: u64,
}

/// One step of a run.
#[derive(Clone, Debug, Serialize)]
struct Step {
    /// `backup`, `retention`, `prune`, `copy`, `check`, `drill`, `metrics`.
    step: &'static str,
    /// The source, for per-source steps.
    source: Option<String>,
    /// Whether it succeeded.
    ok: bool,
    /// What it did, or why it failed.
    detail: String,
    /// Warnings it finished with.
    warnings: Vec<String>,
    /// Wall time.
    duration_s: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
struct RunSummary {
    /// The plan file.
    config: String,
    /// The repository.
    repository: String,
    /// When the run started, RFC 3339.
    started: String,
    /// Whether every step succeeded.
    ok: bool,
    /// The steps that failed, as `step` or `step source`.
    failed: Vec<String>,
    /// Every step, in order.
    steps: Vec<Step>,
    /// Wall time.
    duration_s: f64,
}

pub async fn run(global: &GlobalArgs, args: RunArgs) -> Result<Outcome> {
    let Some(plan) = global.plan.clone() else {
        bail!(
            "larder run needs a plan: pass --config FILE (or set LARDER_CONFIG), or write one to {}",
            Plan::default_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    };
    let config = global
        .config
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    for name in &args.sources {
        if plan.source(name).is_none() {
            bail!(
                "{config} has no source {name:?}; it has: {}",
                plan.sources
                    .iter()
                    .map(|s| s.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let sources: Vec<&Source> = plan
        .sources
        .iter()
        .filter(|s| args.sources.is_empty() || args.sources.iter().any(|n| n == s.name()))
        .collect();
    let url = global.repo_url()?.to_string();
    if args.dry_run {
        print_plan(&plan, &sources, &url)?;
        return Ok(Outcome::Success);
    }
    let cache_root = global.cache_root()?;
    let state_path = State::path(&cache_root, &url)?;
    let _lock = RunLock::take(
        &state_path.with_extension("lock"),
        Duration::from_secs(args.wait),
    )
    .await?;
    let mut state = State::load(&state_path);
    let started = Instant::now();
    let mut summary = RunSummary {
        config,
        repository: url.clone(),
        started: jiff::Timestamp::now().to_string(),
        ok: true,
        failed: Vec::new(),
        steps: Vec::new(),
        duration_s: 0.0,
    };
    let mut runner = Runner {
        global,
        summary: &mut summary,
    };

    // Backups, each on its own.
    for source in &sources {
        if global.interrupted() {
            break;
        }
        let began = Instant::now();
        let result = run_hooked(global, BackupArgs::from_plan(source)).await;
        global.release_leases().await;
        let duration_s = began.elapsed().as_secs_f64();
        let name = source.name().to_string();
        match result {
            Ok((_, backup)) => {
                state.sources.insert(
                    name.clone(),
                    Attempt {
                        time: now_s(),
                        ok: true,
                        duration_s,
                        bytes_read: backup.bytes_read,
                        bytes_added: backup.bytes_added,
                        error: None,
                    },
                );
                let detail = format!(
                    "snapshot {} saved: read {}, added {}",
                    backup.snapshot_id.short(),
                    render::size(backup.bytes_read),
                    render::size(backup.bytes_added)
                );
                runner.done("backup", Some(&name), Ok(detail), backup.warnings, began)?;
            }
            Err(e) => {
                let why = format!("{e:#}");
                state.sources.insert(
                    name.clone(),
                    Attempt {
                        time: now_s(),
                        ok: false,
                        duration_s,
                        bytes_read: 0,
                        bytes_added: 0,
                        error: Some(why.clone()),
                    },
                );
                runner.done("backup", Some(&name), Err(why), Vec::new(), began)?;
            }
        }
    }
    save_state(&mut runner, &state_path, &state, false);

    // After a signal, no further step is taken ('steps is left).
    'steps: {
        if global.interrupted() {
            break 'steps;
        }
        // Retention and prune, with the prune lease (the backups' are released).
        let prune = plan.prune.enabled;
        let repo = if prune {
            open_leased(global, LeaseKind::Prune).await
        } else {
            open(global).await
        };
        match repo {
            Err(e) => {
                runner.done(
                    "retention",
                    None,
                    Err(format!("{e:#}")),
                    Vec::new(),
                    Instant::now(),
                )?;
            }
            Ok(repo) => {
                for source in &sources {
                    let began = Instant::now();
                    let result = retention(&repo, &plan, source).await;
                    if let Some(result) = result {
                        let (detail, warnings) = match result {
                            Ok((detail, warnings)) => (Ok(detail), warnings),
                            Err(e) => (Err(format!("{e:#}")), Vec::new()),
                        };
                        runner.done("retention", Some(source.name()), detail, warnings, began)?;
                    }
                }
                if prune {
                    let began = Instant::now();
                    let options = larder::ops::prune::PruneOptions {
                        dry_run: false,
                        max_unused_percent: plan
                            .prune
                            .max_unused
                            .unwrap_or(larder::ops::prune::DEFAULT_MAX_UNUSED_PERCENT),
                        max_wait: larder::ops::prune::DEFAULT_MAX_WAIT,
                        notify: None,
                        force_damaged: false,
                    };
                    match larder::ops::prune::prune(&repo, &options).await {
                        Ok(p) => {
                            let detail = format!(
                                "{} deleted, {} freed; {} repacked",
                                render::count(p.packs_deleted, "pack"),
                                render::size(p.bytes_freed),
                                render::count(p.packs_repacked, "pack")
                            );
                            runner.done("prune", None, Ok(detail), p.warnings, began)?;
                        }
                        Err(e) => {
                            runner.done("prune", None, Err(format!("{e:#}")), Vec::new(), began)?
                        }
                    }
                }
                global.release_leases().await;
            }
        }

        if global.interrupted() {
            break 'steps;
        }
        // The off-site copy of the sources' snapshots.
        if let Some(copy) = &plan.copy {
            let began = Instant::now();
            let result = copy_off_site(global, copy, &sources).await;
            global.release_leases().await;
            runner.done(
                "copy",
                None,
                result.map_err(|e| format!("{e:#}")),
                Vec::new(),
                began,
            )?;
        }

        if global.interrupted() {
            break 'steps;
        }
        // Verification, a rotating part of the packs each run.
        if let Some(check) = &plan.check {
            let began = Instant::now();
            let spec = check
                .read_data_subset
                .as_deref()
                .map(str::parse::<SubsetSpec>)
                .transpose()?;
            let subset = spec.map(|s| s.part(state.check_runs));
            let result = async {
                let repo = open_leased(global, LeaseKind::Read).await?;
                let checked = larder::ops::check::check(
                    &repo,
                    &larder::ops::check::CheckOptions {
                        read_data: subset.is_some(),
                        subset,
                        progress: Arc::new(Progress::default()),
                    },
                )
                .await?;
                anyhow::Ok(checked)
            }
            .await;
            global.release_leases().await;
            let subset_text = subset.map(|s| format!("{}/{}", s.part, s.of));
            match result {
                Ok(checked) => {
                    state.check_runs += 1;
                    state.last_check = Some(CheckRecord {
                        time: now_s(),
                        ok: checked.is_ok(),
                        subset: subset_text.clone(),
                        packs_read: checked.packs_read,
                        error: None,
                    });
                    let read = subset_text.map_or(String::new(), |s| {
                        format!(
                            "; read part {s}: {}",
                            render::count(checked.packs_read, "pack")
                        )
                    });
                    let detail = if checked.is_ok() {
                        Ok(format!(
                            "{}, no problems{read}",
                            render::count(checked.packs, "pack")
                        ))
                    } else {
                        Err(format!(
                            "{} affecting {}{read}",
                            render::count(
                                checked.problems.len() as u64,
                                "damaged or missing object"
                            ),
                            render::count(checked.affected_snapshots.len() as u64, "snapshot")
                        ))
                    };
                    runner.done("check", None, detail, checked.notes, began)?;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    state.last_check = Some(CheckRecord {
                        time: now_s(),
                        ok: false,
                        subset: subset_text,
                        packs_read: 0,
                        error: Some(why.clone()),
                    });
                    runner.done("check", None, Err(why), Vec::new(), began)?;
                }
            }
            save_state(&mut runner, &state_path, &state, true);
        }

        if global.interrupted() {
            break 'steps;
        }
        // Drills of the sources whose last drill is older than `every`.
        if let Some(drill) = &plan.drill {
            let every: Within = drill.every.parse()?;
            match open_leased(global, LeaseKind::Read).await {
                Err(e) => runner.done(
                    "drill",
                    None,
                    Err(format!("{e:#}")),
                    Vec::new(),
                    Instant::now(),
                )?,
                Ok(repo) => {
                    for source in sources.iter().filter(|s| s.drill) {
                        let began = Instant::now();
                        match drill_if_due(&repo, drill, &every, source.name()).await {
                            Ok(None) => {}
                            Ok(Some(Ok((detail, warnings)))) => runner.done(
                                "drill",
                                Some(source.name()),
                                Ok(detail),
                                warnings,
                                began,
                            )?,
                            Ok(Some(Err(why))) => runner.done(
                                "drill",
                                Some(source.name()),
                                Err(why),
                                Vec::new(),
                                began,
                            )?,
                            Err(e) => runner.done(
                                "drill",
                                Some(source.name()),
                                Err(format!("{e:#}")),
                                Vec::new(),
                                began,
                            )?,
                        }
                    }
                }
            }
            global.release_leases().await;
        }
    }
    if global.interrupted() {
        runner.done(
            "run",
            None,
            Err("interrupted by a signal: the remaining steps were not taken".into()),
            Vec::new(),
            Instant::now(),
        )?;
    }

    // The metrics file, from the repository's records and this state.
    if let Some(path) = plan.metrics_file.as_ref().filter(|_| global.plan_repo) {
        let began = Instant::now();
        let result = async {
            let repo = open(global).await?;
            super::metrics::write(&repo, &plan, &state, path).await
        }
        .await;
        if let Err(e) = result {
            runner.done("metrics", None, Err(format!("{e:#}")), Vec::new(), began)?;
        }
    }

    summary.duration_s = started.elapsed().as_secs_f64();
    if !summary.ok
        && !plan.notify.on_failure.is_empty()
        && let Err(e) = notify(&plan.notify.on_failure, &summary).await
    {
        render::warn_all(&[format!("on_failure: {e:#}")]);
    }
    let warned = summary.steps.iter().any(|s| !s.warnings.is_empty());
    if global.json {
        render::print_json(&summary)?;
    } else if !global.quiet {
        outln!(
            "run: {} in {:.1} s{}",
            render::count(summary.steps.len() as u64, "step"),
            summary.duration_s,
            if summary.ok {
                String::new()
            } else {
                format!("; failed: {}", summary.failed.join(", "))
            }
        )?;
    }
    if let Some(signal) = global.interrupting_signal() {
        return Err(anyhow::Error::new(larder::Error::Interrupted { signal }));
    }
    if !summary.ok {
        return Err(anyhow!(
            "{} of the run failed: {}",
            render::count(summary.failed.len() as u64, "step"),
            summary.failed.join(", ")
        ));
    }
    Ok(if warned {
        Outcome::Warnings
    } else {
        Outcome::Success
    })
}

/// Saves what this run changed in the state file, over what is there now
/// (a `check` may have written it meanwhile). A failure to write it is a
/// failed step, and the run goes on.
fn save_state(runner: &mut Runner, path: &std::path::Path, state: &State, checked: bool) {
    let began = Instant::now();
    let mut fresh = State::load(path);
    for step in &runner.summary.steps {
        if step.step == "backup"
            && let Some(source) = &step.source
            && let Some(attempt) = state.sources.get(source)
        {
            fresh.sources.insert(source.clone(), attempt.clone());
        }
    }
    if checked {
        fresh.check_runs = fresh.check_runs.max(state.check_runs);
        fresh.last_check.clone_from(&state.last_check);
    }
    if let Err(e) = fresh.save(path) {
        // Printing can only fail on a closed standard output; the step is
        // recorded either way.
        let _ = runner.done("state", None, Err(format!("{e:#}")), Vec::new(), began);
    }
}

/// Records the steps of a run and prints each as it ends.
struct Runner<'a> {
    global: &'a GlobalArgs,
    summary: &'a mut RunSummary,
}

impl Runner<'_> {
    fn done(
        &mut self,
        step: &'static str,
        source: Option<&str>,
        result: std::result::Result<String, String>,
        warnings: Vec<String>,
        began: Instant,
    ) -> Result<()> {
        let ok = result.is_ok();
        let detail = match result {
            Ok(detail) | Err(detail) => detail,
        };
        let name = match source {
            Some(source) => format!("{step} {source}"),
            None => step.to_string(),
        };
        if !ok {
            self.summary.ok = false;
            self.summary.failed.push(name.clone());
        }
        // A closed standard output must not stop the backups: the line is
        // dropped, the step still recorded.
        if !self.global.json && !self.global.quiet {
            let _ = if ok {
                outln!("{name}: {detail}")
            } else {
                outln!("{name}: FAILED: {detail}")
            };
        }
        if !ok && (self.global.json || self.global.quiet) {
            errln!("larder: {name} failed: {detail}");
        }
        self.summary.steps.push(Step {
            step,
            source: source.map(str::to_string),
            ok,
            detail,
            warnings,
            duration_s: began.elapsed().as_secs_f64(),
        });
        Ok(())
    }
}

/// Applies the source's retention; `None` when it has no keep rule.
async fn retention(
    repo: &Repo,
    plan: &Plan,
    source: &Source,
) -> Option<Result<(String, Vec<String>)>> {
    let policy = match source.retention.over(&plan.retention).policy() {
        Ok(policy) if policy.is_empty() => return None,
        Ok(policy) => policy,
        Err(e) => return Some(Err(e.into())),
    };
    let filter = SnapshotFilter {
        source: Some(source.name().to_string()),
        ..SnapshotFilter::default()
    };
    // A source with no snapshot yet (its first backup failed) has nothing
    // to apply retention to.
    match repo.snapshots(&filter) {
        Ok(found) if found.is_empty() => return None,
        Ok(_) => {}
        Err(e) => return Some(Err(e.into())),
    }
    let options = larder::ops::forget::ForgetOptions {
        filter,
        policy,
        group_by: larder::ops::forget::GroupBy::default(),
        time_zone: jiff::tz::TimeZone::system(),
        now: jiff::Timestamp::now(),
        dry_run: false,
        allow_empty: false,
        snapshots: Vec::new(),
    };
    Some(
        larder::ops::forget::forget(repo, &options)
            .await
            .map(|f| {
                (
                    format!("kept {}, removed {}", f.kept, f.removed),
                    f.warnings,
                )
            })
            .map_err(Into::into),
    )
}

/// Copies the sources' snapshots to the plan's off-site repository.
async fn copy_off_site(
    global: &GlobalArgs,
    copy: &larder::plan::CopyPlan,
    sources: &[&Source],
) -> Result<String> {
    let src = open_leased(global, LeaseKind::Read).await?;
    let dst = super::copy::open_other(
        global,
        &copy.to,
        copy.password_file.as_deref(),
        "LARDER_TO_PASSWORD",
        "destination",
        Some(LeaseKind::Copy),
    )
    .await?;
    let mut ids = Vec::new();
    for source in sources {
        let filter = SnapshotFilter {
            source: Some(source.name().to_string()),
            ..SnapshotFilter::default()
        };
        ids.extend(src.snapshots(&filter)?.into_iter().map(|(id, _)| id));
    }
    let copied = larder::ops::copy::copy(&src, &dst, &ids, Arc::new(Progress::default()))
        .await
        .with_context(|| format!("copying to {}", copy.to))?;
    Ok(format!(
        "{} copied, {} already there; added {}",
        copied.copied,
        copied.skipped,
        render::size(copied.bytes_added)
    ))
}

/// Drills the source's latest snapshot when its last drill is older than
/// `every` (or it has none): `None` when not due or nothing to drill.
async fn drill_if_due(
    repo: &Repo,
    plan: &larder::plan::DrillPlan,
    every: &Within,
    source: &str,
) -> Result<Option<std::result::Result<(String, Vec<String>), String>>> {
    let now = jiff::Timestamp::now();
    let last = repo
        .drill_records(Some(source))?
        .into_iter()
        .map(|(_, r)| r.time_ns)
        .max();
    let due_after = every.before(now).as_nanosecond() as i64;
    if last.is_some_and(|t| t > due_after) {
        return Ok(None);
    }
    let filter = SnapshotFilter {
        source: Some(source.to_string()),
        ..SnapshotFilter::default()
    };
    let Ok((id, snapshot)) = repo.resolve_snapshot("latest", &filter) else {
        return Ok(None);
    };
    // A plain stream says nothing of how to verify it; its source names a
    // kind to be drilled.
    if snapshot.kind == "stream" {
        return Ok(None);
    }
    let options = larder::ops::drill::DrillOptions {
        kind: None,
        database: plan.database.clone(),
        redis_server: plan.redis_server,
        scratch_parent: std::env::temp_dir(),
        progress: Arc::new(Progress::default()),
    };
    let drilled = larder::ops::drill::drill(repo, &id, &snapshot, &options).await?;
    let detail = format!(
        "snapshot {} ({}): {}",
        id.short(),
        drilled.kind,
        drilled.outcome
    );
    Ok(Some(if drilled.passed() {
        Ok((detail, drilled.warnings))
    } else {
        Err(format!("{detail}: {}", drilled.detail))
    }))
}

/// Runs `on_failure` (no shell) with the run's summary on standard input.
async fn notify(argv: &[String], summary: &RunSummary) -> Result<()> {
    let json = serde_json::to_vec_pretty(summary)?;
    let argv = argv.to_vec();
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::Write;
        let mut child = larder::source::command::without_secrets(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A notifier that does not read its input still gets to run.
            let _ = stdin.write_all(&json);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}", argv[0]);
        }
        Ok(())
    })
    .await?
}

/// Prints what a run would do.
fn print_plan(plan: &Plan, sources: &[&Source], url: &str) -> Result<()> {
    outln!("repository {url}")?;
    for source in sources {
        let what = match &source.command {
            Some(command) => format!("the output of `{command}`"),
            None => source
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let kind = source
            .kind
            .as_deref()
            .unwrap_or(if source.command.is_some() {
                "auto"
            } else {
                "files"
            });
        outln!("backup {}: {what} (kind {kind})", source.name())?;
        let rules = source.retention.over(&plan.retention);
        let policy = rules.policy()?;
        if policy.is_empty() {
            outln!("retention {}: none (every snapshot kept)", source.name())?;
        } else {
            let mut keep = Vec::new();
            for (name, value) in [
                ("last", rules.keep_last),
                ("hourly", rules.keep_hourly),
                ("daily", rules.keep_daily),
                ("weekly", rules.keep_weekly),
                ("monthly", rules.keep_monthly),
                ("yearly", rules.keep_yearly),
            ] {
                if let Some(n) = value {
                    keep.push(format!("{name} {n}"));
                }
            }
            if let Some(within) = &rules.keep_within {
                keep.push(format!("within {within}"));
            }
            outln!("retention {}: keep {}", source.name(), keep.join(", "))?;
        }
    }
    if plan.prune.enabled {
        outln!("prune")?;
    }
    if let Some(copy) = &plan.copy {
        outln!("copy to {}", copy.to)?;
    }
    if let Some(check) = &plan.check {
        match &check.read_data_subset {
            Some(subset) => outln!("check, reading {subset} of the packs")?,
            None => outln!("check (structure)")?,
        }
    }
    if let Some(drill) = &plan.drill {
        outln!(
            "drill each source not drilled in {} (sources of kind stream are not drilled)",
            drill.every
        )?;
    }
    if let Some(path) = &plan.metrics_file {
        outln!("metrics to {}", path.display())?;
    }
    if !plan.notify.on_failure.is_empty() {
        outln!("on failure: {}", plan.notify.on_failure.join(" "))?;
    }
    Ok(())
}

/// An exclusive lock on a file, held while a run lasts.
struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock, waiting up to `wait` for another run to release it.
    async fn take(path: &std::path::Path, wait: Duration) -> Result<RunLock> {
        use std::io::{Read, Seek, Write};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening the run lock {}", path.display()))?;
        let deadline = Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    bail!(
                        "another larder run of this repository is still running (pid {}, lock {}); waited {} s (--wait)",
                        holder.trim(),
                        path.display(),
                        wait.as_secs()
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(RunLock { _file: file })
    }
}
