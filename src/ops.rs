//! Operations: one module per user-visible verb. This is the library API
//! the command line calls.
//!
//! Convention: a verb takes a `&Repo` and an `XOptions`, and returns an
//! `XSummary` (serialisable, so `--json` is a rendering of it) that counts
//! the storage requests made. Verbs never print, prompt or exit; live
//! progress goes through [`crate::progress::Progress`].

pub mod backup;
pub mod cat;
pub mod check;
pub mod copy;
pub mod diff;
pub mod drill;
pub mod find;
pub mod forget;
pub mod keys;
pub mod log;
pub mod ls;
pub mod prune;
pub mod rebuild;
pub mod restore;
pub mod stats;
pub mod status;

use crate::error::Result;
use crate::lease::LeaseKind;
use crate::repo::{LeaseGuard, Repo};

/// Runs `op` holding a lease of `kind` on `repo` ([`Repo::hold_lease`]):
/// every verb that reads or writes packs runs this way, so no prune can
/// sweep what it relies on, whoever calls it.
pub(crate) async fn leased<T>(
    repo: &Repo,
    kind: LeaseKind,
    op: impl AsyncFnOnce(&LeaseGuard) -> Result<T>,
) -> Result<T> {
    let guard = repo.hold_lease(kind).await?;
    let result = op(&guard).await;
    guard.finish().await;
    result
}

/// `larder <version>`, recorded in snapshots.
pub(crate) fn program_version() -> String {
    format!("larder {}", env!("CARGO_PKG_VERSION"))
}

/// True if `name` is exactly one normal path component: non-empty, no `/`,
/// no NUL, and not `.` or `..`. Every name stored in or restored from a
/// snapshot must pass this.
pub(crate) fn is_single_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC.
pub fn format_time(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("@{ns}ns"))
}

/// Serialises a 32-byte id as hex (for `--json`).
pub(crate) fn hex_id<S: serde::Serializer, T: std::fmt::Display>(
    id: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// Serialises a value as its `Display` text (timestamps as RFC 3339).
pub(crate) use hex_id as as_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_normal_components_pass() {
        for good in [&b"a"[..], b"a.yaml", b"..a", b"a..", b"\xff\xfe"] {
            assert!(is_single_component(good), "{good:?}");
        }
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"../x", b"a\0b"] {
            assert!(!is_single_component(bad), "{bad:?}");
        }
    }
}
