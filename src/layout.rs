//! Where each object lives in a repository: the top-level prefixes and
//! the name of every object kind, in one place (docs/FORMAT.md, "Objects").

use crate::hash::{DrillId, GenerationId, IndexId, KeyId, PackId, SnapshotId};

/// The top-level prefixes of a repository, in the order `init` creates them.
pub(crate) const DIRECTORIES: [&str; 7] = [
    "keys",
    "packs",
    "index",
    "snapshots",
    "locks",
    "pending",
    "drills",
];

/// Whether a repository may lack the top-level directory `prefix` (`drills`)
/// without damage: repositories made before that prefix existed get the
/// directory with their first object under it, so until then its absence
/// means no objects. Every other prefix exists from `init` on, and its
/// absence is damage.
pub(crate) fn may_be_absent(prefix: &str) -> bool {
    prefix.trim_end_matches('/') == "drills"
}

/// The object name of a key file.
pub(crate) fn key_path(id: &KeyId) -> String {
    format!("keys/{id}")
}

/// The object name of a pack: `packs/<first two hex digits>/<id>`.
pub fn pack_path(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{}", &hex[..2], hex)
}

/// The pack a name under `packs/` names, if it is a well-formed pack name.
pub(crate) fn parse_pack_path(path: &str) -> Option<PackId> {
    let rest = path.strip_prefix("packs/")?;
    let (dir, name) = rest.split_once('/')?;
    let id: PackId = name.parse().ok()?;
    (dir.len() == 2 && name.starts_with(dir)).then_some(id)
}

/// The object name of an index object.
pub fn index_path(id: &IndexId) -> String {
    format!("index/{id}")
}

/// The object name of a snapshot.
pub(crate) fn snapshot_path(id: &SnapshotId) -> String {
    format!("snapshots/{id}")
}

/// The object name of a pending generation.
pub(crate) fn pending_path(id: &GenerationId) -> String {
    format!("pending/{id}")
}

/// The object name of a drill record.
pub(crate) fn drill_path(id: &DrillId) -> String {
    format!("drills/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_paths_round_trip() {
        let id = PackId([0xab; 32]);
        let path = pack_path(&id);
        assert!(path.starts_with("packs/ab/abab"));
        assert_eq!(parse_pack_path(&path), Some(id));
        assert_eq!(parse_pack_path("packs/cd/abab"), None);
        assert_eq!(parse_pack_path("index/abab"), None);
    }
}
