//! Command-line interface: the clap definitions and dispatch. Each command
//! lives in `cli/<command>.rs`, parses its flags into the library's options,
//! calls one library verb, and renders the result as text or `--json`.
//!
//! Output goes through `outln!` (a closed pipe ends the command quietly,
//! never a panic) and `errln!` (errors writing to standard error are
//! ignored), never `println!`.

/// Writes a line to standard output; evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    () => {
        $crate::cli::render::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::render::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to standard output without a newline.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::render::out(format_args!($($arg)*))
    };
}

/// Writes a line to standard error, ignoring failure.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::render::err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod backup;
mod browse;
mod check;
mod copy;
mod drill;
mod forget;
mod init;
mod keys;
mod metrics;
mod passphrase;
mod progress_bar;
mod read;
mod render;
mod run;
mod snapshots;
mod state;
mod stats;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use larder::LeaseKind;
use larder::Repo;

/// How a successful run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything worked.
    Success,
    /// The command finished, but with warnings (exit code 3).
    Warnings,
}

/// Deduplicating, encrypted backups of database dumps and file trees.
#[derive(Parser, Debug)]
#[command(name = "larder", version, about, long_about = None, max_term_width = 100)]
#[command(
    after_help = "Passphrase: --password-command, --password-file, LARDER_PASSWORD, or a prompt on a terminal.\n\
Exit codes: 0 success, 1 failure, 3 finished with warnings."
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Backup plan (TOML): its repository, passphrase and cache directory apply unless given otherwise; `run` looks in $XDG_CONFIG_HOME/larder/larder.toml, then /etc/larder/larder.toml
    #[arg(long, env = "LARDER_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The plan loaded from `config`.
    #[arg(skip)]
    plan: Option<Arc<larder::plan::Plan>>,
    /// Whether the repository is the plan's (not one named otherwise).
    #[arg(skip)]
    plan_repo: bool,
    /// Repository: a directory path, file:///path, or s3://bucket/prefix (AWS_* variables for S3)
    #[arg(
        long,
        short = 'r',
        env = "LARDER_REPO",
        global = true,
        value_name = "URL"
    )]
    repo: Option<String>,
    /// Read the passphrase from the first line of this file
    #[arg(long, env = "LARDER_PASSWORD_FILE", global = true, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Run this command (no shell) and use its first output line as the passphrase
    #[arg(
        long,
        env = "LARDER_PASSWORD_COMMAND",
        global = true,
        value_name = "CMD"
    )]
    password_command: Option<String>,
    /// Open the repository with this key file (from `larder key export`) instead of a passphrase: no key derivation
    #[arg(long, env = "LARDER_KEY_FILE", global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Directory for the catalog and caches [default: $XDG_CACHE_HOME/larder or ~/.cache/larder]
    #[arg(long, env = "LARDER_CACHE_DIR", global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but errors and requested data; no progress bars
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Repositories opened with a lease, released when the command ends
    /// (however it ends).
    #[arg(skip)]
    leased: Arc<Mutex<Vec<Repo>>>,
    /// The progress of the running operation, whose interrupt a signal
    /// raises.
    #[arg(skip)]
    watched: Arc<Mutex<Vec<Arc<larder::progress::Progress>>>>,
    /// Set when opening a repository printed warnings (objects it could not
    /// read): the command then ends with exit code 3 at best.
    #[arg(skip)]
    warned: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new repository
    Init(init::InitArgs),
    /// Back up file trees, standard input, or a dump command's output
    Backup(backup::BackupArgs),
    /// List snapshots
    Snapshots(snapshots::SnapshotsArgs),
    /// List a directory of a snapshot
    Ls(browse::LsArgs),
    /// Find paths matching a glob across snapshots, newest first
    Find(browse::FindArgs),
    /// Write one file of a snapshot (or a stream snapshot) to standard output
    Cat(read::CatArgs),
    /// Show what changed between two snapshots
    Diff(browse::DiffArgs),
    /// Show the versions of one file across snapshots
    Log(browse::LogArgs),
    /// Restore a snapshot into a directory
    Restore(read::RestoreArgs),
    /// Verify the repository's structure, or with --read-data every byte
    Check(check::CheckArgs),
    /// Restore a snapshot to a temporary place, verify it by kind, and record the result
    Drill(drill::DrillArgs),
    /// Remove snapshots by a retention policy (daily/weekly/monthly…); data goes with prune
    Forget(forget::ForgetArgs),
    /// Delete data no snapshot uses, in two phases that never block backups
    Prune(forget::PruneArgs),
    /// Show the repository's size, object counts, compression and deduplication
    Stats,
    /// Show each source's newest good snapshot, its age and last drill; with --max-age, exit 1 when one is stale or its last drill failed
    Status(status::StatusArgs),
    /// Copy snapshots into another repository (such as an off-site S3 bucket)
    Copy(copy::CopyArgs),
    /// Run the backup plan (--config): back up each source, apply retention, prune, copy off-site, check, drill, write metrics
    Run(run::RunArgs),
    /// Manage the passphrases (key files) that open the repository
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Manage the local catalog
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Subcommand, Debug)]
enum CatalogCommand {
    /// Recreate the catalog from the repository alone (index objects, then pack headers)
    Rebuild,
}

