//! What this machine remembers between runs of a plan: each source's last
//! attempt and its result, the last check, and where the rotating
//! `--read-data-subset` stands. Kept in the cache directory (one file per
//! repository URL), written atomically; the repository's own records
//! (snapshots, drills) stay the source of truth for everything else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The remembered state of one repository.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Rotating subset checks run so far.
    #[serde(default)]
    pub check_runs: u64,
    /// The last check.
    #[serde(default)]
    pub last_check: Option<CheckRecord>,
    /// Per source, the last backup attempt.
    #[serde(default)]
    pub sources: BTreeMap<String, Attempt>,
}

/// One check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckRecord {
    /// When it ended, Unix seconds.
    pub time: i64,
    /// Whether it found no problem.
    pub ok: bool,
    /// The packs it read (`3/20`), if it read any.
    pub subset: Option<String>,
    /// Packs read.
    pub packs_read: u64,
    /// Why the check could not run (then `ok` is false, and nothing was
    /// found damaged).
    #[serde(default)]
    pub error: Option<String>,
}

/// One backup attempt of a source.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended, Unix seconds.
    pub time: i64,
    /// Whether it saved a snapshot.
    pub ok: bool,
    /// How long it took.
    pub duration_s: f64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes added to the repository.
    pub bytes_added: u64,
    /// Why it failed.
    pub error: Option<String>,
}

impl State {
    /// The state file for repository `url` under `cache_root`, named by
    /// the storage's own name for it (so `/srv/b`, `/srv/b/` and
    /// `file:///srv/b` share one state, and one run lock).
    pub fn path(cache_root: &Path, url: &str) -> Result<PathBuf> {
        let location = larder::backend::open(url)?.location();
        let key = blake3::hash(location.as_bytes()).to_hex();
        Ok(cache_root
            .join("state")
            .join(format!("{}.json", &key[..16])))
    }

    /// Reads the state; none yet (or unreadable, which is reported) is the
    /// empty state.
    pub fn load(path: &Path) -> State {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                super::render::warn_all(&[format!(
                    "{} does not parse ({e}); starting from an empty state",
                    path.display()
                )]);
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        write_atomically(path, &bytes, 0o600)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so a reader sees the old file or the new one, never half;
/// the file gets `mode`.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Now, Unix seconds.
pub fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}
