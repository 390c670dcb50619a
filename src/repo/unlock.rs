//! Opening a repository's keys: the config envelope, and trying the
//! passphrase on the key files.

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use crate::backend::Backend;
use crate::config::ConfigEnvelope;
use crate::error::{Error, Result};
use crate::hash::KeyId;
use crate::key::{KeyFile, MasterKey};
use crate::layout::key_path;

use super::SYNC_CONCURRENCY;
use super::objects::list_ids;

pub(super) async fn read_envelope(backend: &dyn Backend) -> Result<ConfigEnvelope> {
    match backend.get("config", crate::config::MAX_CONFIG_SIZE).await {
        Ok(bytes) => ConfigEnvelope::parse(&bytes),
        Err(Error::NotFound { .. }) => Err(Error::NotARepository {
            location: backend.location(),
        }),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotADirectory => {
            Err(Error::NotARepository {
                location: backend.location(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Lists the key files of a repository (ids only).
pub(crate) async fn list_key_ids(backend: &dyn Backend) -> Result<Vec<KeyId>> {
    Ok(list_ids::<KeyId>(backend, "keys/")
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// Most key files `open` fetches; beyond this the repository is refused
/// rather than read at a cost hostile storage chooses.
pub(crate) const MAX_KEY_FILES: usize = 1000;

/// Most Argon2 work (KiB times passes) one open spends trying key files:
/// twice the most one key file may ask for, or about 85 key files at the
/// default parameters.
pub(crate) const MAX_OPEN_KDF_WORK: u64 = 2 * crate::key::MAX_KDF_WORK;

/// Tries the passphrase on the key files: the one that opened the
/// repository last time first (fetched by name, sparing a listing), then
/// every other, cheapest first, until the KDF work budget is spent. Damaged
/// key files are named in the error, so a damaged key is not mistaken for a
/// wrong passphrase. Junk key files that sort first cannot hide the real
/// key, but enough of them can exhaust the budget; the error then names
/// every key file left untried.
pub(super) async fn unlock(
    backend: &dyn Backend,
    envelope: &ConfigEnvelope,
    passphrase: &[u8],
    cache_dir: &Path,
) -> Result<(MasterKey, KeyId)> {
    use crate::key::{KeyFileIntegrity, MAX_KEY_FILE_SIZE};
    let try_key = |file: KeyFile| {
        let passphrase = zeroize::Zeroizing::new(passphrase.to_vec());
        async move {
            tokio::task::spawn_blocking(move || file.unwrap(&passphrase))
                .await
                .expect("key derivation task panicked")
        }
    };
    let last = std::fs::read_to_string(cache_dir.join("last-key"))
        .ok()
        .and_then(|s| s.trim().parse::<KeyId>().ok());
    let mut spent = 0u64;
    // Whether the last key was tried, so the full pass skips it.
    let mut last_tried = false;
    if let Some(last) = last {
        match backend.get(&key_path(&last), MAX_KEY_FILE_SIZE).await {
            Ok(bytes) => {
                if let Ok(file) = KeyFile::parse(last, &bytes)
                    && file.header.repo_id == envelope.repo_id
                    && file.integrity != KeyFileIntegrity::Damaged
                    && file.header.kdf.validate().is_ok()
                {
                    spent += file.kdf_work();
                    last_tried = true;
                    if let Ok(Some(master)) = try_key(file).await {
                        return Ok((master, last));
                    }
                }
            }
            // Whatever is wrong with it is found and named below.
            Err(e) if e.is_damage() => {}
            Err(e) => return Err(e),
        }
    }

    let listed = backend.list("keys/").await?;
    if listed.len() > MAX_KEY_FILES {
        return Err(Error::corrupt(
            "keys/",
            format!(
                "holds {} objects; larder reads at most {MAX_KEY_FILES} key files",
                listed.len()
            ),
        ));
    }
    let mut damaged: Vec<String> = Vec::new();
    let mut refusal = None;
    let mut ids = Vec::new();
    for object in &listed {
        match object.name.strip_prefix("keys/").map(str::parse::<KeyId>) {
            Some(Ok(id)) if last_tried && Some(id) == last => {}
            Some(Ok(id)) => ids.push(id),
            _ => damaged.push(format!("{}: not a key file name", object.name)),
        }
    }
    let fetched: Vec<(KeyId, Result<Bytes>)> = futures::stream::iter(ids)
        .map(|id| async move { (id, backend.get(&key_path(&id), MAX_KEY_FILE_SIZE).await) })
        .buffer_unordered(SYNC_CONCURRENCY)
        .collect()
        .await;
    // Intact (or unchecked) key files first, then damaged ones as a last
    // resort (only the checksum may be damaged); cheapest first within
    // each, so expensive junk cannot use up the budget before the real key.
    let mut candidates: Vec<KeyFile> = Vec::new();
    for (id, bytes) in fetched {
        let name = key_path(&id);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            // Deleted since the listing (`key remove`).
            Err(Error::NotFound { .. }) => continue,
            Err(e @ Error::Corrupt { .. }) => {
                damaged.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        match KeyFile::parse(id, &bytes) {
            Ok(file) if file.header.repo_id != envelope.repo_id => {
                damaged.push(format!("{name}: belongs to another repository"));
            }
            Ok(file) if file.header.kdf.validate().is_err() => {
                let reason = file.header.kdf.validate().unwrap_err();
                damaged.push(
                    Error::HostileKeyFile {
                        key: id.short(),
                        reason,
                    }
                    .to_string(),
                );
            }
            Ok(file) => {
                if file.integrity == KeyFileIntegrity::Damaged {
                    damaged.push(format!("{name}: checksum does not match"));
                }
                candidates.push(file);
            }
            Err(e @ Error::Unsupported { .. }) => refusal = Some(e),
            Err(e) => damaged.push(e.to_string()),
        }
    }
    candidates.sort_by_key(|f| (f.integrity == KeyFileIntegrity::Damaged, f.kdf_work(), f.id));
    let names: Vec<String> = candidates.iter().map(|f| key_path(&f.id)).collect();
    let mut tried = 0;
    for (index, file) in candidates.into_iter().enumerate() {
        if spent + file.kdf_work() > MAX_OPEN_KDF_WORK {
            return Err(Error::TooManyKeyFiles {
                location: backend.location(),
                tried,
                untried: names[index..].to_vec(),
            });
        }
        spent += file.kdf_work();
        tried += 1;
        let id = file.id;
        match try_key(file).await {
            Ok(Some(master)) => return Ok((master, id)),
            Ok(None) => {}
            Err(e @ Error::HostileKeyFile { .. }) => damaged.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = refusal {
        return Err(e);
    }
    if !damaged.is_empty() {
        return Err(Error::KeyFilesDamaged {
            location: backend.location(),
            damaged,
        });
    }
    if tried == 0 && !last_tried {
        return Err(Error::corrupt(
            backend.location(),
            "repository has no key files",
        ));
    }
    Err(Error::WrongPassphrase {
        location: backend.location(),
    })
}