/// How long an interrupted operation that stops itself (a backup) may take
/// to wind down before the process ends anyway.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A command ended by a signal, after stopping cleanly where it could.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}: {command} stopped{}", larder::error::signal_name(*.signal), .outcome)]
pub struct Interrupted {
    /// The signal number.
    pub signal: i32,
    /// The subcommand.
    pub command: &'static str,
    /// For a command that commits (a backup): whether it did.
    pub outcome: &'static str,
}

/// Runs one parsed command line, then releases any lease it took, however
/// it ended: done, failed, interrupted by SIGINT, SIGTERM or SIGHUP, or cut
/// off by a closed standard output.
pub async fn run(cli: Cli) -> Result<Outcome> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut global = cli.global;
    global.apply_plan(matches!(cli.command, Command::Run(_)))?;
    let refresh_metrics = cli.command.refreshes_metrics();
    let name = cli.command.name();
    let writes = cli.command.writes();
    render::set_listing(cli.command.is_listing());
    let mut signals = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        signals.push((
            kind.as_raw_value(),
            signal(kind).context("installing signal handlers")?,
        ));
    }
    let mut keep_leases = false;
    // The command runs as its own task, so a signal is seen even while it
    // is stuck in a blocking write (a full pipe nobody reads).
    let mut work = tokio::spawn({
        let global = global.clone();
        async move { dispatch(&global, cli.command).await }
    });
    let joined = |joined: std::result::Result<Result<Outcome>, tokio::task::JoinError>| {
        joined.unwrap_or_else(|e| Err(anyhow::anyhow!("the command's task failed: {e}")))
    };
    let outcome = tokio::select! {
        outcome = &mut work => joined(outcome),
        signal = next_signal(&mut signals) => {
            // An operation that can stop cleanly (a backup kills its dump,
            // indexes what landed and commits nothing) is given a moment;
            // others are dropped here, which is as safe as a crash. A
            // second signal ends the wait.
            let watched = global.interrupt(signal);
            let mut result = None;
            if watched {
                tokio::select! {
                    outcome = &mut work => result = Some(joined(outcome)),
                    _ = next_signal(&mut signals) => {}
                    _ = tokio::time::sleep(INTERRUPT_GRACE) => {}
                }
            }
            if result.is_none() {
                work.abort();
                // An aborted task stops at its next await; give it that
                // moment before its lease goes. A command that changes the
                // repository and did not stop may be storing something (or,
                // a prune, deleting): its lease is left to expire. A reader
                // holds nothing a release could endanger.
                let stopped =
                    tokio::time::timeout(std::time::Duration::from_secs(5), &mut work)
                        .await
                        .is_ok();
                keep_leases = writes && (watched || !stopped);
            }
            let interrupted = Interrupted {
                signal,
                command: name,
                outcome: match (watched, global.committed()) {
                    (false, _) => "",
                    (true, false) => "; nothing was committed",
                    (true, true) => "; its snapshot had been committed",
                },
            };
            match result {
                // Done before the interrupt could stop it.
                Some(Ok(outcome)) => Ok(outcome),
                // Stopped by the interrupt: say so in one line.
                Some(Err(e)) if e.chain().any(|c| {
                    matches!(c.downcast_ref(), Some(larder::Error::Interrupted { .. }))
                }) => Err(anyhow::Error::new(interrupted)),
                // Failed for a reason of its own meanwhile: that is the news.
                Some(Err(e)) => Err(e),
                None => Err(anyhow::Error::new(interrupted)),
            }
        }
    };
    if !keep_leases {
        global.release_leases().await;
    }
    let outcome = match outcome {
        Ok(done) if refresh_metrics => match metrics_after_command(&global).await {
            Ok(()) => Ok(done),
            Err(e) => {
                render::warn_all(&[format!("the metrics file was not written: {e:#}")]);
                Ok(Outcome::Warnings)
            }
        },
        outcome => outcome,
    };
    match outcome {
        // A listing cut short by its reader (`larder ls | head`) did what
        // was asked. (`cat` reports a closed pipe as a failure: its bytes
        // did not all arrive.)
        Err(e) if e.downcast_ref::<render::StdoutClosed>().is_some() => Ok(Outcome::Success),
        Ok(Outcome::Success) if global.warned.load(std::sync::atomic::Ordering::Relaxed) => {
            Ok(Outcome::Warnings)
        }
        outcome => outcome,
    }
}

