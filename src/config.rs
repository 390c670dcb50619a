//! The repository config object: format version, repository id, and the
//! parameters every writer must share (chunker profiles and seed, pack sizes).
//!
//! Stored once, at `init`, as `config`:
//!
//! ```text
//! config = CBOR map { 0: format version (uint), 1: repository id (bstr 32), 2: sealed body (bstr) }
//! body   = sealed(kind Config, id = repository id) of CBOR ConfigBody
//! ```
//!
//! The outer map is readable without keys so that `open` can refuse a newer
//! format before asking for a passphrase; the body is authenticated and
//! encrypted because the chunker seed is secret.

use crate::error::{Error, Result};
use crate::hash::RepoId;

/// The repository format version this build writes for new repositories. A
/// change to any byte at rest that an older reader could misread bumps it
/// (rules in `docs/FORMAT.md`, "Versioning"). Version 2 added file nodes
/// whose bytes are rebuilt through a recipe (field 17), which a version-1
/// reader would restore wrongly and whose recipe blobs its prune would
/// delete; it refuses a version-2 repository instead.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest repository format version this build reads and writes.
/// Repositories keep the version they were created with; features newer
/// than it are not used in them.
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;

/// The first format version with recipe-rebuilt file nodes.
pub(crate) const RECIPES_SINCE: u32 = 2;

/// Name of the chunker profile for dump streams (stdin and commands).
pub const STREAM_PROFILE: &str = "stream";
/// Name of the chunker profile for file trees.
pub(crate) const FILES_PROFILE: &str = "files";

/// FastCDC sizes for one kind of source.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct ChunkerProfile {
    /// Profile name ([`STREAM_PROFILE`], [`FILES_PROFILE`]).
    #[n(0)]
    pub name: String,
    /// Smallest chunk, bytes.
    #[n(1)]
    pub min: u32,
    /// Target average chunk, bytes.
    #[n(2)]
    pub avg: u32,
    /// Largest chunk, bytes.
    #[n(3)]
    pub max: u32,
}

impl ChunkerProfile {
    /// Checks the sizes against what FastCDC accepts and what larder bounds
    /// blobs to.
    pub(crate) fn validate(&self) -> Result<()> {
        let ok = (64..=1 << 20).contains(&self.min)
            && (256..=4 << 20).contains(&self.avg)
            && (1024..=MAX_BLOB_SIZE as u32).contains(&self.max)
            && self.min < self.avg
            && self.avg < self.max
            && self.min.is_multiple_of(2)
            && self.avg.is_multiple_of(2)
            && self.max.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "chunker profile {:?} sizes {}/{}/{} are out of range: need even sizes, \
                 64 B..1 MiB min < 256 B..4 MiB avg < 1 KiB..16 MiB max",
                self.name, self.min, self.avg, self.max
            )))
        }
    }

    /// Parses `NAME=MIN:AVG:MAX` with optional K/M suffixes (powers of 1024).
    pub fn parse(spec: &str) -> Result<ChunkerProfile> {
        let bad = || {
            Error::InvalidArgument(format!(
                "chunker profile {spec:?} is not NAME=MIN:AVG:MAX (such as stream=4K:16K:64K)"
            ))
        };
        let (name, sizes) = spec.split_once('=').ok_or_else(bad)?;
        let sizes: Vec<u32> = sizes
            .split(':')
            .map(|s| parse_size(s).ok_or_else(bad))
            .collect::<Result<_>>()?;
        let [min, avg, max] = sizes[..] else {
            return Err(bad());
        };
        let profile = ChunkerProfile {
            name: name.to_string(),
            min,
            avg,
            max,
        };
        profile.validate()?;
        Ok(profile)
    }
}

fn parse_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u32 = digits.parse().ok()?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1024,
        "M" | "MIB" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Largest blob larder writes or accepts (16 MiB, FastCDC's largest maximum).
pub(crate) const MAX_BLOB_SIZE: usize = 16 << 20;

/// The sealed part of the config.
#[derive(Clone, Debug, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct Config {
    /// The repository id (repeated from the outer map, and authenticated here).
    #[n(0)]
    pub repo_id: RepoId,
    /// Seed XORed into FastCDC's gear table so chunk boundaries differ per
    /// repository.
    #[n(1)]
    pub chunker_seed: u64,
    /// Chunker profiles by name.
    #[n(2)]
    pub profiles: Vec<ChunkerProfile>,
    /// zstd level for blobs.
    #[n(3)]
    pub compression_level: i32,
    /// Target size of data packs, bytes.
    #[n(4)]
    pub data_pack_size: u32,
    /// Target size of tree packs, bytes.
    #[n(5)]
    pub tree_pack_size: u32,
    /// Most entries in one content list before another level is added.
    #[n(6)]
    pub list_fanout: u32,
    /// When the repository was made, nanoseconds since the Unix epoch.
    #[n(7)]
    pub created_ns: i64,
}

