//! Backup plans: the TOML file (`larder.toml`) that names a repository,
//! its sources, their retention, the off-site copy, verification, drills,
//! metrics and notifications, for `larder run` and `--config`.
//!
//! Unknown keys and bad values are errors naming the file and line; the
//! shape is documented in `docs/OPERATIONS.md` ("Backup plans").

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::retention::{Policy, Within};

/// A parsed, validated plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Repository URL (a directory, `file://`, or `s3://bucket/prefix`).
    pub repository: Option<String>,
    /// File whose first line is the passphrase.
    pub password_file: Option<PathBuf>,
    /// Command (no shell) whose first output line is the passphrase.
    pub password_command: Option<String>,
    /// Key file from `larder key export` (instead of a passphrase: no key
    /// derivation on each open).
    pub key_file: Option<PathBuf>,
    /// Directory for the catalog and caches.
    pub cache_dir: Option<PathBuf>,
    /// Prometheus text file written after every run.
    pub metrics_file: Option<PathBuf>,
    /// Retention for every source, unless the source overrides a rule.
    #[serde(default)]
    pub retention: Retention,
    /// What to back up, in order.
    #[serde(default, rename = "source")]
    pub sources: Vec<Source>,
    /// Prune settings (after retention).
    #[serde(default)]
    pub prune: PrunePlan,
    /// Off-site copy after the backups.
    pub copy: Option<CopyPlan>,
    /// Verification after the backups.
    pub check: Option<CheckPlan>,
    /// Restore drills.
    pub drill: Option<DrillPlan>,
    /// What to run when a step fails.
    #[serde(default)]
    pub notify: Notify,
}

/// Keep rules, as `forget` takes them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// One per hour for the last N hours that have one.
    pub keep_hourly: Option<u32>,
    /// One per day for the last N days that have one.
    pub keep_daily: Option<u32>,
    /// One per ISO week…
    pub keep_weekly: Option<u32>,
    /// One per month…
    pub keep_monthly: Option<u32>,
    /// One per year…
    pub keep_yearly: Option<u32>,
    /// Every snapshot within this span (`7d`, `1y6m`).
    pub keep_within: Option<String>,
    /// Every snapshot with one of these tags.
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

impl Retention {
    /// These rules, each one not set taken from `defaults`.
    pub fn over(&self, defaults: &Retention) -> Retention {
        Retention {
            keep_last: self.keep_last.or(defaults.keep_last),
            keep_hourly: self.keep_hourly.or(defaults.keep_hourly),
            keep_daily: self.keep_daily.or(defaults.keep_daily),
            keep_weekly: self.keep_weekly.or(defaults.keep_weekly),
            keep_monthly: self.keep_monthly.or(defaults.keep_monthly),
            keep_yearly: self.keep_yearly.or(defaults.keep_yearly),
            keep_within: self.keep_within.clone().or(defaults.keep_within.clone()),
            keep_tags: if self.keep_tags.is_empty() {
                defaults.keep_tags.clone()
            } else {
                self.keep_tags.clone()
            },
        }
    }

    /// The retention policy; an empty one when no rule is set.
    pub fn policy(&self) -> Result<Policy> {
        Ok(Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self
                .keep_within
                .as_deref()
                .map(str::parse::<Within>)
                .transpose()?,
            tags: self.keep_tags.clone(),
        })
    }
}

/// One thing to back up.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Its name (snapshots are grouped by it).
    pub name: toml::Spanned<String>,
    /// `auto` (streams), `postgres`, `redis`, `neo4j`, `stream`, `files`.
    pub kind: Option<String>,
    /// A dump command (no shell) whose standard output is backed up.
    pub command: Option<String>,
    /// File name of the stream inside the snapshot.
    pub stdin_name: Option<String>,
    /// Directories or files to back up.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Exclude patterns, as `--exclude` takes them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Do not cross into other file systems.
    #[serde(default)]
    pub one_file_system: bool,
    /// Hook run before the backup; its failure skips the source.
    pub before: Option<String>,
    /// Hook run after the backup, whatever its outcome.
    pub after: Option<String>,
    /// Store a dump that fails its completeness check, tagged `incomplete`.
    #[serde(default)]
    pub allow_incomplete: bool,
    /// Unpack compressed dumps before chunking (the default).
    #[serde(default = "yes")]
    pub unpack: bool,
    /// Tags for every snapshot.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Rules overriding the plan's `[retention]`, rule by rule.
    #[serde(default)]
    pub retention: Retention,
    /// Restore drills of this source (default: when `[drill]` is set).
    #[serde(default = "yes")]
    pub drill: bool,
}