/// The next of the signals to arrive.
async fn next_signal(signals: &mut [(i32, tokio::signal::unix::Signal)]) -> i32 {
    let waits = signals.iter_mut().map(|(number, stream)| {
        Box::pin(async move {
            stream.recv().await;
            *number
        })
    });
    futures::future::select_all(waits).await.0
}

/// After a command given `--config` whose plan names a metrics file,
/// rewrites that file.
async fn metrics_after_command(global: &GlobalArgs) -> Result<()> {
    let Some(plan) = global.plan.as_ref().filter(|_| global.plan_repo) else {
        return Ok(());
    };
    let Some(path) = &plan.metrics_file else {
        return Ok(());
    };
    let repo = open(global).await?;
    let state = state::State::load(&state::State::path(
        &global.cache_root()?,
        global.repo_url()?,
    )?);
    metrics::write(&repo, plan, &state, path).await
}

impl Command {
    /// Whether the metrics file of a `--config` plan is rewritten after the
    /// command (`run` writes its own).
    fn refreshes_metrics(&self) -> bool {
        matches!(
            self,
            Command::Backup(_)
                | Command::Check(_)
                | Command::Drill(_)
                | Command::Forget(_)
                | Command::Prune(_)
                | Command::Copy(_)
        )
    }

    /// Whether the command changes the repository (its lease must not be
    /// released while it may still be doing so).
    fn writes(&self) -> bool {
        match self {
            Command::Init(_)
            | Command::Backup(_)
            | Command::Forget(_)
            | Command::Prune(_)
            | Command::Copy(_)
            | Command::Run(_)
            | Command::Catalog(_) => true,
            Command::Key(command) => !matches!(command, keys::KeyCommand::List),
            _ => false,
        }
    }

    /// Whether the command only lists (a closed standard output then ends
    /// it with success).
    fn is_listing(&self) -> bool {
        matches!(
            self,
            Command::Snapshots(_)
                | Command::Ls(_)
                | Command::Find(_)
                | Command::Diff(_)
                | Command::Log(_)
                | Command::Stats
                | Command::Status(_)
                | Command::Key(keys::KeyCommand::List)
        )
    }