impl Config {
    /// Defaults for a new repository (chosen by measurement; see
    /// `docs/PERFORMANCE.md`, "Chunk sizes").
    pub fn new(repo_id: RepoId, chunker_seed: u64, created_ns: i64) -> Config {
        Config {
            repo_id,
            chunker_seed,
            profiles: vec![
                ChunkerProfile {
                    name: STREAM_PROFILE.into(),
                    min: 4 << 10,
                    avg: 16 << 10,
                    max: 64 << 10,
                },
                ChunkerProfile {
                    name: FILES_PROFILE.into(),
                    min: 256 << 10,
                    avg: 1 << 20,
                    max: 4 << 20,
                },
            ],
            compression_level: 1,
            data_pack_size: 16 << 20,
            tree_pack_size: 4 << 20,
            list_fanout: 8192,
            created_ns,
        }
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Result<&ChunkerProfile> {
        self.profiles
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::corrupt("config", format!("has no chunker profile {name:?}")))
    }

    /// Replaces (or adds) a profile.
    pub(crate) fn set_profile(&mut self, profile: ChunkerProfile) {
        self.profiles.retain(|p| p.name != profile.name);
        self.profiles.push(profile);
    }

    /// Checks every field against the bounds readers and writers rely on.
    pub(crate) fn validate(&self) -> Result<()> {
        for p in &self.profiles {
            p.validate()?;
        }
        self.profile(STREAM_PROFILE)?;
        self.profile(FILES_PROFILE)?;
        let packs_ok = (1 << 20..=256 << 20).contains(&self.data_pack_size)
            && (64 << 10..=256 << 20).contains(&self.tree_pack_size);
        if !packs_ok
            || !(2..=1 << 20).contains(&self.list_fanout)
            || !(-7..=22).contains(&self.compression_level)
        {
            return Err(Error::corrupt(
                "config",
                "pack size, list fanout or compression level out of range",
            ));
        }
        Ok(())
    }
}

/// Largest `config` object read (its sealed body opens to at most 1 MiB).
pub(crate) const MAX_CONFIG_SIZE: u64 = (1 << 20) + 4096;

/// The plaintext outer layer of the `config` object.
#[derive(Clone, Debug, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct ConfigEnvelope {
    /// Repository format version.
    #[n(0)]
    pub version: u32,
    /// Repository id.
    #[n(1)]
    pub repo_id: RepoId,
    /// The sealed [`Config`].
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub sealed: Vec<u8>,
}

impl ConfigEnvelope {
    /// Parses the outer layer and refuses versions this build cannot read.
    pub fn parse(bytes: &[u8]) -> Result<ConfigEnvelope> {
        let envelope: ConfigEnvelope = minicbor::decode(bytes)
            .map_err(|e| Error::corrupt("config", format!("does not parse: {e}")))?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&envelope.version) {
            return Err(Error::Unsupported {
                what: "the repository".into(),
                found: envelope.version,
                supported: format!("{OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"),
            });
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_specs_parse_with_units() {
        let p = ChunkerProfile::parse("stream=4K:16K:64K").unwrap();
        assert_eq!((p.min, p.avg, p.max), (4096, 16384, 65536));
        assert!(ChunkerProfile::parse("stream=4K:16K").is_err());
        assert!(ChunkerProfile::parse("stream=64K:16K:4K").is_err());
        assert!(ChunkerProfile::parse("stream=1:2:3").is_err());
        assert!(ChunkerProfile::parse("files=1M:2M:32M").is_err());
    }

    #[test]
    fn default_config_is_valid_and_round_trips() {
        let c = Config::new(RepoId([1; 32]), 42, 7);
        c.validate().unwrap();
        let bytes = minicbor::to_vec(&c).unwrap();
        assert_eq!(minicbor::decode::<Config>(&bytes).unwrap(), c);
    }

    #[test]
    fn newer_format_versions_are_refused() {
        let env = ConfigEnvelope {
            version: FORMAT_VERSION + 1,
            repo_id: RepoId([1; 32]),
            sealed: vec![],
        };
        let err = ConfigEnvelope::parse(&minicbor::to_vec(&env).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }));
    }
}