fn yes() -> bool {
    true
}

impl Source {
    /// The source's name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
}

/// `[prune]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunePlan {
    /// Prune after retention (the default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Unused space tolerated in partly used packs, percent.
    pub max_unused: Option<f64>,
}

impl Default for PrunePlan {
    fn default() -> Self {
        PrunePlan {
            enabled: true,
            max_unused: None,
        }
    }
}

/// `[copy]`: the off-site repository.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyPlan {
    /// Its URL.
    pub to: String,
    /// Its passphrase file (or `LARDER_TO_PASSWORD`).
    pub password_file: Option<PathBuf>,
}

/// `[check]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPlan {
    /// Packs read each run: `5%` (rotating, so every pack is read over 20
    /// runs) or `K/M`; none: structure only.
    pub read_data_subset: Option<String>,
}

/// `[drill]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillPlan {
    /// How often each source is drilled (`7d`).
    pub every: String,
    /// PostgreSQL connection for full restores into a scratch database.
    pub database: Option<String>,
    /// Load Redis dumps into a throwaway `redis-server`.
    #[serde(default)]
    pub redis_server: bool,
}

/// `[notify]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Argument vector run (no shell) when any step fails, with the run's
    /// JSON summary on standard input.
    #[serde(default)]
    pub on_failure: Vec<String>,
}

/// Which packs a verification reads: those whose id falls in part `part`
/// of `of` (1-based), so that `of` runs with parts 1 to `of` read every
/// pack exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subset {
    /// This run's part, from 1.
    pub part: u64,
    /// Parts in all.
    pub of: u64,
}

/// A `--read-data-subset` value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SubsetSpec {
    /// `K/M`: part K of M.
    Part(Subset),
    /// `N%`: about N percent, a different part each run.
    Percent(f64),
}

impl std::str::FromStr for SubsetSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<SubsetSpec> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{text:?} is not a subset: give a percentage (5%) or a part (1/20)"
            ))
        };
        if let Some(percent) = text.strip_suffix('%') {
            let p: f64 = percent.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(SubsetSpec::Percent(p));
        }
        let (part, of) = text.split_once('/').ok_or_else(bad)?;
        let part: u64 = part.trim().parse().map_err(|_| bad())?;
        let of: u64 = of.trim().parse().map_err(|_| bad())?;
        if part == 0 || of == 0 || part > of {
            return Err(bad());
        }
        Ok(SubsetSpec::Part(Subset { part, of }))
    }
}

impl SubsetSpec {
    /// The part to read on the `run`th rotating run (counting from 0).
    pub fn part(self, run: u64) -> Subset {
        match self {
            SubsetSpec::Part(subset) => subset,
            SubsetSpec::Percent(p) => {
                let of = (100.0 / p).round().max(1.0) as u64;
                Subset {
                    part: run % of + 1,
                    of,
                }
            }
        }
    }
}

impl Subset {
    /// Whether the pack with this id is in the subset.
    pub fn holds(&self, id: &[u8; 32]) -> bool {
        let n = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
        n % self.of == self.part - 1
    }
}