    /// The subcommand's name, for messages.
    fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Backup(_) => "backup",
            Command::Snapshots(_) => "snapshots",
            Command::Ls(_) => "ls",
            Command::Find(_) => "find",
            Command::Cat(_) => "cat",
            Command::Diff(_) => "diff",
            Command::Log(_) => "log",
            Command::Restore(_) => "restore",
            Command::Check(_) => "check",
            Command::Drill(_) => "drill",
            Command::Forget(_) => "forget",
            Command::Prune(_) => "prune",
            Command::Stats => "stats",
            Command::Status(_) => "status",
            Command::Copy(_) => "copy",
            Command::Run(_) => "run",
            Command::Key(_) => "key",
            Command::Catalog(_) => "catalog",
        }
    }
}

async fn dispatch(global: &GlobalArgs, command: Command) -> Result<Outcome> {
    let global = global.clone();
    match command {
        Command::Init(args) => init::run(&global, args).await,
        Command::Backup(args) => backup::run(&global, args).await,
        Command::Snapshots(args) => snapshots::run(&global, args).await,
        Command::Ls(args) => browse::ls(&global, args).await,
        Command::Find(args) => browse::find(&global, args).await,
        Command::Cat(args) => read::cat(&global, args).await,
        Command::Diff(args) => browse::diff(&global, args).await,
        Command::Log(args) => browse::log(&global, args).await,
        Command::Restore(args) => read::restore(&global, args).await,
        Command::Check(args) => check::run(&global, args).await,
        Command::Drill(args) => drill::run(&global, args).await,
        Command::Forget(args) => forget::forget(&global, args).await,
        Command::Prune(args) => forget::prune(&global, args).await,
        Command::Stats => stats::run(&global).await,
        Command::Status(args) => status::run(&global, args).await,
        Command::Copy(args) => copy::run(&global, args).await,
        Command::Run(args) => run::run(&global, args).await,
        Command::Key(command) => keys::run(&global, command).await,
        Command::Catalog(CatalogCommand::Rebuild) => {
            let repo = open(&global).await?;
            let summary = larder::ops::rebuild::rebuild_catalog(&repo).await?;
            if global.json {
                render::print_json(&summary)?;
            } else if !global.quiet {
                outln!(
                    "catalog rebuilt: {} snapshots, {} index objects, {} blob locations; {} packs read from their headers",
                    summary.snapshots,
                    summary.index_objects,
                    summary.blobs,
                    summary.packs_from_headers
                )?;
                for id in &summary.repair_indexes {
                    outln!("wrote index object {} for them", id.short())?;
                }
            }
            render::warn_all(&summary.warnings);
            Ok(if summary.warnings.is_empty() {
                Outcome::Success
            } else {
                Outcome::Warnings
            })
        }
    }
}

impl GlobalArgs {
    /// Loads the plan `--config` names (for `run`, also the default
    /// places) and takes from it what no flag or environment variable gave.
    fn apply_plan(&mut self, look_for_default: bool) -> Result<()> {
        let path = match &self.config {
            Some(path) => Some(path.clone()),
            None if look_for_default => larder::plan::Plan::default_paths()
                .into_iter()
                .find(|p| p.exists()),
            None => None,
        };
        let Some(path) = path else {
            return Ok(());
        };
        let plan = larder::plan::Plan::load(&path)?;
        if self.repo.as_deref().is_none_or(str::is_empty) {
            self.repo.clone_from(&plan.repository);
        }
        // Another repository named on the command line gets neither the
        // plan's credentials nor its metrics file.
        self.plan_repo = self.repo == plan.repository;
        if !self.plan_repo {
            self.config = Some(path);
            self.plan = Some(Arc::new(plan));
            return Ok(());
        }
        if self.password_file.is_none() && self.password_command.is_none() {
            self.password_file.clone_from(&plan.password_file);
            self.password_command.clone_from(&plan.password_command);
        }
        if self.cache_dir.is_none() {
            self.cache_dir.clone_from(&plan.cache_dir);
        }
        if self.key_file.is_none()
            && self.password_file.is_none()
            && self.password_command.is_none()
        {
            self.key_file.clone_from(&plan.key_file);
        }
        self.config = Some(path);
        self.plan = Some(Arc::new(plan));
        Ok(())
    }

