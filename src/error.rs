//! The library's one public error type.
//!
//! Variants are modelled on what a caller does next: retry with another
//! passphrase, run `check`, pick another snapshot, fix the command line. Each
//! variant carries the object, path or name that makes its message useful on
//! its own, and keeps the underlying cause in `#[source]` so that `{:#}`
//! prints it once.

use std::path::PathBuf;

use crate::catalog::CatalogError;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key file of the repository opens with the given passphrase.
    #[error("wrong passphrase: no key file in {location} opens with it")]
    WrongPassphrase {
        /// The repository that was being opened.
        location: String,
    },

    /// No intact key file opens with the passphrase, and some key files are
    /// damaged (the passphrase may belong to one of them).
    #[error(
        "no intact key file in {location} opens with this passphrase, and {} key file(s) are damaged: {}",
        .damaged.len(),
        .damaged.join("; ")
    )]
    KeyFilesDamaged {
        /// The repository that was being opened.
        location: String,
        /// Each damaged key file with what is wrong with it.
        damaged: Vec<String>,
    },

    /// Trying every key file would take more key-derivation work than one
    /// open may spend, and none of those tried opened.
    #[error(
        "no key file in {location} opened with this passphrase after trying {tried}; {} more were not tried because together they ask for more key-derivation work than one open may spend (untried: {}; delete key files no longer used from keys/)", untried.len(), untried.join(", ")
    )]
    TooManyKeyFiles {
        /// The repository that was being opened.
        location: String,
        /// Key files tried.
        tried: usize,
        /// Key files left untried, by object name.
        untried: Vec<String>,
    },

    /// The location holds no repository (no `config` object).
    #[error(
        "{location} is not a larder repository (no config object); create one with `larder init`"
    )]
    NotARepository {
        /// Where a repository was expected.
        location: String,
    },

    /// `init` found something already at the location.
    #[error("{location} already holds a repository or other files; refusing to initialise over it")]
    AlreadyInitialised {
        /// Where `init` was asked to create a repository.
        location: String,
    },

    /// An object the repository should hold is not there.
    #[error("{object} is missing from the repository")]
    NotFound {
        /// The object's name, such as `packs/ab/ab12…`.
        object: String,
    },

    /// Bytes read from the repository failed authentication or did not parse.
    /// Never retried, never skipped silently.
    #[error("{object} is damaged: {reason}")]
    Corrupt {
        /// The object, or object and blob, that is damaged.
        object: String,
        /// What exactly failed.
        reason: String,
    },

    /// The repository or an object in it uses a format this build does not know.
    #[error(
        "{what} uses format {found}, but this larder supports only {supported}; upgrade larder"
    )]
    Unsupported {
        /// What carries the version.
        what: String,
        /// The version found.
        found: u32,
        /// The versions this build reads.
        supported: String,
    },

    /// A key file asks for more work than larder allows, so it cannot be used
    /// to exhaust memory or time.
    #[error("key file {key} has out-of-bounds KDF parameters: {reason}")]
    HostileKeyFile {
        /// The key file's id.
        key: String,
        /// Which bound was exceeded.
        reason: String,
    },

    /// A local file operation failed.
    #[error("{op} {path}", path = path.display())]
    Io {
        /// What was being done ("writing", "reading", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A storage request failed after any retries the backend makes.
    #[error("storage request {op} {object} failed")]
    Backend {
        /// The request kind (`get`, `put`, `list`, `delete`).
        op: &'static str,
        /// The object or prefix.
        object: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The local catalog (SQLite) failed.
    #[error("catalog {path}: {op}", path = path.display())]
    Catalog {
        /// What was being done.
        op: &'static str,
        /// The catalog file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: CatalogError,
    },

    /// The data source of a backup failed; no snapshot was written.
    #[error("source {source_name} failed: {reason}{}", stderr_block(.stderr_tail))]
    SourceFailed {
        /// The `--source` name.
        source_name: String,
        /// What happened (exit status, signal, empty input, read error).
        reason: String,
        /// The last lines the command wrote to standard error, if any.
        stderr_tail: String,
    },

    /// A `before` or `after` hook failed.
    #[error("the {hook} hook failed: {reason}{}", stderr_block(.output_tail))]
    HookFailed {
        /// `before` or `after`.
        hook: String,
        /// How it ended.
        reason: String,
        /// The last lines it wrote.
        output_tail: String,
    },

    /// A dump failed its completeness check; no snapshot was written.
    #[error(
        "source {source_name}: the {format} dump is incomplete: {detail}; no snapshot was written"
    )]
    IncompleteDump {
        /// The `--source` name.
        source_name: String,
        /// The format checked, such as `postgres-custom`.
        format: String,
        /// What is missing.
        detail: String,
    },

    /// A program a restore drill needs is not installed.
    #[error(
        "{program} is not installed (or not on the PATH); install the Debian package {package}"
    )]
    VerifierMissing {
        /// The program, such as `pg_restore`.
        program: String,
        /// The Debian package that has it.
        package: String,
    },

    /// A restore drill could not be set up (a scratch database, a
    /// throwaway server): no verdict on the data, nothing recorded.
    #[error("the drill could not {what}: {reason}{}", stderr_block(.output_tail))]
    DrillSetup {
        /// What it tried, such as `create scratch database larder_drill_…`.
        what: String,
        /// Why that failed.
        reason: String,
        /// The last lines the program wrote, if any.
        output_tail: String,
    },

    /// A snapshot's kind does not say how to verify it.
    #[error(
        "snapshot {snapshot} is of kind {kind}, which says nothing of how to verify it; name the kind to drill it as"
    )]
    DrillKindUnknown {
        /// The snapshot's short id.
        snapshot: String,
        /// Its recorded kind (and format, if any).
        kind: String,
    },

    /// No snapshot matches what the caller named.
    #[error("no snapshot matches {0}")]
    SnapshotNotFound(String),

    /// A snapshot id prefix matches more than one snapshot.
    #[error("snapshot prefix {prefix:?} is ambiguous: it matches {} and {} more", .matches[0], .matches.len() - 1)]
    AmbiguousSnapshot {
        /// The prefix given.
        prefix: String,
        /// The ids it matches.
        matches: Vec<String>,
    },

    /// A path named inside a snapshot does not exist there.
    #[error("{path} does not exist in snapshot {snapshot}")]
    PathNotInSnapshot {
        /// The path asked for.
        path: String,
        /// The snapshot's short id.
        snapshot: String,
    },

    /// The caller asked for something that cannot be done as asked.
    #[error("{0}")]
    InvalidArgument(String),

    /// A backup plan file does not parse or names something impossible.
    #[error("{}: {message}", path.display())]
    InvalidConfig {
        /// The plan file.
        path: std::path::PathBuf,
        /// What is wrong, with its line.
        message: String,
    },

    /// A retention policy names nothing to keep.
    #[error("no keep rule given: forget would remove every snapshot; name what to keep")]
    NoRetentionRule,

    /// A restore would overwrite files that exist in its target, and
    /// overwriting was not allowed.
    #[error(
        "{count} file(s) already exist in the target ({}{}); refusing to overwrite them",
        sample.join(", "),
        if *count > sample.len() { ", …" } else { "" }
    )]
    TargetFilesExist {
        /// How many.
        count: usize,
        /// The first few.
        sample: Vec<String>,
    },

    /// A retention policy would remove every snapshot of a group, and
    /// emptying groups was not allowed.
    #[error("the policy would remove all {count} snapshots of group {group}")]
    WouldEmptyGroup {
        /// The group, as `source=… host=…`.
        group: String,
        /// Its snapshots (planted future-dated ones not counted).
        count: usize,
    },

    /// This run's lease went unrefreshed for longer than its lifetime (the
    /// process was suspended, or storage was unreachable), so a prune may
    /// have removed data it relied on; it must not commit.
    #[error(
        "this run's lease lapsed: {gap_s} s passed between refreshes, more than its {ttl_s} s lifetime (was the process suspended or storage unreachable?); a prune may have removed data this run relied on, so nothing was committed; run it again"
    )]
    LeaseLapsed {
        /// Seconds between two refreshes, by the storage's clock.
        gap_s: u64,
        /// The lease's lifetime in seconds.
        ttl_s: u64,
    },

    /// Another operation that this one must not overlap is still running
    /// after waiting as long as allowed.
    #[error("gave up after waiting {waited_s} s for {what}")]
    Busy {
        /// How long this run waited.
        waited_s: u64,
        /// What it waited for (the other operation's lease).
        what: String,
    },

    /// Prune refused to delete anything because some of the repository's
    /// metadata cannot be read, so what the snapshots need is unknown.
    #[error(
        "prune deleted nothing: it cannot see everything the snapshots need ({}); run `larder check`, and restore or remove the damaged objects",
        .damage.join("; ")
    )]
    PruneRefused {
        /// Each damaged or unreadable object, with what is wrong.
        damage: Vec<String>,
    },

    /// The operation was interrupted (by a signal) and stopped cleanly:
    /// nothing was committed.
    #[error("interrupted by {}; nothing was committed", signal_name(*.signal))]
    Interrupted {
        /// The signal number.
        signal: i32,
    },

    /// An operation was stopped because another part of it failed first; the
    /// first failure is reported instead of this.
    #[error("operation cancelled")]
    Cancelled,
}

/// The usual name of a signal number, for messages.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        other => format!("signal {other}"),
    }
}

fn stderr_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{}", tail.trim_end())
    }
}

impl Error {
    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the local catalog's database file itself is damaged (it is
    /// derived data: set it aside and rebuild).
    pub(crate) fn is_catalog_corrupt(&self) -> bool {
        matches!(self, Error::Catalog { source, .. } if source.is_corrupt())
    }

    /// True when the error means data in the repository is damaged or missing,
    /// as opposed to a transient or local failure.
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::NotFound { .. })
    }
}