impl Plan {
    /// Where a plan is looked for when none is named:
    /// `$XDG_CONFIG_HOME/larder/larder.toml` (or `~/.config/…`), then
    /// `/etc/larder/larder.toml`.
    pub fn default_paths() -> Vec<PathBuf> {
        let mut paths = Vec::new();
        if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            paths.push(PathBuf::from(dir).join("larder/larder.toml"));
        } else if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            paths.push(PathBuf::from(home).join(".config/larder/larder.toml"));
        }
        paths.push(PathBuf::from("/etc/larder/larder.toml"));
        paths
    }

    /// Reads and validates the plan at `path`.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidConfig {
            path: path.to_path_buf(),
            message: format!("cannot be read: {e}"),
        })?;
        let mut plan = Plan::parse(&text).map_err(|message| Error::InvalidConfig {
            path: path.to_path_buf(),
            message,
        })?;
        // Relative paths are the plan file's neighbours, wherever larder
        // runs from (a systemd unit runs in /).
        if let Some(dir) = path.parent() {
            plan.resolve_against(dir);
        }
        Ok(plan)
    }

    /// Makes the plan's relative paths relative to `dir`.
    fn resolve_against(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for p in [
            &mut self.password_file,
            &mut self.key_file,
            &mut self.cache_dir,
            &mut self.metrics_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(copy) = &mut self.copy
            && let Some(p) = &mut copy.password_file
        {
            fix(p);
        }
        for source in &mut self.sources {
            source.paths.iter_mut().for_each(fix);
        }
        if let Some(repo) = &mut self.repository
            && !repo.contains("://")
            && Path::new(repo.as_str()).is_relative()
        {
            *repo = dir.join(repo.as_str()).display().to_string();
        }
    }

    /// Parses and validates a plan's text; the error names the line.
    pub fn parse(text: &str) -> std::result::Result<Plan, String> {
        let plan: Plan = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let message = e.message().trim_end().to_string();
            match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            }
        })?;
        plan.validate(text)?;
        Ok(plan)
    }

    fn validate(&self, text: &str) -> std::result::Result<(), String> {
        self.retention
            .policy()
            .map_err(|e| format!("[retention]: {e}"))?;
        let mut names = std::collections::HashSet::new();
        for source in &self.sources {
            let at = format!(
                "line {}: source {:?}",
                line_of(text, source.name.span().start),
                source.name()
            );
            if source.name().trim().is_empty() {
                return Err(format!("{at}: the name is empty"));
            }
            if !names.insert(source.name()) {
                return Err(format!("{at}: a second source has this name"));
            }
            let stream = match (&source.command, source.paths.is_empty()) {
                (Some(_), true) => true,
                (None, false) => false,
                (Some(_), false) => return Err(format!("{at}: give command or paths, not both")),
                (None, true) => return Err(format!("{at}: give command or paths")),
            };
            if let Some(kind) = &source.kind {
                let fits = if stream {
                    crate::dump::Kind::from_name(kind).is_some()
                } else {
                    kind == "files" || kind == "postgres"
                };
                if !fits {
                    return Err(format!(
                        "{at}: kind {kind:?} does not fit a {}: streams take {}; paths take files or postgres",
                        if stream { "command" } else { "list of paths" },
                        crate::dump::Kind::NAMES.join(", ")
                    ));
                }
            }
            for command in [&source.command, &source.before, &source.after]
                .into_iter()
                .flatten()
            {
                crate::source::split_command(command).map_err(|e| format!("{at}: {e}"))?;
            }
            crate::source::tree::Excludes::new(&source.exclude)
                .map_err(|e| format!("{at}: exclude: {e}"))?;
            source
                .retention
                .over(&self.retention)
                .policy()
                .map_err(|e| format!("{at}: retention: {e}"))?;
        }
        if let Some(check) = &self.check
            && let Some(subset) = &check.read_data_subset
        {
            subset
                .parse::<SubsetSpec>()
                .map_err(|e| format!("[check] read_data_subset: {e}"))?;
        }
        if let Some(drill) = &self.drill {
            drill
                .every
                .parse::<Within>()
                .map_err(|e| format!("[drill] every: {e}"))?;
        }
        if let Some(max) = self.prune.max_unused
            && !(0.0..=100.0).contains(&max)
        {
            return Err(format!(
                "[prune] max_unused = {max}: give a percentage from 0 to 100"
            ));
        }
        if let Some(copy) = &self.copy
            && copy.to.trim().is_empty()
        {
            return Err("[copy] to is empty".into());
        }
        Ok(())
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name() == name)
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
repository = "/srv/backups/larder"
password_file = "/etc/larder/password"
metrics_file = "/var/lib/node_exporter/textfile/larder.prom"