    /// Releases the leases taken so far (between the steps of a run, and
    /// when the command ends).
    async fn release_leases(&self) {
        let leased = std::mem::take(&mut *self.leased.lock().expect("lease list lock"));
        for repo in leased {
            // Bounded: a process asked to stop must not hang on storage.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), repo.release_lease())
                .await;
        }
    }

    fn repo_url(&self) -> Result<&str> {
        self.repo
            .as_deref()
            .filter(|r| !r.is_empty())
            .context("no repository given: pass --repo or set LARDER_REPO")
    }

    fn cache_root(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(dir.clone());
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir).join("larder"));
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(home).join(".cache").join("larder"));
        }
        anyhow::bail!(
            "no cache directory: pass --cache-dir or set LARDER_CACHE_DIR, XDG_CACHE_HOME or HOME"
        )
    }

    /// Notes a repository whose lease [`run`] must release at the end.
    fn remember_lease(&self, repo: &Repo) {
        if repo.lease().is_some() {
            self.leased
                .lock()
                .expect("lease list lock")
                .push(repo.clone());
        }
    }

    /// Prints what opening `repo` warned about; objects of the repository
    /// it could not read make the command end with exit code 3 at best (a
    /// catalog set aside and rebuilt is healed, not a warning to act on).
    fn warn_opened(&self, repo: &Repo) {
        if !repo.damaged_objects().is_empty() {
            self.warned
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        render::warn_all(&repo.open_report().warnings);
    }

    /// Notes the progress of an operation that a signal should interrupt.
    fn watch(&self, progress: &Arc<larder::progress::Progress>) {
        self.watched
            .lock()
            .expect("watch list lock")
            .push(Arc::clone(progress));
    }

    /// Whether a signal has interrupted a watched operation.
    fn interrupted(&self) -> bool {
        self.interrupting_signal().is_some()
    }

    /// The signal that interrupted a watched operation, if one did.
    fn interrupting_signal(&self) -> Option<i32> {
        self.watched
            .lock()
            .expect("watch list lock")
            .iter()
            .find_map(|p| p.interrupt.raised())
    }

    /// Whether a watched operation passed its commit point.
    fn committed(&self) -> bool {
        self.watched
            .lock()
            .expect("watch list lock")
            .iter()
            .any(|p| p.committed.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Raises the interrupt of every watched operation; whether any of them
    /// listens (and so stops by itself).
    fn interrupt(&self, signal: i32) -> bool {
        let watched = self.watched.lock().expect("watch list lock").clone();
        let mut listening = false;
        for progress in watched {
            listening |= progress.interrupt.raise(signal);
        }
        listening
    }

    fn shows_progress(&self) -> bool {
        !self.quiet && !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }
}

/// Opens the repository named by the global flags.
pub async fn open(global: &GlobalArgs) -> Result<Repo> {
    open_with(global, None).await
}

/// Opens the repository holding a lease of `kind` for as long as the
/// command runs (for commands that read or write packs).
pub async fn open_leased(global: &GlobalArgs, kind: LeaseKind) -> Result<Repo> {
    open_with(global, Some(kind)).await
}

async fn open_with(global: &GlobalArgs, lease: Option<LeaseKind>) -> Result<Repo> {
    let url = global.repo_url()?;
    let backend = larder::backend::open(url)?;
    let repo = match &global.key_file {
        Some(path) => {
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(path)
                    .with_context(|| format!("reading the key file {}", path.display()))?,
            );
            if let Ok(meta) = std::fs::metadata(path)
                && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
            {
                render::warn_all(&[format!(
                    "the key file {} can be read by other users (chmod 600 it)",
                    path.display()
                )]);
                global
                    .warned
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Repo::open_with_key_file(backend, &bytes, &global.cache_root()?, lease)
                .await
                .with_context(|| format!("opening repository {url} with {}", path.display()))?
        }
        None => {
            let passphrase = passphrase::existing(global)?;
            Repo::open_with(backend, passphrase.as_bytes(), &global.cache_root()?, lease)
                .await
                .with_context(|| format!("opening repository {url}"))?
        }
    };
    global.remember_lease(&repo);
    global.warn_opened(&repo);
    Ok(repo)
}