[retention]
keep_daily = 7
keep_weekly = 4
keep_monthly = 12

[[source]]
name = "orders-db"
kind = "postgres"
command = "pg_dump -Fc orders"
stdin_name = "orders.dump"

[[source]]
name = "knowledge"
kind = "files"
paths = ["/opt/data/knowledge"]
exclude = ["*.tmp", ".git"]
retention = { keep_daily = 14, keep_monthly = 24 }

[copy]
to = "s3://acme-backups/larder"
password_file = "/etc/larder/offsite.pass"

[check]
read_data_subset = "5%"

[drill]
every = "7d"

[notify]
on_failure = ["/usr/local/bin/notify", "--channel", "ops"]
"#;

    #[test]
    fn the_documented_example_parses() {
        let plan = Plan::parse(EXAMPLE).unwrap();
        assert_eq!(plan.sources.len(), 2);
        let knowledge = plan.source("knowledge").unwrap();
        let rules = knowledge.retention.over(&plan.retention);
        assert_eq!(
            (rules.keep_daily, rules.keep_weekly, rules.keep_monthly),
            (Some(14), Some(4), Some(24))
        );
        assert!(knowledge.unpack && knowledge.drill);
        assert_eq!(plan.notify.on_failure.len(), 3);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_line() {
        let err = Plan::parse(&EXAMPLE.replace("keep_weekly = 4", "keep_weekley = 4")).unwrap_err();
        assert!(err.starts_with("line 8:"), "{err}");
        assert!(err.contains("keep_weekley"), "{err}");
        let err =
            Plan::parse(&EXAMPLE.replace("kind = \"files\"", "kind = \"redis\"")).unwrap_err();
        assert!(err.starts_with("line 18: source \"knowledge\""), "{err}");
        let err = Plan::parse(&EXAMPLE.replace("keep_daily = 7", "keep_daily = -7")).unwrap_err();
        assert!(err.starts_with("line 7:"), "{err}");
        let err = Plan::parse(&EXAMPLE.replace("\"5%\"", "\"0/3\"")).unwrap_err();
        assert!(err.contains("read_data_subset"), "{err}");
        let err = Plan::parse(&EXAMPLE.replace("\"knowledge\"", "\"orders-db\"")).unwrap_err();
        assert!(err.contains("a second source"), "{err}");
        let err =
            Plan::parse(&EXAMPLE.replace("every = \"7d\"", "every = \"weekly\"")).unwrap_err();
        assert!(err.contains("[drill] every"), "{err}");
    }

    #[test]
    fn relative_paths_are_the_plan_files_neighbours() {
        let dir = std::env::temp_dir().join(format!("larder-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("larder.toml");
        std::fs::write(
            &file,
            "repository = \"repo\"\npassword_file = \"pass\"\n[[source]]\nname = \"t\"\npaths = [\"data\", \"/abs\"]\n",
        )
        .unwrap();
        let plan = Plan::load(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            plan.repository.unwrap(),
            dir.join("repo").display().to_string()
        );
        assert_eq!(plan.password_file.unwrap(), dir.join("pass"));
        assert_eq!(
            plan.sources[0].paths,
            [dir.join("data"), PathBuf::from("/abs")]
        );
    }

    #[test]
    fn rotating_subsets_cover_every_pack_once() {
        let spec: SubsetSpec = "25%".parse().unwrap();
        let ids: Vec<[u8; 32]> = (0u32..1000)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect();
        let mut seen = vec![0; ids.len()];
        for run in 0..4 {
            let subset = spec.part(run);
            assert_eq!(subset.of, 4);
            for (i, id) in ids.iter().enumerate() {
                if subset.holds(id) {
                    seen[i] += 1;
                }
            }
        }
        assert!(seen.iter().all(|n| *n == 1));
        assert_eq!(
            "2/7".parse::<SubsetSpec>().unwrap().part(5),
            Subset { part: 2, of: 7 }
        );
        for bad in ["0%", "101%", "3/2", "0/4", "x", "1/0"] {
            assert!(bad.parse::<SubsetSpec>().is_err(), "{bad}");
        }
    }
}
